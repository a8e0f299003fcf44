"""IPv6 everywhere IPv4 works: dual-stack and IPv6-only networks, with real connections.

The sandbox's uplink has documentation addresses of both families (testbed), so NAT66
and published ports are tried from the "outside" namespace as for IPv4. Every attack
is shown working with portway's defence taken away first (the control).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Sandbox, ip_json, sh
from portway.testbed import CONNECT, HOST_ADDR6, OUTSIDE_ADDR6, WAIT_LISTENING

FRAMES = str(Path(__file__).with_name("frames.py"))
GET = ("import sys, urllib.request as u\n"
       "try: print(u.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)\n"
       "except Exception as e: print('fail', type(e).__name__)\n")
LISTEN6 = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
           "s.bind(('::', int(sys.argv[1])))\n"
           "while True:\n"
           "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")
SEND6 = ("import socket, sys\n"
         "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
         "if len(sys.argv) > 4: s.bind((sys.argv[4], 0, 0, socket.if_nametoindex('eth0')))\n"
         "s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n")


def get(where: list[str], url: str, timeout: float = 3) -> str:
    return subprocess.run([*where, "python3", "-c", GET, url, str(timeout)],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def served(sb: Sandbox, name: str, *args: str) -> None:
    sb.pw("run", "-d", "--name", name, *args, "--", "python3", "-m", "http.server",
          "--bind", "::", "80")
    sb.pw("exec", name, "--", "python3", "-c", WAIT_LISTENING, "::1", "80")


def networks(sb: Sandbox, name: str) -> dict[str, dict[str, object]]:
    return sb.inspect(name)["NetworkSettings"]["Networks"]  # type: ignore[index, return-value]


def netns_of(sb: Sandbox, name: str) -> str:
    return str(sb.inspect(name)["NetworkSettings"]["SandboxKey"]).rsplit("/", 1)[1]  # type: ignore[index]


def outside_server(sb: Sandbox, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("w")
    proc = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-m",
                             "http.server", "9000", "--bind", "::"], stdout=out,
                            stderr=subprocess.STDOUT)
    out.close()
    sh("ip", "netns", "exec", sb.outside, "python3", "-c", WAIT_LISTENING, "::1", "9000")
    return proc


def test_dual_stack_end_to_end(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    log = tmp_path / "outside.log"
    server = outside_server(sb, log)
    try:
        sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.140.0.0/24",
              "--subnet", "fd00:140::/64")
        served(sb, "web", "--network", "app", "-p", "8080:80")
        sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
        web = networks(sb, "web")["app"]
        assert (web["IPAddress"], web["GlobalIPv6Address"], web["IPv6Gateway"],
                web["GlobalIPv6PrefixLen"]) == ("10.140.0.2", "fd00:140::2", "fd00:140::1", 64)
        net = json.loads(sb.pw("network", "inspect", "app").stdout)[0]
        assert net["EnableIPv6"] is True and [c["Subnet"] for c in net["IPAM"]["Config"]] \
            == ["10.140.0.0/24", "fd00:140::/64"]
        cli = sb.pw_cmd("exec", "cli", "--")
        # Container to container, by address and by name (AAAA), both families.
        assert get(cli, "http://[fd00:140::2]/") == "200"
        assert get(cli, "http://10.140.0.2/") == "200"
        aaaa = sb.pw("exec", "cli", "--", "getent", "ahostsv6", "web").stdout
        assert aaaa.split()[0] == "fd00:140::2"
        ptr = sb.pw("exec", "cli", "--", "dig", "+short", "-x", "fd00:140::2",
                    "@fd00:140::1").stdout.split()
        assert ptr == ["web."]
        assert "fd00:140::3\t" in sb.pw("exec", "cli", "--", "cat", "/etc/hosts").stdout
        # Between containers of one network: bridged, never NATed, no conntrack entry.
        # To a published port on the gateway (a hairpin): DNATed, so tracked; it works.
        assert get(cli, "http://10.140.0.1:8080/") == "200"
        assert get(cli, "http://[fd00:140::1]:8080/") == "200"
        flows = sh("ip", "netns", "exec", sb.host, "conntrack", "-L", "-p", "tcp").stdout
        assert "src=10.140.0.3 dst=10.140.0.1 " in flows  # the hairpins, tracked
        assert "src=fd00:140::3 dst=fd00:140::1 " in flows
        assert "src=10.140.0.3 dst=10.140.0.2 " not in flows, flows  # the direct ones not
        assert "src=fd00:140::3 dst=fd00:140::2 " not in flows, flows
        # Out through NAT66: the outside sees the host's IPv6 address.
        assert get(cli, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200"
        assert f"{HOST_ADDR6} - -" in log.read_text()
        # A published port over IPv6, from outside; the container sees the client.
        outside = ["ip", "netns", "exec", sb.outside]
        assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        assert f"{OUTSIDE_ADDR6} - -" in sb.pw("logs", "web").stdout
        assert get(outside, f"http://{sb.host_addr}:8080/") == "200"
        # Shown as Docker 27 shows a port published on both families.
        assert sb.pw("port", "web").stdout.splitlines() == ["80/tcp -> 0.0.0.0:8080",
                                                           "80/tcp -> [::]:8080"]
        assert sb.inspect("web")["NetworkSettings"]["Ports"] == {  # type: ignore[index]
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                       {"HostIp": "::", "HostPort": "8080"}]}
        # Unpublished: not reachable from outside even with a route to the subnet.
        sh("ip", "-n", sb.outside, "-6", "route", "add", "fd00:140::/64", "via", HOST_ADDR6)
        assert get(outside, "http://[fd00:140::2]/", 1).startswith("fail")
        # ::1 cannot be DNATed (IPv6 could not bring the answer back): relayed.
        assert get(["ip", "netns", "exec", sb.host], "http://[::1]:8080/", 2) == "200"
        assert sb.pw("doctor").stdout.startswith("healthy")
        # The IPv6 rules come back after a flush, as the IPv4 ones do.
        sb.in_host("nft", "flush", "ruleset")
        assert "re-create table inet portway" in sb.pw("gc").stdout
        assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        assert get(cli, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200"
        assert sb.pw("doctor").stdout.startswith("healthy")
    finally:
        server.kill()
        server.wait()


def test_routed_ipv6_opens_published_container_ports(sandbox: Sandbox, tmp_path: Path) -> None:
    """Docker 27's gateway_mode_ipv6=routed (its own example): IPv6 leaves without NAT66,
    and a published container port is open at the container's own address to a client
    that routes the subnet to the host; one published on one host address only, or not
    at all, stays closed there (the control).
    IPv4 keeps NAT: its published port on the host, no direct access."""
    sb = sandbox
    log = tmp_path / "outside.log"
    server = outside_server(sb, log)
    try:
        sb.pw("network", "create", "--ipv6", "--subnet", "10.141.0.0/24", "--subnet",
              "fd00:141::/64", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed",
              "r6")
        served(sb, "web", "--network", "r6", "-p", "8080:80")
        served(sb, "quiet", "--network", "r6", "-p", f"[{HOST_ADDR6}]:8081:80")
        sh("ip", "-n", sb.outside, "-6", "route", "add", "fd00:141::/64", "via", HOST_ADDR6)
        sh("ip", "-n", sb.outside, "route", "add", "10.141.0.0/24", "via", sb.host_addr)
        outside = ["ip", "netns", "exec", sb.outside]
        assert get(outside, "http://[fd00:141::2]/") == "200"
        assert f"{OUTSIDE_ADDR6} - -" in sb.pw("logs", "web").stdout
        # quiet's port is published on one host address: that narrow, not opened at
        # the container's own address.
        assert get(outside, "http://[fd00:141::3]/", 1).startswith("fail")
        assert get(outside, f"http://[{HOST_ADDR6}]:8081/") == "200"
        assert get(outside, "http://10.141.0.2/", 1).startswith("fail")
        assert get(outside, f"http://{sb.host_addr}:8080/") == "200"
        trace = json.loads(sb.pw("trace", "--json", "outside", "[fd00:141::2]:80").stdout)
        assert trace["verdict"] == "delivered", trace
        # Out without NAT66: the outside sees the container's own address.
        web = sb.pw_cmd("exec", "web", "--")
        assert get(web, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200"
        assert "fd00:141::2 - -" in log.read_text()
        # Its element goes with the container; gc keeps it while it runs.
        assert sb.pw("doctor").stdout.startswith("healthy")
        # A stray element opens a port all the same (quiet's, the control): doctor names
        # it, whether its container is gone or only no longer has it, and gc deletes it.
        listing = json.loads(sb.in_host("nft", "-j", "list", "set", "inet", "portway",
                                        "routed_ports6").stdout)
        (elem,) = [i["set"]["elem"][0]["elem"] for i in listing["nftables"] if "set" in i]
        prefix = str(elem["comment"]).rsplit(":", 2)[0]  # portway:INSTANCE
        quiet = str(sb.inspect("quiet")["Id"])
        for address, owner in (("fd00:141::3", quiet), ("fd00:141::9", "ee" * 32)):
            sb.in_host("nft", "add", "element", "inet", "portway", "routed_ports6",
                       f'{{ {address} . tcp . 80 comment "{prefix}:container:{owner}" }}')
        assert get(outside, "http://[fd00:141::3]/") == "200"
        doctor = sb.pw("doctor", check=False)
        assert doctor.returncode == 1, doctor.stdout
        for address, why in (("fd00:141::3", f"{quiet[:12]} no longer has it"),
                             ("fd00:141::9", "eeeeeeeeeeee is not in the store")):
            assert f"delete element {address} . tcp . 80 of inet portway routed_ports6: " \
                f"portway container {why}" in doctor.stdout, doctor.stdout
        sb.pw("gc")
        assert get(outside, "http://[fd00:141::3]/", 1).startswith("fail")
        assert get(outside, "http://[fd00:141::2]/") == "200"
        assert sb.pw("doctor").stdout.startswith("healthy")
        sb.pw("stop", "web")
        assert "fd00:141::2" not in sb.in_host("nft", "list", "set", "inet", "portway",
                                               "routed_ports6").stdout
    finally:
        server.kill()
        server.wait()


UDP_ECHO = ("import socket\n"
            "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "s.bind(('::', 5300))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(2048); s.sendto(data + b' ' + peer[0].encode(), peer)\n")
UDP_ASK = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)\n"
           "s.sendto(b'hello', (sys.argv[1], int(sys.argv[2])))\n"
           "try: print(s.recv(2048).decode())\n"
           "except OSError as e: print('fail', type(e).__name__)\n")


NAMED_ECHO = ("import socket, sys\n"
              "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
              "s.bind(('::', 5300))\n"
              "while True:\n"
              "    data, peer = s.recvfrom(2048); s.sendto(sys.argv[1].encode(), peer)\n")
# One datagram from a fixed source port (the same flow, call after call).
ASK_FROM = ("import socket, sys\n"
            "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(1)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('::', int(sys.argv[3])))\n"
            "s.sendto(b'hello', (sys.argv[1], int(sys.argv[2])))\n"
            "try: print(s.recv(2048).decode())\n"
            "except OSError as e: print('fail', type(e).__name__)\n")


def test_flows_end_with_the_container_that_had_the_address(sandbox: Sandbox) -> None:
    """A flow the outside had with a routed container's published UDP port ends when the
    container goes: the next container given its address does not get that flow's
    datagrams at a port it never published; nor those of a flow to the host port of
    the NATed family (IPv4 here), which kept its DNAT binding. The control: while the
    first container runs, the flows get through; a new flow to the next container's
    port is dropped."""
    sb = sandbox
    sb.pw("network", "create", "--ipv6", "--subnet", "10.142.0.0/24", "--subnet",
          "fd00:142::/64", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed",
          "r6")
    sh("ip", "-n", sb.outside, "-6", "route", "add", "fd00:142::/64", "via", HOST_ADDR6)
    outside = ["ip", "netns", "exec", sb.outside]

    def ask(sport: int, to: str = "fd00:142::2") -> str:
        for _ in range(3):  # the server may still be starting
            answer = sh(*outside, "python3", "-c", ASK_FROM, to, "5300",
                        str(sport)).stdout.strip()
            if not answer.startswith("fail"):
                break
        return answer

    sb.pw("run", "-d", "--name", "old", "--network", "r6", "-p", "5300:5300/udp", "--",
          "python3", "-c", NAMED_ECHO, "old")
    nat = f"::ffff:{sb.host_addr}"  # the IPv4 host port, from the same kind of socket
    for _ in range(2):
        assert ask(40000) == "old"
        assert ask(40010, nat) == "old"
    sb.pw("rm", "-f", "old")
    sb.pw("run", "-d", "--name", "next", "--network", "r6", "--", "python3", "-c",
          NAMED_ECHO, "next")
    assert networks(sb, "next")["r6"]["GlobalIPv6Address"] == "fd00:142::2"
    for _ in range(20):  # its server answers (from inside) before anything is asked
        if sb.pw("exec", "next", "--", "python3", "-c", ASK_FROM, "::1", "5300",
                 "40002").stdout.strip() == "next":
            break
    else:
        raise AssertionError("next's server never answered")
    assert ask(40001).startswith("fail")
    assert ask(40011, nat).startswith("fail")
    assert ask(40000).startswith("fail")
    assert ask(40010, nat).startswith("fail")
    sb.pw("rm", "-f", "next")
    sb.pw("network", "rm", "r6")


def test_published_ports_from_the_hosts_ipv6_loopback(sandbox: Sandbox) -> None:
    """::1 cannot be DNATed: what reaches a published port there is relayed to the
    container, for either family, TCP and UDP, and only from the host itself."""
    sb = sandbox
    sb.pw("network", "create", "four", "--subnet", "10.149.0.0/24")
    served(sb, "web", "--network", "four", "-p", "8081:80", "-p", "[::1]:8082:80")
    sb.pw("run", "-d", "--name", "echo", "--network", "four", "-p", "5300:5300/udp", "--",
          "python3", "-c", UDP_ECHO)
    host = ["ip", "netns", "exec", sb.host]
    assert sb.pw("port", "web").stdout.splitlines() == ["80/tcp -> 0.0.0.0:8081",
                                                       "80/tcp -> [::1]:8082"]
    # An IPv4-only container, reached from the host's ::1 on both ports; the container
    # sees its gateway (the relay connects from the host).
    assert get(host, "http://[::1]:8081/") == "200"
    assert get(host, "http://[::1]:8082/") == "200"
    assert get(host, "http://127.0.0.1:8081/") == "200"
    assert "10.149.0.1 - -" in sb.pw("logs", "web").stdout
    echo = sb.pw_cmd("exec", "echo", "--")
    sh(*echo, "python3", "-c", WAIT_LISTENING, "::1", "5300", check=False)
    assert sh(*host, "python3", "-c", UDP_ASK, "::1", "5300").stdout.strip() == \
        "hello ::ffff:10.149.0.1"
    # Only from the host: over IPv6 from outside the IPv4-only port stays closed (the
    # relay's filter drops what does not come from the loopback; no answer at all).
    outside = ["ip", "netns", "exec", sb.outside]
    assert get(outside, f"http://[{HOST_ADDR6}]:8081/", 2) == "fail URLError"
    assert get(outside, f"http://{sb.host_addr}:8081/") == "200"
    # A new daemon relays again (it holds the ports again when it adopts the containers).
    sb.pw("daemon", "stop")
    assert get(host, "http://[::1]:8082/") in ("200", "fail URLError")
    sb.pw("ps")
    assert get(host, "http://[::1]:8082/") == "200"
    # Removed: nothing listens any more.
    sb.pw("rm", "-f", "web", "echo")
    assert ":8081" not in sb.in_host("ss", "-ltn").stdout
    assert get(host, "http://[::1]:8082/", 1) == "fail URLError"


def test_ipv6_only_network(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    server = outside_server(sb, tmp_path / "outside.log")
    try:
        sb.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet",
              "fd00:141::/64")
        served(sb, "web", "--network", "six", "--ip6", "fd00:141::80")
        sb.pw("run", "-d", "--name", "cli", "--network", "six", "--", "sleep", "3600")
        assert networks(sb, "web")["six"]["GlobalIPv6Address"] == "fd00:141::80"
        assert networks(sb, "web")["six"]["IPAddress"] == ""
        (eth0,) = ip_json(netns_of(sb, "cli"), "addr", "show", "eth0")
        assert [a["family"] for a in eth0["addr_info"]] == ["inet6"]  # type: ignore[union-attr]
        resolv = sb.pw("exec", "cli", "--", "cat", "/etc/resolv.conf").stdout
        assert resolv.startswith("nameserver fd00:141::1\n")
        cli = sb.pw_cmd("exec", "cli", "--")
        assert get(cli, "http://web/") == "200"  # a name, over IPv6 only
        assert get(cli, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200"
        cp = sb.pw("run", "-d", "--network", "six", "--ip", "10.1.1.1", "--", "sleep", "1",
                   check=False)
        assert cp.returncode == 2 and "has no IPv4 subnet" in cp.stderr
    finally:
        server.kill()
        server.wait()


def _delete_rule(sb: Sandbox, family: str, chain: str, comment: str) -> None:
    listing = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", family, "portway",
                                    chain).stdout)["nftables"]
    handle = next(i["rule"]["handle"] for i in listing
                  if "rule" in i and comment in i["rule"].get("comment", ""))
    sb.in_host("nft", "delete", "rule", family, "portway", chain, "handle", str(handle))


def test_isolation_icc_and_internal_over_ipv6(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    server = outside_server(sb, tmp_path / "outside.log")
    host_service = subprocess.Popen(["ip", "netns", "exec", sb.host, "python3", "-m",
                                     "http.server", "9100", "--bind", "::"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for name, third, extra in (("a", 142, []), ("b", 143, []),
                                   ("quiet", 144, ["-o",
                                                   "com.docker.network.bridge.enable_icc=false"]),
                                   ("inner", 145, ["--internal"])):
            sb.pw("network", "create", name, "--ipv6", "--subnet", f"10.{third}.0.0/24",
                  "--subnet", f"fd00:{third}::/64", *extra)
        served(sb, "wb", "--network", "b")
        served(sb, "q1", "--network", "quiet")
        for name, net in (("wa", "a"), ("q2", "quiet"), ("in1", "inner")):
            sb.pw("run", "-d", "--name", name, "--network", net, "--", "sleep", "3600")
        wa, q2, in1 = (sb.pw_cmd("exec", n, "--") for n in ("wa", "q2", "in1"))
        assert get(wa, "http://[fd00:143::2]/", 1).startswith("fail")
        assert get(q2, "http://[fd00:144::2]/", 1).startswith("fail")
        # Internal: no way out, and of the host only DNS on its gateway.
        assert get(in1, f"http://[{OUTSIDE_ADDR6}]:9000/", 1).startswith("fail")
        assert get(in1, "http://[fd00:145::1]:9100/", 1).startswith("fail")
        assert sb.pw("exec", "in1", "--", "dig", "+short", "AAAA", "@fd00:145::1",
                     "in1").stdout.split() == ["fd00:145::2"]
        # Controls: the same over IPv6 works without the isolation and icc rules.
        ids = {n["Name"]: n["Id"][:12] for n in json.loads(sb.pw("network", "ls",
                                                                 "--json").stdout)}
        _delete_rule(sb, "inet", f"in-{ids['a']}", "isolation")
        _delete_rule(sb, "inet", f"out-{ids['b']}", "no direct access")
        _delete_rule(sb, "inet", f"in-{ids['quiet']}", "(icc)")
        _delete_rule(sb, "inet", f"in-{ids['quiet']}", "isolation")
        _delete_rule(sb, "inet", f"out-{ids['quiet']}", "no direct access")
        # (icc=false held back q2's neighbour discovery too: it asks again.)
        sh("ip", "-n", netns_of(sb, "q2"), "-6", "neigh", "flush", "all")
        assert get(wa, "http://[fd00:143::2]/") == "200"
        assert get(q2, "http://[fd00:144::2]/") == "200"
        assert sb.pw("gc").stdout.count("restore chain inet portway") == 4
        assert get(wa, "http://[fd00:143::2]/", 1).startswith("fail")
        assert get(q2, "http://[fd00:144::2]/", 1).startswith("fail")
    finally:
        for proc in (server, host_service):
            proc.kill()
            proc.wait()


def test_addresses_a_container_gives_itself(sandbox: Sandbox, tmp_path: Path) -> None:
    """An attacker with NET_ADMIN adds an unassigned address of its subnet and a
    link-local one, and sends from each to its neighbour."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.146.0.0/24", "--subnet",
          "fd00:146::/64")
    sb.pw("run", "-d", "--name", "victim", "--network", "app", "--", "python3", "-u", "-c",
          LISTEN6, "9999")
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--cap-add", "NET_ADMIN",
          "--", "sleep", "3600")
    for address in ("fd00:146::99/64", "fe80::99/64"):
        sb.pw("exec", "attacker", "--", "ip", "addr", "add", address, "dev", "eth0", "nodad")

    def attack(round_: str) -> str:
        for source in ("fd00:146::99", "fe80::99"):
            sb.pw("exec", "attacker", "--", "python3", "-c", SEND6, "fd00:146::2", "9999",
                  f"{round_}-{source}", source)
        sb.pw("exec", "attacker", "--", "python3", "-c", SEND6, "fd00:146::2", "9999",
              f"{round_}-honest", "fd00:146::3")
        deadline = time.monotonic() + 5
        while f"{round_}-honest" not in sb.pw("logs", "victim").stdout:
            assert time.monotonic() < deadline, sb.pw("logs", "victim").stdout
            time.sleep(0.05)
        return sb.pw("logs", "victim").stdout

    _delete_rule(sb, "bridge", "spoof_ip6", "its own IPv6 address")
    seen = attack("control")
    assert "control-fd00:146::99 fd00:146::99" in seen and "control-fe80::99" in seen
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    seen = attack("guarded")
    assert "guarded-honest fd00:146::3" in seen
    assert "guarded-fd00" not in seen and "guarded-fe80" not in seen


