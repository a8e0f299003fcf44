"""The DNS server's limits per client, as arithmetic (portway.dns.limits), and how the
server applies them to names and forwarded queries, without sockets to the world."""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from portway.dns import limits, wire
from portway.dns.server import Server, load_view

A, B, C = b"\x0a\x09\x00\x02", b"\x0a\x09\x00\x03", b"\x0a\x09\x00\x04"


# forwarded queries: a share per client address

def test_an_empty_table_gives_a_client_its_full_share() -> None:
    assert limits.forward_share(0) == limits.FORWARDS_PER_CLIENT == 512


@pytest.mark.parametrize("total,share", [
    (0, 512), (512, 512), (1024, 512), (1100, 474), (1536, 256), (2000, 24), (2030, 16),
    (2047, 16), (2048, 0), (5000, 0),
])
def test_the_share_shrinks_as_the_table_fills(total: int, share: int) -> None:
    assert limits.forward_share(total) == share


def greedy(clients: int) -> list[int]:
    """What each of `clients` addresses holds when each in turn starts forwarded
    queries as long as its share allows, against an upstream that never answers."""
    held: list[int] = []
    total = 0
    for _ in range(clients):
        own = 0
        while own < limits.forward_share(total):
            own += 1
            total += 1
        held.append(own)
    return held


def test_one_flooding_client_takes_a_quarter_of_the_table() -> None:
    assert greedy(1) == [512]
    assert limits.forward_share(512) == 512  # the next client still gets a full share


def test_a_few_flooding_clients_leave_room_for_everyone_else() -> None:
    # Four clients would fill the table with fixed shares of 512; with shares that
    # shrink as it fills, each later one gets less, and a newcomer still gets more
    # than a floor's worth after eight of them.
    held = greedy(8)
    assert held[:2] == [512] * 2
    assert all(later < earlier for earlier, later in itertools.pairwise(held[1:]))
    assert sum(held) < limits.MAX_FORWARDS
    assert limits.forward_share(sum(held)) > limits.FORWARDS_FLOOR
    # It takes many addresses together, each taking all it may, to fill the table.
    fill = next(n for n in range(1, 100) if sum(greedy(n)) == limits.MAX_FORWARDS)
    assert fill >= 12


# TCP connections: per address, in all, and who yields a slot

def test_tcp_per_client_limit() -> None:
    assert limits.tcp_admit({}, A, 0) == (True, None)
    assert limits.tcp_admit({A: 7}, A, 7) == (True, None)
    assert limits.tcp_admit({A: 8}, A, 8) == (False, None)
    assert limits.tcp_admit({A: 8}, B, 8) == (True, None)


