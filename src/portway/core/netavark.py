"""netavark's JSON contract, read and written: what Podman sends to `setup`/`teardown`
and what it expects back. Pure; the engine does the work (engine/podman.py).

Input (netavark's "network options", as of netavark 1.16/2.x): container_id (any
string), container_name, networks {NAME: {interface_name, static_ips, static_mac,
aliases, options {host_interface_name}}}, network_info {NAME: {name, id, driver,
network_interface, subnets [{subnet, gateway}], routes [{destination, gateway, metric,
route_type}], ipv6_enabled, internal, dns_enabled, ipam_options {driver}, options {mtu,
metric, no_default_route, isolate, mode, vlan, vrf}}}, port_mappings [{host_ip,
container_port, host_port, range, protocol}], dns_servers. Output of setup, per
network: {interfaces {IFNAME: {mac_address, subnets [{ipnet, gateway}]}},
dns_server_ips, dns_search_domains}.

Errors a caller may match are worded as netavark words them (its
src/network/core_utils.rs and bridge.rs): `unable to parse "metric": ...`, `invalid
route type "..."`, `route D requires a gateway for type unicast`, `invalid isolate
option "..."`, `invalid bridge mode "..."`, `unsupported ipam driver ...`.

A network may have IPv4, IPv6 or both, any number of subnets of each (netavark, like
portway, looks at the subnets and not at `ipv6_enabled`); Podman does the IPAM and
sends the container an address per subnet in `static_ips`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from portway.core import macvlan, validate
from portway.core.firewall import VETH_PATTERN
from portway.core.names import UNCHECKED_VETH_PREFIX
from portway.errors import InvalidInput
from portway.model.types import (
    PROTOCOLS,
    IPAddress,
    IPInterface,
    Network,
    PortMapping,
    Route,
    Subnet,
)

SEARCH_DOMAIN = "dns.podman"
VETH_PREFIX = VETH_PATTERN.rstrip("*")  # of the host ends of containers' veths
# What portway's firewall takes for a container's bridge port: a bridge by such a name
# would be treated as one (the ARP it brings the host dropped, and all that is not from
# its subnets), so none may be named so.
CONTAINER_PREFIXES = (VETH_PREFIX, UNCHECKED_VETH_PREFIX)


def check_bridge_name(name: str) -> None:
    """A bridge's name is not one portway reserves for containers' interfaces."""
    if name.startswith(CONTAINER_PREFIXES):
        raise InvalidInput(f"bridge name {name}: portway's firewall treats interfaces "
                           f"named {', '.join(p + '*' for p in CONTAINER_PREFIXES)} as "
                           "containers' own, and would cut the bridge off from the host",
                           "give the bridge a name that starts otherwise")
DEFAULT_METRIC = 100  # netavark's, for the default routes of every network
ROUTE_TYPES = {"": "unicast", "unicast": "unicast", "blackhole": "blackhole",
               "unreachable": "unreachable", "prohibit": "prohibit"}
# How netavark (Rust's Debug) names a route type in its errors.
RUST_ROUTE_TYPE = {"unicast": "Unicast", "blackhole": "BlackHole",
                   "unreachable": "Unreachable", "prohibit": "Prohibit"}
ISOLATE = ("strict", "true", "false")
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    id: str
    bridge: str
    subnets: tuple[Subnet, ...]
    internal: bool
    dns_enabled: bool
    mtu: int  # 0: the default (the MTU of the host's default-route interface)
    options: dict[str, str]
    routes: tuple[Route, ...] = ()
    metric: int = DEFAULT_METRIC  # of the network's default routes
    no_default_route: bool = False
    isolate: str = "strict"  # netavark 2's default
    network_dns_servers: tuple[str, ...] = ()  # its upstream resolvers (aardvark-dns's)
    unmanaged: bool = False  # mode=unmanaged: the caller's own bridge
    # ipam_options.driver: host-local (Podman's addresses), none (no address at all:
    # subnets is empty) or dhcp (leases from netavark's DHCP proxy)
    ipam: str = "host-local"
    # "bridge" or "macvlan" (then bridge is the parent interface, "" for the host's
    # default-route interface, and macvlan_mode its mode)
    driver: str = "bridge"
    macvlan_mode: str = ""


@dataclass(frozen=True)
class Attachment:
    network: str
    ifname: str
    static_ips: tuple[IPAddress, ...]
    static_mac: str | None
    aliases: tuple[str, ...]
    host_ifname: str | None = None  # the host end's name, if the caller chose it


@dataclass(frozen=True)
class Options:
    container_id: str
    container_name: str
    attachments: tuple[Attachment, ...]
    networks: dict[str, NetworkInfo]
    ports: tuple[PortMapping, ...]
    dns_servers: tuple[str, ...]
    # What netavark logs as warnings and goes on (an alias it cannot serve, ignored).
    warnings: tuple[str, ...] = ()


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


def _error(message: str) -> InvalidInput:
    """An error worded as netavark words it (a caller may match the text)."""
    return InvalidInput(message, "fix the network's definition (podman network inspect)")


def check_mtu_ipv6(name: str, mtu: int, versions: set[int]) -> None:
    """A network with an IPv6 subnet has an MTU of at least IPv6's minimum: below it the
    kernel gives the link no IPv6 address (EINVAL), so nothing could be set up."""
    if 6 in versions and 0 < mtu < validate.IPV6_MIN_MTU:
        raise InvalidInput(f"network {name}: mtu {mtu} is below IPv6's minimum of "
                           f"{validate.IPV6_MIN_MTU}, and the network has an IPv6 subnet",
                           f"recreate the network with an mtu of {validate.IPV6_MIN_MTU} "
                           "or more (podman network create --opt mtu=...), or without IPv6")


def parse_uint(name: str, text: str, bits: int = 32) -> int:
    """A netavark option parsed as Rust parses an unsigned integer, with its errors."""
    if text == "":
        raise _error(f'unable to parse "{name}": cannot parse integer from empty string')
    digits = text[1:] if text.startswith("+") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise _error(f'unable to parse "{name}": invalid digit found in string')
    value = int(digits)
    if value >= 1 << bits:
        raise _error(f'unable to parse "{name}": number too large to fit in target type')
    return value


def parse_bool(name: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise _error(f'unable to parse "{name}": provided string was not `true` or `false`')
    return text == "true"


def parse_routes(raw: Any, where: str) -> tuple[Route, ...]:
    """netavark's `routes`: each a destination with a gateway of its family (unicast,
    the default type) or none (blackhole, unreachable, prohibit), and a metric."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(f"{where}.routes must be a list")
    out: list[Route] = []
    for i, item in enumerate(raw):
        r = _obj(item, f"{where}.routes[{i}]")
        try:
            if "/" not in str(r.get("destination")):
                raise ValueError(r.get("destination"))  # an address: netavark's error too
            dest = ipaddress.ip_network(str(r.get("destination")), strict=False)
        except ValueError:
            raise _bad(f"{where}.routes[{i}].destination {r.get('destination')!r} is not a "
                       "subnet") from None
        gateway = None
        if r.get("gateway") is not None:
            try:
                gateway = ipaddress.ip_address(str(r["gateway"]))
            except ValueError:
                raise _bad(f"{where}.routes[{i}].gateway {r['gateway']!r} is not an "
                           "address") from None
        metric = r.get("metric")
        if metric is not None and (isinstance(metric, bool) or not isinstance(metric, int)
                                   or not 0 <= metric < 1 << 32):
            raise _bad(f"{where}.routes[{i}].metric must be a number from 0 to 4294967295")
        kind_text = r.get("route_type") or ""
        kind = ROUTE_TYPES.get(str(kind_text))
        if kind is None:
            raise _error(f'invalid route type "{kind_text}"')
        if kind == "unicast" and gateway is None:
            raise _error(f"route {dest} requires a gateway for type unicast")
        if kind != "unicast" and gateway is not None:
            raise _error(f"route {dest} must not have a gateway for type "
                         f"{RUST_ROUTE_TYPE[kind]}")
        if gateway is not None and gateway.version != dest.version:
            raise _error(f"route with ipv{dest.version} destination and "
                         f"ipv{gateway.version} gateway ({dest} via {gateway})")
        out.append(Route(destination=dest, gateway=gateway, metric=metric,
                         type=kind))  # type: ignore[arg-type]
    return tuple(out)


