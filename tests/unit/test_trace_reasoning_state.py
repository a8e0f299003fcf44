"""The static trace's reasoning on what a host already holds and on the connection's
reply (issue 16, mechanisms 2-5): the reply's way back, conntrack entries, reverse path
filtering, per-interface forwarding, policy routing, shadowing routes, failed
neighbours, and the fix every verdict but delivered ends with.

The worlds are built like the scenario labs (tests/e2e/lab.py): a bridge br0 made by
hand in the host, "VM" namespaces behind it, an uplink to the outside."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import test_trace_reasoning as base

from portway.core.nftsim import Packet
from portway.core.trace import Flow, Iface, Route, Rule, Space, World, render, trace

IP = ipaddress.ip_address
NET = ipaddress.ip_network
V4 = ipaddress.IPv4Interface
HOST_ADDR, OUTSIDE = "198.51.100.1", "198.51.100.2"


def vm(n: int, listens: tuple[str, int] | None = ("0.0.0.0", 80)) -> Space:
    """ns:vmN at 10.88.0.(N+1)/24, default route via the bridge."""
    return Space(key=f"ns:vm{n}", label=f"namespace vm{n}", ifaces=[
        Iface("lo", 1, addrs=(V4("127.0.0.1/8"),)),
        Iface("eth0", 2, "veth", f"02:00:00:00:00:0{n}", addrs=(V4(f"10.88.0.{n + 1}/24"),),
              peer=("host", f"vm{n}p"))],
        routes=[Route(NET("10.88.0.0/24"), "eth0", prefsrc=IP(f"10.88.0.{n + 1}")),
                Route(NET("0.0.0.0/0"), "eth0", gateway=IP("10.88.0.1"))],
        listeners={("tcp", *listens)} if listens else set())


def lab(rules: list[dict[str, Any]] | None = None, vms: int = 2, bridge_nf: bool = True,
        forwarding: bool = True) -> World:
    host = Space(key="host", label="host", forwarding=forwarding, ruleset=rules or [],
                 ifaces=[Iface("lo", 1, addrs=(V4("127.0.0.1/8"),)),
                         Iface("uplink0", 2, "veth", addrs=(V4(f"{HOST_ADDR}/24"),)),
                         Iface("br0", 3, "bridge", "02:00:00:00:00:ff",
                               addrs=(V4("10.88.0.1/24"),)),
                         *[Iface(f"vm{n}p", 3 + n, "veth", master="br0",
                                 peer=(f"ns:vm{n}", "eth0")) for n in range(1, vms + 1)]],
                 routes=[Route(NET("198.51.100.0/24"), "uplink0", prefsrc=IP(HOST_ADDR)),
                         Route(NET("0.0.0.0/0"), "uplink0", gateway=IP(OUTSIDE)),
                         Route(NET("10.88.0.0/24"), "br0", prefsrc=IP("10.88.0.1"))])
    return World(host=host, spaces={f"ns:vm{n}": vm(n) for n in range(1, vms + 1)},
                 bridge_nf=bridge_nf)


def packet(daddr: str, dport: int, saddr: str = "0.0.0.0", iif: str = "",
           proto: str = "tcp") -> Packet:
    return Packet(l4proto=proto, saddr=IP(saddr), daddr=IP(daddr), sport=40000,
                  dport=dport, iif=iif)


def nat_table(family: str, chain: str, hook: str, prio: int,
              *rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"table": {"family": family, "name": "nat"}},
        {"chain": {"family": family, "table": "nat", "name": chain, "type": "nat",
                   "hook": hook, "prio": prio, "policy": "accept"}}]
    for handle, expr in enumerate(rules, 10):
        items.append({"rule": {"family": family, "table": "nat", "chain": chain,
                               "handle": handle, "expr": expr}})
    return items


def match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def dnat(daddr: str, proto: str, port: int, to: str, to_port: int) -> list[dict[str, Any]]:
    return [match({"payload": {"protocol": "ip", "field": "daddr"}}, daddr),
            match({"payload": {"protocol": proto, "field": "dport"}}, port),
            {"dnat": {"addr": to, "port": to_port}}]


def filter_chain(family: str, table: str, chain: str, hook: str, policy: str,
                 *rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"table": {"family": family, "name": table}},
        {"chain": {"family": family, "table": table, "name": chain, "type": "filter",
                   "hook": hook, "prio": 0, "policy": policy}}]
    for handle, expr in enumerate(rules, 20):
        items.append({"rule": {"family": family, "table": table, "chain": chain,
                               "handle": handle, "expr": expr}})
    return items


# mechanism 2: the reply of the connection


def test_hairpin_reply_bridged_back_without_reverse_nat() -> None:
    rules = nat_table("ip", "prerouting", "prerouting", -100,
                      dnat("10.88.0.1", "tcp", 8080, "10.88.0.3", 80))
    t = trace(lab(rules, bridge_nf=False), "ns:vm1", packet("10.88.0.1", 8080), "vm1", "x")
    assert t.verdict == "dropped", render(t)
    assert t.hops[-1].kind == "reply" and "bridges it straight back" in t.hops[-1].detail
    assert "bridge-nf-call-iptables=1" in t.fix
    # With bridge netfilter on, the reply passes the host's conntrack: it works.
    t = trace(lab(rules, bridge_nf=True), "ns:vm1", packet("10.88.0.1", 8080), "vm1", "x")
    assert t.verdict == "delivered" and t.fix == "", render(t)


def test_unmasqueraded_private_source_has_no_way_back() -> None:
    w = lab()
    t = trace(w, "ns:vm1", packet(OUTSIDE, 9000), "vm1", "x")
    assert t.verdict == "no-route" and "not masqueraded" in t.summary, render(t)
    assert 'ip saddr 10.88.0.0/24 oifname \'"uplink0"\' masquerade' in t.fix
    # A routed network (no NAT on purpose) leaves: the far end is told to route it.
    w.routed = [NET("10.88.0.0/24")]
    t = trace(w, "ns:vm1", packet(OUTSIDE, 9000), "vm1", "x")
    assert t.verdict == "leaves-host" and any("routed network" in h.detail for h in t.hops)
    # Masqueraded, the far end answers the host: it leaves.
    masq = nat_table("ip", "postrouting", "postrouting", 100, [
        match({"meta": {"key": "oifname"}}, "uplink0"), {"masquerade": None}])
    t = trace(lab(masq), "ns:vm1", packet(OUTSIDE, 9000), "vm1", "x")
    assert t.verdict == "leaves-host" and t.seen_source == HOST_ADDR


def test_a_reply_without_a_route_back() -> None:
    w = lab()
    w.spaces["ns:vm2"].routes.pop()  # no default route: only its own subnet
    t = trace(w, "outside", packet("10.88.0.3", 80, OUTSIDE, "uplink0"), "outside", "x")
    assert t.verdict == "no-route" and "its reply has no way back" in t.summary, render(t)
    assert t.fix.startswith("ip netns exec vm2 ip route add")


# mechanism 3: state that already exists


def test_a_stale_conntrack_entry_keeps_the_old_dnat() -> None:
    rules = nat_table("ip", "prerouting", "prerouting", -100,
                      dnat(HOST_ADDR, "udp", 5060, "10.88.0.3", 5060))
    w = lab(rules)
    w.spaces["ns:vm1"].ifaces[1] = replace(w.spaces["ns:vm1"].ifaces[1], addrs=())
    w.spaces["ns:vm2"].listeners.add(("udp", "0.0.0.0", 5060))
    asked = packet(HOST_ADDR, 5060, OUTSIDE, "uplink0", "udp")
    t = trace(w, "outside", asked, "outside", "x")
    assert t.verdict == "delivered" and t.seen_destination == "10.88.0.3:5060"
    w.conntrack = [Flow("udp", (OUTSIDE, 40000, HOST_ADDR, 5060),
                        ("10.88.0.2", 5060, OUTSIDE, 40000), replied=True)]
    t = trace(w, "outside", asked, "outside", "x")
    assert t.verdict == "no-route", render(t)
    held = next(h for h in t.hops if h.kind == "ct")
    assert "10.88.0.2:5060" in held.detail and "rules now lead to 10.88.0.3:5060" in held.detail
    assert "existing conntrack entry" in t.summary
    assert t.fix == ("delete the stale entry: conntrack -D -p udp --orig-src 198.51.100.2 "
                     "--orig-port-src 40000 --orig-dst 198.51.100.1 --orig-port-dst 5060")
    # Another flow (another source port) is new: the rules decide it.
    t = trace(w, "outside", replace(asked, sport=40001), "outside", "x")
    assert t.verdict == "delivered" and not any(h.kind == "ct" for h in t.hops)


# mechanism 4: per-interface settings, routing


def test_strict_reverse_path_filter_drops_an_asymmetric_arrival() -> None:
    w = lab(vms=1)
    guest = w.spaces["ns:vm1"]
    guest.ifaces.append(Iface("eth1", 3, "veth", addrs=(V4("10.71.0.2/24"),),
                              peer=("host", "vm1q"), rp_filter=1))
    guest.routes.append(Route(NET("10.71.0.0/24"), "eth1"))
    w.host.ifaces.append(Iface("vm1q", 9, "veth", addrs=(V4("10.71.0.1/24"),),
                               peer=("ns:vm1", "eth1")))
    w.host.routes.append(Route(NET("10.71.0.0/24"), "vm1q"))
    asked = packet("10.71.0.2", 80, OUTSIDE, "uplink0")
    t = trace(w, "outside", asked, "outside", "x")
    assert t.verdict == "dropped" and "reverse path" in t.hops[-1].detail, render(t)
    assert "ip netns exec vm1 sysctl -w net.ipv4.conf.eth1.rp_filter=2" in t.fix
    # Loose mode only asks for some route back: the default route is one.
    guest.ifaces[-1] = replace(guest.ifaces[-1], rp_filter=2)
    assert trace(w, "outside", asked, "outside", "x").verdict == "delivered"
    # all.rp_filter=1 with the interface's 0: the larger, strict, holds.
    guest.ifaces[-1] = replace(guest.ifaces[-1], rp_filter=0)
    guest.rp_filter = 1
    t = trace(w, "outside", asked, "outside", "x")
    assert t.verdict == "dropped" and "strict reverse path filtering on eth1" in t.summary


def test_forwarding_off_on_one_interface() -> None:
    w = lab()
    w.host.ifaces[2] = replace(w.host.ifaces[2], forwarding=False)  # br0
    t = trace(w, "ns:vm1", packet(OUTSIDE, 443), "vm1", "x")
    assert t.verdict == "dropped" and "net.ipv4.conf.br0.forwarding=0" in t.summary
    assert t.fix == "sysctl -w net.ipv4.conf.br0.forwarding=1"
    w = lab(forwarding=False)
    t = trace(w, "ns:vm1", packet(OUTSIDE, 443), "vm1", "x")
    assert t.verdict == "dropped" and t.fix == "sysctl -w net.ipv4.ip_forward=1"


def test_policy_routing_rule_sends_to_another_table() -> None:
    w = lab(vms=1)
    w.host.ifaces.append(Iface("br1", 8, "bridge", "02:00:00:00:01:ff",
                               addrs=(V4("10.89.0.1/24"),)))
    w.host.ifaces.append(Iface("otherp", 9, "veth", master="br1", peer=("ns:other", "eth0")))
    w.host.routes.append(Route(NET("10.89.0.0/24"), "br1"))
    other = vm(1)
    other.key, other.label = "ns:other", "namespace other"
    other.ifaces[1] = Iface("eth0", 2, "veth", "02:00:00:00:01:02",
                            addrs=(V4("10.89.0.2/24"),), peer=("host", "otherp"))
    other.routes = [Route(NET("10.89.0.0/24"), "eth0"),
                    Route(NET("0.0.0.0/0"), "eth0", gateway=IP("10.89.0.1"))]
    w.spaces["ns:other"] = other
    assert trace(w, "ns:vm1", packet("10.89.0.2", 80), "vm1", "x").verdict == "delivered"
    w.host.rules = [Rule(0, 255), Rule(150, 11, src=NET("10.88.0.0/24")), Rule(32766, 254),
                    Rule(32767, 253)]
    w.host.tables = {11: [Route(NET("0.0.0.0/0"), "", kind="unreachable", table=11)]}
    t = trace(w, "ns:vm1", packet("10.89.0.2", 80), "vm1", "x")
    assert t.verdict == "no-route", render(t)
    assert "ip rule 150: from 10.88.0.0/24 lookup 11" in t.summary
    assert t.fix.endswith("ip rule add to 10.89.0.0/24 lookup main priority 149")
    # The host's own traffic (another source) still takes the main table.
    assert trace(w, "host", packet("10.89.0.2", 80), "host", "x").verdict == "delivered"


def test_a_more_specific_route_shadows_the_intended_one() -> None:
    w = lab(vms=1)
    w.host.ifaces[2] = replace(w.host.ifaces[2], addrs=(
        V4("10.88.0.1/24"), V4("172.17.0.1/16")))
    w.host.routes += [Route(NET("172.17.0.0/16"), "br0"),
                      Route(NET("172.16.0.0/12"), "uplink0", gateway=IP(OUTSIDE))]
    t = trace(w, "host", packet("172.17.5.10", 443), "host", "x")
    assert t.verdict == "no-route" and "ARP gets no answer" in t.hops[-1].detail
    assert "172.17.0.0/16 dev br0 is more specific than 172.16.0.0/12 via " \
           "198.51.100.2 dev uplink0" in t.hops[-1].detail
    assert "ip route add 172.17.5.10/32 via 198.51.100.2 dev uplink0" in t.fix
    # Nothing behind the bridge, and only the default route besides: nothing is shadowed.
    t = trace(w, "host", packet("10.88.0.9", 443), "host", "x")
    assert t.verdict == "no-route" and "shadows" not in t.summary


def test_a_failed_gateway_neighbour() -> None:
    w = lab()
    masq = nat_table("ip", "postrouting", "postrouting", 100, [{"masquerade": None}])
    w.host.ruleset = masq
    assert trace(w, "host", packet("203.0.113.9", 443), "host", "x").verdict == "leaves-host"
    w.host.neighbours[("uplink0", OUTSIDE)] = ("", "failed")
    t = trace(w, "host", packet("203.0.113.9", 443), "host", "x")
    assert t.verdict == "no-route" and "FAILED" in t.hops[-1].detail
    assert "ip neigh show dev uplink0" in t.fix


# mechanism 5: a fix a user can act on


def test_listening_on_loopback_only_names_the_bind_address() -> None:
    w = lab(vms=1)
    w.host.listeners = {("tcp", "127.0.0.1", 5432)}
    t = trace(w, "ns:vm1", packet("10.88.0.1", 5432), "vm1", "x")
    assert t.verdict == "no-listener"
    assert "it listens only on 127.0.0.1:5432" in t.summary and "bind 0.0.0.0" in t.summary
    assert t.fix == "make the server bind 0.0.0.0 (every address) or 10.88.0.1, not 127.0.0.1"
    assert render(t).endswith("fix: " + t.fix)


def test_an_unpublished_port_lists_the_published_ones() -> None:
    w = lab(vms=1)
    w.published = ["8080/tcp -> web:80"]
    t = trace(w, "outside", packet(HOST_ADDR, 8081, OUTSIDE, "uplink0"), "outside", "x")
    assert t.verdict == "no-listener"
    assert "8081/tcp is not a published port (published: 8080/tcp -> web:80)" in t.summary
    assert "publish the port" in t.fix


def test_an_accept_overridden_by_another_tables_policy_drop() -> None:
    accept = match({"meta": {"key": "iifname"}}, "br0")
    mine = filter_chain("inet", "mine", "forward", "forward", "accept",
                        [accept, {"accept": None}])
    drop = filter_chain("ip", "filter", "FORWARD", "forward", "drop")
    # Of two chains of one priority, the kernel runs the newer first: made after the
    # drop, the accept runs first...
    t = trace(lab([*drop, *mine]), "ns:vm1", packet("203.0.113.9", 443), "vm1", "x")
    assert [h.decision.table for h in t.hops if h.decision] == ["mine", "filter"]
    # ...made before it, the drop runs first, and the accept never does.
    first = trace(lab([*mine, *drop]), "ns:vm1", packet("203.0.113.9", 443), "vm1", "x")
    assert [h.decision.table for h in first.hops if h.decision] == ["filter"]
    assert first.verdict == "dropped" and "ends only its own chain" not in first.summary
    assert t.verdict == "dropped", render(t)
    assert "the accept in inet mine forward" in t.summary and "ends only its own chain" \
        in t.summary and "ip filter FORWARD still decides" in t.summary
    assert t.fix == ('accept the flow in that chain: nft insert rule ip filter FORWARD '
                     'iifname "br0" oifname "uplink0" ip daddr 203.0.113.9 tcp dport 443 '
                     'accept && nft insert rule ip filter FORWARD ct state '
                     'established,related accept')


def test_a_drop_rule_names_its_handle() -> None:
    drop = [match({"meta": {"key": "oifname"}}, "uplink0"), {"drop": None}]
    t = trace(lab(filter_chain("inet", "f", "fwd", "forward", "accept", drop)), "ns:vm1",
              packet("203.0.113.9", 443), "vm1", "x")
    assert t.verdict == "dropped"
    assert "nft delete rule inet f fwd handle 20" in t.fix


def test_every_failure_has_a_fix_and_delivery_has_none() -> None:
    w = lab()
    t = trace(w, "ns:vm1", packet("10.88.0.3", 80), "vm1", "x")
    assert t.verdict == "delivered" and t.fix == "" and t.as_dict()["fix"] == ""
    for dest in (packet("10.88.0.3", 81), packet("10.99.0.1", 80)):
        w.spaces["ns:vm1"].routes.pop() if dest.daddr == IP("10.99.0.1") else None
        t = trace(w, "ns:vm1", dest, "vm1", "x")
        assert t.verdict != "delivered" and t.as_dict()["fix"], render(t)


def test_a_smaller_mtu_on_the_path_and_mss_clamping() -> None:
    w = lab(vms=1)
    w.spaces["ns:vm1"].ifaces[1] = replace(w.spaces["ns:vm1"].ifaces[1], mtu=1500)
    w.host.ifaces[1] = replace(w.host.ifaces[1], mtu=1420)  # the uplink: a tunnel
    masq = nat_table("ip", "postrouting", "postrouting", 100, [{"masquerade": None}])
    w.host.ruleset = masq
    t = trace(w, "ns:vm1", packet("203.0.113.9", 443), "vm1", "x")
    assert t.verdict == "leaves-host"
    note = next(h for h in t.hops if h.kind == "mtu")
    assert "path MTU 1420 (uplink0 in host) is below the sender's 1500" in note.detail
    assert "no rule clamps the MSS" in note.detail
    # The fix: the clamp rule, in the namespace that holds the narrow device, in text
    # and in --json.
    mtu = t.as_dict()["mtu"]
    assert (mtu["path_mtu"], mtu["device"], mtu["mss"], mtu["clamped"]) == \
        (1420, "uplink0", 1380, False)
    assert mtu["fix"].endswith("nft add rule inet mss forward oifname \"uplink0\" tcp flags "
                               "syn tcp option maxseg size set rt mtu && nft add rule inet "
                               "mss forward iifname \"uplink0\" tcp flags syn tcp option "
                               "maxseg size set 1380")
    assert f"fix: {mtu['fix']}" in render(t)
    clamp = [match({"payload": {"protocol": "tcp", "field": "flags"}}, "syn"),
             {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}},
                         "value": {"rt": {"key": "mtu"}}}}]
    w.host.ruleset = masq + filter_chain("inet", "f", "forward", "forward", "accept", clamp)
    t = trace(w, "ns:vm1", packet("203.0.113.9", 443), "vm1", "x")
    assert "a rule clamps the MSS" in next(h for h in t.hops if h.kind == "mtu").detail
    assert t.mtu is not None and t.mtu["clamped"] and t.mtu["fix"] == ""
    assert "mtu:" not in render(t)
    # The same MTU all the way: nothing to say.
    w.host.ifaces[1] = replace(w.host.ifaces[1], mtu=1500)
    t = trace(w, "ns:vm1", packet("203.0.113.9", 443), "vm1", "x")
    assert not any(h.kind == "mtu" for h in t.hops)


def test_no_route_names_the_router_on_its_own_link() -> None:
    w = lab(vms=1)
    w.spaces["ns:vm1"].routes.pop()  # no default route
    t = trace(w, "ns:vm1", packet("203.0.113.9", 443), "vm1", "x")
    assert t.verdict == "no-route"
    assert t.fix == "a default route through br0 in host: ip netns exec vm1 ip route add " \
        "default via 10.88.0.1 (or only 203.0.113.9/32)"


def test_portways_own_rules_are_fixed_through_its_settings() -> None:
    t = trace(base.world(), "web", packet("10.78.0.2", 5432), "web", "store:5432")
    assert t.verdict == "dropped" and t.fix.startswith("networks are isolated from each "
                                                        "other on purpose")
    t = trace(base.world(), "outside", packet("10.77.0.2", 80, "198.51.100.2", "uplink0"),
              "outside", "10.77.0.2:80")
    assert t.verdict == "dropped" and "portway run -p HOSTPORT:PORT" in t.fix
