"""trace --live's comparison with the static trace, on the kernel's own events as a real
probe produced them (tests/e2e/test_audit.py's Docker-like host, kernel 6.18): the
order of base chains of one priority on one hook, and Docker's jump/return chains."""

from __future__ import annotations

import ipaddress
from typing import Any

from test_audit_reasoning import DOCKER_RULESET, docker_host

from portway.core.nftsim import Packet, Ruleset
from portway.core.trace import agreement, fold_events, static_steps, trace


def test_of_one_priority_the_chain_made_last_runs_first() -> None:
    """The kernel puts a new hook before those of its priority: ufw's `inet filter
    forward`, made after Docker's `ip filter FORWARD` (later in the listing), runs
    first; the priorities still order the rest."""
    chains = Ruleset(DOCKER_RULESET).base_chains(("ip", "inet"), "forward")
    assert [(c["family"], c["table"], c["name"]) for c in chains] == [
        ("inet", "filter", "forward"), ("ip", "filter", "FORWARD")]
    pre = Ruleset(DOCKER_RULESET).base_chains(("ip", "inet"), "prerouting")
    assert [c["prio"] for c in pre] == sorted(c["prio"] for c in pre)


# The probe's first packet, from namespace c1 (172.17.0.2) to 172.18.0.2:80 through the
# host: (family, table, chain, type, handle, verdict) of each event, as the kernel sent
# them (portway_trace's own left out).
EVENTS = [("ip", "raw", "PREROUTING", "rule", None, "continue"),
          ("ip", "raw", "PREROUTING", "policy", None, "accept"),
          ("ip", "nat", "PREROUTING", "rule", None, "continue"),
          ("ip", "nat", "PREROUTING", "policy", None, "accept"),
          ("inet", "filter", "forward", "rule", None, "continue"),
          ("inet", "filter", "forward", "policy", None, "accept"),
          ("ip", "filter", "FORWARD", "rule", 6, "jump"),
          ("ip", "filter", "DOCKER-USER", "rule", 20, "return"),
          ("ip", "filter", "FORWARD", "rule", 7, "jump"),
          ("ip", "filter", "DOCKER-ISOLATION-STAGE-1", "rule", 17, "return"),
          ("ip", "filter", "FORWARD", "rule", 9, "jump"),
          ("ip", "filter", "DOCKER", "rule", None, "continue"),
          ("ip", "filter", "FORWARD", "rule", 14, "accept"),
          ("ip", "nat", "POSTROUTING", "rule", 8, "accept")]


def test_static_and_the_kernel_agree_across_dockers_jump_and_return_chains() -> None:
    world = docker_host()
    packet = Packet(l4proto="tcp", saddr=ipaddress.ip_address("0.0.0.0"),
                    daddr=ipaddress.ip_address("172.18.0.2"), sport=40000, dport=80)
    static = trace(world, "ns:c1", packet, "c1", "172.18.0.2:80")
    assert static.verdict == "delivered"
    handles = {(r["family"], r["table"], r["handle"]): r for r in
               (i["rule"] for i in DOCKER_RULESET if "rule" in i)}
    assert handles[("ip", "filter", 14)]["chain"] == "FORWARD"
    events: list[dict[str, Any]] = [
        {"family": f, "table": t, "chain": c, "kind": k, "handle": h, "verdict": v}
        for f, t, c, k, h, v in EVENTS if not (k == "rule" and h is None)]
    steps = fold_events(events, {})
    assert [(s.table, s.chain, s.verdict) for s in steps] == [
        ("raw", "PREROUTING", "policy accept"), ("nat", "PREROUTING", "policy accept"),
        ("filter", "forward", "policy accept"), ("filter", "FORWARD", "accept"),
        ("nat", "POSTROUTING", "accept")]
    reasons = agreement(static_steps(static, "host"), steps, static.verdict, "delivered",
                        (static.seen_source, static.seen_destination),
                        (static.seen_source, static.seen_destination))
    assert reasons == []


def test_a_probe_leaving_in_vxlan_is_stopped_by_its_own_headers_inside() -> None:
    from portway.engine import live

    def stops(version: int | None) -> list[list[dict[str, Any]]]:
        return [c["add"]["rule"]["expr"] for c in live.trace_tables(
            "tcp", 40001, 80, "10.200.0.3", None, ["ul0"], version)
            if "rule" in c["add"] and c["add"]["rule"]["chain"] == "stop0"]

    assert len(stops(None)) == 1  # the probe itself, not inside a tunnel
    for version, proto_at, sport_at in ((4, 39, 50), (6, 36, 70)):
        trace_on, drop = stops(version)[1:]
        fields = [(m["match"]["left"], m["match"]["right"]) for m in drop[:-1]]
        assert fields == [
            ({"meta": {"key": "l4proto"}}, "udp"),
            ({"payload": {"protocol": "th", "field": "dport"}}, 4789),
            ({"payload": {"base": "th", "offset": proto_at * 8, "len": 8}}, 6),
            ({"payload": {"base": "th", "offset": sport_at * 8, "len": 16}}, 40001),
            ({"payload": {"base": "th", "offset": (sport_at + 2) * 8, "len": 16}}, 80)]
        assert drop[-1] == {"drop": None}
        assert trace_on[:-1] == drop[:-1] and "mangle" in trace_on[-1]


