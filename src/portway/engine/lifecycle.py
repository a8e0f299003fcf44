"""The life of a container after `run`: start, stop, kill, restart, wait, the end of its
process, and its restart policy (the rules are core/lifecycle.py's, Docker's).

Rules of this module:
1. A container's networking lives as long as its process. Every end goes through
   _end(): the status is recorded as exited with what is known of the exit code (the
   status of the daemon's own child, or the one a foreground `run` reports; 137 for a
   process the daemon SIGKILLed; otherwise 255, and State.Error says why it is unknown),
   then its networking is released (Containers.release: endpoints, addresses, published
   host ports, DNS names), then --rm is honoured or the restart policy applied. `start`
   makes the networking anew from the container's configuration (Containers.start).
2. A user's stop or kill cancels the restart policy until the next start (Docker's
   HasBeenManuallyStopped); a restart by the user neither restarts by policy nor removes
   a --rm container on the way. portwayd's own start (resume) starts again what dockerd
   starts again: `always` containers, `unless-stopped` ones the user did not stop,
   `on-failure` ones that failed and have retries left.
3. State changes happen under the host lock and wake the waiters of `wait`; waiting for
   a process to end happens outside the lock. Timers (the restart back-off, a foreground
   run's overdue report) recheck the state they were set for before acting.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from portway.core import lifecycle as rules
from portway.engine.context import now
from portway.errors import Conflict, PortwayError
from portway.model.types import Container

if TYPE_CHECKING:
    from portway.engine.context import Host

# How long a foreground `run` may take to report its command's status once the command
# has ended, before the status counts as unknown.
REPORT_WAIT = 2.0
# How long stop, kill and restart wait for an end the watcher is about to report.
END_WAIT = 5.0


def log(message: str) -> None:
    print(f"portwayd: {message}", file=sys.stderr, flush=True)


def _seconds(start: str, end: str) -> float:
    """Between two of now()'s timestamps (0 if either is missing)."""
    try:
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        a = datetime.strptime(start, fmt).replace(tzinfo=UTC)
        b = datetime.strptime(end, fmt).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return (b - a).total_seconds()


def policy_of(c: Container) -> rules.RestartPolicy:
    return rules.RestartPolicy(c.restart_policy, c.restart_max)


