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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from portway.core.nftsim import Decision, Packet, Ruleset, hostport, is_loopback
from portway.core.overlay import vxlan_overhead
from portway.errors import InvalidInput
from portway.model.types import IPAddress, IPInterface, IPNetwork

IP_FAMILIES = ("ip", "inet")
MAX_ROUTED = 32  # namespaces a packet is routed through before a loop is assumed
IP6_FAMILIES = ("ip6", "inet")
MAIN, DEFAULT, LOCAL = 254, 253, 255  # the routing tables every namespace has


def ip_families(packet: Packet) -> tuple[str, ...]:
    """The table families whose chains see packet at the IP hooks."""
    return IP_FAMILIES if packet.version == 4 else IP6_FAMILIES


def asks(addr: IPAddress) -> str:
    """Who finds a next hop's MAC: ARP (IPv4) or neighbour discovery (IPv6)."""
    return "ARP" if addr.version == 4 else "neighbour discovery"


BRACKETS_HINT = "write an IPv6 address with its port as [ADDR]:PORT, e.g. [fd00::2]:80"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def split_destination(text: str) -> tuple[str, int | None, str]:
    """NAME-or-IP[:PORT][/PROTO]; an IPv6 address with a port as [ADDR]:PORT."""
    proto = "tcp"
    if "/" in text:
        text, _, proto = text.rpartition("/")
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidInput(f"unknown protocol {proto!r} in the destination",
                               "use /tcp, /udp or /sctp")
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
        addr, _, last = text.rpartition(":")
        maybe = f"[{addr}]:{last} for port {last} of {addr}, or " if _is_ipv6(addr) and \
            last.isdigit() else ""
        raise InvalidInput(f"no port in {text!r}", f"say which port: {maybe}[{text}]:80 "
                           "(an IPv6 address goes in brackets before its port)")
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
    rp_filter: int = 0  # net.ipv4.conf.NAME.rp_filter: 0 off, 1 strict, 2 loose
    forwarding: bool = True  # net.ipv4.conf.NAME.forwarding (ip_forward sets every one)
    # net.ipv6.conf.NAME.disable_ipv6: no IPv6 address, and every IPv6 packet that arrives
    # on it or is routed out of it is dropped (bridged frames are not: they stay at L2)
    disable_ipv6: bool = False
    # net.ipv6.conf.NAME.force_forwarding (Linux 6.17): IPv6 arriving on it is forwarded
    # even where net.ipv6.conf.all.forwarding is 0. (IPv6 has no per-interface switch
    # the other way: net.ipv6.conf.NAME.forwarding only makes the interface a router for
    # neighbour discovery; all.forwarding alone gates what is forwarded.)
    force_forwarding: bool = False
    mtu: int = 0  # 0: not known
    # The lower layer is up (IFF_LOWER_UP): a tap whose process (a VM) does not hold it,
    # or a link whose other side is down, has none, and takes no frame.
    carrier: bool = True
    link_index: int = 0  # a veth's other end's index, in its own namespace
    netnsid: int = -1  # a veth's other end's namespace, as this one numbers it (-1: same)
    # A macvlan's: its mode (bridge, vepa, private, ...), and its lower device as the
    # inode of that device's namespace and its index there (siblings share it).
    mode: str = ""
    lower: tuple[int, int] | None = None


@dataclass(frozen=True)
class Tunnel:
    """A VXLAN device as observed: its VNI and local VTEP, where each MAC is sent (its
    FDB entries with a remote), and who each remote MAC is (from the cluster store)."""

    vni: int
    local: str
    port: int
    mtu: int
    fdb: dict[str, str] = field(default_factory=dict)  # MAC -> remote VTEP
    remote: dict[str, str] = field(default_factory=dict)  # MAC -> "web-b on host 192.0.2.2"


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    dev: str
    gateway: IPAddress | None = None
    prefsrc: IPAddress | None = None
    kind: str = "unicast"  # unicast, blackhole, unreachable, prohibit
    metric: int = 0
    table: int = MAIN

    def text(self, daddr: IPAddress) -> str:
        if self.kind != "unicast":
            return f"{self.kind} {self.dst}"
        via = f" via {self.gateway}" if self.gateway else ""
        src = f" src {self.prefsrc}" if self.prefsrc else ""
        return f"{daddr}{via} dev {self.dev}{src}"


@dataclass(frozen=True)
class Rule:
    """One policy routing rule (`ip rule`): which packets it takes, and to which table
    (or straight to blackhole, unreachable, prohibit)."""

    priority: int
    table: int = MAIN
    action: str = "lookup"  # lookup, blackhole, unreachable, prohibit, goto, nop
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    iif: str = ""
    oif: str = ""
    fwmark: int | None = None
    invert: bool = False
    version: int = 4

    def matches(self, saddr: IPAddress | None, daddr: IPAddress, iif: str | None,
                mark: int) -> bool:
        hit = (self.src is None or (saddr is not None and saddr.version == self.src.version
                                    and saddr in self.src)) \
            and (self.dst is None or daddr in self.dst) \
            and (not self.iif or self.iif == (iif or "lo")) \
            and (self.fwmark is None or self.fwmark == mark)
        return hit != self.invert

    def text(self) -> str:
        parts = [f"{self.priority}:", "not" if self.invert else "",
                 f"from {self.src}" if self.src else "from all",
                 f"to {self.dst}" if self.dst else "", f"iif {self.iif}" if self.iif else "",
                 f"fwmark {self.fwmark:#x}" if self.fwmark is not None else "",
                 f"lookup {TABLE_NAMES.get(self.table, self.table)}"
                 if self.action == "lookup" else self.action]
        return " ".join(p for p in parts if p)


TABLE_NAMES = {MAIN: "main", DEFAULT: "default", LOCAL: "local"}


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: the tuple the client sent, the tuple the reply comes back
    with (its source is the real server: a DNAT shows there), and whether a reply has
    been seen (UNREPLIED when not)."""

    proto: str
    orig: tuple[str, int, str, int]  # src, sport, dst, dport
    reply: tuple[str, int, str, int]
    replied: bool = True

    def command(self) -> str:
        """The conntrack command that deletes this entry."""
        s, sp, d, dp = self.orig
        return (f"conntrack -D -p {self.proto} --orig-src {s} --orig-port-src {sp} "
                f"--orig-dst {d} --orig-port-dst {dp}")


class Learned(Protocol):
    """What the bridges of a namespace have learned: (bridge, MAC) -> port. A dict, or
    the recorder's lookup that asks the kernel one MAC at a time."""

    def get(self, key: tuple[str, str], /) -> str | None: ...


