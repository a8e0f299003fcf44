"""The DNS server with both address families, without sockets to the world: AAAA
records and ip6.arpa names (portway.dns.wire), the records in their older form
(one subnet, gateway and address) and their newer one (lists of either family),
and the server's answers, limits and accounts for IPv6 clients."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portway.dns import limits, wire
from portway.dns.server import (
    Server,
    View,
    address_text,
    load_view,
    read_upstreams,
    upstream_address,
)


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def query(name: str, qtype: int = wire.QTYPE_A, qid: int = 0x4242) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, wire.CLASS_IN)


def records_of(out: bytes | None) -> list[tuple[int, bytes]]:
    """(type, data) of each answer record of a reply (names are pointers here)."""
    assert out is not None
    count = struct.unpack_from("!H", out, 6)[0]
    at = out.index(b"\0", 12) + 5  # past the question's name, type and class
    found = []
    for _ in range(count):
        assert out[at:at + 2] == b"\xc0\x0c"
        rtype, _cls, _ttl, size = struct.unpack_from("!HHIH", out, at + 2)
        found.append((rtype, out[at + 12:at + 12 + size]))
        at += 12 + size
    assert at == len(out)
    return found


def rcode(out: bytes | None) -> int | None:
    return None if out is None else out[3] & 0xF


# wire: AAAA records, ip6.arpa names

def test_aaaa_record_is_type_28_with_the_16_bytes() -> None:
    address = packed("fd00::1:2")
    record = wire.aaaa_record(address, 5)
    assert record == b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x05\x00\x10" + address
    assert wire.address_record(address, 5) == record
    assert wire.address_record(packed("10.0.0.1"), 5) == wire.a_record(packed("10.0.0.1"), 5)


@pytest.mark.parametrize("address", ["10.0.0.2", "0.0.0.0", "255.255.255.255", "fd00::2",
                                     "2001:db8:0:1:2:3:4:5", "::", "fe80::1"])
def test_reverse_names_go_both_ways(address: str) -> None:
    ip = ipaddress.ip_address(address)
    name = wire.reverse_name(ip.packed)
    assert name == ip.reverse_pointer  # the standard library's form, as dig -x sends it
    assert wire.ptr_address(name) == ip.packed


def test_ip6_arpa_nibbles_are_read_lowest_first() -> None:
    name = "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa"
    assert wire.ptr_address(name) == packed("4321:0:1:2:3:4:567:89ab")  # RFC 3596's example


@pytest.mark.parametrize("name", [
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",  # 32, fine
])
def test_a_whole_ip6_arpa_name_is_an_address(name: str) -> None:
    assert wire.ptr_address(name) == packed("fd00::1")


@pytest.mark.parametrize("name", [
    "0.0.d.f.ip6.arpa",  # a zone, not an address: forwarded as today's short in-addr.arpa
    "1." * 31 + "ip6.arpa",  # 31 nibbles
    "1." * 33 + "ip6.arpa",  # 33
    "g." + "0." * 31 + "ip6.arpa",  # not hex
    "10." + "0." * 30 + "ip6.arpa",  # two hex digits in one label
    "." + "0." * 31 + "ip6.arpa",  # an empty label
    "0." * 32 + "ip6.arpa.example",
    "ip6.arpa",
    "0.0.10.in-addr.arpa",
    "256.0.0.10.in-addr.arpa",
    "\u00b2.0.0.10.in-addr.arpa",  # a digit to isdigit(), none to int(): None, no crash
    "a.0.0.10.in-addr.arpa",
])
def test_other_reverse_names_are_none(name: str) -> None:
    assert wire.ptr_address(name) is None


# the records: older and newer forms

NEW = {
    "networks": [
        # Dual stack, the newer form: "subnet"/"gateway" are the first of the lists.
        {"id": "n-app", "name": "app", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
         "subnets": ["10.0.0.0/24", "fd00:0:0:a::/64"],
         "gateways": ["10.0.0.1", "FD00:0:0:A:0::1"]},
        {"id": "n-sec", "name": "secret", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
         "subnets": ["10.1.0.0/24", "fd00:0:0:b::/64"],
         "gateways": ["10.1.0.1", "fd00:0:0:b::1"]},
        # IPv6 only: "subnet"/"gateway" hold its IPv6 ones.
        {"id": "n-six", "name": "six", "subnet": "fd00:0:0:c::/64", "gateway": "fd00:0:0:c::1",
         "subnets": ["fd00:0:0:c::/64"], "gateways": ["fd00:0:0:c::1"]},
        {"id": "n-in", "name": "inner", "subnet": "10.2.0.0/24", "gateway": "10.2.0.1",
         "subnets": ["10.2.0.0/24", "fd00:0:0:d::/64"],
         "gateways": ["10.2.0.1", "fd00:0:0:d::1"], "internal": True},
    ],
    "containers": [
        {"id": "c1", "name": "web", "dns": [], "endpoints": [
            {"ip": "10.0.0.2", "ips": ["10.0.0.2", "fd00:0:0:a::2"], "network": "n-app",
             "names": ["web", "both"]}]},
        # An endpoint in the older form beside newer ones: IPv4 only.
        {"id": "c2", "name": "old", "endpoints": [
            {"ip": "10.0.0.3", "network": "n-app", "names": ["old", "both"]}]},
        {"id": "c3", "name": "vault", "endpoints": [
            {"ip": "10.1.0.2", "ips": ["10.1.0.2", "fd00:0:0:b::2"], "network": "n-sec",
             "names": ["vault"]}]},
        {"id": "c4", "name": "hex", "dns": ["2001:db8::53"], "endpoints": [
            {"ip": "fd00:0:0:c::2", "ips": ["fd00:0:0:c::2"], "network": "n-six",
             "names": ["hex"]},
            {"ip": "10.0.0.4", "ips": ["10.0.0.4", "fd00:0:0:a::4"], "network": "n-app",
             "names": ["hex"]}]},
        {"id": "c5", "name": "iso", "endpoints": [
            {"ip": "10.2.0.2", "ips": ["10.2.0.2", "fd00:0:0:d::2"], "network": "n-in",
             "names": ["iso"]}]},
    ],
}

OLD = {
    "networks": [{"id": "n-app", "name": "app", "subnet": "10.0.0.0/24",
                  "gateway": "10.0.0.1", "internal": False}],
    "containers": [{"id": "c1", "name": "web", "dns": [], "endpoints": [
        {"ip": "10.0.0.2", "network": "n-app", "names": ["web"]}]}],
}


def view_of(tmp_path: Path, data: dict[str, Any]) -> View:
    (tmp_path / "dns.json").write_text(json.dumps(data))
    return load_view(str(tmp_path / "dns.json"))


def test_the_older_records_load_as_before(tmp_path: Path) -> None:
    view = view_of(tmp_path, OLD)
    assert view.gateways == ["10.0.0.1"]
    assert [(n, str(s)) for n, s in view.subnets] == [("n-app", "10.0.0.0/24")]
    assert view.names["n-app"] == {"web": [packed("10.0.0.2")]}
    assert view.networks_of(packed("10.0.0.2")) == ("n-app",)
    assert view.networks_of(packed("10.0.0.9")) == ("n-app",)  # in the subnet
    assert view.networks_of(packed("fd00::2")) == ()


def test_the_newer_records_give_every_gateway_subnet_and_address(tmp_path: Path) -> None:
    view = view_of(tmp_path, NEW)
    # Every gateway, in one text form per address (how the server keys its sockets).
    assert view.gateways == ["10.0.0.1", "fd00:0:0:a::1", "10.1.0.1", "fd00:0:0:b::1",
                             "fd00:0:0:c::1", "10.2.0.1", "fd00:0:0:d::1"]
    assert [str(s) for n, s in view.subnets if n == "n-app"] == ["10.0.0.0/24",
                                                                  "fd00:0:0:a::/64"]
    assert view.names["n-app"]["web"] == [packed("10.0.0.2"), packed("fd00:0:0:a::2")]
    assert view.names["n-app"]["both"] == [packed("10.0.0.2"), packed("fd00:0:0:a::2"),
                                           packed("10.0.0.3")]
    assert view.names["n-six"] == {"hex": [packed("fd00:0:0:c::2")]}
    # A container's addresses of both families see the same networks.
    for address in ("10.0.0.4", "fd00:0:0:a::4", "fd00:0:0:c::2"):
        assert view.networks_of(packed(address)) == ("n-six", "n-app")
    assert view.networks_of(packed("fd00:0:0:a::99")) == ("n-app",)  # in the subnet
    assert view.networks_of(packed("fd00:0:0:99::1")) == ()
    assert view.custom_dns[packed("fd00:0:0:a::4")] == ["2001:db8::53"]


def test_set_and_forget_take_every_address_of_a_container(tmp_path: Path) -> None:
    view = view_of(tmp_path, NEW)
    view.forget("c1")
    assert "web" not in view.names["n-app"]
    assert view.names["n-app"]["both"] == [packed("10.0.0.3")]
    assert packed("fd00:0:0:a::2") not in view.member
    assert packed("fd00:0:0:a::2") not in view.ptr
    # A bad address in a container's records changes nothing.
    with pytest.raises(OSError):
        view.set_container({"id": "c3", "name": "vault", "endpoints": [
            {"ip": "10.1.0.9", "ips": ["10.1.0.9", "fd00::zz"], "network": "n-sec",
             "names": ["vault"]}]})
    assert view.names["n-sec"]["vault"] == [packed("10.1.0.2"), packed("fd00:0:0:b::2")]


# the server's answers

@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server on NEW; its loop never runs: answer() and start_forward() are called
    directly."""
    (tmp_path / "dns.json").write_text(json.dumps(NEW))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 2001:db8::53\n")
    srv = Server(str(tmp_path), str(resolv))
    srv.view = load_view(str(tmp_path / "dns.json"))
    srv.upstreams = ["2001:db8::53"]
    try:
        yield srv
    finally:
        srv.poller.close()
        srv.control.close()
        os.close(srv.handoff_r)
        os.close(srv.handoff_w)


