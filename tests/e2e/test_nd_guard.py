"""Neighbour discovery at a container's bridge port: attacked, and used as it should be.

`bridge portway`'s spoof_ip6 lets a container's neighbour solicitations and
advertisements name only its port's own MAC, and advertise only its own address. These
tests send what a container's stack never sends (the message behind an extension
header, or cut into fragments) and check that it poisons nothing, and they check that
what a container's stack does send (solicitations and advertisements with a link-layer
address option, on a dual-stack and an IPv6-only network, from a container on both,
with a MAC of its own choosing, disconnected and connected again, next to another
portway's containers) still goes through, with one `lladdrs` element per IPv6 port.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_ipv6 import FRAMES, LISTEN6, SEND6, _delete_rule, netns_of, networks
from test_netavark import (
    Podmanish,
    get,
    net_info,
    options,
    podman,  # noqa: F401  (the fixture)
)

from conftest import Sandbox, _cleanup_through_portway, ip_json, sh

NO_EXT = "neighbour discovery has no extension headers"
BEHIND_AH = "behind AH, only TCP, UDP"
OWN_ADDRESS = "a container sends only from its own IPv6 address"
FIRST_FRAGMENT = "a first fragment holds its chain of headers"
GATEWAY6 = "fd00:148::1"


class Lab:
    """A dual-stack network with two containers, victim and attacker, each printing the
    UDP datagrams it gets on port 9999."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.148.0.0/24", "--subnet",
              "fd00:148::/64")
        for name in ("victim", "attacker"):
            sb.pw("run", "-d", "--name", name, "--network", "app", "--", "python3", "-u",
                  "-c", LISTEN6, "9999")
        self.attacker, self.victim = (networks(sb, n)["app"] for n in ("attacker", "victim"))
        self.mac = str(self.attacker["MacAddress"])
        self.address = str(self.attacker["GlobalIPv6Address"])
        self.bridge = next(str(link["ifname"]) for link in ip_json(sb.host, "link", "show")
                           if str(link["ifname"]).startswith("pwbr-"))
        self.bridge_mac = str(ip_json(sb.host, "link", "show", self.bridge)[0]["address"])

    def host_sends(self, name: str, marker: str) -> bool:
        """Whether container name gets a datagram the host sends to its address."""
        address = str(networks(self.sb, name)["app"]["GlobalIPv6Address"])
        sh("ip", "netns", "exec", self.sb.host, "python3", "-c", SEND6, address, "9999",
           marker)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if marker in self.sb.pw("logs", name).stdout:
                return True
            time.sleep(0.05)
        return False

    def advertise(self, target: str, lladdr: str, how: str) -> None:
        """An advertisement from the attacker, to the host: target is at lladdr."""
        self.sb.pw("exec", "attacker", "--", "python3", FRAMES, "na", "eth0", self.mac,
                   self.address, self.bridge_mac, "fd00:148::1", target, lladdr, how)

    def poisoned(self, whose: str, lladdr: str, how: str, round_: str) -> bool:
        """Whether an advertisement (sent as how says) of container whose's address
        points the host's entry for it at lladdr; the host knew it right before."""
        address = str(networks(self.sb, whose)["app"]["GlobalIPv6Address"])
        sh("ip", "-n", self.sb.host, "-6", "neigh", "flush", "to", address)
        assert self.host_sends(whose, f"{round_}-before")
        self.advertise(address, lladdr, how)
        time.sleep(0.3)
        return lladdr in sh("ip", "-n", self.sb.host, "-6", "neigh", "show", address).stdout


@pytest.mark.parametrize("case", [
    # The option in the second fragment: the attacker's own address at the victim's MAC.
    "option",
    # The target and the option in the second fragment: the victim's address at the
    # attacker's MAC (what `targets6` is there to stop).
    "target"])
