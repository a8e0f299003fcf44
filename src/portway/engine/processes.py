"""Container processes: started confined (core/confine.py), watched until they end,
stopped, joined by exec, and found again after a daemon restart.

Rules of this module:
1. A process is identified by (pid, start time), so a reused pid is never taken for a
   container's process. The pid portway watches is `unshare`'s; the command is its
   first child (wait_init finds it).
2. Containers outlive the daemon: nothing here kills a process on close; the next
   daemon adopts the running ones (it cannot read their status, only see them end).
   What is known of an end is passed on to the lifecycle service (engine/lifecycle.py):
   the status of the daemon's own children, 137 for a process the daemon SIGKILLed,
   the status a foreground `run` reports for the command it became; nothing else.
3. Only the ProcessKernel touches processes (a fake stands in for it in unit tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from portway.core import confine, runopts
from portway.core.confine import Identity, UserSpec
from portway.core.logs import parse_tail
from portway.engine import logs
from portway.engine.context import now
from portway.engine.logs import LogIndexer
from portway.engine.watch import OnExit, ProcessWatcher
from portway.errors import Conflict, InvalidInput, PortwayError
from portway.kernel import procs
from portway.model.types import Container

if TYPE_CHECKING:
    from portway.engine.context import Host


class ProcessKernel(Protocol):
    def spawn(self, netns: str, hostname: str | None, binds: list[tuple[str, str]],
              argv: list[str], log_path: str, env: dict[str, str],
              sysfs_readonly: bool, workdir: str = "/", domainname: str = "",
              stdin_path: str | None = None) -> int: ...
    def start_time(self, pid: int) -> int: ...
    def is_alive(self, pid: int, started: int) -> bool: ...
    def signal(self, pid: int, started: int, sig: int) -> bool: ...
    def signal_init(self, pid: int, started: int, wrappers: tuple[str, ...],
                    sig: int) -> bool: ...
    def wait_init(self, pid: int, wrappers: tuple[str, ...], timeout: float = 5.0) -> int: ...
    def resolve_identity(self, spec: UserSpec) -> Identity: ...
    def find_command(self, command: str, path: str, cwd: str) -> tuple[int, str]: ...
    def watch(self, container_id: str, pid: int, child: bool) -> None: ...
    def index_log(self, key: str, log_path: str) -> None: ...
    def unindex_log(self, key: str) -> None: ...
    def watching(self, pid: int) -> bool: ...
    def close(self) -> None: ...


class LiveProcessKernel:
    def __init__(self, on_exit: OnExit) -> None:
        self.watcher = ProcessWatcher(on_exit)
        self.logs = LogIndexer()

    def spawn(self, netns: str, hostname: str | None, binds: list[tuple[str, str]],
              argv: list[str], log_path: str, env: dict[str, str],
              sysfs_readonly: bool, workdir: str = "/", domainname: str = "",
              stdin_path: str | None = None) -> int:
        child: subprocess.Popen[bytes] = procs.spawn_detached(
            netns, hostname, binds, argv, log_path, env, sysfs_readonly=sysfs_readonly,
            workdir=workdir, domainname=domainname, stdin_path=stdin_path)
        # The watcher reaps it; Popen must not (its handle is dropped unwaited on purpose).
        child.returncode = 0
        return child.pid

    def start_time(self, pid: int) -> int:
        return procs.start_time(pid)

    def is_alive(self, pid: int, started: int) -> bool:
        return procs.is_alive(pid, started)

    def signal(self, pid: int, started: int, sig: int) -> bool:
        return procs.signal_process(pid, started, sig)

    def wait_init(self, pid: int, wrappers: tuple[str, ...], timeout: float = 5.0) -> int:
        return procs.wait_init(pid, wrappers, timeout)

    def resolve_identity(self, spec: UserSpec) -> Identity:
        return procs.resolve_identity(spec)

    def signal_init(self, pid: int, started: int, wrappers: tuple[str, ...],
                    sig: int) -> bool:
        """sig to the container's first process (the command), not to the `unshare` that
        portway watches (which would die of most signals and take the command with it);
        False if the container's process is gone."""
        if not procs.is_alive(pid, started):
            return False
        target = procs.wait_init(pid, wrappers, timeout=1.0) or pid
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            return False
        return True

    def find_command(self, command: str, path: str, cwd: str) -> tuple[int, str]:
        return procs.find_command(command, path, cwd)

    def watch(self, container_id: str, pid: int, child: bool) -> None:
        self.watcher.watch(container_id, pid, child)

    def index_log(self, key: str, log_path: str) -> None:
        self.logs.watch(key, log_path)

    def unindex_log(self, key: str) -> None:
        self.logs.unwatch(key)
    def watching(self, pid: int) -> bool:
        return self.watcher.watching(pid)

    def close(self) -> None:
        self.watcher.close()
        self.logs.close()


