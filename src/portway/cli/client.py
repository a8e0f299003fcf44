"""The CLI's side of the daemon API: connect, start the daemon on first use, call.

Standard library only: the CLI must start in milliseconds, so it never
imports the engine (or pyroute2), nor `json` (which imports `re`): requests are
encoded by encode_json below and replies come back in marshal's format, which
the interpreter reads without importing anything (the daemon, a trusted peer
on a root-only socket, is asked for it with "reply": "marshal").
"""

import _socket  # the C module: `socket` would import enum and cost milliseconds
import errno
import marshal
import posix  # not os: see portway.cli.main
import sys
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block

if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "portwayd.sock"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL
DB_NAME = "portway.db"
START_TIMEOUT = 30.0
STALE_TIMEOUT = 20.0  # how long a daemon whose host namespace is gone may take to leave

# st_mode's bits, spelled out: the `stat` module would be one more import on every call.
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_S_IFLNK = 0o120000
_S_IFSOCK = 0o140000
_S_ISVTX = 0o1000
_GROUP_OTHER_WRITE = 0o022
_MAX_SYMLINKS = 40  # the kernel's own limit for one path (ELOOP)


def encode_json(value: "Any") -> str:
    """JSON text of None, bools, numbers, strings, lists, tuples and dicts with string
    keys: what a request holds."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or abs(value) == float("inf"):
            raise ValueError("NaN and infinity have no JSON form")
        return repr(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_string(str(k))}:{encode_json(v)}"
                              for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _json_string(text: str) -> str:
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    if not text.isascii() or any(c < " " for c in text):
        # Control characters and lone surrogates (argv bytes that are not UTF-8) as
        # JSON's u-escapes; everything else as it is (the request is sent as UTF-8).
        text = "".join(f"\\u{ord(c):04x}" if c < " " or "\ud800" <= c <= "\udfff" else c
                       for c in text)
    return f'"{text}"'


class ClientError(Exception):
    def __init__(self, message: str, hint: str = "", exit_code: int = 1,
                 traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.traceback = traceback


def absolute(path: str) -> str:
    """os.path.abspath's answer, without importing os."""
    if not path.startswith("/"):
        path = posix.getcwd() + "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def _untrusted(message: str, fix: str) -> ClientError:
    return ClientError(message, f"portway trusts what it finds there: {fix}", 2)


def check_state_dir(state_dir: str) -> None:
    """Refuse (ClientError, exit code 2) a state dir that anyone but the caller could
    have put things in: the CLI obeys whatever answers on its socket (a fake daemon
    could answer `run` with a program and PATH of its choice), and the daemon trusts
    its database and files.

    state_dir is absolute and normalized (absolute()). What is checked, with lstat and
    each symbolic link followed by hand, as the kernel follows it: every directory on
    the way from / belongs to root or the caller and no one else can write to it,
    unless it is sticky (in /tmp, others cannot replace what they do not own); every
    symbolic link on the way belongs to root or the caller (its directory is checked
    as one on the way); the state dir itself is a directory of the caller's that no
    one else can write to; its socket and database, where they exist, are a socket and
    a regular file of the caller's that no one else can write to. So no one else can
    change what is checked between the check and its use. A state dir that does not
    exist yet passes: check again once it is made (in a sticky directory, someone
    else may have made it first). A few lstat calls, some microseconds: cheap enough
    for every CLI call.
    """
    euid = posix.geteuid()
    try:
        resolved = _walk_state_dir(state_dir, euid)
        if resolved is None:
            return
        for name, kind, what in ((SOCKET_NAME, _S_IFSOCK, "socket"),
                                 (DB_NAME, _S_IFREG, "regular file")):
            shown = f"{state_dir.rstrip('/')}/{name}"
            try:
                st = posix.lstat(f"{resolved.rstrip('/')}/{name}")
            except FileNotFoundError:
                continue
            label = "portwayd's socket" if kind == _S_IFSOCK else "the database"
            if st.st_mode & _S_IFMT != kind:
                raise _untrusted(f"{label} {shown} is not a {what}",
                                 "remove it (or use another --state-dir)")
            if st.st_uid != euid:
                raise _untrusted(f"{label} {shown} belongs to uid {st.st_uid}, not to you "
                                 f"(uid {euid})",
                                 "remove it, or chown it if it is yours (or use another "
                                 "--state-dir)")
            if st.st_mode & _GROUP_OTHER_WRITE:
                raise _untrusted(f"{label} {shown} is writable by other users",
                                 f"chmod 600 {shown} (or use another --state-dir)")
    except OSError as exc:
        raise ClientError(f"cannot check the state dir {state_dir}: {exc.strerror}",
                          "give another --state-dir", 2) from None


