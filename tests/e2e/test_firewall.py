"""The firewall with real TCP and UDP traffic between throwaway namespaces.

Every attack and isolation test first shows the attack succeeding with
portway's protection removed (a control), so it cannot pass by accident.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import Sandbox, sh

GET = ("import sys, urllib.request as u\n"
       "try:\n"
       "    print(u.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)\n"
       "except Exception as e:\n"
       "    print('fail', type(e).__name__)\n")
UDP_ECHO = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(2048); s.sendto(data + b' from ' + "
            "peer[0].encode(), peer)\n")
UDP_ASK = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
           "s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))\n"
           "try: print(s.recv(2048).decode())\n"
           "except OSError: print('fail')\n")
WAIT = ("import socket, sys, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.2).close(); break\n"
        "    except OSError: time.sleep(0.05)\n")


def get(where: list[str], url: str, timeout: float = 3) -> str:
    return subprocess.run([*where, "python3", "-c", GET, url, str(timeout)],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def in_ns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def served(sb: Sandbox, name: str, port: int = 80) -> None:
    """Start `name` as an HTTP server and wait until it listens."""
    sb.pw("run", "-d", "--name", name, *sb.extra.get(name, []), "--",
          "python3", "-m", "http.server", str(port))
    sb.pw("exec", name, "--", "python3", "-c", WAIT, "127.0.0.1", str(port))


@pytest.fixture
def fw(sandbox: Sandbox) -> Sandbox:
    sandbox.extra = {}
    return sandbox


def test_published_ports_from_everywhere(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "app", "--subnet", "10.77.0.0/24")
    sb.extra["web"] = ["--network", "app", "-p", "8080:80"]
    served(sb, "web")
    # From another machine on the host's network, by the host's address.
    assert get(in_ns(sb.outside), f"http://{sb.host_addr}:8080/") == "200"
    log = sb.pw("logs", "web").stdout
    assert f"{sb.outside_addr} - -" in log, "the container must see the real client address"
    # From the host itself: loopback and its own address, in the kernel.
    assert get(in_ns(sb.host), "http://127.0.0.1:8080/") == "200"
    assert get(in_ns(sb.host), f"http://{sb.host_addr}:8080/") == "200"
    # Hairpin: a sibling, and the container itself, through a host address.
    sb.pw("run", "-d", "--name", "sib", "--network", "app", "--", "sleep", "3600")
    assert get(sb.pw_cmd("exec", "sib", "--"), f"http://{sb.host_addr}:8080/") == "200"
    assert get(sb.pw_cmd("exec", "web", "--"), f"http://{sb.host_addr}:8080/") == "200"
    # What makes the last one work: hairpin mode on the bridge port of a container that
    # publishes ports (and only there).
    for name, hairpin in (("web", True), ("sib", False)):
        port = sb.inspect(name)["NetworkSettings"]["Networks"]["app"]["HostInterface"]  # type: ignore[index]
        link = json.loads(sh("ip", "-n", sb.host, "-j", "-d", "link", "show", port).stdout)[0]
        assert link["linkinfo"]["info_slave_data"]["hairpin"] is hairpin
    # No userland proxy in the path: the one socket listening on 8080 is the one that
    # holds the port, and it takes only what the host sends to ::1 (the relay;
    # test_ipv6.py); everything else is DNATed before it.
    listeners = sh("ip", "netns", "exec", sb.host, "ss", "-Hltn").stdout
    assert listeners.count(":8080 ") == 1 and "*:8080" in listeners
    # The container's own address is not reachable from outside, even with a route to it.
    sh("ip", "-n", sb.outside, "route", "add", "10.77.0.0/24", "via", sb.host_addr)
    assert get(in_ns(sb.outside), "http://10.77.0.2/", 1).startswith("fail")
    insp = sb.inspect("web")["NetworkSettings"]["Ports"]  # type: ignore[index]
    assert insp == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}


def test_port_forms(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "app", "--subnet", "10.78.0.0/24")
    sb.extra["any"] = ["--network", "app", "-p", "80"]
    served(sb, "any")
    port = sb.pw("port", "any").stdout.strip()
    assert port.startswith("80/tcp -> 0.0.0.0:")
    host_port = int(port.rsplit(":", 1)[1])
    assert get(in_ns(sb.outside), f"http://{sb.host_addr}:{host_port}/") == "200"
    # A range.
    sb.extra["range"] = ["--network", "app", "-p", "9000-9001:9000-9001"]
    served(sb, "range", 9001)
    assert get(in_ns(sb.outside), f"http://{sb.host_addr}:9001/") == "200"
    # UDP.
    sb.pw("run", "-d", "--name", "dns", "--network", "app", "-p", "5353:53/udp", "--",
          "python3", "-c", UDP_ECHO)
    time.sleep(0.5)
    out = subprocess.run([*in_ns(sb.outside), "python3", "-c", UDP_ASK, sb.host_addr, "5353"],
                         capture_output=True, text=True).stdout.strip()
    assert out == f"ping from {sb.outside_addr}"
    # One host address only: 127.0.0.1 works from the host, the uplink address does not.
    sb.extra["local"] = ["--network", "app", "-p", "127.0.0.1:6379:80"]
    served(sb, "local")
    assert get(in_ns(sb.host), "http://127.0.0.1:6379/") == "200"
    assert get(in_ns(sb.outside), f"http://{sb.host_addr}:6379/", 1).startswith("fail")


def test_outbound_masquerade(fw: Sandbox) -> None:
    sb = fw
    server = subprocess.Popen([*in_ns(sb.outside), "python3", "-m", "http.server", "9000",
                               "--bind", sb.outside_addr], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        sb.pw("network", "create", "app", "--subnet", "10.79.0.0/24")
        sb.pw("network", "create", "plain", "--subnet", "10.80.0.0/24",
              "-o", "com.docker.network.bridge.enable_ip_masquerade=false")
        sb.pw("run", "-d", "--name", "c", "--network", "app", "--", "sleep", "3600")
        sb.pw("run", "-d", "--name", "p", "--network", "plain", "--", "sleep", "3600")
        subprocess.run([*in_ns(sb.outside), "python3", "-c", WAIT, sb.outside_addr, "9000"])
        assert get(sb.pw_cmd("exec", "c", "--"), f"http://{sb.outside_addr}:9000/") == "200"
        # Without masquerade the outside needs a route back, and sees the container.
        sh("ip", "-n", sb.outside, "route", "add", "10.80.0.0/24", "via", sb.host_addr)
        assert get(sb.pw_cmd("exec", "p", "--"), f"http://{sb.outside_addr}:9000/") == "200"
    finally:
        server.terminate()
        log = server.communicate(timeout=5)[0]
    assert f"{sb.host_addr} - -" in log
    assert "10.80.0.2 - -" in log


def _delete_rule(sb: Sandbox, chain: str, comment_part: str) -> None:
    listing = json.loads(sh("ip", "netns", "exec", sb.host, "nft", "-j", "-a", "list", "chain",
                            "inet", "portway", chain).stdout)["nftables"]
    handles = [item["rule"]["handle"] for item in listing
               if "rule" in item and comment_part in item["rule"].get("comment", "")]
    assert handles, f"no rule matching {comment_part!r} in {chain}"
    for handle in handles:
        sh("ip", "netns", "exec", sb.host, "nft", "delete", "rule", "inet", "portway", chain,
           "handle", str(handle))


def test_loopback_published_port_is_not_reachable_from_the_segment(fw: Sandbox) -> None:
    """moby/moby#45610: a neighbour routes 127.0.0.1 to the host's MAC."""
    sb = fw
    sb.pw("network", "create", "app", "--subnet", "10.81.0.0/24")
    sb.extra["cache"] = ["--network", "app", "-p", "127.0.0.1:6379:80"]
    served(sb, "cache")
    # The attacker is the outside namespace: its own lo is down, and 127.0.0.1 is
    # routed to the host over the segment.
    sh("ip", "-n", sb.outside, "addr", "flush", "dev", "lo")
    sh("ip", "-n", sb.outside, "link", "set", "lo", "down")
    sh("ip", "-n", sb.outside, "route", "flush", "table", "local", "dev", "lo")
    sh("ip", "netns", "exec", sb.outside, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
    sh("ip", "-n", sb.outside, "route", "add", "127.0.0.1/32", "via", sb.host_addr,
       "dev", "wan0")
    attack = in_ns(sb.outside)
    assert get(attack, "http://127.0.0.1:6379/", 1).startswith("fail")
    # Control: without portway's rule the same attack reaches the container.
    _delete_rule(sb, "prerouting", "loopback-published ports stay local")
    assert get(attack, "http://127.0.0.1:6379/", 3) == "200"
    sb.pw("gc")  # puts the rule back
    assert get(attack, "http://127.0.0.1:6379/", 1).startswith("fail")


def test_isolation_between_networks_and_icc(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "a", "--subnet", "10.82.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.83.0.0/24")
    sb.pw("network", "create", "quiet", "--subnet", "10.84.0.0/24",
          "-o", "com.docker.network.bridge.enable_icc=false")
    sb.extra["wa"] = ["--network", "a", "-p", "8081:80"]
    sb.extra["wb"] = ["--network", "b"]
    sb.extra["q1"] = ["--network", "quiet"]
    for name in ("wa", "wb", "q1"):
        served(sb, name)
    sb.pw("run", "-d", "--name", "q2", "--network", "quiet", "--", "sleep", "3600")
    ca, cb, cq = (sb.pw_cmd("exec", n, "--") for n in ("wa", "wb", "q2"))
    assert get(ca, "http://10.83.0.2/", 1).startswith("fail")
    assert get(cb, "http://10.82.0.2/", 1).startswith("fail")
    assert get(cq, "http://10.84.0.2/", 1).startswith("fail")
    # Published ports are still reachable through the host from another network.
    assert get(cb, f"http://{sb.host_addr}:8081/") == "200"
    # Controls: without the isolation and icc rules, the same connections work.
    for net in ("a", "b"):
        nid = json.loads(sb.pw("network", "inspect", net).stdout)[0]["Id"][:12]
        _delete_rule(sb, f"in-{nid}", "isolation")
        _delete_rule(sb, f"out-{nid}", "no direct access")
    assert get(ca, "http://10.83.0.2/") == "200"
    assert get(cb, "http://10.82.0.2/") == "200"
    qid = json.loads(sb.pw("network", "inspect", "quiet").stdout)[0]["Id"][:12]
    _delete_rule(sb, f"in-{qid}", "(icc)")
    _delete_rule(sb, f"in-{qid}", "isolation")
    _delete_rule(sb, f"out-{qid}", "no direct access")
    assert get(cq, "http://10.84.0.2/") == "200"
    report = sb.pw("gc").stdout
    assert "restore chain inet portway" in report
    assert get(ca, "http://10.83.0.2/", 1).startswith("fail")


def test_internal_network(fw: Sandbox) -> None:
    sb = fw
    server = subprocess.Popen([*in_ns(sb.outside), "python3", "-m", "http.server", "9000",
                               "--bind", sb.outside_addr], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        sb.pw("network", "create", "db", "--subnet", "10.85.0.0/24", "--internal")
        sb.pw("network", "create", "app", "--subnet", "10.86.0.0/24")
        sb.extra["inner"] = ["--network", "db", "--cap-add", "NET_ADMIN"]
        served(sb, "inner")
        sb.pw("run", "-d", "--name", "open", "--network", "app", "--", "sleep", "3600")
        subprocess.run([*in_ns(sb.outside), "python3", "-c", WAIT, sb.outside_addr, "9000"])
        url = f"http://{sb.outside_addr}:9000/"
        assert get(sb.pw_cmd("exec", "open", "--"), url) == "200"  # control
        assert get(sb.pw_cmd("exec", "inner", "--"), url, 1).startswith("fail")
        # Even with a route added inside the container (given NET_ADMIN), nothing leaves.
        sb.pw("exec", "inner", "--", "ip", "route", "add", "default", "via", "10.85.0.1")
        assert get(sb.pw_cmd("exec", "inner", "--"), url, 1).startswith("fail")
        # Unreachable from outside, even with a route to it.
        sh("ip", "-n", sb.outside, "route", "add", "10.85.0.0/24", "via", sb.host_addr)
        assert get(in_ns(sb.outside), "http://10.85.0.2/", 1).startswith("fail")
        cp = sb.pw("run", "-d", "--name", "pub", "--network", "db", "-p", "8082:80", "--",
                   "sleep", "1", check=False)
        assert cp.returncode != 0 and "internal" in cp.stderr
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_internal_network_reaches_no_other_host_address(fw: Sandbox) -> None:
    sb = fw
    # A service of the host, on every host address.
    server = subprocess.Popen([*in_ns(sb.host), "python3", "-m", "http.server", "9100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sb.pw("network", "create", "db", "--subnet", "10.85.0.0/24", "--internal")
        db = json.loads(sb.pw("network", "inspect", "db").stdout)[0]
        sb.pw("network", "create", "app", "--subnet", "10.86.0.0/24")
        sb.pw("run", "-d", "--name", "inner", "--network", "db", "--cap-add", "NET_ADMIN",
              "--", "sleep", "3600")
        sb.pw("run", "-d", "--name", "open", "--network", "app", "--", "sleep", "3600")
        subprocess.run([*in_ns(sb.host), "python3", "-c", WAIT, "127.0.0.1", "9100"])
        inner, open_ = sb.pw_cmd("exec", "inner", "--"), sb.pw_cmd("exec", "open", "--")
        others = [f"http://{sb.host_addr}:9100/", "http://10.86.0.1:9100/"]
        # A normal network reaches the host's addresses (as with Docker).
        assert get(open_, others[0]) == "200"
        # The attacker (given NET_ADMIN) adds the route portway did not give it.
        sb.pw("exec", "inner", "--", "ip", "route", "add", "default", "via", "10.85.0.1")
        # Control: without the internal network's input rules, it reaches them too.
        chain = f"host-{db['Id'][:12]}"
        sb.in_host("nft", "flush", "chain", "inet", "portway", chain)
        assert [get(inner, url, 1) for url in others] == ["200", "200"]
        assert "restore chain inet portway" in sb.pw("gc").stdout
        assert [get(inner, url, 1)[:4] for url in others] == ["fail", "fail"]
        # Of its own gateway it reaches DNS alone (where portway's server answers), not the
        # host's other services there; the control above reached them (flushed chain).
        assert get(inner, "http://10.85.0.1:9100/", 1).startswith("fail")
        sb.pw("run", "-d", "--name", "peer", "--network", "db", "--", "sleep", "3600")
        assert sb.pw("exec", "inner", "--", "getent", "hosts", "peer").stdout.startswith(
            "10.85.0.3")
        tcp = sb.pw("exec", "inner", "--", "dig", "+tcp", "+short", "@10.85.0.1", "peer")
        assert tcp.stdout.strip() == "10.85.0.3"
        sb.in_host("nft", "flush", "chain", "inet", "portway", chain)
        assert get(inner, "http://10.85.0.1:9100/") == "200"  # control for the gateway
        sb.pw("gc")
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_port_conflicts(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "app", "--subnet", "10.87.0.0/24")
    sb.pw("run", "-d", "--name", "one", "--network", "app", "-p", "8083:80", "--",
          "sleep", "3600")
    before = sb.snapshot()
    cp = sb.pw("run", "-d", "--name", "two", "--network", "app", "-p", "8083:81", "--",
               "sleep", "3600", check=False)
    assert cp.returncode == 4 and "container one" in cp.stderr
    assert sb.snapshot() == before
    # Another address for the same port is fine; all addresses is not.
    sb.pw("run", "-d", "--name", "three", "--network", "app", "-p", "127.0.0.1:8084:80",
          "--", "sleep", "3600")
    cp = sb.pw("run", "-d", "--name", "four", "--network", "app", "-p", "8084:80", "--",
               "sleep", "3600", check=False)
    assert cp.returncode == 4 and "container three" in cp.stderr
    # Ports host processes hold: TCP listening on IPv4 and on IPv6 (dual stack), UDP bound.
    listener = subprocess.Popen([*in_ns(sb.host), "python3", "-c",
                                 "import socket, time; s = socket.socket(); "
                                 "s.bind(('0.0.0.0', 8085)); s.listen(); "
                                 "s6 = socket.socket(socket.AF_INET6); s6.bind(('::', 8087)); "
                                 "s6.listen(); u = socket.socket(type=socket.SOCK_DGRAM); "
                                 "u.bind(('0.0.0.0', 8086)); time.sleep(60)"])
    try:
        time.sleep(0.5)
        before = sb.snapshot()
        for spec, holder in (("8085:80", "0.0.0.0:8085"), ("8086:53/udp", "0.0.0.0:8086"),
                             ("8087:80", "[::]:8087")):
            cp = sb.pw("run", "-d", "--name", "five", "--network", "app", "-p", spec, "--",
                       "sleep", "3600", check=False)
            assert cp.returncode == 4 and holder in cp.stderr, cp.stderr
        # Free on the other protocol.
        sb.pw("run", "-d", "--name", "six", "--network", "app", "-p", "8086:80", "--",
              "sleep", "3600")
        sb.pw("rm", "-f", "six")
        assert sb.snapshot() == before
    finally:
        listener.kill()
        listener.wait()


def test_gc_after_flush_and_open_connection_survives(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "app", "--subnet", "10.88.0.0/24")
    sb.pw("run", "-d", "--name", "echo", "--network", "app", "-p", "8086:7", "--",
          "python3", "-c",
          "import socket\ns = socket.socket(); s.bind(('0.0.0.0', 7)); s.listen()\n"
          "while True:\n  c, _ = s.accept()\n  while True:\n    d = c.recv(100)\n"
          "    if not d: break\n    c.sendall(d)\n")
    # It outlives its client: a container that ends gives back its published port.
    # Wait for the listener without connecting.
    sb.pw("exec", "echo", "--", "sh", "-c", "for i in $(seq 100); do "
          "ss -Hltn | grep -q ':7 ' && exit 0; sleep 0.05; done; exit 1")
    client = subprocess.Popen(
        [*in_ns(sb.outside), "python3", "-u", "-c",
         "import socket, sys, time\n"
         "for _ in range(50):\n"
         "    try: s = socket.create_connection((sys.argv[1], 8086), 1); break\n"
         "    except OSError: time.sleep(0.1)\n"
         "for line in sys.stdin:\n"
         "    s.sendall(line.encode()); print(s.recv(100).decode().strip(), flush=True)\n",
         sb.host_addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None

    def echo(word: str) -> str:
        client.stdin.write(word + "\n")  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
        return client.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert echo("one") == "one"
        assert sb.pw("gc").stdout.startswith("nothing to repair")
        assert echo("two") == "two"
        # Drift in one chain: the rebuild refills the table in one transaction without
        # unhooking its chains, so the connection's NAT state survives it.
        nid = json.loads(sb.pw("network", "inspect", "app").stdout)[0]["Id"][:12]
        _delete_rule(sb, f"out-{nid}", "no direct access")
        assert "restore chain inet portway" in sb.pw("gc").stdout
        assert echo("three") == "three"
    finally:
        client.kill()
        client.wait()
    # A whole-ruleset flush: the kernel drops NATed connections when the last nat
    # chain goes, so only new connections can be expected to work after gc.
    before = sh("ip", "netns", "exec", sb.host, "nft", "list", "table", "inet",
                "portway").stdout
    sh("ip", "netns", "exec", sb.host, "nft", "flush", "ruleset")
    assert "re-create table inet portway" in sb.pw("gc").stdout
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    after = sh("ip", "netns", "exec", sb.host, "nft", "list", "table", "inet",
               "portway").stdout
    assert before == after  # exactly the same rules, not duplicated
    sb.pw("rm", "-f", "echo")
    sb.extra["web"] = ["--network", "app", "-p", "8086:80"]
    served(sb, "web")
    assert get(in_ns(sb.outside), f"http://{sb.host_addr}:8086/") == "200"


def test_foreign_table_is_left_alone(fw: Sandbox) -> None:
    sb = fw
    sh("ip", "netns", "exec", sb.host, "nft", "-f", "-", input=(
        "table inet theirs {\n chain their_forward { type filter hook forward priority 10; "
        "policy accept; ip saddr 192.0.2.1 counter drop comment \"keep me\"\n }\n"
        " set their_set { type ipv4_addr; elements = { 192.0.2.7 } }\n}\n"))
    before = sh("ip", "netns", "exec", sb.host, "nft", "list", "table", "inet", "theirs").stdout
    sb.pw("network", "create", "app", "--subnet", "10.89.0.0/24")
    sb.pw("run", "-d", "--name", "x", "--network", "app", "-p", "8087:80", "--",
          "sleep", "3600")
    sb.pw("gc")
    sb.pw("rm", "-f", "x")
    sb.pw("network", "rm", "app")
    after = sh("ip", "netns", "exec", sb.host, "nft", "list", "table", "inet", "theirs").stdout
    assert before == after
    tables = sh("ip", "netns", "exec", sb.host, "nft", "list", "tables").stdout
    assert "portway" not in tables  # the last network took portway's table with it


def test_coexistence_with_a_policy_drop_table(fw: Sandbox) -> None:
    """Another table's forward chain that drops by default would drop container traffic;
    portway's mark lets that table accept it (docs/firewall.md)."""
    sb = fw
    sb.pw("network", "create", "app", "--subnet", "10.90.0.0/24")
    sb.extra["web"] = ["--network", "app", "-p", "8088:80"]
    served(sb, "web")
    url = f"http://{sb.host_addr}:8088/"
    assert get(in_ns(sb.outside), url) == "200"
    sh("ip", "netns", "exec", sb.host, "nft", "-f", "-", input=(
        "table inet strict {\n chain filter_forward { type filter hook forward priority 0; "
        "policy drop; }\n}\n"))
    assert get(in_ns(sb.outside), url, 1).startswith("fail")  # the pitfall, shown
    sh("ip", "netns", "exec", sb.host, "nft", "insert", "rule", "inet", "strict",
       "filter_forward", "meta", "mark", "&", "0x02000000", "==", "0x02000000", "accept")
    assert get(in_ns(sb.outside), url) == "200"
    sh("ip", "netns", "exec", sb.host, "nft", "delete", "table", "inet", "strict")


def test_published_port_follows_disconnect(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "a", "--subnet", "10.91.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.92.0.0/24")
    sb.extra["web"] = ["--network", "a", "-p", "8089:80"]
    served(sb, "web")
    sb.pw("network", "connect", "b", "web")
    url = f"http://{sb.host_addr}:8089/"
    assert get(in_ns(sb.outside), url) == "200"
    # eth0 goes: the port now leads to the address on b.
    sb.pw("network", "disconnect", "a", "web")
    assert get(in_ns(sb.outside), url) == "200"
    assert sb.pw("gc").stdout.startswith("nothing to repair")


# A forged ICMP error: the attacker names a flow of the victim's (the victim's connected
# UDP socket to a host service) as the packet the error is about. Conntrack then calls
# it `related` to that flow. Sent as the attacker's own raw packet (CAP_NET_RAW, which
# containers keep).
FORGE = ("import socket, struct, sys\n"
         "victim, sport, gw, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], "
         "int(sys.argv[4])\n"
         "def csum(b):\n"
         "    t = sum(struct.unpack(f'!{len(b)//2}H', b))\n"
         "    while t >> 16: t = (t & 0xffff) + (t >> 16)\n"
         "    return ~t & 0xffff\n"
         "ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 36, 1, 0x4000, 64, 17, 0,\n"
         "                 socket.inet_aton(victim), socket.inet_aton(gw))\n"
         "ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]\n"
         "inner = ip + struct.pack('!HHHH', sport, dport, 16, 0)\n"
         "icmp = struct.pack('!BBHI', 3, 3, 0, 0) + inner\n"
         "icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
         "for _ in range(3): s.sendto(icmp, (victim, 0))\n")
# The victim: a connected UDP socket to a host service that never answers; it prints its
# port, then whether an ICMP error ended its wait (ECONNREFUSED) for each try.
VICTIM = ("import socket, sys, time\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "s.connect((sys.argv[1], 9999)); s.settimeout(0.5)\n"
          "print('port', s.getsockname()[1], flush=True)\n"
          "while True:\n"  # an error may be told at the send as well as the recv
          "    try: s.send(b'hello'); s.recv(100); print('answer', flush=True)\n"
          "    except ConnectionRefusedError: print('refused', flush=True)\n"
          "    except socket.timeout: print('quiet', flush=True)\n")


def test_forged_icmp_errors_meet_isolation_and_icc(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "a", "--subnet", "10.101.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.102.0.0/24")
    sb.pw("network", "create", "quiet", "--subnet", "10.103.0.0/24",
          "-o", "com.docker.network.bridge.enable_icc=false")
    # A host service on every address that takes datagrams and never answers.
    sink = subprocess.Popen([*in_ns(sb.host), "python3", "-c",
                             "import socket; s = socket.socket(socket.AF_INET, "
                             "socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n"
                             "while True: s.recv(100)"])
    try:
        cases = (("victim", "a", "10.101.0.1", "attacker", "b"),
                 ("qvictim", "quiet", "10.103.0.1", "qattacker", "quiet"))
        for victim, net, gw, attacker, anet in cases:
            sb.pw("run", "-d", "--name", victim, "--network", net, "--", "python3", "-c",
                  VICTIM, gw)
            sb.pw("run", "-d", "--name", attacker, "--network", anet, "--", "sleep", "3600")

        def forged(victim: str, gw: str, attacker: str) -> bool:
            """Whether the forged error reached the victim (its socket saw ECONNREFUSED)."""
            deadline = time.monotonic() + 5
            while "port " not in sb.pw("logs", victim).stdout:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            log = sb.pw("logs", victim).stdout
            sport = log.split("port ", 1)[1].split()[0]
            address = sb.inspect(victim)["NetworkSettings"]["Networks"]  # type: ignore[index]
            (ip,) = [n["IPAddress"] for n in address.values()]  # type: ignore[attr-defined]
            seen = log.count("refused")
            sb.pw("exec", attacker, "--", "python3", "-c", FORGE, ip, sport, gw, "9999")
            time.sleep(1.2)
            return sb.pw("logs", victim).stdout.count("refused") > seen

        # Control: with `related` accepted first, as before, each forged error gets in.
        for _, _, _, _, anet in cases:
            nid = json.loads(sb.pw("network", "inspect", anet).stdout)[0]["Id"][:12]
            sb.in_host("nft", "insert", "rule", "inet", "portway", f"in-{nid}", "ct", "state",
                       "related", "accept")
        for victim, _, gw, attacker, _ in cases:
            assert forged(victim, gw, attacker), f"control: {attacker} -> {victim}"
        assert sb.pw("gc").stdout.count("restore chain inet portway in-") == 2
        for victim, _, gw, attacker, _ in cases:
            assert not forged(victim, gw, attacker), f"{attacker} -> {victim}"
    finally:
        sink.kill()
        sink.wait()



def test_a_rule_edited_in_place_is_drift(fw: Sandbox) -> None:
    sb = fw
    sb.pw("network", "create", "a", "--subnet", "10.107.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.108.0.0/24")
    sb.extra["wb"] = ["--network", "b"]
    served(sb, "wb")
    sb.pw("run", "-d", "--name", "wa", "--network", "a", "--", "sleep", "3600")
    wa = sb.pw_cmd("exec", "wa", "--")
    assert get(wa, "http://10.108.0.2/", 1).startswith("fail")
    # The isolation rule turned into an accept, in place: as many rules as before.
    nid = json.loads(sb.pw("network", "inspect", "a").stdout)[0]["Id"][:12]
    listing = json.loads(sh("ip", "netns", "exec", sb.host, "nft", "-j", "-a", "list", "chain",
                            "inet", "portway", f"in-{nid}").stdout)["nftables"]
    handle = next(i["rule"]["handle"] for i in listing
                  if "rule" in i and "isolation" in i["rule"].get("comment", ""))
    sb.in_host("nft", "replace", "rule", "inet", "portway", f"in-{nid}", "handle", str(handle),
               "oifname", "@bridges", "accept")
    assert get(wa, "http://10.108.0.2/") == "200"  # the edit opened the way
    cp = sb.pw("doctor", check=False)
    assert cp.returncode == 1 and f"restore chain inet portway in-{nid}" in cp.stdout
    assert f"restore chain inet portway in-{nid}" in sb.pw("gc").stdout
    assert get(wa, "http://10.108.0.2/", 1).startswith("fail")
    assert sb.pw("doctor").stdout.startswith("healthy")
