"""core/gateways.py: which of a container's networks routes each family, and which takes
each family's published ports."""

from __future__ import annotations

import ipaddress

import pytest

from portway.core.firewall import PODMAN_LABEL
from portway.core.gateways import (
    default_routes,
    gives_default_route,
    metric,
    port_owners,
    route_owners,
)
from portway.model.types import Network, Subnet

V4 = Subnet(ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_address("10.1.0.1"))
V4B = Subnet(ipaddress.ip_network("10.2.0.0/24"), ipaddress.ip_address("10.2.0.1"))
V6 = Subnet(ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_address("fd00:1::1"))
V6B = Subnet(ipaddress.ip_network("fd00:2::/64"), ipaddress.ip_address("fd00:2::1"))


def net(name: str, *subnets: Subnet, internal: bool = False, driver: str = "bridge",
        podman: dict[str, str] | None = None) -> Network:
    return Network(id=name * 8, name=name, subnets=subnets, bridge=f"br-{name}",
                   driver=driver, internal=internal, options=podman or {},
                   labels={PODMAN_LABEL: "true"} if podman is not None else {})


@pytest.mark.parametrize(("networks", "routes", "ports"), [
    # The first network routes its families; a later one each family no earlier has.
    ([net("a", V4, V6), net("b", V4B)], {4: 0, 6: 0}, {4: 0, 6: 0}),
    ([net("a", V4), net("b", V4B, V6)], {4: 0, 6: 1}, {4: 0, 6: 1}),
    ([net("a", V6), net("b", V4B, V6B)], {6: 0, 4: 1}, {6: 0, 4: 1}),
    # An internal network routes nothing and takes no published port.
    ([net("i", V4, V6, internal=True), net("b", V4B)], {4: 1}, {4: 1}),
    # netavark's no_default_route: no route; its ports where no network routes them.
    ([net("n", V4, V6, podman={"no_default_route": "true"}), net("b", V4B)],
     {4: 1}, {4: 1, 6: 0}),
    ([net("n", V4, podman={"no_default_route": "false"}), net("b", V4B, V6B)],
     {4: 0, 6: 1}, {4: 0, 6: 1}),
    # A network without a subnet (Podman's ipam none) routes nothing.
    ([net("z"), net("b", V4B)], {4: 1}, {4: 1}),
    # macvlan routes (the LAN's router) and publishes nothing (Docker's).
    ([net("m", V4, driver="macvlan"), net("b", V4B, V6B)], {4: 0, 6: 1}, {6: 1}),
    ([], {}, {}),
])
def test_owners(networks: list[Network], routes: dict[int, int],
                ports: dict[int, int]) -> None:
    assert route_owners(networks) == routes
    assert port_owners(networks) == ports


def test_a_portway_network_ignores_netavark_options() -> None:
    """no_default_route is netavark's: read on a Podman network only."""
    own = net("a", V4)
    own = Network(**{**own.__dict__, "options": {"no_default_route": "true"}})
    assert gives_default_route(own)
    assert not gives_default_route(net("p", V4, podman={"no_default_route": "true"}))


@pytest.mark.parametrize(("networks", "routes"), [
    # netavark gives a Podman container a default route from each network, with the
    # network's metric: the lowest wins (the route its replies leave by), of equal ones
    # the first.
    ([net("a", V4, V6, podman={"metric": "200"}), net("b", V4B, V6B, podman={})],
     {4: 1, 6: 1}),
    ([net("a", V4, V6, podman={}), net("b", V4B, V6B, podman={})], {4: 0, 6: 0}),
    ([net("a", V4, podman={"metric": "50"}), net("b", V4B, V6B, podman={})],
     {4: 0, 6: 1}),
    # macvlan's default metric is 99, below a bridge network's 100.
    ([net("b", V4B, podman={}), net("m", V4, driver="macvlan", podman={})], {4: 1}),
    # Metric 0 is the lowest for IPv4 alone: the kernel gives an IPv6 route asked for
    # with 0 its default, 1024.
    ([net("a", V4, V6, podman={"metric": "0"}), net("b", V4B, V6B, podman={"metric": "500"})],
     {4: 0, 6: 1}),
])
def test_a_podman_container_routes_by_metric(networks: list[Network],
                                             routes: dict[int, int]) -> None:
    assert route_owners(networks, podman=True) == routes
    assert port_owners(networks, podman=True) == \
        {v: i for v, i in routes.items() if networks[i].driver != "macvlan"}
    # A portway container's routes are its networks' order (metric plays no part).
    assert route_owners(networks)[4] == 0


@pytest.mark.parametrize(("networks", "routes"), [
    # Every network that gives one has its own, with its metric: the others take over
    # as the networks before them go.
    ([net("a", V4, V6, podman={"metric": "200"}), net("b", V4B, V6B, podman={})],
     {4: {200: 0, 100: 1}, 6: {200: 0, 100: 1}}),
    # Of equal metrics, the first's: the kernel refuses the second as the same route.
    ([net("a", V4, V6, podman={}), net("b", V4B, V6B, podman={})],
     {4: {100: 0}, 6: {100: 0}}),
    # None from an internal network, or one with no_default_route; macvlan's is 99.
    ([net("i", V4, internal=True, podman={}), net("n", V4, podman={"no_default_route":
                                                                     "true"}),
      net("b", V4B, podman={}), net("m", V4, driver="macvlan", podman={})],
     {4: {100: 2, 99: 3}}),
    # Metric 0 is 1024 for IPv6 (the kernel's default).
    ([net("a", V4, V6, podman={"metric": "0"})], {4: {0: 0}, 6: {1024: 0}}),
])
def test_a_podman_container_has_a_default_route_per_network(
        networks: list[Network], routes: dict[int, dict[int, int]]) -> None:
    assert default_routes(networks, podman=True) == routes
    # The one the kernel takes: the lowest metric's.
    assert route_owners(networks, podman=True) == {v: r[min(r)] for v, r in routes.items()}
    # A portway container's: one per family, its first network's.
    assert all(len(r) == 1 for r in default_routes(networks).values())


@pytest.mark.parametrize(("given", "want"), [
    ("200", (200, 200)), ("+200", (200, 200)), ("0200", (200, 200)), ("0", (0, 1024)),
    ("", (100, 100)), ("-1", (100, 100)), ("abc", (100, 100)), ("4294967296", (100, 100))])
def test_a_podman_networks_metric_is_read_as_its_setup_read_it(
        given: str, want: tuple[int, int]) -> None:
    """The metric option as netavark parses it (setup's route has that metric): "+200" is
    200 (the network's route was taken for one of netavark's default 100: doctor named it
    as going another way, gc put a second one back with 100, and the published ports
    went to that network while the replies left by the other); one setup refuses,
    netavark's default."""
    network = net("a", V4, V6, podman={"metric": given})
    assert (metric(network, 4), metric(network, 6)) == want
