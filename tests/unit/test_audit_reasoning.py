"""`portway audit`'s reasoning on recorded states: a host like Docker's (its ruleset as
`nft -j list ruleset` lists tests/e2e/data/docker-host.nft) with planted exposures, and
portway's own rendered firewall, where there is none."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from test_trace_reasoning import world as portway_world

from portway.core import audit
from portway.core.trace import Iface, Route, Space, World

IP = ipaddress.ip_address
V4 = ipaddress.IPv4Interface
NETWORK = ipaddress.IPv4Network
DOCKER_RULESET: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "docker-host.json").read_text())


def container(key: str, addr: str, gateway: str, peer: str) -> Space:
    subnet = str(ipaddress.ip_interface(f"{addr}/16").network)
    return Space(key=key, label=f"namespace {key}",
                 ifaces=[Iface("lo", 1, addrs=(V4("127.0.0.1/8"),)),
                         Iface("eth0", 2, "veth", f"02:42:ac:00:00:{key[-1]}0",
                               addrs=(V4(f"{addr}/16"),), peer=("host", peer))],
                 routes=[Route(NETWORK(subnet), "eth0", prefsrc=IP(addr)),
                         Route(NETWORK("0.0.0.0/0"), "eth0", gateway=IP(gateway))],
                 listeners={("tcp", "0.0.0.0", 80)})


def docker_host(ruleset: list[dict[str, Any]] | None = None,
                route_localnet: bool = True) -> World:
    host = Space(
        key="host", label="host", forwarding=True,
        ruleset=DOCKER_RULESET if ruleset is None else ruleset,
        ifaces=[Iface("lo", 1, addrs=(V4("127.0.0.1/8"),)),
                Iface("uplink0", 2, "veth", addrs=(V4("198.51.100.1/24"),),
                      route_localnet=route_localnet),
                Iface("docker0", 3, "bridge", "02:42:00:00:00:01",
                      addrs=(V4("172.17.0.1/16"),)),
                Iface("br-two", 4, "bridge", "02:42:00:00:00:02",
                      addrs=(V4("172.18.0.1/16"),)),
                Iface("vethc1", 5, "veth", master="docker0", peer=("ns:c1", "eth0")),
                Iface("vethc2", 6, "veth", master="br-two", peer=("ns:c2", "eth0"))],
        routes=[Route(NETWORK("198.51.100.0/24"), "uplink0", prefsrc=IP("198.51.100.1")),
                Route(NETWORK("0.0.0.0/0"), "uplink0", gateway=IP("198.51.100.2")),
                Route(NETWORK("172.17.0.0/16"), "docker0", prefsrc=IP("172.17.0.1")),
                Route(NETWORK("172.18.0.0/16"), "br-two", prefsrc=IP("172.18.0.1"))],
        listeners={("tcp", "0.0.0.0", 9000), ("tcp", "127.0.0.1", 9001)})
    return World(host=host, spaces={
        "ns:c1": container("ns:c1", "172.17.0.2", "172.17.0.1", "vethc1"),
        "ns:c2": container("ns:c2", "172.18.0.2", "172.18.0.1", "vethc2")})


def kinds(a: audit.Audit) -> list[tuple[str, str]]:
    return sorted((f.kind, f.target.label) for f in a.findings)


def without(ruleset: list[dict[str, Any]], chain: str, text: str) -> list[dict[str, Any]]:
    """ruleset without the rules of chain whose expressions mention text."""
    return [i for i in ruleset if not ("rule" in i and i["rule"]["chain"] == chain
                                       and text in json.dumps(i["rule"]["expr"]))]


def test_published_ports_of_dockers_dnat_chain() -> None:
    found = {(t.proto, str(t.addr), t.port, t.to)
             for t in audit.published_ports(DOCKER_RULESET)}
    assert found == {("tcp", "None", 8080, "172.17.0.2:80"),
                     ("tcp", "127.0.0.1", 8081, "172.17.0.2:80")}


def test_published_ports_of_portways_maps() -> None:
    found = {(t.proto, str(t.addr), t.port, t.to)
             for t in audit.published_ports(portway_world().host.ruleset)}
    assert found == {("tcp", "None", 8080, "10.77.0.2:80"),
                     ("tcp", "127.0.0.1", 6379, "10.77.0.3:80")}


def test_sources_of_a_docker_host() -> None:
    found = [(s.kind, s.label) for s in audit.sources(docker_host())]
    assert found == [("host", "the host itself"),
                     ("neighbour", "a neighbour on uplink0 (198.51.100.2)"),
                     ("outside", "a routed client via uplink0 (203.0.113.10)"),
                     ("container", "namespace ns:c1 (on docker0)"),
                     ("container", "namespace ns:c2 (on br-two)")]


def test_a_bridge_is_stood_for_by_its_first_container_by_name() -> None:
    """Which container stands for a bridge decides which ports share a trace: the first
    by name, so that it does not follow the namespaces' keys (random ids). Containers'
    targets are listed by name too."""
    world = docker_host()
    host = replace(world.host, ifaces=[
        *world.host.ifaces,
        Iface("vethc0", 7, "veth", master="docker0", peer=("ns:c0", "eth0"))])
    late = replace(container("ns:c0", "172.17.0.3", "172.17.0.1", "vethc0"),
                   label="namespace zz")
    world = World(host=host, spaces={**world.spaces, "ns:c0": late})
    found = [s.label for s in audit.sources(world) if s.kind == "container"]
    assert found == ["namespace ns:c1 (on docker0)", "namespace ns:c2 (on br-two)"]
    listed = [t.label for t in audit.targets(world) if t.kind == "container"]
    assert listed == ["namespace ns:c1 172.17.0.2:80/tcp", "namespace ns:c2 172.18.0.2:80/tcp",
                      "namespace zz 172.17.0.3:80/tcp"]


def test_docker_host_every_planted_exposure_and_nothing_else() -> None:
    a = audit.audit(docker_host())
    assert kinds(a) == [
        (audit.ACROSS, "namespace ns:c1 172.17.0.2:80/tcp"),
        (audit.ACROSS, "namespace ns:c2 172.18.0.2:80/tcp"),
        (audit.BYPASS, "published 0.0.0.0:8080/tcp -> 172.17.0.2:80"),
        (audit.DIRECT, "namespace ns:c2 172.18.0.2:80/tcp"),
        (audit.LOOPBACK, "published 127.0.0.1:8081/tcp -> 172.17.0.2:80")]
    by = {(f.kind, f.target.space): f for f in a.findings}
    across = by[(audit.ACROSS, "ns:c2")]
    by.update({(f.kind, ""): f for f in a.findings})
    by = {k[0]: f for k, f in by.items() if k[1] == ""}
    by[audit.ACROSS] = across
    assert [r.source.kind for r in by[audit.BYPASS].reaches] == ["neighbour", "outside"]
    assert "inet filter input: policy drop" in by[audit.BYPASS].why
    assert "ip nat DOCKER" in by[audit.BYPASS].why
    assert [r.source.label for r in by[audit.ACROSS].reaches] == ["namespace ns:c1 (on docker0)"]
    assert "ip filter DOCKER-USER" in by[audit.DIRECT].why
    for f in a.findings:
        assert f.fix_checked, (f.kind, f.fix_check)


def test_the_fixes_name_the_rule_and_where() -> None:
    by = {f.kind: f for f in audit.audit(docker_host()).findings}
    assert by[audit.BYPASS].fix.text[0] == (
        "nft insert rule ip filter DOCKER-USER 'iifname \"uplink0\" ip daddr 172.17.0.2 tcp "
        "dport 80 ct status dnat drop comment \"portway audit: tcp/8080 as inet filter input "
        "wants\"'")
    assert "127.0.0.1:8080:80" in by[audit.BYPASS].fix.text[1]
    assert by[audit.LOOPBACK].fix.text[0].startswith(
        "sysctl -w net.ipv4.conf.uplink0.route_localnet=0")
    assert by[audit.LOOPBACK].fix.text[1].startswith(
        "nft insert rule ip raw PREROUTING 'iifname != \"lo\" ip daddr 127.0.0.0/8 drop")
    assert by[audit.DIRECT].fix.text[0].startswith(
        "nft insert rule ip raw PREROUTING 'iifname != \"br-two\" ip daddr 172.18.0.2 drop")
    assert by[audit.ACROSS].fix.text[0].startswith(
        "nft insert rule ip filter DOCKER-USER 'iifname \"docker0\" oifname \"br-two\" drop")


def test_the_reach_table() -> None:
    a = audit.audit(docker_host())
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    # HOST, NEIGHBOUR, ROUTED, CONTAINERS, FINDINGS
    assert rows["published 0.0.0.0:8080/tcp -> 172.17.0.2:80"][:3] == ["yes", "yes", "yes"]
    assert rows["host socket 0.0.0.0:9000/tcp"][:3] == ["yes", "no", "no"]
    assert rows["host socket 127.0.0.1:9001/tcp"] == ["yes", "no", "-", "-", "-"]
    assert rows["namespace ns:c1 172.17.0.2:80/tcp"] == ["yes", "no", "-", "yes",
                                                         "across-networks"]
    text = audit.render(a)
    assert "5 finding(s):" in text
    assert "bypasses the input-hook firewall: published 0.0.0.0:8080/tcp" in text


def test_each_exposure_closed_by_hand_goes_away() -> None:
    rules = without(DOCKER_RULESET, "DOCKER-USER", "uplink0")
    assert audit.DIRECT not in {f.kind for f in audit.audit(docker_host(rules)).findings}
    rules = without(DOCKER_RULESET, "DOCKER", "127.0.0.1")
    a = audit.audit(docker_host(rules, route_localnet=False))
    assert audit.LOOPBACK not in {f.kind for f in a.findings}
    rules = without(DOCKER_RULESET, "input", "accept")
    rules = [i for i in rules if not ("chain" in i and i["chain"]["name"] == "input")]
    assert audit.BYPASS not in {f.kind for f in audit.audit(docker_host(rules)).findings}


def test_a_connection_whose_answer_is_dropped_is_no_exposure() -> None:
    """Docker's isolation for br-two alone (its STAGE-1 and STAGE-2 rules, docker0's
    missing): a SYN from docker0 to br-two is delivered (masqueraded), but br-two's
    answer, turned back to 172.17.0.2 by conntrack, meets `oifname docker0 drop`."""
    rules = [i for i in DOCKER_RULESET if not ("rule" in i and i["rule"]["chain"] in (
        "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2"))]
    iif, oif = ({"meta": {"key": k}} for k in ("iifname", "oifname"))
    rules += [
        {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-ISOLATION-STAGE-1",
                  "expr": [audit._m(iif, "br-two"), audit._m(oif, "br-two", "!="),
                           {"jump": {"target": "DOCKER-ISOLATION-STAGE-2"}}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-ISOLATION-STAGE-2",
                  "expr": [audit._m(oif, "docker0"), {"drop": None}]}}]
    a = audit.audit(docker_host(rules))
    assert audit.ACROSS not in {f.kind for f in a.findings}
    reach = next(r for r in a.reaches if r.source.key == "ns:c1"
                 and r.target.space == "ns:c2")
    # The trace walks the answer back too: the connection's verdict is the answer's.
    assert reach.trace.verdict == "dropped" and not reach.reached
    assert "its reply does not come back" in reach.trace.summary
    assert reach.trace.hops[-1].kind == "reply" and "docker0" in reach.trace.hops[-1].detail
    assert "DOCKER-ISOLATION-STAGE-2" in str(reach.trace.hops)
    assert reach.as_dict()["verdict"] == "reply-lost"


def test_the_answer_to_a_masqueraded_client_passes_a_raw_guard() -> None:
    """Docker 28's guard (raw PREROUTING: 172.17.0.2 from docker0 only) sees the answer
    to a masqueraded client addressed to the NAT's address, so it lets it pass."""
    rules = [i if not ("rule" in i and i["rule"]["table"] == "raw") else {"rule": dict(
        i["rule"], expr=[audit._m({"meta": {"key": "iifname"}}, "docker0", "!="),
                         *i["rule"]["expr"][1:]])} for i in DOCKER_RULESET]
    a = audit.audit(docker_host(rules))
    reach = next(r for r in a.reaches if r.source.key == "ns:c1"
                 and r.target.space == "ns:c2")
    assert reach.reached and reach.reply is not None
    assert (audit.ACROSS, "namespace ns:c2 172.18.0.2:80/tcp") in kinds(a)
    assert (audit.ACROSS, "namespace ns:c1 172.17.0.2:80/tcp") not in kinds(a)


