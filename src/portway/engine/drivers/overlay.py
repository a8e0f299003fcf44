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
from portway.core.overlay import NO_CLUSTER, Fdb, Neighbour
from portway.engine.drivers.bridge import BridgeDriver
from portway.errors import InvalidInput, KernelError
from portway.kernel import links, vxlan
from portway.model.types import IPAddress, Network

if TYPE_CHECKING:
    from pyroute2 import IPRoute

Forwarding = tuple[set[Fdb], set[Neighbour]]



class OverlayDriver(BridgeDriver):
    name = "overlay"

    def __init__(self, host: IPRoute, tag: Any,
                 local: Callable[[], IPAddress | None],
                 wanted: Callable[[Network], Forwarding | None] = lambda n: None,
                 requests: Callable[[], vxlan.Requests | None] = lambda: None) -> None:
        super().__init__(host, tag)
        self.requests = requests  # the cluster's batches of netlink requests, if any
        self.local = local  # this host's VTEP address (None: no cluster)
        # The FDB and neighbour entries the store says a network's VXLAN device needs
        # (None: the store has not been read yet, so nothing is known to be wrong).
        self.wanted = wanted

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
        index = self.vxlan_index(network)
        plan = self._plan(network, index)
        if plan is not None and not plan.empty():
            errors = vxlan.apply_forwarding(self.host, index, plan, self.requests())
            if errors:
                raise KernelError(f"program VXLAN device {overlay.vxlan_name(network.id)}: "
                                  + "; ".join(errors), "run 'portway gc' again")

    def _plan(self, network: Network, index: int) -> overlay.ForwardingPlan | None:
        want = self.wanted(network)
        if want is None:
            return None
        return overlay.plan_forwarding(want, vxlan.observe_forwarding(self.host, index,
                                                                     self.requests()))

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
        plan = self._plan(network, link.index)
        if plan is not None and not plan.empty():
            repairs.append(f"reprogram VXLAN device {link.ifname} of network {network.name} "
                           f"from the cluster store: add {len(plan.add_fdb)} FDB and "
                           f"{len(plan.add_neigh)} neighbour entries, remove "
                           f"{len(plan.del_fdb)} and {len(plan.del_neigh)}")
        return repairs
