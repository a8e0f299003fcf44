"""Waiting for an idle machine before a measurement starts.

The machine may be shared (other work, or the tail of the bench's own last step): each
measurement starts once the machine has been under 10% busy for 0.2 s, or after a
bounded wait. Every side of a comparison waits the same way. The counts say how often
the wait ran out, for BENCHMARKS.md.
"""

from __future__ import annotations

import os
import time

# The longest wait of each settle (seconds); PORTWAY_BENCH_SETTLE caps it, for checking a
# section on a machine that is busy anyway (every wait then runs out: say so).
CAP = float(os.environ.get("PORTWAY_BENCH_SETTLE", "15"))
COUNTS = {"waits": 0, "gave_up": 0}


def _busy_idle() -> tuple[int, int]:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], ticks[3] + ticks[4]


def settle(most: float = 15.0) -> bool:
    """Wait until the machine is idle (under 10% busy over 0.2 s), at most `most`
    seconds; False if it never was."""
    COUNTS["waits"] += 1
    most = min(most, CAP)
    deadline = time.monotonic() + most
    busy, idle = _busy_idle()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now_busy, now_idle = _busy_idle()
        if (now_busy - busy) * 9 < (now_idle - idle):
            return True
        busy, idle = now_busy, now_idle
    COUNTS["gave_up"] += 1
    return False
