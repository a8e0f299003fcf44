"""When the CLI may answer trace and show without portwayd: the store is only read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from portway.engine.observer import answer, portway_has_nothing


def store(path: Path, networks: int, containers: int) -> None:
    con = sqlite3.connect(path / "portway.db")
    con.execute("CREATE TABLE networks (id TEXT)")
    con.execute("CREATE TABLE containers (id TEXT)")
    con.executemany("INSERT INTO networks VALUES (?)", [(str(n),) for n in range(networks)])
    con.executemany("INSERT INTO containers VALUES (?)", [(str(n),) for n in range(containers)])
    con.commit()
    con.close()


def test_nothing_without_a_store_or_with_an_empty_one(tmp_path: Path) -> None:
    assert portway_has_nothing(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()  # not made by looking
    store(tmp_path, 0, 0)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert portway_has_nothing(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_networks_or_containers_need_the_daemon(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    store(tmp_path / "a", 1, 0)
    assert not portway_has_nothing(str(tmp_path / "a"))
    assert answer(str(tmp_path / "a"), None, {"op": "show"}) == {"need_daemon": True}
    (tmp_path / "b").mkdir()
    store(tmp_path / "b", 0, 1)
    assert not portway_has_nothing(str(tmp_path / "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "portway.db").write_text("not a database")
    assert not portway_has_nothing(str(tmp_path / "c"))  # unreadable: ask the daemon


def test_only_reading_operations(tmp_path: Path) -> None:
    reply = answer(str(tmp_path), None, {"op": "network_rm", "args": {"refs": ["x"]}})
    assert reply["ok"] is False and reply["exit_code"] == 2
    assert "read-only" in reply["error"]

