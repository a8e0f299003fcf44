"""Crash safety: the engine killed (SIGKILL) at each step of an operation, then `gc`.

Afterwards the store and the kernel agree again: the operation either completed
or left nothing behind, and a container that was running keeps running. The
fault is injected with PORTWAY_FAULT=STEP in the daemon's environment (the CLI
starts the daemon with its own environment).
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import Sandbox, ip_json, user_networks

STEPS = {
    "network_create.bridge": ["network", "create", "extra", "--subnet", "10.70.0.0/24"],
    "network_create.firewall": ["network", "create", "extra", "--subnet", "10.70.0.0/24"],
    "network_rm.row": ["network", "rm", "spare"],
    "run.sandbox": ["run", "-d", "--name", "new", "--network", "app", "--", "sleep", "3600"],
    "run.ports": ["run", "-d", "--name", "new", "--network", "app", "-p", "8090:80", "--",
                  "sleep", "3600"],
    "run.started": ["run", "-d", "--name", "new", "--network", "app", "--", "sleep", "3600"],
    "rm.ports": ["rm", "-f", "published"],
    "rm.kernel": ["rm", "-f", "victim"],
    "disconnect.detach": ["network", "disconnect", "app", "twohomed"],
    "trace.live": ["trace", "outside", "victim:80", "--live"],
    "connect.attach": ["network", "connect", "spare", "victim"],
    "release.ports": ["stop", "-t", "0", "victim"],
    "release.kernel": ["stop", "-t", "0", "victim"],
}


def agree(sb: Sandbox) -> None:
    """What the store says exists, exists in the kernel, and nothing else portway's does."""
    containers = json.loads(sb.pw("ps", "-a", "--json").stdout)
    networks = user_networks(sb.pw("network", "ls", "--json").stdout)
    links = {str(link["ifname"]) for link in ip_json(sb.host, "link")}
    assert {n["Bridge"] for n in networks} <= links
    expected_veths = {v["HostInterface"] for c in containers
                      for v in c["NetworkSettings"]["Networks"].values() if "HostInterface" in v}
    assert {name for name in links if name.startswith("pwv-")} == expected_veths
    assert {name for name in links if name.startswith("pwbr-")} == {n["Bridge"] for n in networks}
    namespaces = {n for n in sb.own_netns() if n.startswith("pw-")}
    # A stopped container has none (its SandboxKey is empty, as in Docker).
    mine = {os.path.basename(c["NetworkSettings"]["SandboxKey"]) for c in containers
            if c["NetworkSettings"]["SandboxKey"]}
    # Only this sandbox's containers may be there (other tests run in series).
    assert namespaces == mine
    # What is published: the ports of running containers (a stopped one's are not).
    ports = {b["HostPort"] for c in containers
             for bindings in c["NetworkSettings"]["Ports"].values() for b in bindings or ()}
    listing = sb.in_host("nft", "list", "map", "inet", "portway", "pub_any_addr").stdout
    for port in ("8090", "8091"):
        assert (port in listing) == (port in ports)
    guarded = sb.in_host("nft", "list", "set", "bridge", "portway", "addrs").stdout
    assert {v for v in expected_veths if v in guarded} == expected_veths
    assert guarded.count("pwv-") == len(expected_veths)
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert "portway_trace" not in sb.in_host("nft", "list", "tables").stdout
    assert not [n for n in sb.own_netns() if n.startswith("pwprobe-")]


@pytest.mark.parametrize("step", sorted(STEPS))
def test_kill_at_each_step_then_gc(sandbox: Sandbox, step: str) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.71.0.0/24")
    sb.pw("network", "create", "spare", "--subnet", "10.72.0.0/24")
    sb.pw("run", "-d", "--name", "bystander", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "victim", "--network", "app", "--", "sleep", "3600")
    if step == "rm.ports":
        sb.pw("run", "-d", "--name", "published", "--network", "app", "-p", "8091:80", "--",
              "sleep", "3600")
    if step == "disconnect.detach":
        sb.pw("run", "-d", "--name", "twohomed", "--network", "app", "--network", "spare",
              "--", "sleep", "3600")
    bystander = sb.inspect("bystander")["State"]["Pid"]  # type: ignore[index]
    sb.pw("daemon", "stop")

    cp = sb.pw(*STEPS[step], check=False, env={"PORTWAY_FAULT": step})
    assert cp.returncode != 0, f"{step}: the daemon was meant to die"
    assert "Traceback" not in cp.stderr

    report = sb.pw("gc").stdout  # a new daemon (no fault), which reconciles first
    assert "failed" not in report, report
    if step == "trace.live":  # the tables and the probe namespace were there to remove
        log = (sb.state_dir / "portwayd.log").read_text()
        assert "delete table inet portway_trace" in log and "delete namespace pwprobe-" in log
    agree(sb)
    assert os.path.exists(f"/proc/{bystander}"), "the engine's death stopped a container"
    assert sb.inspect("bystander")["State"]["Running"] is True  # type: ignore[index]
    # The operation can be done now, from wherever the crash left it.
    retry = sb.pw(*STEPS[step], check=False)
    assert retry.returncode == 0 or "not found" in retry.stderr or \
        "already" in retry.stderr, retry.stderr
    agree(sb)
