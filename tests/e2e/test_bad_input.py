"""Bad input: one line saying what is wrong and what to do, a non-zero exit, and
nothing changed in the kernel or the store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import portway
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
    (["network", "create", "n2", "--driver", "ipvlan"], "unsupported network driver"),
    # Both families (the network six is dual stack, fd00:90::/64; test_ipv6.py has more).
    (["network", "create", "n2", "--ipv6", "--subnet", "2001:db8:51::/64"], "overlaps host"),
    # Below IPv6's minimum MTU the kernel refuses the bridge's IPv6 address (exit 5 before).
    (["network", "create", "n2", "--ipv6", "--mtu", "1200"], "below IPv6's minimum"),
    (["run", "-d", "--name", "w2", "--network", "six", "--ip6", "10.94.0.9", "--", "sleep",
      "1"], "not an IPv6 address"),
    (["run", "-d", "--name", "w2", "--network", "six", "--ip", "fd00:90::9", "--", "sleep",
      "1"], "not an IPv4 address"),
    (["run", "-d", "--name", "w2", "--network", "none", "--ip6", "fd00:90::5", "--", "sleep",
      "1"], "need a bridge network"),
    (["run", "-d", "--name", "w2", "--network", "six", "-p", "[fd00::1:8080:80", "--",
      "sleep", "1"], "invalid port spec"),
    (["run", "-d", "--name", "w2", "--network", "six", "-p", "[2001:db8::zz]:8080:80", "--",
      "sleep", "1"], "invalid port spec"),
    (["run", "-d", "--name", "w2", "--network", "six", "-p", "[2001:db8:51::9]:8080:80", "--",
      "sleep", "1"], "cannot assign requested address"),
    # An IPv6 zone, which Python's parser takes and the kernel does not (exit 5 before).
    (["run", "-d", "--name", "w2", "--network", "six", "--ip6", "fd00:90::9%eth0", "--",
      "sleep", "1"], "names an interface"),
    (["network", "create", "n2", "--ipv6", "--subnet", "fd00:91::%eth0/64"],
     "names an interface"),
    (["network", "create", "n2", "--ipv6", "--subnet", "fd00:91::/64", "--gateway",
      "fd00:91::1%eth0"], "names an interface"),
    (["network", "connect", "--ip6", "fd00:90::3%eth0", "six", "web"], "names an interface"),
    (["network", "connect", "--ip6", "fd00:99::3", "six", "web"], "outside the subnet"),
    (["network", "connect", "--ip6", "10.94.0.3", "six", "web"], "not an IPv6 address"),
    (["network", "rm", "nope"], "not found"),
    (["network", "rm", "app"], "has running containers attached"),
    (["run", "-d", "--name", "web", "--", "sleep", "1"], "already in use"),
    (["run", "-d", "--name", "w2", "--network", "app", "--ip", "10.90.0.2", "--",
      "sleep", "1"], "already in use"),
    (["run", "-d", "--name", "w2", "--network", "app", "--ip", "10.99.0.2", "--",
      "sleep", "1"], "outside the subnet"),
    (["run", "-d", "--name", "w2", "--network", "app", "--ip", "10.90.0.1", "--",
      "sleep", "1"], "gateway"),
    (["run", "-d", "--name", "w2", "--network", "nope", "--", "sleep", "1"], "not found"),
    (["run", "-d", "--name", "w2", "--network", "app"], "no command"),
    (["run", "-d", "--name", "w2", "--restart", "sometimes", "--", "sleep", "1"],
     "invalid restart policy"),
    (["run", "-d", "--name", "w2", "--rm", "--restart", "always", "--", "sleep", "1"],
     "--restart and --rm"),
    (["kill", "-s", "NOPE", "web"], "invalid signal"),
    (["run", "-d", "--name", "bad/name", "--", "sleep", "1"], "invalid container name"),
    (["run", "-d", "--name", "w2", "-p", "99999:80", "--", "sleep", "1"], "invalid port"),
    (["run", "-d", "--name", "w2", "-p", "80/dccp", "--", "sleep", "1"], "protocol"),
    (["run", "-d", "--name", "w2", "--network", "host", "--network", "app", "--",
      "sleep", "1"], "cannot be combined"),
    (["exec", "nope", "--", "true"], "not found"),
    (["stop", "nope"], "not found"),
    (["start", "nope"], "not found"),
    (["kill", "nope"], "not found"),
    (["wait", "nope"], "not found"),
    (["restart", "nope"], "not found"),
    (["rm", "web"], "is running"),
    (["inspect", "nope"], "no container or network 'nope'"),
    (["network", "connect", "app", "web"], "already connected"),
    (["network", "disconnect", "other", "web"], "not connected"),
    # The default network is bridge, host and none are pseudo-networks (as in Docker).
    (["network", "create", "bridge"], "reserved"),
    (["network", "rm", "host"], "host is a pre-defined network and cannot be removed"),
    (["network", "rm", "none"], "none is a pre-defined network"),
    (["network", "connect", "host", "web"], "cannot be connected to network host"),
    (["run", "-d", "--name", "w2", "--network", "bridge", "--ip", "172.17.0.9", "--",
      "sleep", "1"], "--ip needs a user network, not the default network bridge"),
    # Formats and filters.
    (["ps", "--format", "{{.Names"], "template parsing error: template: :1: unclosed action"),
    (["ps", "--format", "{{.Nope}}"], "can't evaluate field Nope"),
    (["ps", "--format", "{{nofunc .}}"], 'function "nofunc" not defined'),
    (["ps", "--json", "--format", "{{.ID}}"], "exclude each other"),
    (["ps", "--filter", "bogus=1"], "invalid filter 'bogus'"),
    (["ps", "--filter", "status=sleeping"], "invalid filter 'status=sleeping'"),
    (["ps", "--filter", "name"], "bad format of filter"),
    (["ps", "-n", "many"], "invalid value 'many'"),
    (["inspect", "-f", "{{.NetworkSettings.IPAdress}}", "web"],
     'map has no entry for key "IPAdress"'),
    (["inspect", "-f", "{{if}}", "web"], "missing value for if"),
    (["network", "ls", "--format", "{{.Subnet}}"], "can't evaluate field Subnet"),
    (["network", "inspect", "-f", "{{.Nope}}", "app"], "map has no entry"),
]


@pytest.fixture
def populated(sandbox: Sandbox) -> Sandbox:
    sandbox.pw("network", "create", "app", "--subnet", "10.90.0.0/24")
    sandbox.pw("network", "create", "other", "--subnet", "10.93.0.0/24")
    sandbox.pw("network", "create", "six", "--ipv6", "--subnet", "10.94.0.0/24", "--subnet",
               "fd00:90::/64")
    sandbox.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
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


def test_state_dir_too_long_for_a_socket(tmp_path: Path) -> None:
    """The daemon's socket must fit in 107 bytes: a longer state dir is refused with one
    line before anything is made, not met with a daemon that cannot listen."""
    state = tmp_path / ("d" * 110)
    cp = subprocess.run([PORTWAY, "--state-dir", str(state), "ps"], capture_output=True,
                        text=True)
    assert cp.returncode != 0 and cp.stderr.count("\n") == 1
    assert "too long a path" in cp.stderr and "shorter --state-dir" in cp.stderr
    assert not state.exists()


def test_not_root() -> None:
    """An unprivileged user is told to use sudo (exit code 77). Wherever the checkout
    lives: cloned into /root or another private directory, that user could not even
    start the venv's interpreter there. The CLI is standard-library only, so it runs
    as that user under the system's python3 from a copy of the package in a fresh
    directory anyone can read."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        python = sys.executable  # no system Python: the venv's, readable or not
    package = Path(portway.__file__).parent
    public = Path(tempfile.mkdtemp(prefix="pwt-notroot-"))
    try:
        shutil.copytree(package, public / "portway",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in (public, *public.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        boot = (f"import sys; sys.path.insert(0, {str(public)!r}); "
                "from portway.cli.main import main; main()")
        cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             python, "-I", "-S", "-c", boot, "--state-dir",
                             str(public / "state"), "ps"],
                            capture_output=True, text=True, cwd="/",
                            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    finally:
        shutil.rmtree(public)
    assert cp.returncode == 77 and "must run as root" in cp.stderr, cp.stdout + cp.stderr
    assert cp.stderr.count("\n") == 1
