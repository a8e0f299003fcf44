"""Overlay networks on two hosts that share one store, with fakes of each host's kernel
(tests/unit/fakes.py) and an in-memory etcd that keeps etcd's semantics where portway
relies on them: a transaction's compare on create revisions, leases that take their
keys with them. What is checked is the engine's: one name and one address per
cluster, whichever host asks first and whatever it has seen."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from fakes import FakeDriver, World, fake_host

from portway.core import listing, names, overlay
from portway.core.overlay import Member
from portway.engine import cluster as cluster_module
from portway.engine import view
from portway.engine.cluster import CONTENDED_FOR, Cluster
from portway.engine.context import Host
from portway.engine.dns import DnsServer
from portway.engine.dns import records as dns_records
from portway.errors import Conflict, PortwayError
from portway.model.types import Network
from portway.store.etcd import KV, ClusterUnreachable, Etcd, Event, StoreRefused, Watch


class MemoryEtcd:
    """Etcd's keys, revisions and leases, in memory (the methods portway calls)."""

    def __init__(self) -> None:
        self.kv: dict[str, tuple[str, int]] = {}  # key -> (value, lease)
        self.mods: dict[str, int] = {}  # key -> the revision it was last written at
        self.revision = 1
        self.leases: set[int] = set()
        self.granted = 0
        self.down = False
        self.closed = False  # (Etcd.close: a client that sends nothing more)

    def _up(self) -> None:
        if self.down or self.closed:
            raise ClusterUnreachable("cannot reach the cluster store etcd://fake:2379")

    def close(self) -> None:
        self.closed = True

    def url(self) -> str:
        return "etcd://fake:2379"

    def range(self, prefix: str) -> tuple[list[KV], int]:
        self._up()
        return [KV(k, v, 0, lease) for k, (v, lease) in sorted(self.kv.items())
                if k.startswith(prefix)], self.revision

    def get(self, key: str) -> str | None:
        self._up()
        return self.kv[key][0] if key in self.kv else None

    def read(self, key: str) -> KV | None:
        self._up()
        return KV(key, self.kv[key][0], 0, self.kv[key][1]) if key in self.kv else None

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self._up()
        self.kv[key] = (value, lease)
        self.revision += 1
        self.mods[key] = self.revision

    def delete(self, *keys: str) -> None:
        self._up()
        for k in keys:
            self.kv.pop(k, None)
        self.revision += 1

    def delete_owned(self, owned: dict[str, str]) -> None:
        self._up()
        for k, v in owned.items():
            if k in self.kv and self.kv[k][0] == v:
                del self.kv[k]
        self.revision += 1

    def create_all(self, puts: dict[str, str], lease: int = 0,
                   deletes: tuple[str, ...] = (), present: tuple[str, ...] = ()) -> bool:
        self._up()
        if any(k in self.kv for k in puts) or any(k not in self.kv for k in present):
            return False
        self.revision += 1
        for k, v in puts.items():
            self.kv[k] = (v, lease)
            self.mods[k] = self.revision
        return True

    def delete_if_unchanged(self, prefix: str, revision: int, keys: tuple[str, ...]) -> bool:
        self._up()
        if any(self.mods.get(k, 0) > revision for k in self.kv if k.startswith(prefix)):
            return False
        for k in keys:
            self.kv.pop(k, None)
        self.revision += 1
        return True

    def put_if(self, expect: dict[str, str | None], puts: dict[str, str],
               lease: int = 0) -> bool:
        self._up()
        if any((self.kv[k][0] if k in self.kv else None) != v for k, v in expect.items()):
            return False
        self.revision += 1
        for k, v in puts.items():
            self.kv[k] = (v, lease)
            self.mods[k] = self.revision
        return True

    def grant(self, ttl: int) -> int:
        self._up()
        lease = self.granted + 100  # (each lease its own number, as etcd's)
        self.granted += 1
        self.leases.add(lease)
        return lease

    def revoke(self, lease: int) -> None:
        self._up()
        self.expire(lease)

    def keepalive(self, lease: int) -> int:
        self._up()
        return overlay.DEFAULT_TTL if lease in self.leases else -1

    def expire(self, lease: int) -> None:
        self.leases.discard(lease)
        self.kv = {k: (v, le) for k, (v, le) in self.kv.items() if le != lease}


class NoKernelCluster(Cluster):
    """The cluster service with its two kernel reads answered as a 1500-byte underlay
    with no VXLAN device yet (the fakes make no links)."""

    def underlay_mtu(self) -> int:
        return 1500

    def _device(self, net: Network) -> int | None:
        return None


def two_hosts(tmp_path: Path) -> tuple[MemoryEtcd, list[Host]]:
    etcd = MemoryEtcd()
    hosts = []
    for i in range(2):
        h, _w = fake_host(str(tmp_path / f"h{i}"), World())
        h.drivers["overlay"] = FakeDriver(_w)
        h.cluster = NoKernelCluster(h, None, cast(Etcd, etcd),  # type: ignore[arg-type]
                                    ipaddress.ip_address(f"192.0.2.{i + 1}"))
        h.cluster._join()
        hosts.append(h)
    return etcd, hosts


def test_a_network_made_on_one_host_is_every_hosts(tmp_path: Path) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert net.mtu == 1450 and net.options[overlay.VNI_OPTION] == str(overlay.FIRST_VNI)
    assert overlay.decode_network(etcd.kv[overlay.network_key(net.id)][0]) == net
    # B has not seen it yet, and asks for the same name: the store says no.
    with pytest.raises(Conflict, match="already exists in the cluster"):
        b.networks.create("ov", driver="overlay", subnet="10.201.0.0/24")
    assert b.store.networks() == []
    # B sees it (the watch's list), and makes it here with the same id and VNI.
    kvs, rev = etcd.range(overlay.PREFIX)
    assert b.cluster is not None
    b.cluster._snapshot(kvs, rev)
    assert [n.id for n in b.store.networks()] == [net.id]
    # A second network gets the next VNI.
    other = b.networks.create("ov2", driver="overlay", subnet="10.202.0.0/24")
    assert other.options[overlay.VNI_OPTION] == str(overlay.FIRST_VNI + 1)


def test_no_address_is_handed_out_twice(tmp_path: Path) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
    # B has not seen on-a's endpoint: it tries 10.200.0.2 first, the transaction fails,
    # and it takes the next address.
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    addresses = {h.store.endpoints()[0].address for h in (a, b)}
    assert addresses == {ipaddress.ip_address("10.200.0.2"),
                         ipaddress.ip_address("10.200.0.3")}
    held = {k.rsplit("/", 1)[1]: v for k, (v, _l) in etcd.kv.items()
            if k.startswith(overlay.address_key(net.id))}
    assert set(held) == {"10.200.0.2", "10.200.0.3"}
    # Asked for by address: one clear refusal, nothing recorded.
    with pytest.raises(Conflict, match="already in use on network ov"):
        b.containers.run(["sleep", "1"], name="dup", networks=["ov"],
                         ip="10.200.0.2", detach=True)
    assert len(b.store.endpoints()) == 1


def test_a_released_endpoint_and_a_dead_hosts_go_from_the_store(tmp_path: Path) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    a.containers.rm(["on-a"], force=True)
    assert [k for k in etcd.kv if k.startswith(overlay.address_key(net.id))] == \
        [overlay.address_key(net.id, ipaddress.ip_address("10.200.0.3"))]
    # B's lease expires: its endpoint and address go; A no longer sees on-b by name.
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert [r["name"] for r in a.cluster.remote_records()] == ["on-b"]
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert a.cluster.remote_records() == []
    assert not [k for k in etcd.kv if k.startswith(overlay.address_key(net.id))]
    # A takes on-b's address meanwhile; B comes back (a new lease): on-b is not
    # registered again over A's claim, and its removal leaves A's claim alone.
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.3",
                     detach=True)
    b.cluster._join()
    held = overlay.address_key(net.id, ipaddress.ip_address("10.200.0.3"))
    taker = a.store.endpoints()[0].id
    assert etcd.kv[held][0] == taker
    b.containers.rm(["on-b"], force=True)
    assert etcd.kv[held][0] == taker


def test_an_unreachable_store_changes_nothing(tmp_path: Path) -> None:
    etcd, (a, _b) = two_hosts(tmp_path)
    etcd.down = True
    with pytest.raises(ClusterUnreachable, match="cannot reach the cluster store"):
        a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.store.networks() == []
    etcd.down = False
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    etcd.down = True
    with pytest.raises(ClusterUnreachable):
        a.containers.run(["sleep", "1"], name="c", networks=["ov"], detach=True)
    assert a.store.endpoints() == [] and a.store.find_container("c") is None


class CountingEtcd(MemoryEtcd):
    def __init__(self) -> None:
        super().__init__()
        self.ranges = 0

    def range(self, prefix: str) -> tuple[list[KV], int]:
        self.ranges += 1
        return super().range(prefix)


def test_this_hosts_own_changes_cost_no_pass_over_the_others(tmp_path: Path) -> None:
    """With 1,000 endpoints of other hosts in the view, this host's own run -d must not
    make the converge thread go over them all (to hash them) nor the periodic check of
    its own records list them all from etcd, both under the engine's lock."""
    etcd, (a, b) = two_hosts(tmp_path)
    counting = CountingEtcd()
    counting.kv, counting.leases = etcd.kv, etcd.leases
    assert a.cluster is not None and b.cluster is not None
    a.cluster.etcd = cast(Etcd, counting)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    a.cluster.watch.relists = 1
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.cluster._dirty.clear()
    a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
    mine = overlay.endpoint_key(net.id, a.store.endpoints()[0].id)
    a.cluster._event(Event("put", mine, etcd.kv[mine][0], etcd.revision))
    assert not a.cluster._dirty.is_set()  # nothing of the others changed
    theirs = overlay.endpoint_key(net.id, b.store.endpoints()[0].id)
    a.cluster._event(Event("put", theirs, etcd.kv[theirs][0], etcd.revision))
    assert not a.cluster._dirty.is_set()  # the same record again (a new lease)
    a.cluster._event(Event("delete", theirs, "", etcd.revision))
    assert a.cluster._dirty.is_set()
    a.cluster.converge()  # (names follow the entries: served as last programmed)
    assert a.cluster.remote_records() == []
    counting.ranges = 0
    a.cluster.reconcile_own()
    assert counting.ranges == 0
    # What it is for still holds: a record of its own gone from the store comes back,
    # and one it no longer has goes.
    del etcd.kv[mine]
    a.cluster._event(Event("delete", mine, "", etcd.revision))
    a.cluster.reconcile_own()
    assert mine in etcd.kv
    a.cluster._event(Event("put", mine, etcd.kv[mine][0], etcd.revision))
    a.store.delete_endpoint(a.store.endpoints()[0].id)
    a.cluster.reconcile_own()
    assert mine not in etcd.kv


