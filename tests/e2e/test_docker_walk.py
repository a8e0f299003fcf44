"""Docker's own pages walked with portway, as a Docker user meets them on one host: what
they print and do, the CLI in a throwaway host namespace."""

from __future__ import annotations

import json
import sys

from conftest import Sandbox
from portway.testbed import HOST_ADDR, HOST_ADDR6, WAIT_LISTENING, connect


def test_inspect_takes_any_object_and_reports_the_missing_apart(sandbox: Sandbox) -> None:
    """`docker inspect` takes a container or a network (--type picks one); of several
    names, the ones found are printed and each missing one is said on stderr, exit 1.
    A user network made before the default one leaves Docker's 172.17.0.0/16 to it."""
    sb = sandbox
    sb.pw("network", "create", "app")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "plain", "--", "sleep", "300")
    assert sb.pw("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                 "app", "bridge").stdout.split() == ["172.18.0.0/16", "172.17.0.0/16"]
    assert sb.pw("inspect", "-f", "{{.Name}}", "app").stdout == "app\n"
    cp = sb.pw("inspect", "web", "nosuch", "app", check=False)
    assert cp.returncode == 1
    assert [o["Name"] for o in json.loads(cp.stdout)] == ["/web", "app"]
    assert cp.stderr == "portway: error: no container or network 'nosuch'; list them " \
                        "with 'portway ps -a' and 'portway network ls'\n"
    cp = sb.pw("network", "inspect", "-f", "{{.Name}}", "app", "nosuch", "bridge",
               check=False)
    assert (cp.returncode, cp.stdout) == (1, "app\nbridge\n")
    assert cp.stderr.count("\n") == 1 and "network 'nosuch' not found" in cp.stderr
    # --type: one kind only.
    cp = sb.pw("inspect", "--type", "container", "app", check=False)
    assert cp.returncode != 0 and "container 'app' not found" in cp.stderr
    assert sb.pw("inspect", "--type", "network", "-f", "{{.Driver}}", "app").stdout == \
        "bridge\n"
    cp = sb.pw("inspect", "--type", "image", "web", check=False)
    assert cp.returncode == 2 and cp.stdout == "" and "--type" in cp.stderr
    # One name alone that is nothing: one line, no output.
    cp = sb.pw("inspect", "nosuch", check=False)
    assert cp.returncode != 0 and cp.stdout == "" and cp.stderr.count("\n") == 1


# NAME: a dual-stack TCP server on port 80 that answers each connection with NAME.
NAMED = ("import socket, sys\n"
         "s = socket.create_server(('::', 80), family=socket.AF_INET6, dualstack_ipv6=True)\n"
         "while True:\n"
         "    c, _ = s.accept()\n"
         "    c.sendall(sys.argv[1].encode())\n"
         "    c.close()\n")


def test_unspecified_host_address_publishes_on_its_family_alone(sandbox: Sandbox) -> None:
    """Docker 27: `-p 0.0.0.0:8080:80` publishes on IPv4 only and `-p [::]:8080:80` on
    IPv6 only (Docker's page: "to make the mapping IPv6-only ... use [::]"), so two
    containers can share host port 8080, one per family; without an address, both."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    for name, spec in (("four", "0.0.0.0:8080:80"), ("six", "[::]:8080:80"),
                       ("both", "8081:80")):
        sb.pw("run", "-d", "--name", name, "--network", "app", "-p", spec, "--",
              sys.executable, "-c", NAMED, name)
        sb.pw("exec", name, "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")
    assert sb.pw("port", "four").stdout == "80/tcp -> 0.0.0.0:8080\n"
    assert sb.pw("port", "six").stdout == "80/tcp -> [::]:8080\n"
    assert sb.inspect("four")["HostConfig"]["PortBindings"] == {  # type: ignore[index]
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    # From the outside, and from the host itself (::1 through the relay).
    assert connect(sb.outside, HOST_ADDR, 8080) == "four"
    assert connect(sb.outside, HOST_ADDR6, 8080) == "six"
    assert connect(sb.host, "127.0.0.1", 8080) == "four"
    assert connect(sb.host, "::1", 8080) == "six"
    # Control: without an address, both families reach the one container.
    assert connect(sb.outside, HOST_ADDR, 8081) == "both"
    assert connect(sb.outside, HOST_ADDR6, 8081) == "both"
    # Taken is taken per family: IPv4's 8080 is four's, IPv6's six's.
    for spec in ("8080:80", "0.0.0.0:8080:80", "[::]:8080:80"):
        cp = sb.pw("run", "-d", "--network", "app", "-p", spec, "--", "sleep", "30",
                   check=False)
        assert cp.returncode != 0 and "host port 8080/tcp is already taken" in cp.stderr
    # [::] on a network without IPv6 has nowhere to go: one line, nothing made.
    sb.pw("network", "create", "plain")
    before = sb.snapshot()
    cp = sb.pw("run", "-d", "--network", "plain", "-p", "[::]:8082:80", "--", "sleep", "30",
               check=False)
    assert cp.returncode == 2 and cp.stderr.startswith(
        "portway: error: cannot publish on [::]: network plain has no IPv6")
    assert sb.snapshot() == before


def test_a_networks_default_host_binding(sandbox: Sandbox) -> None:
    """Docker's `-o com.docker.network.bridge.host_binding_ipv4=127.0.0.1`: a port
    published without an address is the host's alone; one given an address keeps it."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "-o",
          "com.docker.network.bridge.host_binding_ipv4=127.0.0.1", "local")
    sb.pw("run", "-d", "--name", "web", "--network", "local", "-p", "8080:80",
          "-p", f"{HOST_ADDR}:8081:80", "--", sys.executable, "-c", NAMED, "web")
    sb.pw("exec", "web", "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")
    assert sb.pw("port", "web").stdout == \
        f"80/tcp -> 127.0.0.1:8080\n80/tcp -> {HOST_ADDR}:8081\n"
    assert connect(sb.host, "127.0.0.1", 8080) == "web"
    assert connect(sb.outside, HOST_ADDR, 8080).startswith("fail")
    assert connect(sb.outside, HOST_ADDR6, 8080).startswith("fail")
    assert connect(sb.outside, HOST_ADDR, 8081) == "web"  # control: the address given
    cp = sb.pw("network", "create", "-o",
               "com.docker.network.bridge.host_binding_ipv4=localhost", "bad", check=False)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "localhost" in cp.stderr


