"""What the host namespace has that portway must not collide with: its addresses and
routes (a subnet portway picks overlaps none of them), its sockets (a host port in use
is not published), its ephemeral port range, and the addresses on portway's own links
(never a published port's address)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from portway.core import names
from portway.kernel import links, observe
from portway.model.types import IPAddress, IPNetwork

if TYPE_CHECKING:
    from pyroute2 import IPRoute


class LiveHostFacts:
    def __init__(self, host: IPRoute) -> None:
        self.host = host

    def taken_ranges(self, own_bridges: set[str]) -> list[tuple[IPNetwork, str]]:
        taken: list[tuple[IPNetwork, str]] = []
        for iface in links.observe_addresses(self.host):
            if iface.network.prefixlen < 32 or iface.ip.is_loopback:
                taken.append((iface.network, f"host address {iface}"))
        for iface6 in links.observe_addresses6(self.host):
            if iface6.network.prefixlen < 128 and not iface6.ip.is_link_local:
                taken.append((iface6.network, f"host address {iface6}"))
        for version in (4, 6):
            for route, dev in links.observe_routes(self.host, version):
                if dev not in own_bridges:
                    taken.append((route, f"host route {route} dev {dev}"))
        return taken

    def portway_addresses(self) -> set[IPAddress]:
        """The addresses on links any portway here owns (its bridges' gateways): three
        dumps, not two per link (every container's veth is one)."""
        owned = {link.index for link in links.observe_links(self.host)
                 if names.parse_owner_tag(link.alias) is not None}
        return {a.ip for index, a in links.observe_link_addresses(self.host) if index in owned}

    def link_exists(self, name: str) -> bool:
        return links.observe_link(self.host, name) is not None

    def link_addresses(self, name: str) -> list[IPAddress]:
        return links.observe_usable_addresses(self.host, name)

    def link_kind_mtu(self, name: str) -> tuple[str, int] | None:
        return links.observe_kind_mtu(self.host, name)

    def default_route_mtu(self) -> int | None:
        return links.observe_default_route_mtu(self.host)

    def listening(self, protocol: str) -> list[tuple[str, int]]:
        return observe.listening(protocol)

    def ephemeral_range(self) -> tuple[int, int]:
        return observe.ephemeral_range()
