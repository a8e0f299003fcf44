"""What `portway logs` shows of a container's output: its lines, the last N of them,
each with the time it arrived (`-t`), from the output and its index of arrival times.

The index (written by engine/logs.py) has a line "SIZE TIME_NS" each time the output
was seen to grow: the bytes below SIZE had arrived by TIME_NS. A line of output is as
old as the first entry whose SIZE is past the line's first byte; a line that no entry
covers yet gets the time it is shown (it has only just arrived). Pure: bytes in, text
out.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

from portway.errors import InvalidInput


@dataclass(frozen=True)
class Index:
    """Arrival times: sizes (increasing) and the time by which each was reached."""

    sizes: tuple[int, ...] = ()
    times: tuple[int, ...] = ()

    def time_of(self, offset: int, default: int) -> int:
        """When the byte at offset arrived (default if no entry covers it yet)."""
        i = bisect.bisect_right(self.sizes, offset)
        return self.times[i] if i < len(self.times) else default


def parse_index(text: str) -> Index:
    sizes: list[int] = []
    times: list[int] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
            continue  # a torn last line (the daemon died mid-write)
        size, at = int(parts[0]), int(parts[1])
        if sizes and size <= sizes[-1]:
            continue
        sizes.append(size)
        times.append(at)
    return Index(tuple(sizes), tuple(times))


def timestamp(ns: int) -> str:
    """RFC 3339 with nanoseconds, in UTC, as Docker writes it: 2024-05-01T10:20:30.123456789Z."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_tail(value: str | int | None) -> int | None:
    """--tail N or all (None: all)."""
    if value is None or value == "all":
        return None
    if isinstance(value, int):
        number = value
    elif value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise InvalidInput(f"invalid --tail {value!r}", "give a number of lines, or all")
    return number


def tail_start(data: bytes, lines: int) -> int:
    """The offset in data where its last `lines` lines begin (a last line without its
    newline counts)."""
    if lines <= 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    pos = end
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return 0
    return pos + 1


def render(data: bytes, base: int, index: Index | None, now_ns: int) -> str:
    """data (the output from offset base on) as text, each line prefixed with its
    arrival time when index is given."""
    if index is None:
        return data.decode("utf-8", "replace")
    out = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1  # lines end at newlines only, as Docker's
        out.append(f"{timestamp(index.time_of(base + start, now_ns))} "
                   f"{data[start:end].decode('utf-8', 'replace')}")
        start = end
    return "".join(out)
