"""Names of kernel objects, derived from ids so they are bounded and never collide.

Interface names fit IFNAMSIZ (15 bytes). Names in global places (/run/netns,
/etc/netns) come from container ids, never from the user's names, so two
host namespaces never collide. Owner tags (link aliases) name the portway
instance and the owning record, so cleanup selects by owner, not by pattern.
"""

from __future__ import annotations

import ipaddress
import secrets

from portway.model.types import IPAddress

IFNAMSIZ = 15
TAG_PREFIX = "portway"


def new_id() -> str:
    """A 64-hex id, like Docker's."""
    return secrets.token_hex(32)


def bridge_name(network_id: str) -> str:
    return f"pwbr-{network_id[:10]}"


def host_veth_name(endpoint_id: str) -> str:
    return f"pwv-{endpoint_id[:11]}"


# The host end of a veth on a network without addresses (a Podman network with ipam
# driver none): the container picks its own addresses, so the anti-spoofing checks,
# which look at pwv- ports only, have nothing to hold it to (netavark has none either).
UNCHECKED_VETH_PREFIX = "pwn-"


def unchecked_veth_name(endpoint_id: str) -> str:
    return f"{UNCHECKED_VETH_PREFIX}{endpoint_id[:11]}"


# A macvlan endpoint's device while it passes through the host namespace (it is made
# there, moved into the container's namespace at once and renamed there).
MACVLAN_PREFIX = "pwm-"


def macvlan_name(endpoint_id: str) -> str:
    return f"{MACVLAN_PREFIX}{endpoint_id[:11]}"


def mac_for_id(object_id: str) -> str:
    """A locally administered unicast MAC from a random id: for an endpoint without an
    address to derive one from."""
    return "02:" + ":".join(f"{b:02x}" for b in bytes.fromhex(object_id[:10]))


def netns_name(container_id: str) -> str:
    return f"pw-{container_id[:12]}"


def container_ifname(index: int) -> str:
    return f"eth{index}"


def owner_tag(instance: str, kind: str, object_id: str) -> str:
    """The alias portway puts on a link (or a namespace's lo) it owns."""
    return f"{TAG_PREFIX}:{instance}:{kind}:{object_id}"


def parse_owner_tag(alias: str | None) -> tuple[str, str, str] | None:
    """(instance, kind, id) from an owner tag, or None if the alias is not one."""
    if not alias:
        return None
    parts = alias.split(":")
    if len(parts) != 4 or parts[0] != TAG_PREFIX:
        return None
    return parts[1], parts[2], parts[3]


def mac_for(address: IPAddress) -> str:
    """A stable, locally administered MAC from the address (Docker's 02:42 scheme).

    Addresses are unique on a network, so MACs are unique on its bridge, and a
    reused address gets the same MAC, which keeps neighbours' ARP caches right.
    """
    tail = address.packed if isinstance(address, ipaddress.IPv4Address) else address.packed[-4:]
    return "02:42:" + ":".join(f"{b:02x}" for b in tail)


def bridge_mac(network_id: str) -> str:
    """A fixed MAC for a bridge, so it does not change as ports come and go."""
    raw = bytes.fromhex(network_id[:10])
    return "02:" + ":".join(f"{b:02x}" for b in raw)
