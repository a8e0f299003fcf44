"""portway's firewall as data: the `inet portway` table, rendered as libnftables JSON.

Nothing here talks to the kernel; kernel/nft.py applies what these functions
return, one list per atomic transaction. The per-packet cost is constant in
the number of networks, containers and ports: base chains dispatch through
verdict maps keyed by subnet or bridge name to a few rules per network, and
published ports are map elements, not rules.

    guard (filter, raw priority)  a portway subnet's addresses come only from its
                       bridge (src_in -> src-<net>, one comparison, which ends the guard
                       for what its containers send: notrack between them, else
                       guard_bridges; from elsewhere src_other: lo returns, the rest is
                       dropped); nothing a container sends arrives on its bridge port
                       itself (802.1 link-local frames do): dropped; VXLAN: vtep_in,
                       untracked to this host's VTEP, dropped to its other addresses
                       while it has one (the VXLAN socket takes them too); iifname @bridges ->
                       guard_unlisted (nothing from a bridge comes from 127/8:
                       route_localnet) -> guard_bridges: containers never reach the
                       host's 127/8, DNS to portway's server skips conntrack
    prerouting (nat)   127/8 never DNATs from outside; published ports by map
    output (nat)       published ports for the host's own processes, 127.0.0.1 too
    postrouting (nat)  host -> loopback-published port: masquerade;
                       saddr vmap @nat_src -> nat-<net>: hairpin and outbound masquerade
    forward (filter)   iifname vmap @fwd_in -> in-<net>: same network, published, isolation
                       oifname vmap @fwd_out -> out-<net>: only replies and published ports
                       (both mark the traffic for other tables first)
                       UDP 4789 from a bridge -> vxlan_out: no container sends VXLAN to
                       a cluster member's VTEP (@members)
    input (filter)     iifname vmap @host_in -> to_host, or an internal network's
                       host-<net> (which starts with to_host): no container sends to the
                       host's VXLAN port (it would feed an overlay's bridge unchecked);
                       internal networks reach no host address and no port but DNS on
                       their gateway. Nothing else meets more than that one lookup.

A second table, `bridge portway`, checks every frame a container sends on its
bridge port (anti-spoofing): the source MAC and address, in Ethernet, IP and ARP
headers, must be the ones portway assigned to that veth (an IP packet's MAC and
address in one lookup), and only IPv4, ARP and IPv6 pass. Unknown `pwv-` ports
send nothing (fail closed). A third, `arp portway`, drops ARP that arrives on a
`pwv-` port itself.

Many portway instances (state dirs) may share one host namespace, and so these
tables. Rule 1: the tables, their sets, maps and base chains are shared and the
same for all; whoever needs them first creates them (kernel side: under a lock),
and they go when no instance has anything left in them. Rule 2: every set or map
element carries its owner in its comment (names.owner_tag), and every per-network
chain is reached only through its network's elements; an instance adds, repairs
and removes only its own (plan_repair).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from portway.core.names import MACVLAN_PREFIX, UNCHECKED_VETH_PREFIX, owner_tag, parse_owner_tag
from portway.core.nftsim import describe
from portway.core.overlay import VXLAN_PORT
from portway.model.types import Endpoint, IPAddress, IPNetwork, Network

FAMILY = "inet"
TABLE = "portway"
T = {"family": FAMILY, "table": TABLE}
GUARD_FAMILY = "bridge"
G = {"family": GUARD_FAMILY, "table": TABLE}
ARP_FAMILY = "arp"
A = {"family": ARP_FAMILY, "table": TABLE}
TABLES = (FAMILY, GUARD_FAMILY, ARP_FAMILY)  # the families of portway's shared tables
VETH_PATTERN = "pwv-*"
# The host ends of the veths of networks without IPAM (Podman's ipam driver none): not
# checked by `bridge portway` (their containers pick their own addresses), but, as pwv-
# ports, they reach the host only through the bridge.
UNCHECKED_PATTERN = f"{UNCHECKED_VETH_PREFIX}*"
CONTAINER_PORTS = {"set": [VETH_PATTERN, UNCHECKED_PATTERN]}  # either kind: one lookup
MASQ_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
# The bit portway ORs into the packet mark of forwarded traffic to or from its
# networks, so another table whose forward chain drops by default can accept it:
#   meta mark & 0x02000000 == 0x02000000 accept
ACCEPT_MARK = 0x02000000
ICC_OPTION = "com.docker.network.bridge.enable_icc"
GATEWAY_MODE = "com.docker.network.bridge.gateway_mode_ipv"  # + 4 or 6: nat or routed
# netavark's isolation between networks (Podman's networks carry it): "strict", the
# default (as Docker's and netavark 2's), reaches no other portway network; "true"
# reaches only those that are not isolated; "false" reaches all, and is reached by
# every network that is not strict.
ISOLATE_OPTION = "isolate"
PODMAN_LABEL = "io.podman.network"  # on networks made from Podman's definitions
# netavark's outbound_addr4/6: a Podman network's traffic out leaves from that address
OUTBOUND4, OUTBOUND6 = "outbound_addr4", "outbound_addr6"


def netavark_option(network: Network, key: str, default: str | None = None) -> str | None:
    """One of netavark's options of a Podman network (portway's own networks take
    Docker's options: theirs are not read)."""
    if network.labels.get(PODMAN_LABEL) != "true":
        return default
    return network.options.get(key, default)

Cmd = dict[str, Any]


@dataclass(frozen=True)
class Published:
    """One published port, resolved: host side and the container address it goes to."""

    container_id: str
    protocol: str
    host_port: int
    container_ip: IPAddress
    container_port: int
    host_ip: IPAddress | None = None
    # The container address's family is routed on its network (gateway_mode_ipv4/6=
    # routed): the container port is also open at the container's own address.
    routed: bool = False


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(chain: str, expr: list[Any], comment: str) -> Cmd:
    return {"add": {"rule": {**T, "chain": chain, "expr": expr, "comment": comment}}}


def _chain(name: str, **hook: Any) -> Cmd:
    return {"add": {"chain": {**T, "name": name, **hook}}}


def _map(name: str, key: str | list[str], data: str, interval: bool = False) -> Cmd:
    body: dict[str, Any] = {**T, "name": name, "type": key, "map": data}
    if interval:
        body["flags"] = ["interval"]
    return {"add": {"map": body}}


ANY_KEY = {"concat": [_meta("l4proto"), _payload("th", "dport")]}
IP_KEY = {"concat": [_payload("ip", "daddr"), _meta("l4proto"), _payload("th", "dport")]}
LOCAL = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
LOOPBACK = {"prefix": {"addr": "127.0.0.0", "len": 8}}


def _set_mark() -> dict[str, Any]:
    return {"mangle": {"key": _meta("mark"),
                       "value": {"|": [_meta("mark"), ACCEPT_MARK]}}}


def _dnat(key: dict[str, Any], addr_map: str, port_map: str,
          proto: str = "ip") -> dict[str, Any]:
    # Two maps with scalar data (address, port) rather than one map to a concatenation:
    # libnftables 1.0.6 cannot parse concatenated map data in JSON. In an inet table the
    # kernel applies `dnat ip` to IPv4 packets only and `dnat ip6` to IPv6 ones.
    return {"dnat": {"family": proto,
                     "addr": {"map": {"key": key, "data": f"@{addr_map}"}},
                     "port": {"map": {"key": key, "data": f"@{port_map}"}}}}


@dataclass(frozen=True)
class Family:
    """What differs between the address families in portway's rules: the payload
    protocol, the address type, the suffix of its sets and maps, its loopback."""

    version: int
    proto: str  # "ip" or "ip6"
    addr: str  # "ipv4_addr" or "ipv6_addr"
    suffix: str  # "" (IPv4, the names of old) or "6"
    loopback: Any
    label: str  # "" or " (IPv6)", for rule comments

    def name(self, base: str) -> str:
        """A set or map of this family: dns, dns6; pub_any_addr, pub_any6_addr."""
        if base.startswith("pub_"):
            _, kind, rest = base.split("_", 2)
            return f"pub_{kind}{self.suffix}_{rest}"
        return f"{base}{self.suffix}"