def test_route_localnet_exposes_a_loopback_socket_without_an_input_firewall() -> None:
    rules = [i for i in DOCKER_RULESET if not ("chain" in i and i["chain"]["name"] == "input")
             and not ("rule" in i and i["rule"]["chain"] == "input")]
    a = audit.audit(docker_host(rules))
    assert (audit.LOOPBACK, "host socket 127.0.0.1:9001/tcp") in kinds(a)
    found = next(f for f in a.findings if f.target.label == "host socket 127.0.0.1:9001/tcp")
    assert "route_localnet on uplink0" in found.why
    assert found.fix_checked
    a = audit.audit(docker_host(rules, route_localnet=False))
    assert (audit.LOOPBACK, "host socket 127.0.0.1:9001/tcp") not in kinds(a)


def test_portways_own_host_has_no_exposure() -> None:
    w = portway_world()
    host = replace(w.host, listeners={("tcp", "0.0.0.0", 8080), ("tcp", "10.77.0.1", 53)},
                   portway_sockets={("tcp", "0.0.0.0", 8080)})
    a = audit.audit(World(host=host, spaces=w.spaces, bridge_nf=w.bridge_nf))
    assert a.findings == []
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    assert rows["published 0.0.0.0:8080/tcp -> 10.77.0.2:80"] == ["yes", "yes", "yes", "yes", "-"]
    assert rows["published 127.0.0.1:6379/tcp -> 10.77.0.3:80"][:2] == ["yes", "no"]
    assert rows["container store 10.78.0.2:5432/tcp"] == ["yes", "no", "-", "no", "-"]
    # The DNS server's socket on a gateway: the host reaches it (masqueraded to 127.0.0.1
    # over lo, and the answer turned back); a routed client cannot name 10.77.0.1.
    assert rows["host socket 10.77.0.1:53/tcp"] == ["yes", "yes", "-", "yes", "-"]
    assert not any(t.label.startswith("host socket 0.0.0.0:8080") for t in a.targets)


