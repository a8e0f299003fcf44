"""`netavark create`: a network definition from Podman, validated and completed as
netavark 1.16/2.x completes it. Pure: the engine passes what the host has.

Input {"network": {...}, "used": {"interfaces": [...], "names": {NAME: ID}, "subnets":
[...]}, "options": {"subnet_pools": [{"base", "size"}], "default_interface_name",
"check_used_subnets"}}; output the network as netavark prints it: its fields in
netavark's order, those without a value left out, a bridge name (the first free
`<default_interface_name>N`), a subnet from the pools if none was given (and one of
the other family with `ipv6_enabled`), a gateway per subnet (unless internal without
DNS), the ipam driver, the creation time.

The checks are netavark's, in its order and with its wording (callers match it); on
top, what portway's setup would refuse anyway is refused here, at once: drivers but
bridge and macvlan (ipvlan is parsed, then refused: this kernel has none), the dhcp
ipam driver, vlan and vrf, two subnets of one family. The none ipam
driver gives a network without subnets, and without DNS (nothing to serve it on).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from portway.core import macvlan
from portway.core import netavark as contract
from portway.core.ipam import find_overlap, pool_candidates
from portway.errors import InvalidInput
from portway.model.types import IPNetwork

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# containers.conf's default_subnet_pools: what Podman sends when none is configured.
DEFAULT_POOLS = [("10.89.0.0/16", 24), ("10.90.0.0/15", 24), ("10.92.0.0/14", 24),
                 ("10.96.0.0/11", 24), ("10.128.0.0/9", 24)]
BRIDGE_OPTIONS = ("mode", "mtu", "isolate", "metric", "no_default_route", "vrf", "vlan")
FIELDS = ("created", "dns_enabled", "driver", "id", "internal", "ipv6_enabled", "name",
          "network_interface", "options", "ipam_options", "subnets", "routes",
          "network_dns_servers", "labels")

Taken = list[tuple[IPNetwork, str]]


def _error(message: str) -> InvalidInput:
    return InvalidInput(message, "fix the network's definition")


def _net(text: Any, strict: bool = False) -> IPNetwork:
    """A subnet written as netavark reads one: with its prefix length (an address alone
    is not a subnet)."""
    try:
        if "/" not in str(text):
            raise ValueError(text)
        return ipaddress.ip_network(str(text), strict=strict)
    except ValueError:
        raise _error(f"invalid IP address syntax: {text}") from None


def _addr(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise _error(f"invalid IP address syntax: {text}") from None


def _check_name_id(name: Any, nid: Any, names: dict[str, Any]) -> None:
    if not name:
        raise _error("Network name must be supplied")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _error(f'Invalid characters in network name "{name}": must match '
                     "[a-zA-Z0-9][a-zA-Z0-9_.-]*")
    if name in names:
        raise _error(f"network already exists {name}")
    if not nid:
        raise _error("Network id must be supplied")
    if not isinstance(nid, str) or not HEX64.fullmatch(nid):
        raise _error(f'Network id must be a hexadecimal string "{nid}"')


def _check_interface_name(name: str) -> None:
    if len(name) > 15:
        raise _error("Interface name is too long: interface names must be 15 characters or "
                     f"less: {name}")
    if name in ("", ".", ".."):
        raise _error("Interface name cannot be . or ..")
    bad = next((c for c in name if c in "/:" or c.isspace()), None)
    if bad is not None:
        raise _error(f'Interface name cannot contain"{bad}"')


def _first_ip(subnet: IPNetwork) -> str:
    limit = subnet.max_prefixlen - 1 if subnet.version == 4 else subnet.max_prefixlen
    if subnet.prefixlen >= limit:
        raise _error(f"could not create gateway for subnet {subnet} because it has a "
                     f"{limit} or greater subnet prefix")
    return str(subnet.network_address + 1)


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and (a.network_address in b or b.network_address in a)


def _subnets(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise InvalidInput("invalid input for create: subnets must be a list of objects",
                           'give subnets as [{"subnet": CIDR, "gateway": IP}]')
    return [dict(s) for s in raw]


def _pick_v4(pools: list[tuple[str, int]], taken: Taken) -> IPNetwork:
    for candidate in pool_candidates(pools):
        if find_overlap(candidate, taken) is None:
            return candidate
    raise _error("could not find free subnet from subnet pools")


def complete(config: Any, taken: Taken, interface_taken: Callable[[str], bool],
             pick_v6: Callable[[Taken], IPNetwork], created: str,
             link_exists: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The completed network. taken: what portway and the host already use (always
    avoided: setup would refuse an overlap); interface_taken: whether a link or a
    network's bridge of that name exists; pick_v6: a free IPv6 /64; link_exists: whether
    the host has a link of that name (a macvlan network's parent; default:
    interface_taken)."""
    if not isinstance(config, dict) or not isinstance(config.get("network"), dict):
        raise InvalidInput("invalid input for create: no network object",
                           'pass {"network": {...}, "used": {...}, "options": {...}}')
    net: dict[str, Any] = dict(config["network"])
    used: dict[str, Any] = config["used"] if isinstance(config.get("used"), dict) else {}
    opts: dict[str, Any] = config["options"] if isinstance(config.get("options"), dict) \
        else {}
    used_names: dict[str, Any] = used["names"] if isinstance(used.get("names"), dict) \
        else {}
    used_ifaces = [str(i) for i in used.get("interfaces") or []]
    used_subnets = [_net(s) for s in used.get("subnets") or []]

    _check_name_id(net.get("name"), net.get("id"), used_names)
    if net.get("network_interface") is not None:
        _check_interface_name(str(net["network_interface"]))
    ipam_options = dict(net.get("ipam_options") or {})
    subnets = _subnets(net.get("subnets"))
    ipam_driver = str(ipam_options.get("driver") or "")
    if ipam_driver == "none" and subnets:
        raise _error("None ipam driver is set but subnets are given")
    if ipam_driver not in ("", "host-local", "dhcp", "none"):
        raise _error(f"Unsupported ipam driver: {ipam_driver}")
    driver = str(net.get("driver") or "bridge")
    if driver in (macvlan.DRIVER, "ipvlan"):
        return _complete_vlan(net, driver, ipam_options, subnets, taken,
                              link_exists or interface_taken, created)
    if driver != "bridge":
        raise InvalidInput(f"driver {driver!r} is not supported",
                           "portway networks containers with bridges and macvlan only")
    if ipam_driver == "dhcp":
        raise InvalidInput("the dhcp ipam driver is not supported by portway",
                           "give the network a subnet, or none to get a free one")

    # setup_bridge_options: Docker's names for two options, then every option checked.
    options = {str(k): str(v) for k, v in (net.get("options") or {}).items()}
    if "com.docker.network.driver.mtu" in options:
        options["mtu"] = options.pop("com.docker.network.driver.mtu")
    if "com.docker.network.bridge.name" in options:
        net["network_interface"] = options.pop("com.docker.network.bridge.name")
    unknown = next((k for k in options if k not in BRIDGE_OPTIONS), None)
    if unknown is not None:
        raise _error(f"unsupported bridge network option: {unknown}")
    parsed = contract.bridge_options(str(net["name"]), options)
    managed = not parsed["unmanaged"]
    check_used = managed and opts.get("check_used_subnets") is True

    # create_bridge: the bridge's name, then the subnets from the pools.
    if net.get("network_interface"):
        iface = str(net["network_interface"])
        if managed and iface in used_ifaces:
            raise _error(f"bridge name {iface} already in use")
        if not NAME.fullmatch(iface):
            raise _error(f"bridge name {iface} is invalid")
        contract.check_bridge_name(iface)
    else:
        prefix = opts.get("default_interface_name") or "podman"
        names = set(used_ifaces) | set(used_names)
        net["network_interface"] = next(
            f"{prefix}{i}" for i in range(1, 1_000_000)
            if f"{prefix}{i}" not in names and not interface_taken(f"{prefix}{i}"))
    avoid: Taken = list(taken)
    if check_used:
        avoid += [(s, "a subnet Podman uses") for s in used_subnets]
    pools = [(str(p["base"]), int(p["size"])) for p in opts.get("subnet_pools") or []
             if isinstance(p, dict) and "base" in p and "size" in p] or DEFAULT_POOLS
    if ipam_driver == "none":
        # No addresses at all, so nothing for DNS to serve on (netavark turns it off).
        net["dns_enabled"] = False
    elif not subnets:
        subnets = [{"subnet": str(_pick_v4(pools, avoid))}]
    if net.get("ipv6_enabled") and ipam_driver != "none":
        versions = {_net(s.get("subnet")).version for s in subnets}
        if 4 not in versions:
            subnets.append({"subnet": str(_pick_v4(pools, avoid))})
        if 6 not in versions:
            subnets.append({"subnet": str(pick_v6(avoid + [
                (s, "a subnet Podman uses") for s in used_subnets]))})
    ipam_options["driver"] = ipam_driver or "host-local"

    servers = net.get("network_dns_servers")
    if servers is not None:
        if not isinstance(servers, list):
            raise _error("network_dns_servers must be a list")
        net["network_dns_servers"] = [str(_addr(s)) for s in servers]
        if not net.get("dns_enabled"):
            raise _error("cannot set NetworkDNSServers if DNS is not enabled for the network")

    # validate_subnets: none twice, none overlapping, none used; gateways inside.
    nets = [_net(s.get("subnet")) for s in subnets]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a == b:
                raise _error(f"duplicate subnet defined: {a}")
            if _overlaps(a, b):
                raise _error(f"overlapping subnets: {a} and {b}")
    add_gateway = not net.get("internal") or bool(net.get("dns_enabled"))
    out_subnets: list[dict[str, Any]] = []
    for entry, subnet in zip(subnets, nets, strict=True):
        if check_used and any(_overlaps(subnet, u) for u in used_subnets):
            raise _error(f"subnet {subnet} is already used on the host or by another config")
        if managed:
            holder = find_overlap(subnet, taken)
            if holder is not None:
                raise _error(f"subnet {subnet} is already used on the host or by another "
                             f"config ({holder})")
        done: dict[str, Any] = {}
        if entry.get("gateway"):
            gateway = _addr(entry["gateway"])
            if gateway not in subnet:
                raise _error(f"gateway {gateway} not in subnet {subnet}")
            done["gateway"] = str(gateway)
        elif add_gateway:
            done["gateway"] = _first_ip(subnet)
        if entry.get("lease_range") is not None:
            done["lease_range"] = _lease_range(entry["lease_range"], subnet)
        done["subnet"] = str(subnet)
        out_subnets.append(done)
    net["subnets"] = out_subnets or None  # none (ipam driver none): left out
    contract.check_mtu_ipv6(str(net["name"]), parsed["mtu"], {s.version for s in nets})
    if any(s.version == 6 for s in nets):
        net["ipv6_enabled"] = True

    if net.get("routes") is not None:
        net["routes"] = _routes(net["routes"])
    net.update(created=created, driver="bridge", options=options or None,
               ipam_options=ipam_options, dns_enabled=bool(net.get("dns_enabled")),
               internal=bool(net.get("internal")),
               ipv6_enabled=bool(net.get("ipv6_enabled")))
    return {k: net[k] for k in FIELDS if net.get(k) is not None}


