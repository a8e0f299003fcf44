"""`portway trace --live`: one real probe, and the kernel's own trace of it.

The probe is a TCP SYN (or one UDP datagram) from the source namespace; for an
outside source, from a short-lived probe namespace joined to the host by a
temporary veth and addressed as the client. Short-lived tables of portway's
own select the probe by its 5-tuple (`meta nftrace set 1`; marks do not cross
namespaces) and stop it in each non-portway interface's egress hook, so it
never leaves the host. The kernel's trace events (nfnetlink) and conntrack's
final tuple are read back and compared with the static reasoning. The tables,
namespace and veth are removed whatever happens.

A probe an overlay network's VXLAN device sends to another host is followed there
where that host can be observed from here (its host namespace is on this machine):
the same tables in its namespace, and its trace events read there too. Where it
cannot, the probe is stopped in the egress hook of the interface that would carry
the tunnel away, and the output says so.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portway.core import trace as core
from portway.core.nftsim import Packet, hostport, rule_text
from portway.core.overlay import VXLAN_PORT
from portway.errors import KernelError
from portway.kernel import links, netns, nftrace, observe, rtnl
from portway.kernel.nft import Nft
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
WHY_STOP_TUNNEL = "portway trace --live: the probe stops here instead of leaving the host " \
    "in VXLAN"


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


@dataclass
class Far:
    """The other host of a tunnelled probe: its namespace on this machine and its static
    half, where it can be followed; else why not."""

    host: str
    netns: str = ""
    trace: core.Trace | None = None
    why: str = ""


# Where the inner packet's transport header starts in a VXLAN datagram, counted from the
# outer transport (UDP) header: UDP 8, VXLAN 8, the inner Ethernet header 14, then the
# inner IP header (the probe's has no options): by the inner packet's IP version.
INNER_TRANSPORT = {4: 8 + 8 + 14 + 20, 6: 8 + 8 + 14 + 40}
INNER_PROTOCOL = {4: 8 + 8 + 14 + 9, 6: 8 + 8 + 14 + 6}  # its protocol / next header
L4 = {"tcp": 6, "udp": 17}


def _raw(offset: int, length: int) -> dict[str, Any]:
    return {"payload": {"base": "th", "offset": offset * 8, "len": length * 8}}


def _reply_match(proto: str, sport: int, dport: int, daddr: str) -> list[Any]:
    """The probe's reply: from daddr's dport back to the probe's sport."""
    def eq(left: Any, right: Any) -> dict[str, Any]:
        return {"match": {"op": "==", "left": left, "right": right}}

    ip = "ip" if ipaddress.ip_address(daddr).version == 4 else "ip6"
    return [eq({"meta": {"key": "l4proto"}}, proto),
            eq({"payload": {"protocol": "th", "field": "sport"}}, dport),
            eq({"payload": {"protocol": "th", "field": "dport"}}, sport),
            eq({"payload": {"protocol": ip, "field": "saddr"}}, daddr)]


