"""The host context every engine service shares.

Rules of this module:
1. One Host per host namespace and state dir: where state lives, the installation's
   owner tag, the store, the lock, and the seams to the kernel (a network driver per
   driver name, the firewall, the sandbox and process kernels, the held ports, the
   DNS server). Services reach the kernel only through these seams, so unit tests can
   put fakes in their place (tests/unit/fakes.py) and check the orchestration alone.
2. Every operation that changes something holds `lock`; the store writes of one
   operation happen in one transaction that commits only after the kernel work
   succeeded, so a crash in between leaves no rows, and the kernel objects it may have
   left carry the owner tag for `gc` to remove.
3. Lookups that users name (`network(ref)`, `container(ref)`) raise NotFound with the
   command that lists what there is.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from portway.core import confine, names
from portway.errors import InvalidInput, NotFound
from portway.model.types import Container, Endpoint, IPAddress, IPNetwork, Network
from portway.store import Store

if TYPE_CHECKING:
    from portway.engine.cluster import Cluster
    from portway.engine.containers import Containers
    from portway.engine.dns import Announced
    from portway.engine.drivers import NetworkDriver
    from portway.engine.endpoints import Endpoints
    from portway.engine.lifecycle import Lifecycle
    from portway.engine.networks import Networks
    from portway.engine.ports import Publishing
    from portway.engine.processes import Processes, ProcessKernel
    from portway.engine.sandboxes import Sandboxes, SandboxKernel


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fault_point(step: str) -> None:
    """Test-only crash injection: PORTWAY_FAULT=STEP kills the engine at that step."""
    if os.environ.get("PORTWAY_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


class Firewall(Protocol):
    """The firewall service (engine/fw.py) as the other services use it."""

    def add_network(self, network: Network) -> None: ...
    def remove_network(self, network: Network) -> None: ...
    def add_ports(self, ports: Any) -> None: ...
    def remove_ports(self, ports: Any) -> None: ...
    def add_guard(self, endpoints: Any) -> None: ...
    def remove_guard(self, endpoints: Any) -> None: ...
    def forget_connections(self, addresses: list[IPAddress]) -> None: ...
    def set_members(self, addresses: Iterable[IPAddress]) -> None: ...
    def apply(self, cmds: list[dict[str, Any]]) -> None: ...
    def teardown(self, cmds: list[dict[str, Any]]) -> None: ...
    def release(self) -> bool: ...
    def missing_tables(self) -> list[str]: ...
    def close(self) -> None: ...


class HeldPorts(Protocol):
    """The bound sockets of published host ports (engine/ports.py)."""

    def holds(self, p: Any) -> bool: ...
    def reserve(self, p: Any) -> None: ...
    def release(self, p: Any) -> None: ...
    def close(self) -> None: ...


class HostFacts(Protocol):
    """What the host namespace has that portway did not make: addresses and routes (so
    a subnet picked does not overlap them), sockets, the ephemeral port range."""

    def taken_ranges(self, own_bridges: set[str]) -> list[tuple[IPNetwork, str]]: ...
    def portway_addresses(self) -> set[IPAddress]: ...
    def link_exists(self, name: str) -> bool: ...
    def default_route_mtu(self) -> int | None: ...
    def link_kind_mtu(self, name: str) -> tuple[str, int] | None: ...
    def link_addresses(self, name: str) -> list[IPAddress]: ...
    def listening(self, protocol: str) -> list[tuple[str, int]]: ...
    def ephemeral_range(self) -> tuple[int, int]: ...


class DnsPublisher(Protocol):
    def publish(self) -> None: ...
    def update(self, container_id: str) -> None: ...
    def announce(self, c: Container, endpoints: list[Endpoint]) -> Announced: ...
    def settle(self, announced: Announced) -> None: ...
    def withdraw(self, announced: Announced) -> None: ...
    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def request(self, command: str) -> dict[str, Any]: ...


@dataclass
class Host:
    state_dir: str
    host_netns: str | None
    instance: str
    store: Store
    drivers: dict[str, NetworkDriver]
    fw: Firewall
    sandbox_kernel: SandboxKernel
    process_kernel: ProcessKernel
    ports: HeldPorts
    facts: HostFacts
    tools: confine.Tools = field(default_factory=confine.Tools)
    lock: threading.RLock = field(default_factory=threading.RLock)
    closed: bool = False
    dns: DnsPublisher | None = None
    # The overlay networks' cluster (engine/cluster.py); None: this host is in none.
    cluster: Cluster | None = None
    # The services, set by whoever builds the Host (engine/__init__.py, or a test).
    networks: Networks = field(init=False)
    endpoints: Endpoints = field(init=False)
    publishing: Publishing = field(init=False)
    sandboxes: Sandboxes = field(init=False)
    processes: Processes = field(init=False)
    containers: Containers = field(init=False)
    lifecycle: Lifecycle = field(init=False)

    def tag(self, kind: str, object_id: str) -> str:
        return names.owner_tag(self.instance, kind, object_id)

    def driver(self, network: Network) -> NetworkDriver:
        try:
            return self.drivers[network.driver]
        except KeyError:
            raise InvalidInput(f"unsupported network driver {network.driver!r}",
                               f"use one of: {', '.join(sorted(self.drivers))}") from None

    def host_netns_path(self) -> str:
        if self.host_netns:
            return f"/run/netns/{self.host_netns}"
        return "/proc/1/ns/net"

    def host_resolv_path(self) -> str:
        """The host namespace's resolv.conf, as `ip netns exec` would pick it."""
        if self.host_netns:
            own = f"/etc/netns/{self.host_netns}/resolv.conf"
            if os.path.exists(own):
                return own
        return "/etc/resolv.conf"

    # lookups

    def network(self, ref: str) -> Network:
        net = self.store.find_network(ref)
        if net is None:
            why = self.cluster.not_made.get(ref) if self.cluster is not None else None
            if why is not None:
                raise NotFound(f"overlay network {ref!r} is not made on this host", why)
            raise NotFound(f"network {ref!r} not found",
                           "list networks with 'portway network ls'")
        return net

    def container(self, ref: str) -> Container:
        c = self.store.find_container(ref)
        if c is None:
            raise NotFound(f"container {ref!r} not found", "list containers with 'portway ps -a'")
        return self.refresh(c)

    def own(self, ref: str) -> Container:
        """A container portway runs (not one Podman runs and portway only networks)."""
        c = self.container(ref)
        if c.runtime != "portway":
            raise InvalidInput(f"container {c.name} is run by {c.runtime.capitalize()}; "
                               "portway only networks it",
                               f"manage it with {c.runtime} (e.g. {c.runtime} rm {c.name})")
        return c

    def refresh(self, c: Container) -> Container:
        """The container with its status brought up to date with its process: one whose
        process is gone is recorded as exited (and its networking released) at once if
        nothing watches it; the watcher reports the others' ends itself, with what it
        knows of their status."""
        if c.runtime == "portway" and c.status == "running" and c.pid and \
                not self.process_kernel.is_alive(c.pid, c.pid_start) and \
                not self.process_kernel.watching(c.pid):
            with self.lock:
                current = self.store.find_container(c.id)
                if current is not None and current.pid == c.pid and \
                        current.status == "running":
                    return self.lifecycle.ended_unwatched(current)
                return current or c
        return c
