"""`portway trace` on real paths: the static verdict, its key hops, and a real connection
attempt over the same path that agrees with it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import Sandbox, sh
from portway.testbed import HTTP_GET as GET
from portway.testbed import WAIT_LISTENING as WAIT


def trace(sb: Sandbox, *args: str) -> dict[str, Any]:
    """Static and live together; live must agree with static, and leave nothing behind."""
    data: dict[str, Any] = json.loads(sb.pw("trace", *args, "--json", "--live").stdout)
    live = data["live"]
    assert live["agrees"], (args, live["disagreements"], data["hops"], live["hops"])
    assert live["verdict"] == data["verdict"]
    if live["seen_source"] is not None:
        assert (live["seen_source"], live["seen_destination"]) == \
            (data["seen_source"], data["seen_destination"])
    tables = sb.in_host("nft", "list", "tables").stdout
    assert "portway_trace" not in tables
    assert not [n for n in sb.own_netns() if n.startswith("pwprobe-")]
    return data


def kernel_rules(t: dict[str, Any]) -> list[str]:
    return [h["rule"] for h in t["live"]["hops"] if h["rule"]]


def rules(t: dict[str, Any]) -> list[str]:
    return [h["rule"] for h in t["hops"] if h.get("rule")]


def attempt(where: list[str], url: str) -> str:
    return subprocess.run([*where, "python3", "-c", GET, url], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def served(sb: Sandbox, name: str, *args: str) -> None:
    sb.pw("run", "-d", "--name", name, *args, "--", "python3", "-m", "http.server", "80")
    sb.pw("exec", name, "--", "python3", "-c", WAIT, "127.0.0.1", "80")


def last_client(sb: Sandbox, name: str) -> str:
    """The client address the container's HTTP server logged last."""
    lines = [line for line in sb.pw("logs", name).stdout.splitlines() if '"GET' in line]
    return lines[-1].split()[0] if lines else ""


@pytest.fixture
def paths(sandbox: Sandbox) -> Sandbox:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.50.0.0/24")
    sb.pw("network", "create", "db", "--subnet", "10.51.0.0/24")
    sb.pw("network", "create", "back", "--subnet", "10.52.0.0/24", "--internal")
    served(sb, "web", "--network", "app", "-p", "8080:80")
    served(sb, "cache", "--network", "app", "-p", "127.0.0.1:6379:80")
    served(sb, "store", "--network", "db")
    # NET_ADMIN: the tests below change its routes from inside, as an attacker with it would.
    sb.pw("run", "-d", "--name", "inner", "--network", "back", "--cap-add", "NET_ADMIN", "--",
          "sleep", "3600")
    return sb


