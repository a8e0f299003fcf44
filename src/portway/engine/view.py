"""What `inspect`, `ps` and `network ls` show: Docker's shape over portway's records.

Docker's fields keep Docker's meaning (`Name` "/web", `HostConfig.PortBindings` as
asked, `NetworkSettings.IPAddress` and its siblings filled from the default network
`bridge` only, `NetworkMode` the first network's name, `host` or `none`); portway's
own fields (`Interface`, `HostInterface`, `Runtime`, a network's `Bridge`) sit beside
them where no Docker field has the name.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import TYPE_CHECKING, Any

from portway.core import firewall
from portway.core.names import UNCHECKED_VETH_PREFIX
from portway.engine.dns import endpoint_names
from portway.engine.networks import DEFAULT_NETWORK, PSEUDO_NETWORKS
from portway.errors import PortwayError
from portway.model.types import Container, Endpoint, IPInterface, Network

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from portway.engine import Engine
    from portway.engine.context import Host
    from portway.engine.observer import Observer
    from portway.kernel.links import Link


def network(engine: Host, n: Network) -> dict[str, Any]:
    containers: dict[str, Any] = {}
    for e in engine.store.endpoints(network_id=n.id):
        c = engine.store.find_container(e.container_id)
        v4, v6 = _by_family(e)
        containers[e.container_id] = {
            "Name": c.name if c else "", "EndpointID": e.id, "MacAddress": e.mac,
            "IPv4Address": str(v4) if v4 else "", "IPv6Address": str(v6) if v6 else "",
        }
    overlay = n.driver == "overlay" and engine.cluster is not None
    if overlay:
        assert engine.cluster is not None
        for entry in containers.values():
            entry["Host"] = str(engine.cluster.advertise)
        for r in engine.cluster.remote_endpoints(n.id):  # the other hosts' containers
            containers[r.container_id] = {
                "Name": r.name, "EndpointID": r.id, "MacAddress": r.mac,
                "IPv4Address": next((str(a) for a in r.addresses if a.version == 4), ""),
                "IPv6Address": next((str(a) for a in r.addresses if a.version == 6), ""),
                "Host": str(r.host)}
    configs = []
    for sub in n.subnets:
        config: dict[str, Any] = {"Subnet": str(sub.subnet), "Gateway": str(sub.gateway)}
        if sub.ip_range is not None:
            config["IPRange"] = str(sub.ip_range)
        if sub.aux_addresses:
            config["AuxiliaryAddresses"] = {k: str(v) for k, v in sub.aux_addresses}
        configs.append(config)
    return {
        "Name": n.name, "Id": n.id, "Created": n.created,
        "Scope": "global" if n.driver == "overlay" else "local", "Driver": n.driver,
        "EnableIPv6": n.of_version(6) is not None,
        "EnableIPv4": n.of_version(4) is not None,
        "IPAM": {"Driver": "default", "Options": {}, "Config": configs},
        "Internal": n.internal, "Attachable": True, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": containers,
        "Options": dict(n.options), "Labels": dict(n.labels),
        # A macvlan network has no bridge (its parent is in Options; MTU 0: the parent's).
        "Bridge": "" if n.driver == "macvlan" else n.bridge, "MTU": n.mtu,
    }


ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: Docker's "never"


def pseudo_network_id(engine: Host, name: str) -> str:
    """A pseudo-network's id: stable for this installation, like a network's."""
    return hashlib.sha256(f"portway:{engine.instance}:{name}".encode()).hexdigest()


def pseudo_network(engine: Host, name: str) -> dict[str, Any]:
    """`host` or `none` in a network's shape: the containers in that mode."""
    members = {c.id: {"Name": c.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "",
                      "IPv6Address": ""}
               for c in engine.store.containers() if c.network_mode == name}
    return {
        "Name": name, "Id": pseudo_network_id(engine, name), "Created": ZERO_TIME,
        "Scope": "local", "Driver": PSEUDO_NETWORKS[name], "EnableIPv6": False,
        "EnableIPv4": name == "host",
        "IPAM": {"Driver": "default", "Options": None, "Config": []},
        "Internal": False, "Attachable": False, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": members, "Options": {},
        "Labels": {}, "Bridge": "", "MTU": 0,
    }