def _complete_vlan(net: dict[str, Any], driver: str, ipam_options: dict[str, Any],
                   subnets: list[dict[str, Any]], taken: Taken,
                   link_exists: Callable[[str], bool], created: str) -> dict[str, Any]:
    """netavark's create_ipvlan_macvlan, then the subnets' checks: a parent that exists
    (none: the default-route interface at setup), DNS off, the ipam driver from the
    subnets (none given: dhcp, which portway's setup cannot serve yet, so refused here),
    the options netavark knows for it, checked. ipvlan: all of that, then refused (this
    kernel has none)."""
    parent = net.get("network_interface")
    if parent and not link_exists(str(parent)):
        raise _error(f"parent interface {parent} does not exist")
    net["dns_enabled"] = False  # netavark: "makes little sense to support with macvlan"
    ipam_driver = str(ipam_options.get("driver") or "")
    if ipam_driver == "":
        ipam_driver = "host-local" if subnets else "dhcp"
        if ipam_driver == "dhcp" and driver == "ipvlan":
            raise _error("ipam driver dhcp is not supported with ipvlan")
    elif ipam_driver == "host-local" and not subnets:
        raise _error(f"{driver} driver needs at least one subnet specified when the "
                     "host-local ipam driver is set")
    elif ipam_driver == "dhcp":
        if driver == "ipvlan":
            raise _error("ipam driver dhcp is not supported with ipvlan")
        if subnets:
            raise _error("ipam driver dhcp set but subnets are set")
    ipam_options["driver"] = ipam_driver
    options = {str(k): str(v) for k, v in (net.get("options") or {}).items()}
    unknown = next((k for k in options if k not in macvlan.NETAVARK_OPTIONS), None)
    if unknown is not None:
        raise _error(f"unsupported vlan network option: {unknown}")
    for key in ("mtu", "metric"):
        if key in options:
            contract.parse_uint(key, options[key])
    if "no_default_route" in options:
        contract.parse_bool("no_default_route", options["no_default_route"])
    if "bclim" in options:
        contract.parse_int("bclim", options["bclim"])
    if "mode" in options:
        (macvlan.macvlan_mode if driver == macvlan.DRIVER else macvlan.ipvlan_mode)(
            options["mode"])
    if "bclim" in options and driver == "ipvlan":
        raise _error("unsupported ipvlan network option bclim")
    if driver == "ipvlan":
        raise InvalidInput(*macvlan.NO_IPVLAN)
    if ipam_driver == "dhcp":
        raise InvalidInput("the dhcp ipam driver is not supported by portway yet (a "
                           "macvlan network without subnets takes it)",
                           "give the network a subnet: the LAN's (--subnet CIDR "
                           "--gateway ROUTER)")
    # validate_subnets: none twice, none overlapping, gateways inside; a macvlan
    # network's subnet is its LAN's (which the host may be on): only portway's own
    # networks are in its way.
    nets = [_net(s.get("subnet")) for s in subnets]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a == b:
                raise _error(f"duplicate subnet defined: {a}")
            if _overlaps(a, b):
                raise _error(f"overlapping subnets: {a} and {b}")
    add_gateway = not net.get("internal")
    out_subnets: list[dict[str, Any]] = []
    for entry, subnet in zip(subnets, nets, strict=True):
        holder = find_overlap(subnet, [t for t in taken if t[1].startswith("network ")])
        if holder is not None:
            raise _error(f"subnet {subnet} is already used on the host or by another "
                         f"config ({holder})")
        if any(s.version == subnet.version for s in nets if s is not subnet):
            raise InvalidInput(f"more than one IPv{subnet.version} subnet",
                               "portway gives a network one subnet of each family")
        done: dict[str, Any] = {}
        if entry.get("gateway"):
            gateway = _addr(entry["gateway"])
            if gateway not in subnet:
                raise _error(f"gateway {gateway} not in subnet {subnet}")
            done["gateway"] = str(gateway)
        elif add_gateway:
            done["gateway"] = _first_ip(subnet)
        done["subnet"] = str(subnet)
        out_subnets.append(done)
    net["subnets"] = out_subnets
    contract.check_mtu_ipv6(str(net["name"]), contract.parse_uint("mtu", options["mtu"])
                            if "mtu" in options else 0, {s.version for s in nets})
    if any(s.version == 6 for s in nets):
        net["ipv6_enabled"] = True
    if net.get("routes") is not None:
        net["routes"] = _routes(net["routes"])
    net.update(created=created, driver=driver, options=options or None,
               ipam_options=ipam_options, internal=bool(net.get("internal")),
               ipv6_enabled=bool(net.get("ipv6_enabled")))
    return {k: net[k] for k in FIELDS if net.get(k) is not None}