def trace_tables(proto: str, sport: int, dport: int, daddr: str, saddr: str | None,
                 egress_devices: list[str], tunnelled: int | None = None,
                 reply: bool = False, answer: tuple[int, int] | None = None
                 ) -> list[dict[str, Any]]:
    """The short-lived tables: trace the probe from its first hook, stop it at the edge;
    tunnelled (the inner packet's IP version): also where it leaves inside VXLAN; reply:
    trace its reply too (from the destination's port back to the probe's)."""
    selects = [_match(proto, sport, dport, daddr, saddr)]
    if answer is not None:
        # answer (the server's port, the probe's source port): the reply by its ports
        # alone, where it comes back to this host (its addresses are the NATed ones).
        selects.append([
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}},
                       "right": answer[0]}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                       "right": answer[1]}}])
    if reply:
        selects.append(_reply_match(proto, sport, dport, daddr))
    nftrace_on = {"mangle": {"key": {"meta": {"key": "nftrace"}}, "value": 1}}
    cmds: list[dict[str, Any]] = []
    for family, hooks in (("inet", ("prerouting", "output")), ("bridge", ("prerouting",))):
        cmds.append({"add": {"table": {"family": family, "name": TABLE}}})
        for hook in hooks:
            cmds.append({"add": {"chain": {"family": family, "table": TABLE, "name": hook,
                                           "type": "filter", "hook": hook, "prio": PRIORITY,
                                           "policy": "accept"}}})
            for select in selects:
                cmds.append({"add": {"rule": {"family": family, "table": TABLE,
                                              "chain": hook, "expr": [*select, nftrace_on]}}})
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
        if tunnelled is not None:
            # The probe inside a VXLAN datagram: its own headers, at their offsets. (The
            # encapsulation clears its trace flag: set again, so the drop is reported.)
            inner = INNER_TRANSPORT[tunnelled]
            carried = [
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "th",
                                                            "field": "dport"}},
                           "right": VXLAN_PORT}},
                {"match": {"op": "==", "left": _raw(INNER_PROTOCOL[tunnelled], 1),
                           "right": L4[proto]}},
                {"match": {"op": "==", "left": _raw(inner, 2), "right": sport}},
                {"match": {"op": "==", "left": _raw(inner + 2, 2), "right": dport}}]
            cmds += [{"add": {"rule": {"family": "netdev", "table": TABLE, "chain": chain,
                                       "expr": [*carried, nftrace_on]}}},
                     {"add": {"rule": {"family": "netdev", "table": TABLE, "chain": chain,
                                       "expr": [*carried, {"drop": None}],
                                       "comment": WHY_STOP_TUNNEL}}}]
    return cmds


def _drop_tables(engine: Engine | Observer) -> None:
    for family in ("inet", "bridge", "netdev"):
        if engine.nft.list_table(family, TABLE) is not None:
            engine.fw.teardown([{"delete": {"table": {"family": family, "name": TABLE}}}])


class Followed:
    """The probe's tables and a trace listener in the namespace of the host the tunnel
    goes to (a namespace on this machine), made from a thread there; the listing of its
    rules, to name the ones the kernel reports by handle. close() removes the tables."""

    def __init__(self, far: Far, tables: Any) -> None:
        self.far = far

        def there() -> tuple[Nft, nftrace.TraceListener, list[dict[str, Any]]]:
            nft = Nft()
            try:
                items = nft.list_ruleset()
                with rtnl.Dumper() as dumper:
                    devices = [link.ifname for link in dumper.links()
                               if link.ifname != "lo" and link.kind != "bridge"
                               and not link.master]
                listener = nftrace.TraceListener()
                try:
                    nft.apply(tables(devices))
                except BaseException:
                    listener.close()
                    raise
            except BaseException:
                nft.close()
                raise
            return nft, listener, items

        self.nft, self.listener, items = netns.in_netns(netns.netns_path(far.netns), there)
        self.rules = {(r["family"], r["table"], int(r.get("handle", 0))): rule_text(r)
                      for r in (i["rule"] for i in items if "rule" in i)}
        self.hooks = {(c["family"], c["table"], c["name"]): c.get("hook", "")
                      for c in (i["chain"] for i in items if "chain" in i)}

    def close(self) -> None:
        try:
            for family in ("inet", "bridge", "netdev"):
                if self.nft.list_table(family, TABLE) is not None:
                    self.nft.apply([{"delete": {"table": {"family": family, "name": TABLE}}}])
        finally:
            self.listener.close()
            self.nft.close()


