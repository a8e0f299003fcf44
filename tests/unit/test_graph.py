"""The DOT picture drawn from a recorded `show --json`."""

from __future__ import annotations

from typing import Any

from portway.cli.render import show_text
from portway.core.graph import to_dot


def link(name: str, index: int, peer: int = 0, **extra: Any) -> dict[str, Any]:
    return {"Present": True, "Name": name, "Index": index, "Peer": peer, "Up": True,
            "Mtu": 1500, "Mac": "", **extra}


def recorded(host_end_present: bool = True) -> dict[str, Any]:
    host_end = link("pwv-1", 5, 2, Bridge="pwbr-a") if host_end_present else \
        {"Present": False, "Bridge": ""}
    return {"HostNetns": "h", "HostLinks": [{"Name": "uplink0", "Index": 2, "Up": True}],
            "Unbridged": [{"Name": "hosty", "Id": "f" * 64, "Status": "running",
                           "Mode": "host"}],
            "Networks": [{
                "Name": "app", "Id": "a" * 64, "Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1",
                "Internal": False, "Bridge": link("pwbr-a", 3, Expected="pwbr-a"),
                "Containers": [{
                    "Name": "web", "Id": "c" * 64, "Status": "running",
                    "Address": "10.0.0.2", "Mac": "02:42:0a:00:00:02", "Aliases": [],
                    "HostEnd": host_end,
                    "ContainerEnd": link("eth0", 2, 5, Netns="pw-c"),
                    "Ports": ["0.0.0.0:8080->80/tcp"]}]}]}


def test_dot_has_every_piece() -> None:
    dot = to_dot(recorded())
    for piece in ('"br:' + "a" * 64 + '"', "pwv-1 #5", "eth0 #2\\n10.0.0.2",
                  'label="DNAT"', '"if:uplink0" -> "port:0.0.0.0:8080->80/tcp"',
                  "shares the host's network", "cluster_" + "c" * 64):
        assert piece in dot, piece
    assert dot.count("{") == dot.count("}")


def test_missing_pieces_are_marked() -> None:
    assert "veth MISSING" in to_dot(recorded(host_end_present=False))
    text = show_text(recorded(host_end_present=False))
    assert "host end MISSING <-> eth0 #2 in pw-c" in text and "portway gc" in text
    healthy = show_text(recorded())
    assert "pwv-1 #5 <-> eth0 #2 in pw-c" in healthy and "MISSING" not in healthy


def test_veths_that_do_not_pair_are_flagged() -> None:
    topo = recorded()
    topo["Networks"][0]["Containers"][0]["ContainerEnd"]["Peer"] = 9
    assert "NOT PEERS" in show_text(topo)


def test_both_families_are_shown_and_drawn() -> None:
    topo = recorded()
    net = topo["Networks"][0]
    net.update(Subnets=["10.0.0.0/24", "fd00:1::/64"], Gateways=["10.0.0.1", "fd00:1::1"])
    member = net["Containers"][0]
    member.update(Addresses=["10.0.0.2", "fd00:1::2"],
                  Ports=["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"])
    text = show_text(topo)
    assert "network app  10.0.0.0/24, fd00:1::/64  gateway 10.0.0.1, fd00:1::1" in text
    assert "10.0.0.2, fd00:1::2" in text and "[::]:8080->80/tcp" in text
    dot = to_dot(topo)
    assert "10.0.0.0/24 gw 10.0.0.1\\nfd00:1::/64 gw fd00:1::1" in dot
    assert "eth0 #2\\n10.0.0.2\\nfd00:1::2" in dot
    assert '"if:uplink0" -> "port:[::]:8080->80/tcp"' in dot
    # An IPv6-only network: its one subnet.
    net.update(Subnet="fd00:1::/64", Gateway="fd00:1::1", Subnets=["fd00:1::/64"],
               Gateways=["fd00:1::1"])
    member.update(Address="fd00:1::2", Addresses=["fd00:1::2"])
    text = show_text(topo)
    assert "network app  fd00:1::/64  gateway fd00:1::1" in text
    assert "eth0 #2\\nfd00:1::2\"" in to_dot(topo)


def test_namespaces_portway_did_not_make() -> None:
    topo = recorded()
    topo["Foreign"] = [{"Key": "ns:lab-vm", "Label": "namespace lab-vm", "Links": [
        {"HostEnd": link("vm0", 7, 2, Bridge="br0"),
         "End": link("eth0", 2, 7, Addresses=["10.88.0.2"])}]}]
    dot = to_dot(topo)
    for piece in ('"cluster_ns:ns:lab-vm"', 'label="namespace lab-vm"', "vm0 #7\\nport of br0",
                  "eth0 #2\\n10.88.0.2", '"fveth:vm0" -> "fend:ns:lab-vm:vm0"'):
        assert piece in dot, piece
    assert dot.count("{") == dot.count("}")
    text = show_text(topo)
    assert "namespaces portway did not make" in text
    assert "namespace lab-vm   vm0 #7 (port of br0)   eth0 #2   10.88.0.2" in text