@pytest.mark.parametrize("options", [
    [],
    # With icc off and IPv6 routed, neighbour discovery passes between the containers
    # (a hairpin's answer goes straight back): the checks of what each sends still hold.
    ["-o", "com.docker.network.bridge.enable_icc=false",
     "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed"]])
def test_router_and_neighbour_spoofing_over_ipv6(sandbox: Sandbox, options: list[str]) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.147.0.0/24", "--subnet",
          "fd00:147::/64", *options)
    for name in ("victim", "other", "attacker"):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--", "python3", "-u", "-c",
              LISTEN6, "9999")
    attacker = networks(sb, "attacker")["app"]
    victim, other = networks(sb, "victim")["app"], networks(sb, "other")["app"]
    victim_ns = netns_of(sb, "victim")
    mac = str(attacker["MacAddress"])

    def attack() -> tuple[bool, bool]:
        """(the victim took a default route from the attacker's advertisement, the
        victim's neighbour entry for `other` points to the attacker)"""
        sb.in_host("ip", "-n", victim_ns, "-6", "neigh", "flush", "all", check=False)
        # The victim learns `other` honestly first (an unsolicited advertisement only
        # updates an entry that exists).
        sb.pw("exec", "victim", "--", "python3", "-c", SEND6, str(other["GlobalIPv6Address"]),
              "9999", "hello")
        time.sleep(0.3)
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "ra", "eth0", mac,
              "33:33:00:00:00:01", "2001:db8:bad::/64")
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "na", "eth0", mac,
              str(attacker["GlobalIPv6Address"]), victim["MacAddress"],
              str(victim["GlobalIPv6Address"]), str(other["GlobalIPv6Address"]), mac)
        time.sleep(0.3)
        routes = sh("ip", "-n", victim_ns, "-6", "route", "show", "default").stdout
        neigh = sh("ip", "-n", victim_ns, "-6", "neigh", "show",
                   str(other["GlobalIPv6Address"])).stdout
        return "proto ra" in routes, mac in neigh

    # Control: without the rules against routers' messages, foreign sources and
    # advertisements for others' addresses, both attacks work.
    for comment in ("advertises no routes", "its own IPv6 address", "only for its own"):
        _delete_rule(sb, "bridge", "spoof_ip6", comment)
    # (With icc off an advertisement of a router never reaches another container: only
    # neighbour discovery passes.)
    assert attack() == (not options, True)
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    sh("ip", "-n", victim_ns, "-6", "route", "flush", "proto", "ra")
    assert attack() == (False, False)