def _nothing_learned() -> dict[tuple[str, str], str]:
    return {}


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
    rp_filter: int = 0  # net.ipv4.conf.all.rp_filter (the larger of it and an interface's holds)
    # Policy routing: the rules (empty: the main table alone, as when none were recorded)
    # and the routes of the tables other than main, by table.
    rules: list[Rule] = field(default_factory=list)
    tables: dict[int, list[Route]] = field(default_factory=dict)
    # (device, address) -> (MAC, state): the neighbour (ARP) table
    neighbours: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # (bridge, MAC) -> port: what each bridge has learned
    fdb: Learned = field(default_factory=_nothing_learned)
    # VXLAN device -> what it is and where it sends (overlay networks)
    tunnels: dict[str, Tunnel] = field(default_factory=dict)
    # net.bridge.bridge-nf-call-iptables and -ip6tables in this namespace (they are per
    # namespace), for its own bridges; None: not recorded (the world's, the host's, hold)
    bridge_nf: tuple[bool, bool] | None = None
    _local: tuple[list[Iface], int, frozenset[IPAddress]] | None = field(
        default=None, init=False, repr=False, compare=False)
    _names: tuple[list[Iface], int, dict[str, int]] | None = field(
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
        # By an index of names, made once per list of interfaces (a host with 1,000 veths
        # is asked for its bridge or uplink at every hop); the position it gives is read
        # from the list itself, where pairing veths replaces an interface in place.
        have = self._names
        if have is None or have[0] is not self.ifaces or have[1] != len(self.ifaces):
            names: dict[str, int] = {}
            for n, i in enumerate(self.ifaces):
                names.setdefault(i.name, n)
            have = self._names = (self.ifaces, len(self.ifaces), names)
        at = have[2].get(name)
        if at is not None and self.ifaces[at].name == name:
            return self.ifaces[at]
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

    def forwards(self, version: int, iif: str = "") -> bool:
        """Whether what arrives on iif (any interface: "") may be forwarded, as far as
        the namespace-wide switch (or IPv6's force_forwarding of iif) says."""
        if version == 4:
            return self.forwarding
        if self.forwarding6:
            return True
        iface = self.iface(iif) if iif else None
        return iface is not None and iface.force_forwarding

    def lookup(self, daddr: IPAddress, saddr: IPAddress | None = None,
               iif: str | None = None, mark: int = 0) -> Route | None:
        """The route the kernel picks for daddr: the policy rules in priority order (a
        rule that matches sends the lookup to its table, and on to the next rule when
        that table has no route), or the main table alone when no rules were recorded.
        In a table, the longest prefix, then the lowest metric."""
        return self.decide(daddr, saddr, iif, mark)[0]

    def decide(self, daddr: IPAddress, saddr: IPAddress | None = None,
               iif: str | None = None, mark: int = 0) -> tuple[Route | None, Rule | None]:
        """lookup's route, and the rule that led to it (None: the main table, by
        default)."""
        rules = [r for r in self.rules if r.version == daddr.version]
        if not rules:
            return best_route(self.routes, daddr), None
        for rule in sorted(rules, key=lambda r: r.priority):
            if rule.action == "nop" or not rule.matches(saddr, daddr, iif, mark):
                continue
            if rule.action in ("blackhole", "unreachable", "prohibit"):
                net = ipaddress.ip_network(0 if daddr.version == 4 else "::/0")
                return Route(net, "", kind=rule.action, table=rule.table), rule
            if rule.action != "lookup" or rule.table == LOCAL:
                continue  # the local table: local() answers for it
            table = self.routes if rule.table == MAIN else self.tables.get(rule.table, [])
            found = best_route(table, daddr)
            if found is not None and found.kind != "throw":
                return found, rule
        return None, None

    def rp_mode(self, iif: str) -> int:
        """The reverse path filter of packets arriving on iif (IPv4): the larger of the
        interface's and `all`'s."""
        iface = self.iface(iif)
        return max(self.rp_filter, iface.rp_filter if iface else 0)


def best_route(routes: list[Route], daddr: IPAddress) -> Route | None:
    """The longest prefix holding daddr, then the lowest metric."""
    best: Route | None = None
    for r in routes:
        if r.dst.version != daddr.version or daddr not in r.dst:
            continue
        if best is None or r.dst.prefixlen > best.dst.prefixlen or (
                r.dst.prefixlen == best.dst.prefixlen and r.metric < best.metric):
            best = r
    return best


_VETH_ENDS: dict[int, tuple[list[Iface], int, dict[tuple[int, int], list[int]]]] = {}


def _veth_ends(host: Space) -> dict[tuple[int, int], list[int]]:
    """The positions of host's veths by (index, their other end's index), made once per
    list of interfaces (pairing 1,000 namespaces looked through every interface for
    each); pairing replaces interfaces in place, keeping both indexes."""
    have = _VETH_ENDS.get(id(host))
    if have is None or have[0] is not host.ifaces or have[1] != len(host.ifaces):
        ends: dict[tuple[int, int], list[int]] = {}
        for j, h in enumerate(host.ifaces):
            if h.kind == "veth":
                ends.setdefault((h.index, h.link_index), []).append(j)
        _VETH_ENDS.clear()  # one host at a time
        have = _VETH_ENDS[id(host)] = (host.ifaces, len(host.ifaces), ends)
    return have[2]


def pair_veths(host: Space, other: Space) -> None:
    """Join other's veths to the host's where each end names the other's index (for
    namespaces portway did not make, whose peers it does not know from its store)."""
    ends = _veth_ends(host)
    for i, inner in enumerate(other.ifaces):
        if inner.kind != "veth" or inner.peer is not None:
            continue
        matches = ends.get((inner.link_index, inner.index), [])
        if len(matches) == 1:
            j = matches[0]
            other.ifaces[i] = replace(inner, peer=(host.key, host.ifaces[j].name))
            host.ifaces[j] = replace(host.ifaces[j], peer=(other.key, inner.name))


class LazySpaces(dict[str, Space]):
    """Namespaces by key, each recorded when first asked for by its key (loaders: how to
    record each): a trace on a host of 1,000 containers meets two or three of them.
    Whatever looks at them all (iterating, counting) has them all recorded first, in
    the loaders' order."""

    def __init__(self, loaders: dict[str, Callable[[], Space]]) -> None:
        super().__init__()
        self._loaders = dict(loaders)
        self._order = list(loaders)

    def _load(self, key: str) -> Space:
        space = self._loaders.pop(key)()
        dict.__setitem__(self, key, space)
        return space

    def __missing__(self, key: str) -> Space:
        if key in self._loaders:
            return self._load(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._loaders

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value: Space) -> None:
        self._loaders.pop(key, None)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        if self._loaders.pop(key, None) is None or dict.__contains__(self, key):
            dict.__delitem__(self, key)

    def load_all(self) -> None:
        if not self._loaders:
            return
        for key in list(self._loaders):
            self._load(key)
        have = {k: dict.__getitem__(self, k) for k in dict.__iter__(self)}
        dict.clear(self)
        for key in [*(k for k in self._order if k in have), *have]:
            if not dict.__contains__(self, key):
                dict.__setitem__(self, key, have[key])

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load_all()
        return dict.__len__(self)

    def keys(self) -> Any:
        self.load_all()
        return dict.keys(self)

    def values(self) -> Any:
        self.load_all()
        return dict.values(self)

    def items(self) -> Any:
        self.load_all()
        return dict.items(self)


@dataclass
class World:
    host: Space
    spaces: dict[str, Space]  # container namespaces by key (a LazySpaces, perhaps)
    bridge_nf: bool = True  # net.bridge.bridge-nf-call-iptables in the host
    bridge_nf6: bool = True  # net.bridge.bridge-nf-call-ip6tables in the host
    # The kernel has SCTP (its module loaded). Without it no SCTP stack sees a packet
    # for a local address: the kernel answers ICMP protocol unreachable, not an ABORT.
    sctp: bool = True
    # The host's conntrack entries that matter to the traced flow (recorded by the trace).
    conntrack: list[Flow] = field(default_factory=list)
    # What the host publishes, as "HOSTPORT/PROTO -> CONTAINER:PORT" lines (portway's own).
    published: list[str] = field(default_factory=list)
    # Subnets whose containers leave without masquerade on purpose (routed mode).
    routed: list[IPNetwork] = field(default_factory=list)
    # The subnets of internal networks (no way out, on purpose), with the network's name.
    internal: list[tuple[IPNetwork, str]] = field(default_factory=list)
    # Whether the way back from beyond the host's edge is judged (off: the request
    # alone, which is what a live probe stopped at the edge can be compared with).
    beyond: bool = True
    # Who holds an address behind a bridge, as the recorder knows it without recording
    # each namespace (portway's endpoints): (bridge, address) -> (namespace key, the
    # host end's name). A hint: each answer is checked.
    behind: dict[tuple[str, IPAddress], tuple[str, str]] = field(default_factory=dict)
    # What the recorder could not read and skipped (a namespace that went away), to tell
    notes: list[str] = field(default_factory=list)
    _holders: tuple[tuple[int, ...], dict[tuple[str, IPAddress], int]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def bridge_netfilter(self, version: int) -> bool:
        return self.bridge_nf if version == 4 else self.bridge_nf6

    def space(self, key: str) -> Space:
        return self.host if key == self.host.key else self.spaces[key]

    def holder(self, bridge: str, addr: IPAddress) -> tuple[Space, Iface, Iface] | None:
        """The container end holding addr behind a port of bridge, with that port. Looked
        up in an index of every bridge port's addresses, made once per state of the
        host's interfaces (a host with 1,000 veths would pay 1,000 checks a hop)."""
        host = self.host
        hinted = self.behind.get((bridge, addr))
        if hinted is not None:
            port = host.iface(hinted[1])
            inner = self._peer(port) if port is not None and port.master == bridge and \
                port.peer is not None and port.peer[0] == hinted[0] else None
            if port is not None and inner is not None and \
                    any(a.ip == addr for a in inner.addrs):
                return self.space(hinted[0]), inner, port
        # (A stale index is harmless: each answer is checked, and a miss looks at all.)
        state = (id(host.ifaces), len(host.ifaces), id(self.spaces), len(self.spaces))
        if self._holders is None or self._holders[0] != state:
            index: dict[tuple[str, IPAddress], int] = {}
            for n, port in enumerate(host.ifaces):
                if port.master and port.peer is not None:
                    inner = self._peer(port)
                    for a in inner.addrs if inner is not None else ():
                        index.setdefault((port.master, a.ip), n)
            self._holders = (state, index)
        at = self._holders[1].get((bridge, addr))
        if at is not None:
            port = host.ifaces[at]
            inner = self._peer(port) if port.master == bridge else None
            if inner is not None and any(a.ip == addr for a in inner.addrs):
                assert port.peer is not None
                return self.space(port.peer[0]), inner, port
        # Not in the index (or a port replaced in place since): look at every port.
        for port in host.ifaces:
            if port.master != bridge or port.peer is None:
                continue
            inner = self._peer(port)
            if inner is not None and any(a.ip == addr for a in inner.addrs):
                return self.space(port.peer[0]), inner, port
        return None

    def _peer(self, port: Iface) -> Iface | None:
        if port.peer is None or (port.peer[0] != self.host.key and
                                 port.peer[0] not in self.spaces):
            return None
        return self.space(port.peer[0]).iface(port.peer[1])


@dataclass(frozen=True)
class Hop:
    kind: str  # route, veth, bridge, mvlan, hook, nat, socket, leave, drop, ct, reply, mtu
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


@dataclass(frozen=True)
class TunnelLeg:
    """A frame encapsulated by a VXLAN device for another host: the outer UDP datagram's
    ends, the VNI, and the inner packet (after this host's hooks) with its MAC."""

    local: str  # this host's VTEP
    vtep: str  # the other host's
    vni: int
    port: int
    device: str
    dmac: str
    smac: str
    packet: Packet


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
    fix: str = ""  # for a verdict other than delivered: what to change, concretely
    # Where a packet left this host through a VXLAN device: what the other host gets.
    tunnel: TunnelLeg | None = None
    # The reply of the connection, walked back through every hook it crosses, when it
    # comes back (when it does not, its hops end the request's, and decide).
    reply_hops: list[Hop] = field(default_factory=list)
    reply_lost: str = ""  # the request arrived, but its reply did not: why not
    # A device on the path with a smaller MTU than the sender's, for TCP: path_mtu,
    # device, where, sender_mtu, mss (the largest segment that passes), clamped (a rule
    # clamps the MSS), fix (the clamp rule, where none does).
    mtu: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination,
                "protocol": self.protocol, "verdict": self.verdict, "summary": self.summary,
                "fix": self.fix,
                "seen_source": self.seen_source, "seen_destination": self.seen_destination,
                "hops": [h.as_dict() for h in self.hops],
                "reply_hops": [h.as_dict() for h in self.reply_hops], "mtu": self.mtu}


class _Done(Exception):
    pass


class _ReplyEnd(Exception):
    """How the walk of a reply ended: the verdict and why, as end() got them."""

    def __init__(self, verdict: str, summary: str, fix: str) -> None:
        super().__init__(verdict)
        self.verdict, self.summary, self.fix = verdict, summary, fix


FAR_END = "the far end"  # how a hop about the reply from beyond the host's edge starts


def _clamps(item: dict[str, Any]) -> bool:
    """Whether a listed rule sets the TCP MSS option (MSS clamping)."""
    return any("mangle" in e and "maxseg" in str(e["mangle"].get("key", ""))
               for e in item["rule"].get("expr", []) if isinstance(e, dict))


def in_space(space: Space, command: str) -> str:
    """command as run in space: as it is in the host, through `ip netns exec` in a named
    namespace (a container's key is its /run/netns name), `nsenter` in a process's."""
    if not command or space.key == "host":
        return command
    kind, _, name = space.key.partition(":")
    if kind == "pid":
        return f"nsenter -t {name} -n {command}"
    if kind == "docker":
        return f"nsenter --net=/var/run/docker/netns/{name} {command}"
    return f"ip netns exec {name if kind == 'ns' else space.key} {command}"


def flow_match(packet: Packet, family: str, hook: str) -> str:
    """An nft match of this packet's flow, as a chain on hook sees it."""
    parts = []
    if packet.iif and hook in ("prerouting", "input", "forward"):
        parts.append(f'iifname "{packet.iif}"')
    if packet.oif and hook in ("forward", "output", "postrouting"):
        parts.append(f'oifname "{packet.oif}"')
    if family != "bridge" and family != "netdev":
        parts.append(f"{packet.family} daddr {packet.daddr}")
    parts.append(f"{packet.l4proto} dport {packet.dport}")
    return " ".join(parts)


def _lets_replies(space: Space, d: Decision) -> bool:
    """Whether the chain that dropped accepts established traffic (the replies) anywhere."""
    return any("established" in str(item["rule"].get("expr")) and "accept" in str(
        item["rule"].get("expr")) for item in space.ruleset if "rule" in item
        and (item["rule"]["family"], item["rule"]["table"]) == (d.family, d.table))


PORTWAY_FIXES = (  # portway's own rules (by their comment): the setting that changes them
    ("isolation from other portway networks", "networks are isolated from each other on "
     "purpose: attach the client to the server's network (portway network connect "
     "NETWORK CONTAINER)"),
    ("between its containers (icc)", "the network keeps its containers apart on purpose "
     "(com.docker.network.bridge.enable_icc=false): reach the server through a port it "
     "publishes, or connect both to a network with icc on (portway network connect "
     "NETWORK CONTAINER)"),
    ("no direct access from outside", "a container address is not reached from outside "
     "on purpose: publish the port (portway run -p HOSTPORT:PORT ...) and connect to the "
     "host"),
    ("internal, nothing comes in", "the network is internal (nothing comes in from "
     "outside, on purpose): connect the container to a network that is not internal as "
     "well (portway network connect NETWORK CONTAINER) and publish the port there"),
    ("internal", "the network is internal (no way out, on purpose): attach the container "
     "to a network that is not internal as well (portway network connect NETWORK "
     "CONTAINER)"))


def drop_fix(space: Space, d: Decision, packet: Packet) -> str:
    """The change that lets this flow past a chain that dropped it (and, in a forward
    chain that drops by policy, its replies, which pass the same chain the other way).
    portway's own rules are changed through portway's settings, never by hand (gc would
    put them back)."""
    if d.table == "portway" and d.handle is not None:
        return next((fix for words, fix in PORTWAY_FIXES if words in d.rule),
                    "the rule is portway's own: change the setting it comes from (its "
                    "comment names it), not the rule")
    allow = in_space(space, f"nft insert rule {d.family} {d.table} {d.chain} "
                            f"{flow_match(packet, d.family, d.hook)} accept")
    if d.handle is None:  # the chain's policy
        if d.hook == "forward" and d.family != "bridge" and not _lets_replies(space, d):
            allow += " && " + in_space(space, f"nft insert rule {d.family} {d.table} "
                                              f"{d.chain} ct state established,related "
                                              "accept")
        return f"accept the flow in that chain: {allow}"
    remove = in_space(space, f"nft delete rule {d.family} {d.table} {d.rule_chain} "
                             f"handle {d.handle}")
    return f"if that rule is not meant for this flow, accept the flow before it: {allow} " \
           f"(or remove the rule: {remove})"


Tuple4 = tuple[IPAddress, int, IPAddress, int]  # a packet's saddr, sport, daddr, dport


class _Walk:
    def __init__(self, world: World, trace: Trace) -> None:
        self.world = world
        self.trace = trace
        self.rulesets: dict[str, Ruleset] = {}
        self.hops_routed = 0  # by namespaces other than the host's, against loops
        # the conntrack entry the flow already has in the host, once met, and the source
        # rewrite it holds (applied at postrouting, where the kernel applies it)
        self.flow: Flow | None = None
        self.flow_snat: tuple[IPAddress, int] | None = None
        self.host_nat = False  # the host rewrote an address of the request
        self.asked: tuple[IPAddress, int] = (ipaddress.ip_address(0), 0)  # daddr, dport
        # the devices the packet left by, in order: (namespace, device, MTU)
        self.mtus: list[tuple[str, str, int]] = []
        # The request's addresses and ports as it first met each namespace's hooks
        # (before its NAT) and as it left the last of them (after it), by namespace key:
        # each namespace's conntrack undoes its own difference on the reply.
        self.nat_at: dict[str, tuple[Tuple4, Tuple4]] = {}
        self.replying = False  # walking the reply (hops are "reply" hops; end() reports)
        # The client is on another host (the far half of a tunnelled trace): no socket
        # of this world is the one that sent the request.
        self.client_elsewhere = False

    # bookkeeping

    def hop(self, kind: str, where: str, detail: str, decision: Decision | None = None) -> None:
        if self.replying:
            kind = "reply"
        self.trace.hops.append(Hop(kind, where, detail, decision))

    def end(self, verdict: str, summary: str, packet: Packet | None = None,
            fix: str = "") -> None:
        if self.replying:
            raise _ReplyEnd(verdict, summary, fix)
        if self.flow is not None and verdict != "delivered":
            summary = f"{summary}; this flow's existing conntrack entry (replies from " \
                      f"{hostport(self.flow.reply[0], self.flow.reply[1])}) decided its " \
                      "NAT, not the current rules"
            fix = f"delete the stale entry: {self.flow.command()}"
        self.trace.verdict, self.trace.summary, self.trace.fix = verdict, summary, fix
        if packet is not None:
            self.trace.seen_source = str(packet.saddr)
            self.trace.seen_destination = hostport(packet.daddr, packet.dport)
        raise _Done

    def ruleset(self, space: Space) -> Ruleset:
        if space.key not in self.rulesets:
            self.rulesets[space.key] = Ruleset.of(space.ruleset)
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
        at: tuple[int, Callable[[Packet], Packet]] | None = None
        undone: list[str] = []
        if self.replying and families != ("bridge",):
            # conntrack's inverse of this namespace's NAT of the request (the host's, a
            # lab router's masquerade, a VM host's DNAT), where the kernel makes it: the
            # destination (undoing SNAT) at NAT_DST (-100) of prerouting and output, the
            # source (undoing DNAT) at NAT_SRC (100) of postrouting and input; the chains
            # before see the reply as it came.
            if hook in ("prerouting", "output"):
                at = (-100, lambda p: self.undo_nat(space, p, True, undone))
            elif hook in ("postrouting", "input"):
                at = (100, lambda p: self.undo_nat(space, p, False, undone))
        if space is self.world.host and hook in ("prerouting", "output") and \
                self.flow is None and self.world.conntrack and not self.replying:
            packet = self.conntrack(space, families, hook, packet, masq)
        if space is self.world.host and self.flow is not None:
            nat = False  # the entry's NAT holds, whatever the rules say now
            if hook == "postrouting" and self.flow_snat is not None:
                packet = replace(packet, saddr=self.flow_snat[0], sport=self.flow_snat[1])
        before = (packet.saddr, packet.sport, packet.daddr, packet.dport)
        packet, decisions, alive = self.ruleset(space).run_hook(
            families, hook, packet, space.local(), masq, nat, at)
        if not self.replying:
            entered = self.nat_at.get(space.key, (before, before))[0]
            self.nat_at[space.key] = (entered, (packet.saddr, packet.sport, packet.daddr,
                                                packet.dport))
        if space is self.world.host and before != (packet.saddr, packet.sport,
                                                   packet.daddr, packet.dport):
            self.host_nat = True
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
        for note in undone:
            self.hop("ct", space.label, note)
        if not alive:
            last = decisions[-1]
            summary = f"dropped in {space.label} by {last.where}: {last.rule or last.verdict}"
            earlier = [d for d in decisions[:-1] if d.verdict == "accept" and d.rule]
            if earlier:
                first = earlier[0]
                summary += f"; the accept in {first.where} (\"{first.rule}\") ends only " \
                           f"its own chain: {last.where} still decides on the {hook} hook"
            fix = drop_fix(space, last, packet)
            if self.replying:  # what lets a connection's replies through that chain
                fix = "let the replies of connections through that chain: " + in_space(
                    space, f"nft insert rule {last.family} {last.table} {last.chain} "
                           "ct state established,related accept")
            self.end("dropped", summary, packet, fix)
        return packet

    def conntrack(self, space: Space, families: tuple[str, ...], hook: str,
                  packet: Packet, masq: dict[str, IPAddress]) -> Packet:
        """The flow's conntrack entry, if the host has one: its NAT was decided by the
        first packet, and the nat chains are not asked again."""
        if packet.l4proto != "udp":
            # A TCP SYN that meets an old entry of its tuple (TIME_WAIT, CLOSE) reopens
            # it as a new connection, which the rules decide again; UDP has no such end.
            return packet
        orig = (str(packet.saddr), packet.sport, str(packet.daddr), packet.dport)
        flow = next((f for f in self.world.conntrack
                     if f.proto == packet.l4proto and f.orig == orig), None)
        if flow is None:
            return packet
        self.flow = flow
        server = (ipaddress.ip_address(flow.reply[0]), flow.reply[1])
        client = (ipaddress.ip_address(flow.reply[2]), flow.reply[3])
        status = set(packet.ct_status)
        if server != (packet.daddr, packet.dport):
            status.add("dnat")
        if client != (packet.saddr, packet.sport):
            status.add("snat")
            self.flow_snat = client
        # What the rules would do with a new flow, to say whether the entry is stale.
        fresh, _, _ = self.ruleset(space).run_hook(families, hook, packet, space.local(),
                                                    masq, True)
        state = "established" if flow.replied else "new"
        now = f"the rules now lead to {hostport(fresh.daddr, fresh.dport)}" \
            if (fresh.daddr, fresh.dport) != server else "the rules lead there too"
        self.hop("ct", space.label,
                 f"conntrack already holds this flow ({flow.proto} "
                 f"{hostport(orig[0], orig[1])} -> {hostport(orig[2], orig[3])}, "
                 f"{'replied' if flow.replied else 'UNREPLIED'}): its packets go to "
                 f"{hostport(*server)} as the entry says, and the nat chains are not "
                 f"asked again ({now})")
        self.host_nat = self.host_nat or "dnat" in status or "snat" in status
        return replace(packet, daddr=server[0], dport=server[1], ct_state=state,
                       ct_status=frozenset(status))

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
        saddr = None if packet.saddr.is_unspecified else packet.saddr
        route, rule = space.decide(packet.daddr, saddr, iif, packet.mark)
        from_iif = f" from {packet.saddr} iif {iif}" if iif else ""
        by = "" if rule is None or (rule.table == MAIN and rule.action == "lookup") else \
            f" (ip rule {rule.text()})"
        main = best_route(space.routes, packet.daddr) if by else None
        if route is None:
            self.hop("route", space.label, f"{what}: no route to {packet.daddr}{from_iif}")
            net = ipaddress.ip_network(f"{packet.daddr}/{32 if packet.version == 4 else 128}")
            gateway = self.gateway_for(space, packet.version)
            fix = in_space(space, f"ip route add {net} via GATEWAY") + " (the router " \
                f"that reaches {packet.daddr}), or a default route"
            if gateway is not None:
                fix = "a default route through " + f"{gateway[1]}: " + in_space(
                    space, f"ip route add default via {gateway[0]}") + f" (or only {net})"
            summary = f"{space.label} has no route to {packet.daddr}"
            inside = self.internal_only(space, packet.version)
            if space.label.startswith("container ") and not any(
                    a.version == packet.version and not (a.ip.is_loopback or a.ip.is_link_local)
                    for i in space.ifaces for a in i.addrs):
                summary = f"{space.label} has no IPv{packet.version} address, so no route " \
                    f"to {packet.daddr}"
                fix = f"connect the container to a network with IPv{packet.version} as well " \
                    "(portway network connect NETWORK CONTAINER)"
            elif inside:
                summary += f": {' and '.join(inside)} {'is' if len(inside) == 1 else 'are'} " \
                    "internal, with no way out on purpose"
                fix = "connect the container to a network that is not internal as well " \
                    "(portway network connect NETWORK CONTAINER)"
            self.end("no-route", summary, packet, fix)
        assert route is not None
        if route.kind != "unicast":
            self.hop("route", space.label, f"{what}: {route.text(packet.daddr)}{from_iif}{by}")
            fix = in_space(space, f"ip route del {route.kind} {route.dst}"
                           + (f" table {route.table}" if route.table != MAIN else ""))
            if rule is not None and by:
                fix = self.rule_fix(space, rule, main, packet)
            self.end("no-route" if route.kind != "blackhole" else "dropped",
                     f"{space.label} routes {packet.daddr} to {route.kind}{by}", packet, fix)
        if by and main is not None and main != route:
            by += f", not the main table's {main.text(packet.daddr)}"
        dev = space.iface(route.dev)
        how = "" if dev is None or dev.kind == "bridge" else \
            f"; {space.neighbour(route.dev, route.gateway or packet.daddr)}"
        self.hop("route", space.label,
                 f"{what}: {route.text(packet.daddr)}{from_iif}{by}{how}")
        return route

    def internal_only(self, space: Space, version: int) -> list[str]:
        """The internal networks space is on, if it is on no other network of the family
        (its addresses all in internal subnets): their names; else none."""
        names: list[str] = []
        for i in space.ifaces:
            for a in i.addrs:
                if a.version != version or a.ip.is_link_local or a.ip.is_loopback:
                    continue
                name = next((n for sub, n in self.world.internal if a.ip in sub), None)
                if name is None:
                    return []
                names.append(f"network {name}")
        return list(dict.fromkeys(names))

    def gateway_for(self, space: Space, version: int) -> tuple[IPAddress, str] | None:
        """A router on space's own links: the address, on one of its subnets, of what
        its veth leads to (the bridge a port belongs to, or the other end itself)."""
        for i in space.ifaces:
            if i.peer is None:
                continue
            other = self.world.spaces.get(i.peer[0]) if i.peer[0] != self.world.host.key \
                else self.world.host
            end = other.iface(i.peer[1]) if other is not None else None
            if other is None or end is None:
                continue
            router = other.iface(end.master) if end.master else end
            for a in router.addrs if router is not None else ():
                if a.version == version and any(a.ip in mine.network for mine in i.addrs):
                    return a.ip, f"{router.name if router else '?'} in {other.label}"
        return None

    def rule_fix(self, space: Space, rule: Rule, main: Route | None, packet: Packet) -> str:
        """A rule, ahead of the one that took the packet elsewhere, that keeps the
        destination in the main table."""
        to = main.dst if main is not None and main.dst.prefixlen else ipaddress.ip_network(
            f"{packet.daddr}/{32 if packet.version == 4 else 128}")
        return "keep it in the main table with a rule ahead of " + \
            f"{rule.priority}: " + in_space(space, f"ip rule add to {to} lookup main "
                                                   f"priority {max(rule.priority - 1, 1)}")

    def to_local(self, space: Space, packet: Packet) -> None:
        packet = self.hook(space, ip_families(packet), "input", packet)
        self.socket(space, packet)

    def socket(self, space: Space, packet: Packet) -> None:
        if self.replying:
            self.hop("socket", space.label, f"the client's socket on "
                     f"{hostport(packet.daddr, packet.dport)} takes the reply from "
                     f"{hostport(packet.saddr, packet.sport)}")
            self.end("delivered", f"the reply reaches the client in {space.label}", packet)
        # A socket on :: takes IPv4 too (unless IPV6_V6ONLY, which is not observed).
        wildcards = ("0.0.0.0", "::") if packet.version == 4 else ("::",)
        for addr in (str(packet.daddr), *wildcards):
            if (packet.l4proto, addr, packet.dport) in space.portway_sockets:
                self.portway_socket(space, packet, addr)
            if (packet.l4proto, addr, packet.dport) in space.listeners:
                self.hop("socket", space.label, f"a {packet.l4proto} socket listens on "
                         f"{hostport(addr, packet.dport)}; it sees the connection from "
                         f"{hostport(packet.saddr, packet.sport)}")
                self.answered_here(space, packet)
                self.reply(space, packet)
                self.path_mtu(packet)
                self.end("delivered", f"delivered to {space.label}, "
                         f"{hostport(packet.daddr, packet.dport)}/{packet.l4proto}", packet)
        answer = {"tcp": "TCP RST", "sctp": "SCTP ABORT" if self.world.sctp else
                  "ICMP protocol unreachable: this kernel has no SCTP"
                  }.get(packet.l4proto, "ICMP port unreachable")
        self.hop("socket", space.label, f"nothing listens on "
                 f"{hostport(packet.daddr, packet.dport)}/{packet.l4proto}: the answer is "
                 f"{answer}")
        summary = f"reaches {space.label}, but nothing listens on {packet.dport}/" \
                  f"{packet.l4proto} ({answer})"
        elsewhere = sorted(a for p, a, port in space.listeners
                           if p == packet.l4proto and port == packet.dport)
        wildcard = "0.0.0.0" if packet.version == 4 else "::"
        if elsewhere:
            only = ", ".join(hostport(a, packet.dport) for a in elsewhere)
            summary += f"; it listens only on {only}"
            fix = f"make the server bind {wildcard} (every address) or " \
                  f"{packet.daddr}, not {' or '.join(elsewhere)}"
            if all(ipaddress.ip_address(a).is_loopback for a in elsewhere):
                summary += f", which is reached only from inside {space.label}; bind " \
                           f"{wildcard}"
        else:
            fix = f"start the server on {hostport(packet.daddr, packet.dport)}/" \
                  f"{packet.l4proto} (or bind {wildcard}), or connect to the port it " \
                  "listens on"
        if space is self.world.host and self.world.published and not self.host_nat:
            summary += f"; {packet.dport}/{packet.l4proto} is not a published port " \
                       f"(published: {', '.join(self.world.published)})"
            fix += "; or publish the port (portway run -p HOSTPORT:PORT ...), or connect " \
                   "to one of the published ports"
        self.end("no-listener", summary, packet, fix)

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
                 "through its DNAT rule, which this packet did not meet", packet,
                 "connect to the published port on a host address its DNAT rule takes "
                 "(portway port CONTAINER lists them)")

    def egress(self, space: Space, route: Route, packet: Packet) -> None:
        iface = space.iface(route.dev)
        nexthop = route.gateway or packet.daddr
        if iface is not None and iface.mtu:
            self.mtus.append((space.label, iface.name, iface.mtu))
        if iface is None:
            self.end("dropped", f"{route.dev} does not exist in {space.label}", packet,
                     in_space(space, f"ip route del {route.dst}") + " (its device is gone), "
                     "or recreate the device")
        assert iface is not None
        self.ipv6_disabled(space, iface, packet, arriving=False)
        if iface.kind == "macvlan":  # to a sibling recorded, if one holds nexthop
            self.macvlan_out(space, iface, nexthop, packet)
        if iface.kind == "bridge" and space is self.world.host:
            self.bridge_out(iface, nexthop, packet)
        elif iface.kind == "bridge":
            self.bridge_out_of(space, iface, nexthop, packet)
        elif iface.kind == "macvlan":  # no sibling recorded holds nexthop
            self.macvlan_leaves(space, iface, nexthop, packet)
        elif iface.peer is not None:
            peer_space = self.world.space(iface.peer[0])
            peer = peer_space.iface(iface.peer[1])
            self.hop("veth", f"{iface.name} -> {iface.peer[1]}",
                     f"veth pair: {iface.name} #{iface.index} in {space.label} -> "
                     f"{iface.peer[1]} #{peer.index if peer else '?'} in {peer_space.label}")
            if peer is None:
                self.end("dropped", f"the veth's other end {iface.peer[1]} is missing",
                         packet, "recreate the container's attachment (portway gc repairs "
                         "portway's own)")
            assert peer is not None
            if peer.master:
                self.bridge_in(peer_space, peer, nexthop, packet, iface.mac)
            elif peer_space is self.world.host:
                self.host_in(packet, peer.name)
            else:
                self.ingress(peer_space, peer.name, packet)
        elif space is self.world.host and self.replying:
            self.hop("leave", space.label, f"out of {iface.name} towards {nexthop}: back "
                     f"to the client, from {hostport(packet.saddr, packet.sport)}")
            self.end("leaves-host", f"the reply leaves through {iface.name}", packet)
        elif space is self.world.host:
            self.hop("leave", space.label, f"out of {iface.name} towards {nexthop}: leaves "
                     f"the host with source {packet.saddr}")
            summary = f"leaves the host through {iface.name}; the far end sees " \
                      f"{hostport(packet.saddr, packet.sport)}"
            # (First: what happens beyond, a gateway or a way back, matters only if the
            # packet was meant to go there.)
            astray = self.astray(space, iface, packet)
            if astray is not None:
                self.end("leaves-host", f"{summary}; {astray[0]}", packet, astray[1])
            self.unreachable_gateway(space, iface, nexthop, packet)
            self.no_way_back(space, iface, packet)
            if self.world.beyond:
                self.walk_reply(packet, lambda r: self.from_beyond(iface, r),
                                f"the request leaves the host through {iface.name}")
            self.path_mtu(packet)
            self.end("leaves-host", summary, packet)
        else:
            self.end("leaves-host", f"leaves {space.label} through {iface.name}", packet)

    def macvlan_leaves(self, space: Space, iface: Iface, nexthop: IPAddress,
                       packet: Packet) -> None:
        """Out of a macvlan device (a container on a macvlan network): the frame leaves by
        the parent interface straight onto its LAN, below the host's IP stack, so no
        route, rule or conntrack of the host's is on its way (nor, in bridge mode, for a
        sibling on the same parent, which the parent delivers itself)."""
        parent = iface.peer[1] if iface.peer is not None else "its parent"
        self.hop("macvlan", f"{iface.name} -> {parent}",
                 f"macvlan device {iface.name} #{iface.index} in {space.label}: the frame "
                 f"to {nexthop} goes out of the parent {parent} onto its LAN, past the "
                 "host's routes and firewall")
        self.end("leaves-host", f"leaves through {iface.name}, a macvlan device of "
                 f"{parent}, onto the LAN; a container on the same parent is reached there "
                 "in bridge mode (not in private mode), the host itself never (the parent "
                 "does not pass frames between itself and its macvlan devices)", packet)

    def astray(self, space: Space, iface: Iface, packet: Packet) -> tuple[str, str] | None:
        """Why a packet leaving by iface likely was not meant to, and the fix: its
        destination is in the subnet of another interface of space (a bridge with
        containers behind it, say), whose route the lookup did not find: the interface
        is down (taking it down removed its routes, not its addresses), or its route was
        deleted. None when nothing says it was meant to stay."""
        for other in space.ifaces:
            if other.name in (iface.name, "lo"):
                continue
            for a in other.addrs:
                if a.version != packet.version or a.ip.is_link_local or \
                        a.network.prefixlen == 0 or packet.daddr not in a.network:
                    continue
                if not other.up:
                    return (f"{packet.daddr} is in {a.network} of {other.name}, which is "
                            f"down (so is its route): it was likely meant for {other.name}",
                            in_space(space, f"ip link set {other.name} up"))
                return (f"{packet.daddr} is in {a.network} of {other.name}, but no route "
                        f"leads there: it was likely meant for {other.name}",
                        in_space(space, f"ip route add {a.network} dev {other.name} src "
                                        f"{a.ip}"))
        return None

    def holder(self, bridge: str, addr: IPAddress) -> tuple[Space, Iface, Iface] | None:
        """The container end holding addr behind a port of bridge, with that port."""
        return self.world.holder(bridge, addr)

    def bridge_out_of(self, space: Space, bridge: Iface, nexthop: IPAddress,
                      packet: Packet) -> None:
        """A namespace other than the host (a lab's, a VM host's) sends through a bridge
        of its own: to the port whose other end (a veth into a namespace recorded, such as
        the VMs behind it) holds nexthop."""
        other, inner, port = self.port_in(space, bridge, nexthop, packet)
        self.hop("bridge", f"{bridge.name} ({space.label})",
                 f"{space.neighbour(bridge.name, nexthop)}; "
                 f"{space.learned(bridge.name, inner.mac, port.name)} ({other.label})")
        packet = replace(packet, iif="", oif=port.name, smac=bridge.mac, dmac=inner.mac)
        packet = self.hook(space, ("bridge",), "output", packet)
        self.hop("veth", f"{port.name} -> {inner.name}", f"veth pair: {port.name} "
                 f"#{port.index} in {space.label} -> {inner.name} #{inner.index} in "
                 f"{other.label}")
        if other is self.world.host:
            self.host_in(packet, inner.name)
        else:
            self.ingress(other, inner.name, packet)

    def macvlan_out(self, space: Space, iface: Iface, nexthop: IPAddress,
                    packet: Packet) -> None:
        """Out of a macvlan: to a sibling on the same lower device that holds nexthop,
        straight across where both are in bridge mode (the frame never leaves by the lower
        device); in vepa mode by the lower device, to come back only if the switch beyond
        reflects it (hairpin); never in private mode. Returns when no sibling recorded
        holds nexthop (the frame leaves by the lower device)."""
        if iface.lower is None:
            return
        sibling = None
        for other in (self.world.host, *dict.values(self.world.spaces)):
            for i in other.ifaces:
                if i.kind == "macvlan" and i.lower == iface.lower and i is not iface and \
                        any(a.ip == nexthop for a in i.addrs):
                    sibling = (other, i)
        if sibling is None:
            return
        other, inner = sibling
        what = f"{iface.name} -> {inner.name}"
        pair = f"macvlan {iface.name} ({iface.mode or '?'} mode) in {space.label} -> " \
               f"its sibling {inner.name} ({inner.mode or '?'} mode) in {other.label}"
        if iface.mode == "bridge" and inner.mode == "bridge":
            self.hop("mvlan", what, f"{pair}, on the same lower device (#{iface.lower[1]}): "
                     f"in bridge mode the frame to {nexthop} goes straight across, not out "
                     f"of the lower device; {space.neighbour(iface.name, nexthop)}")
            if not inner.up:
                self.end("dropped", f"{inner.name} in {other.label} is down", packet,
                         in_space(other, f"ip link set {inner.name} up"))
            self.ingress(other, inner.name, packet)
            return
        fix = "put both in bridge mode: " + in_space(
            space, f"ip link set {iface.name} type macvlan mode bridge") + " && " + \
            in_space(other, f"ip link set {inner.name} type macvlan mode bridge")
        if "private" in (iface.mode, inner.mode):
            why = "a macvlan in private mode talks to none of its siblings"
            self.hop("mvlan", what, f"{pair}: {nexthop} is the sibling's; {why}")
            self.end("no-route", f"{why} ({iface.name} in {space.label}, {inner.name} "
                     f"in {other.label}): {asks(nexthop)} gets no answer", packet, fix)
        why = f"{iface.name} is in {iface.mode or 'vepa'} mode: a frame to a sibling leaves " \
              "by the lower device, and comes back only if the switch beyond sends it back " \
              "(hairpin, reflective relay)"
        self.hop("mvlan", what, f"{pair}: {nexthop} is the sibling's; {why}; a veth or a "
                 f"plain switch port does not, so {asks(nexthop)} gets no answer")
        self.end("no-route", f"{why}; only bridge mode lets siblings talk directly", packet,
                 fix)

    def holder_in(self, space: Space, bridge: str, addr: IPAddress
                  ) -> tuple[Space, Iface, Iface] | None:
        """The end holding addr behind a veth port of bridge in space (any namespace's
        bridge), with that port."""
        if space is self.world.host:
            return self.holder(bridge, addr)
        for port in space.ifaces:
            if port.master != bridge or port.peer is None:
                continue
            other = self.world.host if port.peer[0] == self.world.host.key else \
                self.world.spaces.get(port.peer[0])
            inner = other.iface(port.peer[1]) if other is not None else None
            if other is not None and inner is not None and \
                    any(a.ip == addr for a in inner.addrs):
                return other, inner, port
        return None

    def port_in(self, space: Space, bridge: Iface, nexthop: IPAddress, packet: Packet
                ) -> tuple[Space, Iface, Iface]:
        """The end holding nexthop behind bridge of a namespace other than the host (a
        lab's, a VM host's), and its port; or the end of the walk, saying what else is
        behind the bridge that no trace can look into (a VM's tap)."""
        found = self.holder_in(space, bridge.name, nexthop)
        if found is not None:
            return found
        where = f"{bridge.name} ({space.label})"
        detail = f"nothing behind {bridge.name} has {nexthop}: {asks(nexthop)} gets no answer"
        fix = f"check that {nexthop} is the right address, and that what holds it is " \
              f"attached to {bridge.name} in {space.label} and up"
        taps = [p for p in space.ifaces if p.master == bridge.name and p.kind == "tun"]
        dead = [p.name for p in taps if not p.carrier]
        if dead:
            detail += f"; {', '.join(dead)} (a tap: a VM's port) has no carrier: no " \
                      "process holds it (the VM is not running), so what is behind it " \
                      "answers nothing"
            fix = f"start the VM that holds {dead[0]} (if it is the one with {nexthop}), " \
                  f"or {fix}"
        elif taps:
            detail += f"; what is behind {', '.join(p.name for p in taps)} (a tap: a VM's " \
                      "port, held by its process) is not seen from here"
        self.hop("bridge", where, detail)
        self.end("no-route", f"nothing behind {bridge.name} in {space.label} holds "
                 f"{nexthop}" + (f" ({dead[0]} has no carrier)" if dead else ""), packet, fix)
        raise AssertionError("end() returns not")

    def bridge_nf(self, space: Space, version: int) -> bool:
        """Bridge netfilter (call-iptables or -ip6tables) for the bridges of space."""
        if space is self.world.host or space.bridge_nf is None:
            return self.world.bridge_netfilter(version)
        return space.bridge_nf[0 if version == 4 else 1]

    def bridge_out(self, bridge: Iface, nexthop: IPAddress, packet: Packet) -> None:
        """The host sends through its bridge to the port behind which nexthop lives."""
        host = self.world.host
        space, inner, port = self.port_of(bridge, nexthop, packet, routed=True)
        self.hop("bridge", bridge.name, f"{host.neighbour(bridge.name, nexthop)}; "
                 f"{host.learned(bridge.name, inner.mac, port.name)} ({space.label})")
        packet = replace(packet, iif="", oif=port.name, smac=bridge.mac, dmac=inner.mac)
        packet = self.hook(host, ("bridge",), "output", packet)
        self.out_of_port(port, space, inner, packet)

    def without_ipv6(self, bridge: str, addr: IPAddress) -> tuple[Space, Iface] | None:
        """The container (and its interface) behind bridge that was given addr, an IPv6
        address, but has IPv6 turned off on that interface (disable_ipv6=1, which removed
        the address): known from the recorder's index of who holds what, not from the
        namespace, which no longer shows it."""
        hinted = self.world.behind.get((bridge, addr)) if addr.version == 6 else None
        if hinted is None:
            return None
        port = self.world.host.iface(hinted[1])
        inner = self.world._peer(port) if port is not None and port.peer is not None \
            and port.peer[0] == hinted[0] else None
        if inner is None or not inner.disable_ipv6:
            return None
        return self.world.space(hinted[0]), inner

    def port_of(self, bridge: Iface, nexthop: IPAddress, packet: Packet,
                routed: bool = False) -> tuple[Space, Iface, Iface]:
        """The container end holding nexthop behind bridge, and its port; or the end.
        routed: the host's route lookup chose the bridge (a shadowing route is looked
        for)."""
        found = self.holder(bridge.name, nexthop)
        if found is None:
            self.tunnel_out(bridge, nexthop, packet)
            detail = f"nothing behind {bridge.name} has {nexthop}: {asks(nexthop)} gets no " \
                     "answer"
            summary = f"no container holds {nexthop} on {bridge.name}"
            fix = f"check that {nexthop} is the right address (and that what holds it is " \
                  f"attached to {bridge.name} and up)"
            host = self.world.host
            chosen = best_route(host.routes, nexthop) if routed else None
            # A default route is not shadowed: every route is more specific than it.
            other = best_route([r for r in host.routes if r.dev != bridge.name
                                and r.kind == "unicast" and r is not chosen
                                and r.dst.prefixlen > 0], nexthop) \
                if chosen is not None else None
            if chosen is not None and other is not None:
                way = f"{other.dst}" + (f" via {other.gateway}" if other.gateway else "") + \
                    f" dev {other.dev}"
                detail += f"; the route {chosen.dst} dev {bridge.name} is more specific " \
                          f"than {way}, which it shadows"
                summary += f": the route {chosen.dst} dev {bridge.name} shadows {way}"
                single = ipaddress.ip_network(f"{nexthop}/{32 if nexthop.version == 4 else 128}")
                fix = f"give {bridge.name} a subnet that does not overlap {other.dst}, or " \
                      f"route {nexthop} the intended way: ip route add {single}" + \
                      (f" via {other.gateway}" if other.gateway else "") + f" dev {other.dev}"
            off = self.without_ipv6(bridge.name, nexthop)
            if off is not None:
                space, inner = off
                key = f"net.ipv6.conf.{inner.name}.disable_ipv6"
                detail += f"; {space.label}, which {nexthop} was given, has IPv6 turned off " \
                          f"on {inner.name} ({key}=1): it holds no IPv6 address and answers " \
                          "no neighbour discovery"
                summary = f"{space.label} has IPv6 turned off on {inner.name} ({key}=1)"
                fix = in_space(space, f"sysctl -w {key}=0") + f", then give {inner.name} " \
                    f"{nexthop} again (turning IPv6 off removed it; restarting the " \
                    "container does both), or trace its IPv4 address (-4)"
            self.hop("bridge", bridge.name, detail)
            self.end("no-route", summary, packet, fix)
        assert found is not None
        return found

    def tunnel_out(self, bridge: Iface, nexthop: IPAddress, packet: Packet) -> None:
        """nexthop lives on another host of an overlay network: behind the bridge's VXLAN
        port, whose neighbour entry answers ARP/ND here and whose FDB entry names the
        remote VTEP; the frame leaves encapsulated (ends the trace). Returns if no VXLAN
        port of the bridge knows nexthop."""
        host = self.world.host
        for port in host.ifaces:
            tunnel = host.tunnels.get(port.name)
            if port.master != bridge.name or tunnel is None:
                continue
            known = host.neighbours.get((port.name, str(nexthop)))
            if known is None:
                continue
            mac = known[0].lower()
            who = tunnel.remote.get(mac, "an endpoint on another host")
            self.hop("bridge", bridge.name, f"{nexthop} is {who}: {asks(nexthop)} is answered "
                     f"on this host by {port.name} from its neighbour entry {mac} "
                     f"({known[1]}), nothing is flooded; the frame goes to port {port.name}")
            if self.world.bridge_netfilter(packet.version):
                ip = replace(packet, iif=bridge.name, oif=bridge.name)
                families = ip_families(packet)
                ip = self.hook(host, families, "prerouting", ip)
                ip = self.hook(host, families, "forward", ip)
                ip = self.hook(host, families, "postrouting", ip)
                packet = replace(ip, oif=port.name)
            packet = self.hook(host, ("bridge",), "forward", replace(packet, oif=port.name))
            vtep = tunnel.fdb.get(mac)
            if vtep is None:
                self.hop("vxlan", port.name, f"no FDB entry for {mac}: {port.name} learns "
                         "nothing and floods nothing, so the frame goes nowhere")
                self.end("dropped", f"{port.name} has no FDB entry for {mac} (run 'portway "
                         "doctor' on this host: gc reprograms it from the cluster store)",
                         packet)
            assert vtep is not None
            self.hop("vxlan", port.name, f"FDB: {mac} -> VTEP {vtep}; encapsulated in "
                     f"VXLAN (VNI {tunnel.vni}): UDP {tunnel.local} -> {vtep}:{tunnel.port}, "
                     f"{vxlan_overhead(ipaddress.ip_address(vtep).version)} bytes more "
                     f"than the inner frame (device MTU {tunnel.mtu})")
            route = host.lookup(ipaddress.ip_address(vtep))
            if route is None:
                self.end("no-route", f"the host has no route to the VTEP {vtep}", packet)
            assert route is not None
            self.hop("route", host.label, f"underlay: route lookup: "
                     f"{route.text(ipaddress.ip_address(vtep))}")
            self.trace.tunnel = TunnelLeg(local=tunnel.local, vtep=vtep, vni=tunnel.vni,
                                          port=tunnel.port, device=port.name, dmac=mac,
                                          smac=packet.smac, packet=packet)
            self.end("leaves-host", f"tunnelled to host {vtep} (VNI {tunnel.vni}) for {who}; "
                     f"that host's {port.name} takes it from there (trace on that host "
                     "for its half)", packet)
        return

    def out_of_port(self, port: Iface, space: Space, inner: Iface, packet: Packet,
                    bridged_in: Space | None = None) -> None:
        """Out of a bridge port (of the host's bridge, or of one in bridged_in) into
        the namespace at the veth's other end."""
        host = bridged_in or self.world.host
        self.hop("veth", f"{port.name} -> {inner.name}", f"veth pair: {port.name} "
                 f"#{port.index} in {host.label} -> {inner.name} #{inner.index} in "
                 f"{space.label}")
        if space is self.world.host:
            self.host_in(packet, inner.name)
        else:
            self.ingress(space, inner.name, packet)

    def bridge_in(self, host: Space, port: Iface, nexthop: IPAddress, packet: Packet,
                  smac: str) -> None:
        """A frame from a container enters its bridge port."""
        bridge = host.iface(port.master)
        if bridge is None:
            self.end("dropped", f"bridge {port.master} is missing", packet,
                     f"recreate bridge {port.master}, or detach the port from it")
        assert bridge is not None
        gateway = any(a.ip == nexthop for a in bridge.addrs)
        where = bridge.name if host is self.world.host else f"{bridge.name} ({host.label})"
        found = None if gateway else self.holder_in(host, bridge.name, nexthop)
        dmac = bridge.mac if gateway else found[1].mac if found else ""
        packet = replace(packet, iif=port.name, oif="", smac=smac, dmac=dmac)
        packet = self.hook(host, ("bridge",), "prerouting", packet)
        if not gateway and host is self.world.host:
            space, inner, out_port = self.port_of(bridge, nexthop, packet)
        elif not gateway:  # a bridge of another namespace (a lab's, a VM host's)
            space, inner, out_port = self.port_in(host, bridge, nexthop, packet)
        if gateway:
            self.hop("bridge", where, f"destination MAC {bridge.mac} is the bridge's "
                     f"own ({nexthop}): up to the host's IP layer")
            packet = self.hook(host, ("bridge",), "input", packet)
            if host is self.world.host:
                self.host_in(replace(packet, iif=bridge.name), bridge.name)
            else:  # a bridge of another namespace (a lab's, a VM host's)
                self.ingress(host, bridge.name, replace(packet, iif=bridge.name))
            return
        self.hop("bridge", where, f"{host.learned(bridge.name, dmac, out_port.name)} "
                 f"({space.label}): bridged, not routed")
        call = "bridge-nf-call-iptables" if packet.version == 4 else "bridge-nf-call-ip6tables"
        if host is not self.world.host:
            call += f" in {host.label}"
        if self.bridge_nf(host, packet.version):
            ip = replace(packet, iif=bridge.name, oif=bridge.name)
            self.hop("bridge", where, f"bridge netfilter is on ({call}=1): the IP "
                     f"hooks see this bridged packet, with {bridge.name} as both devices")
            families = ip_families(packet)
            ip = self.hook(host, families, "prerouting", ip)
            ip = self.hook(host, families, "forward", ip)
            ip = self.hook(host, families, "postrouting", ip)
            packet = replace(ip, iif=port.name, oif=out_port.name)
        else:
            self.hop("bridge", where, f"bridge netfilter is off ({call}=0): the IP "
                     "hooks do not see bridged packets")
            packet = replace(packet, oif=out_port.name)
        packet = self.hook(host, ("bridge",), "forward", packet)
        self.out_of_port(out_port, space, inner, packet, host)

    def ipv6_disabled(self, space: Space, iface: Iface | None, packet: Packet,
                      arriving: bool) -> None:
        """IPv6 turned off on an interface (disable_ipv6=1): the kernel drops every IPv6
        packet that arrives on it at the IP layer (on receipt, before any netfilter hook)
        or is routed out of it. Bridged frames never meet it: they stay below IP."""
        if packet.version != 6 or iface is None or not iface.disable_ipv6:
            return
        key = f"net.ipv6.conf.{iface.name}.disable_ipv6"
        how = "arriving on" if arriving else "routed out of"
        self.hop("route", space.label, f"{key} is 1: IPv6 is off on {iface.name}; the "
                 f"kernel drops every IPv6 packet {how} it")
        self.end("dropped", f"IPv6 is disabled on {iface.name} in {space.label} ({key}=1)",
                 packet, in_space(space, f"sysctl -w {key}=0") + " (turning it off removed "
                 f"the IPv6 addresses of {iface.name}: add them again)")

    def host_in(self, packet: Packet, iif: str) -> None:
        """A packet arriving at the host's IP layer on iif."""
        host = self.world.host
        packet = replace(packet, iif=iif, oif="")
        self.ipv6_disabled(host, host.iface(iif), packet, arriving=True)
        if packet.version == 6 and is_loopback(packet.daddr) and iif != "lo":
            self.hop("route", host.label, f"::1 arriving on {iif}: IPv6 drops a loopback "
                     "destination from any other interface on receipt, before any "
                     "netfilter hook (it has no route_localnet)")
            self.end("dropped", f"the kernel drops ::1 arriving on {iif} (martian "
                     "destination)", packet, "connect to an address of the host other "
                     "than ::1")
        families = ip_families(packet)
        packet = self.hook(host, families, "prerouting", packet)
        iface = host.iface(iif)
        if is_loopback(packet.daddr) and not (iface and iface.route_localnet):
            self.hop("route", host.label, f"{packet.daddr} arriving on {iif}: a martian "
                     "destination (127/8 from outside), which the kernel drops")
            self.end("dropped", f"the kernel drops {packet.daddr} arriving on {iif} "
                     "(martian destination)", packet, "connect to an address of the host "
                     "that is not loopback; a service (or a port published) on 127.0.0.1 is "
                     "for the host's own clients: to reach it from here, bind (or publish) "
                     f"it on another address (route_localnet=1 on {iif} would let 127/8 in "
                     "from that link, and expose every loopback-only service)")
        self.reverse_path(host, packet, iif)
        route = self.route(host, packet, iif=iif)
        if route is None:
            self.to_local(host, packet)
            return
        self.forwarding(host, packet, iif)
        packet = replace(packet, oif=route.dev)
        packet = self.hook(host, families, "forward", packet)
        packet = self.hook(host, families, "postrouting", packet)
        self.egress(host, route, packet)

    def forwarding(self, space: Space, packet: Packet, iif: str) -> None:
        """Forwarding on in space for the packet's family, and (IPv4) on the interface it
        arrived on: the kernel forwards what arrives on an interface whose own
        `forwarding` is 1 (ip_forward sets every interface's; one can be turned off)."""
        iface = space.iface(iif)
        if not space.forwards(packet.version, iif):
            key = "net.ipv4.ip_forward" if packet.version == 4 else \
                "net.ipv6.conf.all.forwarding"
            self.hop("route", space.label, f"{key} is 0: nothing is forwarded")
            alone = f" (or for what arrives on {iif} alone: " + in_space(
                space, f"sysctl -w net.ipv6.conf.{iif}.force_forwarding=1") + ", Linux 6.17)" \
                if packet.version == 6 else ""
            self.end("dropped", f"{space.label} does not forward "
                     f"({key.rsplit('.', 1)[-1]}=0 for IPv{packet.version})", packet,
                     in_space(space, f"sysctl -w {key}=1") + alone)
        if packet.version == 6 and not space.forwarding6:
            self.hop("route", space.label, f"net.ipv6.conf.all.forwarding is 0, but "
                     f"net.ipv6.conf.{iif}.force_forwarding is 1: what arrives on {iif} is "
                     "forwarded")
        if packet.version == 4 and iface is not None and not iface.forwarding:
            key = f"net.ipv4.conf.{iif}.forwarding"
            self.hop("route", space.label, f"{key} is 0: what arrives on {iif} is not "
                     "forwarded (ip_forward is 1, but this interface's own setting is off)")
            self.end("dropped", f"{space.label} does not forward what arrives on {iif} "
                     f"({key}=0)", packet, in_space(space, f"sysctl -w {key}=1"))

    def reverse_path(self, space: Space, packet: Packet, iif: str) -> None:
        """Reverse path filtering (IPv4, rp_filter): strict (1) drops a packet whose
        source the namespace would not route back out of the interface it came in on;
        loose (2) one whose source it cannot route at all."""
        if packet.version != 4 or iif == "lo" or packet.saddr in space.local() or \
                packet.saddr.is_unspecified:
            return
        mode = space.rp_mode(iif)
        if not mode:
            return
        back = space.lookup(packet.saddr, packet.daddr)
        ok = back is not None and back.kind == "unicast" and (mode == 2 or back.dev == iif)
        if ok:
            return
        key = f"net.ipv4.conf.{iif}.rp_filter"
        way = "no route" if back is None else back.text(packet.saddr)
        self.hop("route", space.label,
                 f"reverse path filter ({'strict' if mode == 1 else 'loose'}, rp_filter="
                 f"{mode} on {iif}): the way back to {packet.saddr} is {way}, not {iif}: "
                 "the kernel drops the packet on receipt")
        net = ipaddress.ip_network(f"{packet.saddr}/32")
        why = f"strict reverse path filtering on {iif}, while its route back to " \
              f"{packet.saddr} leaves by {back.dev} (asymmetric routing)" \
            if mode == 1 and back is not None and back.kind == "unicast" else \
            f"reverse path filtering on {iif}, and it has no route back to {packet.saddr}"
        self.end("dropped", f"{space.label} drops it on receipt: {why}", packet,
                 "loose reverse path filtering (the larger of all's and the interface's "
                 "holds): " + in_space(space, f"sysctl -w {key}=2") + ", or a route back "
                 "through the interface it came in on: "
                 + in_space(space, f"ip route add {net} dev {iif}"))

    def unreachable_gateway(self, space: Space, iface: Iface, nexthop: IPAddress,
                            packet: Packet) -> None:
        """The next hop beyond the host's edge, when the neighbour table says it did not
        answer (FAILED)."""
        found = space.neighbours.get((iface.name, str(nexthop)))
        if found is None or found[1] != "failed":
            return
        self.hop("route", space.label, f"{asks(nexthop)} for the next hop {nexthop} on "
                 f"{iface.name} failed: the neighbour entry is FAILED (nothing answered)")
        self.end("no-route", f"the next hop {nexthop} does not answer on {iface.name}",
                 packet, f"check that {nexthop} is up and on {iface.name}'s link (ip neigh "
                 f"show dev {iface.name}), or correct the route's gateway")

    def no_way_back(self, space: Space, iface: Iface, packet: Packet) -> None:
        """The reply of a packet that leaves the host un-masqueraded, from a private
        address that is not on the network beyond: nobody there routes it back."""
        src = packet.saddr
        if not self.world.beyond or packet.ct_state != "new" or src in space.local() or \
                not src.is_private or \
                any(src in a.network for a in iface.addrs):
            return
        net = self.network_of(src)
        if any(src in n for n in self.world.routed):
            self.hop("leave", space.label, f"{src} is of a routed network ({net}): its "
                     f"replies come back only if the network beyond {iface.name} routes "
                     f"{net} to this host")
            return
        self.hop("reply", space.label, f"{FAR_END} answers {src}, a private address "
                 f"that is not on {iface.name}'s network and was not masqueraded: nothing "
                 f"beyond {iface.name} routes it back to this host")
        self.end("no-route", f"the request leaves through {iface.name} with source {src} "
                 f"(not masqueraded); the reply has no way back to {src} unless the "
                 f"network beyond routes {net} to this host", packet,
                 f"masquerade what leaves {iface.name}: nft add table ip nat && nft add "
                 "chain ip nat postrouting '{ type nat hook postrouting priority srcnat; }' "
                 f"&& nft add rule ip nat postrouting ip saddr {net} oifname "
                 f"'\"{iface.name}\"' masquerade" if src.version == 4 else
                 f"masquerade what leaves {iface.name} (ip6 saddr {net} oifname "
                 f"\"{iface.name}\" masquerade), or route {net} to this host")

    def path_mtu(self, packet: Packet) -> None:
        """Sizes: a device on the path with a smaller MTU than the sender's (a tunnel such
        as wg0 at 1420) makes full-size TCP segments depend on path MTU discovery, unless
        a rule clamps the MSS. A SYN passes either way; the note (and Trace.mtu, with the
        clamp rule to add in the namespace that holds the device) says why large
        transfers may stall."""
        if packet.l4proto != "tcp" or len(self.mtus) < 2:
            return
        first = self.mtus[0][2]
        where, dev, low = min(self.mtus, key=lambda m: m[2])
        if low >= first:
            return
        clamp = any(_clamps(r) for sp in (self.world.host, *self.world.spaces.values())
                    for r in sp.ruleset if "rule" in r)
        header = 40 if packet.version == 4 else 60
        detail = f"path MTU {low} ({dev} in {where}) is below the sender's {first}: TCP " \
                 f"segments over {low - header} bytes need path MTU discovery"
        fix = ""
        if clamp:
            detail += "; a rule clamps the MSS (tcp option maxseg), so they are not sent"
        else:
            space = next((sp for sp in (self.world.host, *self.world.spaces.values())
                          if sp.label == where), self.world.host)
            # SYNs that leave by the device get the route's MTU; those that come in by it
            # (the far end's SYN-ACK) the device's, so that both ends send no more.
            fix = "clamp the MSS where the path narrows: " + in_space(
                space, "nft add table inet mss && nft add chain inet mss forward "
                       "'{ type filter hook forward priority mangle; }' && nft add rule "
                       f"inet mss forward oifname \"{dev}\" tcp flags syn tcp option maxseg "
                       "size set rt mtu && nft add rule inet mss forward iifname "
                       f"\"{dev}\" tcp flags syn tcp option maxseg size set {low - header}")
            detail += "; no rule clamps the MSS: if ICMP \"fragmentation needed\" is " \
                      "filtered on the way, small requests work and large transfers " \
                      f"stall ({fix})"
        self.trace.mtu = {"path_mtu": low, "device": dev, "where": where,
                          "sender_mtu": first, "mss": low - header, "clamped": clamp,
                          "fix": fix}
        self.hop("mtu", where, detail)

    def network_of(self, addr: IPAddress) -> IPNetwork:
        """The network of the interface that holds addr, anywhere in the world."""
        for space in (self.world.host, *self.world.spaces.values()):
            for i in space.ifaces:
                for a in i.addrs:
                    if a.ip == addr:
                        return a.network
        return ipaddress.ip_network(addr)

    def answered_here(self, space: Space, packet: Packet) -> None:
        """On the far host of a tunnelled trace: a request whose source is an address of
        that host too (an overlay network's gateway, on every host's bridge: what the
        sending host's own processes use) is answered to that host, not to the client."""
        host = self.world.host
        if not self.client_elsewhere or space is host or packet.saddr not in host.local():
            return
        self.hop("reply", space.label, f"the reply to {packet.saddr} goes to {host.label}, "
                 f"which holds that address too; the client on the host it came from never "
                 "sees it")
        self.end("dropped", f"the request reaches {space.label}, but its reply does not come "
                 f"back: {packet.saddr} is an address of {host.label} as well (an overlay "
                 "network's gateway address is on every host), so the reply ends there",
                 packet, "connect from a container on the overlay network, or to a port the "
                 "container publishes on its host")

    def reply(self, space: Space, packet: Packet) -> None:
        """The answer of a delivered request, from space back to its sender: a route
        back; (when the host rewrote the request) a way back through the host's
        conntrack, which undoes the rewrite; then the reply itself, hook by hook."""
        dst, src = packet.saddr, packet.daddr
        if packet.ct_state != "new" or dst in space.local() or is_loopback(dst):
            return  # a reply itself (its own answer is not asked about), or local
        back = space.lookup(dst, src)
        if back is None or back.kind != "unicast":
            why = "no route" if back is None else back.text(dst)
            self.hop("reply", space.label, f"the reply to {dst}: {why} in {space.label}")
            self.end("no-route", f"the request reaches {space.label}, but its reply has no "
                     f"way back to {dst} ({why})", packet,
                     in_space(space, f"ip route add {self.network_of(dst)} via GATEWAY")
                     + " (the router towards the client), or a default route")
        assert back is not None
        self.hairpin_bridged_back(space, packet, back)
        self.walk_reply(packet, lambda r: self.from_namespace(space, r),
                        f"the request reaches {space.label}")

    def hairpin_bridged_back(self, space: Space, packet: Packet, back: Route) -> None:
        """A DNATed request whose reply is on-link behind the same bridge: with bridge
        netfilter off the reply is bridged straight back, past the host's conntrack."""
        dst = packet.saddr
        asked = self.asked
        if space is self.world.host or not self.host_nat or back.gateway is not None or \
                (packet.daddr, packet.dport) == asked:
            return
        iface = space.iface(back.dev)
        if iface is None or iface.peer is None or iface.peer[0] != self.world.host.key:
            return
        port = self.world.host.iface(iface.peer[1])
        if port is None or not port.master or self.holder(port.master, dst) is None or \
                self.world.bridge_netfilter(packet.version):
            return
        call = "bridge-nf-call-iptables" if packet.version == 4 else "bridge-nf-call-ip6tables"
        self.hop("reply", space.label,
                 f"the reply to {dst} is on-link: {port.master} bridges it straight back, and "
                 f"with bridge netfilter off ({call}=0) the host's conntrack never sees it, "
                 f"so the DNAT is not undone: the client, which sent to "
                 f"{hostport(*asked)}, gets an answer from "
                 f"{hostport(packet.daddr, packet.dport)} and resets it")
        self.end("dropped", f"the request is DNATed to {hostport(packet.daddr, packet.dport)} "
                 f"on the same bridge ({port.master}), but the reply is bridged back without "
                 f"the reverse NAT (bridge netfilter is off): the client drops it", packet,
                 f"sysctl -w net.bridge.{call}=1 (the reply then passes the host's "
                 "conntrack), or masquerade the hairpin so that the reply goes through the "
                 f"host: nft add rule ip nat postrouting ip saddr {self.network_of(dst)} "
                 f"ip daddr {packet.daddr} masquerade (in a nat postrouting chain)")

    def walk_reply(self, packet: Packet, start: Callable[[Packet], None], request: str
                   ) -> None:
        """The reply of the connection whose request arrived as packet, walked back through
        every hook it crosses (start: where it begins): the host's conntrack undoes the
        host's NAT on it (not that of other namespaces, which is not modelled), the nat
        chains are not asked, and rules see it as established. When it comes back its
        hops are kept apart (Trace.reply_hops); when it does not, they end the request's
        and the connection's verdict is the reply's."""
        if self.flow is not None or packet.ct_state != "new":
            return  # a flow conntrack already holds (its entry decides), or a reply itself
        reply = replace(packet, saddr=packet.daddr, sport=packet.dport, daddr=packet.saddr,
                        dport=packet.sport, iif="", oif="", ct_state="established", mark=0,
                        smac="", dmac="")
        at, mtus, routed, nat = len(self.trace.hops), list(self.mtus), self.hops_routed, \
            self.host_nat
        self.replying = True
        try:
            start(reply)
            self.end("dropped", "the reply's path ended without a decision", reply)
            return  # (end() raises)
        except _ReplyEnd as ended:
            outcome = ended
        finally:
            self.replying = False
            self.mtus, self.hops_routed, self.host_nat = mtus, routed, nat
        if outcome.verdict in ("delivered", "leaves-host"):
            self.trace.reply_hops = self.trace.hops[at:]
            del self.trace.hops[at:]
            return
        self.trace.reply_lost = outcome.summary
        self.end(outcome.verdict, f"{request}, but its reply does not come back: "
                 f"{outcome.summary}", packet, outcome.fix)

    def from_beyond(self, uplink: Iface, reply: Packet) -> None:
        """The reply of a request that left the host, from the far end: back on the
        interface that holds the address the far end answers (the network beyond
        delivers an address to the link it is on), which is the uplink the request left
        by unless the request left with another way out's address (a second uplink's)."""
        iface = self.arrival(uplink, reply.daddr)
        why = "" if iface is uplink else f" (it holds {reply.daddr}, the source the far " \
            f"end saw: the network beyond delivers that address there, not to " \
            f"{uplink.name}, which the request left by)"
        self.hop("reply", self.world.host.label, f"{FAR_END} answers: "
                 f"{hostport(reply.saddr, reply.sport)} -> {hostport(reply.daddr, reply.dport)} "
                 f"arrives on {iface.name}{why}")
        self.host_in(reply, iface.name)

    def arrival(self, uplink: Iface, addr: IPAddress) -> Iface:
        """The host interface an answer from beyond to addr arrives on: another way out
        of the host (not a bridge or its port, not a veth into a namespace recorded) that
        holds addr, or else the uplink."""
        if any(a.ip == addr for a in uplink.addrs):
            return uplink
        for iface in self.world.host.ifaces:
            if iface is uplink or iface.name == "lo" or not iface.up or \
                    iface.kind == "bridge" or iface.master or iface.peer is not None:
                continue
            if any(a.ip == addr for a in iface.addrs):
                return iface
        return uplink

    def undo_nat(self, space: Space, packet: Packet, destination: bool, notes: list[str]
                 ) -> Packet:
        """conntrack's inverse of space's NAT of the request, on its reply: the reply's
        destination back to the request's source there (undoing SNAT, masquerade), or its
        source back to what the request was sent to there (undoing DNAT). What it did
        goes to notes."""
        seen = self.nat_at.get(space.key)
        if seen is None:
            return packet
        before, after = seen
        if destination and before[:2] != after[:2] and \
                (packet.daddr, packet.dport) == after[:2]:
            notes.append(f"conntrack undoes the source NAT: destination "
                         f"{hostport(packet.daddr, packet.dport)} -> {hostport(*before[:2])}")
            return replace(packet, daddr=before[0], dport=before[1])
        if not destination and before[2:] != after[2:] and \
                (packet.saddr, packet.sport) == after[2:]:
            notes.append(f"conntrack undoes the DNAT: source "
                         f"{hostport(packet.saddr, packet.sport)} -> {hostport(*before[2:])}")
            return replace(packet, saddr=before[2], sport=before[3])
        return packet

    def ingress(self, space: Space, ifname: str, packet: Packet) -> None:
        """A packet arriving in a (container) namespace on ifname."""
        packet = replace(packet, iif=ifname, oif="")
        self.ipv6_disabled(space, space.iface(ifname), packet, arriving=True)
        packet = self.hook(space, ip_families(packet), "prerouting", packet)
        self.reverse_path(space, packet, ifname)
        if packet.daddr in space.local():
            self.hop("route", space.label, f"route lookup: {packet.daddr} is local")
            self.to_local(space, packet)
            return
        if not space.forwards(packet.version, ifname):
            self.hop("route", space.label, f"{packet.daddr} is not an address of "
                     f"{space.label}, which does not forward")
            key = "net.ipv4.ip_forward" if packet.version == 4 else \
                "net.ipv6.conf.all.forwarding"
            alone = f" (or for what arrives on {ifname} alone: net.ipv6.conf.{ifname}." \
                "force_forwarding=1, Linux 6.17)" if packet.version == 6 else ""
            self.end("dropped", f"{space.label} does not forward to {packet.daddr}", packet,
                     f"if {space.label} is meant to route: "
                     + in_space(space, f"sysctl -w {key}=1") + f"{alone}; else send to an "
                     f"address of {space.label}")
        # A namespace that routes (a router, a VM's host of its own): on to the next hop.
        self.hops_routed += 1
        if self.hops_routed > MAX_ROUTED:
            self.end("dropped", f"routed {MAX_ROUTED} times without arriving: a routing "
                     "loop (the TTL runs out)", packet, f"correct the routes to "
                     f"{packet.daddr} on the way (ip route get {packet.daddr} in each "
                     "namespace shows the loop)")
        self.forwarding(space, packet, ifname)
        route = self.route(space, packet, iif=ifname)
        if route is None:
            self.to_local(space, packet)
            return
        families = ip_families(packet)
        packet = replace(packet, oif=route.dev)
        packet = self.hook(space, families, "forward", packet)
        packet = self.hook(space, families, "postrouting", packet)
        self.egress(space, route, packet)