WEB4, WEB6 = packed("10.0.0.2"), packed("fd00:0:0:a::2")
HEX6 = packed("fd00:0:0:c::2")
ISO6 = packed("fd00:0:0:d::2")


@pytest.mark.parametrize("src", [WEB4, WEB6], ids=["from IPv4", "from IPv6"])
def test_a_and_aaaa_give_the_names_addresses_of_each_family(server: Server,
                                                            src: bytes) -> None:
    a, _ = server.answer(query("web"), src)
    aaaa, _ = server.answer(query("web", wire.QTYPE_AAAA), src)
    assert rcode(a) == rcode(aaaa) == wire.NOERROR
    assert records_of(a) == [(wire.QTYPE_A, WEB4)]
    assert records_of(aaaa) == [(wire.QTYPE_AAAA, WEB6)]
    assert a is not None and aaaa is not None and a[2:4] == aaaa[2:4]  # both authoritative
    anything, _ = server.answer(query("web", wire.QTYPE_ANY), src)
    assert records_of(anything) == [(wire.QTYPE_A, WEB4), (wire.QTYPE_AAAA, WEB6)]
    # NAME.NETWORK too.
    assert records_of(server.answer(query("web.app", wire.QTYPE_AAAA), src)[0]) == \
        [(wire.QTYPE_AAAA, WEB6)]


