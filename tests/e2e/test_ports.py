"""Published host ports are held, checked by the kernel, and bounded.

- A published port is held by a bound socket of the daemon's: a host process that
  binds it afterwards (IPv4 or IPv6) fails; once the container is gone it succeeds
  (the control). With the daemon's sockets gone, a process that binds the port shadows
  it, and `doctor` says so.
- An address that is not the host's is refused as Docker refuses it; so is a portway
  gateway (which would hijack the network's DNS); a host address works (the control).
- A container may publish many ports (a media server's 10,000), but not a whole host's.
"""

from __future__ import annotations

import json
import subprocess
import time

from conftest import Sandbox

BIND = ("import socket, sys\n"
        "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
        "kind = socket.SOCK_DGRAM if sys.argv[3] == 'udp' else socket.SOCK_STREAM\n"
        "s = socket.socket(family, kind)\n"
        "if family == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, "
        "socket.IPV6_V6ONLY, 1)\n"
        "try: s.bind((sys.argv[1], int(sys.argv[2]))); print('bound', flush=True)\n"
        "except OSError as e: print('refused', e.errno, flush=True); sys.exit()\n"
        "if len(sys.argv) > 4: sys.stdin.read()\n")


def bind(sb: Sandbox, address: str, port: int, proto: str = "tcp") -> str:
    return sb.in_host("python3", "-c", BIND, address, str(port), proto).stdout.strip()


def test_published_ports_are_held(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.97.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80",
          "-p", "5353:53/udp", "--", "sleep", "3600")
    for address in ("0.0.0.0", "::", sb.host_addr, "127.0.0.1"):
        assert bind(sb, address, 8080).startswith("refused 98"), address
    assert bind(sb, "0.0.0.0", 5353, "udp").startswith("refused 98")
    assert bind(sb, "0.0.0.0", 8081) == "bound"  # not published: free
    # Shadowing: with the daemon (and its sockets) gone, a host process takes the port;
    # the next daemon cannot hold it and doctor says so.
    sb.pw("daemon", "stop")
    holder = subprocess.Popen(["ip", "netns", "exec", sb.host, "python3", "-c", BIND, "::",
                               "8080", "tcp", "hold"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        cp = sb.pw("doctor", check=False)
        assert cp.returncode == 1 and "8080->80/tcp of container web is shadowed" in cp.stdout
    finally:
        holder.kill()
        holder.wait()
    assert "hold host port 0.0.0.0:8080->80/tcp of container web again" in sb.pw("gc").stdout
    assert bind(sb, "::", 8080).startswith("refused 98")
    # Control: once the container is gone, the ports are free again.
    sb.pw("rm", "-f", "web")
    assert bind(sb, "::", 8080) == "bound"
    assert bind(sb, "0.0.0.0", 5353, "udp") == "bound"


def test_publish_only_on_the_hosts_own_addresses(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.98.0.0/24")
    before = sb.snapshot()
    cases = (("203.0.113.50:8080:80", "cannot assign requested address"),
             ("10.98.0.1:53:53/udp", "gateway of a portway network"),
             ("1024-65535:1024-65535", "too many published ports"))
    for spec, message in cases:
        cp = sb.pw("run", "-d", "--network", "app", "-p", spec, "--", "sleep", "1",
                   check=False)
        assert cp.returncode == 2 and message in cp.stderr, (spec, cp.stderr)
        assert len(cp.stderr.strip().splitlines()) == 1
    assert sb.snapshot() == before
    assert json.loads(sb.pw("ps", "-a", "--json").stdout) == []
    # The control: the host's own address works.
    sb.pw("run", "-d", "--name", "ok", "--network", "app", "-p", f"{sb.host_addr}:8080:80",
          "--", "sleep", "3600")
    assert sb.pw("port", "ok").stdout.strip() == f"80/tcp -> {sb.host_addr}:8080"


def test_a_large_range(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.100.0.0/24")
    started = time.monotonic()
    sb.pw("run", "-d", "--name", "media", "--network", "app", "-p",
          "20000-30000:20000-30000/udp", "--", "sleep", "3600", timeout=120)
    took = time.monotonic() - started
    listing = sb.in_host("nft", "-j", "list", "map", "inet", "portway", "pub_any_port").stdout
    assert len(json.loads(listing)["nftables"][1]["map"]["elem"]) == 10001
    assert bind(sb, "0.0.0.0", 25000, "udp").startswith("refused 98")
    sb.pw("rm", "-f", "media", timeout=120)
    assert bind(sb, "0.0.0.0", 25000, "udp") == "bound"
    print(f"10,001 ports published in {took:.1f} s")
