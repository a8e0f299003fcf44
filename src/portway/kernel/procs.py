"""Container processes: start them detached, identify them across restarts, signal them.

A process is identified by (pid, start time) so a reused pid is never taken
for a container's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    if fields and fields[0] == b"Z":
        return 0
    return int(fields[19])


def is_alive(pid: int, started: int) -> bool:
    return pid > 0 and started > 0 and start_time(pid) == started


# What the helper runs; /proc/PID/cmdline holds it until the helper has exec'd the
# container's command.
HELPER_BOOT = "from portway.kernel.sandbox import main; main()"


def spawn_detached(netns: str, hostname: str | None, binds: list[tuple[str, str]],
                   command: list[str], log_path: str) -> subprocess.Popen[bytes]:
    """Start the command inside the sandbox as a new session, output to log_path.

    The child is a helper interpreter that enters the namespaces and execs the
    command, so the pid returned is the container's process itself, once the helper
    has exec'd it (wait_exec). `run -d` does not wait for that: it would wait out the
    helper's interpreter start, and entering the namespaces in a forked child of the
    daemon instead (no vfork then) costs 2 ms, half the kernel work of a container.
    The spec goes on the command line, as
    words (sandbox.main), rather than as JSON: json imports re, milliseconds of
    every start.
    """
    # -S skips site-packages (a faster start); portway's own path is handed over
    # on the command line rather than in PYTHONPATH, which the command would inherit.
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = f"import sys; sys.path.insert(0, {src!r}); {HELPER_BOOT}"
    spec = [netns, hostname or "", str(len(binds))]
    for source, target in binds:
        spec += [source, target]
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        return subprocess.Popen(
            [sys.executable, "-S", "-c", boot, *spec, *command],
            stdin=devnull, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            env=container_env(hostname),
        )


def wait_exec(pid: int, timeout: float = 5.0) -> bool:
    """Wait until the helper started by spawn_detached has become the container's
    command (inside its namespaces, with its files). False if the process is gone or
    has not got there within the timeout: its namespaces may still be the host's."""
    mark = HELPER_BOOT.encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mark not in f.read():
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)


def container_env(hostname: str | None) -> dict[str, str]:
    """The environment a container's command starts with (Docker's: PATH, HOSTNAME, HOME)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": os.environ.get("LANG", "C.UTF-8")}
    if hostname:
        env["HOSTNAME"] = hostname
    return env


def netns_inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def pids_in_netns(inode: int) -> list[int]:
    """Every process whose network namespace is the one with this inode."""
    if not inode:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                out.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def signal_process(pid: int, started: int, sig: int) -> bool:
    """Signal the process (and its group, if it leads one); False if it is gone."""
    if not is_alive(pid, started):
        return False
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_netns_processes(inode: int, exclude: int = 0) -> int:
    """SIGKILL every process left in a container's namespace; returns how many."""
    count = 0
    for pid in pids_in_netns(inode):
        if pid in (exclude, os.getpid()):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count
