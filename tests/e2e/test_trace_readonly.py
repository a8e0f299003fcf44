"""Static `trace`, `show` and `graph` change nothing at all: on a host where portway has
no networks they run without starting portwayd (which would turn on forwarding and
bridge netfilter, and so make a failing connection work)."""

from __future__ import annotations

import json
import os
import re
import time

from conftest import Sandbox, sh


def lab(sb: Sandbox) -> str:
    """A plain `ip netns` lab in the sandbox's host: a bridge br0 (10.88.0.1/24) made
    by hand, and a "VM" namespace behind it holding 10.88.0.2; forwarding and bridge
    netfilter off, as on a host nobody set up for containers."""
    vm = f"{sb.host}-vm"
    sb.in_host("sysctl", "-qw", "net.ipv4.ip_forward=0")
    sb.in_host("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    sh("ip", "netns", "add", vm)
    sh("ip", "-n", vm, "link", "set", "lo", "up")
    sh("ip", "-n", sb.host, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", sb.host, "link", "add", "vm0", "type", "veth", "peer", "name", "eth0",
       "netns", vm)
    sh("ip", "-n", sb.host, "link", "set", "vm0", "master", "br0")
    sh("ip", "-n", sb.host, "addr", "add", "10.88.0.1/24", "dev", "br0")
    for dev in ("br0", "vm0"):
        sh("ip", "-n", sb.host, "link", "set", dev, "up")
    sh("ip", "-n", vm, "addr", "add", "10.88.0.2/24", "dev", "eth0")
    sh("ip", "-n", vm, "link", "set", "eth0", "up")
    settle(sb.host, vm, sb.outside)
    return vm


def settle(*namespaces: str) -> None:
    """Until the link-local addresses of the new links have passed duplicate address
    detection (they change by themselves until then)."""
    deadline = time.monotonic() + 10
    while any("tentative" in sh("ip", "-n", ns, "addr").stdout for ns in namespaces):
        assert time.monotonic() < deadline, "duplicate address detection did not end"
        time.sleep(0.1)


def state(netns: str) -> dict[str, str]:
    """Everything of a namespace that a look must leave as it was, as text."""
    def run(*args: str) -> str:
        return sh("ip", "netns", "exec", netns, *args).stdout

    return {"sysctl": "".join(line for line in run("sysctl", "-a").splitlines(True)
                              if line.startswith("net.")),
            "ruleset": run("nft", "list", "ruleset"),
            # Without the bridge's running timers, which move by themselves.
            "links": re.sub(r"\S+_timer +[0-9.]+ ?", "", run("ip", "-d", "link", "show")),
            "addrs": run("ip", "addr", "show"),
            "routes": run("ip", "route", "show", "table", "all"),
            "routes6": run("ip", "-6", "route", "show", "table", "all"),
            "rules": run("ip", "rule", "show")}


def daemons_of(sb: Sandbox) -> list[int]:
    """Processes whose command line names the sandbox's state dir."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if str(sb.state_dir).encode() in f.read():
                    out.append(int(entry))
        except OSError:
            pass
    return out


def test_looking_changes_nothing(sandbox: Sandbox) -> None:
    sb = sandbox
    vm = lab(sb)
    try:
        before = {ns: state(ns) for ns in (sb.host, vm, sb.outside)}
        t = json.loads(sb.pw("trace", "host", "10.88.0.2:80", "--json").stdout)
        assert t["verdict"]
        sb.pw("trace", f"ns:{vm}", "10.88.0.1:22")
        sb.pw("trace", "outside", "10.88.0.2:80", "--from-ip", sb.outside_addr)
        topo = json.loads(sb.pw("show", "--json").stdout)
        assert topo["Networks"] == [] and topo["HostNetns"] == sb.host
        sb.pw("show")
        assert sb.pw("graph").stdout.startswith("digraph")
        # A bad request is answered as well, and changes nothing either.
        cp = sb.pw("trace", "host", "ghost:80", check=False)
        assert cp.returncode == 3 and "not found" in cp.stderr
        assert cp.stderr.count("\n") == 1 and "Traceback" not in cp.stderr
        after = {ns: state(ns) for ns in (sb.host, vm, sb.outside)}
        for ns in before:
            for what in before[ns]:
                assert before[ns][what] == after[ns][what], (ns, what)
        assert daemons_of(sb) == []
        assert not sb.state_dir.exists()  # not even the state dir was made
        assert sb.pw("daemon", "status", check=False).returncode == 1
    finally:
        sh("ip", "netns", "del", vm)
        sh("ip", "-n", sb.host, "link", "del", "br0")


def test_a_host_portway_set_up_is_asked_of_its_daemon(sandbox: Sandbox) -> None:
    """Where portway has networks, trace is answered by portwayd, which knows them; once
    they are gone and portwayd is stopped, looking starts it no more."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.61.0.0/24")
    sb.pw("daemon", "stop")
    sb.pw("trace", "host", "10.61.0.9:80")
    assert sb.pw("daemon", "status", check=False).returncode == 0
    sb.pw("network", "rm", "app")
    sb.pw("daemon", "stop")
    sb.in_host("sysctl", "-qw", "net.ipv4.ip_forward=0")
    sb.pw("trace", "host", "10.61.0.9:80")
    sb.pw("show")
    assert sb.pw("daemon", "status", check=False).returncode == 1
    assert sb.in_host("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
