"""Drift: the kernel loses what the store describes, and `gc` brings it back.

Deleted bridges, veths, namespace names, tables and a killed DNS server are
covered beside the feature they break (test_containers, test_firewall,
test_spoofing, test_dns); here is the whole host at once: a simulated reboot.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time

from conftest import Sandbox, sh
from portway.testbed import WAIT_LISTENING as WAIT
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
    make_world(sb.host, sb.outside, sb.state_dir)


def test_simulated_reboot(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.91.0.0/24")
    sb.pw("network", "create", "back", "--subnet", "10.92.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8095:80", "--",
          "python3", "-m", "http.server", "80")
    sb.pw("run", "-d", "--name", "db", "--network", "back", "--", "sleep", "3600")
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
                     "container web: its process ended while portwayd was not running",
                     "container db: its process ended while portwayd was not running"):
        assert expected in report, f"{expected!r} missing from:\n{report}"
    assert report.count("re-create bridge") == 2
    # A stopped container has no namespace: nothing of theirs is made again.
    assert "namespace of container" not in report
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert sb.pw("doctor").stdout.startswith("healthy")
    # Containers do not come back by themselves (no restart policy), as with Docker; the
    # exit code of a process that ended with no daemon watching is unknown, and said so.
    states = {c["Name"].lstrip("/"): c["State"]
              for c in json.loads(sb.pw("ps", "-a", "--json").stdout)}
    assert {n: s["Status"] for n, s in states.items()} == {"web": "exited", "db": "exited"}
    assert states["web"]["ExitCode"] == 255 and "unknown" in states["web"]["Error"]
    # ...but everything they need is there again: a new one is published, named and fenced.
    sb.pw("rm", "web")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8095:80", "--",
          "python3", "-m", "http.server", "80")
    deadline = time.monotonic() + 10
    while get_from(sb.outside, f"http://{sb.host_addr}:8095/") != "200":
        assert time.monotonic() < deadline, "the published port never answered after reboot"
        time.sleep(0.1)
    sb.pw("start", "db")  # a stopped container starts again, its name back in DNS
    sb.pw("run", "-d", "--name", "db2", "--network", "back", "--", "sleep", "3600")
    assert sb.pw("exec", "db2", "--", "getent", "hosts", "db").stdout.startswith("10.92.0.2")


def test_doctor_and_gc_find_lost_addresses_and_routes_of_both_families(
        sandbox: Sandbox) -> None:
    """A container loses its IPv6 address, another its IPv6 default route, a third the
    route to its IPv6 subnet, a fourth its IPv4 default route: doctor names each, gc puts
    each back."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.149.0.0/24", "--subnet",
          "fd00:149::/64")
    sb.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet", "fd00:150::/64")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "python3", "-m",
          "http.server", "--bind", "::", "80")
    for name, net in (("cli", "app"), ("only", "six"), ("four", "app")):
        sb.pw("run", "-d", "--name", name, "--network", net, "--", "sleep", "3600")
    assert sb.pw("doctor").stdout.startswith("healthy")
    web, cli, only, four = (
        os.path.basename(str(sb.inspect(n)["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
        for n in ("web", "cli", "only", "four"))
    sh("ip", "-n", web, "-6", "addr", "del", "fd00:149::2/64", "dev", "eth0")
    sh("ip", "-n", only, "-6", "route", "del", "default")
    sh("ip", "-n", cli, "-6", "route", "del", "fd00:149::/64", "dev", "eth0")
    sh("ip", "-n", four, "route", "del", "default")
    cp = sb.pw("doctor", check=False)
    assert cp.returncode == 1, cp.stdout
    lines = cp.stdout.splitlines()
    assert any(line.startswith("drift: re-create endpoint") and "fd00:149::2" in line and
               "container web" in line for line in lines), lines
    for line in ("drift: restore the IPv6 default route of container only (via fd00:150::1): "
                 "it is missing",
                 "drift: restore route fd00:149::/64 dev eth0 of container cli: it is missing",
                 "drift: restore the IPv4 default route of container four (via 10.149.0.1): "
                 "it is missing"):
        assert line in lines, lines
    assert len(lines) == 5  # four, and the count
    sb.pw("gc")
    assert sb.pw("doctor").stdout.startswith("healthy")
    sh("ip", "netns", "exec", cli, "python3", "-c", WAIT, "fd00:149::2", "80")
    assert get_from(cli, "http://[fd00:149::2]/") == "200"
    for ns, family, gateway in ((only, "-6", "fd00:150::1"), (four, "-4", "10.149.0.1")):
        routes = json.loads(sh("ip", "-n", ns, "-j", family, "route", "show",
                               "default").stdout)
        assert [r.get("gateway") for r in routes] == [gateway]


def test_gc_passes_over_namespace_files_another_portway_is_making(sandbox: Sandbox) -> None:
    """/run/netns is shared by every portway on the machine: between creating a
    namespace's file and mounting it (or unmounting and removing it) another daemon
    leaves a plain file there. A daemon starting then, and its gc, pass over such a
    file (it is not theirs, and cannot be entered) and leave it alone."""
    sb = sandbox
    tag = secrets.token_hex(6)
    files = [f"/run/netns/pwprobe-{tag[:8]}", f"/run/netns/pw-{tag}"]
    try:
        for path in files:
            with open(path, "x"):
                pass
        sb.pw("network", "create", "app", "--subnet", "10.73.0.0/24")  # starts the daemon
        assert sb.pw("gc").stdout.startswith("nothing to repair")
        assert all(os.path.isfile(path) for path in files)
    finally:
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def test_gc_completes_a_shared_table_an_earlier_portway_made(sandbox: Sandbox) -> None:
    """`bridge portway` as an earlier portway made it: no `senders` set, spoof_ip
    checking the address alone. gc (and a daemon's start, which runs it) creates the
    set, then restores the chain that refers to it and the set's elements; without the
    set first, the chain could not be restored and IPv4 from containers went unchecked
    past the EtherType."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.97.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    sb.in_host("nft", "flush", "chain", "bridge", "portway", "spoof_ip")
    sb.in_host("nft", "delete", "set", "bridge", "portway", "senders")
    report = sb.pw("gc")
    assert "create set bridge portway senders: it is missing" in report.stdout, report.stdout
    assert "restore chain bridge portway spoof_ip" in report.stdout, report.stdout
    chain = sb.in_host("nft", "list", "chain", "bridge", "portway", "spoof_ip").stdout
    assert "@senders drop" in chain, chain
    web = json.loads(sb.pw("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]["app"]
    listed = sb.in_host("nft", "list", "set", "bridge", "portway", "senders").stdout
    assert web["IPAddress"] in listed and web["MacAddress"] in listed, listed
    assert sb.pw("gc").stdout.startswith("nothing to repair")


def test_gc_gives_an_earlier_bridge_table_the_link_layer_checks(sandbox: Sandbox) -> None:
    """`bridge portway` from before neighbour discovery's link-layer address option was
    checked: no `lladdrs` set (which only nft's text syntax declares), spoof_ip6 without
    the rules that look it up. gc creates the set, then restores the chain and the set's
    elements."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.98.0.0/24", "--subnet",
          "fd00:98::/64")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    listing = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", "bridge", "portway",
                                    "spoof_ip6").stdout)["nftables"]
    for item in listing:
        if "@lladdrs" in json.dumps(item) or "one option" in json.dumps(item):
            sb.in_host("nft", "delete", "rule", "bridge", "portway", "spoof_ip6", "handle",
                       str(item["rule"]["handle"]))
    sb.in_host("nft", "delete", "set", "bridge", "portway", "lladdrs")
    report = sb.pw("gc").stdout
    lines = report.splitlines()
    assert lines.index("create set bridge portway lladdrs: it is missing") < \
        lines.index("restore chain bridge portway spoof_ip6: it differs from what portway "
                    "wrote"), report
    assert any(line.startswith("restore element pwv-") and "lladdrs" in line
               for line in lines), report
    chain = sb.in_host("nft", "list", "chain", "bridge", "portway", "spoof_ip6").stdout
    assert chain.count("@lladdrs drop") == 2 and chain.count("ip6 length") == 2, chain
    web = json.loads(sb.pw("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]["app"]
    listed = sb.in_host("nft", "list", "set", "bridge", "portway", "lladdrs").stdout
    assert f'{int(web["MacAddress"].replace(":", ""), 16):#x} comment' in listed, listed
    assert sb.pw("gc").stdout.startswith("nothing to repair")


# spoof_ip6's first rule as a portway from before the check behind an Authentication
# Header wrote it (nft's text syntax), and the rule that check added.
OLD_FIRST = ("meta l4proto != ipv6-icmp iifname . ether saddr . ip6 saddr @senders6 accept "
             "comment \"not ICMPv6 and from the port's MAC and address: nothing more to "
             "check\"")
BEHIND_AH = "behind AH, only TCP, UDP"


def _spoof_ip6_before_ah(sb: Sandbox) -> None:
    """Make spoof_ip6 what an earlier portway made: the first rule accepting AH from the
    port's MAC and address at once, no rule against ICMPv6 behind AH."""
    listing = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", "bridge", "portway",
                                    "spoof_ip6").stdout)["nftables"]
    rules = [item["rule"] for item in listing if "rule" in item]
    sb.in_host("nft", "replace rule bridge portway spoof_ip6 handle "
               f"{rules[0]['handle']} {OLD_FIRST}")
    handle = next(r["handle"] for r in rules if BEHIND_AH in r.get("comment", ""))
    sb.in_host("nft", "delete", "rule", "bridge", "portway", "spoof_ip6", "handle",
               str(handle))


def test_gc_gives_an_earlier_bridge_table_the_check_behind_ah(sandbox: Sandbox) -> None:
    """`bridge portway` from before an Authentication Header was looked behind (its
    spoof_ip6 let ICMPv6 behind AH from the port's own MAC and address through at once):
    gc, and the daemon's start, which runs it, restore the chain, its flush and its rules
    in one transaction."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.99.0.0/24", "--subnet",
          "fd00:99::/64")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    _spoof_ip6_before_ah(sb)
    old = sb.in_host("nft", "list", "chain", "bridge", "portway", "spoof_ip6").stdout
    assert "ah" not in old.split(), old
    report = sb.pw("gc").stdout
    assert "restore chain bridge portway spoof_ip6: it differs from what portway wrote" \
        in report.splitlines(), report
    chain = sb.in_host("nft", "list", "chain", "bridge", "portway", "spoof_ip6").stdout
    assert "meta l4proto != { ah, ipv6-icmp } iifname" in chain, chain
    assert f'drop comment "{BEHIND_AH}' in chain, chain
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    _spoof_ip6_before_ah(sb)
    log = sb.state_dir / "portwayd.log"
    sb.pw("daemon", "stop")
    seen = log.stat().st_size
    sb.pw("daemon", "start")
    with log.open() as f:
        f.seek(seen)
        assert "restore chain bridge portway spoof_ip6" in f.read()
    assert sb.in_host("nft", "list", "chain", "bridge", "portway", "spoof_ip6").stdout == chain
    assert sb.pw("gc").stdout.startswith("nothing to repair")
