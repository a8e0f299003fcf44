"""portway's firewall as data: the `inet portway` table, rendered as libnftables JSON.

Nothing here talks to the kernel; kernel/nft.py applies what these functions
return, one list per atomic transaction. The per-packet cost is constant in
the number of networks, containers and ports: base chains dispatch through
verdict maps keyed by subnet or bridge name to a few rules per network, and
published ports are map elements, not rules.

    prerouting (nat)   127/8 never DNATs from outside; published ports by map
    output (nat)       published ports for the host's own processes, 127.0.0.1 too
    postrouting (nat)  host -> loopback-published port: masquerade;
                       saddr vmap @nat_src -> nat-<net>: hairpin and outbound masquerade
    forward (filter)   iifname vmap @fwd_in -> in-<net>: same network, published, isolation
                       oifname vmap @fwd_out -> out-<net>: only replies and published ports
    guard (filter, raw priority)  containers never reach the host's 127/8
    input (filter)     internal networks reach no host address but their gateway

A second table, `bridge portway`, checks every frame a container sends on its
bridge port (anti-spoofing): the source MAC and IPv4 address, in Ethernet, IP
and ARP headers, must be the ones portway assigned to that veth, and only IPv4
and ARP pass. Unknown `pwv-` ports send nothing (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from portway.model.types import Endpoint, IPAddress, Network

FAMILY = "inet"
TABLE = "portway"
T = {"family": FAMILY, "table": TABLE}
GUARD_FAMILY = "bridge"
G = {"family": GUARD_FAMILY, "table": TABLE}
VETH_PATTERN = "pwv-*"
MASQ_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
# The bit portway ORs into the packet mark of forwarded traffic to or from its
# networks, so another table whose forward chain drops by default can accept it:
#   meta mark & 0x02000000 == 0x02000000 accept
ACCEPT_MARK = 0x02000000
ICC_OPTION = "com.docker.network.bridge.enable_icc"

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


def _dnat(key: dict[str, Any], addr_map: str, port_map: str) -> dict[str, Any]:
    # Two maps with scalar data (address, port) rather than one map to a concatenation:
    # libnftables 1.0.6 cannot parse concatenated map data in JSON.
    return {"dnat": {"family": "ip", "addr": {"map": {"key": key, "data": f"@{addr_map}"}},
                     "port": {"map": {"key": key, "data": f"@{port_map}"}}}}


def render_base() -> list[Cmd]:
    """The table, its maps and base chains; no network, no port."""
    cmds: list[Cmd] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": {**T, "name": "bridges", "type": "ifname"}}},
        {"add": {"set": {**T, "name": "dns", "type": "ipv4_addr"}}},
        _map("nat_src", "ipv4_addr", "verdict", interval=True),
        _map("fwd_in", "ifname", "verdict"),
        _map("fwd_out", "ifname", "verdict"),
        _map("host_in", "ifname", "verdict"),
        _map("pub_any_addr", ["inet_proto", "inet_service"], "ipv4_addr"),
        _map("pub_any_port", ["inet_proto", "inet_service"], "inet_service"),
        _map("pub_ip_addr", ["ipv4_addr", "inet_proto", "inet_service"], "ipv4_addr"),
        _map("pub_ip_port", ["ipv4_addr", "inet_proto", "inet_service"], "inet_service"),
        _chain("guard", type="filter", hook="prerouting", prio=-300, policy="accept"),
        _chain("guard_out", type="filter", hook="output", prio=-300, policy="accept"),
        _chain("prerouting", type="nat", hook="prerouting", prio=-100, policy="accept"),
        _chain("output", type="nat", hook="output", prio=-100, policy="accept"),
        _chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
        # Before other tables' filter chains (priority 0), so the mark is set by then.
        _chain("forward", type="filter", hook="forward", prio=-10, policy="accept"),
        _chain("input", type="filter", hook="input", prio=-10, policy="accept"),
        _rule("guard", [_match(_meta("iifname"), "@bridges"),
                        _match(_payload("ip", "daddr"), LOOPBACK), {"drop": None}],
              "containers never reach the host's loopback addresses"),
        # DNS to portway's server keeps no conntrack state: nothing NATs or filters it by
        # state, so the entries would only cost time per query and table space, and
        # UDP's insertion race (two queries on one socket at once) could drop a query.
        _rule("guard", [_match(_meta("iifname"), "@bridges"),
                        _match(_payload("ip", "daddr"), "@dns"),
                        _match(_payload("udp", "dport"), 53), {"notrack": None}],
              "queries to portway's DNS server skip conntrack"),
        _rule("guard_out", [_match(_meta("oifname"), "@bridges"),
                            _match(_payload("ip", "saddr"), "@dns"),
                            _match(_payload("udp", "sport"), 53), {"notrack": None}],
              "answers of portway's DNS server skip conntrack"),
        _rule("prerouting", [_match(_payload("ip", "daddr"), LOOPBACK), {"return": None}],
              "loopback-published ports stay local: no DNAT for 127/8 from outside "
              "(moby/moby#45610)"),
    ]
    for chain in ("prerouting", "output"):
        cmds.append(_rule(chain, [LOCAL, _dnat(IP_KEY, "pub_ip_addr", "pub_ip_port")],
                          "published ports on one host address"))
        cmds.append(_rule(chain, [LOCAL, _dnat(ANY_KEY, "pub_any_addr", "pub_any_port")],
                          "published ports on every host address"))
    cmds += [
        _rule("postrouting", [_match(_payload("ip", "saddr"), LOOPBACK),
                              _match(_meta("oifname"), "@bridges"), {"masquerade": None}],
              "host process to a loopback-published port: answer to the bridge address"),
        _rule("postrouting", [{"vmap": {"key": _payload("ip", "saddr"), "data": "@nat_src"}}],
              "per-network source NAT"),
        _rule("forward", [_match(_meta("iifname"), "@bridges"), _set_mark()],
              "mark portway's traffic for other tables: meta mark & 0x02000000"),
        _rule("forward", [_match(_meta("oifname"), "@bridges"), _set_mark()],
              "mark portway's traffic for other tables: meta mark & 0x02000000"),
        _rule("forward", [{"vmap": {"key": _meta("iifname"), "data": "@fwd_in"}}],
              "from a portway network"),
        _rule("forward", [{"vmap": {"key": _meta("oifname"), "data": "@fwd_out"}}],
              "into a portway network"),
        _rule("input", [{"vmap": {"key": _meta("iifname"), "data": "@host_in"}}],
              "from an internal network to the host"),
    ]
    return cmds


BASE_CHAINS = ("guard", "guard_out", "prerouting", "output", "postrouting", "forward", "input")
MAPS = ("nat_src", "fwd_in", "fwd_out", "host_in", "pub_any_addr", "pub_any_port",
        "pub_ip_addr", "pub_ip_port")


def chain_names(network: Network) -> tuple[str, str, str]:
    short = network.id[:12]
    return f"nat-{short}", f"in-{short}", f"out-{short}"


def host_chain(network: Network) -> str:
    """The input chain of an internal network."""
    return f"host-{network.id[:12]}"


def _bool_option(network: Network, key: str) -> bool:
    return network.options.get(key, "true") != "false"


def render_network(network: Network) -> list[Cmd]:
    """The chains and map elements of one network."""
    nat, fin, fout = chain_names(network)
    br = network.bridge
    owner = f"network {network.name} {network.id[:12]}"
    subnet = {"prefix": {"addr": str(network.subnet.network_address),
                         "len": network.subnet.prefixlen}}
    established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    dnatted = _match({"ct": {"key": "status"}}, "dnat", "in")
    same = _match(_meta("oifname"), br)
    cmds: list[Cmd] = [_chain(fin), _chain(fout)]
    cmds += [
        _rule(fin, [established, {"accept": None}], f"{owner}: replies"),
        _rule(fin, [same, {"accept" if _bool_option(network, ICC_OPTION) else "drop": None}],
              f"{owner}: between its containers (icc)"),
    ]
    if network.internal:
        host = host_chain(network)
        cmds += [
            _rule(fin, [{"drop": None}], f"{owner}: internal, no way out"),
            _chain(host),
            _rule(host, [_match(_payload("ip", "daddr"), str(network.gateway)),
                         {"accept": None}], f"{owner}: its gateway (DNS) on the host"),
            _rule(host, [{"drop": None}],
                  f"{owner}: internal, no other address of the host"),
            {"add": {"element": {**T, "name": "host_in",
                                 "elem": [[br, {"jump": {"target": host}}]]}}},
        ]
    else:
        cmds += [
            _rule(fin, [dnatted, {"accept": None}],
                  f"{owner}: to a published port, wherever it lives"),
            _rule(fin, [_match(_meta("oifname"), "@bridges"), {"drop": None}],
                  f"{owner}: isolation from other portway networks"),
        ]
    cmds += [
        _rule(fout, [established, {"accept": None}], f"{owner}: replies"),
        _rule(fout, [dnatted, {"accept": None}], f"{owner}: published ports"),
        _rule(fout, [{"drop": None}], f"{owner}: no direct access from outside"),
        {"add": {"element": {**T, "name": "bridges", "elem": [br]}}},
        {"add": {"element": {**T, "name": "dns", "elem": [str(network.gateway)]}}},
        {"add": {"element": {**T, "name": "fwd_in", "elem": [[br, {"jump": {"target": fin}}]]}}},
        {"add": {"element": {**T, "name": "fwd_out",
                             "elem": [[br, {"jump": {"target": fout}}]]}}},
    ]
    if not network.internal:
        cmds.append(_chain(nat))
        cmds.append(_rule(nat, [dnatted, same, {"masquerade": None}],
                          f"{owner}: hairpin to a published port on its own bridge"))
        if _bool_option(network, MASQ_OPTION):
            cmds.append(_rule(nat, [_match(_meta("oifname"), br, "!="), {"masquerade": None}],
                              f"{owner}: outbound masquerade"))
        cmds.append({"add": {"element": {**T, "name": "nat_src",
                                         "elem": [[subnet, {"jump": {"target": nat}}]]}}})
    return cmds


def render_network_removal(network: Network) -> list[Cmd]:
    nat, fin, fout = chain_names(network)
    br = network.bridge
    subnet = {"prefix": {"addr": str(network.subnet.network_address),
                         "len": network.subnet.prefixlen}}
    cmds: list[Cmd] = [
        {"delete": {"element": {**T, "name": "fwd_in", "elem": [br]}}},
        {"delete": {"element": {**T, "name": "fwd_out", "elem": [br]}}},
        {"delete": {"element": {**T, "name": "bridges", "elem": [br]}}},
        {"delete": {"element": {**T, "name": "dns", "elem": [str(network.gateway)]}}},
        {"delete": {"chain": {**T, "name": fin}}},
        {"delete": {"chain": {**T, "name": fout}}},
    ]
    if network.internal:
        cmds += [{"delete": {"element": {**T, "name": "host_in", "elem": [br]}}},
                 {"delete": {"chain": {**T, "name": host_chain(network)}}}]
    else:
        cmds += [{"delete": {"element": {**T, "name": "nat_src", "elem": [subnet]}}},
                 {"delete": {"chain": {**T, "name": nat}}}]
    return cmds


def _port_elements(p: Published) -> list[tuple[str, Any, Any]]:
    if p.host_ip is None:
        key: dict[str, Any] = {"concat": [p.protocol, p.host_port]}
        return [("pub_any_addr", key, str(p.container_ip)),
                ("pub_any_port", key, p.container_port)]
    key = {"concat": [str(p.host_ip), p.protocol, p.host_port]}
    return [("pub_ip_addr", key, str(p.container_ip)), ("pub_ip_port", key, p.container_port)]


def render_ports(ports: Iterable[Published]) -> list[Cmd]:
    cmds: list[Cmd] = []
    for p in ports:
        for name, key, value in _port_elements(p):
            cmds.append({"add": {"element": {**T, "name": name, "elem": [[key, value]]}}})
    return cmds


def render_ports_removal(ports: Iterable[Published]) -> list[Cmd]:
    cmds: list[Cmd] = []
    for p in ports:
        for name, key, _ in _port_elements(p):
            cmds.append({"delete": {"element": {**T, "name": name, "elem": [key]}}})
    return cmds


def render_guard_base() -> list[Cmd]:
    """The `bridge portway` table: what a container may send on its bridge port."""
    iif = _meta("iifname")

    def pair(proto: str, field: str) -> dict[str, Any]:
        return {"concat": [iif, _payload(proto, field)]}

    def unless(key: dict[str, Any], allowed: str, why: str) -> Cmd:
        return {"add": {"rule": {**G, "chain": "spoof", "comment": why, "expr": [
            _match(key, f"@{allowed}", "!="), {"drop": None}]}}}

    return [
        {"add": {"table": {"family": GUARD_FAMILY, "name": TABLE}}},
        {"add": {"set": {**G, "name": "macs", "type": ["ifname", "ether_addr"]}}},
        {"add": {"set": {**G, "name": "addrs", "type": ["ifname", "ipv4_addr"]}}},
        {"add": {"chain": {**G, "name": "spoof", "type": "filter", "hook": "prerouting",
                           "prio": -300, "policy": "accept"}}},
        {"add": {"rule": {**G, "chain": "spoof", "comment": "only container ports are checked",
                          "expr": [_match(iif, VETH_PATTERN, "!="), {"accept": None}]}}},
        unless(pair("ether", "saddr"), "macs", "a container sends only from its own MAC"),
        unless(pair("arp", "saddr ether"), "macs", "ARP: only its own MAC"),
        unless(pair("arp", "saddr ip"), "addrs", "ARP: only its own address"),
        unless(pair("ip", "saddr"), "addrs", "a container sends only from its own address"),
        {"add": {"rule": {**G, "chain": "spoof", "comment": "only IPv4 and ARP", "expr": [
            _match(_payload("ether", "type"), {"set": ["ip", "arp"]}, "!="),
            {"drop": None}]}}},
    ]


def _guard_elements(endpoints: Iterable[Endpoint]) -> list[tuple[str, list[Any]]]:
    eps = list(endpoints)
    return [("macs", [{"concat": [e.host_ifname, e.mac]} for e in eps]),
            ("addrs", [{"concat": [e.host_ifname, str(e.address)]} for e in eps])]


def render_guard(endpoints: Iterable[Endpoint]) -> list[Cmd]:
    """The set elements that let these endpoints' containers send."""
    return [{"add": {"element": {**G, "name": name, "elem": elems}}}
            for name, elems in _guard_elements(endpoints) if elems]