def test_as_dict_is_json() -> None:
    data = audit.audit(docker_host()).as_dict()
    text = json.dumps(data)
    assert json.loads(text)["findings"][0]["fix_checked"] is True


def test_both_families() -> None:
    """A port published on every address of both families is two targets, each reached
    over its own family."""
    from test_trace_reasoning_ipv6 import world as dual_world

    a = audit.audit(dual_world())
    assert a.findings == []
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    assert rows["published [::]:8080/tcp -> [fd00:77::2]:80"][:3] == ["yes", "yes", "yes"]
    assert rows["published 0.0.0.0:8080/tcp -> 10.77.0.2:80"][:3] == ["yes", "yes", "yes"]
    six = [r for r in a.reaches if r.target.label.startswith("published [::]:8080")]
    assert {str(r.packet.saddr) for r in six if r.source.kind != "host"} >= {
        "2001:db8:51::2", "2001:db8:113::10"}
    assert rows["container only [fd00:79::2]:80/tcp"] == ["yes", "no", "-", "no", "-"]


def test_ports_told_apart_before_dnat() -> None:
    assert audit.ports_told_apart(DOCKER_RULESET) == set()
    # DNS's notrack, and the notrack of overlay networks' VXLAN
    assert audit.ports_told_apart(portway_world().host.ruleset) == {53, 4789}
    raw = [i for i in DOCKER_RULESET]
    raw.append({"rule": {"family": "ip", "table": "raw", "chain": "PREROUTING", "expr": [
        audit._m({"payload": {"protocol": "tcp", "field": "dport"}}, {"set": [8080, 9000]}),
        {"drop": None}]}})
    assert audit.ports_told_apart(raw) == {8080, 9000}
    raw.append({"rule": {"family": "ip", "table": "raw", "chain": "PREROUTING", "expr": [
        audit._m({"payload": {"protocol": "tcp", "field": "dport"}}, "@blocked"),
        {"drop": None}]}})
    assert audit.ports_told_apart(raw) is None


