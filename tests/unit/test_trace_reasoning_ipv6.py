"""The static trace over IPv6 and dual-stack states: nftsim's matching of each family
(ip6 payloads, the *6 sets and maps, nfproto, ether type, `dnat ip`/`dnat ip6` in an
inet table), route lookups and source choice per family, NAT66, and the ::1 cases."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest
from test_trace_reasoning import listing

from portway.core import firewall
from portway.core.firewall import Published
from portway.core.nftsim import Packet, Ruleset, describe, hostport
from portway.core.trace import Iface, Route, Space, World, render, split_destination, trace
from portway.errors import InvalidInput
from portway.model.types import Endpoint, IPAddress, IPInterface, Network, Subnet

IP = ipaddress.ip_address
IF = ipaddress.ip_interface
NET = ipaddress.ip_network
INSTANCE = "1a2b3c4d"
UPLINK4, UPLINK6 = "198.51.100.1", "2001:db8:51::1"
OUTSIDE6 = "2001:db8:51::2"


def network(name: str, nid: str, third: int, v4: bool = True,
            internal: bool = False) -> Network:
    subnets = ((Subnet(NET(f"10.{third}.0.0/24"), IP(f"10.{third}.0.1")),) if v4 else ()) + \
        (Subnet(NET(f"fd00:{third}::/64"), IP(f"fd00:{third}::1")),)
    return Network(id=nid, name=name, subnets=subnets, bridge=f"pwbr-{nid[:10]}",
                   internal=internal)


def endpoint(n: Network, host: int, veth: str) -> Endpoint:
    addrs: list[IPInterface] = [IF((s.subnet.network_address + host, s.subnet.prefixlen))
                                for s in n.subnets]
    return Endpoint(id=veth, container_id=veth.removeprefix("pwv-"), network_id=n.id,
                    ifname="eth0", host_ifname=veth, addresses=tuple(addrs),
                    mac=f"02:42:{n.id[:2]}:00:00:{host:02x}")


APP = network("app", "ab" * 32, 77)
DB = network("db", "cd" * 32, 78)
SIX = network("six", "ef" * 32, 79, v4=False)
FOUR = Network(id="12" * 32, name="four", subnets=(Subnet(NET("10.80.0.0/24"),
                                                          IP("10.80.0.1")),),
               bridge="pwbr-1212121212")
WEB, CACHE = endpoint(APP, 2, "pwv-web"), endpoint(APP, 3, "pwv-cache")
STORE, ONLY, OLD = endpoint(DB, 2, "pwv-store"), endpoint(SIX, 2, "pwv-only"), \
    endpoint(FOUR, 2, "pwv-old")
ENDPOINTS = (WEB, CACHE, STORE, ONLY, OLD)


def published() -> list[Published]:
    """web's 8080:80 on both families (as `-p 8080:80` resolves), cache's
    127.0.0.1:6379:80 (IPv4 only), old's 9090:80 (an IPv4-only container)."""
    return [*(Published("web", "tcp", 8080, a.ip, 80) for a in WEB.addresses),
            Published("cache", "tcp", 6379, CACHE.addresses[0].ip, 80, IP("127.0.0.1")),
            Published("old", "tcp", 9090, OLD.addresses[0].ip, 80)]


def ruleset() -> list[dict[str, Any]]:
    cmds = firewall.render_base()
    for n in (APP, DB, SIX, FOUR):
        cmds += firewall.render_network(n, INSTANCE)
    cmds += [*firewall.render_ports(published(), INSTANCE), *firewall.render_guard_base(),
             *firewall.render_arp_base(), *firewall.render_guard(ENDPOINTS, INSTANCE)]
    return listing(cmds)


def bridge(n: Network, index: int) -> Iface:
    return Iface(n.bridge, index, "bridge", f"02:{n.id[:2]}:00:00:00:01", route_localnet=True,
                 addrs=(*(IF((s.gateway, s.subnet.prefixlen)) for s in n.subnets),
                        IF(f"fe80::{index}/64")))


