"""The host's router advertisements and redirects never reach a container.

A container's `eth0` keeps the kernel's accept_ra=1 (as Docker's does): an
advertisement that reaches it adds a default route and a SLAAC address. spoof_ip6
drops the ones a container sends; what a program of the host sends into a bridge
(radvd, dnsmasq's enable-ra, a raw socket) passes no prerouting hook, only the
bridge's output hook, where `bridge portway`'s host_out drops them on the way to a
container port. These tests write such frames from the host namespace onto the
bridge and look in the container (its routes and addresses, and a packet socket on its
`eth0`, which sees whatever reaches the port), with the rule and without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from test_ipv6 import FRAMES, _delete_rule, netns_of, networks
from test_nd_guard import Lab
from test_netavark import (
    Podmanish,
    net_info,
    options,
    podman,  # noqa: F401  (the fixture)
)

from conftest import Sandbox, ip_json, sh

NO_RA = "the host advertises no routes to containers and redirects none"
BEHIND_AH = "behind AH, only TCP, UDP"
NO_VLAN = "no VLAN tag hides a message"
NO_REDIRECT4 = "the host redirects no container's IPv4 either"
PREFIX = "2001:db8:bad::"
ALL_NODES = "33:33:00:00:00:01"
RA, REDIRECT, NS, NA = 134, 137, 135, 136


def link_local(mac: str) -> str:
    """fe80:: with the modified EUI-64 of mac."""
    raw = bytearray.fromhex(mac.replace(":", ""))
    raw[0] ^= 0x02
    eui = bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])
    return "fe80::" + ":".join(eui[i:i + 2].hex() for i in range(0, 8, 2))


def seen_at(netns: str, what: str, expect: int, send: list[str]) -> bool:
    """Whether a frame that send writes from the host reaches eth0 of netns: `sniff6`
    (an ICMPv6 message of type expect) or `sniff` (an AH packet with SPI expect)."""
    sniffer = subprocess.Popen(["ip", "netns", "exec", netns, "python3", FRAMES, what,
                                "eth0", "1.5", str(expect)], stdout=subprocess.PIPE, text=True)
    try:
        assert sniffer.stdout is not None and sniffer.stdout.readline() == "ready\n"
        sh("ip", "netns", "exec", *send)
        seen, _ = sniffer.communicate(timeout=10)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
            sniffer.wait()
    return (f"icmpv6 {expect}" if what == "sniff6" else f"ah {expect} ") in seen


class Host:
    """The Lab's network seen from the host: it writes frames onto the bridge."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.lab = Lab(sb)
        self.victim = netns_of(sb, "victim")
        self.address = str(networks(sb, "victim")["app"]["GlobalIPv6Address"])
        self.mac = str(networks(sb, "victim")["app"]["MacAddress"])
        self.bridge, self.bridge_mac = self.lab.bridge, self.lab.bridge_mac

    def frame(self, *args: str) -> list[str]:
        return [self.sb.host, "python3", FRAMES, args[0], self.bridge, *args[1:]]

    def advertise(self) -> list[str]:
        return self.frame("ra", self.bridge_mac, ALL_NODES, f"{PREFIX}/64")

    def took_advertisement(self) -> bool:
        """Whether the victim has a route or an address from an advertisement."""
        routes = sh("ip", "-n", self.victim, "-6", "route", "show").stdout
        addrs = sh("ip", "-n", self.victim, "-6", "addr", "show", "dev", "eth0").stdout
        return "proto ra" in routes or PREFIX in addrs

    def advertisement_arrives(self) -> bool:
        arrived = seen_at(self.victim, "sniff6", RA, self.advertise())
        time.sleep(0.3)
        taken = self.took_advertisement()
        assert arrived == taken, (arrived, taken)
        return taken

    def forget(self) -> None:
        sh("ip", "-n", self.victim, "-6", "route", "flush", "proto", "ra")
        sh("ip", "-n", self.victim, "-6", "addr", "flush", "dev", "eth0", "to",
           f"{PREFIX}/64")
        assert not self.took_advertisement()