class Lifecycle:
    def __init__(self, host: Host) -> None:
        self.h = host
        self.changed = threading.Condition(host.lock)
        self._ends: dict[str, int] = {}  # container id -> how many ends were recorded
        self._codes: dict[str, int] = {}  # container id -> the last exit code recorded
        self._delay: dict[str, float] = {}  # container id -> its last restart delay
        self._by_user: set[str] = set()  # containers a user's `restart` is restarting
        self._timers: set[threading.Timer] = set()

    def close(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        with self.changed:
            self.changed.notify_all()

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            self._timers.discard(timer)
            fn(*args)

        timer = threading.Timer(delay, run)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    # ends

    def process_ended(self, container_id: str, pid: int, code: int | None,
                      foreground: bool) -> None:
        """The watcher saw a container's process end (code: its status, where known)."""
        with self.h.lock:
            if self.h.closed:
                return  # the next daemon finds it ended
            c = self.h.store.find_container(container_id)
            if c is None or c.pid != pid or c.status != "running":
                return
            if code is None and foreground:
                # The foreground `run` that became the command reports its status.
                self._end(c, None, "", decide=False)
                self._later(REPORT_WAIT, self._report_overdue, c.id, pid)
                return
            self._end(c, rules.UNKNOWN_EXIT if code is None else code,
                      rules.ADOPTED if code is None else "")

    def reported(self, ref: str, code: int, pid: int | None) -> None:
        """A foreground `run` reports the status of the command it became."""
        with self.h.lock:
            c = self.h.store.find_container(ref)
            if c is None or (pid is not None and c.pid != pid):
                return
            if c.status == "running":
                self._end(c, code, "")
            elif c.status == "exited" and c.exit_code is None:
                c = replace(c, exit_code=code)
                self.h.store.update_container(c)
                self._note(c)
                self._after(c)
            elif c.status == "exited" and c.error in (rules.ADOPTED, rules.NOT_REPORTED):
                # Recorded as unknown (a daemon that started meanwhile, or a report that
                # came late): now it is known.
                self.h.store.update_container(replace(c, exit_code=code, error=""))

    def _report_overdue(self, container_id: str, pid: int) -> None:
        with self.h.lock:
            if self.h.closed:
                return
            c = self.h.store.find_container(container_id)
            if c is None or c.pid != pid or c.status != "exited" or c.exit_code is not None:
                return
            c = replace(c, exit_code=rules.UNKNOWN_EXIT, error=rules.NOT_REPORTED)
            self.h.store.update_container(c)
            self._note(c)
            self._after(c)

    def found_ended(self, c: Container) -> str:
        """At the daemon's start (lock held): c ran (or waited to restart) when the last
        daemon left, and its process has ended since. Recorded, its networking released;
        resume decides whether it starts again. A line for the log."""
        if c.status == "restarting":
            self.h.store.update_container(replace(c, status="exited"))
            return f"container {c.name} was waiting to restart: resume decides"
        self._end(c, rules.UNKNOWN_EXIT, rules.NOT_WATCHING, decide=False)
        return (f"container {c.name}: its process ended while portwayd was not running "
                "(exit status unknown); its networking is released")

    def ended_unwatched(self, c: Container) -> Container:
        """refresh() found c's process gone and nothing watching it (lock held)."""
        return self._end(c, rules.UNKNOWN_EXIT, rules.NOT_WATCHING)

    def _end(self, c: Container, code: int | None, error: str,
             decide: bool = True) -> Container:
        """c's process ended (lock held): recorded, networking released, then --rm or
        the restart policy (unless decide is False: the exit code is still to come)."""
        finished = now()
        ran = _seconds(c.started, finished)
        c = replace(c, status="exited", exit_code=code, error=error, finished=finished)
        self.h.store.update_container(c)
        if c.networked:
            try:
                c = self.h.containers.release(c)
            except PortwayError as exc:  # gc finishes it: the store says it is released
                log(f"{exc.line()}")
                c = self.h.store.find_container(c.id) or c
        if code is not None:
            self._note(c)
        if decide:
            self._after(c, ran)
        return c

    def _note(self, c: Container) -> None:
        with self.changed:
            self._ends[c.id] = self._ends.get(c.id, 0) + 1
            self._codes[c.id] = c.exit_code if c.exit_code is not None else 0
            self.changed.notify_all()

    def _after(self, c: Container, ran: float | None = None) -> None:
        """--rm, or the restart policy, for a container whose end is recorded."""
        if c.id in self._by_user:
            return  # a user's restart starts it again itself
        if ran is None:
            ran = _seconds(c.started, c.finished)
        if c.auto_remove:
            try:
                self.h.containers.remove(c)
            except PortwayError as exc:
                log(f"{exc.line()} (gc will finish it)")
            return
        code = c.exit_code if c.exit_code is not None else 0
        if not rules.restart_on_exit(policy_of(c), code, c.restart_count, c.user_stopped):
            return
        delay = rules.next_delay(self._delay.get(c.id, 0.0), ran)
        self._delay[c.id] = delay
        c = replace(c, status="restarting", restart_count=c.restart_count + 1)
        self.h.store.update_container(c)
        self._later(delay, self._restart_due, c.id, c.restart_count)

    def _restart_due(self, container_id: str, count: int) -> None:
        with self.h.lock:
            if self.h.closed:
                return
            c = self.h.store.find_container(container_id)
            if c is None or c.status != "restarting" or c.restart_count != count:
                return  # stopped, killed, removed or started meanwhile
            try:
                self.h.containers.start(c, user=False)
            except PortwayError as exc:
                # As dockerd: a restart that fails ends the restarts.
                log(f"container {c.name} not restarted: {exc.line()}")
                c = self.h.store.find_container(container_id) or c
                self.h.store.update_container(replace(
                    c, status="exited", error=f"restart failed: {exc.message}"))
                with self.changed:
                    self.changed.notify_all()

    def forget(self, c: Container, code: int | None) -> None:
        """c was removed (lock held); code: the status it ended with, if it was running."""
        with self.changed:
            if code is not None:
                self._codes[c.id] = code
            self._ends[c.id] = self._ends.get(c.id, 0) + 1
            self._delay.pop(c.id, None)
            self.changed.notify_all()

    # what users ask

    def _startable(self, c: Container) -> Container:
        """c, not running, ready to start (lock held)."""
        if c.networked:
            if c.status == "created":
                raise Conflict(f"container {c.name} is being started by a foreground "
                               "'portway run'", "wait for it to start")
            # Stopped with its networking still up (portwayd died while releasing it):
            # given back first, as gc would.
            c = self.h.containers.release(c)
        return c

    def start(self, ref: str) -> str:
        with self.h.lock:
            c = self.h.own(ref)
            if c.status == "running":
                return ref  # as Docker: nothing to do
            self.h.containers.start(self._startable(c), user=True)
        return ref

    def stop(self, ref: str, timeout: float) -> str:
        with self.h.lock:
            c = self.h.own(ref)
            if c.status == "restarting":
                self.h.store.update_container(replace(c, status="exited", user_stopped=True))
                with self.changed:
                    self.changed.notify_all()
                return ref
            if c.status != "running":
                return ref  # as Docker: nothing to do
            c = replace(c, user_stopped=True)
            self.h.store.update_container(c)
        self.h.processes.stop_process(c, timeout)
        self._await_end(c)
        return ref

    def kill(self, ref: str, sig: int) -> str:
        with self.h.lock:
            c = self.h.own(ref)
            if c.status == "restarting":
                self.h.store.update_container(replace(c, status="exited", user_stopped=True))
                with self.changed:
                    self.changed.notify_all()
                return ref
            if c.status != "running":
                raise Conflict(f"container {c.name} is not running", "nothing to kill")
            c = replace(c, user_stopped=True)
            self.h.store.update_container(c)
        if not self.h.processes.send_signal(c, sig):
            raise Conflict(f"container {c.name} is not running", "nothing to kill")
        if sig == signal.SIGKILL:
            self._await_end(c)
        return ref

    def restart(self, ref: str, timeout: float) -> str:
        with self.h.lock:
            c = self.h.own(ref)
            self._by_user.add(c.id)
        try:
            if c.status == "running":
                self.h.processes.stop_process(c, timeout)
                self._await_end(c)
            with self.h.lock:
                c = self.h.own(ref)
                if c.status != "running":
                    self.h.containers.start(self._startable(c), user=True)
        finally:
            self._by_user.discard(c.id)
        return ref

    def wait(self, ref: str) -> int:
        """Until c's process ends (at once if it is not running): its exit code."""
        with self.changed:
            c = self.h.own(ref)
            if c.status not in ("running", "restarting"):
                return c.exit_code if c.exit_code is not None else 0
            seen = self._ends.get(c.id, 0)
            while self._ends.get(c.id, 0) == seen:
                if self.h.closed:
                    raise PortwayError("portwayd is stopping", "wait again", 1)
                self.changed.wait(1.0)
                current = self.h.store.find_container(c.id)
                if current is not None:
                    self.h.refresh(current)  # an end nothing watches
            return self._codes.get(c.id, 0)

    def _await_end(self, c: Container) -> None:
        """Until the end of c's process (as c has it) is recorded, a few seconds at most."""
        deadline = time.monotonic() + END_WAIT
        with self.changed:
            while time.monotonic() < deadline:
                current = self.h.store.find_container(c.id)
                if current is None or current.pid != c.pid or current.status != "running":
                    return
                self.h.refresh(current)
                self.changed.wait(0.05)

    def resume(self) -> list[str]:
        """When portwayd starts (after gc has put the networks back): start again what
        the restart policies say, as dockerd does. A line each for the log."""
        lines = []
        with self.h.lock:
            for c in self.h.store.containers():
                if c.runtime != "portway" or c.status not in ("exited", "created") or \
                        c.networked:
                    continue
                code = c.exit_code if c.exit_code is not None else 0
                if not rules.restart_on_daemon_start(policy_of(c), code, c.restart_count,
                                                     c.user_stopped, bool(c.started)):
                    continue
                try:
                    self.h.containers.start(c, user=True)
                    lines.append(f"started container {c.name} again (restart policy "
                                 f"{policy_of(c)})")
                except PortwayError as exc:
                    self.h.store.update_container(replace(
                        c, error=f"start at portwayd's start failed: {exc.message}"))
                    lines.append(f"could not start container {c.name} again (restart "
                                 f"policy {policy_of(c)}): {exc.line()}")
        return lines
