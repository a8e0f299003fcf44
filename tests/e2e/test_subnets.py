"""A network with several subnets of one family (Docker's `--subnet A --subnet B`), with
real connections: the bridge holds every subnet's gateway, a container gets one
address per family (the subnet of its --ip, else the first with a free address), and
everything the firewall and DNS do for the first subnet holds for the others.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from conftest import Sandbox, ip_json, sh
from portway.testbed import WAIT_LISTENING

FRAMES = str(Path(__file__).with_name("frames.py"))
GET = ("import sys, urllib.request as u\n"
       "try: print(u.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)\n"
       "except Exception as e: print('fail', type(e).__name__)\n")
LISTEN = ("import socket\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n"
          "while True:\n"
          "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")
SEND = ("import socket, sys\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), "
        "(sys.argv[1], 9999))\n")


def get(where: list[str], url: str, timeout: float = 3) -> str:
    return subprocess.run([*where, "python3", "-c", GET, url, str(timeout)],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def settings(sb: Sandbox, name: str, net: str = "app") -> dict[str, object]:
    return sb.inspect(name)["NetworkSettings"]["Networks"][net]  # type: ignore[index, no-any-return]


def netns_of(sb: Sandbox, name: str) -> str:
    return str(sb.inspect(name)["NetworkSettings"]["SandboxKey"]).rsplit("/", 1)[1]  # type: ignore[index]


def test_second_subnet_end_to_end(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.141.0.0/24", "--subnet",
          "10.142.0.0/24", "--gateway", "10.142.0.254", "--ip-range", "10.141.0.128/25")
    net = json.loads(sb.pw("network", "inspect", "app").stdout)[0]
    assert net["IPAM"]["Config"] == [
        {"Subnet": "10.141.0.0/24", "Gateway": "10.141.0.1", "IPRange": "10.141.0.128/25"},
        {"Subnet": "10.142.0.0/24", "Gateway": "10.142.0.254"}]
    bridge = net["Options"].get("com.docker.network.bridge.name") or \
        next(link["ifname"] for link in ip_json(sb.host, "link", "show", "type", "bridge"))
    have = {(a["local"], a["prefixlen"]) for link in ip_json(sb.host, "-4", "addr", "show",
                                                             "dev", str(bridge))
            for a in link["addr_info"]}  # type: ignore[attr-defined]
    assert have == {("10.141.0.1", 24), ("10.142.0.254", 24)}

    # First container: the first subnet (its range); the second by --ip in the second.
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
          "python3", "-m", "http.server", "80")
    sb.pw("exec", "web", "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    sb.pw("run", "-d", "--name", "b", "--network", "app", "--ip", "10.142.0.5", "-p",
          "8081:80", "--", "python3", "-m", "http.server", "80")
    sb.pw("exec", "b", "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    assert (settings(sb, "web")["IPAddress"], settings(sb, "b")["IPAddress"]) == \
        ("10.141.0.128", "10.142.0.5")
    assert settings(sb, "b")["IPPrefixLen"] == 24
    # b: the default route via the first subnet's gateway, the first subnet on-link.
    routes = {(r["dst"], r.get("gateway"), r.get("scope"))
              for r in ip_json(netns_of(sb, "b"), "-4", "route", "show")}
    assert routes == {("default", "10.141.0.1", None), ("10.141.0.0/24", None, "link"),
                      ("10.142.0.0/24", None, "link")}, routes
    # gc puts a lost on-link route back.
    sh("ip", "-n", netns_of(sb, "b"), "route", "del", "10.141.0.0/24")
    assert "restore route 10.141.0.0/24 dev eth0 of container b" in sb.pw("gc").stdout
    assert routes == {(r["dst"], r.get("gateway"), r.get("scope"))
                      for r in ip_json(netns_of(sb, "b"), "-4", "route", "show")}
    b = sb.pw_cmd("exec", "b", "--")
    web = sb.pw_cmd("exec", "web", "--")
    # Across the subnets, straight over the bridge, by address and by name.
    assert get(b, "http://10.141.0.128/") == "200"
    assert get(web, "http://10.142.0.5/") == "200"
    assert get(b, "http://web/") == "200"
    # DNS on every gateway, answering with the container's address.
    for server in ("10.141.0.1", "10.142.0.254"):
        assert sb.pw("exec", "web", "--", "dig", "+short", "b", f"@{server}"
                     ).stdout.split() == ["10.142.0.5"]
    # Out through NAT from the second subnet: the outside sees the host's address.
    log = tmp_path / "outside.log"
    out = log.open("w")
    server = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-m",
                               "http.server", "9000"], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    try:
        sh("ip", "netns", "exec", sb.outside, "python3", "-c", WAIT_LISTENING,
           "127.0.0.1", "9000")
        assert get(b, f"http://{sb.outside_addr}:9000/") == "200"
        assert f"{sb.host_addr} - -" in log.read_text()
        assert "10.142.0.5" not in log.read_text()
    finally:
        server.terminate()
        server.wait(10)
    # Its published port, from outside: the container sees the real client.
    outside = ["ip", "netns", "exec", sb.outside]
    assert get(outside, f"http://{sb.host_addr}:8081/") == "200"
    assert f"{sb.outside_addr} - -" in sb.pw("logs", "b").stdout

    # trace and show see the second subnet as the kernel has it.
    t = json.loads(sb.pw("trace", "b", "web:80", "--json").stdout)
    assert t["verdict"] == "delivered", t["summary"]
    t = json.loads(sb.pw("trace", "outside", "b:80", "--json").stdout)
    assert t["verdict"] == "delivered", t["summary"]
    t = json.loads(sb.pw("trace", "b", f"{sb.outside_addr}:9000", "--json").stdout)
    assert t["verdict"] in ("leaves-host", "delivered"), t["summary"]
    shown = sb.pw("show").stdout
    assert "10.142.0.5" in shown and "10.142.0.254" in shown, shown

    # Isolation from another network holds for the second subnet, both ways.
    sb.pw("network", "create", "other", "--subnet", "10.143.0.0/24")
    sb.pw("run", "-d", "--name", "o", "--network", "other", "--", "python3", "-m",
          "http.server", "80")
    sb.pw("exec", "o", "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    o = sb.pw_cmd("exec", "o", "--")
    assert get(o, "http://10.142.0.5/", 1).startswith("fail")
    assert get(b, "http://10.143.0.2/", 1).startswith("fail")
    # (the control: from the host, both answer)
    assert get(["ip", "netns", "exec", sb.host], "http://10.143.0.2/") == "200"
    assert get(["ip", "netns", "exec", sb.host], "http://10.142.0.5/") == "200"
    assert sb.pw("gc").stdout.startswith("nothing to repair")


def test_spoofing_and_icc_in_the_second_subnet(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.144.0.0/24", "--subnet",
          "10.145.0.0/24")
    sb.pw("run", "-d", "--name", "victim", "--network", "app", "--", "python3", "-u", "-c",
          LISTEN)
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--ip", "10.145.0.9",
          "--", "sleep", "3600")
    victim = settings(sb, "victim")
    attacker_mac = str(settings(sb, "attacker")["MacAddress"])
    # An unassigned address of the second subnet, then an honest datagram.
    sb.pw("exec", "attacker", "--", "python3", FRAMES, "udp", "eth0", attacker_mac,
          "10.145.0.77", str(victim["MacAddress"]), str(victim["IPAddress"]), "9999",
          "spoofed")
    sb.pw("exec", "attacker", "--", "python3", "-c", SEND, str(victim["IPAddress"]),
          "honest")
    deadline = time.monotonic() + 10
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = sb.pw("logs", "victim").stdout.splitlines()
        if any(line.startswith("honest") for line in seen):
            break
        time.sleep(0.05)
    assert seen == ["honest 10.145.0.9"], seen

    # icc=false: no container reaches another, whichever subnet it is in.
    sb.pw("network", "create", "quiet", "--subnet", "10.146.0.0/24", "--subnet",
          "10.147.0.0/24", "-o", "com.docker.network.bridge.enable_icc=false")
    sb.pw("run", "-d", "--name", "s", "--network", "quiet", "--ip", "10.147.0.2", "--",
          "python3", "-m", "http.server", "80")
    sb.pw("exec", "s", "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    sb.pw("run", "-d", "--name", "c", "--network", "quiet", "--", "sleep", "3600")
    assert settings(sb, "c", "quiet")["IPAddress"] == "10.146.0.2"
    assert get(sb.pw_cmd("exec", "c", "--"), "http://10.147.0.2/", 1).startswith("fail")
    assert get(["ip", "netns", "exec", sb.host], "http://10.147.0.2/") == "200"

    # internal: the second subnet's containers have no way out either, but DNS on its
    # gateway.
    sb.pw("network", "create", "closed", "--internal", "--subnet", "10.148.0.0/24",
          "--subnet", "10.149.0.0/24", "--gateway", "10.149.0.1")
    sb.pw("run", "-d", "--name", "i", "--network", "closed", "--ip", "10.149.0.7", "--",
          "sleep", "3600")
    i = sb.pw_cmd("exec", "i", "--")
    assert get(i, f"http://{sb.outside_addr}:9/", 1).startswith("fail")
    assert sb.pw("exec", "i", "--", "dig", "+short", "+time=2", "i", "@10.149.0.1"
                 ).stdout.split() == ["10.149.0.7"]


def test_bad_input_changes_nothing(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.150.0.0/24", "--subnet",
          "10.151.0.0/24")
    before = sb.rows()
    cases = [
        (["network", "create", "x", "--subnet", "10.152.0.0/24", "--subnet",
          "10.152.0.128/25"], "--subnet 10.152.0.128/25 overlaps --subnet 10.152.0.0/24"),
        (["network", "create", "x", "--subnet", "10.152.0.0/24", "--subnet",
          "10.151.0.0/16"], "overlaps network app"),
        (["network", "create", "x", "--subnet", "10.152.0.0/24", "--subnet",
          "10.153.0.0/24", "--gateway", "10.154.0.1"],
         "--gateway 10.154.0.1 is outside each of the subnets"),
        (["run", "-d", "--name", "c", "--network", "app", "--ip", "10.152.0.5", "--",
          "sleep", "1"], "--ip 10.152.0.5 is outside each of the subnets 10.150.0.0/24, "
                         "10.151.0.0/24 of network app"),
        (["run", "-d", "--name", "c", "--network", "app", "--ip", "10.151.0.1", "--",
          "sleep", "1"], "is the gateway of network app"),
    ]
    for args, message in cases:
        got = sb.pw(*args, check=False)
        assert got.returncode != 0 and message in got.stderr, (args, got.stderr)
        assert len(got.stderr.strip().splitlines()) <= 2 and "Traceback" not in got.stderr
    assert sb.rows() == before


def test_two_ipv6_subnets(sandbox: Sandbox) -> None:
    """The same for IPv6: a container in the second subnet reaches one in the first
    over the bridge (its on-link route), by name too."""
    sb = sandbox
    sb.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet",
          "fd00:155::/64", "--subnet", "fd00:156::/64")
    sb.pw("run", "-d", "--name", "one", "--network", "six", "--", "python3", "-m",
          "http.server", "--bind", "::", "80")
    sb.pw("exec", "one", "--", "python3", "-c", WAIT_LISTENING, "::1", "80")
    sb.pw("run", "-d", "--name", "two", "--network", "six", "--ip6", "fd00:156::9", "--",
          "sleep", "3600")
    assert settings(sb, "one", "six")["GlobalIPv6Address"] == "fd00:155::2"
    assert settings(sb, "two", "six")["GlobalIPv6Address"] == "fd00:156::9"
    routes = {(r["dst"], r.get("gateway")) for r in ip_json(netns_of(sb, "two"), "-6", "route")
              if not str(r["dst"]).startswith(("fe80", "multicast", "ff00"))}
    assert routes == {("default", "fd00:155::1"), ("fd00:155::/64", None),
                      ("fd00:156::/64", None)}, routes
    two = sb.pw_cmd("exec", "two", "--")
    assert get(two, "http://[fd00:155::2]/") == "200"
    assert sb.pw("exec", "two", "--", "dig", "+short", "AAAA", "one", "@fd00:156::1"
                 ).stdout.split() == ["fd00:155::2"]
