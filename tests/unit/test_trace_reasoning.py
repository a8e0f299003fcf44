"""The static trace's reasoning, on recorded states: portway's own rendered firewall
(turned into the listing libnftables returns), hand-made namespaces, and foreign tables."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from portway.core import firewall
from portway.core.firewall import Published
from portway.core.nftsim import Packet, Ruleset
from portway.core.trace import (
    Iface,
    KernelStep,
    Route,
    Space,
    World,
    agreement,
    fold_events,
    pair_veths,
    render,
    static_steps,
    trace,
)
from portway.model.types import Endpoint, Network, Subnet

IP = ipaddress.ip_address
NET = "ab" * 32
DBNET = "cd" * 32


def listing(cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`add` commands as `list ruleset` shows their result."""
    items: list[dict[str, Any]] = []
    sets: dict[tuple[str, str], dict[str, Any]] = {}
    for handle, cmd in enumerate(cmds, 1):
        (kind, body), = cmd["add"].items()
        if kind == "element":
            sets[(body["family"], body["name"])].setdefault("elem", []).extend(body["elem"])
            continue
        if kind == "table":
            items.append({"table": dict(body)})
            if body["family"] == firewall.GUARD_FAMILY:  # (after GUARD_PRELUDE's sets)
                for name in firewall.RAW_SETS:
                    sets[(body["family"], name)] = {
                        "family": body["family"], "table": body["name"], "name": name,
                        "type": ["ifname", "integer"]}
                    items.append({"set": sets[(body["family"], name)]})
            continue
        entry = dict(body)
        if kind == "rule":
            entry["handle"] = handle
        items.append({kind: entry})
        if kind in ("set", "map"):
            sets[(body["family"], body["name"])] = entry
    return items


def network(name: str, nid: str, third: int, internal: bool = False) -> Network:
    return Network(id=nid, name=name, subnets=(Subnet(
        subnet=ipaddress.ip_network(f"10.{third}.0.0/24"), gateway=IP(f"10.{third}.0.1")),),
                   bridge=f"pwbr-{nid[:10]}", internal=internal)


def endpoint(n: Network, host: int, veth: str) -> Endpoint:
    addr = IP(f"{str(n.gateway)[:-2]}.{host}")
    return Endpoint(id=veth, container_id=veth, network_id=n.id, ifname="eth0",
                    host_ifname=veth, addresses=(ipaddress.ip_interface((addr, 24)),),
                    mac=f"02:42:0a:00:00:{host:02x}")


APP, DB = network("app", NET, 77), network("db", DBNET, 78)
INSTANCE = "1a2b3c4d"
WEB, CACHE, STORE = endpoint(APP, 2, "pwv-web"), endpoint(APP, 3, "pwv-cache"), \
    endpoint(DB, 2, "pwv-store")
PORTS = [Published(container_id="web", protocol="tcp", host_port=8080,
                   container_ip=WEB.address, container_port=80),
         Published(container_id="cache", protocol="tcp", host_port=6379,
                   container_ip=CACHE.address, container_port=80, host_ip=IP("127.0.0.1"))]


# Two hosts of a cluster this host is in (their --advertise-address, one per family).
MEMBERS = [IP("198.51.100.9"), IP("2001:db8::9")]


