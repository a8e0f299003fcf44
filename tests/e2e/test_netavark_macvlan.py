"""portway-netavark with macvlan (and ipvlan) networks, as netavark's current contract
has them, in a throwaway host.

The inputs are written in the shapes of netavark's own test inputs (test/testfiles/
macvlan*.json, metric-macvlan.json, create/macvlan-*.json, ipvlan*.json and the cases
of test/300-macvlan.bats); each names what it mirrors. netavark's tests use a dummy
interface as the parent; this kernel has none, so the parent is lan0, a veth whose
other end is on a LAN namespace of the test's own (test_macvlan's fixture).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from typing import Any

import pytest
from test_macvlan import LAN, PING, lan  # noqa: F401  (the fixture)
from test_netavark import Podmanish, podman  # noqa: F401  (the fixture)

from conftest import ip_json, sh, user_networks
from portway.testbed import HTTP_GET

NET_ID = "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9"


def macvlan(**network: Any) -> dict[str, Any]:
    """Mirrors testfiles/macvlan.json (its parent dummy0 is lan0 here); `network` adds to
    network_info."""
    info: dict[str, Any] = {
        "name": "podman", "id": NET_ID, "driver": "macvlan", "network_interface": "lan0",
        "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
        "ipv6_enabled": False, "internal": False, "dns_enabled": True,
        "ipam_options": {"driver": "host-local"}}
    info.update(network)
    return {"container_id": "someID", "container_name": "someName",
            "networks": {"podman": {"static_ips": ["10.88.0.2"], "interface_name": "eth0"}},
            "network_info": {"podman": info}}


def link(ns: str, ifname: str = "eth0") -> dict[str, Any]:
    (found,) = ip_json(os.path.basename(ns), "-d", "link", "show", ifname)
    return dict(found)


def routes(ns: str, version: int = 4) -> list[dict[str, Any]]:
    return [dict(r) for r in ip_json(os.path.basename(ns), f"-{version}", "route")]


def sysctl(ns: str, key: str) -> str:
    return sh("ip", "netns", "exec", os.path.basename(ns), "cat",
              "/proc/sys/" + key.replace(".", "/")).stdout.strip()


def no_portway_left(p: Podmanish, ns: str) -> None:
    assert p.pw("ps", "-a", "-q").stdout == ""
    assert [x["ifname"] for x in ip_json(os.path.basename(ns), "link")] == ["lo"]
    assert set(p.sb.links()) - {"lan0"} == {"lo", "uplink0"}


def test_simple_macvlan_setup(podman: Podmanish, lan: str) -> None:  # noqa: F811
    """300-macvlan.bats "simple macvlan setup": a macvlan device of the parent, up,
    with the container's address, the default route via the gateway with metric 99,
    IPv6 autoconf off; no DNS (netavark serves none there, whatever dns_enabled says);
    no firewall; teardown twice."""
    p = podman
    data = macvlan()
    data["dns_servers"] = ["192.0.2.53"]
    ns = p.namespace()
    out = json.loads(p.nv("setup", ns, data=data).stdout)["podman"]
    got = link(ns)
    assert out["interfaces"]["eth0"]["mac_address"] == got["address"]
    assert "UP" in got["flags"] and got["linkinfo"]["info_kind"] == "macvlan"
    assert got["linkinfo"]["info_data"]["mode"] == "bridge"
    assert got["link_index"] == ip_json(p.sb.host, "link", "show", "lan0")[0]["ifindex"]
    assert out["interfaces"]["eth0"]["subnets"] == [{"ipnet": "10.88.0.2/16",
                                                     "gateway": "10.88.0.1"}]
    assert (out["dns_server_ips"], out["dns_search_domains"]) == ([], [])
    (default,) = [r for r in routes(ns) if r["dst"] == "default"]
    assert (default["gateway"], default["metric"]) == ("10.88.0.1", 99)
    assert sysctl(ns, "net.ipv6.conf.eth0.autoconf") == "0"
    assert "portway" not in sh("ip", "netns", "exec", p.sb.host, "nft", "list",
                               "tables").stdout
    assert sorted(p.sb.links()) == ["lan0", "lo", "uplink0"]
    assert p.nv("teardown", ns, data=data).stdout == ""
    no_portway_left(p, ns)
    assert p.nv("teardown", ns, data=data).stdout == ""


def test_a_macvlan_container_is_on_the_lan(podman: Podmanish, lan: str) -> None:  # noqa: F811
    """The LAN reaches the container at its own address (TCP and ICMP), and it reaches
    the LAN's router through its default route."""
    p = podman
    data = macvlan(subnets=[{"subnet": f"{LAN}.0/24", "gateway": f"{LAN}.1"}])
    data["networks"]["podman"]["static_ips"] = [f"{LAN}.20"]
    ns = p.namespace()
    p.nv("setup", ns, data=data)
    p.serve(ns)
    out = subprocess.run(["ip", "netns", "exec", lan, "python3", "-c", HTTP_GET,
                          f"http://{LAN}.20/"], capture_output=True, text=True).stdout
    assert out.strip() == "200"
    assert subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "python3", "-c",
                           PING, f"{LAN}.1"]).returncode == 0
    p.nv("teardown", ns, data=data)
    no_portway_left(p, ns)


