"""portwayd: one engine per host namespace and state dir.

Requests are one JSON object per connection, {"op": NAME, "args": {...}};
replies are {"ok": true, "result": ...} or {"ok": false, "error": ..., "hint":
..., "exit_code": N}, in JSON, or in marshal's format when the request says
"reply": "marshal" (portway's CLI does: reading it needs no import). It can be
killed at any moment: on start it reconciles the store with the kernel and
re-adopts the running containers.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import marshal
import os
import signal
import socketserver
import sys
import threading
import traceback
from typing import Any

from portway.kernel import sandbox

SOCKET_NAME = "portwayd.sock"
LOCK_NAME = "portwayd.lock"

# The operations the daemon serves: the Engine's public methods, by name.
OPS = (
    "network_create", "network_ls", "network_inspect", "network_rm", "network_prune",
    "network_connect", "network_disconnect", "run", "started", "exited", "exec_info", "ps",
    "inspect", "logs", "stop", "rm", "gc", "port", "dns_info", "show",
    "trace", "podman_setup", "podman_teardown", "podman_create", "podman_update",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        line = self.rfile.readline(16 * 1024 * 1024)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            request = {}
            reply: dict[str, Any] = {"ok": False, "error": "malformed request",
                                     "exit_code": 2}
        else:
            reply = self.server.dispatch(request)
        encode = marshal.dumps if request.get("reply") == "marshal" else \
            (lambda r: json.dumps(r).encode() + b"\n")
        try:
            data = encode(reply)
        except (TypeError, ValueError) as exc:  # a result that has no such form: a bug
            log(f"portwayd: cannot encode the reply to {request.get('op')!r}: {exc}")
            data = encode({"ok": False, "error": f"internal error: unencodable reply ({exc})",
                           "exit_code": 70})
        try:
            self.wfile.write(data)
        except BrokenPipeError:
            pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, engine: Any) -> None:
        self.engine = engine
        super().__init__(path, Handler)

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        from portway.errors import PortwayError

        op = request.get("op")
        args = request.get("args") or {}
        if op == "ping":
            return {"ok": True, "result": {"pid": os.getpid(),
                                           "host_netns": self.engine.host_netns or "",
                                           "state_dir": self.engine.state_dir}}
        if op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
            return {"ok": True, "result": {"pid": os.getpid()}}
        if op not in OPS or not isinstance(args, dict):
            return {"ok": False, "error": f"unknown operation {op!r}", "exit_code": 2}
        try:
            return {"ok": True, "result": getattr(self.engine, op)(**args)}
        except PortwayError as exc:
            return {"ok": False, **exc.to_dict()}
        except TypeError as exc:
            return {"ok": False, "error": f"bad arguments for {op}: {exc}", "exit_code": 2}
        except Exception as exc:
            text = traceback.format_exc()
            log(text)
            return {"ok": False, "error": f"internal error in {op}: {exc}", "exit_code": 70,
                    "hint": "see the daemon log in the state dir", "traceback": text}


def serve(state_dir: str, host_netns: str | None) -> int:
    if os.geteuid() != 0:
        log("portwayd: must run as root (it creates network namespaces)")
        return 1
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    lock = open(os.path.join(state_dir, LOCK_NAME), "a")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("portwayd: another daemon already serves this state dir")
        return 0
    if host_netns:
        path = f"/run/netns/{host_netns}"
        try:
            # The main thread, before any other thread exists: the whole process
            # (and every thread it starts) then lives in the host namespace.
            sandbox.enter_netns(path)
        except OSError as exc:
            log(f"portwayd: cannot enter host namespace {host_netns}: {exc}")
            return 1
    from portway.engine import Engine
    from portway.errors import PortwayError

    try:
        engine = Engine(state_dir, host_netns)
    except PortwayError as exc:
        log(f"portwayd: {exc.line()}")
        return exc.exit_code
    adopted = engine.adopt()
    for line in engine.gc():
        log(f"portwayd: {line}")
    sock = os.path.join(state_dir, SOCKET_NAME)
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    server = Server(sock, engine)
    os.chmod(sock, 0o600)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log(f"portwayd: serving {sock} (pid {os.getpid()}, adopted {adopted})")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        engine.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="portwayd")
    parser.add_argument("--state-dir", default=os.environ.get("PORTWAY_STATE_DIR",
                                                              "/var/lib/portway"))
    parser.add_argument("--host-netns", default=os.environ.get("PORTWAY_HOST_NETNS") or None)
    args = parser.parse_args(argv)
    sys.exit(serve(os.path.abspath(args.state_dir), args.host_netns))


if __name__ == "__main__":
    main()