def bridge_options(name: str, options: dict[str, str]) -> dict[str, Any]:
    """netavark's bridge options, parsed as netavark parses them (unknown ones are
    ignored, as netavark's setup ignores them)."""
    out: dict[str, Any] = {}
    mtu = parse_uint("mtu", options["mtu"]) if "mtu" in options else 0
    if mtu and not 68 <= mtu <= 65535:
        raise _bad(f"network_info.{name}.options.mtu must be a number from 68 to 65535")
    out["mtu"] = mtu
    out["metric"] = parse_uint("metric", options["metric"]) if "metric" in options \
        else DEFAULT_METRIC
    out["no_default_route"] = parse_bool("no_default_route", options["no_default_route"]) \
        if "no_default_route" in options else False
    isolate = options.get("isolate", "strict")
    if isolate not in ISOLATE:
        raise _error(f'invalid isolate option "{isolate}"')
    out["isolate"] = isolate
    mode = options.get("mode", "")
    if mode not in ("", "managed", "unmanaged"):
        raise _error(f'invalid bridge mode "{mode}"')
    out["unmanaged"] = mode == "unmanaged"
    for key, version in (("outbound_addr4", 4), ("outbound_addr6", 6)):
        # netavark >= 1.15: the network's traffic out is SNATed to this address, not
        # masqueraded (Rust's parse of an Ipv4Addr/Ipv6Addr, with its error).
        if key in options:
            try:
                addr = ipaddress.ip_address(options[key])
            except ValueError:
                addr = None
            if addr is None or addr.version != version or "%" in options[key]:
                raise _error(f'unable to parse "{key}": invalid IPv{version} address syntax')
            out[key] = addr
    if "vlan" in options:
        vlan = parse_uint("vlan", options["vlan"], 16)
        if vlan > 4094:
            raise _error("vlan must be between 0 and 4094")
        # netavark turns on VLAN filtering on the bridge; this kernel has none.
        raise InvalidInput(f"network {name}: vlan {vlan}: this kernel has no bridge VLAN "
                           "filtering", "remove the vlan option from the network")
    if "vrf" in options:
        # netavark: `get vrf to set up bridge interface: Netlink error: No such device`
        # when the VRF is missing; this kernel cannot make one at all.
        raise InvalidInput(f"get vrf to set up bridge interface: vrf {options['vrf']}: this "
                           "kernel has no VRF support", "remove the vrf option from the "
                           "network")
    return out


