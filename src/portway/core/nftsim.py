"""nftables' decisions, worked out on paper: a ruleset listing and one packet.

Input is what `nft -j list ruleset` returns (every table of every family, not
only portway's: another tool's `policy drop` decides a packet's fate too). For
a hook, every base chain registered on it runs in priority order; each rule's
matches are evaluated against the packet, and the first verdict ends the chain
(jump/goto/return and verdict maps as the kernel does them). NAT statements
rewrite the packet. An expression this model does not know makes the rule
"uncertain": it is taken as not matching, and the decision says so.

This is a model of the first packet of a new connection (conntrack state new);
NAT chains see only such packets, which is what a trace asks about.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from portway.model.types import IPAddress

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
ETHER_NAMES = {0x0800: "ip", 0x0806: "arp", 0x86DD: "ip6", 0x8100: "vlan"}
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def is_loopback(addr: IPAddress) -> bool:
    """127/8 or ::1: the host's own, never routed (`fib daddr type` says local)."""
    return addr.is_loopback


def hostport(addr: IPAddress | str, port: int) -> str:
    """ADDRESS:PORT as clients write it: [fd00::2]:80 for IPv6."""
    text = str(addr)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class Absent:
    """A field the packet does not have (a TCP port of an ICMP packet, ARP fields of IP):
    a match on it is false whatever the operator, as the kernel's dependency check is."""


ABSENT = Absent()
_MISS = object()  # a NAT map without the packet's key


@dataclass(frozen=True)
class Packet:
    l4proto: str
    saddr: IPAddress
    daddr: IPAddress
    sport: int
    dport: int
    iif: str = ""
    oif: str = ""
    smac: str = ""
    dmac: str = ""
    mark: int = 0
    ct_status: frozenset[str] = frozenset()
    ct_state: str = "new"

    @property
    def version(self) -> int:
        return self.daddr.version

    @property
    def family(self) -> str:
        """The packet's address family as nftables names it in payloads: ip or ip6."""
        return "ip" if self.daddr.version == 4 else "ip6"


def with_dport(packet: Packet, dport: int) -> Packet:
    """dataclasses.replace(packet, dport=dport), without its look at every field each
    time (audit makes tens of thousands of these for the ports that share one trace)."""
    out = Packet.__new__(Packet)
    out.__dict__.update(packet.__dict__)
    out.__dict__["dport"] = dport
    return out


@dataclass(frozen=True)
class Decision:
    """What one base chain did to the packet."""

    family: str
    table: str
    chain: str  # the base chain
    hook: str
    priority: int
    verdict: str  # accept, drop, reject, or "policy accept"/"policy drop"
    rule: str  # the deciding rule's text (its comment if it has one), or "" for the policy
    rule_chain: str  # the chain the deciding rule is in (a jump target, or the base chain)
    handle: int | None = None
    rewrites: tuple[str, ...] = ()
    uncertain: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


@dataclass
class _Run:
    packet: Packet
    local: frozenset[IPAddress]
    masquerade_source: dict[str, IPAddress]
    rewrites: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Outcome:
    verdict: str | None  # None: the chain ran out (or returned)
    rule: dict[str, Any] | None = None
    chain: str = ""


