"""Fixtures for kernel and end-to-end tests: a throwaway host namespace per test.

`sandbox` makes a fresh network namespace that plays the host (lo up), an
"outside" namespace joined to it by a veth (the host's uplink), and a state
dir, and gives a `pw(...)` runner for the real CLI. Afterwards it removes
what the test left through portway itself, then fails the test if any
namespace, interface, /etc/netns entry, process or row of its own is still
there, and removes that too (clean_up_and_check).

The machine is shared (a developer's Podman containers, another run of these
tests): the check and the clean-up select only what is the test's own, never by
a name pattern alone. The test's own namespaces are its sandbox's (and any named
after it, SANDBOX-...), and those whose lo carries the owner tag of the state
dir's portway instance (or, untagged, named pw-<12 hex> after a container of
that state dir; portway names its namespaces pw-..., so only those are asked for a
tag); its processes are those in its own namespaces; its /etc/netns
entries are those named after its own namespaces or its state dir's containers.
Anything else that appears meanwhile is someone else's: neither reported nor
touched.

A run that is killed never reaches its clean-up. Every sandbox namespace is claimed
by the process that makes it (portway.testbed.claim), and the next run first removes
those whose maker is gone, with what is theirs (reap_orphans), and nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portway.core.names import netns_name, parse_owner_tag
from portway.testbed import (
    HOST_ADDR,
    OUTSIDE_ADDR,
    PodmanWorld,
    make_world,
    reap_orphans,
    remove_world,
)

BIN = Path(sys.executable).parent
PORTWAY = str(BIN / "portway")
# network ls lists the pseudo-networks host and none (as Docker's): these drivers.
PSEUDO_DRIVERS = ("host", "null")


def user_networks(listing: str) -> list[dict[str, object]]:
    """The networks of `network ls --json` output, without host and none."""
    return [n for n in json.loads(listing or "[]") if n["Driver"] not in PSEUDO_DRIVERS]


def sh(*args: str, check: bool = True, input: str | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          input=input, timeout=timeout)


def ip_json(netns: str, *args: str) -> list[dict[str, object]]:
    out = sh("ip", "-n", netns, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def netns_list() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def etc_netns_list() -> set[str]:
    try:
        return set(os.listdir("/etc/netns"))
    except FileNotFoundError:
        return set()


def processes_in(netns: str) -> list[int]:
    try:
        inode = os.stat(f"/run/netns/{netns}").st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def processes_logging_under(directory: Path) -> list[int]:
    """Processes whose output goes to a file under directory: a container's command
    writes to its log in the state dir, whichever namespace it ended up in (one whose
    namespace is gone from /run/netns is found by this alone)."""
    prefix = f"{os.path.realpath(directory)}/"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            for fd in ("1", "2"):
                try:
                    if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(prefix):
                        pids.append(int(entry))
                        break
                except OSError:
                    pass
    return pids


def loopback_owner(netns: str) -> tuple[str, str, str] | None:
    """(instance, kind, id) of the owner tag on the namespace's lo (the alias portway
    gives the lo of every namespace it makes), or None if it has none."""
    cp = sh("ip", "-n", netns, "-j", "link", "show", "dev", "lo", check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return None  # gone meanwhile, or not a namespace at all
    lo: list[dict[str, object]] = json.loads(cp.stdout)
    alias = lo[0].get("ifalias") if lo else None
    return parse_owner_tag(alias if isinstance(alias, str) else None)


def _store_query(state_dir: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of a query on the state dir's database, read-only; [] without one."""
    db = state_dir / "portway.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.Error:  # not a database of portway's (yet)
        return []
    finally:
        con.close()


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "gone"


