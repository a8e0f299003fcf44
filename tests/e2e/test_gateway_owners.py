"""Each family's published ports go to the network its replies leave by
(core/gateways.py), for the cases the rule first missed: a Podman container's networks
with metrics, a Podman container that joins another network, a portway container whose
first network cannot publish, and a default route moved by hand. Real connections from
the outside namespace, each with its control."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from typing import Any

import pytest
from test_ipv6 import get as get6
from test_ipv6 import netns_of, served
from test_netavark import Podmanish, get, podman  # noqa: F401  (the fixture)
from test_netavark_current import dualstack

from conftest import Sandbox, ip_json, sh
from portway.testbed import HOST_ADDR6, OUTSIDE_ADDR6

PORT = [{"host_ip": "", "container_port": 80, "host_port": 8080, "range": 1,
         "protocol": "tcp"}]


def two_networks(metric: str, **first_network: Any) -> dict[str, Any]:
    """A Podman container on two dual-stack networks, eth0's with the metric given (and
    the definition's other fields given), eth1's with netavark's default (100),
    publishing 8080."""
    first = dualstack(options={"metric": metric}, **first_network)
    second = dualstack("back", "podman9", 87, id="7b" * 32)
    data = copy.deepcopy(first)
    data["networks"]["back"] = dict(second["networks"]["back"], interface_name="eth1")
    data["network_info"]["back"] = second["network_info"]["back"]
    data["port_mappings"] = PORT
    return data


def default_routes(nsname: str) -> list[tuple[int, str, str, int]]:
    """The namespace's default routes of both families: version, gateway, device, metric."""
    return sorted((v, str(r["gateway"]), str(r["dev"]), int(r.get("metric", 0)))
                  for v in (4, 6) for r in ip_json(nsname, f"-{v}", "route")
                  if r["dst"] == "default")


@pytest.mark.parametrize("metric", ["200", "+200", "100"])
def test_podman_ports_follow_the_lowest_metric(podman: Podmanish, metric: str) -> None:  # noqa: F811
    """With metric 200 on eth0's network, the default routes (and so the replies) go via
    eth1's: the published port must lead there, or the replies leave by a bridge that is
    not their address's and the guard drops them. The control: equal metrics, eth0's
    network routes and takes the ports. "+200" is 200 as netavark parses it (setup's
    route had 200, but the rest took it for the default 100: the port led to eth0's
    network and went dead, and doctor named the routes as going another way)."""
    p = podman
    data = two_networks(metric)
    ns = p.namespace()
    p.nv("setup", ns, data=data)
    try:
        p.serve(ns)
        outside = ["ip", "netns", "exec", p.sb.outside]
        assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
        assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        target = "10.88.0.2" if metric == "100" else "10.87.0.2"
        assert target in p.sb.in_host("nft", "list", "map", "inet", "portway",
                                      "pub_any_addr").stdout
        assert p.pw("doctor").stdout.startswith("healthy")
    finally:
        p.nv("teardown", ns, data=data)


def test_gc_remakes_a_podman_endpoint_with_its_metric(podman: Podmanish) -> None:  # noqa: F811
    """A Podman container on two dual-stack networks, eth0's with metric 200 and eth1's
    with netavark's 100: the host end of either veth deleted by hand, gc makes the
    endpoint anew with the default routes netavark gave it, each with its metric (it
    gave none, or none at all where the other network's route was still there), so the
    published port, which leads to eth1's network, answers again over both families."""
    p = podman
    data = two_networks("200")
    ns = p.namespace()
    nsname = ns.rsplit("/", 1)[1]
    p.nv("setup", ns, data=data)
    try:
        p.serve(ns)
        outside = ["ip", "netns", "exec", p.sb.outside]

        made = default_routes(nsname)
        assert made == [(4, "10.87.0.1", "eth1", 100), (4, "10.88.0.1", "eth0", 200),
                        (6, "fd87::1", "eth1", 100), (6, "fd88::1", "eth0", 200)], made
        networks = json.loads(p.pw("inspect", "testcontainer").stdout)[0][
            "NetworkSettings"]["Networks"]
        for name in ("back", "podman"):
            p.sb.in_host("ip", "link", "del", networks[name]["HostInterface"])
            assert "re-create endpoint" in p.pw("doctor", check=False).stdout
            p.pw("gc")
            assert default_routes(nsname) == made, name
            assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200", name
            assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200", name
            assert p.pw("doctor").stdout.startswith("healthy"), name
    finally:
        p.nv("teardown", ns, data=data)