def run(engine: Engine | Observer, world: core.World, src_key: str, packet: Packet,
        static: core.Trace, label: str, destination: str,
        far: Far | None = None) -> dict[str, Any]:
    """far: the other host where the static trace went through a VXLAN tunnel."""
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
    follow = far if far is not None and far.trace is not None and far.netns else None
    followed: Followed | None = None
    remote_events: list[nftrace.TraceEvent] = []
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
        tunnelled = packet.version if static.tunnel is not None and follow is None else None
        if tunnelled is not None and static.tunnel is not None:
            # (The underlay's interface may lead to a namespace modelled here: stopped
            # all the same, where the tunnel would leave.)
            route = host.lookup(ipaddress.ip_address(static.tunnel.vtep))
            if route is not None and route.dev not in devices:
                devices.append(route.dev)
        # Followed to the other host: the reply is traced too, there and back here.
        engine.nft.apply(trace_tables(packet.l4proto, sport, packet.dport, str(packet.daddr),
                                      str(packet.saddr) if outside else None, devices,
                                      tunnelled, reply=follow is not None,
                                      answer=None if follow is not None else
                                      (_server_port(static, packet), sport)))
        if follow is not None:
            followed = Followed(follow, lambda devices: trace_tables(
                packet.l4proto, sport, packet.dport, str(packet.daddr),
                str(packet.saddr) if outside else None, devices, reply=True))
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
        if followed is not None:
            remote_events = followed.listener.read()
        socket_drops = nftrace.udp_in_errors() - udp_errors
        # (the probe's entry only: the kernel filters the table by its destination)
        connections = nftrace.connections(toward=(packet.l4proto, str(packet.daddr),
                                                  packet.dport))
    finally:
        listener.close()
        try:
            if followed is not None:
                followed.close()
        finally:
            _finish(engine, mark, outside, probe_if, probe_ns)
    report = _report(events, connections, rules, hooks, outcome, local, sport, packet,
                     static, compare_static, outside, socket_drops, unanswered, far,
                     remote_events, followed)
    return report


