"""Podman with portway vs Podman with Debian's netavark 1.4: `podman run --rm` times.

Run by bench/run.py inside its throwaway host namespace. Each backend gets its
own Podman world (storage, run dirs, a network `pnet`); runs alternate between
the two so machine noise falls on both. Each run is checked: the container
prints its eth0 address, which must be in pnet's subnet. `--network none`
gives the cost of Podman and runc alone, without any networking.

Rootless (bench_podman_rootless): the same for rootless Podman, one unprivileged user
per backend (portway.testbed.RootlessPodman). Each `podman run --rm` is timed twice
over: "cold", the user's only container (Podman makes its rootless network namespace
and slirp4netns for it, and portway its daemon there, both gone again after it), and
"warm", beside a long-running container that keeps them.
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import time
from typing import Any

from portway.testbed import PodmanWorld, RootlessPodman

RUNS = int(os.environ.get("PORTWAY_BENCH_PODMAN_RUNS", "15"))
SHOW = "ip -o -4 addr show dev eth0 2>/dev/null | cut -d' ' -f7 | cut -d/ -f1"


def _once(world: PodmanWorld | RootlessPodman, network: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = world.container("--network", network, "--", "/bin/sh", "-c", SHOW, detach=False)
    return (time.perf_counter() - start) * 1000, out.strip()


def bench_podman(host: str) -> dict[str, Any] | None:
    worlds = {"portway": PodmanWorld(host), "netavark": PodmanWorld(host, "/usr/lib/podman")}
    samples: dict[str, list[float]] = {"portway": [], "netavark": [], "none": []}
    failures: list[str] = []
    try:
        for name, world in worlds.items():
            # One network per backend (distinct subnets, or their bridges would clash).
            subnet = "10.89.50.0/24" if name == "portway" else "10.89.60.0/24"
            world.run("network", "create", "--subnet", subnet, "pnet")
            _once(world, "pnet")  # warm: daemon, bridge, aardvark-dns, page cache
        for _ in range(RUNS):
            for name, world in worlds.items():
                ms, address = _once(world, "pnet")
                subnet = "10.89.50.0/24" if name == "portway" else "10.89.60.0/24"
                if not address or ipaddress.ip_address(address) not in \
                        ipaddress.ip_network(subnet):
                    failures.append(f"{name}: the container had no address ({address!r})")
                samples[name].append(ms)
            ms, _ = _once(worlds["portway"], "none")
            samples["none"].append(ms)
    finally:
        for world in worlds.values():
            world.close()
    return {name: {"median_ms": round(statistics.median(v), 1),
                   "p90_ms": round(sorted(v)[int(len(v) * 0.9) - 1], 1), "runs": len(v)}
            for name, v in samples.items()} | {"failures": failures}


def _stats(v: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(v), 1),
            "p90_ms": round(sorted(v)[max(int(len(v) * 0.9) - 1, 0)], 1), "runs": len(v)}


def bench_podman_rootless(host: str) -> dict[str, Any] | None:
    worlds: dict[str, RootlessPodman] = {}
    samples: dict[str, list[float]] = {f"{name} {phase}": [] for phase in ("cold", "warm")
                                       for name in ("portway", "netavark")}
    samples["none"] = []
    failures: list[str] = []
    subnets = {"portway": "10.89.50.0/24", "netavark": "10.89.60.0/24"}

    def once(name: str, phase: str) -> None:
        ms, address = _once(worlds[name], "pnet")
        if not address or ipaddress.ip_address(address) not in \
                ipaddress.ip_network(subnets[name]):
            failures.append(f"rootless {name} {phase}: the container had no address "
                            f"({address!r})")
        samples[f"{name} {phase}"].append(ms)

    try:
        worlds["portway"] = RootlessPodman(host)
        worlds["netavark"] = RootlessPodman(host, "/usr/lib/podman")
        for name, world in worlds.items():
            world.run("network", "create", "--subnet", subnets[name], "pnet")
            _once(world, "pnet")  # warm the page cache (the namespace goes after it)
        for _ in range(RUNS):
            for name in worlds:
                once(name, "cold")
            ms, _ = _once(worlds["portway"], "none")
            samples["none"].append(ms)
        for world in worlds.values():
            world.container("--name", "keep", "--network", "pnet", "--", "/bin/sleep",
                            "3600")
        for _ in range(RUNS):
            for name in worlds:
                once(name, "warm")
    finally:
        # The last made first: the first puts /dev/net/tun's mode back.
        for world in reversed(list(worlds.values())):
            world.close()
    return {name: _stats(v) for name, v in samples.items()} | {"failures": failures}