def container(key: str, e: Endpoint, n: Network, listens: int = 80) -> Space:
    routes = [Route(s.subnet, "eth0") for s in n.subnets] + \
        [Route(NET("0.0.0.0/0" if s.version == 4 else "::/0"), "eth0", gateway=s.gateway)
         for s in n.subnets]
    return Space(key=key, label=f"container {key}", routes=routes,
                 ifaces=[Iface("lo", 1, addrs=(IF("127.0.0.1/8"), IF("::1/128"))),
                         Iface("eth0", 2, "veth", e.mac, addrs=e.addresses,
                               peer=("host", e.host_ifname))],
                 listeners={("tcp", "::", listens)})


def world(forwarding6: bool = True, bridge_nf6: bool = True) -> World:
    host = Space(
        key="host", label="host", forwarding=True, forwarding6=forwarding6,
        ruleset=ruleset(),
        ifaces=[Iface("lo", 1, addrs=(IF("127.0.0.1/8"), IF("::1/128"))),
                # The link-local address first: the source chosen must still be the other.
                Iface("uplink0", 2, "veth", addrs=(IF(f"{UPLINK4}/24"), IF("fe80::2/64"),
                                                   IF(f"{UPLINK6}/64"))),
                bridge(APP, 3), bridge(DB, 4), bridge(SIX, 5), bridge(FOUR, 6),
                *(Iface(e.host_ifname, 10 + i, "veth", master=n.bridge,
                        peer=(e.container_id, "eth0"))
                  for i, (e, n) in enumerate(((WEB, APP), (CACHE, APP), (STORE, DB),
                                              (ONLY, SIX), (OLD, FOUR))))],
        routes=[Route(NET("198.51.100.0/24"), "uplink0", prefsrc=IP(UPLINK4)),
                Route(NET("0.0.0.0/0"), "uplink0", gateway=IP("198.51.100.2")),
                Route(NET("2001:db8:51::/64"), "uplink0"),
                Route(NET("fe80::/64"), "uplink0"),
                Route(NET("::/0"), "uplink0", gateway=IP(OUTSIDE6)),
                *(Route(s.subnet, n.bridge) for n in (APP, DB, SIX, FOUR) for s in n.subnets)])
    spaces = {"web": container("web", WEB, APP), "cache": container("cache", CACHE, APP),
              "store": container("store", STORE, DB), "only": container("only", ONLY, SIX),
              "old": container("old", OLD, FOUR)}
    return World(host=host, spaces=spaces, bridge_nf6=bridge_nf6)


def packet(daddr: str, dport: int = 80, saddr: str | None = None, iif: str = "") -> Packet:
    d = IP(daddr)
    unspecified: IPAddress = IP(0) if d.version == 4 else IP("::")
    return Packet(l4proto="tcp", saddr=IP(saddr) if saddr else unspecified, daddr=d,
                  sport=40000, dport=dport, iif=iif)


def decided(t: Any) -> list[str]:
    return [h.decision.rule for h in t.hops if h.decision is not None and h.decision.rule]


# nftsim: each family's matches


def test_ip_matches_miss_ipv6_packets_and_ip6_matches_miss_ipv4_ones() -> None:
    def rule(proto: str, addr: str) -> list[dict[str, Any]]:
        return [{"chain": {"family": "inet", "table": "t", "name": "c", "type": "filter",
                           "hook": "input", "prio": 0, "policy": "accept"}},
                {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 2, "expr": [
                    {"match": {"op": "!=", "left": {"payload": {"protocol": proto,
                                                                "field": "saddr"}},
                               "right": addr}}, {"drop": None}]}}]

    v4 = packet("10.77.0.2", saddr="10.77.0.3")
    v6 = packet("fd00:77::2", saddr="fd00:77::3")
    # `ip saddr != X` never matches an IPv6 packet (the kernel's implied nfproto check),
    # even though its address differs from X: the packet is not dropped.
    _, _, alive = Ruleset(rule("ip", "10.9.9.9")).run_hook(("inet",), "input", v6, frozenset())
    assert alive
    _, _, alive = Ruleset(rule("ip", "10.9.9.9")).run_hook(("inet",), "input", v4, frozenset())
    assert not alive
    _, _, alive = Ruleset(rule("ip6", "fd00::9")).run_hook(("inet",), "input", v4, frozenset())
    assert alive
    _, _, alive = Ruleset(rule("ip6", "fd00::9")).run_hook(("inet",), "input", v6, frozenset())
    assert not alive


