"""The pure firewall renderer: golden JSON, and the shape that keeps per-packet cost flat."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from portway.core import firewall, names
from portway.core.firewall import Published
from portway.core.overlay import vxlan_name
from portway.model.types import Endpoint, Network, Subnet

GOLDEN = Path(__file__).parent / "golden"
INSTANCE = "1a2b3c4d"


def network(internal: bool = False, **options: str) -> Network:
    return Network(id="ab" * 32, name="app", subnets=(Subnet(
        subnet=ipaddress.ip_network("10.77.0.0/24"), gateway=ipaddress.ip_address("10.77.0.1")),),
                   bridge="pwbr-abababab",
                   internal=internal, options=options)


def published(port: int, host_ip: str | None = None) -> Published:
    return Published(container_id="cd" * 32, protocol="tcp", host_port=port,
                     container_ip=ipaddress.ip_address("10.77.0.2"), container_port=80,
                     host_ip=ipaddress.ip_address(host_ip) if host_ip else None)


def check_golden(name: str, data: object) -> None:
    path = GOLDEN / name
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if os.environ.get("PORTWAY_UPDATE_GOLDEN") == "1":  # then review and commit the files
        path.write_text(text)
    assert path.exists(), f"{path} is missing; PORTWAY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"rendering changed; compare with {path}"


def test_golden_base() -> None:
    check_golden("base.json", firewall.render_base())


def test_golden_network() -> None:
    check_golden("network.json", firewall.render_network(network(), INSTANCE))
    check_golden("network-internal.json",
                 firewall.render_network(network(internal=True), INSTANCE))


def test_golden_ports() -> None:
    check_golden("ports.json", firewall.render_ports([published(8080),
                                                      published(6379, "127.0.0.1")], INSTANCE))


def rules(cmds: list[dict[str, object]]) -> int:
    return sum(1 for c in cmds if "rule" in c.get("add", {}))  # type: ignore[operator]


def test_ports_are_elements_not_rules() -> None:
    one = firewall.render_ports([published(8080)], INSTANCE)
    many = firewall.render_ports([published(p) for p in range(1000, 2000)], INSTANCE)
    assert rules(one) == rules(many) == 0
    assert len(many) == 1000 * len(one)


def test_rules_per_network_are_constant() -> None:
    # Base chains dispatch by map; a network adds its own few rules, not one per peer.
    a = firewall.render_network(network(), INSTANCE)
    assert rules(a) == 14  # 2 of them mark its traffic for other tables
    base_rules = rules(firewall.render_base())
    assert base_rules == 45  # 14 of them for IPv6


def test_options_change_the_network_rules() -> None:
    text = json.dumps(firewall.render_network(network(
        **{firewall.ICC_OPTION: "false", firewall.MASQ_OPTION: "false"}), INSTANCE))
    assert "outbound masquerade" not in text
    icc = [c for c in firewall.render_network(network(**{firewall.ICC_OPTION: "false"}), INSTANCE)
           if "(icc)" in json.dumps(c)]
    assert icc and "drop" in json.dumps(icc[0])
    internal = json.dumps(firewall.render_network(network(internal=True), INSTANCE))
    assert "nat_src" not in internal and "no way out" in internal


def test_removal_mirrors_creation() -> None:
    for net in (network(), network(internal=True)):
        added = {c["add"]["element"]["name"] for c in firewall.render_network(net, INSTANCE)
                 if "element" in c["add"]}
        removed = {c["delete"]["element"]["name"] for c in firewall.render_network_removal(net)
                   if "element" in c["delete"]}
        assert added == removed
        chains = {c["add"]["chain"]["name"] for c in firewall.render_network(net, INSTANCE)
                  if "chain" in c["add"]}
        assert chains == set(firewall.network_chains(net))
    ports = [published(8080), published(6379, "127.0.0.1")]
    assert len(firewall.render_ports_removal(ports)) == len(firewall.render_ports(ports, "x"))


def test_every_element_names_its_owner() -> None:
    cmds = [*firewall.render_network(network(), INSTANCE),
            *firewall.render_ports([published(8080)], INSTANCE),
            *firewall.render_guard([endpoint(2)], INSTANCE)]
    elements = [c["add"]["element"]["elem"][0] for c in cmds if "element" in c["add"]]
    assert len(elements) == 7 + 2 + 3
    for elem in elements:
        key = elem[0] if isinstance(elem, list) else elem
        tag = names.parse_owner_tag(key["elem"]["comment"])
        assert tag is not None and tag[0] == INSTANCE


def listing_of(cmds: list[dict[str, object]]) -> list[dict[str, object]]:
    """What the kernel would list for cmds, roughly: enough for plan_repair."""
    from test_trace_reasoning import listing

    return listing(cmds)


def plan(have: list[dict[str, object]], want_networks: list[Network],
         instance: str = INSTANCE, without: str = "") -> list[firewall.Repair]:
    """without: a set the listing of have lacks (as a table an earlier portway made)."""
    shared = firewall.render_shared()
    mine = [c for n in want_networks for c in firewall.render_network(n, instance)]
    canonical = listing_of([c for cmds in shared.values() for c in cmds]
                           + [c for c in mine if "element" not in c["add"]])
    by_family: dict[str, list[dict[str, object]] | None] = {f: None for f in firewall.TABLES}
    for item in listing_of(have):
        (body,) = item.values()
        if "set" in item and body["name"] == without:  # type: ignore[index]
            continue
        family = body["family"]  # type: ignore[index]
        by_family[family] = [*(by_family[family] or []), item]  # type: ignore[index]
    return firewall.plan_repair(shared, mine, by_family, canonical, instance)


def test_repair_of_a_whole_table_adds_the_base_and_mine() -> None:
    repairs = plan([], [network()])
    assert [r.what.split(":")[0] for r in repairs] == [
        f"re-create table {f} portway" for f in firewall.TABLES]
    assert repairs[0].steps[0] == tuple(firewall.render_base())


def test_repair_touches_only_what_differs_and_only_mine() -> None:
    shared = [c for cmds in firewall.render_shared().values() for c in cmds]
    mine, theirs = network(), Network(
        id="ef" * 32, name="theirs", subnets=(Subnet(
            subnet=ipaddress.ip_network("10.78.0.0/24"),
            gateway=ipaddress.ip_address("10.78.0.1")),), bridge="pwbr-efefefef")
    kernel = [*shared, *firewall.render_network(mine, INSTANCE),
              *firewall.render_network(theirs, "99999999")]
    assert plan(kernel, [mine]) == []
    # Another instance's network is theirs: I neither repair nor delete it.
    assert plan(kernel, []) and all("theirs" not in r.what and "efefefefefef" not in r.what
                                    for r in plan(kernel, []))
    # My rule edited in place (accept -> drop): that chain alone is restored.
    edited = json.loads(json.dumps(kernel))
    for cmd in edited:
        rule = cmd["add"].get("rule", {})
        if rule.get("chain") == "in-abababababab" and rule["expr"][-1] == {"accept": None}:
            rule["expr"][-1] = {"drop": None}
            break
    repairs = plan(edited, [mine])
    assert [r.what for r in repairs] == [
        "restore chain inet portway in-abababababab: it differs from what portway wrote"]
    flush, *restored = repairs[0].steps[0][1:]
    assert flush == {"flush": {"chain": {**firewall.T, "name": "in-abababababab"}}}
    assert len(restored) == 5 and all("rule" in c["add"] for c in restored)
    # My element gone: put back alone; theirs gone: not mine to restore.
    without = [c for c in kernel if c != firewall.render_network(mine, INSTANCE)[-1]]
    assert [r.what for r in plan(without, [mine])] == [
        "restore element 10.77.0.0/24 of inet portway nat_src: it is missing"]


def test_repair_creates_a_shared_set_an_earlier_table_lacks() -> None:
    # A table an earlier portway made has no `senders` set; the spoof_ip chain that
    # refers to it cannot be restored before it is there: it is created first.
    shared = [c for cmds in firewall.render_shared().values() for c in cmds]
    earlier = [c for c in shared if c["add"].get("set", {}).get("name") != "senders"]
    repairs = plan(earlier, [])
    assert [r.what for r in repairs] == [
        "create set bridge portway senders: it is missing"]
    assert repairs[0].steps == (tuple(c for c in shared
                                      if c["add"].get("set", {}).get("name") == "senders"),)
    assert plan(shared, []) == []


def test_repair_creates_a_raw_set_an_earlier_table_lacks() -> None:
    # Neither can the rules that look up `lladdrs`, which only nft's text syntax
    # declares: it is created first, by that text.
    shared = [c for cmds in firewall.render_shared().values() for c in cmds]
    repairs = plan(shared, [], without="lladdrs")
    assert [r.what for r in repairs] == ["create set bridge portway lladdrs: it is missing"]
    assert repairs[0].steps == (({firewall.TEXT: "add set bridge portway lladdrs "
                                  "{ typeof iifname . @th,208,48 ; }"},),)


def test_tables_in_use() -> None:
    shared = [c for cmds in firewall.render_shared().values() for c in cmds]
    by_family = {f: [i for i in listing_of(shared)
                     if next(iter(i.values()))["family"] == f]  # type: ignore[index]
                 for f in firewall.TABLES}
    assert not firewall.tables_in_use(by_family)  # type: ignore[arg-type]
    ports = listing_of([*shared, *firewall.render_ports([published(80)], "x")])
    assert firewall.tables_in_use({"inet": ports})  # type: ignore[dict-item]


def endpoint(n: int) -> Endpoint:
    address = ipaddress.ip_address(f"10.77.0.{n}")
    return Endpoint(id=f"{n:064x}", container_id="cd" * 32, network_id="ab" * 32,
                    ifname="eth0", host_ifname=f"pwv-{n:011x}",
                    addresses=(ipaddress.ip_interface((address, 24)),),
                    mac=f"02:42:0a:4d:00:{n:02x}")


def test_golden_guard() -> None:
    check_golden("guard.json", [*firewall.render_guard_base(),
                                *firewall.render_guard([endpoint(2), endpoint(3)], INSTANCE)])


def test_guard_is_per_endpoint_elements() -> None:
    # Each endpoint adds one element to each set (an IPv4 one: macs, addrs, senders);
    # the rules do not grow.
    one = firewall.render_guard([endpoint(2)], INSTANCE)
    many = firewall.render_guard([endpoint(n) for n in range(2, 200)], INSTANCE)
    assert rules(one) == rules(many) == 0
    assert len(many) == 198 * 3
    removal = firewall.render_guard_removal([endpoint(2)])
    assert [c["delete"]["element"]["elem"][0] for c in removal] == \
        [c["add"]["element"]["elem"][0]["elem"]["val"] for c in one]
    assert firewall.render_guard([], INSTANCE) == firewall.render_guard_removal([]) == []


def test_guard_declared_adds_the_same_elements_to_the_declared_sets() -> None:
    # The set-up's form: each set as render_guard_base declares it, with the elements
    # render_guard adds to it (an "add set" of a set that exists adds only them).
    endpoints = [endpoint(2), endpoint(3)]
    declared = firewall.render_guard_declared(endpoints, INSTANCE)
    assert declared is not None
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in firewall.render_guard_base()
            if "set" in c["add"]}
    got: list[tuple[str, Any]] = []
    for cmd in declared:
        one = dict(cmd["add"]["set"])
        elems = one.pop("elem")
        assert one == sets[one["name"]]
        got += [(one["name"], e) for e in elems]
    want = [(c["add"]["element"]["name"], e)
            for c in firewall.render_guard(endpoints, INSTANCE)
            for e in c["add"]["element"]["elem"]]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, want))
    assert [c["add"]["set"]["name"] for c in declared] == ["macs", "addrs", "senders"]


def test_guard_declared_leaves_ipv6_endpoints_to_elements() -> None:
    # targets6 can be declared only in nft's text syntax (GUARD_PRELUDE): an endpoint
    # with an IPv6 address gets render_guard's form; none at all is no command.
    dual = Endpoint(id="e6" * 32, container_id="cd" * 32, network_id="ab" * 32,
                    ifname="eth0", host_ifname="pwv-0000000000e",
                    addresses=(ipaddress.ip_interface("10.77.0.9/24"),
                               ipaddress.ip_interface("fd00:77::9/64")),
                    mac="02:42:0a:4d:00:09")
    assert firewall.render_guard_declared([endpoint(2), dual], INSTANCE) is None
    assert firewall.render_guard_declared([], INSTANCE) == []


def test_guard_fails_closed() -> None:
    # The first rule lets non-container ports through; every later one drops what the
    # sets do not allow, so a veth with no entries sends nothing.
    base = firewall.render_guard_base()
    chain_rules = [c["add"]["rule"] for c in base if "rule" in c["add"]]
    spoof = [r for r in chain_rules if r["chain"] == "spoof"]
    assert spoof[0]["expr"][0]["match"]["right"] == firewall.VETH_PATTERN
    # Past it: by EtherType (goto: the protocol's checks end the base chain), and
    # whatever other EtherType dropped.
    by_type = spoof[1]["expr"][0]["vmap"]["data"]["set"]
    assert {k: v["goto"]["target"] for k, v in by_type} == \
        {"ip": "spoof_ip", "arp": "spoof_arp", "ip6": "spoof_ip6"}
    assert spoof[2]["expr"] == [{"drop": None}] and len(spoof) == 3
    # In the protocols' chains, only drops, but for the messages a host sends from no
    # address (::) and IPv6 other than ICMPv6 (or an Authentication Header, which can
    # hide ICMPv6 from the checks) from the port's own MAC and address (the checks after
    # it are all about ICMPv6, the MAC or the address); each checks the MAC and the
    # source address against the sets (an IP packet's both in one lookup).
    checks = [r for r in chain_rules if r["chain"] not in ("spoof", "host_out")]
    assert {r["chain"] for r in checks} == {"spoof_ip", "spoof_arp", "spoof_ip6"}
    accepts = [r for r in checks if r["expr"][-1] != {"drop": None}]
    assert [r["expr"][0]["match"]["right"] for r in accepts] == [
        {"set": ["ah", "ipv6-icmp"]}, "::"]
    iif, smac = {"meta": {"key": "iifname"}}, {"payload": {"protocol": "ether",
                                                           "field": "saddr"}}
    own = accepts[0]["expr"]
    assert own[0]["match"]["op"] == "!=" and own[1]["match"] == {
        "op": "==", "right": "@senders6",
        "left": {"concat": [iif, smac, {"payload": {"protocol": "ip6", "field": "saddr"}}]}}
    [ip] = [r["expr"] for r in checks if r["chain"] == "spoof_ip"]
    assert ip == [{"match": {"op": "!=", "right": "@senders", "left": {"concat": [
        iif, smac, {"payload": {"protocol": "ip", "field": "saddr"}}]}}}, {"drop": None}]
    for name, allowed in (("spoof_arp", "@macs"), ("spoof_arp", "@addrs"),
                          ("spoof_ip6", "@macs"), ("spoof_ip6", "@addrs6")):
        assert allowed in [r["expr"][0]["match"]["right"] for r in checks
                           if r["chain"] == name]
    # What is not accepted at once in spoof_ip6 meets the MAC check before any other.
    ip6 = [r["expr"] for r in checks if r["chain"] == "spoof_ip6"]
    assert ip6[1] == [{"match": {"op": "!=", "right": "@macs",
                                 "left": {"concat": [iif, smac]}}}, {"drop": None}]


def test_host_out_keeps_the_hosts_routers_messages_from_containers() -> None:
    # The bridge's output hook (what the host sends into a bridge): only drops, each of
    # them only towards a container port or an overlay VXLAN device, router
    # advertisements and redirects (IPv4's too), and whatever an AH or a VLAN tag could
    # hide them behind.
    base = firewall.render_guard_base()
    [chain] = [c["add"]["chain"] for c in base
               if c["add"].get("chain", {}).get("name") == "host_out"]
    assert (chain["hook"], chain["policy"]) == ("output", "accept")
    rules = [c["add"]["rule"]["expr"] for c in base
             if c["add"].get("rule", {}).get("chain") == "host_out"]
    # Each tests the transport protocol first (what nearly every frame fails), then the
    # port.
    oif = {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                     "right": firewall.HOST_OUT_PORTS}}
    assert [r[0]["match"]["right"] for r in rules] == [
        "ipv6-icmp", "icmp", "ah", {"set": ["8021q", "8021ad"]}]
    assert [r[1] for r in rules] == [oif, oif, oif, oif]
    assert all(r[-1] == {"drop": None} for r in rules) and len(rules) == 4
    assert rules[0][2]["match"]["right"] == {"set": ["nd-router-advert", "nd-redirect"]}
    assert rules[1][2]["match"] == {"op": "==", "right": "redirect",
                                    "left": {"payload": {"protocol": "icmp", "field": "type"}}}
    assert rules[2][2]["match"] == {"op": "!=", "right": {"set": firewall.AH_CARRIES},
                                    "left": {"payload": {"protocol": "ah",
                                                         "field": "nexthdr"}}}
    # One prefix for both kinds of port, and no other port of portway's has it.
    prefix = firewall.HOST_OUT_PORTS.removesuffix("*")
    ends = [names.host_veth_name("e" * 64), vxlan_name("n" * 64)]
    others = [names.bridge_name("n" * 64), names.unchecked_veth_name("e" * 64),
              names.macvlan_name("e" * 64)]
    assert all(n.startswith(prefix) for n in ends)
    assert not any(n.startswith(prefix) for n in others)


def test_guard_sets_hold_the_same_senders() -> None:
    # senders (port, MAC, address) is exactly macs (port, MAC) joined with addrs (port,
    # address): checking both at once lets through what checking each did, no more.
    eps = [endpoint(n) for n in range(2, 6)]
    cmds = firewall.render_guard(eps, INSTANCE)
    keys: dict[str, set[tuple[str, ...]]] = {}
    for c in cmds:
        body = c["add"]["element"]
        keys.setdefault(body["name"], set()).add(tuple(body["elem"][0]["elem"]["val"]["concat"]))
    joined = {(port, mac, addr) for port, mac in keys["macs"] for p2, addr in keys["addrs"]
              if p2 == port}
    assert keys["senders"] == joined and len(joined) == len(eps)


def test_internal_network_reaches_only_its_gateway_on_the_host() -> None:
    net = network(internal=True)
    cmds = firewall.render_network(net, INSTANCE)
    host = [c["add"]["rule"] for c in cmds if c["add"].get("rule", {}).get("chain")
            == firewall.host_chain(net)]
    # What no network sends to the host (to_host) first; replies to the host's own
    # connections; DNS (UDP and TCP 53) on its gateway; no more.
    assert host[0]["expr"] == [{"jump": {"target": "to_host"}}]
    assert "established" in json.dumps(host[1]["expr"])
    assert host[2]["expr"][0]["match"]["right"] == "10.77.0.1"
    assert host[2]["expr"][2]["match"]["right"] == 53
    assert host[-1]["expr"] == [{"drop": None}] and len(host) == 4
    # Its bridge goes there; any other network's to to_host alone.
    for n, target in ((net, firewall.host_chain(net)), (network(), "to_host")):
        (elem,) = [c["add"]["element"]["elem"][0] for c in firewall.render_network(n, INSTANCE)
                   if c["add"].get("element", {}).get("name") == "host_in"]
        assert elem[1] == {"jump": {"target": target}}


def test_input_and_forward_spare_other_traffic_the_vxlan_checks() -> None:
    # input: whatever the host receives meets one lookup by input interface (an overlay's
    # tunnel packets, from the underlay, nothing more); only a portway network's own
    # meet the drop of VXLAN to the host. forward: one rule per packet for both families'
    # member checks, which fails at its first comparison for what is not UDP.
    base = firewall.render_base()

    def chain(name: str) -> list[dict[str, Any]]:
        return [c["add"]["rule"] for c in base if c["add"].get("rule", {}).get("chain") == name]

    assert [r["expr"] for r in chain("input")] == [
        [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@host_in"}}]]
    assert [r["comment"] for r in chain("to_host")] == [
        "containers never send to this host's VXLAN port"]
    vxlan = [r for r in chain("forward") if "4789" in json.dumps(r)]
    assert len(vxlan) == 1
    assert vxlan[0]["expr"][0]["match"]["left"] == {"payload": {"protocol": "udp",
                                                                "field": "dport"}}
    assert vxlan[0]["expr"][-1] == {"jump": {"target": "vxlan_out"}}
    assert [r["comment"] for r in chain("vxlan_out")] == [
        "containers never send to a cluster member's VXLAN port",
        "containers never send to a cluster member's VXLAN port (IPv6)"]


def test_related_packets_meet_isolation_first() -> None:
    # A forged ICMP error about another network's flow is `related`: only `established`
    # is accepted before the icc and isolation rules.
    cmds = firewall.render_network(network(), INSTANCE)
    fin = [c["add"]["rule"] for c in cmds if c["add"].get("rule", {}).get("chain")
           == "in-abababababab"]
    assert "mangle" in fin[0]["expr"][0]  # the mark for other tables, first
    assert fin[1]["expr"][0]["match"]["right"] == "established"
    assert "related" not in json.dumps(fin[:-1])


def test_only_traffic_between_containers_skips_conntrack() -> None:
    def untracked(net: Network) -> list[list[Any]]:
        return [c["add"]["rule"]["expr"] for c in firewall.render_network(net, INSTANCE)
                if {"notrack": None} in c["add"].get("rule", {}).get("expr", [])]

    [rule] = untracked(network())
    # From its bridge only: the src- chain has sent what comes from anywhere else to
    # src_other before it (which sends the host's own, over lo, back to the guard and
    # drops the rest): one comparison for what its containers send.
    src = [c["add"]["rule"] for c in firewall.render_network(network(), INSTANCE)
           if c["add"].get("rule", {}).get("chain") == firewall.src_chain(network())]
    assert src[0]["expr"] == [
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}},
                   "right": "pwbr-abababab"}}, {"goto": {"target": "src_other"}}]
    other = [c["add"]["rule"]["expr"] for c in firewall.render_base()
             if c["add"].get("rule", {}).get("chain") == "src_other"]
    assert other == [
        [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
         {"return": None}],
        [{"drop": None}]]
    assert src[1]["expr"] == rule
    assert rule[0]["match"]["right"] == {"prefix": {"addr": "10.77.0.0", "len": 24}}
    assert rule[1]["match"] == {"op": "!=", "left": {"payload": {
        "protocol": "ip", "field": "daddr"}}, "right": "10.77.0.1"}  # the gateway DNATs
    # Where a hairpin's answer needs conntrack's reverse NAT, every flow is tracked: a
    # routed family (no hairpin masquerade), an internal network (no masquerade at all).
    assert untracked(network(**{f"{firewall.GATEWAY_MODE}4": "routed"})) == []
    assert untracked(network(internal=True)) == []
    assert untracked(network(**{firewall.ICC_OPTION: "false"})) == []  # all dropped


def _comments(chain: str) -> list[str]:
    return [c["add"]["rule"]["comment"] for c in firewall.render_base()
            if "rule" in c["add"] and c["add"]["rule"]["chain"] == chain]


def test_guard_order_spares_the_common_traffic_its_lookups() -> None:
    # Traffic between containers of a network is accepted by the src_in lookup before
    # the container-port checks; VXLAN to or from the VTEP ends the raw chains (accept)
    # before the bridges lookup and the DNS rules, which do not concern it.
    guard = _comments("guard")
    first_port_check = guard.index(
        "a container reaches the host only through its bridge (and its checks)")
    assert guard[:first_port_check] == [
        "a portway network's addresses come only from its bridge",
        "a portway network's addresses come only from its bridge (IPv6)"]
    vxlan = guard.index("VXLAN: to this host's VTEP, untracked (vtep_in)")
    assert first_port_check < vxlan < guard.index("from a portway network")
    # What comes from the uplink meets no rule that only concerns a bridge's traffic:
    # after the container-port checks, one comparison (VXLAN) and the bridges' lookup.
    assert guard[vxlan + 1:] == ["from a portway network"]
    assert _comments("vtep_in") == ["VXLAN to this host's VTEP skips conntrack",
                                    "VXLAN to this host's VTEP skips conntrack (IPv6)",
                                    "VXLAN to this host's other addresses: its VXLAN "
                                    "socket takes them too"]
    assert _comments("guard_unlisted")[0] == ("nothing from a bridge comes from the host's "
                                              "loopback addresses")
    assert _comments("guard_out")[:2] == ["VXLAN from this host's VTEP skips conntrack",
                                          "VXLAN from this host's VTEP skips conntrack (IPv6)"]
    for c in firewall.render_base():
        rule = c["add"].get("rule")
        if rule is not None and rule["comment"].startswith("VXLAN ") and \
                "other addresses" not in rule["comment"]:
            assert rule["expr"][-2:] == [{"notrack": None}, {"accept": None}]


def test_vxlan_to_the_hosts_other_addresses_only_while_it_has_a_vtep() -> None:
    # The kernel's VXLAN socket takes the port on every address of the host: what is
    # not to the VTEP (accepted before) but to another local address is dropped, for
    # the families this host has a VTEP of. Without a VTEP (no cluster) the set is
    # empty and the rule drops nothing: a host's own VXLAN (Calico's, say) still works.
    (last,) = [c["add"]["rule"] for c in firewall.render_base()
               if c["add"].get("rule", {}).get("chain") == "vtep_in"][-1:]
    assert last["expr"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                   "right": "@vtep_families"}},
        firewall.LOCAL, {"drop": None}]
    for address, fam in (("192.0.2.1", "ipv4"), ("2001:db8::1", "ipv6")):
        added = firewall.render_vtep(ipaddress.ip_address(address), INSTANCE)
        elems = [(c["add"]["element"]["name"], c["add"]["element"]["elem"][0]["elem"])
                 for c in added]
        assert [(name, e["val"]) for name, e in elems] == [
            ("vteps" if fam == "ipv4" else "vteps6", address), ("vtep_families", fam)]
        # Owned, so that gc removes both when the host leaves its cluster (an IPv6
        # address's colons would make the tag unreadable, and the elements stay).
        for _, e in elems:
            assert names.parse_owner_tag(e["comment"]) == (
                INSTANCE, "vtep", address.replace(":", "-"))


def test_what_a_container_sends_ends_the_guard_in_its_network_chain() -> None:
    # Every packet meets the guard (raw priority: before conntrack, established flows
    # too). What a container sends has its network's source address: the src_in lookup
    # takes it to the network's src- chain, which ends the guard (between its containers
    # with notrack accept, the rest through guard_bridges, whose last rule accepts), so
    # no rule of the guard after the lookup is evaluated for it.
    for net in (network(), network(internal=True), network(**{firewall.ICC_OPTION: "false"})):
        src = [c["add"]["rule"] for c in firewall.render_network(net, INSTANCE)
               if c["add"].get("rule", {}).get("chain") == firewall.src_chain(net)]
        assert src[-1]["expr"] == [{"goto": {"target": "guard_bridges"}}]
    bridges = [c["add"]["rule"]["expr"] for c in firewall.render_base()
               if c["add"].get("rule", {}).get("chain") == "guard_bridges"]
    assert bridges[-1] == [{"accept": None}]
    # There, what is not DNS meets the two loopback checks and one comparison for both
    # families' DNS rules, then the accept.
    assert _comments("guard_bridges") == [
        "containers never reach the host's loopback addresses",
        "containers never reach the host's loopback addresses (IPv6)",
        "DNS: to portway's server, untracked (guard_dns)",
        "from a portway network: nothing more to check"]
    assert bridges[2] == [{"match": {"op": "==", "left": {"payload": {
        "protocol": "udp", "field": "dport"}}, "right": 53}}, {"jump": {"target": "guard_dns"}}]
    assert _comments("guard_dns") == [
        "queries to portway's DNS server skip conntrack",
        "queries to portway's DNS server skip conntrack (IPv6)"]
    # The checks by input interface are one fixed-prefix comparison each (a compare of
    # 4 bytes), not a lookup in an interval set of wildcards, which costs several times
    # as much for every packet from the uplink.
    ports = [c["add"]["rule"]["expr"] for c in firewall.render_base()
             if c["add"].get("rule", {}).get("comment", "").startswith(
                 "a container reaches the host only through")]
    assert [p[0]["match"]["right"] for p in ports] == [firewall.VETH_PATTERN,
                                                      firewall.UNCHECKED_PATTERN]


def test_members_go_to_their_familys_set_owned_and_removable() -> None:
    addresses = [ipaddress.ip_address("2001:db8::2"), ipaddress.ip_address("192.0.2.2")]
    added = firewall.render_members(addresses, INSTANCE)
    assert [(c["add"]["element"]["name"], c["add"]["element"]["elem"][0]["elem"]["val"])
            for c in added] == [("members", "192.0.2.2"), ("members6", "2001:db8::2")]
    # Each owned by this instance (an IPv6 address's colons would break the tag: gc could
    # not tell whose it is, and would never remove one whose host left).
    tags = [names.parse_owner_tag(c["add"]["element"]["elem"][0]["elem"]["comment"]) for c in added]
    assert tags == [(INSTANCE, "member", "192.0.2.2"), (INSTANCE, "member", "2001-db8--2")]
    removed = firewall.render_members_removal(addresses)
    assert {(c["delete"]["element"]["name"], c["delete"]["element"]["elem"][0])
            for c in removed} == {("members", "192.0.2.2"), ("members6", "2001:db8::2")}


def test_a_restarted_daemon_finds_its_members_in_the_listing() -> None:
    # As `nft -j list table` shows them: elements with a comment are objects.
    mine = [ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8::2")]
    elems: dict[str, list[Any]] = {"members": [], "members6": []}
    for c in firewall.render_members(mine, INSTANCE):
        elems[c["add"]["element"]["name"]] += c["add"]["element"]["elem"]
    other = firewall.render_members([ipaddress.ip_address("192.0.2.9")], "99999999")
    elems["members"] += [*other[0]["add"]["element"]["elem"], "192.0.2.10"]
    items = [{"set": {"family": "inet", "table": "portway", "name": name, "elem": e}}
             for name, e in elems.items()]
    items.append({"set": {"family": "inet", "table": "portway", "name": "vteps",
                          "elem": firewall.render_vtep(mine[0], INSTANCE)[0]["add"][
                              "element"]["elem"]}})
    assert sorted(firewall.listed_members(items, INSTANCE), key=str) == sorted(mine, key=str)


def _targets(value: Any) -> list[str]:
    """Every chain a rule's expressions (or a map element's verdict) go to."""
    if isinstance(value, dict):
        found = [value[k]["target"] for k in ("jump", "goto")
                 if isinstance(value.get(k), dict) and "target" in value[k]]
        return found + [t for v in value.values() for t in _targets(v)]
    if isinstance(value, list):
        return [t for v in value for t in _targets(v)]
    return []


def test_gc_makes_every_chain_before_the_chains_that_go_to_it() -> None:
    # gc restores chains in the order they are made here: a table an earlier portway
    # made, without the chains added since, is repaired in one pass only if no chain's
    # rules go to a chain made after it (nftables refuses a jump to a missing chain).
    cmds = [*firewall.render_base(), *firewall.render_network(network(), INSTANCE),
            *firewall.render_network(network(internal=True), INSTANCE)]
    made = {}
    for c in cmds:
        if "chain" in c.get("add", {}):
            made.setdefault(c["add"]["chain"]["name"], len(made))
    for c in cmds:
        body = c.get("add", {})
        if "rule" in body:
            for target in _targets(body["rule"]["expr"]):
                assert made[target] < made[body["rule"]["chain"]], (target, body["rule"])
        elif "element" in body:
            for target in _targets(body["element"]["elem"]):
                assert target in made


def test_routed_mode_opens_published_container_ports_alone() -> None:
    """gateway_mode_ipv4=routed: the network's out- chain accepts what the routed_ports
    set names (container address, protocol, container port) before its drop; a routed
    port adds its element there, a NATed one does not."""
    routed = network(**{"com.docker.network.bridge.gateway_mode_ipv4": "routed"})
    out = [c["add"]["rule"] for c in firewall.render_network(routed, INSTANCE)
           if "rule" in c["add"] and c["add"]["rule"]["chain"] == f"out-{'ab' * 6}"]
    direct = next(i for i, r in enumerate(out) if "@routed_ports" in json.dumps(r["expr"]))
    assert out[direct + 1]["comment"].endswith("no direct access from outside")
    # Not from portway's other networks: their isolation decides (isolate=true has no
    # drop of its own; this network's drop is it).
    assert out[direct]["expr"][0] == {"match": {"op": "!=", "left": {"meta": {
        "key": "iifname"}}, "right": "@bridges"}}
    assert "@routed_ports" not in json.dumps(firewall.render_network(network(), INSTANCE))
    port = Published(container_id="cd" * 32, protocol="tcp", host_port=8080,
                     container_ip=ipaddress.ip_address("10.77.0.2"), container_port=80,
                     routed=True)
    sets = {c["add"]["element"]["name"]: c["add"]["element"]["elem"]
            for c in firewall.render_ports([port], INSTANCE)}
    assert sets["routed_ports"][0]["elem"]["val"] == {"concat": ["10.77.0.2", "tcp", 80]}
    assert "routed_ports" not in {c["add"]["element"]["name"]
                                  for c in firewall.render_ports([published(8080)], INSTANCE)}


def _family_of(cmd: dict[str, Any]) -> str:
    (body,) = cmd["add"].values()
    return str(body["family"])


def test_upgrade_repair_is_fail_closed() -> None:
    """A table an older portway made: its `input` chain had no `host_in` lookup, and
    `host_in` none of the bridges' elements (nor the chains they go to). gc makes the
    regular chains first, then the elements, then the base chains that look them up: no
    moment in which `input` sends a bridge's traffic through a `host_in` that lacks its
    element (its VXLAN port not dropped)."""
    shared = [c for cmds in firewall.render_shared().values() for c in cmds]
    net = network(internal=True)  # (its host_in element goes to its own host- chain)
    mine = firewall.render_network(net, INSTANCE)
    older = [c for c in shared if _family_of(c) != "inet" or
             c["add"].get("rule", {}).get("chain") not in ("input", "to_host")]
    older += [c for c in mine if "element" not in c["add"] or
              c["add"]["element"]["name"] != "host_in"]
    older = [c for c in older if f"host-{'ab' * 6}" not in (
        c["add"].get("chain", {}).get("name"), c["add"].get("rule", {}).get("chain"))]
    repairs = [r.what for r in plan(older, [net])]
    assert "restore chain inet portway input: it differs from what portway wrote" in repairs
    assert "restore chain inet portway host-abababababab: it is missing" in repairs
    assert sum("of inet portway host_in" in w for w in repairs) == 1  # (one bridge name)
    order = {w.split(":")[0]: i for i, w in enumerate(repairs)}
    elements = [i for w, i in order.items() if w.startswith("restore element")]
    regular = [order["restore chain inet portway to_host"],
               order["restore chain inet portway host-abababababab"]]
    assert max(regular) < min(elements) <= max(elements) < order[
        "restore chain inet portway input"]
    # Every base chain after every element, every regular one before.
    hooked = {c["add"]["chain"]["name"] for c in shared + mine
              if "hook" in c["add"].get("chain", {})}
    for w, i in order.items():
        if w.startswith("restore chain"):
            name = w.split()[-1]
            assert (i > max(elements)) == (name in hooked), w