def render_guard_removal(endpoints: Iterable[Endpoint]) -> list[Cmd]:
    return [{"delete": {"element": {**G, "name": name, "elem": elems}}}
            for name, elems in _guard_elements(endpoints) if elems]


def render_guard_rebuild(endpoints: Iterable[Endpoint], exists: bool) -> list[Cmd]:
    """One transaction that makes the `bridge portway` table what the store says."""
    flush: list[Cmd] = []
    if exists:
        flush = [{"flush": {"table": {"family": GUARD_FAMILY, "name": TABLE}}},
                 {"flush": {"set": {**G, "name": "macs"}}},
                 {"flush": {"set": {**G, "name": "addrs"}}}]
    return [*flush, *render_guard_base(), *render_guard(endpoints)]


def render_tables_removal() -> list[Cmd]:
    return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}},
            {"delete": {"table": {"family": GUARD_FAMILY, "name": TABLE}}}]


def render_rebuild(networks: Iterable[Network], ports: Iterable[Published],
                   existing_chains: Iterable[str] | None) -> list[list[Cmd]]:
    """Transactions that make the table exactly what the store describes (for gc).

    existing_chains is None when the table is missing. libnftables 1.0.6 fails when
    one batch creates the base chains together with the per-network chains, or
    deletes a chain in the batch that flushes its references; so:
    - a missing table: the base, then everything else;
    - an existing table: one flush-and-refill batch (atomic for the packet path),
      then the deletion of the chains no network needs any more, now empty.
    """
    networks = list(networks)
    content: list[Cmd] = []
    for network in networks:
        content += render_network(network)
    content += render_ports(ports)
    if existing_chains is None:
        return [render_base(), content]
    wanted = set(BASE_CHAINS)
    for network in networks:
        nat, fin, fout = chain_names(network)
        wanted |= {fin, fout, host_chain(network)} if network.internal else {nat, fin, fout}
    # `flush table` empties chains but not sets and maps: those are flushed one by one,
    # or stale elements would stay (and keep stale chains referenced).
    flush: list[Cmd] = [{"flush": {"table": {"family": FAMILY, "name": TABLE}}}]
    flush += [{"flush": {"set": {**T, "name": name}}} for name in ("bridges", "dns")]
    flush += [{"flush": {"map": {**T, "name": name}}} for name in MAPS]
    refill = [*flush, *render_base(), *content]
    stale = [{"delete": {"chain": {**T, "name": c}}} for c in existing_chains
             if c not in wanted]
    return [refill, stale] if stale else [refill]


