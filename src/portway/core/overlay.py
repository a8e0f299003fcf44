"""Overlay networks, the pure part: the cluster store's URL, its key layout and record
formats, VNI picking, the VXLAN device's name and MTU, and the plan that brings a
host's forwarding entries (FDB and neighbour) in step with the store.

Rules of this module:
1. Every key portway keeps in etcd is made here, under one prefix (/portway/), and
   every record read from etcd is parsed here into typed values; bad records are
   skipped by the caller, never half-applied.
2. Nothing here talks to etcd or the kernel: the cluster service (engine/cluster.py)
   reads and writes, the kernel applies what plan_forwarding returns.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from portway.errors import Conflict, InvalidInput
from portway.model.types import IPAddress, IPInterface, Network, Subnet

PREFIX = "/portway/"
RACES = 8  # a set-up that loses its addresses to other hosts' is tried again so often
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN6_OVERHEAD = 70  # the same over IPv6 VTEPs: an IPv6 header is 40 (the kernel's too)
# Docker's overlay driver names the VNI option so (`docker network inspect` shows it).
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
FIRST_VNI = 4097  # Docker's overlay starts its VNIs past 4096 too
LAST_VNI = (1 << 24) - 1
DEFAULT_PORT = 2379
NO_CLUSTER = ("overlay networks need a cluster store",
              "start portwayd with --cluster-store etcd://HOST:2379 and --advertise-address "
              "IP (or set PORTWAY_CLUSTER_STORE and PORTWAY_ADVERTISE_ADDRESS)")


class AddressRaced(Conflict):
    """Another host claimed an address a set-up here picked, between the pick and the
    set-up's transaction (its claim, with its record, made once its plumbing is done):
    the set-up is undone whole and tried again, and picks another."""

    address: IPAddress | None = None  # the address lost


@dataclass(frozen=True)
class Member:
    """One etcd endpoint of --cluster-store."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_cluster_store(url: str) -> tuple[Member, ...]:
    """`etcd://HOST[:PORT][,HOST[:PORT]...]` (IPv6 hosts in brackets) -> its members."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd":
        raise InvalidInput(f"--cluster-store {url!r}: not an etcd:// URL",
                           "give etcd://HOST:2379[,HOST:2379...]")
    members = []
    for item in rest.rstrip("/").split(","):
        item = item.strip()
        if not item:
            raise InvalidInput(f"--cluster-store {url!r}: an empty member",
                               "give etcd://HOST:2379[,HOST:2379...]")
        if item.startswith("["):
            host, _, tail = item[1:].partition("]")
            port_text = tail.removeprefix(":") if tail.startswith(":") else ""
            if tail and not tail.startswith(":"):
                port_text = "bad"
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        elif ":" in item:
            raise InvalidInput(f"--cluster-store member {item!r}: an IPv6 address needs "
                               "brackets", f"write it as etcd://[{item}]:2379")
        else:
            host, port_text = item, ""
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            port = 0
        if not host or not 0 < port < 65536:
            raise InvalidInput(f"--cluster-store member {item!r}: not HOST:PORT",
                               "give etcd://HOST:2379[,HOST:2379...]")
        members.append(Member(host, port))
    return tuple(members)


def parse_advertise_address(text: str) -> IPAddress:
    """--advertise-address: this host's VTEP, an address the other hosts send its tunnel
    traffic to. Not an IPv6 link-local one (a VXLAN device cannot take one as its local
    address without a device to scope it: every overlay network's device was refused
    then), nor one that is no single host's (unspecified, multicast)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"--advertise-address {text!r} is not an IP address",
                           "give this host's underlay address, e.g. 192.0.2.10") from None
    why = "an IPv6 link-local address" if address.version == 6 and address.is_link_local \
        else "the unspecified address" if address.is_unspecified \
        else "a multicast address" if address.is_multicast else ""
    if why:
        raise InvalidInput(f"--advertise-address {text} is {why}: the other hosts cannot "
                           "send this host's tunnel traffic to it",
                           "give the address of its interface on the underlay (a global "
                           "or unique local one; 'ip -brief address' lists them)")
    return address


DEFAULT_TTL = 10  # seconds
TTL_RANGE = (2, 3600)  # etcd's shortest lease is about 2 s with its default timing