def test_meta_nfproto_protocol_and_ether_type_follow_the_family() -> None:
    rs = Ruleset([])
    from portway.core.nftsim import _Run

    for p, nfproto, ether in ((packet("10.0.0.1"), "ipv4", "ip"),
                              (packet("fd00::1"), "ipv6", "ip6")):
        run = _Run(p, frozenset(), {})
        assert rs._value({"meta": {"key": "nfproto"}}, run) == nfproto
        assert rs._value({"meta": {"key": "protocol"}}, run) == ether
        assert rs._value({"payload": {"protocol": "ether", "field": "type"}}, run) == ether


def test_dnat_ip_leaves_ipv6_packets_to_the_ipv6_maps() -> None:
    """`-p 9090:80` of an IPv4-only container: tcp . 9090 is in pub_any_addr only. An
    IPv6 packet to 9090 must not be DNATed by the `dnat ip` rule whose key (l4proto .
    dport) it has too."""
    rs = Ruleset(ruleset())
    local = frozenset({IP(UPLINK4), IP(UPLINK6)})
    out, decisions, _ = rs.run_hook(("ip6", "inet"), "prerouting",
                                    packet(UPLINK6, 9090, OUTSIDE6, "uplink0"), local)
    assert out.daddr == IP(UPLINK6) and out.ct_status == frozenset()
    assert [d.verdict for d in decisions] == ["policy accept", "policy accept"]
    out, decisions, _ = rs.run_hook(("ip6", "inet"), "prerouting",
                                    packet(UPLINK6, 8080, OUTSIDE6, "uplink0"), local)
    assert (out.daddr, out.dport) == (IP("fd00:77::2"), 80)
    assert decisions[-1].rule == "published ports on every host address (IPv6)"
    assert "destination [2001:db8:51::1]:8080 -> [fd00:77::2]:80 (DNAT)" in \
        decisions[-1].rewrites
    out, _, _ = rs.run_hook(("ip", "inet"), "prerouting",
                            packet(UPLINK4, 9090, "198.51.100.2", "uplink0"), local)
    assert (out.daddr, out.dport) == (IP("10.80.0.2"), 80)


def test_the_bridge_guard_for_ipv6() -> None:
    rs = Ruleset(ruleset())
    honest = replace(packet("fd00:77::3", saddr="fd00:77::2"), iif="pwv-web", smac=WEB.mac)
    _, _, alive = rs.run_hook(("bridge",), "prerouting", honest, frozenset())
    assert alive
    forged = replace(honest, saddr=IP("fd00:77::99"))
    _, decisions, alive = rs.run_hook(("bridge",), "prerouting", forged, frozenset())
    assert not alive and decisions[-1].rule == "a container sends only from its own IPv6 address"
    # An IPv4-only network's container sends no IPv6 at all.
    from_old = replace(packet("fd00:80::3", saddr="fd00:80::2"), iif="pwv-old", smac=OLD.mac)
    _, decisions, alive = rs.run_hook(("bridge",), "prerouting", from_old, frozenset())
    assert not alive and decisions[-1].rule == "IPv6 only from containers with an IPv6 address"


def test_a_spoofed_source_meets_the_check_behind_ah_without_doubt() -> None:
    """web sends TCP from cache's address: past the first rule of spoof_ip6 it meets the
    rule that reads behind an Authentication Header, which a TCP probe has none of (so
    the rule does not match, and the trace is not left uncertain), then the source
    check that drops it."""
    six = next(a.ip for a in WEB.addresses if a.version == 6)
    other = next(a.ip for a in CACHE.addresses if a.version == 6)
    probe = replace(packet(str(other), saddr=str(six)), iif=WEB.host_ifname, smac=WEB.mac)
    spoofed = replace(probe, saddr=other)
    rs = Ruleset(ruleset())
    _, [own], alive = rs.run_hook(("bridge",), "prerouting", probe, frozenset())
    assert alive and own.rule_chain == "spoof_ip6" and not own.uncertain
    _, [decision], alive = rs.run_hook(("bridge",), "prerouting", spoofed, frozenset())
    assert not alive and decision.uncertain == ()
    assert decision.rule == "a container sends only from its own IPv6 address"


