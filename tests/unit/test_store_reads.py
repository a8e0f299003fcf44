"""SqliteStore keeps its last full list of containers and of endpoints while the database
stays as it was: a change through the store itself, through another connection (another
process: the Podman backend, a CLI's engine) or inside a transaction that is rolled back
is seen by the next read, and a caller that changes the list it got changes nothing
kept."""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from portway.model.types import Container, Endpoint, Network, Subnet
from portway.store.sqlite import SqliteStore


def container(cid: str, name: str) -> Container:
    return Container(id=cid, name=name, hostname=name, command=("sleep", "1"),
                     netns=f"/run/netns/pw-{cid[:12]}", network_mode="bridge")


def endpoint(eid: str, cid: str, address: str) -> Endpoint:
    return Endpoint(id=eid, container_id=cid, network_id="n" * 64, ifname="eth0",
                    host_ifname=f"pw{eid[:8]}",
                    addresses=(ipaddress.ip_interface(address),), mac="02:00:00:00:00:01")


def test_reads_follow_every_change(tmp_path: Path) -> None:
    path = str(tmp_path / "portway.db")
    store = SqliteStore(path)
    try:
        store.add_container(container("a" * 64, "web"))
        first = store.containers()
        assert [c.name for c in first] == ["web"] and store.containers() == first
        first.clear()  # the caller's list: nothing kept changes
        assert [c.name for c in store.containers()] == ["web"]
        store.update_container(replace(store.containers()[0], status="running"))
        assert store.containers()[0].status == "running"
        # Another connection, as another process would write.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("UPDATE containers SET name='api'")
        other.close()
        assert [c.name for c in store.containers()] == ["api"]
        # A transaction rolled back leaves what was there.
        with pytest.raises(RuntimeError), store.transaction():
            store.add_container(container("b" * 64, "db"))
            assert {c.name for c in store.containers()} == {"api", "db"}
            raise RuntimeError("undo")
        assert [c.name for c in store.containers()] == ["api"]
    finally:
        store.close()


def test_endpoint_reads_follow_every_change(tmp_path: Path) -> None:
    path = str(tmp_path / "portway.db")
    store = SqliteStore(path)
    try:
        store.add_network(Network("n" * 64, "app", (Subnet(
            ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_address("10.1.0.1")),), "br0"))
        store.add_container(container("a" * 64, "web"))
        assert store.endpoints() == []
        store.add_endpoint(endpoint("e" * 64, "a" * 64, "10.1.0.2/24"))
        assert [str(a) for e in store.endpoints() for a in e.addresses] == ["10.1.0.2/24"]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("UPDATE addresses SET address='10.1.0.3'")
        other.close()
        assert [str(a) for e in store.endpoints() for a in e.addresses] == ["10.1.0.3/24"]
        assert store.endpoints(container_id="a" * 64) == store.endpoints()
        store.delete_endpoint("e" * 64)
        assert store.endpoints() == []
    finally:
        store.close()


def test_a_network_is_parsed_again_only_when_its_row_changed(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "portway.db"))
    try:
        net = Network(id="n" * 64, name="app", driver="bridge", subnets=(Subnet(
            subnet=ipaddress.ip_network("10.1.0.0/24"),
            gateway=ipaddress.ip_address("10.1.0.1")),), bridge="pwbr-app")
        store.add_network(net)
        first = store.find_network("app")
        assert first == net
        assert store.find_network("n" * 64) is first  # the same row: kept as parsed
        store.set_network_options(net.id, {"com.docker.network.bridge.enable_icc": "false"})
        changed = store.find_network("app")
        assert changed is not None and changed is not first
        assert changed.options == {"com.docker.network.bridge.enable_icc": "false"}
        assert store.networks() == [changed]
        store.delete_network(net.id)
        assert store.find_network("app") is None and store.networks() == []
    finally:
        store.close()