@pytest.mark.parametrize(("kind", "checks"), [
    ("na", ["names only the port's own MAC"]),
    ("ns", ["names only the port's own MAC"]),
    # The option behind another one (a nonce): the first option is no link-layer address.
    ("ns-nonce", ["carries at most one option"]),
    ("rs", ["router solicitations name only"])])
def test_neighbour_discovery_names_only_the_senders_own_mac(sandbox: Sandbox, kind: str,
                                                            checks: list[str]) -> None:
    """An advertisement for a container's own address, or a neighbour or router
    solicitation from it, but with another container's MAC in its link-layer address
    option, points the host's neighbour entry for the sender at the other container:
    what the host sends to the sender (the replies of its connections) goes to that one's
    port instead. ARP's counterpart, a sender MAC that is not the port's, is dropped
    ("ARP: only its own MAC"). It works with the check deleted, and not once gc has put
    it back."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.146.0.0/24", "--subnet",
          "fd00:146::/64")
    for name in ("victim", "attacker"):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--", "python3", "-u", "-c",
              LISTEN6, "9999")
    attacker, victim = networks(sb, "attacker")["app"], networks(sb, "victim")["app"]
    address, mac = str(attacker["GlobalIPv6Address"]), str(attacker["MacAddress"])
    bridge = next(str(link["ifname"]) for link in ip_json(sb.host, "link", "show")
                  if str(link["ifname"]).startswith("pwbr-"))
    bridge_mac = str(ip_json(sb.host, "link", "show", bridge)[0]["address"])
    frame = {"na": ["na", bridge_mac, "fd00:146::1", address],
             "ns": ["ns", bridge_mac, "fd00:146::1", "fd00:146::1"],
             "ns-nonce": ["ns", bridge_mac, "fd00:146::1", "fd00:146::1"],
             "rs": ["rs", "33:33:00:00:00:02", "ff02::2"]}[kind]

    def host_sends(marker: str) -> bool:
        """Whether the attacker gets a datagram the host sends to its address."""
        sh("ip", "netns", "exec", sb.host, "python3", "-c", SEND6, address, "9999", marker)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if marker in sb.pw("logs", "attacker").stdout:
                return True
            time.sleep(0.05)
        return False

    def poisoned(round_: str) -> bool:
        """Whether the attack points the host's entry for the attacker at the victim."""
        sh("ip", "-n", sb.host, "-6", "neigh", "flush", "to", address)
        assert host_sends(f"{round_}-before")
        sb.pw("exec", "attacker", "--", "python3", FRAMES, frame[0], "eth0", mac, address,
              *frame[1:], str(victim["MacAddress"]), *(["nonce"] if kind == "ns-nonce" else []))
        time.sleep(0.3)
        neigh = sh("ip", "-n", sb.host, "-6", "neigh", "show", address).stdout
        return str(victim["MacAddress"]) in neigh

    for comment in checks:
        _delete_rule(sb, "bridge", "spoof_ip6", comment)
    assert poisoned("control")
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    assert not poisoned("guarded")
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert host_sends("after")


