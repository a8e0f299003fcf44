"""A container whose --sysctl turns IPv6 off, on dual-stack networks: what it is given
stays IPv4 (addresses, routes, published ports, what `port` says), so connect, the
relay of ::1 and doctor treat it as a container of IPv4 alone; the CLI in a throwaway
host namespace."""

from __future__ import annotations

import subprocess
import sys

from conftest import Sandbox, sh
from portway.testbed import (
    CONNECT,
    HI_SERVER,
    HOST_ADDR,
    HOST_ADDR6,
    OUTSIDE_ADDR,
    OUTSIDE_ADDR6,
    WAIT_LISTENING,
    connect,
)

OFF = "net.ipv6.conf.all.disable_ipv6=1"
ETH0_OFF = "net.ipv6.conf.eth0.disable_ipv6=1"
# HI_SERVER on every address of both families (IPv4 clients as ::ffff:A.B.C.D).
DUAL = ("import socket\n"
        "s = socket.create_server(('::', 80), family=socket.AF_INET6, dualstack_ipv6=True)\n"
        "while True:\n"
        "    c, a = s.accept()\n"
        "    c.sendall(b'hi ' + a[0].encode())\n"
        "    c.close()\n")


def test_ipv6_off_container_publishes_ipv4_alone_and_is_relayed_from_the_host(
        sandbox: Sandbox) -> None:
    """-p 8080:80 of a container whose IPv6 is off: published on IPv4 (port says so),
    and the host's own connection to [::1]:8080 is relayed to its IPv4 address, as
    Docker's proxy does (it was closed at once: the relay looked for an IPv6 address
    the container does not have); -p [::]:... has nothing to go to: refused."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    sb.pw("run", "-d", "--name", "off", "--network", "app", "--sysctl", OFF,
          "-p", "8080:80", "--", sys.executable, "-c", HI_SERVER, "0.0.0.0", "80")
    sb.pw("run", "-d", "--name", "on", "--network", "app", "-p", "8081:80", "--",
          sys.executable, "-c", DUAL)
    sb.pw("exec", "off", "--", sys.executable, "-c", WAIT_LISTENING, "127.0.0.1", "80")
    sb.pw("exec", "on", "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")
    assert sb.pw("port", "off").stdout == "80/tcp -> 0.0.0.0:8080\n"
    assert connect(sb.outside, HOST_ADDR, 8080).startswith("hi ")
    assert connect(sb.host, "127.0.0.1", 8080).startswith("hi ")
    assert connect(sb.host, "::1", 8080).startswith("hi 172.")  # its gateway, IPv4
    # Control: a container with IPv6 has both, and is relayed over IPv6.
    assert sb.pw("port", "on").stdout == "80/tcp -> 0.0.0.0:8081\n80/tcp -> [::]:8081\n"
    assert connect(sb.outside, HOST_ADDR6, 8081).startswith("hi ")
    assert connect(sb.host, "::1", 8081).startswith("hi fd")
    before = sb.snapshot()
    for spec in ("[::]:8082:80", f"[{HOST_ADDR6}]:8082:80"):
        cp = sb.pw("run", "-d", "--network", "app", "--sysctl", OFF, "-p", spec, "--",
                   "sleep", "30", check=False)
        assert cp.returncode == 2 and cp.stderr.count("\n") == 1, cp.stderr
        assert "turns IPv6 off" in cp.stderr and "Traceback" not in cp.stderr
    assert sb.snapshot() == before
    assert len(sb.pw("ps", "-aq").stdout.split()) == 2


def test_ipv6_off_container_connects_to_a_dual_stack_network(sandbox: Sandbox) -> None:
    """network connect of a container whose IPv6 is off to a dual-stack network gives it
    an IPv4 address there (it failed with "Permission denied": portway routed IPv6 on
    an interface without it), and doctor finds nothing amiss with its IPv6 routes. One
    whose IPv6 is off by default alone (default.disable_ipv6: lo keeps ::1) gets IPv6 on
    the network connect adds, as Docker turns it on there (it failed the same way)."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    sb.pw("network", "create", "--ipv6", "two")
    for name, sysctl in (("off", OFF), ("later", "net.ipv6.conf.default.disable_ipv6=1")):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--sysctl", sysctl, "--",
              "sleep", "300")
        sb.pw("network", "connect", "two", name)
        net = sb.inspect(name)["NetworkSettings"]["Networks"]["two"]  # type: ignore[index]
        shown = sb.pw("exec", name, "--", "ip", "-br", "addr", "show", "eth1").stdout
        assert net["IPAddress"] and net["IPAddress"] in shown
        assert (net["GlobalIPv6Address"] == "") is (name == "off")
        assert net["GlobalIPv6Address"] in shown
    # The default stays as the container asked.
    assert sb.pw("exec", "later", "--", "cat", "/proc/sys/net/ipv6/conf/default/"
                 "disable_ipv6").stdout == "1\n"
    # gc makes an interface lost since anew the same way (it failed as connect did).
    two = sb.inspect("later")["NetworkSettings"]["Networks"]["two"]  # type: ignore[index]
    sb.in_host("ip", "link", "del", two["HostInterface"])
    sb.pw("gc")
    assert two["GlobalIPv6Address"] in sb.pw("exec", "later", "--", "ip", "-br", "addr",
                                             "show", "eth1").stdout
    # Disconnected and connected again: the container keeps a network.
    sb.pw("network", "disconnect", "app", "off")
    sb.pw("network", "connect", "app", "off")
    assert set(sb.inspect("off")["NetworkSettings"]["Networks"]) == {  # type: ignore[index]
        "app", "two"}
    sb.pw("run", "-d", "--name", "peer", "--network", "two", "--", "sleep", "300")
    found = sb.pw("exec", "peer", "--", "getent", "ahosts", "off").stdout
    assert ":" not in found and found  # IPv4 alone
    cp = sb.pw("doctor", check=False)
    assert cp.returncode == 0 and "healthy" in cp.stdout, cp.stdout


