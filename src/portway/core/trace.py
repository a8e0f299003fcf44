"""`portway trace`, static mode: the path of a new connection, worked out hop by hop.

Pure: the kernel state comes in as a World (interfaces, addresses, routes,
listening sockets and the nftables ruleset of each namespace, veth peers,
bridge ports, bridge netfilter), recorded by the engine; the reasoning here
follows what Linux does with the first packet of a connection:

  source namespace: route lookup, output and postrouting hooks
  veth pair -> bridge port: bridge prerouting; to the bridge's own MAC (routed)
      or to another port (bridged: the IP hooks too when bridge netfilter is on)
  host: prerouting (DNAT), route lookup (local or forward), forward, postrouting
      (masquerade), out of a bridge port or the uplink
  destination namespace: prerouting, input, a listening socket or not

Every netfilter hook lists every base chain on it, of every table and family,
with the rule that decided (its comment, if it has one) or the chain's policy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from portway.core.nftsim import LOOPBACK, Decision, Packet, Ruleset
from portway.model.types import IPAddress

IP_FAMILIES = ("ip", "inet")


@dataclass(frozen=True)
class Iface:
    name: str
    index: int
    kind: str = ""
    mac: str = ""
    up: bool = True
    addrs: tuple[ipaddress.IPv4Interface, ...] = ()
    master: str = ""
    peer: tuple[str, str] | None = None  # (namespace key, ifname) of a veth's other end
    route_localnet: bool = False
    link_index: int = 0  # a veth's other end's index, in its own namespace


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Network
    dev: str
    gateway: IPAddress | None = None
    prefsrc: IPAddress | None = None
    kind: str = "unicast"  # unicast, blackhole, unreachable, prohibit
    metric: int = 0

    def text(self, daddr: IPAddress) -> str:
        if self.kind != "unicast":
            return f"{self.kind} {self.dst}"
        via = f" via {self.gateway}" if self.gateway else ""
        src = f" src {self.prefsrc}" if self.prefsrc else ""
        return f"{daddr}{via} dev {self.dev}{src}"


@dataclass
class Space:
    """One network namespace as observed."""

    key: str
    label: str
    ifaces: list[Iface]
    routes: list[Route]
    listeners: set[tuple[str, str, int]] = field(default_factory=set)  # proto, addr, port
    ruleset: list[dict[str, Any]] = field(default_factory=list)
    forwarding: bool = False
    # (device, address) -> (MAC, state): the neighbour (ARP) table
    neighbours: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # (bridge, MAC) -> port: what each bridge has learned
    fdb: dict[tuple[str, str], str] = field(default_factory=dict)

    def neighbour(self, dev: str, addr: IPAddress) -> str:
        """How the next hop's MAC is known: from the table, or by asking first."""
        found = self.neighbours.get((dev, str(addr)))
        if found is None or found[1] in ("failed", "incomplete"):
            return f"{addr} is not in the neighbour table of {dev}: ARP asks first"
        return f"neighbour {addr} is {found[0]} ({found[1]})"

    def learned(self, bridge: str, mac: str, port: str) -> str:
        have = self.fdb.get((bridge, mac.lower()))
        if have == port:
            return f"FDB: {mac} learned on port {port}"
        if have is None:
            return f"{mac} is not in the FDB yet: the bridge floods the frame to every port, " \
                   f"and {port}'s holder answers"
        return f"FDB: {mac} learned on port {have}, not {port} (moved?)"

    def iface(self, name: str) -> Iface | None:
        return next((i for i in self.ifaces if i.name == name), None)

    def local(self) -> frozenset[IPAddress]:
        return frozenset(a.ip for i in self.ifaces for a in i.addrs)

    def first_address(self, dev: str) -> IPAddress | None:
        iface = self.iface(dev)
        return iface.addrs[0].ip if iface and iface.addrs else None

    def lookup(self, daddr: IPAddress) -> Route | None:
        """The main table, longest prefix first (policy routing is not modelled)."""
        best: Route | None = None
        for r in self.routes:
            if daddr in r.dst and (best is None or r.dst.prefixlen > best.dst.prefixlen or (
                    r.dst.prefixlen == best.dst.prefixlen and r.metric < best.metric)):
                best = r
        return best