def test_doctor_finds_a_podman_default_route_that_goes_another_way(
        podman: Podmanish) -> None:  # noqa: F811
    """The Podman container of the test above, its ports led to eth1's network (metric
    100, below eth0's 200). A default route of lower metric via eth0 added by hand (IPv4),
    and eth1's own deleted (IPv6): the kernel takes eth0's, the port's replies leave by
    the wrong bridge and the port goes dead over that family. doctor says so (it said
    healthy: a default route was there), gc puts the routes back as netavark made them,
    and the port answers again. Then eth0's own routes (metric 200), which take over
    when eth1's network goes, deleted by hand: doctor names each (it said healthy: the
    kernel's were there), gc puts them back with their metric and leaves eth1's as they
    were, and eth0's network's own static default route (metric 500) too, and the port
    answers throughout."""
    p = podman
    data = two_networks("200", routes=[{"destination": "0.0.0.0/0", "gateway": "10.88.0.1",
                                        "metric": 500}])
    ns = p.namespace()
    nsname = ns.rsplit("/", 1)[1]
    p.nv("setup", ns, data=data)
    try:
        p.serve(ns)
        outside = ["ip", "netns", "exec", p.sb.outside]

        made = default_routes(nsname)
        sh("ip", "-n", nsname, "route", "add", "default", "via", "10.88.0.1", "dev", "eth0",
           "metric", "50")
        sh("ip", "-n", nsname, "-6", "route", "del", "default", "via", "fd87::1", "dev",
           "eth1", "metric", "100")
        assert get6(outside, f"http://{p.sb.host_addr}:8080/", 2).startswith("fail")
        assert get6(outside, f"http://[{HOST_ADDR6}]:8080/", 2).startswith("fail")
        doctor = p.pw("doctor", check=False)
        assert doctor.returncode == 1, doctor.stdout
        for want in ("restore the IPv4 default route of container testcontainer (via "
                     "10.87.0.1 dev eth1, metric 100): it goes via 10.88.0.1 dev eth0",
                     "restore the IPv6 default route of container testcontainer (via "
                     "fd87::1 dev eth1, metric 100): it goes via fd88::1 dev eth0"):
            assert want in doctor.stdout, doctor.stdout
        p.pw("gc")
        assert default_routes(nsname) == made
        assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
        assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        assert p.pw("doctor").stdout.startswith("healthy")
        for v, gw in ((4, "10.88.0.1"), (6, "fd88::1")):
            sh("ip", "-n", nsname, f"-{v}", "route", "del", "default", "via", gw, "dev",
               "eth0", "metric", "200")
        doctor = p.pw("doctor", check=False)
        assert doctor.returncode == 1 and [line for line in doctor.stdout.splitlines()
                                           if line.startswith("drift:")] == [
            f"drift: restore the IPv{v} default route of container testcontainer through "
            f"network podman (via {gw} dev eth0, metric 200): it is missing"
            for v, gw in ((4, "10.88.0.1"), (6, "fd88::1"))], doctor.stdout
        assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        p.pw("gc")
        assert default_routes(nsname) == made
        assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
        assert p.pw("doctor").stdout.startswith("healthy")
    finally:
        p.nv("teardown", ns, data=data)