V4 = Family(4, "ip", "ipv4_addr", "", LOOPBACK, "")
V6 = Family(6, "ip6", "ipv6_addr", "6", "::1", " (IPv6)")
FAMILIES = (V4, V6)


def family(version: int) -> Family:
    return V4 if version == 4 else V6


def render_base() -> list[Cmd]:
    """The table, its maps and base chains; no network, no port. Both address families:
    each has its own sets and maps (IPv4's keep their old names, IPv6's end in 6)."""
    cmds: list[Cmd] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": {**T, "name": "bridges", "type": "ifname"}}},
        _map("fwd_in", "ifname", "verdict"),
        _map("fwd_out", "ifname", "verdict"),
        _map("host_in", "ifname", "verdict"),
        # The families this host has a VTEP of (render_vtep): ipv4, ipv6.
        {"add": {"set": {**T, "name": "vtep_families", "type": "nf_proto"}}},
    ]
    for f in FAMILIES:
        cmds += [
            {"add": {"set": {**T, "name": f.name("dns"), "type": f.addr}}},
            {"add": {"set": {**T, "name": f.name("vteps"), "type": f.addr}}},
            {"add": {"set": {**T, "name": f.name("members"), "type": f.addr}}},
            _map(f.name("nat_src"), f.addr, "verdict", interval=True),
            _map(f.name("src_in"), f.addr, "verdict", interval=True),
            _map(f.name("pub_any_addr"), ["inet_proto", "inet_service"], f.addr),
            _map(f.name("pub_any_port"), ["inet_proto", "inet_service"], "inet_service"),
            _map(f.name("pub_ip_addr"), [f.addr, "inet_proto", "inet_service"], f.addr),
            _map(f.name("pub_ip_port"), [f.addr, "inet_proto", "inet_service"], "inet_service"),
            # Routed mode's published ports: container address, protocol, container port.
            {"add": {"set": {**T, "name": f.name("routed_ports"),
                             "type": [f.addr, "inet_proto", "inet_service"]}}},
        ]
    # The regular chains first, each before any chain whose rules go to it: gc restores
    # chains in this order, so a table an earlier portway made (without some of them)
    # is repaired in one pass, no rule sent to a chain not made yet.
    cmds += [_chain(name) for name in (
        "guard_dns", "guard_bridges", "guard_unlisted", "src_other", "vtep_in", "vxlan_out",
        "to_host")]
    cmds += [
        _chain("guard", type="filter", hook="prerouting", prio=-300, policy="accept"),
        _chain("guard_out", type="filter", hook="output", prio=-300, policy="accept"),
        _chain("prerouting", type="nat", hook="prerouting", prio=-100, policy="accept"),
        _chain("output", type="nat", hook="output", prio=-100, policy="accept"),
        _chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
        # Before other tables' filter chains (priority 0), so the mark is set by then.
        _chain("forward", type="filter", hook="forward", prio=-10, policy="accept"),
        _chain("input", type="filter", hook="input", prio=-10, policy="accept"),
    ]
    # The guard runs for every packet, tracked or not (raw priority: before conntrack, so
    # an established flow is no cheaper here), and its order is the per-packet cost of
    # the traffic portway carries most. A packet with a portway network's source address
    # (what a container sends) is settled by the first lookup: its network's src- chain
    # takes it to the end of the guard (untracked between containers of the network,
    # through guard_bridges otherwise), so it never meets the rules after it. Those are
    # what the rest (from the uplink, the host's own over lo, a container's link-local
    # addresses) needs: the checks by input interface, each a fixed-prefix comparison
    # rather than a set lookup, and the bridges' one lookup last.
    for f in FAMILIES:
        cmds.append(_rule("guard", [{"vmap": {
            "key": _payload(f.proto, "saddr"), "data": f"@{f.name('src_in')}"}}],
            f"a portway network's addresses come only from its bridge{f.label}"))
    # A bridge passes frames to 01:80:c2:00:00:0X up on the port they came in on,
    # without its prerouting hook (where `bridge portway` checks them): whatever
    # arrives on a container's port itself has skipped the checks.
    for pattern in (VETH_PATTERN, UNCHECKED_PATTERN):
        cmds.append(_rule("guard", [_match(_meta("iifname"), pattern), {"drop": None}],
                          "a container reaches the host only through its bridge (and its "
                          "checks)"))
    # The VXLAN of portway's overlay networks to and from this host's VTEP (vteps: its
    # --advertise-address) keeps no conntrack state: nothing NATs or filters it by
    # state, and each packet between hosts would cost a lookup on both. Accepted there,
    # as nothing further in the guard concerns it. What arrives goes there by one rule
    # for both families (the port first: what is not that protocol and port, nearly
    # every packet, fails it at its first comparison); what leaves meets its family's
    # rule first in guard_out.
    vxlan = _match(_payload("udp", "dport"), VXLAN_PORT)
    cmds += [_rule("guard", [vxlan, {"jump": {"target": "vtep_in"}}],
                   "VXLAN: to this host's VTEP, untracked (vtep_in)")]
    for f in FAMILIES:
        cmds += [
            _rule("vtep_in", [_match(_payload(f.proto, "daddr"), f"@{f.name('vteps')}"),
                              {"notrack": None}, {"accept": None}],
                  f"VXLAN to this host's VTEP skips conntrack{f.label}"),
            _rule("guard_out", [vxlan,
                                _match(_payload(f.proto, "saddr"), f"@{f.name('vteps')}"),
                                {"notrack": None}, {"accept": None}],
                  f"VXLAN from this host's VTEP skips conntrack{f.label}"),
        ]
    # The kernel's VXLAN socket is bound to the port on every address of the host, not
    # to the VTEP's: a datagram to any other address of it (a second address, another
    # interface's) feeds the overlay networks all the same. A container of another
    # cluster member sends there past that member's check (vxlan_out knows only the
    # members' VTEPs), masqueraded onto the underlay. So while this host has a VTEP of
    # the packet's family (vtep_families, from render_vtep), VXLAN to any other of its
    # own addresses is dropped; without one (in no cluster), nothing is.
    cmds.append(_rule("vtep_in", [_match(_meta("nfproto"), "@vtep_families"), LOCAL,
                                  {"drop": None}],
                      "VXLAN to this host's other addresses: its VXLAN socket takes them "
                      "too"))
    # What arrives from a portway bridge without a portway network's source address (a
    # network's own went to its src- chain above) meets the rules below in chains of
    # its own: one set lookup per packet, not one per rule, and nothing from the uplink
    # meets them. The bridges have route_localnet (a host process's connection to a
    # port published on 127.0.0.1 leaves into one with that source), so the kernel does
    # not drop what arrives on one from 127/8 as a martian: a container whose port is
    # not checked (a network without IPAM) could make a host service believe the host
    # itself sent it.
    cmds += [_rule("guard", [_match(_meta("iifname"), "@bridges"),
                             {"jump": {"target": "guard_unlisted"}}],
                   "from a portway network"),
             _rule("guard_unlisted", [_match(_payload("ip", "saddr"), V4.loopback),
                                      {"drop": None}],
                   "nothing from a bridge comes from the host's loopback addresses"),
             _rule("guard_unlisted", [{"goto": {"target": "guard_bridges"}}],
                   "the checks of all that comes from a bridge")]
    # A portway network's address from anywhere but its bridge (src- chains go here).
    cmds += [_rule("src_other", [_match(_meta("iifname"), "lo"), {"return": None}],
                   "the host's own, over loopback"),
             _rule("src_other", [{"drop": None}],
                   "a portway network's addresses come only from its bridge")]
    for f in FAMILIES:
        cmds.append(_rule("guard_bridges", [_match(_payload(f.proto, "daddr"), f.loopback),
                                            {"drop": None}],
                          f"containers never reach the host's loopback addresses{f.label}"))
    # DNS to portway's server keeps no conntrack state: nothing NATs or filters it by
    # state, so the entries would only cost time per query and table space, and UDP's
    # insertion race (two queries on one socket at once) could drop a query. Both
    # families' rules behind one (the port first): what is not UDP to port 53, nearly
    # all a container sends out, fails it at its first comparison.
    cmds += [_rule("guard_bridges", [_match(_payload("udp", "dport"), 53),
                                     {"jump": {"target": "guard_dns"}}],
                   "DNS: to portway's server, untracked (guard_dns)")]
    for f in FAMILIES:
        cmds += [
            _rule("guard_dns", [_match(_payload(f.proto, "daddr"), f"@{f.name('dns')}"),
                                {"notrack": None}],
                  f"queries to portway's DNS server skip conntrack{f.label}"),
            _rule("guard_out", [_match(_payload("udp", "sport"), 53),
                                _match(_meta("oifname"), "@bridges"),
                                _match(_payload(f.proto, "saddr"), f"@{f.name('dns')}"),
                                {"notrack": None}],
                  f"answers of portway's DNS server skip conntrack{f.label}"),
        ]
    # The end of the guard for what comes from a bridge, whichever way it came here (a
    # network's src- chain goes here, so the guard's own rules after its lookup are not
    # evaluated again: none of them concerns a bridge's traffic).
    cmds.append(_rule("guard_bridges", [{"accept": None}],
                      "from a portway network: nothing more to check"))
    for f in FAMILIES:
        cmds.append(_rule("prerouting", [_match(_payload(f.proto, "daddr"), f.loopback),
                                         {"return": None}],
                          "loopback-published ports stay local: no DNAT for 127/8 from "
                          "outside (moby/moby#45610)" if f is V4 else
                          "loopback-published ports stay local: no DNAT for ::1 from outside"))
    cmds.append(_rule("output", [_match(_payload("ip6", "daddr"), "::1"), {"return": None}],
                      "no DNAT from ::1: IPv6 could not bring the answer back to it (the "
                      "connection is refused at once instead)"))
    for chain in ("prerouting", "output"):
        for f in FAMILIES:
            ip_key = {"concat": [_payload(f.proto, "daddr"), _meta("l4proto"),
                                 _payload("th", "dport")]}
            cmds.append(_rule(chain, [LOCAL, _dnat(ip_key, f.name("pub_ip_addr"),
                                                   f.name("pub_ip_port"), f.proto)],
                              f"published ports on one host address{f.label}"))
            cmds.append(_rule(chain, [LOCAL, _dnat(ANY_KEY, f.name("pub_any_addr"),
                                                   f.name("pub_any_port"), f.proto)],
                              f"published ports on every host address{f.label}"))
    for f in FAMILIES:
        cmds.append(_rule("postrouting", [_match(_payload(f.proto, "saddr"), f.loopback),
                                          _match(_meta("oifname"), "@bridges"),
                                          {"masquerade": None}],
                          "host process to a loopback-published port: answer to the bridge "
                          f"address{f.label}"))
    for f in FAMILIES:
        cmds.append(_rule("postrouting", [{"vmap": {"key": _payload(f.proto, "saddr"),
                                                    "data": f"@{f.name('nat_src')}"}}],
                          f"per-network source NAT{f.label}"))
    # (Each network's in- and out- chain marks its traffic for other tables first.)
    # The same from a container to another cluster member's VTEP (members: every
    # member's --advertise-address, kept by the cluster service; empty outside one): it
    # leaves masqueraded to this host's own address, so the other host cannot tell it
    # from this host's tunnel traffic and hands the frame inside to its overlay network.
    # Only VXLAN to a member: a container's own VXLAN to other addresses (kind,
    # flannel) passes. Every forwarded packet meets the one rule that sends there (the
    # port first: what is not UDP fails at its first comparison, once for both
    # families); only a container's VXLAN meets the members' sets.
    for f in FAMILIES:
        cmds.append(_rule("vxlan_out", [_match(_payload(f.proto, "daddr"),
                                               f"@{f.name('members')}"), {"drop": None}],
                          f"containers never send to a cluster member's VXLAN port{f.label}"))
    cmds.append(_rule("forward", [_match(_payload("udp", "dport"), VXLAN_PORT),
                                  _match(_meta("iifname"), "@bridges"),
                                  {"jump": {"target": "vxlan_out"}}],
                      "a container's VXLAN: never to a cluster member"))
    cmds += [
        _rule("forward", [{"vmap": {"key": _meta("iifname"), "data": "@fwd_in"}}],
              "from a portway network"),
        _rule("forward", [{"vmap": {"key": _meta("oifname"), "data": "@fwd_out"}}],
              "into a portway network"),
        # Whatever a portway network sends to the host meets its network's element here
        # (internal networks: their host- chain; the others: to_host), and nothing else
        # meets more than this one lookup: VXLAN from other hosts, every packet of the
        # overlay's tunnels, pays nothing more for the rule below.
        _rule("input", [{"vmap": {"key": _meta("iifname"), "data": "@host_in"}}],
              "from a portway network to the host"),
        # The kernel's VXLAN socket takes port 4789 on every address of the host and
        # hands what it gets to the device of the header's VNI, whoever sent it: the
        # frame inside enters that overlay network's bridge through its VXLAN port,
        # which `bridge portway` does not check. From a container, that would put any
        # frame (any MAC, any address) into any overlay network of this host, past
        # isolation and the anti-spoofing checks.
        _rule("to_host", [_match(_payload("udp", "dport"), VXLAN_PORT), {"drop": None}],
              "containers never send to this host's VXLAN port"),
    ]
    return cmds


