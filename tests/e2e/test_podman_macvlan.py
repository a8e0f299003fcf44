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


def test_podman_doctor_and_gc_keep_every_networks_default_route(
        podman_world: PodmanWorld, sandbox: Sandbox, lan: str) -> None:  # noqa: F811
    """A Podman container on a macvlan network (netavark's metric 99) and a bridge network
    (100) has a default route from each: the macvlan network's is the kernel's, the
    bridge network's takes over when the macvlan network goes. The bridge network's
    deleted by hand, or given another metric, went unseen (doctor checked the lowest
    metric's alone), and disconnected from the macvlan network the container was left
    with no default route. doctor names it, gc puts it back with its metric and leaves
    the macvlan network's as it was; disconnected, the container keeps a default route."""
    p = podman_world
    p.run("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--subnet",
          f"{LAN}.0/24", "--gateway", f"{LAN}.1", "lan")
    p.run("network", "create", "--subnet", "10.89.40.0/24", "pnet")
    p.container("--name", "both", "--network", "lan", "--network", "pnet", "--",
                "/bin/sleep", "300")
    key = p.run("inspect", "--format", "{{.NetworkSettings.SandboxKey}}",
                "both").stdout.strip()

    def inside(*command: str) -> str:
        return subprocess.run(["nsenter", f"--net={key}", *command], capture_output=True,
                              text=True, check=True, timeout=30).stdout

    def defaults() -> list[tuple[str, str, int]]:
        return sorted((str(r["gateway"]), str(r["dev"]), int(r.get("metric", 0)))
                      for r in json.loads(inside("ip", "-j", "route", "show", "default")))

    def doctor() -> subprocess.CompletedProcess[str]:
        return subprocess.run(p.portway_cmd("doctor"), capture_output=True, text=True,
                              timeout=60)

    made = defaults()
    dev = {gateway: d for gateway, d, _m in made}
    assert made == sorted([(f"{LAN}.1", dev[f"{LAN}.1"], 99),
                           ("10.89.40.1", dev["10.89.40.1"], 100)]), made
    bridge_route = ["default", "via", "10.89.40.1", "dev", dev["10.89.40.1"], "metric"]
    for change, why in (
            ([["del", *bridge_route, "100"]], "it is missing"),
            ([["del", *bridge_route, "100"], ["add", *bridge_route, "300"]],
             f"there is one via 10.89.40.1 dev {dev['10.89.40.1']}, metric 300 instead")):
        for args in change:
            inside("ip", "route", *args)
        found = doctor()
        drift = [line for line in found.stdout.splitlines() if line.startswith("drift:")]
        assert found.returncode == 1 and drift == [
            "drift: restore the IPv4 default route of container both through network pnet "
            f"(via 10.89.40.1 dev {dev['10.89.40.1']}, metric 100): {why}"], found.stdout
        subprocess.run(p.portway_cmd("gc"), capture_output=True, text=True, timeout=60,
                       check=True)
        assert defaults() == made, why
        assert doctor().stdout.startswith("healthy"), why
    # The macvlan network goes: the bridge network's route is the container's.
    p.run("network", "disconnect", "lan", "both")
    assert defaults() == [("10.89.40.1", dev["10.89.40.1"], 100)]
    p.run("rm", "-f", "-t", "0", "both")
    p.run("network", "rm", "lan", "pnet")