def _walk_state_dir(state_dir: str, euid: int) -> str | None:
    """Check the way to state_dir and state_dir itself (see check_state_dir); its
    path with every symbolic link resolved, or None if it does not exist yet."""
    pending = [part for part in reversed(state_dir.split("/")) if part]  # next: last
    current = ""  # the directory reached so far, its links resolved ("" is /)
    _check_on_the_way(state_dir, "/", posix.lstat("/"), euid, last=not pending)
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            current = current.rsplit("/", 1)[0]
            continue
        path = f"{current}/{name}"
        try:
            st = posix.lstat(path)
        except FileNotFoundError:
            return None
        if st.st_mode & _S_IFMT == _S_IFLNK:
            links += 1
            if links > _MAX_SYMLINKS:
                raise ClientError(f"state dir {state_dir}: too many levels of symbolic links",
                                  "give another --state-dir", 2)
            if st.st_uid not in (0, euid) and not _root_unmapped(st.st_uid):
                raise _untrusted(f"state dir {state_dir} goes through the symbolic link "
                                 f"{path}, which belongs to uid {st.st_uid}",
                                 "give a path that does not (--state-dir)")
            target = posix.readlink(path)
            if target.startswith("/"):
                current = ""
            pending.extend(part for part in reversed(target.split("/")) if part)
            continue
        _check_on_the_way(state_dir, path, st, euid, last=not pending)
        current = path
    return current or "/"


def _check_on_the_way(state_dir: str, path: str, st: "posix.stat_result", euid: int,
                      last: bool) -> None:
    """One directory of the way to the state dir (the state dir itself if last)."""
    if st.st_mode & _S_IFMT != _S_IFDIR:
        raise ClientError(f"state dir {state_dir}: {path} is not a directory",
                          "give another --state-dir", 2)
    if last:
        if st.st_uid != euid:
            raise _untrusted(f"state dir {state_dir} belongs to uid {st.st_uid}, not to you "
                             f"(uid {euid})", "use a state dir of your own (--state-dir)")
        if st.st_mode & _GROUP_OTHER_WRITE:
            raise _untrusted(f"state dir {state_dir} is writable by other users",
                             f"chmod 700 {state_dir} (or use another --state-dir)")
        return
    if st.st_uid not in (0, euid) and not _root_unmapped(st.st_uid):
        raise _untrusted(f"state dir {state_dir} is inside {path}, which belongs to uid "
                         f"{st.st_uid}", "its owner could replace the state dir: use "
                         "another --state-dir")
    if st.st_mode & _GROUP_OTHER_WRITE and not st.st_mode & _S_ISVTX:
        raise _untrusted(f"state dir {state_dir} is inside {path}, which other users can "
                         "write to", f"they could replace the state dir: chmod go-w {path} "
                         "(or use another --state-dir)")


def _root_unmapped(uid: int) -> bool:
    """uid is the overflow uid of a user namespace that does not map the machine's root:
    rootless Podman's, where portway-netavark runs as that namespace's root. The
    directories root owns (/, /run) show there as the overflow uid, so on the way to the
    state dir it counts as root's. (Another user's directory shows as that uid too, and
    there is no telling them apart from inside: the state dir itself, its socket and its
    database must still be the caller's.) Read only when an owner is neither root nor
    the caller."""
    try:
        with open("/proc/sys/kernel/overflowuid") as f:
            overflow = int(f.read())
        with open("/proc/self/uid_map") as f:
            outside = [line.split()[1] for line in f if line.strip()]
    except (OSError, ValueError, IndexError):
        return False
    return uid == overflow and "0" not in outside


