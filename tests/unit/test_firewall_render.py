"""The pure firewall renderer: golden JSON, and the shape that keeps per-packet cost flat."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from portway.core import firewall
from portway.core.firewall import Published
from portway.model.types import Endpoint, Network

GOLDEN = Path(__file__).parent / "golden"


def network(internal: bool = False, **options: str) -> Network:
    return Network(id="ab" * 32, name="app", subnet=ipaddress.ip_network("10.77.0.0/24"),
                   gateway=ipaddress.ip_address("10.77.0.1"), bridge="pwbr-abababab",
                   internal=internal, options=options)


def published(port: int, host_ip: str | None = None) -> Published:
    return Published(container_id="cd" * 32, protocol="tcp", host_port=port,
                     container_ip=ipaddress.ip_address("10.77.0.2"), container_port=80,
                     host_ip=ipaddress.ip_address(host_ip) if host_ip else None)


def check_golden(name: str, data: object) -> None:
    path = GOLDEN / name
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if os.environ.get("PORTWAY_UPDATE_GOLDEN") == "1":  # then review and commit the files
        path.write_text(text)
    assert path.exists(), f"{path} is missing; PORTWAY_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"rendering changed; compare with {path}"


def test_golden_base() -> None:
    check_golden("base.json", firewall.render_base())


def test_golden_network() -> None:
    check_golden("network.json", firewall.render_network(network()))
    check_golden("network-internal.json", firewall.render_network(network(internal=True)))


def test_golden_ports() -> None:
    check_golden("ports.json", firewall.render_ports([published(8080),
                                                      published(6379, "127.0.0.1")]))


def rules(cmds: list[dict[str, object]]) -> int:
    return sum(1 for c in cmds if "rule" in c.get("add", {}))  # type: ignore[operator]


def test_ports_are_elements_not_rules() -> None:
    one = firewall.render_ports([published(8080)])
    many = firewall.render_ports([published(p) for p in range(1000, 2000)])
    assert rules(one) == rules(many) == 0
    assert len(many) == 1000 * len(one)


def test_rules_per_network_are_constant() -> None:
    # Base chains dispatch by map; a network adds its own few rules, not one per peer.
    a = firewall.render_network(network())
    assert rules(a) == 9
    base_rules = rules(firewall.render_base())
    assert base_rules == 15


def test_options_change_the_network_rules() -> None:
    text = json.dumps(firewall.render_network(network(
        **{firewall.ICC_OPTION: "false", firewall.MASQ_OPTION: "false"})))
    assert "outbound masquerade" not in text
    icc = [c for c in firewall.render_network(network(**{firewall.ICC_OPTION: "false"}))
           if "(icc)" in json.dumps(c)]
    assert icc and "drop" in json.dumps(icc[0])
    internal = json.dumps(firewall.render_network(network(internal=True)))
    assert "nat_src" not in internal and "no way out" in internal


def test_removal_mirrors_creation() -> None:
    net = network()
    added = {json.dumps(c["add"].get("element", {}).get("name")) for c in
             firewall.render_network(net) if "element" in c["add"]}
    removed = {json.dumps(c["delete"].get("element", {}).get("name")) for c in
               firewall.render_network_removal(net) if "element" in c["delete"]}
    assert added == removed
    ports = [published(8080), published(6379, "127.0.0.1")]
    assert len(firewall.render_ports_removal(ports)) == len(firewall.render_ports(ports))


def test_rebuild_transactions() -> None:
    net = network()
    missing = firewall.render_rebuild([net], [published(8080)], None)
    assert missing[0] == firewall.render_base() and len(missing) == 2
    existing = firewall.render_rebuild([], [], ["prerouting", "in-abababababab"])
    assert existing[0][0] == {"flush": {"table": {"family": "inet", "name": "portway"}}}
    flushed = {c["flush"].get("map", c["flush"].get("set", {})).get("name")
               for c in existing[0] if "flush" in c}
    assert flushed >= {"bridges", "dns", *firewall.MAPS}  # flush table leaves elements
    assert existing[1] == [{"delete": {"chain": {**firewall.T, "name": "in-abababababab"}}}]


def test_summaries_agree_with_a_listing() -> None:
    cmds = firewall.render_base() + firewall.render_network(network()) + \
        firewall.render_ports([published(8080)])
    listing = [{"chain": {"name": "guard"}}, {"rule": {"chain": "guard"}},
               {"map": {"name": "pub_any_addr", "elem": [1]}}]
    counts = firewall.summarize(cmds)
    assert counts["chain guard"] == 2 and counts["map pub_any_addr"] == 1
    assert firewall.summarize_listing(listing) == {"chain guard": 1, "map pub_any_addr": 1}


def test_every_map_is_flushed_on_rebuild() -> None:
    declared = {c["add"]["map"]["name"] for c in firewall.render_base() if "map" in c["add"]}
    assert declared == set(firewall.MAPS)


def endpoint(n: int) -> Endpoint:
    address = ipaddress.ip_address(f"10.77.0.{n}")
    return Endpoint(id=f"{n:064x}", container_id="cd" * 32, network_id="ab" * 32,
                    ifname="eth0", host_ifname=f"pwv-{n:011x}", address=address,
                    prefixlen=24, mac=f"02:42:0a:4d:00:{n:02x}")


def test_golden_guard() -> None:
    check_golden("guard.json", firewall.render_guard_rebuild([endpoint(2), endpoint(3)],
                                                             exists=False))


def test_guard_is_per_endpoint_elements() -> None:
    # Each endpoint adds one element to each set; the rules do not grow.
    one = firewall.render_guard([endpoint(2)])
    many = firewall.render_guard([endpoint(n) for n in range(2, 200)])
    assert rules(one) == rules(many) == 0
    assert [len(c["add"]["element"]["elem"]) for c in many] == [198, 198]
    removal = firewall.render_guard_removal([endpoint(2)])
    assert [c["delete"]["element"]["elem"] for c in removal] == \
        [c["add"]["element"]["elem"] for c in one]
    assert firewall.render_guard([]) == firewall.render_guard_removal([]) == []


def test_guard_fails_closed() -> None:
    # The first rule lets non-container ports through; every later one drops what the
    # sets do not allow, so a veth with no entries sends nothing.
    base = firewall.render_guard_base()
    chain_rules = [c["add"]["rule"] for c in base if "rule" in c["add"]]
    assert chain_rules[0]["expr"][0]["match"]["right"] == firewall.VETH_PATTERN
    assert all(r["expr"][-1] == {"drop": None} for r in chain_rules[1:])
    rebuilt = firewall.render_guard_rebuild([endpoint(2)], exists=True)
    assert [c["flush"] for c in rebuilt[:3]] == [
        {"table": {"family": "bridge", "name": "portway"}},
        {"set": {**firewall.G, "name": "macs"}}, {"set": {**firewall.G, "name": "addrs"}}]


def test_internal_network_reaches_only_its_gateway_on_the_host() -> None:
    net = network(internal=True)
    cmds = firewall.render_network(net)
    host = [c["add"]["rule"] for c in cmds if c["add"].get("rule", {}).get("chain")
            == firewall.host_chain(net)]
    assert host[0]["expr"][0]["match"]["right"] == "10.77.0.1"
    assert host[-1]["expr"] == [{"drop": None}]
    assert "host_in" not in json.dumps(firewall.render_network(network()))
