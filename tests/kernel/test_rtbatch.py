"""kernel/rtbatch.py through links.ensure_endpoint: an endpoint made by batched requests is
what `ip -j` says it is, in both families, and an error in the batch is the endpoint's.

Two throwaway namespaces (a host and a container), worked in from a helper thread that has
entered the host one, as the daemon does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from portway.errors import KernelError
from portway.kernel import links, netns, rtbatch
from portway.testbed import add_netns, del_netns

GATEWAYS = (ipaddress.ip_interface("10.121.0.1/24"), ipaddress.ip_interface("fd00:121::1/64"))


def ip(ns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out) if out.strip() else []


def conf(ns: str, family: str, ifname: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "cat",
                           f"/proc/sys/net/{family}/conf/{ifname}/{key}"],
                          capture_output=True, text=True, check=True).stdout.strip()


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


def spec(index: int, metric: int | None = None,
         gateways: tuple[str, ...] = ("10.121.0.1", "fd00:121::1")) -> links.EndpointSpec:
    return links.EndpointSpec(
        host_ifname="pwv-batch", ifname="eth0", mac="02:42:0a:79:00:02", mtu=1400,
        addresses=(ipaddress.ip_interface("10.121.0.2/24"),
                   ipaddress.ip_interface("fd00:121::2/64")),
        gateways=tuple(ipaddress.ip_address(g) for g in gateways), bridge_index=index,
        tag="portway:test:endpoint:2", metric=metric)


def in_host(host: str, cont: str, make: list[links.EndpointSpec]) -> None:
    """In the host namespace's thread: a dual-stack bridge, then ensure_endpoint of each
    spec in turn (made with the bridge's index)."""

    def body() -> None:
        ipr, inner = links.IPRoute(), netns.open_ipr(netns.netns_path(cont))
        fd = os.open(netns.netns_path(cont), os.O_RDONLY)
        try:
            index, _ = links.ensure_bridge(ipr, "pwbr-batch", "02:00:00:00:00:02", 1400,
                                           list(GATEWAYS), "portway:test:network:2")
            links.setup_loopback(inner, "portway:test:container:2")
            for s in make:
                links.ensure_endpoint(ipr, inner, fd, links.EndpointSpec(
                    **{**s.__dict__, "bridge_index": index}))
            # The lent socket left nothing behind for pyroute2: its next answer is its own.
            assert links.index_of(inner, "eth0") > 0
        finally:
            os.close(fd)
            inner.close()
            ipr.close()

    netns.in_netns(netns.netns_path(host), body)


def test_a_dual_stack_endpoint_is_made_in_three_round_trips(spaces: tuple[str, str]) -> None:
    host, cont = spaces
    in_host(host, cont, [spec(0)])
    (port,) = ip(host, "-d", "link", "show", "pwv-batch")
    assert port["master"] == "pwbr-batch" and "UP" in port["flags"]  # type: ignore[operator]
    assert port["ifalias"] == "portway:test:endpoint:2" and port["mtu"] == 1400
    assert conf(host, "ipv6", "pwv-batch", "disable_ipv6") == "1"
    assert conf(host, "ipv6", "pwv-batch", "accept_ra") == "0"
    (lo,) = ip(cont, "link", "show", "lo")
    assert "UP" in lo["flags"] and lo["ifalias"] == "portway:test:container:2"  # type: ignore[operator]
    (eth0,) = ip(cont, "-d", "addr", "show", "eth0")
    assert eth0["address"] == "02:42:0a:79:00:02" and eth0["mtu"] == 1400
    assert "UP" in eth0["flags"]  # type: ignore[operator]
    assert eth0["linkinfo"]["info_kind"] == "veth"  # type: ignore[index]
    assert conf(cont, "ipv6", "eth0", "addr_gen_mode") == "1"  # none: no link-local
    found = {(a["local"], a["prefixlen"], a["scope"], bool(a.get("nodad")))
             for a in eth0["addr_info"]}  # type: ignore[attr-defined]
    assert found == {("10.121.0.2", 24, "global", False), ("fd00:121::2", 64, "global", True)}
    for family, gateway in (("-4", "10.121.0.1"), ("-6", "fd00:121::1")):
        (route,) = ip(cont, family, "route", "show", "default")
        assert (route["gateway"], route["dev"], route["protocol"]) == \
            (gateway, "eth0", "static")


def test_default_routes_with_a_metric_keep_one_that_is_there(spaces: tuple[str, str]) -> None:
    host, cont = spaces
    # Made twice with a metric: the second batch meets its routes (EEXIST, harmless)
    # and its addresses (EEXIST, harmless), and reuses its pair.
    in_host(host, cont, [spec(0, metric=100), spec(0, metric=100)])
    routes = ip(cont, "-4", "route", "show", "default")
    assert [(r["gateway"], r["metric"]) for r in routes] == [("10.121.0.1", 100)]


def test_a_message_that_fails_fails_the_endpoint(spaces: tuple[str, str]) -> None:
    host, cont = spaces
    # A gateway in no subnet of the container: its default route is refused.
    with pytest.raises(KernelError, match=r"set up endpoint pwv-batch: Network is unreachable"):
        in_host(host, cont, [spec(0, gateways=("10.99.0.1",))])


def test_answers_come_in_the_order_of_the_messages(spaces: tuple[str, str]) -> None:
    _, cont = spaces

    def body() -> None:
        with rtbatch.host_socket() as sock:
            batch = rtbatch.Batch()
            batch.link(1, up=True)
            batch.address(1, ipaddress.ip_address("127.0.0.1"), 8)  # there already
            batch.link(999, up=True)  # no such link
            answers = batch.send(sock)
        assert [a.error for a in answers] == [0, 17, 19]  # EEXIST, ENODEV

    netns.in_netns(netns.netns_path(cont), body)
