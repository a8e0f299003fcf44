"""`portway trace --live`: one real probe, and the kernel's own trace of it.

The probe is a TCP SYN (or one UDP datagram) from the source namespace; for an
outside source, from a short-lived probe namespace joined to the host by a
temporary veth and addressed as the client. Short-lived tables of portway's
own select the probe by its 5-tuple (`meta nftrace set 1`; marks do not cross
namespaces) and stop it in each non-portway interface's egress hook, so it
never leaves the host. The kernel's trace events (nfnetlink) and conntrack's
final tuple are read back and compared with the static reasoning. The tables,
namespace and veth are removed whatever happens.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portway.core import trace as core
from portway.core.nftsim import Packet, hostport, rule_text
from portway.errors import KernelError
from portway.kernel import links, netns, nftrace, observe
from portway.model.types import IPAddress

if TYPE_CHECKING:
    from portway.engine import Engine
    from portway.engine.observer import Observer


def fault_point(step: str) -> None:
    from portway.engine.context import fault_point as fault

    fault(step)

TABLE = "portway_trace"
PRIORITY = -350  # before every chain portway or a distribution puts on these hooks
WHY_STOP = "portway trace --live: the probe stops here instead of leaving the host"


def _match(proto: str, sport: int, dport: int, daddr: str, saddr: str | None) -> list[Any]:
    def eq(left: Any, right: Any) -> dict[str, Any]:
        return {"match": {"op": "==", "left": left, "right": right}}

    ip = "ip" if ipaddress.ip_address(daddr).version == 4 else "ip6"
    out = [eq({"meta": {"key": "l4proto"}}, proto),
           eq({"payload": {"protocol": "th", "field": "sport"}}, sport),
           eq({"payload": {"protocol": "th", "field": "dport"}}, dport),
           eq({"payload": {"protocol": ip, "field": "daddr"}}, daddr)]
    if saddr is not None:
        out.append(eq({"payload": {"protocol": ip, "field": "saddr"}}, saddr))
    return out


def trace_tables(proto: str, sport: int, dport: int, daddr: str, saddr: str | None,
                 egress_devices: list[str]) -> list[dict[str, Any]]:
    """The short-lived tables: trace the probe from its first hook, stop it at the edge."""
    select = _match(proto, sport, dport, daddr, saddr)
    nftrace_on = {"mangle": {"key": {"meta": {"key": "nftrace"}}, "value": 1}}
    cmds: list[dict[str, Any]] = []
    for family, hooks in (("inet", ("prerouting", "output")), ("bridge", ("prerouting",))):
        cmds.append({"add": {"table": {"family": family, "name": TABLE}}})
        for hook in hooks:
            cmds.append({"add": {"chain": {"family": family, "table": TABLE, "name": hook,
                                           "type": "filter", "hook": hook, "prio": PRIORITY,
                                           "policy": "accept"}}})
            cmds.append({"add": {"rule": {"family": family, "table": TABLE, "chain": hook,
                                          "expr": [*select, nftrace_on]}}})
    if egress_devices:
        cmds.append({"add": {"table": {"family": "netdev", "name": TABLE}}})
    stop = [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}},
                       "right": sport}}, {"drop": None}]
    for number, dev in enumerate(egress_devices):
        chain = f"stop{number}"
        cmds.append({"add": {"chain": {"family": "netdev", "table": TABLE, "name": chain,
                                       "type": "filter", "hook": "egress", "dev": dev,
                                       "prio": 0, "policy": "accept"}}})
        cmds.append({"add": {"rule": {"family": "netdev", "table": TABLE, "chain": chain,
                                      "expr": stop, "comment": WHY_STOP}}})
    return cmds


def _drop_tables(engine: Engine | Observer) -> None:
    for family in ("inet", "bridge", "netdev"):
        if engine.nft.list_table(family, TABLE) is not None:
            engine.fw.teardown([{"delete": {"table": {"family": family, "name": TABLE}}}])


def run(engine: Engine | Observer, world: core.World, src_key: str, packet: Packet,
        static: core.Trace, label: str, destination: str) -> dict[str, Any]:
    host = world.host
    # The listing the static trace read (kept while the ruleset's generation stays): a
    # listing of its own cost the probe seconds on a host with 10,000 published ports.
    items = engine.nft.listing()
    mark = engine.nft.mark()
    rules = {(r["family"], r["table"], int(r.get("handle", 0))): rule_text(r)
             for r in (i["rule"] for i in items if "rule" in i)}
    hooks = {(c["family"], c["table"], c["name"]): c.get("hook", "")
             for c in (i["chain"] for i in items if "chain" in i)}
    sport = random.randint(33000, 60999)
    outside = src_key == "outside"
    probe_ns = f"pwprobe-{secrets.token_hex(3)}" if outside else ""
    probe_if = f"pwp-{secrets.token_hex(4)}" if outside else ""
    devices = [i.name for i in host.ifaces if i.name != "lo" and i.kind != "bridge"
               and not i.master and i.peer is None and i.name != probe_if]
    listener = nftrace.TraceListener()
    compare_static = static
    try:
        if outside:
            tag = engine.tag("probe", probe_ns)
            ipr = netns.create_netns(probe_ns, lambda ipr: links.setup_probe(ipr, tag))
            fd = os.open(netns.netns_path(probe_ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if packet.version == 4:
                    links.add_probe_link(engine.host, ipr, fd, probe_if, packet.saddr,
                                         _facing(host, packet.saddr))
                else:
                    links.add_probe_link6(engine.host, ipr, fd, probe_if, packet.saddr)
            finally:
                os.close(fd)
                ipr.close()
            # The only hop allowed to differ from the static path: the ingress device.
            probe_world = replace(world, host=replace(host, ifaces=[
                *host.ifaces, core.Iface(probe_if, 0, "veth")], routes=[
                *host.routes, core.Route(ipaddress.ip_network(packet.saddr), probe_if)]))
            probe_packet = replace(packet, iif=probe_if)
            compare_static = core.trace(probe_world, "outside", probe_packet, label,
                                        destination)
        else:
            probe_world, probe_packet = world, packet
        compare_static = _comparable(probe_world, src_key, probe_packet, compare_static,
                                     label, destination)
        udp_errors = nftrace.udp_in_errors()
        engine.nft.apply(trace_tables(packet.l4proto, sport, packet.dport, str(packet.daddr),
                                      str(packet.saddr) if outside else None, devices))
        fault_point("trace.live")

        def send() -> tuple[str, tuple[str, int], list[str]]:
            outcome, local = nftrace.send_probe(packet.l4proto, str(packet.daddr),
                                                packet.dport, sport)
            if outcome not in ("timeout", "unreachable"):
                return outcome, local, []
            ipr = IPRoute()  # here, in the sender's namespace
            try:
                return outcome, local, _unanswered(ipr, packet.daddr)
            finally:
                ipr.close()

        if outside:
            outcome, local, unanswered = netns.in_netns(netns.netns_path(probe_ns), send)
        elif src_key == host.key:
            outcome, local, unanswered = send()
        else:
            outcome, local, unanswered = netns.in_netns(netns.key_path(src_key), send)
        if outcome in ("timeout", "unreachable") and src_key != host.key:
            unanswered += _unanswered(engine.host, packet.daddr)  # forwarded by the host
        events = listener.read()
        socket_drops = nftrace.udp_in_errors() - udp_errors
        # (the probe's entry only: the kernel filters the table by its destination)
        connections = nftrace.connections(toward=(packet.l4proto, str(packet.daddr),
                                                  packet.dport))
    finally:
        listener.close()
        try:
            _drop_tables(engine)
            # The ruleset is again what the static trace listed: the next trace need not
            # list 10,000 published ports again.
            engine.nft.keep_listing(mark)
        finally:
            if outside:
                links.delete_link(engine.host, probe_if)
                netns.delete_netns(probe_ns)
    return _report(events, connections, rules, hooks, outcome, local, sport, packet,
                   static, compare_static, outside, socket_drops, unanswered)


def _comparable(world: core.World, src_key: str, packet: Packet, static: core.Trace,
                label: str, destination: str) -> core.Trace:
    """What the probe can be compared with. It is a new flow (a source port of its own),
    which an existing conntrack entry of the traced flow does not hold; and it is stopped
    at the host's edge, so its reply is not seen: where the static verdict came from the
    flow's entry or from the reply, the probe is compared with the request alone."""
    if not any(h.kind == "ct" or (h.kind == "reply" and h.detail.startswith(
            core.FAR_END)) for h in static.hops):
        return static
    key = "outside" if src_key == "outside" else src_key
    request = core.trace(replace(world, conntrack=[], beyond=False), key, packet, label,
                         destination)
    request.summary += STATE_NOTE
    return request


