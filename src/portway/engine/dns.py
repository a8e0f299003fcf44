"""The engine's side of the DNS server: its records, its process, its reloads.

One server per host namespace and state dir, started with the first network
and stopped with the last. It outlives the daemon, like containers do; its pid
and start time are kept in STATE/dns.pid so a new daemon finds it again. A server
found there that lives in another network namespace (its host namespace was
deleted, and the name given to a new one) is not this one's: it is stopped.
Its log and pid file are 0600, whatever the caller's umask (its records, dns.json,
are too: mkstemp); its control socket gets the daemon's umask, 0o077.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from portway.core import netavark
from portway.core.netavark import SEARCH_DOMAIN
from portway.errors import KernelError
from portway.kernel import procs
from portway.model.types import Container, Endpoint

if TYPE_CHECKING:
    from portway.engine.context import Host

RELOAD_TIMEOUT = 5.0


class Announced:
    """A container's records sent to the DNS server, its answer not read yet: the
    socket it will come to (None: there was no server to send them to)."""

    def __init__(self, container_id: str, sock: socket.socket | None) -> None:
        self.container_id, self.sock = container_id, sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def endpoint_names(c: Container, e: Endpoint) -> list[str]:
    """The names the DNS server answers for c on e's network (inspect's DNSNames, in
    Docker's order): its name, its aliases there, its short id."""
    plain = list(dict.fromkeys([c.name, *e.aliases, c.short_id]))
    if c.runtime == "podman":  # aardvark-dns also answers NAME.dns.podman
        plain += [f"{n}.{SEARCH_DOMAIN}" for n in plain]
    return plain


def container_record(c: Container, endpoints: list[Endpoint]) -> dict[str, Any]:
    """One container as the DNS server knows it: its names on each of its networks."""
    return {"id": c.id, "name": c.name, "dns": list(c.dns),
            "endpoints": [{"ip": str(e.address), "ips": [str(a.ip) for a in e.addresses],
                           "network": e.network_id, "names": endpoint_names(c, e)}
                          for e in endpoints if e.addresses]}  # none: no name to serve


def records(engine: Host) -> dict[str, Any]:
    """Every network and every attached container (for a reload from the file)."""
    by_container: dict[str, list[Endpoint]] = {}
    for e in engine.store.endpoints():
        by_container.setdefault(e.container_id, []).append(e)
    containers = []
    for c in engine.store.containers():
        if c.id in by_container:
            containers.append(container_record(c, by_container[c.id]))
    if engine.cluster is not None:
        # Overlay networks: the containers on the other hosts are named here too.
        containers += engine.cluster.remote_records()
    networks = [{"id": n.id, "name": n.name, "subnet": str(n.subnet),
                 "gateway": str(n.gateway), "internal": n.internal,
                 "subnets": [str(s.subnet) for s in n.subnets],
                 "gateways": [str(s.gateway) for s in n.subnets],
                 **netavark.dns_record(n),
                 # A macvlan network's gateway is the LAN's router, not the host's: no
                 # socket there, and no names (as netavark and aardvark-dns).
                 **({"dns": False} if n.driver == "macvlan" else {})}
                for n in engine.store.networks() if n.subnets]  # none: nothing to serve on
    return {"networks": networks, "containers": containers}


