"""Network namespaces: create, open, delete — without forking and without setns on
the engine's own threads.

A netlink socket stays in the namespace it was opened in. So each operation
that needs a namespace runs a short-lived helper thread that enters it,
opens what it needs (or creates the namespace with unshare), and leaves;
the socket it returns is then used from any thread.
"""

from __future__ import annotations

import _thread
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pyroute2 import IPRoute

from portway.errors import InvalidInput
from portway.kernel import sandbox

if TYPE_CHECKING:
    from portway.kernel.rtnl import Dumper

RUN_NETNS = "/run/netns"
ETC_NETNS = "/etc/netns"
T = TypeVar("T")


def netns_path(name: str) -> str:
    return os.path.join(RUN_NETNS, name)


def in_thread(fn: Callable[[], T]) -> T:
    """Run fn on a fresh thread and return its result (or raise its exception)."""
    box: list[T] = []
    Beside(lambda: box.append(fn())).join()
    return box[0]


class Beside:
    """fn on a helper thread, beside the caller's own work; join() waits for it and
    raises its exception, if it had one.

    A plain thread (_thread), not a threading.Thread: Thread.start() waits until the new
    thread runs, and on a busy machine that wait (milliseconds: the new thread waits
    for a core, then for the interpreter) was the longest step of a container's
    set-up. Here the caller goes on at once; join() waits on a lock the helper
    releases when it is done. Every Beside is joined by its maker."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self._running = _thread.allocate_lock()
        self._running.acquire()

        def body() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the caller by join()
                self.error = exc
            finally:
                self._running.release()

        try:
            _thread.start_new_thread(body, ())
        except BaseException:
            self._running.release()
            raise

    def join(self, quiet: bool = False) -> None:
        """Wait for it; quiet: the caller is failing already, keep its exception."""
        with self._running:
            pass
        if self.error is not None and not quiet:
            raise self.error


class Kept:
    """Beside's job done by one thread kept for the process's life: a set-up hands its
    helper work to a thread that waits for it, rather than starting a thread (a tenth of
    a millisecond of the caller's own time, more on a busy machine). A job asked while
    the kept thread has one gets a thread of its own (Beside). Only for work that stays
    in the caller's network namespace (the namespace helpers keep their own threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._job: _Job | None = None
        self._started = False

    def _loop(self) -> None:
        while True:
            self._wake.acquire()
            job = self._job
            assert job is not None
            job.execute()
            with self._lock:
                self._job = None
            job.finish()  # (after: the caller's next job finds this thread free)

    def beside(self, fn: Callable[[], None]) -> Beside | _Job:
        """fn on the kept thread (or, if it is busy, on one of its own); join() waits."""
        job = _Job(fn)
        with self._lock:
            busy = self._job is not None
            if not busy:
                if not self._started:
                    _thread.start_new_thread(self._loop, ())
                    self._started = True
                self._job = job
        if busy:
            return Beside(fn)
        self._wake.release()
        return job


class _Job:
    """One job of a Kept thread: join() waits for it and raises its exception."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.error: BaseException | None = None
        self._running = _thread.allocate_lock()
        self._running.acquire()

    def execute(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # handed to the caller by join()
            self.error = exc

    def finish(self) -> None:
        self._running.release()

    def join(self, quiet: bool = False) -> None:
        """Wait for it; quiet: the caller is failing already, keep its exception."""
        with self._running:
            pass
        if self.error is not None and not quiet:
            raise self.error


def _away(enter: Callable[[], None], fn: Callable[[], T]) -> T:
    """fn on a helper thread that enter() has moved into another network namespace, and
    that goes home again before it ends."""

    def body() -> T:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter()
            try:
                return fn()
            finally:
                sandbox.setns(home, sandbox.CLONE_NEWNET)
        finally:
            os.close(home)

    return in_thread(body)


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run fn on a helper thread inside the namespace at path."""

    def enter() -> None:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sandbox.setns(target, sandbox.CLONE_NEWNET)
        finally:
            os.close(target)

    return _away(enter, fn)


def visit(paths: list[str], fn: Callable[[str], T]) -> list[T | None]:
    """fn(path) inside each namespace of paths in turn, on one helper thread that goes
    home at the end (a thread for each would cost its start each time); None for a
    namespace that could not be entered (gone meanwhile). fn's own errors are raised."""

    def body() -> list[T | None]:
        out: list[T | None] = []
        for path in paths:
            try:
                target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                out.append(None)
                continue
            try:
                sandbox.setns(target, sandbox.CLONE_NEWNET)
            except OSError:
                out.append(None)
                continue
            finally:
                os.close(target)
            out.append(fn(path))
        return out

    return _away(lambda: None, body)


def in_new_netns(fn: Callable[[], T]) -> T:
    """Run fn on a helper thread inside a new, empty network namespace of its own, which
    is gone once fn has returned and closed what it opened there."""
    return _away(lambda: sandbox.unshare(sandbox.CLONE_NEWNET), fn)


def open_ipr(path: str) -> IPRoute:
    """An rtnetlink socket inside the namespace at path."""
    return in_netns(path, IPRoute)


def _ensure_run_netns() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so the bind
    mounts of namespaces show in every mount namespace."""
    if not os.path.isdir(RUN_NETNS):
        os.makedirs(RUN_NETNS, exist_ok=True)
        os.chmod(RUN_NETNS, 0o755)  # whatever the daemon's umask (0o077): ip needs to read it
    try:
        sandbox.mount("", RUN_NETNS, "none", sandbox.MS_SHARED | sandbox.MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        sandbox.mount(RUN_NETNS, RUN_NETNS, "none", sandbox.MS_BIND | sandbox.MS_REC)
        sandbox.mount("", RUN_NETNS, "none", sandbox.MS_SHARED | sandbox.MS_REC)


_run_netns_ready = False


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's network namespace; a missing key is an error."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def write_sysctls(sysctls: dict[str, str]) -> dict[str, str]:
    """Set sysctls of the calling thread's network namespace (`net.*` keys, or paths
    under /proc/sys); all or none: on a failure those written are put back, and the
    error says which key and why (InvalidInput). Returns the values they had."""
    from portway.core.runopts import sysctl_path

    before: dict[str, str] = {}
    try:
        for key, value in sysctls.items():
            path = "/proc/sys/" + sysctl_path(key)
            try:
                with open(path) as f:
                    old = f.read().rstrip("\n")
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                raise InvalidInput(f"sysctl {key} does not exist in the container's network "
                                   "namespace", "check its name (ls /proc/sys/net)") from None
            except OSError as exc:
                raise InvalidInput(f"sysctl {key}={value}: {exc.strerror}",
                                   "give a value the kernel takes for it") from None
            before[key] = old
    except BaseException:
        for key, value in before.items():
            try:
                with open("/proc/sys/" + sysctl_path(key), "w") as f:
                    f.write(value)
            except OSError:
                pass
        raise
    return before


def create_netns(name: str, setup: Callable[[IPRoute], None]) -> IPRoute:
    """Create the named namespace /run/netns/NAME and return a socket inside it.

    setup runs inside the new namespace (before the thread leaves it) with its
    socket; if anything fails the namespace is removed again.
    """
    global _run_netns_ready
    if not _run_netns_ready:
        _ensure_run_netns()
        _run_netns_ready = True
    path = netns_path(name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)

    def body() -> IPRoute:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sandbox.unshare(sandbox.CLONE_NEWNET)
            try:
                sandbox.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                              path, "none", sandbox.MS_BIND)
                ipr = IPRoute()
                try:
                    setup(ipr)
                except BaseException:
                    ipr.close()
                    raise
                return ipr
            finally:
                sandbox.setns(home, sandbox.CLONE_NEWNET)
        finally:
            os.close(home)

    try:
        return in_thread(body)
    except BaseException:
        delete_netns(name)
        raise


class Spare:
    """A network namespace made ahead of the container that will have it: held by a
    descriptor and a socket inside it, and by nothing else, so it is gone without a
    trace if the process ends (or close() is called) before it is claimed."""

    def __init__(self, fd: int, ipr: IPRoute) -> None:
        self.fd, self.ipr = fd, ipr

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.ipr.close()


def make_spare() -> Spare:
    """A new, unnamed namespace with a socket inside it (unshare on a helper thread)."""

    def body() -> Spare:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sandbox.unshare(sandbox.CLONE_NEWNET)
            try:
                fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return Spare(fd, IPRoute())
                except BaseException:
                    os.close(fd)
                    raise
            finally:
                sandbox.setns(home, sandbox.CLONE_NEWNET)
        finally:
            os.close(home)

    return in_thread(body)


def claim_spare(spare: Spare, name: str, setup: Callable[[IPRoute], None]) -> IPRoute:
    """Name a spare namespace /run/netns/NAME (a bind mount of its descriptor, as
    create_netns mounts a new one) and return its socket; setup runs with that socket
    (from the calling thread: the socket is inside). If anything fails the name is
    removed again and the spare is gone."""
    global _run_netns_ready
    try:
        if not _run_netns_ready:
            _ensure_run_netns()
            _run_netns_ready = True
        path = netns_path(name)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
        try:
            sandbox.mount(f"/proc/self/fd/{spare.fd}", path, "none", sandbox.MS_BIND)
            setup(spare.ipr)
        except BaseException:
            delete_netns(name)
            raise
    except BaseException:
        spare.close()
        raise
    ipr = spare.ipr
    os.close(spare.fd)
    spare.fd = -1
    return ipr


def remount_netns(name: str, source: str) -> None:
    """Name an existing namespace (e.g. /proc/PID/ns/net) /run/netns/NAME again."""
    path = netns_path(name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o444)
    os.close(fd)
    sandbox.mount(source, path, "none", sandbox.MS_BIND)


def delete_netns(name: str) -> None:
    """Remove the named namespace and its /etc/netns files; missing counts as removed."""
    path = netns_path(name)
    try:
        sandbox.umount(path, sandbox.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    remove_etc_netns(name)


def netns_exists(name: str) -> bool:
    """True if /run/netns/NAME is a mounted namespace (not just a stale file)."""
    path = netns_path(name)
    try:
        return _is_nsfs(path)
    except FileNotFoundError:
        return False


def sandbox_exists(path: str) -> bool:
    """True if path, a container's namespace, is a mounted namespace: portway's are
    /run/netns/NAME, a runtime's may be anywhere (rootless Podman's are under
    $XDG_RUNTIME_DIR/netns)."""
    return _is_nsfs(path)


def _is_nsfs(path: str) -> bool:
    """A mounted namespace lives on nsfs, the device of /proc/self/ns/net; a stale
    file left by a lost mount lives on the filesystem of /run."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(RUN_NETNS))
    except FileNotFoundError:
        return []