def parse_cluster_ttl(text: str) -> int:
    """--cluster-ttl: the seconds a host's lease lasts without renewal."""
    low, high = TTL_RANGE
    try:
        ttl = int(text)
    except ValueError:
        ttl = 0
    if not low <= ttl <= high:
        raise InvalidInput(f"--cluster-ttl {text!r} is not a number of seconds from {low} "
                           f"to {high}", "give the seconds a host's lease lasts, e.g. 10 "
                           "(the default)")
    return ttl


# keys


def host_key(address: IPAddress | str) -> str:
    return f"{PREFIX}hosts/{address}"


def network_key(network_id: str = "") -> str:
    return f"{PREFIX}networks/{network_id}"


def name_key(name: str) -> str:
    return f"{PREFIX}names/{name}"


def vni_key(vni: int | None = None) -> str:
    return f"{PREFIX}vnis/" + ("" if vni is None else str(vni))


def address_key(network_id: str, address: IPAddress | None = None) -> str:
    return f"{PREFIX}ips/{network_id}/" + ("" if address is None else str(address))


def container_name_key(network_id: str, name: str) -> str:
    """Whose the container name is on a network (an endpoint id): one container of a
    name per network across the hosts, as its DNS name is one."""
    return f"{PREFIX}cnames/{network_id}/{name}"


def endpoint_key(network_id: str = "", endpoint_id: str = "") -> str:
    if not network_id:
        return f"{PREFIX}endpoints/"
    return f"{PREFIX}endpoints/{network_id}/{endpoint_id}"


def prefix_end(prefix: str) -> str:
    """The end of the key range of everything under prefix (etcd's range_end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# records


def pick_vni(taken: set[int]) -> int:
    for vni in range(FIRST_VNI, LAST_VNI + 1):
        if vni not in taken:
            return vni
    raise InvalidInput("no free VXLAN network identifier", "remove unused overlay networks")


def parse_vni(text: str) -> int:
    """The VNI asked for with -o com.docker.network.driver.overlay.vxlanid_list=N (as
    Docker takes it; one, since a portway overlay network has one VXLAN device)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= LAST_VNI:
        raise InvalidInput(f"invalid {VNI_OPTION} {text!r}",
                           f"give one VXLAN network identifier from 1 to {LAST_VNI}, or "
                           "omit the option to get a free one")
    return int(text)


def network_vni(network: Network) -> int:
    return int(network.options[VNI_OPTION])


def vxlan_name(network_id: str) -> str:
    """The network's VXLAN device on every host (15 bytes at most)."""
    return f"pwvx-{network_id[:10]}"


def vxlan_overhead(version: int) -> int:
    """What VXLAN adds to a frame between VTEPs of an IP version."""
    return VXLAN6_OVERHEAD if version == 6 else VXLAN_OVERHEAD


def vxlan_mtu(underlay_mtu: int, version: int = 4) -> int:
    """The MTU of an overlay whose tunnels run between VTEPs of that IP version on an
    underlay of underlay_mtu: a frame of a larger packet does not fit the underlay once
    wrapped (over IPv6 it was given 20 bytes too many, and such a packet was dropped)."""
    return underlay_mtu - vxlan_overhead(version)


def encode_network(network: Network) -> str:
    return json.dumps({
        "id": network.id, "name": network.name, "internal": network.internal,
        "mtu": network.mtu, "options": network.options, "labels": network.labels,
        "created": network.created, "bridge": network.bridge,
        "subnets": [{"subnet": str(s.subnet), "gateway": str(s.gateway),
                     "ip_range": str(s.ip_range) if s.ip_range else None,
                     "aux": [[n, str(a)] for n, a in s.aux_addresses]}
                    for s in network.subnets]}, sort_keys=True)


def decode_network(text: str | bytes) -> Network:
    d = json.loads(text)
    subnets = tuple(Subnet(subnet=ipaddress.ip_network(s["subnet"]),
                           gateway=ipaddress.ip_address(s["gateway"]),
                           ip_range=ipaddress.ip_network(s["ip_range"])
                           if s.get("ip_range") else None,
                           aux_addresses=tuple((str(n), ipaddress.ip_address(a))
                                               for n, a in s.get("aux", [])))
                    for s in d["subnets"])
    return Network(id=str(d["id"]), name=str(d["name"]), subnets=subnets,
                   bridge=str(d["bridge"]), driver="overlay", internal=bool(d["internal"]),
                   mtu=int(d["mtu"]), options={str(k): str(v) for k, v in d["options"].items()},
                   labels={str(k): str(v) for k, v in d["labels"].items()},
                   created=str(d.get("created", "")))


