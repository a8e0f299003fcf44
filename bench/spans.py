"""Where the time of one `engine.run` goes: its steps, on which thread, when.

    sudo .venv/bin/python bench/spans.py [RUNS] [v4|dual]

A throwaway host namespace (as the bench makes), one network, RUNS containers made and
removed one at a time through the Python API. Each run's steps are timed with
perf_counter_ns and the CPU time of the thread that does them (thread_time_ns); the
output has the medians of the whole run (wall, the set-up thread's CPU, the process's
CPU) and of each step (start and end after the run began, duration, CPU), marked
[beside] where the step ran on another thread, and the steps of the fastest and the
median run. A wall time well above the set-up thread's CPU time is waiting: for the
kernel, for a thread beside, or for a core (on a busy machine, compare two trees run
by turns, not with another day's figures).

The steps are found by name and wrapped; a name a tree does not have is left out, so
the same script times two trees to compare (PYTHONPATH selects the tree's src).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT / "src"))

from portway.kernel import sandbox  # noqa: E402
from portway.testbed import make_world, remove_world  # noqa: E402

Span = tuple[str, bool, int, int, int]  # step, beside, start, end, CPU (ns)
SPANS: list[Span] = []
MAIN = threading.get_ident()


def wrap(owner: Any, attr: str, label: str) -> None:
    """owner.attr timed as the step label (nothing if this tree has no such name)."""
    fn = getattr(owner, attr, None)
    if fn is None:
        return

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            SPANS.append((label, threading.get_ident() != MAIN, start,
                          time.perf_counter_ns(), time.thread_time_ns() - cpu))

    setattr(owner, attr, timed)


def instrument(engine: Any) -> None:
    from portway.engine import containers, sandboxes
    from portway.engine.drivers import bridge
    from portway.kernel import links, netns, nft

    h = engine.h
    for owner, attr, label in (
            (h.processes.__class__, "check_command", "check the command"),
            (sandboxes.Sandboxes, "early", "start the early job"),
            (sandboxes.LiveSandboxKernel, "create", "claim the namespace"),
            (bridge.BridgeDriver, "prepare", "make the veth pair"),
            (links, "set_ipv6_conf", "host end sysctl"),
            (h.store.__class__, "add_container", "container row"),
            (containers.Containers, "up", "up"),
            (h.endpoints.__class__, "new", "allocate an endpoint"),
            (containers.Containers, "_announce", "DNS announce"),
            (sandboxes.Sandboxes, "start", "start the helper"),
            (sandboxes.Sandboxes, "build", "build"),
            (sandboxes.Early, "join", "wait for the early job"),
            (h.fw.__class__, "add_guard", "anti-spoofing entries"),
            (nft.Nft, "run", "libnftables"),
            (sandboxes.Sandboxes, "etc_files", "render /etc files"),
            (netns, "write_etc_netns", "write /etc files"),
            (links, "finish_pair", "finish the veth pair"),
            (containers.Containers, "ready", "DNS settle"),
            (sandboxes.LiveSandboxKernel, "prepare", "next spare"),
            (h.processes.__class__, "sandbox_info", "the answer")):
        wrap(owner, attr, label)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("spans: run as root")
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    dual = len(sys.argv) > 2 and sys.argv[2] == "dual"
    tag = secrets.token_hex(3)
    host, outside = f"pwspans-{tag}", f"pwspans-out-{tag}"
    make_world(host, outside)
    try:
        sandbox.enter_netns(f"/run/netns/{host}")  # before any thread exists
        from portway.engine import Engine

        state = tempfile.mkdtemp(prefix="pwspans-")
        engine = Engine(state, None)
        try:
            if dual:
                engine.network_create("spans", subnet=["10.212.0.0/16", "fd00:212::/64"],
                                      ipv6=True)
            else:
                engine.network_create("spans", subnet="10.212.0.0/16")
            for _ in range(3):  # warm: caches, spares, the DNS server
                engine.rm([engine.run(["true"], name="warm", networks=["spans"])["Id"]],
                          force=True)
            instrument(engine)
            try:
                report(measure(engine, runs))
            finally:
                # (Also when the report fails, e.g. piped into head: the network's
                # removal stops the DNS server the runs started.)
                engine.rm([c["Id"] for c in engine.ps(all=True)], force=True)
                engine.network_rm(["spans"])
        finally:
            engine.close()
            shutil.rmtree(state, ignore_errors=True)
    finally:
        remove_world(host, outside)


def measure(engine: Any, runs: int) -> list[tuple[float, float, float, list[Span]]]:
    """Each run: (wall, the set-up thread's CPU, the process's CPU, in ms; its spans,
    their times after the run's start)."""
    out = []
    for i in range(runs):
        time.sleep(0.05)  # (the next spare is made meanwhile, as between two runs)
        SPANS.clear()
        cpu, proc, start = time.thread_time_ns(), time.process_time_ns(), \
            time.perf_counter_ns()
        info = engine.run(["sleep", "1"], name=f"s{i}", networks=["spans"])
        end = time.perf_counter_ns()
        cpu, proc = time.thread_time_ns() - cpu, time.process_time_ns() - proc
        out.append(((end - start) / 1e6, cpu / 1e6, proc / 1e6,
                    [(s[0], s[1], s[2] - start, s[3] - start, s[4]) for s in SPANS]))
        engine.rm([info["Id"]], force=True)
    return out


def report(results: list[tuple[float, float, float, list[Span]]]) -> None:
    med = statistics.median
    print(f"{len(results)} runs: wall {med(r[0] for r in results):.3f} ms, set-up thread "
          f"CPU {med(r[1] for r in results):.3f} ms, process CPU "
          f"{med(r[2] for r in results):.3f} ms (medians); fastest wall "
          f"{min(r[0] for r in results):.3f} ms")
    steps: dict[tuple[str, bool], list[tuple[int, int, int]]] = {}
    for *_, spans in results:
        for label, beside, a, b, cpu in spans:
            steps.setdefault((label, beside), []).append((a, b, cpu))
    print(f"{'step':28} {'':8} {'start':>7} {'end':>7} {'took':>7} {'CPU':>7}  (ms, medians)")
    for (label, beside), got in sorted(steps.items(), key=lambda kv: med(x[0] for x in kv[1])):
        print(f"{label:28} {'[beside]' if beside else '':8} "
              f"{med(x[0] for x in got) / 1e6:7.3f} {med(x[1] for x in got) / 1e6:7.3f} "
              f"{med(x[1] - x[0] for x in got) / 1e6:7.3f} "
              f"{med(x[2] for x in got) / 1e6:7.3f}")
    by_wall = sorted(results, key=lambda r: r[0])
    for what, (wall, _, _, spans) in (("fastest", by_wall[0]),
                                      ("median", by_wall[len(by_wall) // 2])):
        print(f"\nthe {what} run, {wall:.3f} ms:")
        for label, beside, a, b, cpu in sorted(spans, key=lambda s: s[2]):
            print(f"  {label:28} {'[beside]' if beside else '':8} {a / 1e6:7.3f} -> "
                  f"{b / 1e6:7.3f}  CPU {cpu / 1e6:.3f}")


if __name__ == "__main__":
    main()