class Ruleset:
    _kept: ClassVar[dict[int, tuple[list[dict[str, Any]], int, Ruleset]]] = {}

    @classmethod
    def of(cls, items: list[dict[str, Any]]) -> Ruleset:
        """The Ruleset of a listing, made once per listing: audit traces thousands of
        paths through the same host, and each trace would otherwise index every table
        anew. Kept by the listing's identity and length (nothing changes a listing in
        place once it is traced; a rule added makes a new one, as with_rules does)."""
        found = cls._kept.get(id(items))
        if found is not None and found[0] is items and found[1] == len(items):
            return found[2]
        if len(cls._kept) >= KEPT:
            del cls._kept[next(iter(cls._kept))]
        made = cls(items)
        cls._kept[id(items)] = (items, len(items), made)
        return made

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._hooks: dict[tuple[tuple[str, ...], str], list[dict[str, Any]]] = {}
        self.chains: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.sets: dict[tuple[str, str, str], list[Any]] = {}
        for item in items:
            if "chain" in item:
                c = item["chain"]
                self.chains[(c["family"], c["table"], c["name"])] = c
            elif "rule" in item:
                r = item["rule"]
                self.rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
            elif "set" in item or "map" in item:
                s = item.get("set") or item["map"]
                # Not copied: nothing here changes them, and their index is kept by
                # the identity of the listing's own list (_ElementIndex).
                self.sets[(s["family"], s["table"], s["name"])] = s.get("elem", [])

    def base_chains(self, families: tuple[str, ...], hook: str) -> list[dict[str, Any]]:
        """The base chains on hook in the order the kernel runs them: by priority, and
        among equal priorities the newest first (the kernel registers a new hook ahead of
        those of its priority; a listing is in creation order, tables then chains).
        Worked out once per hook (audit runs thousands of traces through one Ruleset)."""
        have = self._hooks.get((families, hook))
        if have is None:
            found = [(n, c) for n, c in enumerate(self.chains.values())
                     if c.get("hook") == hook and c["family"] in families]
            have = self._hooks[(families, hook)] = [
                c for n, c in sorted(found, key=lambda nc: (int(nc[1].get("prio", 0)),
                                                            -nc[0]))]
        return have

    def run_hook(self, families: tuple[str, ...], hook: str, packet: Packet,
                 local: frozenset[IPAddress],
                 masquerade_source: dict[str, IPAddress] | None = None, nat: bool = True,
                 at: tuple[int, Callable[[Packet], Packet]] | None = None,
                 ) -> tuple[Packet, list[Decision], bool]:
        """Every base chain on the hook, in priority order. Returns the packet as it
        leaves the hook, each chain's decision, and whether the packet survived.
        nat=False: the connection's NAT is already decided (nat chains are skipped).
        at: (priority, change): the change is made to the packet before the first chain
        of that priority or later (conntrack's NAT of a reply, at the NAT priorities)."""
        decisions: list[Decision] = []
        for chain in self.base_chains(families, hook):
            if at is not None and int(chain.get("prio", 0)) >= at[0]:
                packet, at = at[1](packet), None
            if chain.get("type") == "nat" and (packet.ct_state != "new" or not nat):
                continue
            run = _Run(packet, local, masquerade_source or {})
            outcome = self._chain(chain["family"], chain["table"], chain["name"], run, 0)
            packet = run.packet
            if outcome.verdict is None:
                verdict, text, where, handle = f"policy {chain.get('policy', 'accept')}", "", \
                    chain["name"], None
            else:
                verdict, where = outcome.verdict, outcome.chain
                assert outcome.rule is not None
                text, handle = rule_text(outcome.rule), outcome.rule.get("handle")
            decisions.append(Decision(
                family=chain["family"], table=chain["table"], chain=chain["name"], hook=hook,
                priority=int(chain.get("prio", 0)), verdict=verdict, rule=text,
                rule_chain=where, handle=handle, rewrites=tuple(run.rewrites),
                uncertain=tuple(run.uncertain)))
            if verdict.split()[-1] in ("drop", "reject"):
                return packet, decisions, False
        if at is not None:
            packet = at[1](packet)
        return packet, decisions, True

    # evaluation

    def _chain(self, family: str, table: str, name: str, run: _Run, depth: int) -> _Outcome:
        if depth > 16:
            run.uncertain.append(f"jumps nested too deep at {name}")
            return _Outcome(None)
        for rule in self.rules.get((family, table, name), []):
            result = self._rule(family, table, rule, run, depth)
            if result is not None:
                return result
        return _Outcome(None)

    def _rule(self, family: str, table: str, rule: dict[str, Any], run: _Run,
              depth: int) -> _Outcome | None:
        """None: go on with the next rule; an outcome: this rule ended the chain."""
        name = rule["chain"]
        for expr in rule.get("expr", []):
            (kind, body), = expr.items()
            if kind == "match":
                matched = self._match(family, table, body, run)
                if matched is None:
                    run.uncertain.append(f"cannot evaluate {describe(expr)} "
                                         f"(in {family} {table} {name})")
                    return None
                if not matched:
                    return None
            elif kind in ("accept", "drop", "reject"):
                return _Outcome(kind, rule, name)
            elif kind == "return":
                return _Outcome(None, rule, name)
            elif kind in ("jump", "goto"):
                inner = self._chain(family, table, body["target"], run, depth + 1)
                if inner.verdict is not None or kind == "goto":
                    return inner
            elif kind == "vmap":
                verdict = self._lookup(family, table, body["data"],
                                       self._value(body["key"], run))
                if verdict is None:
                    continue
                (vkind, vbody), = verdict.items()
                if vkind in ("jump", "goto"):
                    inner = self._chain(family, table, vbody["target"], run, depth + 1)
                    if inner.verdict is not None or vkind == "goto":
                        return inner
                elif vkind in ("accept", "drop", "reject"):
                    return _Outcome(vkind, rule, name)
                elif vkind == "return":
                    return _Outcome(None, rule, name)
            elif kind in ("dnat", "snat", "masquerade", "redirect"):
                if not self._nat(family, table, kind, body, run):
                    return None  # a map without the key: the rule does not match
                return _Outcome("accept", rule, name)
            elif kind == "mangle" and body.get("key") == {"meta": {"key": "mark"}}:
                value = self._value(body["value"], run)
                if isinstance(value, int):
                    run.packet = replace(run.packet, mark=value)
            elif kind == "notrack":  # no conntrack entry: NAT chains will not see it
                run.packet = replace(run.packet, ct_state="untracked")
                run.rewrites.append(f"untracked: conntrack keeps no entry (notrack, by "
                                    f"\"{rule_text(rule)}\")")
            elif kind in ("counter", "log", "comment", "limit", "quota"):
                continue
            else:
                run.uncertain.append(f"ignored {describe(expr)} (in {family} {table} {name})")
        return None

    def _nat(self, family: str, table: str, kind: str, body: Any, run: _Run) -> bool:
        p = run.packet
        if isinstance(body, dict) and body.get("family") in ("ip", "ip6") and \
                body["family"] != p.family:
            # `dnat ip` in an inet table leaves IPv6 packets alone (and `dnat ip6` IPv4
            # ones): the rule goes on without a verdict, as if it did not match.
            return False
        if kind == "masquerade" or (kind == "snat" and not (body or {}).get("addr")):
            source = run.masquerade_source.get(p.oif)
            if source is None:
                run.uncertain.append(f"no address on {p.oif} to masquerade to")
                return True
            run.packet = replace(p, saddr=source, ct_status=p.ct_status | {"snat"})
            run.rewrites.append(f"source {p.saddr} -> {source} (masquerade)")
            return True
        if kind == "redirect":
            run.uncertain.append("redirect is not modelled")
            return True
        addr = self._nat_part(family, table, body.get("addr"), run)
        port = self._nat_part(family, table, body.get("port"), run)
        if addr is _MISS or port is _MISS:
            return False
        if kind == "dnat":
            new_addr = ipaddress.ip_address(str(addr)) if addr is not None else p.daddr
            new_port = int(port) if port is not None else p.dport
            run.packet = replace(p, daddr=new_addr, dport=new_port,
                                 ct_status=p.ct_status | {"dnat"})
            run.rewrites.append(f"destination {hostport(p.daddr, p.dport)} -> "
                                f"{hostport(new_addr, new_port)} (DNAT)")
        else:
            new_src = ipaddress.ip_address(str(addr)) if addr is not None else p.saddr
            run.packet = replace(p, saddr=new_src, ct_status=p.ct_status | {"snat"})
            run.rewrites.append(f"source {p.saddr} -> {new_src} (SNAT)")
        return True

    def _nat_part(self, family: str, table: str, part: Any, run: _Run) -> Any:
        if part is None:
            return None
        if isinstance(part, dict) and "map" in part:
            found = self._lookup(family, table, part["map"]["data"],
                                 self._value(part["map"]["key"], run))
            return _MISS if found is None else found
        return part

    def _lookup(self, family: str, table: str, data: Any, key: Any) -> Any:
        elem = self._first(family, table, data, key, is_map=True)
        return None if elem is None else elem[1]

    def _first(self, family: str, table: str, ref: Any, value: Any, is_map: bool) -> Any:
        """The first element of a set or map (a map's: [key, data]) whose key matches
        value, or None. A named set is looked up in its index (_ElementIndex): a map of
        10,000 published ports costs a dictionary lookup, not 10,000 comparisons."""
        if isinstance(ref, str) and ref.startswith("@"):
            listed = self.sets.get((family, table, ref[1:]))
            if listed is not None:
                return _ElementIndex.of(listed, is_map).first(value)
        for elem in self._elements(family, table, ref):
            if is_map and not (isinstance(elem, list) and len(elem) == 2):
                continue
            if _elem_matches(elem[0] if is_map or isinstance(elem, list) else elem, value):
                return elem
        return None

    def _elements(self, family: str, table: str, ref: Any) -> list[Any]:
        if isinstance(ref, str) and ref.startswith("@"):
            return self.sets.get((family, table, ref[1:]), [])
        if isinstance(ref, dict) and "set" in ref:
            inner = ref["set"]
            return inner if isinstance(inner, list) else [inner]
        return [ref]

    def _match(self, family: str, table: str, body: dict[str, Any], run: _Run) -> bool | None:
        left = self._value(body["left"], run)
        if left is None:
            return None
        if left is ABSENT or (isinstance(left, tuple) and ABSENT in left):
            return False
        op, right = body.get("op", "=="), body["right"]
        if (isinstance(right, str) and right.startswith("@")) or \
                (isinstance(right, dict) and "set" in right):
            found = self._first(family, table, right, left, is_map=False) is not None
            return found if op in ("==", "in") else not found
        if op == "in" or (isinstance(right, list) and op == "=="):
            wanted = set(right) if isinstance(right, list) else {right}
            have = left if isinstance(left, frozenset) else {left}
            return bool(wanted & have)
        if op not in ("==", "!="):
            return _ordered(op, left, right)
        same = _elem_matches(right, left)
        return same if op == "==" else not same

    def _value(self, expr: Any, run: _Run) -> Any:
        """The packet's value for a left-hand expression; None when not modelled."""
        p = run.packet
        if not isinstance(expr, dict):
            return expr
        (kind, body), = expr.items()
        if kind == "meta":
            key = body["key"]
            v4 = p.version == 4
            return {"iifname": p.iif, "oifname": p.oif, "iif": p.iif, "oif": p.oif,
                    "l4proto": p.l4proto, "protocol": "ip" if v4 else "ip6",
                    "nfproto": "ipv4" if v4 else "ipv6", "mark": p.mark}.get(key)
        if kind == "exthdr":
            return ABSENT  # (probes carry no IPv6 extension header)
        if kind == "payload":
            if "protocol" not in body:  # a raw payload (@th,64,128): not modelled
                return None
            return _payload(p, body["protocol"], body["field"])
        if kind == "ct":
            return {"state": p.ct_state, "status": p.ct_status, "mark": 0,
                    "direction": "original"}.get(body["key"])
        if kind == "fib" and body.get("result") == "type" and "daddr" in body.get("flags", []):
            return "local" if p.daddr in run.local or is_loopback(p.daddr) else "unicast"
        if kind == "concat":
            return tuple(self._value(e, run) for e in body)
        if kind in ("&", "|", "^"):
            left, other = self._value(body[0], run), body[1]
            if not isinstance(left, int) or not isinstance(other, int):
                return None
            return left & other if kind == "&" else left | other if kind == "|" \
                else left ^ other
        return None


