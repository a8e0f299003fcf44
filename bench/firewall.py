"""Firewall benchmarks: per-packet cost against the number of published ports, the cost
of adding one, and TCP throughput through each path, beside the same paths without
rules. Runs inside bench/run.py's host namespace, with an "outside" namespace on the
uplink; every number is measured in the same run as its comparison.
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import subprocess
import time
from typing import Any

from portway.core import firewall
from portway.core.firewall import Published
from portway.kernel.nft import Nft

HOST_ADDR, OUTSIDE_ADDR = "198.51.100.1", "198.51.100.2"
SCALES = (1, 1000, 10000)
FIRST_FILLER = 20000  # filler ports are 20000.., the measured one comes after them

CONNECT_LOOP = """
import socket, sys, time
addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count = fails = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00')
    try:
        s.connect((addr, port)); count += 1
    except OSError:
        fails += 1
    s.close()
print(count / seconds, fails)
"""
ACCEPT_LOOP = ("import socket\n"
               "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
               "s.bind(('0.0.0.0', 80)); s.listen(4096)\n"
               "while True:\n    c, _ = s.accept(); c.close()\n")


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, **kw)


def connect_rate(port: int, seconds: float = 2.0) -> float:
    out = sh("ip", "netns", "exec", OUTSIDE_NS[0], "python3", "-c", CONNECT_LOOP,
             HOST_ADDR, str(port), str(seconds)).stdout.split()
    rate, fails = float(out[0]), int(out[1])
    if rate == 0 or fails > rate * seconds * 0.01:
        raise RuntimeError(f"connections to port {port} failed ({fails})")
    return round(rate)


OUTSIDE_NS: list[str] = []


def fill(nft: Nft, target: ipaddress.IPv4Address, count: int, start: int) -> None:
    """count published ports to target, in batches, as portway's own elements."""
    batch: list[Published] = []
    for port in range(start, start + count):
        batch.append(Published("bench", "tcp", port, target, 80))
        if len(batch) == 1000:
            nft.apply(firewall.render_ports(batch))
            batch = []
    if batch:
        nft.apply(firewall.render_ports(batch))


def add_one_ms(nft: Nft, target: ipaddress.IPv4Address, rounds: int = 50) -> float:
    samples = []
    for i in range(rounds):
        p = [Published("bench", "tcp", 60000 + i, target, 80)]
        start = time.perf_counter()
        nft.apply(firewall.render_ports(p))
        samples.append((time.perf_counter() - start) * 1000)
        nft.apply(firewall.render_ports_removal(p))
    return round(statistics.median(samples), 3)


def linear_table(count: int, target: str) -> str:
    """The same publications as one rule per port (an iptables-style engine)."""
    lines = ["table ip pwbench_linear {",
             " chain pre { type nat hook prerouting priority -110; policy accept;"]
    for port in range(FIRST_FILLER, FIRST_FILLER + count):
        lines.append(f"  fib daddr type local tcp dport {port} dnat to {target}:80")
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def linear_add_one_ms(rounds: int = 20) -> float:
    """Adding one rule with the nft command, as such engines do."""
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        sh("nft", "add", "rule", "ip", "pwbench_linear", "pre", "tcp", "dport",
           str(61000 + i), "dnat", "to", "10.0.0.1:80")
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3)


def iperf(client_ns: list[str], address: str, port: int = 5201, runs: int = 3) -> float:
    """The median of `runs` 3-second single-stream runs, in Gbit/s."""
    samples = []
    for _ in range(runs):
        out = sh(*client_ns, "iperf3", "-c", address, "-p", str(port), "-t", "3", "-J",
                 timeout=60).stdout
        samples.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
    return round(statistics.median(samples), 2)


