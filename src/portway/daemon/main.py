"""portwayd: one engine per host namespace and state dir.

Requests are one JSON object per connection, {"op": NAME, "args": {...}};
replies are {"ok": true, "result": ...} or {"ok": false, "error": ..., "hint":
..., "exit_code": N}, in JSON, or in marshal's format when the request says
"reply": "marshal" (portway's CLI does: reading it needs no import). It can be
killed at any moment: on start it re-adopts the running containers (and records
the ones that ended meanwhile), reconciles the store with the kernel, and starts
again the containers whose restart policy says so.

It trusts its state dir, and its clients trust what answers on the socket there:
it runs with umask 0o077 (the state dir 0700, its files 0600) and refuses to start
on a state dir that someone else could have put things in (the same check as the
CLI's, portway.cli.client.check_state_dir, and nothing in it may belong to anyone
else).

A daemon lives in the host namespace it serves. If that namespace is deleted (or
its name given to a new one), the daemon leaves, and stops its DNS server: both
would keep the deleted namespace alive and pass for the new one's. It looks every
STALE_CHECK_INTERVAL seconds, and before serving each request (a request it finds
stale is answered {"ok": false, "stale": true, "pid": ...} without being served,
so the CLI waits for it to leave and starts a new daemon).

For rootless Podman (--rootless), its host namespace is Podman's rootless network
namespace, which has no name: Podman makes it for its first running container and
removes it after its last. There the daemon leaves once no container is left (as
aardvark-dns does), or once the namespace's mount (--host-netns-path) is gone, and a
request sent from another network namespace (portway-netavark
sends its own, "netns": "DEV:INODE") finds it stale: it serves a rootless namespace that
Podman has since replaced.
"""

from __future__ import annotations

import fcntl
import json
import marshal
import os
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
import traceback
from typing import Any

from portway.cli.client import ClientError, check_state_dir
from portway.kernel import sandbox

SOCKET_NAME = "portwayd.sock"
LOCK_NAME = "portwayd.lock"
STALE_CHECK_INTERVAL = 1.0
# How long a new daemon waits for the state dir's lock while its holder is on its way
# out (a daemon whose host namespace was deleted, or one being stopped).
LOCK_WAIT = 20.0