def test_a_container_whose_name_was_taken_while_away_says_so_and_is_claimed_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.cluster.watch.relists = 1
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    on_b = b.store.endpoints()[0]
    # B is away past its lease; A runs a container of on-b's name meanwhile.
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="on-b", networks=["ov"], ip="10.200.0.77",
                     detach=True)
    capsys.readouterr()
    b.cluster._join()
    # Not registered (a name cannot be picked anew), and B says so: one log line,
    # inspect's network entry, ps's status; its address is kept.
    held = overlay.container_name_key(net.id, "on-b")
    assert etcd.kv[held][0] == a.store.endpoints()[0].id
    assert overlay.endpoint_key(net.id, on_b.id) not in etcd.kv
    err = capsys.readouterr().err
    assert err.count("on-b is not reachable from other hosts: its name on network ov was "
                     "taken by a container on host 192.0.2.1 while this host was away "
                     "from the cluster store") == 1, err
    shown = view.container(b, b.container("on-b"))
    assert "192.0.2.1" in shown["NetworkSettings"]["Networks"]["ov"]["ClusterConflict"]
    assert b.store.endpoints()[0] == on_b
    shown["State"].update(Running=True, StartedAt="2026-01-01T00:00:00Z")
    assert listing.status_text(shown, 1767225660.0) == \
        "Up About a minute (unreachable from other hosts)"
    # Checked again: still taken, nothing more in the log.
    b.cluster.reconcile_own()
    assert "on-b" not in capsys.readouterr().err
    # A's container goes: B claims on-b's address and name again by itself, says so,
    # and the conflict is gone from inspect.
    a.containers.rm(["on-b"], force=True)
    b.cluster.reconcile_own()
    assert etcd.kv[held][0] == on_b.id
    assert overlay.endpoint_key(net.id, on_b.id) in etcd.kv
    assert "on-b is registered again on network ov" in capsys.readouterr().err
    assert b.cluster.conflict(on_b.id) is None
    assert "ClusterConflict" not in view.container(b, b.container("on-b"))[
        "NetworkSettings"]["Networks"]["ov"]


def test_a_container_whose_address_was_taken_while_away_gets_a_free_one_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.cluster.watch.relists = 1
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    b.containers.run(["sleep", "1"], name="fixed", networks=["ov"], ip="10.200.0.50",
                     detach=True)
    on_b, fixed = (next(e for e in b.store.endpoints() if e.address == ipaddress.ip_address(x))
                   for x in ("10.200.0.2", "10.200.0.50"))
    # B is away past its lease; A takes both addresses meanwhile.
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    a.containers.run(["sleep", "1"], name="taker2", networks=["ov"], ip="10.200.0.50",
                     detach=True)
    capsys.readouterr()
    b.cluster._join()
    # on-b: the lowest free address, claimed in the store with its name and record
    # (under B's lease), recorded here with the MAC derived from it, its interface moved.
    moved = next(e for e in b.store.endpoints() if e.id == on_b.id)
    assert moved.address == ipaddress.ip_address("10.200.0.3"), moved
    assert moved.mac == "02:42:0a:c8:00:03" and moved.ifname == on_b.ifname
    assert etcd.kv[overlay.address_key(net.id, moved.address)] == (on_b.id, b.cluster.lease)
    assert etcd.kv[overlay.container_name_key(net.id, "on-b")][0] == on_b.id
    record = overlay.RemoteEndpoint.decode(etcd.kv[overlay.endpoint_key(net.id, on_b.id)][0])
    assert record.addresses == moved.addresses and record.mac == moved.mac
    assert etcd.kv[overlay.address_key(net.id, on_b.address)][0] != on_b.id
    err = capsys.readouterr().err
    why = ("its address 10.200.0.2 on network ov was claimed by a container on host "
           "192.0.2.1 while this host was away from the cluster store")
    assert err.count(f"on-b on network ov has a new address, 10.200.0.3 (was 10.200.0.2): "
                     f"{why}; reachable from other hosts again") == 1, err
    shown = view.container(b, b.container("on-b"))["NetworkSettings"]["Networks"]["ov"]
    assert "ClusterConflict" not in shown and shown["IPAddress"] == "10.200.0.3"
    assert shown["ClusterRenumbered"]["PreviousIPAddresses"] == ["10.200.0.2"]
    assert shown["ClusterRenumbered"]["Reason"] == why
    assert cast(World, b.sandbox_kernel.w).log.count("link.readdress") == 1
    # The host's running flows to the old address are forgotten (not NATed on to it).
    assert "fw.forget_connections 10.200.0.2" in cast(World, b.sandbox_kernel.w).log
    # fixed asked for its address (--ip): it keeps it and waits, as a name does.
    assert b.store.endpoints(container_id=fixed.container_id) == [fixed]
    assert "fixed is not reachable from other hosts: its address 10.200.0.50" in err, err
    assert "or run it without --ip for a new address" in err
    # Checked again: nothing more moves, nothing more in the log.
    b.cluster.reconcile_own()
    assert capsys.readouterr().err == ""
    assert next(e for e in b.store.endpoints() if e.id == on_b.id) == moved


@pytest.mark.parametrize("with_record", [False, True])
def test_a_renumbering_cut_short_by_a_daemon_restart_is_finished_by_the_next_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], with_record: bool) -> None:
    """Cut short after its claim of the new address and the name: with its record (a
    daemon killed between its transaction and its own store's commit), or without
    (an earlier portway's, which claimed before the move and wrote the record after)."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    (on_b,) = b.store.endpoints()
    c = b.container("on-b")
    # B is away past its lease; A takes on-b's address meanwhile.
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    # B's daemon comes back (a new lease) and starts to renumber on-b: its new address
    # and name (with_record: and record) are claimed in the store; the daemon is killed
    # before its own store has the new address.
    first = etcd.grant(3)
    b.cluster.lease = first
    with b.store.transaction():
        b.store.set_meta("cluster_lease", str(first))
    half = replace(on_b, addresses=(ipaddress.ip_interface("10.200.0.3/24"),),
                   mac=names.mac_for(ipaddress.ip_address("10.200.0.3")))
    claims = {overlay.address_key(net.id, half.address): on_b.id,
              overlay.container_name_key(net.id, c.name): on_b.id}
    if with_record:
        claims[overlay.endpoint_key(net.id, on_b.id)] = overlay.RemoteEndpoint(
            id=half.id, network_id=net.id, container_id=c.id, name=c.name, aliases=(),
            addresses=half.addresses, mac=half.mac,
            host=ipaddress.ip_address("192.0.2.2")).encode()
    assert etcd.create_all(claims, first)
    capsys.readouterr()
    # The next daemon: on-b gets its new address at once, nothing waits, and the store
    # holds exactly what this host has (the first daemon's claims went with its lease).
    b.cluster = NoKernelCluster(b, None, cast(Etcd, etcd),  # type: ignore[arg-type]
                                ipaddress.ip_address("192.0.2.2"))
    b.cluster._join()
    err = capsys.readouterr().err
    assert "could not be given a new address" not in err, err
    assert "not reachable" not in err, err
    (moved,) = b.store.endpoints()
    assert moved.address == ipaddress.ip_address("10.200.0.3"), moved
    assert b.cluster.conflict(on_b.id) is None
    mine = {k: v for k, v in etcd.kv.items() if v[0] == on_b.id}
    assert mine == {overlay.address_key(net.id, moved.address): (on_b.id, b.cluster.lease),
                    overlay.container_name_key(net.id, "on-b"): (on_b.id, b.cluster.lease)}
    record = overlay.RemoteEndpoint.decode(etcd.kv[overlay.endpoint_key(net.id, on_b.id)][0])
    assert record.addresses == moved.addresses and record.mac == moved.mac


def test_a_renumbered_container_whose_etc_files_cannot_be_written_leaves_the_join_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    for name in ("on-b", "other-b"):
        b.containers.run(["sleep", "1"], name=name, networks=["ov"], detach=True)
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)

    def full(path: str, files: dict[str, str]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(b.sandbox_kernel, "write_etc", full)
    capsys.readouterr()
    # B comes back: on-b is renumbered though its /etc/hosts cannot be written (said
    # so), and the join goes on: other-b registered, the lease remembered.
    b.cluster._join()
    err = capsys.readouterr().err
    assert "on-b on network ov has a new address" in err, err
    assert "cannot write the /etc files of on-b" in err and "No space left" in err, err
    assert b.cluster.state == "joined"
    assert b.store.get_meta("cluster_lease") == str(b.cluster.lease)
    other = b.store.endpoints(container_id=b.container("other-b").id)[0]
    assert etcd.kv[overlay.endpoint_key(other.network_id, other.id)][1] == b.cluster.lease


def test_a_renumbering_that_cannot_enter_the_namespace_leaves_the_join_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    for name in ("on-b", "other-b"):
        b.containers.run(["sleep", "1"], name=name, networks=["ov"], detach=True)
    on_b = b.store.endpoints(container_id=b.container("on-b").id)[0]
    # B is away past its lease (rebooted: its containers' namespaces are gone, the
    # daemon not started yet); A takes on-b's address meanwhile.
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)

    def gone(path: str) -> Any:
        raise FileNotFoundError(2, "No such file or directory", path)

    # (the live kernel's open: os.open of the namespace's path)
    monkeypatch.setattr(b.sandbox_kernel, "open", gone)
    capsys.readouterr()
    # B's daemon starts and joins: on-b cannot be renumbered (said so; its claim let go
    # again); the join goes on with the others, and the daemon comes up.
    b.cluster._join()
    err = capsys.readouterr().err
    assert "on-b could not be given a new address on network ov" in err, err
    assert "No such file or directory" in err, err
    assert b.cluster.state == "joined"
    assert b.store.get_meta("cluster_lease") == str(b.cluster.lease)
    assert b.cluster.conflict(on_b.id) is not None
    assert [k for k, v in etcd.kv.items() if v[0] == on_b.id] == []
    other = b.store.endpoints(container_id=b.container("other-b").id)[0]
    assert etcd.kv[overlay.endpoint_key(net.id, other.id)][1] == b.cluster.lease


class RecordingDns(DnsServer):
    """The DNS server's socket, as what is asked of it."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.published = 0

    def request(self, command: str) -> dict[str, Any]:
        self.asked.append(json.loads(command))
        return {"ok": True}

    def publish(self) -> None:
        self.published += 1