def write_etc_netns(name: str, files: dict[str, str]) -> str:
    """Write /etc/netns/NAME/<file> (what `ip netns exec` binds over /etc)."""
    directory = os.path.join(ETC_NETNS, name)
    try:
        _mkdir_readable(directory)
    except FileNotFoundError:
        _mkdir_readable(ETC_NETNS)
        _mkdir_readable(directory)
    # Written in place, not replaced: a running container has these very inodes
    # bind-mounted over its /etc, and must see updates.
    for filename, text in files.items():
        fd = os.open(os.path.join(directory, filename),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            # Readable by all whatever the umask (the daemon's is 0o077): a container's
            # processes may run as another user, and read these as its /etc files.
            os.fchmod(fd, 0o644)
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
    return directory


def _mkdir_readable(path: str) -> None:
    """mkdir 0755, whatever the umask (the daemon's is 0o077); one that exists is kept
    as it is."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o755)


def remove_etc_netns(name: str) -> None:
    directory = os.path.join(ETC_NETNS, name)
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            os.unlink(os.path.join(directory, entry))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass


DOCKER_NETNS = "/var/run/docker/netns"


@dataclass(frozen=True)
class Namespace:
    """A network namespace of the machine, as found: where to open it, a key and a label
    to call it by, and its nsfs inode (the same namespace has one, whatever its names)."""

    path: str
    key: str  # ns:NAME (/run/netns), docker:ID (Docker's), pid:PID (a process's)
    label: str
    inode: int


def key_path(key: str) -> str:
    """The path of a namespace by its key (see Namespace); a container's key is its
    /run/netns name."""
    kind, _, name = key.partition(":")
    if kind == "docker":
        return os.path.join(DOCKER_NETNS, name)
    if kind == "pid":
        return f"/proc/{name}/ns/net"
    return netns_path(name if kind == "ns" else key)


def observe_namespaces() -> list[Namespace]:
    """Every network namespace of the machine, once each (by inode): the named ones
    (/run/netns), Docker's (/var/run/docker/netns), then any process's. Only looked at
    (stat), never opened or entered; a stale file or a process that ended is skipped."""
    try:
        nsfs = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return []
    found: dict[int, Namespace] = {}

    def add(path: str, key: str, label: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if st.st_dev == nsfs and st.st_ino not in found:
            found[st.st_ino] = Namespace(path, key, label, st.st_ino)

    for name in list_netns():
        add(netns_path(name), f"ns:{name}", f"namespace {name}")
    try:
        docker = sorted(os.listdir(DOCKER_NETNS))
    except OSError:
        docker = []
    for name in docker:
        add(os.path.join(DOCKER_NETNS, name), f"docker:{name}", f"Docker's namespace {name}")
    for entry in sorted((e for e in os.listdir("/proc") if e.isdigit()), key=int):
        add(f"/proc/{entry}/ns/net", f"pid:{entry}", f"namespace of pid {entry}")
    return list(found.values())


def namespace_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def nsid_of(path: str, dumper: Dumper) -> int | None:
    """The id the calling thread's namespace (dumper's) gives the namespace at path, or
    None if it gives none. Only asked (RTM_GETNSID): an id is never assigned by
    asking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return dumper.nsid(fd)
    except OSError:  # a namespace that went meanwhile: none
        return None
    finally:
        os.close(fd)


def resolve_nsids(wanted: set[int], found: list[Namespace]) -> dict[int, Namespace]:
    """The namespaces (of found) that the calling thread's namespace numbers with the
    nsids wanted. Over a plain netlink socket: pyroute2's request cost a millisecond
    each, a second for a host with a thousand containers."""
    from portway.kernel.rtnl import Dumper  # (rtnl imports links, which imports this)

    out: dict[int, Namespace] = {}
    if not wanted:
        return out
    with Dumper() as dumper:
        for ns in found:
            if len(out) == len(wanted):
                break
            nsid = nsid_of(ns.path, dumper)
            if nsid is not None and nsid in wanted:
                out[nsid] = ns
    return out
