"""A host port taken once per family: `-p 0.0.0.0:P:C` by one container and `-p
[::]:P:C` by another, each family's traffic to its own container whichever way it comes
(from outside, from the host, from a container: hairpin), and each one's removal
leaving the other's; the CLI in a throwaway host namespace."""

from __future__ import annotations

import sys

from conftest import Sandbox
from portway.testbed import CONNECT, HOST_ADDR, HOST_ADDR6, WAIT_LISTENING, connect

# NAME: a dual-stack TCP server on port 80 that answers each connection with NAME.
NAMED = ("import socket, sys\n"
         "s = socket.create_server(('::', 80), family=socket.AF_INET6, dualstack_ipv6=True)\n"
         "while True:\n"
         "    c, _ = s.accept()\n"
         "    c.sendall(sys.argv[1].encode())\n"
         "    c.close()\n")


def serve(sb: Sandbox, name: str, spec: str) -> None:
    sb.pw("run", "-d", "--name", name, "--network", "app", "-p", spec, "--",
          sys.executable, "-c", NAMED, name)
    sb.pw("exec", name, "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")


def reach(sb: Sandbox, container: str, address: str, port: int) -> str:
    return sb.pw("exec", container, "--", sys.executable, "-c", CONNECT, address,
                 str(port)).stdout.strip()


def test_each_familys_traffic_reaches_its_own_container(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    sb.pw("network", "create", "--ipv6", "other")
    serve(sb, "four", "0.0.0.0:8080:80")
    serve(sb, "six", "[::]:8080:80")
    sb.pw("run", "-d", "--name", "far", "--network", "other", "--", "sleep", "300")
    gateway = sb.inspect("four")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    # From a container of another network, and from one of the two (hairpin): the
    # host's addresses and the network's gateways, each family to its own.
    for client in ("far", "six"):
        assert reach(sb, client, HOST_ADDR, 8080) == "four"
        assert reach(sb, client, gateway["Gateway"], 8080) == "four"
        assert reach(sb, client, HOST_ADDR6, 8080) == "six"
        assert reach(sb, client, gateway["IPv6Gateway"], 8080) == "six"
    # trace from outside takes the family each one's port is published in.
    for name in ("four", "six"):
        shown = sb.pw("trace", "outside", f"{name}:80").stdout
        assert "verdict: delivered" in shown, shown
    assert "published over IPv6 alone" in shown
    # Neither is the other's stray, and four's removal takes IPv4's 8080 alone.
    cp = sb.pw("doctor", check=False)
    assert cp.returncode == 0 and "healthy" in cp.stdout, cp.stdout
    sb.pw("rm", "-f", "four")
    assert connect(sb.outside, HOST_ADDR, 8080).startswith("fail")
    assert connect(sb.host, "127.0.0.1", 8080).startswith("fail")
    assert connect(sb.outside, HOST_ADDR6, 8080) == "six"
    assert connect(sb.host, "::1", 8080) == "six"
    cp = sb.pw("doctor", check=False)
    assert cp.returncode == 0 and "healthy" in cp.stdout, cp.stdout


def test_the_host_reaches_the_running_container_of_a_port_a_stopped_one_had(
        sandbox: Sandbox) -> None:
    """A stopped container has given its host port back, and another took it: the
    host's own connection to [::1]:PORT goes to the running one (the relay looked no
    further than the stopped one, and closed the connection)."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    for spec in ("[::]:8080:80", "8081:80"):
        port = spec.split(":")[-2]
        serve(sb, f"old{port}", spec)
        sb.pw("stop", "-t", "0", f"old{port}")
        serve(sb, f"new{port}", spec)
        assert connect(sb.outside, HOST_ADDR6, int(port)) == f"new{port}"  # control
        assert connect(sb.host, "::1", int(port)) == f"new{port}"


def test_loopback_bindings_stay_the_hosts(sandbox: Sandbox) -> None:
    """A network whose host_binding_ipv4 is 127.0.0.1, and -p [::1]:P:C: the host
    reaches both ports; no container (of that network or another) does, at any address
    of the host, its gateways or the loopback ones, nor does the outside."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "-o",
          "com.docker.network.bridge.host_binding_ipv4=127.0.0.1", "app")
    sb.pw("network", "create", "--ipv6", "other")
    serve(sb, "bound", "8080:80")
    serve(sb, "six", "[::1]:8081:80")
    sb.pw("run", "-d", "--name", "near", "--network", "app", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "far", "--network", "other", "--", "sleep", "300")
    assert connect(sb.host, "127.0.0.1", 8080) == "bound"
    assert connect(sb.host, "::1", 8081) == "six"
    gateway = sb.inspect("near")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    addresses = (HOST_ADDR, HOST_ADDR6, gateway["Gateway"], gateway["IPv6Gateway"],
                 "127.0.0.1", "::1")
    for port in (8080, 8081):
        for address in (HOST_ADDR, HOST_ADDR6):
            assert connect(sb.outside, address, port).startswith("fail"), (address, port)
        for client in ("near", "far", "bound"):
            for address in addresses:
                assert reach(sb, client, address, port).startswith("fail"), \
                    (client, address, port)
