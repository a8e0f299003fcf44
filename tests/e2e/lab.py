"""Labs built like real hosts inside a test's sandbox: plain namespaces, bridges, veths,
nftables rules and sysctls made by hand (not by portway), real servers and real clients.

A Lab remembers what it made and removes it (close): its namespaces (named after the
sandbox's host, so the sandbox fixture counts them as the test's own), the links it
added to the host namespace, the processes it started (by PID).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from conftest import Sandbox, sh

# SERVE ADDR PORT PROTO: accept TCP connections (and close them) or answer UDP datagrams.
SERVER = """
import socket, sys
addr, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
if proto == "tcp":
    s.listen(16)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, _ = s.accept()
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
"""

# CONNECT ADDR PORT PROTO [SPORT]: what a real client meets: connected, refused,
# timeout, unreachable (or the error's name).
CLIENT = """
import errno, socket, sys
addr, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
try:
    if proto == "tcp":
        socket.create_connection((addr, port), timeout=2,
                                 source_address=("", sport) if sport else None).close()
        print("connected")
    else:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
        s.settimeout(2)
        s.connect((addr, port))
        s.send(b"ping")
        s.recv(2048)
        print("connected")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
except OSError as e:
    print("unreachable" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
          else type(e).__name__)
"""


class Lab:
    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.namespaces: list[str] = []
        self.host_links: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    # where commands run

    def prefix(self, ns: str) -> list[str]:
        """The argv prefix that runs a command in ns: a name, or pid:N (a process's)."""
        if ns.startswith("pid:"):
            return ["nsenter", "-t", ns[4:], "-n"]
        return ["ip", "netns", "exec", ns]

    def run(self, ns: str, *args: str, check: bool = True) -> str:
        cp = subprocess.run([*self.prefix(ns), *args], capture_output=True, text=True,
                            timeout=60)
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(args)} in {ns}: {cp.stderr.strip()}")
        return cp.stdout

    def ip(self, ns: str, *args: str) -> str:
        return self.run(ns, "ip", *args)

    # building

    def netns(self, suffix: str) -> str:
        name = f"{self.sb.host}-{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def process_netns(self) -> str:
        """A namespace of a process only (as Podman's or a VM manager's), no name: pid:N."""
        proc = subprocess.Popen(["unshare", "--net", "sleep", "600"], text=True)
        self.procs.append(proc)
        ns = f"pid:{proc.pid}"
        deadline = time.monotonic() + 5
        while self.run(ns, "readlink", "/proc/self/ns/net") == \
                self.run(self.sb.host, "readlink", "/proc/self/ns/net"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        self.ip(ns, "link", "set", "lo", "up")
        return ns

    def veth(self, a: str, a_name: str, b: str, b_name: str) -> None:
        """A veth pair: a_name in a, b_name in b (names or pid:N)."""
        other = b[4:] if b.startswith("pid:") else b
        self.ip(a, "link", "add", a_name, "type", "veth", "peer", "name", b_name,
                "netns", other)
        if a == self.sb.host:
            self.host_links.append(a_name)
        self.ip(a, "link", "set", a_name, "up")
        self.ip(b, "link", "set", b_name, "up")

    def bridge(self, ns: str, name: str, *ports: str) -> None:
        self.ip(ns, "link", "add", name, "type", "bridge")
        if ns == self.sb.host:
            self.host_links.append(name)
        for port in ports:
            self.ip(ns, "link", "set", port, "master", name)
        self.ip(ns, "link", "set", name, "up")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        self.ip(ns, "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else []))

    def route(self, ns: str, *args: str) -> None:
        self.ip(ns, "route", "add", *args)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.run(ns, "sysctl", "-qw", f"{key}={value}")

    def nft(self, ns: str, ruleset: str) -> None:
        cp = subprocess.run([*self.prefix(ns), "nft", "-f", "-"], input=ruleset,
                            capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr

    # traffic

    def serve(self, ns: str, addr: str, port: int,
              proto: str = "tcp") -> subprocess.Popen[str]:
        proc = subprocess.Popen([*self.prefix(ns), "python3", "-c", SERVER, addr, str(port),
                                 proto], stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """End a server this lab started."""
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.procs.remove(proc)

    def connect(self, ns: str, addr: str, port: int, proto: str = "tcp",
                sport: int = 0) -> str:
        return self.run(ns, "python3", "-c", CLIENT, addr, str(port), proto,
                        str(sport)).strip()

    def trace(self, *args: str) -> dict[str, Any]:
        """portway trace ARGS --json --live in the sandbox; the live probe must leave no
        table behind."""
        data: dict[str, Any] = json.loads(self.sb.pw("trace", *args, "--json",
                                                     "--live").stdout)
        assert "portway_trace" not in self.ip(self.sb.host, "-j", "link") + \
            self.run(self.sb.host, "nft", "list", "tables")
        return data

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        for link in self.host_links:
            sh("ip", "-n", self.sb.host, "link", "del", link, check=False)