def test_podman_network_connect_publishes_the_new_family(podman: Podmanish) -> None:  # noqa: F811
    """`podman network connect` of a dual-stack network to a container on an IPv4-only
    one (setup again, with the new network alone): the IPv6 host port leads to the new
    network's address at once, as portway's own connect does, and doctor is quiet. The
    control: IPv4 reached it before and after."""
    p = podman
    v4 = dualstack("back", "podman9", 87, id="7b" * 32)
    info = v4["network_info"]["back"]
    info["subnets"], info["ipv6_enabled"] = info["subnets"][:1], False
    v4["networks"]["back"]["static_ips"] = ["10.87.0.2"]
    v4["port_mappings"] = PORT
    dual = dualstack()
    dual["networks"]["podman"]["interface_name"] = "eth1"
    dual["container_id"], dual["port_mappings"] = v4["container_id"], PORT
    ns = p.namespace()
    p.nv("setup", ns, data=v4)
    try:
        p.serve(ns)
        outside = ["ip", "netns", "exec", p.sb.outside]
        assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
        p.nv("setup", ns, data=dual)
        try:
            assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
            assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
            doctor = p.pw("doctor", check=False).stdout
            assert doctor.startswith("healthy"), doctor
        finally:
            p.nv("teardown", ns, data=dual)
        # Disconnected again: the IPv6 port goes with the network, IPv4 stays.
        assert "8080" not in p.sb.in_host("nft", "list", "map", "inet", "portway",
                                          "pub_any6_addr").stdout
        assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
    finally:
        p.nv("teardown", ns, data=v4)


def test_run_publishes_through_a_later_network(sandbox: Sandbox) -> None:
    """run's check of -p asks the same rule as the ports themselves: a port on an IPv6
    host address is taken by a later dual-stack network when the first is IPv4-only,
    and an internal first network leaves the ports to the next one. The controls: the
    first network alone is refused as before, in one line, changing nothing."""
    sb = sandbox
    outside = ["ip", "netns", "exec", sb.outside]
    sb.pw("network", "create", "v4", "--subnet", "10.171.0.0/24")
    sb.pw("network", "create", "dual", "--ipv6", "--subnet", "10.172.0.0/24",
          "--subnet", "fd00:172::/64")
    sb.pw("network", "create", "int", "--internal", "--subnet", "10.174.0.0/24")
    try:
        for args, words in (
                (["--network", "v4", "-p", f"[{HOST_ADDR6}]:8081:80"],
                 f"cannot publish on [{HOST_ADDR6}]: network v4 has no IPv6"),
                (["--network", "int", "-p", "8082:80"],
                 "network int is internal: its containers cannot publish ports")):
            cp = sb.pw("run", "-d", "--name", "no", *args, "--", "sleep", "60", check=False)
            assert cp.returncode == 2 and words in cp.stderr, cp.stderr
            assert "Traceback" not in cp.stderr and sb.pw("ps", "-a", "-q").stdout == ""
        served(sb, "six", "--network", "v4", "--network", "dual", "-p",
               f"[{HOST_ADDR6}]:8081:80")
        served(sb, "four", "--network", "int", "--network", "v4", "-p", "8082:80")
        assert get6(outside, f"http://[{HOST_ADDR6}]:8081/") == "200"
        assert get6(outside, f"http://{sb.host_addr}:8082/") == "200"
        assert sb.pw("doctor").stdout.startswith("healthy")
    finally:
        sb.pw("rm", "-f", "six", "four", check=False)
        for name in ("v4", "dual", "int"):
            sb.pw("network", "rm", name, check=False)


