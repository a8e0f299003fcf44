"""Entering a container's namespaces and exec'ing its command. Standard library only.

Used by the CLI (foreground `run`) and, as the helper interpreter of
procs.spawn_detached, by the daemon to start detached containers. It is
always called in a single-threaded process, right before exec, so entering
namespaces here never touches a thread of the engine.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, flags, None),
           f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)


def enter_sandbox(netns: str, hostname: str | None, binds: list[tuple[str, str]],
                  sysfs_readonly: bool = True, domainname: str = "") -> None:
    """Join netns, then take new uts and mount namespaces with portway's files bound in
    (those that exist) and the container's hostname and domain name.

    With hostname None only the network namespace is joined. What runs next
    (confine.launch_argv) adds the PID namespace and drops privileges.
    """
    enter_netns(netns)
    if hostname is None:
        return
    unshare(CLONE_NEWNS | CLONE_NEWUTS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for source, target in binds:
        if os.path.exists(source) and os.path.exists(target):
            mount(source, target, None, MS_BIND)
    # Like `ip netns exec`: a sysfs of this network namespace, so /sys/class/net is right;
    # read-only as Docker mounts it, unless --privileged.
    try:
        umount("/sys", MNT_DETACH)
        mount("sysfs", "/sys", "sysfs",
              MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC if sysfs_readonly else 0)
    except OSError:
        pass
    sethostname(hostname)
    if domainname:
        setdomainname(domainname)


def init_child(pid: int) -> int:
    """The first child of pid (the container's first process, under `unshare --fork`), or
    0 if it has none (yet)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            words = f.read().split()
    except OSError:
        return 0
    return int(words[0]) if words else 0


def main() -> None:
    """The helper procs.spawn_detached starts, with these words after `-c BOOT`:
    NETNS HOSTNAME DOMAINNAME SYSFS NBINDS [SOURCE TARGET]... COMMAND [ARG]... (HOSTNAME
    "": the network namespace only; SYSFS "ro" or "rw"). It enters the sandbox and execs
    the command (which is confine.launch_argv's: unshare and setpriv before the user's
    command)."""
    words = sys.argv[1:]
    netns, hostname, domainname = words[0], words[1] or None, words[2]
    sysfs, count = words[3], int(words[4])
    binds = [(words[5 + 2 * i], words[6 + 2 * i]) for i in range(count)]
    command = words[5 + 2 * count:]
    try:
        enter_sandbox(netns, hostname, binds, sysfs != "rw", domainname)
    except OSError as exc:
        print(f"portway: cannot enter the container's namespaces: {exc}", file=sys.stderr)
        os._exit(126)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"portway: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
