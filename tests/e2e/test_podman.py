"""Real Podman 4.3 with portway as its network backend, in a throwaway host namespace.

Podman finds `netavark` (a wrapper around portway-netavark) and a stand-in
`aardvark-dns` that refuses to run in the only helper directory it is given, so
Debian's netavark and aardvark-dns are out of its reach; its storage, run and
temporary directories are the test's own. Podman runs inside the host namespace
through nsenter (`ip netns exec` would remount /sys and break the runtime).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, Sandbox, ip_json, netns_list
from portway.testbed import HTTP_GET

NEEDED = ("podman", "runc", "busybox")
BUSYBOX_TOOLS = ("sh", "httpd", "nslookup", "wget", "cat", "ip", "sleep")


@dataclass
class Podman:
    sb: Sandbox
    work: Path

    @property
    def state_dir(self) -> Path:
        # Podman 4.3 passes --config /run/containers/networks whatever it is configured with.
        return Path("/run/containers/networks/portway") / self.sb.host

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        w = self.work
        cmd = ["nsenter", f"--net=/run/netns/{self.sb.host}", "podman", "--root", f"{w}/root",
               "--runroot", f"{w}/runroot", "--tmpdir", f"{w}/tmp", "--storage-driver", "vfs",
               "--runtime-flag", f"root={w}/runc", *args]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, CONTAINERS_CONF=f"{w}/containers.conf"))
        if check:
            assert cp.returncode == 0, (args, cp.stdout, cp.stderr)
        return cp

    def container(self, *args: str) -> str:
        """run -d OPTIONS... -- COMMAND...: the rootfs stands where an image would."""
        split = args.index("--")
        return self.run("run", "-d", *args[:split], "--rootfs", f"{self.work}/rootfs",
                        *args[split + 1:]).stdout.strip()

    def pw(self, *args: str) -> str:
        return subprocess.run([str(BIN / "portway"), "--host-netns", self.sb.host,
                               "--state-dir", str(self.state_dir), *args],
                              capture_output=True, text=True, timeout=60, check=True).stdout


def _world(work: Path) -> None:
    rootfs = work / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "www"):
        (rootfs / d).mkdir(parents=True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for tool in BUSYBOX_TOOLS:
        (rootfs / "bin" / tool).symlink_to("busybox")
    (rootfs / "www" / "index.html").write_text("hello from podman\n")
    helpers = work / "helpers"
    helpers.mkdir()
    (helpers / "netavark").write_text(f"#!/bin/sh\nexec {BIN}/portway-netavark \"$@\"\n")
    (helpers / "aardvark-dns").write_text("#!/bin/sh\necho 'not used: portway serves DNS' >&2\n"
                                          "exit 1\n")
    for f in helpers.iterdir():
        f.chmod(0o755)
    (work / "containers.conf").write_text(f"""
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "netavark"
network_config_dir = "{work}/networks"
[engine]
helper_binaries_dir = ["{helpers}"]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
""")


@pytest.fixture
def podman(sandbox: Sandbox) -> Iterator[Podman]:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    assert not missing, f"make test installs {missing} (scripts/setup.sh)"
    had_run_containers = os.path.exists("/run/containers")
    # Short: Podman refuses a runroot path longer than 50 characters.
    p = Podman(sandbox, Path(tempfile.mkdtemp(prefix="pwpm-", dir="/tmp")))
    _world(p.work)
    try:
        yield p
    finally:
        p.run("rm", "-af", "-t", "0", check=False)
        p.run("network", "prune", "-f", check=False)
        if (p.state_dir / "portwayd.sock").exists():
            left = p.pw("ps", "-a", "-q").split()
            p.pw("daemon", "stop")
            assert left == [], f"podman rm left portway containers: {left}"
        shutil.rmtree(p.state_dir, ignore_errors=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(p.work)], check=False)
        if not had_run_containers:
            shutil.rmtree("/run/containers", ignore_errors=True)


def get(where: list[str], url: str) -> str:
    return subprocess.run([*where, "python3", "-c", HTTP_GET, url], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def test_podman_on_portway(podman: Podman) -> None:
    p, sb = podman, podman.sb
    p.run("network", "create", "pnet")
    p.container("--name", "web", "--network", "pnet", "-p", "8080:80", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "client", "--network", "pnet", "--", "/bin/sleep", "300")
    # Portway networked them: its ps, its rules, and no one else's tables.
    ps = {c["Name"]: c for c in json.loads(p.pw("ps", "--json"))}
    assert set(ps) == {"web", "client"} and ps["web"]["Runtime"] == "podman"
    assert "8080" in sb.in_host("nft", "list", "map", "inet", "portway", "pub_any_addr").stdout
    tables = sb.in_host("nft", "list", "tables").stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table bridge portway", "table inet portway"]
    # By name, both ways, through portway's DNS server.
    web_ip = ps["web"]["NetworkSettings"]["Networks"]["pnet"]["IPAddress"]
    client_ip = ps["client"]["NetworkSettings"]["Networks"]["pnet"]["IPAddress"]
    assert web_ip in p.run("exec", "client", "nslookup", "web").stdout
    assert client_ip in p.run("exec", "web", "nslookup", "client").stdout
    assert "hello from podman" in p.run("exec", "client", "wget", "-q", "-O", "-",
                                        "http://web/index.html").stdout
    # The published port, from the outside namespace and from the host.
    url = "/index.html"
    assert get(["ip", "netns", "exec", sb.outside], f"http://{sb.host_addr}:8080{url}") == "200"
    assert get(["ip", "netns", "exec", sb.host], f"http://127.0.0.1:8080{url}") == "200"
    # Explainable: portway trace follows the outside client into Podman's container.
    trace = json.loads(p.pw("trace", "outside", "web:80", "--from-ip", sb.outside_addr,
                            "--json", "--live"))
    assert trace["verdict"] == "delivered" and trace["live"]["agrees"]
    # podman network connect / disconnect.
    p.run("network", "create", "second")
    p.run("network", "connect", "second", "web")
    links = p.run("exec", "web", "ip", "-o", "-4", "addr").stdout
    assert "eth1" in links
    p.run("network", "disconnect", "second", "web")
    assert "eth1" not in p.run("exec", "web", "ip", "-o", "-4", "addr").stdout
    # podman rm leaves nothing: no portway container, network, link, rule or namespace.
    before_ns = {n for n in netns_list() if n.startswith("netns-")}
    assert before_ns
    p.run("rm", "-f", "-t", "0", "web", "client")
    assert p.pw("ps", "-a", "-q") == ""
    assert json.loads(p.pw("network", "ls", "--json")) == []
    assert [str(x["ifname"]) for x in ip_json(sb.host, "link")] == ["lo", "uplink0"]
    assert sb.in_host("nft", "list", "tables").stdout.strip() == ""
    assert not {n for n in netns_list() if n.startswith("netns-")} & before_ns