def test_doctor_finds_a_default_route_that_goes_another_way(sandbox: Sandbox) -> None:
    """A container on an IPv4-only network and two dual-stack ones: its IPv6 port leads
    to the first dual-stack network, which routes IPv6. Its default route moved by hand
    to the other one, the port's replies leave by the wrong bridge and the port goes
    dead: doctor says so (it said healthy: a default route was there), gc puts the
    route back, and the port answers again."""
    sb = sandbox
    outside = ["ip", "netns", "exec", sb.outside]
    sb.pw("network", "create", "v4", "--subnet", "10.171.0.0/24")
    for i in (2, 3):
        sb.pw("network", "create", f"dual{i}", "--ipv6", "--subnet", f"10.17{i}.0.0/24",
              "--subnet", f"fd00:17{i}::/64")
    try:
        served(sb, "web", "--network", "v4", "--network", "dual2", "--network", "dual3",
               "-p", "8080:80")
        assert get6(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        ns = netns_of(sb, "web")
        sh("ip", "-n", ns, "-6", "route", "replace", "default", "via", "fd00:173::1")
        assert get6(outside, f"http://[{HOST_ADDR6}]:8080/", 2).startswith("fail")
        assert get6(outside, f"http://{sb.host_addr}:8080/") == "200"  # (IPv4: untouched)
        doctor = sb.pw("doctor", check=False)
        assert doctor.returncode == 1 and "restore the IPv6 default route of container " \
            "web (via fd00:172::1 dev eth1): it goes via fd00:173::1 dev eth2" in \
            doctor.stdout, doctor.stdout
        sb.pw("gc")
        assert get6(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
        assert sb.pw("doctor").stdout.startswith("healthy")
    finally:
        sb.pw("rm", "-f", "web", check=False)
        for name in ("v4", "dual2", "dual3"):
            sb.pw("network", "rm", name, check=False)


LISTEN_UDP = ("import socket\n"
              "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
              "s.bind(('::', 5300))\n"
              "while True:\n"
              "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")
SEND_UDP = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "s.bind(('::', 40000))\n"
            "for i in range(int(sys.argv[2])):\n"
            "    s.sendto(str(i).encode(), (sys.argv[1], 5300)); time.sleep(0.1)\n")


def test_a_datagram_flow_follows_the_port_that_appears(sandbox: Sandbox) -> None:
    """An IPv6 datagram flow to a host port that leads nowhere yet (the container is on
    an IPv4-only network: the host takes it, and drops it) keeps its conntrack entry
    while it goes on: when the container joins a dual-stack network and the port is
    published for IPv6, its datagrams must reach the container, not go on to the host
    past the new DNAT (netavark flushes those entries on setup, Docker too)."""
    sb = sandbox
    sb.pw("network", "create", "v4", "--subnet", "10.191.0.0/24")
    sb.pw("network", "create", "dual", "--ipv6", "--subnet", "10.192.0.0/24",
          "--subnet", "fd00:192::/64")
    sender: subprocess.Popen[bytes] | None = None
    try:
        sb.pw("run", "-d", "--name", "u", "--network", "v4", "-p", "5300:5300/udp", "--",
              "python3", "-c", LISTEN_UDP)
        sender = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-c",
                                   SEND_UDP, HOST_ADDR6, "40"])
        time.sleep(1.5)
        assert sb.pw("logs", "u").stdout == ""  # (nothing reached it: no IPv6 yet)
        sb.pw("network", "connect", "dual", "u")
        sender.wait(timeout=30)
        got = sb.pw("logs", "u").stdout.split("\n")
        assert any(line.endswith(f" {OUTSIDE_ADDR6}") for line in got), got
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        sb.pw("rm", "-f", "u", check=False)
        for name in ("v4", "dual"):
            sb.pw("network", "rm", name, check=False)


def every_default_route(nsname: str) -> list[tuple[int, str, str, int]]:
    """default_routes, with those that have no gateway (unreachable, blackhole) by type."""
    return sorted((v, str(r.get("gateway", r.get("type"))), str(r.get("dev", "")),
                   int(r.get("metric", 0)))
                  for v in (4, 6) for r in ip_json(nsname, f"-{v}", "route")
                  if r["dst"] == "default")


@pytest.mark.parametrize("routes", [
    [{"destination": "0.0.0.0/0", "gateway": "10.88.0.254"},
     {"destination": "::/0", "gateway": "fd88::254", "metric": 50}],
    [{"destination": "0.0.0.0/0", "route_type": "unreachable", "metric": 1000}]],
    ids=["lower-metric", "unreachable"])