def test_static_routes_no_default_route_internal_mtu_metric(
        podman: Podmanish, lan: str) -> None:  # noqa: F811
    """macvlan-staticroutes.json, macvlan-nodefaultroute.json, macvlan-internal.json,
    macvlan-mtu.json and metric-macvlan.json, one after the other in one namespace."""
    p = podman
    ns = p.namespace()
    dual = {"ipv6_enabled": True, "subnets": [
        {"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"},
        {"subnet": "fd:1f1f::/64", "gateway": "fd:1f1f::1"}]}
    data = macvlan(routes=[{"destination": "10.89.0.0/24", "gateway": "10.88.0.2"},
                           {"destination": "10.90.0.0/24", "gateway": "10.88.0.3"},
                           {"destination": "fd:2f2f::/64", "gateway": "fd:1f1f::20"}],
                   **dual)
    data["networks"]["podman"]["static_ips"] = ["10.88.0.2", "fd:1f1f::2"]
    p.nv("setup", ns, data=data)
    v4 = {r["dst"]: r for r in routes(ns)}
    assert v4["10.89.0.0/24"]["gateway"] == "10.88.0.2"
    assert v4["10.90.0.0/24"]["gateway"] == "10.88.0.3"
    assert {r["dst"]: r for r in routes(ns, 6)}["fd:2f2f::/64"]["gateway"] == "fd:1f1f::20"
    p.nv("teardown", ns, data=data)
    assert not any(r["dst"] in ("10.89.0.0/24", "10.90.0.0/24") for r in routes(ns))
    no_portway_left(p, ns)

    for variant in (macvlan(options={"no_default_route": "true"}, **dual),
                    macvlan(internal=True, dns_enabled=False, **dual)):
        variant["networks"]["podman"]["static_ips"] = ["10.88.0.2", "fd:1f1f::2"]
        p.nv("setup", ns, data=variant)
        assert not [r for r in routes(ns) + routes(ns, 6) if r["dst"] == "default"]
        p.nv("teardown", ns, data=variant)

    data = macvlan(options={"mtu": "1400"})
    out = json.loads(p.nv("setup", ns, data=data).stdout)["podman"]
    got = link(ns)
    assert (got["mtu"], got["address"]) == (1400, out["interfaces"]["eth0"]["mac_address"])
    p.nv("teardown", ns, data=data)

    data = macvlan(name="metric", options={"metric": "200"}, **dual)
    data["networks"] = {"metric": {"interface_name": "eth1",
                                   "static_ips": ["10.88.0.2", "fd:1f1f::2"]}}
    data["network_info"] = {"metric": data["network_info"]["podman"]}
    p.nv("setup", ns, data=data)
    for version in (4, 6):
        (default,) = [r for r in routes(ns, version) if r["dst"] == "default"]
        assert (default["dev"], default["metric"]) == ("eth1", 200)
    p.nv("teardown", ns, data=data)
    no_portway_left(p, ns)


