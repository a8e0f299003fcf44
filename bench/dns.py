"""DNS benchmarks: portway's server beside aardvark-dns 1.4, with dnsperf, in one run.

aardvark-dns is set up the way Podman does it: netavark `setup` with DNS on,
which writes its records and starts it on the network's gateway. Only local
names are asked of it (it forwards to this machine's own resolver, which no
benchmark may reach). portway's forwarded names go to a stand-in upstream in
the outside namespace.
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

ROOT = Path(__file__).resolve().parent.parent
NETAVARK = "/usr/lib/podman/netavark"
AARDVARK = "/usr/lib/podman/aardvark-dns"
CONTRACT = ROOT.parent / "shared" / "netavark-contract" / "podman-4.3-setup-input.json"
FAKE_DNS = ROOT / "tests" / "e2e" / "fake_dns.py"
SECONDS = float(os.environ.get("PORTWAY_BENCH_DNS_SECONDS", "3"))
ROUNDS = int(os.environ.get("PORTWAY_BENCH_DNS_ROUNDS", "5"))

LATENCY = """
import socket, struct, sys, time
server, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.connect((server, 53))
out = []
for i in range(count):
    msg = struct.pack('!HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0) + q + b'\\0\\1\\0\\1'
    t = time.perf_counter(); s.send(msg); s.recv(4096)
    out.append((time.perf_counter() - t) * 1e6)
out.sort()
print(out[len(out) // 2], out[int(len(out) * 0.99)])
"""


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, **kw)


def dnsperf(netns: str, server: str, name: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as f:
        f.write(f"{name} A\n")
        path = f.name
    try:
        out = sh("ip", "netns", "exec", netns, "dnsperf", "-s", server, "-d", path,
                 "-l", str(SECONDS), "-c", "4", "-q", "200", timeout=SECONDS + 60).stdout
    finally:
        os.unlink(path)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    if qps is None:
        raise RuntimeError(f"dnsperf said: {out[-400:]}")
    return round(float(qps.group(1)))


def latency(netns: str, server: str, name: str, count: int = 3000) -> tuple[float, float]:
    out = sh("ip", "netns", "exec", netns, "python3", "-c", LATENCY, server, name,
             str(count)).stdout.split()
    return round(float(out[0]), 1), round(float(out[1]), 1)


@contextlib.contextmanager
def portway_side(engine: Any, outside: str) -> Iterator[str]:
    """portway's network with two containers; yields the asking container's namespace."""
    engine.network_create("dnsnet", subnet="10.207.0.0/24")
    target = engine.run(["sleep", "600"], name="target", networks=["dnsnet"], detach=True)
    client = engine.run(["sleep", "600"], name="asker", networks=["dnsnet"], detach=True)
    fake = subprocess.Popen(["ip", "netns", "exec", outside, "python3", str(FAKE_DNS),
                             "198.51.100.2", "192.0.2.99"])
    try:
        time.sleep(0.3)
        yield f"pw-{client['Id'][:12]}"
    finally:
        fake.kill()
        fake.wait()
        engine.rm([target["Id"], client["Id"]], force=True)
        engine.network_rm(["dnsnet"])


@contextlib.contextmanager
def aardvark_side() -> Iterator[str | None]:
    """The same with netavark and aardvark-dns (None when they are not installed)."""
    if not (os.path.exists(NETAVARK) and os.path.exists(AARDVARK)):
        yield None
        return
    config = tempfile.mkdtemp(prefix="pwbench-aardvark-")
    base = json.loads(CONTRACT.read_text())
    base["port_mappings"] = []
    net = base["network_info"]["a1pnet"]
    net["dns_enabled"] = True
    setups = []
    try:
        for i, name in enumerate(("target", "asker")):
            data = json.loads(json.dumps(base))
            data["container_id"] = f"{i:064x}"
            data["container_name"] = name
            data["networks"]["a1pnet"]["static_ips"] = [f"10.89.0.{10 + i}"]
            data["networks"]["a1pnet"]["aliases"] = [name]
            ns = f"pwbench-dns-{i}"
            sh("ip", "netns", "add", ns)
            setups.append((ns, json.dumps(data)))
            sh(NETAVARK, "--config", config, "--aardvark-binary", AARDVARK, "setup",
               f"/run/netns/{ns}", input=json.dumps(data))
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
    median is reported, so a slow moment of the machine does not pick the winner."""
    with portway_side(engine, outside) as pw, aardvark_side() as av:
        pw_qps: list[float] = []
        av_qps: list[float] = []
        for _ in range(ROUNDS):
            pw_qps.append(dnsperf(pw, "10.207.0.1", "target"))
            if av is not None:
                av_qps.append(dnsperf(av, "10.89.0.1", "target"))
        portway = {
            "local_qps": statistics.median(pw_qps), "local_qps_runs": pw_qps,
            "local_latency_us": latency(pw, "10.207.0.1", "target"),
            "forwarded_qps": dnsperf(pw, "10.207.0.1", "example.org"),
            "forwarded_latency_us": latency(pw, "10.207.0.1", "example.org", 1000),
        }
        aardvark = None if av is None else {
            "local_qps": statistics.median(av_qps), "local_qps_runs": av_qps,
            "local_latency_us": latency(av, "10.89.0.1", "target")}
    return {"portway": portway, "aardvark": aardvark, "rounds": ROUNDS}
