"""A host namespace deleted under a running portway, then made again with the same name.

The daemon lives in the namespace it serves and its DNS server listens there. When
that namespace is deleted (`ip netns del`), both would otherwise live on in it,
orphaned, and the DNS server recorded in STATE/dns.pid would pass for the new
namespace's. portway must come back in the new namespace as if the old one never
was, and nothing of the old one may keep running.
"""

from __future__ import annotations

import os
import signal
import time

from conftest import Sandbox, processes_in
from portway.kernel import procs
from portway.testbed import make_world, remove_world

RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


def dns_server(sb: Sandbox) -> tuple[int, int]:
    """(pid, start time) of the DNS server, as STATE/dns.pid records it."""
    pid, started = (int(x) for x in (sb.state_dir / "dns.pid").read_text().split())
    return pid, started


def log(sb: Sandbox) -> str:
    return (sb.state_dir / "portwayd.log").read_text()


def host_inode(sb: Sandbox) -> int:
    return os.stat(f"/run/netns/{sb.host}").st_ino


def wait_gone(pid: int, started: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while procs.is_alive(pid, started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def recreate_host(sb: Sandbox) -> None:
    """`ip netns del` of the host (and its outside), then a new world of the same names."""
    old = host_inode(sb)
    remove_world(sb.host, sb.outside)
    assert not os.path.exists(f"/run/netns/{sb.host}")
    make_world(sb.host, sb.outside, sb.state_dir)
    assert host_inode(sb) != old  # the same name, another namespace


def works_again(sb: Sandbox) -> None:
    """A new network, a container on it, and another that finds it by name."""
    sb.pw("network", "create", "again", "--subnet", "10.95.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "again", "--", "sleep", "3600")
    cp = sb.pw("run", "--rm", "--network", "again", "--", "python3", "-c", RESOLVE, "web")
    assert cp.stdout.strip() == "10.95.0.2", cp.stdout + cp.stderr
    daemon = sb.daemon_pid()
    dns_pid, _ = dns_server(sb)
    # The new daemon and DNS server live in the new namespace.
    assert daemon in processes_in(sb.host) and dns_pid in processes_in(sb.host)


def test_daemon_leaves_with_its_deleted_host_namespace(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.94.0.0/24")
    daemon = sb.daemon_pid()
    daemon_started = procs.start_time(daemon)
    dns_pid, dns_started = dns_server(sb)
    # Control: both run, in the host namespace, before it is deleted.
    assert procs.is_alive(daemon, daemon_started) and procs.is_alive(dns_pid, dns_started)
    assert {daemon, dns_pid} <= set(processes_in(sb.host))

    recreate_host(sb)
    # At once, before the old daemon has noticed by itself: the CLI must not be served
    # by it (its bridges would land in the deleted namespace).
    works_again(sb)
    assert sb.daemon_pid() != daemon
    assert wait_gone(daemon, daemon_started), "the old daemon still runs"
    assert wait_gone(dns_pid, dns_started), "the old DNS server still runs"
    assert "host namespace" in log(sb) and "was deleted" in log(sb)  # it left by itself
    # The network of the old namespace is back in the new one (the store is the truth).
    assert sb.pw("doctor").stdout.startswith("healthy")


def test_idle_daemon_notices_by_itself(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.94.0.0/24")
    daemon = sb.daemon_pid()
    daemon_started = procs.start_time(daemon)
    dns_pid, dns_started = dns_server(sb)
    assert procs.is_alive(daemon, daemon_started) and procs.is_alive(dns_pid, dns_started)

    remove_world(sb.host, sb.outside)
    # Nobody calls portway: the daemon must still see that its namespace is gone, stop
    # its DNS server and leave, so the deleted namespace is freed.
    assert wait_gone(daemon, daemon_started, 10), "the old daemon still runs"
    assert wait_gone(dns_pid, dns_started, 10), "the old DNS server still runs"
    assert "was deleted" in log(sb)
    assert not (sb.state_dir / "portwayd.sock").exists()
    assert not (sb.state_dir / "dns.pid").exists()
    make_world(sb.host, sb.outside, sb.state_dir)
    works_again(sb)


def test_new_daemon_stops_the_dns_server_of_a_deleted_namespace(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.94.0.0/24")
    daemon = sb.daemon_pid()
    daemon_started = procs.start_time(daemon)
    dns_pid, dns_started = dns_server(sb)
    # The daemon dies without a word (SIGKILL): it cannot stop its DNS server.
    os.kill(daemon, signal.SIGKILL)
    assert wait_gone(daemon, daemon_started)

    recreate_host(sb)
    # Control: the old DNS server lives on in the deleted namespace, and STATE/dns.pid
    # still names it.
    assert procs.is_alive(dns_pid, dns_started)
    assert dns_server(sb) == (dns_pid, dns_started)
    works_again(sb)
    assert wait_gone(dns_pid, dns_started), "the old DNS server still runs"
    assert dns_server(sb)[0] != dns_pid
    assert f"stopped the DNS server of another namespace (pid {dns_pid})" in log(sb)