def test_ipv6_turned_back_on_inside_sends_nothing(sandbox: Sandbox) -> None:
    """A container whose IPv6 is off but that may turn it on again (NET_ADMIN) and take
    an address of the network's IPv6 subnet reaches nothing over IPv6: its bridge port
    passes no IPv6 (it was given no IPv6 address); IPv4 still passes (the control)."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "--subnet", "fd00:aa::/64", "app")
    sb.pw("run", "-d", "--name", "peer", "--network", "app", "--", sys.executable, "-c",
          DUAL)
    sb.pw("run", "-d", "--name", "off", "--network", "app", "--cap-add", "NET_ADMIN",
          "--sysctl", OFF, "--", "sleep", "300")
    sb.pw("exec", "peer", "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")
    sb.pw("exec", "off", "--", "sh", "-c",
          "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
          "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 && "
          "ip addr add fd00:aa::99/64 dev eth0 nodad && "
          "ip -6 route add default via fd00:aa::1")
    peer = sb.inspect("peer")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    for address in (peer["GlobalIPv6Address"], "fd00:aa::1", HOST_ADDR6):
        answer = sb.pw("exec", "off", "--", sys.executable, "-c", CONNECT, address,
                       "80").stdout
        assert answer.startswith("fail"), (address, answer)
    answer = sb.pw("exec", "off", "--", sys.executable, "-c", CONNECT,
                   peer["IPAddress"], "80").stdout
    assert answer.startswith("hi ")


def test_ipv6_off_on_an_ipv4_only_first_network_routes_ipv6_through_the_second(
        sandbox: Sandbox) -> None:
    """--sysctl net.ipv6.conf.eth0.disable_ipv6=1 on a container whose eth0 is on an
    IPv4-only network and eth1 on a dual-stack one (run with both, or connected later):
    eth0 has no IPv6 to turn off, eth1 keeps it, and the IPv6 default route goes through
    eth1 (core/gateways.py), so a real IPv6 connection gets out (NAT66: the outside
    sees the host's address); IPv4 goes out through eth0."""
    sb = sandbox
    sb.pw("network", "create", "v4", "--subnet", "10.151.0.0/24")
    sb.pw("network", "create", "dual", "--ipv6", "--subnet", "10.152.0.0/24", "--subnet",
          "fd00:152::/64")
    outside = subprocess.Popen(["ip", "netns", "exec", sb.outside, sys.executable, "-c",
                                DUAL.replace("80)", "9300)")])
    try:
        sh("ip", "netns", "exec", sb.outside, sys.executable, "-c", WAIT_LISTENING, "::1",
           "9300")
        sb.pw("run", "-d", "--name", "both", "--network", "v4", "--network", "dual",
              "--sysctl", ETH0_OFF, "--", "sleep", "300")
        sb.pw("run", "-d", "--name", "later", "--network", "v4", "--sysctl", ETH0_OFF,
              "--", "sleep", "300")
        sb.pw("network", "connect", "dual", "later")

        def out_both_ways(name: str) -> None:
            dual = sb.inspect(name)["NetworkSettings"]["Networks"]["dual"]  # type: ignore[index]
            assert dual["GlobalIPv6Address"], name
            routes = sb.pw("exec", name, "--", "ip", "-6", "route", "show", "default").stdout
            assert routes.startswith("default via fd00:152::1 dev eth1"), (name, routes)
            answer = sb.pw("exec", name, "--", sys.executable, "-c", CONNECT, OUTSIDE_ADDR6,
                           "9300").stdout.strip()
            assert answer == f"hi {HOST_ADDR6}", (name, answer)
            answer = sb.pw("exec", name, "--", sys.executable, "-c", CONNECT,
                           OUTSIDE_ADDR, "9300").stdout.strip()
            assert answer == f"hi ::ffff:{HOST_ADDR}", (name, answer)

        for name in ("both", "later"):
            out_both_ways(name)
        cp = sb.pw("doctor", check=False)
        assert cp.returncode == 0 and "healthy" in cp.stdout, cp.stdout
        # The same after a restart, and after gc re-makes the lost eth1.
        sb.pw("restart", "-t", "0", "both")
        out_both_ways("both")
        host_end = sb.inspect("later")["NetworkSettings"]["Networks"]["dual"]  # type: ignore[index]
        sb.in_host("ip", "link", "del", host_end["HostInterface"])
        sb.pw("gc")
        out_both_ways("later")
        sb.pw("daemon", "stop")
        for name in ("both", "later"):
            out_both_ways(name)
    finally:
        outside.kill()
        outside.wait()
