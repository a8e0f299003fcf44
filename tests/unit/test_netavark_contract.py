"""netavark's JSON contract (core/netavark.py) for networks of either family or both."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from portway.core import netavark
from portway.errors import InvalidInput

NET_ID = "41134968bfba5d6a3e88b7eedbaad47b55a2a677e514273eaff7380ec88ce133"
CID = "ab" * 32


def options(subnets: list[dict[str, str]], ips: list[str],
            ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"container_id": CID, "container_name": "web", "port_mappings": ports or [],
            "networks": {"pnet": {"static_ips": ips, "interface_name": "eth0"}},
            "network_info": {"pnet": {
                "name": "pnet", "id": NET_ID, "driver": "bridge",
                "network_interface": "podman1", "subnets": subnets,
                "ipv6_enabled": any(":" in s["subnet"] for s in subnets),
                "internal": False, "dns_enabled": True}}}


DUAL = [{"subnet": "fd00:89::/64", "gateway": "fd00:89::1"},
        {"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}]


def test_dual_stack_network_and_its_status() -> None:
    opts = netavark.parse_options(options(DUAL, ["10.89.0.5", "fd00:89::5"]))
    info = opts.networks["pnet"]
    # IPv4 first, whatever order Podman gave.
    assert [str(s.subnet) for s in info.subnets] == ["10.89.0.0/24", "fd00:89::/64"]
    assert opts.attachments[0].static_ips == (ipaddress.ip_address("10.89.0.5"),
                                              ipaddress.ip_address("fd00:89::5"))
    addresses = (ipaddress.ip_interface("10.89.0.5/24"), ipaddress.ip_interface("fd00:89::5/64"))
    status = netavark.status_block(info, "eth0", "02:00:00:00:00:01", addresses)
    assert status == {
        "interfaces": {"eth0": {"mac_address": "02:00:00:00:00:01", "subnets": [
            {"ipnet": "10.89.0.5/24", "gateway": "10.89.0.1"},
            {"ipnet": "fd00:89::5/64", "gateway": "fd00:89::1"}]}},
        "dns_server_ips": ["10.89.0.1", "fd00:89::1"], "dns_search_domains": ["dns.podman"]}


def test_ipv6_only_network_gets_its_first_address_as_gateway() -> None:
    opts = netavark.parse_options(options([{"subnet": "fd00:90::/64"}], ["fd00:90::7"]))
    info = opts.networks["pnet"]
    assert [(str(s.subnet), str(s.gateway)) for s in info.subnets] == \
        [("fd00:90::/64", "fd00:90::1")]


def test_published_on_an_ipv6_address() -> None:
    opts = netavark.parse_options(options(DUAL, ["10.89.0.5", "fd00:89::5"], [
        {"host_ip": "2001:db8::1", "container_port": 80, "host_port": 8080},
        {"host_ip": "::", "container_port": 81, "host_port": 8081}]))
    # (:: is IPv6's every address alone, as netavark takes it: not IPv4's too.)
    assert [(str(p.host_ip), p.host_port) for p in opts.ports] == \
        [("2001:db8::1", 8080), ("::", 8081)]


def test_several_subnets_of_a_family() -> None:
    """netavark's networks may have several subnets of one family: the container gets an
    address in each (static_ips, matched to the subnets by containment), and the status
    names each address's own subnet's gateway."""
    subnets = [{"subnet": "fd00:89::/64", "gateway": "fd00:89::1"},
               {"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"},
               {"subnet": "10.90.0.0/24", "gateway": "10.90.0.254"}]
    opts = netavark.parse_options(options(subnets, ["10.90.0.7", "10.89.0.5", "fd00:89::5"]))
    info = opts.networks["pnet"]
    assert [(str(s.subnet), str(s.gateway)) for s in info.subnets] == [
        ("10.89.0.0/24", "10.89.0.1"), ("10.90.0.0/24", "10.90.0.254"),
        ("fd00:89::/64", "fd00:89::1")]
    assert [str(a) for a in opts.attachments[0].static_ips] == \
        ["10.90.0.7", "10.89.0.5", "fd00:89::5"]
    status = netavark.status_block(info, "eth0", "02:00:00:00:00:01", (
        ipaddress.ip_interface("10.89.0.5/24"), ipaddress.ip_interface("10.90.0.7/24"),
        ipaddress.ip_interface("fd00:89::5/64")))
    assert status["interfaces"]["eth0"]["subnets"] == [
        {"ipnet": "10.89.0.5/24", "gateway": "10.89.0.1"},
        {"ipnet": "10.90.0.7/24", "gateway": "10.90.0.254"},
        {"ipnet": "fd00:89::5/64", "gateway": "fd00:89::1"}]
    assert status["dns_server_ips"] == ["10.89.0.1", "10.90.0.254", "fd00:89::1"]


@pytest.mark.parametrize(("subnets", "ips", "ports", "words"), [
    ([{"subnet": "10.89.0.0/24"}, {"subnet": "10.89.0.128/25"}], ["10.89.0.5"], None,
     "subnet 10.89.0.128/25 overlaps its subnet 10.89.0.0/24"),
    (DUAL, ["fd00:91::5"], None, "not in a subnet of network pnet"),
    (DUAL, ["fd00:89::5", "fd00:89::6"], None, "more than one address in subnet fd00:89::/64"),
    ([{"subnet": "fd00:89::/64", "gateway": "fd00:88::1"}], ["fd00:89::5"], None,
     "outside the subnet"),
    ([{"subnet": "fd00:89::1/64"}], ["fd00:89::5"], None, "host bits"),
    (DUAL, ["10.89.0.5"], [{"host_ip": "::1", "container_port": 80, "host_port": 80}],
     "cannot publish on ::1"),
])
def test_bad_definitions_are_refused(subnets: list[dict[str, str]], ips: list[str],
                                     ports: list[dict[str, Any]] | None, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        netavark.parse_options(options(subnets, ips, ports))


@pytest.mark.parametrize("cid", ["6ce776ea58b5", "01f0b94d5f4c1", "my-container", "ab" * 32])
def test_any_container_id_string(cid: str) -> None:
    data = options([{"subnet": "10.89.0.0/24"}], ["10.89.0.5"])
    data["container_id"] = cid
    assert netavark.parse_options(data).container_id == cid


@pytest.mark.parametrize("cid", ["", 5, "a\nb", "x" * 256])
def test_container_id_must_be_a_printable_string(cid: object) -> None:
    data = options([{"subnet": "10.89.0.0/24"}], ["10.89.0.5"])
    data["container_id"] = cid
    with pytest.raises(InvalidInput, match="container_id"):
        netavark.parse_options(data)


def with_network(**extra: Any) -> dict[str, Any]:
    data = options([{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], ["10.88.0.2"])
    data["network_info"]["pnet"].update(extra)
    return data


def test_routes_metric_and_no_default_route() -> None:
    # Mirrors testfiles/bridge-blackholeroutes.json, metric.json, bridge-nodefaultroute.json.
    info = netavark.parse_options(with_network(
        routes=[{"destination": "10.89.0.0/24", "gateway": "10.88.0.2"},
                {"destination": "10.90.0.0/24", "route_type": "blackhole"},
                {"destination": "fd00:1::/64", "route_type": "prohibit", "metric": 7}],
        options={"metric": "200", "no_default_route": "true"})).networks["pnet"]
    assert [(str(r.destination), str(r.gateway), r.metric, r.type) for r in info.routes] == [
        ("10.89.0.0/24", "10.88.0.2", None, "unicast"),
        ("10.90.0.0/24", "None", None, "blackhole"),
        ("fd00:1::/64", "None", 7, "prohibit")]
    assert (info.metric, info.no_default_route) == (200, True)
    plain = netavark.parse_options(with_network()).networks["pnet"]
    assert (plain.metric, plain.no_default_route, plain.mtu, plain.isolate) == \
        (100, False, 0, "strict")
    # Kept with the network, so gc can put them back with an endpoint it makes anew.
    from portway.model.types import Network
    net = Network(id=NET_ID, name="pnet", bridge="podman1", subnets=info.subnets,
                  options=netavark.network_options(info))
    assert netavark.stored_routes(net) == info.routes
    assert netavark.ROUTES not in netavark.network_options(plain)
    assert netavark.stored_routes(Network(id=NET_ID, name="pnet", bridge="podman1",
                                          subnets=info.subnets)) == ()
    # The caller's options of the names portway keeps these under are not taken: gc
    # would make the routes one named, and stop at one malformed.
    forged = netavark.parse_options(with_network(options={
        netavark.ROUTES: '[{"destination":"10.66.0.0/24","gateway":"10.88.0.9"}]',
        netavark.DNS_ADDRESSES: "10.88.0.9"})).networks["pnet"]
    kept = netavark.network_options(forged)
    assert netavark.ROUTES not in kept and netavark.DNS_ADDRESSES not in kept


@pytest.mark.parametrize(("extra", "message"), [
    # netavark's own wording (src/network/core_utils.rs, bridge.rs), which callers match.
    ({"routes": [{"destination": "10.89.0.0/24", "route_type": "anycast",
                  "gateway": "10.88.0.2"}]}, 'invalid route type "anycast"'),
    ({"routes": [{"destination": "10.89.0.0/24"}]},
     "route 10.89.0.0/24 requires a gateway for type unicast"),
    ({"routes": [{"destination": "10.89.0.0/24", "gateway": "10.88.0.2",
                  "route_type": "blackhole"}]},
     "route 10.89.0.0/24 must not have a gateway for type BlackHole"),
    ({"routes": [{"destination": "fd00::/64", "gateway": "10.88.0.2"}]},
     "route with ipv6 destination and ipv4 gateway (fd00::/64 via 10.88.0.2)"),
    ({"options": {"metric": "abc"}}, 'unable to parse "metric": invalid digit found in string'),
    ({"options": {"metric": "-1"}}, 'unable to parse "metric": invalid digit found in string'),
    ({"options": {"metric": "4294967296"}},
     'unable to parse "metric": number too large to fit in target type'),
    ({"options": {"mtu": ""}}, 'unable to parse "mtu": cannot parse integer from empty string'),
    ({"options": {"no_default_route": "yes"}},
     'unable to parse "no_default_route": provided string was not `true` or `false`'),
    ({"options": {"isolate": "maybe"}}, 'invalid isolate option "maybe"'),
    ({"options": {"mode": "l3"}}, 'invalid bridge mode "l3"'),
    ({"options": {"vlan": "5000"}}, "vlan must be between 0 and 4094"),
    ({"options": {"vlan": "10"}}, "this kernel has no bridge VLAN filtering"),
    ({"options": {"vrf": "blue"}}, "get vrf to set up bridge interface: vrf blue"),
    ({"ipam_options": {"driver": "magic"}}, "unsupported ipam driver magic"),
    ({"ipam_options": {"driver": "dhcp"}},
     "cannot use dhcp ipam driver without using the option mode=unmanaged"),
    ({"network_interface": ""}, "no bridge interface name given"),
])
def test_netavark_errors(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        netavark.parse_options(with_network(**extra))
    assert message in exc.value.message


@pytest.mark.parametrize(("mac", "out"), [
    ("02:42:AC:11:00:02", "02:42:ac:11:00:02"), ("02-42-ac-11-00-03", "02:42:ac:11:00:03")])
def test_static_mac_forms(mac: str, out: str) -> None:
    data = with_network()
    data["networks"]["pnet"]["static_mac"] = mac
    assert netavark.parse_options(data).attachments[0].static_mac == out


@pytest.mark.parametrize(("mac", "message"), [
    ("zz:42:ac:11:00:02", "unable to parse mac address zz:42:ac:11:00:02"),
    ("02:42:ac:11:00", "invalid mac length for address: 02:42:ac:11:00"),
    ("01:00:5e:00:00:01", "multicast"),
])
def test_static_mac_errors(mac: str, message: str) -> None:
    data = with_network()
    data["networks"]["pnet"]["static_mac"] = mac
    with pytest.raises(InvalidInput) as exc:
        netavark.parse_options(data)
    assert message in exc.value.message


@pytest.mark.parametrize(("isolate", "fin", "fout"), [
    (None, ["drop"], []), ("strict", ["drop"], []), ("true", [], []),
    ("false", ["accept"], ["accept"])])
def test_isolate_renders_netavark_semantics(isolate: str | None, fin: list[str],
                                            fout: list[str]) -> None:
    """The rules about other portway bridges: in the network's way out (fin) and its way
    in (fout)."""
    from portway.core import firewall
    from portway.model.types import Network, Subnet

    net = Network(id=NET_ID, name="pnet", bridge="podman1", subnets=(Subnet(
        ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_address("10.89.0.1")),),
        options={"isolate": isolate} if isolate else {}, labels={"io.podman.network": "true"})
    _, chain_in, chain_out = firewall.chain_names(net)

    def verdicts(chain: str, key: str) -> list[str]:
        return [next(k for k in ("accept", "drop") if k in r["expr"][-1])
                for c in firewall.render_network(net, "0fa4e000")
                if (r := c["add"].get("rule")) and r["chain"] == chain
                and any(e.get("match", {}).get("right") == "@bridges" and
                        e["match"]["left"] == {"meta": {"key": key}} for e in r["expr"])]

    assert verdicts(chain_in, "oifname") == fin
    assert verdicts(chain_out, "iifname") == fout


def test_netavark_options_are_read_on_podman_networks_only() -> None:
    """A network of portway's own with `-o isolate=false -o mode=unmanaged` keeps
    Docker's meaning: isolated, with its rules (those are netavark's options)."""
    from portway.core import firewall
    from portway.model.types import Network, Subnet

    net = Network(id=NET_ID, name="own", bridge="pwbr-own", subnets=(Subnet(
        ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_address("10.89.0.1")),),
        options={"isolate": "false", "mode": "unmanaged"})
    rules = [c["add"]["rule"]["comment"] for c in firewall.render_network(net, "0fa4e000")
             if "rule" in c["add"]]
    assert any("isolation from other portway networks" in r for r in rules)
    assert not firewall.unmanaged(net)


def test_ipam_driver_none_gives_no_address() -> None:
    """Mirrors create/ipam-none.json's network as setup gets it (and bridge-unmanaged.json,
    host-local without subnets): no subnet, the static ips ignored, an empty status."""
    for extra in ({"ipam_options": {"driver": "none"}},
                  {"ipam_options": {"driver": "none"}, "subnets": []},
                  {"subnets": None, "options": {"mode": "unmanaged"}}):
        opts = netavark.parse_options(with_network(**extra))
        info = opts.networks["pnet"]
        assert info.subnets == () and opts.attachments[0].static_ips == ()
        assert netavark.status_block(info, "eth0", "02:aa:bb:cc:dd:ee", ()) == {
            "interfaces": {"eth0": {"mac_address": "02:aa:bb:cc:dd:ee", "subnets": []}},
            "dns_server_ips": [], "dns_search_domains": ["dns.podman"]}
    assert netavark.parse_options(with_network(ipam_options={"driver": "none"})
                                  ).networks["pnet"].ipam == "none"


def test_ipam_driver_none_refuses_ports_and_checked_port_names() -> None:
    data = with_network(ipam_options={"driver": "none"})
    data["port_mappings"] = [{"container_port": 80, "host_port": 8080}]
    with pytest.raises(InvalidInput, match="no container address to go to"):
        netavark.parse_options(data)
    data = with_network(ipam_options={"driver": "none"})
    data["networks"]["pnet"]["options"] = {"host_interface_name": "pwv-mine"}
    with pytest.raises(InvalidInput, match="network without addresses, named pwn-"):
        netavark.parse_options(data)
    data["networks"]["pnet"]["options"] = {"host_interface_name": "pwn-mine"}
    assert netavark.parse_options(data).attachments[0].host_ifname == "pwn-mine"



@pytest.mark.parametrize("bridge", ["pwv-br0", "pwn-br0"])
def test_a_bridge_is_not_named_as_a_containers_interface(bridge: str) -> None:
    """The firewall drops the host's ARP from and what is not of its subnets on an
    interface named pwv-*, pwn-*: a bridge so named would be cut off from the host."""
    with pytest.raises(InvalidInput, match=f"bridge name {bridge}: portway's firewall"):
        netavark.parse_options(with_network(network_interface=bridge))


def test_dhcp_on_an_unmanaged_bridge_needs_the_proxy() -> None:
    """netavark checks mode=unmanaged first; then the lease needs its DHCP proxy, whose
    absence is its error text (the engine tries the socket)."""
    opts = netavark.parse_options(with_network(ipam_options={"driver": "dhcp"},
                                               options={"mode": "unmanaged"}))
    assert opts.networks["pnet"].ipam == "dhcp" and opts.networks["pnet"].subnets == ()
    assert netavark.dhcp_unavailable("No such file or directory (os error 2)").message == (
        'unable to obtain lease: socket "/run/podman/nv-proxy.sock": No such file or '
        "directory (os error 2), is the netavark-dhcp-proxy.socket unit enabled?")


def test_outbound_addresses_render_snat_before_masquerade() -> None:
    """netavark's outbound_addr4/6 (testfiles/bridge-outbound-addr4.json): the network's
    nat chain SNATs each family to its address, then masquerades the rest; a network of
    portway's own given the option is masqueraded as before."""
    from portway.core import firewall
    from portway.model.types import Network, Subnet

    info = netavark.parse_options(with_network(options={
        "outbound_addr4": "100.1.100.1", "outbound_addr6": "fd20:100:200::1"})
    ).networks["pnet"]
    subnet = Subnet(ipaddress.ip_network("10.88.0.0/16"), ipaddress.ip_address("10.88.0.1"))
    for labels, want in (({"io.podman.network": "true"},
                          [("ip", "100.1.100.1"), ("ip6", "fd20:100:200::1"), "masquerade"]),
                         ({}, ["masquerade"])):
        net = Network(id=NET_ID, name="pnet", bridge="podman1", subnets=(subnet,),
                      options=netavark.network_options(info), labels=labels)
        nat = firewall.chain_names(net)[0]
        outbound = [r["expr"][-1] for c in firewall.render_network(net, "0fa4e000")
                    if (r := c["add"].get("rule")) and r["chain"] == nat
                    and "outbound" in r["comment"]]
        assert [(x["snat"]["family"], x["snat"]["addr"]) if "snat" in x else "masquerade"
                for x in outbound] == want
    for key, value in (("outbound_addr4", "fd00::1"), ("outbound_addr6", "1.2.3.4"),
                       ("outbound_addr4", "1.2.3")):
        with pytest.raises(InvalidInput, match=f'unable to parse "{key}": invalid IPv'):
            netavark.parse_options(with_network(options={key: value}))