def test_ports_that_share_a_path_share_a_trace(monkeypatch: Any) -> None:
    """Many ports published to one address and port: one trace stands for them all, and
    the answers are those of tracing each."""
    from test_trace_reasoning import APP, DB, INSTANCE, WEB, listing

    from portway.core import firewall
    from portway.core.firewall import Published

    ports = [Published(container_id="web", protocol="tcp", host_port=10000 + i,
                       container_ip=WEB.address, container_port=80 + i % 2) for i in range(40)]
    cmds = [*firewall.render_base(), *firewall.render_network(APP, INSTANCE),
            *firewall.render_network(DB, INSTANCE), *firewall.render_ports(ports, INSTANCE)]
    w = portway_world()
    w = World(host=replace(w.host, ruleset=listing(cmds)), spaces=w.spaces)
    shared = audit.audit(w)
    assert sum(1 for r in shared.reaches if r.same_path_as) > 100
    monkeypatch.setattr(audit, "ports_told_apart", lambda items: None)
    each = audit.audit(w)
    assert not any(r.same_path_as for r in each.reaches)
    assert audit.table_rows(shared) == audit.table_rows(each)
    # web listens on 80 only: the ports published to 81 reach nothing.
    rows = {r[0]: r[1:] for r in audit.table_rows(shared)}
    assert rows["published 0.0.0.0:10001/tcp -> 10.77.0.2:81"][:3] == ["no", "no", "no"]
    assert rows["published 0.0.0.0:10002/tcp -> 10.77.0.2:80"][:3] == ["yes", "yes", "yes"]


