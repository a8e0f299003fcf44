"""Real Podman 4.3 with a macvlan network on portway, in a throwaway host namespace:
`podman network create -d macvlan -o parent=...` and `podman run` on it; the LAN is a
namespace of the test's own behind the parent (test_macvlan's fixture)."""

from __future__ import annotations

import json
import subprocess

from test_macvlan import LAN, lan  # noqa: F401  (the fixture)

from conftest import Sandbox, ip_json, user_networks
from portway.testbed import HTTP_GET, PodmanWorld


def test_podman_macvlan_network(podman_world: PodmanWorld, sandbox: Sandbox,
                                lan: str) -> None:  # noqa: F811
    p = podman_world
    p.run("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--subnet",
          f"{LAN}.0/24", "--gateway", f"{LAN}.1", "lan")
    net = json.loads(p.run("network", "inspect", "lan").stdout)[0]
    assert (net["driver"], net["network_interface"]) == ("macvlan", "lan0")
    p.container("--name", "web", "--network", "lan", "--ip", f"{LAN}.30", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "client", "--network", "lan", "--", "/bin/sleep", "300")
    key = p.run("inspect", "--format", "{{.NetworkSettings.SandboxKey}}",
                "client").stdout.strip()
    link = subprocess.run(["nsenter", f"--net={key}", "ip", "-j", "-d", "link", "show",
                           "eth0"], capture_output=True, text=True, check=True).stdout
    info = json.loads(link)[0]["linkinfo"]
    assert (info["info_kind"], info["info_data"]["mode"]) == ("macvlan", "bridge"), link
    routes = p.run("exec", "client", "ip", "route").stdout
    assert f"default via {LAN}.1 dev eth0" in routes and "metric 99" in routes, routes
    # The LAN reaches the container at its own address; its sibling does too (bridge
    # mode), through the parent.
    out = subprocess.run(["ip", "netns", "exec", lan, "python3", "-c", HTTP_GET,
                          f"http://{LAN}.30/index.html"], capture_output=True, text=True)
    assert out.stdout.strip() == "200", out
    assert "hello from podman" in p.run("exec", "client", "wget", "-q", "-O", "-",
                                        f"http://{LAN}.30/index.html").stdout
    # Nothing of it in the host namespace: no bridge, no veth, no rule.
    assert sorted(sandbox.links()) == ["lan0", "lo", "uplink0"]
    assert not [t for t in json.loads(subprocess.run(
        ["ip", "netns", "exec", sandbox.host, "nft", "-j", "list", "tables"],
        capture_output=True, text=True, check=True).stdout)["nftables"]
        if t.get("table", {}).get("name") == "portway"]
    assert ip_json(sandbox.host, "link", "show", "lan0")[0]["operstate"] == "UP"
    p.run("rm", "-f", "-t", "0", "web", "client")
    state = subprocess.run(p.portway_cmd("network", "ls", "--json"), capture_output=True,
                           text=True, check=True).stdout
    assert user_networks(state) == []
    p.run("network", "rm", "lan")
