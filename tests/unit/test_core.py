"""The pure core, table-driven: names, validation, IPAM, port specs, container files."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.core import files, ipam, names, validate
from portway.core.ports import format_mapping, host_port_holder, parse_port_spec, parse_port_specs
from portway.errors import Conflict, InvalidInput, PortwayError

N = ipaddress.ip_network
A = ipaddress.ip_address


@pytest.mark.parametrize("name", ["a", "web", "Web-1", "db_primary", "x.y", "9lives", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate.check_name("container", name) == name


@pytest.mark.parametrize("name", ["", "-a", "_a", ".a", "a b", "a/b", "../x", "a;b", "a\nb",
                                  "é", "a" * 64, "x'y", 'x"y', "a{b}"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate.check_name("container", name)


@pytest.mark.parametrize("name", ["host", "none", "default"])
def test_reserved_network_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        validate.check_network_name(name)


@pytest.mark.parametrize("text,ok", [
    ("10.77.0.0/24", True), ("192.168.0.0/20", True), ("10.0.0.0/30", True),
    ("10.0.0.0/31", False), ("10.0.0.1/24", False), ("10.0.0.0", False), ("bogus", False),
    ("127.0.0.0/8", False), ("224.0.0.0/4", False), ("169.254.0.0/16", False),
    ("fd00::/64", True), ("fd00:77::/126", True), ("fd00::/127", False),
    ("fe80::/64", False), ("ff00::/8", False), ("::1/128", False), ("::ffff:0:0/104", False),
    ("fd00::1/64", False), ("10.0.0.0/33", False),
])
def test_parse_subnet(text: str, ok: bool) -> None:
    if ok:
        assert str(validate.parse_subnet(text)) == text
    else:
        with pytest.raises(InvalidInput):
            validate.parse_subnet(text)


def test_host_bits_hint() -> None:
    with pytest.raises(InvalidInput) as info:
        validate.parse_subnet("10.0.0.1/24")
    assert info.value.hint == "did you mean 10.0.0.0/24?"


@pytest.mark.parametrize("addr,ok", [("10.0.0.1", True), ("10.0.0.254", True),
                                     ("10.0.0.0", False), ("10.0.0.255", False),
                                     ("10.0.1.1", False)])
def test_host_address(addr: str, ok: bool) -> None:
    net = N("10.0.0.0/24")
    if ok:
        assert validate.check_host_address("--ip", A(addr), net) == A(addr)
    else:
        with pytest.raises(InvalidInput):
            validate.check_host_address("--ip", A(addr), net)


def test_address_messages_speak_of_the_family() -> None:
    with pytest.raises(InvalidInput) as info:
        validate.check_host_address("--ip6", A("fd00::ffff:ffff:ffff:ffff"), N("fd00::/64"))
    assert "broadcast address" not in info.value.message  # IPv6 has none
    assert info.value.message.endswith("is the last address of fd00::/64, which portway "
                                       "keeps unused (as IPv4's broadcast)")
    with pytest.raises(InvalidInput) as info:
        validate.parse_address("--ip6", "fd00::5/64")
    assert info.value.hint == "give an address such as fd00:77::5 (no prefix length, no " \
        "brackets)"


def test_ip_range_inside_subnet() -> None:
    assert validate.parse_ip_range("10.0.0.128/25", N("10.0.0.0/24")) == N("10.0.0.128/25")
    with pytest.raises(InvalidInput):
        validate.parse_ip_range("10.0.1.0/25", N("10.0.0.0/24"))


@pytest.mark.parametrize("value,ok", [("1500", True), (68, True), ("9000", True),
                                      ("67", False), ("x", False), ("70000", False)])
def test_mtu(value: str | int, ok: bool) -> None:
    if ok:
        assert validate.parse_mtu(value) == int(value)
    else:
        with pytest.raises(InvalidInput):
            validate.parse_mtu(value)


def test_options_and_labels() -> None:
    opts = validate.parse_key_values("--opt", ["com.docker.network.bridge.enable_icc=false"])
    assert validate.check_options(opts) == opts
    for bad in (["x"], ["=1"], ["a b=1"]):
        with pytest.raises(InvalidInput):
            validate.parse_key_values("--label", bad)
    with pytest.raises(InvalidInput, match="unknown network option"):
        validate.check_options({"foo": "1"})
    with pytest.raises(InvalidInput):
        validate.check_options({"com.docker.network.bridge.enable_icc": "maybe"})


def test_command() -> None:
    assert validate.check_command(["sleep", "1"]) == ("sleep", "1")
    for bad in ([], [""], ["a\0b"]):
        with pytest.raises(InvalidInput):
            validate.check_command(bad)


def test_names_fit_ifnamsiz() -> None:
    i = names.new_id()
    assert len(i) == 64
    for name in (names.bridge_name(i), names.host_veth_name(i)):
        assert len(name.encode()) <= names.IFNAMSIZ
    assert names.netns_name(i) == "pw-" + i[:12]


def test_owner_tags_round_trip() -> None:
    tag = names.owner_tag("abcd1234", "endpoint", "ff" * 32)
    assert names.parse_owner_tag(tag) == ("abcd1234", "endpoint", "ff" * 32)
    for other in (None, "", "docker0", "portway:x", "other:a:b:c"):
        assert names.parse_owner_tag(other) is None


def test_mac_from_address() -> None:
    assert names.mac_for(A("10.77.0.2")) == "02:42:0a:4d:00:02"
    assert names.bridge_mac("8a4c9593fc" + "0" * 54) == "02:8a:4c:95:93:fc"


def test_pick_subnet_skips_taken() -> None:
    assert ipam.pick_subnet([]) == N("172.17.0.0/16")
    taken = [(N("172.17.0.0/16"), "docker0"), (N("172.18.3.0/24"), "route")]
    assert ipam.pick_subnet(taken) == N("172.19.0.0/16")
    everything = [(N(f"172.{n}.0.0/16"), "x") for n in range(17, 32)]
    assert ipam.pick_subnet(everything) == N("192.168.0.0/20")
    with pytest.raises(Conflict, match="no free subnet"):
        ipam.pick_subnet([*everything, (N("192.168.0.0/16"), "lan")])


def test_check_subnet_free_names_the_holder() -> None:
    with pytest.raises(Conflict, match="overlaps network app"):
        ipam.check_subnet_free(N("10.0.0.0/25"), [(N("10.0.0.0/24"), "network app")])
    ipam.check_subnet_free(N("10.0.1.0/24"), [(N("10.0.0.0/24"), "network app")])


def test_allocate_lowest_free() -> None:
    net = N("10.0.0.0/29")
    gw = A("10.0.0.1")
    assert ipam.allocate_address(net, gw, set()) == A("10.0.0.2")
    assert ipam.allocate_address(net, gw, {A("10.0.0.2"), A("10.0.0.4")}) == A("10.0.0.3")
    used = {A(f"10.0.0.{i}") for i in range(2, 7)}
    with pytest.raises(Conflict, match="no free address"):
        ipam.allocate_address(net, gw, used)
    # With an ip-range, only from the range; a gateway inside the range is skipped.
    assert ipam.allocate_address(N("10.0.0.0/24"), A("10.0.0.128"), set(),
                                 N("10.0.0.128/25")) == A("10.0.0.129")


@given(st.sets(st.integers(min_value=2, max_value=253), max_size=200))
def test_allocate_never_returns_used_or_reserved(used_ints: set[int]) -> None:
    net = N("10.1.0.0/24")
    used = {net.network_address + i for i in used_ints}
    try:
        got = ipam.allocate_address(net, A("10.1.0.1"), used)
    except Conflict:
        assert len(used) == 253
        return
    assert got not in used and got in net
    assert got not in (net.network_address, net.broadcast_address, A("10.1.0.1"))


@pytest.mark.parametrize("spec,expected", [
    ("80", ["0.0.0.0:0->80/tcp"]),
    ("8080:80", ["0.0.0.0:8080->80/tcp"]),
    ("127.0.0.1:6379:6379", ["127.0.0.1:6379->6379/tcp"]),
    ("127.0.0.1::80", ["127.0.0.1:0->80/tcp"]),
    ("5353:53/udp", ["0.0.0.0:5353->53/udp"]),
    ("9000-9001:9000-9001", ["0.0.0.0:9000->9000/tcp", "0.0.0.0:9001->9001/tcp"]),
    ("0.0.0.0:81:80/TCP", ["0.0.0.0:81->80/tcp"]),
    ("[::1]:6379:6379", ["[::1]:6379->6379/tcp"]),
    ("[2001:db8::1]:8080:80/udp", ["[2001:db8::1]:8080->80/udp"]),
    # Docker's nat.ParsePortSpec: of more than three parts, the last two are the ports,
    # so an IPv6 address needs no brackets.
    ("::1:80:80", ["[::1]:80->80/tcp"]),
    ("2001:db8::1::80/udp", ["[2001:db8::1]:0->80/udp"]),
])
def test_port_specs(spec: str, expected: list[str]) -> None:
    assert [format_mapping(p) for p in parse_port_spec(spec)] == expected


@pytest.mark.parametrize("spec", ["", "x", "0", "65536", "80:", "1-2:3-5", "9001-9000:1-2",
                                  "80/dccp", "1.2.3:80:80", "999.1.1.1:80:80", "80:80:80:80",
                                  "::80:80", "::1:80", "[::1:80:80"])
def test_bad_port_specs(spec: str) -> None:
    with pytest.raises(InvalidInput):
        parse_port_spec(spec)


def test_host_port_holder_by_family() -> None:
    sockets = [("0.0.0.0", 80), ("2001:db8::5", 81), ("::", 82), ("127.0.0.1", 83)]
    assert host_port_holder(sockets, None, 80) == "0.0.0.0:80"
    assert host_port_holder(sockets, "2001:db8::1", 80) is None  # IPv4 only
    assert host_port_holder(sockets, "2001:db8::5", 81) == "[2001:db8::5]:81"
    assert host_port_holder(sockets, "2001:db8::6", 81) is None
    assert host_port_holder(sockets, "10.0.0.1", 82) == "[::]:82"
    assert host_port_holder(sockets, "127.0.0.1", 83) == "127.0.0.1:83"
    assert host_port_holder(sockets, "10.0.0.1", 83) is None


def test_duplicate_host_port() -> None:
    with pytest.raises(InvalidInput, match="published twice"):
        parse_port_specs(["8080:80", "8080:81"])
    assert len(parse_port_specs(["8080:80", "8080:80/udp"])) == 2


@given(st.text(max_size=40))
def test_port_spec_never_crashes(spec: str) -> None:
    try:
        parse_port_spec(spec)
    except PortwayError:
        pass


@given(st.text(max_size=80))
def test_names_never_crash(name: str) -> None:
    try:
        validate.check_name("container", name)
    except InvalidInput:
        return
    assert validate.NAME_RE.fullmatch(name)


def test_container_files() -> None:
    hosts = files.render_hosts("abc123", "web", [A("10.0.0.2"), A("10.1.0.2")])
    assert "10.0.0.2\tabc123 web\n" in hosts and "127.0.0.1\tlocalhost" in hosts
    assert files.render_hostname("abc") == "abc\n"
    host = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch example.org\n" \
           "options edns0\n"
    assert files.container_resolv_conf(host, None) == \
        "nameserver 192.0.2.1\nsearch example.org\noptions edns0\n"
    assert files.container_resolv_conf(host, "10.77.0.1") == \
        "nameserver 10.77.0.1\nsearch example.org\noptions edns0\n"