def test_a_name_without_the_asked_family_has_no_data(server: Server) -> None:
    # old has only IPv4, hex only IPv6 on network six: NOERROR and no record, as AAAA
    # for an IPv4-only name always was (never NXDOMAIN, which denies the name).
    for name, qtype in (("old", wire.QTYPE_AAAA), ("hex.six", wire.QTYPE_A)):
        out, local = server.answer(query(name, qtype), HEX6)
        assert rcode(out) == wire.NOERROR and records_of(out) == [] and local is not None
        assert out is not None and out[2] & 0x04  # authoritative: answered here
    # MX and the like of a name that exists: no data either.
    assert records_of(server.answer(query("web", 15), WEB6)[0]) == []


def test_several_addresses_of_a_family_rotate(server: Server) -> None:
    first = records_of(server.answer(query("both"), WEB6)[0])
    second = records_of(server.answer(query("both"), WEB6)[0])
    assert sorted(first) == sorted(second) == [(1, WEB4), (1, packed("10.0.0.3"))]
    assert first != second
    assert records_of(server.answer(query("both", wire.QTYPE_AAAA), WEB6)[0]) == \
        [(28, WEB6)]


def test_ip6_arpa_names_of_the_clients_networks(server: Server) -> None:
    ptr = wire.QTYPE_PTR
    for src in (WEB4, WEB6):
        out, _ = server.answer(query(wire.reverse_name(WEB6), ptr), src)
        assert records_of(out) == [(ptr, wire.encode_name("web"))]
        out, _ = server.answer(query(wire.reverse_name(HEX6), ptr), src)  # hex: also on app
        assert records_of(out) == [(ptr, wire.encode_name("hex"))]
    # An address of a network the client is not on, taken or free: NXDOMAIN alike,
    # answered here; an address outside portway's subnets: forwarded.
    taken, _ = server.answer(query(wire.reverse_name(packed("fd00:0:0:b::2")), ptr), WEB6)
    free, _ = server.answer(query(wire.reverse_name(packed("fd00:0:0:b::99")), ptr), WEB6)
    assert taken is not None and free is not None and rcode(taken) == wire.NXDOMAIN
    assert taken[:12] == free[:12]  # the same header: flags, counts
    world = wire.reverse_name(packed("2001:db8::1"))
    assert server.answer(query(world, ptr), WEB6) == (None, None)