def _many_ports(ports: list[Any], with_ufw: bool = True) -> World:
    """portway's world with these ports published (and the ufw-style input firewall of
    the Docker host beside portway's tables, which every published port bypasses)."""
    from test_trace_reasoning import APP, DB, INSTANCE, listing

    from portway.core import firewall

    cmds = [*firewall.render_base(), *firewall.render_network(APP, INSTANCE),
            *firewall.render_network(DB, INSTANCE), *firewall.render_ports(ports, INSTANCE)]
    ufw = [i for i in DOCKER_RULESET if any(
        isinstance(i.get(k), dict) and i[k].get("family") == "inet"
        for k in ("table", "chain", "rule"))] if with_ufw else []
    w = portway_world()
    return World(host=replace(w.host, ruleset=listing(cmds) + ufw), spaces=w.spaces)


def _answers(a: audit.Audit) -> list[Any]:
    """What a user reads of an audit: the table, and each finding with its sources and
    fix (the proofs' traces are the shared ones')."""
    return [audit.table_rows(a), [(f.kind, f.target.label, [r.source.label for r in f.reaches],
                                   f.fix.text, f.fix_checked) for f in a.findings]]


def test_ports_to_other_container_ports_share_a_path_shape(monkeypatch: Any) -> None:
    """Ports published to different ports of one container take one path where nothing
    tells those ports apart (no rule matches them, the same sockets listen on them): one
    trace stands for them all, and every answer, each finding's fix included (it names
    the port each is DNATed to), is the one of tracing each."""
    from test_trace_reasoning import CACHE, WEB

    from portway.core.firewall import Published

    ports = [Published(container_id="web", protocol="tcp", host_port=10000 + i,
                       container_ip=WEB.address, container_port=8000 + i) for i in range(30)]
    ports += [Published(container_id="web", protocol="tcp", host_port=11000,
                        container_ip=WEB.address, container_port=80),
              Published(container_id="cache", protocol="tcp", host_port=11001,
                        container_ip=CACHE.address, container_port=80),
              Published(container_id="cache", protocol="tcp", host_port=11002,
                        container_ip=CACHE.address, container_port=8001)]
    w = _many_ports(ports)
    web = w.spaces["web"]  # which listens on 80 and on the first ten of those
    w.spaces["web"] = replace(web, listeners={*web.listeners, *(
        ("tcp", "0.0.0.0", 8000 + i) for i in range(10))})
    shared = audit.audit(w)
    traced = {r.target.label for r in shared.reaches if not r.same_path_as
              and r.target.kind == "published"}
    # One shape to web's ports where it listens, one where nothing does, one to its 80
    # (where cache listens too: other sockets), one to each of cache's.
    assert len(traced) == 5, traced
    monkeypatch.setattr(audit, "ports_told_apart", lambda items: None)
    each = audit.audit(w)
    assert not any(r.same_path_as for r in each.reaches)
    assert _answers(shared) == _answers(each)
    by = {f.target.port: f for f in shared.findings}
    assert "dport 8007 ct status dnat drop" in by[10007].fix.text[0]
    assert by[10007].reaches[0].same_path_as