def pair_veths(host: Space, other: Space) -> None:
    """Join other's veths to the host's where each end names the other's index (for
    namespaces portway did not make, whose peers it does not know from its store)."""
    for i, inner in enumerate(other.ifaces):
        if inner.kind != "veth" or inner.peer is not None:
            continue
        matches = [j for j, h in enumerate(host.ifaces) if h.kind == "veth"
                   and h.index == inner.link_index and h.link_index == inner.index]
        if len(matches) == 1:
            j = matches[0]
            other.ifaces[i] = replace(inner, peer=(host.key, host.ifaces[j].name))
            host.ifaces[j] = replace(host.ifaces[j], peer=(other.key, inner.name))


@dataclass
class World:
    host: Space
    spaces: dict[str, Space]  # container namespaces by key
    bridge_nf: bool = True  # net.bridge.bridge-nf-call-iptables in the host

    def space(self, key: str) -> Space:
        return self.host if key == self.host.key else self.spaces[key]


@dataclass(frozen=True)
class Hop:
    kind: str  # route, veth, bridge, hook, nat, socket, leave, drop
    where: str
    detail: str
    decision: Decision | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "where": self.where, "detail": self.detail}
        if self.decision is not None:
            d = self.decision
            out.update(family=d.family, table=d.table, chain=d.chain, hook=d.hook,
                       priority=d.priority, verdict=d.verdict, rule=d.rule,
                       rule_chain=d.rule_chain, handle=d.handle)
            if d.uncertain:
                out["uncertain"] = list(d.uncertain)
        return out


@dataclass
class Trace:
    source: str
    destination: str
    protocol: str
    hops: list[Hop] = field(default_factory=list)
    verdict: str = ""
    summary: str = ""
    seen_source: str = ""
    seen_destination: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination,
                "protocol": self.protocol, "verdict": self.verdict, "summary": self.summary,
                "seen_source": self.seen_source, "seen_destination": self.seen_destination,
                "hops": [h.as_dict() for h in self.hops]}


class _Done(Exception):
    pass