# The operations the daemon serves: the Engine's public methods, by name.
OPS = (
    "network_create", "network_ls", "network_inspect", "network_rm", "network_prune",
    "network_connect", "network_disconnect", "run", "started", "exited", "exec_info", "ps",
    "inspect", "logs", "start", "stop", "restart", "kill", "wait", "rm", "gc", "port",
    "dns_info", "show",
    "trace", "audit", "podman_setup", "podman_teardown", "podman_create", "podman_update",
    "podman_firewall_reload", "cluster_status", "overlay_not_made",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        line = self.rfile.readline(16 * 1024 * 1024)
        if not line:
            return  # closed without a request: Server.shutdown's wake-up call
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
            self.wfile.flush()
        except BrokenPipeError:
            pass
        finally:
            self.server.replied()
            if request.get("op") == "shutdown" and reply.get("ok"):
                # Only now: a daemon that left before this reply was written made
                # `portway daemon stop` fail ("closed the connection without answering").
                threading.Thread(target=self.server.shutdown, daemon=True).start()


class HostNamespace:
    """The network namespace the daemon lives in and serves, and whether its name
    still leads to it."""

    def __init__(self, name: str | None, path: str = "") -> None:
        self.name = name or path or None
        self.path = f"/run/netns/{name}" if name else path
        own = os.stat("/proc/self/ns/net")
        self.identity = (own.st_dev, own.st_ino)
        self.key = f"{own.st_dev}:{own.st_ino}"  # as portway-netavark sends it

    def gone(self) -> bool:
        """The named namespace was deleted, or the name now leads to another one (or to
        a plain file: the namespace's mount is gone). The root namespace never goes."""
        if not self.path:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell: keep serving
        return (st.st_dev, st.st_ino) != self.identity


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, engine: Any, host: HostNamespace | None = None,
                 leave_when_empty: bool = False) -> None:
        self.engine = engine
        self.host = host or HostNamespace(None)
        self.leave_when_empty = leave_when_empty
        self.stale = False
        self.why = ""
        self._after_reply = False
        self._stale_lock = threading.Lock()
        super().__init__(path, Handler)

    def shutdown(self) -> None:
        """Stop serve_forever now, not at its next poll (up to half a second later): a
        rootless user's next container starts a new daemon, which waits for this one's
        lock. A connection wakes the loop, which then sees the request to stop."""
        stopper = threading.Thread(target=super().shutdown, daemon=True)
        stopper.start()
        # (Not for ever: a loop that never ran, or a socket already closed, is waited for
        # as socketserver waits, without knocking.)
        deadline = time.monotonic() + 2
        while stopper.is_alive() and time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.1)
                    s.connect(self.server_address)
            except OSError:
                pass
            stopper.join(0.01)
        stopper.join()

    def leave(self, why: str, later: bool = False) -> None:
        """Serve no more (each request from now on is answered stale) and shut down: at
        once, or, if later, once the request being served has its reply."""
        with self._stale_lock:
            if self.stale:
                return
            self.stale, self.why, self._after_reply = True, why, later
        log(f"portwayd: {why}: leaving")
        if not later:
            threading.Thread(target=self.shutdown, daemon=True).start()

    def replied(self) -> None:
        """The reply to a request is sent: a shutdown that waited for it starts."""
        with self._stale_lock:
            start, self._after_reply = self._after_reply, False
        if start:
            threading.Thread(target=self.shutdown, daemon=True).start()

    def check_host(self) -> bool:
        """True once the host namespace is gone; whoever sees it first starts the
        shutdown."""
        if self.stale or not self.host.gone():
            return self.stale
        self.leave(f"host namespace {self.host.name} was deleted (or its name now leads "
                   "to another namespace)")
        return True

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        from portway.errors import PortwayError

        op = request.get("op")
        args = request.get("args") or {}
        netns = request.get("netns")
        if netns and netns != self.host.key and not self.stale:
            self.leave(f"asked from network namespace {netns}, while it serves {self.host.key}"
                       " (rootless Podman has made a new one)")
        if op != "shutdown" and self.check_host():
            # Served here, it would act in the deleted namespace: nothing is done, and
            # the client starts a new daemon once this one has left.
            return {"ok": False, "stale": True, "pid": os.getpid(), "exit_code": 1,
                    "error": f"portwayd (pid {os.getpid()}) is leaving: {self.why}",
                    "hint": "run the command again"}
        if op == "ping":
            return {"ok": True, "result": {"pid": os.getpid(),
                                           "host_netns": self.engine.host_netns or "",
                                           "state_dir": self.engine.state_dir}}
        if op == "shutdown":  # (the handler shuts down once this reply is written)
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
        finally:
            if self.leave_when_empty and op.startswith("podman_") and self._empty():
                # Rootless: Podman removes its network namespace after its last
                # container; the daemon (and its DNS server) would keep it alive.
                self.leave("no container left in the rootless network namespace",
                           later=True)

    def _empty(self) -> bool:
        try:
            return bool(self.engine.empty())
        except Exception as exc:  # cannot tell: keep serving
            log(f"portwayd: cannot count the containers: {exc}")
            return False


