"""The overlay driver: on each host, the network's segment is a local bridge (holding the
gateway, as a bridge network's) with the network's VXLAN device as one of its ports;
containers plug into the bridge as on a bridge network.

Rules of this module:
1. The VNI and the VTEP address come from the cluster (the network's options and this
   host's --advertise-address); the forwarding entries of the VXLAN device are the
   cluster service's (engine/cluster.py), programmed from the store, never learned.
2. Without a cluster store, no overlay network can be made (validate says how to join
   one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portway.core import overlay
from portway.core.overlay import NO_CLUSTER
from portway.engine.drivers.bridge import BridgeDriver
from portway.errors import InvalidInput
from portway.kernel import links, vxlan
from portway.model.types import IPAddress, Network

if TYPE_CHECKING:
    from pyroute2 import IPRoute



class OverlayDriver(BridgeDriver):
    name = "overlay"

    def __init__(self, host: IPRoute, tag: Any,
                 local: Callable[[], IPAddress | None]) -> None:
        super().__init__(host, tag)
        self.local = local  # this host's VTEP address (None: no cluster)

    def _local(self) -> IPAddress:
        address = self.local()
        if address is None:
            raise InvalidInput(*NO_CLUSTER)
        return address

    def validate(self, network: Network) -> None:
        self._local()
        if overlay.VNI_OPTION not in network.options:
            raise InvalidInput(f"overlay network {network.name} has no VNI",
                               "create it again on a host of the cluster")

    def ensure(self, network: Network) -> None:
        super().ensure(network)
        self.vxlan_index(network)

    def vxlan_index(self, network: Network) -> int:
        return vxlan.ensure_vxlan(self.host, overlay.vxlan_name(network.id),
                                  overlay.network_vni(network), self._local(), network.mtu,
                                  network.bridge, self.tag("network", network.id))

    def delete(self, network: Network) -> None:
        links.delete_link(self.host, overlay.vxlan_name(network.id))
        super().delete(network)

    def observe(self, network: Network) -> list[str]:
        repairs = super().observe(network)
        link = links.observe_link(self.host, overlay.vxlan_name(network.id))
        if link is None or not link.up:
            repairs.append(f"re-create VXLAN device {overlay.vxlan_name(network.id)} of "
                           f"network {network.name}: it is "
                           + ("missing" if link is None else "down"))
        return repairs