def test_modes_static_mac_ipam_none_and_names(podman: Podmanish, lan: str) -> None:  # noqa: F811
    """300-macvlan.bats "macvlan modes", "macvlan static mac", "macvlan ipam none", and
    "same interface name on host": the parent may be called as the container's
    interface is."""
    p = podman
    ns = p.namespace()
    for mode in ("bridge", "private", "vepa", "passthru", "source"):
        data = macvlan(dns_enabled=False, options={"mode": mode})
        p.nv("setup", ns, data=data)
        got = link(ns)
        assert (got["linkinfo"]["info_data"]["mode"], got["mtu"]) == (mode, 1500), mode
        p.nv("teardown", ns, data=data)
        no_portway_left(p, ns)

    data = macvlan()
    data["networks"]["podman"]["static_mac"] = "aa:bb:cc:dd:ee:ff"
    out = json.loads(p.nv("setup", ns, data=data).stdout)["podman"]
    assert out["interfaces"]["eth0"]["mac_address"] == "aa:bb:cc:dd:ee:ff"
    assert link(ns)["address"] == "aa:bb:cc:dd:ee:ff"
    p.nv("teardown", ns, data=data)

    data = macvlan(subnets=[], ipam_options={"driver": "none"})
    del data["networks"]["podman"]["static_ips"]
    out = json.loads(p.nv("setup", ns, data=data).stdout)["podman"]
    assert out["interfaces"]["eth0"]["mac_address"] == link(ns)["address"]
    assert ip_json(os.path.basename(ns), "-4", "addr", "show", "eth0") == []
    assert routes(ns) == []
    p.nv("teardown", ns, data=data)
    no_portway_left(p, ns)

    sh("ip", "-n", p.sb.host, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
       "netns", lan)
    try:
        sh("ip", "-n", p.sb.host, "link", "set", "eth0", "up")
        data = macvlan(network_interface="eth0")
        p.nv("setup", ns, data=data)
        assert link(ns)["linkinfo"]["info_kind"] == "macvlan"
        p.nv("teardown", ns, data=data)
    finally:
        sh("ip", "-n", p.sb.host, "link", "del", "eth0")


def test_the_default_route_interface_is_the_parent_when_none_is_given(
        podman: Podmanish) -> None:  # noqa: F811
    p = podman
    data = macvlan()
    del data["network_info"]["podman"]["network_interface"]
    ns = p.namespace()
    p.nv("setup", ns, data=data)
    uplink = ip_json(p.sb.host, "link", "show", "uplink0")[0]["ifindex"]
    assert link(ns)["link_index"] == uplink
    p.nv("teardown", ns, data=data)
    no_portway_left(p, ns)


def test_a_name_taken_in_the_container_fails_and_leaks_nothing(
        podman: Podmanish, lan: str) -> None:  # noqa: F811
    """300-macvlan.bats "same interface name on container": the setup fails, and no
    temporary interface is left on the host or in the namespace."""
    p = podman
    ns = p.namespace()
    name = os.path.basename(ns)
    sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    cp = p.nv("setup", ns, data=macvlan(), check=False)
    assert cp.returncode == 1 and "eth0" in json.loads(cp.stdout)["error"]
    assert sorted(x["ifname"] for x in ip_json(name, "link")) == ["eth0", "lo", "other"]
    assert sorted(p.sb.links()) == ["lan0", "lo", "uplink0"]
    assert p.pw("ps", "-a", "-q").stdout == ""


