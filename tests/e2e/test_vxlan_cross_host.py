"""A container never feeds another cluster member's VXLAN devices.

A container on an ordinary bridge network of host A sends a VXLAN datagram to host B's
VTEP (B's --advertise-address). It leaves A masqueraded to A's own address, so B cannot
tell it from A's real tunnel traffic: B's VXLAN socket hands the frame inside to the
overlay network of its VNI, with any MAC and address, past isolation and the
anti-spoofing checks. inet portway's forward drops what containers send to UDP 4789 at
a member's address (the members set, kept by the cluster service); VXLAN to any other
address (a container running its own, kind or flannel) still leaves.
Control: without the rule, the injected frame reaches B's overlay container.

B's VXLAN socket takes port 4789 on every address of B, not only on its VTEP: the same
datagram to a second address of B (not a member's, so A lets it leave) feeds B's
overlay just as well. B drops VXLAN to its own addresses other than its VTEP.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_overlay import A_ADDR, B_ADDR, Cluster, two_hosts, wait_for

from conftest import Sandbox, sh
from portway.testbed import ETCD_ADDR

FRAMES = str(Path(__file__).with_name("frames.py"))
LISTEN = ("import socket\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n"
          "while True:\n"
          "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")
# One datagram on port 4789 of a non-member's address (the underlay's etcd address):
# what arrived, or nothing after the timeout.
CATCH = ("import socket, sys\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 4789))\n"
         "s.settimeout(5); print('ready', flush=True)\n"
         "try:\n"
         "    data, peer = s.recvfrom(2048); print('got', len(data), peer[0], flush=True)\n"
         "except TimeoutError: print('none', flush=True)\n")
RULE = "containers never send to a cluster member's VXLAN port"
OTHER_RULE = "VXLAN to this host's other addresses: its VXLAN socket takes them too"
B_SECOND = "192.0.2.52"  # a second address of B's on the underlay: no member's VTEP


@pytest.fixture
def cluster(sandbox: Sandbox, tmp_path: Path) -> Iterator[Cluster]:
    with two_hosts(sandbox, tmp_path, 1) as c:
        yield c


def members(sb: Sandbox, name: str = "members") -> set[str]:
    items = json.loads(sb.in_host("nft", "-j", "list", "set", "inet", "portway",
                                  name).stdout)["nftables"]
    # (An element with a comment is listed as {"elem": {"val": ..., "comment": ...}}.)
    return {str(e["elem"]["val"] if isinstance(e, dict) else e)
            for item in items if "set" in item for e in item["set"].get("elem", [])}


def test_a_container_cannot_inject_frames_into_another_hosts_overlay(
        cluster: Cluster) -> None:
    c = cluster
    sb = c.a
    sb.pw("network", "create", "--driver", "overlay", "--subnet", "10.204.0.0/24", "ov")
    sb.pw("network", "create", "app", "--subnet", "10.99.0.0/24")
    wait_for(lambda: "ov" in c.pw_b("network", "ls").stdout, "B makes the network")
    ov = json.loads(c.pw_b("network", "inspect", "ov").stdout)[0]
    vni = ov["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
    c.pw_b("run", "-d", "--name", "victim", "--network", "ov", "--", "python3", "-u", "-c",
           LISTEN)
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")
    victim = json.loads(c.pw_b("inspect", "victim").stdout)[0]["NetworkSettings"][
        "Networks"]["ov"]
    # Every member's VTEP is in A's set (its own too), as the store's host records say.
    wait_for(lambda: members(sb) == {A_ADDR, B_ADDR}, "A's firewall knows both members")

    def inject(marker: str) -> bool:
        """A frame from an address of the overlay no container has, with a MAC of no
        one, sent to B's VTEP: whether B's container got it."""
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "vxlan", B_ADDR, vni,
              "02:42:de:ad:be:ef", "10.204.0.200", victim["MacAddress"],
              victim["IPAddress"], "9999", marker)
        deadline = time.monotonic() + 2
        while True:
            logs = c.pw_b("logs", "victim").stdout.splitlines()
            if any(line.startswith(marker) for line in logs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    time.sleep(0.3)  # the listener binds
    rules = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", "inet", "portway",
                                  "vxlan_out").stdout)["nftables"]
    handle = next(item["rule"]["handle"] for item in rules
                  if "rule" in item and item["rule"].get("comment") == RULE)
    sb.in_host("nft", "delete", "rule", "inet", "portway", "vxlan_out", "handle", str(handle))
    assert inject("control")
    assert "restore chain inet portway vxlan_out" in sb.pw("gc").stdout
    assert not inject("guarded")
    # trace names the rule.
    t = sb.pw("trace", "attacker", f"{B_ADDR}:4789/udp", check=False)
    assert RULE in t.stdout, t.stdout
    # The set emptied by hand: gc fills it again, and the frame stays out.
    sb.in_host("nft", "flush", "set", "inet", "portway", "members")
    assert "restore element" in sb.pw("gc").stdout
    assert members(sb) == {A_ADDR, B_ADDR}
    assert not inject("refilled")
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    # VXLAN to an address no member has (a container's own tunnel) still leaves.
    assert ipaddress.ip_address(ETCD_ADDR) not in {ipaddress.ip_address(a)
                                                   for a in (A_ADDR, B_ADDR)}
    catcher = subprocess.Popen(["ip", "netns", "exec", c.underlay, "python3", "-u", "-c",
                                CATCH, ETCD_ADDR], stdout=subprocess.PIPE, text=True)
    try:
        assert catcher.stdout is not None and catcher.stdout.readline().strip() == "ready"
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "vxlan", ETCD_ADDR, vni,
              "02:42:de:ad:be:ef", "10.204.0.200", victim["MacAddress"],
              victim["IPAddress"], "9999", "elsewhere")
        out, _ = catcher.communicate(timeout=10)
    finally:
        if catcher.poll() is None:
            catcher.kill()
            catcher.wait()
    assert out.startswith("got ") and out.split()[2] == A_ADDR, out


def test_a_container_cannot_inject_frames_through_another_address_of_a_member(
        cluster: Cluster) -> None:
    c = cluster
    sb = c.a
    sb.pw("network", "create", "--driver", "overlay", "--subnet", "10.205.0.0/24", "ov")
    sb.pw("network", "create", "app", "--subnet", "10.100.0.0/24")
    wait_for(lambda: "ov" in c.pw_b("network", "ls").stdout, "B makes the network")
    ov = json.loads(c.pw_b("network", "inspect", "ov").stdout)[0]
    vni = ov["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
    c.pw_b("run", "-d", "--name", "victim", "--network", "ov", "--", "python3", "-u", "-c",
           LISTEN)
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")
    victim = json.loads(c.pw_b("inspect", "victim").stdout)[0]["NetworkSettings"][
        "Networks"]["ov"]
    wait_for(lambda: members(sb) == {A_ADDR, B_ADDR}, "A's firewall knows both members")
    # B's namespace is the test's own (two_hosts made it); it goes with it.
    sh("ip", "-n", c.b_host, "addr", "add", f"{B_SECOND}/24", "dev", "ul0")

    def inject(target: str, marker: str) -> bool:
        """A frame from an address of the overlay no container has, with a MAC of no
        one, sent to target: whether B's container got it."""
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "vxlan", target, vni,
              "02:42:de:ad:be:ef", "10.205.0.200", victim["MacAddress"],
              victim["IPAddress"], "9999", marker)
        deadline = time.monotonic() + 2
        while True:
            logs = c.pw_b("logs", "victim").stdout.splitlines()
            if any(line.startswith(marker) for line in logs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def delete_rule(host: str, chain: str, comment: str) -> None:
        rules = json.loads(sh("ip", "netns", "exec", host, "nft", "-j", "-a", "list", "chain",
                              "inet", "portway", chain).stdout)["nftables"]
        handle = next(item["rule"]["handle"] for item in rules
                      if "rule" in item and item["rule"].get("comment") == comment)
        sh("ip", "netns", "exec", host, "nft", "delete", "rule", "inet", "portway", chain,
           "handle", str(handle))

    time.sleep(0.3)  # the listener binds
    assert not inject(B_ADDR, "vtep"), "A's forward drops it to B's VTEP"
    # The same frame to B's other address leaves A (no member has it) and arrives.
    assert not inject(B_SECOND, "second")
    # Control: without B's rule it feeds B's overlay; gc puts the rule back.
    delete_rule(c.b_host, "vtep_in", OTHER_RULE)
    assert inject(B_SECOND, "control")
    assert "restore chain inet portway vtep_in" in c.pw_b("gc").stdout
    assert not inject(B_SECOND, "guarded")
    # The tunnel between the members is untouched: A's own container reaches B's.
    sb.pw("run", "-d", "--name", "friend", "--network", "ov", "--", "sleep", "3600")
    sb.pw("exec", "friend", "--", "python3", "-c",
          "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
          "b'hello-through-the-tunnel', (sys.argv[1], 9999))", victim["IPAddress"])
    wait_for(lambda: any(line.startswith("hello-through-the-tunnel")
                         for line in c.pw_b("logs", "victim").stdout.splitlines()),
             "A's container reaches B's through the tunnel")


def _b_members(c: Cluster) -> set[str]:
    items = json.loads(sh("ip", "netns", "exec", c.b_host, "nft", "-j", "list", "set", "inet",
                          "portway", "members").stdout)["nftables"]
    return {str(e["elem"]["val"] if isinstance(e, dict) else e)
            for item in items if "set" in item for e in item["set"].get("elem", [])}


def _hosts_in_store(c: Cluster) -> set[str]:
    out = sh("ip", "netns", "exec", c.underlay, "etcdctl", "--endpoints",
             f"http://{ETCD_ADDR}:2379", "get", "--prefix", "--keys-only",
             "/portway/hosts/").stdout
    return {line.rsplit("/", 1)[1] for line in out.split() if line}


def test_a_member_that_left_while_a_daemon_was_down_is_gone_before_it_serves(
        cluster: Cluster) -> None:
    """B's daemon is down while A leaves the cluster (its lease runs out). B's restarted
    daemon keeps the members' set across its restart, so that no container sends VXLAN
    to a member while it catches up; its first look at the store replaces the set with
    the store's members before it serves anything (here: it is killed right after the
    cluster's start, before serving), not whenever its watch comes round to it."""
    c = cluster
    sb = c.a
    wait_for(lambda: members(sb) == {A_ADDR, B_ADDR} and _b_members(c) == {A_ADDR, B_ADDR},
             "both firewalls know both members")
    c.pw_b("daemon", "stop")
    sb.pw("daemon", "stop")
    wait_for(lambda: A_ADDR not in _hosts_in_store(c), "A's lease runs out", timeout=20)
    assert _b_members(c) == {A_ADDR, B_ADDR}  # (nothing renewed it meanwhile)
    cp = c.pw_b("daemon", "start", check=False, env={"PORTWAY_FAULT": "daemon.cluster"})
    assert cp.returncode != 0 and "Traceback" not in cp.stderr, cp.stderr
    assert _b_members(c) == {B_ADDR}
    c.pw_b("daemon", "start")
    assert _b_members(c) == {B_ADDR}
    # A joins again: B's set takes it in again, from the watch.
    sb.pw("daemon", "start")
    wait_for(lambda: _b_members(c) == {A_ADDR, B_ADDR}, "B knows A again")


A6, B6 = "2001:db8:a0::1", "2001:db8:a0::2"  # the hosts' VTEPs on an IPv6 underlay
B_SECOND6 = "2001:db8:a0::52"  # a second IPv6 address of B's: no member's VTEP


@pytest.fixture
def cluster6(sandbox: Sandbox, tmp_path: Path) -> Iterator[Cluster]:
    with two_hosts(sandbox, tmp_path, 1, (A6, B6)) as c:
        yield c


def test_ipv6_vteps_carry_the_overlay_and_take_no_containers_vxlan(
        cluster6: Cluster) -> None:
    """Hosts that advertise IPv6 addresses: the tunnel between them runs over IPv6, the
    members' set of that family (members6) holds both VTEPs, and a container's VXLAN
    over IPv6 feeds neither overlay: to B's VTEP it is dropped on A (vxlan_out), to a
    second IPv6 address of B on B (vtep_in, which acts for the families of the host's
    VTEPs). Control: without B's vtep_in rule the frame reaches B's container."""
    c = cluster6
    sb = c.a
    sb.pw("network", "create", "--driver", "overlay", "--subnet", "10.206.0.0/24", "ov")
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.101.0.0/24",
          "--subnet", "fd00:101::/64")
    wait_for(lambda: "ov" in c.pw_b("network", "ls").stdout, "B makes the network")
    ov = json.loads(c.pw_b("network", "inspect", "ov").stdout)[0]
    vni = ov["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
    link = json.loads(sh("ip", "-n", c.b_host, "-d", "-j", "link", "show",
                         f"pwvx-{ov['Id'][:10]}").stdout)[0]
    info = link["linkinfo"]["info_data"]
    assert B6 in (info.get("local"), info.get("local6")), info
    c.pw_b("run", "-d", "--name", "victim", "--network", "ov", "--", "python3", "-u", "-c",
           LISTEN)
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")
    victim = json.loads(c.pw_b("inspect", "victim").stdout)[0]["NetworkSettings"][
        "Networks"]["ov"]
    wait_for(lambda: members(sb, "members6") == {A6, B6} and members(sb) == set(),
             "A's firewall knows both IPv6 members")
    sh("ip", "-n", c.b_host, "addr", "add", f"{B_SECOND6}/64", "dev", "ul0", "nodad")

    def inject(target: str, marker: str) -> bool:
        """A frame from an address of the overlay no container has, with a MAC of no
        one, sent over IPv6 to target: whether B's container got it."""
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "vxlan", target, vni,
              "02:42:de:ad:be:ef", "10.206.0.200", victim["MacAddress"],
              victim["IPAddress"], "9999", marker)
        deadline = time.monotonic() + 2
        while True:
            logs = c.pw_b("logs", "victim").stdout.splitlines()
            if any(line.startswith(marker) for line in logs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    # The tunnel itself: A's container reaches B's over the IPv6 underlay.
    sb.pw("run", "-d", "--name", "friend", "--network", "ov", "--", "sleep", "3600")
    sb.pw("exec", "friend", "--", "python3", "-c",
          "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
          "b'hello-over-ipv6', (sys.argv[1], 9999))", victim["IPAddress"])
    wait_for(lambda: any(line.startswith("hello-over-ipv6")
                         for line in c.pw_b("logs", "victim").stdout.splitlines()),
             "A's container reaches B's through the IPv6 tunnel")
    assert not inject(B6, "vtep"), "A's forward drops it to B's VTEP"
    assert not inject(B_SECOND6, "second"), "B's vtep_in drops it"
    rules = json.loads(sh("ip", "netns", "exec", c.b_host, "nft", "-j", "-a", "list",
                          "chain", "inet", "portway", "vtep_in").stdout)["nftables"]
    handle = next(item["rule"]["handle"] for item in rules
                  if "rule" in item and item["rule"].get("comment") == OTHER_RULE)
    sh("ip", "netns", "exec", c.b_host, "nft", "delete", "rule", "inet", "portway",
       "vtep_in", "handle", str(handle))
    assert inject(B_SECOND6, "control")
    assert "restore chain inet portway vtep_in" in c.pw_b("gc").stdout
    assert not inject(B_SECOND6, "guarded")



SIZED = ("import socket\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9998))\n"
         "while True:\n"
         "    data, peer = s.recvfrom(9000); print('got', len(data), flush=True)\n")
# One datagram of a size, the IPv4 don't-fragment bit set (as ping -M do).
SEND = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER: IP_PMTUDISC_DO\n"
        "for _ in range(3):\n"
        "    try: s.sendto(b'x' * int(sys.argv[2]), (sys.argv[1], 9998))\n"
        "    except OSError as e: print(e)  # (a path MTU learned from the first)\n")


