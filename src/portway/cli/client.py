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
START_TIMEOUT = 30.0


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


class Client:
    def __init__(self, state_dir: str, host_netns: str | None) -> None:
        self.state_dir = absolute(state_dir)
        self.host_netns = host_netns
        base = self.state_dir.rstrip("/")  # "/" alone becomes ""
        self.sock_path = f"{base}/{SOCKET_NAME}"
        self.log_path = f"{base}/portwayd.log"

    def _connect(self) -> _socket.socket | None:
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
        sock = self._connect()
        if sock is None:
            return None
        reply = self._exchange(sock, {"op": "ping"})
        return reply.get("result")

    def start_daemon(self) -> None:
        import os
        import subprocess

        if self.host_netns and not os.path.exists(f"/run/netns/{self.host_netns}"):
            raise ClientError(f"host network namespace {self.host_netns!r} not found",
                              f"create it with 'ip netns add {self.host_netns}'", 3)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        log_path = self.log_path
        cmd = [sys.executable, "-m", "portway.daemon.main", "--state-dir", self.state_dir]
        if self.host_netns:
            cmd += ["--host-netns", self.host_netns]
        env = dict(os.environ)
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
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
        sock = self._connect()
        if sock is None:
            self.start_daemon()
            sock = self._connect()
            if sock is None:
                raise ClientError("portwayd is not answering",
                                  f"see {self.log_path}")
        reply = self._exchange(sock, {"op": op, "args": args})
        if not reply.get("ok"):
            raise ClientError(str(reply.get("error")), str(reply.get("hint") or ""),
                              int(reply.get("exit_code") or 1), str(reply.get("traceback", "")))
        return reply.get("result")

    def stop_daemon(self, timeout: float = 10.0) -> int | None:
        """Ask the daemon to exit and wait until it has; returns its pid, None if none ran."""
        import os

        sock = self._connect()
        if sock is None:
            return None
        reply = self._exchange(sock, {"op": "shutdown"})
        pid = int(reply.get("result", {}).get("pid", 0))
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        return pid
