"""`show` and `graph`: the topology as the kernel has it, checked against `ip`."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import Sandbox, ip_json


def test_show_matches_the_kernel(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.60.0.0/24")
    sb.pw("network", "create", "db", "--subnet", "10.61.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
          "sleep", "3600")
    sb.pw("network", "connect", "db", "web")
    sb.pw("run", "-d", "--name", "hosty", "--network", "host", "--", "sleep", "3600")
    topo = json.loads(sb.pw("show", "--json").stdout)
    host_links = {str(x["ifname"]): x for x in ip_json(sb.host, "link")}
    nets = {n["Name"]: n for n in topo["Networks"]}
    assert set(nets) == {"app", "db"}
    for net in nets.values():
        assert net["Bridge"]["Index"] == host_links[net["Bridge"]["Name"]]["ifindex"]
    web_app = nets["app"]["Containers"][0]
    web_db = nets["db"]["Containers"][0]
    assert web_app["Ports"] == ["0.0.0.0:8080->80/tcp"] and web_db["Ports"] == []
    netns = os.path.basename(str(sb.inspect("web")["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
    inside = {str(x["ifname"]): x for x in ip_json(netns, "link")}
    for member, ifname, bridge in ((web_app, "eth0", "app"), (web_db, "eth1", "db")):
        host_end, inner = member["HostEnd"], member["ContainerEnd"]
        # The two ends name each other, as `ip -j link` does (link_index is the peer).
        assert host_links[host_end["Name"]]["ifindex"] == host_end["Index"]
        assert inside[ifname]["ifindex"] == inner["Index"]
        assert host_end["Peer"] == inner["Index"] == host_links[host_end["Name"]]["link_index"]
        assert inner["Peer"] == host_end["Index"] == inside[ifname]["link_index"]
        assert host_end["Bridge"] == nets[bridge]["Bridge"]["Name"] == \
            host_links[host_end["Name"]]["master"]
        assert inner["Netns"] == netns
    assert topo["Unbridged"] == [{"Name": "hosty", "Id": topo["Unbridged"][0]["Id"],
                                  "Status": "running", "Mode": "host"}]
    text = sb.pw("show").stdout
    assert f"{web_app['HostEnd']['Name']} #{web_app['HostEnd']['Index']} <-> eth0 " \
           f"#{web_app['ContainerEnd']['Index']} in {netns}" in text
    assert "no isolation" in text and "MISSING" not in text

    # Drift shows: a deleted veth is marked, with the way to repair it.
    sb.in_host("ip", "link", "del", web_db["HostEnd"]["Name"])
    text = sb.pw("show").stdout
    assert "host end MISSING" in text and "portway gc" in text
    sb.pw("gc")
    assert "MISSING" not in sb.pw("show").stdout


def test_graph_of_twenty_containers_on_four_networks(sandbox: Sandbox, tmp_path: object) -> None:
    sb = sandbox
    for n in range(4):
        sb.pw("network", "create", f"n{n}", "--subnet", f"10.6{2 + n}.0.0/24")

    def run(i: int) -> None:
        ports = ["-p", f"{8000 + i}:80"] if i % 5 == 0 else []
        sb.pw("run", "-d", "--name", f"c{i}", "--network", f"n{i % 4}", *ports, "--",
              "sleep", "3600")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(20)))
    dot = sb.pw("graph").stdout
    assert dot.startswith("digraph portway {") and dot.count('label="veth"') == 20
    assert dot.count("cluster_") == 21 and dot.count('label="DNAT"') == 4
    for ext, magic in (("svg", b"<svg"), ("png", b"\x89PNG"), ("dot", b"digraph")):
        out = f"{tmp_path}/topology.{ext}"
        sb.pw("graph", "-o", out)
        assert magic in Path(out).read_bytes()[:400]
    bad = sb.pw("graph", "-o", f"{tmp_path}/topology.bmp", check=False)
    assert bad.returncode == 2 and "svg, .png or .dot" in bad.stderr


def test_show_and_graph_of_both_families(sandbox: Sandbox) -> None:
    """Dual-stack and IPv6-only networks: every subnet, gateway and address as `ip` has
    it, and a port published on both families twice."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.66.0.0/24", "--subnet",
          "fd00:66::/64")
    sb.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet", "fd00:67::/64")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
          "sleep", "3600")
    sb.pw("run", "-d", "--name", "only", "--network", "six", "--", "sleep", "3600")
    topo = json.loads(sb.pw("show", "--json").stdout)
    nets = {n["Name"]: n for n in topo["Networks"]}
    assert (nets["app"]["Subnets"], nets["app"]["Gateways"]) == \
        (["10.66.0.0/24", "fd00:66::/64"], ["10.66.0.1", "fd00:66::1"])
    assert (nets["six"]["Subnets"], nets["six"]["Gateways"]) == (["fd00:67::/64"],
                                                                  ["fd00:67::1"])
    for net in nets.values():  # the bridge holds each gateway
        bridge = ip_json(sb.host, "addr", "show", "dev", net["Bridge"]["Name"])[0]
        have = {a["local"] for a in bridge["addr_info"]}  # type: ignore[union-attr]
        assert set(net["Gateways"]) <= have
    for name, net in (("web", "app"), ("only", "six")):
        member = nets[net]["Containers"][0]
        eth0 = ip_json(member["ContainerEnd"]["Netns"], "addr", "show", "eth0")[0]
        have = [a["local"] for a in eth0["addr_info"]  # type: ignore[union-attr]
                if a["scope"] == "global"]
        assert member["Addresses"] == have, name
    assert nets["app"]["Containers"][0]["Ports"] == ["0.0.0.0:8080->80/tcp",
                                                     "[::]:8080->80/tcp"]
    text = sb.pw("show").stdout
    assert "network app  10.66.0.0/24, fd00:66::/64  gateway 10.66.0.1, fd00:66::1" in text
    assert "network six  fd00:67::/64  gateway fd00:67::1\n" in text
    # What sets a network's packets apart is on its line: a family routed, icc off.
    sb.pw("network", "create", "r6", "--ipv6", "--subnet", "10.68.0.0/24", "--subnet",
          "fd00:68::/64", "-o", "com.docker.network.bridge.gateway_mode_ipv6=routed", "-o",
          "com.docker.network.bridge.enable_icc=false")
    assert "network r6  10.68.0.0/24, fd00:68::/64  gateway 10.68.0.1, fd00:68::1, IPv6 " \
        "routed (no NAT), icc off\n" in sb.pw("show").stdout
    assert "10.66.0.2, fd00:66::2" in text and "fd00:67::2" in text
    dot = sb.pw("graph").stdout
    assert "fd00:66::/64 gw fd00:66::1" in dot and "\\n10.66.0.2\\nfd00:66::2" in dot
    assert dot.count('label="DNAT"') == 2