def test_the_hosts_router_advertisement_reaches_no_container(sandbox: Sandbox) -> None:
    sb = sandbox
    host = Host(sb)
    assert not host.advertisement_arrives()
    # Ordinary traffic and neighbour discovery from the host still arrive (the host
    # asks for the victim's MAC first: its neighbour entry is flushed).
    assert host.lab.host_sends("victim", "plain")
    _delete_rule(sb, "bridge", "host_out", NO_RA)  # the control: then it is taken
    assert host.advertisement_arrives()
    host.forget()
    assert "restore chain bridge portway host_out: it differs from what portway wrote" \
        in sb.pw("gc").stdout.splitlines()
    assert not host.advertisement_arrives()
    # A table an earlier portway made has no host_out: gc, and the daemon's start,
    # which runs it, add it.
    sb.in_host("nft", "delete", "chain", "bridge", "portway", "host_out")
    assert host.advertisement_arrives()
    host.forget()
    assert "restore chain bridge portway host_out: it is missing" \
        in sb.pw("gc").stdout.splitlines()
    assert not host.advertisement_arrives()
    sb.in_host("nft", "delete", "chain", "bridge", "portway", "host_out")
    sb.pw("daemon", "stop")
    sb.pw("daemon", "start")
    assert not host.advertisement_arrives()
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert host.lab.host_sends("victim", "after")


def test_the_hosts_redirect_reaches_no_container(sandbox: Sandbox) -> None:
    sb = sandbox
    host = Host(sb)
    redirect = host.frame("redirect", host.bridge_mac, link_local(host.bridge_mac), host.mac,
                          host.address, "fe80::bad", "2001:db8:1::1")
    assert not seen_at(host.victim, "sniff6", REDIRECT, redirect)
    _delete_rule(sb, "bridge", "host_out", NO_RA)
    assert seen_at(host.victim, "sniff6", REDIRECT, redirect)
    assert "restore chain bridge portway host_out" in sb.pw("gc").stdout
    assert not seen_at(host.victim, "sniff6", REDIRECT, redirect)


def test_the_hosts_ipv4_redirect_reaches_no_container(sandbox: Sandbox) -> None:
    """A container's eth0 keeps the kernel's accept_redirects=1: an IPv4 redirect from its
    gateway, naming another first hop, would send its traffic around the host."""
    sb = sandbox
    host = Host(sb)
    app = networks(sb, "victim")["app"]
    address, gateway = str(app["IPAddress"]), str(app["Gateway"])
    first_hop = address.rsplit(".", 1)[0] + ".99"
    # The kernel acts on a redirect only to a first hop whose MAC it knows.
    sh("ip", "-n", host.victim, "neigh", "replace", first_hop, "lladdr", "02:00:00:00:00:99",
       "dev", "eth0", "nud", "permanent")
    redirect = host.frame("redirect4", host.bridge_mac, gateway, host.mac, address, first_hop,
                          "192.0.2.7")

    def taken() -> bool:
        sh("ip", "netns", "exec", *redirect)
        time.sleep(0.3)
        route = sh("ip", "-n", host.victim, "route", "get", "192.0.2.7").stdout
        sh("ip", "-n", host.victim, "route", "flush", "cache")
        return f"via {first_hop} " in route

    assert not taken()
    _delete_rule(sb, "bridge", "host_out", NO_REDIRECT4)  # the control
    assert taken()
    assert "restore chain bridge portway host_out" in sb.pw("gc").stdout
    assert not taken()


def test_the_hosts_neighbour_discovery_reaches_containers(sandbox: Sandbox) -> None:
    """What the host must send a container of neighbour discovery passes host_out."""
    sb = sandbox
    host = Host(sb)
    gateway = "fd00:148::1"
    ns = host.frame("ns", host.bridge_mac, gateway, host.mac, host.address, host.address,
                    host.bridge_mac)
    na = host.frame("na", host.bridge_mac, gateway, host.mac, host.address, gateway,
                    host.bridge_mac)
    assert seen_at(host.victim, "sniff6", NS, ns)
    assert seen_at(host.victim, "sniff6", NA, na)


def test_a_vlan_tag_hides_no_advertisement(sandbox: Sandbox) -> None:
    """Tagged with VLAN 0 (priority only), an advertisement's EtherType is the tag's, so
    nftables finds no ICMPv6 in it; the container's kernel takes it as untagged."""
    sb = sandbox
    host = Host(sb)
    tagged = [*host.advertise(), "vlan0"]

    def taken() -> bool:
        sh("ip", "netns", "exec", *tagged)
        time.sleep(0.3)
        return host.took_advertisement()

    assert not taken()
    _delete_rule(sb, "bridge", "host_out", NO_VLAN)  # the control
    assert taken()
    host.forget()
    assert "restore chain bridge portway host_out" in sb.pw("gc").stdout
    assert not taken()