def _finish(engine: Engine | Observer, mark: tuple[int | None, int], outside: bool,
            probe_if: str, probe_ns: str) -> None:
    """The probe's tables, veth and namespace on this host gone."""
    try:
        _drop_tables(engine)
        # The ruleset is again what the static trace listed: the next trace need not
        # list 10,000 published ports again.
        engine.nft.keep_listing(mark)
    finally:
        if outside:
            links.delete_link(engine.host, probe_if)
            netns.delete_netns(probe_ns)


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
            socket_drops: int = 0, unanswered: list[str] | None = None,
            far: Far | None = None, remote_events: list[nftrace.TraceEvent] | None = None,
            followed: Followed | None = None) -> dict[str, Any]:
    # (The reply is selected too: by its ports here, by its addresses where the probe is
    # followed to another host.)
    mine_all, mine_reply = by_direction(events, sport)
    theirs_all, theirs_reply = by_direction(remote_events or [], sport)
    mine, theirs = first_packet(mine_all), first_packet(theirs_all)

    def stop(evs: list[nftrace.TraceEvent]) -> nftrace.TraceEvent | None:
        return next((e for e in evs if e.table == TABLE and e.family == "netdev"
                     and e.verdict == "drop"), None)

    def fold(evs: list[nftrace.TraceEvent], named: dict[tuple[str, str, int], str]
             ) -> list[core.KernelStep]:
        return core.fold_events([{"family": e.family, "table": e.table, "chain": e.chain,
                                  "kind": e.kind, "handle": e.handle, "verdict": e.verdict}
                                 for e in evs if e.table != TABLE], named)

    stopped, stopped_there = stop(mine), stop(theirs)
    steps = fold(mine, rules)
    far_steps = fold(theirs, followed.rules) if followed is not None else []
    drop = next((s for s in steps if s.verdict.split()[-1] == "drop"), None)
    far_drop = next((s for s in far_steps if s.verdict.split()[-1] == "drop"), None)
    notes: list[str] = []
    tunnel = static.tunnel
    src = packet.saddr if outside else ipaddress.ip_address(local[0].partition("%")[0])
    reply: dict[str, Any] | None = None
    back: list[core.KernelStep] = []  # the reply's chains in this host, not followed
    if followed is not None and far is not None:
        reply = _reply(first_reply(theirs_reply), first_reply(mine_reply), rules, hooks,
                       followed, far, packet, src, sport, outcome)
    else:
        back = fold(first_reply(mine_reply), rules)
    back_drop = next((s for s in back if s.verdict.split()[-1] == "drop"), None)
    if back:
        reply = {"what": f"{packet.l4proto} reply {hostport(packet.daddr, packet.dport)} -> "
                         f"{hostport(src, sport)}",
                 "hops": [{**s.as_dict(), "hook": hooks.get((s.family, s.table, s.chain), ""),
                           "host": ""} for s in back],
                 "why": "" if back_drop is None else
                 f"the reply was dropped on this host by {back_drop.family} "
                 f"{back_drop.table} {back_drop.chain}: {back_drop.rule or back_drop.verdict}",
                 "dropped": back_drop is not None}
    if drop is not None:
        verdict = "dropped"
        summary = f"dropped by {drop.family} {drop.table} {drop.chain}: {drop.rule or drop.verdict}"
    elif far_drop is not None and far is not None:
        verdict = "dropped"
        summary = f"dropped on host {far.host} by {far_drop.family} {far_drop.table} " \
                  f"{far_drop.chain}: {far_drop.rule or far_drop.verdict}"
    elif stopped is not None and tunnel is not None and far is not None:
        verdict = "leaves-host"
        summary = f"reached the host's edge inside the VXLAN tunnel to host {far.host}; " \
                  f"stopped there by the trace, not followed there ({far.why})"
    elif stopped is not None:
        verdict, summary = "leaves-host", "reached the host's edge; stopped there by the trace"
    elif stopped_there is not None and far is not None:
        verdict = "leaves-host"
        summary = f"reached host {far.host}'s edge (after the VXLAN hop); stopped there by " \
                  "the trace"
    elif outcome in ("timeout", "unreachable") and reply is not None and reply["dropped"]:
        verdict, summary = "dropped", f"delivered, but {reply['why']}"
    elif outcome in ("connected", "answered"):
        verdict, summary = "delivered", f"the probe's {packet.l4proto} {outcome}"
    elif outcome == "timeout" and back:
        last = back[-1]
        verdict = "dropped"
        summary = f"delivered, but the reply went no further on this host " \
                  f"than {last.family} {last.table} {last.chain} " \
                  f"({hooks.get((last.family, last.table, last.chain), '')}), which let it " \
                  "pass: the kernel dropped it after that hook, not a netfilter rule (the " \
                  "reverse path filter, a martian, no route)"
    elif outcome == "timeout" and _beyond(compare_static):
        verdict = "dropped"
        summary = f"no answer ({outcome}), and no rule of the host dropped it: static trace " \
                  f"drops it in {_beyond(compare_static)}, whose hooks the live trace does " \
                  "not see"
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
    if followed is not None and far is not None and far.trace is not None:
        # Each host's chains against its own half; the verdict against the far end's.
        reasons = core.agreement(core.static_steps(compare_static, "host"), steps, "", "",
                                 ("", ""), None)
        reasons += [f"on host {far.host}: {r}" for r in core.agreement(
            core.static_steps(_inner(far.trace), f"host {far.host}"), far_steps,
            far.trace.verdict,
            verdict, (far.trace.seen_source, far.trace.seen_destination), None)]
        notes.append(f"the probe was followed through the VXLAN tunnel to host {far.host} "
                     f"(its namespace {far.netns} is on this machine): its hooks there are "
                     "listed after this host's, then its reply's, there and back here")
    else:
        reasons = core.agreement(
            core.static_steps(compare_static, "host"), steps, compare_static.verdict,
            verdict, (compare_static.seen_source, compare_static.seen_destination), seen)
        if core.route_silent(compare_static.verdict, verdict, steps):
            notes.append(core.ROUTE_SILENT_NOTE)
        if back and not compare_static.summary.endswith(STATE_NOTE):
            # The reply's chains in the host against the static reply's.
            told = compare_static.reply_hops or [h for h in compare_static.hops
                                                 if h.kind == "reply"]
            lost = "dropped" if compare_static.reply_lost else ""
            reasons += [f"the reply: {r}" for r in core.agreement(
                core.static_steps(replace(compare_static, hops=[
                    replace(h, kind="answer") for h in told]), "host"),
                back, lost, lost if back_drop is None else "dropped", ("", ""), None)]
    hops = [{**s.as_dict(), "hook": hooks.get((s.family, s.table, s.chain), ""), "host": ""}
            for s in steps]
    if followed is not None and far is not None:
        hops += [{**s.as_dict(), "hook": followed.hooks.get((s.family, s.table, s.chain), ""),
                  "host": far.host} for s in far_steps]
    if reply is not None and reply["why"] and not reply["dropped"]:
        notes.append(reply["why"])
    return {"probe": {"protocol": packet.l4proto, "source": hostport(src, sport),
                      "destination": hostport(packet.daddr, packet.dport),
                      "outcome": outcome},
            "hops": hops, "verdict": verdict, "summary": summary, "reply": reply,
            "stopped_at": (stopped.chain if stopped else stopped_there.chain
                           if stopped_there else None),
            "followed": None if far is None else {
                "host": far.host, "netns": far.netns, "followed": followed is not None,
                "why": "" if followed is not None else far.why},
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


def by_direction(events: list[nftrace.TraceEvent], sport: int
                 ) -> tuple[list[nftrace.TraceEvent], list[nftrace.TraceEvent]]:
    """The probe's events and its reply's, told apart by the transport header each
    chain's first event carries (the probe's source port is the reply's destination
    port); the events after it, up to the next header, go with it."""
    request: list[nftrace.TraceEvent] = []
    reply: list[nftrace.TraceEvent] = []
    into = request
    for e in events:
        if e.network and len(e.transport) >= 4:
            into = reply if int.from_bytes(e.transport[2:4], "big") == sport and \
                int.from_bytes(e.transport[0:2], "big") != sport else request
        into.append(e)
    return request, reply


def first_reply(events: list[nftrace.TraceEvent]) -> list[nftrace.TraceEvent]:
    """The events of the reply's first packet: for TCP the SYN-ACK or the RST (the
    connection's later segments, the answer's ACK and FIN, are left out), else the
    first datagram's."""
    out: list[nftrace.TraceEvent] = []
    keep = True
    for e in events:
        if e.network:
            if e.protocol() == 6 and len(e.transport) >= 14:
                flags = e.transport[13]
                keep = flags & 0x12 == 0x12 or bool(flags & 0x04)
            if keep and out and e.chain == out[0].chain and e.family == out[0].family \
                    and e.table == out[0].table:
                # The first packet's walk is over: a second one begins (a SYN-ACK sent
                # again, through the same chains), and none after it is the first's.
                break
        if keep and not (e.kind == "rule" and e.handle is None):
            out.append(e)
    return [e for e in out if e.table != TABLE]


def _reply(there: list[nftrace.TraceEvent], here: list[nftrace.TraceEvent],
           rules: dict[tuple[str, str, int], str], hooks: dict[tuple[str, str, str], str],
           followed: Followed, far: Far, packet: Packet, src: IPAddress, sport: int,
           outcome: str) -> dict[str, Any]:
    """The reply's walk, as the kernel traced it: through the other host's hooks, into the
    tunnel, then this host's; where it was not seen, why, and where the live view of it
    stops."""
    def steps(evs: list[nftrace.TraceEvent], named: dict[tuple[str, str, int], str]
              ) -> list[core.KernelStep]:
        return core.fold_events([{"family": e.family, "table": e.table, "chain": e.chain,
                                  "kind": e.kind, "handle": e.handle, "verdict": e.verdict}
                                 for e in evs], named)

    far_steps, my_steps = steps(there, followed.rules), steps(here, rules)
    hops = [{**s.as_dict(), "hook": followed.hooks.get((s.family, s.table, s.chain), ""),
             "host": far.host} for s in far_steps]
    hops += [{**s.as_dict(), "hook": hooks.get((s.family, s.table, s.chain), ""), "host": ""}
             for s in my_steps]
    what = f"{packet.l4proto} reply {hostport(packet.daddr, packet.dport)} -> " \
        f"{hostport(src, sport)}"
    why = ""
    dropped = next((h for h in hops if h["verdict"].split()[-1] == "drop"), None)
    if dropped is not None:
        where = f"host {dropped['host']}" if dropped["host"] else "this host"
        why = f"the reply was dropped on {where} by {dropped['family']} {dropped['table']} " \
              f"{dropped['chain']}: {dropped['rule'] or dropped['verdict']}"
    elif not hops and outcome in ("connected", "refused", "answered"):
        why = (f"the reply came back ({outcome}) but no hook of host {far.host} or of this "
               "host saw it: the live view of the reply stops at the far container "
               "(an answer from its own namespace, before any hook of its host)")
    elif not hops and packet.l4proto == "udp":
        why = ("no reply came back: the live view stops at the probe (a UDP datagram "
               "without an answer, or whose answer is an ICMP error, which the trace does "
               "not select)")
    elif not hops:
        why = f"no reply came back ({outcome}): the live view stops at the probe"
    elif not far_steps:
        why = f"the reply was not seen on host {far.host}, only back on this host"
    elif not my_steps:
        why = (f"the reply was traced on host {far.host} into the tunnel, but not seen "
               "back on this host: the live view of it stops at the VXLAN hop")
    return {"what": what, "hops": hops, "why": why, "dropped": dropped is not None}


def _server_port(static: core.Trace, packet: Packet) -> int:
    """The port the server answers from: where the static trace delivered the request
    (after any DNAT), else the one asked for."""
    port = static.seen_destination.rpartition(":")[2]
    return int(port) if port.isdigit() else packet.dport


def _beyond(static: core.Trace) -> str:
    """Where static trace drops the request, if that is in a namespace other than the
    host's (a container's, a lab's), whose hooks the live trace does not see; else ""."""
    if static.verdict != "dropped" or not static.hops or static.hops[-1].kind == "reply":
        return ""
    where = static.hops[-1].where.split(":")[0]
    return where if where.startswith(("namespace ", "container ")) else ""


def _inner(far: core.Trace) -> core.Trace:
    """The other host's half from the decapsulation on: the kernel's trace there sees the
    inner packet only (the probe is selected by its own 5-tuple, and encapsulation clears
    its trace flag), not the VXLAN datagram's hooks before."""
    at = next((i for i, h in enumerate(far.hops)
               if h.kind == "vxlan" and h.detail.startswith("decapsulated")), None)
    return far if at is None else replace(far, hops=far.hops[at + 1:])


def render(live: dict[str, Any]) -> str:
    p = live["probe"]
    lines = [f"live: the kernel's trace of one {p['protocol']} probe {p['source']} -> "
             f"{p['destination']} ({p['outcome']})"]
    for number, h in enumerate(live["hops"], 1):
        rule = f" by \"{h['rule']}\"" if h["rule"] else ""
        where = f" (in {h['rule_chain']})" if h["rule_chain"] != h["chain"] else ""
        host = f"host {h['host']}: " if h.get("host") else ""
        lines.append(f"{number:3}  {host}{h['family']} {h['table']} {h['chain']} "
                     f"({h['hook']}): {h['verdict']}{rule}{where}")
    reply = live.get("reply")
    if reply and reply["hops"]:
        lines.append(f"  its {reply['what']}, traced back:")
        for number, h in enumerate(reply["hops"], len(live["hops"]) + 1):
            rule = f" by \"{h['rule']}\"" if h["rule"] else ""
            where = f" (in {h['rule_chain']})" if h["rule_chain"] != h["chain"] else ""
            host = f"host {h['host']}: " if h.get("host") else ""
            lines.append(f"{number:3}  {host}{h['family']} {h['table']} {h['chain']} "
                         f"({h['hook']}): {h['verdict']}{rule}{where}")
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

