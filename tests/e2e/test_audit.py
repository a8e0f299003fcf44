"""`portway audit` on hosts built like real ones, each answer checked by a real connection.

A host like Docker's (tests/e2e/data/docker-host.nft: its nat and filter chains, a
MASQUERADE, Docker 28's raw drop for a container address, a ufw-style `inet filter`
input chain with policy drop) with two bridges made by hand and a container behind each
(a plain namespace with a veth, a Python server in it), and four exposures planted:

  1. 8080 published on every address: DNAT sends it through forward, past the input
     chain's policy drop (moby/moby#4737, "Docker bypasses ufw")
  2. 8081 published on 127.0.0.1, and route_localnet=1 on the uplink: a neighbour
     reaches it (moby/moby#45610, kubernetes/kubernetes#90259; the DNAT alone suffices,
     as the real connection below shows)
  3. DOCKER-USER lets the LAN straight into br-two: 172.18.0.2 reached with no DNAT
     (moby/moby#22054, direct routed access to container addresses)
  4. docker0's isolation rules are missing: a container of docker0 reaches br-two's

Audit must find exactly these, and each is confirmed by a real connection; what audit
says is closed (the host socket behind the input firewall, 172.17.0.2 from the LAN,
br-two to docker0) is confirmed closed. Then a host built by portway, where audit finds
nothing, and a look at a host where portway has nothing, which changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Sandbox, sh
from portway.testbed import HOST_ADDR6, HTTP_GET, ROUTED_CLIENT, DockerLike, connect
from portway.testbed import WAIT_LISTENING as WAIT

RULES = Path(__file__).parent / "data" / "docker-host.nft"


def get(where: list[str], url: str) -> str:
    """An HTTP GET from where (a command prefix): the status, or "fail ERROR"."""
    return subprocess.run([*where, "python3", "-c", HTTP_GET, url], capture_output=True,
                          text=True, timeout=30).stdout.strip()


@pytest.fixture
def docker_like(sandbox: Sandbox) -> Iterator[DockerLike]:
    host = DockerLike(sandbox.host, sandbox.outside, RULES.read_text())
    try:
        yield host
    finally:
        host.remove()


def audit(sb: Sandbox, *args: str) -> tuple[int, dict[str, Any]]:
    cp = sb.pw("audit", "--json", *args, check=False, timeout=120)
    assert cp.returncode in (0, 1), cp.stderr
    data: dict[str, Any] = json.loads(cp.stdout)
    return cp.returncode, data


def findings(data: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((f["kind"], f["target"]) for f in data["findings"])


def test_docker_like_host_each_planted_exposure_and_nothing_else(
        sandbox: Sandbox, docker_like: DockerLike) -> None:
    host = docker_like
    sb = sandbox
    o = sb.outside
    code, data = audit(sb)
    assert code == 1
    c1, c2 = (f"namespace {host.c1} 172.17.0.2:80/tcp", f"namespace {host.c2} "
              "172.18.0.2:80/tcp")
    assert findings(data) == [
        ("across-networks", c1),
        ("across-networks", c2),
        ("bypasses-input-firewall", "published 0.0.0.0:8080/tcp -> 172.17.0.2:80"),
        ("direct-container-access", c2),
        ("loopback-exposed", "published 127.0.0.1:8081/tcp -> 172.17.0.2:80")]
    by = {(f["kind"], f["target"]): f for f in data["findings"]}
    assert all(f["fix_checked"] for f in data["findings"]), data["findings"]
    assert by[("across-networks", c2)]["sources"] == [f"namespace {host.c1} (on docker0)"]
    assert by[("across-networks", c1)]["sources"] == [f"namespace {host.c2} (on br-two)"]
    by = {f["kind"]: f for f in data["findings"]}
    assert by["bypasses-input-firewall"]["sources"] == [
        f"a neighbour on uplink0 ({sb.outside_addr})",
        f"a routed client via uplink0 ({ROUTED_CLIENT})"]
    # Each finding, by a real connection (the servers answer with the client's address).
    assert connect(o, sb.host_addr, 8080) == f"hi {sb.outside_addr}"
    assert connect(o, sb.host_addr, 8080, ROUTED_CLIENT) == f"hi {ROUTED_CLIENT}"
    assert connect(o, "127.0.0.1", 8081) == f"hi {sb.outside_addr}"
    assert connect(o, "172.18.0.2", 80) == f"hi {sb.outside_addr}"
    assert connect(host.c1, "172.18.0.2", 80) == "hi 172.18.0.1"  # masqueraded
    assert connect(host.c2, "172.17.0.2", 80) == "hi 172.17.0.1"
    # And what audit says is closed, closed: the input firewall does hold the host's own
    # sockets, and the raw rule guards 172.17.0.2 from the LAN.
    assert connect(o, sb.host_addr, 9000).startswith("fail")
    assert connect(o, "127.0.0.1", 9001).startswith("fail")
    assert connect(o, "172.17.0.2", 80).startswith("fail")
    targets = {t["label"]: t for t in data["targets"]}
    assert set(targets) == {"published 0.0.0.0:8080/tcp -> 172.17.0.2:80",
                            "published 127.0.0.1:8081/tcp -> 172.17.0.2:80",
                            "host socket 0.0.0.0:9000/tcp", "host socket 127.0.0.1:9001/tcp",
                            c1, c2}
    # The host reaches its own socket; the neighbour does not.
    reach = {r["source_kind"]: r["reached"] for r in
             targets["host socket 0.0.0.0:9000/tcp"]["reach"]}
    assert reach == {"host": True, "neighbour": False, "outside": False, "container": False}
    # The fixes, applied for real, close what they are for.
    for f in data["findings"]:
        for line in f["fix"]:
            if line.startswith("nft "):
                sb.in_host("sh", "-c", line)
    assert connect(o, sb.host_addr, 8080).startswith("fail")
    assert connect(o, "127.0.0.1", 8081).startswith("fail")
    assert connect(o, "172.18.0.2", 80).startswith("fail")
    assert connect(host.c1, "172.18.0.2", 80).startswith("fail")
    assert connect(host.c2, "172.17.0.2", 80).startswith("fail")
    code, data = audit(sb)
    assert (code, findings(data)) == (0, [])


def test_docker_through_iptables_nft(sandbox: Sandbox) -> None:
    """The same host, its rules written as Docker 20.10 writes them: through iptables-nft,
    whose addrtype, conntrack and DNAT the kernel's tables hold as xt expressions. Audit
    reads them through iptables-nft-save, finds the same exposures, and gives its fixes
    as iptables commands, which close them."""
    sb = sandbox
    host = DockerLike(sb.host, sb.outside, (RULES.parent / "ufw.nft").read_text(),
                      (RULES.parent / "docker-host.iptables").read_text())
    try:
        listing = sb.in_host("nft", "-j", "list", "ruleset").stdout
        assert '"xt"' in listing
        saved = sb.in_host("iptables-nft-save").stdout
        code, data = audit(sb)
        assert code == 1
        c1, c2 = (f"namespace {host.c1} 172.17.0.2:80/tcp", f"namespace {host.c2} "
                  "172.18.0.2:80/tcp")
        assert findings(data) == [
            ("across-networks", c1), ("across-networks", c2),
            ("bypasses-input-firewall", "published 0.0.0.0:8080/tcp -> 172.17.0.2:80"),
            ("direct-container-access", c2),
            ("loopback-exposed", "published 127.0.0.1:8081/tcp -> 172.17.0.2:80")]
        assert any("ip nat: iptables-nft's rules read through" in n for n in data["notes"])
        # Read, not changed: iptables-nft-save says what it said.
        assert _same_rules(sb, saved)
        o = sb.outside
        assert connect(o, sb.host_addr, 8080) == f"hi {sb.outside_addr}"
        assert connect(o, "127.0.0.1", 8081) == f"hi {sb.outside_addr}"
        assert connect(o, "172.18.0.2", 80) == f"hi {sb.outside_addr}"
        assert connect(host.c1, "172.18.0.2", 80) == "hi 172.18.0.1"
        assert connect(host.c2, "172.17.0.2", 80) == "hi 172.17.0.1"
        fixes = [line for f in data["findings"] for line in f["fix"]
                 if line.startswith(("iptables ", "nft "))]
        assert fixes and all(line.startswith("iptables ") for line in fixes), fixes
        for line in fixes:
            sb.in_host("sh", "-c", line)
        assert connect(o, sb.host_addr, 8080).startswith("fail")
        assert connect(o, "127.0.0.1", 8081).startswith("fail")
        assert connect(o, "172.18.0.2", 80).startswith("fail")
        assert connect(host.c1, "172.18.0.2", 80).startswith("fail")
        assert connect(host.c2, "172.17.0.2", 80).startswith("fail")
        code, data = audit(sb)
        assert (code, findings(data)) == (0, [])
    finally:
        host.remove()


def test_kubernetes_node_ports(sandbox: Sandbox) -> None:
    """kube-proxy's rules (iptables mode, through iptables-nft) for a service whose
    endpoints are the two containers, beside the ufw-style input firewall: the NodePort
    is found three chains above its DNAT, reached from the LAN past the input firewall,
    as a real connection confirms."""
    sb = sandbox
    rules = (RULES.parent / "kube-node.iptables").read_text() \
        .replace("10.244.1.4:8080", "172.17.0.2:80").replace("10.244.1.5:8080", "172.18.0.2:80")
    host = DockerLike(sb.host, sb.outside, (RULES.parent / "ufw.nft").read_text(), rules)
    try:
        _, data = audit(sb)
        node_port = "published 0.0.0.0:30080/tcp -> 172.17.0.2:80, 172.18.0.2:80"
        assert ("bypasses-input-firewall", node_port) in findings(data)
        assert "published 10.96.0.10:80/tcp -> 172.17.0.2:80, 172.18.0.2:80" in \
            {t["label"] for t in data["targets"]}
        assert connect(sb.outside, sb.host_addr, 30080).startswith("hi ")
        assert connect(sb.outside, sb.host_addr, 9000).startswith("fail")  # ufw holds
    finally:
        host.remove()


def _same_rules(sb: Sandbox, saved: str) -> bool:
    """iptables-nft-save's rules, without its comment lines (they carry the time) and the
    chains' packet counters (the links' own traffic moves them)."""
    def rules(text: str) -> list[str]:
        return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                if not line.startswith("#")]

    return rules(sb.in_host("iptables-nft-save").stdout) == rules(saved)


def test_docker_like_host_text_and_live(sandbox: Sandbox, docker_like: DockerLike) -> None:
    sb = sandbox
    text = sb.pw("audit", check=False, timeout=120).stdout
    assert "5 finding(s):" in text
    assert "bypasses the input-hook firewall: published 0.0.0.0:8080/tcp" in text
    assert "nft insert rule ip filter DOCKER-USER" in text
    _, data = audit(sb, "--live")
    by = {f["kind"]: f for f in data["findings"]}
    for f in data["findings"]:
        if f["kind"] == "across-networks":
            # (Whether trace --live's account agrees hop by hop is trace's to say: the
            # probe is delivered, as static says.)
            assert [x["verdict"] for x in f["live"]] == ["delivered"], f["live"]
    live = by["bypasses-input-firewall"]["live"]
    assert [x["verdict"] for x in live] == ["delivered", "delivered"], live
    assert by["loopback-exposed"]["live"][0]["verdict"] == "not probed"
    tables = sb.in_host("nft", "list", "tables").stdout
    assert "portway_trace" not in tables
    assert not [n for n in sb.own_netns() if n.startswith("pwprobe-")]


def test_live_agrees_with_static_on_dockers_jump_and_return_chains(
        sandbox: Sandbox, docker_like: DockerLike) -> None:
    """Docker's FORWARD jumps to DOCKER-USER and DOCKER-ISOLATION-STAGE-1, which return,
    then to DOCKER, which runs out; its nat PREROUTING jumps to DOCKER, which DNATs. The
    kernel's account of trace --live's probe and the static trace agree on each path,
    chain by chain (no "static DISAGREES")."""
    sb = sandbox
    for source, destination in ((f"ns:{docker_like.c1}", "172.18.0.2:80"),
                                ("outside", f"{sb.host_addr}:8080")):
        cp = sb.pw("trace", "--live", "--json", source, destination, check=False,
                   timeout=120)
        assert cp.returncode == 0, cp.stderr
        t = json.loads(cp.stdout)
        assert (t["verdict"], t["live"]["verdict"]) == ("delivered", "delivered"), t["live"]
        assert t["live"]["agrees"], (source, t["live"]["disagreements"], t["live"]["hops"])
        assert "DISAGREE" not in sb.pw("trace", "--live", source, destination,
                                       timeout=120).stdout


def test_portway_host_has_no_exposure(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.60.0.0/24")
    sb.pw("network", "create", "db", "--subnet", "10.61.0.0/24")
    for name, net, ports in (("web", "app", ["-p", "8080:80", "-p", "127.0.0.1:8081:80"]),
                             ("store", "db", [])):
        sb.pw("run", "-d", "--name", name, "--network", net, *ports, "--", "python3", "-m",
              "http.server", "80")
        sb.pw("exec", name, "--", "python3", "-c", WAIT, "127.0.0.1", "80")
    code, data = audit(sb)
    assert (code, findings(data)) == (0, [])
    targets = {t["label"]: t for t in data["targets"]}
    assert "published 0.0.0.0:8080/tcp -> 10.60.0.2:80" in targets
    assert "container store 10.61.0.2:80/tcp" in targets
    assert not [t for t in targets if t.startswith("host socket") and ":8080/" in t]
    reach = {r["source_kind"]: r["reached"] for r in
             targets["published 0.0.0.0:8080/tcp -> 10.60.0.2:80"]["reach"]}
    assert reach["neighbour"] and reach["outside"]
    # What audit says is closed, by real connections from the neighbour and across.
    outside = ["ip", "netns", "exec", sb.outside]
    assert get(outside, f"http://{sb.host_addr}:8080/") == "200"
    sh("ip", "-n", sb.outside, "route", "add", "10.61.0.0/24", "via", sb.host_addr)
    assert get(outside, "http://10.61.0.2/").startswith("fail")
    assert get(sb.pw_cmd("exec", "web", "--"), "http://10.61.0.2/").startswith("fail")
    assert get(sb.pw_cmd("exec", "store", "--"), "http://10.60.0.2/").startswith("fail")
    assert "no exposure found" in sb.pw("audit").stdout


def test_ipv6_routed_published_port_and_a_planted_ipv6_exposure(sandbox: Sandbox) -> None:
    """A routed IPv6 network's published container port is open at the container's
    address on purpose (Docker 27's routed mode), so it is no finding. Its unpublished
    neighbour reached from the LAN is one once portway's drop is taken away: the fix goes
    where IPv6 passes (ip6 raw, not ip raw, which never sees IPv6), and a real
    connection confirms both the exposure and the fix."""
    sb = sandbox
    sb.pw("network", "create", "r6", "--ipv6", "--subnet", "10.62.0.0/24", "--subnet",
          "fd00:62::/64", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed")
    for name, ports in (("web", ["-p", "8080:80"]), ("quiet", [])):
        sb.pw("run", "-d", "--name", name, "--network", "r6", *ports, "--", "python3", "-m",
              "http.server", "--bind", "::", "80")
        sb.pw("exec", name, "--", "python3", "-c", WAIT, "::1", "80")
    sh("ip", "-n", sb.outside, "-6", "route", "add", "fd00:62::/64", "via", HOST_ADDR6)
    outside = ["ip", "netns", "exec", sb.outside]
    assert get(outside, "http://[fd00:62::2]/") == "200"
    code, data = audit(sb)
    assert (code, findings(data)) == (0, []), findings(data)
    # Planted: portway's drop of the rest taken away (gc would put it back).
    nid = json.loads(sb.pw("network", "inspect", "r6").stdout)[0]["Id"][:12]
    listing = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", "inet", "portway",
                                    f"out-{nid}").stdout)["nftables"]
    handle = next(i["rule"]["handle"] for i in listing if "rule" in i and
                  "no direct access" in i["rule"].get("comment", ""))
    sb.in_host("nft", "delete", "rule", "inet", "portway", f"out-{nid}", "handle",
               str(handle))
    assert get(outside, "http://[fd00:62::3]/") == "200"
    code, data = audit(sb)
    # (IPv4's addresses too: the rule was the network's, for both families.)
    assert (code, findings(data)) == (1, [
        ("direct-container-access", "container quiet 10.62.0.3:80/tcp"),
        ("direct-container-access", "container quiet [fd00:62::3]:80/tcp"),
        ("direct-container-access", "container web 10.62.0.2:80/tcp")])
    finding = next(f for f in data["findings"] if "[fd00:62::3]" in f["target"])
    assert finding["fix"][:2] == [
        "nft add table ip6 raw",
        "nft add chain ip6 raw PREROUTING '{ type filter hook prerouting priority -300; "
        "policy accept; }'"], finding["fix"]
    assert finding["fix_checked"], finding
    for command in finding["fix"]:
        sb.in_host("sh", "-c", command)
    assert get(outside, "http://[fd00:62::3]/").startswith("fail")
    assert get(outside, "http://[fd00:62::2]/") == "200"
    sb.in_host("nft", "delete", "table", "ip6", "raw")


def test_audit_changes_nothing_where_portway_has_nothing(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.in_host("sysctl", "-qw", "net.ipv4.ip_forward=0")

    def state() -> str:
        return sb.in_host("sh", "-c", "sysctl -a 2>/dev/null | grep '^net\\.'; nft list "
                          "ruleset; ip -d link; ip addr; ip route show table all").stdout

    # The uplink's link-local address first ends its duplicate address detection (its
    # local route comes then), which is the kernel's doing, not audit's.
    deadline = time.monotonic() + 10
    while "tentative" in sb.in_host("ip", "-6", "addr").stdout and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    before = state()
    code, data = audit(sb)
    assert (code, findings(data)) == (0, [])
    after = state()
    assert after == before, "\n".join(
        f"{a!r} -> {b!r}" for a, b in zip(before.splitlines(), after.splitlines(),
                                          strict=False) if a != b)
    assert not os.path.exists(sb.state_dir)
    assert sb.pw("daemon", "status", check=False).returncode == 1


def test_audit_bad_input(sandbox: Sandbox) -> None:
    cp = sandbox.pw("audit", "--bogus", check=False)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    argv = sandbox.pw_cmd("audit")
    argv[argv.index("--host-netns") + 1] = "no-such-ns"
    cp = subprocess.run(argv, capture_output=True, text=True)
    assert cp.returncode == 3, cp.stderr
    assert cp.stderr.count("\n") == 1 and "not found" in cp.stderr