def test_podman_doctor_and_gc_leave_a_networks_own_default_routes(
        podman: Podmanish, routes: list[dict[str, Any]]) -> None:  # noqa: F811
    """A Podman network whose own static routes give the container a default route: one
    via another gateway of lower metric (IPv4's without a metric: 0, the kernel's
    first), or an unreachable one of higher metric (a fallback that drops). Healthy as
    set up, doctor named the first as an IPv4 default route that goes another way and gc
    deleted it; with the network's own routes deleted by hand, doctor named the first
    (the second: it said healthy, its IPv4 default route being the unreachable one) and
    gc deleted it. doctor says healthy as set up, names the network's routes missing,
    and gc puts them back beside the static ones."""
    p = podman
    data = dualstack(routes=routes)
    ns = p.namespace()
    nsname = ns.rsplit("/", 1)[1]
    p.nv("setup", ns, data=data)
    try:
        made = every_default_route(nsname)
        assert len(made) == 2 + len(routes), made
        doctor = p.pw("doctor", check=False)
        assert doctor.stdout.startswith("healthy"), doctor.stdout
        p.pw("gc")
        assert every_default_route(nsname) == made
        lost = [(4, "10.88.0.1")] + ([(6, "fd88::1")] if len(routes) == 2 else [])
        for v, gw in lost:
            sh("ip", "-n", nsname, f"-{v}", "route", "del", "default", "via", gw, "dev",
               "eth0", "metric", "100")
        doctor = p.pw("doctor", check=False)
        assert doctor.returncode == 1 and [line for line in doctor.stdout.splitlines()
                                           if line.startswith("drift:")] == [
            f"drift: restore the IPv{v} default route of container testcontainer (via "
            f"{gw} dev eth0, metric 100): it is missing" for v, gw in lost], doctor.stdout
        p.pw("gc")
        assert every_default_route(nsname) == made
        assert p.pw("doctor").stdout.startswith("healthy")
    finally:
        p.nv("teardown", ns, data=data)


def test_podman_gc_keeps_a_default_route_the_user_added(podman: Podmanish) -> None:  # noqa: F811
    """The Podman container on two networks (eth1's metric 100 the kernel's, eth0's 200
    next), with a default route the user added out of eth0, via another router
    (onlink, metric 300). eth0's network's own route deleted by hand: doctor named the
    user's route as that route changed, and gc deleted it. It says the network's route
    is missing, and gc puts that back and leaves the user's as it was."""
    p = podman
    data = two_networks("200")
    ns = p.namespace()
    nsname = ns.rsplit("/", 1)[1]
    p.nv("setup", ns, data=data)
    try:
        made = every_default_route(nsname)
        sh("ip", "-n", nsname, "route", "add", "default", "via", "192.0.2.77", "dev", "eth0",
           "metric", "300", "onlink")
        assert p.pw("doctor").stdout.startswith("healthy")
        sh("ip", "-n", nsname, "route", "del", "default", "via", "10.88.0.1", "dev", "eth0",
           "metric", "200")
        doctor = p.pw("doctor", check=False)
        assert doctor.returncode == 1 and [line for line in doctor.stdout.splitlines()
                                           if line.startswith("drift:")] == [
            "drift: restore the IPv4 default route of container testcontainer through "
            "network podman (via 10.88.0.1 dev eth0, metric 200): it is missing"], \
            doctor.stdout
        p.pw("gc")
        assert every_default_route(nsname) == sorted([*made, (4, "192.0.2.77", "eth0", 300)])
        assert p.pw("doctor").stdout.startswith("healthy")
    finally:
        p.nv("teardown", ns, data=data)