def _lease_range(raw: Any, subnet: IPNetwork) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _error("lease_range must be an object")
    out: dict[str, str] = {}
    ends = {}
    for key in ("start_ip", "end_ip"):
        if raw.get(key) is None:
            continue
        try:
            ip = ipaddress.ip_address(str(raw[key]))
        except ValueError:
            raise _error(f"invalid {key}: invalid IP address syntax") from None
        if ip not in subnet:
            raise _error(f"lease range {key} {ip} not in subnet {subnet}")
        out[key], ends[key] = str(ip), ip
    if len(ends) == 2 and ends["start_ip"] > ends["end_ip"]:  # type: ignore[operator]
        raise _error(f"lease range start_ip {ends['start_ip']} must be less than or equal "
                     f"to end_ip {ends['end_ip']}")
    return {k: out[k] for k in ("end_ip", "start_ip") if k in out}


def _routes(raw: Any) -> list[dict[str, Any]]:
    """Routes as create checks them (its wording differs from setup's in one place: the
    route type in lower case)."""
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise _error("routes must be a list of objects")
    out: list[dict[str, Any]] = []
    for r in raw:
        dest = _net(r.get("destination"))
        try:
            given = ipaddress.ip_interface(str(r.get("destination"))).ip
        except ValueError:
            raise _error(f"invalid IP address syntax: {r.get('destination')}") from None
        if given != dest.network_address:  # host bits set
            raise _error("route destination invalid")
        gateway = _addr(r["gateway"]) if r.get("gateway") is not None else None
        kind = str(r.get("route_type") or "unicast")
        if kind == "unicast" and gateway is None:
            raise _error(f"route {dest} requires a gateway for type unicast")
        if kind in ("blackhole", "unreachable", "prohibit") and gateway is not None:
            raise _error(f"route {dest} must not have a gateway for type {kind}")
        if kind not in ("unicast", "blackhole", "unreachable", "prohibit"):
            raise _error(f'invalid route type "{kind}"')
        route: dict[str, Any] = {}
        if gateway is not None:
            route["gateway"] = str(gateway)
        route["destination"] = str(dest)
        if r.get("metric") is not None:
            route["metric"] = r["metric"]
        if r.get("route_type") is not None:
            route["route_type"] = r["route_type"]
        out.append(route)
    return out
