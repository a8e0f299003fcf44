"""kernel/nftrace.forget_connections against a throwaway namespace's own conntrack
table: entries are made with `conntrack -I` and listed with `conntrack -L` (the
oracle); the helper runs on a thread that has entered the namespace, as the daemon's
threads live in the host namespace."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from portway.kernel import netns, nftrace
from portway.testbed import add_netns, del_netns


@pytest.fixture
def space() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    name = f"pwk-ct-{secrets.token_hex(3)}"
    try:
        add_netns(name)
        yield name
    finally:
        del_netns(name)


def conntrack(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "conntrack", *args],
                          capture_output=True, text=True, check=True).stdout


def insert(ns: str, proto: str, src: str, dst: str, sport: int, dport: int,
           reply_src: str | None = None) -> None:
    """An entry from src:sport to dst:dport, answered from reply_src (a DNAT's target)."""
    conntrack(ns, "-I", "-p", proto, "-s", src, "-d", dst, "--sport", str(sport),
              "--dport", str(dport), "-r", reply_src or dst, "-q", src,
              "--reply-port-src", str(dport), "--reply-port-dst", str(sport),
              "-t", "120", *(["--state", "ESTABLISHED"] if proto == "tcp" else []))


def listed(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-L"],
                          capture_output=True, text=True).stdout


def test_forget_connections_drops_the_entries_of_an_address_and_no_other(space: str) -> None:
    # A flow to a published port NATed to 10.30.0.5 (the address that moves), one from
    # it, one of IPv6, and two that do not concern it.
    insert(space, "udp", "192.0.2.9", "198.51.100.1", 40000, 53535, reply_src="10.30.0.5")
    insert(space, "tcp", "10.30.0.5", "203.0.113.7", 41000, 443)
    insert(space, "udp", "fd00::9", "fd00::5", 42000, 53)
    insert(space, "udp", "192.0.2.9", "198.51.100.1", 40001, 53536, reply_src="10.30.0.6")
    insert(space, "tcp", "10.30.0.50", "203.0.113.7", 41001, 443)
    before = listed(space).splitlines()
    assert len([e for e in before if "=10.30.0.5 " in e]) == 2, before
    assert len(before) == 5, before

    gone = netns.in_netns(netns.netns_path(space), lambda: nftrace.forget_connections(
        [ipaddress.ip_address("10.30.0.5"), ipaddress.ip_address("fd00::5")]))

    after = listed(space)
    assert gone == 3, after
    assert "=10.30.0.5 " not in after and "fd00::5" not in after, after
    assert len(after.splitlines()) == 2, after
    assert "=10.30.0.6 " in after and "=10.30.0.50 " in after, after
    # Nothing more to forget: none, and no error.
    assert netns.in_netns(netns.netns_path(space), lambda: nftrace.forget_connections(
        [ipaddress.ip_address("10.30.0.5")])) == 0
