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

Both address families: a packet is IPv4 or IPv6 by its addresses, and everything on
its way is of its family (the route table, the `ip` or `ip6` tables beside `inet`,
forwarding, bridge netfilter's call-iptables or call-ip6tables, neighbour discovery).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from portway.core.nftsim import Decision, Packet, Ruleset, hostport, is_loopback
from portway.errors import InvalidInput
from portway.model.types import IPAddress, IPInterface, IPNetwork

IP_FAMILIES = ("ip", "inet")
MAX_ROUTED = 32  # namespaces a packet is routed through before a loop is assumed
IP6_FAMILIES = ("ip6", "inet")


def ip_families(packet: Packet) -> tuple[str, ...]:
    """The table families whose chains see packet at the IP hooks."""
    return IP_FAMILIES if packet.version == 4 else IP6_FAMILIES


def asks(addr: IPAddress) -> str:
    """Who finds a next hop's MAC: ARP (IPv4) or neighbour discovery (IPv6)."""
    return "ARP" if addr.version == 4 else "neighbour discovery"


BRACKETS_HINT = "write an IPv6 address with its port as [ADDR]:PORT, e.g. [fd00::2]:80"


def split_destination(text: str) -> tuple[str, int | None, str]:
    """NAME-or-IP[:PORT][/PROTO]; an IPv6 address with a port as [ADDR]:PORT."""
    proto = "tcp"
    if "/" in text:
        text, _, proto = text.rpartition("/")
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"unknown protocol {proto!r} in the destination",
                               "use /tcp or /udp")
    raw: str | None = None
    if text.startswith("["):
        inner, closed, rest = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidInput(f"invalid IPv6 address {inner!r} in the destination "
                               f"{text!r}", BRACKETS_HINT) from None
        if not closed or (rest and not rest.startswith(":")):
            raise InvalidInput(f"malformed destination {text!r}", BRACKETS_HINT)
        text, raw = inner, (rest[1:] if rest else None)
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidInput(f"malformed destination {text!r}",
                               f"give NAME:PORT, IPV4:PORT or [IPV6]:PORT; "
                               f"{BRACKETS_HINT}") from None
        raise InvalidInput(f"no port in {text!r}", f"say which port: [{text}]:80")
    elif ":" in text:
        text, _, raw = text.rpartition(":")
    port: int | None = None
    if raw is not None:
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise InvalidInput(f"invalid port {raw!r} in the destination",
                               "give a port between 1 and 65535, e.g. web:80")
        port = int(raw)
    if not text:
        raise InvalidInput("the destination is empty", "give NAME[:PORT] or IP[:PORT]")
    return text, port, proto