def test_networks_may_be_a_list_in_the_callers_order() -> None:
    """Current netavark reads `networks` as an object or as a list of objects with a
    name (netavark's test input two-networks.json); a list keeps the interfaces'
    order."""
    data = options([{"subnet": "10.89.1.0/24", "gateway": "10.89.1.1"}], ["10.89.1.2"])
    second = dict(data["network_info"]["pnet"], name="t2", network_interface="t2",
                  subnets=[{"subnet": "10.89.2.0/24", "gateway": "10.89.2.1"}])
    data["network_info"]["t2"] = second
    data["networks"] = [
        {"name": "t2", "static_ips": ["10.89.2.2"], "interface_name": "eth0"},
        {"name": "pnet", "static_ips": ["10.89.1.2"], "interface_name": "eth1"}]
    opts = netavark.parse_options(data)
    assert [(a.network, a.ifname, [str(ip) for ip in a.static_ips])
            for a in opts.attachments] == [("t2", "eth0", ["10.89.2.2"]),
                                           ("pnet", "eth1", ["10.89.1.2"])]


@pytest.mark.parametrize("networks, message", [
    ([{"static_ips": []}], "networks[].name must be a non-empty string"),
    ([{"name": "pnet"}, {"name": "pnet"}], "network pnet is twice in networks"),
    ("podman", "networks must be an object or a list"),
    ([{"name": "other"}], "network other is in networks but not in network_info"),
])
def test_bad_networks_lists(networks: Any, message: str) -> None:
    data = options([{"subnet": "10.89.1.0/24", "gateway": "10.89.1.1"}], [])
    data["networks"] = networks
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        netavark.parse_options(data)


