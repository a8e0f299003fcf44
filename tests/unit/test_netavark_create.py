"""`netavark create` (core/netavark_create.py), driven by inputs in the shapes of
netavark's test/testfiles/create/*.json (each case names the file it mirrors), with the
outputs and error texts its test/700-create.bats expects."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from portway.core import ipam, netavark_create
from portway.errors import InvalidInput
from portway.model.types import IPNetwork

NID = "abc123def4567890123456789012345678901234567890123456789012345678"
HOST = [(ipaddress.ip_network("198.51.100.0/24"), "host address 198.51.100.1/24")]


def config(network: dict[str, Any] | None = None, used: dict[str, Any] | None = None,
           **options: Any) -> dict[str, Any]:
    """Mirrors create/basic.json, with changes."""
    return {"network": {"name": "testnet1", "id": NID, "driver": "bridge",
                        "dns_enabled": False, "internal": False, "ipv6_enabled": False,
                        **(network or {})},
            "used": {"interfaces": [], "names": {}, "subnets": [], **(used or {})},
            "options": {"subnet_pools": [{"base": "10.89.0.0/16", "size": 24}],
                        "default_interface_name": "podman", "check_used_subnets": False,
                        **options}}


def create(cfg: dict[str, Any], links: set[str] | None = None) -> dict[str, Any]:
    def v6(avoid: list[tuple[IPNetwork, str]]) -> IPNetwork:
        return ipam.pick_subnet6(avoid, 0x12345678AB)

    return netavark_create.complete(cfg, list(HOST), lambda n: n in (links or set()), v6,
                                    "2026-11-30T05:00:00.000000Z")


def test_basic() -> None:  # create/basic.json
    out = create(config(), links={"podman1"})
    assert list(out) == ["created", "dns_enabled", "driver", "id", "internal",
                         "ipv6_enabled", "name", "network_interface", "ipam_options",
                         "subnets"]
    assert (out["name"], out["id"], out["driver"], out["network_interface"]) == \
        ("testnet1", NID, "bridge", "podman2")
    assert out["subnets"] == [{"gateway": "10.89.0.1", "subnet": "10.89.0.0/24"}]
    assert out["ipam_options"] == {"driver": "host-local"}
    assert out["created"] == "2026-11-30T05:00:00.000000Z"


@pytest.mark.parametrize(("network", "used", "options", "check"), [
    # create/explicit-subnet.json
    ({"subnets": [{"subnet": "10.100.0.0/24"}]}, {}, {},
     lambda o: o["subnets"] == [{"gateway": "10.100.0.1", "subnet": "10.100.0.0/24"}]),
    # create/internal.json: internal without DNS has no gateway
    ({"internal": True}, {}, {}, lambda o: o["subnets"] == [{"subnet": "10.89.0.0/24"}]),
    # create/dns-enabled.json
    ({"dns_enabled": True, "internal": True}, {}, {},
     lambda o: o["subnets"][0]["gateway"] == "10.89.0.1"),
    # create/labels.json
    ({"labels": {"key1": "value1", "key2": "value2"}}, {}, {},
     lambda o: o["labels"] == {"key1": "value1", "key2": "value2"}),
    # create/check-used-subnets-with-subnet.json
    ({}, {"subnets": ["10.89.0.0/24"]}, {"check_used_subnets": True},
     lambda o: o["subnets"][0]["subnet"] == "10.89.1.0/24"),
    # ...and without the check, netavark does not look at used.subnets
    ({}, {"subnets": ["10.89.0.0/24"]}, {},
     lambda o: o["subnets"][0]["subnet"] == "10.89.0.0/24"),
    # create/subnet-with-gateway.json
    ({"subnets": [{"subnet": "10.100.0.0/24", "gateway": "10.100.0.50"}]}, {}, {},
     lambda o: o["subnets"][0]["gateway"] == "10.100.0.50"),
    # create/lease-range-both.json
    ({"subnets": [{"subnet": "10.100.0.0/24", "lease_range": {
        "start_ip": "10.100.0.20", "end_ip": "10.100.0.50"}}]}, {}, {},
     lambda o: o["subnets"][0]["lease_range"] == {"end_ip": "10.100.0.50",
                                                  "start_ip": "10.100.0.20"}),
    # create/ipv6-auto-dualstack.json
    ({"ipv6_enabled": True}, {}, {},
     lambda o: [s["subnet"][:5] for s in o["subnets"]] == ["10.89", "fd12:"]
     and o["subnets"][1]["gateway"].endswith("::1")),
    # create/ipv6-with-ipv4-subnet.json
    ({"ipv6_enabled": True, "subnets": [{"subnet": "10.100.0.0/24"}]}, {}, {},
     lambda o: o["subnets"][0]["subnet"] == "10.100.0.0/24" and ":" in o["subnets"][1]["subnet"]),
    # create/ipv6-subnet.json
    ({"subnets": [{"subnet": "fdcc::/64"}]}, {}, {},
     lambda o: o["ipv6_enabled"] is True and o["subnets"] == [{"gateway": "fdcc::1",
                                                               "subnet": "fdcc::/64"}]),
    # two subnets of each family (netavark's create/two-subnets shape)
    ({"subnets": [{"subnet": "10.100.0.0/24"}, {"subnet": "fdcc::/64"},
                  {"subnet": "10.101.0.0/24", "gateway": "10.101.0.254"},
                  {"subnet": "fdcd::/64"}]}, {}, {},
     lambda o: o["ipv6_enabled"] is True and o["subnets"] == [
         {"gateway": "10.100.0.1", "subnet": "10.100.0.0/24"},
         {"gateway": "fdcc::1", "subnet": "fdcc::/64"},
         {"gateway": "10.101.0.254", "subnet": "10.101.0.0/24"},
         {"gateway": "fdcd::1", "subnet": "fdcd::/64"}]),
    # create/network-dns-servers-valid.json
    ({"dns_enabled": True, "network_dns_servers": ["8.8.8.8", "1.1.1.1"]}, {}, {},
     lambda o: o["network_dns_servers"] == ["8.8.8.8", "1.1.1.1"]),
    # create/mtu-option.json, isolate-true.json, isolate-strict.json
    ({"options": {"mtu": "1500", "isolate": "strict"}}, {}, {},
     lambda o: o["options"] == {"mtu": "1500", "isolate": "strict"}),
    # Docker's option names, as netavark takes them
    ({"options": {"com.docker.network.driver.mtu": "1400",
                  "com.docker.network.bridge.name": "br-mine"}}, {}, {},
     lambda o: o["options"] == {"mtu": "1400"} and o["network_interface"] == "br-mine"),
    # create/static-route.json, routes-blackhole.json
    ({"routes": [{"destination": "192.168.0.0/24", "gateway": "10.100.0.254"},
                 {"destination": "10.89.0.0/24", "route_type": "blackhole"}]}, {}, {},
     lambda o: o["routes"] == [{"gateway": "10.100.0.254", "destination": "192.168.0.0/24"},
                               {"destination": "10.89.0.0/24", "route_type": "blackhole"}]),
    # the pools of the call, and a subnet portway or the host uses is skipped
    ({}, {}, {"subnet_pools": [{"base": "198.51.100.0/23", "size": 24}]},
     lambda o: o["subnets"][0]["subnet"] == "198.51.101.0/24"),
    # used.names count as taken interface names too, as netavark counts them
    ({}, {"names": {"podman1": "x"}}, {}, lambda o: o["network_interface"] == "podman2"),
])
def test_completed(network: dict[str, Any], used: dict[str, Any], options: dict[str, Any],
                   check: Any) -> None:
    out = create(config(network, used, **options))
    assert check(out), out


@pytest.mark.parametrize(("network", "used", "options", "message"), [
    ({}, {"names": {"testnet1": NID}}, {}, "network already exists testnet1"),
    ({"network_interface": "usedinterface"}, {"interfaces": ["usedinterface"]}, {},
     "bridge name usedinterface already in use"),
    # portway's firewall takes interfaces so named for containers' own
    ({"network_interface": "pwv-br0"}, {}, {}, "bridge name pwv-br0: portway's firewall"),
    ({"options": {"com.docker.network.bridge.name": "pwn-x"}}, {}, {},
     "bridge name pwn-x: portway's firewall"),
    ({"name": ""}, {}, {}, "Network name must be supplied"),
    ({"name": "badname!"}, {}, {}, 'Invalid characters in network name "badname!": must '
     "match [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
    ({"id": ""}, {}, {}, "Network id must be supplied"),
    ({"subnets": [{"subnet": "10.100.0.0/24", "gateway": "10.200.0.1"}]}, {}, {},
     "gateway 10.200.0.1 not in subnet 10.100.0.0/24"),
    ({"subnets": [{"subnet": "10.100.0.0/24", "lease_range": {"start_ip": "10.200.0.20"}}]},
     {}, {}, "lease range start_ip 10.200.0.20 not in subnet 10.100.0.0/24"),
    ({"network_dns_servers": ["8.8.8.8.8"], "dns_enabled": True}, {}, {},
     "invalid IP address syntax"),
    ({"network_dns_servers": ["8.8.8.8"]}, {}, {},
     "cannot set NetworkDNSServers if DNS is not enabled for the network"),
    ({"options": {"mtu": "abc"}}, {}, {}, 'unable to parse "mtu": invalid digit found in string'),
    ({"options": {"vlan": "5000"}}, {}, {}, "vlan must be between 0 and 4094"),
    ({"options": {"frobnicate": "1"}}, {}, {}, "unsupported bridge network option: frobnicate"),
    ({"ipam_options": {"driver": "none"}, "subnets": [{"subnet": "10.100.0.0/24"}]}, {}, {},
     "None ipam driver is set but subnets are given"),
    ({"ipam_options": {"driver": "magic"}}, {}, {}, "Unsupported ipam driver: magic"),
    ({"routes": [{"destination": "192.168.0.5/24", "gateway": "10.0.0.1"}]}, {}, {},
     "route destination invalid"),
    ({"routes": [{"destination": "192.168.0/24", "gateway": "10.0.0.1"}]}, {}, {},
     "invalid IP address syntax"),
    # An address alone is not a destination (create/route-invalid-dest.json).
    ({"routes": [{"destination": "192.168.0.1", "gateway": "10.100.0.254"}]}, {}, {},
     "invalid IP address syntax: 192.168.0.1"),
    ({"routes": [{"destination": "10.89.0.0/24", "gateway": "10.89.0.300"}]}, {}, {},
     "invalid IP address syntax"),
    ({"subnets": [{"subnet": "10.1.3.248/30"}]}, {"subnets": ["10.1.2.0/23"]},
     {"check_used_subnets": True}, "subnet 10.1.3.248/30 is already used"),
    ({"subnets": [{"subnet": "10.1.2.0/23"}, {"subnet": "10.1.3.248/30"}]}, {}, {},
     "overlapping subnets: 10.1.2.0/23 and 10.1.3.248/30"),
    ({"subnets": [{"subnet": "10.100.0.0/24"}, {"subnet": "10.100.0.0/24"}]}, {}, {},
     "duplicate subnet defined: 10.100.0.0/24"),
    ({"subnets": [{"subnet": "192.168.0.0/32"}]}, {}, {},
     "could not create gateway for subnet 192.168.0.0/32 because it has a 31 or greater "
     "subnet prefix"),
    ({"routes": [{"destination": "10.89.0.0/24"}]}, {}, {},
     "route 10.89.0.0/24 requires a gateway for type unicast"),
    ({"routes": [{"destination": "10.89.0.0/24", "gateway": "10.88.0.2",
                  "route_type": "blackhole"}]}, {}, {},
     "route 10.89.0.0/24 must not have a gateway for type blackhole"),
    # portway's own limits, at once rather than at the first setup
    ({"driver": "vxlan"}, {}, {}, "driver 'vxlan' is not supported"),
    ({"options": {"vrf": "blue"}}, {}, {}, "no VRF support"),
    ({"subnets": [{"subnet": "198.51.100.0/25"}]}, {}, {},
     "subnet 198.51.100.0/25 is already used on the host or by another config"),
])
def test_refused(network: dict[str, Any], used: dict[str, Any], options: dict[str, Any],
                 message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        create(config(network, used, **options))
    assert message in exc.value.message


def test_ipam_driver_none() -> None:  # create/ipam-none.json
    out = create(config({"dns_enabled": True, "ipam_options": {"driver": "none"}}))
    assert out["ipam_options"] == {"driver": "none"} and out["dns_enabled"] is False
    assert "subnets" not in out and out["network_interface"] == "podman1"
    with pytest.raises(InvalidInput, match="cannot set NetworkDNSServers"):
        create(config({"dns_enabled": True, "ipam_options": {"driver": "none"},
                       "network_dns_servers": ["1.1.1.1"]}))


@pytest.mark.parametrize("network", [
    {"ipv6_enabled": True, "options": {"mtu": "1200"}},
    {"subnets": [{"subnet": "fd00:1::/64"}], "options": {"com.docker.network.driver.mtu": "1200"}},
    {"driver": "macvlan", "network_interface": "eth0", "options": {"mtu": "1200"},
     "subnets": [{"subnet": "fd00:1::/64"}]},
])
def test_an_ipv6_network_below_ipv6s_minimum_mtu_is_refused(network: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as exc:
        create(config(network), links={"eth0"})
    assert "mtu 1200 is below IPv6's minimum of 1280" in exc.value.message
    create(config({**network, "options": {"mtu": "1280"}}), links={"eth0"})
    create(config({"options": {"mtu": "1200"}}))  # IPv4 only