def render_arp_base() -> list[Cmd]:
    """The `arp portway` table: ARP that arrives on a container's bridge port itself
    (not through the bridge) never reaches the host."""
    return [
        {"add": {"table": {"family": ARP_FAMILY, "name": TABLE}}},
        {"add": {"chain": {**A, "name": "input", "type": "filter", "hook": "input",
                           "prio": -300, "policy": "accept"}}},
        {"add": {"rule": {**A, "chain": "input", "expr": [
            _match(_meta("iifname"), CONTAINER_PORTS), {"drop": None}],
            "comment": "a container's ARP reaches the host only through its bridge"}}},
    ]


def render_shared() -> dict[str, list[Cmd]]:
    """Every shared table, by family: what an instance creates if it is missing (for
    `bridge`, after GUARD_PRELUDE)."""
    return {FAMILY: render_base(), GUARD_FAMILY: render_guard_base(),
            ARP_FAMILY: render_arp_base()}


def chain_names(network: Network) -> tuple[str, str, str]:
    short = network.id[:12]
    return f"nat-{short}", f"in-{short}", f"out-{short}"


def src_chain(network: Network) -> str:
    """The chain that checks where a network's source addresses come from."""
    return f"src-{network.id[:12]}"


def host_chain(network: Network) -> str:
    """The input chain of an internal network."""
    return f"host-{network.id[:12]}"


def _bool_option(network: Network, key: str) -> bool:
    return network.options.get(key, "true") != "false"


def _elem(key: Any, tag: str) -> dict[str, Any]:
    return {"elem": {"val": key, "comment": tag}}


def _add(name: str, key: Any, tag: str, value: Any = None, table: dict[str, str] = T) -> Cmd:
    """One element, its owner in its comment; value for a map's element."""
    elem = _elem(key, tag) if value is None else [_elem(key, tag), value]
    return {"add": {"element": {**table, "name": name, "elem": [elem]}}}


def _delete(name: str, key: Any, table: dict[str, str] = T) -> Cmd:
    return {"delete": {"element": {**table, "name": name, "elem": [key]}}}


def _prefix(subnet: IPNetwork) -> dict[str, Any]:
    return {"prefix": {"addr": str(subnet.network_address), "len": subnet.prefixlen}}


def network_tag(instance: str, network: Network) -> str:
    return owner_tag(instance, "network", network.id)


def unmanaged(network: Network) -> bool:
    """A bridge the user made and keeps (netavark's mode=unmanaged), or a macvlan
    network (its traffic never meets the host's IP stack): portway plugs containers
    into it and adds no rule of its own for it, as netavark adds none."""
    return network.driver == "macvlan" or netavark_option(network, "mode") == "unmanaged"