class _Walk:
    def __init__(self, world: World, trace: Trace) -> None:
        self.world = world
        self.trace = trace
        self.rulesets: dict[str, Ruleset] = {}

    # bookkeeping

    def hop(self, kind: str, where: str, detail: str, decision: Decision | None = None) -> None:
        self.trace.hops.append(Hop(kind, where, detail, decision))

    def end(self, verdict: str, summary: str, packet: Packet | None = None) -> None:
        self.trace.verdict, self.trace.summary = verdict, summary
        if packet is not None:
            self.trace.seen_source = str(packet.saddr)
            self.trace.seen_destination = f"{packet.daddr}:{packet.dport}"
        raise _Done

    def ruleset(self, space: Space) -> Ruleset:
        if space.key not in self.rulesets:
            self.rulesets[space.key] = Ruleset(space.ruleset)
        return self.rulesets[space.key]

    def hook(self, space: Space, families: tuple[str, ...], hook: str,
             packet: Packet, nat: bool = True) -> Packet:
        masq = {i.name: a for i in space.ifaces if (a := space.first_address(i.name))}
        route = space.lookup(packet.daddr) if hook == "postrouting" else None
        if route is not None and route.prefsrc is not None:
            masq[route.dev] = route.prefsrc
        packet, decisions, alive = self.ruleset(space).run_hook(
            families, hook, packet, space.local(), masq, nat)
        for d in decisions:
            detail = f"{hook}: {d.verdict}"
            if d.rule:
                detail += f" by \"{d.rule}\""
                if d.rule_chain != d.chain:
                    detail += f" (in {d.rule_chain})"
            for rewrite in d.rewrites:
                detail += f"; {rewrite}"
            if d.uncertain:
                detail += f"; note: {'; '.join(d.uncertain)}"
            self.hop("hook", f"{space.label}: {d.where}", detail, d)
        if not alive:
            last = decisions[-1]
            self.end("dropped", f"dropped in {space.label} by {last.where}: "
                     f"{last.rule or last.verdict}", packet)
        return packet

    # the path

    def from_namespace(self, space: Space, packet: Packet) -> None:
        """A process in space opens the connection."""
        route = self.route(space, packet)
        if packet.saddr == ipaddress.IPv4Address(0):
            src = packet.daddr if route is None else (route.prefsrc
                                                      or space.first_address(route.dev))
            packet = replace(packet, saddr=src or packet.saddr)
        packet = replace(packet, oif=route.dev if route else "lo")
        before = packet.daddr
        packet = self.hook(space, IP_FAMILIES, "output", packet)
        if packet.daddr != before:  # DNAT in output: the kernel routes again
            route = self.route(space, packet, again=True)
            packet = replace(packet, oif=route.dev if route else "lo")
        packet = self.hook(space, IP_FAMILIES, "postrouting", packet)
        if route is None:
            # Over loopback: prerouting again (the connection's NAT is already set), input.
            packet = self.hook(space, IP_FAMILIES, "prerouting",
                               replace(packet, iif="lo", oif=""), nat=False)
            self.to_local(space, packet)
            return
        self.egress(space, route, packet)

    def route(self, space: Space, packet: Packet, again: bool = False,
              iif: str | None = None) -> Route | None:
        """None for a local destination; ends the walk when there is no way."""
        what = "route lookup again (destination rewritten)" if again else "route lookup"
        if packet.daddr in space.local() or packet.daddr in LOOPBACK:
            self.hop("route", space.label, f"{what}: {packet.daddr} is local")
            return None
        route = space.lookup(packet.daddr)
        from_iif = f" from {packet.saddr} iif {iif}" if iif else ""
        if route is None:
            self.hop("route", space.label, f"{what}: no route to {packet.daddr}{from_iif}")
            self.end("no-route", f"{space.label} has no route to {packet.daddr}", packet)
        assert route is not None
        if route.kind != "unicast":
            self.hop("route", space.label, f"{what}: {route.text(packet.daddr)}")
            self.end("no-route" if route.kind != "blackhole" else "dropped",
                     f"{space.label} routes {packet.daddr} to {route.kind}", packet)
        dev = space.iface(route.dev)
        how = "" if dev is None or dev.kind == "bridge" else \
            f"; {space.neighbour(route.dev, route.gateway or packet.daddr)}"
        self.hop("route", space.label,
                 f"{what}: {route.text(packet.daddr)}{from_iif}{how}")
        return route

    def to_local(self, space: Space, packet: Packet) -> None:
        packet = self.hook(space, IP_FAMILIES, "input", packet)
        self.socket(space, packet)

    def socket(self, space: Space, packet: Packet) -> None:
        for addr in (str(packet.daddr), "0.0.0.0", "::"):
            if (packet.l4proto, addr, packet.dport) in space.listeners:
                self.hop("socket", space.label, f"a {packet.l4proto} socket listens on "
                         f"{addr}:{packet.dport}; it sees the connection from "
                         f"{packet.saddr}:{packet.sport}")
                self.end("delivered", f"delivered to {space.label}, "
                         f"{packet.daddr}:{packet.dport}/{packet.l4proto}", packet)
        answer = "TCP RST" if packet.l4proto == "tcp" else "ICMP port unreachable"
        self.hop("socket", space.label, f"nothing listens on {packet.daddr}:{packet.dport}/"
                 f"{packet.l4proto}: the answer is {answer}")
        self.end("no-listener", f"reaches {space.label}, but nothing listens on "
                 f"{packet.dport}/{packet.l4proto} ({answer})", packet)

    def egress(self, space: Space, route: Route, packet: Packet) -> None:
        iface = space.iface(route.dev)
        nexthop = route.gateway or packet.daddr
        if iface is None:
            self.end("dropped", f"{route.dev} does not exist in {space.label}", packet)
        assert iface is not None
        if iface.kind == "bridge" and space is self.world.host:
            self.bridge_out(iface, nexthop, packet)
        elif iface.peer is not None:
            peer_space = self.world.space(iface.peer[0])
            peer = peer_space.iface(iface.peer[1])
            self.hop("veth", f"{iface.name} -> {iface.peer[1]}",
                     f"veth pair: {iface.name} #{iface.index} in {space.label} -> "
                     f"{iface.peer[1]} #{peer.index if peer else '?'} in {peer_space.label}")
            if peer is None:
                self.end("dropped", f"the veth's other end {iface.peer[1]} is missing", packet)
            assert peer is not None
            if peer.master:
                self.bridge_in(peer_space, peer, nexthop, packet, iface.mac)
            elif peer_space is self.world.host:
                self.host_in(packet, peer.name)
            else:
                self.ingress(peer_space, peer.name, packet)
        elif space is self.world.host:
            self.hop("leave", space.label, f"out of {iface.name} towards {nexthop}: leaves "
                     f"the host with source {packet.saddr}")
            self.end("leaves-host", f"leaves the host through {iface.name}; the far end sees "
                     f"{packet.saddr}:{packet.sport}", packet)
        else:
            self.end("leaves-host", f"leaves {space.label} through {iface.name}", packet)

    def holder(self, bridge: str, addr: IPAddress) -> tuple[Space, Iface, Iface] | None:
        """The container end holding addr behind a port of bridge, with that port."""
        host = self.world.host
        for port in host.ifaces:
            if port.master != bridge or port.peer is None:
                continue
            space = self.world.space(port.peer[0])
            inner = space.iface(port.peer[1])
            if inner is not None and any(a.ip == addr for a in inner.addrs):
                return space, inner, port
        return None

    def bridge_out(self, bridge: Iface, nexthop: IPAddress, packet: Packet) -> None:
        """The host sends through its bridge to the port behind which nexthop lives."""
        host = self.world.host
        space, inner, port = self.port_of(bridge, nexthop, packet)
        self.hop("bridge", bridge.name, f"{host.neighbour(bridge.name, nexthop)}; "
                 f"{host.learned(bridge.name, inner.mac, port.name)} ({space.label})")
        packet = replace(packet, iif="", oif=port.name, smac=bridge.mac, dmac=inner.mac)
        packet = self.hook(host, ("bridge",), "output", packet)
        self.out_of_port(port, space, inner, packet)

    def port_of(self, bridge: Iface, nexthop: IPAddress,
                packet: Packet) -> tuple[Space, Iface, Iface]:
        """The container end holding nexthop behind bridge, and its port; or the end."""
        found = self.holder(bridge.name, nexthop)
        if found is None:
            self.hop("bridge", bridge.name, f"nothing behind {bridge.name} has {nexthop}: "
                     "ARP gets no answer")
            self.end("no-route", f"no container holds {nexthop} on {bridge.name}", packet)
        assert found is not None
        return found

    def out_of_port(self, port: Iface, space: Space, inner: Iface, packet: Packet) -> None:
        host = self.world.host
        self.hop("veth", f"{port.name} -> {inner.name}", f"veth pair: {port.name} "
                 f"#{port.index} in {host.label} -> {inner.name} #{inner.index} in "
                 f"{space.label}")
        self.ingress(space, inner.name, packet)

    def bridge_in(self, host: Space, port: Iface, nexthop: IPAddress, packet: Packet,
                  smac: str) -> None:
        """A frame from a container enters its bridge port."""
        bridge = host.iface(port.master)
        if bridge is None:
            self.end("dropped", f"bridge {port.master} is missing", packet)
        assert bridge is not None
        gateway = any(a.ip == nexthop for a in bridge.addrs)
        found = None if gateway else self.holder(bridge.name, nexthop)
        dmac = bridge.mac if gateway else found[1].mac if found else ""
        packet = replace(packet, iif=port.name, oif="", smac=smac, dmac=dmac)
        packet = self.hook(host, ("bridge",), "prerouting", packet)
        if not gateway:
            space, inner, out_port = self.port_of(bridge, nexthop, packet)
        if gateway:
            self.hop("bridge", bridge.name, f"destination MAC {bridge.mac} is the bridge's "
                     f"own ({nexthop}): up to the host's IP layer")
            packet = self.hook(host, ("bridge",), "input", packet)
            self.host_in(replace(packet, iif=bridge.name), bridge.name)
            return
        self.hop("bridge", bridge.name, f"{host.learned(bridge.name, dmac, out_port.name)} "
                 f"({space.label}): bridged, not routed")
        if self.world.bridge_nf:
            ip = replace(packet, iif=bridge.name, oif=bridge.name)
            self.hop("bridge", bridge.name, "bridge netfilter is on "
                     "(bridge-nf-call-iptables=1): the IP hooks see this bridged packet, "
                     f"with {bridge.name} as both devices")
            ip = self.hook(host, IP_FAMILIES, "prerouting", ip)
            ip = self.hook(host, IP_FAMILIES, "forward", ip)
            ip = self.hook(host, IP_FAMILIES, "postrouting", ip)
            packet = replace(ip, iif=port.name, oif=out_port.name)
        else:
            self.hop("bridge", bridge.name, "bridge netfilter is off: the IP hooks do not "
                     "see bridged packets")
            packet = replace(packet, oif=out_port.name)
        packet = self.hook(host, ("bridge",), "forward", packet)
        self.out_of_port(out_port, space, inner, packet)

    def host_in(self, packet: Packet, iif: str) -> None:
        """A packet arriving at the host's IP layer on iif."""
        host = self.world.host
        packet = replace(packet, iif=iif, oif="")
        packet = self.hook(host, IP_FAMILIES, "prerouting", packet)
        iface = host.iface(iif)
        if packet.daddr in LOOPBACK and not (iface and iface.route_localnet):
            self.hop("route", host.label, f"{packet.daddr} arriving on {iif}: a martian "
                     "destination (127/8 from outside), which the kernel drops")
            self.end("dropped", f"the kernel drops {packet.daddr} arriving on {iif} "
                     "(martian destination)", packet)
        route = self.route(host, packet, iif=iif)
        if route is None:
            self.to_local(host, packet)
            return
        if not host.forwarding:
            self.hop("route", host.label, "net.ipv4.ip_forward is 0: nothing is forwarded")
            self.end("dropped", "the host does not forward (ip_forward=0)", packet)
        packet = replace(packet, oif=route.dev)
        packet = self.hook(host, IP_FAMILIES, "forward", packet)
        packet = self.hook(host, IP_FAMILIES, "postrouting", packet)
        self.egress(host, route, packet)

    def ingress(self, space: Space, ifname: str, packet: Packet) -> None:
        """A packet arriving in a (container) namespace on ifname."""
        packet = replace(packet, iif=ifname, oif="")
        packet = self.hook(space, IP_FAMILIES, "prerouting", packet)
        if packet.daddr in space.local():
            self.hop("route", space.label, f"route lookup: {packet.daddr} is local")
            self.to_local(space, packet)
            return
        self.hop("route", space.label, f"{packet.daddr} is not an address of "
                 f"{space.label}, which does not forward")
        self.end("dropped", f"{space.label} does not forward to {packet.daddr}", packet)


