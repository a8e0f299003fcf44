"""`portway audit`: who can reach what on a host, through which rule, and what is exposed.

Pure: it reasons over the World that `trace` records (the host namespace, the
namespaces behind its veths, every nftables table of each) and proves every answer
with trace's own path model (core/trace.py), one trace per source and target.

Rules of this module:
1. Targets are what a host offers: every published port (a DNAT rule, or an element
   of a DNAT map, in ANY table: Docker's `ip nat DOCKER`, netavark's, portway's own;
   kube-proxy's, whose port is matched a few chains above its DNAT), every listening
   socket of the host, and every listening socket of a container address. A host
   socket on a published port (docker-proxy's, portwayd's) is that published port,
   not a target of its own.
2. Sources are who could connect: the host itself, a neighbour on a LAN the host is
   on (which may send the host any destination address: 127.0.0.1, a container's),
   a client routed in through the default route's interface (which can only name the
   host's own addresses), and a container of each bridge network.
3. A target is reachable from a source when a connection is made: the trace of its
   first packet is delivered, and the trace of the answer gets back (conntrack's
   view: established, de-NATed). Published ports that take one path share one trace
   (_PathShapes): they go to one address, or to containers of one shape (_Alike: one
   bridge, recorded alike but for their own names and addresses, which no rule tells
   apart), on ports that nothing but their own DNAT tells apart (no rule matches them,
   the same sockets listen on them); each such Reach maps the trace's ports and
   addresses back to its own. A finding is an
   exposure that the traces prove:
     bypasses-input-firewall  a published port reached from outside while the
                              host's input hook would drop the same packet (DNAT
                              sends it through forward, where that firewall is not)
     loopback-exposed         an address of 127/8 reached by a neighbour
     direct-container-access  a container address reached from the LAN without DNAT
     across-networks          a container reached by one of another network without
                              DNAT
   Nothing else is a finding: a published port without an input firewall is
   published on purpose (so is a published container port that portway opens at the
   container's address in routed mode), and the host reaching its containers is how
   it works.
4. Every finding carries its fix as data (nft rules, sysctls, a bind address; an
   iptables command for a table iptables-nft manages), and the fix is checked on the
   same model: with the rules added, the proving trace no longer delivers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from portway.core.nftsim import Packet, Ruleset, hostport, is_loopback, rule_text, with_dport
from portway.core.trace import Hop, Iface, Space, Trace, World, ip_families, trace
from portway.model.types import IPAddress

ROUTED_CLIENT = {4: ipaddress.ip_address("203.0.113.10"),  # TEST-NET-3, as trace's outside
                 6: ipaddress.ip_address("2001:db8:113::10")}
SOURCE_PORT = 40000
REACHED = ("delivered",)
REPLY_LOST = ("dropped", "no-route")
NAT_FAMILIES = ("ip", "ip6", "inet")

BYPASS = "bypasses-input-firewall"
LOOPBACK = "loopback-exposed"
DIRECT = "direct-container-access"
ACROSS = "across-networks"
TITLES = {BYPASS: "bypasses the input-hook firewall",
          LOOPBACK: "127.0.0.1-published but reachable from a neighbour",
          DIRECT: "direct routed access to a container address",
          ACROSS: "reachable across networks"}


@functools.lru_cache(maxsize=4096)
def _text(addr: IPAddress) -> str:
    """str(addr), kept for the next of the tens of thousands of reaches that name it."""
    return str(addr)


@dataclass(frozen=True)
class Target:
    kind: str  # published, socket, container
    proto: str
    port: int
    addr: IPAddress | None  # None: a published port on every host address
    version: int
    label: str
    space: str = ""  # the namespace key of a socket's holder
    bridge: str = ""  # a container's network (its bridge)
    rule: str = ""  # the DNAT rule of a published port: "family table chain: text"
    to: str = ""  # where a published port goes

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "protocol": self.proto, "port": self.port,
                "address": None if self.addr is None else str(self.addr),
                "label": self.label, "namespace": self.space or None,
                "network": self.bridge or None, "rule": self.rule or None,
                "to": self.to or None}


@dataclass(frozen=True)
class Source:
    kind: str  # host, neighbour, outside, container
    key: str  # trace's source: a namespace key, or "outside"
    label: str
    client: IPAddress | None = None  # neighbour and outside: the client's address
    iif: str = ""  # neighbour and outside: the host interface it arrives on
    bridge: str = ""  # container: its network's bridge

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label,
                "address": None if self.client is None else str(self.client),
                "interface": self.iif or None, "network": self.bridge or None}


@dataclass
class Reach:
    source: Source
    target: Target
    packet: Packet
    trace: Trace
    via: list[str]
    reply: Trace | None = None  # the answer's way back, where it is modelled
    same_path_as: str = ""  # a target whose trace stands for this one's (_PathShapes)
    ports: dict[int, int] = field(default_factory=dict)  # that target's ports -> this one's
    addresses: dict[IPAddress, IPAddress] = field(default_factory=dict)  # and its addresses

    @property
    def seen_destination(self) -> tuple[IPAddress, int]:
        """Where the connection arrives, as its destination sees it (the trace's, in
        this target's own port and address where the trace is another's)."""
        text, _, port = self.trace.seen_destination.rpartition(":")
        addr = ipaddress.ip_address(text.strip("[]"))
        return self.addresses.get(addr, addr), self.ports.get(int(port), int(port))

    @property
    def reached(self) -> bool:
        """The connection is made: its first packet is delivered, and its answer gets
        back (or is not modelled)."""
        return self.trace.verdict in REACHED and (
            self.reply is None or self.reply.verdict not in REPLY_LOST)

    @property
    def verdict(self) -> tuple[str, str]:
        if self.trace.reply_lost:  # (the trace walked the answer back itself)
            return "reply-lost", f"the first packet is delivered, but the answer is " \
                f"lost: {self.trace.reply_lost}"
        if self.trace.verdict in REACHED and self.reply is not None and \
                self.reply.verdict in REPLY_LOST:
            return "reply-lost", f"the first packet is delivered, but the answer is " \
                f"lost: {self.reply.summary}"
        return self.trace.verdict, self.trace.summary

    @property
    def dnat(self) -> bool:
        return any("(DNAT)" in r for h in self.trace.hops if h.decision
                   for r in h.decision.rewrites)

    def as_dict(self) -> dict[str, Any]:
        verdict, summary = self.verdict
        return {"source": self.source.label, "source_kind": self.source.kind,
                "connects_to": hostport(_text(self.packet.daddr), self.packet.dport),
                "reached": self.reached, "verdict": verdict, "summary": summary,
                "via": self.via,
                "reply": None if self.reply is None else self.reply.as_dict(),
                "same_path_as": self.same_path_as or None}


@dataclass(frozen=True)
class Fix:
    text: list[str]  # what to do, as commands
    rules: list[dict[str, Any]]  # the same rules as listing items, to check on the model
    where: str  # the chain the rules go to (or "" for a sysctl or bind address only)


@dataclass
class Finding:
    kind: str
    target: Target
    reaches: list[Reach]
    why: str
    fix: Fix
    fix_checked: bool = False
    fix_check: str = ""
    live: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": TITLES[self.kind], "target": self.target.label,
                "target_detail": self.target.as_dict(), "why": self.why,
                "sources": [r.source.label for r in self.reaches],
                "proof": [dict(r.as_dict(), trace=r.trace.as_dict()) for r in self.reaches],
                "fix": self.fix.text, "fix_chain": self.fix.where or None,
                "fix_rules": self.fix.rules, "fix_checked": self.fix_checked,
                "fix_check": self.fix_check, "live": self.live}


@dataclass
class Audit:
    sources: list[Source]
    targets: list[Target]
    reaches: list[Reach]
    findings: list[Finding]
    notes: list[str]

    _by: dict[int, list[Reach]] | None = field(default=None, repr=False, compare=False)

    def by_target(self) -> dict[int, list[Reach]]:
        """The reaches of each target, by the target's id (targets may be equal: a port
        published twice); worked out once (the reaches stay as audit() found them)."""
        if self._by is None:
            self._by = {}
            for r in self.reaches:
                self._by.setdefault(id(r.target), []).append(r)
        return self._by

    def as_dict(self) -> dict[str, Any]:
        mine = self.by_target()
        return {"sources": [s.as_dict() for s in self.sources],
                "targets": [dict(t.as_dict(), reach=[r.as_dict() for r in mine.get(id(t), [])])
                            for t in self.targets],
                "findings": [f.as_dict() for f in self.findings], "notes": self.notes}


# what the host offers


def _addr(text: Any) -> IPAddress | None:
    if isinstance(text, dict) and "prefix" in text:
        p = text["prefix"]
        net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
        return net.network_address if net.num_addresses == 1 else None
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def _component(expr: Any) -> str:
    """What one part of a key is: daddr, l4proto, dport, or other."""
    if not isinstance(expr, dict):
        return "other"
    if "payload" in expr:
        p = expr["payload"]
        if p.get("field") == "daddr" and p.get("protocol") in ("ip", "ip6"):
            return "daddr"
        if p.get("field") == "dport" and p.get("protocol") in ("th", "tcp", "udp", "sctp"):
            return "dport"
        if p.get("field") in ("protocol", "nexthdr"):
            return "l4proto"
    if "meta" in expr and expr["meta"].get("key") == "l4proto":
        return "l4proto"
    return "other"


def _values(right: Any) -> list[Any]:
    """The values a match's right side accepts (a set, a range of ports, one value)."""
    if isinstance(right, dict) and "set" in right:
        inner = right["set"]
        out: list[Any] = []
        for v in inner if isinstance(inner, list) else [inner]:
            out += _values(v)
        return out
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        if isinstance(low, int) and isinstance(high, int) and high - low < 64:
            return list(range(low, high + 1))
        return []
    return [right]


