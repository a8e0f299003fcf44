"""The state file: a corrupted or newer-schema file gives one clear line, not a crash."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

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


WRITER = """
import ipaddress, sys
from portway.model.types import Container, Endpoint, Network, Subnet
from portway.store.sqlite import SqliteStore

store, who = SqliteStore(sys.argv[1]), int(sys.argv[2])
for i in range(100000):
    # One transaction: a network, a container and the endpoint joining them.
    tag = f"{who:02x}{i:06x}"
    net = Network(id=tag + "n" * 56, name=f"w{who}-{i}",
                  subnets=(Subnet(subnet=ipaddress.ip_network(f"10.{who}.{i % 256}.0/24"),
                                  gateway=ipaddress.ip_address(f"10.{who}.{i % 256}.1")),),
                  bridge=f"b{tag}")
    c = Container(id=tag + "c" * 56, name=f"c{who}-{i}", hostname="h", command=("true",),
                  netns="/run/netns/x")
    with store.transaction():
        store.add_network(net)
        store.add_container(c)
        store.add_endpoint(Endpoint(id=tag + "e" * 56, container_id=c.id, network_id=net.id,
                                    ifname="eth0", host_ifname=f"v{tag}",
                                    addresses=(ipaddress.ip_interface(
                                        f"10.{who}.{i % 256}.2/24"),),
                                    mac="02:42:00:00:00:02"))
    print(i, flush=True)
"""


def test_concurrent_writers_killed_mid_write(tmp_path: object) -> None:
    """Three processes write at once and are killed (SIGKILL) mid-stream: the file is
    intact, every committed transaction is whole, and none was half-applied."""
    path = str(tmp_path) + "/portway.db"  # type: ignore[operator]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(who)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for who in (1, 2, 3)]
    for w in writers:
        assert w.stdout is not None
        for _ in range(40):  # each has committed a few dozen transactions
            w.stdout.readline()
    for w in writers:
        w.send_signal(signal.SIGKILL)
    for w in writers:
        w.wait(timeout=10)
        assert w.stderr is not None
        assert "Traceback" not in w.stderr.read(), "a writer failed before it was killed"
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("networks", "containers", "endpoints")}
    assert counts["networks"] == counts["containers"] == counts["endpoints"] >= 120
    # Whole transactions, in order: every writer's rows are 0..n-1 with no gap.
    for who in (1, 2, 3):
        numbers = sorted(int(name.split("-")[1]) for (name,) in con.execute(
            "SELECT name FROM networks WHERE name LIKE ?", (f"w{who}-%",)))
        assert numbers == list(range(len(numbers)))
    orphans = con.execute("SELECT COUNT(*) FROM endpoints e LEFT JOIN networks n "
                          "ON e.network_id = n.id WHERE n.id IS NULL").fetchone()[0]
    assert orphans == 0
    con.close()