STATE_NOTE = " [the request alone]"


def _unanswered(ipr: IPRoute, daddr: IPAddress) -> list[str]:
    """What the kernel says of the neighbour entry of daddr, or of the gateway ipr's
    namespace routes it through, if it was asked for and never answered (incomplete,
    failed): why a probe to it got no answer."""
    hops = {str(daddr)}
    try:
        for msg in ipr.route("get", dst=str(daddr)):
            if msg.get_attr("RTA_GATEWAY"):
                hops.add(str(ipaddress.ip_address(msg.get_attr("RTA_GATEWAY"))))
    except NetlinkError:
        pass  # no route: the neighbour table alone
    return [f"{core.asks(daddr)} for {addr} on {dev} got no answer ({state})"
            for (dev, addr), (_, state) in observe.neighbours(ipr).items()
            if addr in hops and state in ("incomplete", "failed")]


def _facing(host: core.Space, client: IPAddress) -> IPAddress:
    """The host address a client at `client` reaches the host by."""
    route = host.lookup(client)
    addr = route.prefsrc if route and route.prefsrc else \
        host.first_address(route.dev, client.version, client) if route else None
    if addr is None:
        raise KernelError(f"no host address faces {client}",
                          "give --from-ip an address beyond one of the host's interfaces")
    return addr


