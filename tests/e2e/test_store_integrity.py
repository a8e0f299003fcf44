"""The state file: a corrupted or newer-schema file gives one clear line, not a crash."""

from __future__ import annotations

import sqlite3

from conftest import Sandbox


def test_corrupted_state_file(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.73.0.0/24")
    sb.pw("daemon", "stop")
    db = sb.state_dir / "portway.db"
    saved = db.read_bytes()
    for suffix in ("-wal", "-shm"):
        (sb.state_dir / f"portway.db{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    cp = sb.pw("ps", check=False)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    assert cp.stderr.count("\n") == 1 and "unreadable" in cp.stderr and "move it aside" in cp.stderr
    db.write_bytes(saved)  # back as it was, so the fixture can clean up through portway
    assert "app" in sb.pw("network", "ls").stdout


def test_newer_schema(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.74.0.0/24")
    sb.pw("daemon", "stop")
    con = sqlite3.connect(sb.state_dir / "portway.db")
    version = con.execute("PRAGMA user_version").fetchone()[0]
    con.execute("PRAGMA user_version = 99")
    con.commit()
    cp = sb.pw("network", "ls", check=False)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    assert cp.stderr.count("\n") == 1 and "newer than this portway" in cp.stderr
    con.execute(f"PRAGMA user_version = {version}")
    con.commit()
    con.close()
    assert "app" in sb.pw("network", "ls").stdout
