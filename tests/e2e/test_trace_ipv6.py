"""`portway trace` on IPv6 paths: each verdict static and live (they must agree, and the
probe leaves nothing behind), and a real connection over the same path that agrees.

The sandbox's uplink has documentation addresses of both families (testbed); the
outside namespace plays the IPv6 world as it does the IPv4 one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_trace import attempt, kernel_rules, last_client, rules, trace

from conftest import Sandbox, sh
from portway.testbed import HOST_ADDR, HOST_ADDR6, OUTSIDE_ADDR6
from portway.testbed import WAIT_LISTENING as WAIT


def served(sb: Sandbox, name: str, *args: str) -> None:
    sb.pw("run", "-d", "--name", name, *args, "--", "python3", "-m", "http.server",
          "--bind", "::", "80")
    sb.pw("exec", name, "--", "python3", "-c", WAIT, "::1", "80")


@pytest.fixture
def paths6(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    """Two dual-stack networks, an IPv6-only one, an IPv4-only one, and an HTTP server
    in the outside namespace on [OUTSIDE_ADDR6]:9000 (its log: who connected)."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.160.0.0/24", "--subnet",
          "fd00:160::/64")
    sb.pw("network", "create", "db", "--ipv6", "--subnet", "10.161.0.0/24", "--subnet",
          "fd00:161::/64")
    sb.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet", "fd00:162::/64")
    sb.pw("network", "create", "four", "--subnet", "10.163.0.0/24")
    served(sb, "web", "--network", "app", "-p", "8080:80")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    served(sb, "store", "--network", "db")
    served(sb, "only", "--network", "six")
    sb.pw("run", "-d", "--name", "solo", "--network", "six", "--", "sleep", "3600")
    served(sb, "old", "--network", "four", "-p", "9090:80", "-p", "5353:53/udp")
    log = tmp_path / "outside.log"
    with log.open("w") as out:
        server = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-m",
                                   "http.server", "9000", "--bind", "::"], stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        sh("ip", "netns", "exec", sb.outside, "python3", "-c", WAIT, "::1", "9000")
        yield sb, log
    finally:
        server.kill()
        server.wait()


