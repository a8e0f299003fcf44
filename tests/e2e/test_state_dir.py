"""The state dir is trusted: the CLI obeys whatever answers on STATE/portwayd.sock and
the daemon trusts the database and files there. So a state dir, socket or database
that someone else could have written is refused, before anything connects or starts,
and what portway creates there is for its owner alone."""

from __future__ import annotations

import marshal
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Sandbox

NOBODY = 65534


class FakeDaemon:
    """Something that listens on STATE/portwayd.sock and answers every request as a
    daemon would, with what it likes: here, a container it made up."""

    def __init__(self, path: Path) -> None:
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self.requests.append(conn.makefile("rb").readline())
                conn.sendall(marshal.dumps({"ok": True, "result": [
                    {"Name": "planted-by-the-fake-daemon"}]}))

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def fake(sandbox: Sandbox) -> Iterator[FakeDaemon]:
    sandbox.state_dir.mkdir(mode=0o700)
    daemon = FakeDaemon(sandbox.state_dir / "portwayd.sock")
    try:
        yield daemon
    finally:
        daemon.close()
        (sandbox.state_dir / "portwayd.sock").unlink(missing_ok=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def started_for(state_dir: Path) -> list[int]:
    """Processes whose command line names the state dir (a daemon, a DNS server)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(state_dir).encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def refused(sb: Sandbox, *expected: str) -> None:
    """portway refuses with one line naming the problem and exit code 2, and nothing of
    portway is started or written in the state dir."""
    before = sorted(p.name for p in sb.state_dir.iterdir()) if sb.state_dir.exists() else []
    running = started_for(sb.state_dir)  # a DNS server outlives its daemon
    cp = sb.pw("network", "ls", check=False)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    assert cp.stderr.count("\n") == 1 and cp.stderr.startswith("portway: error: "), cp.stderr
    assert "portway trusts what it finds there" in cp.stderr
    for text in expected:
        assert text in cp.stderr, cp.stderr
    assert started_for(sb.state_dir) == running
    after = sorted(p.name for p in sb.state_dir.iterdir()) if sb.state_dir.exists() else []
    assert after == before


def test_state_dir_writable_by_others_is_refused(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.state_dir.mkdir()
    sb.state_dir.chmod(0o777)
    refused(sb, f"state dir {sb.state_dir} is writable by other users",
            f"chmod 700 {sb.state_dir}")
    sb.state_dir.chmod(0o770)  # the group alone is no better
    refused(sb, "is writable by other users")
    # Control: the same dir, the caller's alone, is used.
    sb.state_dir.chmod(0o700)
    assert sb.pw("network", "ls").returncode == 0
    assert (sb.state_dir / "portwayd.sock").exists()


def test_state_dir_of_another_user_is_refused(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.state_dir.mkdir(mode=0o700)
    os.chown(sb.state_dir, NOBODY, NOBODY)
    refused(sb, f"state dir {sb.state_dir} belongs to uid {NOBODY}")
    os.chown(sb.state_dir, 0, 0)


def test_state_dir_in_a_directory_others_can_write_is_refused(sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    sb = sandbox
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # anyone could rename the state dir away and put their own
    sb.state_dir = open_dir / "state"
    refused(sb, f"is inside {open_dir}, which other users can write to")
    assert not sb.state_dir.exists()  # not even created
    # Sticky (as /tmp is): others cannot replace what is not theirs; a state dir that
    # does not exist yet is made 0700, and used.
    open_dir.chmod(0o1777)
    assert sb.pw("network", "ls").returncode == 0
    assert mode(sb.state_dir) == 0o700
    sb.pw("daemon", "stop")
    # ...but one that another user made there first is theirs: refused.
    theirs = open_dir / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    sb.state_dir = theirs
    refused(sb, f"belongs to uid {NOBODY}")
    sb.state_dir = open_dir / "state"


def test_state_dir_in_a_directory_of_another_user_is_refused(sandbox: Sandbox,
                                                             tmp_path: Path) -> None:
    """sudo portway --state-dir ~alice/x: alice could swap x for a directory of hers."""
    sb = sandbox
    home = tmp_path / "alice"
    home.mkdir(mode=0o755)
    (home / "state").mkdir(mode=0o700)  # root's, but in alice's directory
    os.chown(home, NOBODY, NOBODY)
    sb.state_dir = home / "state"
    refused(sb, f"is inside {home}, which belongs to uid {NOBODY}")
    os.chown(home, 0, 0)  # control: root's home for it, and it is used
    assert sb.pw("network", "ls").returncode == 0


def test_symlink_of_another_user_on_the_way_is_refused(sandbox: Sandbox,
                                                       tmp_path: Path) -> None:
    sb = sandbox
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    # Control: a link of root's to a directory of root's leads to a usable state dir.
    sb.state_dir = link / "state"
    assert sb.pw("network", "ls").returncode == 0
    assert (real / "state" / "portwayd.sock").exists()
    sb.pw("daemon", "stop")
    # The same link, but another user's: they can point it anywhere.
    os.lchown(link, NOBODY, NOBODY)
    refused(sb, f"goes through the symbolic link {link}, which belongs to uid {NOBODY}")
    # A link to a directory others can write: followed, and its target checked.
    os.lchown(link, 0, 0)
    real.chmod(0o777)
    refused(sb, f"is inside {real}, which other users can write to")
    real.chmod(0o700)
    sb.state_dir = real / "state"  # for the fixture's clean-up


def test_socket_of_another_user_is_refused(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.state_dir.mkdir(mode=0o700)
    daemon = FakeDaemon(sb.state_dir / "portwayd.sock")
    try:
        os.chown(sb.state_dir / "portwayd.sock", NOBODY, NOBODY)
        refused(sb, f"portwayd's socket {sb.state_dir}/portwayd.sock belongs to uid {NOBODY}")
        os.chmod(sb.state_dir / "portwayd.sock", 0o777)
        os.chown(sb.state_dir / "portwayd.sock", 0, 0)
        refused(sb, "portwayd's socket", "is writable by other users")
        assert daemon.requests == []  # never even connected to
    finally:
        daemon.close()
        (sb.state_dir / "portwayd.sock").unlink()


def test_database_of_another_user_is_refused(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.96.0.0/24")
    sb.pw("daemon", "stop")
    db = sb.state_dir / "portway.db"
    os.chown(db, NOBODY, NOBODY)
    refused(sb, f"the database {db} belongs to uid {NOBODY}")
    # Control: the same database, root's again, is used as it was.
    os.chown(db, 0, 0)
    assert "app" in sb.pw("network", "ls").stdout


def test_file_of_another_user_in_the_state_dir_stops_the_daemon(sandbox: Sandbox) -> None:
    """The state dir was open to others once: what they left there may be planted (a
    dns.pid naming a process of their choice to signal, a link where a log goes)."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.96.0.0/24")
    sb.pw("daemon", "stop")
    planted = sb.state_dir / "dns.pid"
    os.chown(planted, NOBODY, NOBODY)
    running = started_for(sb.state_dir)  # the DNS server, which outlives its daemon
    cp = sb.pw("network", "ls", check=False)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1, cp.stderr
    assert f"{planted} in the state dir belongs to uid {NOBODY}" in cp.stderr
    assert started_for(sb.state_dir) == running
    os.chown(planted, 0, 0)
    assert "app" in sb.pw("network", "ls").stdout