def serve(state_dir: str, host_netns: str | None, rootless: bool = False,
          netns_path: str = "", cluster_store: str | None = None,
          advertise_address: str | None = None, cluster_ttl: str | None = None) -> int:
    if os.geteuid() != 0:
        log("portwayd: must run as root (it creates network namespaces)")
        return 1
    # Before anything is created: the state dir 0700, its files 0600 (the database, its
    # WAL, containers' output, the DNS server's files), whoever started the daemon.
    os.umask(0o077)
    try:
        secure_state_dir(state_dir)
    except ClientError as exc:
        log(f"portwayd: {exc.message}; {exc.hint}")
        return exc.exit_code
    lock = open(os.path.join(state_dir, LOCK_NAME), "a")  # noqa: SIM115 - held for life
    sock = os.path.join(state_dir, SOCKET_NAME)
    if not take_lock(lock, sock):
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
    host = HostNamespace(host_netns, netns_path)
    from portway.kernel import lean_import

    lean_import.lean()  # before the engine imports pyroute2: the daemon starts sooner
    from portway.engine import Engine
    from portway.errors import PortwayError

    try:
        engine = Engine(state_dir, host_netns, rootless=rootless,
                        cluster_store=cluster_store, advertise_address=advertise_address,
                        cluster_ttl=cluster_ttl)
    except PortwayError as exc:
        log(f"portwayd: {exc.line()}")
        return exc.exit_code
    # The overlay networks of the cluster, made here before gc looks at the networks.
    engine.start_cluster()
    from portway.engine.context import fault_point

    fault_point("daemon.cluster")  # (tests: what the cluster's start left, before serving)
    stale_dns = engine.dns.stop_stale()
    if stale_dns:
        log(f"portwayd: stopped the DNS server of another namespace (pid {stale_dns}), "
            "left by an earlier daemon")
    adopted, ended = engine.adopt()
    for line in ended:
        log(f"portwayd: {line}")
    for line in engine.gc():
        log(f"portwayd: {line}")
    # With the networks back (after a reboot gc has just made them): the containers the
    # restart policies bring back when the daemon starts, as dockerd does.
    for line in engine.resume():
        log(f"portwayd: {line}")
    if rootless and not engine.dns.running():
        # Started for a rootless user's container, whose setup (the request waiting)
        # makes a network that needs a DNS server: it loads while the network is made.
        # (A daemon leaving as a rootless one does stops it.)
        engine.dns.start(wait=False)
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    server = Server(sock, engine, host, leave_when_empty=rootless)
    os.chmod(sock, 0o600)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    stop_watching = threading.Event()
    threading.Thread(target=watch_host, args=(server, stop_watching), daemon=True,
                     name="portwayd-host-watch").start()
    log(f"portwayd: serving {sock} (pid {os.getpid()}, adopted {adopted})")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop_watching.set()
        server.server_close()
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        if server.stale:
            # It lives in the deleted namespace too: it would keep it alive, answer
            # nobody, and pass (by STATE/dns.pid) for the new namespace's server.
            try:
                engine.dns.stop()
            except Exception as exc:  # leaving anyway: the next daemon stops it
                log(f"portwayd: cannot stop the DNS server: {exc}")
        engine.close()
    return 0


def watch_host(server: Server, stop: threading.Event) -> None:
    """Notice a deleted host namespace while no request comes."""
    while not stop.wait(STALE_CHECK_INTERVAL):
        if server.check_host():
            return


