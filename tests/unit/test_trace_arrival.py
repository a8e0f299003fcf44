"""The other host's half of a trace across an overlay network (core.trace.arrive): a
VXLAN datagram arriving at a host recorded by hand (test_trace_reasoning's, with a
VXLAN device as a port of network app's bridge and an underlay link), decapsulated into
the bridge, and on to the container, or stopped with the reason."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from test_trace_reasoning import APP, CACHE, IP, world

from portway.core.nftsim import Packet
from portway.core.trace import Iface, Route, Tunnel, TunnelLeg, World, arrive

LEG = TunnelLeg(local="192.0.2.1", vtep="192.0.2.2", vni=4097, port=4789,
                device="pwvx-ab", dmac=CACHE.mac, smac="02:42:0a:4d:00:09",
                packet=Packet(l4proto="tcp", saddr=IP("10.77.0.9"), daddr=CACHE.address,
                              sport=40000, dport=80))


def remote(device: bool = True, up: bool = True) -> World:
    w = world()
    host = w.host
    host.ifaces.append(Iface("ul0", 8, "veth", addrs=(ipaddress.IPv4Interface("192.0.2.2/24"),)))
    host.routes.append(Route(ipaddress.IPv4Network("192.0.2.0/24"), "ul0",
                             prefsrc=IP("192.0.2.2")))
    if device:
        host.ifaces.append(Iface("pwvx-ab", 9, "vxlan", "0e:00:00:00:00:01", up=up,
                                 master=APP.bridge, mtu=1450))
        host.tunnels["pwvx-ab"] = Tunnel(vni=4097, local="192.0.2.2", port=4789, mtu=1450)
    return w


def test_decapsulated_into_the_bridge_and_delivered() -> None:
    t = arrive(remote(), LEG, "container web-a", "cache 10.77.0.3:80")
    assert t.verdict == "delivered", t.summary
    assert t.summary == "delivered to container cache, 10.77.0.3:80/tcp"
    kinds = [(h.kind, h.where) for h in t.hops]
    assert kinds[0] == ("vxlan", "host") and "arrives on ul0" in t.hops[0].detail
    # The datagram meets the host's own hooks before the device takes it.
    decap = kinds.index(("vxlan", "pwvx-ab"))
    assert any(k == "hook" for k, _ in kinds[1:decap])
    assert "decapsulated (VNI 4097, #9 on host, mtu 1450)" in t.hops[decap].detail
    assert f"enters bridge {APP.bridge} by its port pwvx-ab" in t.hops[decap].detail
    # Then as any frame on the bridge: to cache's port, and cache's own namespace.
    assert ("veth", "pwv-cache -> eth0") in kinds
    assert t.hops[-1].kind == "socket" and t.hops[-1].where == "container cache"
    assert t.seen_source == "10.77.0.9"


def test_no_device_of_that_vni() -> None:
    t = arrive(remote(device=False), LEG, "container web-a", "cache 10.77.0.3:80")
    assert t.verdict == "dropped"
    assert t.summary == "host has no VXLAN device for VNI 4097"
    assert "portway doctor" in t.fix


def test_a_device_that_is_down() -> None:
    t = arrive(remote(up=False), LEG, "container web-a", "cache 10.77.0.3:80")
    assert t.verdict == "dropped" and t.summary == "pwvx-ab on host is down"


def test_not_the_vtep() -> None:
    t = arrive(remote(), replace(LEG, vtep="192.0.2.3"), "container web-a", "x")
    assert t.verdict == "dropped" and t.summary == "192.0.2.3 is not an address of host"


def test_nothing_listens_there() -> None:
    leg = replace(LEG, packet=replace(LEG.packet, dport=81))
    t = arrive(remote(), leg, "container web-a", "cache 10.77.0.3:81")
    assert t.verdict == "no-listener" and "container cache" in t.summary


def test_from_the_other_hosts_own_stack_the_reply_stays_here() -> None:
    """The sending host's own process sends from the overlay network's gateway address,
    which this host's bridge holds too: the container answers this host, and the client
    never hears back (a real connection times out), where from a container it works."""
    leg = replace(LEG, packet=replace(LEG.packet, saddr=APP.gateway))
    t = arrive(remote(), leg, "host", "cache 10.77.0.3:80")
    assert t.verdict == "dropped", t.summary
    assert t.summary == ("the request reaches container cache, but its reply does not come "
                         "back: 10.77.0.1 is an address of host as well (an overlay "
                         "network's gateway address is on every host), so the reply ends "
                         "there")
    assert t.fix.startswith("connect from a container on the overlay network")
    assert t.hops[-1].kind == "reply"