def test_an_advertisement_behind_ah_reaches_no_container(sandbox: Sandbox) -> None:
    """Behind an Authentication Header, `icmpv6 type` is unreadable: host_out lets only
    what spoof_ip6 lets through behind one (the transports and ESP) on to a container;
    UDP behind AH still arrives."""
    sb = sandbox
    host = Host(sb)
    source = link_local(host.bridge_mac)

    def ah(spi: int, *inner: str) -> list[str]:
        return host.frame("ah", host.bridge_mac, source, host.mac, host.address, str(spi),
                          *inner)

    assert not seen_at(host.victim, "sniff", 41, ah(41, "ra", f"{PREFIX}/64"))
    assert seen_at(host.victim, "sniff", 42, ah(42, "udp", "9999", "behind-ah"))
    _delete_rule(sb, "bridge", "host_out", BEHIND_AH)
    assert seen_at(host.victim, "sniff", 43, ah(43, "ra", f"{PREFIX}/64"))
    assert "restore chain bridge portway host_out" in sb.pw("gc").stdout
    assert not seen_at(host.victim, "sniff", 44, ah(44, "ra", f"{PREFIX}/64"))


def test_a_podman_container_takes_no_advertisement_of_the_host(
        podman: Podmanish) -> None:  # noqa: F811
    """Through the netavark backend, on a dual-stack network: its container's port is a
    pwv- port of the same bridge table, so host_out keeps the host's advertisement from
    it as from portway's own containers."""
    p = podman
    netns = p.namespace()
    dual = net_info()
    dual.update(ipv6_enabled=True, subnets=[
        {"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"},
        {"subnet": "fd00:89::/64", "gateway": "fd00:89::1"}])
    data = options("alpha", "10.89.0.10")
    data["networks"]["a1pnet"]["static_ips"] = ["10.89.0.10", "fd00:89::10"]
    data["network_info"]["a1pnet"] = dual
    json.loads(p.nv("setup", netns, data=data).stdout)
    name = os.path.basename(netns)
    bridge_mac = str(ip_json(p.sb.host, "link", "show", "podman1")[0]["address"])
    advertise = [p.sb.host, "python3", FRAMES, "ra", "podman1", bridge_mac, ALL_NODES,
                 f"{PREFIX}/64"]

    def taken() -> bool:
        arrived = seen_at(name, "sniff6", RA, advertise)
        time.sleep(0.3)
        routes = sh("ip", "-n", name, "-6", "route", "show").stdout
        assert arrived == ("proto ra" in routes), (arrived, routes)
        return arrived

    try:
        assert not taken()
        _delete_rule(p.sb, "bridge", "host_out", NO_RA)  # the control
        assert taken()
        sh("ip", "-n", name, "-6", "route", "flush", "proto", "ra")
        assert "restore chain bridge portway host_out" in p.pw("gc").stdout
        assert not taken()
    finally:
        p.nv("teardown", netns, data=data)


def test_trace_shows_host_out_on_the_hosts_way_to_a_container(sandbox: Sandbox) -> None:
    """`portway trace` models the bridge's output hook: a connection from the host to a
    container meets host_out there, and passes it by its policy, as the kernel's own trace
    of a probe shows too."""
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.149.0.0/24", "--subnet",
          "fd00:149::/64")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "python3", "-m",
          "http.server", "80", "--bind", "::")
    address = str(networks(sb, "web")["app"]["GlobalIPv6Address"])
    for _ in range(50):  # until the server listens
        if ":80 " in sh("ip", "netns", "exec", netns_of(sb, "web"), "ss", "-ltnH").stdout:
            break
        time.sleep(0.1)
    out = sb.pw("trace", "host", f"[{address}]:80", "--live").stdout
    static, live = out.split("\nlive: ", 1)
    assert [" ".join(line.split()[2:]) for line in static.splitlines()
            if "bridge portway host_out" in line] == [
        "host: bridge portway host_out output: policy accept"], out
    assert "bridge portway host_out (output): policy accept" in live, out
    assert "static and live agree" in out, out
