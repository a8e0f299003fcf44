"""A container whose --sysctl turns IPv6 off, on dual-stack networks: what it is given
stays IPv4 (addresses, routes, published ports, what `port` says), so connect, the
relay of ::1 and doctor treat it as a container of IPv4 alone; the CLI in a throwaway
host namespace."""

from __future__ import annotations

from conftest import Sandbox

OFF = "net.ipv6.conf.all.disable_ipv6=1"


def test_ipv6_off_container_connects_to_a_dual_stack_network(sandbox: Sandbox) -> None:
    """network connect of a container whose IPv6 is off (at start, or for interfaces
    made after it: default.disable_ipv6) to a dual-stack network gives it an IPv4
    address there (it failed with "Permission denied": portway routed IPv6 on an
    interface without it), and doctor finds nothing amiss with its IPv6 routes."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    sb.pw("network", "create", "--ipv6", "two")
    for name, sysctl in (("off", OFF), ("later", "net.ipv6.conf.default.disable_ipv6=1")):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--sysctl", sysctl, "--",
              "sleep", "300")
        sb.pw("network", "connect", "two", name)
        net = sb.inspect(name)["NetworkSettings"]["Networks"]["two"]  # type: ignore[index]
        assert net["IPAddress"] and net["GlobalIPv6Address"] == ""
        assert net["IPAddress"] in sb.pw("exec", name, "--", "ip", "-4", "-br", "addr",
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