def trace(world: World, source: str, packet: Packet, label: str, destination: str) -> Trace:
    """source: a namespace key of world (container or host), or "outside" (then packet.iif
    is the host interface it arrives on)."""
    result = Trace(source=label, destination=destination, protocol=packet.l4proto)
    walk = _Walk(world, result)
    try:
        if source == "outside":
            walk.hop("leave", "outside", f"a client at {packet.saddr}:{packet.sport} sends to "
                     f"{packet.daddr}:{packet.dport}; it arrives on {packet.iif}")
            walk.host_in(packet, packet.iif)
        else:
            walk.from_namespace(world.space(source), packet)
        walk.end("dropped", "the path ended without a decision", packet)
    except _Done:
        pass
    return result


def render(t: Trace) -> str:
    lines = [f"trace {t.protocol} {t.source} -> {t.destination}"]
    width = max((len(h.where) for h in t.hops), default=0)
    for number, h in enumerate(t.hops, 1):
        lines.append(f"{number:3}  {h.kind:<6} {h.where:<{width}}  {h.detail}")
    seen = f" (seen as {t.seen_source} -> {t.seen_destination})" if t.seen_source else ""
    lines.append(f"verdict: {t.verdict}: {t.summary}{seen}")
    return "\n".join(lines)


# --live: the kernel's account, folded into the same shape, and compared


