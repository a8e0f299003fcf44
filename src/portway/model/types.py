"""The records portway keeps: networks, containers, endpoints, port mappings.

They are parsed once at the edge (CLI, API, store) into these frozen types,
which hold ipaddress objects, never strings, so address families stay in the
types rather than in string formats.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Protocol = Literal["tcp", "udp", "sctp"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "sctp")
# "container": the network namespace of another container (--network container:NAME)
NetworkMode = Literal["bridge", "host", "none", "container"]
RouteType = Literal["unicast", "blackhole", "unreachable", "prohibit"]


@dataclass(frozen=True)
class Subnet:
    """One subnet of a network: its gateway (on the network's bridge), and the range
    containers' addresses come from (None: the whole subnet)."""

    subnet: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork | None = None
    # Docker's auxiliary addresses: names for addresses IPAM never hands out.
    aux_addresses: tuple[tuple[str, IPAddress], ...] = ()

    @property
    def version(self) -> int:
        return self.subnet.version


@dataclass(frozen=True)
class Network:
    """A network: any number of subnets of either family or both (IPv4 first where
    there is one; each family's in the order given, the first its default gateway's)."""

    id: str
    name: str
    subnets: tuple[Subnet, ...]
    bridge: str
    driver: str = "bridge"
    internal: bool = False
    mtu: int = 1500
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def primary(self) -> Subnet:
        """The first subnet (the first IPv4 one, where there is one)."""
        return self.subnets[0]

    @property
    def subnet(self) -> IPNetwork:
        return self.primary.subnet

    @property
    def gateway(self) -> IPAddress:
        return self.primary.gateway

    @property
    def ip_range(self) -> IPNetwork | None:
        return self.primary.ip_range

    def of_version(self, version: int) -> Subnet | None:
        return next((s for s in self.subnets if s.version == version), None)


@dataclass(frozen=True)
class Route:
    """A static route a network gives its containers (netavark's `routes`): via a
    gateway (unicast), or one that discards (blackhole, unreachable, prohibit)."""

    destination: IPNetwork
    gateway: IPAddress | None = None
    metric: int | None = None
    type: RouteType = "unicast"


@dataclass(frozen=True)
class PortMapping:
    """One published port: host_ip:host_port -> container_port, one protocol.

    A range on the command line becomes one PortMapping per port.
    host_ip None means every host address. Before a host port is chosen, host_port 0
    means any free one, and host_port_end a range of host ports (`-p 8000-8010:80`) to
    take the first free one of; a chosen mapping has host_port_end 0.
    """

    container_port: int
    host_port: int
    protocol: Protocol = "tcp"
    host_ip: IPAddress | None = None
    host_port_end: int = 0


@dataclass(frozen=True)
class Endpoint:
    """One container's attachment to one network: a veth pair and its addresses, each
    with its subnet's prefix length (IPv4 first where there is one): one per family of
    the network (Docker's), or on a Podman network one per subnet (netavark's)."""

    id: str
    container_id: str
    network_id: str
    ifname: str
    host_ifname: str
    addresses: tuple[IPInterface, ...]
    mac: str
    aliases: tuple[str, ...] = ()
    # The addresses the user asked for (--ip, --ip6), at most one per family: inspect's
    # IPAMConfig.
    requested: tuple[IPAddress, ...] = ()

    @property
    def address(self) -> IPAddress:
        """The first address (the IPv4 one, where there is one)."""
        return self.addresses[0].ip

    @property
    def prefixlen(self) -> int:
        return self.addresses[0].network.prefixlen


@dataclass(frozen=True)
class RunConfig:
    """What `run` was asked for beyond networking and privileges, as given (each checked
    by core/runopts.py): the command's environment, directory and terminal, the extras
    of its /etc files and kernel settings, its labels and exposed ports."""

    env: tuple[str, ...] = ()  # KEY=VALUE, later ones win
    workdir: str = "/"
    tty: bool = False
    interactive: bool = False  # -i: stdin kept open
    labels: tuple[tuple[str, str], ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, address or "host-gateway")
    dns_search: tuple[str, ...] | None = None  # None: the host's; (): none at all
    dns_options: tuple[str, ...] | None = None  # None: the host's
    domainname: str = ""
    sysctls: tuple[tuple[str, str], ...] = ()
    expose: tuple[tuple[int, Protocol], ...] = ()
    publish_all: bool = False
    network_of: str = ""  # --network container:NAME: that container's id


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    hostname: str
    command: tuple[str, ...]
    netns: str
    network_mode: NetworkMode = "bridge"
    status: Literal["created", "running", "restarting", "exited"] = "created"
    pid: int = 0
    pid_start: int = 0
    exit_code: int | None = None
    auto_remove: bool = False
    detach: bool = False
    ports: tuple[PortMapping, ...] = ()
    dns: tuple[str, ...] = ()
    created: str = ""
    started: str = ""
    finished: str = ""
    # "portway", or "podman": its namespace and processes belong to Podman, which
    # calls portway (as netavark) only to network them
    runtime: str = "portway"
    # What its processes may do (core/confine.py): as given on the command line.
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    user: str = ""
    config: RunConfig = field(default_factory=RunConfig)
    # Its restart policy (core/lifecycle.py), how many restarts it made, and whether the
    # user stopped or killed it (which cancels the policy until the next start).
    restart_policy: str = "no"
    restart_max: int = 0
    restart_count: int = 0
    user_stopped: bool = False
    # Docker's State.Error: why it could not start, or why its exit code is unknown.
    error: str = ""
    # Its networking is up: its namespace, endpoints, published ports and names exist
    # (it runs, or a foreground run is about to). A stopped container has none of them.
    networked: bool = True

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class EndpointConfig:
    """What a container asks of one of its networks (Docker's EndpointSettings): kept
    while it is stopped, so `start` attaches it again. The addresses it asked for (--ip,
    --ip6) stay reserved for it; other addresses are given anew at each start.
    position orders its networks: the first gets eth0 at run and start, and each
    family's default route and published ports go through the first network that has
    the family and gives a default route (core/gateways.py)."""

    container_id: str
    network_id: str
    network_name: str
    position: int
    aliases: tuple[str, ...] = ()
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    mac: str | None = None

    @property
    def ips(self) -> list[str]:
        return [str(a) for a in (self.ipv4, self.ipv6) if a is not None]