def listed_chains(items: list[dict[str, Any]]) -> list[str]:
    return [item["chain"]["name"] for item in items if "chain" in item]


def summarize(cmds: list[Cmd]) -> dict[str, int]:
    """What a table should hold, counted: rules per chain and elements per map or set.

    Compared with the same counts read from the kernel, it tells whether someone
    removed or flushed part of the table.
    """
    counts: dict[str, int] = {}
    for cmd in cmds:
        add = cmd.get("add", {})
        if "chain" in add:
            counts.setdefault(f"chain {add['chain']['name']}", 0)
        elif "rule" in add:
            key = f"chain {add['rule']['chain']}"
            counts[key] = counts.get(key, 0) + 1
        elif "element" in add:
            key = f"map {add['element']['name']}"
            counts[key] = counts.get(key, 0) + len(add["element"]["elem"])
        elif "map" in add or "set" in add:
            declared: dict[str, Any] = add.get("map") or add["set"]
            counts.setdefault(f"map {declared['name']}", 0)
    return counts


def summarize_listing(items: list[dict[str, Any]]) -> dict[str, int]:
    """The same counts from `list table inet portway` as libnftables returns it."""
    counts: dict[str, int] = {}
    for item in items:
        if "chain" in item:
            counts.setdefault(f"chain {item['chain']['name']}", 0)
        elif "rule" in item:
            key = f"chain {item['rule']['chain']}"
            counts[key] = counts.get(key, 0) + 1
        elif "map" in item or "set" in item:
            body: dict[str, Any] = item.get("map") or item["set"]
            counts[f"map {body['name']}"] = len(body.get("elem", []))
    return counts