def test_an_overlay_on_ipv6_vteps_carries_full_size_packets(cluster6: Cluster) -> None:
    """VXLAN over IPv6 adds 70 bytes (an outer IPv6 header is 20 bytes longer than an
    IPv4 one): the overlay's MTU on a 1500-byte IPv6 underlay is 1430, and a packet of
    that size, not fragmented, crosses between the hosts."""
    c = cluster6
    sb = c.a
    net_id = sb.pw("network", "create", "--driver", "overlay", "--subnet", "10.207.0.0/24",
                   "ov").stdout.strip()
    wait_for(lambda: "ov" in c.pw_b("network", "ls").stdout, "B makes the network")
    c.pw_b("run", "-d", "--name", "far", "--network", "ov", "--", "python3", "-u", "-c",
           SIZED)
    sb.pw("run", "-d", "--name", "near", "--network", "ov", "--", "sleep", "3600")
    far = json.loads(c.pw_b("inspect", "far").stdout)[0]["NetworkSettings"]["Networks"]["ov"]
    dev = json.loads(sh("ip", "-n", sb.host, "-j", "link", "show",
                        f"pwvx-{net_id[:10]}").stdout)[0]
    size = str(dev["mtu"] - 28)  # (an IPv4 and a UDP header)
    sb.pw("exec", "near", "--", "python3", "-c", SEND, far["IPAddress"], size)
    wait_for(lambda: f"got {size}" in c.pw_b("logs", "far").stdout,
             "a full-size packet crosses the IPv6 tunnel", timeout=5)
    assert dev["mtu"] == 1430, dev
    # trace says what the tunnel adds: 70 bytes over IPv6.
    shown = sb.pw("trace", "near", "far:9998/udp").stdout
    assert f"UDP {A6} -> {B6}:4789, 70 bytes more than the inner frame (device MTU 1430)" \
        in shown, shown