@dataclass(frozen=True)
class Iface:
    name: str
    index: int
    kind: str = ""
    mac: str = ""
    up: bool = True
    addrs: tuple[IPInterface, ...] = ()
    master: str = ""
    peer: tuple[str, str] | None = None  # (namespace key, ifname) of a veth's other end
    route_localnet: bool = False
    link_index: int = 0  # a veth's other end's index, in its own namespace
    netnsid: int = -1  # a veth's other end's namespace, as this one numbers it (-1: same)


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
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
    # Of the listeners, portwayd's own: the sockets that hold published ports. Traffic to
    # a published port is DNATed before any socket sees it, but for the host's own over
    # ::1 (which IPv6 cannot DNAT): a socket filter lets only the loopback's sources in.
    portway_sockets: set[tuple[str, str, int]] = field(default_factory=set)
    ruleset: list[dict[str, Any]] = field(default_factory=list)
    forwarding: bool = False  # net.ipv4.ip_forward
    forwarding6: bool = False  # net.ipv6.conf.all.forwarding
    # (device, address) -> (MAC, state): the neighbour (ARP) table
    neighbours: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # (bridge, MAC) -> port: what each bridge has learned
    fdb: dict[tuple[str, str], str] = field(default_factory=dict)
    _local: tuple[list[Iface], int, frozenset[IPAddress]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def neighbour(self, dev: str, addr: IPAddress) -> str:
        """How the next hop's MAC is known: from the table, or by asking first."""
        found = self.neighbours.get((dev, str(addr)))
        if found is None or found[1] in ("failed", "incomplete"):
            return f"{addr} is not in the neighbour table of {dev}: {asks(addr)} asks first"
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
        # Asked at every hook: worked out once per list of interfaces (pairing veths
        # replaces interfaces in it, never their addresses).
        have = self._local
        if have is None or have[0] is not self.ifaces or have[1] != len(self.ifaces):
            have = self._local = (self.ifaces, len(self.ifaces), frozenset(
                a.ip for i in self.ifaces for a in i.addrs))
        return have[2]

    def first_address(self, dev: str, version: int = 4,
                      towards: IPAddress | None = None) -> IPAddress | None:
        """The source address the kernel picks on dev for a destination of the family
        (towards: the destination, for IPv6's choice between link-local and the rest)."""
        iface = self.iface(dev)
        if iface is None:
            return None
        mine = [a.ip for a in iface.addrs if a.version == version]
        if version == 6:
            link_local = towards is not None and towards.is_link_local
            same = [a for a in mine if a.is_link_local == link_local]
            mine = same or mine
        return mine[0] if mine else None

    def forwards(self, version: int) -> bool:
        return self.forwarding if version == 4 else self.forwarding6

    def lookup(self, daddr: IPAddress) -> Route | None:
        """The main table of daddr's family, longest prefix first (policy routing is not
        modelled)."""
        best: Route | None = None
        for r in self.routes:
            if r.dst.version != daddr.version or daddr not in r.dst:
                continue
            if best is None or r.dst.prefixlen > best.dst.prefixlen or (
                    r.dst.prefixlen == best.dst.prefixlen and r.metric < best.metric):
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
    bridge_nf6: bool = True  # net.bridge.bridge-nf-call-ip6tables in the host

    def bridge_netfilter(self, version: int) -> bool:
        return self.bridge_nf if version == 4 else self.bridge_nf6

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
        self.hops_routed = 0  # by namespaces other than the host's, against loops

    # bookkeeping

    def hop(self, kind: str, where: str, detail: str, decision: Decision | None = None) -> None:
        self.trace.hops.append(Hop(kind, where, detail, decision))

    def end(self, verdict: str, summary: str, packet: Packet | None = None) -> None:
        self.trace.verdict, self.trace.summary = verdict, summary
        if packet is not None:
            self.trace.seen_source = str(packet.saddr)
            self.trace.seen_destination = hostport(packet.daddr, packet.dport)
        raise _Done

    def ruleset(self, space: Space) -> Ruleset:
        if space.key not in self.rulesets:
            self.rulesets[space.key] = Ruleset(space.ruleset)
        return self.rulesets[space.key]

    def hook(self, space: Space, families: tuple[str, ...], hook: str,
             packet: Packet, nat: bool = True) -> Packet:
        # Masquerade picks the address of the interface the packet leaves by: only its
        # (not every interface's: a host with 1,000 veths would pay 1,000 lookups a hook).
        masq: dict[str, IPAddress] = {}
        if packet.oif and (a := space.first_address(packet.oif, packet.version,
                                                    packet.daddr)):
            masq[packet.oif] = a
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
        if packet.saddr.is_unspecified:
            src = packet.daddr if route is None else (
                route.prefsrc or space.first_address(route.dev, packet.version, packet.daddr))
            packet = replace(packet, saddr=src or packet.saddr)
        packet = replace(packet, oif=route.dev if route else "lo")
        before = packet.daddr
        families = ip_families(packet)
        packet = self.hook(space, families, "output", packet)
        if packet.daddr != before:  # DNAT in output: the kernel routes again
            route = self.route(space, packet, again=True)
            packet = replace(packet, oif=route.dev if route else "lo")
        packet = self.hook(space, families, "postrouting", packet)
        if route is None:
            # Over loopback: prerouting again (the connection's NAT is already set), input.
            packet = self.hook(space, families, "prerouting",
                               replace(packet, iif="lo", oif=""), nat=False)
            self.to_local(space, packet)
            return
        self.egress(space, route, packet)

    def route(self, space: Space, packet: Packet, again: bool = False,
              iif: str | None = None) -> Route | None:
        """None for a local destination; ends the walk when there is no way."""
        what = "route lookup again (destination rewritten)" if again else "route lookup"
        if packet.daddr in space.local() or is_loopback(packet.daddr):
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
        packet = self.hook(space, ip_families(packet), "input", packet)
        self.socket(space, packet)

    def socket(self, space: Space, packet: Packet) -> None:
        # A socket on :: takes IPv4 too (unless IPV6_V6ONLY, which is not observed).
        wildcards = ("0.0.0.0", "::") if packet.version == 4 else ("::",)
        for addr in (str(packet.daddr), *wildcards):
            if (packet.l4proto, addr, packet.dport) in space.portway_sockets:
                self.portway_socket(space, packet, addr)
            if (packet.l4proto, addr, packet.dport) in space.listeners:
                self.hop("socket", space.label, f"a {packet.l4proto} socket listens on "
                         f"{hostport(addr, packet.dport)}; it sees the connection from "
                         f"{hostport(packet.saddr, packet.sport)}")
                self.end("delivered", f"delivered to {space.label}, "
                         f"{hostport(packet.daddr, packet.dport)}/{packet.l4proto}", packet)
        answer = "TCP RST" if packet.l4proto == "tcp" else "ICMP port unreachable"
        self.hop("socket", space.label, f"nothing listens on "
                 f"{hostport(packet.daddr, packet.dport)}/{packet.l4proto}: the answer is "
                 f"{answer}")
        self.end("no-listener", f"reaches {space.label}, but nothing listens on "
                 f"{packet.dport}/{packet.l4proto} ({answer})", packet)

    def portway_socket(self, space: Space, packet: Packet, addr: str) -> None:
        """A socket of portwayd that holds a published port: it takes only the host's own
        connections (over ::1, relayed to the container in user space)."""
        where = hostport(addr, packet.dport)
        if is_loopback(packet.saddr):
            self.hop("socket", space.label, f"portwayd's {packet.l4proto} socket on {where} "
                     "holds a published port: it relays the host's own connection to the "
                     "container in user space (the container sees it come from its "
                     "gateway)")
            self.end("delivered", f"delivered to portwayd's relay on {where}/"
                     f"{packet.l4proto}, which connects to the container", packet)
        self.hop("socket", space.label, f"portwayd's {packet.l4proto} socket on {where} "
                 f"holds a published port: its socket filter takes only the host's own "
                 f"connections (from ::1 or 127/8) and drops this one from {packet.saddr}")
        self.end("dropped", f"dropped by the socket filter of portwayd's {where}/"
                 f"{packet.l4proto}: a published port is reached from {packet.saddr} only "
                 "through its DNAT rule, which this packet did not meet", packet)

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
                     f"{hostport(packet.saddr, packet.sport)}", packet)
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
                     f"{asks(nexthop)} gets no answer")
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
        call = "bridge-nf-call-iptables" if packet.version == 4 else "bridge-nf-call-ip6tables"
        if self.world.bridge_netfilter(packet.version):
            ip = replace(packet, iif=bridge.name, oif=bridge.name)
            self.hop("bridge", bridge.name, f"bridge netfilter is on ({call}=1): the IP "
                     f"hooks see this bridged packet, with {bridge.name} as both devices")
            families = ip_families(packet)
            ip = self.hook(host, families, "prerouting", ip)
            ip = self.hook(host, families, "forward", ip)
            ip = self.hook(host, families, "postrouting", ip)
            packet = replace(ip, iif=port.name, oif=out_port.name)
        else:
            self.hop("bridge", bridge.name, f"bridge netfilter is off ({call}=0): the IP "
                     "hooks do not see bridged packets")
            packet = replace(packet, oif=out_port.name)
        packet = self.hook(host, ("bridge",), "forward", packet)
        self.out_of_port(out_port, space, inner, packet)

    def host_in(self, packet: Packet, iif: str) -> None:
        """A packet arriving at the host's IP layer on iif."""
        host = self.world.host
        packet = replace(packet, iif=iif, oif="")
        if packet.version == 6 and is_loopback(packet.daddr) and iif != "lo":
            self.hop("route", host.label, f"::1 arriving on {iif}: IPv6 drops a loopback "
                     "destination from any other interface on receipt, before any "
                     "netfilter hook (it has no route_localnet)")
            self.end("dropped", f"the kernel drops ::1 arriving on {iif} (martian "
                     "destination)", packet)
        families = ip_families(packet)
        packet = self.hook(host, families, "prerouting", packet)
        iface = host.iface(iif)
        if is_loopback(packet.daddr) and not (iface and iface.route_localnet):
            self.hop("route", host.label, f"{packet.daddr} arriving on {iif}: a martian "
                     "destination (127/8 from outside), which the kernel drops")
            self.end("dropped", f"the kernel drops {packet.daddr} arriving on {iif} "
                     "(martian destination)", packet)
        route = self.route(host, packet, iif=iif)
        if route is None:
            self.to_local(host, packet)
            return
        if not host.forwards(packet.version):
            key = "net.ipv4.ip_forward" if packet.version == 4 else \
                "net.ipv6.conf.all.forwarding"
            self.hop("route", host.label, f"{key} is 0: nothing is forwarded")
            self.end("dropped", f"the host does not forward ({key.rsplit('.', 1)[-1]}=0 "
                     f"for IPv{packet.version})", packet)
        packet = replace(packet, oif=route.dev)
        packet = self.hook(host, families, "forward", packet)
        packet = self.hook(host, families, "postrouting", packet)
        self.egress(host, route, packet)

    def ingress(self, space: Space, ifname: str, packet: Packet) -> None:
        """A packet arriving in a (container) namespace on ifname."""
        packet = replace(packet, iif=ifname, oif="")
        packet = self.hook(space, ip_families(packet), "prerouting", packet)
        if packet.daddr in space.local():
            self.hop("route", space.label, f"route lookup: {packet.daddr} is local")
            self.to_local(space, packet)
            return
        if not space.forwards(packet.version):
            self.hop("route", space.label, f"{packet.daddr} is not an address of "
                     f"{space.label}, which does not forward")
            self.end("dropped", f"{space.label} does not forward to {packet.daddr}", packet)
        # A namespace that routes (a router, a VM's host of its own): on to the next hop.
        self.hops_routed += 1
        if self.hops_routed > MAX_ROUTED:
            self.end("dropped", f"routed {MAX_ROUTED} times without arriving: a routing "
                     "loop (the TTL runs out)", packet)
        route = self.route(space, packet, iif=ifname)
        if route is None:
            self.to_local(space, packet)
            return
        families = ip_families(packet)
        packet = replace(packet, oif=route.dev)
        packet = self.hook(space, families, "forward", packet)
        packet = self.hook(space, families, "postrouting", packet)
        self.egress(space, route, packet)


def trace(world: World, source: str, packet: Packet, label: str, destination: str) -> Trace:
    """source: a namespace key of world (container or host), or "outside" (then packet.iif
    is the host interface it arrives on)."""
    result = Trace(source=label, destination=destination, protocol=packet.l4proto)
    walk = _Walk(world, result)
    try:
        if source == "outside":
            walk.hop("leave", "outside", f"a client at {hostport(packet.saddr, packet.sport)} "
                     f"sends to {hostport(packet.daddr, packet.dport)}; it arrives on "
                     f"{packet.iif}")
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