def test_bad_ipv6_input_changes_nothing(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "four", "--subnet", "10.148.0.0/24")
    sb.pw("network", "create", "six", "--ipv6", "--subnet", "fd00:148::/64")
    before = sb.snapshot()
    cases = [
        (["network", "create", "x", "--ipv4=false"], "--ipv4=false needs --ipv6"),
        (["network", "create", "x", "--subnet", "fd00:149::/64"], "add --ipv6"),
        (["network", "create", "x", "--ipv6", "--subnet", "fd00:148::/80"], "overlaps"),
        (["network", "create", "x", "--ipv6", "--subnet", "fd00:149::/64", "--gateway",
          "fd00:150::1"], "outside the subnet"),
        (["network", "create", "x", "--ipv6", "--subnet", "fe80::/64"], "special-purpose"),
        (["run", "-d", "--network", "four", "--ip6", "fd00:148::5", "--", "sleep", "1"],
         "has no IPv6 subnet"),
        (["run", "-d", "--network", "six", "--ip6", "fd00:999::5", "--", "sleep", "1"],
         "outside the subnet"),
        (["run", "-d", "--network", "host", "--ip6", "fd00:148::5", "--", "sleep", "1"],
         "need a bridge network"),
        (["run", "-d", "--network", "four", "-p", "[2001:db8:51::1]:80:80", "--", "sleep",
          "1"], "has no IPv6"),
        (["run", "-d", "--network", "six", "-p", "[zz::1]:80:80", "--", "sleep", "1"],
         "invalid"),
    ]
    for args, message in cases:
        cp = sb.pw(*args, check=False)
        code = 4 if message == "overlaps" else 2  # a conflict, not a malformed input
        assert cp.returncode == code and message in cp.stderr, (args, cp.stderr)
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert sb.snapshot() == before