def _payload(p: Packet, protocol: str, name: str) -> Any:
    """A header field of p; ABSENT for a header p does not have (`ip saddr` of an IPv6
    packet: in an inet or bridge table the kernel's implied protocol check fails)."""
    if protocol in ("ip", "ip6"):
        if protocol != p.family:
            return ABSENT
        return {"saddr": p.saddr, "daddr": p.daddr, "protocol": p.l4proto,
                "nexthdr": p.l4proto}.get(name)
    if protocol in ("th", "tcp", "udp", "sctp"):
        if p.l4proto not in ("tcp", "udp", "sctp") or protocol not in ("th", p.l4proto):
            return ABSENT
        return {"sport": p.sport, "dport": p.dport}.get(name)
    if protocol == "ether":
        return {"saddr": p.smac, "daddr": p.dmac, "type": p.family}.get(name)
    if (protocol, p.l4proto) in (("icmp", "icmp"), ("icmpv6", "ipv6-icmp")):
        return None  # ICMP's own fields are not modelled: probes are TCP or UDP
    if protocol == "ah" and p.l4proto != "ah":
        return ABSENT  # (probes are never behind an Authentication Header)
    if protocol in ("arp", "icmp", "icmpv6", "sctp"):
        return ABSENT
    return None


_PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


def _canonical(value: Any) -> Any:
    """A hashable form of a plain key or value (an address, a port, a name, a protocol,
    a concatenation of these) equal exactly when _elem_matches says they match; None for
    what only a comparison can decide (a prefix, a range, a wildcard, an ether type)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value in ETHER_NAMES else value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if isinstance(value, str):
        if value.endswith("*") or value in ("ip", "arp", "ip6", "vlan"):
            return None
        if value in _PROTO_NUMBERS:
            return _PROTO_NUMBERS[value]
        return _text(value)
    if isinstance(value, dict):
        if "elem" in value:
            return _canonical(value["elem"]["val"])
        if "concat" in value:
            return _canonical(tuple(value["concat"]))
        return None
    if isinstance(value, tuple | list):
        parts = tuple(_canonical(v) for v in value)
        return None if any(p is None for p in parts) else parts
    return None


KEPT = 4096  # indexes (and rulesets) kept: every set of a large host's tables


class _ElementIndex:
    """The elements of one listed set or map: by the canonical form of their keys, and
    the rest (prefixes, ranges, wildcards) in order. Built once per listing (a trace
    shares its Ruleset, and the listing is the same object from trace to trace)."""

    _cache: ClassVar[dict[tuple[int, bool], tuple[list[Any], _ElementIndex, int]]] = {}

    def __init__(self, elems: list[Any], is_map: bool) -> None:
        self.elems = elems
        self.is_map = is_map
        self.exact: dict[Any, int] = {}
        self.others: list[int] = []
        for n, elem in enumerate(elems):
            if is_map and not (isinstance(elem, list) and len(elem) == 2):
                continue
            key = elem[0] if isinstance(elem, list) else elem
            canonical = _canonical(key)
            if canonical is None:
                self.others.append(n)
            else:
                self.exact.setdefault(canonical, n)

    @classmethod
    def of(cls, elems: list[Any], is_map: bool) -> _ElementIndex:
        found = cls._cache.get((id(elems), is_map))
        if found is not None and found[0] is elems and found[2] == len(elems):
            return found[1]
        if len(cls._cache) >= KEPT:  # the oldest goes (dicts keep their order)
            del cls._cache[next(iter(cls._cache))]
        index = cls(elems, is_map)
        cls._cache[(id(elems), is_map)] = (elems, index, len(elems))
        return index

    def first(self, value: Any) -> Any:
        canonical = _canonical(value)
        if canonical is None:
            candidates: list[int] = sorted([*self.exact.values(), *self.others])
        else:
            exact = self.exact.get(canonical)
            candidates = [n for n in self.others if exact is None or n < exact]
            if exact is not None:
                candidates.append(exact)
        for n in candidates:
            elem = self.elems[n]
            key = elem[0] if isinstance(elem, list) else elem
            if _elem_matches(key, value):
                return elem
        return None


@functools.lru_cache(maxsize=65536)
def _text(value: str) -> Any:
    """A string of a ruleset or a packet as compared: an address, or lower case. Cached:
    a trace compares the same few hundred strings thousands of times."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return value.lower()


