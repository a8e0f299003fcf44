"""The pure firewall renderer: golden JSON, and the shape that keeps per-packet cost flat."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from portway.core import firewall
from portway.core.firewall import Published
from portway.model.types import Network

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
    assert base_rules == 12


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
    assert flushed >= {"bridges", *firewall.MAPS}  # flush table leaves elements alone
    assert existing[1] == [{"delete": {"chain": {**firewall.T, "name": "in-abababababab"}}}]


def test_summaries_agree_with_a_listing() -> None:
    cmds = firewall.render_base() + firewall.render_network(network()) + \
        firewall.render_ports([published(8080)])
    listing = [{"chain": {"name": "guard"}}, {"rule": {"chain": "guard"}},
               {"map": {"name": "pub_any_addr", "elem": [1]}}]
    counts = firewall.summarize(cmds)
    assert counts["chain guard"] == 1 and counts["map pub_any_addr"] == 1
    assert firewall.summarize_listing(listing) == {"chain guard": 1, "map pub_any_addr": 1}


def test_every_map_is_flushed_on_rebuild() -> None:
    declared = {c["add"]["map"]["name"] for c in firewall.render_base() if "map" in c["add"]}
    assert declared == set(firewall.MAPS)