def _proto(value: Any) -> str | None:
    names = {6: "tcp", 17: "udp", 132: "sctp", "tcp": "tcp", "udp": "udp", "sctp": "sctp"}
    return names.get(value)


@dataclass
class _Conditions:
    protos: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    daddr: IPAddress | None = None


def _conditions(exprs: Iterable[Any]) -> _Conditions:
    c = _Conditions()
    for expr in exprs:
        if not isinstance(expr, dict) or "match" not in expr:
            continue
        m = expr["match"]
        if m.get("op", "==") not in ("==", "in"):
            continue
        what = _component(m["left"])
        if what == "l4proto":
            c.protos = [p for v in _values(m["right"]) if (p := _proto(v))]
        elif what == "dport":
            c.ports = [v for v in _values(m["right"]) if isinstance(v, int)]
            proto = m["left"]["payload"]["protocol"]
            if proto in ("tcp", "udp", "sctp"):
                c.protos = [proto]
        elif what == "daddr":
            c.daddr = _addr(m["right"])
    return c


def _elements(items: list[dict[str, Any]], family: str, table: str,
              ref: Any) -> list[Any]:
    if isinstance(ref, str) and ref.startswith("@"):
        for item in items:
            s = item.get("map") or item.get("set")
            if s and (s["family"], s["table"], s["name"]) == (family, table, ref[1:]):
                return list(s.get("elem", []))
        return []
    if isinstance(ref, dict) and "set" in ref:
        return list(ref["set"])
    return []


def _key_of(elem: Any) -> Any:
    key = elem[0] if isinstance(elem, list) else elem
    if isinstance(key, dict) and "elem" in key:
        key = key["elem"]["val"]
    return key


def _parts(key: Any) -> list[Any]:
    return list(key["concat"]) if isinstance(key, dict) and "concat" in key else [key]


_Entries = list[tuple[list[Any], Any]]


def _map_entries(items: list[dict[str, Any]], family: str, table: str, part: Any,
                 seen: dict[tuple[str, str, str], _Entries] | None = None
                 ) -> _Entries | None:
    """A `map` part of a NAT statement: (key parts, data) of each element; None when
    the part is not a map. seen: a named map's entries, kept for the next rule that
    takes from it (portway's four DNAT rules share two maps of every published port)."""
    if not (isinstance(part, dict) and "map" in part):
        return None
    data = part["map"]["data"]
    named = (family, table, data) if isinstance(data, str) else None
    if named is not None and seen is not None and named in seen:
        return seen[named]
    out = [(_parts(_key_of(e)), e[1]) for e in _elements(items, family, table, data)
           if isinstance(e, list) and len(e) == 2]
    if named is not None and seen is not None:
        seen[named] = out
    return out


def published_ports(items: list[dict[str, Any]]) -> list[Target]:
    """Every published port of a ruleset listing: the ports its DNAT rules and DNAT
    maps name, in any table of an IP family."""
    out: dict[tuple[str, str, int, int], Target] = {}
    seen: dict[tuple[str, str, str], _Entries] = {}
    for item in items:
        rule = item.get("rule")
        if not rule or rule["family"] not in NAT_FAMILIES:
            continue
        exprs = rule.get("expr", [])
        nat = next((e["dnat"] for e in exprs if isinstance(e, dict) and "dnat" in e), None)
        if not isinstance(nat, dict):
            continue
        family = rule["family"]
        text = rule_text(rule)
        version = {"ip": 4, "ip6": 6}.get(nat.get("family") or family, 0)
        conds = [_conditions(exprs)]
        if not conds[0].ports:  # kube-proxy's way: the port is matched in a chain above
            conds = [_merge(conds[0], up) for up in _above(items, rule)] or conds
        for cond in conds:
            _published(items, rule, nat, text, version, cond, out, seen)
    return list(out.values())


def _merge(mine: _Conditions, up: _Conditions) -> _Conditions:
    return _Conditions(protos=mine.protos or up.protos, ports=mine.ports or up.ports,
                       daddr=mine.daddr or up.daddr)


def _above(items: list[dict[str, Any]], rule: dict[str, Any], depth: int = 0
           ) -> list[_Conditions]:
    """The conditions of the rules that jump (or go) to rule's chain, and of those above
    them, up to where a port is matched (kube-proxy: KUBE-NODEPORTS matches the port,
    jumps through KUBE-EXT and KUBE-SVC to the KUBE-SEP chain that DNATs)."""
    if depth > 8:
        return []
    out: list[_Conditions] = []
    family, table, chain = rule["family"], rule["table"], rule["chain"]
    for item in items:
        r = item.get("rule")
        if not r or (r["family"], r["table"]) != (family, table):
            continue
        exprs = r.get("expr", [])
        if chain not in _jumps(exprs, items, family, table):
            continue
        cond = _conditions(exprs)
        if cond.ports:
            out.append(cond)
        else:
            out += [_merge(cond, up) for up in _above(items, r, depth + 1)]
    return out