def test_another_hosts_container_reaches_the_dns_server_as_one_change(tmp_path: Path) -> None:
    """With 1,000 containers of other hosts, one that comes or goes anywhere must not make
    every host reload them all; and a re-list that finds the store as it was changes
    nothing."""
    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    a.networks.create("ov2", driver="overlay", subnet="10.201.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    dns = RecordingDns()
    a.dns = dns
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov", "ov2"], detach=True)
    dns.asked, dns.published = [], 0
    for key in sorted(k for k in etcd.kv if k.startswith(overlay.endpoint_key())):
        a.cluster._event(Event("put", key, etcd.kv[key][0], etcd.revision))
    a.cluster.converge()
    # One record for on-b, with its two networks' endpoints; nothing reloaded.
    assert dns.published == 0
    ((set_on_b,),) = [[d for d in dns.asked if d["cmd"] == "set"]]
    assert set_on_b["container"]["name"] == "on-b"
    assert len(set_on_b["container"]["endpoints"]) == 2
    # The store listed again, as it was: nothing to tell the DNS server.
    dns.asked = []
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert dns.asked == [] and dns.published == 0
    # on-b goes: forgotten, by its id.
    cid = b.store.endpoints()[0].container_id
    b.containers.rm(["on-b"], force=True)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert dns.asked == [{"cmd": "forget", "id": cid}] and dns.published == 0


def test_a_few_changed_endpoints_are_programmed_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another host's container that comes or goes is one FDB and one neighbour entry to
    add or remove, not a reading of the device's entries of every endpoint."""
    import portway.engine.cluster as cluster_module

    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    plans: list[overlay.ForwardingPlan] = []
    read: list[int] = []

    class Link:
        index = 7

    class Programmed(NoKernelCluster):
        def _device(self, net: Network) -> int | None:
            return 7

        def _compare(self, index: int, endpoints: Any) -> overlay.ForwardingPlan:
            read.append(len(endpoints))
            return overlay.plan_forwarding((set(), set()), (set(), set()))

    monkeypatch.setattr(cluster_module.links, "observe_link", lambda *_a: Link())
    monkeypatch.setattr(cluster_module.vxlan, "apply_forwarding",
                        lambda _ipr, _index, plan, _requests: plans.append(plan) or [])
    a.cluster.__class__ = Programmed
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert read == [0]  # (a re-list compares the device with the store in full)
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    (key,) = [k for k in etcd.kv if k.startswith(overlay.endpoint_key())]
    a.cluster._event(Event("put", key, etcd.kv[key][0], etcd.revision))
    a.cluster.converge()
    e = b.store.endpoints()[0]
    assert read == [0] and len(plans) == 1
    assert plans[0].add_fdb == (overlay.Fdb(e.mac.lower(), ipaddress.ip_address("192.0.2.2")),)
    assert plans[0].add_neigh == (overlay.Neighbour(e.address, e.mac.lower()),)
    assert plans[0].del_fdb == plans[0].del_neigh == ()
    a.cluster._event(Event("delete", key, "", etcd.revision))
    a.cluster.converge()
    assert read == [0] and len(plans) == 2
    assert plans[1].del_fdb == plans[0].add_fdb and plans[1].del_neigh == plans[0].add_neigh
    assert plans[1].add_fdb == plans[1].add_neigh == ()


def test_other_hosts_see_an_endpoint_only_once_its_plumbing_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The address, the name and the record other hosts program their entries and DNS
    records from are written in one transaction (one etcd write, one revision), once
    the veth is on the bridge and the process runs: a host that learns the name earlier
    sends its first SYN to an address that does not answer, and TCP resends it a second
    later. A set-up that fails writes nothing."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    world = driver.w
    seen: dict[str, tuple[list[str], list[str]]] = {}
    step = world.step

    def watched(name: str) -> None:
        seen[name.split(" ")[0]] = (
            [k for k in etcd.kv if k.startswith(overlay.address_key(net.id))],
            [k for k in etcd.kv if k.startswith(overlay.endpoint_key())])
        step(name)

    monkeypatch.setattr(world, "step", watched)
    revision = etcd.revision
    a.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
    assert etcd.revision == revision + 1  # one write
    e = a.store.endpoints()[0]
    assert seen["bridge.attach"] == ([], [])
    assert seen["process.spawn"] == ([], [])
    assert {overlay.address_key(net.id, e.address),
            overlay.container_name_key(net.id, "web"),
            overlay.endpoint_key(net.id, e.id)} <= set(etcd.kv)
    assert {etcd.kv[k][1] for k in (overlay.address_key(net.id, e.address),
                                    overlay.endpoint_key(net.id, e.id))} == {
        a.cluster.lease}
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert [r["name"] for r in b.cluster.remote_records()] == ["web"]
    # connect: the same.
    a.networks.create("ov2", driver="overlay", subnet="10.201.0.0/24")
    revision = etcd.revision
    a.containers.connect("ov2", "web")
    assert etcd.revision == revision + 1
    e2 = next(x for x in a.store.endpoints() if x.network_id != net.id)
    assert seen["bridge.attach"][1] == [overlay.endpoint_key(net.id, e.id)]
    assert overlay.endpoint_key(e2.network_id, e2.id) in etcd.kv
    # A container on both networks: one write for both endpoints.
    revision = etcd.revision
    a.containers.run(["sleep", "1"], name="both", networks=["ov", "ov2"], detach=True)
    assert etcd.revision == revision + 1
    assert len([k for k in etcd.kv if k.startswith(overlay.endpoint_key())]) == 4
    # A set-up that fails: nothing written, nothing left reserved.
    world.fail_at.add("process.spawn")
    before = dict(etcd.kv)
    with pytest.raises(PortwayError):
        a.containers.run(["sleep", "1"], name="fails", networks=["ov"], detach=True)
    assert etcd.kv == before
    assert a.cluster._unpublished == {} and a.cluster._unclaimed == set()


class LeasedEtcd(MemoryEtcd):
    """Refuses writes under a lease it does not know, as etcd does."""

    def _leased(self, lease: int) -> None:
        if lease and lease not in self.leases:
            raise StoreRefused("etcdserver: requested lease not found")

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self._leased(lease)
        super().put(key, value, lease)

    def create_all(self, puts: dict[str, str], lease: int = 0,
                   deletes: tuple[str, ...] = (), present: tuple[str, ...] = ()) -> bool:
        self._leased(lease)
        return super().create_all(puts, lease, deletes, present)

    def put_if(self, expect: dict[str, str | None], puts: dict[str, str],
               lease: int = 0) -> bool:
        self._leased(lease)
        return super().put_if(expect, puts, lease)


def test_a_pass_that_read_a_container_before_its_renumbering_does_not_mark_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The periodic check finds on-b unregistered (B's lease ran out unnoticed), and its
    address taken: the renumbering's claim finds the lease gone and joins again, and that
    join renumbers on-b. The check, which read on-b before, must not then mark it as not
    reachable (inspect showed ClusterConflict until the next check)."""
    etcd, (a, b) = two_hosts(tmp_path)
    leased = LeasedEtcd()
    leased.kv, leased.leases, leased.granted = etcd.kv, etcd.leases, etcd.granted
    assert a.cluster is not None and b.cluster is not None
    a.cluster.etcd = b.cluster.etcd = cast(Etcd, leased)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    b.cluster._snapshot(*leased.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    (on_b,) = b.store.endpoints()
    leased.expire(b.cluster.lease)  # (B has not noticed: its lease number is kept)
    a.cluster._snapshot(*leased.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    b.cluster.watch.relists = 1
    b.cluster._snapshot(*leased.range(overlay.PREFIX))
    capsys.readouterr()
    b.cluster.reconcile_own()
    (moved,) = b.store.endpoints()
    assert moved.address != on_b.address
    err = capsys.readouterr().err
    assert b.cluster.conflict(on_b.id) is None, err
    assert err.count("on-b on network ov has a new address") == 1, err
    assert "could not be given a new address" not in err and "not reachable" not in err
    shown = view.container(b, b.container("on-b"))["NetworkSettings"]["Networks"]["ov"]
    assert "ClusterConflict" not in shown
    assert shown["IPAddress"] == str(moved.address)
    # Its record and claims are what its host has.
    record = overlay.RemoteEndpoint.decode(leased.kv[overlay.endpoint_key(
        moved.network_id, on_b.id)][0])
    assert record.addresses == moved.addresses
    mine = {k for k, v in leased.kv.items() if v[0] == on_b.id}
    assert mine == {overlay.address_key(moved.network_id, moved.address),
                    overlay.container_name_key(moved.network_id, "on-b")}


def test_a_name_of_another_host_is_served_only_once_its_entries_are_programmed(
        tmp_path: Path) -> None:
    """The watch sees on-b's record; until the converge thread has programmed its FDB and
    neighbour entries, no publish of this host's DNS records (a full one, made by any
    change of this host's own meanwhile, included) names it: a client that resolved it
    would send its ARP request or SYN into nothing, and resend it a second later."""
    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    (key,) = [k for k in etcd.kv if k.startswith(overlay.endpoint_key())]
    a.cluster._event(Event("put", key, etcd.kv[key][0], etcd.revision))
    assert [e.name for e in a.cluster.remote_endpoints(b.store.endpoints()[0].network_id)] \
        == ["on-b"]  # (seen)
    assert [c["name"] for c in dns_records(a)["containers"]] == []  # (not named yet)
    a.cluster.converge()
    assert [c["name"] for c in dns_records(a)["containers"]] == ["on-b"]
    a.cluster._event(Event("delete", key, "", etcd.revision))
    assert [c["name"] for c in dns_records(a)["containers"]] == ["on-b"]
    a.cluster.converge()
    assert dns_records(a)["containers"] == []


def test_a_relist_decodes_only_the_records_that_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch lists the store again at least every 30 s: with 1,000 endpoints of other
    hosts, decoding them all each time cost the daemon 0.14 s."""
    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    for name in ("one", "two"):
        b.containers.run(["sleep", "1"], name=name, networks=["ov"], detach=True)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    decoded: list[str | bytes] = []
    real = overlay.RemoteEndpoint.decode

    def counted(text: str | bytes) -> overlay.RemoteEndpoint:
        decoded.append(text)
        return real(text)

    monkeypatch.setattr(overlay.RemoteEndpoint, "decode", staticmethod(counted))
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert decoded == []
    assert sorted(r["name"] for r in a.cluster.remote_records()) == ["one", "two"]
    b.containers.rm(["two"], force=True)
    b.containers.run(["sleep", "1"], name="three", networks=["ov"], detach=True)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert len(decoded) == 1
    assert sorted(r["name"] for r in a.cluster.remote_records()) == ["one", "three"]


def test_a_relist_compares_the_kernel_with_the_store_outside_the_engines_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each re-list (at least every 30 s) reads the VXLAN device's entries and compares
    them with the store: with 1,000 endpoints of other hosts that held the engine's lock
    45-85 ms, and a run -d arriving then waited. The lock is taken only to apply the
    difference, and what changed meanwhile is not undone by it."""
    import portway.engine.cluster as cluster_module

    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    for name in ("one", "two"):
        b.containers.run(["sleep", "1"], name=name, networks=["ov"], detach=True)
    one, two = (b.store.endpoints(container_id=b.container(n).id)[0] for n in ("one", "two"))
    two_key = overlay.endpoint_key(two.network_id, two.id)

    class Link:
        index = 7

    free: list[bool] = []
    plans: list[overlay.ForwardingPlan] = []
    during: list[Any] = []

    def lock_free() -> bool:
        """Another thread (a run -d's) takes the engine's lock at once."""
        got: list[bool] = []

        def take() -> None:
            got.append(a.lock.acquire(timeout=0.2))
            if got[0]:
                a.lock.release()

        t = threading.Thread(target=take)
        t.start()
        t.join()
        return got[0]

    def observe(_ipr: Any, index: int, _requests: Any) -> tuple[set[Any], set[Any]]:
        free.append(lock_free())
        for act in during:
            act()
        return set(), set()

    def apply(_ipr: Any, _index: int, plan: overlay.ForwardingPlan, _r: Any) -> list[str]:
        free.append(lock_free())
        plans.append(plan)
        return []

    monkeypatch.setattr(cluster_module.links, "observe_link", lambda *_a: Link())
    monkeypatch.setattr(cluster_module.vxlan, "observe_forwarding", observe)
    monkeypatch.setattr(cluster_module.vxlan, "apply_forwarding", apply)
    a.cluster.__class__ = Cluster  # (the kernel's reads and writes: the ones above)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    # Read without the lock, applied with it: both endpoints' entries added.
    assert free == [True, False]
    assert {f.mac for f in plans[0].add_fdb} == {one.mac.lower(), two.mac.lower()}
    # two goes while a re-list reads the kernel (which has neither entry, say): the
    # difference, made from the view before, is not applied for two.
    free.clear()
    plans.clear()

    def two_goes() -> None:
        b.containers.rm(["two"], force=True)
        a.cluster._event(Event("delete", two_key, "", etcd.revision))

    during.append(two_goes)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert free == [True, False]
    assert [f.mac for f in plans[0].add_fdb] == [one.mac.lower()]
    assert [n.ip for n in plans[0].add_neigh] == [one.address]
    # Its removal follows as such (nothing there to remove: nothing fails).
    plans.clear()
    a.cluster.converge()
    assert [f.mac for f in plans[0].del_fdb] == [two.mac.lower()] and not plans[0].add_fdb
    # The device made anew meanwhile (whatever made it programmed it): nothing applied.
    during.clear()
    plans.clear()
    during.append(lambda: setattr(Link, "index", 8))
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert plans == []


def test_a_store_lost_before_the_record_fails_the_run_and_its_claim_goes_when_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd stops answering before the set-up's one transaction (address, name and
    record, written once the set-up is done). The run fails with one line and changes
    nothing here (not a container running that other hosts can neither reach nor
    resolve); what that transaction may have written (its answer lost) goes once the
    store answers."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    world = driver.w
    step = world.step

    def lost(name: str) -> None:
        if name.startswith("process.spawn"):
            etcd.down = True
        step(name)

    monkeypatch.setattr(world, "step", lost)
    before = dict(etcd.kv)
    with pytest.raises(ClusterUnreachable, match="cannot reach the cluster store"):
        a.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
    assert a.store.find_container("web") is None and a.store.endpoints() == []
    # The command it started is killed by its pid before the namespace goes (the
    # namespace's kill can miss a process just started).
    assert world.processes == {}
    assert "process.signal 9" in world.log
    assert world.log.index("process.signal 9") < world.log.index("netns.kill")
    assert a.cluster.state == "unreachable"
    assert etcd.kv == before
    etcd.down = False
    monkeypatch.setattr(world, "step", step)
    a.cluster.reconcile_own()
    assert etcd.kv == before
    # B may take the name and the address now; A runs web again as ever.
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="web", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    a.containers.run(["sleep", "1"], name="web2", networks=["ov"], detach=True)
    assert overlay.endpoint_key(net.id, a.store.endpoints()[0].id) in etcd.kv


def test_connect_fails_as_run_does_when_the_store_is_lost_before_the_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etcd, (a, _b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    a.networks.create("ov2", driver="overlay", subnet="10.201.0.0/24")
    a.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
    assert a.cluster is not None
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    step = driver.w.step

    def lost(name: str) -> None:
        if name.startswith("bridge.attach"):
            etcd.down = True
        step(name)

    monkeypatch.setattr(driver.w, "step", lost)
    before = dict(etcd.kv)
    with pytest.raises(ClusterUnreachable):
        a.containers.connect("ov2", "web")
    assert [e.network_id for e in a.store.endpoints()] == [a.network("ov").id]
    etcd.down = False
    a.cluster.reconcile_own()
    assert etcd.kv == before


def test_a_lease_lost_during_a_set_up_claims_its_endpoints_under_the_next_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container on two overlay networks: its lease runs out during its set-up. The
    join that follows (its transaction refused for the lease) registers this host's
    endpoints anew, but not the set-up's (nothing of them is in the store yet: their
    claims go with their records, once the set-up is done, under the new lease)."""
    etcd, (a, b) = two_hosts(tmp_path)
    leased = LeasedEtcd()
    leased.kv, leased.leases, leased.granted = etcd.kv, etcd.leases, etcd.granted
    assert a.cluster is not None and b.cluster is not None
    a.cluster.etcd = b.cluster.etcd = cast(Etcd, leased)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    a.networks.create("ov2", driver="overlay", subnet="10.201.0.0/24")
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    step = driver.w.step
    records: list[list[str]] = []

    def watched(name: str) -> None:
        if name.startswith("bridge.attach"):
            records.append([k for k in leased.kv if k.startswith(overlay.endpoint_key())])
            if len(records) == 1:
                assert a.cluster is not None
                leased.expire(a.cluster.lease)  # (unnoticed: its number is kept)
        step(name)

    monkeypatch.setattr(driver.w, "step", watched)
    lease = a.cluster.lease
    a.containers.run(["sleep", "1"], name="web", networks=["ov", "ov2"], detach=True)
    assert a.cluster.lease != lease
    assert records == [[], []]
    # Its two addresses and names claimed, its two records written: all under the new
    # lease.
    ids = {e.id for e in a.store.endpoints()}
    mine = {k: v for k, v in leased.kv.items() if v[0] in ids or
            (k.startswith(overlay.endpoint_key()) and k.rpartition("/")[2] in ids)}
    assert len(mine) == 6 and {v[1] for v in mine.values()} == {a.cluster.lease}

def test_a_renumbered_containers_new_record_is_written_once_its_interface_has_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renumbering (its address taken while this host was away) claims the new address
    and name with the record other hosts program their entries and DNS from, in one
    transaction, after it moves the interface to it, as a new container's claim follows
    its set-up."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    (on_b,) = b.store.endpoints()
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    world = cast(World, b.sandbox_kernel.w)
    step = world.step
    at_move: list[tuple[bool, bool]] = []
    key = overlay.endpoint_key(net.id, on_b.id)

    def watched(name: str) -> None:
        if name.startswith("link.readdress"):
            at_move.append((key in etcd.kv,
                            overlay.address_key(net.id, ipaddress.ip_address("10.200.0.3"))
                            in etcd.kv))
        step(name)

    monkeypatch.setattr(world, "step", watched)
    b.cluster._join()
    assert at_move == [(False, False)]  # (neither claimed nor shown yet)
    record = overlay.RemoteEndpoint.decode(etcd.kv[key][0])
    assert etcd.kv[overlay.address_key(net.id, ipaddress.ip_address("10.200.0.3"))] == (
        on_b.id, b.cluster.lease)
    assert [str(x.ip) for x in record.addresses] == ["10.200.0.3"]
    assert b.cluster.remote_endpoints(net.id) == [] and on_b.id in b.cluster.endpoints


def test_a_restarted_daemon_shows_no_other_host_a_container_that_ended_meanwhile(
        tmp_path: Path) -> None:
    """B's daemon is away past its lease, and one of its containers ends meanwhile. The
    next daemon joins (registering its endpoints again) before adopt finds that ended:
    registered, it would be programmed on every other host, then removed again."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    for name in ("ended", "alive"):
        b.containers.run(["sleep", "1"], name=name, networks=["ov"], detach=True)
    ended, alive = (b.store.endpoints(container_id=b.container(n).id)[0]
                    for n in ("ended", "alive"))
    etcd.expire(b.cluster.lease)
    del cast(World, b.sandbox_kernel.w).processes[b.container("ended").pid]  # (unseen)
    b.cluster = NoKernelCluster(b, None, cast(Etcd, etcd),  # type: ignore[arg-type]
                                ipaddress.ip_address("192.0.2.2"))
    b.cluster._join()
    assert overlay.endpoint_key(net.id, alive.id) in etcd.kv
    assert [k for k, v in etcd.kv.items() if ended.id in (v[0], k.rpartition("/")[2])] == []
    b.processes.adopt()
    assert b.container("ended").status == "exited" and b.store.endpoints(
        container_id=b.container("ended").id) == []
    assert [k for k, v in etcd.kv.items() if ended.id in (v[0], k.rpartition("/")[2])] == []


def test_a_set_up_whose_address_another_host_took_while_its_lease_was_gone_takes_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, but another host claims the address the set-up picked in the gap: the
    set-up's transaction finds it held, the set-up is undone and made again with the
    next free address, leaving the other host's claim alone."""
    etcd, (a, b) = two_hosts(tmp_path)
    leased = LeasedEtcd()
    leased.kv, leased.leases, leased.granted = etcd.kv, etcd.leases, etcd.granted
    assert a.cluster is not None and b.cluster is not None
    a.cluster.etcd = b.cluster.etcd = cast(Etcd, leased)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    a.networks.create("ov2", driver="overlay", subnet="10.201.0.0/24")
    b.cluster._snapshot(*leased.range(overlay.PREFIX))
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    step = driver.w.step
    attached: list[str] = []

    def watched(name: str) -> None:
        attached.append(name)
        if name.startswith("bridge.attach") and len(
                [n for n in attached if n.startswith("bridge.attach")]) == 1:
            assert a.cluster is not None
            leased.expire(a.cluster.lease)
            b.containers.run(["sleep", "1"], name="taker", networks=["ov"],
                             ip="10.200.0.2", detach=True)
        step(name)

    monkeypatch.setattr(driver.w, "step", watched)
    a.containers.run(["sleep", "1"], name="web", networks=["ov", "ov2"], detach=True)
    web = a.store.find_container("web")
    assert web is not None
    assert sorted(str(e.address) for e in a.store.endpoints()) == ["10.200.0.3",
                                                                    "10.201.0.2"]
    (taker,) = b.store.endpoints()
    held = {k: v[0] for k, v in leased.kv.items() if k.startswith(("/portway/ips/",
                                                                 "/portway/cnames/"))}
    assert held[overlay.address_key(taker.network_id, taker.address)] == taker.id
    assert held[overlay.container_name_key(taker.network_id, "taker")] == taker.id
    assert len(held) == 6
    assert a.cluster._unpublished == {} and a.cluster._unclaimed == set()

def test_start_after_stop_claims_anew_and_fails_whole_when_the_store_is_lost_midway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped container gives its address, name and record back; its start claims
    them anew, and the store lost before its record fails the start as it fails a run:
    the container stays stopped, nothing of it left in the store once etcd is back."""
    etcd, (a, _b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None
    a.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
    before_run = {k: v for k, v in etcd.kv.items() if "/endpoints/" not in k and
                  not k.startswith(("/portway/ips/", "/portway/cnames/"))}
    a.lifecycle.stop("web", 1)
    a.process_kernel.settle()  # type: ignore[attr-defined]
    assert etcd.kv == before_run
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    step = driver.w.step

    def lost(name: str) -> None:
        if name.startswith("process.spawn"):
            etcd.down = True
        step(name)

    monkeypatch.setattr(driver.w, "step", lost)
    with pytest.raises(ClusterUnreachable, match="cannot reach the cluster store"):
        a.lifecycle.start("web")
    assert a.container("web").status == "exited" and a.store.endpoints() == []
    etcd.down = False
    monkeypatch.setattr(driver.w, "step", step)
    a.cluster.reconcile_own()
    assert etcd.kv == before_run
    a.lifecycle.start("web")
    (e,) = a.store.endpoints()
    assert overlay.endpoint_key(net.id, e.id) in etcd.kv


def test_a_runtimes_sandbox_on_an_overlay_network_is_shown_once_attached_or_not_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Podman's setup (attach_sandbox): the record follows the attach, as run's does, and
    the store lost before it fails the setup whole; detach takes the record away."""
    from portway.engine.containers import Attachment
    from portway.model.types import Container

    etcd, (a, _b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None
    driver = a.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    driver.w.namespaces.add("/run/netns/theirs")
    c = Container(id="ab" * 32, name="pod", hostname="pod", command=(),
                  netns="/run/netns/theirs", status="running", runtime="podman")
    step = driver.w.step
    at_attach: list[list[str]] = []

    def lost(name: str) -> None:
        at_attach.append([k for k in etcd.kv if k.startswith(overlay.endpoint_key())])
        if name.startswith("bridge.attach"):
            etcd.down = True
        step(name)

    monkeypatch.setattr(driver.w, "step", lost)
    before = dict(etcd.kv)
    with pytest.raises(ClusterUnreachable):
        a.containers.attach_sandbox(c, [Attachment(net, ifname="eth0")], new=True)
    assert a.store.find_container("pod") is None and a.store.endpoints() == []
    etcd.down = False
    a.cluster.reconcile_own()
    assert etcd.kv == before
    monkeypatch.setattr(driver.w, "step", lambda name: (at_attach.append(
        [k for k in etcd.kv if k.startswith(overlay.endpoint_key())]), step(name)))
    at_attach.clear()
    (e,) = a.containers.attach_sandbox(c, [Attachment(net, ifname="eth0")], new=True)
    assert at_attach and all(seen == [] for seen in at_attach)
    assert overlay.endpoint_key(net.id, e.id) in etcd.kv
    a.containers.detach_sandbox(c, None)
    assert etcd.kv == before


def test_a_restart_policys_restart_shows_the_new_endpoint_once_it_runs(
        tmp_path: Path) -> None:
    """A container whose process ends gives its endpoint back (its record goes from every
    host); the restart its policy makes claims a new one, whose record is written once
    it runs again."""
    import time

    etcd, (a, _b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    a.containers.run(["false"], name="f", networks=["ov"], detach=True,
                     restart="on-failure:1")
    (first,) = a.store.endpoints()
    records = [k for k in etcd.kv if k.startswith(overlay.endpoint_key())]
    assert records == [overlay.endpoint_key(net.id, first.id)]
    c = a.container("f")
    a.process_kernel.exit(c.pid, 1)  # type: ignore[attr-defined]
    a.process_kernel.settle()  # type: ignore[attr-defined]
    assert a.container("f").status == "restarting"
    assert [k for k in etcd.kv if k.startswith(overlay.endpoint_key())] == []
    deadline = time.monotonic() + 5
    while a.container("f").status != "running":
        assert time.monotonic() < deadline, "not restarted"
        time.sleep(0.01)
    (second,) = a.store.endpoints()
    assert [k for k in etcd.kv if k.startswith(overlay.endpoint_key())] == \
        [overlay.endpoint_key(net.id, second.id)]
    assert a.cluster is not None and a.cluster._unpublished == {}


def test_the_firewall_knows_every_members_vtep(tmp_path: Path) -> None:
    """The set of the members' VTEPs (no container sends VXLAN to one) follows the
    store: filled on the re-list, a host added as it joins and gone as it leaves; a
    host in no cluster keeps it empty."""
    etcd, (a, b) = two_hosts(tmp_path)
    assert a.cluster is not None and b.cluster is not None
    fw = cast(Any, a.fw)
    assert fw.members == frozenset()  # nothing seen yet
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    both = {ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")}
    assert fw.members == both
    # B leaves (its lease expires): the event takes its address out of the set.
    key = overlay.host_key(b.cluster.advertise)
    etcd.expire(b.cluster.lease)
    a.cluster._event(Event("delete", key, "", 0))
    a.cluster.converge()
    assert fw.members == {ipaddress.ip_address("192.0.2.1")}
    # B (or any host) joins: in again.
    b.cluster._join()
    a.cluster._event(Event("put", key, etcd.kv[key][0], 0))
    a.cluster.converge()
    assert fw.members == both
    h, _w = fake_host(str(tmp_path / "alone"), World())
    assert cast(Any, h.fw).members == frozenset()


def test_the_first_look_at_the_store_replaces_the_members_kept_across_a_restart(
        tmp_path: Path) -> None:
    """A restarted daemon keeps the set it had (a host that left meanwhile in it); its
    first look at the store, at the cluster's start, replaces it with the store's."""
    _etcd, (a, _b) = two_hosts(tmp_path)
    assert a.cluster is not None
    fw = cast(Any, a.fw)
    gone = ipaddress.ip_address("192.0.2.9")
    fw.set_members({gone, a.cluster.advertise})  # (as adopt_members found it)
    a.cluster._first_members()
    assert fw.members == {ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")}


def test_a_name_or_address_another_host_has_is_refused_before_any_plumbing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim is made once the set-up is done, but a name (or an address asked for)
    this host's view already shows on another host is refused before it: nothing
    plumbed, nothing written."""
    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="api", networks=["ov"], detach=True)
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    driver = b.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    steps: list[str] = []
    step = driver.w.step

    def watched(name: str) -> None:
        steps.append(name)
        step(name)

    monkeypatch.setattr(driver.w, "step", watched)
    before = dict(etcd.kv)
    with pytest.raises(Conflict, match=r"container name 'api' is in use on network ov by "
                                       r"a container on host 192\.0\.2\.1"):
        b.containers.run(["sleep", "1"], name="api", networks=["ov"], detach=True)
    assert steps == [] and etcd.kv == before and b.store.endpoints() == []
    # So is an address asked for that the view shows another host's container has.
    with pytest.raises(Conflict, match=r"address 10\.200\.0\.2 is already in use on "
                                       r"network ov \(on another host\)"):
        b.containers.run(["sleep", "1"], name="mine", networks=["ov"], ip="10.200.0.2",
                         detach=True)
    assert steps == [] and etcd.kv == before and b.store.endpoints() == []


def test_a_renumbering_that_loses_its_new_address_to_another_host_moves_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another host claims the address a renumbering picked while the interface moves to
    it: the renumbering's transaction is refused, the move undone, and the endpoint
    moved again to the next free address, claimed with its record."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    (on_b,) = b.store.endpoints()
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    world = cast(World, b.sandbox_kernel.w)
    step = world.step
    moves: list[str] = []

    def watched(name: str) -> None:
        if name.startswith("link.readdress"):
            moves.append(name)
            if len(moves) == 1:  # A takes the address B's first move goes to
                a.containers.run(["sleep", "1"], name="quick", networks=["ov"],
                                 ip="10.200.0.3", detach=True)
        step(name)

    monkeypatch.setattr(world, "step", watched)
    b.cluster._join()
    assert len(moves) == 3, moves  # (to .3, back, to .4)
    (moved,) = b.store.endpoints()
    assert str(moved.address) == "10.200.0.4"
    held = {k.rpartition("/")[2]: v[0] for k, v in etcd.kv.items()
            if k.startswith(overlay.address_key(net.id))}
    assert held["10.200.0.4"] == on_b.id and held["10.200.0.3"] != on_b.id
    record = overlay.RemoteEndpoint.decode(etcd.kv[overlay.endpoint_key(net.id, on_b.id)][0])
    assert record.addresses == moved.addresses and b.cluster.conflict(on_b.id) is None


def test_a_host_back_and_a_run_elsewhere_that_claim_one_address_at_once_leave_one_holder(
        tmp_path: Path) -> None:
    """B comes back after its lease ran out and registers its container's address again
    just as A's run claims that address (free in the store meanwhile), between B's read
    of it and B's write: exactly one of them holds it. (B wrote it over A's claim: two
    running containers, on two hosts, with one address.) B, which read it free, reads
    again and gives its container a free one instead."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.cluster.watch.relists = 1
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    on_b = b.store.endpoints()[0]
    assert on_b.address == ipaddress.ip_address("10.200.0.2")
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))  # (A forgets on-b)
    key = overlay.address_key(net.id, on_b.address)
    read = etcd.get

    def get_then_a_runs(k: str) -> str | None:
        value = read(k)
        if k == key and value is None and not a.store.containers():
            a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
        return value

    etcd.get = get_then_a_runs  # type: ignore[method-assign]
    b.cluster._join()
    etcd.get = read  # type: ignore[method-assign]
    on_a = a.store.endpoints()[0]
    assert on_a.address == on_b.address  # (A picked it: free, as A saw the store)
    assert etcd.kv[key][0] == on_a.id
    holders = [r for kv in etcd.range(overlay.endpoint_key(net.id, ""))[0]
               for r in [overlay.RemoteEndpoint.decode(kv.value)]
               if on_b.address in {x.ip for x in r.addresses}]
    assert [r.id for r in holders] == [on_a.id], holders
    moved = b.store.endpoints()[0]
    assert moved.id == on_b.id and moved.address == ipaddress.ip_address("10.200.0.3")
    assert etcd.kv[overlay.address_key(net.id, moved.address)][0] == on_b.id


def test_two_joins_at_once_after_a_lost_lease_leave_the_hosts_record_under_its_lease(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease runs out during a run: the run's claim is refused and joins again, and
    the membership thread (keepalive noticed) joins again too, at the same moment. The
    second to finish revoked the lease the other had just put this host's record under:
    the host was gone from the store (every other host dropped its VTEP from the members
    set, so their containers could send it VXLAN) until its next lost lease. One join is
    made; the other finds it made and leaves it."""
    etcd, (a, _b) = two_hosts(tmp_path)
    leased = LeasedEtcd()
    leased.kv, leased.leases, leased.granted = etcd.kv, etcd.leases, etcd.granted
    cluster = a.cluster
    assert cluster is not None
    cluster.etcd = cast(Etcd, leased)
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    host_key = overlay.host_key(cluster.advertise)
    leased.expire(cluster.lease)  # (unnoticed yet)
    m_granted, r_put, m_put = threading.Event(), threading.Event(), threading.Event()
    membership = threading.Thread(target=cluster._membership)
    grant, put, revoke = leased.grant, leased.put, leased.revoke

    def main() -> bool:
        return threading.current_thread() is threading.main_thread()

    def granting(ttl: int) -> int:
        if main() and not membership.is_alive():
            # The run's join: the keepalive notices the lease gone meanwhile, and the
            # membership thread joins, having granted its lease first.
            cluster._expired.set()
            membership.start()
            m_granted.wait(3)
            time.sleep(0.1)
        lease = grant(ttl)
        if not main():
            m_granted.set()
        return lease

    def putting(key: str, value: str, lease: int = 0) -> None:
        if key == host_key and not main():
            r_put.wait(3)  # (its record's write arrives after the run's)
        put(key, value, lease)
        if key == host_key:
            (r_put if main() else m_put).set()

    def revoking(lease: int) -> None:
        if main():
            m_put.wait(1.5)
        revoke(lease)

    monkeypatch.setattr(leased, "grant", granting)
    monkeypatch.setattr(leased, "put", putting)
    monkeypatch.setattr(leased, "revoke", revoking)
    try:
        a.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
        time.sleep(0.5)  # (the membership thread's join, once the run let go)
        with a.lock:
            pass
        time.sleep(0.2)
    finally:
        cluster._stop.set()
        if membership.is_alive():
            membership.join(5)
    assert cluster.lease in leased.leases
    assert host_key in leased.kv and leased.kv[host_key][1] == cluster.lease, leased.kv
    mine = [v for k, v in leased.kv.items() if "/192.0.2.1" not in k and
            (v[0] == a.store.endpoints()[0].id or k.endswith(a.store.endpoints()[0].id))]
    assert len(mine) == 3 and {v[1] for v in mine} == {cluster.lease}, mine
    assert cluster.state == "joined", cluster.last_error


def test_a_network_removed_while_another_host_sets_up_a_container_on_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A removes overlay network ov while B sets up a container on it (its claim, with
    its record, comes once its plumbing is done, so A sees no user): B's claim finds the
    network gone and its run fails whole. (It succeeded: a container running on a
    network no host has any more, its address, name and record written under a network
    that is gone.)"""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    driver = b.drivers["overlay"]
    assert isinstance(driver, FakeDriver)
    step = driver.w.step

    def removed_meanwhile(name: str) -> None:
        if name.startswith("bridge.attach") and a.store.networks():
            a.networks.remove(["ov"])
        step(name)

    monkeypatch.setattr(driver.w, "step", removed_meanwhile)
    with pytest.raises(Conflict, match="network ov was removed meanwhile"):
        b.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
    assert b.store.containers() == [] and b.store.endpoints() == []
    assert [k for k in etcd.kv if net.id in k] == []


def test_a_network_removed_as_another_host_claims_on_it_is_refused(tmp_path: Path) -> None:
    """B's run claims on ov between A's look for users of ov and A's removal of it: A's
    removal is refused, as it is when it sees B's container (it went ahead: B's
    container ran on a network gone from the store)."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    read = etcd.range

    def b_runs_after_the_read(prefix: str) -> tuple[list[KV], int]:
        out = read(prefix)
        if prefix == overlay.endpoint_key(net.id, "") and not b.store.containers():
            b.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
        return out

    a.cluster.etcd = cast(Etcd, type("E", (), {"__getattr__": lambda _s, n: getattr(
        etcd, n), "range": staticmethod(b_runs_after_the_read)})())
    with pytest.raises(Conflict, match=r"has containers attached on other hosts: web \(on "
                       r"192\.0\.2\.2\)"):
        a.networks.remove(["ov"])
    assert overlay.network_key(net.id) in etcd.kv
    assert [n.name for n in a.store.networks()] == ["ov"]


def test_a_host_back_after_its_network_was_removed_does_not_claim_on_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """B is away past its lease: A sees no container on ov and removes it, for every host.
    B back does not write its container's address, name and record under the network
    that is gone (it did: a network removed for every host with a container on it
    after all); the container is not reachable from other hosts, and B says why."""
    etcd, (a, b) = two_hosts(tmp_path)
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.cluster.watch.relists = 1
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    on_b = b.store.endpoints()[0]
    etcd.expire(b.cluster.lease)
    a.networks.remove(["ov"])
    capsys.readouterr()
    b.cluster._join()
    assert [k for k in etcd.kv if net.id in k] == []
    why = "its network ov was removed from the cluster while this host was away from " \
          "the cluster store"
    assert b.cluster.conflict(on_b.id) == why
    assert capsys.readouterr().err.count(f"on-b is not reachable from other hosts: {why}; "
                                         "disconnect it from that network") == 1
    b.cluster.reconcile_own()
    assert [k for k in etcd.kv if net.id in k] == [] and capsys.readouterr().err == ""


def test_a_join_whose_hosts_record_cannot_be_written_leaves_the_engine_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease is gone and the store grants a new one but will not take this host's
    record (it refuses writes, or stops answering): the membership thread's join waits
    for it (the client's retries, up to 6 s) without the engine's lock, so ps and
    inspect go on meanwhile. The join fails as a whole (the lease it was given is not
    kept, so the membership thread joins again); once the store takes writes, it does."""
    etcd, (a, _b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None
    host_key = overlay.host_key(cluster.advertise)
    lost = cluster.lease
    etcd.expire(lost)
    cluster._expired.set()
    writing, release = threading.Event(), threading.Event()
    put = etcd.put

    def refusing(key: str, value: str, lease: int = 0) -> None:
        if key == host_key:
            writing.set()
            release.wait(5)  # (the client's retries meanwhile)
            raise ClusterUnreachable("cannot reach the cluster store etcd://fake:2379 "
                                     "(fake:2379: etcdserver: no leader)")
        put(key, value, lease)

    monkeypatch.setattr(etcd, "put", refusing)
    failed: list[PortwayError] = []

    def join() -> None:
        try:
            cluster._join(lost=lost)
        except PortwayError as exc:
            failed.append(exc)

    joining = threading.Thread(target=join)
    joining.start()
    try:
        assert writing.wait(3)
        free = a.lock.acquire(timeout=0.5)
        if free:
            a.lock.release()
    finally:
        release.set()
        joining.join(5)
    assert free, "the join held the engine's lock while it waited for the store"
    assert [e.message for e in failed] == ["cannot reach the cluster store "
                                           "etcd://fake:2379 (fake:2379: etcdserver: "
                                           "no leader)"]
    assert cluster.lease == lost and cluster._expired.is_set()  # (joined again next)
    assert len(etcd.leases) == 1  # (the lease it was given is not left behind)
    monkeypatch.setattr(etcd, "put", put)
    cluster._join(lost=lost)
    assert cluster.lease != lost and etcd.kv[host_key][1] == cluster.lease
    assert cluster.state == "joined"


def test_addresses_lost_in_races_are_forgotten_once_expired_or_their_network_gone(
        tmp_path: Path) -> None:
    """What a set-up remembers of an address another host claimed first is kept for a
    while (CONTENDED_FOR), not for the daemon's life: expired entries go when the memory
    is read or written, and a network's go with it."""
    etcd, (a, b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None and b.cluster is not None
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    other = a.networks.create("ov2", driver="overlay", subnet="10.201.0.0/24")
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    ip = ipaddress.ip_address
    long_ago = time.monotonic() - CONTENDED_FOR - 1
    cluster._contended = {net.id: {ip("10.200.0.9"): long_ago},
                          other.id: {ip("10.201.0.9"): long_ago}}
    assert not cluster.address_taken(net.id, ip("10.200.0.5"))  # (read: pruned)
    assert net.id not in cluster._contended
    # A race lost on ov now (written): the expired entry of ov2 goes too.
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
    assert cluster._contended == {net.id: {ip("10.200.0.2"): pytest.approx(
        time.monotonic(), abs=5)}}
    # The network removed (its containers first): its memory goes with it, on the host
    # that removed it and on one that sees it go.
    a.containers.rm(["on-a"], force=True)
    b.containers.rm(["on-b"], force=True)
    b.cluster._contended = {net.id: {ip("10.200.0.7"): time.monotonic()}}
    a.networks.remove(["ov"])
    assert cluster._contended == {}
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert b.cluster._contended == {}


def test_a_removed_networks_change_counts_go_with_it(tmp_path: Path) -> None:
    """Per network, the view counts the changes of other hosts' endpoints on it (converge
    compares two numbers, not the entries). Those counts went with no network: a daemon
    that saw overlay networks made and removed for weeks kept one for each it ever saw.
    They go with the network now, on the host that removes it and on one that sees it go,
    while those of a network that stays are kept."""
    etcd, (a, b) = two_hosts(tmp_path)
    assert a.cluster is not None and b.cluster is not None
    hosts = {"a": (a, a.cluster), "b": (b, b.cluster)}

    def look() -> None:  # (each host's watch, listing the store)
        for _h, cluster in hosts.values():
            cluster._snapshot(*etcd.range(overlay.PREFIX))

    kept = a.networks.create("kept", driver="overlay", subnet="10.210.0.0/24")
    look()
    b.containers.run(["sleep", "1"], name="stays", networks=["kept"], detach=True)
    look()
    for i in range(3):
        net = a.networks.create(f"ov{i}", driver="overlay", subnet=f"10.20{i}.0.0/24")
        look()
        for name, (h, _cluster) in hosts.items():
            h.containers.run(["sleep", "1"], name=f"{name}{i}", networks=[net.name],
                             detach=True)
            look()
        assert all(net.id in cluster._versions for _h, cluster in hosts.values())
        for name, (h, _cluster) in hosts.items():
            h.containers.rm([f"{name}{i}"], force=True)
        look()
        a.networks.remove([net.name])
        look()
    assert set(a.cluster._versions) == {kept.id} and b.cluster._versions == {}
    assert set(a.cluster._programmed) <= {kept.id} and set(b.cluster._programmed) <= {kept.id}


def test_an_address_asked_for_that_a_race_lost_is_free_once_its_holder_is_gone(
        tmp_path: Path) -> None:
    """A set-up here lost 10.200.0.2 to another host's claim at the same moment, and took
    the next address; the other host's container is removed a moment later. --ip
    10.200.0.2 is then free, and given: the store is asked, not the memory of the race
    (which skips it for 10 s only where an address is picked). While the other host
    still holds it, it is refused."""
    etcd, (a, b) = two_hosts(tmp_path)
    assert a.cluster is not None and b.cluster is not None
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
    assert ipaddress.ip_address("10.200.0.2") in a.cluster._contended[net.id]
    with pytest.raises(Conflict, match=r"address 10\.200\.0\.2 is already in use"):
        a.containers.run(["sleep", "1"], name="asked", networks=["ov"],
                         ip="10.200.0.2", detach=True)
    b.containers.rm(["on-b"], force=True)
    # Picked, not asked for: still skipped (a view may not have a holder yet).
    assert a.cluster.address_taken(net.id, ipaddress.ip_address("10.200.0.2"))
    a.containers.run(["sleep", "1"], name="asked", networks=["ov"], ip="10.200.0.2",
                     detach=True)
    asked = a.container("asked")
    assert [str(e.address) for e in a.store.endpoints() if e.container_id == asked.id] \
        == ["10.200.0.2"]


@pytest.mark.parametrize("stalled", [False, True], ids=["written", "abandoned"])
def test_a_join_under_way_as_the_daemon_stops_writes_nothing_after_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stalled: bool) -> None:
    """The lease is gone and the membership thread joins again; this host's record is
    slow to be written (a store that stalls: the client retries for up to 6 s), and the
    daemon stops meanwhile. close returned after waiting 2 s for the thread, the write
    still under way: it landed after close, and the join revoked its lease later still
    (a daemon's stop raced its own writes to the store). close now waits for the joins'
    lock: written, the write is through 3 s in and the join revokes its lease (this
    host's record with it) before close returns; abandoned, the store holds the write
    past CLOSE_WAIT, and close returns then with the store's client closed, which sends
    nothing more. Either way nothing reaches the store after close returns, no lease is
    swapped in that no one keeps alive, no endpoint registered under it, and nothing is
    written to the local store the engine has closed (the thread raised there)."""
    etcd, (a, b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None and b.cluster is not None
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    a.containers.run(["sleep", "1"], name="web", networks=["ov"], detach=True)
    web = a.store.endpoints()[0].id
    host_key = overlay.host_key(cluster.advertise)
    lost = cluster.lease
    etcd.expire(lost)
    cluster._expired.set()
    writing, release, written = threading.Event(), threading.Event(), threading.Event()
    put = etcd.put

    def slow(key: str, value: str, lease: int = 0) -> None:
        if key == host_key:
            writing.set()
            release.wait(5)  # (the client's retries meanwhile)
        put(key, value, lease)
        if key == host_key:
            written.set()

    monkeypatch.setattr(etcd, "put", slow)
    if stalled:
        monkeypatch.setattr(cluster_module, "CLOSE_WAIT", 0.5)
    raised: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: raised.append(args.exc_value))
    membership = threading.Thread(target=cluster._membership)
    cluster._threads.append(membership)
    membership.start()
    try:
        assert writing.wait(3)
        if not stalled:
            threading.Timer(3, release.set).start()  # (past the 2 s close waited)
        cluster.close()  # (as the engine's close: the cluster first, then the rest)
        through = written.is_set()
        at_close = (etcd.revision, dict(etcd.kv), set(etcd.leases))
        with a.lock:
            a.closed = True
        a.store.close()
    finally:
        release.set()
        membership.join(5)
    assert not membership.is_alive() and raised == []
    assert through is not stalled, "close did not wait for the write" if not stalled \
        else "close waited past CLOSE_WAIT"
    assert (etcd.revision, etcd.kv, etcd.leases) == at_close, "written after close"
    assert cluster.lease == lost
    assert [k for k in etcd.kv if "/192.0.2.1" in k or k.endswith(web)] == []
    if not stalled:
        assert etcd.leases == {b.cluster.lease}, "a lease granted by the join is left"


def test_a_join_that_registers_as_the_daemon_stops_registers_no_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease is gone and a join registers this host's endpoints under its new one,
    holding the joins' lock, when the daemon stops. It went on registering every one of
    them (each a read of its keys and a transaction), while close waited for that lock,
    up to CLOSE_WAIT, sending to the store after the daemon stopped. It registers no
    more once the daemon stops, and the local store names the lease it took (the next
    daemon revokes that one once its own endpoints are under its new lease)."""
    etcd, (a, b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None and b.cluster is not None
    a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    for name in ("one", "two", "three"):
        a.containers.run(["sleep", "1"], name=name, networks=["ov"], detach=True)
    lost = cluster.lease
    etcd.expire(lost)
    registered: list[dict[str, str]] = []
    put_if = etcd.put_if

    def stopping(expect: dict[str, str | None], puts: dict[str, str],
                 lease: int = 0) -> bool:
        registered.append(puts)
        cluster.stop()  # (the daemon stops as the first endpoint is registered)
        return put_if(expect, puts, lease)

    monkeypatch.setattr(etcd, "put_if", stopping)
    cluster._join(lost=lost)
    assert len(registered) == 1, "registered after the daemon stopped"
    assert a.store.get_meta(cluster_module.LEASE_META) == str(cluster.lease) != str(lost)


def test_a_closed_store_client_sends_nothing_more() -> None:
    """Etcd.close (the cluster's close): a request under way that the store answers with
    an error (an election: "no leader") is not tried again, and no request after it is
    sent; each fails as unreachable at once, saying why."""
    etcd = Etcd((Member("192.0.2.1", 2379),))
    sent: list[str] = []

    class Client:  # (etcd3gw's, as far as Etcd calls it)
        def get_url(self, path: str) -> str:
            return path

        def post(self, url: str, json: dict[str, Any]) -> dict[str, Any]:
            sent.append(url)
            etcd.close()  # (the daemon stops while the store is asked)
            raise requests.ConnectionError("etcdserver: no leader")

    etcd._clients = [cast(Any, Client())]
    for call in (lambda: etcd.put("k", "v"), lambda: etcd.get("k")):
        with pytest.raises(ClusterUnreachable, match="client of the cluster store "
                           r"etcd://192\.0\.2\.1:2379 is closed \(the daemon stops\)"):
            call()
    assert sent == ["/kv/put"]


def test_a_watch_whose_list_is_under_way_as_the_daemon_stops_opens_no_stream() -> None:
    """The watch thread lists the store when the daemon stops (Cluster.close: the watch
    stopped, then the client closed); the list's answer comes after. The watch went on
    to open its stream from the listed revision (the stream is not sent through the
    client's rounds, which a closed client refuses), a request to the store after close:
    it opens none now."""
    etcd = Etcd((Member("192.0.2.1", 2379),))
    sent: list[str] = []
    listing_, answer = threading.Event(), threading.Event()

    class Session:
        def post(self, url: str, **_: Any) -> Any:
            sent.append(url)
            raise requests.ConnectionError("refused")  # (the stream ends: the caller lists)

    class Client:  # (etcd3gw's, as far as Etcd calls it)
        session = Session()

        def get_url(self, path: str) -> str:
            return path

        def post(self, url: str, json: dict[str, Any]) -> dict[str, Any]:
            sent.append(url)
            listing_.set()
            assert answer.wait(5)
            return {"header": {"revision": "7"}}

    etcd._clients = [cast(Any, Client())]
    watch = Watch(etcd, "/portway/", lambda kvs, revision: None, lambda event: None,
                  lambda message: None)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    assert listing_.wait(5)
    watch.stop()  # (Cluster.close: stop, then the client closed)
    etcd.close()
    answer.set()
    thread.join(5)
    assert not thread.is_alive()
    assert sent == ["/kv/range"]


def test_an_address_asked_for_that_a_race_lost_with_the_store_away_fails_whole(
        tmp_path: Path) -> None:
    """--ip with an address a set-up here lost in a race a moment ago is asked of the
    store; the store does not answer: one clear line, and nothing of the run is left
    (no container, no endpoint, nothing reserved)."""
    etcd, (a, b) = two_hosts(tmp_path)
    assert a.cluster is not None and b.cluster is not None
    net = a.networks.create("ov", driver="overlay", subnet="10.200.0.0/24")
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], detach=True)
    a.containers.run(["sleep", "1"], name="on-a", networks=["ov"], detach=True)
    assert ipaddress.ip_address("10.200.0.2") in a.cluster._contended[net.id]
    before = ({c.id for c in a.store.containers()}, {e.id for e in a.store.endpoints()})
    etcd.down = True
    with pytest.raises(PortwayError) as failed:
        a.containers.run(["sleep", "1"], name="asked", networks=["ov"],
                         ip="10.200.0.2", detach=True)
    assert "\n" not in failed.value.line() and "cluster store" in failed.value.line()
    etcd.down = False
    assert ({c.id for c in a.store.containers()},
            {e.id for e in a.store.endpoints()}) == before
    assert a.cluster._unpublished == {} and a.cluster._unclaimed == set()


def test_a_lease_that_runs_out_while_its_join_waits_for_the_engine_is_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The membership thread's join writes this host's record under a new lease, then
    waits for the engine's lock; nothing renews that lease meanwhile (the keepalive
    renews the one swapped in), and a wait past its TTL lets it run out, this host's
    record with it. The join then swapped a dead lease in and said joined: the host was
    missing from every other host's members set until the keepalive noticed. It now
    fails whole instead (the membership thread joins again)."""
    etcd, (a, _b) = two_hosts(tmp_path)
    leased = LeasedEtcd()
    leased.kv, leased.leases, leased.granted = etcd.kv, etcd.leases, etcd.granted
    cluster = a.cluster
    assert cluster is not None
    cluster.etcd = cast(Etcd, leased)
    host_key = overlay.host_key(cluster.advertise)
    lost = cluster.lease
    leased.expire(lost)
    cluster._expired.set()
    written = threading.Event()
    put = leased.put

    def putting(key: str, value: str, lease: int = 0) -> None:
        put(key, value, lease)
        if key == host_key:
            written.set()

    monkeypatch.setattr(leased, "put", putting)
    failed: list[PortwayError] = []

    def join() -> None:
        try:
            cluster._join(lost=lost)
        except PortwayError as exc:
            failed.append(exc)

    joining = threading.Thread(target=join)
    with a.lock:  # (a long command holds it)
        joining.start()
        assert written.wait(3)
        leased.expire(leased.kv[host_key][1])  # (its TTL passes meanwhile)
    joining.join(5)
    assert not joining.is_alive()
    if cluster.lease != lost:
        assert cluster.lease in leased.leases, "a lease that ran out was taken"
        assert leased.kv.get(host_key, ("", 0))[1] == cluster.lease
    else:
        assert failed and cluster._expired.is_set()  # (joined again next)
    cluster._join(lost=cluster.lease)
    assert cluster.lease in leased.leases and leased.kv[host_key][1] == cluster.lease
    assert cluster.state == "joined"


def test_an_ipv6_address_asked_for_that_a_race_lost_is_checked_and_claimed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--ip6 goes the way --ip does: an address lost in a race a moment ago is refused
    while the store has a holder for it (this host's view not showing one yet), given
    once the holder is gone; and where the store says free but another host claims it
    between that read and this host's claim, the claim's transaction refuses this one:
    one holder, one clear line, nothing of the refused run left."""
    etcd, (a, b) = two_hosts(tmp_path)
    assert a.cluster is not None and b.cluster is not None
    net = a.networks.create("ov", driver="overlay", subnet=["10.200.0.0/24", "fd00:200::/64"],
                            ipv6=True)
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    ip = ipaddress.ip_address
    b.containers.run(["sleep", "1"], name="on-b", networks=["ov"], ip6="fd00:200::9",
                     detach=True)
    a.cluster._contend(net.id, ip("fd00:200::9"))  # (lost to on-b; a's view lags)
    assert not a.cluster._in_view(net.id, ip("fd00:200::9"))
    with pytest.raises(Conflict, match=r"address fd00:200::9 is already in use"):
        a.containers.run(["sleep", "1"], name="asked", networks=["ov"],
                         ip6="fd00:200::9", detach=True)
    b.containers.rm(["on-b"], force=True)
    a.containers.run(["sleep", "1"], name="asked", networks=["ov"], ip6="fd00:200::9",
                     detach=True)
    asked = a.container("asked")
    assert [str(x.ip) for e in a.store.endpoints() if e.container_id == asked.id
            for x in e.addresses if x.ip.version == 6] == ["fd00:200::9"]

    # Free as read, claimed by b before a's claim: b's stays, a's run fails whole.
    a.cluster._contend(net.id, ip("fd00:200::10"))
    key = overlay.address_key(net.id, ip("fd00:200::10"))
    get = etcd.get
    raced: list[str] = []

    def racing(k: str) -> str | None:
        value = get(k)
        if k == key and not raced:
            raced.append(k)
            b.containers.run(["sleep", "1"], name="fast", networks=["ov"],
                             ip6="fd00:200::10", detach=True)
        return value

    monkeypatch.setattr(etcd, "get", racing)
    before = ({c.id for c in a.store.containers()}, {e.id for e in a.store.endpoints()})
    with pytest.raises(Conflict) as lost:
        a.containers.run(["sleep", "1"], name="slow", networks=["ov"],
                         ip6="fd00:200::10", detach=True)
    assert raced and lost.value.line() == (
        "address fd00:200::10 is already in use on network ov (on another host); "
        "pick another address, or omit it")
    fast = b.container("fast")
    assert etcd.kv[key][0] == next(e.id for e in b.store.endpoints()
                                   if e.container_id == fast.id)
    assert ({c.id for c in a.store.containers()},
            {e.id for e in a.store.endpoints()}) == before
    assert a.cluster._unpublished == {} and a.cluster._unclaimed == set()


def test_a_runs_join_under_the_engines_lock_and_the_membership_threads_do_not_deadlock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The membership thread's join holds the joins' lock while its record is written
    (slowly), and a run whose claim was refused joins under the engine's lock, so waits
    for it: the membership thread's join then waits for the engine's lock. Both finish
    (every path takes the engine's lock before the joins', and nothing under the
    joins' lock alone takes the engine's): one lease kept, this host's record under it,
    the other lease revoked."""
    etcd, (a, b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None and b.cluster is not None
    host_key = overlay.host_key(cluster.advertise)
    lost = cluster.lease
    etcd.expire(lost)
    writing, release = threading.Event(), threading.Event()
    put = etcd.put

    def slow(key: str, value: str, lease: int = 0) -> None:
        if key == host_key and threading.current_thread() is not threading.main_thread():
            writing.set()
            release.wait(5)
        put(key, value, lease)

    monkeypatch.setattr(etcd, "put", slow)
    membership = threading.Thread(target=cluster._join, kwargs={"lost": lost},
                                  daemon=True)  # (deadlocked, it must not hold pytest)
    membership.start()
    assert writing.wait(3)
    done = threading.Event()

    def run_join() -> None:
        with a.lock:  # (a run's claim refused: it joins holding the engine's lock)
            threading.Timer(0.3, release.set).start()
            cluster._join(lost=lost)
        done.set()

    run = threading.Thread(target=run_join, daemon=True)
    run.start()
    run.join(5)
    membership.join(5)
    assert done.is_set() and not membership.is_alive(), "the two joins deadlocked"
    assert cluster.lease != lost and etcd.leases == {cluster.lease, b.cluster.lease}
    assert etcd.kv[host_key][1] == cluster.lease


@pytest.mark.parametrize("revoked", [True, False], ids=["revoked", "revoke-lost-too"])
def test_a_hosts_record_written_but_its_answer_lost_leaves_one_record_under_the_lease_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revoked: bool) -> None:
    """The store takes this host's record but its answer is lost: the join fails and
    revokes the lease it was given (the record goes with it), or cannot (the store
    away again: that lease runs out by itself). The next join writes the record under
    its own lease: one record, under the lease kept, which the old lease's expiry does
    not take."""
    etcd, (a, b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None and b.cluster is not None
    host_key = overlay.host_key(cluster.advertise)
    lost = cluster.lease
    etcd.expire(lost)
    cluster._expired.set()
    put, revoke = etcd.put, etcd.revoke

    def landed_unanswered(key: str, value: str, lease: int = 0) -> None:
        put(key, value, lease)
        if key == host_key:
            raise ClusterUnreachable("cannot reach the cluster store etcd://fake:2379 "
                                     "(fake:2379: timed out)")

    def unreachable(lease: int) -> None:
        raise ClusterUnreachable("cannot reach the cluster store etcd://fake:2379")

    monkeypatch.setattr(etcd, "put", landed_unanswered)
    if not revoked:
        monkeypatch.setattr(etcd, "revoke", unreachable)
    with pytest.raises(ClusterUnreachable):
        cluster._join(lost=lost)
    first = etcd.granted - 1 + 100  # (the lease that join was given: MemoryEtcd.grant)
    assert cluster.lease == lost and cluster._expired.is_set()
    assert (host_key in etcd.kv) is not revoked
    monkeypatch.setattr(etcd, "put", put)
    monkeypatch.setattr(etcd, "revoke", revoke)
    cluster._join(lost=lost)
    etcd.expire(first)  # (run out, if it was not revoked)
    assert sorted(k for k in etcd.kv if k.startswith(overlay.host_key(""))) == sorted(
        [overlay.host_key(b.cluster.advertise), host_key])
    assert etcd.kv[host_key][1] == cluster.lease and cluster.lease in etcd.leases
    assert etcd.leases == {cluster.lease, b.cluster.lease}


@pytest.mark.parametrize("seen", ["late put", "gone"])
def test_a_hosts_record_put_late_under_a_dead_lease_is_written_again_under_the_lease_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: str) -> None:
    """A write of this host's record that was abandoned (a join whose answer was lost
    and that moved on to a new lease; a stopped daemon's, mid-join) lands after the
    write of the join that holds: the record is under a lease nobody renews, and goes
    with it. Every other host then drops this host's VTEP until its next join, which
    nothing would start. The periodic check of its own records writes it again under
    the lease kept: before that lease runs out if the watch saw the late write, at once
    if it saw the record go; and with the view in step, it reads nothing."""
    etcd, (a, b) = two_hosts(tmp_path)
    cluster = a.cluster
    assert cluster is not None and b.cluster is not None
    key = overlay.host_key(cluster.advertise)
    value, lease = etcd.kv[key]
    assert lease == cluster.lease
    cluster.watch.relists = b.cluster.watch.relists = 1
    cluster._snapshot(*etcd.range(overlay.PREFIX))
    reads = []
    read = etcd.read

    def counted(k: str) -> KV | None:
        reads.append(k)
        return read(k)

    monkeypatch.setattr(etcd, "read", counted)
    cluster.reconcile_own()
    assert reads == []  # (the view has it as written: nothing asked of the store)
    # The abandoned join's write lands now, under its lease (alive until its TTL).
    abandoned = etcd.grant(overlay.DEFAULT_TTL)
    late = json.dumps({**json.loads(value), "joined": "2026-01-01T00:00:00Z"})
    etcd.put(key, late, abandoned)
    cluster._event(Event("put", key, late, etcd.revision, abandoned))
    if seen == "gone":
        etcd.expire(abandoned)  # (the record with it)
        cluster._event(Event("delete", key, "", etcd.revision))
        b.cluster._snapshot(*etcd.range(overlay.PREFIX))
        assert str(cluster.advertise) not in b.cluster.hosts
    cluster.reconcile_own()
    etcd.expire(abandoned)
    assert etcd.kv.get(key) == (value, cluster.lease)
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    assert str(cluster.advertise) in b.cluster.hosts
    assert reads == [key]  # (one read, as the view differed)
    # The watch sees the write: the next check reads nothing.
    cluster._event(Event("put", key, value, etcd.revision, cluster.lease))
    cluster.reconcile_own()
    assert reads == [key]
