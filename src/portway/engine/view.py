"""What `inspect`, `ps` and `network ls` show: Docker's field names over portway's records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from portway.core.ports import format_mapping
from portway.model.types import Container, Network

if TYPE_CHECKING:
    from portway.engine import Engine


def network(engine: Engine, n: Network) -> dict[str, Any]:
    containers: dict[str, Any] = {}
    for e in engine.store.endpoints(network_id=n.id):
        c = engine.store.find_container(e.container_id)
        containers[e.container_id] = {
            "Name": c.name if c else "", "EndpointID": e.id, "MacAddress": e.mac,
            "IPv4Address": f"{e.address}/{e.prefixlen}", "IPv6Address": "",
        }
    config: dict[str, str] = {"Subnet": str(n.subnet), "Gateway": str(n.gateway)}
    if n.ip_range is not None:
        config["IPRange"] = str(n.ip_range)
    return {
        "Name": n.name, "Id": n.id, "Created": n.created, "Scope": "local", "Driver": n.driver,
        "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": {}, "Config": [config]},
        "Internal": n.internal, "Attachable": True, "Containers": containers,
        "Options": dict(n.options), "Labels": dict(n.labels),
        "Bridge": n.bridge, "MTU": n.mtu,
    }


def container(engine: Engine, c: Container) -> dict[str, Any]:
    nets: dict[str, Any] = {}
    for e in engine.store.endpoints(container_id=c.id):
        n = engine.store.find_network(e.network_id)
        if n is None:
            continue
        nets[n.name] = {
            "NetworkID": n.id, "EndpointID": e.id, "Gateway": str(n.gateway),
            "IPAddress": str(e.address), "IPPrefixLen": e.prefixlen, "MacAddress": e.mac,
            "Aliases": [*list(e.aliases), c.short_id], "Interface": e.ifname,
            "HostInterface": e.host_ifname,
        }
    if c.network_mode != "bridge":
        nets[c.network_mode] = {"NetworkID": "", "EndpointID": "", "Gateway": "",
                                "IPAddress": "", "IPPrefixLen": 0, "MacAddress": "",
                                "Aliases": []}
    ports: dict[str, list[dict[str, str]] | None] = {}
    for p in c.ports:
        ports.setdefault(f"{p.container_port}/{p.protocol}", []).append(  # type: ignore[union-attr]
            {"HostIp": str(p.host_ip) if p.host_ip else "0.0.0.0",
             "HostPort": str(p.host_port) if p.host_port else ""})
    running = c.status == "running"
    return {
        "Id": c.id, "Name": c.name, "Created": c.created,
        "Path": c.command[0], "Args": list(c.command[1:]),
        "State": {"Status": c.status, "Running": running, "Pid": c.pid if running else 0,
                  "ExitCode": c.exit_code if c.exit_code is not None else 0,
                  "StartedAt": c.started, "FinishedAt": c.finished},
        "Config": {"Hostname": c.hostname, "Cmd": list(c.command)},
        "HostConfig": {"NetworkMode": c.network_mode, "AutoRemove": c.auto_remove,
                       "Dns": list(c.dns),
                       "PortBindings": [format_mapping(p) for p in c.ports]},
        "NetworkSettings": {"SandboxKey": c.netns, "Ports": ports, "Networks": nets},
    }
