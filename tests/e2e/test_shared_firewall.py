"""Two portways in one host namespace share one firewall: the CLI's and the Podman backend's.

Each has its own state dir, daemon and DNS server, and the same tables (inet, bridge
and arp portway). Each side has containers, a published port, and an internal network
(the CLI side an icc=false network too). Then each side is started, restarted, gc'd and
torn down in every order, and after each step the other side's isolation, published
ports, DNS and anti-spoofing entries are checked with real traffic: none of them may
depend on what the other side does.

Before the firewall was shared by owner, the second daemon's start (or either side's
gc) rebuilt the tables with its own networks only, and the last network of either
side deleted them: the checks below failed at the first restart.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import Sandbox
from portway.testbed import HTTP_GET, WAIT_LISTENING, PodmanWorld


def get(where: list[str], url: str, timeout: float = 2) -> str:
    return subprocess.run([*where, "python3", "-c", HTTP_GET, url], capture_output=True,
                          text=True, timeout=30).stdout.strip()[:4]


class Sides:
    def __init__(self, sb: Sandbox, p: PodmanWorld) -> None:
        self.sb, self.p = sb, p

    def pnpw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.p.portway_cmd(*args), capture_output=True, text=True,
                              timeout=60, check=check)

    # the CLI's side

    def cli_up(self) -> None:
        sb = self.sb
        sb.pw("network", "create", "cnet", "--subnet", "10.104.0.0/24")
        sb.pw("network", "create", "cquiet", "--subnet", "10.105.0.0/24",
              "-o", "com.docker.network.bridge.enable_icc=false")
        sb.pw("network", "create", "cinner", "--subnet", "10.106.0.0/24", "--internal")
        sb.pw("run", "-d", "--name", "cweb", "--network", "cnet", "-p", "8080:80", "--",
              "python3", "-m", "http.server", "80")
        sb.pw("run", "-d", "--name", "cpeer", "--network", "cnet", "--", "sleep", "600")
        for name in ("q1", "q2"):
            sb.pw("run", "-d", "--name", name, "--network", "cquiet", "--", "python3", "-m",
                  "http.server", "80")
        sb.pw("run", "-d", "--name", "cin", "--network", "cinner", "--", "sleep", "600")
        for name in ("cweb", "q1", "q2"):
            sb.pw("exec", name, "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")

    def cli_down(self) -> None:
        self.sb.pw("rm", "-f", "cweb", "cpeer", "q1", "q2", "cin")
        self.sb.pw("network", "rm", "cnet", "cquiet", "cinner")

    def cli_works(self, podman_ip: str | None) -> None:
        sb = self.sb
        outside = ["ip", "netns", "exec", sb.outside]
        peer, q2, cin = (sb.pw_cmd("exec", n, "--") for n in ("cpeer", "q2", "cin"))
        assert get(outside, f"http://{sb.host_addr}:8080/") == "200", "CLI published port"
        assert get(peer, "http://cweb/") == "200", "CLI DNS and same-network traffic"
        assert get(q2, "http://10.105.0.2/", 1) == "fail", "CLI icc=false"
        assert get(cin, f"http://{sb.outside_addr}:9300/", 1) == "fail", "CLI internal"
        assert get(q2, "http://10.104.0.2/", 1) == "fail", "CLI isolation"
        if podman_ip:
            assert get(peer, f"http://{podman_ip}/", 1) == "fail", "CLI -> Podman isolation"
        assert sb.pw("doctor", check=False).stdout.startswith("healthy"), "CLI doctor"

    # the Podman backend's side

    def podman_up(self) -> str:
        p = self.p
        p.run("network", "create", "pnet")
        p.run("network", "create", "--internal", "pinner")
        p.container("--name", "pweb", "--network", "pnet", "-p", "8081:80", "--",
                    "/bin/httpd", "-f", "-p", "80", "-h", "/www")
        p.container("--name", "pclient", "--network", "pnet", "--", "/bin/sleep", "600")
        p.container("--name", "pin", "--network", "pinner", "--", "/bin/sleep", "600")
        ps = {c["Name"].lstrip("/"): c for c in json.loads(self.pnpw("ps", "--json").stdout)}
        return str(ps["pweb"]["NetworkSettings"]["Networks"]["pnet"]["IPAddress"])

    def podman_down(self) -> None:
        self.p.run("rm", "-f", "-t", "0", "pweb", "pclient", "pin")
        self.p.run("network", "rm", "pnet", "pinner")

    def podman_works(self) -> None:
        p, sb = self.p, self.sb
        outside = ["ip", "netns", "exec", sb.outside]
        assert get(outside, f"http://{sb.host_addr}:8081/") == "200", "Podman published port"
        page = p.run("exec", "pclient", "wget", "-q", "-O", "-", "http://pweb/")
        assert "hello from podman" in page.stdout, "Podman DNS and same-network traffic"
        # (busybox's own wget -T crashes in this build: timeout does the same)
        cp = p.run("exec", "pin", "/bin/busybox", "timeout", "2", "wget", "-q", "-O", "-",
                   f"http://{sb.outside_addr}:9300/", check=False)
        assert cp.returncode != 0, "Podman internal"
        cp = p.run("exec", "pclient", "/bin/busybox", "timeout", "2", "wget", "-q", "-O", "-",
                   "http://10.104.0.2/", check=False)
        assert cp.returncode != 0, "Podman -> CLI isolation"
        assert self.pnpw("doctor", check=False).stdout.startswith("healthy"), "Podman doctor"


def test_two_portways_share_one_firewall(sandbox: Sandbox,
                                        podman_world: PodmanWorld) -> None:
    sb, s = sandbox, Sides(sandbox, podman_world)
    server = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-m",
                               "http.server", "9300", "--bind", sb.outside_addr],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s.cli_up()
        s.cli_works(None)
        ip = s.podman_up()  # the second daemon starts (and runs gc) beside the first
        s.cli_works(ip)
        s.podman_works()
        # Control: what one side's rebuild of the whole tables did to the other side (the
        # tables deleted, then made again by the CLI's gc with only its own): Podman's
        # published port and anti-spoofing entries are gone, so its checks fail...
        for family in ("inet", "bridge", "arp"):
            sb.in_host("nft", "delete", "table", family, "portway")
        assert sb.pw("gc").stdout.count("re-create table") == 3
        s.cli_works(ip)
        with pytest.raises((AssertionError, RuntimeError)):
            s.podman_works()
        # ... until Podman's side puts back its own part (and touches nothing of the CLI's).
        report = s.pnpw("gc").stdout
        assert "restore element" in report and "10.104." not in report, report
        s.podman_works()
        s.cli_works(ip)
        for step in ("CLI gc", "Podman gc", "CLI restart", "Podman restart"):
            if step.endswith("gc"):
                (sb.pw if step.startswith("CLI") else s.pnpw)("gc")
            else:
                (sb.pw if step.startswith("CLI") else s.pnpw)("daemon", "stop")
                (sb.pw if step.startswith("CLI") else s.pnpw)("daemon", "start")
            s.cli_works(ip)
            s.podman_works()
        # Podman's side goes first; the CLI's keeps working, and back again.
        s.podman_down()
        s.cli_works(None)
        ip = s.podman_up()
        s.cli_works(ip)
        s.podman_works()
        # The CLI's side goes first; Podman's keeps working.
        s.cli_down()
        s.podman_works()
        assert sb.pw("doctor", check=False).stdout.startswith("healthy")
        tables = sb.in_host("nft", "list", "tables").stdout
        assert "table inet portway" in tables, "the tables stay while Podman's side uses them"
        s.podman_down()
        assert sb.in_host("nft", "list", "tables").stdout.strip() == ""
    finally:
        server.kill()
        server.wait()