def test_paths_agree_with_real_connections(paths: Sandbox) -> None:
    sb = paths
    in_web = sb.pw_cmd("exec", "web", "--")
    outside = ["ip", "netns", "exec", sb.outside]

    # Same network: bridged, accepted by the icc rule, delivered.
    t = trace(sb, "web", "cache:80")
    assert t["verdict"] == "delivered" and t["seen_source"] == "10.50.0.2"
    assert any("between its containers (icc)" in r for r in rules(t))
    assert attempt(in_web, "http://10.50.0.3/") == "200"
    assert last_client(sb, "cache") == t["seen_source"]

    # Across networks: dropped by the isolation rule; the real attempt fails too.
    t = trace(sb, "web", "store:80")
    assert t["verdict"] == "dropped" and "isolation" in rules(t)[-1]
    assert "isolation" in kernel_rules(t)[-1]  # the kernel names the same rule
    assert attempt(in_web, "http://10.51.0.2/").startswith("fail")

    # Internal network: no way out.
    t = trace(sb, "inner", f"{sb.outside_addr}:80")
    assert t["verdict"] == "no-route"  # no default route is given to internal networks
    # Even with a route added by hand: dropped on the way out, and at the host's door.
    sb.pw("exec", "inner", "--", "ip", "route", "add", "default", "via", "10.52.0.1")
    t = trace(sb, "inner", f"{sb.outside_addr}:80")
    assert t["verdict"] == "dropped" and "internal, no way out" in rules(t)[-1]
    t = trace(sb, "inner", f"{sb.host_addr}:22")
    assert t["verdict"] == "dropped" and "nothing else of the host" in rules(t)[-1]
    assert t["live"]["hops"][-1]["hook"] == "input"

    # Outbound: masqueraded to the host's uplink address, leaves the host.
    server = subprocess.Popen([*outside, "python3", "-m", "http.server", "9000", "--bind",
                               sb.outside_addr], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        subprocess.run([*outside, "python3", "-c", WAIT, sb.outside_addr, "9000"], check=True)
        t = trace(sb, "web", f"{sb.outside_addr}:9000")
        assert t["verdict"] == "leaves-host" and t["seen_source"] == sb.host_addr
        assert any("outbound masquerade" in r for r in rules(t))
        assert attempt(in_web, f"http://{sb.outside_addr}:9000/") == "200"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=5)
    assert err.split()[0] == sb.host_addr  # the outside saw the host's address

    # Outside -> published port: DNAT, the client's own address is kept.
    t = trace(sb, "outside", "web:80", "--from-ip", sb.outside_addr)
    assert t["verdict"] == "delivered"
    assert (t["seen_source"], t["seen_destination"]) == (sb.outside_addr, "10.50.0.2:80")
    assert attempt(outside, f"http://{sb.host_addr}:8080/") == "200"
    assert last_client(sb, "web") == sb.outside_addr

    # Outside -> an unpublished container address, with a route to it: dropped.
    sh("ip", "-n", sb.outside, "route", "add", "10.50.0.0/24", "via", sb.host_addr)
    t = trace(sb, "outside", "10.50.0.3:80", "--from-ip", sb.outside_addr)
    assert t["verdict"] == "dropped" and "no direct access" in rules(t)[-1]
    assert attempt(outside, "http://10.50.0.3/").startswith("fail")

    # Host -> 127.0.0.1-published port: DNAT in output, masqueraded to the gateway.
    t = trace(sb, "host", "127.0.0.1:6379")
    assert t["verdict"] == "delivered" and t["seen_source"] == "10.50.0.1"
    assert attempt(["ip", "netns", "exec", sb.host], "http://127.0.0.1:6379/") == "200"
    assert last_client(sb, "cache") == "10.50.0.1"

    # Hairpin: a container through the host's address to its own published port.
    t = trace(sb, "web", f"{sb.host_addr}:8080")
    assert t["verdict"] == "delivered" and t["seen_source"] == "10.50.0.1"
    assert any("hairpin" in r for r in rules(t))
    assert attempt(in_web, f"http://{sb.host_addr}:8080/") == "200"
    assert last_client(sb, "web") == "10.50.0.1"

    # No listener: delivered to the container, which answers with a reset.
    t = trace(sb, "web", "cache:81")
    assert t["verdict"] == "no-listener"
    assert attempt(in_web, "http://10.50.0.3:81/") == "fail URLError"