def test_raw_payloads_are_described_and_left_uncertain() -> None:
    raw = {"payload": {"base": "th", "offset": 64, "len": 128}}
    assert describe(raw) == "@th,64,128"
    rs = Ruleset([])
    from portway.core.nftsim import _Run

    assert rs._value(raw, _Run(packet("fd00::1"), frozenset(), {})) is None
    assert hostport(IP("fd00::1"), 80) == "[fd00::1]:80" and hostport("10.0.0.1", 80) == \
        "10.0.0.1:80"


# trace: the paths over IPv6


def test_same_network_over_ipv6_is_bridged_with_call_ip6tables() -> None:
    t = trace(world(), "web", packet("fd00:77::3"), "web", "cache")
    assert t.verdict == "delivered"
    assert (t.seen_source, t.seen_destination) == ("fd00:77::2", "[fd00:77::3]:80")
    assert any("bridge-nf-call-ip6tables=1" in h.detail for h in t.hops)
    assert "network app abababababab: between its containers (icc)" in decided(t)
    assert "neighbour discovery asks first" in render(t)
    t = trace(world(bridge_nf6=False), "web", packet("fd00:77::3"), "web", "cache")
    # Only the bridge's own checks: the container's port, its own address.
    assert t.verdict == "delivered" and decided(t) == [
        "neither ICMPv6 nor AH, and from the port's MAC and address: nothing more to check"]
    assert any("bridge-nf-call-ip6tables=0" in h.detail for h in t.hops)


def test_across_networks_over_ipv6_is_isolated() -> None:
    for daddr in ("fd00:78::2", "fd00:79::2"):
        t = trace(world(), "web", packet(daddr), "web", daddr)
        assert t.verdict == "dropped"
        assert decided(t)[-1] == "network app abababababab: isolation from other portway " \
                                 "networks"


def test_outside_to_a_port_published_on_ipv6_keeps_the_client() -> None:
    t = trace(world(), "outside", packet(UPLINK6, 8080, OUTSIDE6, "uplink0"), "outside", "web")
    assert t.verdict == "delivered"
    assert (t.seen_source, t.seen_destination) == (OUTSIDE6, "[fd00:77::2]:80")
    # Unpublished: dropped on its way into the network, as for IPv4.
    t = trace(world(), "outside", packet("fd00:77::2", 80, OUTSIDE6, "uplink0"), "outside",
              "x")
    assert t.verdict == "dropped" and "no direct access from outside" in t.summary


def test_outbound_nat66_takes_the_uplinks_global_address() -> None:
    for src in ("web", "only"):
        t = trace(world(), src, packet(OUTSIDE6, 9000), src, "x")
        assert t.verdict == "leaves-host" and t.seen_source == UPLINK6
        assert any("outbound masquerade" in r for r in decided(t))


def test_hairpin_over_ipv6_is_masqueraded_to_the_ipv6_gateway() -> None:
    t = trace(world(), "web", packet(UPLINK6, 8080), "web", "x")
    assert t.verdict == "delivered" and t.seen_source == "fd00:77::1"
    assert any("hairpin" in r for r in decided(t))


def test_host_to_its_own_ipv6_address_is_dnated_but_not_from_loopback() -> None:
    t = trace(world(), "host", packet(UPLINK6, 8080), "host", "x")
    assert t.verdict == "delivered" and t.seen_destination == "[fd00:77::2]:80"
    # ::1 is not DNATed (the answer could not come back): nothing listens there.
    t = trace(world(), "host", packet("::1", 8080), "host", "x")
    assert t.verdict == "no-listener" and t.seen_destination == "[::1]:8080"
    assert not any("DNAT" in h.detail for h in t.hops)