def render_network(network: Network, instance: str) -> list[Cmd]:
    """The chains and map elements of one network (elements owned by instance)."""
    if unmanaged(network):
        return []
    nat, fin, fout = chain_names(network)
    src = src_chain(network)
    br = network.bridge
    tag = network_tag(instance, network)
    owner = f"network {network.name} {network.id[:12]}"
    established = _match({"ct": {"key": "state"}}, "established", "in")
    replies = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    dnatted = _match({"ct": {"key": "status"}}, "dnat", "in")
    same = _match(_meta("oifname"), br)
    cmds: list[Cmd] = [_chain(fin), _chain(fout), _chain(src)]
    mark = "mark portway's traffic for other tables: meta mark & 0x02000000"
    # Replies first, but not `related`: an ICMP error a container forges about another
    # network's tracked flow is `related`, and must meet isolation (below) first.
    cmds += [
        _rule(fin, [_set_mark()], mark),
        _rule(fin, [established, {"accept": None}], f"{owner}: replies"),
    ]
    icc = _bool_option(network, ICC_OPTION)
    if not icc and not network.internal:
        # icc=false keeps containers from each other's own addresses, not from a port
        # published on the host: a hairpin (DNATed back onto this bridge) passes, as it
        # does through Docker's userland proxy. Only its first packet meets this (the
        # rest is established); not `related`, so a forged ICMP error about such a flow
        # still meets the drop below.
        cmds.append(_rule(fin, [same, dnatted, _match({"ct": {"key": "state"}}, "new", "in"),
                                {"accept": None}],
                          f"{owner}: to a published port through the host (icc off)"))
        if network.of_version(6) is not None and routed(network, 6):
            # Routed IPv6 does not masquerade a hairpin: the answer goes straight back
            # to the client container, whose MAC the server must find. Neighbour
            # discovery is IPv6's ARP, which passes between them as ARP does (no IP
            # hook sees ARP); nothing else does.
            cmds.append(_rule(fin, [same, _match(_payload("icmpv6", "type"), {
                "set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}), {"accept": None}],
                f"{owner}: neighbour discovery between its containers (routed IPv6, icc "
                "off)"))
    cmds.append(_rule(fin, [same, {"accept" if icc else "drop": None}],
                      f"{owner}: between its containers (icc)"))
    if network.internal:
        host = host_chain(network)
        cmds += [
            _rule(fin, [{"drop": None}], f"{owner}: internal, no way out"),
            _chain(host),
            _rule(host, [{"jump": {"target": "to_host"}}],
                  f"{owner}: what no portway network sends to the host"),
            _rule(host, [replies, {"accept": None}], f"{owner}: replies to the host"),
        ]
        if network.of_version(6) is not None:
            # Neighbour discovery with the gateway: IPv6's ARP, but IP, so it meets this
            # chain; without it nothing of IPv6 reaches the gateway, DNS included.
            cmds.append(_rule(host, [_match(_payload("icmpv6", "type"), {
                "set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}), {"accept": None}],
                f"{owner}: neighbour discovery with its gateway (IPv6)"))
        for sub in network.subnets:
            f = family(sub.version)
            cmds.append(_rule(host, [_match(_payload(f.proto, "daddr"), str(sub.gateway)),
                                     _match(_meta("l4proto"), {"set": ["udp", "tcp"]}),
                                     _match(_payload("th", "dport"), 53), {"accept": None}],
                              f"{owner}: DNS on its gateway{f.label}"))
        cmds += [
            _rule(host, [{"drop": None}],
                  f"{owner}: internal, nothing else of the host"),
        ]
    else:
        cmds.append(_rule(fin, [dnatted, {"accept": None}],
                          f"{owner}: to a published port, wherever it lives"))
        isolate = netavark_option(network, ISOLATE_OPTION, "strict")
        if isolate == "false":
            cmds.append(_rule(fin, [_match(_meta("oifname"), "@bridges"), {"accept": None}],
                              f"{owner}: not isolated (isolate=false): other portway "
                              "networks"))
        elif isolate != "true":
            cmds.append(_rule(fin, [_match(_meta("oifname"), "@bridges"), {"drop": None}],
                              f"{owner}: isolation from other portway networks"))
        # isolate=true: on to the other network's own chain, which only a network that
        # is not isolated opens (below).
    cmds += [
        _rule(fout, [_set_mark()], mark),
        _rule(fout, [replies, {"accept": None}], f"{owner}: replies"),
        _rule(fout, [dnatted, {"accept": None}], f"{owner}: published ports"),
    ]
    if not network.internal and netavark_option(network, ISOLATE_OPTION) == "false":
        cmds.append(_rule(fout, [_match(_meta("iifname"), "@bridges"), {"accept": None}],
                          f"{owner}: not isolated (isolate=false): from other portway "
                          "networks that are not strict"))
    for f in FAMILIES:
        # Docker 27's routed mode: a published container port is open at the
        # container's own address (the host port plays no part in that) to the
        # outside, not to portway's other networks: what comes from one of their
        # bridges got here past its own isolation (isolate=true) and meets this
        # network's drop, as any other port of it does.
        if network.of_version(f.version) is not None and routed(network, f.version) \
                and not network.internal:
            dest = {"concat": [_payload(f.proto, "daddr"), _meta("l4proto"),
                               _payload("th", "dport")]}
            cmds.append(_rule(fout, [_match(_meta("iifname"), "@bridges", "!="),
                                     _match(dest, f"@{f.name('routed_ports')}"),
                                     {"accept": None}],
                              f"{owner}: published ports, routed{f.label}"))
    cmds += [
        _rule(fout, [{"drop": None}], f"{owner}: internal, nothing comes in from outside"
              if network.internal else f"{owner}: no direct access from outside"),
        # Reached by the source address (src_in): from anywhere but the network's bridge
        # to src_other (the host's own over lo goes on through the guard; the rest is
        # dropped), so what its containers send meets one comparison here.
        _rule(src, [_match(_meta("iifname"), br, "!="), {"goto": {"target": "src_other"}}],
              f"{owner}: its addresses come only from its bridge"),
    ]
    if not network.internal and _bool_option(network, ICC_OPTION):
        # From one container to another of the network: bridged, never NATed, so no
        # conntrack entry (nothing here matches on its state: icc accepts it as it is;
        # with icc off it is dropped, tracked or not). Not to the gateway (published
        # ports on it are DNATed), not where a family is routed (there, a hairpin's
        # answer needs conntrack's reverse NAT, as it does on an internal network,
        # which has no masquerade). It ends the guard there: what guard_bridges checks
        # (the host's loopback, DNS to the gateway) is no container's address.
        for sub in network.subnets:
            if routed(network, sub.version):
                continue
            f = family(sub.version)
            cmds.append(_rule(src, [_match(_payload(f.proto, "daddr"), _prefix(sub.subnet)),
                                    _match(_payload(f.proto, "daddr"), str(sub.gateway), "!="),
                                    {"notrack": None}, {"accept": None}],
                              f"{owner}: between its containers, no conntrack entry{f.label}"))
    # The rest of what its containers send: the checks of what comes from a bridge, which
    # end the guard (guard_bridges' last rule accepts).
    cmds.append(_rule(src, [{"goto": {"target": "guard_bridges"}}],
                      f"{owner}: from its bridge"))
    cmds += [
        _add("bridges", br, tag),
        _add("host_in", br, tag,
             {"jump": {"target": host_chain(network) if network.internal else "to_host"}}),
        _add("fwd_in", br, tag, {"jump": {"target": fin}}),
        _add("fwd_out", br, tag, {"jump": {"target": fout}}),
    ]
    for sub in network.subnets:
        f = family(sub.version)
        cmds += [_add(f.name("dns"), str(sub.gateway), tag),
                 _add(f.name("src_in"), _prefix(sub.subnet), tag, {"jump": {"target": src}})]
    if not network.internal:
        cmds.append(_chain(nat))
        cmds.append(_rule(nat, [dnatted, same, {"masquerade": None}],
                          f"{owner}: hairpin to a published port on its own bridge"))
        if _bool_option(network, MASQ_OPTION):
            for f, key in ((V4, OUTBOUND4), (V6, OUTBOUND6)):
                # netavark's outbound_addr4/6: out from that address instead.
                addr = netavark_option(network, key)
                if addr:
                    cmds.append(_rule(nat, [_match(_meta("nfproto"), f"ipv{f.version}"),
                                            _match(_meta("oifname"), br, "!="),
                                            {"snat": {"family": f.proto, "addr": addr}}],
                                      f"{owner}: outbound source NAT to {addr} ({key})"))
            cmds.append(_rule(nat, [_match(_meta("oifname"), br, "!="), {"masquerade": None}],
                              f"{owner}: outbound masquerade"))
        for sub in network.subnets:
            if not routed(network, sub.version):
                cmds.append(_add(family(sub.version).name("nat_src"), _prefix(sub.subnet),
                                 tag, {"jump": {"target": nat}}))
    return cmds


def routed(network: Network, version: int) -> bool:
    """Docker 27's gateway_mode_ipv4/ipv6=routed: that family leaves without NAT (the
    outside routes the subnet back to the host)."""
    return network.options.get(f"{GATEWAY_MODE}{version}") == "routed"


def network_chains(network: Network) -> list[str]:
    nat, fin, fout = chain_names(network)
    own = [fin, fout, src_chain(network)]
    return [*own, host_chain(network)] if network.internal else [*own, nat]


def render_network_removal(network: Network) -> list[Cmd]:
    if unmanaged(network):
        return []
    """Its elements, then its chains (nothing else refers to them)."""
    br = network.bridge
    cmds: list[Cmd] = [_delete("fwd_in", br), _delete("fwd_out", br), _delete("host_in", br),
                       _delete("bridges", br)]
    for sub in network.subnets:
        f = family(sub.version)
        cmds += [_delete(f.name("dns"), str(sub.gateway)),
                 _delete(f.name("src_in"), _prefix(sub.subnet))]
        if not network.internal and not routed(network, sub.version):
            cmds.append(_delete(f.name("nat_src"), _prefix(sub.subnet)))
    cmds += [{"delete": {"chain": {**T, "name": name}}} for name in network_chains(network)]
    return cmds


def _port_elements(p: Published) -> list[tuple[str, Any, Any]]:
    """The map elements of one published port, in the maps of its container address's
    family."""
    f = family(p.container_ip.version)
    direct: list[tuple[str, Any, Any]] = [] if not p.routed else [
        (f.name("routed_ports"), {"concat": [str(p.container_ip), p.protocol,
                                             p.container_port]}, None)]
    if p.host_ip is None:
        key: dict[str, Any] = {"concat": [p.protocol, p.host_port]}
        return [(f.name("pub_any_addr"), key, str(p.container_ip)),
                (f.name("pub_any_port"), key, p.container_port), *direct]
    key = {"concat": [str(p.host_ip), p.protocol, p.host_port]}
    return [(f.name("pub_ip_addr"), key, str(p.container_ip)),
            (f.name("pub_ip_port"), key, p.container_port), *direct]


def render_vtep(address: IPAddress, instance: str) -> list[Cmd]:
    """This host's VTEP (a host in a cluster: its --advertise-address), whose VXLAN skips
    conntrack."""
    f = family(address.version)
    tag = owner_tag(instance, "vtep", str(address).replace(":", "-"))
    return [_add(f.name("vteps"), str(address), tag),
            _add("vtep_families", f"ipv{f.version}", tag)]


def render_members(addresses: Iterable[IPAddress], instance: str) -> list[Cmd]:
    """The cluster's members' VTEPs (their --advertise-address), to which no container
    sends VXLAN."""
    # (An owner tag's id has no colon: an IPv6 address's are written as dashes.)
    return [_add(family(a.version).name("members"), str(a),
                 owner_tag(instance, "member", str(a).replace(":", "-")))
            for a in sorted(addresses, key=lambda a: (a.version, int(a)))]


def render_members_removal(addresses: Iterable[IPAddress]) -> list[Cmd]:
    return [_delete(family(a.version).name("members"), str(a)) for a in addresses]


def listed_members(items: list[dict[str, Any]], instance: str) -> list[IPAddress]:
    """The members' VTEPs instance put in the sets, from `inet portway` as listed."""
    out: list[IPAddress] = []
    for item in items:
        body = item.get("set")
        if body is None or body.get("name") not in (V4.name("members"), V6.name("members")):
            continue
        for elem in body.get("elem", []):
            if not isinstance(elem, dict) or "elem" not in elem:
                continue  # (no comment: not portway's)
            tag = parse_owner_tag(elem["elem"].get("comment"))
            if tag is not None and tag[:2] == (instance, "member"):
                out.append(ipaddress.ip_address(elem["elem"]["val"]))
    return out


def render_ports(ports: Iterable[Published], instance: str) -> list[Cmd]:
    cmds: list[Cmd] = []
    for p in ports:
        tag = owner_tag(instance, "container", p.container_id)
        for name, key, value in _port_elements(p):
            cmds.append(_add(name, key, tag, value))
    return cmds


def render_ports_removal(ports: Iterable[Published]) -> list[Cmd]:
    cmds: list[Cmd] = []
    for p in ports:
        for name, key, _ in _port_elements(p):
            cmds.append(_delete(name, key))
    return cmds


def render_guard_base() -> list[Cmd]:
    """The `bridge portway` table: what a container may send on its bridge port (and,
    in host_out, what of the host's may reach it: no router's messages). Every
    frame a container sends passes here, established flows' too (the bridge's prerouting
    hook comes before any conntrack), so the base chain goes by EtherType to the checks
    of that protocol alone, and an IP packet's MAC and source address are checked
    together, in one lookup of (port, MAC, address): an IPv4 frame meets two lookups,
    the vmap's and that one, not every protocol's rules."""
    iif = _meta("iifname")

    def pair(proto: str, field: str) -> dict[str, Any]:
        return {"concat": [iif, _payload(proto, field)]}

    def sender(proto: str) -> dict[str, Any]:
        return {"concat": [iif, _payload("ether", "saddr"), _payload(proto, "saddr")]}

    def rule(chain: str, why: str, *expr: Any) -> Cmd:
        return {"add": {"rule": {**G, "chain": chain, "comment": why, "expr": list(expr)}}}

    def unless(chain: str, key: dict[str, Any], allowed: str, why: str) -> Cmd:
        return rule(chain, why, _match(key, f"@{allowed}", "!="), {"drop": None})

    def chain(name: str) -> Cmd:
        return {"add": {"chain": {**G, "name": name}}}

    icmpv6 = _payload("icmpv6", "type")
    by_type = {"set": [["ip", {"goto": {"target": "spoof_ip"}}],
                       ["arp", {"goto": {"target": "spoof_arp"}}],
                       ["ip6", {"goto": {"target": "spoof_ip6"}}]]}
    own_mac = "a container sends only from its own MAC"
    return [
        {"add": {"table": {"family": GUARD_FAMILY, "name": TABLE}}},
        {"add": {"set": {**G, "name": "macs", "type": ["ifname", "ether_addr"]}}},
        {"add": {"set": {**G, "name": "addrs", "type": ["ifname", "ipv4_addr"]}}},
        {"add": {"set": {**G, "name": "addrs6", "type": ["ifname", "ipv6_addr"]}}},
        {"add": {"set": {**G, "name": "senders",
                         "type": ["ifname", "ether_addr", "ipv4_addr"]}}},
        {"add": {"set": {**G, "name": "senders6",
                         "type": ["ifname", "ether_addr", "ipv6_addr"]}}},
        {"add": {"set": {**G, "name": "v6ports", "type": "ifname"}}},
        chain("spoof_ip"), chain("spoof_arp"), chain("spoof_ip6"),
        {"add": {"chain": {**G, "name": "spoof", "type": "filter", "hook": "prerouting",
                           "prio": -300, "policy": "accept"}}},
        rule("spoof", "only container ports are checked", _match(iif, VETH_PATTERN, "!="),
             {"accept": None}),
        # goto: what passes a protocol's checks ends at this chain's policy, accept.
        rule("spoof", "checks by protocol",
             {"vmap": {"key": _payload("ether", "type"), "data": by_type}}),
        rule("spoof", "only IPv4, ARP and IPv6", {"drop": None}),
        unless("spoof_ip", sender("ip"), "senders",
               "a container sends only from its own MAC and address"),
        unless("spoof_arp", {"concat": [iif, _payload("ether", "saddr")]}, "macs", own_mac),
        unless("spoof_arp", pair("arp", "saddr ether"), "macs", "ARP: only its own MAC"),
        unless("spoof_arp", pair("arp", "saddr ip"), "addrs", "ARP: only its own address"),
        # IPv6: only from an endpoint with an IPv6 address (an IPv4-only network passes
        # none at all), never a router's messages, and only from its own address but
        # for the few messages a host sends from no address yet. What is not ICMPv6
        # and comes from the port's own MAC and address is all of that at once: one
        # lookup for the data a container sends, the rules after it for the rest. An
        # Authentication Header can hide ICMPv6 (below): it meets the rules too.
        rule("spoof_ip6", "neither ICMPv6 nor AH, and from the port's MAC and address: "
             "nothing more to check", _match(_meta("l4proto"), {"set": ["ah", "ipv6-icmp"]},
                                             "!="),
             _match(sender("ip6"), "@senders6"), {"accept": None}),
        unless("spoof_ip6", {"concat": [iif, _payload("ether", "saddr")]}, "macs", own_mac),
        rule("spoof_ip6", "IPv6 only from containers with an IPv6 address",
             _match(iif, "@v6ports", "!="), {"drop": None}),
        rule("spoof_ip6", "a container advertises no routes and redirects nobody",
             _match(icmpv6, {"set": ["nd-router-advert", "nd-redirect"]}), {"drop": None}),
        # nftables finds the transport header past the extension headers but stops at
        # an Authentication Header (the kernel's ipv6_find_hdr with IP6_FH_F_AUTH):
        # behind one, an ICMPv6 message is `meta l4proto ah` and has no `icmpv6 type`,
        # so no check of neighbour discovery here can read it. A receiver with a
        # security association for it would take it (with none, Linux drops it); the
        # bridge passes none: behind AH only what no check here needs to read (ICMPv6
        # is not, nor any header that could carry it further in: another extension
        # header, another AH, a whole IPv6 packet as in tunnel mode). An allow-list,
        # as nft 1.0.6 aborts on a rule that compares `ah nexthdr` with 51 (ah) and on
        # the listing of one. What passes it meets the checks of the source below.
        rule("spoof_ip6", "behind AH, only TCP, UDP, ESP or SCTP: no check reads past it",
             _match(_payload("ah", "nexthdr"), {"set": AH_CARRIES}, "!="), {"drop": None}),
        # A first fragment holds the headers up to the transport header (RFC 8200, 4.5),
        # or nothing here can read what it carries. nftables follows a fragment header
        # into the next one and gives up where a header runs past the fragment's end: cut
        # just before a second destination options header, a first fragment has no
        # transport protocol and no `icmpv6 type` (no check of neighbour discovery
        # matches it), while the host's reassembly keeps it (its own check of a
        # truncated first fragment stops at the same unreadable header) and takes the
        # advertisement that follows in the next fragment. Behind a fragment header, no
        # extension header nftables would walk through (hop-by-hop, routing, fragment,
        # destination options; AH stops it, and is checked above). A fragmented packet
        # behind those passes on the fast path only, where nftables found its transport
        # protocol to be one no check here reads further (a sender's stack puts all the
        # headers up to it in the first fragment).
        rule("spoof_ip6", "a first fragment holds its chain of headers: no extension header "
             "behind the fragment header", _match(_exthdr("frag", "frag-off"), 0),
             _match(_exthdr("frag", "nexthdr"), {"set": WALKED_HEADERS}), {"drop": None}),
        # Neighbour discovery comes with no extension header (RFC 6980: never
        # fragmented). Cut into fragments, its option or target would travel where no
        # rule below can read it (a fragment but the first has no transport header to
        # read), and the host takes what it reassembles (br_netfilter's defragmenting
        # loses the mark that makes it refuse fragmented neighbour discovery); behind
        # another header, `ip6 length` is not the message's own. Dropping the first
        # fragment leaves the rest nothing to be reassembled with.
        rule("spoof_ip6", "neighbour discovery has no extension headers",
             _match(icmpv6, {"set": ["nd-router-solicit", "nd-neighbor-solicit",
                                     "nd-neighbor-advert"]}),
             _match(_payload("ip6", "nexthdr"), "ipv6-icmp", "!="), {"drop": None}),
        # A solicitation or advertisement may name a link-layer address (an option after
        # its fixed part): the neighbour that takes it sends what is meant for the sender
        # there. It must be the port's own MAC (ARP's "only its own MAC"), and it is the
        # message's only option, so that it cannot hide behind another one.
        rule("spoof_ip6", "neighbour discovery carries at most one option",
             _match(icmpv6, {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}),
             _match(_payload("ip6", "length"), ND_SIZE + 8, ">"), {"drop": None}),
        rule("spoof_ip6", "router solicitations carry at most one option",
             _match(icmpv6, "nd-router-solicit"),
             _match(_payload("ip6", "length"), RS_SIZE + 8, ">"), {"drop": None}),
        rule("spoof_ip6", "neighbour discovery names only the port's own MAC",
             _match(icmpv6, {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}),
             _match(_raw(ND_SIZE, 1), {"set": LLADDR_OPTIONS}),
             _match({"concat": [iif, _raw(ND_SIZE + 2, 6)]}, "@lladdrs", "!="),
             {"drop": None}),
        rule("spoof_ip6", "router solicitations name only the port's own MAC",
             _match(icmpv6, "nd-router-solicit"),
             _match(_raw(RS_SIZE, 1), {"set": LLADDR_OPTIONS}),
             _match({"concat": [iif, _raw(RS_SIZE + 2, 6)]}, "@lladdrs", "!="),
             {"drop": None}),
        rule("spoof_ip6", "from no address: only listener reports and address checks",
             _match(_payload("ip6", "saddr"), "::"),
             _match(icmpv6, {"set": ["mld-listener-report", "mld2-listener-report",
                                     "nd-neighbor-solicit"]}), {"accept": None}),
        unless("spoof_ip6", pair("ip6", "saddr"), "addrs6",
               "a container sends only from its own IPv6 address"),
        # A neighbour advertisement carries the address it speaks for (its target) apart
        # from its source: it must be the sender's own, or it poisons neighbours' caches.
        rule("spoof_ip6", "neighbour advertisements only for its own address",
             _match(icmpv6, "nd-neighbor-advert"),
             _match({"concat": [iif, ND_TARGET]}, "@targets6", "!="), {"drop": None}),
        # What the host itself sends into a bridge (a program's raw socket, radvd,
        # dnsmasq's enable-ra, whatever is routed out of the bridge) meets the bridge's
        # output hook on its way to each port, with that port as oifname; no prerouting
        # hook sees it. Containers take their addresses and routes from portway alone:
        # no router advertisement or redirect of the host reaches them, and the kernel's
        # accept_ra=1 on their eth0 (Docker's too) has nothing to take. HOST_OUT_PORTS:
        # the container ports and overlay VXLAN devices (through which it would reach
        # other hosts' containers), in one prefix comparison. Every frame the host sends
        # into any bridge (routed traffic to containers too) meets this chain, so each
        # rule tests the transport protocol first: what is neither ICMPv6 nor AH, nearly
        # every frame, fails each rule at its first comparison (nft then needs no check
        # of the EtherType, and lists the rule without the protocol, as implied).
        {"add": {"chain": {**G, "name": "host_out", "type": "filter", "hook": "output",
                           "prio": -300, "policy": "accept"}}},
        rule("host_out", "the host advertises no routes to containers and redirects none",
             _match(_meta("l4proto"), "ipv6-icmp"), _match(_meta("oifname"), HOST_OUT_PORTS),
             _match(icmpv6, {"set": ["nd-router-advert", "nd-redirect"]}), {"drop": None}),
        # IPv4 has redirects too: a container's eth0 keeps the kernel's
        # accept_redirects=1, and one acted on sends its traffic around the host, past
        # its filters, to whatever first hop it names.
        rule("host_out", "the host redirects no container's IPv4 either",
             _match(_meta("l4proto"), "icmp"), _match(_meta("oifname"), HOST_OUT_PORTS),
             _match(_payload("icmp", "type"), "redirect"), {"drop": None}),
        # Behind an AH, `icmpv6 type` is unreadable (spoof_ip6's rule says why): the same
        # allow-list as there.
        rule("host_out", "behind AH, only TCP, UDP, ESP or SCTP: no check reads past it",
             _match(_meta("l4proto"), "ah"), _match(_meta("oifname"), HOST_OUT_PORTS),
             _match(_payload("ah", "nexthdr"), {"set": AH_CARRIES}, "!="), {"drop": None}),
        # A frame with a VLAN tag has no transport protocol for nftables (its EtherType is
        # the tag's), so it fails the rules above whatever it carries; a container's
        # kernel takes one tagged with VLAN 0 (priority only) as untagged, advertisement
        # and all. Containers have no VLANs on portway's networks (spoof drops every tagged
        # frame they send).
        rule("host_out", "no VLAN tag hides a message from the rules above",
             _match(_payload("ether", "type"), {"set": ["8021q", "8021ad"]}),
             _match(_meta("oifname"), HOST_OUT_PORTS), {"drop": None}),
    ]


# The ports host_out guards: pwv- (a container's veth) and pwvx- (an overlay network's
# VXLAN device). Not pwn- ports (a Podman network without IPAM: its containers pick
# their own addresses, perhaps from an advertisement), nor ports portway did not make.
HOST_OUT_PORTS = "pwv*"


# What an Authentication Header may carry in what a container sends: the transports a
# container's data goes in, and ESP (encrypted: nothing can read it, behind AH or not).
AH_CARRIES = ["tcp", "udp", "esp", "sctp"]
# The extension headers the kernel's ipv6_find_hdr walks through to a transport header
# (AH, where nftables stops, and "no next header" aside).
WALKED_HEADERS = ["hopopt", "ipv6-route", "ipv6-frag", "ipv6-opts"]


def _exthdr(name: str, field: str) -> dict[str, Any]:
    """A field of an IPv6 extension header, wherever it is in the chain."""
    return {"exthdr": {"name": name, "field": field}}


def _raw(offset: int, length: int) -> dict[str, Any]:
    """length bytes of the transport header (ICMPv6's) from offset."""
    return {"payload": {"base": "th", "offset": offset * 8, "len": length * 8}}


# The target address of a neighbour advertisement (after type, code, checksum, flags).
ND_TARGET = _raw(8, 16)
# The fixed part of a neighbour solicitation or advertisement (type, code, checksum,
# flags or reserved, target) and of a router solicitation (the same, no target): the
# options follow. A link-layer address option: type (source 1, target 2), length in
# units of 8 bytes (1: an Ethernet address), the address.
ND_SIZE, RS_SIZE = 24, 8
LLADDR_OPTIONS = [1, 2]
# The sets keyed by a raw payload field, by name: libnftables 1.0.6 can make them from
# its text syntax only, not from JSON. targets6: the addresses a port may advertise;
# lladdrs: the MAC a port's neighbour discovery may name (as the option of a
# solicitation or advertisement carries it; a router solicitation's, 16 bytes earlier,
# has the same type).
RAW_SETS = {"targets6": "iifname . @th,64,128", "lladdrs": f"iifname . @th,{(ND_SIZE + 2) * 8},48"}


def raw_set(name: str) -> str:
    """The text command that makes RAW_SETS' set name (nothing if it exists)."""
    return f"add set {GUARD_FAMILY} {TABLE} {name} {{ typeof {RAW_SETS[name]} ; }}"


# Runs before the JSON of render_guard_base.
GUARD_PRELUDE = "\n".join([f"add table {GUARD_FAMILY} {TABLE}", *map(raw_set, RAW_SETS)])
# A step of a Repair given as nft's text syntax (a set of RAW_SETS), not JSON.
TEXT = "nft-text"


def _guard_elements(endpoints: Iterable[Endpoint]) -> list[tuple[str, Endpoint, Any]]:
    out: list[tuple[str, Endpoint, Any]] = []
    for e in endpoints:
        if e.host_ifname.startswith(MACVLAN_PREFIX):
            continue  # a macvlan device: no bridge port to check it on
        out.append(("macs", e, {"concat": [e.host_ifname, e.mac]}))
        for a in e.addresses:
            out.append(("addrs" if a.version == 4 else "addrs6", e,
                        {"concat": [e.host_ifname, str(a.ip)]}))
            out.append(("senders" if a.version == 4 else "senders6", e,
                        {"concat": [e.host_ifname, e.mac, str(a.ip)]}))
            if a.version == 6:
                out.append(("targets6", e,
                            {"concat": [e.host_ifname, f"0x{int(a.ip):032x}"]}))
        if any(a.version == 6 for a in e.addresses):
            out.append(("v6ports", e, e.host_ifname))
            # (as nft lists it: a number, where targets6's 128 bits list as hex)
            out.append(("lladdrs", e,
                        {"concat": [e.host_ifname, int(e.mac.replace(":", ""), 16)]}))
    return out


def render_guard(endpoints: Iterable[Endpoint], instance: str) -> list[Cmd]:
    """The set elements that let these endpoints' containers send."""
    return [_add(name, key, owner_tag(instance, "endpoint", e.id), table=G)
            for name, e, key in _guard_elements(endpoints)]


def render_guard_declared(endpoints: Iterable[Endpoint], instance: str) -> list[Cmd] | None:
    """render_guard's elements as their sets' own declarations, each with its elements
    ("add set" of a set that exists adds the elements to it, and changes nothing else):
    the same transaction for the kernel, but libnftables reads only the list of tables
    before it, where "add element" makes it read every chain, set and object of the
    ruleset and the elements of every interval set (2 round trips to the kernel in place
    of 13, most of the anti-spoofing step's cost). None if an element goes to a set that
    JSON cannot declare (RAW_SETS: GUARD_PRELUDE): then render_guard's form."""
    endpoints = list(endpoints)
    if any(a.version == 6 for e in endpoints for a in e.addresses):
        return None  # (its targets6 and lladdrs elements)
    declared = _guard_sets()
    elems: dict[str, list[Any]] = {}
    for name, e, key in _guard_elements(endpoints):
        if name not in declared:
            return None
        elems.setdefault(name, []).append(_elem(key, owner_tag(instance, "endpoint", e.id)))
    return [{"add": {"set": {**declared[name], "elem": found}}}
            for name, found in elems.items()]


_GUARD_SETS: dict[str, dict[str, Any]] = {}


def _guard_sets() -> dict[str, dict[str, Any]]:
    """The sets of `bridge portway` as render_guard_base declares them, by name."""
    if not _GUARD_SETS:
        _GUARD_SETS.update({cmd["add"]["set"]["name"]: cmd["add"]["set"]
                            for cmd in render_guard_base() if "set" in cmd.get("add", {})})
    return _GUARD_SETS


def render_guard_removal(endpoints: Iterable[Endpoint]) -> list[Cmd]:
    return [_delete(name, key, G) for name, _, key in _guard_elements(endpoints)]


def render_tables_removal() -> list[Cmd]:
    return [{"delete": {"table": {"family": family, "name": TABLE}}} for family in TABLES]


# What gc compares: rules as the kernel lists them, and elements by owner.

Key = tuple[str, str, str]  # (family, set or map, the element's key as JSON)


@dataclass(frozen=True)
class Repair:
    """One difference between what an instance wants and what the kernel has: a line of
    the report, and the transactions that repair it, in order."""

    what: str
    steps: tuple[tuple[Cmd, ...], ...]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _split_elem(entry: Any, is_map: bool) -> tuple[str, str | None, str | None]:
    """(key, value, comment) of one element, as rendered or as listed."""
    key_part, value = (entry[0], entry[1]) if is_map else (entry, None)
    comment = None
    if isinstance(key_part, dict) and "elem" in key_part:
        comment = key_part["elem"].get("comment")
        key_part = key_part["elem"]["val"]
    return _json(key_part), None if value is None else _json(value), comment


def wanted_elements(cmds: Iterable[Cmd]) -> dict[Key, tuple[str | None, str | None, Cmd]]:
    """Every element the `add element` commands add: key -> (value, comment, the add)."""
    out: dict[Key, tuple[str | None, str | None, Cmd]] = {}
    for cmd in cmds:
        body = cmd.get("add", {}).get("element")
        if body is None:
            continue
        for entry in body["elem"]:
            key, value, comment = _split_elem(entry, isinstance(entry, list))
            one = {"add": {"element": {**body, "elem": [entry]}}}
            out[(body["family"], body["name"], key)] = (value, comment, one)
    return out


def listed_elements(items: Iterable[dict[str, Any]]) -> dict[Key, tuple[str | None, str | None,
                                                                       Any]]:
    """Every element of a listing: key -> (value, comment, the key as the kernel has it)."""
    out: dict[Key, tuple[str | None, str | None, Any]] = {}
    for item in items:
        is_map = "map" in item
        body = item.get("map") or item.get("set")
        if body is None:
            continue
        for entry in body.get("elem", []):
            key, value, comment = _split_elem(entry, is_map)
            out[(body["family"], body["name"], key)] = (value, comment, json.loads(key))
    return out


def listed_rules(items: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(family, chain) -> its rules, each as JSON of (expr, comment), in order; a chain
    without rules is there with an empty list."""
    out: dict[tuple[str, str], list[str]] = {}
    for item in items:
        if "chain" in item:
            out.setdefault((item["chain"]["family"], item["chain"]["name"]), [])
        elif "rule" in item:
            rule = item["rule"]
            out.setdefault((rule["family"], rule["chain"]), []).append(
                _json([rule.get("expr", []), rule.get("comment")]))
    return out


def _chain_cmds(cmds: Iterable[Cmd]) -> dict[tuple[str, str], tuple[Cmd, list[Cmd]]]:
    """(family, chain) -> (its `add chain`, its `add rule`s) among cmds."""
    out: dict[tuple[str, str], tuple[Cmd, list[Cmd]]] = {}
    for cmd in cmds:
        add = cmd.get("add", {})
        if "chain" in add:
            out[(add["chain"]["family"], add["chain"]["name"])] = (cmd, [])
        elif "rule" in add:
            out[(add["rule"]["family"], add["rule"]["chain"])][1].append(cmd)
    return out


def plan_repair(shared: dict[str, list[Cmd]], mine: list[Cmd],
                listing: dict[str, list[dict[str, Any]] | None],
                canonical: list[dict[str, Any]], instance: str,
                known: Collection[str] = ()) -> list[Repair]:
    """What makes the kernel hold the shared tables and this instance's own chains and
    elements exactly as wanted, touching nothing another instance owns.

    shared: the shared tables' commands by family; mine: this instance's chains, rules and
    elements; listing: each shared table as listed (None: missing); canonical: the
    shared tables and mine (without elements) as the kernel lists them when given
    exactly these commands, which is what the listed rules are compared with; known:
    the ids of the containers, networks and endpoints in the store (an element of one
    of them that is not wanted is a stray all the same: a published port or address
    it no longer has).
    """
    repairs: list[Repair] = []
    mine_by_family: dict[str, list[Cmd]] = {}
    for cmd in mine:
        (body,) = cmd["add"].values()
        mine_by_family.setdefault(body["family"], []).append(cmd)
    want_rules = listed_rules(canonical)
    have: dict[tuple[str, str], list[str]] = {}
    have_elements: dict[Key, tuple[str | None, str | None, Any]] = {}
    for family in shared:
        items = listing.get(family)
        if items is None:
            repairs.append(Repair(f"re-create table {family} {TABLE}: it is missing", (
                tuple(shared[family]), tuple(mine_by_family.get(family, [])))))
            continue
        have.update(listed_rules(items))
        have_elements.update(listed_elements(items))
    present = {family for family in shared if listing.get(family) is not None}
    # A shared set or map the table lacks (one a later portway added to a table an
    # earlier one made): created first, as the chains and elements below refer to it.
    for family in present:
        named = {body["name"] for item in listing[family] or []
                 for body in (item.get("set") or item.get("map"),) if body is not None}
        for cmd in shared[family]:
            body = cmd["add"].get("set") or cmd["add"].get("map")
            if body is not None and body["name"] not in named:
                kind = "set" if "set" in cmd["add"] else "map"
                repairs.append(Repair(f"create {kind} {family} {TABLE} {body['name']}: it is "
                                      "missing", ((cmd,),)))
        if family == GUARD_FAMILY:
            repairs += [Repair(f"create set {family} {TABLE} {name}: it is missing",
                               (({TEXT: raw_set(name)},),))
                        for name in RAW_SETS if name not in named]
    chains = _chain_cmds([*[c for f in present for c in shared[f]],
                          *[c for c in mine if _family(c) in present]])
    # Fail-closed, in this order: the regular chains (what elements and rules jump to),
    # then the elements, then the base chains, whose rules look them up. A base chain
    # restored before the elements it looks up would, for a moment, let through what
    # an element sends elsewhere (an older portway's `input` restored to `iifname vmap
    # @host_in` before the bridges' host_in elements: their traffic to the host's VXLAN
    # port not dropped).
    hooked: list[Repair] = []
    for (family, name), (add_chain, rules) in chains.items():
        wanted = want_rules.get((family, name), [])
        current = have.get((family, name))
        if current == wanted:
            continue
        ref = {"family": family, "table": TABLE, "name": name}
        state = "is missing" if current is None else "differs from what portway wrote"
        (hooked if "hook" in add_chain["add"]["chain"] else repairs).append(Repair(
            f"restore chain {family} {TABLE} {name}: it {state}",
            ((add_chain, {"flush": {"chain": ref}}, *rules),)))
    want_elements = wanted_elements(c for c in mine if _family(c) in present)
    for key, (value, comment, add) in want_elements.items():
        family, name, _ = key
        listed = have_elements.get(key)
        if listed is not None and (listed[0], listed[1]) == (value, comment):
            continue
        if listed is not None and _foreign(listed[1], instance):
            repairs.append(Repair(f"cannot restore element {_show(key[2])} of {family} {TABLE} "
                                  f"{name}: another portway ({listed[1]}) holds it", ()))
            continue
        steps: tuple[Cmd, ...] = (add,)
        if listed is not None:
            steps = ({"delete": {"element": {"family": family, "table": TABLE,
                                             "name": name, "elem": [listed[2]]}}}, add)
        state = "is missing" if listed is None else "differs"
        repairs.append(Repair(f"restore element {_show(key[2])} of {family} {TABLE} {name}: "
                              f"it {state}", (steps,)))
    repairs += hooked
    stale_chains: list[str] = []
    for key, (value, comment, listed_key) in have_elements.items():
        tag = parse_owner_tag(comment)
        if key in want_elements or tag is None or tag[0] != instance:
            continue
        family, name, _ = key
        target = json.loads(value)["jump"]["target"] if value and "jump" in value else None
        if target is not None and (family, target) not in chains:
            stale_chains.append(target)
        why = "no longer has it" if tag[2] in known else "is not in the store"
        repairs.append(Repair(
            f"delete element {_show(key[2])} of {family} {TABLE} {name}: portway {tag[1]} "
            f"{tag[2][:12]} {why}",
            (({"delete": {"element": {"family": family, "table": TABLE, "name": name,
                                      "elem": [listed_key]}}},),)))
    for name in dict.fromkeys(stale_chains):
        if (FAMILY, name) in have:
            repairs.append(Repair(f"delete chain {FAMILY} {TABLE} {name}: its network is "
                                  "not in the store",
                                  (({"delete": {"chain": {**T, "name": name}}},),)))
    return repairs


def _show(key: str) -> str:
    """An element's key as `nft list` writes it."""
    return describe(json.loads(key))


def _family(cmd: Cmd) -> str:
    (body,) = next(iter(cmd.values())).values()
    return str(body["family"])


def _foreign(comment: str | None, instance: str) -> bool:
    tag = parse_owner_tag(comment)
    return tag is not None and tag[0] != instance


def tables_in_use(listing: dict[str, list[dict[str, Any]] | None]) -> bool:
    """Whether any instance still has something in the shared tables: an element, or a
    chain that is not one of the shared base chains."""
    base = set(_chain_cmds([c for cmds in render_shared().values() for c in cmds]))
    for items in listing.values():
        for item in items or []:
            body = item.get("map") or item.get("set")
            if body is not None and body.get("elem"):
                return True
            if "chain" in item and (item["chain"]["family"], item["chain"]["name"]) not in base:
                return True
    return False