@pytest.mark.parametrize("qtype", [wire.QTYPE_A, wire.QTYPE_AAAA, wire.QTYPE_ANY])
@pytest.mark.parametrize("name", ["vault", "vault.secret", "nothere.secret", "hex.six"])
def test_other_networks_names_are_forwarded_like_unknown_ones(
        server: Server, name: str, qtype: int) -> None:
    # web is on app only: secret's and six's names are unknown to it, of any type.
    for src in (WEB4, WEB6):
        assert server.answer(query("nobody-has-this", qtype), src) == (None, None)
        assert server.answer(query(name, qtype), src) == (None, None)


def test_an_internal_network_refuses_alike_over_ipv6(server: Server) -> None:
    unknown, _ = server.answer(query("nobody-has-this", wire.QTYPE_AAAA), ISO6)
    other, _ = server.answer(query("web", wire.QTYPE_AAAA), ISO6)
    assert unknown is not None and other is not None and rcode(unknown) == wire.REFUSED
    assert unknown[:12] == other[:12]  # the same header: flags (no AA), counts
    assert records_of(server.answer(query("iso", wire.QTYPE_AAAA), ISO6)[0]) == \
        [(28, ISO6)]


def test_an_outsider_over_ipv6_is_refused(server: Server) -> None:
    out, _ = server.answer(query("web", wire.QTYPE_AAAA), packed("2001:db8::7"))
    assert rcode(out) == wire.REFUSED


def test_repeated_queries_are_kept_per_family_client(server: Server) -> None:
    msg = query("web", wire.QTYPE_AAAA)
    first = server.reply_to(msg, WEB6, 0.0)
    assert (WEB6, msg[2:]) in server.replies
    assert server.reply_to(msg, WEB6, 1.0) == first
    entries = server.log_entries()
    assert [(e["client"], e["name"], e["type"], e["how"]) for e in entries] == \
        [("fd00:0:0:a::2", "web", 28, "local")] * 2


def test_deltas_in_the_newer_form(server: Server) -> None:
    delta = {"cmd": "set", "container": {"id": "c9", "name": "new", "dns": [], "endpoints": [
        {"ip": "10.0.0.9", "ips": ["10.0.0.9", "fd00:0:0:a::9"], "network": "n-app",
         "names": ["new"]}]}}
    assert server.apply_delta(json.dumps(delta)) == {"ok": True}
    assert records_of(server.answer(query("new", wire.QTYPE_AAAA), WEB6)[0]) == \
        [(28, packed("fd00:0:0:a::9"))]
    assert server.view.networks_of(packed("fd00:0:0:a::9")) == ("n-app",)
    assert server.apply_delta(json.dumps({"cmd": "forget", "id": "c9"})) == {"ok": True}
    assert server.answer(query("new", wire.QTYPE_AAAA), WEB6) == (None, None)
    bad = json.loads(json.dumps(delta))
    bad["container"]["endpoints"][0]["ips"] = ["10.0.0.9", "not-an-address"]
    assert server.apply_delta(json.dumps(bad)) == {"ok": False}