def test_loopback_from_outside_is_dropped_before_any_hook() -> None:
    t = trace(world(), "outside", packet("::1", 8080, OUTSIDE6, "uplink0"), "outside", "x")
    assert t.verdict == "dropped" and "martian" in t.summary
    assert [h.kind for h in t.hops] == ["leave", "route"]


def test_ipv6_needs_ipv6_forwarding_and_routes() -> None:
    t = trace(world(forwarding6=False), "web", packet(OUTSIDE6, 9000), "web", "x")
    assert t.verdict == "dropped" and "forwarding=0 for IPv6" in t.summary
    t = trace(world(forwarding6=False), "web", packet("198.51.100.2", 9000), "web", "x")
    assert t.verdict == "leaves-host"  # IPv4 forwarding is on
    # A container of an IPv4-only network has no IPv6 route at all: it is told that it
    # has no IPv6 address, not to add a route it could not use.
    t = trace(world(), "old", packet(OUTSIDE6, 9000), "old", "x")
    assert t.verdict == "no-route"
    assert t.summary == f"container old has no IPv6 address, so no route to {OUTSIDE6}"
    assert t.fix.startswith("connect the container to a network with IPv6 as well")


@pytest.mark.parametrize(("text", "parsed"), [
    ("web:80", ("web", 80, "tcp")),
    ("10.0.0.2:53/udp", ("10.0.0.2", 53, "udp")),
    ("[fd00::2]:80", ("fd00::2", 80, "tcp")),
    ("[fd00::2]:53/udp", ("fd00::2", 53, "udp")),
    ("[::1]", ("::1", None, "tcp")),
    ("web", ("web", None, "tcp")),
])
def test_destinations_parse(text: str, parsed: tuple[str, int | None, str]) -> None:
    assert split_destination(text) == parsed


@pytest.mark.parametrize(("text", "words"), [
    ("fd00::2", "no port in 'fd00::2'"),
    ("fd00::2:80", "no port in 'fd00::2:80'"),
    ("[fd00::2]80", "malformed destination"),
    ("[fd00::2:80", "malformed destination"),
    ("[fd00::zz]:80", "invalid IPv6 address"),
    ("[zz::1]:80", "invalid IPv6 address"),
    ("[10.0.0.1]:80", "invalid IPv6 address"),
    ("[fd00::2]:0", "invalid port '0'"),
    ("a:b:c", "malformed destination"),
])
def test_bad_destinations_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        split_destination(text)
    assert words in err.value.message and "\n" not in err.value.line()


def test_an_ipv6_destination_without_its_port_is_told_the_brackets() -> None:
    with pytest.raises(InvalidInput) as err:
        split_destination("fd00::2:80")
    assert err.value.hint == "say which port: [fd00::2]:80 for port 80 of fd00::2, or " \
        "[fd00::2:80]:80 (an IPv6 address goes in brackets before its port)"


def test_portwayds_own_sockets_take_only_the_hosts_connections() -> None:
    """The socket that holds a published port (on ::, for both families) is reached only
    where no DNAT rule took the packet first: from the host over ::1 (relayed), or over
    IPv6 to an IPv4-only container's port (its filter drops it)."""
    w = world()
    for port in (8080, 9090):
        w.host.listeners.add(("tcp", "::", port))
        w.host.portway_sockets.add(("tcp", "::", port))
    t = trace(w, "host", packet("::1", 8080), "host", "x")
    assert t.verdict == "delivered" and "relays the host's own connection" in render(t)
    t = trace(w, "outside", packet(UPLINK6, 9090, OUTSIDE6, "uplink0"), "outside", "x")
    assert t.verdict == "dropped" and "socket filter" in t.summary
    assert [h.decision for h in t.hops if h.decision and "drop" in h.decision.verdict] == []
    # Over IPv4 the same port is DNATed before any socket sees it.
    t = trace(w, "outside", packet(UPLINK4, 9090, "198.51.100.2", "uplink0"), "outside", "x")
    assert t.verdict == "delivered" and t.seen_destination == "10.80.0.2:80"


