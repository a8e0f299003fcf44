"""Address management: default subnet pools, subnet picking, address allocation.

Pure functions over what is taken; the store enforces uniqueness (a UNIQUE
constraint per network and address) so concurrent allocations cannot collide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator

from portway.errors import Conflict
from portway.model.types import IPAddress, IPNetwork

# Docker's default address pools: 172.17-31.0.0/16 as /16s, then 192.168.0.0/16 as /20s.
DEFAULT_POOLS: tuple[tuple[str, int], ...] = tuple(
    [(f"172.{n}.0.0/16", 16) for n in range(17, 32)] + [("192.168.0.0/16", 20)]
)


# Docker's default pool of global-scope (overlay) networks: 10.0.0.0/8 as /24s. Apart
# from the local pools on purpose: another host's own bridge networks come from those,
# and an overlay network must fit on every host of the cluster, not only this one.
OVERLAY_POOLS: tuple[tuple[str, int], ...] = (("10.0.0.0/8", 24),)


def pool_candidates(pools: Iterable[tuple[str, int]] = DEFAULT_POOLS) -> Iterator[IPNetwork]:
    for base, size in pools:
        yield from ipaddress.ip_network(base).subnets(new_prefix=size)


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def find_overlap(subnet: IPNetwork, taken: Iterable[tuple[IPNetwork, str]]) -> str | None:
    """The description of the first taken range that overlaps subnet, or None."""
    for other, what in taken:
        if overlaps(subnet, other):
            return what
    return None


def check_subnet_free(subnet: IPNetwork, taken: Iterable[tuple[IPNetwork, str]]) -> None:
    holder = find_overlap(subnet, taken)
    if holder is not None:
        raise Conflict(f"subnet {subnet} overlaps {holder}",
                       "pick another --subnet, or omit it to get a free one")


def pick_subnet(taken: list[tuple[IPNetwork, str]],
                pools: Iterable[tuple[str, int]] = DEFAULT_POOLS) -> IPNetwork:
    """The first pool block that overlaps nothing taken (networks, host routes)."""
    for candidate in pool_candidates(pools):
        if find_overlap(candidate, taken) is None:
            return candidate
    named = "172.17-31.0.0/16, 192.168.0.0/16" if tuple(pools) == DEFAULT_POOLS else \
        ", ".join(base for base, _ in pools)
    raise Conflict(f"no free subnet is left in the default pools ({named})",
                   "remove unused networks with 'portway network prune' or give --subnet")


# Docker's default network (docker0) has the first block of the pools, made when the
# daemon starts, so user networks begin at the second. portway makes its default
# network on first use: until then a user network leaves that block to it, and takes
# it only when nothing else is free.
DEFAULT_NETWORK_SUBNET = ipaddress.ip_network("172.17.0.0/16")


def pick_user_subnet(taken: list[tuple[IPNetwork, str]]) -> IPNetwork:
    """A free block of the default pools for a user network while the default network
    is not made yet: any but the default network's own, unless that is the only one."""
    try:
        return pick_subnet([*taken, (DEFAULT_NETWORK_SUBNET, "the default network")])
    except Conflict:
        return pick_subnet(taken)


def ula_prefix(global_id: int) -> ipaddress.IPv6Network:
    """An installation's unique local /48 (RFC 4193): fd00::/8 and a 40-bit global id
    chosen at random once per installation, as Docker 27 does for --ipv6 networks."""
    if not 0 <= global_id < 1 << 40:
        raise ValueError("a ULA global id has 40 bits")
    return ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 48))


def pick_subnet6(taken: list[tuple[IPNetwork, str]], global_id: int) -> IPNetwork:
    """The first /64 of the installation's ULA /48 that overlaps nothing taken."""
    prefix = ula_prefix(global_id)
    for candidate in prefix.subnets(new_prefix=64):
        if find_overlap(candidate, taken) is None:
            return candidate
    raise Conflict(f"no free /64 is left in {prefix}",
                   "remove unused networks with 'portway network prune' or give an IPv6 "
                   "--subnet")


def default_gateway(subnet: IPNetwork) -> IPAddress:
    return subnet.network_address + 1


def allocate_address(subnet: IPNetwork, gateway: IPAddress, used: set[IPAddress],
                     ip_range: IPNetwork | None = None) -> IPAddress:
    """The lowest free host address in ip_range (or the subnet), skipping the gateway."""
    return first_free(subnet, gateway, lambda a: a in used, ip_range)


def first_free(subnet: IPNetwork, gateway: IPAddress, is_used: Callable[[IPAddress], bool],
               ip_range: IPNetwork | None = None, start: int = 0) -> IPAddress:
    """The lowest free host address at or above `start` (an integer lower bound, for
    callers that know every address below it is taken). is_used answers for one
    address, so a caller can ask an index instead of loading every address in use."""
    space = ip_range if ip_range is not None else subnet
    reserved = {int(subnet.network_address), int(subnet.broadcast_address), int(gateway)}
    make = type(space.network_address)
    for value in range(max(int(space.network_address), start),
                       int(space.broadcast_address) + 1):
        if value not in reserved and not is_used(make(value)):
            return make(value)
    raise Conflict(f"no free address is left in {space}",
                   "remove containers from the network, or create a larger one")
