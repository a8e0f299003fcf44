"""Watching container processes end: one thread, one pidfd per process.

The daemon's own children are reaped here (their exit status is known); a
process adopted after a daemon restart is not our child, so only its end is
seen, not its status. Every end is reported from the watcher's thread, never from
the caller of watch() (which may hold the engine's lock in the middle of an
operation), and a process counts as watched until its end has been reported.
"""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable

OnExit = Callable[[str, int, int | None], None]


class ProcessWatcher:
    def __init__(self, on_exit: OnExit) -> None:
        self._on_exit = on_exit
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watched: set[int] = set()
        self._gone: list[tuple[str, int, bool]] = []  # ended before they could be watched
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="portway-watch", daemon=True)
        self._thread.start()

    def watch(self, container_id: str, pid: int, child: bool) -> None:
        with self._lock:
            self._watched.add(pid)
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._gone.append((container_id, pid, child))
            else:
                self._selector.register(fd, selectors.EVENT_READ, (container_id, pid, child))
        os.write(self._wake_w, b"x")

    def watching(self, pid: int) -> bool:
        """Whether pid's end is still to be reported."""
        with self._lock:
            return pid in self._watched

    @staticmethod
    def _reap(pid: int) -> int | None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code  # killed by a signal: the shell's convention

    def _loop(self) -> None:
        while not self._closed:
            events = self._selector.select()
            ended: list[tuple[str, int, bool]] = []
            with self._lock:
                ended, self._gone = self._gone, []
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    self._selector.unregister(key.fd)
                os.close(key.fd)
                ended.append(key.data)
            for container_id, pid, child in ended:
                code = self._reap(pid) if child else None
                try:
                    self._on_exit(container_id, pid, code)
                except Exception:  # a failing callback must not stop the watcher
                    import traceback

                    traceback.print_exc()
                finally:
                    with self._lock:
                        self._watched.discard(pid)

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