def test_reconnect_gives_back_the_ipv6_default_route(sandbox: Sandbox, tmp_path: Path) -> None:
    """A container first on a dual-stack network (routed IPv6, then plain NAT66) and on an
    IPv4-only one leaves the dual-stack network and joins it again: the IPv4 default
    route stays with the network that had it meanwhile, the IPv6 one comes back through
    the only network that has IPv6; and so again when it restarts (now on the IPv4-only
    network first), and when gc makes its dual-stack interface anew. Doctor is quiet,
    the container reaches the outside over both families, and each family's published
    port follows the network that routes the family: the outside reaches it at the
    host's address of either family (and the routed container at its own IPv6
    address)."""
    sb = sandbox
    log = tmp_path / "outside.log"
    server = outside_server(sb, log)
    outside = ["ip", "netns", "exec", sb.outside]

    def check(name: str, when: str) -> None:
        ns = netns_of(sb, "web")
        (v6,) = ip_json(ns, "-6", "route", "show", "default")
        assert v6["gateway"] == "fd00:161::1", (name, when, v6)
        (v4,) = ip_json(ns, "route", "show", "default")
        assert v4["gateway"] == "10.160.0.1", (name, when, v4)
        assert sb.pw("doctor").stdout.startswith("healthy"), (name, when)
        web = sb.pw_cmd("exec", "web", "--")
        assert get(web, f"http://[{OUTSIDE_ADDR6}]:9000/") == "200", (name, when)
        assert get(web, f"http://{sb.outside_addr}:9000/") == "200", (name, when)
        # The IPv4 port goes to the IPv4-only network (its replies leave by the interface
        # they came in on), the IPv6 one to the network that has IPv6.
        assert get(outside, f"http://{sb.host_addr}:8080/") == "200", (name, when)
        assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200", (name, when)
        assert sorted(sb.pw("port", "web").stdout.split("\n")[:-1]) == \
            ["80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080"], (name, when)
        if name == "r6":
            address = networks(sb, "web")[name]["GlobalIPv6Address"]
            assert get(outside, f"http://[{address}]/") == "200", (name, when)

    try:
        sb.pw("network", "create", "--subnet", "10.160.0.0/24", "four")
        sh("ip", "-n", sb.outside, "-6", "route", "add", "fd00:161::/64", "via", HOST_ADDR6)
        for name, opts in (("r6", ["-o", "com.docker.network.bridge.gateway_mode_ipv6=routed"]),
                           ("d6", [])):
            sb.pw("network", "create", "--ipv6", "--subnet", "10.161.0.0/24", "--subnet",
                  "fd00:161::/64", *opts, name)
            served(sb, "web", "--network", name, "--network", "four", "-p", "8080:80")
            sb.pw("network", "disconnect", name, "web")
            sb.pw("network", "connect", name, "web")
            check(name, "reconnected")
            sb.pw("stop", "web")
            sb.pw("start", "web")
            sb.pw("exec", "web", "--", "python3", "-c", WAIT_LISTENING, "::1", "80")
            check(name, "restarted")
            # Doctor knows the IPv6 default route comes from the second network.
            sh("ip", "-n", netns_of(sb, "web"), "-6", "route", "del", "default")
            doctor = sb.pw("doctor", check=False)
            assert doctor.returncode == 1 and "restore the IPv6 default route of container " \
                "web (via fd00:161::1): it is missing" in doctor.stdout, doctor.stdout
            # Its IPv6 host port's element lost: doctor and gc put it back to the
            # address on the network that routes IPv6.
            sb.in_host("nft", "delete", "element", "inet", "portway", "pub_any6_addr",
                       "{ tcp . 8080 }")
            assert get(outside, f"http://[{HOST_ADDR6}]:8080/", 1).startswith("fail")
            doctor = sb.pw("doctor", check=False)
            assert "restore element tcp . 8080 of inet portway pub_any6_addr: it is " \
                "missing" in doctor.stdout, doctor.stdout
            sb.pw("gc")
            check(name, "repaired")
            # gc makes the dual-stack network's interface anew, with the IPv6 default
            # route that network gives (the IPv4-only one keeps routing IPv4).
            ns = netns_of(sb, "web")
            (dual,) = [link["ifname"] for link in ip_json(ns, "-6", "addr")
                       if any(str(a["local"]).startswith("fd00:161:")
                              for a in link["addr_info"])]  # type: ignore[attr-defined]
            sh("ip", "-n", ns, "link", "del", str(dual))
            sb.pw("gc")
            check(name, "re-attached")
            sb.pw("rm", "-f", "web")
            sb.pw("network", "rm", name)
    finally:
        server.kill()
        server.wait()