def names_by_network(data: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """For display: network id -> name -> addresses."""
    out: dict[str, dict[str, list[str]]] = {n["id"]: {} for n in data["networks"]}
    for c in data["containers"]:
        for e in c["endpoints"]:
            for name in e["names"]:
                out.setdefault(e["network"], {}).setdefault(name.lower(), []).extend(
                    e.get("ips") or [e["ip"]])
    return out


class DnsServer:
    def __init__(self, engine: Host) -> None:
        self.engine = engine
        self.state_dir = engine.state_dir
        self.pid_path = os.path.join(self.state_dir, "dns.pid")
        self.sock_path = os.path.join(self.state_dir, "dns.sock")

    def _pid(self) -> tuple[int, int]:
        try:
            with open(self.pid_path) as f:
                pid, started = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            return 0, 0
        return (pid, started) if procs.is_alive(pid, started) else (0, 0)

    @staticmethod
    def _in_our_netns(pid: int) -> bool:
        """The process lives in the network namespace where start() would start a server
        now: the calling thread's (the daemon lives in its host namespace)."""
        try:
            theirs = os.stat(f"/proc/{pid}/ns/net")
            ours = os.stat("/proc/thread-self/ns/net")
        except OSError:
            return True  # cannot tell: take it for ours, as before
        return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)

    def running(self) -> bool:
        pid = self._pid()[0]
        return pid != 0 and self._in_our_netns(pid)

    def stop_stale(self) -> int:
        """Stop the server STATE/dns.pid names if it lives in another namespace: it was
        left by the daemon of a deleted host namespace of the same name, listens there,
        and would take this namespace's reloads. Its pid, or 0 if there was none."""
        pid, started = self._pid()
        if not pid or self._in_our_netns(pid):
            return 0
        self._end(pid, started)
        # Not dns.json: publish() may just have written this namespace's records.
        for path in (self.pid_path, self.sock_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return pid

    def start(self, wait: bool = True) -> None:
        """A server started (its pid recorded); with wait, once it listens."""
        self.stop_stale()
        # A killed server leaves its socket file: it must not pass for the new one's.
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        boot = (f"import sys; sys.path.insert(0, {src!r}); "
                "from portway.dns.server import main; main()")
        log_fd = os.open(os.path.join(self.state_dir, "dns.log"),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
            child = subprocess.Popen(
                [sys.executable, "-S", "-c", boot, "--state-dir", self.state_dir,
                 "--resolv", self.engine.host_resolv_path()],
                stdin=devnull, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        child.returncode = 0  # the watcher thread may reap it; Popen must not
        started = 0
        deadline = time.monotonic() + 5
        while not started and time.monotonic() < deadline:
            started = procs.start_time(child.pid)
        tmp = self.pid_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            f.write(f"{child.pid} {started}\n")
        os.replace(tmp, self.pid_path)
        self.engine.process_kernel.watch("dns-server", child.pid, child=True)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until the server's control socket is there (a server just started makes it
        once it has loaded), at most 5 s."""
        deadline = time.monotonic() + 5
        while not os.path.exists(self.sock_path) and time.monotonic() < deadline:
            time.sleep(0.002)

    @staticmethod
    def _end(pid: int, started: int) -> None:
        """SIGTERM, then SIGKILL after 5 s: the process with this pid and start time only."""
        procs.signal_process(pid, started, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while procs.is_alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.01)
        procs.signal_process(pid, started, signal.SIGKILL)

    def stop(self) -> None:
        pid, started = self._pid()
        if pid:
            self._end(pid, started)
        for path in (self.pid_path, self.sock_path, os.path.join(self.state_dir, "dns.json")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def request(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind("")  # an abstract address the server can answer to
            s.settimeout(RELOAD_TIMEOUT)
            try:
                s.sendto(command.encode(), self.sock_path)
                reply: dict[str, Any] = json.loads(s.recv(1 << 20))
            except OSError as exc:
                raise KernelError(f"the DNS server did not answer: {exc}",
                                  "run 'portway gc' to restart it") from None
        return reply

    def publish(self) -> None:
        """Write the records, make sure a server runs (or none, without networks), and
        return once it uses them."""
        if not self.engine.store.networks():
            self.stop()
            return
        data = records(self.engine)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".dns.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, os.path.join(self.state_dir, "dns.json"))
        if not self.running():
            self.start()
        else:
            self.wait_ready()  # started early (portwayd's start, rootless) and loading
        self.request("reload")

    def announce(self, c: Container, endpoints: list[Endpoint]) -> Announced:
        """c's records (as they will be once its set-up is done) sent to the server,
        without waiting for its answer: the server takes them in while the set-up does
        its kernel work, and settle() reads the answer afterwards."""
        delta = json.dumps({"cmd": "set", "container": container_record(c, endpoints)})
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            s.bind("")  # an abstract address the server can answer to
            s.settimeout(RELOAD_TIMEOUT)
            s.sendto(delta.encode(), self.sock_path)
        except OSError:  # no server (its socket refuses): settle() publishes
            s.close()
            return Announced(c.id, None)
        return Announced(c.id, s)

    def settle(self, announced: Announced) -> None:
        """Once the set-up is done: return once the server uses what announce() sent
        (or, if it did not answer, once a full publish has given it every record)."""
        reply: dict[str, Any] = {}
        if announced.sock is not None:
            try:
                reply = json.loads(announced.sock.recv(1 << 20))
            except (OSError, ValueError):
                reply = {}
            finally:
                announced.close()
        if not reply.get("ok"):
            self.publish()

    def withdraw(self, announced: Announced) -> None:
        """The set-up failed: what announce() sent is taken back (its answer read first,
        so the two arrive in order)."""
        if announced.sock is not None:
            try:
                announced.sock.recv(1 << 20)
            except OSError:
                pass
            finally:
                announced.close()
            try:
                self.request(json.dumps({"cmd": "forget", "id": announced.container_id}))
            except KernelError as exc:  # the server's next reload has the store's records
                print(f"portwayd: DNS records not updated: {exc}", file=sys.stderr,
                      flush=True)

    def update(self, container_id: str) -> None:
        """One container's records changed: send just those (O(its endpoints)) and return
        once the server uses them. Without a running server, a full publish (asked
        of the server's socket, not of its pid file: one round trip fewer)."""
        store = self.engine.store
        c = store.find_container(container_id)
        endpoints = store.endpoints(container_id=container_id) if c is not None else []
        if c is None or not endpoints:
            delta: dict[str, Any] = {"cmd": "forget", "id": container_id}
        else:
            delta = {"cmd": "set", "container": container_record(c, endpoints)}
        try:
            reply = self.request(json.dumps(delta))
        except KernelError:  # no server (its socket refuses): publish starts one
            reply = {}
        if not reply.get("ok"):
            self.publish()