@pytest.mark.parametrize(("change", "words"), [
    ({"network_interface": "nosuch0"}, "Netlink error: No such device (os error 19)"),
    ({"options": {"mode": "bogus"}}, 'invalid macvlan mode "bogus"'),
    ({"options": {"metric": "x"}}, 'unable to parse "metric": invalid digit found in string'),
    ({"driver": "ipvlan"}, "this kernel has no ipvlan support"),
    ({"driver": "ipvlan", "options": {"mode": "l4"}}, 'invalid ipvlan mode "l4"'),
    ({"subnets": [], "ipam_options": {"driver": "dhcp"}}, "unable to obtain lease"),
])
def test_bad_macvlan_input_changes_nothing(podman: Podmanish, lan: str,  # noqa: F811
                                           change: dict[str, Any], words: str) -> None:
    p = podman
    data = macvlan(**change)
    if change.get("subnets") == []:
        data["networks"]["podman"]["static_ips"] = []
    ns = p.namespace()
    cp = p.nv("setup", ns, data=data, check=False)
    assert cp.returncode == 1 and words in json.loads(cp.stdout)["error"], cp.stdout
    no_portway_left(p, ns)
    assert user_networks(p.pw("network", "ls", "--json").stdout) == []


def create(name: str, nid: str, **network: Any) -> dict[str, Any]:
    """Mirrors testfiles/create/macvlan-*.json (dummy0 is lan0 here)."""
    net = {"name": name, "id": nid * 64, "driver": "macvlan", "dns_enabled": False,
           "internal": False, "ipv6_enabled": False, "network_interface": "lan0"}
    net.update(network)
    return {"network": net, "used": {"interfaces": [], "names": {}, "subnets": []},
            "options": {"subnet_pools": [{"base": "10.89.0.0/16", "size": 24}],
                        "default_interface_name": "podman", "check_used_subnets": False}}


def test_create_macvlan(podman: Podmanish, lan: str) -> None:  # noqa: F811
    """700-create.bats's macvlan and ipvlan cases; what create prints, setup takes."""
    p = podman
    made = json.loads(p.nv("create", data=create(
        "macvlansubnet", "7", subnets=[{"subnet": "10.200.0.0/24",
                                        "gateway": "10.200.0.1"}])).stdout)
    assert (made["driver"], made["ipam_options"]["driver"], made["dns_enabled"]) == \
        ("macvlan", "host-local", False)
    assert made["subnets"] == [{"gateway": "10.200.0.1", "subnet": "10.200.0.0/24"}]
    mode = json.loads(p.nv("create", data=create(
        "macvlanmode", "8", options={"mode": "bridge"},
        subnets=[{"subnet": "10.200.0.0/24"}])).stdout)
    assert (mode["options"], mode["subnets"][0]["gateway"]) == ({"mode": "bridge"},
                                                                 "10.200.0.1")
    for cfg, words in (
            (create("macvlaninvalidparent", "b", network_interface="eth999",
                    subnets=[{"subnet": "10.201.0.0/24"}]),
             "parent interface eth999 does not exist"),
            (create("macvlandhcp", "6"), "the dhcp ipam driver is not supported by portway"),
            (create("x", "c", ipam_options={"driver": "host-local"}),
             "macvlan driver needs at least one subnet specified when the host-local ipam "
             "driver is set"),
            (create("x", "c", options={"vlan": "3"}, subnets=[{"subnet": "10.9.0.0/24"}]),
             "unsupported vlan network option: vlan"),
            (create("x", "c", options={"mode": "l2"}, subnets=[{"subnet": "10.9.0.0/24"}]),
             'invalid macvlan mode "l2"'),
            (create("ipvlannosubnet", "9", driver="ipvlan"),
             "ipam driver dhcp is not supported with ipvlan"),
            (create("ipvlansubnet", "a", driver="ipvlan",
                    subnets=[{"subnet": "10.200.0.0/24"}]),
             "this kernel has no ipvlan support")):
        cp = p.nv("create", data=cfg, check=False)
        assert cp.returncode == 1 and words in json.loads(cp.stdout)["error"], cp.stdout

    data = copy.deepcopy(macvlan())
    data["network_info"] = {"macvlansubnet": made}
    data["networks"] = {"macvlansubnet": {"interface_name": "eth0",
                                          "static_ips": ["10.200.0.2"]}}
    ns = p.namespace()
    out = json.loads(p.nv("setup", ns, data=data).stdout)["macvlansubnet"]
    assert out["interfaces"]["eth0"]["subnets"] == [{"ipnet": "10.200.0.2/24",
                                                     "gateway": "10.200.0.1"}]
    p.nv("teardown", ns, data=data)
    no_portway_left(p, ns)
