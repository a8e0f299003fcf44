"""kernel/links.py against real namespaces of the test's own: ensure_* are idempotent.

Each test makes two throwaway network namespaces (a host and a container) and works
in them from a helper thread that has entered the host one, as the daemon does; `ip -j`
is the oracle.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from portway.errors import KernelError
from portway.kernel import links, netns
from portway.testbed import add_netns, del_netns

GATEWAY = ipaddress.ip_address("10.120.0.1")


def ip(ns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out) if out.strip() else []


@pytest.fixture
def spaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    tag = secrets.token_hex(3)
    host, cont = f"pwk-h-{tag}", f"pwk-c-{tag}"
    try:
        for ns in (host, cont):
            add_netns(ns)
        yield host, cont
    finally:
        for ns in (host, cont):
            del_netns(ns)


def bridge(ipr: object) -> int:
    index, _ = links.ensure_bridge(ipr, "pwbr-test", "02:00:00:00:00:01", 1500,  # type: ignore[arg-type]
                                   [ipaddress.ip_interface((GATEWAY, 24))],
                                   "portway:test:network:1")
    return index


def test_ensure_bridge_finishes_when_the_address_is_there_already(
        spaces: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    host, _ = spaces

    def body() -> None:
        ipr = links.IPRoute()
        try:
            first = bridge(ipr)
            ipr.link("set", index=first, state="down")
            # Another writer adds the address between the look and the add: the add
            # answers "File exists". The bridge must still come up.
            monkeypatch.setattr(links, "observe_addresses", lambda *_a, **_k: [])
            assert bridge(ipr) == first
        finally:
            ipr.close()

    netns.in_netns(netns.netns_path(host), body)
    (link,) = ip(host, "link", "show", "pwbr-test")
    assert "UP" in link["flags"]  # type: ignore[operator]
    (addrs,) = ip(host, "-4", "addr", "show", "pwbr-test")
    assert [a["local"] for a in addrs["addr_info"]] == [str(GATEWAY)]  # type: ignore[index]


def test_a_new_bridge_does_no_multicast_snooping(spaces: tuple[str, str]) -> None:
    """Snooping makes every new port's set-up walk all the bridge's ports (its multicast
    timers): a container's set-up that grows with the number of containers."""
    host, _ = spaces

    def body() -> None:
        ipr = links.IPRoute()
        try:
            bridge(ipr)
        finally:
            ipr.close()

    netns.in_netns(netns.netns_path(host), body)
    (link,) = ip(host, "-d", "link", "show", "pwbr-test")
    assert link["linkinfo"]["info_data"]["mcast_snooping"] == 0  # type: ignore[index]


def spec(index: int) -> links.EndpointSpec:
    return links.EndpointSpec(host_ifname="pwv-test", ifname="eth0", mac="02:42:0a:78:00:02",
                              mtu=1500, addresses=(ipaddress.ip_interface("10.120.0.2/24"),),
                              gateways=(GATEWAY,), bridge_index=index,
                              tag="portway:test:endpoint:1")


@contextmanager
def sockets(cont: str) -> Iterator[tuple[Any, Any, int]]:
    """In the host namespace's thread: its socket, the container's, and a descriptor of
    the container's namespace (what ensure_endpoint takes)."""
    ipr, inner = links.IPRoute(), netns.open_ipr(netns.netns_path(cont))
    fd = os.open(netns.netns_path(cont), os.O_RDONLY)
    try:
        yield ipr, inner, fd
    finally:
        os.close(fd)
        inner.close()
        ipr.close()


