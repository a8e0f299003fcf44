"""Real rootless Podman 4.3 with portway as its network backend: an unprivileged user
made for the test runs Podman in a throwaway host namespace (portway.testbed.
RootlessPodman), and portway-netavark serves it from inside the user's rootless network
namespace. Rootless Podman is slow: a few Podman calls only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Sandbox, ip_json
from portway.testbed import HTTP_GET, RootlessPodman

TOOLS = ("podman", "runc", "busybox", "slirp4netns", "newuidmap", "useradd", "setpriv")


@pytest.fixture
def rootless(sandbox: Sandbox) -> Iterator[RootlessPodman]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"make test installs {missing} (scripts/setup.sh)"
    world = RootlessPodman(sandbox.host)
    try:
        yield world
    finally:
        left = world.close()
        assert left == [], f"the rootless user left: {left}"


def get(netns: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", HTTP_GET, url],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def daemons(p: RootlessPodman) -> list[int]:
    """The user's portwayd processes."""
    found = []
    for pid in p.processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"portway.daemon.main" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def host_sysctls(sb: Sandbox) -> list[str]:
    """What portway would switch on in a host namespace it served."""
    return sb.in_host("sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                      "net.bridge.bridge-nf-call-iptables").stdout.split()


def portway(p: RootlessPodman, *args: str) -> str:
    return subprocess.run(p.portway_cmd(*args), capture_output=True, text=True, timeout=120,
                          check=True).stdout


def test_rootless_podman_on_portway(rootless: RootlessPodman, sandbox: Sandbox) -> None:
    p, sb = rootless, sandbox
    sysctls = host_sysctls(sb)
    p.run("network", "create", "rnet")
    p.run("network", "create", "onet")
    p.container("--name", "web", "--network", "rnet", "-p", "8080:80", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "other", "--network", "onet", "--", "/bin/sleep", "300")
    # Container to container by name, through portway's DNS server.
    out = p.container("--network", "rnet", "--", "/bin/wget", "-q", "-O", "-",
                      "http://web/index.html", detach=False)
    assert "hello from rootless podman" in out
    # The published port, from the host namespace and from beyond its uplink: Podman's
    # rootlessport listens there and forwards into the rootless namespace.
    assert get(sb.host, "http://127.0.0.1:8080/") == "200"
    assert get(sb.outside, f"http://{sb.host_addr}:8080/") == "200"
    # portway's view of the user's containers, from their rootless namespace: ps, gc
    # (which finds each in its namespace under the user's runtime dir, and so has nothing
    # to do), and trace, which sees the isolation between the two networks.
    ps = json.loads(portway(p, "ps", "--json"))
    assert sorted((c["Name"].lstrip("/"), c["Runtime"]) for c in ps) == [
        ("other", "podman"), ("web", "podman")]
    assert portway(p, "gc").strip() == "nothing to repair: the kernel matches the store"
    trace = json.loads(portway(p, "trace", "other", "web:80", "--json"))
    assert trace["verdict"] == "dropped" and "isolation" in trace["summary"]
    web_ip = ps[[c["Name"].lstrip("/") for c in ps].index("web")]["NetworkSettings"][
        "Networks"]["rnet"]["IPAddress"]
    blocked = p.run("exec", "other", "wget", "-q", "-T", "2", "-O", "-",
                    f"http://{web_ip}/index.html", check=False)
    assert blocked.returncode != 0 and "hello" not in blocked.stdout
    # Nothing of portway's in the host namespace (its bridge, rules and DNS server are
    # in the user's namespace), and everything in its state dir is the user's.
    assert [str(x["ifname"]) for x in ip_json(sb.host, "link")] == ["lo", "uplink0"]
    assert sb.in_host("nft", "list", "tables").stdout.strip() == ""
    assert host_sysctls(sb) == sysctls
    for top, dirs, files in os.walk(p.state_dir):
        for name in (top, *(os.path.join(top, f) for f in dirs + files)):
            assert os.lstat(name).st_uid == p.uid, name
    # Killed, the daemon is started again by the next call, in the same namespace, and
    # finds the user's containers where they are (its gc at start changes nothing).
    [pid] = daemons(p)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    # It knows where Podman mounts its namespace, and leaves once that is gone.
    assert argv[argv.index(b"--host-netns-path") + 1].startswith(
        f"{p.runtime_dir}/netns/rootless-netns-".encode())
    os.kill(pid, signal.SIGKILL)
    out = p.container("--network", "rnet", "--", "/bin/wget", "-q", "-O", "-",
                      "http://web/index.html", detach=False)
    assert "hello from rootless podman" in out
    assert daemons(p) and daemons(p) != [pid]
    assert "nothing to repair" in portway(p, "gc")
    # `podman network reload` after the user's rules were flushed (a firewall reload in
    # their rootless namespace): isolation is gone, then back.
    p.run("unshare", "--rootless-netns", "nft", "flush", "ruleset")
    assert "hello from rootless podman" in p.run(
        "exec", "other", "wget", "-q", "-O", "-", f"http://{web_ip}/index.html").stdout
    reload = p.run("network", "reload", "--all", check=False)
    assert reload.returncode == 0 and len(reload.stdout.split()) == 2, reload  # their ids
    blocked = p.run("exec", "other", "wget", "-q", "-T", "2", "-O", "-",
                    f"http://{web_ip}/index.html", check=False)
    assert blocked.returncode != 0 and "hello" not in blocked.stdout
    assert "nothing to repair" in portway(p, "gc")
    out = p.container("--network", "rnet", "--", "/bin/wget", "-q", "-O", "-",
                      "http://web/index.html", detach=False)
    assert "hello from rootless podman" in out
    assert get(sb.outside, f"http://{sb.host_addr}:8080/") == "200"
    # The last container gone, the daemon leaves (Podman removes the namespace).
    p.run("rm", "-f", "-t", "0", "web", "other")
    deadline = time.monotonic() + 10
    while daemons(p) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons(p) == []