class Client:
    def __init__(self, state_dir: str, host_netns: str | None) -> None:
        self.state_dir = absolute(state_dir)
        self.host_netns = host_netns
        base = self.state_dir.rstrip("/")  # "/" alone becomes ""
        self.sock_path = f"{base}/{SOCKET_NAME}"
        self.log_path = f"{base}/portwayd.log"
        # Set by portway-netavark for rootless Podman: the daemon must live in the
        # caller's network namespace (sent with each request as "netns": a daemon in
        # another one answers that it is stale and leaves), and is started with these.
        self.netns = ""
        self.daemon_args: tuple[str, ...] = ()

    def _connect(self) -> _socket.socket | None:
        # Before every connection: whatever answers there is obeyed.
        check_state_dir(self.state_dir)
        size = len(self.sock_path.encode("utf-8", "surrogateescape"))
        if size > MAX_SOCKET_PATH:
            raise ClientError(f"state dir {self.state_dir} is too long a path: its socket "
                              f"would need {size} bytes, the kernel allows "
                              f"{MAX_SOCKET_PATH}", "use a shorter --state-dir")
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.sock_path)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                return None
            raise ClientError(f"cannot reach portwayd at {self.sock_path}: {exc.strerror}",
                              "check the state dir's permissions") from None
        return sock

    def _ask(self, request: "dict[str, Any]") -> "dict[str, Any] | None":
        """The reply of the daemon that serves the state dir, or None if none does. A
        daemon whose host namespace was deleted answers that it is stale, without doing
        anything, and leaves: it counts as none once it has gone."""
        sock = self._connect()
        if sock is None:
            return None
        if self.netns:
            request = {**request, "netns": self.netns}
        try:
            reply = self._exchange(sock, request)
        except (ConnectionResetError, BrokenPipeError):
            # It closed its socket on its way out (a rootless Podman user's daemon leaves
            # with their last container): once it has, as if none ran.
            self._wait_closed()
            return None
        if reply.get("stale"):
            self._wait_gone(int(reply.get("pid") or 0), str(reply.get("error")))
            return None
        return reply

    def _wait_closed(self) -> None:
        deadline = time.monotonic() + STALE_TIMEOUT
        while (sock := self._connect()) is not None:
            sock.close()
            if time.monotonic() > deadline:
                raise ClientError("portwayd closes connections without answering",
                                  f"see {self.log_path}")
            time.sleep(0.01)

    @staticmethod
    def _wait_gone(pid: int, why: str) -> None:
        deadline = time.monotonic() + STALE_TIMEOUT
        while pid and _alive(pid):
            if time.monotonic() > deadline:
                raise ClientError(f"{why}, and it has not left in {STALE_TIMEOUT:.0f} s",
                                  f"stop it: kill {pid}")
            time.sleep(0.01)

    def _exchange(self, sock: _socket.socket,
                  request: "dict[str, Any]") -> "dict[str, Any]":
        try:
            sock.sendall(encode_json({**request, "reply": "marshal"}).encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                chunks.append(data)
        finally:
            sock.close()
        raw = b"".join(chunks)
        if not raw:
            raise ClientError("portwayd closed the connection without answering",
                              f"see {self.log_path}")
        try:
            reply: dict[str, Any] = marshal.loads(raw)
        except (ValueError, EOFError, TypeError):
            raise ClientError("portwayd's answer is unreadable (is it an older version?)",
                              "restart it: portway daemon stop") from None
        return reply

    def running(self) -> "dict[str, Any] | None":
        reply = self._ask({"op": "ping"})
        return None if reply is None else reply.get("result")

    def start_daemon(self) -> None:
        import os
        import subprocess

        if self.host_netns and not os.path.exists(f"/run/netns/{self.host_netns}"):
            raise ClientError(f"host network namespace {self.host_netns!r} not found",
                              f"create it with 'ip netns add {self.host_netns}'", 3)
        check_state_dir(self.state_dir)
        # Missing parents 0755, whatever the caller's umask (with 0 they would be writable
        # by all, and the state dir refused); the state dir itself 0700.
        mask = os.umask(0o022)
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        finally:
            os.umask(mask)
        # Again, now that it exists: it may have been there already, or made by another.
        check_state_dir(self.state_dir)
        log_path = self.log_path
        # Without site (-S: its scan of site-packages and their .pth files costs the
        # daemon's start tens of milliseconds), on this process's own module path,
        # given in the command, not in PYTHONPATH, which containers would inherit.
        path = [p for p in sys.path if p]
        boot = (f"import sys; sys.path[:0] = {path!r}; "
                "from portway.daemon.main import main; main()")
        cmd = [sys.executable, "-S", "-c", boot, "--state-dir", self.state_dir]
        if self.host_netns:
            cmd += ["--host-netns", self.host_netns]
        cmd += self.daemon_args
        env = dict(os.environ)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        with open(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            sock = self._connect()
            if sock is not None:
                sock.close()
                return
            code = proc.poll()
            if code is not None and code != 0:
                raise ClientError(f"portwayd failed to start: {self._last_log_line(log_path)}",
                                  f"see {log_path}", code)
            if code == 0 and self._connect() is None:
                # Another daemon holds the state dir and is still starting: keep waiting.
                pass
            time.sleep(0.005)
        raise ClientError("portwayd did not start in time", f"see {log_path}")

    @staticmethod
    def _last_log_line(path: str) -> str:
        try:
            with open(path, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except OSError:
            return "(no log)"
        return lines[-1].removeprefix("portwayd: ") if lines else "(no log)"

    def call(self, op: str, **args: "Any") -> "Any":
        request = {"op": op, "args": args}
        reply = self._ask(request)
        if reply is None:
            self.start_daemon()
            reply = self._ask(request)
            if reply is None:
                raise ClientError("portwayd is not answering",
                                  f"see {self.log_path}")
        if not reply.get("ok"):
            raise ClientError(str(reply.get("error")), str(reply.get("hint") or ""),
                              int(reply.get("exit_code") or 1), str(reply.get("traceback", "")))
        return reply.get("result")

    def observe(self, op: str, **args: "Any") -> "Any":
        """A read-only call (trace, show): portwayd's answer if it runs; if not, and
        portway has no network and no container here, a short-lived observer's, so that
        looking changes nothing (starting portwayd turns on forwarding); else portwayd
        is started as for any call (see portway.engine.observer)."""
        request = {"op": op, "args": args}
        reply = self._ask(request)
        if reply is None:
            reply = self._observe_once(request)
            if reply.get("need_daemon"):
                return self.call(op, **args)
        if not reply.get("ok"):
            raise ClientError(str(reply.get("error")), str(reply.get("hint") or ""),
                              int(reply.get("exit_code") or 1), str(reply.get("traceback", "")))
        return reply.get("result")

    def _observe_once(self, request: "dict[str, Any]") -> "dict[str, Any]":
        import subprocess

        if self.host_netns and not _exists(f"/run/netns/{self.host_netns}"):
            raise ClientError(f"host network namespace {self.host_netns!r} not found",
                              f"create it with 'ip netns add {self.host_netns}'", 3)
        check_state_dir(self.state_dir)
        cmd = [sys.executable, "-m", "portway.engine.observer", "--state-dir",
               self.state_dir]
        if self.host_netns:
            cmd += ["--host-netns", self.host_netns]
        cp = subprocess.run(cmd, input=encode_json(request).encode(), capture_output=True)
        try:
            reply: dict[str, Any] = marshal.loads(cp.stdout)
        except (ValueError, EOFError, TypeError):
            lines = cp.stderr.decode(errors="replace").strip().splitlines()
            raise ClientError(f"portway's observer failed: "
                              f"{lines[-1] if lines else f'exit status {cp.returncode}'}",
                              "run again with --debug", 70,
                              cp.stderr.decode(errors="replace")) from None
        return reply

    def stop_daemon(self, timeout: float = 10.0) -> int | None:
        """Ask the daemon to exit and wait until it has; returns its pid, None if none ran."""
        sock = self._connect()
        if sock is None:
            return None
        reply = self._exchange(sock, {"op": "shutdown"})
        pid = int(reply.get("result", {}).get("pid", 0))
        deadline = time.monotonic() + timeout
        # (A daemon whose parent has not reaped it yet has left: _alive.)
        while pid and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.01)
        return pid


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a daemon that has left but whose parent
    has not reaped it yet has left)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True
