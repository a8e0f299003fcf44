"""The macvlan driver: no segment of its own on the host; each endpoint is a macvlan
device of the network's parent interface, in the container's namespace.

Rules of this module:
1. A network owns nothing in the host namespace: ensure and delete leave the parent
   as it is (it is the user's); gc has nothing to repair there.
2. An endpoint's device lives in the container's namespace, which has no host end to
   pull it out by: detach opens that namespace (netns_of) and removes the device of
   that endpoint (its owner tag) if it is there; a namespace that is gone took it along.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portway.core import macvlan
from portway.engine.drivers import Sandbox
from portway.engine.drivers.bridge import default_gateways, onlink_subnets
from portway.errors import InvalidInput
from portway.kernel import macvlan as kernel
from portway.model.types import Endpoint, Network, Route

if TYPE_CHECKING:
    from pyroute2 import IPRoute


class MacvlanDriver:
    name = macvlan.DRIVER

    def __init__(self, host: IPRoute, tag: Any,
                 netns_of: Callable[[Endpoint], str | None]) -> None:
        self.host = host
        self.tag = tag  # (kind, id) -> owner tag
        self.netns_of = netns_of  # the namespace an endpoint's container has (None: none)

    def validate(self, network: Network) -> None:
        """The parent must be on the host (Docker's check and wording)."""
        parent = macvlan.parent(network)
        if kernel.parent_index(self.host, parent) is None:
            if not parent:
                raise InvalidInput("failed to get default route interface",
                                   "give the network a parent interface")
            raise InvalidInput(f"-o parent interface was not found on the host: {parent}",
                               "give the name of a host interface on the LAN (ip link "
                               "shows them)")

    def ensure(self, network: Network) -> None:
        return None  # nothing of the host's is made or changed

    def delete(self, network: Network) -> None:
        return None

    def attach(self, sandbox: Sandbox, endpoint: Endpoint, network: Network,
               default_route: bool, hairpin: bool, metric: int | None = None,
               routes: tuple[Route, ...] = ()) -> None:
        fd = os.open(sandbox.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kernel.ensure_macvlan(self.host, sandbox.ipr, fd, sandbox.path,
                                  kernel.MacvlanSpec(
                parent=macvlan.parent(network), tmp_name=endpoint.host_ifname,
                ifname=endpoint.ifname, mode=macvlan.mode(network), mac=endpoint.mac,
                mtu=network.mtu, addresses=endpoint.addresses,
                gateways=default_gateways(network, endpoint) if default_route else (),
                metric=metric, routes=routes, onlink=onlink_subnets(network, endpoint),
                tag=self.tag("endpoint", endpoint.id)))
        finally:
            os.close(fd)

    def detach(self, endpoint: Endpoint) -> None:
        path = self.netns_of(endpoint)
        if path:
            kernel.delete_macvlan(path, endpoint.ifname, self.tag("endpoint", endpoint.id))

    def observe(self, network: Network) -> list[str]:
        return []