def test_what_tells_ports_apart_keeps_them_apart() -> None:
    """A rule that matches a port (in any chain, of any namespace), a port published
    twice, or a socket on one of them: each is traced on its own."""
    from test_trace_reasoning import WEB

    from portway.core.firewall import Published

    ports = [Published(container_id="web", protocol="tcp", host_port=10000 + i,
                       container_ip=WEB.address, container_port=8000 + i) for i in range(6)]
    ports.append(Published(container_id="web", protocol="tcp", host_port=10001,
                           container_ip=WEB.address, container_port=9000,
                           host_ip=IP("198.51.100.1")))
    w = _many_ports(ports)
    fwd = {"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [
        audit._m({"payload": {"protocol": "tcp", "field": "dport"}}, 8002), {"drop": None}]}}
    w.host.ruleset.append(fwd)
    web = w.spaces["web"]
    w.spaces["web"] = replace(web, listeners={*web.listeners, ("tcp", "0.0.0.0", 8003)})
    a = audit.audit(w)
    alone = {r.target.port for r in a.reaches if not r.same_path_as and
             r.target.kind == "published"}
    assert {10001, 10002, 10003} <= alone
    assert len(alone) == 4  # and one for 10000, 10004 and 10005
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    assert rows["published 0.0.0.0:10002/tcp -> 10.77.0.2:8002"][:3] == ["no", "no", "no"]
    assert rows["published 0.0.0.0:10003/tcp -> 10.77.0.2:8003"][:3] == ["yes", "yes", "yes"]


def crowd(count: int, each: int, with_ufw: bool = True) -> World:
    """A host like bench/audit.py's: count containers on one network (each listens on
    8000), each ports published to a port of its own of each (8000, 8001...), and the
    ufw-style input firewall beside portway's tables."""
    from test_trace_reasoning import INSTANCE, listing

    from portway.core import firewall
    from portway.core.firewall import Published
    from portway.model.types import Endpoint, Network, Subnet

    net = Network(id="ef" * 32, name="crowd", subnets=(Subnet(
        subnet=ipaddress.ip_network("10.205.0.0/16"), gateway=IP("10.205.0.1")),),
        bridge="pwbr-efefefefef")
    v4 = ipaddress.IPv4Interface
    ifaces = [Iface("lo", 1, addrs=(v4("127.0.0.1/8"),)),
              Iface("uplink0", 2, "veth", addrs=(v4("198.51.100.1/24"),)),
              Iface(net.bridge, 3, "bridge", "02:ab:00:00:00:01", addrs=(v4("10.205.0.1/16"),))]
    spaces, endpoints, ports = {}, [], []
    for n in range(count):
        addr, veth, key = IP(0x0ACD0002 + n), f"pwv-{n:08x}", f"pw-{n:012x}"
        e = Endpoint(id=veth, container_id=key, network_id=net.id, ifname="eth0",
                     host_ifname=veth, addresses=(ipaddress.ip_interface((addr, 16)),),
                     mac=f"02:42:0a:cd:00:{n:02x}")
        endpoints.append(e)
        ifaces.append(Iface(veth, 10 + n, "veth", master=net.bridge, peer=(key, "eth0")))
        spaces[key] = Space(
            key=key, label=f"container c{n}",
            ifaces=[Iface("lo", 1, addrs=(v4("127.0.0.1/8"),)),
                    Iface("eth0", 2, "veth", e.mac, addrs=(v4(f"{addr}/16"),),
                          peer=("host", veth))],
            routes=[Route(NETWORK("10.205.0.0/16"), "eth0", prefsrc=addr),
                    Route(NETWORK("0.0.0.0/0"), "eth0", gateway=IP("10.205.0.1"))],
            listeners={("tcp", "0.0.0.0", 8000)})
        for k in range(each):
            ports.append(Published(key, "tcp", 20000 + len(ports), addr, 8000 + k))
    cmds = [*firewall.render_base(), *firewall.render_network(net, INSTANCE),
            *firewall.render_ports(ports, INSTANCE), *firewall.render_guard_base(),
            *firewall.render_guard(endpoints, INSTANCE)]
    ufw = [i for i in DOCKER_RULESET if any(
        isinstance(i.get(k), dict) and i[k].get("family") == "inet"
        for k in ("table", "chain", "rule"))] if with_ufw else []
    host = Space(key="host", label="host", forwarding=True, ruleset=listing(cmds) + ufw,
                 ifaces=ifaces, routes=[
                     Route(NETWORK("198.51.100.0/24"), "uplink0", prefsrc=IP("198.51.100.1")),
                     Route(NETWORK("0.0.0.0/0"), "uplink0", gateway=IP("198.51.100.2")),
                     Route(NETWORK("10.205.0.0/16"), net.bridge, prefsrc=IP("10.205.0.1"))])
    return World(host=host, spaces=spaces)