def test_fake_daemon_is_obeyed_only_in_a_state_dir_of_the_callers(sandbox: Sandbox,
                                                                 fake: FakeDaemon) -> None:
    sb = sandbox
    # Control: the CLI talks to whatever listens on the socket and believes what it
    # says (here a made-up container; as well a `run` answer naming a program to run).
    cp = sb.pw("inspect", "anything")
    assert "planted-by-the-fake-daemon" in cp.stdout
    assert len(fake.requests) == 1 and b'"op":"inspect"' in fake.requests[0]
    # The attack: a state dir anyone can write to, so anyone can listen there.
    sb.state_dir.chmod(0o777)
    for args in (["inspect", "anything"], ["run", "--", "true"], ["daemon", "status"]):
        cp = sb.pw(*args, check=False)
        assert cp.returncode == 2 and "is writable by other users" in cp.stderr, cp.stderr
        assert "planted" not in cp.stdout
    assert len(fake.requests) == 1  # never contacted again
    sb.state_dir.chmod(0o700)


def test_what_portway_creates_is_for_its_owner_alone(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.96.0.0/24")
    cid = sb.pw("run", "-d", "--name", "web", "--network", "app", "--",
                "sh", "-c", "echo hello; sleep 300").stdout.strip()
    deadline = time.monotonic() + 10
    while "hello" not in sb.pw("logs", "web").stdout:
        assert time.monotonic() < deadline, "the container's output never came"
        time.sleep(0.05)
    state = sb.state_dir
    assert mode(state) == 0o700
    for name in ("portway.db", "portway.db-wal", "portway.db-shm", "portwayd.log",
                 "portwayd.lock", "dns.json", "dns.log", "dns.pid",
                 f"containers/{cid}/output.log"):
        assert mode(state / name) == 0o600, name
    for name in ("containers", f"containers/{cid}"):
        assert mode(state / name) == 0o700, name
    assert mode(state / "portwayd.sock") & 0o077 == 0
    assert mode(state / "dns.sock") & 0o077 == 0
    # What containers read as their /etc stays readable by all: their processes may run
    # as another user.
    etc = Path("/etc/netns") / f"pw-{cid[:12]}"
    assert mode(etc) == 0o755
    for name in ("hosts", "hostname", "resolv.conf"):
        assert mode(etc / name) == 0o644, name


def test_daemon_tightens_a_state_dir_others_can_read(sandbox: Sandbox) -> None:
    """A state dir of an earlier version: 0755, its files 0644."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.96.0.0/24")
    sb.pw("daemon", "stop")
    sb.state_dir.chmod(0o755)
    for name in ("portway.db", "portwayd.log", "dns.log"):
        (sb.state_dir / name).chmod(0o644)
    (sb.state_dir / "containers").chmod(0o755)
    assert sb.pw("network", "ls").returncode == 0  # readable only: not refused
    assert mode(sb.state_dir) == 0o700
    for name in ("portway.db", "portwayd.log", "dns.log"):
        assert mode(sb.state_dir / name) == 0o600, name
    assert mode(sb.state_dir / "containers") == 0o700
    assert "took away group and other users' access" in \
        (sb.state_dir / "portwayd.log").read_text()