@dataclass(frozen=True)
class RemoteEndpoint:
    """An endpoint as the cluster knows it: where it is (its host's VTEP), what it is
    called (for DNS) and its addresses and MAC (for FDB and neighbour entries)."""

    id: str
    network_id: str
    container_id: str
    name: str
    aliases: tuple[str, ...]
    addresses: tuple[IPInterface, ...]
    mac: str
    host: IPAddress  # the VTEP: its host's advertise address

    def encode(self) -> str:
        return json.dumps({"id": self.id, "network": self.network_id,
                           "container": self.container_id, "name": self.name,
                           "aliases": list(self.aliases),
                           "addresses": [str(a) for a in self.addresses],
                           "mac": self.mac, "host": str(self.host)}, sort_keys=True)

    @staticmethod
    def decode(text: str | bytes) -> RemoteEndpoint:
        d: dict[str, Any] = json.loads(text)
        return RemoteEndpoint(id=str(d["id"]), network_id=str(d["network"]),
                              container_id=str(d["container"]), name=str(d["name"]),
                              aliases=tuple(str(a) for a in d.get("aliases", [])),
                              addresses=tuple(ipaddress.ip_interface(a)
                                              for a in d["addresses"]),
                              mac=str(d["mac"]).lower(), host=ipaddress.ip_address(d["host"]))


# forwarding entries


@dataclass(frozen=True)
class Fdb:
    """`bridge fdb append MAC dev VXLAN dst VTEP`"""

    mac: str
    dst: IPAddress


@dataclass(frozen=True)
class Neighbour:
    """`ip neigh replace IP lladdr MAC dev VXLAN nud permanent` (answers ARP/ND locally)"""

    ip: IPAddress
    mac: str


def wanted_forwarding(endpoints: list[RemoteEndpoint], local: IPAddress
                      ) -> tuple[set[Fdb], set[Neighbour]]:
    """The entries one network's VXLAN device needs on the host whose VTEP is local:
    one per endpoint on every other host."""
    fdb: set[Fdb] = set()
    neigh: set[Neighbour] = set()
    for e in endpoints:
        if e.host == local:
            continue
        fdb.add(Fdb(e.mac, e.host))
        neigh.update(Neighbour(a.ip, e.mac) for a in e.addresses)
    return fdb, neigh


@dataclass(frozen=True)
class ForwardingPlan:
    add_fdb: tuple[Fdb, ...]
    del_fdb: tuple[Fdb, ...]
    add_neigh: tuple[Neighbour, ...]
    del_neigh: tuple[Neighbour, ...]

    def empty(self) -> bool:
        return not (self.add_fdb or self.del_fdb or self.add_neigh or self.del_neigh)


def plan_forwarding(want: tuple[set[Fdb], set[Neighbour]],
                    have: tuple[set[Fdb], set[Neighbour]]) -> ForwardingPlan:
    """What to add and remove so that have becomes want: an entry already right is not
    touched (a restarted daemon reprograms nothing twice)."""
    key = str
    return ForwardingPlan(
        add_fdb=tuple(sorted(want[0] - have[0], key=key)),
        del_fdb=tuple(sorted(have[0] - want[0], key=key)),
        add_neigh=tuple(sorted(want[1] - have[1], key=key)),
        del_neigh=tuple(sorted(have[1] - want[1], key=key)))


def still_current(plan: ForwardingPlan,
                  want: tuple[set[Fdb], set[Neighbour]]) -> ForwardingPlan:
    """plan, made from an earlier view, cut to what the view now (want) still asks for:
    only entries it still wants are added, only entries it no longer wants removed (the
    changes since then are programmed after it, as such)."""
    return ForwardingPlan(
        add_fdb=tuple(f for f in plan.add_fdb if f in want[0]),
        del_fdb=tuple(f for f in plan.del_fdb if f not in want[0]),
        add_neigh=tuple(n for n in plan.add_neigh if n in want[1]),
        del_neigh=tuple(n for n in plan.del_neigh if n not in want[1]))
