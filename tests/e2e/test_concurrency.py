"""Tens of portway commands at once: distinct addresses, all reachable, clean removal."""

from __future__ import annotations

import ipaddress
import json
import subprocess
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


def test_fifty_mixed_operations(sandbox: Sandbox) -> None:
    """50 runs with published ports, then 50 removals, interleaved with connect and
    disconnect: no duplicate address, name or host port, no lock error, all reachable,
    and nothing left at the end."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.96.0.0/24")
    sb.pw("network", "create", "side", "--subnet", "10.94.0.0/24")
    sb.pw("run", "-d", "--name", "hopper", "--network", "app", "--", "sleep", "3600")

    def run(i: int) -> str:
        return sb.pw("run", "-d", "--name", f"m{i}", "--network", "app", "-p", f"{21000 + i}:80",
                     "--", "python3", "-m", "http.server", "80").stdout.strip()

    def hops(count: int) -> None:
        """connect, disconnect, ... in order (among themselves), beside everything else."""
        for i in range(count):
            sb.pw("network", "connect" if i % 2 == 0 else "disconnect", "side", "hopper")

    with ThreadPoolExecutor(16) as pool:
        hopping = pool.submit(hops, 10)
        runs = [pool.submit(run, i) for i in range(50)]
        ids = [f.result() for f in runs]
        hopping.result()
    assert len(set(ids)) == 50
    rows = json.loads(sb.pw("ps", "--json").stdout)
    mine = [r for r in rows if r["Name"].startswith("/m")]
    addrs = [r["NetworkSettings"]["Networks"]["app"]["IPAddress"] for r in mine]
    ports = [b["HostPort"] for r in mine for b in r["HostConfig"]["PortBindings"]["80/tcp"]]
    assert len(set(addrs)) == 50 and len(set(ports)) == 50
    unreachable = sb.in_host("python3", "-c", PROBE, *addrs).stdout.strip()
    assert unreachable == ""
    # Published ports too, through the host's address from the outside namespace.
    targets = [f"{sb.host_addr}:{21000 + i}" for i in range(50)]
    out = subprocess.run(["ip", "netns", "exec", sb.outside, "python3", "-c", PROBE_PORTS,
                          *targets], capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == "", out

    with ThreadPoolExecutor(16) as pool:
        hopping = pool.submit(hops, 10)
        removals = [pool.submit(sb.pw, "rm", "-f", f"m{i}") for i in range(50)]
        for f in [*removals, hopping]:
            f.result()
    assert [r["Name"] for r in json.loads(sb.pw("ps", "-a", "--json").stdout)] == ["/hopper"]
    listing = sb.in_host("nft", "list", "map", "inet", "portway", "pub_any_addr").stdout
    assert "21000" not in listing and "21049" not in listing
    assert sb.pw("doctor").stdout.startswith("healthy")


PROBE_PORTS = """
import socket, sys, time
missing = set(sys.argv[1:])
deadline = time.monotonic() + 20
while missing and time.monotonic() < deadline:
    for target in sorted(missing):
        host, port = target.rsplit(':', 1)
        try:
            socket.create_connection((host, int(port)), 0.5).close()
            missing.discard(target)
        except OSError:
            pass
    time.sleep(0.05)
print(" ".join(sorted(missing)))
"""