def test_ipv6_paths_agree_with_real_connections(paths6: tuple[Sandbox, Path]) -> None:
    sb, log = paths6
    in_cli = sb.pw_cmd("exec", "cli", "--")
    outside = ["ip", "netns", "exec", sb.outside]

    # Container to container over IPv6: bridged, the icc rule accepts, delivered.
    t = trace(sb, "cli", "web:80", "-6")
    assert t["verdict"] == "delivered" and t["family"] == "ipv6"
    assert (t["seen_source"], t["seen_destination"]) == ("fd00:160::3", "[fd00:160::2]:80")
    assert any("between its containers (icc)" in r for r in rules(t))
    assert any("bridge-nf-call-ip6tables=1" in h["detail"] for h in t["hops"])
    assert attempt(in_cli, "http://[fd00:160::2]/") == "200"
    assert last_client(sb, "web") == t["seen_source"]

    # Across networks: isolated over IPv6 as over IPv4; the kernel names the same rule.
    t = trace(sb, "cli", "store:80", "-6")
    assert t["verdict"] == "dropped" and "isolation" in rules(t)[-1]
    assert "isolation" in kernel_rules(t)[-1]
    assert attempt(in_cli, "http://[fd00:161::2]/").startswith("fail")

    # Out through NAT66: the outside sees the host's IPv6 address.
    t = trace(sb, "cli", f"[{OUTSIDE_ADDR6}]:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == HOST_ADDR6
    assert any("outbound masquerade" in r for r in rules(t))
    assert t["live"]["stopped_at"] is not None  # stopped at the uplink, never sent
    assert attempt(in_cli, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200"
    assert log.read_text().splitlines()[-1].split()[0] == HOST_ADDR6

    # From outside to the port published on the host's IPv6 address: DNAT, and the
    # container sees the client's own address.
    t = trace(sb, "outside", "web:80", "--from-ip", OUTSIDE_ADDR6)
    assert t["verdict"] == "delivered" and t["family"] == "ipv6"
    assert (t["seen_source"], t["seen_destination"]) == (OUTSIDE_ADDR6, "[fd00:160::2]:80")
    assert "published ports on every host address (IPv6)" in rules(t)
    assert attempt(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
    assert last_client(sb, "web") == OUTSIDE_ADDR6
    # The same by the host address, and from the default client (no --from-ip): -6.
    t = trace(sb, "outside", f"[{HOST_ADDR6}]:8080", "--from-ip", OUTSIDE_ADDR6)
    assert t["verdict"] == "delivered" and t["seen_destination"] == "[fd00:160::2]:80"
    t = trace(sb, "outside", "web:80", "-6")
    assert t["verdict"] == "delivered" and t["seen_source"] == "2001:db8:113::10"

    # From outside to an unpublished IPv6 address, with a route to it: dropped.
    sh("ip", "-n", sb.outside, "-6", "route", "add", "fd00:160::/64", "via", HOST_ADDR6)
    t = trace(sb, "outside", "[fd00:160::3]:80", "--from-ip", OUTSIDE_ADDR6)
    assert t["verdict"] == "dropped" and "no direct access" in rules(t)[-1]
    assert "no direct access" in kernel_rules(t)[-1]
    assert attempt(outside, "http://[fd00:160::2]/").startswith("fail")

    # Hairpin over IPv6: masqueraded to the IPv6 gateway.
    t = trace(sb, "web", f"[{HOST_ADDR6}]:8080")
    assert t["verdict"] == "delivered" and t["seen_source"] == "fd00:160::1"
    assert any("hairpin" in r for r in rules(t))
    assert attempt(sb.pw_cmd("exec", "web", "--"), f"http://[{HOST_ADDR6}]:8080/") == "200"
    assert last_client(sb, "web") == "fd00:160::1"

    # The host to its own IPv6 address: DNAT in output. To ::1: not DNATed (IPv6
    # could not bring the answer back): nothing listens there (refused at once), or
    # portwayd's socket that holds the port relays it in user space.
    t = trace(sb, "host", f"[{HOST_ADDR6}]:8080")
    assert t["verdict"] == "delivered" and t["seen_destination"] == "[fd00:160::2]:80"
    in_host = ["ip", "netns", "exec", sb.host]
    assert attempt(in_host, f"http://[{HOST_ADDR6}]:8080/") == "200"
    t = trace(sb, "host", "[::1]:8080")
    assert not any("DNAT" in h["detail"] for h in t["hops"])
    assert (t["verdict"], attempt(in_host, "http://[::1]:8080/")) in (
        ("no-listener", "fail URLError"), ("delivered", "200"))
    # ::1 from outside: dropped by IPv6 itself on arrival, before any netfilter hook.
    t = trace(sb, "outside", "[::1]:8080", "--from-ip", OUTSIDE_ADDR6)
    assert t["verdict"] == "dropped" and "martian" in t["summary"]
    assert t["live"]["hops"] == []

    # An IPv4-only container's published port: DNATed over IPv4; over IPv6 no rule
    # takes it, and what holds the port on the host lets nothing in from outside.
    t = trace(sb, "outside", f"{sb.host_addr}:9090", "--from-ip", sb.outside_addr)
    assert t["verdict"] == "delivered" and t["seen_destination"] == "10.163.0.2:80"
    assert attempt(outside, f"http://{sb.host_addr}:9090/") == "200"
    t = trace(sb, "outside", f"[{HOST_ADDR6}]:9090", "--from-ip", OUTSIDE_ADDR6)
    assert t["verdict"] in ("dropped", "no-listener")
    assert not any("DNAT" in h["detail"] for h in t["hops"])
    assert attempt(outside, f"http://[{HOST_ADDR6}]:9090/").startswith("fail")
    # The same for UDP: the kernel counts the datagram the held socket's filter drops.
    t = trace(sb, "outside", f"[{HOST_ADDR6}]:5353/udp", "--from-ip", OUTSIDE_ADDR6)
    assert t["verdict"] == "dropped" and "socket filter" in t["summary"]
    t = trace(sb, "outside", f"{sb.host_addr}:5353/udp", "--from-ip", sb.outside_addr)
    assert t["verdict"] == "no-listener" and t["seen_destination"] == "10.163.0.2:53"

    # Nothing listening on the port over IPv6: a reset from the container.
    t = trace(sb, "cli", "web:81", "-6")
    assert t["verdict"] == "no-listener"
    assert attempt(in_cli, "http://[fd00:160::2]:81/") == "fail URLError"


def test_ipv6_only_network(paths6: tuple[Sandbox, Path]) -> None:
    sb, log = paths6
    in_solo = sb.pw_cmd("exec", "solo", "--")
    # Between its containers, by name: IPv6 is the only family, no -6 needed.
    t = trace(sb, "solo", "only:80")
    assert t["verdict"] == "delivered" and t["family"] == "ipv6"
    assert t["seen_destination"] == "[fd00:162::2]:80"
    assert not any(n.startswith("only has IPv4 and IPv6") for n in t["notes"])
    assert attempt(in_solo, "http://only/") == "200"
    assert last_client(sb, "only") == t["seen_source"] == "fd00:162::3"
    # Out through NAT66.
    t = trace(sb, "solo", f"[{OUTSIDE_ADDR6}]:9000")
    assert t["verdict"] == "leaves-host" and t["seen_source"] == HOST_ADDR6
    assert attempt(in_solo, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200"
    assert log.read_text().splitlines()[-1].split()[0] == HOST_ADDR6
    # A dual-stack container to it: IPv6 (the only family they share); isolated.
    t = trace(sb, "cli", "only:80")
    assert t["verdict"] == "dropped" and t["family"] == "ipv6"
    assert attempt(sb.pw_cmd("exec", "cli", "--"), "http://[fd00:162::2]/").startswith("fail")
    # An IPv4-only container has no IPv6 route at all.
    t = trace(sb, "old", f"[{OUTSIDE_ADDR6}]:9000")
    assert t["verdict"] == "no-route"
    assert attempt(sb.pw_cmd("exec", "old", "--"),
                   f"http://[{OUTSIDE_ADDR6}]:9000/").startswith("fail")


def test_dual_stack_destination_family(paths6: tuple[Sandbox, Path]) -> None:
    """A container with both families: IPv4 by default, as clients try it first for
    unique local addresses; -6 and -4 choose; the text says which and how."""
    sb, _ = paths6
    data: dict[str, Any] = json.loads(sb.pw("trace", "cli", "web:80", "--json").stdout)
    assert data["family"] == "ipv4" and data["seen_destination"] == "10.160.0.2:80"
    assert any("-6 traces the other" in n for n in data["notes"])
    assert json.loads(sb.pw("trace", "cli", "web:80", "-4", "--json").stdout)["family"] == \
        "ipv4"
    text = sb.pw("trace", "cli", "web:80", "-6").stdout
    assert text.splitlines()[-1] == ("verdict: delivered: delivered to container web, "
                                     "[fd00:160::2]:80/tcp (seen as fd00:160::3 -> "
                                     "[fd00:160::2]:80)")
    # UDP over IPv6, static and live: nothing listens, the kernel answers ICMPv6.
    t = trace(sb, "cli", "web:53/udp", "-6")
    assert t["verdict"] == "no-listener" and t["protocol"] == "udp"


def test_ipv6_trace_bad_input(paths6: tuple[Sandbox, Path]) -> None:
    sb, _ = paths6
    for args, words in ((["cli", "fd00:160::2"], "no port in 'fd00:160::2'"),
                        (["cli", "fd00:160::2:80"], "[fd00:160::2]:80 for port 80 of "
                                                    "fd00:160::2, or [fd00:160::2:80]:80"),
                        (["cli", "[fd00:160::2]"], "say which port: [fd00:160::2]:80, or "
                                                   "[fd00:160::2]:53/udp"),
                        (["cli", "[fd00:160::2]80"], "malformed destination"),
                        (["cli", "[web]:80"], "invalid IPv6 address 'web'"),
                        (["cli", "web:80", "-4", "-6"], "exclude each other"),
                        (["cli", "only:80", "-4"], "container only has no IPv4 address"),
                        (["old", "web:80", "-6"], None),
                        (["outside", "10.160.0.2:80", "--from-ip", OUTSIDE_ADDR6],
                         "is IPv4, but --from-ip"),
                        (["outside", "web:80", "--from-ip", OUTSIDE_ADDR6, "-4"],
                         "but -4 asks for IPv4"),
                        (["cli", "[::1]:80", "-4"], "is IPv6, but -4")):
        cp = sb.pw("trace", *args, check=False)
        if words is None:  # allowed: the source's lack of IPv6 shows as the verdict
            assert cp.returncode == 0 and "verdict: no-route" in cp.stdout, cp.stderr
            assert "container old has no IPv6 address" in cp.stdout, cp.stdout
            continue
        assert cp.returncode == 2 and words in cp.stderr, (args, cp.stderr)
        assert cp.stderr.count("\n") == 1 and "Traceback" not in cp.stderr


def test_a_container_with_ipv6_turned_off_is_named(sandbox: Sandbox) -> None:
    # "IPv6 works on the host but not in the container": a sysctl run inside it turned
    # IPv6 off on its eth0, which took the address its network gave it. The real
    # connection over IPv6 fails (IPv4 still works); trace names the container and the
    # sysctl instead of "no container holds the address".
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.164.0.0/24", "--subnet",
          "fd00:164::/64")
    served(sb, "web", "--network", "app", "-p", "8080:80")
    key = json.loads(sb.pw("inspect", "web").stdout)[0]["NetworkSettings"]["SandboxKey"]
    sh("ip", "netns", "exec", Path(key).name, "sysctl", "-qw",
       "net.ipv6.conf.eth0.disable_ipv6=1")
    outside = ["ip", "netns", "exec", sb.outside]
    assert attempt(outside, f"http://[{HOST_ADDR6}]:8080/").startswith("fail")
    assert attempt(outside, f"http://{HOST_ADDR}:8080/") == "200"
    t = json.loads(sb.pw("trace", "outside", "web:80", "-6", "--json").stdout)
    assert t["verdict"] == "no-route"
    assert t["summary"] == "container web has IPv6 turned off on eth0 " \
                           "(net.ipv6.conf.eth0.disable_ipv6=1)"
    assert "sysctl -w net.ipv6.conf.eth0.disable_ipv6=0" in t["fix"]
