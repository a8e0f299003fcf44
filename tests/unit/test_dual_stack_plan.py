"""What `network create` makes of --subnet/--gateway/--ip-range/--ipv4/--ipv6 (pure),
and the installation's ULA pool."""

from __future__ import annotations

import ipaddress

import pytest

from portway.core import ipam, validate
from portway.core.validate import SubnetRequest
from portway.errors import Conflict, InvalidInput

N = ipaddress.ip_network
A = ipaddress.ip_address


def test_defaults_per_family() -> None:
    assert validate.plan_subnets([], [], []) == [SubnetRequest(4)]
    assert validate.plan_subnets([], [], [], ipv6=True) == [SubnetRequest(4), SubnetRequest(6)]
    assert validate.plan_subnets([], [], [], ipv4=False, ipv6=True) == [SubnetRequest(6)]


def test_subnets_gateways_and_ranges_matched_by_family() -> None:
    plan = validate.plan_subnets(["fd00:77::/64", "10.77.0.0/24"],
                                 ["fd00:77::fe", "10.77.0.254"],
                                 ["10.77.0.128/25", "fd00:77::100/120"], ipv6=True)
    assert plan == [
        SubnetRequest(4, N("10.77.0.0/24"), A("10.77.0.254"), N("10.77.0.128/25")),
        SubnetRequest(6, N("fd00:77::/64"), A("fd00:77::fe"), N("fd00:77::100/120"))]


def test_several_subnets_per_family_matched_by_containment() -> None:
    """Docker's `--subnet A --subnet B --gateway GB --ip-range RA`: each --gateway,
    --ip-range and --aux-address goes with the subnet that contains it; a family given
    no subnet still gets one picked."""
    plan = validate.plan_subnets(["10.1.0.0/24", "10.2.0.0/24"], ["10.2.0.254"],
                                 ["10.1.0.128/25"], ipv6=True,
                                 aux_addresses=["printer=10.2.0.9", "nas=10.1.0.9"])
    assert plan == [
        SubnetRequest(4, N("10.1.0.0/24"), None, N("10.1.0.128/25"),
                      (("nas", A("10.1.0.9")),)),
        SubnetRequest(4, N("10.2.0.0/24"), A("10.2.0.254"), None,
                      (("printer", A("10.2.0.9")),)),
        SubnetRequest(6)]
    plan = validate.plan_subnets(["fd00:2::/64", "10.9.0.0/24", "fd00:1::/64"], [], [],
                                 ipv6=True)
    assert [r.subnet for r in plan] == [N("10.9.0.0/24"), N("fd00:2::/64"), N("fd00:1::/64")]


@pytest.mark.parametrize("subnets, gateways, ranges, ipv4, ipv6, message", [
    (["fd00::/64"], [], [], True, False, "is IPv6 but the network is not"),
    (["10.0.0.0/24"], [], [], False, True, "--ipv4=false"),
    ([], [], [], False, False, "--ipv4=false needs --ipv6"),
    (["10.0.0.0/24", "10.0.0.128/25"], [], [], True, False,
     "--subnet 10.0.0.128/25 overlaps --subnet 10.0.0.0/24"),
    (["10.0.0.0/24", "10.0.0.0/24"], [], [], True, False, "10.0.0.0/24 is given twice"),
    (["fd00::/64", "fd00::/48"], [], [], True, True, "fd00::/48 overlaps --subnet fd00::/64"),
    (["10.0.0.0/24", "10.1.0.0/24"], ["10.2.0.1"], [], True, False,
     "--gateway 10.2.0.1 is outside each of the subnets 10.0.0.0/24, 10.1.0.0/24"),
    (["10.0.0.0/24", "10.1.0.0/24"], ["10.1.0.1", "10.1.0.2"], [], True, False,
     "more than one --gateway for subnet 10.1.0.0/24"),
    (["10.0.0.0/24", "10.1.0.0/24"], [], ["10.1.0.0/25", "10.1.0.128/25"], True, False,
     "more than one --ip-range for subnet 10.1.0.0/24"),
    (["10.0.0.0/24", "10.1.0.0/24"], [], ["10.0.0.0/23"], True, False,
     "--ip-range 10.0.0.0/23 is not inside each of the subnets"),
    (["10.0.0.0/24"], ["fd00::1"], [], True, True, "has no IPv6 --subnet"),
    (["10.0.0.0/24", "fd00::/64"], ["fd01::1"], [], True, True, "outside the subnet"),
    (["fd00::/64"], [], ["fd01::/120"], True, True, "not inside the subnet"),
    (["10.0.0.0/24"], ["10.0.0.1", "10.0.0.2"], [], True, False,
     "more than one --gateway for subnet 10.0.0.0/24"),
    (["fe80::/64"], [], [], True, True, "special-purpose"),
])
def test_bad_combinations(subnets: list[str], gateways: list[str], ranges: list[str],
                          ipv4: bool, ipv6: bool, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate.plan_subnets(subnets, gateways, ranges, ipv4, ipv6)


def test_ula_pool() -> None:
    prefix = ipam.ula_prefix(0x12_3456_789A)
    assert prefix == N("fd12:3456:789a::/48")
    assert ipam.pick_subnet6([], 0x12_3456_789A) == N("fd12:3456:789a::/64")
    taken = [(N("fd12:3456:789a::/64"), "network a"), (N("10.0.0.0/8"), "v4 only")]
    assert ipam.pick_subnet6(taken, 0x12_3456_789A) == N("fd12:3456:789a:1::/64")
    with pytest.raises(Conflict, match="no free /64"):
        ipam.pick_subnet6([(prefix, "all of it")], 0x12_3456_789A)
    with pytest.raises(ValueError):
        ipam.ula_prefix(1 << 40)


def test_first_free_for_ipv6() -> None:
    subnet = N("fd00:77::/64")
    first = ipam.first_free(subnet, A("fd00:77::1"), lambda a: False)
    assert first == A("fd00:77::2")
    used = {A("fd00:77::2"), A("fd00:77::3")}
    assert ipam.first_free(subnet, A("fd00:77::1"), used.__contains__) == A("fd00:77::4")


@pytest.mark.parametrize("value, want", [("true", True), ("False", False), ("1", True),
                                         ("no", False), (True, True)])
def test_parse_bool(value: str | bool, want: bool) -> None:
    assert validate.parse_bool("--ipv4", value) is want