def ruleset(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    cmds = [*firewall.render_base(), *firewall.render_network(APP, INSTANCE),
            *firewall.render_network(DB, INSTANCE), *firewall.render_ports(PORTS, INSTANCE),
            *firewall.render_guard_base(), *firewall.render_arp_base(),
            *firewall.render_guard([WEB, CACHE, STORE], INSTANCE),
            *firewall.render_members(MEMBERS, INSTANCE)]
    return listing(cmds) + (extra or [])


def container(key: str, e: Endpoint, gateway: str, listens: int = 80) -> Space:
    return Space(key=key, label=f"container {key}",
                 ifaces=[Iface("lo", 1, addrs=(ipaddress.IPv4Interface("127.0.0.1/8"),)),
                         Iface("eth0", 2, "veth", e.mac, addrs=(
                             ipaddress.IPv4Interface(f"{e.address}/24"),),
                               peer=("host", e.host_ifname))],
                 routes=[Route(ipaddress.IPv4Network(f"{str(e.address)[:-2]}.0/24"), "eth0",
                               prefsrc=e.address),
                         Route(ipaddress.IPv4Network("0.0.0.0/0"), "eth0", gateway=IP(gateway))],
                 listeners={("tcp", "0.0.0.0", listens)})


def world(extra: list[dict[str, Any]] | None = None, bridge_nf: bool = True) -> World:
    host = Space(
        key="host", label="host", forwarding=True, ruleset=ruleset(extra),
        ifaces=[Iface("lo", 1, addrs=(ipaddress.IPv4Interface("127.0.0.1/8"),)),
                Iface("uplink0", 2, "veth", addrs=(ipaddress.IPv4Interface("198.51.100.1/24"),)),
                Iface(APP.bridge, 3, "bridge", "02:ab:00:00:00:01", route_localnet=True,
                      addrs=(ipaddress.IPv4Interface("10.77.0.1/24"),)),
                Iface(DB.bridge, 4, "bridge", "02:cd:00:00:00:01", route_localnet=True,
                      addrs=(ipaddress.IPv4Interface("10.78.0.1/24"),)),
                Iface("pwv-web", 5, "veth", master=APP.bridge, peer=("web", "eth0")),
                Iface("pwv-cache", 6, "veth", master=APP.bridge, peer=("cache", "eth0")),
                Iface("pwv-store", 7, "veth", master=DB.bridge, peer=("store", "eth0"))],
        routes=[Route(ipaddress.IPv4Network("198.51.100.0/24"), "uplink0",
                      prefsrc=IP("198.51.100.1")),
                Route(ipaddress.IPv4Network("0.0.0.0/0"), "uplink0", gateway=IP("198.51.100.2")),
                Route(APP.subnet, APP.bridge, prefsrc=APP.gateway),  # type: ignore[arg-type]
                Route(DB.subnet, DB.bridge, prefsrc=DB.gateway)])  # type: ignore[arg-type]
    spaces = {"web": container("web", WEB, "10.77.0.1"),
              "cache": container("cache", CACHE, "10.77.0.1"),
              "store": container("store", STORE, "10.78.0.1", listens=5432)}
    return World(host=host, spaces=spaces, bridge_nf=bridge_nf)


def packet(daddr: str, dport: int, saddr: str = "0.0.0.0", iif: str = "") -> Packet:
    return Packet(l4proto="tcp", saddr=IP(saddr), daddr=IP(daddr), sport=40000, dport=dport,
                  iif=iif)


def decided(t: Any) -> list[tuple[str, str]]:
    return [(h.decision.chain, h.decision.rule) for h in t.hops
            if h.decision is not None and h.decision.rule]


def test_same_network_is_bridged_and_accepted_by_icc() -> None:
    t = trace(world(), "web", packet("10.77.0.3", 80), "web", "cache:80")
    assert t.verdict == "delivered" and t.seen_source == "10.77.0.2"
    assert any("bridged, not routed" in h.detail for h in t.hops)
    assert ("forward", "network app abababababab: between its containers (icc)") in decided(t)


def test_without_bridge_netfilter_the_ip_hooks_are_skipped() -> None:
    t = trace(world(bridge_nf=False), "web", packet("10.77.0.3", 80), "web", "cache:80")
    assert t.verdict == "delivered" and decided(t) == []
    assert any("bridge netfilter is off" in h.detail for h in t.hops)


def test_other_network_is_isolated() -> None:
    t = trace(world(), "web", packet("10.78.0.2", 5432), "web", "store:5432")
    assert t.verdict == "dropped"
    assert decided(t)[-1] == ("forward", "network app abababababab: isolation from other "
                              "portway networks")


def test_outside_to_published_port_keeps_the_client_address() -> None:
    t = trace(world(), "outside", packet("198.51.100.1", 8080, "198.51.100.2", "uplink0"),
              "outside", "web:80")
    assert t.verdict == "delivered"
    assert (t.seen_source, t.seen_destination) == ("198.51.100.2", "10.77.0.2:80")
    assert any("198.51.100.1:8080 -> 10.77.0.2:80 (DNAT)" in h.detail for h in t.hops)


def test_the_reply_goes_back_through_the_hooks_with_the_nat_undone() -> None:
    """The answer of a published port's connection walks back from the container: out of
    its veth to the bridge's address, the host's hooks (established), conntrack turning
    its source back into the published address at postrouting, out of the uplink."""
    t = trace(world(), "outside", packet("198.51.100.1", 8080, "198.51.100.2", "uplink0"),
              "outside", "web:80")
    assert t.verdict == "delivered" and t.reply_hops and not t.reply_lost
    back = [h.detail for h in t.reply_hops]
    assert all(h.kind == "reply" for h in t.reply_hops)
    assert any("undoes the DNAT: source 10.77.0.2:80 -> 198.51.100.1:8080" in d
               for d in back)
    assert back[-1].startswith("out of uplink0") and "from 198.51.100.1:8080" in back[-1]
    assert "the reply comes back:" in render(t)


def test_a_reply_dropped_on_its_way_back_decides_the_connection() -> None:
    """A forward chain of another table that drops what comes back from the bridge (no
    `ct state established` accept): the request is delivered, its answer is not."""
    w = world()
    w.host.ruleset = [*w.host.ruleset,
                      {"table": {"family": "inet", "name": "mine"}},
                      {"chain": {"family": "inet", "table": "mine", "name": "forward",
                                 "type": "filter", "hook": "forward", "prio": 10,
                                 "policy": "accept"}},
                      {"rule": {"family": "inet", "table": "mine", "chain": "forward",
                                "expr": [{"match": {"op": "==", "left": {"meta": {
                                    "key": "iifname"}}, "right": "pwbr-ababababab"}},
                                    {"drop": None}]}}]
    t = trace(w, "outside", packet("198.51.100.1", 8080, "198.51.100.2", "uplink0"),
              "outside", "web:80")
    assert t.verdict == "dropped" and "its reply does not come back" in t.summary
    assert t.reply_lost.startswith("dropped in host by inet mine forward")
    assert t.hops[-1].kind == "reply" and t.hops[-1].decision is not None
    assert t.fix.endswith("nft insert rule inet mine forward ct state established,related "
                          "accept")
    # What a live probe is compared with: the request's hooks, not the reply's drop.
    assert [s.verdict for s in static_steps(t, "host") if s.table == "mine"] == \
        ["policy accept"]


def test_outside_to_an_unpublished_address_is_dropped() -> None:
    t = trace(world(), "outside", packet("10.77.0.2", 80, "198.51.100.2", "uplink0"),
              "outside", "10.77.0.2:80")
    assert t.verdict == "dropped" and "no direct access from outside" in t.summary


def test_loopback_published_port_from_the_host_and_from_outside() -> None:
    t = trace(world(), "host", packet("127.0.0.1", 6379), "host", "127.0.0.1:6379")
    assert t.verdict == "delivered" and t.seen_source == "10.77.0.1"
    t = trace(world(), "outside", packet("127.0.0.1", 6379, "198.51.100.2", "uplink0"),
              "outside", "127.0.0.1:6379")
    assert t.verdict == "dropped" and "martian" in t.summary


def test_hairpin_is_masqueraded_to_the_gateway() -> None:
    t = trace(world(), "web", packet("198.51.100.1", 8080), "web", "198.51.100.1:8080")
    assert t.verdict == "delivered" and t.seen_source == "10.77.0.1"
    assert any("hairpin" in rule for _, rule in decided(t))


def test_outbound_is_masqueraded_and_leaves() -> None:
    t = trace(world(), "web", packet("203.0.113.7", 443), "web", "203.0.113.7:443")
    assert t.verdict == "leaves-host" and t.seen_source == "198.51.100.1"


def test_no_listener() -> None:
    t = trace(world(), "web", packet("10.77.0.3", 81), "web", "cache:81")
    assert t.verdict == "no-listener" and "TCP RST" in t.summary


def test_no_sctp_listener_is_answered_as_the_kernel_answers() -> None:
    """SCTP to a port nothing listens on: an ABORT where the kernel has SCTP; where it
    has none (no module loaded), no SCTP stack sees the packet and the answer is ICMP
    protocol unreachable."""
    sctp = replace(packet("10.77.0.3", 81), l4proto="sctp")
    t = trace(world(), "web", sctp, "web", "cache:81/sctp")
    assert t.verdict == "no-listener" and "SCTP ABORT" in t.summary, t.summary
    w = world()
    w.sctp = False
    t = trace(w, "web", sctp, "web", "cache:81/sctp")
    assert t.verdict == "no-listener", t.summary
    assert "ICMP protocol unreachable" in t.summary and "no SCTP" in t.summary, t.summary
    assert "ABORT" not in t.summary


def test_no_route() -> None:
    w = world()
    w.host.routes = [r for r in w.host.routes if r.dst.prefixlen != 0]
    t = trace(w, "web", packet("203.0.113.7", 443), "web", "203.0.113.7:443")
    assert t.verdict == "no-route" and "no route to 203.0.113.7" in render(t)


def test_a_foreign_tables_policy_drop_decides() -> None:
    hard = [{"table": {"family": "inet", "name": "hard"}},
            {"chain": {"family": "inet", "table": "hard", "name": "fwd", "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "drop"}}]
    t = trace(world(hard), "web", packet("203.0.113.7", 443), "web", "203.0.113.7:443")
    assert t.verdict == "dropped" and "inet hard fwd" in t.summary
    # The documented remedy: accept portway's mark in that table.
    accept_mark = {"rule": {"family": "inet", "table": "hard", "chain": "fwd", "handle": 9,
                            "expr": [{"match": {"op": "==", "left": {"&": [
                                {"meta": {"key": "mark"}}, firewall.ACCEPT_MARK]},
                                "right": firewall.ACCEPT_MARK}}, {"accept": None}]}}
    t = trace(world([*hard, accept_mark]), "web", packet("203.0.113.7", 443), "web", "x")
    assert t.verdict == "leaves-host"


def test_spoof_guard_passes_the_assigned_pair_only() -> None:
    rs = Ruleset(ruleset())
    ok = Packet(l4proto="tcp", saddr=WEB.address, daddr=IP("10.77.0.3"), sport=1, dport=80,
                iif="pwv-web", smac=WEB.mac)
    _, decisions, alive = rs.run_hook(("bridge",), "prerouting", ok, frozenset())
    assert alive and decisions[0].verdict == "policy accept"
    spoofed = Packet(l4proto="tcp", saddr=CACHE.address, daddr=IP("10.77.0.3"), sport=1,
                     dport=80, iif="pwv-web", smac=WEB.mac)
    _, decisions, alive = rs.run_hook(("bridge",), "prerouting", spoofed, frozenset())
    assert not alive and decisions[0].rule == "a container sends only from its own MAC and address"


def test_unknown_expressions_are_reported_not_guessed() -> None:
    odd = [{"table": {"family": "inet", "name": "odd"}},
           {"chain": {"family": "inet", "table": "odd", "name": "fwd", "type": "filter",
                      "hook": "forward", "prio": 5, "policy": "accept"}},
           {"rule": {"family": "inet", "table": "odd", "chain": "fwd", "handle": 3,
                     "expr": [{"match": {"op": "==", "left": {"osf": {"key": "name"}},
                                         "right": "Linux"}}, {"drop": None}]}}]
    t = trace(world(odd), "web", packet("203.0.113.7", 443), "web", "x")
    assert t.verdict == "leaves-host"
    notes = [n for h in t.hops if h.decision for n in h.decision.uncertain]
    assert notes and "cannot evaluate" in notes[0]


def test_foreign_veths_are_paired_by_index_both_ways() -> None:
    w = world()
    w.host.ifaces.append(Iface("xveth0", 9, "veth", link_index=2,
                               addrs=(ipaddress.IPv4Interface("10.59.0.1/24"),)))
    w.host.routes.append(Route(ipaddress.IPv4Network("10.59.0.0/24"), "xveth0",
                               prefsrc=IP("10.59.0.1")))
    other = Space(key="ns:x", label="namespace x", ifaces=[
        Iface("eth0", 2, "veth", link_index=9, addrs=(ipaddress.IPv4Interface("10.59.0.2/24"),)),
        Iface("decoy", 3, "veth", link_index=9)],  # names 9, but 9 names 2 only
        routes=[Route(ipaddress.IPv4Network("0.0.0.0/0"), "eth0", gateway=IP("10.59.0.1"))])
    pair_veths(w.host, other)
    assert other.iface("eth0").peer == ("host", "xveth0")  # type: ignore[union-attr]
    assert other.iface("decoy").peer is None  # type: ignore[union-attr]
    w.spaces["ns:x"] = other
    t = trace(w, "ns:x", packet("198.51.100.1", 8080), "x", "web")
    assert t.verdict == "delivered" and t.seen_source == "10.59.0.2"


def test_agreement_needs_the_same_dropping_rule() -> None:
    drop_a = KernelStep("inet", "portway", "forward", "in-a", 7, "drop")
    drop_b = KernelStep("inet", "portway", "forward", "out-a", 9, "drop")
    passed = KernelStep("inet", "portway", "guard", "guard", None, "policy accept")
    seen = ("10.0.0.2", "10.0.0.3:80")
    assert agreement([passed, drop_a], [passed, drop_a], "dropped", "dropped", seen,
                     None) == []
    assert agreement([passed, drop_a], [passed, drop_b], "dropped", "dropped", seen, None)
    # Chains only one side reports are left out; verdicts and seen addresses are not.
    assert agreement([passed], [], "delivered", "delivered", seen, seen) == []
    assert agreement([passed], [passed], "delivered", "no-listener", seen, seen)
    assert agreement([passed], [passed], "delivered", "delivered", seen, ("x", "y"))


def test_fold_events_one_step_per_base_chain() -> None:
    events = [
        {"family": "inet", "table": "portway", "chain": "forward", "kind": "rule",
         "handle": 24, "verdict": "continue"},
        {"family": "inet", "table": "portway", "chain": "forward", "kind": "rule",
         "handle": 26, "verdict": "jump"},
        {"family": "inet", "table": "portway", "chain": "in-a", "kind": "rule",
         "handle": 34, "verdict": "drop"},
        {"family": "inet", "table": "portway", "chain": "guard", "kind": "policy",
         "handle": None, "verdict": "accept"}]
    steps = fold_events(events, {("inet", "portway", 34): "isolation"})
    assert steps == [KernelStep("inet", "portway", "forward", "in-a", 34, "drop", "isolation"),
                     KernelStep("inet", "portway", "guard", "guard", None, "policy accept")]


def test_neighbours_and_fdb_are_reported() -> None:
    w = world()
    t = trace(w, "web", packet("10.77.0.3", 80), "web", "cache:80")
    text = render(t)
    assert "10.77.0.3 is not in the neighbour table of eth0: ARP asks first" in text
    assert "02:42:0a:00:00:03 is not in the FDB yet: the bridge floods" in text
    w.spaces["web"].neighbours[("eth0", "10.77.0.3")] = ("02:42:0a:00:00:03", "reachable")
    w.host.fdb[(APP.bridge, "02:42:0a:00:00:03")] = "pwv-cache"
    text = render(trace(w, "web", packet("10.77.0.3", 80), "web", "cache:80"))
    assert "neighbour 10.77.0.3 is 02:42:0a:00:00:03 (reachable)" in text
    assert "FDB: 02:42:0a:00:00:03 learned on port pwv-cache" in text


def test_dns_to_the_gateway_skips_conntrack_and_nat() -> None:
    rs = Ruleset(ruleset())
    query = Packet(l4proto="udp", saddr=WEB.address, daddr=APP.gateway, sport=40000,
                   dport=53, iif=APP.bridge)
    out, decisions, alive = rs.run_hook(("inet", "ip"), "prerouting", query, frozenset())
    assert alive and out.ct_state == "untracked"
    assert [d.chain for d in decisions] == ["guard"]  # the NAT chain does not see it
    for other in (replace(query, l4proto="tcp"), replace(query, daddr=IP("198.51.100.1")),
                  replace(query, saddr=IP("198.51.100.2"), iif="uplink0")):
        out, decisions, _ = rs.run_hook(("inet", "ip"), "prerouting", other, frozenset())
        assert out.ct_state == "new" and [d.chain for d in decisions] == ["guard",
                                                                          "prerouting"]


def test_a_networks_addresses_come_only_from_its_bridge() -> None:
    rs = Ruleset(ruleset())
    query = Packet(l4proto="udp", saddr=WEB.address, daddr=APP.gateway, sport=40000,
                   dport=53, iif=APP.bridge)
    for spoofed in (replace(query, iif="uplink0"), replace(query, iif=DB.bridge),
                    replace(query, iif="pwv-web")):
        _, decisions, alive = rs.run_hook(("inet", "ip"), "prerouting", spoofed, frozenset())
        assert not alive and decisions[-1].verdict == "drop", spoofed
    from_host = replace(query, saddr=APP.gateway, iif="lo")
    _, _, alive = rs.run_hook(("inet", "ip"), "prerouting", from_host, frozenset())
    assert alive
    answer = Packet(l4proto="udp", saddr=APP.gateway, daddr=WEB.address, sport=53,
                    dport=40000, oif=APP.bridge)
    out, _, _ = rs.run_hook(("inet", "ip"), "output", answer, frozenset())
    assert out.ct_state == "untracked"


def _routed_world(forwarding: bool, loop: bool = False) -> World:
    """host -- rt0/up0 -- router -- down0/eth0 -- inner (10.91.0.2), all by hand."""
    v4 = ipaddress.IPv4Interface
    host = Space(key="host", label="host", ifaces=[
        Iface("lo", 1, addrs=(v4("127.0.0.1/8"),)),
        Iface("rt0", 5, "veth", peer=("ns:rt", "up0"), addrs=(v4("10.90.0.1/30"),))],
        routes=[Route(ipaddress.IPv4Network("10.90.0.0/30"), "rt0"),
                Route(ipaddress.IPv4Network("10.91.0.0/24"), "rt0", gateway=IP("10.90.0.2"))])
    back = Route(ipaddress.IPv4Network("10.91.0.0/24"), "up0", gateway=IP("10.90.0.1"))
    router = Space(key="ns:rt", label="namespace rt", forwarding=forwarding, ifaces=[
        Iface("up0", 2, "veth", peer=("host", "rt0"), addrs=(v4("10.90.0.2/30"),)),
        Iface("down0", 3, "veth", peer=("ns:in", "eth0"), addrs=(v4("10.91.0.1/24"),))],
        routes=[Route(ipaddress.IPv4Network("10.90.0.0/30"), "up0"),
                back if loop else Route(ipaddress.IPv4Network("10.91.0.0/24"), "down0")])
    inner = Space(key="ns:in", label="namespace in", ifaces=[
        Iface("eth0", 2, "veth", peer=("ns:rt", "down0"), addrs=(v4("10.91.0.2/24"),))],
        routes=[Route(ipaddress.IPv4Network("10.91.0.0/24"), "eth0"),  # and the way back
                Route(ipaddress.IPv4Network("0.0.0.0/0"), "eth0", gateway=IP("10.91.0.1"))],
        listeners={("tcp", "0.0.0.0", 80)})
    return World(host=host, spaces={"ns:rt": router, "ns:in": inner})


def test_a_namespace_that_forwards_routes_on() -> None:
    t = trace(_routed_world(True), "host", packet("10.91.0.2", 80), "host", "x")
    assert t.verdict == "delivered", render(t)
    assert [h.where for h in t.hops if h.kind == "veth"] == ["rt0 -> up0", "down0 -> eth0"]
    t = trace(_routed_world(False), "host", packet("10.91.0.2", 80), "host", "x")
    assert t.verdict == "dropped" and "does not forward" in t.summary
    # The router's route leads back to the host, which forwards to the router again: a
    # loop, which the trace ends as the TTL would.
    w = _routed_world(True, loop=True)
    w.host.forwarding = True
    t = trace(w, "host", packet("10.91.0.2", 80), "host", "x")
    assert t.verdict == "dropped" and "routing loop" in t.summary, render(t)


def test_a_bridge_taken_down_sends_its_containers_traffic_out_of_the_uplink() -> None:
    # `ip link set BRIDGE down` (a network manager that took it, a script) removes the
    # bridge's routes but not its address: a published port's DNATed packet then leaves
    # by the default route. The verdict says so, with the fix.
    w = world()
    w.host.ifaces[2] = replace(w.host.ifaces[2], up=False)
    w.host.routes = [r for r in w.host.routes if r.dev != APP.bridge]
    t = trace(w, "outside", packet("198.51.100.1", 8080, "198.51.100.2", "uplink0"),
              "outside", "web:80")
    assert t.verdict == "leaves-host"
    assert t.summary.endswith(f"10.77.0.2 is in 10.77.0.0/24 of {APP.bridge}, which is "
                              f"down (so is its route): it was likely meant for {APP.bridge}")
    assert t.fix == f"ip link set {APP.bridge} up"
    # Up, but its route deleted: the route to add.
    w.host.ifaces[2] = replace(w.host.ifaces[2], up=True)
    t = trace(w, "outside", packet("198.51.100.1", 8080, "198.51.100.2", "uplink0"),
              "outside", "web:80")
    assert t.verdict == "leaves-host"
    assert t.fix == f"ip route add 10.77.0.0/24 dev {APP.bridge} src 10.77.0.1"
    # Traffic meant for the world says nothing of the kind.
    t = trace(world(), "web", packet("203.0.113.7", 443), "web", "203.0.113.7:443")
    assert t.verdict == "leaves-host" and t.fix == "" and "meant" not in t.summary


def test_a_bridge_taken_down_is_named_before_the_way_back_is_judged() -> None:
    # From outside, without masquerade, the way back would fail too; the cause to fix
    # first is the bridge.
    w = world()
    w.host.ifaces[2] = replace(w.host.ifaces[2], up=False)
    w.host.routes = [r for r in w.host.routes if r.dev != APP.bridge]
    t = trace(w, "outside", packet("198.51.100.1", 8080, "203.0.113.10", "uplink0"),
              "outside", "web:80")
    assert t.verdict == "leaves-host" and t.fix == f"ip link set {APP.bridge} up"


def test_a_containers_vxlan_to_a_cluster_member_is_dropped() -> None:
    # It would leave masqueraded to this host's address, which the member takes for
    # this host's tunnel traffic; VXLAN to any other address (kind, flannel) leaves.
    vxlan = Packet(l4proto="udp", saddr=IP("0.0.0.0"), daddr=MEMBERS[0], sport=40000,
                   dport=4789)
    t = trace(world(), "web", vxlan, "web", "198.51.100.9:4789")
    assert t.verdict == "dropped"
    assert decided(t)[-1] == ("forward", "containers never send to a cluster member's "
                                         "VXLAN port")
    t = trace(world(), "web", replace(vxlan, daddr=IP("198.51.100.8")), "web",
              "198.51.100.8:4789")
    assert t.verdict == "leaves-host"
    t = trace(world(), "web", replace(vxlan, dport=4790), "web", "198.51.100.9:4790")
    assert t.verdict == "leaves-host"


def test_a_containers_vxlan_to_an_ipv6_member_is_dropped() -> None:
    rs = Ruleset(ruleset())
    vxlan = Packet(l4proto="udp", saddr=IP("fd00::2"), daddr=MEMBERS[1], sport=40000,
                   dport=4789, iif=APP.bridge, oif="uplink0")
    _, decisions, alive = rs.run_hook(("inet", "ip6"), "forward", vxlan, frozenset())
    assert not alive and decisions[-1].rule == "containers never send to a cluster " \
        "member's VXLAN port (IPv6)"
    _, _, alive = rs.run_hook(("inet", "ip6"), "forward",
                              replace(vxlan, daddr=IP("2001:db8::8")), frozenset())
    assert alive


def test_vxlan_to_the_host_is_dropped_from_every_network_and_only_there() -> None:
    # From any portway network (internal or not) to a host address's VXLAN port:
    # dropped in input; the same from the uplink (another host's tunnel) passes.
    internal = network("sealed", "c" * 64, 79, internal=True)
    rs = Ruleset(listing([*firewall.render_base(), *firewall.render_network(APP, INSTANCE),
                          *firewall.render_network(internal, INSTANCE)]))
    vxlan = Packet(l4proto="udp", saddr=IP("10.77.0.2"), daddr=IP("10.77.0.1"), sport=40000,
                   dport=4789, iif=APP.bridge)
    for net in (APP, internal):
        _, decisions, alive = rs.run_hook(("inet", "ip"), "input",
                                          replace(vxlan, iif=net.bridge), frozenset())
        assert not alive
        assert decisions[-1].rule == "containers never send to this host's VXLAN port"
        assert decisions[-1].rule_chain == "to_host"
    _, _, alive = rs.run_hook(("inet", "ip"), "input",
                              replace(vxlan, saddr=IP("198.51.100.9"), iif="uplink0"),
                              frozenset())
    assert alive
    # Other UDP from a network that is not internal reaches the host.
    _, _, alive = rs.run_hook(("inet", "ip"), "input", replace(vxlan, dport=4790),
                              frozenset())
    assert alive


def test_an_internal_network_is_named_as_the_reason_both_ways() -> None:
    """A container of an internal network only, with no way out, is told that the
    network is internal (not to add a default route, which the firewall would then
    drop); an outside client of such a container is not told to publish a port, which
    an internal network cannot."""
    inner = replace(DB, internal=True)
    cmds = [*firewall.render_base(), *firewall.render_network(APP, INSTANCE),
            *firewall.render_network(inner, INSTANCE), *firewall.render_ports(PORTS, INSTANCE)]
    w = world()
    store = w.spaces["store"]
    w.spaces["store"] = replace(store, routes=[r for r in store.routes if r.dst.prefixlen])
    control = trace(w, "store", packet("198.51.100.2", 80), "store", "198.51.100.2:80")
    assert control.verdict == "no-route" and "ip route add default" in control.fix
    w.internal = [(inner.subnet, "db")]  # type: ignore[list-item]
    t = trace(w, "store", packet("198.51.100.2", 80), "store", "198.51.100.2:80")
    assert t.verdict == "no-route" and t.summary.endswith(
        "network db is internal, with no way out on purpose"), t.summary
    assert t.fix.startswith("connect the container to a network that is not internal")
    w = replace(world(), host=replace(world().host, ruleset=listing(cmds)))
    t = trace(w, "outside", packet("10.78.0.2", 5432, "198.51.100.2", "uplink0"),
              "outside", "10.78.0.2:5432")
    assert t.verdict == "dropped" and "internal, nothing comes in from outside" in t.summary
    assert "publish the port there" in t.fix and "portway run -p" not in t.fix


def test_icc_off_says_which_setting_keeps_containers_apart() -> None:
    apart = replace(APP, options={firewall.ICC_OPTION: "false"})
    cmds = [*firewall.render_base(), *firewall.render_network(apart, INSTANCE),
            *firewall.render_network(DB, INSTANCE), *firewall.render_ports(PORTS, INSTANCE)]
    w = replace(world(), host=replace(world().host, ruleset=listing(cmds)))
    t = trace(w, "web", packet("10.77.0.3", 80), "web", "cache:80")
    assert t.verdict == "dropped" and t.summary.endswith("between its containers (icc)")
    assert t.fix.startswith("the network keeps its containers apart on purpose "
                            "(com.docker.network.bridge.enable_icc=false)"), t.fix
    # What the fix says works: the other's published port, through the host (a hairpin).
    t = trace(w, "cache", packet("198.51.100.1", 8080), "cache", "198.51.100.1:8080")
    assert t.verdict == "delivered" and t.seen_source == "10.77.0.1", t.summary
    assert ("forward", "network app abababababab: to a published port through the host "
            "(icc off)") in decided(t)


def test_a_route_that_refuses_in_silence_is_no_disagreement() -> None:
    # An unreachable route's ICMP error is rate-limited per destination (a probe right
    # after a failed connection times out) and a blackhole route sends none: a timeout no
    # netfilter rule caused is the static no-route. A rule's drop is not.
    passed = KernelStep("inet", "portway", "guard", "guard", None, "policy accept")
    drop = KernelStep("inet", "portway", "forward", "in-a", 7, "drop")
    seen = ("10.0.0.2", "10.0.0.3:80")
    assert agreement([passed], [passed], "no-route", "dropped", seen, None) == []
    assert agreement([passed], [passed, drop], "no-route", "dropped", seen, None)
    assert agreement([passed], [passed], "delivered", "dropped", seen, None)
    assert agreement([passed], [passed], "no-route", "delivered", seen, None)