def test_a_fragmented_advertisement_poisons_nothing(sandbox: Sandbox, case: str) -> None:
    """Cut in two, an advertisement's option (or its target) travels in a fragment
    whose transport header nftables cannot read (`@th` is unreadable in a fragment that
    is not the first), so none of spoof_ip6's checks of the option or the target
    sees it; the host reassembles the fragments and takes the advertisement. Neighbour
    discovery is never fragmented (RFC 6980): spoof_ip6 drops it behind any extension
    header."""
    sb = sandbox
    lab = Lab(sb)
    whose, lladdr, how = {
        "option": ("attacker", str(lab.victim["MacAddress"]), "frag24"),
        "target": ("victim", lab.mac, "frag8")}[case]
    assert not lab.poisoned(whose, lladdr, how, "first")
    _delete_rule(sb, "bridge", "spoof_ip6", NO_EXT)  # the control: then it works
    assert lab.poisoned(whose, lladdr, how, "control")
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    assert not lab.poisoned(whose, lladdr, how, "guarded")
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert lab.host_sends(whose, "after")


def test_an_extension_header_hides_no_option(sandbox: Sandbox) -> None:
    """Behind a destination options header, an advertisement's option is still where
    the check of the port's MAC reads it (`@th` follows the extension headers to the
    ICMPv6 header), and the header's length counts in `ip6 length`."""
    sb = sandbox
    lab = Lab(sb)
    victim_mac = str(lab.victim["MacAddress"])
    assert not lab.poisoned("attacker", victim_mac, "dstopt", "first")
    _delete_rule(sb, "bridge", "spoof_ip6", NO_EXT)
    _delete_rule(sb, "bridge", "spoof_ip6", "carries at most one option")
    assert not lab.poisoned("attacker", victim_mac, "dstopt", "option checked")
    _delete_rule(sb, "bridge", "spoof_ip6", "names only the port's own MAC")
    assert lab.poisoned("attacker", victim_mac, "dstopt", "control")
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    assert not lab.poisoned("attacker", victim_mac, "dstopt", "guarded")
    assert sb.pw("gc").stdout.startswith("nothing to repair")


def test_a_first_fragment_cut_between_two_headers_hides_nothing(sandbox: Sandbox) -> None:
    """A first fragment that ends where its second destination options header begins
    (the advertisement follows in the other fragment) has a chain of headers nftables
    cannot follow to its end: no transport protocol, no `icmpv6 type`, in either
    fragment, so no check of neighbour discovery matched and the source check let both
    pass; the host's reassembly does not count it truncated (it cannot read the next
    header either) and takes the advertisement. spoof_ip6 drops a first fragment with
    an extension header but AH behind its fragment header (the control: with that rule
    deleted, the victim's address is at the attacker's MAC in the host's entry, and the
    gateway's at the attacker's MAC in the victim's, which the bridge passes the
    reassembled advertisement whole). A UDP
    datagram behind a destination options header, in two fragments the first of which
    holds the headers up to UDP's (as RFC 8200 wants), still reaches the victim: its
    transport header read, it takes the fast path."""
    sb = sandbox
    lab = Lab(sb)
    victim = str(lab.victim["GlobalIPv6Address"])

    def datagram(marker: str) -> bool:
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "udp6", "eth0", lab.mac,
              lab.address, str(lab.victim["MacAddress"]), victim, "9999", marker,
              "fragopts")
        deadline = time.monotonic() + 2
        while marker not in sb.pw("logs", "victim").stdout:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def victim_poisoned(round_: str) -> bool:
        """Whether the cut advertisement, sent to the victim, points its entry for the
        gateway at the attacker's MAC; the victim knew the gateway right before."""
        sh("ip", "-n", sb.host, "-6", "neigh", "flush", "to", victim)  # (poisoned before)
        sh("ip", "-n", victim_ns, "-6", "neigh", "flush", "to", GATEWAY6)
        assert lab.host_sends("victim", f"{round_}-victim")
        sb.pw("exec", "attacker", "--", "python3", FRAMES, "na", "eth0", lab.mac,
              lab.address, str(lab.victim["MacAddress"]), victim, GATEWAY6, lab.mac,
              "fragopts")
        time.sleep(0.3)
        return lab.mac in sh("ip", "-n", victim_ns, "-6", "neigh", "show", GATEWAY6).stdout

    victim_ns = netns_of(sb, "victim")
    assert not lab.poisoned("victim", lab.mac, "fragopts", "first")
    assert not victim_poisoned("first")
    assert datagram("cut-datagram-1")
    _delete_rule(sb, "bridge", "spoof_ip6", FIRST_FRAGMENT)
    assert lab.poisoned("victim", lab.mac, "fragopts", "control")
    assert victim_poisoned("control")
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    assert not lab.poisoned("victim", lab.mac, "fragopts", "guarded")
    assert not victim_poisoned("guarded")
    assert datagram("cut-datagram-2")
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert lab.host_sends("victim", "after")