def _published(items: list[dict[str, Any]], rule: dict[str, Any], nat: dict[str, Any],
               text: str, version: int, cond: _Conditions,
               out: dict[tuple[str, str, int, int], Target],
               seen: dict[tuple[str, str, str], _Entries] | None = None) -> None:
    """The targets of one DNAT rule under cond, added to out (a port that goes to more
    than one place, as a service's to each of its endpoints, is one target)."""
    family, table = rule["family"], rule["table"]
    addr_entries = _map_entries(items, family, table, nat.get("addr"), seen)
    port_entries = _map_entries(items, family, table, nat.get("port"), seen)
    found: list[tuple[str, IPAddress | None, int, str]] = []
    if addr_entries is not None:
        key = nat["addr"]["map"]["key"]
        kinds = [_component(k) for k in _parts(key)]
        ports = {repr(k): v for k, v in port_entries or []}
        for parts, to_addr in addr_entries:
            if len(parts) != len(kinds):
                continue
            got = dict(zip(kinds, parts, strict=True))
            protos = [p] if (p := _proto(got.get("l4proto"))) else cond.protos or ["tcp"]
            dports = [got["dport"]] if isinstance(got.get("dport"), int) else cond.ports
            daddr = _addr(got["daddr"]) if "daddr" in got else cond.daddr
            to_port = ports.get(repr(parts))
            to = str(to_addr) if to_port is None else hostport(str(to_addr), int(to_port))
            found += [(proto, daddr, port, to) for proto in protos for port in dports]
    else:
        to_addr = nat.get("addr")
        to_port = nat.get("port")
        to = str(to_addr or "") if not isinstance(to_port, int) else \
            hostport(str(to_addr or "?"), to_port)
        found += [(proto, cond.daddr, port, to) for proto in cond.protos or ["tcp"]
                  for port in cond.ports]
    for proto, daddr, port, to in found:
        v = daddr.version if daddr is not None else version or \
            (_addr(to.rsplit(":", 1)[0].strip("[]")) or ipaddress.ip_address(0)).version
        key = (proto, str(daddr), port, v)
        before = out.get(key)
        if before is not None and (to == before.to or to in before.to.split(", ")):
            continue  # (another rule to the same place: IPv4's and IPv6's, say)
        shown = f"{text} to {to}" if text.endswith("dnat") and addr_entries is None \
            else text
        where = f"{family} {table} {rule['chain']}: {shown}"
        where_text = hostport(daddr or ("0.0.0.0" if v == 4 else "::"), port)
        if before is not None:
            to = f"{before.to}, {to}"
            out[key] = replace(before, to=to, label=f"published {where_text}/{proto} -> {to}",
                               rule=f"{before.rule}; {where}")
            continue
        out[key] = Target("published", proto, port, daddr, v,
                          f"published {where_text}/{proto} -> {to}", rule=where, to=to)


def _published_covers(published: list[Target], proto: str, addr: IPAddress,
                      port: int) -> bool:
    wildcard = addr.is_unspecified
    return any(t.proto == proto and t.port == port and
               (wildcard or t.addr is None or t.addr == addr) for t in published)


def _listening(space: Space) -> list[tuple[str, IPAddress, int]]:
    out = []
    for proto, text, port in sorted(space.listeners):
        try:
            out.append((proto, ipaddress.ip_address(text.partition("%")[0]), port))
        except ValueError:
            continue
    return out


_BRIDGES: dict[int, tuple[list[Iface], int, dict[str, str]]] = {}


def bridge_of(world: World, key: str) -> str:
    """The bridge a namespace's veth is a port of, on the host ('' if none). From an
    index of the host's bridge ports, made once per list of interfaces."""
    host = world.host
    have = _BRIDGES.get(id(host))
    if have is None or have[0] is not host.ifaces or have[1] != len(host.ifaces):
        index: dict[str, str] = {}
        for port in host.ifaces:
            if port.peer is not None and port.master:
                index.setdefault(port.peer[0], port.master)
        _BRIDGES.clear()  # one host at a time
        have = _BRIDGES[id(host)] = (host.ifaces, len(host.ifaces), index)
    return have[2].get(key, "")


def containers(world: World) -> list[str]:
    """The keys of the namespaces behind the host's bridges, by name: a key is a random
    id, and the first of a bridge stands for it as a source, which decides which ports
    share a trace (_PathShapes)."""
    return sorted((k for k in world.spaces if bridge_of(world, k)),
                  key=lambda k: (world.spaces[k].label, k))


def targets(world: World) -> list[Target]:
    host = world.host
    published = published_ports(host.ruleset)
    out = list(published)
    for proto, addr, port in _listening(host):
        if (proto, str(addr), port) in host.portway_sockets or \
                _published_covers(published, proto, addr, port):
            continue
        out.append(Target("socket", proto, port, addr, addr.version,
                          f"host socket {hostport(addr, port)}/{proto}", space=host.key))
    for key in containers(world):
        space = world.spaces[key]
        mine = [a.ip for i in space.ifaces if i.name != "lo" for a in i.addrs
                if not a.ip.is_link_local]
        for proto, addr, port in _listening(space):
            if is_loopback(addr):
                continue
            if str(addr) == "::":  # a socket on :: takes IPv4 too (unless IPv6-only)
                wanted = mine
            elif str(addr) == "0.0.0.0":
                wanted = [a for a in mine if a.version == 4]
            else:
                wanted = [a for a in mine if a == addr]
            for a in wanted:
                out.append(Target("container", proto, port, a, a.version,
                                  f"{space.label} {hostport(a, port)}/{proto}", space=key,
                                  bridge=bridge_of(world, key)))
    return out


# who could connect


def uplinks(host: Space) -> list[str]:
    """The host's interfaces towards a LAN: not lo, not a bridge or a bridge's port, not
    a veth into a namespace the world holds, and with an address that is not
    link-local; the default route's first."""
    default = [r.dev for r in sorted(host.routes, key=lambda r: r.metric)
               if r.dst.prefixlen == 0]
    out = []
    for i in host.ifaces:
        if i.name == "lo" or i.kind == "bridge" or i.master or i.peer is not None:
            continue
        if any(not a.ip.is_link_local and not a.ip.is_loopback for a in i.addrs):
            out.append(i.name)
    return sorted(out, key=lambda d: (d not in default, d))


_UPLINKS: dict[int, tuple[list[Iface], int, list[str]]] = {}


def _uplinks(host: Space) -> list[str]:
    """uplinks(host), worked out once per list of interfaces (it looks at every one)."""
    have = _UPLINKS.get(id(host))
    if have is None or have[0] is not host.ifaces or have[1] != len(host.ifaces):
        _UPLINKS.clear()  # one host at a time
        have = _UPLINKS[id(host)] = (host.ifaces, len(host.ifaces), uplinks(host))
    return have[2]


def _neighbour_address(host: Space, dev: str, version: int) -> IPAddress | None:
    """An address of a neighbour on dev: the gateway there, or another of its subnet."""
    iface = host.iface(dev)
    if iface is None:
        return None
    for r in host.routes:
        if r.dev == dev and r.gateway is not None and r.gateway.version == version:
            return r.gateway
    mine = host.local()
    for a in iface.addrs:
        if a.version != version or a.ip.is_link_local:
            continue
        for candidate in a.network.hosts():
            if candidate not in mine:
                return candidate
    return None


def sources(world: World) -> list[Source]:
    host = world.host
    out = [Source("host", host.key, "the host itself")]
    devs = uplinks(host)
    for dev in devs:
        for version in (4, 6):
            addr = _neighbour_address(host, dev, version)
            if addr is not None:
                out.append(Source("neighbour", "outside",
                                  f"a neighbour on {dev} ({addr})", addr, dev))
    for version in (4, 6):
        client = ROUTED_CLIENT[version]
        route = host.lookup(client)
        if route is not None and route.kind == "unicast" and route.dev in devs:
            out.append(Source("outside", "outside", f"a routed client via {route.dev} "
                              f"({client})", client, route.dev))
    seen: set[str] = set()
    for key in containers(world):
        bridge = bridge_of(world, key)
        if bridge in seen:
            continue
        seen.add(bridge)
        out.append(Source("container", key, f"{world.spaces[key].label} (on {bridge})",
                          bridge=bridge))
    return out


# reaching