# limits and accounts per client address of either family

def test_forward_shares_are_per_address_of_either_family(server: Server) -> None:
    share = limits.FORWARDS_PER_CLIENT
    for i in range(share + 3):
        server.start_forward(query(f"n{i}.example", wire.QTYPE_AAAA), WEB6, lambda _: None)
    assert server.forwarding == {WEB6: share}
    assert server.shed["forwards: over the client's share"] == 3
    # The same container's IPv4 address is another client, with a share of its own.
    assert server.start_forward(query("v4.example"), WEB4, lambda _: None)
    assert server.forwarding == {WEB6: share, WEB4: 1}
    assert server.stats()["forwards"]["by_client"] == {"fd00:0:0:a::2": share,
                                                       "10.0.0.2": 1}
    # hex's own --dns is an IPv6 resolver; web's are resolv.conf's.
    server.start_forward(query("x.example"), HEX6, lambda _: None)
    assert server.outbox[-1].upstreams == ["2001:db8::53"]


def test_tcp_slots_per_ipv6_address() -> None:
    a, b = packed("fd00::2"), packed("fd00::3")
    assert limits.tcp_admit({a: 8}, a, 8) == (False, None)
    assert limits.tcp_admit({a: 8}, b, 8) == (True, None)
    assert limits.tcp_admit({a: 1, b: 3}, packed("10.0.0.2"), limits.MAX_TCP_CLIENTS) == \
        (True, b)


def test_address_text_of_both_families() -> None:
    assert address_text(packed("10.0.0.2")) == "10.0.0.2"
    assert address_text(packed("fd00:0:0:a::2")) == "fd00:0:0:a::2"


# upstream resolvers of either family

def test_upstream_addresses() -> None:
    assert upstream_address("192.0.2.53") == (socket.AF_INET, ("192.0.2.53", 53))
    family, address = upstream_address("2001:db8::53") or (0, ())
    assert family == socket.AF_INET6 and address[:2] == ("2001:db8::53", 53)
    # Link-local: only with the interface it is on, which must exist.
    scope = socket.if_nametoindex("lo")
    assert upstream_address("fe80::1%lo") == (socket.AF_INET6, ("fe80::1", 53, 0, scope))
    assert upstream_address("fe80::1") is None
    assert upstream_address("fe80::1%no-such-if0") is None
    assert upstream_address("resolver.example") is None


def test_resolv_conf_leaves_out_what_cannot_be_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
                      "nameserver fe80::1\nnameserver fe80::1%lo # the host's\n"
                      "nameserver fe80::2%no-such-if0\nnameserver dns.example\n")
    assert read_upstreams(str(resolv)) == ["192.0.2.53", "2001:db8::53", "fe80::1%lo"]
    log = capsys.readouterr().err
    assert "nameserver fe80::1 left out" in log
    assert "nameserver fe80::2%no-such-if0 left out" in log
    assert "nameserver dns.example left out" in log


# mmsg: a sender as recvfrom gives it, as the kernel's sockaddr (what send_to takes)

def test_a_recvfrom_peer_becomes_its_sockaddr() -> None:
    from portway.dns import mmsg

    four = mmsg.Batch(size=1).name_of(("10.1.2.3", 5353))
    assert four == struct.pack("=H", socket.AF_INET) + struct.pack("!H", 5353) + \
        socket.inet_aton("10.1.2.3") + bytes(8)
    # IPv6: port, flow label (network order), address, scope id (host order); a
    # link-local host's scope name is dropped, its id is in the tuple.
    six = mmsg.Batch(size=1, family=socket.AF_INET6).name_of(("fe80::1%eth0", 53, 7, 3))
    assert six == struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 53, 7) + \
        socket.inet_pton(socket.AF_INET6, "fe80::1") + struct.pack("=I", 3)
    assert mmsg.Batch(size=1, family=socket.AF_INET6).peer_of(six) == ("fe80::1", 53, 7, 3)
