"""Overlay networks, the pure part: the cluster store's URL, keys and records, VNIs,
and the plan that brings a VXLAN device's FDB and neighbour entries in step."""

from __future__ import annotations

import ipaddress

import pytest

from portway.core import overlay
from portway.core.overlay import Fdb, Member, Neighbour, RemoteEndpoint
from portway.errors import InvalidInput
from portway.model.types import Network, Subnet

A = ipaddress.ip_address
I = ipaddress.ip_interface  # noqa: E741


@pytest.mark.parametrize(("url", "members"), [
    ("etcd://10.0.0.1:2379", (Member("10.0.0.1", 2379),)),
    ("etcd://10.0.0.1", (Member("10.0.0.1", 2379),)),
    ("etcd://a:1,b:2,c", (Member("a", 1), Member("b", 2), Member("c", 2379))),
    ("etcd://[fd00::1]:2379,[fd00::2]", (Member("fd00::1", 2379), Member("fd00::2", 2379))),
    ("etcd://h:2379/", (Member("h", 2379),)),
])
def test_cluster_store_urls(url: str, members: tuple[Member, ...]) -> None:
    assert overlay.parse_cluster_store(url) == members


@pytest.mark.parametrize("url", ["http://h:2379", "h:2379", "etcd://", "etcd://h:x",
                                 "etcd://h:0", "etcd://h:70000", "etcd://fd00::1",
                                 "etcd://a,,b", "etcd://[fd00::1]x"])