def first_packet(events: list[nftrace.TraceEvent]) -> list[nftrace.TraceEvent]:
    """The events of the probe's first packet. The kernel sends the packet's headers with
    the first event of each chain it enters; a later segment of the connection (the
    handshake's ACK) is told apart by its TCP flags there. (Trace ids are no help: they
    change along the path and are recycled with socket buffers.)"""
    out: list[nftrace.TraceEvent] = []
    keep = True
    for e in events:
        if e.network:
            keep = e.first_segment()
        if keep and not (e.kind == "rule" and e.handle is None):
            out.append(e)
    return out


def _report(events: list[nftrace.TraceEvent], connections: list[nftrace.Connection],
            rules: dict[tuple[str, str, int], str], hooks: dict[tuple[str, str, str], str],
            outcome: str, local: tuple[str, int], sport: int, packet: Packet,
            static: core.Trace, compare_static: core.Trace, outside: bool,
            socket_drops: int = 0, unanswered: list[str] | None = None) -> dict[str, Any]:
    mine = first_packet(events)
    stopped = next((e for e in mine if e.table == TABLE and e.family == "netdev"
                    and e.verdict == "drop"), None)
    steps = core.fold_events([{"family": e.family, "table": e.table, "chain": e.chain,
                               "kind": e.kind, "handle": e.handle, "verdict": e.verdict}
                              for e in mine if e.table != TABLE], rules)
    drop = next((s for s in steps if s.verdict.split()[-1] == "drop"), None)
    notes: list[str] = []
    if drop is not None:
        verdict = "dropped"
        summary = f"dropped by {drop.family} {drop.table} {drop.chain}: {drop.rule or drop.verdict}"
    elif stopped is not None:
        verdict, summary = "leaves-host", "reached the host's edge; stopped there by the trace"
    elif outcome in ("connected", "answered"):
        verdict, summary = "delivered", f"the probe's {packet.l4proto} {outcome}"
    elif outcome == "refused":
        verdict, summary = "no-listener", "refused (nothing listens)"
    elif outcome == "unreachable" and unanswered:
        # The kernel gives up on a neighbour that never answered with "host unreachable".
        verdict, summary = "no-route", f"unreachable: {unanswered[0]}"
    elif outcome == "unreachable":
        verdict, summary = "no-route", "the source's kernel has no route"
    elif outcome == "timeout" and unanswered:
        verdict = "no-route"
        summary = f"no answer: {unanswered[0]}"
    elif outcome == "timeout" and packet.l4proto == "udp" and socket_drops > 0:
        verdict = "dropped"
        summary = "no answer, and the host dropped a UDP datagram on receipt meanwhile " \
                  "(UDP InErrors rose: a socket's filter, or a full buffer)"
    elif outcome == "timeout" and packet.l4proto == "udp":
        verdict, summary = "delivered", "no ICMP error came back (UDP cannot say more)"
    else:
        verdict = "dropped"
        summary = f"no answer ({outcome}) and no netfilter rule dropped it: the kernel " \
                  "itself did (a martian, rp_filter, a socket filter, a missing neighbour...)"
    src = packet.saddr if outside else ipaddress.ip_address(local[0].partition("%")[0])
    entry = next((c for c in connections if c.orig == (str(src), sport, str(packet.daddr),
                                                       packet.dport)), None)
    seen: tuple[str, str] | None = None
    if entry is not None and verdict in ("delivered", "no-listener", "leaves-host"):
        seen = (entry.reply[2], hostport(entry.reply[0], entry.reply[1]))
    elif any("untracked" in r for h in compare_static.hops if h.decision
             for r in h.decision.rewrites):
        notes.append("the probe is untracked (notrack): conntrack keeps no entry for it")
    elif verdict in ("delivered", "no-listener", "leaves-host"):
        notes.append("conntrack holds no entry for the probe in the host (a refused "
                     "connection's entry goes at once)")
    if compare_static.summary.endswith(STATE_NOTE):
        notes.append(f"the static verdict comes from the flow's conntrack entry or from its "
                     f"reply, which a probe (a new flow, stopped at the host's edge) cannot "
                     f"meet: it is compared with the static trace of the request alone "
                     f"({compare_static.verdict})")
    reasons = core.agreement(
        core.static_steps(compare_static, "host"), steps, compare_static.verdict, verdict,
        (compare_static.seen_source, compare_static.seen_destination), seen)
    hops = [{**s.as_dict(), "hook": hooks.get((s.family, s.table, s.chain), "")}
            for s in steps]
    return {"probe": {"protocol": packet.l4proto, "source": hostport(src, sport),
                      "destination": hostport(packet.daddr, packet.dport),
                      "outcome": outcome},
            "hops": hops, "verdict": verdict, "summary": summary,
            "stopped_at": (stopped.chain if stopped else None),
            "seen_source": seen[0] if seen else None,
            "seen_destination": seen[1] if seen else None,
            "agrees": not reasons, "disagreements": reasons, "notes": notes,
            "events": [{"id": e.trace_id, "family": e.family, "table": e.table,
                        "chain": e.chain, "type": e.kind, "handle": e.handle,
                        "verdict": e.verdict, "iif": e.iif, "oif": e.oif,
                        "network": e.network.hex(), "transport": e.transport.hex()}
                       for e in events],
            "static_ingress": compare_static.hops[0].detail if outside else None,
            "static_verdict": static.verdict}


def render(live: dict[str, Any]) -> str:
    p = live["probe"]
    lines = [f"live: the kernel's trace of one {p['protocol']} probe {p['source']} -> "
             f"{p['destination']} ({p['outcome']})"]
    for number, h in enumerate(live["hops"], 1):
        rule = f" by \"{h['rule']}\"" if h["rule"] else ""
        where = f" (in {h['rule_chain']})" if h["rule_chain"] != h["chain"] else ""
        lines.append(f"{number:3}  {h['family']} {h['table']} {h['chain']} ({h['hook']}): "
                     f"{h['verdict']}{rule}{where}")
    seen = f" (seen as {live['seen_source']} -> {live['seen_destination']}, from conntrack)" \
        if live["seen_source"] else ""
    lines.append(f"live verdict: {live['verdict']}: {live['summary']}{seen}")
    for note in live["notes"]:
        lines.append(f"note: {note}")
    if live["agrees"]:
        lines.append("static and live agree")
    else:
        lines += ["static and live DISAGREE:"] + [f"  - {r}" for r in live["disagreements"]]
    return "\n".join(lines)