class Processes:
    def __init__(self, host: Host) -> None:
        self.h = host
        # What this daemon knows of the processes it watches (by pid): the ones it
        # started (their status is readable), the ones a foreground `run` became (it
        # reports their status), the ones it SIGKILLed itself.
        self.children: set[int] = set()
        self.foreground: set[int] = set()
        self.killed: set[int] = set()

    @property
    def kernel(self) -> ProcessKernel:
        return self.h.process_kernel

    def check(self, cap_add: list[str], cap_drop: list[str], privileged: bool,
              user: str | None) -> None:
        """What run is asked for a container's processes, validated."""
        confine.capabilities(cap_add, cap_drop, privileged)
        if user is not None:
            self.kernel.resolve_identity(confine.parse_user(user))

    def check_command(self, command: list[str], cwd: str = "/",
                      env: tuple[str, ...] = ()) -> None:
        """The command can be executed, as the container's exec would find it (its PATH:
        -e's, if it gives one; cwd for a relative path), or PortwayError with Docker's
        exit code: 127 (no such program), 126 (a directory, or not executable)."""
        path = procs.container_env(None)["PATH"]
        for item in env:  # the command's own PATH, if -e gives one
            key, _, value = item.partition("=")
            path = value if key == "PATH" else path
        code, what = self.kernel.find_command(command[0], path, cwd)
        if code == 127:
            raise PortwayError(what, "give a program that exists on this host (or its full "
                               "path)", 127)
        if code:
            raise PortwayError(what, "give a program file that can be executed (chmod +x it, "
                               "or run it through its interpreter: sh FILE)", code)

    @staticmethod
    def check_workdir(workdir: str) -> str:
        """-w (or the caller's directory): absolute, and a directory of the host's."""
        workdir = runopts.check_workdir(workdir)
        if not os.path.isdir(workdir):
            raise InvalidInput(f"working directory {workdir} does not exist",
                               "give a directory of the host (a container shares its file "
                               "system), or create it first")
        return workdir

    def confinement(self, c: Container) -> confine.Confinement:
        """What c's processes may do, its --user looked up now (as Docker does at start)."""
        return confine.Confinement(
            caps=confine.capabilities(c.cap_add, c.cap_drop, c.privileged),
            privileged=c.privileged,
            identity=self.kernel.resolve_identity(confine.parse_user(c.user))
            if c.user else None)

    def env(self, c: Container, conf: confine.Confinement) -> dict[str, str]:
        """Docker's: PATH, HOSTNAME, HOME, TERM with -t, then -e and --env-file (later
        ones win, over those too)."""
        env = procs.container_env(c.hostname, conf.identity.home if conf.identity else "/root")
        if c.config.tty:
            env["TERM"] = "xterm"
        for item in c.config.env:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def log_path(self, container: Container) -> str:
        directory = os.path.join(self.h.state_dir, "containers", container.id)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, "output.log")

    def sandbox_info(self, container: Container) -> dict[str, Any]:
        """What a foreground `run` needs to become the container's command."""
        warnings = []
        if container.network_mode == "host" or (
                container.network_mode == "container"
                and container.netns == self.h.host_netns_path()):
            warnings.append("--network host: the container shares the host's network "
                            "namespace; it is not isolated and can bind any host port")
        if container.privileged:
            warnings.append(confine.PRIVILEGED_WARNING)
        conf = self.confinement(container)
        return {"Id": container.id, "Name": container.name, "SandboxKey": container.netns,
                "Hostname": container.hostname, "Domainname": container.config.domainname,
                "Binds": self.h.sandboxes.binds(container), "Env": self.env(container, conf),
                "Argv": confine.launch_argv(conf, self.h.tools, list(container.command)),
                "SysfsReadOnly": not container.privileged,
                "Workdir": container.config.workdir, "Tty": container.config.tty,
                "Interactive": container.config.interactive,
                "Pid": container.pid, "NetworkMode": container.network_mode,
                "Warning": "\n".join(warnings)}

    def stdin_path(self, container: Container) -> str | None:
        """-d -i: a FIFO the command reads as its stdin, which never ends (the command
        holds it open for writing too, so no daemon has to): its stdin is kept open, as
        Docker keeps it. Without -i: none (/dev/null)."""
        if not container.config.interactive:
            return None
        path = os.path.join(os.path.dirname(self.log_path(container)), "stdin")
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            pass
        return path

    def start(self, container: Container) -> Container:
        conf = self.confinement(container)
        log_path = self.log_path(container)
        pid = self.kernel.spawn(
            container.netns, container.hostname, self.h.sandboxes.binds(container),
            confine.launch_argv(conf, self.h.tools, list(container.command)),
            log_path, self.env(container, conf), sysfs_readonly=not container.privileged,
            workdir=container.config.workdir, domainname=container.config.domainname,
            stdin_path=self.stdin_path(container))
        container = replace(container, status="running", pid=pid,
                            pid_start=self.kernel.start_time(pid), started=now(),
                            exit_code=None, error="")
        self.h.store.update_container(container)
        self.kernel.index_log(_log_key(container.id, pid), log_path)
        self.children.add(pid)
        self.kernel.watch(container.id, pid, child=True)
        return container

    def started(self, ref: str, pid: int) -> dict[str, Any]:
        """A foreground `run` reports the pid of the command it became."""
        with self.h.lock:
            c = self.h.container(ref)
            c = replace(c, status="running", pid=pid, pid_start=self.kernel.start_time(pid),
                        started=now(), exit_code=None, error="")
            self.h.store.update_container(c)
            self.foreground.add(pid)
        self.kernel.watch(c.id, pid, child=False)
        return {"Id": c.id}

    def exited(self, ref: str, exit_code: int, pid: int | None = None) -> dict[str, Any]:
        """A foreground `run` reports its command's exit status."""
        self.foreground.discard(pid or 0)
        self.h.lifecycle.reported(ref, exit_code, pid)
        return {}

    def on_exit(self, container_id: str, pid: int, code: int | None) -> None:
        """The watcher saw pid end (code: its status, if it was the daemon's child)."""
        self.kernel.unindex_log(_log_key(container_id, pid))
        if code is None and pid in self.killed:
            code = 128 + signal.SIGKILL
        self.children.discard(pid)
        self.killed.discard(pid)
        foreground = pid in self.foreground
        self.h.lifecycle.process_ended(container_id, pid, code, foreground)

    def exec_info(self, ref: str, command: list[str] | None = None,
                  workdir: str = "/", user: str | None = None) -> dict[str, Any]:
        """How to run a command in a running container: the argv that joins its first
        process's namespaces (PID namespace included) with the container's privileges,
        as its user or as user (exec -u)."""
        workdir = self.check_workdir(workdir)
        spec = confine.parse_user(user) if user else None
        with self.h.lock:
            c = self.h.own(ref)
            if c.status != "running":
                raise Conflict(f"container {c.name} is not running",
                               f"start it first (portway start {c.name})")
            conf = self.confinement(c)
        if spec is not None:
            conf = replace(conf, identity=self.kernel.resolve_identity(spec))
        if command:
            self.check_command(command, workdir, c.config.env)
        # `run -d` returns before its helper has entered the namespaces and exec'd the
        # command: joining the namespaces before then would join the host's.
        init = self.kernel.wait_init(c.pid, (self.h.tools.unshare, self.h.tools.setpriv))
        if not init:
            raise Conflict(f"container {c.name} is not running (or its command has not "
                           "started yet)", "see 'portway ps' and 'portway logs', and try again")
        return {"Id": c.id, "Pid": init, "Env": self.env(c, conf),
                "Argv": confine.exec_argv(conf, self.h.tools, init, workdir,
                                          list(command or []))}

    def first_process(self, c: Container) -> int:
        """Docker's State.Pid: the container's first process (the command, as the host
        numbers it), not the `unshare` that portway watches. Right after `run -d` the
        command may still be starting (milliseconds; longer on a loaded machine): wait
        for it a moment, and give the `unshare` only if it never comes."""
        if c.runtime != "portway":
            return c.pid
        wrappers = (self.h.tools.unshare, self.h.tools.setpriv)
        return self.kernel.wait_init(c.pid, wrappers, timeout=1.0) or c.pid

    def logs(self, ref: str, tail: int | str | None = None, timestamps: bool = False,
             since: int = 0, follow: bool = False) -> dict[str, Any]:
        """A detached container's output from offset since (its last `tail` lines, from
        the start), each line with the time it arrived if asked. Following (-f): while it
        runs, whole lines only. Offset: where the next call goes on from."""
        lines = parse_tail(tail)
        with self.h.lock:
            c = self.h.container(ref)
        running = c.status == "running"
        text, offset = logs.read(self.log_path(c), since, lines, timestamps,
                                 whole_lines=follow and running)
        return {"Log": text, "Offset": offset, "Running": running}

    def stop_process(self, c: Container, timeout: float) -> int:
        """SIGTERM to the command, as Docker's stop sends it to the container's first
        process, then SIGKILL after timeout; returns the last signal sent (0: none). Not
        SIGTERM to the `unshare` portway watches: right after `run -d` on a loaded machine
        it may not ignore the signal yet, and would die of it (exit 143) instead of the
        command meeting the SIGKILL (137)."""
        wrappers = (self.h.tools.unshare, self.h.tools.setpriv)
        if not self.kernel.signal_init(c.pid, c.pid_start, wrappers, signal.SIGTERM):
            return 0
        deadline = time.monotonic() + max(timeout, 0)
        while time.monotonic() < deadline and self.kernel.is_alive(c.pid, c.pid_start):
            time.sleep(0.01)
        if self.kernel.is_alive(c.pid, c.pid_start):
            self.kill(c)
            return signal.SIGKILL
        return signal.SIGTERM

    def send_signal(self, c: Container, sig: int) -> bool:
        """`portway kill -s SIG`: to the command; SIGKILL to the whole process (and wait
        until it is gone). False if it is not running."""
        if sig == signal.SIGKILL:
            if not self.kernel.is_alive(c.pid, c.pid_start):
                return False
            self.kill(c)
            return True
        return self.kernel.signal_init(c.pid, c.pid_start,
                                       (self.h.tools.unshare, self.h.tools.setpriv), sig)

    def kill(self, c: Container) -> None:
        """SIGKILL c's process (its group), and wait until it is gone."""
        if c.pid and self.kernel.is_alive(c.pid, c.pid_start):
            self.killed.add(c.pid)
        if self.kernel.signal(c.pid, c.pid_start, signal.SIGKILL):
            self.wait_gone(c)

    def wait_gone(self, c: Container, limit: float = 5.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.kernel.is_alive(c.pid, c.pid_start):
            time.sleep(0.005)

    def adopt(self) -> tuple[int, list[str]]:
        """After a (re)start: watch the running containers' processes again, and hold
        the published ports of those whose networking is up again (one that cannot be
        held is `doctor`'s to report). A container whose process ended while no daemon
        watched it is recorded as exited (its status unknown) and its networking
        released; whether it starts again is resume's to decide, once gc has put the
        networks back. Returns how many were adopted, and a line for each that ended."""
        count = 0
        lines: list[str] = []
        with self.h.lock:
            for c in self.h.store.containers():
                if c.runtime != "portway":
                    continue
                if c.status == "running" and self.kernel.is_alive(c.pid, c.pid_start):
                    for p in c.ports if c.networked else ():
                        try:
                            self.h.ports.reserve(p)
                        except OSError:
                            pass
                    if c.detach:
                        self.kernel.index_log(_log_key(c.id, c.pid), self.log_path(c))
                    self.kernel.watch(c.id, c.pid, child=False)
                    count += 1
                elif c.status in ("running", "restarting"):
                    line = self.h.lifecycle.found_ended(c)
                    if line:
                        lines.append(line)
                elif c.networked and c.status == "created":
                    # A foreground run that was about to start its command: its ports.
                    for p in c.ports:
                        try:
                            self.h.ports.reserve(p)
                        except OSError:
                            pass
        return count, lines


def _log_key(container_id: str, pid: int) -> str:
    """The log index's watch of one process of a container (a new process, a new watch)."""
    return f"{container_id}/{pid}"
