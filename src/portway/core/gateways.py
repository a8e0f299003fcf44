"""Which of a container's networks is its gateway for each address family: the one whose
gateway its default route of that family goes through, and so the one that takes the
family's published ports (Docker's "gateway endpoint", chosen per family since Docker
28; a reply then leaves by the interface its connection came in on). Pure: run, start,
connect, disconnect, doctor and gc all ask this one rule.

Rules of this module:
1. The networks are taken in the container's order (the order it joined them: run's
   --network flags, then each connect; a restart keeps it).
2. A network gives a default route unless it is internal, has no subnet, or is a Podman
   network with netavark's no_default_route.
3. Each family's default route goes via the first network that gives one and has that
   family: the first network routes its families, a later one each family no earlier
   one has. A network keeps the families it routes while later ones come and go. A
   Podman container is the exception: netavark gives it a default route from every
   network that gives one, each with its network's metric (one of a metric an earlier
   network's has is refused as the same route), so the kernel's (and so the one its
   replies leave by) is the lowest metric's, of equal ones the first's; the others
   take over as the networks before them go.
4. Each family's published ports go to the address of that family on the network that
   routes it; where no network routes the family (a Podman network with
   no_default_route), to the first network that is not internal and has it, as netavark
   forwards without a default route. A macvlan network publishes nothing (Docker's).
"""

from __future__ import annotations

from collections.abc import Sequence

from portway.core import netavark
from portway.core.firewall import netavark_option
from portway.core.macvlan import DEFAULT_METRIC as MACVLAN_METRIC
from portway.core.macvlan import DRIVER as MACVLAN
from portway.errors import PortwayError
from portway.model.types import Network


def gives_default_route(net: Network) -> bool:
    """Whether a container on net takes a default route from it (rule 2)."""
    return not net.internal and bool(net.subnets) and \
        netavark_option(net, "no_default_route") != "true"


# The metric the kernel gives an IPv6 route asked for with metric 0 (IP6_RT_PRIO_USER).
IPV6_ROUTE_METRIC = 1024


def metric(net: Network, version: int = 4) -> int:
    """The metric of a Podman container's default route of IP version via net, as the
    kernel keeps it: the network's metric option, else netavark's default for its
    driver; an IPv6 route of metric 0 takes the kernel's default (1024), so 0 is the
    lowest for IPv4 alone."""
    given = netavark_option(net, "metric")
    if given is not None:
        try:
            # (As setup read it: netavark's parse, which takes "+200" for 200.)
            value = netavark.parse_uint("metric", given)
        except PortwayError:
            value = None  # (setup refused it: no route was made with it)
        if value is not None:
            return IPV6_ROUTE_METRIC if value == 0 and version == 6 else value
    return MACVLAN_METRIC if net.driver == MACVLAN else netavark.DEFAULT_METRIC


def default_routes(networks: Sequence[Network], podman: bool = False
                   ) -> dict[int, dict[int, int]]:
    """{IP version: {metric: the index in networks of the one whose default route of that
    family has it}} (rule 3): a portway container's, one per family (metric 0 here: the
    kernel's default); podman: a Podman container's, one per network that gives one,
    with its metric."""
    out: dict[int, dict[int, int]] = {}
    for i, net in enumerate(networks):
        if gives_default_route(net):
            for s in net.subnets:
                rank = metric(net, s.version) if podman else 0
                out.setdefault(s.version, {}).setdefault(rank, i)
    return out


def route_owners(networks: Sequence[Network], podman: bool = False) -> dict[int, int]:
    """{IP version: the index in networks of the one its default route goes via}
    (rule 3); podman: a Podman container's (the lowest metric's)."""
    return {v: routes[min(routes)] for v, routes in default_routes(networks, podman).items()}


def port_owners(networks: Sequence[Network], podman: bool = False) -> dict[int, int]:
    """{IP version: the index in networks of the one whose address of that family takes
    the published ports} (rule 4); podman: a Podman container's (rule 3)."""
    out = route_owners(networks, podman)
    for i, net in enumerate(networks):
        if not net.internal:
            for s in net.subnets:
                out.setdefault(s.version, i)
    return {v: i for v, i in out.items() if networks[i].driver != MACVLAN}