def test_an_alias_that_cannot_be_a_name_is_a_warning_and_left_out() -> None:
    """As netavark (its issue 1019, test input dns-invalid-names.json): the container is
    set up with its other names, and each bad one is a warning."""
    data = options([{"subnet": "10.89.3.0/24", "gateway": "10.89.3.1"}], ["10.89.3.2"])
    data["networks"]["pnet"]["aliases"] = ["valid", "space 1", "comma,1", "newline\n2"]
    opts = netavark.parse_options(data)
    assert opts.attachments[0].aliases == ("valid",)
    assert [w.split(":")[0] for w in opts.warnings] == [
        'invalid network alias "space 1"', 'invalid network alias "comma,1"',
        'invalid network alias "newline\\n2"']
    assert all(w.endswith("ignoring this name") for w in opts.warnings)


def test_a_bad_host_ip_is_netavarks_error() -> None:
    data = options([{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], ["10.88.0.2"])
    data["port_mappings"] = [{"host_ip": "abcd", "container_port": 80, "host_port": 8080,
                              "range": 1, "protocol": "tcp"}]
    with pytest.raises(InvalidInput) as exc:
        netavark.parse_options(data)
    assert exc.value.message == 'invalid host ip "abcd" provided for port 8080'


def test_sctp_port_mappings_as_netavark() -> None:
    """netavark's isolate4.json and its port tests publish sctp beside tcp and udp, also
    as one mapping for several protocols ("tcp,udp,sctp")."""
    data = options([{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], ["10.88.0.2"],
                   ports=[{"host_ip": "", "container_port": 80, "host_port": 8080,
                           "range": 1, "protocol": "tcp,udp,sctp"}])
    assert [p.protocol for p in netavark.parse_options(data).ports] == ["tcp", "udp", "sctp"]
    data["port_mappings"][0]["protocol"] = "dccp"
    with pytest.raises(InvalidInput, match="protocol 'dccp' is not supported"):
        netavark.parse_options(data)


def test_a_route_destination_needs_its_prefix_length() -> None:
    """An address alone is not a route's destination for netavark (its IpNet)."""
    data = options([{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], ["10.88.0.2"])
    data["network_info"]["pnet"]["routes"] = [{"destination": "192.168.0.1",
                                               "gateway": "10.88.0.254"}]
    with pytest.raises(InvalidInput, match=r"'192\.168\.0\.1' is not a subnet"):
        netavark.parse_options(data)


@pytest.mark.parametrize("driver", ["bridge", "macvlan"])
def test_an_ipv6_network_below_ipv6s_minimum_mtu_is_refused(driver: str) -> None:
    # The kernel gives a link below 1280 no IPv6 address: refused before anything is made.
    dual = [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"},
            {"subnet": "fd00:88::/64", "gateway": "fd00:88::1"}]
    extra: dict[str, Any] = {"subnets": dual, "driver": driver,
                             **({"network_interface": "eth0"} if driver == "macvlan" else {})}
    with pytest.raises(InvalidInput) as exc:
        netavark.parse_options(with_network(**extra, options={"mtu": "1279"}))
    assert "mtu 1279 is below IPv6's minimum of 1280" in exc.value.message
    for mtu in ("1280", "0"):  # (0: the default)
        netavark.parse_options(with_network(**extra, options={"mtu": mtu}))
    netavark.parse_options(with_network(options={"mtu": "576"}))  # IPv4 only: any from 68
