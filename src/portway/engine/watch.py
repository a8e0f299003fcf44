"""Watching container processes end: one thread, one pidfd per process.

The daemon's own children are reaped here (their exit status is known); a
process adopted after a daemon restart is not our child, so only its end is
seen, not its status.
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
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="portway-watch", daemon=True)
        self._thread.start()

    def watch(self, container_id: str, pid: int, child: bool) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._on_exit(container_id, pid, self._reap(pid) if child else None)
            return
        with self._lock:
            self._selector.register(fd, selectors.EVENT_READ, (container_id, pid, child))
        os.write(self._wake_w, b"x")

    @staticmethod
    def _reap(pid: int) -> int | None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status) if status >= 0 else None

    def _loop(self) -> None:
        while not self._closed:
            events = self._selector.select()
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                container_id, pid, child = key.data
                with self._lock:
                    self._selector.unregister(key.fd)
                os.close(key.fd)
                code = self._reap(pid) if child else None
                if code is not None and code < 0:
                    code = 128 - code  # killed by a signal: the shell's convention
                try:
                    self._on_exit(container_id, pid, code)
                except Exception:  # a failing callback must not stop the watcher
                    import traceback

                    traceback.print_exc()

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