def _facing(world: World, source: Source, version: int) -> IPAddress | None:
    """The host address a source would connect to for a port on every host address."""
    host = world.host
    if source.kind in ("neighbour", "outside"):
        return host.first_address(source.iif, version)
    if source.kind == "host":
        devs = _uplinks(host)
        return host.first_address(devs[0], version) if devs else None
    space = world.spaces[source.key]
    route = space.lookup(ROUTED_CLIENT[version])
    return route.gateway if route is not None else None


def _destination(world: World, source: Source, target: Target) -> IPAddress | None:
    """What source connects to for target; None where it cannot name it."""
    addr = target.addr
    if addr is None or addr.is_unspecified:
        return _facing(world, source, target.version)
    if is_loopback(addr):
        return addr if source.kind in ("host", "neighbour") else None
    if source.kind == "outside" and target.kind != "container":
        # From afar only the addresses of the interface it comes in on are routed here.
        iface = world.host.iface(source.iif)
        return addr if iface is not None and any(a.ip == addr for a in iface.addrs) \
            else None
    if target.kind == "container":
        if source.kind == "outside":
            return None  # nobody routes a container's private address in from afar
        if source.kind == "container" and source.bridge == target.bridge:
            return None  # its own network: reaching it is the point
        if source.kind == "container" and source.key == target.space:
            return None
    return addr


def _via(t: Trace) -> list[str]:
    """The decisions that let a delivered connection through: its DNAT, and what
    accepted it on the forward and input hooks."""
    out = []
    for h in t.hops:
        d = h.decision
        if d is None:
            continue
        dnat = [r for r in d.rewrites if "(DNAT)" in r]
        where = f"{d.family} {d.table} {d.rule_chain}"
        if dnat:
            out.append(f"{where}: {d.rule} ({dnat[0]})")
        elif d.hook in ("forward", "input") and h.where.startswith("host:"):
            out.append(f"{where}: {d.rule or d.verdict}")
    return out


def reach(world: World, source: Source, target: Target) -> Reach | None:
    daddr = _destination(world, source, target)
    if daddr is None or daddr.version != target.version:
        return None
    if source.kind in ("neighbour", "outside"):
        assert source.client is not None
        if source.client.version != daddr.version:
            return None
        packet = Packet(l4proto=target.proto, saddr=source.client, daddr=daddr,
                        sport=SOURCE_PORT, dport=target.port, iif=source.iif)
    else:
        unspecified = ipaddress.ip_address(0 if daddr.version == 4 else "::")
        packet = Packet(l4proto=target.proto, saddr=unspecified, daddr=daddr,
                        sport=SOURCE_PORT, dport=target.port)
    result = trace(world, source.key, packet, source.label, target.label)
    reply = _reply(world, result, packet, _client_address(world, source.key, packet))
    return Reach(source, target, packet, result, _via(result), reply)


def _rewritten(t: Trace, kind: str) -> bool:
    return any(f"({kind})" in r for h in t.hops if h.decision for r in h.decision.rewrites)


def _client_address(world: World, key: str, packet: Packet) -> IPAddress | None:
    """The source address the kernel picks in namespace key for packet (the client's
    own for a neighbour or a routed client)."""
    if not packet.saddr.is_unspecified:
        return packet.saddr
    space = world.space(key)
    if packet.daddr in space.local() or is_loopback(packet.daddr):
        return packet.daddr
    route = space.lookup(packet.daddr)
    if route is None:
        return None
    return route.prefsrc or space.first_address(route.dev, packet.version, packet.daddr)


CONNTRACK_PRIORITY = -200  # prerouting chains before it see the answer before de-NAT


def _before_conntrack(chain: dict[str, Any]) -> bool:
    return chain.get("hook") == "prerouting" and int(chain.get("prio", 0)) < CONNTRACK_PRIORITY


def _reply(world: World, t: Trace, packet: Packet, client: IPAddress | None
           ) -> Trace | None:
    """The answer of a delivered connection, from the socket that took it back to the
    client, as conntrack lets it through (state established, no NAT chain). Where the
    client was masqueraded, the answer goes to the NAT's address: the host's prerouting
    chains before conntrack (raw) see that, and conntrack turns it back to the client
    before everything else. None where it is not modelled."""
    if t.verdict not in REACHED or client is None:
        return None
    socket_hop = next((h for h in reversed(t.hops) if h.kind == "socket"), None)
    holder = next((k for k, sp in [(world.host.key, world.host), *world.spaces.items()]
                   if socket_hop is not None and sp.label == socket_hop.where), None)
    if holder is None:
        return None
    server, _, port = t.seen_destination.rpartition(":")
    answer = Packet(l4proto=packet.l4proto, saddr=ipaddress.ip_address(server.strip("[]")),
                    daddr=client, sport=int(port), dport=packet.sport, ct_state="established",
                    ct_status=frozenset({"dnat"}) if _rewritten(t, "DNAT") else frozenset())
    if holder == world.host.key and packet.iif:  # back to a client beyond the host
        answer = replace(answer, oif=packet.iif)
    label = f"the answer from {t.destination}"
    seen = ipaddress.ip_address(t.seen_source)
    if seen == client:
        return trace(world, holder, answer, label, t.source)
    # Masqueraded: the raw chains judge the answer to the NAT's address (if it comes
    # into the host: from a namespace, or over lo to a client of the host's own)...
    host = world.host
    bridge = "lo" if holder == host.key else bridge_of(world, holder)
    if holder == host.key and not is_loopback(seen) and seen not in host.local():
        return trace(world, holder, answer, label, t.source)  # it only leaves the host
    items = host.ruleset
    raw = Ruleset([i for i in items if "chain" not in i or _before_conntrack(i["chain"])
                   or "hook" not in i["chain"]])
    _, decisions, alive = raw.run_hook(ip_families(answer), "prerouting",
                                       replace(answer, daddr=seen, iif=bridge), host.local(),
                                       nat=False)
    if not alive:
        d = decisions[-1]
        lost = Trace(source=label, destination=t.source, protocol=packet.l4proto,
                     hops=[Hop("hook", f"host: {d.where}", f"prerouting: {d.verdict} by "
                               f"\"{d.rule}\" (before conntrack turns {seen} back into "
                               f"{client})", d)])
        lost.verdict = "dropped"
        lost.summary = f"dropped in host by {d.where}: {d.rule or d.verdict}"
        return lost
    # ... and everything after conntrack, the answer to the client itself.
    after = replace(host, ruleset=[i for i in items if not (
        "chain" in i and _before_conntrack(i["chain"]))])
    return trace(World(host=after, spaces=world.spaces, bridge_nf=world.bridge_nf,
                       bridge_nf6=world.bridge_nf6, sctp=world.sctp), holder, answer, label,
                 t.source)


# findings and their fixes


def _input_drop(world: World, r: Reach) -> str | None:
    """The host's input-hook decision that would drop r's packet had DNAT not sent it
    through forward ("family table chain: rule"), or None if input would take it."""
    host = world.host
    packet = replace(r.packet, iif=r.source.iif, oif="")
    _, decisions, alive = Ruleset(host.ruleset).run_hook(
        ip_families(packet), "input", packet, host.local(), nat=False)
    if alive or not decisions:
        return None
    last = decisions[-1]
    return f"{last.where}: {last.rule or last.verdict}"


def _families(version: int) -> tuple[str, str]:
    """The table families whose rules see packets of this IP version."""
    return ("inet", _ipname(version))


def _base_chains(items: list[dict[str, Any]], hook: str,
                 version: int = 4) -> list[dict[str, Any]]:
    found = [i["chain"] for i in items if "chain" in i and i["chain"].get("hook") == hook
             and i["chain"]["family"] in _families(version)
             and i["chain"].get("type") == "filter"]
    return sorted(found, key=lambda c: int(c.get("prio", 0)))


