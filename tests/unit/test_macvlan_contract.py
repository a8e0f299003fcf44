"""macvlan networks in the pure core: Docker's options (core/macvlan.py), netavark's
setup input (core/netavark.py) and `netavark create` (core/netavark_create.py), with
their callers' error texts; the firewall renders nothing for them."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from portway.core import firewall, ipam, macvlan, netavark, netavark_create
from portway.errors import InvalidInput
from portway.model.types import Endpoint, IPNetwork, Network, Subnet

NID = "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9"


def test_docker_options() -> None:
    assert macvlan.check_cli_options({"parent": "eth0"}, False) == \
        {"parent": "eth0", "macvlan_mode": "bridge"}
    assert macvlan.check_cli_options({"parent": "eth0", "macvlan_mode": "vepa"},
                                     False)["macvlan_mode"] == "vepa"
    for options, words in (
            ({}, "a macvlan network needs a parent interface"),
            ({"parent": "eth0", "macvlan_mode": "source"},
             "requested macvlan mode 'source' is not valid, 'bridge' mode is the macvlan "
             "driver default"),
            ({"parent": "eth0", "ipvlan_mode": "l2"},
             "unknown option 'ipvlan_mode' for a macvlan network")):
        with pytest.raises(InvalidInput) as exc:
            macvlan.check_cli_options(options, False)
        assert words in exc.value.message
    with pytest.raises(InvalidInput, match="an internal one too"):
        macvlan.check_cli_options({}, True)


def setup_input(**network: Any) -> dict[str, Any]:
    """Mirrors testfiles/macvlan.json."""
    info: dict[str, Any] = {
        "name": "podman", "id": NID, "driver": "macvlan", "network_interface": "dummy0",
        "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
        "ipv6_enabled": False, "internal": False, "dns_enabled": True,
        "ipam_options": {"driver": "host-local"}}
    info.update(network)
    return {"container_id": "someID", "container_name": "someName",
            "networks": {"podman": {"static_ips": ["10.88.0.2"], "interface_name": "eth0",
                                    "options": {"host_interface_name": "anything"}}},
            "network_info": {"podman": info},
            "port_mappings": [{"host_ip": "", "container_port": 80, "host_port": 8080,
                               "range": 1, "protocol": "tcp"}]}


def test_setup_input() -> None:
    opts = netavark.parse_options(setup_input())
    info = opts.networks["podman"]
    assert (info.driver, info.bridge, info.macvlan_mode, info.metric, info.mtu) == \
        ("macvlan", "dummy0", "bridge", 99, 0)
    assert info.dns_enabled is False  # netavark serves no DNS on macvlan networks
    assert opts.ports == ()  # nor publishes ports there
    assert opts.attachments[0].host_ifname is None  # no host end to name
    info = netavark.parse_options(setup_input(
        network_interface="", options={"mode": "private", "metric": "200", "mtu": "1400",
                                       "no_default_route": "true", "isolate": "x"})
    ).networks["podman"]
    assert (info.bridge, info.macvlan_mode, info.metric, info.mtu, info.no_default_route) == \
        ("", "private", 200, 1400, True)
    dhcp = netavark.parse_options(setup_input(subnets=[], ipam_options={"driver": "dhcp"}))
    assert dhcp.networks["podman"].ipam == "dhcp" and dhcp.networks["podman"].subnets == ()


@pytest.mark.parametrize(("network", "words"), [
    ({"options": {"mode": "l2"}}, 'invalid macvlan mode "l2"'),
    ({"options": {"metric": "-1"}}, 'unable to parse "metric": invalid digit found in string'),
    ({"options": {"no_default_route": "yes"}},
     'unable to parse "no_default_route": provided string was not `true` or `false`'),
    ({"options": {"bclim": "x"}}, 'unable to parse "bclim": invalid digit found in string'),
    ({"options": {"bclim": "4"}}, "portway cannot set a macvlan device's broadcast cutoff"),
    ({"driver": "ipvlan"}, "this kernel has no ipvlan support"),
    ({"driver": "ipvlan", "options": {"mode": "bridge"}}, 'invalid ipvlan mode "bridge"'),
    ({"driver": "vxlan"}, "driver 'vxlan' is not supported"),
])
def test_setup_input_refused(network: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        netavark.parse_options(setup_input(**network))
    assert words in exc.value.message


def create_input(**network: Any) -> dict[str, Any]:
    """Mirrors testfiles/create/macvlan-subnet.json."""
    net = {"name": "macvlansubnet", "id": "7" * 64, "driver": "macvlan",
           "dns_enabled": True, "internal": False, "ipv6_enabled": False,
           "network_interface": "dummy0",
           "subnets": [{"subnet": "10.200.0.0/24", "gateway": "10.200.0.1"}]}
    net.update(network)
    return {"network": net, "used": {"interfaces": [], "names": {}, "subnets": []},
            "options": {"subnet_pools": [{"base": "10.89.0.0/16", "size": 24}],
                        "default_interface_name": "podman", "check_used_subnets": False}}


def create(cfg: dict[str, Any], taken: list[tuple[IPNetwork, str]] | None = None
           ) -> dict[str, Any]:
    def v6(avoid: list[tuple[IPNetwork, str]]) -> IPNetwork:
        return ipam.pick_subnet6(avoid, 0x12345678AB)

    return netavark_create.complete(cfg, taken or [], lambda n: False, v6, "now",
                                    lambda n: n in ("dummy0", "eth0"))


def test_create() -> None:
    out = create(create_input(), [(ipaddress.ip_network("10.200.0.0/24"),
                                   "host route 10.200.0.0/24 dev eth0")])
    assert out == {"created": "now", "dns_enabled": False, "driver": "macvlan",
                   "id": "7" * 64, "internal": False, "ipv6_enabled": False,
                   "name": "macvlansubnet", "network_interface": "dummy0",
                   "ipam_options": {"driver": "host-local"},
                   "subnets": [{"gateway": "10.200.0.1", "subnet": "10.200.0.0/24"}]}
    # create/macvlan-mode.json: the gateway completed, the mode kept.
    out = create(create_input(options={"mode": "bridge"}, subnets=[{"subnet": "10.200.0.0/24"}]))
    assert (out["options"], out["subnets"]) == ({"mode": "bridge"}, [
        {"gateway": "10.200.0.1", "subnet": "10.200.0.0/24"}])
    # internal: no gateway made up; no parent: the default-route interface's, at setup.
    out = create(create_input(internal=True, network_interface=None,
                              subnets=[{"subnet": "10.200.0.0/24"}]))
    assert out["subnets"] == [{"subnet": "10.200.0.0/24"}] and "network_interface" not in out


@pytest.mark.parametrize(("network", "words"), [
    ({"network_interface": "eth999"}, "parent interface eth999 does not exist"),
    ({"subnets": None}, "the dhcp ipam driver is not supported by portway"),
    ({"subnets": None, "ipam_options": {"driver": "host-local"}},
     "macvlan driver needs at least one subnet specified when the host-local ipam driver "
     "is set"),
    ({"ipam_options": {"driver": "dhcp"}}, "ipam driver dhcp set but subnets are set"),
    ({"options": {"isolate": "true"}}, "unsupported vlan network option: isolate"),
    ({"options": {"mode": "l3"}}, 'invalid macvlan mode "l3"'),
    ({"driver": "ipvlan", "subnets": None}, "ipam driver dhcp is not supported with ipvlan"),
    ({"driver": "ipvlan", "options": {"bclim": "2"}},
     "unsupported ipvlan network option bclim"),
    ({"driver": "ipvlan"}, "this kernel has no ipvlan support"),
    ({"subnets": [{"subnet": "10.1.2.0/23"}, {"subnet": "10.1.3.248/30"}]},
     "overlapping subnets: 10.1.2.0/23 and 10.1.3.248/30"),
])
def test_create_refused(network: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        create(create_input(**network))
    assert words in exc.value.message


def test_create_refuses_a_subnet_of_portway_network() -> None:
    with pytest.raises(InvalidInput, match="already used"):
        create(create_input(), [(ipaddress.ip_network("10.200.0.0/24"), "network other")])


def test_no_rules_and_no_guard_for_macvlan() -> None:
    net = Network(id="1" * 64, name="lan", driver="macvlan", bridge="pwbr-1111111111",
                  subnets=(Subnet(subnet=ipaddress.ip_network("10.88.0.0/16"),
                                  gateway=ipaddress.ip_address("10.88.0.1")),),
                  options={"parent": "eth0", "macvlan_mode": "bridge"})
    assert firewall.render_network(net, "inst") == []
    assert firewall.render_network_removal(net) == []
    assert macvlan.parent(net) == "eth0" and macvlan.mode(net) == "bridge"
    endpoint = Endpoint(id="2" * 64, container_id="3" * 64, network_id=net.id,
                        ifname="eth0", host_ifname="pwm-22222222222",
                        addresses=(ipaddress.ip_interface("10.88.0.2/16"),),
                        mac="02:42:0a:58:00:02")
    assert firewall.render_guard([endpoint], "inst") == []