def test_a_default_host_binding_of_a_family_the_network_lacks(sandbox: Sandbox) -> None:
    """A network's host_binding_ipv4 of a family it has no subnet of would leave every
    port published without an address nowhere to go (run refuses `-p [::]:P:C` on an
    IPv4-only network, and `-p 127.0.0.1:P:C` on an IPv6-only one): refused at
    `network create`, in one line, nothing made. ::1 stays (the host's relay takes it to
    either family), and so does 0.0.0.0 (every address of the families it has)."""
    sb = sandbox
    key = "com.docker.network.bridge.host_binding_ipv4"
    sb.pw("network", "ls")  # the store, made
    before = sb.snapshot()
    for value, flags, family in (("::", [], "IPv6"), ("2001:db8:51::1", [], "IPv6"),
                                 ("127.0.0.1", ["--ipv6", "--ipv4=false"], "IPv4"),
                                 (HOST_ADDR, ["--ipv6", "--ipv4=false"], "IPv4")):
        cp = sb.pw("network", "create", *flags, "-o", f"{key}={value}", "app", check=False)
        assert cp.returncode == 2 and cp.stderr.count("\n") == 1, (value, cp.stderr)
        assert cp.stderr.startswith(f"portway: error: {key} {value} is an {family} "
                                    f"address, but network app has no {family}"), cp.stderr
        assert sb.snapshot() == before
    # What is taken: each publishes a port given no address, reached from the host.
    sb.pw("network", "create", "-o", f"{key}=::1", "four")
    sb.pw("network", "create", "--ipv6", "--ipv4=false", "-o", f"{key}=0.0.0.0", "six")
    for name in ("four", "six"):
        sb.pw("run", "-d", "--name", name, "--network", name, "-p", "8080:80"
              if name == "four" else "8081:80", "--", sys.executable, "-c", NAMED, name)
        sb.pw("exec", name, "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")
    assert sb.pw("port", "four").stdout == "80/tcp -> [::1]:8080\n"
    assert connect(sb.host, "::1", 8080) == "four"
    assert connect(sb.outside, HOST_ADDR6, 8081) == "six"