@dataclass(frozen=True)
class KernelStep:
    """One base chain's decision, as the kernel's trace events tell it."""

    family: str
    table: str
    chain: str  # the base chain
    rule_chain: str  # where the deciding rule is (the base chain for a policy)
    handle: int | None  # None: the chain's policy decided
    verdict: str  # accept, drop, or "policy accept"/"policy drop"
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "table": self.table, "chain": self.chain,
                "rule_chain": self.rule_chain, "handle": self.handle,
                "verdict": self.verdict, "rule": self.rule}


TERMINAL = ("accept", "drop", "queue", "stolen")


def fold_events(events: list[dict[str, Any]], rules: dict[tuple[str, str, int], str]
                ) -> list[KernelStep]:
    """Trace events of one packet (in order) -> one step per base chain it passed.

    A traversal starts in a base chain, may jump into others, and ends with a rule
    whose verdict is final (accept, drop) or with the base chain's policy.
    """
    steps: list[KernelStep] = []
    base = ""
    for e in events:
        if not base:
            base = e["chain"]
        if e["kind"] == "policy":
            steps.append(KernelStep(e["family"], e["table"], base, e["chain"], None,
                                    f"policy {e['verdict']}"))
            base = ""
        elif e["kind"] == "rule" and e["verdict"] in TERMINAL:
            handle = e["handle"]
            steps.append(KernelStep(e["family"], e["table"], base, e["chain"], handle,
                                    e["verdict"],
                                    rules.get((e["family"], e["table"], handle or 0), "")))
            base = ""
    return steps


