"""netavark's JSON contract, read and written: what Podman sends to `setup`/`teardown`
and what it expects back. Pure; the engine does the work (engine/podman.py).

Input (netavark's "network options"): container_id, container_name, networks
{NAME: {interface_name, static_ips, static_mac, aliases}}, network_info {NAME:
{name, id, driver, network_interface, subnets [{subnet, gateway}], ipv6_enabled,
internal, dns_enabled, options}}, port_mappings [{host_ip, container_port,
host_port, range, protocol}], dns_servers. Output of setup, per network:
{interfaces {IFNAME: {mac_address, subnets [{ipnet, gateway}]}}, dns_server_ips,
dns_search_domains}.

A network may have IPv4, IPv6 or both (one subnet of each family; netavark, like
portway, looks at the subnets and not at `ipv6_enabled`); Podman does the IPAM and
sends the container an address per subnet in `static_ips`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from portway.core import validate
from portway.errors import InvalidInput
from portway.model.types import IPAddress, IPInterface, PortMapping, Subnet

SEARCH_DOMAIN = "dns.podman"
HEX64 = re.compile(r"[0-9a-f]{64}")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    id: str
    bridge: str
    subnets: tuple[Subnet, ...]
    internal: bool
    dns_enabled: bool
    mtu: int
    options: dict[str, str]


@dataclass(frozen=True)
class Attachment:
    network: str
    ifname: str
    static_ips: tuple[IPAddress, ...]
    static_mac: str | None
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Options:
    container_id: str
    container_name: str
    attachments: tuple[Attachment, ...]
    networks: dict[str, NetworkInfo]
    ports: tuple[PortMapping, ...]
    dns_servers: tuple[str, ...]


def _bad(what: str) -> InvalidInput:
    return InvalidInput(f"invalid network options: {what}",
                        "pass netavark's JSON (what Podman sends) on stdin or with -f FILE")


def _obj(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad(f"{what} must be an object")
    return data


def _str(data: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise _bad(f"{what}.{key} must be a string")
    return value


def _network_info(name: str, data: Any) -> NetworkInfo:
    d = _obj(data, f"network_info.{name}")
    driver = _str(d, "driver", f"network_info.{name}", "bridge")
    if driver != "bridge":
        raise InvalidInput(f"network {name}: driver {driver!r} is not supported",
                           "portway networks containers with bridges only")
    nid = _str(d, "id", f"network_info.{name}")
    if not HEX64.fullmatch(nid):
        raise _bad(f"network_info.{name}.id must be 64 hex digits")
    bridge = validate.check_ifname("network_interface",
                                   _str(d, "network_interface", f"network_info.{name}"))
    raw = d.get("subnets")
    if not isinstance(raw, list) or not raw:
        raise _bad(f"network_info.{name}.subnets must be a non-empty list")
    subnets: list[Subnet] = []
    for i, item in enumerate(raw):
        entry = _obj(item, f"network_info.{name}.subnets[{i}]")
        # What `portway network create` accepts, checked the same way: a subnet without
        # host bits, a gateway that is a host address inside it (one outside would take
        # over a route of the host's, its default gateway even).
        subnet = validate.parse_subnet(_str(entry, "subnet", "subnet"))
        if any(s.subnet.version == subnet.version for s in subnets):
            raise InvalidInput(f"network {name} has more than one IPv{subnet.version} "
                               "subnet", "portway gives a network one subnet of each "
                               "family: create the Podman network with one")
        if entry.get("gateway"):
            gateway = validate.check_host_address(
                f"network {name}: gateway",
                validate.parse_address("gateway", _str(entry, "gateway", "subnet", "")),
                subnet)
        else:
            gateway = ipaddress.ip_address(str(next(subnet.hosts())))
        subnets.append(Subnet(subnet=subnet, gateway=gateway))
    subnets.sort(key=lambda s: s.subnet.version)
    options = d.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise _bad(f"network_info.{name}.options must map names to strings")
    mtu = int(options.get("mtu", "1500")) if str(options.get("mtu", "1500")).isdigit() \
        else 0
    if not 68 <= mtu <= 65535:
        raise _bad(f"network_info.{name}.options.mtu must be a number from 68 to 65535")
    return NetworkInfo(name=name, id=nid, bridge=bridge, subnets=tuple(subnets),
                       internal=bool(d.get("internal")),
                       dns_enabled=bool(d.get("dns_enabled")), mtu=mtu,
                       options={str(k): v for k, v in options.items()})


def _attachment(name: str, data: Any, info: NetworkInfo) -> Attachment:
    d = _obj(data, f"networks.{name}")
    ifname = validate.check_ifname("interface_name", _str(d, "interface_name",
                                                          f"networks.{name}", "eth0"))
    ips = d.get("static_ips") or []
    if not isinstance(ips, list):
        raise _bad(f"networks.{name}.static_ips must be a list")
    static: list[IPAddress] = []
    for raw in ips:
        try:
            addr = ipaddress.ip_address(str(raw))
        except ValueError:
            raise _bad(f"networks.{name}.static_ips: {raw!r} is not an address") from None
        subnet = next((s.subnet for s in info.subnets if addr in s.subnet), None)
        if subnet is None:
            raise InvalidInput(f"address {addr} is not in a subnet of network {name} "
                               f"({', '.join(str(s.subnet) for s in info.subnets)})",
                               "give an address from one of them")
        if any(a.version == addr.version for a in static):
            raise InvalidInput(f"more than one IPv{addr.version} address for network "
                               f"{name}", "give one address of each family")
        static.append(addr)
    mac = d.get("static_mac")
    if mac is not None and (not isinstance(mac, str) or not MAC.fullmatch(mac.lower())):
        raise _bad(f"networks.{name}.static_mac must be a MAC address like 02:42:0a:00:00:02")
    aliases = d.get("aliases") or []
    if not isinstance(aliases, list):
        raise _bad(f"networks.{name}.aliases must be a list")
    return Attachment(network=name, ifname=ifname, static_ips=tuple(static),
                      static_mac=mac.lower() if isinstance(mac, str) else None,
                      aliases=tuple(validate.check_name("alias", str(a)) for a in aliases))


def _ports(data: Any) -> tuple[PortMapping, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise _bad("port_mappings must be a list")
    out: list[PortMapping] = []
    for raw in data:
        p = _obj(raw, "port_mappings[]")
        try:
            host_port, container_port = int(p.get("host_port", 0)), int(p["container_port"])
            count = int(p.get("range") or 1)
        except (KeyError, TypeError, ValueError):
            raise _bad("port_mappings[] needs numbers container_port, host_port, range") \
                from None
        host_ip_text = str(p.get("host_ip") or "")
        try:
            host_ip = ipaddress.ip_address(host_ip_text) if host_ip_text else None
        except ValueError:
            raise _bad(f"port_mappings[].host_ip {host_ip_text!r} is not an address") from None
        if host_ip is not None and host_ip.is_unspecified:
            host_ip = None
        if host_ip is not None and host_ip.version == 6 and host_ip.is_loopback:
            raise InvalidInput("cannot publish on ::1: IPv6 has no way to route the host's "
                               "loopback to a container", "publish on 127.0.0.1 for the "
                               "host alone, or on all addresses")
        if count < 1 or not 0 < container_port + count - 1 < 65536 or \
                not 0 < host_port + count - 1 < 65536 or host_port < 1:
            raise InvalidInput(f"port mapping {host_port}:{container_port} (range {count}) "
                               "is out of 1-65535", "give ports from 1 to 65535")
        for proto in str(p.get("protocol") or "tcp").split(","):
            if proto not in ("tcp", "udp"):
                raise InvalidInput(f"protocol {proto!r} is not supported", "use tcp or udp")
            for i in range(count):
                out.append(PortMapping(container_port=container_port + i,
                                       host_port=host_port + i, protocol=proto,  # type: ignore[arg-type]
                                       host_ip=host_ip))
    return tuple(out)


def parse_options(data: Any) -> Options:
    d = _obj(data, "the input")
    # Podman sends 64 hex digits; other callers (and netavark's own tests) any string.
    cid = _str(d, "container_id", "input")
    if not cid or len(cid) > 255 or not cid.isprintable():
        raise _bad("container_id must be a non-empty printable string of at most 255 "
                   "characters")
    name = validate.check_name("container", _str(d, "container_name", "input"))
    infos_raw = _obj(d.get("network_info") or {}, "network_info")
    infos = {str(n): _network_info(str(n), v) for n, v in infos_raw.items()}
    nets = _obj(d.get("networks") or {}, "networks")
    attachments = []
    for net_name, raw in nets.items():
        if net_name not in infos:
            raise _bad(f"network {net_name} is in networks but not in network_info")
        attachments.append(_attachment(str(net_name), raw, infos[net_name]))
    ifnames = [a.ifname for a in attachments]
    if len(set(ifnames)) != len(ifnames):
        raise _bad("two networks ask for the same interface_name")
    dns = d.get("dns_servers") or []
    if not isinstance(dns, list):
        raise _bad("dns_servers must be a list")
    return Options(container_id=cid, container_name=name, attachments=tuple(attachments),
                   networks=infos, ports=_ports(d.get("port_mappings")),
                   dns_servers=tuple(validate.check_dns_servers([str(x) for x in dns])))


def status_block(info: NetworkInfo, ifname: str, mac: str,
                 addresses: tuple[IPInterface, ...]) -> dict[str, Any]:
    """What setup prints for one network: each address with its subnet's gateway, and
    every gateway as a DNS server (portway's DNS server listens on each)."""
    gateways = {s.subnet.version: s.gateway for s in info.subnets}
    return {"interfaces": {ifname: {"mac_address": mac, "subnets": [
                {"ipnet": str(a), "gateway": str(gateways[a.version])}
                for a in addresses if a.version in gateways]}},
            "dns_server_ips": [str(s.gateway) for s in info.subnets]
            if info.dns_enabled else [],
            "dns_search_domains": [SEARCH_DOMAIN] if info.dns_enabled else []}