def test_containers_of_one_shape_share_a_trace(monkeypatch: Any) -> None:
    """Containers behind one bridge, recorded alike but for their names and addresses,
    which nothing tells apart: one trace stands for the ports published to all of them,
    and every answer (the table, each finding, its fix with the address and port the
    connection is DNATed to) is the one of tracing each."""
    w = crowd(8, 3)
    shared = audit.audit(w)
    traced = {r.target.label for r in shared.reaches if not r.same_path_as and
              r.target.kind == "published"}
    # The source (the first container) is a shape of its own, the other seven share
    # one: to each, a trace to 8000 (where it listens) and one to 8001 (for 8002 too).
    assert len(traced) == 4, sorted(traced)
    monkeypatch.setattr(audit, "ports_told_apart", lambda items: None)
    each = audit.audit(w)
    assert not any(r.same_path_as for r in each.reaches)
    assert _answers(shared) == _answers(each)
    by = {f.target.port: f for f in shared.findings}
    assert sorted(by) == [20000 + 3 * n for n in range(8)]
    assert "ip daddr 10.205.0.7 tcp dport 8000 ct status dnat drop" in by[20015].fix.text[0]
    assert by[20015].reaches[0].same_path_as


def test_a_rule_that_names_a_container_gives_it_a_shape_of_its_own() -> None:
    """A forward rule that drops what goes to one of them (by its address, or by a
    prefix that takes two): those are traced on their own, and only they are closed to
    the LAN (the host's own connections do not pass forward)."""
    w = crowd(6, 1)
    docker_like = {"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [
        audit._m({"payload": {"protocol": "ip", "field": "daddr"}}, "10.205.0.4"),
        {"drop": None}]}}
    w.host.ruleset.append(docker_like)
    a = audit.audit(w)
    alone = {r.target.to for r in a.reaches if not r.same_path_as}
    assert "10.205.0.4:8000" in alone
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    assert rows["published 0.0.0.0:20002/tcp -> 10.205.0.4:8000"][:3] == ["yes", "no", "no"]
    assert rows["published 0.0.0.0:20003/tcp -> 10.205.0.5:8000"][:3] == ["yes", "yes", "yes"]
    w = crowd(6, 1)
    split = {"rule": {"family": "inet", "table": "filter", "chain": "forward", "expr": [
        audit._m({"payload": {"protocol": "ip", "field": "daddr"}},
                 {"prefix": {"addr": "10.205.0.4", "len": 31}}), {"drop": None}]}}
    w.host.ruleset.append(split)
    a = audit.audit(w)
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    assert rows["published 0.0.0.0:20002/tcp -> 10.205.0.4:8000"][:3] == ["yes", "no", "no"]
    assert rows["published 0.0.0.0:20003/tcp -> 10.205.0.5:8000"][:3] == ["yes", "no", "no"]
    assert rows["published 0.0.0.0:20004/tcp -> 10.205.0.6:8000"][:3] == ["yes", "yes", "yes"]