def test_tcp_all_slots_taken_the_heaviest_address_yields() -> None:
    cap = limits.MAX_TCP_CLIENTS
    full = {bytes([10, 0, i // 256, i % 256]): 8 for i in range(cap // 8)}
    assert sum(full.values()) == cap
    admit, evict = limits.tcp_admit(full, C, cap)
    assert admit and evict in full
    # An address that holds as many as the heaviest but one: no slot back and forth.
    even = {A: 1, B: 2}
    assert limits.tcp_admit(even, C, cap) == (True, B)
    assert limits.tcp_admit(even, A, cap) == (False, None)
    assert limits.tcp_admit({A: 1, B: 1}, C, cap) == (False, None)
    assert limits.tcp_admit({A: 1}, A, cap) == (False, None)


# the server: names of other networks look like names nobody has

def query(name: str, qtype: int = wire.QTYPE_A, qid: int = 0x4242) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, wire.CLASS_IN)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server with networks app (10.0.0.0/24), secret (10.1.0.0/24) and internal
    inner (10.2.0.0/24); web and other on app, vault (alias safe) on secret, iso on
    inner. Its loop never runs: answer() and start_forward() are called directly."""
    records = {
        "networks": [
            {"id": "n-app", "name": "app", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1"},
            {"id": "n-sec", "name": "secret", "subnet": "10.1.0.0/24",
             "gateway": "10.1.0.1"},
            {"id": "n-in", "name": "inner", "subnet": "10.2.0.0/24", "gateway": "10.2.0.1",
             "internal": True},
        ],
        "containers": [
            {"id": "c1", "name": "web", "endpoints": [
                {"ip": "10.0.0.2", "network": "n-app", "names": ["web"]}]},
            {"id": "c2", "name": "other", "endpoints": [
                {"ip": "10.0.0.3", "network": "n-app", "names": ["other"]}]},
            {"id": "c3", "name": "vault", "endpoints": [
                {"ip": "10.1.0.2", "network": "n-sec", "names": ["vault", "safe"]}]},
            {"id": "c4", "name": "iso", "endpoints": [
                {"ip": "10.2.0.2", "network": "n-in", "names": ["iso"]}]},
        ],
    }
    (tmp_path / "dns.json").write_text(json.dumps(records))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    srv = Server(str(tmp_path), str(resolv))
    srv.view = load_view(str(tmp_path / "dns.json"))
    srv.upstreams = ["192.0.2.53"]
    try:
        yield srv
    finally:
        srv.poller.close()
        srv.control.close()
        os.close(srv.handoff_r)
        os.close(srv.handoff_w)


WEB = socket.inet_aton("10.0.0.2")
VAULT = socket.inet_aton("10.1.0.2")
ISO = socket.inet_aton("10.2.0.2")


def rcode(out: bytes | None) -> int | None:
    return None if out is None else out[3] & 0xF


def test_a_member_sees_the_names_of_its_network(server: Server) -> None:
    out, _ = server.answer(query("vault"), VAULT)
    assert rcode(out) == wire.NOERROR and out is not None and out.endswith(VAULT)
    assert rcode(server.answer(query("nothere.secret"), VAULT)[0]) == wire.NXDOMAIN


@pytest.mark.parametrize("name", ["vault", "safe", "VAULT", "vault.secret", "x.secret"])
def test_another_networks_names_are_forwarded_like_unknown_ones(
        server: Server, name: str) -> None:
    # None: not answered here, forwarded upstream, exactly as a name nobody has.
    assert server.answer(query("nobody-has-this"), WEB) == (None, None)
    assert server.answer(query("nobody.nonet"), WEB) == (None, None)
    assert server.answer(query(name), WEB) == (None, None)
    assert server.answer(query(name, wire.QTYPE_AAAA), WEB) == (None, None)


@pytest.mark.parametrize("name", ["vault", "web", "vault.secret", "web.app"])
def test_on_an_internal_network_they_are_refused_like_unknown_ones(
        server: Server, name: str) -> None:
    unknown, _ = server.answer(query("nobody-has-this"), ISO)
    out, _ = server.answer(query(name), ISO)
    assert unknown is not None and out is not None
    assert rcode(out) == wire.REFUSED
    assert out[:12] == unknown[:12]  # the same header: flags (no AA), counts


def test_reverse_names_of_portway_addresses_all_look_alike(server: Server) -> None:
    taken, _ = server.answer(query("2.0.1.10.in-addr.arpa", wire.QTYPE_PTR), WEB)
    free, _ = server.answer(query("99.0.1.10.in-addr.arpa", wire.QTYPE_PTR), WEB)
    assert rcode(taken) == rcode(free) == wire.NXDOMAIN


# the server: forwarded queries beyond a client's share get SERVFAIL at once

def test_a_client_over_its_share_gets_servfail_and_others_still_forward(
        server: Server) -> None:
    share = limits.FORWARDS_PER_CLIENT
    replies: dict[bytes, list[int]] = {WEB: [], VAULT: []}
    for i in range(share + 44):
        assert server.start_forward(query(f"n{i}.example"), WEB, lambda out: replies[WEB]
                                    .append(out[3] & 0xF))
    assert len(server.outbox) == share and server.forwarding == {WEB: share}
    assert replies[WEB] == [wire.SERVFAIL] * 44  # at once, not after a timeout
    assert server.start_forward(query("mine.example"), VAULT,
                                lambda out: replies[VAULT].append(out[3] & 0xF))
    assert server.forwarding == {WEB: share, VAULT: 1} and replies[VAULT] == []
    # One answered: WEB may forward one more.
    server._finish(server.outbox.pop(0))
    assert server.start_forward(query("again.example"), WEB, lambda out: None)
    assert server.forwarding[WEB] == share and server.forwarding_total == share + 1
    assert server.shed["forwards: over the client's share"] == 44