def without_ipv6(space: Space, name: str) -> None:
    """disable_ipv6=1 on an interface, as the kernel leaves it: its IPv6 addresses gone."""
    at = next(n for n, i in enumerate(space.ifaces) if i.name == name)
    i = space.ifaces[at]
    space.ifaces[at] = replace(i, disable_ipv6=True,
                               addrs=tuple(a for a in i.addrs if a.version == 4))


def test_ipv6_turned_off_in_a_container_drops_what_arrives_there() -> None:
    # Docker's users meet it as "IPv6 works on the host, not in the container": a sysctl
    # (net.ipv6.conf.all.disable_ipv6=1 in the image's setup, say) turned IPv6 off on the
    # container's eth0 while its network still routes its IPv6 address there.
    w = world()
    without_ipv6(w.spaces["web"], "eth0")
    w.behind = {(APP.bridge, IP("fd00:77::2")): ("web", WEB.host_ifname)}
    t = trace(w, "outside", packet(UPLINK6, 8080, OUTSIDE6, "uplink0"), "outside", "web")
    # (It holds no IPv6 address any more: the host's neighbour discovery goes unanswered.)
    assert t.verdict == "no-route"
    assert t.summary == "container web has IPv6 turned off on eth0 " \
                        "(net.ipv6.conf.eth0.disable_ipv6=1)"
    assert "sysctl -w net.ipv6.conf.eth0.disable_ipv6=0" in t.fix
    assert "fd00:77::2 was given" in t.hops[-1].detail
    # IPv4 to the same container is untouched.
    assert trace(w, "outside", packet(UPLINK4, 8080, "198.51.100.2", "uplink0"), "outside",
                 "web").verdict == "delivered"


def test_ipv6_turned_off_on_the_uplink_drops_what_arrives_on_it() -> None:
    # A neighbour that routes IPv6 to one of the host's other addresses (its gateway
    # address on a network: the host answers on any of its addresses) over an uplink
    # whose IPv6 is off: dropped on receipt, before any hook.
    w = world()
    without_ipv6(w.host, "uplink0")
    t = trace(w, "outside", packet("fd00:77::1", 22, OUTSIDE6, "uplink0"), "outside", "x")
    assert t.verdict == "dropped" and t.summary == "IPv6 is disabled on uplink0 in host " \
        "(net.ipv6.conf.uplink0.disable_ipv6=1)"
    assert t.hops[-1].detail.endswith("drops every IPv6 packet arriving on it")
    assert not [h for h in t.hops if h.kind == "hook"]  # (no hook saw it)


def test_ipv6_turned_off_on_the_uplink_drops_what_leaves_by_it() -> None:
    w = world()
    without_ipv6(w.host, "uplink0")
    w.host.routes.append(Route(NET("::/0"), "uplink0", gateway=IP("fe80::1")))
    t = trace(w, "web", packet(OUTSIDE6, 9000), "web", "x")
    assert t.verdict == "dropped" and "disabled on uplink0 in host" in t.summary
    assert t.hops[-1].detail.endswith("drops every IPv6 packet routed out of it")


def test_bridge_ports_without_ipv6_still_bridge_it() -> None:
    # portway turns IPv6 off on the host ends of IPv4-only networks' veths: frames
    # bridged between ports never reach the IP layer, so it takes nothing.
    w = world()
    for e in (WEB, CACHE):
        without_ipv6(w.host, e.host_ifname)
    assert trace(w, "web", packet("fd00:77::3"), "web", "cache").verdict == "delivered"


def test_the_host_reaches_a_container_past_host_out_without_doubt() -> None:
    """What the host sends through a bridge to a container port meets `bridge portway`'s
    host_out at the bridge's output hook: a probe (TCP, neither ICMPv6 nor behind AH)
    matches none of its rules, so the trace lists the chain's policy, with no doubt."""
    for a in WEB.addresses:
        probe = replace(packet(str(a.ip)), oif=WEB.host_ifname, dmac=WEB.mac)
        _, decisions, alive = Ruleset(ruleset()).run_hook(("bridge",), "output", probe,
                                                           frozenset())
        assert alive and [(d.chain, d.verdict, d.uncertain) for d in decisions] == [
            ("host_out", "policy accept", ())]
