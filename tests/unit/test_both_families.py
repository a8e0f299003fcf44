"""Property tests of the pure core over both address families: IPAM, network plans,
port specs and netavark's contract never crash on odd input, and what they accept holds
together."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.core import ipam, netavark, runopts, validate
from portway.core.ports import parse_port_spec
from portway.errors import Conflict, InvalidInput, PortwayError

SUBNETS = {4: ipaddress.ip_network("10.1.0.0/24"), 6: ipaddress.ip_network("fd00:1::/120")}


@given(st.sampled_from([4, 6]), st.sets(st.integers(min_value=0, max_value=255), max_size=256),
       st.integers(min_value=1, max_value=254), st.integers(min_value=0, max_value=300))
def test_first_free_never_returns_used_or_reserved(version: int, used_ints: set[int],
                                                   gw_offset: int, start_offset: int) -> None:
    net = SUBNETS[version]
    gateway = net.network_address + gw_offset
    used = {net.network_address + i for i in used_ints}
    start = int(net.network_address) + start_offset
    try:
        got = ipam.first_free(net, gateway, used.__contains__, start=start)
    except Conflict:
        free = [a for a in net if a not in used and int(a) >= start and
                a not in (net.network_address, net.broadcast_address, gateway)]
        assert free == []
        return
    assert got in net and got not in used and int(got) >= start
    assert got not in (net.network_address, net.broadcast_address, gateway)


POOL = ["10.7.0.0/24", "10.7.0.0/16", "10.7.0.1/24", "fd00:7::/64", "fd00:7::/48",
        "fd00:7::1/64", "fe80::/64", "::1/128", "10.7.0.0/31", "fd00:7::/127", "nonsense",
        "2001:db8::/64", "::ffff:10.0.0.0/104", "10.8.0.0/24", "fd00:8::/64"]
ADDRESSES = ["10.7.0.1", "10.7.0.254", "10.7.0.255", "10.8.0.1", "fd00:7::1", "fd00:7::",
             "fd00:8::1", "x", "fd00:7::ffff"]
RANGES = ["10.7.0.128/25", "10.7.0.0/30", "fd00:7::100/120", "fd00:8::/120", "10.9.0.0/24"]


@given(st.lists(st.sampled_from(POOL), max_size=3), st.lists(st.sampled_from(ADDRESSES),
                                                             max_size=3),
       st.lists(st.sampled_from(RANGES), max_size=3), st.booleans(), st.booleans())
def test_network_plans_hold_together(subnets: list[str], gateways: list[str],
                                     ranges: list[str], ipv4: bool, ipv6: bool) -> None:
    try:
        plan = validate.plan_subnets(subnets, gateways, ranges, ipv4, ipv6)
    except InvalidInput:
        return
    versions = [r.version for r in plan]
    assert versions == sorted(versions) and versions
    assert (4 in versions) == ipv4 and (6 in versions) == ipv6
    given_ = [r.subnet for r in plan if r.subnet is not None]
    for i, a in enumerate(given_):  # any number per family, none overlapping another
        assert not any(a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]
                       for b in given_[i + 1:])
    for r in plan:
        if r.subnet is not None:
            assert r.subnet.version == r.version
            if r.gateway is not None:
                assert r.gateway in r.subnet and r.gateway != r.subnet.network_address
            if r.ip_range is not None:
                assert r.ip_range.subnet_of(r.subnet)  # type: ignore[arg-type]
        else:
            assert r.gateway is None and r.ip_range is None


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535),
       st.integers(min_value=1, max_value=65535), st.sampled_from(["", "/tcp", "/udp"]))
def test_port_specs_of_either_family(address: Any, host_port: int, container_port: int,
                                     proto: str) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    if address.version == 6 and (address.is_link_local or address.ipv4_mapped is not None):
        with pytest.raises(InvalidInput):  # no socket is bound to these as written
            parse_port_spec(f"{host}:{host_port}:{container_port}{proto}")
        return
    (mapping,) = parse_port_spec(f"{host}:{host_port}:{container_port}{proto}")
    assert (mapping.host_port, mapping.container_port) == (host_port, container_port)
    assert mapping.protocol == (proto[1:] or "tcp")
    assert mapping.host_ip in ((None, address) if address.is_unspecified else (address,))


@pytest.mark.parametrize(("spec", "message", "hint"), [
    ("[::ffff:127.0.0.1]:8080:80", "host address ::ffff:127.0.0.1 in '[::ffff:127.0.0.1]:8080:80' "
     "is an IPv4 address written as IPv6", "write it as IPv4: 127.0.0.1:8080:80"),
    ("[fe80::1]:8080:80/udp", "cannot publish on fe80::1 in '[fe80::1]:8080:80/udp': a "
     "link-local address belongs to one link", "on all of them (no address)"),
    # Without brackets: the spec as written, and the hint's spelling without them too.
    ("::ffff:127.0.0.1:8080:80", "host address ::ffff:127.0.0.1 in '::ffff:127.0.0.1:8080:80' "
     "is an IPv4 address written as IPv6", "write it as IPv4: 127.0.0.1:8080:80"),
    ("fe80::1:8080:80", "cannot publish on fe80::1 in 'fe80::1:8080:80': a "
     "link-local address belongs to one link", "on all of them (no address)"),
])
def test_host_addresses_no_socket_takes(spec: str, message: str, hint: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_port_spec(spec)
    assert caught.value.message.startswith(message) and caught.value.hint.endswith(hint)


@given(st.text(alphabet="[]:.0123456789abcdef/-udptc", max_size=30))
def test_bracketed_port_specs_never_crash(spec: str) -> None:
    try:
        parse_port_spec(spec)
    except PortwayError:
        pass


SUBNET_ENTRY = st.fixed_dictionaries({"subnet": st.sampled_from(POOL)}, optional={
    "gateway": st.sampled_from(ADDRESSES)})


@given(st.lists(SUBNET_ENTRY, min_size=1, max_size=3),
       st.lists(st.sampled_from(ADDRESSES), max_size=3), st.booleans())
def test_netavark_definitions_of_either_family(subnets: list[dict[str, str]],
                                               ips: list[str], ipv6: bool) -> None:
    data = {"container_id": "ab" * 32, "container_name": "c",
            "networks": {"n": {"static_ips": ips, "interface_name": "eth0"}},
            "network_info": {"n": {"name": "n", "id": "cd" * 32, "driver": "bridge",
                                   "network_interface": "podman9", "subnets": subnets,
                                   "ipv6_enabled": ipv6}}}
    try:
        opts = netavark.parse_options(data)
    except InvalidInput:
        return
    info = opts.networks["n"]
    versions = [s.subnet.version for s in info.subnets]
    assert versions == sorted(versions)
    for i, s in enumerate(info.subnets):
        assert s.gateway in s.subnet and s.gateway != s.subnet.network_address
        assert not any(s.subnet.version == t.subnet.version and
                       s.subnet.overlaps(t.subnet)  # type: ignore[arg-type]
                       for t in info.subnets[i + 1:])
    for s in info.subnets:  # at most one address per subnet
        assert sum(ip in s.subnet for ip in opts.attachments[0].static_ips) <= 1
    for ip in opts.attachments[0].static_ips:
        assert any(ip in s.subnet for s in info.subnets)


@pytest.mark.parametrize(("call", "message"), [
    # An IPv6 zone (%IF) that Python's ipaddress reads as part of the address: nftables
    # or netlink refused it later (exit 5), or, for --aux-address and the host binding,
    # nothing did; as Docker's parser, portway takes an address without one.
    (lambda: validate.parse_subnet("fd00:b1::%eth0/64"),
     "invalid subnet 'fd00:b1::%eth0/64': %eth0 names an interface, which a range of "
     "addresses cannot have"),
    (lambda: validate.plan_subnets(["fd00:b2::/64"], ["fd00:b2::1%eth0"], [], True, True),
     "invalid gateway 'fd00:b2::1%eth0': %eth0 names an interface"),
    (lambda: validate.plan_subnets(["fd00:b3::/64"], [], [], True, True,
                                   ["x=fd00:b3::9%eth0"]),
     "invalid --aux-address 'fd00:b3::9%eth0': %eth0 names an interface"),
    (lambda: validate.plan_subnets(["fd00:b4::/64"], [], ["fd00:b4::%eth0/120"], True,
                                   True),
     "invalid --ip-range 'fd00:b4::%eth0/120': %eth0 names an interface"),
    (lambda: validate.parse_address("--ip6", "fd00:a6::1%eth0"),
     "invalid --ip6 'fd00:a6::1%eth0': %eth0 names an interface, which this address"),
    (lambda: validate.check_host_binding("2001:db8::1%uplink0"), "%uplink0 names"),
    (lambda: validate.check_dns_servers(["fd00::53%eth0"]),
     "invalid --dns server 'fd00::53%eth0': %eth0 names an interface"),
    (lambda: validate.check_dns_servers(["fe80::53"], named_link=True),
     "--dns server 'fe80::53' is link-local but names no interface"),
    (lambda: runopts.parse_extra_hosts(["h:fd00::7%eth0"]),
     "invalid --add-host 'h:fd00::7%eth0': an /etc/hosts address names no interface"),
])
def test_an_ipv6_zone_is_refused_where_it_means_nothing(call: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as e:
        call()
    assert "%" not in e.value.hint or "%eth0 (see ip -6 addr)" in e.value.hint


def test_a_link_local_dns_server_keeps_its_interface() -> None:
    """The one place a zone means something: a link-local upstream resolver, which the
    DNS server asks from the host over the interface named."""
    assert validate.check_dns_servers(["fe80::53%uplink0", "2001:db8::53", "192.0.2.53"]) \
        == ("fe80::53%uplink0", "2001:db8::53", "192.0.2.53")