def bench_firewall(engine: Any, outside: str) -> dict[str, Any]:
    OUTSIDE_NS[:] = [outside]
    nft = engine.nft
    results: dict[str, Any] = {"scales": {}}
    engine.network_create("fwnet", subnet="10.204.0.0/24")
    info = engine.run(["python3", "-c", ACCEPT_LOOP], name="target", networks=["fwnet"],
                      ports=["20999:80"], detach=True)
    target = ipaddress.ip_address(
        engine.inspect([info["Id"]])[0]["NetworkSettings"]["Networks"]["fwnet"]["IPAddress"])
    time.sleep(0.5)
    try:
        filled = 0
        for scale in SCALES:
            fill(nft, target, scale - 1 - filled, FIRST_FILLER + filled)
            filled = scale - 1
            # The measured port is published last, after the fillers.
            last = [Published("bench", "tcp", 50000, target, 80)]
            nft.apply(firewall.render_ports(last))
            rate = connect_rate(50000)
            add_ms = add_one_ms(nft, target)
            nft.apply(firewall.render_ports_removal(last))
            sh("nft", "-f", "-", input=linear_table(scale, str(target)))
            linear_rate = connect_rate(FIRST_FILLER + scale - 1)
            linear_add = linear_add_one_ms()
            sh("nft", "delete", "table", "ip", "pwbench_linear")
            results["scales"][str(scale)] = {
                "map_conn_per_s": rate, "linear_conn_per_s": linear_rate,
                "map_add_ms": add_ms, "linear_add_ms": linear_add}
        fill_removal = [Published("bench", "tcp", p, target, 80)
                        for p in range(FIRST_FILLER, FIRST_FILLER + filled)]
        for i in range(0, len(fill_removal), 1000):
            nft.apply(firewall.render_ports_removal(fill_removal[i:i + 1000]))
    finally:
        engine.rm([info["Id"]], force=True)
    results["throughput"] = bench_throughput(engine, outside)
    engine.network_rm(["fwnet"])
    return results


def bench_throughput(engine: Any, outside: str) -> dict[str, float]:
    """iperf3 through each path, then the same paths with portway's rules gone."""
    out: dict[str, float] = {}
    server = engine.run(["iperf3", "-s"], name="iperf", networks=["fwnet"],
                        ports=["5201:5201"], detach=True)
    client = engine.run(["sleep", "600"], name="iperfc", networks=["fwnet"], detach=True)
    address = engine.inspect([server["Id"]])[0]["NetworkSettings"]["Networks"]["fwnet"][
        "IPAddress"]
    in_client = ["ip", "netns", "exec", f"pw-{client['Id'][:12]}"]
    time.sleep(0.5)
    try:
        out["container_to_container"] = iperf(in_client, address)
        out["outside_to_published"] = iperf(["ip", "netns", "exec", outside], HOST_ADDR)
        out["host_to_loopback_published"] = iperf([], "127.0.0.1")
        # The same topology without rules: portway's table gone (bridge netfilter stays
        # as every new namespace has it here), the outside reaching the container by a
        # plain route.
        sh("nft", "delete", "table", "inet", "portway")
        sh("ip", "-n", outside, "route", "add", "10.204.0.0/24", "via", HOST_ADDR)
        out["container_to_container_no_rules"] = iperf(in_client, address)
        out["outside_to_container_no_rules"] = iperf(["ip", "netns", "exec", outside],
                                                     address)
        out["raw_veth_pair"] = raw_veth()
    finally:
        subprocess.run(["ip", "-n", outside, "route", "del", "10.204.0.0/24"],
                       capture_output=True)
        engine.rm([server["Id"], client["Id"]], force=True)
        engine.gc()  # puts the table back
    return out


def raw_veth() -> float:
    a, b = "pwbench-va", "pwbench-vb"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
           "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.205.0.1/24", "dev", "v0")
        sh("ip", "-n", b, "addr", "add", "10.205.0.2/24", "dev", "v1")
        sh("ip", "-n", a, "link", "set", "v0", "up")
        sh("ip", "-n", b, "link", "set", "v1", "up")
        server = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            return iperf(["ip", "netns", "exec", a], "10.205.0.2")
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        sh("ip", "netns", "del", a)
        sh("ip", "netns", "del", b)