@pytest.mark.parametrize(("version", "route", "why"), [
    (4, ["default", "metric", "50", "nexthop", "via", "10.88.0.1", "dev", "eth0", "nexthop",
         "via", "10.87.0.1", "dev", "eth1"],
     "via 10.87.0.1 dev eth1, metric 100): it goes via 10.88.0.1 dev eth0 and 10.87.0.1 dev "
     "eth1, metric 50"),
    (6, ["default", "metric", "50", "nexthop", "via", "fd88::1", "dev", "eth0", "nexthop",
         "via", "fd87::1", "dev", "eth1"],
     "via fd87::1 dev eth1, metric 100): it goes via fd88::1 dev eth0 and fd87::1 dev "
     "eth1, metric 50"),
    (4, ["default", "dev", "eth0", "metric", "60"],
     "via 10.87.0.1 dev eth1, metric 100): it goes out of eth0, metric 60"),
    (4, ["unreachable", "default", "metric", "70"],
     "via 10.87.0.1 dev eth1, metric 100): it goes nowhere (unreachable), metric 70")],
    ids=["multipath", "multipath6", "device", "unreachable"])
def test_doctor_finds_a_podman_default_route_without_a_gateway_in_the_way(
        podman: Podmanish, version: int, route: list[str], why: str) -> None:  # noqa: F811
    """The Podman container on two networks (eth1's metric 100 the kernel's), and a
    default route added by hand of lower metric that has no single gateway: several
    next hops, straight out of eth0, or one that discards. The kernel takes it (the
    port's replies may leave by the wrong bridge, or not at all), yet doctor said
    healthy: it looked at routes with one gateway alone. It names it, and gc deletes it
    and leaves the networks' routes as set up."""
    p = podman
    data = two_networks("200")
    ns = p.namespace()
    nsname = ns.rsplit("/", 1)[1]
    p.nv("setup", ns, data=data)
    try:
        made = every_default_route(nsname)
        sh("ip", "-n", nsname, f"-{version}", "route", "add", *route)
        doctor = p.pw("doctor", check=False)
        assert doctor.returncode == 1 and [line for line in doctor.stdout.splitlines()
                                           if line.startswith("drift:")] == [
            f"drift: restore the IPv{version} default route of container testcontainer "
            f"({why}"], doctor.stdout
        p.pw("gc")
        assert every_default_route(nsname) == made
        assert p.pw("doctor").stdout.startswith("healthy")
    finally:
        p.nv("teardown", ns, data=data)


def test_doctor_finds_a_lost_default_route_behind_an_unreachable_one(
        sandbox: Sandbox) -> None:
    """A container on an IPv4 network, with an unreachable default route of high metric
    added by hand (a fallback that drops), and then its own default route deleted: the
    container reaches nothing outside its subnet, yet doctor said healthy (a default
    route was there, though it has no gateway). It names the container's route missing,
    gc puts it back and leaves the user's, and a published port answers again."""
    sb = sandbox
    outside = ["ip", "netns", "exec", sb.outside]
    sb.pw("network", "create", "v4", "--subnet", "10.174.0.0/24")
    try:
        served(sb, "web", "--network", "v4", "-p", "8080:80")
        assert get6(outside, f"http://{sb.host_addr}:8080/") == "200"
        ns = netns_of(sb, "web")
        sh("ip", "-n", ns, "route", "add", "unreachable", "default", "metric", "1000")
        assert sb.pw("doctor").stdout.startswith("healthy")
        sh("ip", "-n", ns, "route", "del", "default", "via", "10.174.0.1", "dev", "eth0")
        assert get6(outside, f"http://{sb.host_addr}:8080/", 2).startswith("fail")
        doctor = sb.pw("doctor", check=False)
        assert doctor.returncode == 1 and [line for line in doctor.stdout.splitlines()
                                           if line.startswith("drift:")] == [
            "drift: restore the IPv4 default route of container web (via 10.174.0.1 dev "
            "eth0): it is missing"], doctor.stdout
        sb.pw("gc")
        assert get6(outside, f"http://{sb.host_addr}:8080/") == "200"
        assert sb.pw("doctor").stdout.startswith("healthy")
        assert [(r.get("type", "unicast"), r.get("metric", 0)) for r in
                ip_json(ns, "-4", "route") if r["dst"] == "default"] == \
            [("unicast", 0), ("unreachable", 1000)]
    finally:
        sb.pw("rm", "-f", "web", check=False)
        sb.pw("network", "rm", "v4", check=False)