# testbed's HI_SERVER, on both families: "hi" and the client's address (IPv4 unmapped).
HI6_SERVER = ("import socket, sys\n"
              "s = socket.create_server(('::', int(sys.argv[1])), family=socket.AF_INET6,"
              " dualstack_ipv6=True)\n"
              "while True:\n"
              "    c, a = s.accept()\n"
              "    c.sendall(b'hi ' + a[0].removeprefix('::ffff:').encode())\n"
              "    c.close()\n")


@pytest.mark.parametrize("mode6", ["nat", "routed"])
def test_icc_off_keeps_published_ports_reachable_through_the_host(sandbox: Sandbox,
                                                                  mode6: str) -> None:
    """icc=false stops direct traffic between two containers of a network (by their own
    addresses, either family, and to a link-local address one gives itself), not a
    hairpin: a container reaching the published port of another of its network through
    a host address (DNATed back onto the bridge, masqueraded to the gateway) gets
    through, as with Docker, whose userland proxy serves it. With IPv6 routed, its
    hairpin is not masqueraded: the answer goes straight back to the client, whose
    address the server must find (neighbour discovery, IPv6's ARP). The control: the
    direct traffic gets through without the icc rule."""
    sb = sandbox
    sb.pw("network", "create", "quiet", "--ipv6", "--subnet", "10.148.0.0/24", "--subnet",
          "fd00:148::/64", "-o", "com.docker.network.bridge.enable_icc=false",
          "-o", f"com.docker.network.bridge.gateway_mode_ipv6={mode6}")
    sb.pw("run", "-d", "--name", "q1", "--network", "quiet", "-p", "8080:80", "--",
          "python3", "-c", HI6_SERVER, "80")
    sb.pw("exec", "q1", "--", "python3", "-c", WAIT_LISTENING, "::1", "80")
    sb.pw("run", "-d", "--name", "q2", "--network", "quiet", "--", "sleep", "3600")
    # A third one with a link-local address of its own, which q2 knows the way to (a
    # route on its link, and its neighbour entry: no neighbour discovery, only the
    # datagram meets the firewall; from q2's own address, which the bridge lets by).
    sb.pw("run", "-d", "--name", "q3", "--network", "quiet", "--", "python3", "-u", "-c",
          LISTEN6, "9999")
    sh("ip", "-n", netns_of(sb, "q3"), "addr", "add", "fe80::10/64", "dev", "eth0", "nodad")
    sh("ip", "-n", netns_of(sb, "q2"), "-6", "route", "add", "fe80::/64", "dev", "eth0")
    sh("ip", "-n", netns_of(sb, "q2"), "-6", "neigh", "replace", "fe80::10", "lladdr",
       str(networks(sb, "q3")["quiet"]["MacAddress"]), "dev", "eth0")

    def connect(address: str, port: int) -> str:
        return sb.pw("exec", "q2", "--", "python3", "-c", CONNECT, address,
                     str(port)).stdout.strip()

    def link_local(round_: str) -> bool:
        """Whether q2's datagram to q3's link-local address arrives (one from the host
        to q3's own address marks when it would have)."""
        sb.pw("exec", "q2", "--", "python3", "-c", SEND6, "fe80::10%eth0", "9999",
              f"{round_}-link-local")
        sh("ip", "netns", "exec", sb.host, "python3", "-c", SEND6, "fd00:148::4", "9999",
           f"{round_}-marker")
        deadline = time.monotonic() + 5
        while f"{round_}-marker" not in (seen := sb.pw("logs", "q3").stdout):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        return f"{round_}-link-local" in seen

    direct = ("10.148.0.2", "fd00:148::2")
    seen6 = "hi fd00:148::1" if mode6 == "nat" else "hi fd00:148::3"
    hairpins = {sb.host_addr: "hi 10.148.0.1", "10.148.0.1": "hi 10.148.0.1",
                HOST_ADDR6: seen6, "fd00:148::1": seen6}
    for address, answer in hairpins.items():
        assert connect(address, 8080) == answer, address
    for address in direct:
        assert connect(address, 80).startswith("fail"), address
    assert not link_local("guarded")
    # Control: without the icc rule (and the two after it that would drop the same) the
    # direct traffic gets through.
    nid = json.loads(sb.pw("network", "inspect", "quiet").stdout)[0]["Id"][:12]
    _delete_rule(sb, "inet", f"in-{nid}", "(icc)")
    _delete_rule(sb, "inet", f"in-{nid}", "isolation")
    _delete_rule(sb, "inet", f"out-{nid}", "no direct access")
    # (icc=false held back q2's neighbour discovery too: it asks again. Its permanent
    # entry for fe80::10 stays.)
    sh("ip", "-n", netns_of(sb, "q2"), "-6", "neigh", "flush", "all")
    for address in direct:
        assert connect(address, 80).startswith("hi "), address
    assert link_local("control")
    assert "restore chain inet portway" in sb.pw("gc").stdout
    for address in direct:
        assert connect(address, 80).startswith("fail"), address
    assert not link_local("again")
    for address, answer in hairpins.items():
        assert connect(address, 8080) == answer, address
