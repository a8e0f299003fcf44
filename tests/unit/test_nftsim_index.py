"""nftsim's element index answers as the one-by-one comparison did: the first element
that matches, prefixes, ranges and wildcards in their order among the plain keys."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from portway.core.nftsim import Packet, Ruleset, with_dport

IP = ipaddress.ip_address


def ruleset(elems: list[Any], key: Any, kind: str = "map") -> Ruleset:
    body = {"family": "inet", "table": "t", "name": "m", "elem": elems}
    return Ruleset([{kind: body}, {"chain": {"family": "inet", "table": "t", "name": "c",
                                             "hook": "prerouting", "type": "filter",
                                             "prio": 0, "policy": "accept"}},
                    {"rule": {"family": "inet", "table": "t", "chain": "c", "expr": [
                        {"vmap": {"key": key, "data": "@m"}}] if kind == "map" else [
                        {"match": {"op": "==", "left": key, "right": "@m"}}, {"drop": None}]}}])


DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}
PORT_KEY = {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th",
                                                                  "field": "dport"}}]}


def verdict(rs: Ruleset, daddr: str, dport: int = 80, iif: str = "eth0") -> str:
    packet = Packet("tcp", IP("192.0.2.1"), IP(daddr), 40000, dport, iif=iif)
    _, decisions, _ = rs.run_hook(("inet",), "prerouting", packet, frozenset())
    return decisions[0].verdict


def test_a_prefix_before_an_exact_key_wins() -> None:
    rs = ruleset([[{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"drop": None}],
                  ["10.0.0.5", {"accept": None}]], DADDR)
    assert verdict(rs, "10.0.0.5") == "drop"
    rs = ruleset([["10.0.0.5", {"accept": None}],
                  [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"drop": None}]], DADDR)
    assert verdict(rs, "10.0.0.5") == "accept"
    assert verdict(rs, "10.0.0.6") == "drop"
    assert verdict(rs, "11.0.0.6") == "policy accept"


def test_concatenated_keys_and_protocol_names() -> None:
    elems = [[{"elem": {"val": {"concat": ["tcp", 8000 + i]}, "comment": "x"}},
              {"drop": None}] for i in range(1000)]
    rs = ruleset(elems, PORT_KEY)
    assert verdict(rs, "10.0.0.1", 8999) == "drop"
    assert verdict(rs, "10.0.0.1", 9000) == "policy accept"
    rs = ruleset([[{"concat": [6, 80]}, {"drop": None}]], PORT_KEY)
    assert verdict(rs, "10.0.0.1", 80) == "drop"


def test_sets_with_wildcards_and_ranges() -> None:
    iif = {"meta": {"key": "iifname"}}
    rs = ruleset(["lo", "pwv-*"], iif, kind="set")
    assert verdict(rs, "10.0.0.1", iif="pwv-abc") == "drop"
    assert verdict(rs, "10.0.0.1", iif="LO") == "drop"
    assert verdict(rs, "10.0.0.1", iif="eth0") == "policy accept"
    port = {"payload": {"protocol": "th", "field": "dport"}}
    rs = ruleset([22, {"range": [8000, 8100]}], port, kind="set")
    assert verdict(rs, "10.0.0.1", 8050) == "drop"
    assert verdict(rs, "10.0.0.1", 22) == "drop"
    assert verdict(rs, "10.0.0.1", 23) == "policy accept"


def test_with_dport_is_replace_of_the_port_alone() -> None:
    packet = Packet("udp", IP("192.0.2.1"), IP("2001:db8::2"), 40000, 80, iif="eth0",
                    mark=7, ct_status=frozenset({"dnat"}), ct_state="established")
    moved = with_dport(packet, 8080)
    assert moved == replace(packet, dport=8080) and moved is not packet
    assert packet.dport == 80 and hash(moved) == hash(replace(packet, dport=8080))
