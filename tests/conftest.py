"""Fixtures for kernel and end-to-end tests: a throwaway host namespace per test.

`sandbox` makes a fresh network namespace that plays the host (lo up), an
"outside" namespace joined to it by a veth (the host's uplink), and a state
dir, and gives a `pw(...)` runner for the real CLI. Afterwards it removes
what the test left through portway itself, then fails the test if any
namespace, interface, /etc/netns entry, process or row is still there.
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

from portway.testbed import HOST_ADDR, OUTSIDE_ADDR, make_world, remove_world

BIN = Path(sys.executable).parent
PORTWAY = str(BIN / "portway")


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


@dataclass
class Sandbox:
    host: str
    outside: str
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    host_addr: str = HOST_ADDR
    outside_addr: str = OUTSIDE_ADDR
    extra: dict[str, list[str]] = field(default_factory=dict)

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
        return {"links": links, "addrs": addrs, "routes": routes, "netns": netns_list(),
                "etc": etc_netns_list(), "rows": self.rows()}

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
    nets = json.loads(sb.pw("network", "ls", "--json", check=False).stdout or "[]")
    if nets:
        sb.pw("network", "rm", *[n["Name"] for n in nets], check=False)
    sb.pw("daemon", "stop", check=False)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    tag = secrets.token_hex(3)
    sb = Sandbox(host=f"pwt-h-{tag}", outside=f"pwt-o-{tag}", state_dir=tmp_path / "state")
    before_ns, before_etc = netns_list(), etc_netns_list()
    # The host's uplink leads to the "outside" namespace, which plays the world; the
    # host's resolv.conf names the outside, so nothing portway forwards leaves the machine.
    make_world(sb.host, sb.outside)
    daemon = 0
    try:
        yield sb
    finally:
        daemon = sb.daemon_pid() if (sb.state_dir / "portway.db").exists() else 0
        _cleanup_through_portway(sb)
        leaks: list[str] = []
        if daemon:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and os.path.exists(f"/proc/{daemon}"):
                time.sleep(0.02)
            if os.path.exists(f"/proc/{daemon}"):
                leaks.append(f"portwayd {daemon} still running")
        stray = [p for p in processes_in(sb.host) + processes_in(sb.outside)]
        if stray:
            leaks.append(f"processes left in the test namespaces: {stray}")
        extra_links = [n for n in sb.links() if n not in ("lo", "uplink0")]
        if extra_links:
            leaks.append(f"links left in the host namespace: {extra_links}")
        extra_ns = netns_list() - before_ns - {sb.host, sb.outside}
        if extra_ns:
            leaks.append(f"namespaces left: {sorted(extra_ns)}")
        shutil.rmtree(Path("/etc/netns") / sb.host, ignore_errors=True)
        extra_etc = etc_netns_list() - before_etc
        if extra_etc:
            leaks.append(f"/etc/netns entries left: {sorted(extra_etc)}")
        rows = {k: v for k, v in sb.rows().items() if v}
        if rows:
            leaks.append(f"rows left in the store: {rows}")
        for pid in stray:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for ns in extra_ns:
            sh("ip", "netns", "del", ns, check=False)
        remove_world(sb.host, sb.outside)
        if leaks:
            pytest.fail("left behind:\n  " + "\n  ".join(leaks))