@dataclass
class Sandbox:
    host: str
    outside: str
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    host_addr: str = HOST_ADDR
    outside_addr: str = OUTSIDE_ADDR
    extra: dict[str, list[str]] = field(default_factory=dict)
    # What was there before the test: only what appears afterwards can be its own.
    netns_before: set[str] = field(default_factory=set)
    etc_before: set[str] = field(default_factory=set)

    def instance(self) -> str | None:
        """The portway instance of the state dir: the owner tag's first field."""
        rows = _store_query(self.state_dir, "SELECT value FROM meta WHERE key='instance'")
        return str(rows[0][0]) if rows else None

    def container_ids(self) -> set[str]:
        return {str(r[0]) for r in _store_query(self.state_dir, "SELECT id FROM containers")}

    def own_netns(self, names: set[str] | None = None) -> set[str]:
        """Of names (default: every named namespace), those that are this test's: its
        sandbox's, or portway's of this state dir (see the module docstring)."""
        names = netns_list() if names is None else names
        instance = self.instance()
        by_name = {netns_name(cid) for cid in self.container_ids()}
        own = set()
        for name in names:
            if name in (self.host, self.outside) or \
                    name.startswith((f"{self.host}-", f"{self.outside}-")):
                own.add(name)
                continue
            if not name.startswith(("pw-", "pwprobe-")):
                # A cheap filter: portway's are pw-... and pwprobe-...; another run's
                # sandbox (pwt-...) is not even looked into (an `ip -n` there would be
                # a process in its namespaces when it checks for leftovers).
                continue
            tag = loopback_owner(name)
            if tag is not None:
                if instance is not None and tag[0] == instance:
                    own.add(name)
            elif name in by_name:
                own.add(name)
        return own

    def own_etc_netns(self, names: set[str] | None = None,
                      own_netns: set[str] | None = None) -> set[str]:
        """Of names (default: every /etc/netns entry), those named after this test's own
        namespaces or after a container of its state dir."""
        names = etc_netns_list() if names is None else names
        known = (self.own_netns() if own_netns is None else own_netns) | \
            {self.host, self.outside} | {netns_name(cid) for cid in self.container_ids()}
        return names & known

    def pw_cmd(self, *args: str) -> list[str]:
        """The argv of a portway call in this sandbox (to prefix another command)."""
        return [PORTWAY, "--host-netns", self.host, "--state-dir", str(self.state_dir), *args]

    def pw(self, *args: str, check: bool = True, timeout: float = 60,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ, **self.env, **(env or {}))
        cp = subprocess.run([PORTWAY, "--host-netns", self.host, "--state-dir",
                             str(self.state_dir), *args], capture_output=True, text=True,
                            timeout=timeout, env=full_env)
        if check and cp.returncode != 0:
            raise AssertionError(f"portway {' '.join(args)} failed ({cp.returncode}):\n"
                                 f"{cp.stdout}{cp.stderr}")
        return cp

    def inspect(self, name: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(self.pw("inspect", name).stdout)
        return data[0]

    def in_host(self, *args: str, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.host, *args, check=check, timeout=timeout)

    def rows(self) -> dict[str, int]:
        db = self.state_dir / "portway.db"
        if not db.exists():
            return {}
        con = sqlite3.connect(db)
        try:
            return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("networks", "containers", "endpoints")}
        finally:
            con.close()

    def links(self) -> list[str]:
        return sorted(str(link["ifname"]) for link in ip_json(self.host, "link"))

    def snapshot(self) -> dict[str, object]:
        """Everything a failed command must leave as it was."""
        links = sorted((str(x["ifname"]), str(x.get("master", "")), str(x.get("address")),
                        str(x.get("mtu"))) for x in ip_json(self.host, "link"))
        addrs = sorted((str(x["ifname"]), str(a["local"]), str(a["prefixlen"]))
                       for x in ip_json(self.host, "addr") for a in x["addr_info"]  # type: ignore[attr-defined]
                       if a["family"] == "inet")
        # Routes without their flags: a bridge losing carrier after a removal marks its
        # route "linkdown" a moment later, which no command of the test changed.
        routes = sorted((str(r.get("dst")), str(r.get("dev")), str(r.get("gateway")),
                         str(r.get("prefsrc"))) for r in ip_json(self.host, "route"))
        own_ns = self.own_netns()
        return {"links": links, "addrs": addrs, "routes": routes, "netns": own_ns,
                "etc": self.own_etc_netns(own_netns=own_ns), "rows": self.rows()}

    def daemon_pid(self) -> int:
        cp = self.pw("daemon", "status", check=False)
        if cp.returncode != 0:
            return 0
        return int(cp.stdout.split("pid ")[1].split(",")[0])