def arrives(netns: str, ifname: str, spi: int, send: Callable[[], object]) -> bool:
    """Whether ifname (in namespace netns) receives the AH packet with this SPI that
    send has a container write: a packet socket there sees every frame that reaches the
    port, whatever the stack does with it next."""
    sniffer = subprocess.Popen(["ip", "netns", "exec", netns, "python3", FRAMES, "sniff",
                                ifname, "1.5", str(spi)], stdout=subprocess.PIPE, text=True)
    try:
        assert sniffer.stdout is not None and sniffer.stdout.readline() == "ready\n"
        send()
        seen, _ = sniffer.communicate(timeout=10)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
            sniffer.wait()
    return f"ah {spi} " in seen


@pytest.mark.parametrize("inner", [
    # To all nodes (the bridge floods it to the victim's port): a default route and a
    # prefix, from the attacker's own address.
    "ra",
    # To the host: the victim's address is at the attacker's MAC.
    "na",
    # The same behind a destination options header behind the AH.
    "dstopt-na"])
def test_neighbour_discovery_behind_ah_is_dropped(sandbox: Sandbox, inner: str) -> None:
    """nftables finds a packet's transport header past the extension headers but stops at
    an Authentication Header (the kernel's ipv6_find_hdr with IP6_FH_F_AUTH): behind one,
    an ICMPv6 message has `meta l4proto ah` and no `icmpv6 type`, so none of spoof_ip6's
    checks of neighbour discovery can see it, and from the port's own MAC and address
    the first rule took it as data. Whether a receiver would take it depends on its
    security associations (with none, Linux drops it): the bridge does not let it reach
    anyone. Seen where it would arrive, by a packet socket: dropped; with the rule
    against ICMPv6 behind AH deleted, it arrives (the control); after gc, dropped."""
    sb = sandbox
    lab = Lab(sb)
    victim = str(lab.victim["GlobalIPv6Address"])
    if inner == "ra":
        where = (netns_of(sb, "victim"), "eth0")
        to, message = ["33:33:00:00:00:01", "ff02::1"], ["ra", "2001:db8:bad::/64"]
    else:
        where = (sb.host, lab.bridge)
        to, message = [lab.bridge_mac, "fd00:148::1"], [inner, victim, lab.mac]

    def sent(spi: int) -> bool:
        return arrives(*where, spi, lambda: sb.pw(
            "exec", "attacker", "--", "python3", FRAMES, "ah", "eth0", lab.mac, lab.address,
            *to, str(spi), *message))

    assert not sent(1)
    _delete_rule(sb, "bridge", "spoof_ip6", BEHIND_AH)
    assert sent(2)
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    assert not sent(3)
    assert sb.pw("gc").stdout.startswith("nothing to repair")


def test_other_traffic_behind_ah_passes_from_its_own_address_only(sandbox: Sandbox) -> None:
    """What is not ICMPv6 passes behind an AH as it does without one: from the port's own
    MAC and address it reaches the victim; from another container's address, or one
    nobody has, it is dropped by the check of the source address (the first rule no
    longer accepts AH at once), and arrives with that check deleted (the control)."""
    sb = sandbox
    lab = Lab(sb)
    victim = str(lab.victim["GlobalIPv6Address"])

    def sent(spi: int, source: str) -> bool:
        return arrives(netns_of(sb, "victim"), "eth0", spi, lambda: sb.pw(
            "exec", "attacker", "--", "python3", FRAMES, "ah", "eth0", lab.mac, source,
            str(lab.victim["MacAddress"]), victim, str(spi), "udp", "9999", f"spi {spi}"))

    assert sent(1, lab.address)
    assert not sent(2, "fd00:148::99")
    assert not sent(3, victim)
    _delete_rule(sb, "bridge", "spoof_ip6", OWN_ADDRESS)
    assert sent(4, "fd00:148::99")
    assert "restore chain bridge portway spoof_ip6" in sb.pw("gc").stdout
    assert not sent(5, "fd00:148::99")
    assert sent(6, lab.address)