def test_fixes_for_iptables_nft_tables_are_iptables_commands() -> None:
    """A native rule in a table iptables-nft manages would leave iptables unable to read
    it: there the fix is an iptables command."""
    tables = frozenset({("ip", "raw"), ("ip", "nat"), ("ip", "filter")})
    by = {f.kind: f for f in audit.audit(docker_host(), tables).findings}
    assert by[audit.BYPASS].fix.text[0] == (
        'iptables -I DOCKER-USER -i uplink0 -d 172.17.0.2 -p tcp --dport 80 -m conntrack '
        '--ctstate DNAT -m comment --comment "portway audit: tcp/8080 as inet filter input '
        'wants" -j DROP')
    assert by[audit.LOOPBACK].fix.text[1].startswith(
        "iptables -t raw -I PREROUTING ! -i lo -d 127.0.0.0/8 -m comment")
    assert by[audit.DIRECT].fix.text[0].startswith(
        "iptables -t raw -I PREROUTING ! -i br-two -d 172.18.0.2 -m comment")
    assert by[audit.ACROSS].fix.text[0].startswith(
        "iptables -I DOCKER-USER -i ")
    assert all(f.fix_checked for f in by.values())


KUBE_RULESET: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "kube-node.json").read_text())


def kube_node(with_ufw: bool) -> World:
    """A Kubernetes node: kube-proxy's rules for default/web (ClusterIP 10.96.0.10:80,
    NodePort 30080, endpoints 10.244.1.4 and .5 behind cni0), as audit reads them
    (tests/e2e/data/kube-node.iptables through iptables-nft, translated); with a
    ufw-style input firewall or without."""
    ufw = [i for i in DOCKER_RULESET if any(
        isinstance(i.get(k), dict) and i[k].get("family") == "inet"
        for k in ("table", "chain", "rule"))]
    w = docker_host(KUBE_RULESET + (ufw if with_ufw else []))
    host = replace(w.host, ifaces=[
        *[i for i in w.host.ifaces if i.name in ("lo", "uplink0")],
        Iface("cni0", 3, "bridge", "02:42:00:00:01:01", addrs=(V4("10.244.1.1/24"),)),
        Iface("veth4", 5, "veth", master="cni0", peer=("ns:pod4", "eth0")),
        Iface("veth5", 6, "veth", master="cni0", peer=("ns:pod5", "eth0"))],
        routes=[*w.host.routes[:2], Route(NETWORK("10.244.1.0/24"), "cni0",
                                           prefsrc=IP("10.244.1.1"))], listeners=set())
    pods = {}
    for n in (4, 5):
        pod = container(f"ns:pod{n}", f"10.244.1.{n}", "10.244.1.1", f"veth{n}")
        pods[f"ns:pod{n}"] = replace(pod, listeners={("tcp", "0.0.0.0", 8080)})
    return World(host=host, spaces=pods)


def test_kube_proxy_node_ports_and_cluster_ips() -> None:
    """kube-proxy matches the port in KUBE-NODEPORTS and DNATs three chains below:
    audit finds the port there. Its random choice of an endpoint is not modelled (the
    rule is taken as not matching), so the trace goes to the last endpoint."""
    found = {(t.label, t.to) for t in audit.published_ports(KUBE_RULESET)}
    assert found == {
        ("published 0.0.0.0:30080/tcp -> 10.244.1.4:8080, 10.244.1.5:8080",
         "10.244.1.4:8080, 10.244.1.5:8080"),
        ("published 10.96.0.10:80/tcp -> 10.244.1.4:8080, 10.244.1.5:8080",
         "10.244.1.4:8080, 10.244.1.5:8080")}
    a = audit.audit(kube_node(with_ufw=False))
    # Nothing filters forward here: a neighbour that routes the pod network to the node
    # reaches the pods themselves, as in a flat pod network by design.
    assert kinds(a) == [(audit.DIRECT, "namespace ns:pod4 10.244.1.4:8080/tcp"),
                        (audit.DIRECT, "namespace ns:pod5 10.244.1.5:8080/tcp")]
    rows = {r[0]: r[1:] for r in audit.table_rows(a)}
    assert rows["published 0.0.0.0:30080/tcp -> 10.244.1.4:8080, 10.244.1.5:8080"][:3] == \
        ["yes", "yes", "yes"]
    node_port = next(r for r in a.reaches if r.source.kind == "neighbour"
                     and r.target.port == 30080)
    assert node_port.trace.seen_destination == "10.244.1.5:8080"
    a = audit.audit(kube_node(with_ufw=True))
    assert [(f.kind, f.target.port) for f in a.findings if f.kind != audit.DIRECT] == [
        (audit.BYPASS, 30080)]
    assert all(f.fix_checked for f in a.findings)