def _cleanup_through_portway(sb: Sandbox) -> None:
    if not (sb.state_dir / "portway.db").exists():
        return
    ids = sb.pw("ps", "-a", "-q", check=False).stdout.split()
    if ids:
        sb.pw("rm", "-f", *ids, check=False)
    nets = user_networks(sb.pw("network", "ls", "--json", check=False).stdout)
    if nets:
        sb.pw("network", "rm", *[n["Name"] for n in nets], check=False)
    sb.pw("daemon", "stop", check=False)


def clean_up_and_check(sb: Sandbox) -> list[str]:
    """Remove what the test left of its own, first through portway, then by hand, and
    say what there was (nothing: []). Only the test's own (see the module docstring):
    a namespace, process or /etc/netns entry of anyone else's that appeared meanwhile
    is neither reported nor touched. The sandbox's world itself is left for
    remove_world; running this twice is harmless."""
    # Read before portway's clean-up removes the rows: which containers were this test's.
    ids_before = sb.container_ids()
    daemon = sb.daemon_pid() if (sb.state_dir / "portway.db").exists() else 0
    _cleanup_through_portway(sb)
    leaks: list[str] = []
    if daemon:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(f"/proc/{daemon}"):
            time.sleep(0.02)
        if os.path.exists(f"/proc/{daemon}"):
            leaks.append(f"portwayd {daemon} still running")
    appeared = netns_list() - sb.netns_before
    own_ns = sb.own_netns(appeared)
    left_ns = sorted(own_ns - {sb.host, sb.outside})
    stray = [pid for ns in sorted(own_ns) for pid in processes_in(ns)]
    stray += [pid for pid in processes_logging_under(sb.state_dir) if pid not in stray]
    if stray:
        leaks.append("processes left in the test namespaces: "
                     + ", ".join(f"{pid} ({command_line(pid)})" for pid in stray))
    extra_links = [n for n in sb.links() if n not in ("lo", "uplink0")] \
        if sb.host in own_ns else []
    if extra_links:
        leaks.append(f"links left in the host namespace: {extra_links}")
    if left_ns:
        leaks.append(f"namespaces left: {left_ns}")
    shutil.rmtree(Path("/etc/netns") / sb.host, ignore_errors=True)
    known = own_ns | {netns_name(cid) for cid in ids_before}
    left_etc = sorted(sb.own_etc_netns(etc_netns_list() - sb.etc_before, known)
                      - {sb.host})
    if left_etc:
        leaks.append(f"/etc/netns entries left: {left_etc}")
    rows = {k: v for k, v in sb.rows().items() if v}
    if rows:
        leaks.append(f"rows left in the store: {rows}")
    for pid in stray:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for ns in left_ns:
        sh("ip", "netns", "del", ns, check=False)
    for name in left_etc:
        shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    return leaks


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run that was killed left its sandboxes behind: remove them (only those; see
    portway.testbed.reap_orphans) before this run starts, and say so."""
    if os.geteuid() == 0:
        removed = reap_orphans()
        if removed:
            print(f"removed what a killed run left: {', '.join(removed)}", file=sys.stderr)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    tag = secrets.token_hex(3)
    sb = Sandbox(host=f"pwt-h-{tag}", outside=f"pwt-o-{tag}", state_dir=tmp_path / "state",
                 netns_before=netns_list(), etc_before=etc_netns_list())
    # The host's uplink leads to the "outside" namespace, which plays the world; the
    # host's resolv.conf names the outside, so nothing portway forwards leaves the machine.
    try:
        make_world(sb.host, sb.outside, sb.state_dir)
        yield sb
    finally:
        leaks = clean_up_and_check(sb)
        remove_world(sb.host, sb.outside)
        if leaks:
            pytest.fail("left behind:\n  " + "\n  ".join(leaks))


@pytest.fixture
def podman_world(sandbox: Sandbox) -> Iterator[PodmanWorld]:
    """Real Podman 4.3 in the sandbox's host namespace, with portway as its network
    backend (portway.testbed.PodmanWorld); Podman's removal must leave no portway
    container behind."""
    missing = [tool for tool in ("podman", "runc", "busybox") if shutil.which(tool) is None]
    assert not missing, f"make test installs {missing} (scripts/setup.sh)"
    world = PodmanWorld(sandbox.host)
    try:
        yield world
    finally:
        left = world.close()
        assert left == [], f"podman rm left portway containers: {left}"

