"""`portway audit` on a host with many containers and published ports: how long one look
takes (recording the host and every namespace behind its veths, then the reasoning), as
portwayd answers it; and on the same host, how long one static `portway trace` takes
(an outside client to the last published port), and the same with `--live` (the probe
too). Runs inside bench/run.py's host namespace.

The containers are portway's (one network, `sleep`, nothing listening); the published
ports are elements of portway's DNAT maps, added as bench/firewall.py adds its fillers,
PORTS // CONTAINERS to each container, each to a port of its own (so no two ports share
a path and every one is traced).
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

from portway.core import firewall
from portway.core.firewall import Published
from portway.testbed import HOST_ADDR

CONTAINERS = int(os.environ.get("PORTWAY_BENCH_AUDIT_CONTAINERS", "1000"))
PORTS = int(os.environ.get("PORTWAY_BENCH_AUDIT_PORTS", "10000"))
RUNS = int(os.environ.get("PORTWAY_BENCH_AUDIT_RUNS", "1"))
TRACE_RUNS = int(os.environ.get("PORTWAY_BENCH_TRACE_RUNS", "7"))
LIVE_RUNS = int(os.environ.get("PORTWAY_BENCH_LIVE_RUNS", "5"))
FIRST_PORT = 20000
BATCH = 1000


def bench_audit(engine: Any, outside: str) -> dict[str, Any]:
    engine.network_create("auditnet", subnet="10.205.0.0/16")
    made: list[str] = []
    ports: list[Published] = []
    try:
        for i in range(CONTAINERS):
            made.append(engine.run(["sleep", "3600"], name=f"au{i}", networks=["auditnet"],
                                   detach=True)["Id"])
        each = max(1, PORTS // max(1, CONTAINERS))
        for cid in made:
            net = engine.inspect([cid])[0]["NetworkSettings"]["Networks"]["auditnet"]
            addr = ipaddress.ip_address(net["IPAddress"])
            for k in range(each):
                if len(ports) < PORTS:
                    ports.append(Published(cid, "tcp", FIRST_PORT + len(ports), addr,
                                           8000 + k))
        for i in range(0, len(ports), BATCH):
            engine.nft.apply(firewall.render_ports(ports[i:i + BATCH], engine.instance))
        seconds: list[float] = []
        last: dict[str, Any] = {}
        for _ in range(RUNS):
            start = time.perf_counter()
            last = engine.audit()["audit"]
            seconds.append(time.perf_counter() - start)
        reaches = sum(len(t["reach"]) for t in last["targets"])
        shared = sum(1 for t in last["targets"] for r in t["reach"] if r["same_path_as"])
        return {"containers": CONTAINERS, "ports": len(ports), "runs": seconds,
                "seconds": sorted(seconds)[len(seconds) // 2],
                "targets": len(last["targets"]), "reaches": reaches,
                "traced": reaches - shared, "findings": len(last["findings"]),
                "trace": bench_trace(engine, ports), "live": bench_live(engine, ports)}
    finally:
        for i in range(0, len(ports), BATCH):
            engine.nft.apply(firewall.render_ports_removal(ports[i:i + BATCH]))
        if made:
            engine.rm(made, force=True)
        engine.network_rm(["auditnet"])


def bench_trace(engine: Any, ports: list[Published]) -> dict[str, Any]:
    """One static trace from an outside client to the last published port, TRACE_RUNS
    times: each records the host (and what the path needs) and reasons, as portwayd
    answers `portway trace outside HOST:PORT`."""
    destination = f"{HOST_ADDR}:{ports[-1].host_port}" if ports else f"{HOST_ADDR}:80"
    seconds: list[float] = []
    verdict = ""
    for _ in range(TRACE_RUNS):
        start = time.perf_counter()
        verdict = engine.trace("outside", destination)["trace"]["verdict"]
        seconds.append(time.perf_counter() - start)
    return {"destination": destination, "runs": seconds, "verdict": verdict,
            "seconds": sorted(seconds)[len(seconds) // 2]}


def bench_live(engine: Any, ports: list[Published]) -> dict[str, Any]:
    """`portway trace --live outside HOST:PORT` on the same host, LIVE_RUNS times: the
    static trace, then the probe (its short-lived trace tables and probe namespace, the
    packet sent and followed through every hook, the tables removed), as portwayd
    answers it."""
    destination = f"{HOST_ADDR}:{ports[-1].host_port}" if ports else f"{HOST_ADDR}:80"
    seconds: list[float] = []
    live: dict[str, Any] = {}
    for _ in range(LIVE_RUNS):
        start = time.perf_counter()
        live = engine.trace("outside", destination, live=True)["trace"]["live"]
        seconds.append(time.perf_counter() - start)
    return {"destination": destination, "runs": seconds, "verdict": live.get("verdict"),
            "agrees": live.get("agrees"), "seconds": sorted(seconds)[len(seconds) // 2]}