def test_ensure_endpoint_reuses_its_own_pair(spaces: tuple[str, str]) -> None:
    host, cont = spaces

    def body() -> None:
        with sockets(cont) as (ipr, inner, fd):
            index = bridge(ipr)
            links.ensure_endpoint(ipr, inner, fd, spec(index))
            made = links.index_of(ipr, "pwv-test")
            # Half undone (off its bridge, down), as a crash or a hand can leave it:
            ipr.link("set", index=made, master=0, state="down")
            links.ensure_endpoint(ipr, inner, fd, spec(index))
            assert links.index_of(ipr, "pwv-test") == made  # reused, not made again

    netns.in_netns(netns.netns_path(host), body)
    (port,) = ip(host, "link", "show", "pwv-test")
    assert port["master"] == "pwbr-test" and "UP" in port["flags"]  # type: ignore[operator]
    conf = subprocess.run(["ip", "netns", "exec", host, "cat",
                           "/proc/sys/net/ipv6/conf/pwv-test/disable_ipv6"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert conf == "1"
    (eth0,) = ip(cont, "-4", "addr", "show", "eth0")
    assert [a["local"] for a in eth0["addr_info"]] == ["10.120.0.2"]  # type: ignore[index]
    routes = ip(cont, "route", "show", "default")
    assert [r["gateway"] for r in routes] == [str(GATEWAY)]


def test_ensure_endpoint_refuses_a_link_that_is_not_its_pair(spaces: tuple[str, str]) -> None:
    host, cont = spaces

    def body() -> None:
        with sockets(cont) as (ipr, inner, fd):
            index = bridge(ipr)
            # Someone else's veth with that name, its peer in the host namespace.
            ipr.link("add", ifname="pwv-test", kind="veth", peer={"ifname": "other"})
            with pytest.raises(KernelError, match="not this endpoint's veth pair"):
                links.ensure_endpoint(ipr, inner, fd, spec(index))

    netns.in_netns(netns.netns_path(host), body)
    assert {str(x["ifname"]) for x in ip(host, "link")} >= {"pwv-test", "other"}
    assert [x["ifname"] for x in ip(cont, "link")] == ["lo"]


def test_a_pair_made_before_its_addresses_passes_nothing_until_finished(
        spaces: tuple[str, str]) -> None:
    """make_pair (no MAC, no addresses yet) leaves the container end down and bare;
    finish_pair gives it the MAC, its address, up and its default route."""
    host, cont = spaces
    seen: dict[str, Any] = {}

    def body() -> None:
        with sockets(cont) as (ipr, inner, fd):
            index = bridge(ipr)
            bare = links.EndpointSpec(host_ifname="pwv-test", ifname="eth0", mac="",
                                      mtu=1500, addresses=(), gateways=(),
                                      bridge_index=index, tag="portway:test:endpoint:1")
            pair = links.make_pair(ipr, inner, fd, bare)
            seen["made"] = ip(cont, "addr", "show", "eth0")
            links.finish_pair(ipr, inner, *pair, spec(index), mac=True)

    netns.in_netns(netns.netns_path(host), body)
    (made,) = seen["made"]
    assert "UP" not in made["flags"] and made["address"] != spec(0).mac
    assert [a for a in made["addr_info"] if a["family"] == "inet"] == []
    (port,) = ip(host, "link", "show", "pwv-test")
    assert port["master"] == "pwbr-test" and "UP" in port["flags"]  # type: ignore[operator]
    (eth0,) = ip(cont, "addr", "show", "eth0")
    assert eth0["address"] == spec(0).mac and "UP" in eth0["flags"]  # type: ignore[operator]
    assert [a["local"] for a in eth0["addr_info"]] == ["10.120.0.2"]  # type: ignore[index]
    assert [r["gateway"] for r in ip(cont, "route", "show", "default")] == [str(GATEWAY)]


GONE_MAC = "02:42:0a:78:00:77"


def test_readdress_moves_a_running_endpoint_and_keeps_its_routes(
        spaces: tuple[str, str]) -> None:
    host, cont = spaces
    v4, v6 = ipaddress.ip_interface("10.120.0.2/24"), ipaddress.ip_interface("fd00:78::2/64")
    new4 = ipaddress.ip_interface("10.120.0.9/24")
    static = ipaddress.ip_network("10.121.0.0/24")

    def body() -> None:
        with sockets(cont) as (ipr, inner, fd):
            index = bridge(ipr)
            links.ensure_endpoint(ipr, inner, fd, links.EndpointSpec(
                **{**spec(index).__dict__, "addresses": (v4, v6)}))
            eth0 = links.index_of(inner, "eth0")
            inner.route("add", dst=str(static), gateway=str(GATEWAY), oif=eth0)
            # The IPv4 address is another's now: moved, the IPv6 one kept; the MAC follows.
            links.readdress(inner, "eth0", (v4, v6), (new4, v6), "02:42:0a:78:00:09")
            # Twice is harmless (nothing left to move).
            links.readdress(inner, "eth0", (v4, v6), (new4, v6), "02:42:0a:78:00:09")
            # forget_learned takes the bridge's entry of a MAC on the port; missing is
            # fine. (Checked with a MAC nothing sends from: eth0 itself sent frames with
            # its old MAC before the move, and one still in a busy machine's backlog is
            # learned again when it passes, as on any host, until the entry ages out.)
            port = links.index_of(ipr, "pwv-test")
            ipr.fdb("add", ifindex=port, lladdr=GONE_MAC, master=index)
            links.forget_learned(ipr, "pwv-test", GONE_MAC)
            left.update(str(m.get_attr("NDA_LLADDR")) for m in ipr.fdb("dump")
                        if m["ifindex"] == port)
            links.forget_learned(ipr, "pwv-test", GONE_MAC)

    left: set[str] = set()

    netns.in_netns(netns.netns_path(host), body)
    (eth0,) = ip(cont, "addr", "show", "eth0")
    assert eth0["address"] == "02:42:0a:78:00:09"
    assert sorted(str(a["local"]) for a in eth0["addr_info"]  # type: ignore[union-attr]
                  if a["scope"] == "global") == ["10.120.0.9", "fd00:78::2"]  # type: ignore[index]
    # The kernel drops an interface's IPv4 routes with its last IPv4 address: the
    # default route and the static one are back.
    assert [r["gateway"] for r in ip(cont, "route", "show", "default")] == [str(GATEWAY)]
    assert [r["gateway"] for r in ip(cont, "route", "show", str(static))] == [str(GATEWAY)]
    assert left and GONE_MAC not in left  # (the port's own entry is there)
