"""A detached container's output: the file it writes, and when each part arrived.

Rules of this module:
1. The container writes its output straight into STATE/containers/ID/output.log (no
   pipe, no reader it must wait for): it outlives the daemon, and nothing in portway
   slows its writes.
2. The daemon notes when output arrives, for `logs -t`: an inotify watch per running
   container's log, and a line "SIZE TIME_NS" appended to output.idx beside it whenever
   the log has grown (core/logs.py reads them). Changes are taken in batches, a
   millisecond apart at most, so a container that writes a lot costs the daemon one
   index line per batch, not one per write. Output written while no daemon watched gets
   the time the next daemon saw it: the times are when portwayd saw the output, within
   a millisecond or two while it runs.
"""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from portway.core import logs
from portway.kernel.inotify import Inotify

BATCH_GAP = 0.001  # seconds between two batches of changes
READ_LIMIT = 1 << 20  # the most one `logs` call returns while following


def index_path(log_path: str) -> str:
    return log_path[: -len(".log")] + ".idx" if log_path.endswith(".log") else log_path + ".idx"


@dataclass
class _Watched:
    key: str
    log_fd: int
    index_fd: int
    size: int


class LogIndexer:
    """One thread and one inotify instance for every running container's log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_wd: dict[int, _Watched] = {}
        self._by_key: dict[str, int] = {}
        self._inotify: Inotify | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def _start(self) -> Inotify:
        if self._inotify is None:
            self._inotify = Inotify()
            self._thread = threading.Thread(target=self._loop, name="portway-logs",
                                            daemon=True)
            self._thread.start()
        return self._inotify

    def watch(self, key: str, log_path: str) -> None:
        """Note the log's growth from now on (and what it has that was not noted yet)."""
        with self._lock:
            if self._closed or key in self._by_key:
                return
            try:
                log_fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            index_fd = os.open(index_path(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_CLOEXEC, 0o600)
            size = _last_size(index_path(log_path))
            try:
                wd = self._start().add_watch(log_path)
            except OSError:
                os.close(log_fd)
                os.close(index_fd)
                return
            entry = _Watched(key, log_fd, index_fd, size)
            self._by_wd[wd] = entry
            self._by_key[key] = wd
            _note(entry)

    def unwatch(self, key: str) -> None:
        """Its last output noted, the log no longer watched (its command has ended)."""
        with self._lock:
            wd = self._by_key.pop(key, None)
            if wd is None:
                return
            entry = self._by_wd.pop(wd)
            _note(entry)
            if self._inotify is not None:
                self._inotify.rm_watch(wd)
            os.close(entry.log_fd)
            os.close(entry.index_fd)

    def _loop(self) -> None:
        assert self._inotify is not None
        poller = select.poll()
        poller.register(self._inotify.fd, select.POLLIN)
        while not self._closed:
            if not poller.poll(500):
                continue
            wds = self._inotify.read()
            with self._lock:
                for wd in wds:
                    entry = self._by_wd.get(wd)
                    if entry is not None:
                        _note(entry)
            time.sleep(BATCH_GAP)  # let a busy writer's changes gather into one batch
        self._inotify.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for entry in self._by_wd.values():
                os.close(entry.log_fd)
                os.close(entry.index_fd)
            self._by_wd.clear()
            self._by_key.clear()


def _note(entry: _Watched) -> None:
    try:
        size = os.fstat(entry.log_fd).st_size
        if size > entry.size:
            os.write(entry.index_fd, f"{size} {time.time_ns()}\n".encode())
            entry.size = size
    except OSError:
        pass  # the container was removed meanwhile


def _last_size(path: str) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256))
            lines = f.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            return int(parts[0])
    return 0


def read(log_path: str, since: int, tail: int | None, timestamps: bool,
         whole_lines: bool) -> tuple[str, int]:
    """The output from offset since (the last `tail` lines of it, when since is 0), as
    text, and the offset it ends at; whole_lines: stop after the last newline (the rest
    is still being written)."""
    try:
        f = open(log_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return "", since
    with f:
        end = os.fstat(f.fileno()).st_size
        start = since
        if tail is not None and since == 0:
            start = _tail_offset(f, end, tail)
        f.seek(start)
        data = f.read(min(end - start, READ_LIMIT)) if end > start else b""
    index = None
    if timestamps:
        try:
            with open(index_path(log_path)) as g:
                index = logs.parse_index(g.read())
        except FileNotFoundError:
            index = logs.Index()
        if whole_lines:
            # Only what the index has seen: a line shown now gets the time it will
            # have when shown again.
            data = data[:max(0, (index.sizes[-1] if index.sizes else 0) - start)]
    if whole_lines and len(data) < READ_LIMIT:
        data = data[:data.rfind(b"\n") + 1]
    return logs.render(data, start, index, time.time_ns()), start + len(data)


def _tail_offset(f: BinaryIO, end: int, lines: int) -> int:
    """Where the last `lines` lines of the file begin, reading back from its end."""
    block = 64 * 1024
    pos = end
    data = b""
    while pos > 0:
        pos = max(0, pos - block)
        f.seek(pos)
        data = f.read(min(block, end - pos)) + data
        start = logs.tail_start(data, lines)
        if start > 0 or pos == 0:
            return pos + start
    return 0
