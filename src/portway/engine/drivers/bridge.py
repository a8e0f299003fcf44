"""The bridge driver: one Linux bridge per network holding the gateway address, and a
veth pair per endpoint (host end on the bridge, `ethN` in the container).

Rules of this module:
1. Links carry their owner tag (alias), so gc selects them by owner.
2. A bridge's ifindex is remembered per bridge name: it saves a netlink round trip per
   endpoint. It goes stale only if the bridge is deleted (the kernel does not give a
   deleted link's index to another link soon: indexes count up), so a stale index fails
   and attach looks it up again; a pair made meanwhile is reused as it is.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any

from portway.core import firewall, names
from portway.engine.drivers import Sandbox
from portway.errors import KernelError, PortwayError
from portway.kernel import links
from portway.model.types import Endpoint, IPAddress, IPInterface, IPNetwork, Network, Route

if TYPE_CHECKING:
    from pyroute2 import IPRoute


class BridgeDriver:
    name = "bridge"

    def __init__(self, host: IPRoute, tag: Any) -> None:
        self.host = host
        self.tag = tag  # (kind, id) -> owner tag
        self._indexes: dict[str, int] = {}  # bridge name -> ifindex

    def validate(self, network: Network) -> None:
        return None  # every option of a bridge network is checked by validate.py

    def ensure(self, network: Network) -> None:
        if firewall.unmanaged(network):
            # The user's bridge: it must be there; portway changes nothing of it.
            link = links.observe_link(self.host, network.bridge)
            if link is None or link.kind != "bridge":
                raise KernelError(f"in unmanaged mode, the bridge must already exist on "
                                  f"the host: {network.bridge} is "
                                  + ("missing" if link is None else
                                     f"a {link.kind or 'plain'} interface"),
                                  f"create the bridge {network.bridge} (ip link add "
                                  f"{network.bridge} type bridge) or use a managed network")
            return
        if network.of_version(6) is not None:
            # Routing IPv6 between networks and out, as Docker does for --ipv6 networks
            # (a host that takes its own IPv6 route from router advertisements keeps it
            # only on interfaces with accept_ra=2: see docs/ipv6.md).
            links.ensure_sysctl("net.ipv6.conf.all.forwarding", "1")
        links.ensure_bridge(self.host, network.bridge, names.bridge_mac(network.id),
                            network.mtu, gateways(network), self.tag("network", network.id))

    def delete(self, network: Network) -> None:
        if not firewall.unmanaged(network):  # never the user's bridge
            links.delete_link(self.host, network.bridge)
        self._indexes.pop(network.bridge, None)

    def _bridge_index(self, network: Network) -> int:
        """The bridge's ifindex, looked up (the bridge made if missing) and remembered."""
        bridge = links.observe_link(self.host, network.bridge)
        if bridge is None:
            self.ensure(network)
            bridge = links.observe_link(self.host, network.bridge)
            assert bridge is not None
        self._indexes[network.bridge] = bridge.index
        return bridge.index

    def prepare(self, sandbox: Sandbox, endpoint_id: str, host_ifname: str, ifname: str,
                network: Network) -> tuple[int, int]:
        """attach's first half, for a set-up that knows the endpoint's id and names before
        its addresses: the veth pair made, its host end tagged, on the bridge and up (its
        container end down: nothing passes). The pair's ifindexes, for attach
        (prepared); on a failure nothing of it is left."""
        fd = os.open(sandbox.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            cached = self._indexes.get(network.bridge)
            bridge_index = cached or self._bridge_index(network)
            while True:
                try:
                    return links.make_pair(self.host, sandbox.ipr, fd, links.EndpointSpec(
                        host_ifname=host_ifname, ifname=ifname, mac="", mtu=network.mtu,
                        addresses=(), gateways=(), bridge_index=bridge_index,
                        tag=self.tag("endpoint", endpoint_id)))
                except PortwayError:
                    if cached is not None and self._bridge_index(network) != cached:
                        cached, bridge_index = None, self._indexes[network.bridge]
                        continue
                    links.delete_link(self.host, host_ifname)
                    raise
        finally:
            os.close(fd)

    def unprepare(self, host_ifname: str) -> None:
        """A pair prepare made, gone (missing counts as gone)."""
        links.delete_link(self.host, host_ifname)

    def attach(self, sandbox: Sandbox, endpoint: Endpoint, network: Network,
               default_route: bool, hairpin: bool, metric: int | None = None,
               routes: tuple[Route, ...] = (),
               prepared: tuple[int, int] | None = None) -> None:
        """endpoint into the sandbox; prepared: the ifindexes of its pair, which prepare
        made (only the second half is left)."""
        if prepared is not None:
            try:
                links.finish_pair(self.host, sandbox.ipr, *prepared, links.EndpointSpec(
                    host_ifname=endpoint.host_ifname, ifname=endpoint.ifname,
                    mac=endpoint.mac, mtu=network.mtu, addresses=endpoint.addresses,
                    gateways=default_gateways(network, endpoint) if default_route else (),
                    bridge_index=0, tag=self.tag("endpoint", endpoint.id),
                    hairpin=hairpin, metric=metric, routes=routes,
                    onlink=onlink_subnets(network, endpoint)), mac=True)
            except PortwayError:
                links.delete_link(self.host, endpoint.host_ifname)
                raise
            return
        fd = os.open(sandbox.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            cached = self._indexes.get(network.bridge)
            bridge_index = cached or self._bridge_index(network)
            while True:
                try:
                    links.ensure_endpoint(self.host, sandbox.ipr, fd, links.EndpointSpec(
                        host_ifname=endpoint.host_ifname, ifname=endpoint.ifname,
                        mac=endpoint.mac, mtu=network.mtu, addresses=endpoint.addresses,
                        gateways=default_gateways(network, endpoint) if default_route else (),
                        bridge_index=bridge_index, tag=self.tag("endpoint", endpoint.id),
                        hairpin=hairpin, metric=metric, routes=routes,
                        onlink=onlink_subnets(network, endpoint)))
                    return
                except PortwayError:
                    if cached is not None and self._bridge_index(network) != cached:
                        # The bridge was made again since its index was remembered.
                        cached, bridge_index = None, self._indexes[network.bridge]
                        continue
                    links.delete_link(self.host, endpoint.host_ifname)
                    raise
        finally:
            os.close(fd)

    def detach(self, endpoint: Endpoint) -> None:
        links.delete_link(self.host, endpoint.host_ifname)

    def forget_mac(self, endpoint: Endpoint) -> None:
        """The bridge's learned entry of endpoint's MAC on its port gone (the container
        behind the port has another MAC now)."""
        links.forget_learned(self.host, endpoint.host_ifname, endpoint.mac)

    def observe(self, network: Network) -> list[str]:
        """The repairs the bridge needs, as gc reports them (ensure makes each)."""
        if firewall.unmanaged(network):
            return []  # the user's bridge, as the user keeps it
        link = links.observe_link(self.host, network.bridge)
        if link is None:
            return [f"re-create bridge {network.bridge} of network {network.name}: it is "
                    "missing"]
        addrs: set[IPAddress] = {a.ip for a in links.observe_addresses(self.host, link.index)}
        if network.of_version(6):
            addrs |= {a.ip for a in links.observe_addresses6(self.host, link.index)}
        want = [g.ip for g in gateways(network)]
        if any(g not in addrs for g in want) or not link.up or link.mtu != network.mtu:
            return [f"restore bridge {network.bridge} of network {network.name} (gateway "
                    f"{', '.join(map(str, want))}, up, mtu {network.mtu})"]
        return []


def gateways(network: Network) -> list[IPInterface]:
    """The bridge's addresses: each subnet's gateway, with the subnet's prefix length."""
    return [ipaddress.ip_interface((s.gateway, s.subnet.prefixlen)) for s in network.subnets]


def endpoint_families(network: Network, endpoint: Endpoint) -> set[int]:
    """The families the endpoint is routed in on network: those of its addresses (a
    container whose --sysctl turns IPv6 off has no IPv6 one on a dual-stack network,
    and its interface takes no IPv6 route), or, given none (its addresses come from
    elsewhere), all of the network's."""
    return {a.version for a in endpoint.addresses} or {s.version for s in network.subnets}


def default_gateways(network: Network, endpoint: Endpoint) -> tuple[IPAddress, ...]:
    """The gateways of a container's default routes: the first subnet's of each family
    the endpoint has (as netavark routes a container of a network with several)."""
    families = endpoint_families(network, endpoint)
    first: dict[int, IPAddress] = {}
    for s in network.subnets:
        if s.version in families:
            first.setdefault(s.version, s.gateway)
    return tuple(first.values())


def onlink_subnets(network: Network, endpoint: Endpoint) -> tuple[IPNetwork, ...]:
    """The network's subnets of the endpoint's families that it has no address in:
    reached straight out of its interface, as they share the bridge (Docker adds no
    route there, and a container then reaches its neighbours in another subnet only
    through the gateway, if at all)."""
    if len(network.subnets) < 2:
        return ()
    have = {a.network for a in endpoint.addresses}
    families = endpoint_families(network, endpoint)
    return tuple(s.subnet for s in network.subnets
                 if s.subnet not in have and s.version in families)