def test_dockers_names_for_the_commands(sandbox: Sandbox) -> None:
    """Docker's pages write `docker container ls`, `docker container inspect`,
    `docker container rm`, `docker network list`: the same commands here."""
    sb = sandbox
    sb.pw("network", "create", "app")
    cid = sb.pw("container", "run", "-d", "--name", "web", "--network", "app", "--",
                "sleep", "300").stdout.strip()
    assert sb.pw("container", "ls", "-q").stdout == sb.pw("ps", "-q").stdout == \
        cid[:12] + "\n"
    assert sb.pw("container", "list", "--format", "{{.Names}}").stdout == "web\n"
    assert sb.pw("container", "inspect", "-f", "{{.Name}}", "web").stdout == "/web\n"
    # docker container inspect looks at containers alone.
    cp = sb.pw("container", "inspect", "app", check=False)
    assert cp.returncode == 3 and "container 'app' not found" in cp.stderr
    assert sb.pw("network", "list", "-q").stdout == sb.pw("network", "ls", "-q").stdout
    assert sb.pw("container", "stop", "-t", "0", "web").stdout == "web\n"
    assert sb.pw("container", "remove", "web").stdout == "web\n"
    assert sb.pw("network", "remove", "app").stdout == "app\n"
    cp = sb.pw("container", check=False)
    assert cp.returncode == 2 and "usage: portway container COMMAND" in cp.stderr and \
        "ls       list containers" in cp.stderr


def test_a_container_with_ipv6_off_is_named_by_ipv4_alone(sandbox: Sandbox) -> None:
    """--sysctl net.ipv6.conf.all.disable_ipv6=1 on a dual-stack network: no IPv6
    address in the container, and none in inspect, /etc/hosts or DNS (a peer that
    resolved one would try IPv6 first and get nowhere), as with Docker 27."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "app")
    sb.pw("run", "-d", "--name", "off", "--network", "app", "--sysctl",
          "net.ipv6.conf.all.disable_ipv6=1", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "peer", "--network", "app", "--", "sleep", "300")
    net = sb.inspect("off")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    assert net["GlobalIPv6Address"] == "" and net["IPAddress"]
    assert ":" not in sb.pw("exec", "off", "--", "ip", "-6", "-br", "addr", "show",
                            "eth0").stdout
    hosts = sb.pw("exec", "off", "--", "cat", "/etc/hosts").stdout
    assert net["IPAddress"] in hosts and ":" not in hosts  # nor ::1: lo has none
    assert sb.pw("exec", "off", "--", "getent", "hosts", "localhost").stdout.split()[0] \
        == "127.0.0.1"
    found = sb.pw("exec", "peer", "--", "getent", "ahosts", "off").stdout
    assert {line.split()[0] for line in found.splitlines()} == {net["IPAddress"]}
    peer = sb.inspect("peer")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    assert peer["GlobalIPv6Address"]  # control: the default has both


def test_enable_ipv6_option_makes_a_dual_stack_network(sandbox: Sandbox) -> None:
    """Docker 27 reads -o com.docker.network.enable_ipv6=true as --ipv6 where --ipv6 is
    not given (its default-network-opts and Compose's driver_opts say it so); --ipv6=false
    wins over it. The container gets an IPv6 address and its port answers over IPv6
    from outside; the port lines come in Docker's order."""
    sb = sandbox
    sb.pw("network", "create", "-o", "com.docker.network.enable_ipv6=true", "app")
    sb.pw("network", "create", "--ipv6=false", "-o", "com.docker.network.enable_ipv6=1",
          "four")
    assert sb.pw("network", "inspect", "-f", "{{.EnableIPv6}} {{json .Options}}", "app",
                 "four").stdout.splitlines() == [
        'true {"com.docker.network.enable_ipv6":"true"}', "false {}"]
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8081:80", "-p",
          "[::1]:8080:80", "--", sys.executable, "-c", NAMED, "web")
    sb.pw("exec", "web", "--", sys.executable, "-c", WAIT_LISTENING, "::1", "80")
    web = sb.inspect("web")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    assert web["GlobalIPv6PrefixLen"] == 64 and web["IPv6Gateway"]
    assert connect(sb.outside, HOST_ADDR6, 8081) == "web"
    assert sb.pw("port", "web").stdout.splitlines() == [
        "80/tcp -> 0.0.0.0:8081", "80/tcp -> [::1]:8080", "80/tcp -> [::]:8081"]
    cp = sb.pw("network", "create", "-o", "com.docker.network.enable_ipv6=yes", "bad",
               check=False)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "not a valid bool" in \
        cp.stderr
