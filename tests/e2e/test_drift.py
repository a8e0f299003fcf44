"""Drift: the kernel loses what the store describes, and `gc` brings it back.

Deleted bridges, veths, namespace names, tables and a killed DNS server are
covered beside the feature they break (test_containers, test_firewall,
test_spoofing, test_dns); here is the whole host at once: a simulated reboot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import Sandbox, sh
from portway.testbed import make_world, remove_world

GET = ("import sys, urllib.request as u\n"
       "try: print(u.urlopen(sys.argv[1], timeout=3).status)\n"
       "except Exception as e: print('fail', type(e).__name__)\n")


def get_from(ns: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", GET, url],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def reboot(sb: Sandbox, pids: list[int], namespaces: list[str]) -> None:
    """What a reboot does to portway's world: every process ends, the named namespaces
    under /run go, and the host namespace comes back empty. The state dir stays."""
    sb.pw("daemon", "stop")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for name in namespaces:
        sh("ip", "netns", "del", name)
    remove_world(sb.host, sb.outside)
    make_world(sb.host, sb.outside)


def test_simulated_reboot(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.91.0.0/24")
    sb.pw("network", "create", "back", "--subnet", "10.92.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8095:80", "--",
          "python3", "-m", "http.server", "80")
    sb.pw("run", "-d", "--name", "db", "--network", "back", "--", "sleep", "300")
    pids = [int(sb.inspect(n)["State"]["Pid"]) for n in ("web", "db")]  # type: ignore[index]
    namespaces = [os.path.basename(str(sb.inspect(n)["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
                  for n in ("web", "db")]
    dns_pid = int((sb.state_dir / "dns.pid").read_text().split()[0])
    reboot(sb, [*pids, dns_pid], namespaces)
    assert "pwbr" not in " ".join(sb.links())

    # The daemon reconciles as it starts; its report goes to its log.
    log = sb.state_dir / "portwayd.log"
    seen = log.stat().st_size
    sb.pw("daemon", "start")
    with log.open() as f:
        f.seek(seen)
        report = f.read()
    assert "failed" not in report, report
    for expected in ("re-create bridge", "re-create table inet portway",
                     "re-create table bridge portway", "start the DNS server",
                     "namespace of container web", "namespace of container db"):
        assert expected in report, f"{expected!r} missing from:\n{report}"
    assert report.count("re-create bridge") == 2
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert sb.pw("doctor").stdout.startswith("healthy")
    # Containers do not come back by themselves (no restart policy), as with Docker...
    states = {c["Name"]: c["State"]["Status"]
              for c in json.loads(sb.pw("ps", "-a", "--json").stdout)}
    assert states == {"web": "exited", "db": "exited"}
    # ...but everything they need is there again: a new one is published, named and fenced.
    sb.pw("rm", "web")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8095:80", "--",
          "python3", "-m", "http.server", "80")
    deadline = time.monotonic() + 10
    while get_from(sb.outside, f"http://{sb.host_addr}:8095/") != "200":
        assert time.monotonic() < deadline, "the published port never answered after reboot"
        time.sleep(0.1)
    sb.pw("run", "-d", "--name", "db2", "--network", "back", "--", "sleep", "300")
    assert sb.pw("exec", "db2", "--", "getent", "hosts", "db").stdout.startswith("10.92.0.2")