@functools.lru_cache(maxsize=4096)
def _prefix(addr: str, length: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{addr}/{length}", strict=False)


def _normal(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _text(value)
    return value


def _elem_matches(elem: Any, value: Any) -> bool:
    if isinstance(elem, dict):
        if "elem" in elem:
            return _elem_matches(elem["elem"]["val"], value)
        if "prefix" in elem:
            net = _prefix(str(elem["prefix"]["addr"]), int(elem["prefix"]["len"]))
            return isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) and \
                value in net
        if "range" in elem:
            low, high = (_normal(x) for x in elem["range"])
            v = _normal(value)
            try:
                return bool(low <= v <= high)
            except TypeError:
                return False
        if "concat" in elem:
            parts = elem["concat"]
            return isinstance(value, tuple) and len(parts) == len(value) and all(
                _elem_matches(a, b) for a, b in zip(parts, value, strict=True))
        return False
    if isinstance(value, tuple):
        return False
    if isinstance(elem, str) and elem.endswith("*") and isinstance(value, str):
        return value.startswith(elem[:-1])
    if isinstance(value, str) and isinstance(elem, int):
        return PROTO_NAMES.get(elem) == value or ETHER_NAMES.get(elem) == value
    e, v = _normal(elem), _normal(value)
    if isinstance(v, ipaddress.IPv4Address) != isinstance(e, ipaddress.IPv4Address):
        return str(e) == str(v)
    return bool(e == v)


def _ordered(op: str, left: Any, right: Any) -> bool | None:
    a, b = _normal(left), _normal(right)
    try:
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}.get(op)
    except TypeError:
        return None


