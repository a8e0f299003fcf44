"""The suite's own clean-up removes only what is the test's own.

The machine may be a developer's, with Podman's containers (namespaces named
netns-<uuid>), someone's labs, another run of this suite: a namespace, process or
/etc/netns entry that appears during a test but is not the test's must be neither
reported as the test's leak nor deleted (conftest.clean_up_and_check).
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import Sandbox, clean_up_and_check, etc_netns_list, netns_list, sh
from portway import testbed


def add_netns(name: str, owner_tag: str = "") -> None:
    sh("ip", "netns", "add", name)
    if owner_tag:  # as portway tags the namespaces it makes
        sh("ip", "-n", name, "link", "set", "dev", "lo", "alias", owner_tag)


def add_etc_netns(name: str) -> None:
    directory = Path("/etc/netns") / name
    directory.mkdir(parents=True)
    (directory / "hosts").write_text("127.0.0.1 localhost\n")


def sleeper(netns: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "300"])


def test_clean_up_leaves_what_is_not_the_tests_own(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "ls")  # the state dir, and its portway instance
    instance = sb.instance()
    assert instance
    # Someone else's, made while the test runs: a lab, Podman's container namespace,
    # another portway's (another run's instance, and one untagged).
    foreign = [f"lab-{secrets.token_hex(3)}", f"netns-{uuid.uuid4()}",
               f"pw-{secrets.token_hex(6)}", f"pw-{secrets.token_hex(6)}"]
    add_netns(foreign[0])
    add_netns(foreign[1])
    add_netns(foreign[2], f"portway:{secrets.token_hex(4)}:container:{secrets.token_hex(32)}")
    add_netns(foreign[3])
    for name in foreign[1:3]:
        add_etc_netns(name)
    theirs = sleeper(foreign[1])
    # Control: a leak of the test's own, a container namespace with this state dir's
    # owner tag, its /etc/netns entry and a process in it.
    cid = secrets.token_hex(32)
    own = f"pw-{cid[:12]}"
    add_netns(own, f"portway:{instance}:container:{cid}")
    add_etc_netns(own)
    ours = sleeper(own)
    try:
        leaks = clean_up_and_check(sb)
        report = "\n".join(leaks)
        # The test's own is reported and removed...
        assert f"namespaces left: ['{own}']" in leaks, report
        assert f"/etc/netns entries left: ['{own}']" in leaks, report
        assert f"processes left in the test namespaces: {ours.pid} (sleep 300)" in leaks, \
            report
        assert ours.wait(timeout=10) == -9
        assert own not in netns_list() and own not in etc_netns_list()
        # ...what is not, is neither reported nor touched.
        for name in foreign:
            assert name not in report
            assert name in netns_list()
        for name in foreign[1:3]:
            assert name in etc_netns_list()
        assert str(theirs.pid) not in report and theirs.poll() is None
        # Twice is harmless, and still leaves them alone.
        assert clean_up_and_check(sb) == []
        assert set(foreign) <= netns_list() and theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait()
        ours.kill()
        ours.wait()
        for name in [*foreign, own]:
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


KILLED_MAKER = """
import os, signal, sys
from portway import testbed
name, state_dir = sys.argv[1], sys.argv[2]
testbed.add_netns(name, state_dir)
testbed.add_netns(name + "-x", state_dir)  # (named after it: its own as well)
os.kill(os.getpid(), signal.SIGKILL)  # as a run killed in the middle
"""


def test_what_a_killed_run_left_is_reaped_and_nothing_else(tmp_path: Path) -> None:
    """A sandbox whose maker was killed is removed by the next run (reap_orphans), with
    the processes in it, the namespaces named after it and those its portway tagged;
    a namespace claimed by a live process, or by no one, is not."""
    # The killed run's portway: its state dir names its instance.
    state = tmp_path / "state"
    state.mkdir()
    instance = secrets.token_hex(4)
    con = sqlite3.connect(state / "portway.db")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('instance', ?)", (instance,))
    con.commit()
    con.close()
    tag = secrets.token_hex(3)
    dead = f"pwt-dead-{tag}"
    proc = subprocess.run([sys.executable, "-c", KILLED_MAKER, dead, str(state)])
    assert proc.returncode == -9
    cid = secrets.token_hex(32)
    container = f"pw-{cid[:12]}"  # its portway's container namespace
    add_netns(container, f"portway:{instance}:container:{cid}")
    add_etc_netns(container)
    stray = sleeper(dead)
    live = f"pwt-live-{tag}"  # claimed by this test, alive
    testbed.add_netns(live)
    nobody = f"lab-{tag}"  # someone else's
    add_netns(nobody)
    other_pw = f"pw-{secrets.token_hex(6)}"  # another portway's
    add_netns(other_pw, f"portway:{secrets.token_hex(4)}:container:{cid}")
    try:
        removed = testbed.reap_orphans()
        # Gone (by this call, or by another pytest session that started meanwhile: each
        # reaps at its start, so this call's list may lack them).
        assert not {dead, f"{dead}-x", container} & netns_list()
        assert container not in etc_netns_list()
        assert stray.wait(timeout=10) == -9
        assert not (testbed.OWNERS / dead).exists()
        assert {live, nobody, other_pw} <= netns_list()
        assert not {live, nobody, other_pw} & set(removed)
    finally:
        stray.kill()
        stray.wait()
        testbed.del_netns(live)
        for name in (dead, f"{dead}-x", container, nobody, other_pw):
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
            testbed.release(name)