def _where_forward(items: list[dict[str, Any]],
                   version: int = 4) -> tuple[str, str, str, list[dict[str, Any]]]:
    """Where a forward drop goes: Docker's DOCKER-USER (made for it), else the first
    filter chain on the forward hook that is not portway's, else a new one; each of a
    family that sees the packet's IP version (an `ip` table never sees IPv6)."""
    for item in items:
        c = item.get("chain")
        if c and c["name"] == "DOCKER-USER" and c["family"] in _families(version):
            return c["family"], c["table"], c["name"], []
    for c in _base_chains(items, "forward", version):
        if c["table"] != "portway":
            return c["family"], c["table"], c["name"], []
    return "inet", "filter", "forward", [
        {"table": {"family": "inet", "name": "filter"}},
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}}]


def _where_raw(items: list[dict[str, Any]],
               version: int = 4) -> tuple[str, str, str, list[dict[str, Any]]]:
    """Where a drop before DNAT goes: a filter chain on prerouting before NAT (priority
    below -100, e.g. `ip raw PREROUTING`) that is not portway's, else a new one (`ip6 raw
    PREROUTING` for IPv6)."""
    for c in _base_chains(items, "prerouting", version):
        if int(c.get("prio", 0)) < -100 and c["table"] != "portway":
            return c["family"], c["table"], c["name"], []
    family = _ipname(version)
    return family, "raw", "PREROUTING", [
        {"table": {"family": family, "name": "raw"}},
        {"chain": {"family": family, "table": "raw", "name": "PREROUTING", "type": "filter",
                   "hook": "prerouting", "prio": -300, "policy": "accept"}}]


def _chain_cmds(new: list[dict[str, Any]]) -> list[str]:
    out = []
    for item in new:
        if "table" in item:
            t = item["table"]
            out.append(f"nft add table {t['family']} {t['name']}")
        else:
            c = item["chain"]
            out.append(f"nft add chain {c['family']} {c['table']} {c['name']} '{{ type "
                       f"{c['type']} hook {c['hook']} priority {c['prio']}; policy "
                       f"{c['policy']}; }}'")
    return out


