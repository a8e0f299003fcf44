"""Tens of portway commands at once: distinct addresses, all reachable, clean removal."""

from __future__ import annotations

import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor

from conftest import Sandbox

COUNT = 30
PROBE = """
import socket, sys, time
missing = set(sys.argv[1:])
deadline = time.monotonic() + 20
while missing and time.monotonic() < deadline:
    for addr in sorted(missing):
        try:
            socket.create_connection((addr, 80), 0.5).close()
            missing.discard(addr)
        except OSError:
            pass
    time.sleep(0.05)
print(" ".join(sorted(missing)))
"""


def test_thirty_runs_at_once(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.95.0.0/24")

    def run(i: int) -> str:
        return sb.pw("run", "-d", "--name", f"c{i}", "--network", "app", "--",
                     "python3", "-m", "http.server", "80").stdout.strip()

    with ThreadPoolExecutor(COUNT) as pool:
        ids = list(pool.map(run, range(COUNT)))
    assert len(set(ids)) == COUNT
    rows = json.loads(sb.pw("ps", "--json").stdout)
    addrs = [r["NetworkSettings"]["Networks"]["app"]["IPAddress"] for r in rows]
    assert len(addrs) == COUNT and len(set(addrs)) == COUNT
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.95.0.0/24") for a in addrs)
    macs = {r["NetworkSettings"]["Networks"]["app"]["MacAddress"] for r in rows}
    assert len(macs) == COUNT
    # Every container answers on its address, from the host namespace.
    unreachable = sb.in_host("python3", "-c", PROBE, *addrs).stdout.strip()
    assert unreachable == ""

    with ThreadPoolExecutor(COUNT) as pool:
        list(pool.map(lambda i: sb.pw("rm", "-f", f"c{i}"), range(COUNT)))
    assert sb.pw("ps", "-a", "-q").stdout == ""
    assert [n for n in sb.links() if n.startswith("pwv-")] == []