def _set(sb: Sandbox, name: str) -> set[tuple[str, str]]:
    """The elements of `bridge portway`'s set name: (port, the rest as JSON); none if
    the table is gone."""
    cp = sb.in_host("nft", "-j", "list", "set", "bridge", "portway", name, check=False)
    if cp.returncode != 0 and sb.in_host("nft", "list", "table", "bridge", "portway",
                                         check=False).returncode != 0:
        return set()
    listing = json.loads(cp.stdout)["nftables"]
    body = next(i["set"] for i in listing if "set" in i)
    out = set()
    for elem in body.get("elem", []):
        key = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
        port, *rest = key["concat"] if isinstance(key, dict) else [key]
        out.add((str(port), json.dumps(rest)))
    return out


def _macs_of(netns: str) -> set[str]:
    """The MACs of a container's interfaces that have a global IPv6 address, as the
    kernel has them (netns: the container's namespace)."""
    return {str(link["address"]) for link in ip_json(netns, "addr", "show")
            if any(a["family"] == "inet6" and a["scope"] == "global"
                   for a in link["addr_info"])}  # type: ignore[attr-defined]


def _lladdrs_follow_the_ports(sb: Sandbox, namespaces: list[str]) -> None:
    """lladdrs holds one element per IPv6 port (v6ports): its MAC in `macs`, which is
    the MAC the container's interface has (namespaces: the containers')."""
    lladdrs, macs, ports = (_set(sb, n) for n in ("lladdrs", "macs", "v6ports"))
    assert {p for p, _ in lladdrs} == {p for p, _ in ports}, (lladdrs, ports)
    want = {(p, json.dumps([int(json.loads(m)[0].replace(":", ""), 16)]))
            for p, m in macs if (p, "[]") in ports}
    assert lladdrs == want, (lladdrs, macs)
    kernel = set().union(*(_macs_of(ns) for ns in namespaces))
    assert {json.loads(m)[0] for p, m in macs if (p, "[]") in ports} == kernel


def _reaches(sb: Sandbox, sender: str, receiver: str, network: str, marker: str) -> bool:
    """Whether a datagram from sender reaches receiver's IPv6 address on network, both
    having forgotten their neighbours first (so that each solicits, with its MAC in the
    option, and answers with it)."""
    for name in (sender, receiver):
        sh("ip", "-n", netns_of(sb, name), "-6", "neigh", "flush", "all")
    address = str(networks(sb, receiver)[network]["GlobalIPv6Address"])
    sb.pw("exec", sender, "--", "python3", "-c", SEND6, address, "9999", marker)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if marker in sb.pw("logs", receiver).stdout:
            return True
        time.sleep(0.05)
    return False