def _subnets(name: str, raw: Any) -> list[Subnet]:
    """A host-local network's subnets, any number of either family, none overlapping
    another, IPv4 first (each family's in the order given); none given: none (its
    containers get no address, as netavark gives them none then)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(f"network_info.{name}.subnets must be a list")
    subnets: list[Subnet] = []
    for i, item in enumerate(raw):
        entry = _obj(item, f"network_info.{name}.subnets[{i}]")
        # What `portway network create` accepts, checked the same way: a subnet without
        # host bits, a gateway that is a host address inside it (one outside would take
        # over a route of the host's, its default gateway even).
        subnet = validate.parse_subnet(_str(entry, "subnet", "subnet"))
        other = next((s.subnet for s in subnets if s.subnet.version == subnet.version
                      and s.subnet.overlaps(subnet)), None)
        if other is not None:
            raise InvalidInput(f"network {name}: subnet {subnet} overlaps its subnet "
                               f"{other}", "give the network subnets that do not overlap")
        if entry.get("gateway"):
            gateway = validate.check_host_address(
                f"network {name}: gateway",
                validate.parse_address("gateway", _str(entry, "gateway", "subnet", "")),
                subnet)
        else:
            gateway = ipaddress.ip_address(str(next(subnet.hosts())))
        subnets.append(Subnet(subnet=subnet, gateway=gateway))
    subnets.sort(key=lambda s: s.subnet.version)
    return subnets


# netavark's DHCP proxy (netavark-dhcp-proxy.socket), where netavark asks for a lease.
DHCP_PROXY_SOCKET = "/run/podman/nv-proxy.sock"


def check_dhcp(unmanaged: bool) -> None:
    """The dhcp ipam driver, as netavark checks it before the lease: on a bridge only in
    mode=unmanaged (a managed bridge would need the proxy to serve its own subnet)."""
    if not unmanaged:
        raise _error("cannot use dhcp ipam driver without using the option mode=unmanaged")


def dhcp_unavailable(reason: str) -> InvalidInput:
    """What netavark answers when it cannot reach its DHCP proxy (reason: the socket's
    error as Rust prints it, e.g. `No such file or directory (os error 2)`)."""
    return InvalidInput(f'unable to obtain lease: socket "{DHCP_PROXY_SOCKET}": {reason}, '
                        "is the netavark-dhcp-proxy.socket unit enabled?",
                        "start netavark's DHCP proxy (systemctl enable --now "
                        "netavark-dhcp-proxy.socket), or give the network a subnet")


def _network_info(name: str, data: Any) -> NetworkInfo:
    d = _obj(data, f"network_info.{name}")
    driver = _str(d, "driver", f"network_info.{name}", "bridge")
    if driver in (macvlan.DRIVER, "ipvlan"):
        return _vlan_info(name, d, driver)
    if driver != "bridge":
        raise InvalidInput(f"network {name}: driver {driver!r} is not supported",
                           "portway networks containers with bridges and macvlan only")
    nid = _str(d, "id", f"network_info.{name}")
    if not HEX64.fullmatch(nid):
        raise _bad(f"network_info.{name}.id must be 64 hex digits")
    if not d.get("network_interface"):
        raise _error("no bridge interface name given")
    bridge = validate.check_ifname("network_interface",
                                   _str(d, "network_interface", f"network_info.{name}"))
    check_bridge_name(bridge)
    ipam_options = d.get("ipam_options") or {}
    if not isinstance(ipam_options, dict):
        raise _bad(f"network_info.{name}.ipam_options must be an object")
    ipam_driver = str(ipam_options.get("driver") or "host-local")
    if ipam_driver not in ("host-local", "none", "dhcp"):
        raise _error(f"unsupported ipam driver {ipam_driver}")
    options = d.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise _bad(f"network_info.{name}.options must map names to strings")
    opts = bridge_options(name, options)
    if ipam_driver == "dhcp":
        check_dhcp(opts["unmanaged"])
    # ipam driver none: no addresses at all (netavark ignores any subnets given): the
    # bridge and the container's interface get none, only the link.
    subnets = _subnets(name, d.get("subnets")) if ipam_driver == "host-local" else []
    check_mtu_ipv6(name, opts["mtu"], {sub.subnet.version for sub in subnets})
    servers = d.get("network_dns_servers") or []
    if not isinstance(servers, list):
        raise _bad(f"network_info.{name}.network_dns_servers must be a list")
    return NetworkInfo(name=name, id=nid, bridge=bridge, subnets=tuple(subnets),
                       internal=bool(d.get("internal")),
                       dns_enabled=bool(d.get("dns_enabled")), mtu=opts["mtu"],
                       options={str(k): v for k, v in options.items()},
                       routes=parse_routes(d.get("routes"), f"network_info.{name}"),
                       metric=opts["metric"], no_default_route=opts["no_default_route"],
                       isolate=opts["isolate"], unmanaged=opts["unmanaged"],
                       ipam=ipam_driver,
                       network_dns_servers=tuple(validate.check_dns_servers(
                           [str(s) for s in servers])))


def parse_int(name: str, text: str) -> int:
    """A signed 32-bit option (netavark's bclim), as Rust parses an i32."""
    negative = text.startswith("-")
    value = parse_uint(name, text[1:] if negative else text, 31)
    return -value if negative else value


def _vlan_info(name: str, d: dict[str, Any], driver: str) -> NetworkInfo:
    """A macvlan (or ipvlan) network as netavark's vlan driver reads it: the parent in
    network_interface (none: the host's default-route interface), its options (mode,
    mtu, metric: 99 by default, no_default_route, bclim; others ignored, as netavark's
    setup ignores them), no DNS (netavark serves none there), no firewall."""
    nid = _str(d, "id", f"network_info.{name}")
    if not HEX64.fullmatch(nid):
        raise _bad(f"network_info.{name}.id must be 64 hex digits")
    parent = _str(d, "network_interface", f"network_info.{name}", "") \
        if d.get("network_interface") is not None else ""
    if parent:
        validate.check_ifname("network_interface", parent)
    ipam_options = d.get("ipam_options") or {}
    if not isinstance(ipam_options, dict):
        raise _bad(f"network_info.{name}.ipam_options must be an object")
    ipam_driver = str(ipam_options.get("driver") or "host-local")
    if ipam_driver not in ("host-local", "none", "dhcp"):
        raise _error(f"unsupported ipam driver {ipam_driver}")
    options = d.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise _bad(f"network_info.{name}.options must map names to strings")
    mtu = parse_uint("mtu", options["mtu"]) if "mtu" in options else 0
    if mtu and not 68 <= mtu <= 65535:
        raise _bad(f"network_info.{name}.options.mtu must be a number from 68 to 65535")
    metric = parse_uint("metric", options["metric"]) if "metric" in options \
        else macvlan.DEFAULT_METRIC
    no_default_route = parse_bool("no_default_route", options["no_default_route"]) \
        if "no_default_route" in options else False
    bclim = parse_int("bclim", options["bclim"]) if "bclim" in options else None
    subnets = _subnets(name, d.get("subnets")) if ipam_driver == "host-local" else []
    check_mtu_ipv6(name, mtu, {sub.subnet.version for sub in subnets})
    if driver == "ipvlan":
        macvlan.ipvlan_mode(options.get("mode"))
        raise InvalidInput(*macvlan.NO_IPVLAN)
    mode = macvlan.macvlan_mode(options.get("mode"))
    if bclim is not None:
        raise InvalidInput(f"network {name}: bclim {bclim}: portway cannot set a macvlan "
                           "device's broadcast cutoff yet", "remove the bclim option "
                           "from the network")
    return NetworkInfo(name=name, id=nid, bridge=parent, subnets=tuple(subnets),
                       internal=bool(d.get("internal")), dns_enabled=False, mtu=mtu,
                       options={str(k): v for k, v in options.items()},
                       routes=parse_routes(d.get("routes"), f"network_info.{name}"),
                       metric=metric, no_default_route=no_default_route, ipam=ipam_driver,
                       driver=driver, macvlan_mode=mode)


def _attachment(name: str, data: Any, info: NetworkInfo,
                warnings: list[str]) -> Attachment:
    d = _obj(data, f"networks.{name}")
    ifname = validate.check_ifname("interface_name", _str(d, "interface_name",
                                                          f"networks.{name}", "eth0"))
    ips = d.get("static_ips") or []
    if not isinstance(ips, list):
        raise _bad(f"networks.{name}.static_ips must be a list")
    if not info.subnets:
        ips = []  # no subnet to put them in: netavark ignores them too
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
        if any(a in subnet for a in static):
            raise InvalidInput(f"more than one address in subnet {subnet} for network "
                               f"{name}", "give one address of each subnet")
        static.append(addr)
    mac = d.get("static_mac")
    if mac is not None:
        mac = parse_mac(mac)
    per = d.get("options") or {}
    if not isinstance(per, dict) or not all(isinstance(v, str) for v in per.values()):
        raise _bad(f"networks.{name}.options must map names to strings")
    # A macvlan device has no host end to name (netavark ignores the option there).
    host_ifname = per.get("host_interface_name") or None if info.driver == "bridge" else None
    if host_ifname is not None:
        validate.check_ifname("host_interface_name", host_ifname)
        # The anti-spoofing checks select container ports by their prefix: a port
        # without it would send unchecked, one of a network without addresses (whose
        # containers choose their own) would send nothing.
        prefix = VETH_PREFIX if info.subnets else UNCHECKED_VETH_PREFIX
        if not host_ifname.startswith(prefix) or host_ifname == prefix:
            raise InvalidInput(f"host_interface_name {host_ifname}: portway checks what "
                               f"containers send on host ports named {VETH_PREFIX}*"
                               + ("" if info.subnets else ", and not on those of a "
                                  f"network without addresses, named {prefix}*"),
                               f"give a name that starts with {prefix} (at most 15 "
                               "characters), e.g. " + f"{prefix}{name}"[:15])
    aliases = d.get("aliases") or []
    if not isinstance(aliases, list):
        raise _bad(f"networks.{name}.aliases must be a list")
    return Attachment(network=name, ifname=ifname, static_ips=tuple(static),
                      static_mac=mac, aliases=_aliases(aliases, warnings),
                      host_ifname=host_ifname)


def _aliases(raw: list[Any], warnings: list[str]) -> tuple[str, ...]:
    """The aliases a DNS name can be made of. As netavark (its issue 1019), one that
    cannot is a warning and is left out; the container is still set up."""
    kept: list[str] = []
    for alias in raw:
        try:
            kept.append(validate.check_name("alias", str(alias)))
        except InvalidInput as exc:
            warnings.append(f"invalid network alias {json.dumps(str(alias))}: "
                            f"{exc.args[0]}, ignoring this name")
    return tuple(kept)


def _named_networks(raw: Any) -> list[tuple[str, Any]]:
    """`networks` as (name, options) in the caller's order: an object keyed by network
    name (Podman 4), or a list of objects each with its "name" (current netavark
    accepts both; a list keeps the order of the container's interfaces)."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [(str(k), v) for k, v in raw.items()]
    if not isinstance(raw, list):
        raise _bad("networks must be an object or a list")
    named: list[tuple[str, Any]] = []
    for item in raw:
        d = _obj(item, "networks[]")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("networks[].name must be a non-empty string")
        if any(n == name for n, _ in named):
            raise _bad(f"network {name} is twice in networks")
        named.append((name, {k: v for k, v in d.items() if k != "name"}))
    return named


def parse_mac(text: Any) -> str:
    """A static MAC as netavark reads it (hex bytes split by : or -), with its errors;
    a unicast address only (the kernel refuses a multicast one for a veth)."""
    if not isinstance(text, str):
        raise _bad("static_mac must be a string")
    parts = re.split("[:-]", text)
    if not all(re.fullmatch(r"[0-9a-fA-F]{1,2}", b) for b in parts):
        raise _error(f"unable to parse mac address {text}: invalid digit found in string")
    if len(parts) != 6:
        raise _error(f"invalid mac length for address: {text}")
    raw = bytes(int(b, 16) for b in parts)
    if raw[0] & 1 or raw == bytes(6):
        raise _bad(f"static_mac {text} is a multicast or zero address: give a unicast one")
    return ":".join(f"{b:02x}" for b in raw)


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
            raise InvalidInput(f"invalid host ip {json.dumps(host_ip_text)} provided for "
                               f"port {host_port}", "give an address of the host, or none "
                               "for all of them") from None
        # 0.0.0.0 and :: are kept: every address of that family alone, as netavark
        # publishes them (it skips the other family's rules for a host_ip of one).
        if host_ip is not None and host_ip.version == 6 and host_ip.is_loopback:
            raise InvalidInput("cannot publish on ::1: IPv6 has no way to route the host's "
                               "loopback to a container", "publish on 127.0.0.1 for the "
                               "host alone, or on all addresses")
        if count < 1 or not 0 < container_port + count - 1 < 65536 or \
                not 0 < host_port + count - 1 < 65536 or host_port < 1:
            raise InvalidInput(f"port mapping {host_port}:{container_port} (range {count}) "
                               "is out of 1-65535", "give ports from 1 to 65535")
        for proto in str(p.get("protocol") or "tcp").split(","):
            if proto not in PROTOCOLS:
                raise InvalidInput(f"protocol {proto!r} is not supported",
                                   "use tcp, udp or sctp")
            for i in range(count):
                out.append(PortMapping(container_port=container_port + i,
                                       host_port=host_port + i, protocol=proto,
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
    attachments = []
    warnings: list[str] = []
    for net_name, raw in _named_networks(d.get("networks")):
        if net_name not in infos:
            raise _bad(f"network {net_name} is in networks but not in network_info")
        attachments.append(_attachment(net_name, raw, infos[net_name], warnings))
    ifnames = [a.ifname for a in attachments]
    if len(set(ifnames)) != len(ifnames):
        raise _bad("two networks ask for the same interface_name")
    dns = d.get("dns_servers") or []
    if not isinstance(dns, list):
        raise _bad("dns_servers must be a list")
    ports = _ports(d.get("port_mappings"))
    if ports and attachments and infos[attachments[0].network].driver == macvlan.DRIVER:
        ports = ()  # netavark's macvlan driver publishes nothing (it sets no firewall)
    if ports and attachments and not infos[attachments[0].network].subnets:
        # netavark forwards nothing then (it has no container address to forward to).
        raise InvalidInput(f"network {attachments[0].network} has no IPAM (ipam driver "
                           f"{infos[attachments[0].network].ipam}): a published port has "
                           "no container address to go to",
                           "publish from a network with a subnet (put it first)")
    if ports and attachments and infos[attachments[0].network].unmanaged:
        # netavark sets up no firewall at all for such a bridge, so ignores the ports.
        raise InvalidInput(f"network {attachments[0].network} is unmanaged: portway "
                           "publishes no port on a bridge it does not manage",
                           "publish from a managed network, or forward the port yourself")
    return Options(container_id=cid, container_name=name, attachments=tuple(attachments),
                   networks=infos, ports=ports,
                   dns_servers=tuple(validate.check_dns_servers([str(x) for x in dns])),
                   warnings=tuple(warnings))


# What portway keeps of a Podman network's netavark fields beside its options.
DNS_ENABLED = "netavark.dns_enabled"
DNS_SERVERS = "netavark.network_dns_servers"
# On an unmanaged bridge, DNS is served on the bridge's own addresses (the gateway may
# be a router of the user's), as aardvark-dns binds them.
DNS_ADDRESSES = "netavark.dns_addresses"
DNS_KEYS = (DNS_ENABLED, DNS_SERVERS, DNS_ADDRESSES)
# The network's static routes (its `routes`, in netavark's JSON): what gc puts back with
# an endpoint it makes anew (the routes via a gateway go with the veth).
ROUTES = "netavark.routes"
SYNCED_KEYS = (*DNS_KEYS, ROUTES)  # brought up to date by each setup


def network_options(info: NetworkInfo,
                    dns_addresses: tuple[IPAddress, ...] = ()) -> dict[str, str]:
    """The options portway records for a Podman network: netavark's, its DNS and its
    static routes. The caller's options of the names portway keeps these under are not
    netavark's (it ignores them) and are dropped: gc would put back the routes one named,
    into the container, and choke on one malformed."""
    given = {k: v for k, v in info.options.items() if k not in SYNCED_KEYS}
    out = {**given, DNS_ENABLED: "true" if info.dns_enabled else "false",
           DNS_SERVERS: ",".join(info.network_dns_servers)}
    if dns_addresses:
        out[DNS_ADDRESSES] = ",".join(map(str, dns_addresses))
    if info.routes:
        out[ROUTES] = json.dumps([_route_json(r) for r in info.routes],
                                 separators=(",", ":"))
    return out


def _route_json(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"destination": str(route.destination), "route_type": route.type}
    if route.gateway is not None:
        out["gateway"] = str(route.gateway)
    if route.metric is not None:
        out["metric"] = route.metric
    return out


def stored_routes(network: Network) -> tuple[Route, ...]:
    """A Podman network's static routes, as network_options recorded them."""
    text = network.options.get(ROUTES)
    return parse_routes(json.loads(text), f"network_info.{network.name}") if text else ()


def dns_addresses(network: Network) -> list[str]:
    """Where the DNS server answers a network's containers: its gateways, or the
    addresses of the user's bridge of an unmanaged network."""
    own = [a for a in network.options.get(DNS_ADDRESSES, "").split(",") if a]
    return own or [str(s.gateway) for s in network.subnets]


def dns_record(network: Network) -> dict[str, Any]:
    """What the DNS server needs of a network beyond its subnets: for a Podman network,
    whether it has DNS, its own upstream resolvers, and TTL 0 (as aardvark-dns)."""
    if DNS_ENABLED not in network.options:
        return {}
    return {"dns": network.options[DNS_ENABLED] == "true", "ttl": 0,
            "dns_servers": [s for s in network.options.get(DNS_SERVERS, "").split(",") if s],
            "gateways": dns_addresses(network)}


def status_block(info: NetworkInfo, ifname: str, mac: str,
                 addresses: tuple[IPInterface, ...],
                 container_dns: tuple[str, ...] = (),
                 dns_servers: list[str] | None = None) -> dict[str, Any]:
    """What setup prints for one network: each address with its subnet's gateway, and
    every gateway as a DNS server (portway's DNS server listens on each); on a network
    without DNS, the container's own servers, if it has any (as netavark)."""
    gateways = {s.subnet: s.gateway for s in info.subnets}
    return {"interfaces": {ifname: {"mac_address": mac, "subnets": [
                {"ipnet": str(a), "gateway": str(gateways[a.network])}
                for a in addresses if a.network in gateways]}},
            "dns_server_ips": (dns_servers or [str(s.gateway) for s in info.subnets])
            if info.dns_enabled else list(container_dns),
            "dns_search_domains": [SEARCH_DOMAIN] if info.dns_enabled else []}