def test_bad_cluster_store_urls(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        overlay.parse_cluster_store(url)
    assert "--cluster-store" in info.value.message and info.value.hint


def test_member_shows_ipv6_in_brackets() -> None:
    assert str(Member("fd00::1", 2379)) == "[fd00::1]:2379"
    assert str(Member("h", 1)) == "h:1"


def test_advertise_address() -> None:
    assert overlay.parse_advertise_address("192.0.2.1") == A("192.0.2.1")
    with pytest.raises(InvalidInput):
        overlay.parse_advertise_address("host-a")
    assert overlay.parse_advertise_address("fd00:a0::1") == A("fd00:a0::1")
    assert overlay.parse_advertise_address("169.254.0.5") == A("169.254.0.5")
    # No VXLAN device takes an IPv6 link-local local address unscoped; the others are
    # no single host's.
    for text, why in (("fe80::a", "an IPv6 link-local address"),
                      ("fe80::a%ul0", "an IPv6 link-local address"),
                      ("0.0.0.0", "the unspecified address"), ("::", "the unspecified address"),
                      ("239.1.1.1", "a multicast address")):
        with pytest.raises(InvalidInput, match=f"--advertise-address {text} is {why}"):
            overlay.parse_advertise_address(text)


@pytest.mark.parametrize("text,ttl", [("2", 2), ("10", 10), ("3600", 3600)])
def test_cluster_ttl(text: str, ttl: int) -> None:
    assert overlay.parse_cluster_ttl(text) == ttl


@pytest.mark.parametrize("text", ["", "1", "0", "-5", "3601", "ten", "1.5"])
def test_bad_cluster_ttl(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a number of seconds from 2 to 3600"):
        overlay.parse_cluster_ttl(text)


def test_keys_and_ranges() -> None:
    assert overlay.address_key("n1", A("10.0.0.2")) == "/portway/ips/n1/10.0.0.2"
    assert overlay.endpoint_key("n1", "e1") == "/portway/endpoints/n1/e1"
    assert overlay.endpoint_key() == "/portway/endpoints/"
    assert overlay.prefix_end("/portway/") == "/portway0"
    # Every key of the layout lies inside the prefix's range.
    for key in (overlay.host_key(A("10.0.0.1")), overlay.network_key("x"),
                overlay.name_key("n"), overlay.vni_key(4097)):
        assert overlay.PREFIX <= key < overlay.prefix_end(overlay.PREFIX)


def test_vni_picking() -> None:
    assert overlay.pick_vni(set()) == 4097
    assert overlay.pick_vni({4097, 4098, 4100}) == 4099


def test_vxlan_name_and_mtu() -> None:
    assert overlay.vxlan_name("0123456789abcdef") == "pwvx-0123456789"
    assert len(overlay.vxlan_name("f" * 64)) <= 15
    assert overlay.vxlan_mtu(1500) == 1450
    assert overlay.vxlan_mtu(9000) == 8950
    assert overlay.vxlan_mtu(1500, 6) == 1430  # (an outer IPv6 header: 20 bytes more)


def test_network_round_trip() -> None:
    net = Network(id="ab" * 32, name="multi", bridge="pwbr-abababab",
                  subnets=(Subnet(ipaddress.ip_network("10.200.0.0/16"), A("10.200.0.1"),
                                  ipaddress.ip_network("10.200.1.0/24"),
                                  (("reserved", A("10.200.0.9")),)),
                           Subnet(ipaddress.ip_network("fd00:1::/64"), A("fd00:1::1"))),
                  driver="overlay", internal=True, mtu=1450,
                  options={overlay.VNI_OPTION: "4097"}, labels={"a": "b"}, created="t")
    back = overlay.decode_network(overlay.encode_network(net))
    assert back == net
    assert overlay.network_vni(back) == 4097


def _ep(eid: str, host: str, *addresses: str, mac: str = "02:42:0a:00:00:02") -> RemoteEndpoint:
    return RemoteEndpoint(id=eid, network_id="n", container_id="c" + eid, name="web" + eid,
                          aliases=("w",), addresses=tuple(I(a) for a in addresses), mac=mac,
                          host=A(host))


def test_endpoint_round_trip() -> None:
    e = _ep("1", "192.0.2.2", "10.0.0.2/24", "fd00::2/64", mac="02:42:0A:00:00:02")
    back = RemoteEndpoint.decode(e.encode())
    assert back == RemoteEndpoint(**{**e.__dict__, "mac": "02:42:0a:00:00:02"})


def test_forwarding_wants_only_other_hosts() -> None:
    local = A("192.0.2.1")
    eps = [_ep("1", "192.0.2.1", "10.0.0.2/24", mac="02:00:00:00:00:01"),
           _ep("2", "192.0.2.2", "10.0.0.3/24", "fd00::3/64", mac="02:00:00:00:00:02")]
    fdb, neigh = overlay.wanted_forwarding(eps, local)
    assert fdb == {Fdb("02:00:00:00:00:02", A("192.0.2.2"))}
    assert neigh == {Neighbour(A("10.0.0.3"), "02:00:00:00:00:02"),
                     Neighbour(A("fd00::3"), "02:00:00:00:00:02")}


def test_plan_touches_nothing_that_is_right() -> None:
    want = ({Fdb("02:00:00:00:00:02", A("192.0.2.2"))},
            {Neighbour(A("10.0.0.3"), "02:00:00:00:00:02")})
    assert overlay.plan_forwarding(want, want).empty()


def test_plan_adds_removes_and_moves() -> None:
    have = ({Fdb("02:00:00:00:00:02", A("192.0.2.2")), Fdb("02:00:00:00:00:09",
                                                           A("192.0.2.3"))},
            {Neighbour(A("10.0.0.3"), "02:00:00:00:00:02"),
             Neighbour(A("10.0.0.9"), "02:00:00:00:00:09")})
    # .3's endpoint moved to host .3; .9's host died; .4 is new.
    want = ({Fdb("02:00:00:00:00:02", A("192.0.2.3")), Fdb("02:00:00:00:00:04",
                                                           A("192.0.2.2"))},
            {Neighbour(A("10.0.0.3"), "02:00:00:00:00:02"),
             Neighbour(A("10.0.0.4"), "02:00:00:00:00:04")})
    plan = overlay.plan_forwarding(want, have)
    assert set(plan.add_fdb) == {Fdb("02:00:00:00:00:02", A("192.0.2.3")),
                                 Fdb("02:00:00:00:00:04", A("192.0.2.2"))}
    assert set(plan.del_fdb) == {Fdb("02:00:00:00:00:02", A("192.0.2.2")),
                                 Fdb("02:00:00:00:00:09", A("192.0.2.3"))}
    assert plan.add_neigh == (Neighbour(A("10.0.0.4"), "02:00:00:00:00:04"),)
    assert plan.del_neigh == (Neighbour(A("10.0.0.9"), "02:00:00:00:00:09"),)


def test_a_vni_asked_for_is_one_number_of_24_bits() -> None:
    assert overlay.parse_vni("5000") == 5000
    assert overlay.parse_vni(str((1 << 24) - 1)) == (1 << 24) - 1
    for bad in ("0", "16777216", "5000,5001", "", "x", "-1"):
        with pytest.raises(InvalidInput) as caught:
            overlay.parse_vni(bad)
        assert "vxlanid_list" in caught.value.message