def arrive(world: World, leg: TunnelLeg, label: str, destination: str) -> Trace:
    """The other host's half of a tunnelled packet: world is that host's (its namespace
    and containers as observed), leg what this host's VXLAN device sent. The outer UDP
    datagram meets the host's prerouting and input hooks, the VXLAN device of leg's VNI
    decapsulates it, and the inner frame enters that device's bridge as any frame does."""
    result = Trace(source=label, destination=destination, protocol=leg.packet.l4proto)
    walk = _Walk(world, result)
    walk.client_elsewhere = True
    packet = leg.packet
    walk.asked = (packet.daddr, packet.dport)
    host = world.host
    try:
        vtep = ipaddress.ip_address(leg.vtep)
        local = ipaddress.ip_address(leg.local)
        back = host.lookup(local)
        iif = back.dev if back is not None else "?"
        outer = Packet(l4proto="udp", saddr=local, daddr=vtep, sport=0, dport=leg.port,
                       iif=iif)
        walk.hop("vxlan", host.label, f"UDP {leg.local} -> {leg.vtep}:{leg.port} (VXLAN, "
                 f"VNI {leg.vni}) arrives on {iif}")
        if vtep not in host.local():
            walk.end("dropped", f"{leg.vtep} is not an address of {host.label}", outer,
                     f"give {host.label} the address {leg.vtep} its cluster record names")
        families = ip_families(outer)
        outer = walk.hook(host, families, "prerouting", outer)
        outer = walk.hook(host, families, "input", outer)
        device = next((name for name, t in host.tunnels.items() if t.vni == leg.vni), None)
        port = host.iface(device) if device is not None else None
        if port is None or device is None:
            walk.hop("vxlan", host.label, f"no VXLAN device of VNI {leg.vni} listens on "
                     f"{leg.port}: the kernel drops the datagram")
            walk.end("dropped", f"{host.label} has no VXLAN device for VNI {leg.vni}", outer,
                     f"run 'portway doctor' on {host.label}: gc makes the network's device")
        assert port is not None and device is not None
        if not port.up or not port.master:
            why = "is down" if not port.up else "is no bridge's port"
            walk.hop("vxlan", device, f"decapsulates VNI {leg.vni}, but it {why}")
            walk.end("dropped", f"{device} on {host.label} {why}", outer,
                     f"run 'portway gc' on {host.label}")
        walk.hop("vxlan", device, f"decapsulated (VNI {leg.vni}, #{port.index} on "
                 f"{host.label}, mtu {port.mtu}): the inner frame to {leg.dmac} enters "
                 f"bridge {port.master} by its port {device}")
        inner = replace(packet, iif="", oif="", mark=0, ct_state="new",
                        ct_status=frozenset())
        walk.bridge_in(host, port, packet.daddr, inner, leg.smac)
        walk.end("dropped", "the path ended without a decision", inner)
    except _Done:
        pass
    return result