def describe(expr: Any) -> str:
    """A short text for an expression, close to `nft list`'s."""
    if not isinstance(expr, dict):
        if isinstance(expr, list):
            return "{ " + ", ".join(describe(e) for e in expr) + " }"
        return str(expr)
    (kind, body), = expr.items()
    if kind == "match":
        op = "" if body.get("op", "==") in ("==", "in") else f"{body['op']} "
        return f"{describe(body['left'])} {op}{describe(body['right'])}"
    if kind == "meta":
        return f"meta {body['key']}" if body["key"] not in ("iifname", "oifname", "mark") \
            else body["key"]
    if kind == "payload":
        if "protocol" not in body:
            return f"@{body.get('base')},{body.get('offset')},{body.get('len')}"
        return f"{body['protocol']} {body['field']}"
    if kind == "ct":
        return f"ct {body['key']}"
    if kind == "fib":
        return f"fib {' . '.join(body.get('flags', []))} {body.get('result')}"
    if kind == "concat":
        return " . ".join(describe(e) for e in body)
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        return f"{body[0]}-{body[1]}"
    if kind == "set":
        return describe(body)
    if kind in ("accept", "drop", "reject", "return", "masquerade", "counter") and not body:
        return str(kind)
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "vmap":
        return f"{describe(body['key'])} vmap {describe(body['data'])}"
    if kind in ("&", "|", "^"):
        return f"{describe(body[0])} {kind} {describe(body[1])}"
    return str(kind)


def rule_text(rule: dict[str, Any]) -> str:
    if rule.get("comment"):
        return str(rule["comment"])
    return " ".join(describe(e) for e in rule.get("expr", []))
