"""Bad input: one line saying what is wrong and what to do, a non-zero exit, and
nothing changed in the kernel or the store."""

from __future__ import annotations

import subprocess

import pytest

from conftest import PORTWAY, Sandbox

CASES = [
    (["network", "create", "app", "--subnet", "10.90.0.0/24"], "already exists"),
    (["network", "create", "bad name"], "invalid network name"),
    (["network", "create", "-x"], ""),
    (["network", "create", "n2", "--subnet", "10.90.0.0/33"], "invalid subnet"),
    (["network", "create", "n2", "--subnet", "10.90.0.1/24"], "host bits"),
    (["network", "create", "n2", "--subnet", "10.90.0.128/25"], "overlaps network app"),
    (["network", "create", "n2", "--subnet", "198.51.100.0/25"], "overlaps host"),
    (["network", "create", "n2", "--subnet", "10.91.0.0/24", "--gateway", "10.92.0.1"],
     "outside the subnet"),
    (["network", "create", "n2", "--subnet", "10.91.0.0/24", "--gateway", "10.91.0.255"],
     "broadcast"),
    (["network", "create", "n2", "--subnet", "10.91.0.0/24", "--gateway", "10.91.0.0"],
     "network address"),
    (["network", "create", "n2", "--subnet", "10.91.0.0/24", "--mtu", "9"], "MTU"),
    (["network", "create", "n2", "-o", "nonsense=1"], "unknown network option"),
    (["network", "create", "host"], "reserved"),
    (["network", "create", "x;nft flush ruleset"], "invalid network name"),
    (["network", "create", "../../etc"], "invalid network name"),
    (["network", "create", "n2", "--driver", "macvlan"], "unsupported network driver"),
    (["network", "rm", "nope"], "not found"),
    (["network", "rm", "app"], "has containers attached"),
    (["run", "-d", "--name", "web", "--", "sleep", "1"], "already in use"),
    (["run", "-d", "--name", "w2", "--network", "app", "--ip", "10.90.0.2", "--",
      "sleep", "1"], "already in use"),
    (["run", "-d", "--name", "w2", "--network", "app", "--ip", "10.99.0.2", "--",
      "sleep", "1"], "outside the subnet"),
    (["run", "-d", "--name", "w2", "--network", "app", "--ip", "10.90.0.1", "--",
      "sleep", "1"], "gateway"),
    (["run", "-d", "--name", "w2", "--network", "nope", "--", "sleep", "1"], "not found"),
    (["run", "-d", "--name", "w2", "--network", "app"], "no command"),
    (["run", "-d", "--name", "w2", "--", "no-such-program-here"], "command not found"),
    (["run", "--name", "w2", "--", "no-such-program-here"], "command not found"),
    (["run", "-d", "--name", "bad/name", "--", "sleep", "1"], "invalid container name"),
    (["run", "-d", "--name", "w2", "-p", "99999:80", "--", "sleep", "1"], "invalid port"),
    (["run", "-d", "--name", "w2", "-p", "80/sctp", "--", "sleep", "1"], "protocol"),
    (["run", "-d", "--name", "w2", "--network", "host", "--network", "app", "--",
      "sleep", "1"], "cannot be combined"),
    (["exec", "nope", "--", "true"], "not found"),
    (["stop", "nope"], "not found"),
    (["rm", "web"], "is running"),
    (["inspect", "nope"], "not found"),
    (["network", "connect", "app", "web"], "already connected"),
    (["network", "disconnect", "other", "web"], "not connected"),
]


@pytest.fixture
def populated(sandbox: Sandbox) -> Sandbox:
    sandbox.pw("network", "create", "app", "--subnet", "10.90.0.0/24")
    sandbox.pw("network", "create", "other", "--subnet", "10.93.0.0/24")
    sandbox.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "300")
    return sandbox


def test_bad_input_changes_nothing(populated: Sandbox) -> None:
    sb = populated
    for args, expected in CASES:
        before = sb.snapshot()
        cp = sb.pw(*args, check=False)
        assert cp.returncode != 0, f"{args} succeeded"
        assert cp.stderr.startswith("portway:"), f"{args}: {cp.stderr!r}"
        assert cp.stderr.count("\n") == 1, f"{args}: not one line: {cp.stderr!r}"
        assert "Traceback" not in cp.stderr
        assert expected in cp.stderr, f"{args}: {cp.stderr!r}"
        assert sb.snapshot() == before, f"{args} changed something"


def test_missing_host_namespace(tmp_path: object) -> None:
    cp = subprocess.run([PORTWAY, "--host-netns", "pwt-no-such-ns", "--state-dir",
                         f"{tmp_path}/s", "ps"], capture_output=True, text=True)
    assert cp.returncode != 0
    assert "ip netns add pwt-no-such-ns" in cp.stderr and cp.stderr.count("\n") == 1


def test_not_root(tmp_path: object) -> None:
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         PORTWAY, "--state-dir", f"{tmp_path}/s", "ps"],
                        capture_output=True, text=True)
    assert cp.returncode == 77 and "must run as root" in cp.stderr
