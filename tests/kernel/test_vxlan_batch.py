"""kernel/vxlan.py's forwarding entries in batches, against a real VXLAN device in a
throwaway namespace of the test's own: the entries a batch programs and removes are the
ones the request-at-a-time path does (`bridge fdb` and `ip neigh` as oracles), the
plain-socket reading sees what pyroute2 sees, and an entry that fails is reported
without stopping the others.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from portway.core.overlay import Fdb, Neighbour, plan_forwarding
from portway.kernel import links, netns, vxlan
from portway.testbed import add_netns, del_netns

LOCAL = ipaddress.ip_address("192.0.2.1")
COUNT = 600  # entries of each kind: more than two batches


def entries(count: int) -> tuple[set[Fdb], set[Neighbour]]:
    fdb: set[Fdb] = set()
    neigh: set[Neighbour] = set()
    for i in range(count):
        ip = ipaddress.ip_address(0x0AC80000 + 10 + i)  # 10.200.0.10 on
        mac = "02:42:" + ":".join(f"{x:02x}" for x in ip.packed)
        fdb.add(Fdb(mac, ipaddress.ip_address(f"192.0.2.{2 + i % 2}")))
        neigh.add(Neighbour(ip, mac))
    return fdb, neigh


def kernel(ns: str, dev: str) -> tuple[int, int]:
    fdb = json.loads(subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
                                    capture_output=True, text=True, check=True).stdout or "[]")
    neigh = json.loads(subprocess.run(["ip", "-n", ns, "-j", "neigh", "show", "dev", dev],
                                      capture_output=True, text=True, check=True).stdout
                       or "[]")
    return (sum(1 for e in fdb if e.get("dst")),
            sum(1 for n in neigh if "PERMANENT" in n.get("state", [])))


@pytest.fixture
def host() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    ns = f"pwk-vx-{secrets.token_hex(3)}"
    try:
        add_netns(ns)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{LOCAL}/32", "dev", "lo"], check=True)
        yield ns
    finally:
        del_netns(ns)


def device(ipr: links.IPRoute) -> int:
    links.ensure_bridge(ipr, "pwbr-vx", "02:00:00:00:00:01", 1450, [], "portway:test:network:1")
    return vxlan.ensure_vxlan(ipr, "pwvx-test", 4242, LOCAL, 1450, "pwbr-vx",
                              "portway:test:network:1")


def test_a_batch_programs_and_removes_what_one_at_a_time_does(host: str) -> None:
    want = entries(COUNT)
    empty: tuple[set[Fdb], set[Neighbour]] = (set(), set())

    def body() -> tuple[list[str], ...]:
        ipr = links.IPRoute()
        requests = vxlan.Requests()
        try:
            index = device(ipr)
            start = time.perf_counter()
            added = vxlan.apply_forwarding(ipr, index, plan_forwarding(want, empty), requests)
            batched = time.perf_counter() - start
            # Read back over the plain socket as over pyroute2: the same entries.
            assert vxlan.observe_forwarding(ipr, index, requests) == want
            assert vxlan.observe_forwarding(ipr, index) == want
            # Again: nothing to do, and entries there already are no error.
            again = vxlan.apply_forwarding(ipr, index, plan_forwarding(want, empty), requests)
            # Half of them go, then all (a batch of removals).
            half = (set(sorted(want[0], key=str)[:COUNT // 2]),
                    set(sorted(want[1], key=str)[:COUNT // 2]))
            removed = vxlan.apply_forwarding(
                ipr, index, plan_forwarding(half, vxlan.observe_forwarding(ipr, index)),
                requests)
            assert vxlan.observe_forwarding(ipr, index) == half
            gone = vxlan.apply_forwarding(ipr, index, plan_forwarding(empty, half), requests)
            assert vxlan.observe_forwarding(ipr, index) == empty
            assert vxlan.observe_forwarding(ipr, index, requests) == empty
            # The same entries one request at a time, for the time it takes.
            start = time.perf_counter()
            single = vxlan.apply_forwarding(ipr, index, plan_forwarding(want, empty))
            one_by_one = time.perf_counter() - start
            assert vxlan.observe_forwarding(ipr, index) == want
            assert batched < one_by_one, (batched, one_by_one)
            return added, again, removed, gone, single
        finally:
            requests.close()
            ipr.close()

    results = netns.in_netns(netns.netns_path(host), body)
    assert all(r == [] for r in results)
    assert kernel(host, "pwvx-test") == (COUNT, COUNT)


def test_a_failing_entry_is_reported_and_the_others_are_made(host: str) -> None:
    fdb, neigh = entries(3)
    # An IPv6 VTEP behind a device whose own VTEP is IPv4: the kernel refuses it
    # (EAFNOSUPPORT), between entries it takes.
    bad = Fdb("02:42:00:00:00:01", ipaddress.ip_address("2001:db8::1"))

    def body() -> list[str]:
        ipr = links.IPRoute()
        requests = vxlan.Requests()
        try:
            index = device(ipr)
            errors = vxlan.apply_forwarding(
                ipr, index, plan_forwarding((fdb | {bad}, neigh), (set(), set())), requests)
            assert vxlan.observe_forwarding(ipr, index) == (fdb, neigh)
            return errors
        finally:
            requests.close()
            ipr.close()

    errors = netns.in_netns(netns.netns_path(host), body)
    assert errors == ["add FDB entry 02:42:00:00:00:01 dst 2001:db8::1: Address family not "
                      "supported by protocol"], errors
