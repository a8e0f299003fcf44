"""engine/fw.Firewall.add_guard against a throwaway namespace's own ruleset: the
anti-spoofing elements given as their sets' declarations (what a set-up sends) end up in
the kernel exactly as render_guard's elements would, an IPv6 endpoint's too (its form is
the elements'), and a set the kernel has declared otherwise refuses the first form, after
which the elements alone go in. The oracle is `nft -j list table bridge portway`."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from portway.core import firewall
from portway.engine.fw import Firewall
from portway.kernel import netns
from portway.kernel.nft import Nft
from portway.model.types import Endpoint
from portway.testbed import add_netns, del_netns

INSTANCE = "5eed0001"


@pytest.fixture
def space() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    name = f"pwk-gd-{secrets.token_hex(3)}"
    try:
        add_netns(name)
        yield name
    finally:
        del_netns(name)


def endpoint(n: int, v6: bool = False) -> Endpoint:
    addresses = (ipaddress.ip_interface(f"10.77.0.{n}/24"),) + \
        ((ipaddress.ip_interface(f"fd00:77::{n:x}/64"),) if v6 else ())
    return Endpoint(id=f"{n:064x}", container_id="cd" * 32, network_id="ab" * 32,
                    ifname="eth0", host_ifname=f"pwv-{n:011x}", addresses=addresses,
                    mac=f"02:42:0a:4d:00:{n:02x}")


def elements(ns: str) -> set[tuple[str, str, str]]:
    """(set, element as JSON, comment) of every element of `bridge portway`."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "bridge",
                          firewall.TABLE], capture_output=True, text=True, check=True).stdout
    found: set[tuple[str, str, str]] = set()
    for item in json.loads(out)["nftables"]:
        s = item.get("set")
        for e in (s or {}).get("elem", []):
            found.add((s["name"], json.dumps(e["elem"]["val"]), e["elem"].get("comment", "")))
    return found


def wanted(endpoints: list[Endpoint]) -> set[tuple[str, str, str]]:
    return {(c["add"]["element"]["name"], json.dumps(e["elem"]["val"]), e["elem"]["comment"])
            for c in firewall.render_guard(endpoints, INSTANCE)
            for e in c["add"]["element"]["elem"]}


def in_space(ns: str, fn: Any) -> Any:
    def body() -> Any:
        nft = Nft()
        fw = Firewall(nft, INSTANCE)
        try:
            return fn(nft, fw)
        finally:
            fw.close()
            nft.close()

    return netns.in_netns(netns.netns_path(ns), body)


def test_declared_form_adds_what_render_guard_adds(space: str) -> None:
    first, second, dual = [endpoint(2), endpoint(3)], [endpoint(4)], [endpoint(5, v6=True)]
    assert firewall.render_guard_declared(first, INSTANCE)  # (this form, not the other)

    def add(nft: Nft, fw: Firewall) -> None:
        fw.ready()  # every shared table, the inet one's interval sets too
        fw.add_guard(first)
        fw.add_guard(second)  # into sets that have elements already
        fw.add_guard(dual)

    in_space(space, add)
    got = elements(space)
    assert got == wanted(first + second + dual), got
    assert any(name == "targets6" for name, _, _ in got)
    # The rules are render_guard_base's, untouched (no set was made again).
    def rules(nft: Nft, fw: Firewall) -> int:
        return sum(1 for i in nft.list_table(firewall.GUARD_FAMILY, firewall.TABLE) or []
                   if "rule" in i)

    assert in_space(space, rules) == sum(1 for c in firewall.render_guard_base()
                                         if "rule" in c["add"])


def test_a_set_declared_otherwise_takes_the_elements_alone(space: str) -> None:
    # macs as another version might have declared it (with timeouts): the kernel
    # refuses a declaration that differs, so the declared form fails as a whole and
    # add_guard adds the elements alone.
    base = [c for c in firewall.render_guard_base()]
    for c in base:
        s = c["add"].get("set")
        if s is not None and s["name"] == "macs":
            c["add"]["set"] = {**s, "flags": ["timeout"]}
    one = [endpoint(7)]

    def add(nft: Nft, fw: Firewall) -> None:
        nft.run(firewall.GUARD_PRELUDE)
        nft.apply(base)
        declared = firewall.render_guard_declared(one, INSTANCE)
        assert declared is not None
        with pytest.raises(Exception, match="nftables refused"):
            nft.apply(declared)
        fw.add_guard(one)

    in_space(space, add)
    assert elements(space) == wanted(one)
