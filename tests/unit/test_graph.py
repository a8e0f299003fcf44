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


def hop(kind: str, where: str, detail: str = "", **decision: str) -> dict[str, Any]:
    return {"kind": kind, "where": where, "detail": detail, **decision}


PUBLISHED = {  # trace outside 198.51.100.1:8080, as portway's trace reports it
    "source": "outside", "destination": "198.51.100.1:8080", "protocol": "tcp",
    "verdict": "delivered", "summary": "delivered to container web, 10.0.0.2:80/tcp",
    "hops": [
        hop("route", "outside", "route lookup: 198.51.100.1 via wan0"),
        hop("veth", "wan0 -> uplink0", "veth pair"),
        hop("hook", "host: inet portway prerouting", 'prerouting: accept by "published '
            'ports on every host address"; destination 198.51.100.1:8080 -> '
            '10.0.0.2:80 (DNAT)', verdict="accept"),
        hop("route", "host", "route lookup: 10.0.0.2 dev pwbr-a"),
        hop("hook", "host: inet portway forward", 'forward: accept by "network app: '
            'published ports" (in out-a)', verdict="accept"),
        hop("bridge", "pwbr-a", "FDB: 02:42:0a:00:00:02 on port pwv-1"),
        hop("veth", "pwv-1 -> eth0", "veth pair: pwv-1 #5 in host -> eth0 #2 in web"),
        hop("route", "container web", "route lookup: 10.0.0.2 is local"),
        hop("socket", "container web", "a tcp socket listens on 0.0.0.0:80")]}


def test_a_path_is_drawn_on_the_topology() -> None:
    from portway.core.graph import path_dot

    dot = path_dot(recorded(), PUBLISHED)
    assert dot.startswith(to_dot(recorded())[:-2])  # the topology, then the path
    bridge, host_end, end = '"br:' + "a" * 64 + '"', f'"veth:{"c" * 64}:{"a" * 64}"', \
        f'"end:{"c" * 64}:{"a" * 64}"'
    # The places the path passes, numbered in order; the hooks on the arrows between,
    # with what they decided and rewrote.
    assert f'{bridge} [color="#1f618d", penwidth=2, xlabel="6"]' in dot
    assert f'{end} [color="#1f618d", penwidth=2, xlabel="7,8,9"]' in dot
    assert f"{bridge} -> {host_end}" in dot and f"{host_end} -> {end}" in dot
    arrow = next(line for line in dot.splitlines() if f'"if:uplink0" -> {bridge}' in line)
    assert "3 inet portway prerouting: accept by" in arrow
    assert "(DNAT 198.51.100.1:8080 -> 10.0.0.2:80)" in arrow
    assert "5 inet portway forward: accept by" in arrow
    # Delivered: the last place and the verdict in green.
    assert f'{end} [color="#1e8449", penwidth=3]' in dot
    assert 'label="delivered: delivered to container web,\\n10.0.0.2:80/tcp"' in dot
    assert dot.count("{") == dot.count("}")


def test_where_a_path_stops_is_red() -> None:
    from portway.core.graph import path_dot

    stopped = {**PUBLISHED, "verdict": "dropped",
               "summary": "dropped in host by inet portway forward: isolation",
               "hops": PUBLISHED["hops"][:5]}
    dot = path_dot(recorded(), stopped)
    assert '"if:uplink0" [color="#c0392b", penwidth=3]' in dot
    end = next(line for line in dot.splitlines() if line.startswith('  "path:end:'))
    assert 'color="#c0392b"' in end and "isolation" in end
    # The hooks after the last place it reached go on the arrow to the verdict.
    to_end = next(line for line in dot.splitlines() if '-> "path:end:' in line)
    assert "5 inet portway forward" in to_end


def test_a_path_picture_is_valid_dot() -> None:
    import shutil
    import subprocess

    from portway.core.graph import path_dot

    assert shutil.which("dot"), "make test installs graphviz (scripts/setup.sh)"
    cp = subprocess.run(["dot", "-Tsvg"], input=path_dot(recorded(), PUBLISHED),
                        capture_output=True, text=True)
    assert cp.returncode == 0 and "<svg" in cp.stdout, cp.stderr


def overlay_topo(entries: bool = True) -> dict[str, Any]:
    topo = recorded()
    net = topo["Networks"][0]
    net["Vxlan"] = {**link("pwvx-a", 4, Expected="pwvx-a", Bridge="pwbr-a"), "Vni": 4097,
                    "Local": "192.0.2.1",
                    "Remote": [{"Name": "web-b", "Addresses": ["10.0.0.3"],
                                "Mac": "02:42:0a:00:00:03", "Host": "192.0.2.2",
                                "Fdb": entries, "Neighbours": True}]}
    return topo


def test_an_overlay_network_draws_its_vxlan_device_and_the_remote_vtep() -> None:
    dot = to_dot(overlay_topo())
    vx, vtep = f'"vx:{"a" * 64}"', f'"vtep:{"a" * 64}:192.0.2.2"'
    assert f'{vx} [label="pwvx-a #4\\nVXLAN VNI 4097\\nlocal 192.0.2.1, mtu 1500"' in dot
    assert f'"br:{"a" * 64}" -> {vx};' in dot
    assert f'{vtep} [label="host 192.0.2.2 (VTEP)\\nweb-b 10.0.0.3 02:42:0a:00:00:03"' in dot
    assert f'{vx} -> {vtep} [label="UDP 192.0.2.1 -> 192.0.2.2:4789"];' in dot
    # The VTEP is outside the host's box.
    host_box = dot[dot.index("subgraph cluster_host"):]
    assert host_box.index(vtep) > host_box.index("\n  }")
    # Its entries missing: the tunnel is red and dashed, and says so.
    broken = to_dot(overlay_topo(entries=False))
    assert f'{vx} -> {vtep} [label="UDP 192.0.2.1 -> 192.0.2.2:4789\\nentries MISSING", ' \
        'style=dashed, color="#c0392b"];' in broken


def test_a_path_across_hosts_goes_through_the_tunnel() -> None:
    from portway.core.graph import path_dot

    trace = {"source": "container web", "verdict": "delivered",
             "summary": "delivered to container web-b (on host 192.0.2.2)",
             "hops": [
                 {"kind": "route", "where": "container web", "detail": "route lookup"},
                 {"kind": "veth", "where": "eth0 -> pwv-1", "detail": "veth pair"},
                 {"kind": "bridge", "where": "pwbr-a", "detail": "to port pwvx-a"},
                 {"kind": "vxlan", "where": "pwvx-a", "detail": "FDB: -> VTEP 192.0.2.2"},
                 {"kind": "vxlan", "where": "host 192.0.2.2", "detail": "arrives on ul0"},
                 {"kind": "bridge", "where": "pwbr-a", "detail": "bridged"},
                 {"kind": "socket", "where": "container web-b", "detail": "listens"}]}
    dot = path_dot(overlay_topo(), trace)
    vx, vtep = f'"vx:{"a" * 64}"', f'"vtep:{"a" * 64}:192.0.2.2"'
    assert f'{vx} [color="#1f618d", penwidth=2, xlabel="4"]' in dot
    # The other host's half (the same bridge name there) is drawn at its VTEP.
    assert f'{vtep} [color="#1f618d", penwidth=2, xlabel="5,6,7"]' in dot
    assert f'{vtep} [color="#1e8449", penwidth=3]' in dot
    assert dot.count("{") == dot.count("}")
    import shutil
    import subprocess

    if shutil.which("dot"):
        cp = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True)
        assert cp.returncode == 0, cp.stderr