def test_trace_notices_changes_behind_the_store(paths: Sandbox) -> None:
    sb = paths
    in_web = sb.pw_cmd("exec", "web", "--")
    # Another table's forward chain drops everything: portway's rules accept, it decides.
    sb.in_host("nft", "add table inet hard")
    sb.in_host("nft", "add chain inet hard deny { type filter hook forward priority 0; "
               "policy drop; }")
    t = trace(sb, "outside", "web:80", "--from-ip", sb.outside_addr)
    assert t["verdict"] == "dropped"
    assert [h["table"] for h in t["hops"] if h.get("verdict") == "policy drop"] == ["hard"]
    assert attempt(["ip", "netns", "exec", sb.outside],
                   f"http://{sb.host_addr}:8080/").startswith("fail")
    sb.in_host("nft", "delete table inet hard")
    assert trace(sb, "outside", "web:80", "--from-ip", sb.outside_addr)["verdict"] == \
        "delivered"
    # Bridge netfilter off: bridged packets skip the IP hooks; both modes say so.
    sb.in_host("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    try:
        t = trace(sb, "web", "cache:80")
        assert t["verdict"] == "delivered" and t["bridge_netfilter"] is False
        assert any("bridge netfilter is off" in h["detail"] for h in t["hops"])
        assert [h["table"] for h in t["live"]["hops"]] == ["portway"]  # bridge spoof only
        assert [h["family"] for h in t["live"]["hops"]] == ["bridge"]
    finally:
        sb.in_host("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    # A route deleted inside a container.
    web_ns = os.path.basename(str(sb.inspect("web")["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
    sh("ip", "-n", web_ns, "route", "del", "default")
    t = trace(sb, "web", f"{sb.outside_addr}:80")
    assert t["verdict"] == "no-route"
    assert attempt(in_web, f"http://{sb.outside_addr}:80/").startswith("fail")
    text = sb.pw("trace", "web", f"{sb.outside_addr}:80").stdout
    lines = text.splitlines()
    assert "no route to" in text and lines[-2].startswith("verdict: no-route")
    assert lines[-1].startswith("fix: a default route through pwbr-") and lines[-1].endswith(
        f" in host: ip netns exec {web_ns} ip route add default via 10.50.0.1 (or only "
        f"{sb.outside_addr}/32)")


def test_trace_draws_its_path(paths: Sandbox, tmp_path: Path) -> None:
    """trace -o: the path on the topology picture, as Graphviz draws it."""
    sb = paths
    picture = tmp_path / "path.svg"
    cp = sb.pw("trace", "outside", "web:80", "-o", str(picture))
    assert cp.stdout.rstrip().endswith(str(picture))  # the text, then the file
    svg = picture.read_text().replace("&#45;", "-")  # Graphviz's escaped hyphens
    assert svg.startswith("<?xml") and "<svg" in svg
    web = sb.inspect("web")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    assert web["HostInterface"] in svg  # type: ignore[index]
    assert "DNAT" in svg and "delivered: delivered to container web" in svg
    # A path that stops: the verdict where it stopped; --json stays JSON alone.
    dot = tmp_path / "stopped.dot"
    cp = sb.pw("trace", "web", "10.51.0.2:80", "--json", "-o", str(dot))
    assert json.loads(cp.stdout)["verdict"] == "dropped"
    assert '"path:end:dropped"' in dot.read_text() and "isolation" in dot.read_text()
    bad = sb.pw("trace", "web", "10.51.0.2:80", "-o", str(tmp_path / "x.bmp"), check=False)
    assert bad.returncode == 2 and bad.stdout == "" and "svg, .png or .dot" in bad.stderr


def test_trace_bad_input(paths: Sandbox) -> None:
    sb = paths
    for args, words in ((["nobody", "web:80"], "no such source"),
                        (["web", "web"], "no port"),
                        (["web", "web:99999"], "invalid port"),
                        (["web", "web:80/dccp"], "unknown protocol"),
                        (["web", "ghost:80"], "not found"),
                        (["outside", "web:80", "--from-ip", "nope"], "invalid --from-ip"),
                        (["web", "web:80", "--from-ip", "1.2.3.4"], "outside source")):
        cp = sb.pw("trace", *args, check=False)
        assert cp.returncode != 0 and words in cp.stderr, (args, cp.stderr)
        assert cp.stderr.count("\n") == 1 and "Traceback" not in cp.stderr


def test_namespace_portway_did_not_make(paths: Sandbox) -> None:
    """Another tool's namespace, wired to the host by hand: trace ns:NAME explains it."""
    sb = paths
    other = f"{sb.host}-x"
    sh("ip", "netns", "add", other)
    try:
        sh("ip", "-n", sb.host, "link", "add", "xveth0", "type", "veth", "peer", "name", "eth0",
           "netns", other)
        sh("ip", "-n", sb.host, "addr", "add", "10.59.0.1/24", "dev", "xveth0")
        sh("ip", "-n", sb.host, "link", "set", "xveth0", "up")
        sh("ip", "-n", other, "addr", "add", "10.59.0.2/24", "dev", "eth0")
        sh("ip", "-n", other, "link", "set", "eth0", "up")
        sh("ip", "-n", other, "route", "add", "default", "via", "10.59.0.1")
        # To a published port: DNAT, delivered, the client address kept.
        t = trace(sb, f"ns:{other}", f"{sb.host_addr}:8080")
        assert t["verdict"] == "delivered" and t["seen_source"] == "10.59.0.2"
        assert t["hops"][1]["detail"].startswith("veth pair: eth0")  # its peer was found
        # To a container's own address: not published, dropped.
        t = trace(sb, f"ns:{other}", "web:80")
        assert t["verdict"] == "dropped" and "no direct access" in rules(t)[-1]
        assert sb.pw("trace", "ns:nonesuch", "web:80", check=False).returncode == 3
    finally:
        sh("ip", "netns", "del", other)
        sh("ip", "-n", sb.host, "link", "del", "xveth0", check=False)


def test_a_network_whose_bridge_is_down_leaves_by_the_uplink(sandbox: Sandbox) -> None:
    # A bridge taken down (a network manager, a script) keeps its address but loses its
    # routes: the real connection to a published port fails, its DNATed packet sent out
    # of the uplink. trace says where it was likely meant to go, and the fix.
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.165.0.0/24")
    served(sb, "web", "--network", "app", "-p", "8080:80")
    bridge = next(str(link["ifname"]) for link in json.loads(sb.in_host(
        "ip", "-j", "link", "show", "type", "bridge").stdout))
    sb.in_host("ip", "link", "set", bridge, "down")
    outside = ["ip", "netns", "exec", sb.outside]
    assert attempt(outside, "http://198.51.100.1:8080/").startswith("fail")
    t = json.loads(sb.pw("trace", "outside", "web:80", "--json").stdout)
    assert t["verdict"] == "leaves-host"
    assert t["summary"].endswith(f"10.165.0.2 is in 10.165.0.0/24 of {bridge}, which is down "
                                 f"(so is its route): it was likely meant for {bridge}")
    assert t["fix"].endswith(f"ip link set {bridge} up")
    sb.in_host("ip", "link", "set", bridge, "up")
    assert attempt(outside, "http://198.51.100.1:8080/") == "200"