def trace(world: World, source: str, packet: Packet, label: str, destination: str) -> Trace:
    """source: a namespace key of world (container or host), or "outside" (then packet.iif
    is the host interface it arrives on)."""
    result = Trace(source=label, destination=destination, protocol=packet.l4proto)
    walk = _Walk(world, result)
    walk.asked = (packet.daddr, packet.dport)
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
    if t.fix:
        lines.append(f"fix: {t.fix}")
    if t.mtu is not None and t.mtu["fix"]:
        lines.append(f"mtu: path MTU {t.mtu['path_mtu']} ({t.mtu['device']} in "
                     f"{t.mtu['where']}), no MSS clamping: large TCP transfers may stall; "
                     f"fix: {t.mtu['fix']}")
    if t.reply_hops:
        lines.append("the reply comes back:")
        for number, h in enumerate(t.reply_hops, 1):
            lines.append(f"{number:3}  {h.kind:<6} {h.where:<{width}}  {h.detail}")
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
        if d is None or h.kind == "reply" or not h.where.startswith(f"{space_label}:"):
            continue
        out.append(KernelStep(d.family, d.table, d.chain, d.rule_chain, d.handle,
                              d.verdict, d.rule))
    return out


ROUTE_SILENT_NOTE = ("no answer where a route refuses the packet: the kernel sends its "
                     "ICMP error at most once a second to one destination "
                     "(net.ipv4.icmp_ratelimit), so a probe right after another failed "
                     "connection gets none; a blackhole route never answers")


def route_silent(static_verdict: str, live_verdict: str, kernel: list[KernelStep]) -> bool:
    """A no-route the kernel met as silence: the probe timed out and no netfilter rule
    dropped it. The same verdict, not a disagreement: an unreachable route's ICMP error is
    rate-limited per destination, and a blackhole route sends none."""
    return (static_verdict == "no-route" and live_verdict == "dropped"
            and not any(s.verdict.split()[-1] == "drop" for s in kernel))


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
    if route_silent(static_verdict, live_verdict, kernel):
        pass
    elif static_verdict != live_verdict:
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
