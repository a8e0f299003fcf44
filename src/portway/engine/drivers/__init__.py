"""Network drivers: what makes a network's L2 segment on this host, and plugs
containers into it.

Rule of this package: a driver owns the links of its networks (a bridge and the host
ends of veths, for `bridge`; the containers' macvlan devices, for `macvlan`), and
nothing else: addresses are allocated by the endpoints service, rules rendered by the
firewall, namespaces made by the sandboxes service. A new driver (overlay, macvlan) is
one new module here, registered in the Engine.
"""

from __future__ import annotations

from typing import Protocol

from portway.model.types import Endpoint, Network, Route


class Sandbox(Protocol):
    """A container's network namespace as a driver plugs into it: a netlink socket
    inside it (`ipr`) and its path."""

    path: str

    @property
    def ipr(self) -> object: ...


class NetworkDriver(Protocol):
    name: str

    def validate(self, network: Network) -> None:
        """Refuse (InvalidInput) what this driver cannot make, before anything is made."""

    def ensure(self, network: Network) -> None:
        """The network's segment on this host, made or repaired; idempotent."""

    def delete(self, network: Network) -> None:
        """The segment removed; a missing one counts as removed."""

    def attach(self, sandbox: Sandbox, endpoint: Endpoint, network: Network,
               default_route: bool, hairpin: bool, metric: int | None = None,
               routes: tuple[Route, ...] = ()) -> None:
        """endpoint's interface into the sandbox, on the segment, addressed (and with the
        default route via the network's gateway if asked, with metric if given; then
        the static routes); an existing one of its own is reused. On failure, nothing
        of it is left."""

    def detach(self, endpoint: Endpoint) -> None:
        """endpoint's interface removed (host end: the pair goes with it); missing
        counts as removed."""

    def observe(self, network: Network) -> list[str]:
        """The repairs the segment needs, each a line of gc's report (empty: none);
        ensure() makes them."""


class PreparingDriver(NetworkDriver, Protocol):
    """A driver whose attach comes in two halves: prepare (the interface made, on the
    segment, down: nothing passes) before the endpoint's addresses are known, then
    attach with what prepare answered. unprepare takes a prepared interface away."""

    def prepare(self, sandbox: Sandbox, endpoint_id: str, host_ifname: str, ifname: str,
                network: Network) -> tuple[int, int]: ...

    def unprepare(self, host_ifname: str) -> None: ...

    def attach(self, sandbox: Sandbox, endpoint: Endpoint, network: Network,
               default_route: bool, hairpin: bool, metric: int | None = None,
               routes: tuple[Route, ...] = (),
               prepared: tuple[int, int] | None = None) -> None: ...
