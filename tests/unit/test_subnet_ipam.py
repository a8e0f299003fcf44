"""Addresses on a network with several subnets of a family: Docker gives an endpoint one
per family (the subnet of its --ip, else the first with a free address), netavark one
in each subnet (Podman's networks); the routes a container gets on such a network."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from types import SimpleNamespace

import pytest
from fakes import FakeStore

from portway.core.firewall import PODMAN_LABEL
from portway.engine.drivers.bridge import default_gateways, onlink_subnets
from portway.engine.endpoints import Endpoints
from portway.errors import Conflict, InvalidInput
from portway.model.types import Container, Network, Subnet

N = ipaddress.ip_network
A = ipaddress.ip_address


def network(podman: bool = False) -> Network:
    return Network(id="n" * 64, name="app", bridge="br-app", subnets=(
        Subnet(N("10.1.0.0/30"), A("10.1.0.1")),  # room for one container
        Subnet(N("10.2.0.0/24"), A("10.2.0.254")),
        Subnet(N("fd00:1::/64"), A("fd00:1::1")),
        Subnet(N("fd00:2::/64"), A("fd00:2::1"))),
        labels={PODMAN_LABEL: "true"} if podman else {})


def endpoints() -> tuple[Endpoints, FakeStore]:
    store = FakeStore()
    return Endpoints(SimpleNamespace(store=store, cluster=None)), store  # type: ignore[arg-type]


def container(name: str) -> Container:
    return Container(id=name * 8, name=name, hostname=name, command=("true",),
                     netns=f"pw-{name}")


def addresses(e: object) -> list[str]:
    return [str(a) for a in e.addresses]  # type: ignore[attr-defined]


def test_one_address_per_family_the_first_subnet_with_room() -> None:
    eps, _ = endpoints()
    net = network()
    first = eps.new(container("a"), net, 0, [], [])
    assert addresses(first) == ["10.1.0.2/30", "fd00:1::2/64"]
    # The first IPv4 subnet is full: the next one of the family.
    second = eps.new(container("b"), net, 0, [], [])
    assert addresses(second) == ["10.2.0.1/24", "fd00:1::3/64"]
    # --ip in the second subnet: that subnet, and the other family as usual.
    third = eps.new(container("c"), net, 0, ["10.2.0.77", "fd00:2::9"], [])
    assert addresses(third) == ["10.2.0.77/24", "fd00:2::9/64"]
    assert third.requested == (A("10.2.0.77"), A("fd00:2::9"))
    # The routes: via the first gateway of each family; the other subnets on-link.
    assert default_gateways(net, third) == (A("10.1.0.1"), A("fd00:1::1"))
    assert onlink_subnets(net, third) == (N("10.1.0.0/30"), N("fd00:1::/64"))
    assert onlink_subnets(net, first) == (N("10.2.0.0/24"), N("fd00:2::/64"))
    # An endpoint without IPv6 (its container's --sysctl turns it off): no IPv6 route
    # at all, which the kernel would refuse on its interface.
    four = replace(third, addresses=third.addresses[:1])
    assert default_gateways(net, four) == (A("10.1.0.1"),)
    assert onlink_subnets(net, four) == (N("10.1.0.0/30"),)


def test_a_podman_network_gives_one_in_each_subnet() -> None:
    eps, _ = endpoints()
    net = network(podman=True)
    e = eps.new(container("a"), net, 0, ["10.2.0.5"], [])
    assert addresses(e) == ["10.1.0.2/30", "10.2.0.5/24", "fd00:1::2/64", "fd00:2::2/64"]
    assert onlink_subnets(net, e) == ()
    with pytest.raises(Conflict, match=r"no free address is left in 10\.1\.0\.0/30"):
        eps.new(container("b"), net, 0, [], [])


@pytest.mark.parametrize(("ips", "podman", "message"), [
    (["10.3.0.5"], False,
     "--ip 10.3.0.5 is outside each of the subnets 10.1.0.0/30, 10.2.0.0/24 of network app"),
    (["10.2.0.5", "10.1.0.2"], False, "two --ip addresses for network app"),
    (["10.2.0.5", "10.2.0.6"], True, "two addresses in subnet 10.2.0.0/24"),
    (["10.2.0.254"], False, "is the gateway of network app"),
    (["10.2.0.255"], False, "broadcast address of 10.2.0.0/24"),
])
def test_bad_addresses(ips: list[str], podman: bool, message: str) -> None:
    eps, store = endpoints()
    with pytest.raises((InvalidInput, Conflict), match=message):
        eps.new(container("a"), network(podman), 0, ips, [])
    assert store.endpoints() == []


def test_one_subnet_networks_route_as_before() -> None:
    net = Network(id="m" * 64, name="one", bridge="br-one", subnets=(
        Subnet(N("10.9.0.0/24"), A("10.9.0.1")), Subnet(N("fd00:9::/64"), A("fd00:9::1"))))
    eps, _ = endpoints()
    e = eps.new(container("a"), net, 0, [], [])
    assert default_gateways(net, e) == (A("10.9.0.1"), A("fd00:9::1"))
    assert onlink_subnets(net, e) == ()
