"""DNS benchmarks: portway's server beside aardvark-dns 1.4, with dnsperf, in one run;
and portway's AAAA answers beside its A answers, on one dual-stack network.

aardvark-dns is set up the way Podman does it: netavark `setup` with DNS on,
which writes its records and starts it on the network's gateway. Both servers
forward other names to the same stand-in upstream in the outside namespace
(aardvark-dns reads it from /etc/resolv.conf, in a mount namespace of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from idle import settle

ROOT = Path(__file__).resolve().parent.parent
NETAVARK = "/usr/lib/podman/netavark"
AARDVARK = "/usr/lib/podman/aardvark-dns"
CONTRACT = ROOT.parent / "shared" / "netavark-contract" / "podman-4.3-setup-input.json"
FAKE_DNS = ROOT / "tests" / "e2e" / "fake_dns.py"
SECONDS = float(os.environ.get("PORTWAY_BENCH_DNS_SECONDS", "3"))
ROUNDS = int(os.environ.get("PORTWAY_BENCH_DNS_ROUNDS", "5"))
UPSTREAM = "198.51.100.2"  # the fake upstream, in the outside namespace
SUBNETS = ["10.207.0.0/24", "fd00:207::/64"]  # portway's network: dual stack
GATEWAY, GATEWAY6 = "10.207.0.1", "fd00:207::1"
LOADED_RATE = 40_000  # queries/s, below what either server can answer here

LATENCY = """
import socket, struct, sys, time
server, name, count, qtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
family = socket.AF_INET6 if ':' in server else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(2)
s.connect((server, 53))
out = []
for i in range(count):
    msg = struct.pack('!HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0) + q + \\
        struct.pack('!HH', qtype, 1)
    t = time.perf_counter(); s.send(msg); s.recv(4096)
    out.append((time.perf_counter() - t) * 1e6)
out.sort()
print(out[len(out) // 2], out[int(len(out) * 0.99)])
"""


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, **kw)


def dnsperf(netns: str, server: str, queries: list[str], rate: int = 0) -> dict[str, float]:
    """dnsperf's queries per second and average latency (µs) for queries ("NAME TYPE"
    lines, asked in turn), as fast as it can or at a fixed rate. Every query must be
    answered NOERROR: a figure for lost or failed queries would mean nothing."""
    settle()
    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as f:
        f.write("".join(f"{q}\n" for q in queries))
        path = f.name
    try:
        out = sh("ip", "netns", "exec", netns, "dnsperf", "-s", server, "-d", path,
                 "-l", str(SECONDS), "-c", "4", "-q", "200",
                 *(["-Q", str(rate)] if rate else []), timeout=SECONDS + 60).stdout
    finally:
        os.unlink(path)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    codes = re.search(r"Response codes:\s+(.*)", out)
    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out)
    if qps is None or avg is None or codes is None or lost is None:
        raise RuntimeError(f"dnsperf said: {out[-400:]}")
    # A few queries are still on their way when dnsperf's time is up.
    if not codes.group(1).startswith("NOERROR") or "," in codes.group(1) or \
            float(lost.group(1)) > 0.1:
        raise RuntimeError(f"{server}: not every query answered NOERROR: {out[-400:]}")
    return {"qps": round(float(qps.group(1))), "avg_us": round(float(avg.group(1)) * 1e6)}


def latency(netns: str, server: str, name: str, count: int = 3000,
            qtype: int = 1, runs: int = 3) -> tuple[float, float]:
    """p50 and p99 round trip (µs) of one query at a time (qtype 1 is A, 28 AAAA): the
    median of `runs` runs, each started on an idle machine (one run's p99 is a few
    dozen queries: one burst of other work moves it)."""
    p50s, p99s = [], []
    for _ in range(runs):
        settle()
        out = sh("ip", "netns", "exec", netns, "python3", "-c", LATENCY, server, name,
                 str(count), str(qtype)).stdout.split()
        p50s.append(float(out[0]))
        p99s.append(float(out[1]))
    return round(statistics.median(p50s), 1), round(statistics.median(p99s), 1)


@contextlib.contextmanager
def portway_side(engine: Any, outside: str) -> Iterator[str]:
    """portway's dual-stack network with three containers; yields the asking container's
    namespace."""
    engine.network_create("dnsnet", subnet=SUBNETS, ipv6=True)
    target = engine.run(["sleep", "600"], name="target", networks=["dnsnet"], detach=True)
    client = engine.run(["sleep", "600"], name="asker", networks=["dnsnet"], detach=True)
    third = engine.run(["sleep", "600"], name="db", networks=["dnsnet"], detach=True)
    fake = subprocess.Popen(["ip", "netns", "exec", outside, "python3", str(FAKE_DNS),
                             UPSTREAM, "192.0.2.99"])
    try:
        time.sleep(0.3)
        yield f"pw-{client['Id'][:12]}"
    finally:
        fake.kill()
        fake.wait()
        engine.rm([target["Id"], client["Id"], third["Id"]], force=True)
        engine.network_rm(["dnsnet"])


@contextlib.contextmanager
def aardvark_side(upstream: str) -> Iterator[str | None]:
    """The same with netavark and aardvark-dns (None when they are not installed).
    aardvark-dns forwards to the resolvers in /etc/resolv.conf: netavark runs, and
    starts it, in a mount namespace of its own where that file names `upstream`."""
    if not (os.path.exists(NETAVARK) and os.path.exists(AARDVARK)):
        yield None
        return
    config = tempfile.mkdtemp(prefix="pwbench-aardvark-")
    resolv = os.path.join(config, "resolv.conf")
    with open(resolv, "w") as f:
        f.write(f"nameserver {upstream}\n")
    own_resolv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv]
    base = json.loads(CONTRACT.read_text())
    base["port_mappings"] = []
    net = base["network_info"]["a1pnet"]
    net["dns_enabled"] = True
    setups = []
    try:
        for i, name in enumerate(("target", "asker", "db")):
            data = json.loads(json.dumps(base))
            data["container_id"] = f"{i:064x}"
            data["container_name"] = name
            data["networks"]["a1pnet"]["static_ips"] = [f"10.89.0.{10 + i}"]
            data["networks"]["a1pnet"]["aliases"] = [name]
            ns = f"pwbench-dns-{i}"
            sh("ip", "netns", "add", ns)
            setups.append((ns, json.dumps(data)))
            sh(*own_resolv, NETAVARK, "--config", config, "--aardvark-binary", AARDVARK,
               "setup", f"/run/netns/{ns}", input=json.dumps(data))
        time.sleep(0.5)
        yield setups[1][0]
    finally:
        for ns, text in reversed(setups):
            subprocess.run([NETAVARK, "--config", config, "--aardvark-binary", AARDVARK,
                            "teardown", f"/run/netns/{ns}"], input=text, capture_output=True,
                           text=True)
            sh("ip", "netns", "del", ns)
        shutil.rmtree(config, ignore_errors=True)


def bench_dns(engine: Any, outside: str) -> dict[str, Any]:
    """Both servers up at once; their dnsperf runs alternate, ROUNDS each, and the
    median is reported, so a slow moment of the machine does not pick the winner.

    One name asked over and over is the best case for portway's coalesced answers
    (one length); three names of three lengths in turn are closer to real traffic.
    (Not PTR: aardvark-dns 1.4 also forwards a PTR query for a container's address
    upstream, which would measure its forwarding.) At a fixed rate both servers keep
    up with, the average latency shows what portway's pause under load costs. Every
    run starts on an idle machine.

    portway's network is dual-stack: each of its A runs sits beside the same names asked
    for AAAA, and for AAAA over IPv6 to its IPv6 gateway (the order reversed every other
    round), so the families' figures come from the same moments of the machine."""
    one = ["target A"]
    mix = ["target A", "asker A", "db A"]
    one6 = ["target AAAA"]
    mix6 = ["target AAAA", "asker AAAA", "db AAAA"]
    with portway_side(engine, outside) as pw, aardvark_side(UPSTREAM) as av:
        servers = {"portway": (pw, GATEWAY)}
        if av is not None:
            servers["aardvark"] = (av, "10.89.0.1")
        # (side, figure, namespace, server, queries), in the order of every round.
        asks = [("portway", "local", pw, GATEWAY, one),
                ("portway", "local_aaaa", pw, GATEWAY, one6),
                ("portway", "local_aaaa_over6", pw, GATEWAY6, one6),
                ("portway", "mixed", pw, GATEWAY, mix),
                ("portway", "mixed_aaaa", pw, GATEWAY, mix6)]
        if av is not None:
            asks += [("aardvark", "local", av, "10.89.0.1", one),
                     ("aardvark", "mixed", av, "10.89.0.1", mix)]
        runs: dict[str, dict[str, list[float]]] = {k: {} for k in servers}
        for i in range(ROUNDS):
            # portway's A and AAAA runs change places every other round.
            ours = [a for a in asks if a[0] == "portway"]
            theirs = [a for a in asks if a[0] != "portway"]
            for side, figure, netns, address, queries in \
                    (ours if i % 2 == 0 else ours[::-1]) + theirs:
                runs[side].setdefault(figure, []).append(
                    dnsperf(netns, address, queries)["qps"])
        results: dict[str, Any] = {}
        for side, (netns, address) in servers.items():
            results[side] = {
                **{f"{figure}_qps": round(statistics.median(v))
                   for figure, v in runs[side].items()},
                **{f"{figure}_qps_runs": v for figure, v in runs[side].items()},
                "loaded_avg_us": dnsperf(netns, address, one, LOADED_RATE)["avg_us"],
                "local_latency_us": latency(netns, address, "target"),
                "forwarded_qps": dnsperf(netns, address, ["example.org A"])["qps"],
                "forwarded_latency_us": latency(netns, address, "example.org", 1000),
            }
        results["portway"]["local_aaaa_latency_us"] = latency(pw, GATEWAY, "target", qtype=28)
    return {"portway": results["portway"], "aardvark": results.get("aardvark"),
            "rounds": ROUNDS, "loaded_rate": LOADED_RATE}
