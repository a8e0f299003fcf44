"""Endpoints: a container's attachments to networks. Addresses (IPAM) and the driver
calls that plug a sandbox into a network and take it out.

Rules of this module:
1. An address is reserved by the store's UNIQUE(network, address) inside the caller's
   transaction: a rollback frees it. A per-network hint (a lower bound of the lowest
   free address) makes allocation ask the store about one address, not all of them;
   any release lowers it, a rolled-back allocation clears it (clear_hints).
2. A port without anti-spoofing entries sends nothing: the entries may go in before or
   after the driver's attach; on a failed attach both are undone here, unless the
   caller added the entries itself (guarded) and undoes them.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from portway.core import ipam, names, validate
from portway.engine.drivers import Sandbox
from portway.errors import Conflict, PortwayError
from portway.model.types import Container, Endpoint, Network

if TYPE_CHECKING:
    from portway.engine.context import Host


class Endpoints:
    def __init__(self, host: Host) -> None:
        self.h = host
        self._hint: dict[str, int] = {}  # network id -> lowest address that may be free

    def new(self, container: Container, net: Network, index: int, ip: str | None,
            aliases: list[str], ifname: str | None = None,
            mac: str | None = None) -> Endpoint:
        """An endpoint of container on net, its address reserved in the store (in the
        caller's transaction)."""
        store = self.h.store
        if ip is not None:
            address = validate.check_host_address(
                "--ip", validate.parse_address("--ip", ip), net.subnet)
            if address == net.gateway:
                raise Conflict(f"--ip {address} is the gateway of network {net.name}",
                               "pick another address")
            if store.address_in_use(net.id, address):
                holder = next(e for e in store.endpoints(network_id=net.id)
                              if e.address == address)
                other = store.find_container(holder.container_id)
                raise Conflict(f"address {address} is already in use on network {net.name}"
                               + (f" by {other.name}" if other else ""),
                               "pick another --ip, or omit it")
        else:
            address = ipam.first_free(net.subnet, net.gateway,
                                      lambda a: store.address_in_use(net.id, a),
                                      net.ip_range, self._hint.get(net.id, 0))
            self._hint[net.id] = int(address) + 1
        eid = names.new_id()
        endpoint = Endpoint(
            id=eid, container_id=container.id, network_id=net.id,
            ifname=ifname or names.container_ifname(index),
            host_ifname=names.host_veth_name(eid),
            addresses=(ipaddress.ip_interface((address, net.subnet.prefixlen)),),
            mac=mac or names.mac_for(address),
            aliases=tuple(aliases))
        store.add_endpoint(endpoint)
        return endpoint

    def clear_hints(self) -> None:
        """After a rollback: what was allocated is free again."""
        self._hint.clear()

    def released(self, endpoints: list[Endpoint]) -> None:
        for e in endpoints:
            hint = self._hint.get(e.network_id)
            if hint is not None and int(e.address) < hint:
                self._hint[e.network_id] = int(e.address)

    def attach(self, sandbox: Sandbox, container: Container, endpoint: Endpoint,
               net: Network, default_route: bool, guarded: bool = False) -> None:
        """One endpoint into the container's sandbox; guarded: its anti-spoofing entries
        are being added by the caller."""
        if not guarded:
            self.h.fw.add_guard([endpoint])
        try:
            self.h.driver(net).attach(sandbox, endpoint, net, default_route,
                                      hairpin=bool(container.ports))
        except PortwayError as exc:
            if not guarded:
                self.h.fw.remove_guard([endpoint])
            raise exc.wrap(f"attach {container.name} to {net.name}") from None

    def detach(self, endpoints: list[Endpoint]) -> None:
        """The endpoints' interfaces and their anti-spoofing entries; missing counts as
        removed."""
        self.h.fw.remove_guard(endpoints)
        for e in endpoints:
            net = self.h.store.find_network(e.network_id)
            # A network row gone meanwhile (a half-removed state): the bridge driver's
            # detach needs only the endpoint.
            (self.h.driver(net) if net is not None else self.h.drivers["bridge"]).detach(e)

    def reroute(self, c: Container, remaining: list[Endpoint]) -> None:
        """After a detach, give the container a default route again if it lost it."""
        kernel = self.h.sandbox_kernel
        if not kernel.exists(c.netns):
            return
        with kernel.open(c.netns) as sandbox:
            if kernel.has_default_route(sandbox):
                return
            for e in remaining:
                net = self.h.network(e.network_id)
                if not net.internal:
                    kernel.set_default_route(sandbox, e.ifname, net.gateway)
                    return