def static_steps(t: Trace, space_label: str) -> list[KernelStep]:
    out = []
    for h in t.hops:
        d = h.decision
        if d is None or not h.where.startswith(f"{space_label}:"):
            continue
        out.append(KernelStep(d.family, d.table, d.chain, d.rule_chain, d.handle,
                              d.verdict, d.rule))
    return out


def agreement(static: list[KernelStep], kernel: list[KernelStep], static_verdict: str,
              live_verdict: str, static_seen: tuple[str, str],
              live_seen: tuple[str, str] | None) -> list[str]:
    """Why static and live disagree; an empty list when they agree. Chains are compared
    where both report them (the kernel reports only after the trace rule fired)."""
    reasons: list[str] = []

    def key(s: KernelStep) -> tuple[str, str, str]:
        return (s.family, s.table, s.chain)

    both = {key(s) for s in static} & {key(s) for s in kernel}
    a = [(key(s), s.rule_chain, s.handle, s.verdict) for s in static if key(s) in both]
    b = [(key(s), s.rule_chain, s.handle, s.verdict) for s in kernel if key(s) in both]
    if a != b:
        for x, y in zip(a, b, strict=False):
            if x != y:
                reasons.append(f"at {' '.join(x[0])}: static says {x[3]} (handle {x[2]}), "
                               f"the kernel {y[3]} (handle {y[2]})")
                break
        else:
            reasons.append(f"static passes {len(a)} of the chains both see, the kernel "
                           f"{len(b)}")
    if static_verdict != live_verdict:
        reasons.append(f"verdict: static {static_verdict}, kernel {live_verdict}")
    elif static_verdict == "dropped":
        def dropper(steps: list[KernelStep]) -> tuple[Any, ...] | None:
            last = next((s for s in steps if s.verdict.split()[-1] == "drop"), None)
            return None if last is None else (key(last), last.rule_chain, last.handle)

        if dropper(static) != dropper(kernel):
            reasons.append(f"dropped in different places: static {dropper(static)}, "
                           f"kernel {dropper(kernel)} (None: not by a netfilter rule)")
    if live_seen is not None and live_seen != static_seen:
        reasons.append(f"seen addresses: static {static_seen[0]} -> {static_seen[1]}, "
                       f"kernel {live_seen[0]} -> {live_seen[1]}")
    return reasons
