"""kernel/rtnl.py against real namespaces of the test's own: its dumps say what pyroute2's
say (the observe functions it stands in for), on a namespace with a bridge, veths into
another namespace, addresses of both families, routes of several kinds, neighbours and
learned FDB entries; nft.has_tables sees a table of any family; and Nft.listing keeps
its listing while the ruleset's generation stays."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from portway.kernel import links, netns, observe, rtnl
from portway.kernel.nft import Nft, generation, has_tables
from portway.testbed import add_netns, del_netns


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


CONF6 = {"forwarding": rtnl.DEVCONF_FORWARDING, "disable_ipv6": rtnl.DEVCONF_DISABLE_IPV6}
CONF = {"forwarding": rtnl.IPV4_DEVCONF_FORWARDING, "rp_filter": rtnl.IPV4_DEVCONF_RP_FILTER,
        "route_localnet": rtnl.IPV4_DEVCONF_ROUTE_LOCALNET}


@pytest.fixture
def spaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    tag = secrets.token_hex(3)
    host, other = f"pwk-h-{tag}", f"pwk-c-{tag}"
    try:
        for ns in (host, other):
            add_netns(ns)
        yield host, other
    finally:
        for ns in (host, other):
            del_netns(ns)


def test_dumps_say_what_pyroute2_says(spaces: tuple[str, str]) -> None:
    host, other = spaces
    for args in (("link", "add", "br0", "type", "bridge"),
                 ("link", "add", "v0", "type", "veth", "peer", "name", "eth0", "netns", other),
                 ("link", "add", "v1", "type", "veth", "peer", "name", "v1p"),
                 ("link", "set", "v0", "master", "br0", "up"), ("link", "set", "br0", "up"),
                 ("link", "set", "v1", "up"), ("link", "set", "v1p", "up"),
                 ("link", "set", "lo", "up"),
                 ("addr", "add", "10.70.0.1/24", "dev", "br0"),
                 ("addr", "add", "fd00:70::1/64", "dev", "br0", "nodad"),
                 ("addr", "add", "192.0.2.1/24", "dev", "v1"),
                 ("route", "add", "default", "via", "192.0.2.2", "metric", "5"),
                 ("route", "add", "blackhole", "10.99.0.0/16"),
                 ("route", "add", "10.98.0.0/16", "via", "192.0.2.3", "table", "7"),
                 ("neigh", "add", "192.0.2.2", "lladdr", "02:00:00:00:00:02", "dev", "v1"),
                 ("neigh", "add", "10.70.0.9", "dev", "br0", "nud", "failed"),
                 ("bridge", "fdb", "add", "02:00:00:00:00:07", "dev", "v0", "master",
                  "static")):
        if args[0] == "bridge":
            sh("ip", "netns", "exec", host, *args)
        else:
            sh("ip", "-n", host, *args)
    for rule in (("rule", "add", "from", "10.70.0.0/24", "table", "7", "priority", "100"),
                 ("rule", "add", "not", "fwmark", "0x5", "table", "7", "priority", "101"),
                 ("rule", "add", "iif", "v1", "oif", "br0", "prohibit", "priority", "102"),
                 ("-6", "rule", "add", "to", "fd00::/8", "table", "7", "priority", "103")):
        sh("ip", "-n", host, *rule)
    sh("ip", "-n", other, "link", "set", "eth0", "up")
    # (ip_forward first: it sets every device's forwarding)
    for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=2",
                "net.ipv6.conf.all.forwarding=1"):
        sh("ip", "netns", "exec", host, "sysctl", "-qw", key)
    for key in ("v1.route_localnet=1", "v1.rp_filter=1", "v0.forwarding=0"):
        sh("ip", "netns", "exec", host, "sysctl", "-qw", f"net.ipv4.conf.{key}")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv6.conf.v1p.disable_ipv6=1")

    def read() -> Any:
        ipr = IPRoute()
        try:
            with rtnl.Dumper() as d:
                return ((links.observe_links(ipr), d.links()),
                        (sorted(map(str, links.observe_link_addresses(ipr))),
                         sorted(map(str, d.addresses()))),
                        (sorted(map(str, observe.route_table(ipr))),
                         sorted(map(str, d.routes()))),
                        (observe.neighbours(ipr), d.neighbours()),
                        (observe.bridge_fdb(ipr), d.fdb()),
                        ({(link.ifname, name): int(observe.read_sysctl(
                            f"net.ipv4.conf.{link.ifname}.{name}"))
                          for link in links.observe_links(ipr) for name in CONF},
                         {(link.ifname, name): d.ipv4_conf(link.index, which)
                          for link in d.links() for name, which in CONF.items()}),
                        (observe.rules(ipr), d.rules()),
                        ({(link.ifname, name): int(observe.read_sysctl(
                            f"net.ipv6.conf.{link.ifname}.{name}"))
                          for link in links.observe_links(ipr) for name in CONF6},
                         {(link.ifname, name): d.ipv6_conf(link.index, which)
                          for link in d.links() for name, which in CONF6.items()}),
                        ({"ip_forward": observe.read_sysctl("net.ipv4.ip_forward"),
                          "rp_filter": observe.read_sysctl("net.ipv4.conf.all.rp_filter"),
                          "forwarding6": observe.read_sysctl(
                              "net.ipv6.conf.all.forwarding")},
                         {"ip_forward": str(d.netconf_all(socket.AF_INET)["forwarding"]),
                          "rp_filter": str(d.netconf_all(socket.AF_INET)["rp_filter"]),
                          "forwarding6": str(d.netconf_all(socket.AF_INET6)["forwarding"])}),
                        has_tables())
        finally:
            ipr.close()

    *pairs, tables = netns.in_netns(netns.netns_path(host), read)
    for theirs, mine in pairs:
        assert mine == theirs
    links_seen = {link.ifname: link for link in pairs[0][1]}
    assert links_seen["v0"].kind == "veth" and links_seen["v0"].netnsid >= 0
    assert links_seen["v1"].netnsid == -1 and links_seen["v0"].master == \
        links_seen["br0"].index
    assert ("br0", "02:00:00:00:00:07") in pairs[4][1]
    assert any("'blackhole'" in r for r in pairs[2][1])
    assert not tables
    assert pairs[5][1][("v1", "route_localnet")] == 1 == pairs[5][1][("v1", "rp_filter")]
    assert pairs[5][1][("v0", "route_localnet")] == 0 == pairs[5][1][("v0", "forwarding")]
    assert {(r["priority"], r["action"], r["invert"]) for r in pairs[6][1]} >= {
        (100, "lookup", False), (101, "lookup", True), (102, "prohibit", False),
        (103, "lookup", False)}
    assert pairs[8][1] == {"ip_forward": "1", "rp_filter": "2", "forwarding6": "1"}
    assert pairs[7][1][("v1p", "disable_ipv6")] == 1 and \
        pairs[7][1][("v1", "disable_ipv6")] == 0
    for family in ("bridge", "netdev"):
        sh("ip", "netns", "exec", host, "nft", "add", "table", family, "pwk")
        assert netns.in_netns(netns.netns_path(host), has_tables)
        sh("ip", "netns", "exec", host, "nft", "delete", "table", family, "pwk")


def test_listeners_say_what_sock_diag_through_pyroute2_says(spaces: tuple[str, str]) -> None:
    host, _ = spaces
    sh("ip", "-n", host, "link", "set", "lo", "up")

    def read() -> Any:
        import socket

        opened = []
        try:
            for family, kind, addr, port in (
                    (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 8080),
                    (socket.AF_INET6, socket.SOCK_STREAM, "::", 8081),
                    (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", 5353),
                    (socket.AF_INET6, socket.SOCK_DGRAM, "::1", 5354)):
                s = socket.socket(family, kind)
                opened.append(s)
                s.bind((addr, port))
                if kind == socket.SOCK_STREAM:
                    s.listen()
            connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            opened.append(connected)
            connected.connect(("127.0.0.1", 5353))  # not a listener: connected
            theirs = sorted((proto, a, p, i) for proto in ("tcp", "udp")
                            for a, p, i in observe.listeners(proto))
            return theirs, sorted(rtnl.listeners())
        finally:
            for s in opened:
                s.close()

    theirs, mine = netns.in_netns(netns.netns_path(host), read)
    assert mine == theirs
    assert {(p, a, port) for p, a, port, _ in mine} == {
        ("tcp", "127.0.0.1", 8080), ("tcp", "::", 8081), ("udp", "0.0.0.0", 5353),
        ("udp", "::1", 5354)}


def test_a_listing_is_kept_until_the_ruleset_changes(spaces: tuple[str, str]) -> None:
    host, _ = spaces

    def read() -> Any:
        nft = Nft()
        try:
            first = nft.listing()
            again = nft.listing()
            before = generation()
            nft.run("add table inet pwk")
            after = generation()
            changed = nft.listing()
            return first is again, before, after, changed is first, changed
        finally:
            nft.close()

    same, before, after, stale, changed = netns.in_netns(netns.netns_path(host), read)
    assert same and before is not None and after is not None and after != before
    assert not stale and any(i.get("table", {}).get("name") == "pwk" for i in changed)


def test_nsids_say_what_the_veths_say_and_are_never_assigned(spaces: tuple[str, str]) -> None:
    host, other = spaces
    tag = secrets.token_hex(3)
    lone = f"pwk-l-{tag}"
    add_netns(lone)
    try:
        sh("ip", "-n", host, "link", "add", "v0", "type", "veth", "peer", "name", "eth0",
           "netns", other)

        def read() -> Any:
            with rtnl.Dumper() as d:
                veth = next(link for link in d.links() if link.ifname == "v0")
                found = netns.resolve_nsids({veth.netnsid}, [
                    netns.Namespace(netns.netns_path(n), f"ns:{n}", n,
                                    netns.namespace_inode(netns.netns_path(n)) or 0)
                    for n in (lone, other)])
                return veth.netnsid, {k: v.key for k, v in found.items()}, \
                    netns.nsid_of(netns.netns_path(lone), d)

        nsid, found, lone_id = netns.in_netns(netns.netns_path(host), read)
        assert nsid >= 0 and found == {nsid: f"ns:{other}"}
        assert lone_id is None  # asking assigned nothing
        assert "nsid" not in subprocess.run(["ip", "-n", host, "netns", "list-id"],
                                            capture_output=True, text=True).stdout.replace(
            f"nsid {nsid} ", "")
    finally:
        del_netns(lone)


def test_a_listing_is_kept_through_changes_that_undo_each_other(spaces: tuple[str, str]
                                                                ) -> None:
    # trace --live adds its tables and removes them: the listing the static trace made
    # stands again, unless someone else changed the ruleset meanwhile.
    host, _ = spaces

    def read() -> Any:
        nft = Nft()
        try:
            first = nft.listing()
            mark = nft.mark()
            nft.apply([{"add": {"table": {"family": "inet", "name": "pwk"}}}])
            nft.apply([{"delete": {"table": {"family": "inet", "name": "pwk"}}}])
            nft.keep_listing(mark)
            kept = nft.listing() is first
            mark = nft.mark()
            nft.apply([{"add": {"table": {"family": "inet", "name": "pwk"}}}])
            subprocess.run(["nft", "add", "table", "ip", "other"], check=True)
            nft.apply([{"delete": {"table": {"family": "inet", "name": "pwk"}}}])
            nft.keep_listing(mark)
            again = nft.listing()
            return kept, again is first, again
        finally:
            nft.close()

    kept, stale, again = netns.in_netns(netns.netns_path(host), read)
    assert kept and not stale
    assert any(i.get("table", {}).get("name") == "other" for i in again)


def test_a_link_dump_sees_each_change_of_a_link_it_read_before(spaces: tuple[str, str]
                                                               ) -> None:
    """Links are parsed once per message (rtnl._parse_link, kept by the message's
    bytes): a second dump after a change of MTU, state, master or a per-interface
    sysctl shows the change, and the unchanged links come back as they were."""
    host, _ = spaces
    for args in (("link", "add", "br0", "type", "bridge"),
                 ("link", "add", "v0", "type", "veth", "peer", "name", "v0p")):
        sh("ip", "-n", host, *args)

    def dump() -> dict[str, tuple[rtnl.Link, int | None, int | None]]:
        with rtnl.Dumper() as d:
            return {link.ifname: (link, d.ipv4_conf(link.index, rtnl.IPV4_DEVCONF_RP_FILTER),
                                  d.ipv6_conf(link.index, rtnl.DEVCONF_DISABLE_IPV6))
                    for link in d.links()}

    path = netns.netns_path(host)
    first = netns.in_netns(path, dump)
    again = netns.in_netns(path, dump)
    assert again["v0"][0] is first["v0"][0] and again == first  # parsed once
    for args in (("link", "set", "v0", "mtu", "1400"), ("link", "set", "v0", "up"),
                 ("link", "set", "v0", "master", "br0")):
        sh("ip", "-n", host, *args)
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.conf.v0.rp_filter=2",
       "net.ipv6.conf.v0.disable_ipv6=1")
    after = netns.in_netns(path, dump)
    link, rp_filter, no_ipv6 = after["v0"]
    assert (link.mtu, link.up, link.master) == (1400, True, after["br0"][0].index)
    assert (rp_filter, no_ipv6) == (2, 1)
    assert after["v0p"] == first["v0p"] and after["lo"] == first["lo"]


def test_a_conntrack_dump_toward_one_port_holds_its_entries_and_no_other(
        spaces: tuple[str, str]) -> None:
    """nftrace.connections(toward=...) asks the kernel for the entries toward one
    protocol, address and port (CTA_FILTER): exactly those of a dump of the whole table
    that go there, however many others the table holds."""
    from portway.kernel import nftrace

    host, _ = spaces
    sh("ip", "-n", host, "link", "set", "lo", "up")

    def fill_and_read() -> tuple[list[nftrace.Connection], list[nftrace.Connection],
                                 list[nftrace.Connection]]:
        nft = Nft()
        try:  # conntrack follows only packets some table hooks
            nft.run("add table inet pwkct; add chain inet pwkct out "
                    "{ type filter hook output priority 0; }; "
                    "add rule inet pwkct out ct state new counter")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for port in range(7000, 7300):
                    s.sendto(b"x", ("127.0.0.1", port))
                s.sendto(b"x", ("127.0.0.2", 7100))
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
                s6.sendto(b"x", ("::1", 7100))
            every = nftrace.connections(socket.AF_INET)
            toward = nftrace.connections(toward=("udp", "127.0.0.1", 7100))
            v6 = nftrace.connections(toward=("udp", "::1", 7100))
            return every, toward, v6
        finally:
            nft.close()

    every, toward, v6 = netns.in_netns(netns.netns_path(host), fill_and_read)
    assert len(every) >= 301
    wanted = [c for c in every if c.proto == 17 and c.orig[2:] == ("127.0.0.1", 7100)]
    assert len(wanted) == 1 and toward == wanted
    assert [c.orig[2:] for c in v6] == [("::1", 7100)]


def test_the_sockets_that_hold_published_ports_are_named_by_their_inodes(
        spaces: tuple[str, str]) -> None:
    """PortReservations.inodes() names the sockets portwayd holds published ports with as
    sock_diag names them (trace and audit tell portwayd's own listeners apart by them,
    without looking through the daemon's thousands of file descriptors)."""
    from portway.engine.ports import PortReservations
    from portway.model.types import PortMapping

    host, _ = spaces
    sh("ip", "-n", host, "link", "set", "lo", "up")

    def hold_and_read() -> tuple[set[int], dict[tuple[str, str, int], int], set[int]]:
        held = PortReservations(lambda k: None)  # as portwayd holds them: relaying ::1
        try:
            held.reserve(PortMapping(80, 18080, "tcp"))
            held.reserve(PortMapping(53, 18053, "udp"))
            listening = {(p, a, port): inode for p, a, port, inode in rtnl.listeners()}
            inodes = held.inodes()
        finally:
            held.close()
        return inodes, listening, held.inodes()

    inodes, listening, after = netns.in_netns(netns.netns_path(host), hold_and_read)
    assert inodes == {listening[("tcp", "::", 18080)], listening[("udp", "::", 18053)]}
    assert after == set()


def test_an_fdb_lookup_says_what_the_fdb_dump_says(spaces: tuple[str, str]) -> None:
    """rtnl.FdbLookup (one `bridge fdb get` a MAC, for bridges of many ports) answers as
    Dumper.fdb() does: the port of a learned or static entry; nothing for a port's own
    address, an unknown MAC or an unknown bridge."""
    host, other = spaces
    for args in (("link", "add", "br0", "type", "bridge"),
                 ("link", "add", "v0", "type", "veth", "peer", "name", "eth0", "netns", other),
                 ("link", "set", "v0", "master", "br0", "up"), ("link", "set", "br0", "up")):
        sh("ip", "-n", host, *args)
    sh("ip", "netns", "exec", host, "bridge", "fdb", "add", "02:00:00:00:00:07", "dev", "v0",
       "master", "static")

    def read() -> tuple[dict[tuple[str, str], str], dict[str, str | None], str]:
        with rtnl.Dumper() as d:
            dumped = d.fdb()
            own = next(link.mac for link in d.links() if link.ifname == "v0")
            lookup = rtnl.FdbLookup(d.names())
        try:
            return dumped, {"static": lookup.get(("br0", "02:00:00:00:00:07")),
                            "own": lookup.get(("br0", own)),
                            "unknown": lookup.get(("br0", "02:00:00:00:00:99")),
                            "no bridge": lookup.get(("br9", "02:00:00:00:00:07"))}, own
        finally:
            lookup.close()

    dumped, looked, own = netns.in_netns(netns.netns_path(host), read)
    assert dumped.get(("br0", "02:00:00:00:00:07")) == "v0" and ("br0", own) not in dumped
    assert looked == {"static": "v0", "own": None, "unknown": None, "no bridge": None}
