"""Anti-spoofing: a container sends only with the MAC and address portway gave it.

An attacker container writes raw frames on its eth0 claiming another container's
address, an unassigned address, a MAC not its own, and (by ARP) another
container's address at its own MAC. First with portway's `bridge portway` table
deleted, to show each attack works (the control); then after `gc` has put the
table back, to show each is dropped on the attacker's bridge port, while its
honest traffic still flows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import Sandbox, sh

FRAMES = str(Path(__file__).with_name("frames.py"))
LISTEN = ("import socket\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n"
          "while True:\n"
          "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")
SEND = ("import socket, sys\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), "
        "(sys.argv[1], 9999))\n")


def endpoint(sb: Sandbox, name: str) -> tuple[str, str]:
    net = sb.inspect(name)["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    return str(net["IPAddress"]), str(net["MacAddress"])  # type: ignore[index]


def attack(sb: Sandbox, round_: str) -> tuple[list[str], str]:
    """Every spoofing attempt, then an honest datagram; what the victim saw of them."""
    victim_ip, victim_mac = endpoint(sb, "victim")
    other_ip, _ = endpoint(sb, "other")
    attacker_ip, attacker_mac = endpoint(sb, "attacker")
    frames = [
        ["udp", "eth0", attacker_mac, other_ip, victim_mac, victim_ip, "9999", "as-other"],
        ["udp", "eth0", attacker_mac, "10.86.0.200", victim_mac, victim_ip, "9999",
         "unassigned"],
        ["udp", "eth0", "02:42:de:ad:be:ef", attacker_ip, victim_mac, victim_ip, "9999",
         "foreign-mac"],
        ["arp", "eth0", attacker_mac, other_ip, victim_ip],
    ]
    for frame in frames:
        sb.pw("exec", "attacker", "--", "python3", FRAMES, *frame)
    # An honest datagram through the attacker's own stack (ARP and all); it is
    # delivered after the frames above, on the same path.
    marker = f"honest-{round_}"
    sb.pw("exec", "attacker", "--", "python3", "-c", SEND, victim_ip, marker)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = sb.pw("logs", "victim").stdout.splitlines()
        if any(line.startswith(marker) for line in seen):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the honest datagram never arrived: {seen}")
    neighbour = sb.pw("exec", "victim", "--", "ip", "-4", "neigh", "show", other_ip).stdout
    return [line for line in seen if not line.startswith("honest")], neighbour


def test_spoofed_frames_are_dropped_on_the_bridge_port(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.86.0.0/24")
    sb.pw("run", "-d", "--name", "victim", "--network", "app", "--", "python3", "-u", "-c",
          LISTEN)
    sb.pw("run", "-d", "--name", "other", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")
    other_ip, _ = endpoint(sb, "other")
    attacker_ip, attacker_mac = endpoint(sb, "attacker")

    # Control: without the table, every attack gets through.
    sb.in_host("nft", "delete", "table", "bridge", "portway")
    seen, neighbour = attack(sb, "control")
    assert sorted(seen) == sorted([f"as-other {other_ip}", "unassigned 10.86.0.200",
                                   f"foreign-mac {attacker_ip}"]), seen
    assert attacker_mac in neighbour, f"ARP poisoning failed in the control: {neighbour}"

    report = sb.pw("gc").stdout
    assert "re-create table bridge portway" in report, report
    victim_ns = os.path.basename(str(sb.inspect("victim")["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
    sh("ip", "-n", victim_ns, "-4", "neigh", "flush", "all")
    sb.pw("stop", "-t", "1", "victim")  # a fresh log: restart the listener under a new name
    sb.pw("rm", "victim")
    sb.pw("run", "-d", "--name", "victim", "--network", "app", "--", "python3", "-u", "-c",
          LISTEN)
    seen, neighbour = attack(sb, "guarded")
    assert seen == [], f"spoofed frames got through: {seen}"
    assert attacker_mac not in neighbour, neighbour
    assert sb.pw("gc").stdout.startswith("nothing to repair")


def test_entries_follow_endpoints(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.87.0.0/24")
    sb.pw("network", "create", "more", "--subnet", "10.88.0.0/24")
    sb.pw("run", "-d", "--name", "c", "--network", "app", "--", "sleep", "3600")

    def entries() -> str:
        return sb.in_host("nft", "list", "set", "bridge", "portway", "addrs").stdout

    assert "10.87.0.2" in entries()
    sb.pw("network", "connect", "more", "c")
    assert "10.88.0.2" in entries()
    sb.pw("network", "disconnect", "more", "c")
    assert "10.88.0.2" not in entries() and "10.87.0.2" in entries()
    # Someone removes an entry: gc notices and puts it back.
    host_if = sb.inspect("c")["NetworkSettings"]["Networks"]["app"]["HostInterface"]  # type: ignore[index]
    sb.in_host("nft", "delete", "element", "bridge", "portway", "addrs",
               f"{{ \"{host_if}\" . 10.87.0.2 }}")
    assert "restore element" in sb.pw("gc").stdout
    assert "10.87.0.2" in entries()
    sb.pw("rm", "-f", "c")
    assert "10.87.0.2" not in entries()
    sb.pw("network", "rm", "app", "more")
    listing = sb.in_host("nft", "list", "tables").stdout
    assert "portway" not in listing


LISTEN_BOTH = ("import socket\n"
               "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
               "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
               "s.bind(('::', 9999))\n"
               "while True:\n"
               "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")


def test_a_neighbours_mac_and_address_together(sandbox: Sandbox) -> None:
    """The attacker sends, over IPv4 and IPv6, as its neighbour entirely: the neighbour's
    MAC with the neighbour's address, a pair that is valid, but on another bridge port.
    Over IPv6 also the mixes (its own MAC with the neighbour's address, the neighbour's
    MAC with its own address). The checks key each pair by the port it arrives on (a
    check of the pair alone would pass the first two). Control: without `bridge
    portway`, all of them are delivered."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.89.0.0/24", "--subnet",
          "fd00:89::/64")
    sb.pw("run", "-d", "--name", "victim", "--network", "app", "--", "python3", "-u", "-c",
          LISTEN_BOTH)
    sb.pw("run", "-d", "--name", "other", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")

    def ep(name: str) -> dict[str, str]:
        return sb.inspect(name)["NetworkSettings"]["Networks"]["app"]  # type: ignore[index, no-any-return]

    victim, other, me = ep("victim"), ep("other"), ep("attacker")
    v6 = "GlobalIPv6Address"
    frames = {
        "v4-as-other": ["udp", "eth0", other["MacAddress"], other["IPAddress"],
                        victim["MacAddress"], victim["IPAddress"], "9999"],
        "v6-as-other": ["udp6", "eth0", other["MacAddress"], other[v6],
                        victim["MacAddress"], victim[v6], "9999"],
        "v6-own-mac": ["udp6", "eth0", me["MacAddress"], other[v6], victim["MacAddress"],
                       victim[v6], "9999"],
        "v6-other-mac": ["udp6", "eth0", other["MacAddress"], me[v6], victim["MacAddress"],
                         victim[v6], "9999"],
    }

    def attack(round_: str) -> list[str]:
        for what, frame in frames.items():
            sb.pw("exec", "attacker", "--", "python3", FRAMES, *frame, f"{round_}-{what}")
        # An honest datagram after them, on the same path.
        marker = f"honest-{round_}"
        sb.pw("exec", "attacker", "--", "python3", "-c", SEND, victim["IPAddress"], marker)
        deadline = time.monotonic() + 10
        while True:
            seen = sb.pw("logs", "victim").stdout.splitlines()
            if any(line.startswith(marker) for line in seen):
                return sorted(line.split()[0] for line in seen
                              if line.startswith(round_))
            assert time.monotonic() < deadline, f"the honest datagram never arrived: {seen}"
            time.sleep(0.05)

    sb.in_host("nft", "delete", "table", "bridge", "portway")
    assert attack("control") == sorted(f"control-{what}" for what in frames)
    assert "re-create table bridge portway" in sb.pw("gc").stdout
    assert attack("guarded") == []
    assert sb.pw("gc").stdout.startswith("nothing to repair")
