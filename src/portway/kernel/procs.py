"""Container processes: start them detached, identify them across restarts, signal them.

A process is identified by (pid, start time) so a reused pid is never taken
for a container's process.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import stat
import subprocess
import sys
import time

from portway.core.confine import Identity, UserSpec
from portway.errors import InvalidInput
from portway.kernel import sandbox


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
                   argv: list[str], log_path: str, env: dict[str, str],
                   sysfs_readonly: bool = True, workdir: str = "/", domainname: str = "",
                   stdin_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start argv inside the sandbox as a new session, output to log_path.

    The child is a helper interpreter that enters the namespaces and execs argv
    (confine.launch_argv: `unshare`, which stays as the container's watched process, then
    `setpriv` and the command), so the pid returned is the one to watch and signal.
    `run -d` does not wait for the exec: it would wait out the helper's interpreter start,
    and entering the namespaces in a forked child of the daemon instead (no vfork then)
    costs 2 ms, half the kernel work of a container. The spec goes on the command line,
    as words (sandbox.main), rather than as JSON: json imports re, milliseconds of every
    start. The helper starts in workdir, which the command inherits. Its stdin is
    /dev/null, or stdin_path opened for reading and writing (a FIFO that never ends).
    """
    # -S skips site-packages (a faster start); portway's own path is handed over
    # on the command line rather than in PYTHONPATH, which the command would inherit.
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = f"import sys; sys.path.insert(0, {src!r}); {HELPER_BOOT}"
    spec = [netns, hostname or "", domainname, "ro" if sysfs_readonly else "rw",
            str(len(binds))]
    for source, target in binds:
        spec += [source, target]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    stdin_fd = os.open(stdin_path or os.devnull,
                       (os.O_RDWR if stdin_path else os.O_RDONLY) | os.O_CLOEXEC)
    with open(fd, "ab") as log, open(stdin_fd, "rb") as stdin:
        # umask: the container's own (Docker's 022), not the daemon's 077.
        return subprocess.Popen(
            [sys.executable, "-S", "-c", boot, *spec, *argv],
            stdin=stdin, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            env=env, umask=0o022, cwd=workdir,
        )


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_init(pid: int, wrappers: tuple[str, ...], timeout: float = 5.0) -> int:
    """The container's first process once it runs the command: the child that the watched
    `unshare` (wrappers[0]) forked, once it has exec'd past the wrappers (`setpriv`). It is
    inside all the container's namespaces from its fork on, so after the timeout a child
    still in a wrapper (a command that is itself one of them) is returned as it is. 0 if
    pid is gone or has no child by then. A process that is not unshare's (a container
    started before portway gave containers a PID namespace) is its own first process."""
    mark = HELPER_BOOT.encode()
    heads = tuple(w.encode() + b"\0" for w in wrappers)
    deadline = time.monotonic() + timeout
    while True:
        own = _cmdline(pid)
        if own is None:
            return 0
        child = 0
        # An empty command line: an exec is under way (the new program's arguments are
        # not in place yet); ask again.
        if own and mark not in own:  # the helper has exec'd
            if not own.startswith(heads[0]):
                return pid
            child = sandbox.init_child(pid)
            theirs = _cmdline(child) if child else None
            if theirs and theirs != own and not theirs.startswith(heads):
                return child
        if time.monotonic() >= deadline:
            return child
        time.sleep(0.0005)


def find_command(command: str, path: str, cwd: str = "/") -> tuple[int, str]:
    """Where a container's command is, as its exec would find it: (0, its path), or
    Docker's exit code and what is wrong: 127 when there is no such program (a name found
    in no directory of path, or a path to nothing), 126 when there is one that cannot be
    executed (a directory, or a file without an x bit)."""
    if "/" not in command:
        for directory in path.split(":"):
            candidate = os.path.join(directory or ".", command)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return 0, candidate
        return 127, f"command not found: {command!r}"
    full = os.path.join(cwd, command)
    try:
        st = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        return 127, f"command not found: {command!r} (no such file)"
    except PermissionError:
        return 126, f"cannot run {command!r}: permission denied"
    if stat.S_ISDIR(st.st_mode):
        return 126, f"cannot run {command!r}: it is a directory"
    if not st.st_mode & 0o111 or not os.access(full, os.X_OK):
        return 126, f"cannot run {command!r}: permission denied (it is not executable)"
    return 0, full


def container_env(hostname: str | None, home: str = "/root") -> dict[str, str]:
    """The environment a container's command starts with (Docker's: PATH, HOSTNAME, HOME)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": home, "LANG": os.environ.get("LANG", "C.UTF-8")}
    if hostname:
        env["HOSTNAME"] = hostname
    return env


def resolve_identity(spec: UserSpec) -> Identity:
    """--user against the host's passwd and group files (a container shares the host's
    file system, so they are its own): Docker's rules. A uid without an entry runs with
    gid 0 (or the one given) and HOME /; a name must exist."""
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
    except KeyError:
        if not spec.user.isdigit():
            raise InvalidInput(f"unable to find user {spec.user}: no matching entries in "
                               "passwd file", "give a uid, or a user of /etc/passwd") from None
        entry = None
    uid = entry.pw_uid if entry else int(spec.user)
    gid = entry.pw_gid if entry else 0
    groups: list[int] = []
    if spec.group is not None:
        if spec.group.isdigit():
            gid = int(spec.group)
        else:
            try:
                gid = grp.getgrnam(spec.group).gr_gid
            except KeyError:
                raise InvalidInput(f"unable to find group {spec.group}: no matching entries "
                                   "in group file",
                                   "give a gid, or a group of /etc/group") from None
    elif entry is not None:
        groups = sorted({g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
                        | {gid})
    return Identity(uid=uid, gid=gid, groups=tuple(groups),
                    home=entry.pw_dir if entry else "/")


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


def process_trees(pids: tuple[int, ...]) -> set[int]:
    """The processes and all their descendants (by the parents /proc says)."""
    if not pids:
        return set()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(raw[raw.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [p for p in pids if p > 0]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def kill_netns_processes(inode: int, exclude: int = 0, spare: set[int] | None = None) -> int:
    """SIGKILL every process left in a container's namespace, but those in spare;
    returns how many."""
    count = 0
    for pid in pids_in_netns(inode):
        if pid in (exclude, os.getpid()) or (spare and pid in spare):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count