def natural_key(name: str) -> list[Any]:
    """Docker's order of names: digits by value ("net2" before "net10")."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _ifindex(e: Endpoint) -> tuple[int, str]:
    """eth0 before eth1 before eth10 (a runtime's own names after them)."""
    digits = e.ifname[len(e.ifname.rstrip("0123456789")):]
    return (int(digits) if digits and e.ifname.startswith("eth") else 1 << 30, e.ifname)


def _ipam_config(e: Endpoint) -> dict[str, str] | None:
    """Docker's IPAMConfig: the addresses asked for (--ip, --ip6), or null."""
    if not e.requested:
        return None
    return {("IPv4Address" if a.version == 4 else "IPv6Address"): str(a) for a in e.requested}


def _endpoint_settings(c: Container, e: Endpoint, n: Network) -> dict[str, Any]:
    v4, v6 = _by_family(e)
    # Docker's Gateway and IPv6Gateway are the container's default gateways: an internal
    # network gives it none, so they are empty there (the network's own are in IPAM).
    gw4, gw6 = (None, None) if n.internal else (n.of_version(4), n.of_version(6))
    return {
        "IPAMConfig": _ipam_config(e), "Links": None, "Aliases": list(e.aliases) or None,
        "MacAddress": e.mac, "DriverOpts": None, "NetworkID": n.id, "EndpointID": e.id,
        "Gateway": str(gw4.gateway) if gw4 else "",
        "IPAddress": str(v4.ip) if v4 else "",
        "IPPrefixLen": v4.network.prefixlen if v4 else 0,
        "IPv6Gateway": str(gw6.gateway) if gw6 else "",
        "GlobalIPv6Address": str(v6.ip) if v6 else "",
        "GlobalIPv6PrefixLen": v6.network.prefixlen if v6 else 0,
        "DNSNames": endpoint_names(c, e),
        "Interface": e.ifname, "HostInterface": e.host_ifname,
    }


# Fields Docker 27's NetworkSettings still has but never sets (deprecated since API 1.44):
# there, empty, so that a template naming one prints what Docker's prints.
_NEVER_SET: dict[str, Any] = {"LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
                              "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None}

# The top-level NetworkSettings fields Docker fills from the default network alone.
_TOP_LEVEL = ("EndpointID", "Gateway", "GlobalIPv6Address", "GlobalIPv6PrefixLen",
              "IPAddress", "IPPrefixLen", "IPv6Gateway", "MacAddress")


def container(engine: Host, c: Container) -> dict[str, Any]:
    nets: dict[str, Any] = {}
    mode = network_mode(c)
    for e in sorted(engine.store.endpoints(container_id=c.id), key=_ifindex):
        n = engine.store.find_network(e.network_id)
        if n is None:
            continue
        nets[n.name] = _endpoint_settings(c, e, n)
        conflict = engine.cluster.conflict(e.id) if engine.cluster is not None and \
            n.driver == "overlay" else None
        if conflict:  # registered in the cluster store only once that is resolved
            nets[n.name]["ClusterConflict"] = conflict
        renumbered = engine.cluster.renumbered(e.id) if engine.cluster is not None and \
            n.driver == "overlay" else None
        if renumbered:  # its address was taken meanwhile: it was given another
            nets[n.name]["ClusterRenumbered"] = renumbered
        if mode == "bridge" and len(nets) == 1:
            mode = n.name  # Docker's NetworkMode: the first network (bridge: the default)
    for cfg in engine.store.configs(container_id=c.id) if not c.networked else ():
        # Stopped: the networks it is attached to when it starts, without addresses.
        nets[cfg.network_name] = {
            "IPAMConfig": {k: str(v) for k, v in (("IPv4Address", cfg.ipv4),
                                                  ("IPv6Address", cfg.ipv6)) if v} or None,
            "Links": None, "Aliases": list(cfg.aliases) or None, "MacAddress": "",
            "DriverOpts": None, "NetworkID": cfg.network_id, "EndpointID": "",
            "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": None}
        if mode == "bridge" and len(nets) == 1:
            mode = cfg.network_name
    if c.network_mode not in ("bridge", "container"):
        nets[c.network_mode] = {
            "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
            "DriverOpts": None, "NetworkID": pseudo_network_id(engine, c.network_mode),
            "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": None}
    default = nets.get(DEFAULT_NETWORK, {}) if c.network_mode == "bridge" else {}
    top = {k: default.get(k, 0 if k.endswith("PrefixLen") else "") for k in _TOP_LEVEL}
    ports: dict[str, list[dict[str, str]] | None] = {}
    for port, host_ip, host_port in engine.publishing.bindings(c):
        ports.setdefault(port, []).append(  # type: ignore[union-attr]
            {"HostIp": host_ip, "HostPort": str(host_port) if host_port else ""})
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in c.ports:  # as asked: HostIp "" for every address
        bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": str(p.host_ip) if p.host_ip else "", "HostPort": str(p.host_port)})
    running = c.status == "running"
    conf = c.config
    exposed: dict[str, dict[str, str]] = {f"{p}/{proto}": {} for p, proto in conf.expose}
    exposed.update({f"{p.container_port}/{p.protocol}": {} for p in c.ports})
    for port in exposed if c.networked else ():  # exposed, not published: null
        ports.setdefault(port, None)  # (a stopped container has no ports, as in Docker)
    return {
        "Id": c.id, "Name": f"/{c.name}", "Created": c.created,
        "Path": c.command[0] if c.command else "", "Args": list(c.command[1:]),
        "Runtime": c.runtime,
        # Docker's: a container waiting to restart counts as running, without a process.
        "State": {"Status": c.status, "Running": running or c.status == "restarting",
                  "Restarting": c.status == "restarting",
                  "Pid": engine.processes.first_process(c) if running else 0,
                  "ExitCode": c.exit_code if c.exit_code is not None else 0,
                  "Error": c.error, "StartedAt": c.started or ZERO_TIME,
                  "FinishedAt": c.finished or ZERO_TIME},
        "RestartCount": c.restart_count,
        "Config": {"Hostname": c.hostname, "Domainname": conf.domainname,
                   "Cmd": list(c.command), "User": c.user, "Env": _env(engine, c),
                   "WorkingDir": conf.workdir, "Tty": conf.tty, "OpenStdin": conf.interactive,
                   "Labels": dict(conf.labels), "ExposedPorts": exposed or None},
        "HostConfig": {"NetworkMode": mode, "AutoRemove": c.auto_remove,
                       "RestartPolicy": {"Name": c.restart_policy,
                                         "MaximumRetryCount": c.restart_max},
                       "Dns": list(c.dns), "Privileged": c.privileged,
                       "CapAdd": list(c.cap_add) or None, "CapDrop": list(c.cap_drop) or None,
                       "PortBindings": bindings,
                       "PublishAllPorts": conf.publish_all,
                       "DnsSearch": list(conf.dns_search or []),
                       "DnsOptions": list(conf.dns_options or []),
                       "ExtraHosts": [f"{n}:{a}" for n, a in conf.extra_hosts] or None,
                       "Sysctls": dict(conf.sysctls) or None},
        "NetworkSettings": {"SandboxKey": c.netns if c.networked else "", "Ports": ports,
                            **_NEVER_SET, **top, "Networks": nets},
    }


def network_mode(c: Container) -> str:
    """HostConfig.NetworkMode: the mode, or container:ID for another's namespace."""
    return f"container:{c.config.network_of}" if c.network_mode == "container" \
        else c.network_mode


def _env(engine: Host, c: Container) -> list[str]:
    """Config.Env: what the command starts with, as KEY=VALUE (Docker's order: the
    container's own variables, then the user's)."""
    if c.runtime != "portway":
        return []
    try:
        conf = engine.processes.confinement(c)
    except PortwayError:  # its --user no longer exists: the user's variables alone
        return list(c.config.env)
    return [f"{k}={v}" for k, v in engine.processes.env(c, conf).items()]


def _by_family(e: Endpoint) -> tuple[IPInterface | None, IPInterface | None]:
    """e's IPv4 and IPv6 addresses (None where it has none)."""
    return (next((a for a in e.addresses if a.version == 4), None),
            next((a for a in e.addresses if a.version == 6), None))


def _modes(n: Network) -> list[str]:
    """What sets a network's packets apart from the default, in show's words: a family
    routed without NAT, no masquerade, no traffic between its containers."""
    if firewall.unmanaged(n):
        return []
    modes = [f"IPv{v} routed (no NAT)" for v in (4, 6)
             if n.of_version(v) is not None and firewall.routed(n, v)]
    if n.options.get(firewall.MASQ_OPTION) == "false":
        modes.append("no masquerade")
    if n.options.get(firewall.ICC_OPTION) == "false":
        modes.append("icc off")
    return modes


def _ports(engine: Engine | Observer, c: Container) -> list[str]:
    """c's published ports as Docker's `ps` writes them: one per family it is published
    on (0.0.0.0:8080->80/tcp, [::]:8080->80/tcp)."""
    out = []
    for port, host_ip, host_port in engine.h.publishing.bindings(c):
        ip = f"[{host_ip}]" if ":" in host_ip else host_ip
        out.append(f"{ip}:{host_port}->{port}")
    return out


def _link(link: Link | None, **extra: Any) -> dict[str, Any]:
    if link is None:
        return {"Present": False, **extra}
    return {"Present": True, "Name": link.ifname, "Index": link.index, "Peer": link.peer,
            "Up": link.up, "Mtu": link.mtu, "Mac": link.mac, **extra}


def topology(engine: Engine | Observer) -> dict[str, Any]:
    """What `show` and `graph` draw: the store's networks and containers, each piece
    as the kernel has it now (index, peer, state), or marked missing."""
    from portway.kernel import links, netns

    host = {link.ifname: link for link in links.observe_links(engine.host)}
    by_index = {link.index: link for link in host.values()}
    inside: dict[str, dict[str, Link]] = {}

    def container_links(c: Container) -> dict[str, Link]:
        if c.id not in inside:
            inside[c.id] = {}
            if netns.sandbox_exists(c.netns):
                ipr = netns.open_ipr(c.netns)
                try:
                    inside[c.id] = {link.ifname: link for link in links.observe_links(ipr)}
                finally:
                    ipr.close()
        return inside[c.id]

    containers = {c.id: engine.h.refresh(c) for c in engine.store.containers()}
    first_endpoint: dict[str, str] = {}
    for e in sorted(engine.store.endpoints(), key=lambda e: e.ifname):
        first_endpoint.setdefault(e.container_id, e.id)
    networks = []
    for n in engine.store.networks():
        members: list[dict[str, Any]] = []
        for e in sorted(engine.store.endpoints(network_id=n.id),
                        key=lambda e: [(a.version, int(a.ip)) for a in e.addresses]):
            c = containers[e.container_id]
            host_end = host.get(e.host_ifname)
            master = by_index.get(host_end.master) if host_end and host_end.master else None
            members.append({
                "Name": c.name, "Id": c.id, "Status": c.status,
                "Address": str(e.address) if e.addresses else "",
                "Addresses": [str(a.ip) for a in e.addresses],
                "Mac": e.mac, "Aliases": list(e.aliases),
                "HostEnd": _link(host_end, Bridge=master.ifname if master else ""),
                "ContainerEnd": _link(container_links(c).get(e.ifname),
                                      Netns=os.path.basename(c.netns)),
                "Ports": _ports(engine, c) if first_endpoint.get(c.id) == e.id else [],
            })
        networks.append({
            "Name": n.name, "Id": n.id, "Subnet": str(n.subnet) if n.subnets else "",
            "Gateway": str(n.gateway) if n.subnets else "",
            "Subnets": [str(s.subnet) for s in n.subnets],
            "Gateways": [str(s.gateway) for s in n.subnets],
            "Internal": n.internal, "Bridge": _link(host.get(n.bridge), Expected=n.bridge),
            "Modes": _modes(n), "Containers": members,
            **({"Vxlan": _vxlan(engine, n, host, by_index)} if n.driver == "overlay" else {}),
            **(_macvlan(engine, n, host, by_index) if n.driver == "macvlan" else {}),
        })
    others = [{"Name": c.name, "Id": c.id, "Status": c.status,
               "Mode": f"container:{containers[c.config.network_of].name}"
               if c.config.network_of in containers else network_mode(c)}
              for c in containers.values() if c.network_mode != "bridge"]
    own_ends = {e.host_ifname for e in engine.store.endpoints()}
    foreign = _foreign(engine, host, own_ends)
    into_foreign = {end["HostEnd"]["Name"] for ns in foreign for end in ns["Links"]}
    uplinks = [{"Name": link.ifname, "Index": link.index, "Up": link.up}
               for link in host.values() if link.ifname != "lo" and not link.master
               and link.kind not in ("bridge",)
               and not link.ifname.startswith(("pwv-", UNCHECKED_VETH_PREFIX))
               and link.ifname not in into_foreign]
    return {"HostNetns": engine.host_netns or "(root)", "Networks": networks,
            "Unbridged": others, "HostLinks": uplinks, "Foreign": foreign}


def _macvlan(engine: Engine | Observer, n: Network, host: dict[str, Link],
             by_index: dict[int, Link]) -> dict[str, Any]:
    """A macvlan network has no bridge: its parent (none named: the interface of the
    host's default route) stands where the bridge would, and its containers' devices
    hang off it (their ContainerEnd)."""
    from portway.core import macvlan
    from portway.kernel.macvlan import default_route_interface

    name = macvlan.parent(n)
    link = host.get(name) if name else \
        by_index.get(default_route_interface(engine.host) or 0)
    return {"Driver": "macvlan", "Mode": macvlan.mode(n),
            "Bridge": _link(link, Expected=name or "(default-route interface)")}


def _vxlan(engine: Engine | Observer, n: Network, host: dict[str, Link],
           by_index: dict[int, Link]) -> dict[str, Any]:
    """An overlay network's VXLAN device as the kernel has it, and the containers on
    the other hosts with whether the device has their FDB and neighbour entries."""
    from portway.core import overlay
    from portway.kernel import vxlan

    cluster = engine.h.cluster
    link = host.get(overlay.vxlan_name(n.id))
    master = by_index.get(link.master) if link is not None and link.master else None
    fdb: set[overlay.Fdb] = set()
    neigh: set[overlay.Neighbour] = set()
    if link is not None:
        fdb, neigh = vxlan.observe_forwarding(engine.host, link.index)
    remote = []
    for r in cluster.remote_endpoints(n.id) if cluster is not None else []:
        remote.append({
            "Name": r.name, "Addresses": [str(a.ip) for a in r.addresses], "Mac": r.mac,
            "Host": str(r.host), "Fdb": overlay.Fdb(r.mac, r.host) in fdb,
            "Neighbours": all(overlay.Neighbour(a.ip, r.mac) in neigh for a in r.addresses)})
    return {**_link(link, Expected=overlay.vxlan_name(n.id),
                    Bridge=master.ifname if master else ""),
            "Vni": overlay.network_vni(n),
            "Local": str(cluster.advertise) if cluster is not None else "",
            "Remote": remote}


def _foreign(engine: Engine | Observer, host: dict[str, Link],
             own_ends: set[str]) -> list[dict[str, Any]]:
    """The namespaces portway did not make that the host's veths lead to (but those of
    its default routes: the uplinks), each with the veth pairs into it and the
    addresses of its ends. Only those namespaces are opened, and only read."""
    from portway.engine.tracer import MAX_FOREIGN
    from portway.kernel import links, netns, observe

    defaults = {r["dev"] for r in observe.route_table(engine.host)
                if r["dst"] in ("0.0.0.0/0", "::/0")}
    ends = [link for link in host.values() if link.kind == "veth" and link.netnsid >= 0
            and link.ifname not in own_ends and link.ifname not in defaults]
    if not ends:
        return []
    by_nsid = netns.resolve_nsids({link.netnsid for link in ends},  # (the host's numbers)
                                  netns.observe_namespaces())
    by_index = {link.index: link for link in host.values()}
    out: dict[str, dict[str, Any]] = {}
    inside: dict[str, dict[int, tuple[Link, list[str]]]] = {}
    for link in sorted(ends, key=lambda link: link.ifname):
        ns = by_nsid.get(link.netnsid)
        if ns is None or (ns.key not in out and len(out) >= MAX_FOREIGN):
            continue
        if ns.key not in inside:
            ipr = netns.open_ipr(ns.path)
            try:
                inside[ns.key] = {peer.index: (peer, _addresses(ipr, peer.index))
                                  for peer in links.observe_links(ipr)}
            finally:
                ipr.close()
        entry = out.setdefault(ns.key, {"Key": ns.key, "Label": ns.label, "Links": []})
        peer_found = inside[ns.key].get(link.peer)
        master = by_index.get(link.master) if link.master else None
        entry["Links"].append({
            "HostEnd": _link(link, Bridge=master.ifname if master else ""),
            "End": _link(peer_found[0] if peer_found else None,
                         Addresses=peer_found[1] if peer_found else [])})
    return list(out.values())


def _addresses(ipr: IPRoute, index: int) -> list[str]:
    """A link's addresses of both families, but link-local ones."""
    from portway.kernel import links

    addrs: list[IPInterface] = [*links.observe_addresses(ipr, index),
                                *links.observe_addresses6(ipr, index)]
    return [str(a.ip) for a in addrs if not a.ip.is_link_local]