def test_each_port_names_its_own_mac(sandbox: Sandbox, tmp_path: Path) -> None:
    """A container on a dual-stack network (with a MAC given by --mac-address), on an
    IPv6-only one and on an IPv4-only one: an lladdrs element for each IPv6 port, with
    that port's MAC, and neighbour discovery with the option works on both IPv6
    networks, after a disconnect and a connect too. Another portway in the same host
    namespace has an IPv6 container of its own: neither's gc touches the other's
    element, and gc run twice finds nothing."""
    sb = sandbox
    sb.pw("network", "create", "dual", "--ipv6", "--subnet", "10.149.0.0/24", "--subnet",
          "fd00:149::/64")
    sb.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet", "fd00:150::/64")
    sb.pw("network", "create", "four", "--subnet", "10.151.0.0/24")
    sb.pw("run", "-d", "--name", "multi", "--network", "dual", "--mac-address",
          "fe:aa:bb:cc:dd:01", "--", "python3", "-u", "-c", LISTEN6, "9999")
    sb.pw("network", "connect", "six", "multi")
    sb.pw("network", "connect", "four", "multi")
    sb.pw("run", "-d", "--name", "peer", "--network", "dual", "--", "python3", "-u", "-c",
          LISTEN6, "9999")
    sb.pw("network", "connect", "six", "peer")
    mine = [netns_of(sb, "multi"), netns_of(sb, "peer")]
    assert "fe:aa:bb:cc:dd:01" in _macs_of(mine[0])
    _lladdrs_follow_the_ports(sb, mine)
    assert len(_set(sb, "lladdrs")) == 4
    for network in ("dual", "six"):
        assert _reaches(sb, "multi", "peer", network, f"{network}-1")
        assert _reaches(sb, "peer", "multi", network, f"{network}-2")
    sb.pw("network", "disconnect", "six", "multi")
    _lladdrs_follow_the_ports(sb, mine)
    assert len(_set(sb, "lladdrs")) == 3
    sb.pw("network", "connect", "six", "multi")
    _lladdrs_follow_the_ports(sb, mine)
    assert _reaches(sb, "multi", "peer", "six", "six-3")
    assert _reaches(sb, "peer", "multi", "six", "six-4")
    other = dataclasses.replace(sb, state_dir=tmp_path / "other")
    try:
        other.pw("network", "create", "theirs", "--ipv6", "--subnet", "10.152.0.0/24",
                 "--subnet", "fd00:152::/64")
        other.pw("run", "-d", "--name", "their", "--network", "theirs", "--", "sleep",
                 "3600")
        _lladdrs_follow_the_ports(sb, [*mine, netns_of(other, "their")])
        before = _set(sb, "lladdrs")
        assert len(before) == 5
        for side in (sb, other, sb, other):
            assert side.pw("gc").stdout.startswith("nothing to repair")
        assert _set(sb, "lladdrs") == before
        other.pw("rm", "-f", "their")
        assert len(_set(sb, "lladdrs")) == 4
    finally:
        _cleanup_through_portway(other)
    _lladdrs_follow_the_ports(sb, mine)


def test_a_podman_container_names_its_own_mac(podman: Podmanish) -> None:  # noqa: F811
    """Through the netavark backend, on a dual-stack network: one container with the MAC
    Podman gives (static_mac, written in capitals), one with the MAC portway picks. Each
    port's lladdrs element has the MAC its interface has, and each container resolves
    the other by neighbour discovery (with the option) and is reached."""
    p = podman
    a, b = p.namespace(), p.namespace()
    dual = net_info()
    dual.update(ipv6_enabled=True, subnets=[
        {"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"},
        {"subnet": "fd00:89::/64", "gateway": "fd00:89::1"}])
    first = options("alpha", "10.89.0.10", static_mac="EE:AB:CD:00:00:0A")
    first["networks"]["a1pnet"]["static_ips"] = ["10.89.0.10", "fd00:89::10"]
    first["network_info"]["a1pnet"] = dual
    second = options("beta", "10.89.0.11")
    second["networks"]["a1pnet"]["static_ips"] = ["10.89.0.11", "fd00:89::11"]
    second["network_info"]["a1pnet"] = dual
    out = json.loads(p.nv("setup", a, data=first).stdout)
    assert out["a1pnet"]["interfaces"]["eth0"]["mac_address"] == "ee:ab:cd:00:00:0a"
    p.nv("setup", b, data=second)
    namespaces = [os.path.basename(ns) for ns in (a, b)]
    _lladdrs_follow_the_ports(p.sb, namespaces)
    assert "ee:ab:cd:00:00:0a" in _macs_of(namespaces[0])
    p.serve(a)
    p.serve(b)
    for ns in namespaces:
        sh("ip", "-n", ns, "-6", "neigh", "flush", "all")
    assert get(["ip", "netns", "exec", namespaces[1]], "http://[fd00:89::10]/") == "200"
    for ns in namespaces:
        sh("ip", "-n", ns, "-6", "neigh", "flush", "all")
    assert get(["ip", "netns", "exec", namespaces[0]], "http://[fd00:89::11]/") == "200"
    for ns, data in ((a, first), (b, second)):
        p.nv("teardown", ns, data=data)
    assert _set(p.sb, "lladdrs") == set()