def _event(chain: str, header: tuple[int, int, int] | None, kind: str = "rule",
           handle: int | None = 1, verdict: str = "accept") -> Any:
    """A trace event of chain; header: (sport, dport, TCP flags) of the packet, which the
    kernel sends with each chain's first event."""
    from portway.kernel.nftrace import TraceEvent

    network = bytes([0x45]) + bytes(8) + bytes([6]) + bytes(10) if header else b""
    transport = header[0].to_bytes(2, "big") + header[1].to_bytes(2, "big") + bytes(9) + \
        bytes([header[2]]) if header else b""
    return TraceEvent(trace_id=1, family="inet", table="portway", chain=chain, kind=kind,
                      handle=handle, verdict=verdict, target="", iif=0, oif=0,
                      network=network, transport=transport)


def test_a_followed_probes_reply_is_told_apart_and_only_its_first_packet_kept() -> None:
    from portway.engine import live

    syn, syn_ack, ack, fin_ack = 0x02, 0x12, 0x10, 0x11
    events = [
        _event("guard", (40001, 80, syn)), _event("forward", (40001, 80, syn)),
        _event("guard", (80, 40001, syn_ack)), _event("forward", (80, 40001, syn_ack)),
        _event("forward", None, kind="policy", handle=None),
        _event("guard", (40001, 80, ack)),
        _event("guard", (80, 40001, fin_ack)), _event("forward", (80, 40001, fin_ack))]
    request, reply = live.by_direction(events, 40001)
    assert [e.transport[:2] for e in request if e.transport] == [(40001).to_bytes(2, "big")] * 3
    assert len(reply) == 5
    # The reply's first packet (the SYN-ACK) through both chains, its policy event with
    # it; the FIN-ACK after is another packet.
    first = live.first_reply(reply)
    assert [(e.chain, e.kind) for e in first] == [("guard", "rule"), ("forward", "rule"),
                                                  ("forward", "policy")]
    # A refused connection's reply: the RST.
    rst = [_event("guard", (80, 40001, 0x14)), _event("forward", (80, 40001, 0x14))]
    assert live.first_reply(live.by_direction(rst, 40001)[1]) == rst
    # Where the trace tables select the reply too (followed to another host): a rule
    # per direction, the reply's from the destination's port back to the probe's.
    tables = live.trace_tables("tcp", 40001, 80, "10.200.0.3", None, [], reply=True)
    selects = [[(m["match"]["left"], m["match"]["right"]) for m in c["add"]["rule"]["expr"][:-1]]
               for c in tables if "rule" in c["add"] and c["add"]["rule"]["chain"] == "prerouting"
               and c["add"]["rule"]["family"] == "inet"]
    assert selects[1] == [({"meta": {"key": "l4proto"}}, "tcp"),
                          ({"payload": {"protocol": "th", "field": "sport"}}, 80),
                          ({"payload": {"protocol": "th", "field": "dport"}}, 40001),
                          ({"payload": {"protocol": "ip", "field": "saddr"}}, "10.200.0.3")]
    assert len(selects) == 2 and len([c for c in live.trace_tables(
        "tcp", 40001, 80, "10.200.0.3", None, []) if "rule" in c["add"]]) == 3


def _reply_event(chain: str, kind: str, verdict: str, ports: tuple[int, int] | None = None,
           flags: int = 0) -> Any:
    from portway.kernel.nftrace import TraceEvent

    network = transport = b""
    if ports is not None:  # a chain's first event carries the headers
        network = bytes([0x45]) + bytes(8) + bytes([6]) + bytes(10)
        transport = ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big") + \
            bytes(9) + bytes([flags]) + bytes(6)
    return TraceEvent(1, "inet", "filter", chain, kind, None if kind == "policy" else 3,
                      verdict, "", 0, 0, network, transport)


def test_a_syn_ack_sent_again_is_not_the_first_replys() -> None:
    """The server sends its SYN-ACK again when the first was dropped: the reply's first
    packet is the first walk alone, through each chain once."""
    from portway.engine.live import first_reply

    def walk() -> list[Any]:
        return [_reply_event("prerouting", "rule", "continue", (80, 41000), 0x12),
                _reply_event("prerouting", "policy", "accept"),
                _reply_event("forward", "rule", "continue", (80, 41000), 0x12),
                _reply_event("forward", "policy", "drop")]

    first = walk()
    assert first_reply([*first, *walk()]) == first
