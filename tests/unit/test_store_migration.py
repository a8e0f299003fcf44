"""A state file written by the previous release (store schema 3: one subnet per network,
one address per endpoint) opens in place with both families in its shape."""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from portway.model.types import Endpoint
from portway.store.sqlite import SCHEMA_VERSION, SqliteStore

DUMP = Path(__file__).parent / "data" / "state-v3.sql"


def test_a_schema_3_state_file_migrates_in_place(tmp_path: Path) -> None:
    db = tmp_path / "portway.db"
    con = sqlite3.connect(db)
    con.executescript(DUMP.read_text())
    con.close()
    store = SqliteStore(str(db))
    try:
        assert store.get_meta("instance") == "5eed0003"
        (net,) = store.networks()
        assert [(str(s.subnet), str(s.gateway), str(s.ip_range)) for s in net.subnets] == \
            [("10.77.0.0/24", "10.77.0.1", "10.77.0.128/25")]
        assert net.options == {"com.docker.network.bridge.enable_icc": "false"}
        (c,) = store.containers()
        assert c.name == "web" and c.cap_add == ("NET_ADMIN",) and c.user == "65534"
        # Its networks become its configuration, its lifecycle fields their defaults.
        (cfg,) = store.configs(container_id=c.id)
        assert (cfg.network_id, cfg.network_name, cfg.position, cfg.aliases) == \
            (net.id, "app", 0, ("www",))
        assert c.restart_policy == "no" and c.networked and c.error == ""
        (e,) = store.endpoints()
        assert [str(a) for a in e.addresses] == ["10.77.0.130/24"] and e.aliases == ("www",)
        # The old address is still reserved, in the new table.
        assert store.address_in_use(net.id, ipaddress.ip_address("10.77.0.130"))
        # A new container's endpoint with both families; each address reserved.
        other = replace(c, id="c2" * 32, name="two", netns="/run/netns/pw-c2c2c2c2c2c2")
        two = Endpoint(id="e2" * 32, container_id=other.id, network_id=net.id, ifname="eth0",
                       host_ifname="pwv-e2e2e2e2e2e",
                       addresses=(ipaddress.ip_interface("10.77.0.131/24"),
                                  ipaddress.ip_interface("fd00:77::131/64")),
                       mac="02:42:0a:4d:00:83")
        with store.transaction():
            store.add_container(other)
            store.add_endpoint(two)
        assert store.address_in_use(net.id, ipaddress.ip_address("fd00:77::131"))
        got = {e.id: e for e in store.endpoints()}
        assert got[two.id].addresses == two.addresses
        with store.transaction():
            store.delete_container(other.id)
        assert not store.address_in_use(net.id, ipaddress.ip_address("fd00:77::131"))
    finally:
        store.close()
    version = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 8


def _open_dump(tmp_path: Path, edit: str = "") -> SqliteStore:
    db = tmp_path / "portway.db"
    con = sqlite3.connect(db)
    con.executescript(DUMP.read_text() + edit)
    con.close()
    return SqliteStore(str(db))


def test_the_old_default_network_is_called_bridge(tmp_path: Path) -> None:
    # An earlier portway's default network, "portway", is Docker's "bridge" now: the row
    # is renamed in place (its bridge interface is named after its id and stays).
    store = _open_dump(tmp_path, "UPDATE networks SET name = 'portway';")
    try:
        (net,) = store.networks()
        assert net.name == "bridge" and net.bridge == "pwbr-a1a1a1a1a1"
        (e,) = store.endpoints()
        assert e.network_id == net.id and e.requested == ()  # no --ip recorded then
    finally:
        store.close()


@pytest.mark.parametrize("edit", [
    # Podman's network of that name is Podman's, not the default network.
    """UPDATE networks SET name = 'portway', labels = '{"io.podman.network": "true"}';""",
    # A network called bridge already: that one is the default network.
    """UPDATE networks SET name = 'portway';
    INSERT INTO networks SELECT 'b2' || substr(id, 3), 'bridge', driver, '10.99.0.0/24',
        '10.99.0.1', NULL, 0, 1500, '{}', '{}', 'pwbr-b2b2b2b2b2', created FROM networks;""",
])
def test_other_networks_called_portway_keep_their_name(tmp_path: Path, edit: str) -> None:
    store = _open_dump(tmp_path, edit)
    try:
        assert "portway" in {n.name for n in store.networks()}
    finally:
        store.close()


def test_requested_addresses_are_kept(tmp_path: Path) -> None:
    store = _open_dump(tmp_path)
    try:
        (net,) = store.networks()
        (c,) = store.containers()
        other = replace(c, id="c3" * 32, name="three", netns="/run/netns/pw-c3c3c3c3c3c3")
        asked = Endpoint(id="e3" * 32, container_id=other.id, network_id=net.id,
                         ifname="eth0", host_ifname="pwv-e3e3e3e3e3e",
                         addresses=(ipaddress.ip_interface("10.77.0.140/24"),),
                         mac="02:42:0a:4d:00:8c",
                         requested=(ipaddress.ip_address("10.77.0.140"),))
        with store.transaction():
            store.add_container(other)
            store.add_endpoint(asked)
        got = {e.id: e for e in store.endpoints()}
        assert got[asked.id] == asked
    finally:
        store.close()