def secure_state_dir(state_dir: str) -> None:
    """Refuse a state dir someone else could have put things in (ClientError), create
    it if need be, and take away from group and others what they may still read there
    (the state dir of an earlier version: 0755, files 0644)."""
    check_state_dir(state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    check_state_dir(state_dir)  # it may have been made by another meanwhile
    euid = os.geteuid()
    tightened = 0
    for top, dirs, files in os.walk(state_dir):  # symbolic links are not followed
        # Each directory is a top in its turn; a link to one is not, so it is seen here.
        links = [os.path.join(top, name) for name in dirs
                 if os.path.islink(os.path.join(top, name))]
        for path in (top, *(os.path.join(top, name) for name in files), *links):
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # a file that went meanwhile (a .dns. temporary)
                continue
            if st.st_uid != euid:
                # The state dir was open to others once: this may be theirs, planted.
                raise ClientError(f"{path} in the state dir belongs to uid {st.st_uid}, "
                                  f"not to portwayd (uid {euid})",
                                  "portway trusts what it finds there: remove it (or use "
                                  "another --state-dir)", 2)
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077 and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                os.chmod(path, mode & 0o700)
                tightened += 1
    if tightened:
        log(f"portwayd: took away group and other users' access to {tightened} entries of "
            f"the state dir {state_dir} (now 0700 and 0600)")


def take_lock(lock: Any, sock_path: str) -> bool:
    """Hold the state dir's lock; False if another daemon serves the state dir. A holder
    on its way out (stopped, or serving a deleted namespace) is waited for."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if _serving(sock_path) or time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _serving(sock_path: str) -> bool:
    """A daemon answers on the socket, and is not one on its way out."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(sock_path)
            s.sendall(b'{"op": "ping"}\n')
            data = b"".join(iter(lambda: s.recv(1 << 16), b""))
        reply = json.loads(data)
    except (OSError, ValueError):
        return False
    return isinstance(reply, dict) and reply.get("ok") is True


# The options as the client starts the daemon, read without argparse (importing it costs
# every daemon start some 20-30 ms): name -> takes a value.
QUICK_OPTIONS = {"--state-dir": True, "--host-netns": True, "--rootless": False,
                 "--host-netns-path": True, "--cluster-store": True,
                 "--advertise-address": True, "--cluster-ttl": True}


def quick_args(argv: list[str]) -> dict[str, Any] | None:
    """argv as `--name value` and `--rootless` only, by name (dashes as underscores);
    None for anything else (--help, a mistake, --name=value): argparse reads those."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        takes = QUICK_OPTIONS.get(argv[i])
        if takes is None or (takes and i + 1 >= len(argv)):
            return None
        out[argv[i][2:].replace("-", "_")] = argv[i + 1] if takes else True
        i += 2 if takes else 1
    return out


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    quick = quick_args(given)
    if quick is not None:
        env = os.environ.get
        sys.exit(serve(os.path.abspath(quick.get("state_dir") or env(
            "PORTWAY_STATE_DIR", "/var/lib/portway")),
            quick.get("host_netns") or env("PORTWAY_HOST_NETNS") or None,
            bool(quick.get("rootless")), quick.get("host_netns_path") or "",
            quick.get("cluster_store") or env("PORTWAY_CLUSTER_STORE") or None,
            quick.get("advertise_address") or env("PORTWAY_ADVERTISE_ADDRESS") or None,
            quick.get("cluster_ttl") or env("PORTWAY_CLUSTER_TTL") or None))
    import argparse

    parser = argparse.ArgumentParser(prog="portwayd")
    parser.add_argument("--state-dir", default=os.environ.get("PORTWAY_STATE_DIR",
                                                              "/var/lib/portway"))
    parser.add_argument("--host-netns", default=os.environ.get("PORTWAY_HOST_NETNS") or None)
    parser.add_argument("--rootless", action="store_true",
                        help="serve rootless Podman's network namespace (started by "
                             "portway-netavark there)")
    parser.add_argument("--host-netns-path", default="",
                        help="where the namespace it lives in is mounted (rootless Podman's "
                             "under $XDG_RUNTIME_DIR/netns): it leaves once that is gone")
    parser.add_argument("--cluster-store", metavar="etcd://HOST:2379[,HOST:2379...]",
                        default=os.environ.get("PORTWAY_CLUSTER_STORE") or None,
                        help="join the etcd cluster that holds overlay networks "
                             "(remembered in the state dir)")
    parser.add_argument("--advertise-address", metavar="IP",
                        default=os.environ.get("PORTWAY_ADVERTISE_ADDRESS") or None,
                        help="this host's underlay address, which its VXLAN traffic uses")
    parser.add_argument("--cluster-ttl", metavar="SECONDS",
                        default=os.environ.get("PORTWAY_CLUSTER_TTL") or None,
                        help="how long this host's lease in the cluster store lasts "
                             "unrenewed: a host gone that long is forgotten by the others "
                             "(default 10; remembered in the state dir)")
    args = parser.parse_args(argv)
    sys.exit(serve(os.path.abspath(args.state_dir), args.host_netns, args.rootless,
                   args.host_netns_path, args.cluster_store, args.advertise_address,
                   args.cluster_ttl))


if __name__ == "__main__":
    main()