def _m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _ip(version: int, field_name: str) -> dict[str, Any]:
    return {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": field_name}}


COMMENT = "portway audit"


Tables = frozenset[tuple[str, str]]


def _rule(where: tuple[str, str, str, list[dict[str, Any]]], expr: list[Any],
          text: str, comment: str, iptables: Tables = frozenset(), ipt: str = "") -> Fix:
    """The fix: an nft command, or where the chain is iptables-nft's (iptables: those
    tables), the iptables command (ipt: its matches; the target is DROP), since a native
    rule in its tables would leave iptables unable to read them."""
    family, table, chain, new = where
    rule = {"family": family, "table": table, "chain": chain, "expr": expr,
            "comment": comment}
    if (family, table) in iptables and ipt and not new:
        tool = "iptables" if family == "ip" else "ip6tables"
        where_t = "" if table == "filter" else f"-t {table} "
        cmd = f"{tool} {where_t}-I {chain} {ipt} -m comment --comment \"{comment}\" -j DROP"
    else:
        cmd = f"nft insert rule {family} {table} {chain} '{text} comment \"{comment}\"'"
    return Fix([*_chain_cmds(new), cmd], [*new, {"rule": rule}], f"{family} {table} {chain}")


def _ipname(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def fix_bypass(world: World, r: Reach, dropper: str, iptables: Tables = frozenset()) -> Fix:
    """Drop, after DNAT, what the input firewall would have dropped: by the address and
    port the connection is DNATed to, from the interface it came in on."""
    final, port = r.seen_destination
    v = final.version
    proto = r.target.proto
    expr = [_m(_meta("iifname"), r.source.iif), _m(_ip(v, "daddr"), str(final)),
            _m({"payload": {"protocol": proto, "field": "dport"}}, port),
            _m({"ct": {"key": "status"}}, "dnat", "in"), {"drop": None}]
    text = f"iifname \"{r.source.iif}\" {_ipname(v)} daddr {final} {proto} dport {port} " \
           "ct status dnat drop"
    where = _where_forward(world.host.ruleset, v)
    fix = _rule(where, expr, text, f"{COMMENT}: {r.target.proto}/{r.target.port} as "
                f"{dropper.split(':')[0]} wants", iptables,
                f"-i {r.source.iif} -d {final} -p {proto} --dport {port} -m conntrack "
                "--ctstate DNAT")
    lo = "127.0.0.1" if v == 4 else "[::1]"
    bind = f"or, if only this host needs it, publish it on {lo} (-p {lo}:" \
           f"{r.target.port}:{port})"
    return replace(fix, text=[*fix.text, bind])


def fix_loopback(world: World, r: Reach, iptables: Tables = frozenset()) -> Fix:
    v = r.packet.daddr.version
    net = "127.0.0.0/8" if v == 4 else "::1"
    right: Any = {"prefix": {"addr": "127.0.0.0", "len": 8}} if v == 4 else "::1"
    expr = [_m(_meta("iifname"), "lo", "!="), _m(_ip(v, "daddr"), right), {"drop": None}]
    fix = _rule(_where_raw(world.host.ruleset, v), expr,
                f"iifname != \"lo\" {_ipname(v)} daddr {net} drop",
                f"{COMMENT}: loopback addresses only from lo", iptables,
                f"! -i lo -d {net}")
    text = list(fix.text)
    iface = world.host.iface(r.source.iif)
    if iface is not None and iface.route_localnet:
        text.insert(0, f"sysctl -w net.ipv4.conf.{iface.name}.route_localnet=0 (and "
                    f"net.ipv4.conf.{iface.name}.route_localnet = 0 in /etc/sysctl.d/)")
    return replace(fix, text=text)


def fix_direct(world: World, r: Reach, iptables: Tables = frozenset()) -> Fix:
    v = r.target.version
    expr = [_m(_meta("iifname"), r.target.bridge, "!="),
            _m(_ip(v, "daddr"), str(r.target.addr)), {"drop": None}]
    return _rule(_where_raw(world.host.ruleset, v), expr,
                 f"iifname != \"{r.target.bridge}\" {_ipname(v)} daddr {r.target.addr} drop",
                 f"{COMMENT}: {r.target.addr} only from {r.target.bridge}", iptables,
                 f"! -i {r.target.bridge} -d {r.target.addr}")


def fix_across(world: World, r: Reach, iptables: Tables = frozenset()) -> Fix:
    src, dst = r.source.bridge, r.target.bridge
    expr = [_m(_meta("iifname"), src), _m(_meta("oifname"), dst), {"drop": None}]
    return _rule(_where_forward(world.host.ruleset, r.target.version), expr,
                 f"iifname \"{src}\" oifname \"{dst}\" drop",
                 f"{COMMENT}: isolate {src} from {dst}", iptables,
                 f"-i {src} -o {dst}")


def with_rules(items: list[dict[str, Any]], rules: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """items with rules added as `nft insert` would: a rule first in its chain; new
    tables and chains at the end."""
    out = copy.copy(items)
    for new in rules:
        if "rule" not in new:
            out.append(new)
            continue
        r = new["rule"]
        at = next((n for n, i in enumerate(out) if "rule" in i and
                   (i["rule"]["family"], i["rule"]["table"], i["rule"]["chain"]) ==
                   (r["family"], r["table"], r["chain"])), len(out))
        out.insert(at, new)
    return out


def check_fix(world: World, finding: Finding) -> tuple[bool, str]:
    """Retrace each proof with the fix's rules added; ok when none is delivered."""
    if not finding.fix.rules:
        return False, "nothing to check on the model"
    host = replace(world.host, ruleset=with_rules(world.host.ruleset, finding.fix.rules))
    fixed = World(host=host, spaces=world.spaces, bridge_nf=world.bridge_nf,
                  bridge_nf6=world.bridge_nf6, sctp=world.sctp)
    after = [trace(fixed, r.source.key, r.packet, r.source.label, r.target.label)
             for r in finding.reaches]
    still = [t for t in after if t.verdict in REACHED]
    if still:
        return False, f"still {still[0].verdict} with the fix: {still[0].summary}"
    return True, "; ".join(sorted({t.summary for t in after}))


def _findings(world: World, reaches: list[Reach], iptables: Tables) -> list[Finding]:
    by: dict[tuple[str, Target], Finding] = {}

    def add(kind: str, r: Reach, why: str, fix: Fix) -> None:
        key = (kind, r.target)
        if key in by:
            by[key].reaches.append(r)
        else:
            by[key] = Finding(kind, r.target, [r], why, fix)

    for r in reaches:
        if not r.reached:
            continue
        t, s = r.target, r.source
        lo = t.addr is not None and is_loopback(t.addr)
        mine = t.addr is None or t.addr in world.host.local()  # (not a service's VIP)
        if s.kind in ("neighbour", "outside") and t.kind == "published" and not lo and mine:
            dropper = _input_drop(world, r)
            if dropper is not None:
                add(BYPASS, r, f"DNAT ({t.rule}) sends it through the forward hook; the "
                    f"input hook, which would drop it ({dropper}), never sees it",
                    fix_bypass(world, r, dropper, iptables))
        if s.kind == "neighbour" and lo:
            how = f"DNAT ({t.rule})" if r.dnat else \
                f"route_localnet on {s.iif} makes {t.addr} routable from it"
            add(LOOPBACK, r, f"a neighbour sends to {hostport(r.packet.daddr, t.port)} "
                f"with the host's MAC address: {how}", fix_loopback(world, r, iptables))
        if t.kind == "container" and not r.dnat and s.kind == "neighbour" and \
                not _published_routed(r):
            add(DIRECT, r, f"the host forwards from {s.iif} straight to {t.addr} (no "
                "DNAT, no published port): " + "; ".join(r.via), fix_direct(world, r, iptables))
        if t.kind == "container" and not r.dnat and s.kind == "container" and \
                s.bridge != t.bridge:
            add(ACROSS, r, f"from {s.bridge} to {t.bridge}, forwarded: " + "; ".join(r.via),
                fix_across(world, r, iptables))
    out = list(by.values())
    for f in out:
        f.fix_checked, f.fix_check = check_fix(world, f)
    return out


def _published_routed(r: Reach) -> bool:
    """Whether portway accepted the connection as a published port of a network in
    routed mode (Docker's gateway_mode_ipv4/ipv6=routed): a container port reached at
    the container's address on purpose, as a published port is reached on the host's."""
    return any(v.startswith("inet portway ") and v.split(": ")[-1].startswith(
        "published ports, routed") for v in r.via)


def _mentions_port(expr: Any) -> bool:
    text = json.dumps(expr)
    return '"field": "dport"' in text or '"field": "sport"' in text


def _jumps(expr: Any, items: list[dict[str, Any]], family: str, table: str) -> list[str]:
    """The chains an expression may jump or go to (verdict maps included)."""
    out: list[str] = []
    if isinstance(expr, dict):
        for kind in ("jump", "goto"):
            if kind in expr and isinstance(expr[kind], dict) and "target" in expr[kind]:
                out.append(expr[kind]["target"])
        if "vmap" in expr:
            data = expr["vmap"]["data"]
            elems = _elements(items, family, table, data) if isinstance(data, str) else \
                [data]
            out += _jumps(elems, items, family, table)
            return out
        for value in expr.values():
            out += _jumps(value, items, family, table)
    elif isinstance(expr, list):
        for value in expr:
            out += _jumps(value, items, family, table)
    return out


def _rule_ports(rule: dict[str, Any]) -> set[int] | None:
    """The ports a rule matches (none for a DNAT rule: its port is the target's own);
    None when it matches ports it does not list (a named set, a map, a wide range)."""
    exprs = rule.get("expr", [])
    told: set[int] = set()
    if any(isinstance(e, dict) and "dnat" in e for e in exprs):
        return told
    for e in exprs:
        if not isinstance(e, dict):
            continue
        if "vmap" in e and _mentions_port(e["vmap"]["key"]):
            return None
        if "match" in e and _mentions_port(e["match"]["left"]):
            right = e["match"]["right"]
            if isinstance(right, str) and right.startswith("@"):
                return None
            values = _values(right)
            if not values or not all(isinstance(v, int) for v in values):
                return None
            told.update(values)
    return told


def ports_told_apart(items: list[dict[str, Any]]) -> set[int] | None:
    """The ports that something before DNAT tells apart: those a rule matches (but the
    DNAT rules themselves) in a chain that sees the packet before it is DNATed
    (prerouting and output, priority up to -100, and every chain reached from there);
    None when such a rule matches ports it does not list (by a map, say). Published
    ports outside the set that go to the same address and port take the same path,
    and one trace stands for them all."""
    chains = {(c["family"], c["table"], c["name"]): c for i in items
              if (c := i.get("chain"))}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for i in items:
        if (r := i.get("rule")):
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    pending = [k for k, c in chains.items() if c.get("hook") in ("prerouting", "output")
               and int(c.get("prio", 0)) <= -100]
    seen: set[tuple[str, str, str]] = set()
    told: set[int] = set()
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        family, table, _ = key
        for rule in rules.get(key, []):
            found = _rule_ports(rule)
            if found is None:
                return None
            told |= found
            pending += [(family, table, t)
                        for t in _jumps(rule.get("expr", []), items, family, table)]
    return told


def ports_matched(world: World) -> set[int] | None:
    """The ports that any rule of any namespace of world matches (but DNAT rules), in
    any chain: after DNAT a connection meets the host's forward and postrouting chains,
    the destination's own, and its answer all of them again. None when a rule matches
    ports it does not list."""
    told: set[int] = set()
    for space in (world.host, *world.spaces.values()):
        for item in space.ruleset:
            if (rule := item.get("rule")):
                found = _rule_ports(rule)
                if found is None:
                    return None
                told |= found
    return told


def _sockets(world: World) -> dict[tuple[str, int], frozenset[tuple[str, str, bool]]]:
    """Every socket of world on each protocol and port: (namespace, address, portwayd's)."""
    out: dict[tuple[str, int], set[tuple[str, str, bool]]] = {}
    for space in (world.host, *world.spaces.values()):
        for proto, addr, port in space.listeners:
            out.setdefault((proto, port), set()).add((space.key, addr, False))
        for proto, addr, port in space.portway_sockets:
            out.setdefault((proto, port), set()).add((space.key, addr, True))
    return {k: frozenset(v) for k, v in out.items()}


def _goes_to(t: Target) -> tuple[str, int] | None:
    """The one address and port a published port is DNATed to (None: several)."""
    if ", " in t.to or not t.to:
        return None
    addr, colon, port = t.to.rpartition(":")
    if colon and port.isdigit() and not t.to.endswith("]") and \
            (addr.startswith("[") or ":" not in addr):
        return addr.strip("[]"), int(port)
    return t.to.strip("[]"), t.port  # to an address alone: the port stays


def _leaves(value: Any) -> Iterator[Any]:
    """The plain values in a piece of a listing (strings, numbers; prefixes and ranges as
    their dicts)."""
    if isinstance(value, dict):
        if "prefix" in value or "range" in value:
            yield value
            return
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


_FIELDS: dict[type, tuple[str, ...] | None] = {}  # a dataclass's fields _canon reads
_PLAIN = frozenset({int, bool, float, type(None)})  # values _canon keeps as they are


def _canon(value: Any, tokens: dict[str, str]) -> Any:
    """A hashable form of a recorded object (a Space, an Iface...) with a container's own
    names and addresses (tokens) in place of its placeholders, and without the kernel's
    numbering of interfaces (which no rule and no verdict reads)."""
    kind = type(value)
    if kind is str:  # (the commonest: first)
        token = tokens.get(value.lower())
        return token if token is not None else tokens.get(value, value)
    if kind in _PLAIN:
        return value
    names = _FIELDS.get(kind, ())
    if names == ():
        names = _FIELDS[kind] = tuple(
            f.name for f in dataclasses.fields(value) if not f.name.startswith("_") and
            f.name not in ("index", "link_index", "netnsid", "key", "label")) \
            if dataclasses.is_dataclass(value) and not isinstance(value, type) else None
    if names is not None:
        return (kind.__name__, *[(n, _canon(getattr(value, n), tokens)) for n in names])
    if isinstance(value, dict):  # (a comment decides nothing)
        return tuple(sorted(((_canon(k, tokens), _canon(v, tokens)) for k, v in value.items()
                             if k != "comment"), key=repr))
    if isinstance(value, set | frozenset):
        return tuple(sorted((_canon(v, tokens) for v in value), key=repr))
    if isinstance(value, list | tuple):
        return tuple(_canon(v, tokens) for v in value)
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return tokens.get(str(value.ip), str(value.ip)), value.network.prefixlen
    if isinstance(value, str):
        return tokens.get(value.lower(), tokens.get(value, value))
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return tokens.get(str(value), str(value))
    return value


class _Alike:
    """Containers whose paths have one shape: behind one bridge, recorded alike but for
    their own names and addresses (the tokens: addresses, MACs, the host end of the
    veth), and told apart by nothing in any namespace's tables (no rule names one; a set
    or map element that names one has its like for each of the others; each prefix,
    range and interface wildcard takes all or none of them), routed alike from the host
    and from each source. A trace to one stands for a trace to each, its tokens
    swapped. A source's own namespace, an address held twice, or one named by a rule is
    a shape of its own."""

    def __init__(self, world: World, who: list[Source]) -> None:
        host = world.host
        ports = {i.peer[0]: i for i in host.ifaces if i.peer is not None and i.master}
        sources = {s.key for s in who}
        tokens: dict[str, dict[str, str]] = {}  # container key -> its tokens
        owner: dict[str, str] = {}
        unique: set[str] = set()
        addrs: dict[str, list[IPAddress]] = {}
        for key in containers(world):
            space, port = world.spaces[key], ports[key]
            mine: dict[str, str] = {port.name: "<port>", key: "<key>"}
            if port.mac:
                mine[port.mac.lower()] = "<port-mac>"
            for n, i in enumerate(space.ifaces):
                if i.mac and i.name != "lo":
                    mine[i.mac.lower()] = f"<mac:{n}>"
                for m, ifa in enumerate(i.addrs):
                    if i.name != "lo":
                        mine[str(ifa.ip)] = f"<addr:{n}:{m}>"
                        addrs.setdefault(key, []).append(ifa.ip)
            tokens[key] = mine
            for token in mine:
                if token in owner:
                    unique |= {key, owner[token]}
                owner[token] = key
            if key in sources or any(a in host.local() for a in addrs.get(key, [])):
                unique.add(key)
        dnat_maps = _dnat_maps(host.ruleset)
        mentions: dict[str, list[Any]] = {}
        splitters: list[Any] = []
        for space in (host, *world.spaces.values()):
            for item in space.ruleset:
                rule = item.get("rule")
                found = item.get("set") or item.get("map")
                if rule is not None:
                    values = list(_leaves(rule.get("expr", [])))
                    unique |= {owner[v.lower()] for v in values
                               if isinstance(v, str) and v.lower() in owner}
                    splitters += [v for v in values if _splits(v)]
                elif found is not None and (found.get("family"), found.get("table"),
                                            found.get("name")) not in dnat_maps:
                    where = (space.key, found.get("family"), found.get("table"),
                             found.get("name"))
                    for elem in found.get("elem", []):
                        values = list(_leaves(elem))
                        named = {owner[v.lower()] for v in values
                                 if isinstance(v, str) and v.lower() in owner}
                        splitters += [v for v in values if _splits(v)]
                        if len(named) == 1:
                            key = next(iter(named))
                            mentions.setdefault(key, []).append(
                                (where, _canon(elem, tokens[key])))
                        else:
                            unique |= named
        # Each splitter once, parsed once (a prefix in every rule of a chain is one).
        tests = [_inside(v) for v in {repr(v): v for v in splitters}.values()]
        self.shape: dict[str, tuple[Any, ...]] = {}  # address -> its container's shape
        self.tokens = tokens
        self.holder: dict[str, str] = {}
        for key, mine in tokens.items():
            if key in unique:
                continue
            routes = tuple(tuple(_route_id(sp, a) for a in addrs.get(key, []))
                           for sp in (host, *(world.space(s) for s in sources
                                              if s != "outside")))
            split = tuple(tuple(test(a, ports[key].name) for test in tests)
                          for a in addrs.get(key, []))
            shape = (ports[key].master, _canon(world.spaces[key], mine),
                     _canon(ports[key], mine), tuple(sorted(mentions.get(key, []), key=repr)),
                     routes, split)
            for a in addrs.get(key, []):
                self.shape[str(a)] = shape
                self.holder[str(a)] = key

    def swap(self, first: str, other: str) -> dict[str, str]:
        """The addresses of first's container as other's (first, other: addresses of two
        containers of one shape)."""
        theirs = {v: k for k, v in self.tokens[self.holder[other]].items()}
        return {k: theirs[v] for k, v in self.tokens[self.holder[first]].items()
                if v.startswith("<addr") and v in theirs}


def _dnat_maps(items: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """The maps a DNAT statement takes its address or port from: the published ports
    themselves, which audit tells apart by their targets."""
    out: set[tuple[str, str, str]] = set()
    for item in items:
        rule = item.get("rule")
        if rule is None:
            continue
        for e in rule.get("expr", []):
            nat = e.get("dnat") if isinstance(e, dict) else None
            for part in (nat.get("addr"), nat.get("port")) if isinstance(nat, dict) else ():
                data = part["map"].get("data") if isinstance(part, dict) and "map" in part \
                    else None
                if isinstance(data, str) and data.startswith("@"):
                    out.add((str(rule["family"]), str(rule["table"]), data[1:]))
    return out


def _splits(value: Any) -> bool:
    """A value that may take some containers and not others: a prefix, a range, an
    interface wildcard."""
    return isinstance(value, dict) or (isinstance(value, str) and value.endswith("*"))


def _never(addr: IPAddress, port: str) -> bool:
    return False


def _inside(value: Any) -> Callable[[IPAddress, str], bool]:
    """Whether a splitter (_splits) takes a container's address or the host end of its
    veth, as a test parsed once."""
    if isinstance(value, str):
        stem = value[:-1]
        return lambda addr, port: port.startswith(stem)
    if "prefix" in value:
        p = value["prefix"]
        try:
            net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
        except (ValueError, TypeError):
            return _never
        return lambda addr, port: addr in net
    low, high = value["range"]
    try:
        first, last = ipaddress.ip_address(str(low)), ipaddress.ip_address(str(high))
    except ValueError:
        return _never  # a range of ports: no address's business
    return lambda addr, port: first.version == addr.version and \
        int(first) <= int(addr) <= int(last)


def _route_id(space: Space, addr: IPAddress) -> int:
    route = space.lookup(addr)
    return -1 if route is None else next(n for n, r in enumerate(space.routes) if r is route)


class _PathShapes:
    """Which published ports take one path (one trace stands for them all): those that
    go to one address, or to containers of one shape (_Alike), on ports that nothing but
    their own DNAT tells apart (no rule of any namespace matches them, no other
    published port shares them, and the same sockets listen on them: none, say). Then
    the trace of one is the trace of each but for the port numbers and the container's
    addresses, which its Reach maps back (Reach.ports, Reach.addresses)."""

    def __init__(self, world: World, what: list[Target], who: list[Source]) -> None:
        self.before = ports_told_apart(world.host.ruleset)
        self.anywhere = ports_matched(world) if self.before is not None else None
        self.sockets = _sockets(world) if self.anywhere is not None else {}
        self.alike = _Alike(world, who) if self.anywhere is not None else None
        self.world = world
        self.swapped: dict[tuple[str, str], dict[IPAddress, IPAddress]] = {}
        self._goes: dict[int, Any] = {}  # id of a target -> _goes_to's answer
        count: dict[tuple[str, int], int] = {}
        for t in what:
            if t.kind == "published":
                count[(t.proto, t.port)] = count.get((t.proto, t.port), 0) + 1
        self.twice = {k for k, n in count.items() if n > 1}

    def _port(self, proto: str, port: int) -> Any:
        assert self.anywhere is not None
        if port in self.anywhere:
            return port
        return "any", self.sockets.get((proto, port), frozenset())

    def _port_of(self, proto: str, port: int, holder: str) -> Any:
        """As _port, for a container of a shape: its own sockets by their placeholders;
        others' (which its path never meets) as the host's only."""
        assert self.anywhere is not None and self.alike is not None
        if port in self.anywhere:
            return port
        found = self.sockets.get((proto, port))
        if not found:
            return "any", ()
        mine = self.alike.tokens[holder]
        return "any", tuple(sorted(
            (("<holder>" if k == holder else k), mine.get(a, a), p)
            for k, a, p in found
            if k in (holder, self.world.host.key)))

    def goes(self, t: Target) -> tuple[str, int] | None:
        """_goes_to(t), worked out once a target."""
        have = self._goes.get(id(t), self)
        if have is self:
            have = self._goes[id(t)] = _goes_to(t)
        return cast("tuple[str, int] | None", have)

    def key(self, t: Target) -> tuple[Any, ...] | None:
        """The shape of t's path; None: t is traced on its own."""
        if self.before is None or t.kind != "published" or t.port in self.before:
            return None
        goes = self.goes(t)
        if self.anywhere is None or goes is None or (t.proto, t.port) in self.twice:
            return t.proto, str(t.addr), t.version, t.to  # to one address and port
        assert self.alike is not None
        shape = self.alike.shape.get(goes[0])
        if shape is not None:
            holder = self.alike.holder[goes[0]]
            return (t.proto, str(t.addr), t.version, "shape", shape,
                    self.alike.tokens[holder][goes[0]], self._port_of(t.proto, t.port, holder),
                    self._port_of(t.proto, goes[1], holder))
        return (t.proto, str(t.addr), t.version, goes[0], self._port(t.proto, t.port),
                self._port(t.proto, goes[1]))

    def addresses(self, first: Target, t: Target) -> dict[IPAddress, IPAddress]:
        a, b = self.goes(first), self.goes(t)
        if a is None or b is None or a[0] == b[0] or self.alike is None:
            return {}
        have = self.swapped.get((a[0], b[0]))
        if have is None:
            have = self.swapped[(a[0], b[0])] = {
                ipaddress.ip_address(k): ipaddress.ip_address(v)
                for k, v in self.alike.swap(a[0], b[0]).items()}
        return have


def _reaches(world: World, who: list[Source], what: list[Target]) -> list[Reach]:
    """Every source to every target it can name; published ports that take one path
    share one trace (_PathShapes)."""
    shapes = _PathShapes(world, what, who)
    firsts: dict[tuple[Any, ...], Target] = {}
    # (by the ids of the target and the source: ten thousand targets hash slowly)
    traced: dict[tuple[int, int], Reach] = {}
    out: list[Reach] = []
    for t in what:
        key = shapes.key(t)
        first = t if key is None else firsts.setdefault(key, t)
        if first is t:
            for s in who:
                r = reach(world, s, t)
                if r is not None:
                    traced[(id(t), id(s))] = r
                    out.append(r)
            continue
        ports = {first.port: t.port}
        addresses = shapes.addresses(first, t)
        a, b = shapes.goes(first), shapes.goes(t)
        if a is not None and b is not None:
            ports[a[1]] = b[1]
        for s in who:
            like = traced.get((id(first), id(s)))
            if like is not None:
                out.append(Reach(s, t, with_dport(like.packet, t.port), like.trace,
                                 like.via, like.reply, same_path_as=first.label,
                                 ports=ports, addresses=addresses))
    return out


def audit(world: World, iptables: Tables = frozenset()) -> Audit:
    """iptables: the host's tables that iptables-nft manages (their fixes are given as
    iptables commands)."""
    who = sources(world)
    what = targets(world)
    reaches = _reaches(world, who, what)
    notes = []
    if not uplinks(world.host):
        notes.append("the host has no interface towards a LAN (no address outside its "
                     "bridges): no neighbour or routed client is modelled")
    return Audit(who, what, reaches, _findings(world, reaches, iptables), notes)


# text


def _cell(rs: list[Reach]) -> str:
    if not rs:
        return "-"
    yes = [r for r in rs if r.reached]
    if not yes:
        return "no"
    return "yes" if len(yes) == len(rs) else f"{len(yes)}/{len(rs)}"


COLUMNS = (("host", "HOST"), ("neighbour", "NEIGHBOUR"), ("outside", "ROUTED"),
           ("container", "CONTAINERS"))


def table_rows(a: Audit) -> list[list[str]]:
    rows = []
    reaches = a.by_target()
    flagged: dict[int, set[str]] = {}
    for f in a.findings:
        flagged.setdefault(id(f.target), set()).add(f.kind)
    for t in a.targets:
        mine = reaches.get(id(t), [])
        flags = sorted(flagged.get(id(t), set()))
        rows.append([t.label, *(_cell([r for r in mine if r.source.kind == k])
                                for k, _ in COLUMNS), ", ".join(flags) or "-"])
    return rows


def render(a: Audit) -> str:
    head = ["TARGET", *(h for _, h in COLUMNS), "FINDINGS"]
    rows = table_rows(a)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    lines.append("")
    lines.append("sources: " + "; ".join(s.label for s in a.sources))
    for note in a.notes:
        lines.append(f"note: {note}")
    if not a.findings:
        lines.append("no exposure found")
        return "\n".join(lines)
    lines.append(f"{len(a.findings)} finding(s):")
    for n, f in enumerate(a.findings, 1):
        lines.append("")
        lines.append(f"{n}. {TITLES[f.kind]}: {f.target.label}")
        lines.append(f"   reached by: {', '.join(r.source.label for r in f.reaches)}")
        lines.append(f"   why: {f.why}")
        lines.append(f"   proof: {f.reaches[0].trace.summary} (portway trace shows each hop)")
        lines.append("   fix:")
        lines += [f"     {t}" for t in f.fix.text]
        check = "checked on the model: " if f.fix_checked else "NOT confirmed on the model: "
        lines.append(f"   {check}{f.fix_check}")
        for live in f.live:
            lines.append(f"   live: {live['source']}: {live['verdict']}: {live['summary']}"
                         f"{'' if live.get('agrees', True) else ' (static DISAGREES)'}")
    return "\n".join(lines)
