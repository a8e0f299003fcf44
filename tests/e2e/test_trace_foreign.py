"""Static trace sees what portway did not build: namespaces behind a bridge made by hand
(a plain `ip netns` "VM"), a process's namespace with no name (Podman-like), a router
namespace and what lies behind it; and it never enters a namespace the host has no veth
to, whatever addresses it holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from lab import Lab

from conftest import Sandbox


@pytest.fixture
def lab(sandbox: Sandbox) -> Iterator[Lab]:
    lab = Lab(sandbox)
    try:
        yield lab
    finally:
        lab.close()


def verdicts(t: dict[str, Any]) -> tuple[str, str]:
    assert t["live"]["agrees"], (t["hops"], t["live"])
    return t["verdict"], t["live"]["verdict"]


def test_a_vm_behind_a_bridge_made_by_hand(lab: Lab) -> None:
    sb = lab.sb
    vm = lab.netns("vm")
    lab.veth(sb.host, "vm0", vm, "eth0")
    lab.bridge(sb.host, "br0", "vm0")
    lab.addr(sb.host, "br0", "10.88.0.1/24")
    lab.addr(vm, "eth0", "10.88.0.2/24")
    lab.route(vm, "default", "via", "10.88.0.1")
    lab.serve(vm, "0.0.0.0", 80)
    # Unrelated to the host (no veth leads there), holding the next address: never
    # entered, never taken for the holder of 10.88.0.3.
    decoy = lab.netns("decoy")
    lab.ip(decoy, "link", "add", "br9", "type", "bridge")
    lab.addr(decoy, "br9", "10.88.0.3/24")
    lab.ip(decoy, "link", "set", "br9", "up")
    lab.serve(decoy, "10.88.0.3", 80)

    assert lab.connect(sb.host, "10.88.0.2", 80) == "connected"
    t = lab.trace("host", "10.88.0.2:80")
    assert verdicts(t) == ("delivered", "delivered")
    assert t["hops"][-1]["where"] == f"namespace {vm}"
    assert lab.connect(sb.host, "10.88.0.2", 81) == "refused"
    assert verdicts(lab.trace("host", "10.88.0.2:81")) == ("no-listener", "no-listener")
    # From the VM, named by its address or by its name.
    for source in ("10.88.0.2", f"ns:{vm}"):
        t = lab.trace(source, "10.88.0.1:22")
        assert verdicts(t) == ("no-listener", "no-listener")
        assert t["source"] == f"namespace {vm}"
    assert lab.connect(vm, "10.88.0.1", 22) == "refused"
    # The decoy: nothing behind br0 holds 10.88.0.3, and the trace never looked inside it.
    t = lab.trace("host", "10.88.0.3:80")
    assert t["verdict"] == "no-route", t["hops"]
    assert decoy not in str(t)
    assert lab.connect(sb.host, "10.88.0.3", 80) != "connected"
    # show and graph draw the VM's namespace, and not the decoy's.
    topo = json.loads(sb.pw("show", "--json").stdout)
    assert [(ns["Key"], [(x["HostEnd"]["Name"], x["HostEnd"]["Bridge"], x["End"]["Name"],
                          x["End"]["Addresses"]) for x in ns["Links"]])
            for ns in topo["Foreign"]] == [(f"ns:{vm}", [("vm0", "br0", "eth0",
                                                         ["10.88.0.2"])])]
    assert f"namespace {vm}" in sb.pw("show").stdout
    dot = sb.pw("graph").stdout
    assert f'"cluster_ns:ns:{vm}"' in dot and decoy not in dot


def test_a_process_namespace_with_no_name(lab: Lab) -> None:
    """A container runtime's namespace: only a process holds it, as rootless Podman's or a
    VM manager's."""
    sb = lab.sb
    box = lab.process_netns()
    lab.veth(sb.host, "box0", box, "eth0")
    lab.addr(sb.host, "box0", "10.89.0.1/30")
    lab.addr(box, "eth0", "10.89.0.2/30")
    lab.serve(box, "10.89.0.2", 8000)
    assert lab.connect(sb.host, "10.89.0.2", 8000) == "connected"
    t = lab.trace("host", "10.89.0.2:8000")
    assert verdicts(t) == ("delivered", "delivered")
    assert t["hops"][-1]["where"] == f"namespace of pid {box[4:]}"
    topo = json.loads(sb.pw("show", "--json").stdout)
    assert [ns["Label"] for ns in topo["Foreign"]] == [f"namespace of pid {box[4:]}"]
    assert "box0" not in [link["Name"] for link in topo["HostLinks"]]  # not an uplink


def test_a_router_namespace_and_what_is_behind_it(lab: Lab) -> None:
    sb = lab.sb
    router, inner = lab.netns("rt"), lab.netns("in")
    lab.veth(sb.host, "rt0", router, "up0")
    lab.veth(router, "down0", inner, "eth0")
    lab.addr(sb.host, "rt0", "10.90.0.1/30")
    lab.addr(router, "up0", "10.90.0.2/30")
    lab.addr(router, "down0", "10.91.0.1/24")
    lab.addr(inner, "eth0", "10.91.0.2/24")
    lab.route(sb.host, "10.91.0.0/24", "via", "10.90.0.2")
    lab.route(inner, "default", "via", "10.91.0.1")
    lab.serve(inner, "10.91.0.2", 80)
    # The router does not forward yet: dropped there, as the real connection times out.
    lab.sysctl(router, "net.ipv4.ip_forward", "0")
    assert lab.connect(sb.host, "10.91.0.2", 80) == "timeout"
    t = lab.sb.pw("trace", "host", "10.91.0.2:80", "--json").stdout
    assert '"verdict": "dropped"' in t and f"namespace {router}, which does not forward" in t
    lab.sysctl(router, "net.ipv4.ip_forward", "1")
    assert lab.connect(sb.host, "10.91.0.2", 80) == "connected"
    t = lab.trace("host", "10.91.0.2:80")
    assert verdicts(t) == ("delivered", "delivered")
    assert [h["where"] for h in t["hops"] if h["kind"] == "veth"] == \
        ["rt0 -> up0", "down0 -> eth0"]
