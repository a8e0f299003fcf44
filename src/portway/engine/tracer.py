"""`portway trace`: record the kernel state a path depends on, then reason over it.

The recording (interfaces, addresses, routes, sockets, every nftables table,
sysctls; the host namespace and each container's) is the only kernel-facing
part; core/trace.py does the reasoning on it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from portway.core import firewall, names
from portway.core import trace as core
from portway.core.nftsim import Packet, hostport
from portway.errors import InvalidInput, NotFound
from portway.kernel import netns, nftrace, observe, rtnl
from portway.kernel.nft import Nft, has_tables
from portway.model.types import Container, Endpoint, IPAddress, IPInterface, IPNetwork

if TYPE_CHECKING:
    from portway.engine import Engine
    from portway.engine.observer import Observer

HOST = "host"
OUTSIDE_DEFAULT = "203.0.113.10"  # TEST-NET-3: a client somewhere beyond the uplink
OUTSIDE_DEFAULT6 = "2001:db8:113::10"  # the IPv6 documentation prefix, likewise
SOURCE_PORT = 40000


def list_ruleset_here() -> list[dict[str, Any]]:
    """Every nftables table of the calling thread's namespace: none without making a
    libnftables context (milliseconds) where a plain dump finds no table."""
    if not has_tables():
        return []
    nft = Nft()
    try:
        return nft.list_ruleset()
    finally:
        nft.close()


def _macvlan_parents(engine: Any) -> dict[str, str]:
    """network id -> the parent interface of each macvlan network (core/trace.py's
    macvlan_leaves names it as the device's way out)."""
    from portway.core import macvlan

    return {n.id: macvlan.parent(n) or "the default-route interface"
            for n in engine.store.networks() if macvlan.is_macvlan(n)}


def _space(key: str, label: str, ipr: IPRoute | None, rules: list[dict[str, Any]],
           peers: dict[str, tuple[str, str]], own: set[int] | None = None) -> core.Space:
    """Links, addresses, routes, neighbours, sockets and sysctls of the calling thread's
    namespace (the caller runs this inside the namespace; ipr is a socket there). One
    dump of each kind for the whole namespace, parsed only for what is read
    (kernel/rtnl.py): a dump per link, or pyroute2's parsing of every attribute, cost
    a host with 1,000 veths seconds. own: the inodes of the sockets portwayd listens on
    here (Engine.own_sockets: it knows them; looking through its file descriptors cost
    a daemon with 1,000 containers, which holds thousands, tens of milliseconds); None:
    none (portwayd listens only in its host namespace)."""
    with rtnl.Dumper() as dumper:
        return _space_from(key, label, dumper, rules, peers, own, ipr)


def _space_from(key: str, label: str, dumper: rtnl.Dumper, rules: list[dict[str, Any]],
                peers: dict[str, tuple[str, str]], own: set[int] | None,
                ipr: IPRoute | None) -> core.Space:
    ifaces = []
    by_index = {link.index: link for link in dumper.links()}
    addrs_of: dict[int, list[IPInterface]] = {}
    for index, ifaddr in dumper.addresses():
        addrs_of.setdefault(index, []).append(ifaddr)
    for link in by_index.values():
        addrs = tuple(addrs_of.get(link.index, ()))
        master = by_index[link.master].ifname if link.master in by_index else ""
        # net.ipv4.conf.DEV.*, as the link dump carries them (a file each otherwise).
        conf = f"net.ipv4.conf.{link.ifname}."
        localnet = dumper.ipv4_conf(link.index, rtnl.IPV4_DEVCONF_ROUTE_LOCALNET)
        rp_filter = dumper.ipv4_conf(link.index, rtnl.IPV4_DEVCONF_RP_FILTER)
        forwarding = dumper.ipv4_conf(link.index, rtnl.IPV4_DEVCONF_FORWARDING)
        if localnet is None or rp_filter is None or forwarding is None:
            text = observe.read_sysctl(conf + "rp_filter", "0")
            localnet = int(observe.read_sysctl(conf + "route_localnet") == "1")
            rp_filter = int(text) if text.isdigit() else 0
            forwarding = int(observe.read_sysctl(conf + "forwarding") != "0")
        no_ipv6 = dumper.ipv6_conf(link.index, rtnl.DEVCONF_DISABLE_IPV6)
        force6 = dumper.ipv6_conf(link.index, rtnl.DEVCONF_FORCE_FORWARDING)
        ifaces.append(core.Iface(name=link.ifname, index=link.index, kind=link.kind,
                                 mac=link.mac, up=link.up, addrs=addrs, master=master,
                                 peer=peers.get(link.ifname), route_localnet=localnet == 1,
                                 rp_filter=rp_filter, forwarding=forwarding != 0,
                                 disable_ipv6=bool(no_ipv6), force_forwarding=bool(force6),
                                 mtu=link.mtu, carrier=link.carrier, mode=link.mode,
                                 link_index=link.peer if link.kind in PAIRED else 0,
                                 netnsid=link.netnsid if link.kind in PAIRED else -1))
    if any(i.kind == "macvlan" for i in ifaces):
        ifaces = _with_lowers(ifaces)
    policy = _rules(dumper.rules())
    # VXLAN devices through pyroute2: a socket here for them alone, where the caller gave
    # none (a VXLAN device is asked about only where there is one).
    vxlans = [link for link in by_index.values() if link.kind == "vxlan"]
    tunnels: dict[str, core.Tunnel] = {}
    if vxlans and ipr is None:
        with IPRoute() as here:
            tunnels = _tunnels(here, vxlans)
    elif vxlans and ipr is not None:
        tunnels = _tunnels(ipr, vxlans)
    every = [core.Route(dst=ipaddress.ip_network(r["dst"]), dev=r["dev"],
                        gateway=ipaddress.ip_address(r["gateway"]) if r["gateway"] else None,
                        prefsrc=ipaddress.ip_address(r["prefsrc"]) if r["prefsrc"] else None,
                        kind=r["kind"], metric=r["metric"], table=r["table"])
             for r in dumper.routes(tables=bool(policy))]
    routes = [r for r in every if r.table == core.MAIN]
    tables: dict[int, list[core.Route]] = {}
    for r in every:
        if r.table != core.MAIN:
            tables.setdefault(r.table, []).append(r)
    # net.ipv4.ip_forward (conf.all.forwarding), conf.all.rp_filter and IPv6's forwarding
    # from the kernel's netconf answers, not /proc/sys (see rtnl.Dumper.netconf_all).
    v4, v6 = dumper.netconf_all(socket.AF_INET), dumper.netconf_all(socket.AF_INET6)
    own = own or set()
    listeners: set[tuple[str, str, int]] = set()
    mine: set[tuple[str, str, int]] = set()
    for proto, addr, port, inode in rtnl.listeners():
        listeners.add((proto, addr, port))
        if inode in own:
            mine.add((proto, addr, port))
    # A bridge of many ports is asked about a MAC when the path crosses it: a dump of
    # its FDB is mostly its ports' own addresses (three a port). close_world() ends it.
    ports = sum(1 for link in by_index.values() if link.master)
    fdb: core.Learned = rtnl.FdbLookup(dumper.names()) if ports > FDB_DUMP_MAX \
        else dumper.fdb()
    return core.Space(key=key, label=label, ifaces=ifaces, routes=routes,
                      listeners=listeners, portway_sockets=mine, ruleset=rules,
                      forwarding=v4.get("forwarding") == 1,
                      forwarding6=v6.get("forwarding") == 1,
                      neighbours=dumper.neighbours(), fdb=fdb,
                      rp_filter=v4.get("rp_filter", 0), rules=policy,
                      tables=tables, tunnels=tunnels)


FDB_DUMP_MAX = 128  # bridge ports in a namespace up to which its FDB is dumped
PAIRED = ("veth", "macvlan")  # kinds whose link index names another device (peer, lower)


def _with_lowers(ifaces: list[core.Iface]) -> list[core.Iface]:
    """ifaces with each macvlan's lower device as (inode of its namespace, its index
    there), which its siblings in other namespaces share (the calling thread is in the
    namespace of ifaces)."""
    here = netns.namespace_inode("/proc/thread-self/ns/net") or 0
    wanted = {i.netnsid for i in ifaces if i.kind == "macvlan" and i.netnsid >= 0}
    inodes = _nsids(wanted, netns.observe_namespaces()) if wanted else {}
    return [replace(i, lower=(here if i.netnsid < 0 else inodes.get(i.netnsid, 0),
                              i.link_index)) if i.kind == "macvlan" else i for i in ifaces]


def close_world(world: core.World) -> None:
    """Close the FDB lookups of the namespaces recorded (their netlink sockets)."""
    for space in (world.host, *(dict.values(world.spaces))):
        if isinstance(space.fdb, rtnl.FdbLookup):
            space.fdb.close()


# The rules every namespace starts with: local, main, default (priority, table).
DEFAULT_RULES = {(0, core.LOCAL), (32766, core.MAIN), (32767, core.DEFAULT)}


def _rules(dumped: list[dict[str, Any]]) -> list[core.Rule]:
    """The policy routing rules (rtnl.Dumper.rules), or none when they are the default
    ones (then the main table alone decides, and the other tables need not be read)."""
    found = [core.Rule(priority=r["priority"], table=r["table"], action=r["action"],
                       src=ipaddress.ip_network(r["src"], strict=False) if r["src"] else None,
                       dst=ipaddress.ip_network(r["dst"], strict=False) if r["dst"] else None,
                       iif=r["iif"], oif=r["oif"], fwmark=r["fwmark"], invert=r["invert"],
                       version=r["version"])
             for r in dumped]
    plain = all((r.priority, r.table) in DEFAULT_RULES and r.action == "lookup"
                and r.src is None and r.dst is None and not r.iif and not r.oif
                and r.fwmark is None and not r.invert for r in found)
    return [] if plain else found


def _tunnels(ipr: IPRoute, found: Any) -> dict[str, core.Tunnel]:
    """The VXLAN devices (overlay networks) with their FDB entries."""
    from portway.kernel import vxlan

    out = {}
    for link in found:
        if link.kind != "vxlan":
            continue
        seen = vxlan.observe_vxlan(ipr, link.index)
        if seen is None:
            continue
        fdb, _neigh = vxlan.observe_forwarding(ipr, link.index)
        out[link.ifname] = core.Tunnel(vni=seen[0], local=seen[1], port=seen[2],
                                       mtu=link.mtu, fdb={f.mac: str(f.dst) for f in fdb})
    return out


MAX_FOREIGN = 64  # namespaces one trace follows veths into, at most


def uplinks(space: core.Space) -> set[str]:
    """The interfaces the default routes leave by: the way out to the world (on a real
    host a NIC; in a lab, a veth that plays one), never followed into a namespace."""
    return {r.dev for r in space.routes if r.dst.prefixlen == 0 and r.kind == "unicast"}


def _unpaired(space: core.Space, skip: set[str]) -> list[core.Iface]:
    """space's veths whose other end is in another namespace not joined to them yet."""
    return [i for i in space.ifaces if i.kind == "veth" and i.peer is None
            and i.netnsid >= 0 and i.name not in skip]


def _nsids(wanted: set[int], found: list[netns.Namespace]) -> dict[int, int]:
    """nsid -> inode, for the nsids wanted, as the calling thread's namespace numbers
    the namespaces."""
    return {nsid: ns.inode for nsid, ns in netns.resolve_nsids(wanted, found).items()}


def _bridge_nf_here(space: core.Space) -> tuple[bool, bool] | None:
    """Bridge netfilter in the calling thread's namespace (it is per namespace), where
    space has a bridge of its own (the host's is read once for the world)."""
    if not any(i.kind == "bridge" for i in space.ifaces):
        return None
    return (observe.read_sysctl("net.bridge.bridge-nf-call-iptables") == "1",
            observe.read_sysctl("net.bridge.bridge-nf-call-ip6tables") == "1")


GONE = (errno.ENOENT, errno.EINVAL, errno.ESRCH)  # a namespace file unmounted, a process ended


def _gone(exc: OSError) -> bool:
    """Whether entering a namespace failed because it is no longer there."""
    return exc.errno in GONE


def vanished(label: str) -> str:
    """The note for a namespace that went away while trace read it."""
    return f"{label} went away while trace read it: skipped (trace again if it is back)"


def _record_foreign(ns: netns.Namespace, found: list[netns.Namespace]
                    ) -> tuple[core.Space, dict[int, int]] | None:
    """A namespace portway did not make, recorded from inside it (read-only), and the
    namespaces its own veths lead to (nsid -> inode); None when it went away meanwhile
    (its file unmounted, its process ended, or another namespace under its name)."""
    def record() -> tuple[core.Space, dict[int, int]] | None:
        if netns.namespace_inode("/proc/thread-self/ns/net") != ns.inode:
            return None  # another namespace took its name
        space = _space(ns.key, ns.label, None, list_ruleset_here(), {})
        space.bridge_nf = _bridge_nf_here(space)
        wanted = {i.netnsid for i in _unpaired(space, set())}
        return space, _nsids(wanted, found) if wanted else {}

    try:
        return netns.in_netns(ns.path, record)
    except OSError as exc:
        if not _gone(exc):
            raise
        return None


def _join(world: core.World, a: core.Space, i: core.Iface, b: core.Space) -> None:
    """Join veth end i of a to its other end in b (the end whose index i names and which
    names i back)."""
    for n, j in enumerate(b.ifaces):
        if j.kind == "veth" and j.index == i.link_index and j.link_index == i.index:
            b.ifaces[n] = replace(j, peer=(a.key, i.name))
            at = a.ifaces.index(i)
            a.ifaces[at] = replace(i, peer=(b.key, j.name))
            return


def discover(world: core.World, host_ipr: IPRoute, modelled: Modelled) -> None:
    """Follow the host's veths (but its uplinks) whose other end is in a namespace
    portway did not make into that namespace, and on from there: record each as
    portway's own containers are recorded, and join the veth ends. A namespace is
    entered (to read it) only when a veth leads to it: namespaces unrelated to the
    host (another test's, another lab's) are never entered. modelled: inode -> key of
    the namespaces recorded already (the host's and portway's containers')."""
    pending = [(world.host, uplinks(world.host))]
    if not _unpaired(world.host, pending[0][1]):
        return
    found = netns.observe_namespaces()
    entered = 0
    by_inode = {ns.inode: ns for ns in found}
    # (the calling thread is in the host namespace, as host_ipr is)
    mapping = {world.host.key: _nsids({i.netnsid for i in _unpaired(
        world.host, pending[0][1])}, found)}
    while pending:
        space, skip = pending.pop(0)
        for i in _unpaired(space, skip):
            inode = mapping.get(space.key, {}).get(i.netnsid)
            if inode is None:
                continue
            key = modelled.get(inode)
            if key is None:
                ns = by_inode.get(inode)
                if ns is None or entered >= MAX_FOREIGN:
                    continue
                entered += 1
                recorded = _record_foreign(ns, found)
                if recorded is None:
                    world.notes.append(vanished(ns.label))
                    continue
                other, mapping[ns.key] = recorded
                world.spaces[ns.key] = other
                modelled[inode] = key = ns.key
                pending.append((other, set()))
            current = space.iface(i.name)
            if current is not None and current.peer is None:
                _join(world, space, current, world.space(key))


def discover_macvlans(world: core.World, modelled: Modelled) -> None:
    """Record the namespaces that hold a sibling of a macvlan recorded (one on the same
    lower device): of the namespaces the lower device's namespace numbers (a device was
    moved or made there from it), those with such a macvlan. Nothing is entered where
    no macvlan was recorded."""
    lowers = {i.lower for sp in (world.host, *dict.values(world.spaces)) for i in sp.ifaces
              if i.kind == "macvlan" and i.lower is not None}
    if not lowers:
        return
    found = netns.observe_namespaces()
    by_inode = {ns.inode: ns for ns in found}
    here = netns.namespace_inode("/proc/thread-self/ns/net")
    candidates: dict[int, netns.Namespace] = {}
    for inode in {lower[0] for lower in lowers}:
        home = by_inode.get(inode)
        path = "/proc/thread-self/ns/net" if inode == here else \
            home.path if home is not None else ""
        if not path:
            continue

        def numbered() -> list[netns.Namespace]:
            with rtnl.Dumper() as dumper:
                return [ns for ns in found if netns.nsid_of(ns.path, dumper) is not None]

        try:
            numbers = numbered() if inode == here else netns.in_netns(path, numbered)
        except OSError as exc:
            if not _gone(exc):
                raise
            world.notes.append(vanished(home.label if home is not None else "a namespace"))
            continue
        for ns in numbers:
            if modelled.get(ns.inode) is None and len(candidates) < MAX_FOREIGN:
                candidates[ns.inode] = ns
    order = list(candidates.values())

    def record(path: str) -> core.Space | None:
        ns = next(n for n in order if n.path == path)
        with rtnl.Dumper() as dumper:
            if not any(link.kind == "macvlan" for link in dumper.links()):
                return None
        space = _space(ns.key, ns.label, None, list_ruleset_here(), {})
        if not any(i.lower in lowers for i in space.ifaces if i.kind == "macvlan"):
            return None
        space.bridge_nf = _bridge_nf_here(space)
        return space

    for ns, space in zip(order, netns.visit([n.path for n in order], record), strict=True):
        if space is not None:
            world.spaces[ns.key] = space
            modelled[ns.inode] = ns.key


def observe_foreign(engine: Engine | Observer, world: core.World, name: str) -> str:
    """Add a named namespace portway did not make to world; its key."""
    key = f"ns:{name}"

    def record() -> core.Space:
        space = _space(key, f"namespace {name}", None, list_ruleset_here(), {})
        space.bridge_nf = _bridge_nf_here(space)
        return space

    try:
        space = netns.in_netns(netns.netns_path(name), record)
    except OSError as exc:
        if not _gone(exc):
            raise
        raise NotFound(f"network namespace {name!r} went away while trace read it",
                       "give one that 'ip netns list' shows, as ns:NAME") from None
    core.pair_veths(world.host, space)
    world.spaces[key] = space
    return key


def observe_world(engine: Engine | Observer
                  ) -> tuple[core.World, dict[str, Container], Modelled]:
    """The host, portway's containers, and the namespaces the host's veths lead to; the
    containers by key, and the key of each namespace recorded by its inode."""
    every = engine.store.containers()
    # The store's networked containers; whether each one's namespace is still there is
    # asked only of those the trace meets (a stat each: tens of milliseconds at 1,000).
    # A namespace that is gone has taken its veths along, so no path leads into it.
    containers = {os.path.basename(c.netns): c for c in every
                  if c.network_mode != "host" and c.networked and c.netns}
    ids = {c.id for c in containers.values()}
    endpoints: dict[str, list[Endpoint]] = {}
    for e in engine.store.endpoints():  # (one query, not one a container)
        if e.container_id in ids:
            endpoints.setdefault(e.container_id, []).append(e)
    host_peers: dict[str, tuple[str, str]] = {}
    inner_peers: dict[str, dict[str, tuple[str, str]]] = {}
    parents = _macvlan_parents(engine)
    for key, c in containers.items():
        for e in endpoints.get(c.id, []):
            if e.network_id in parents:  # a macvlan device: its parent, no host end
                inner_peers.setdefault(key, {})[e.ifname] = (HOST, parents[e.network_id])
                continue
            host_peers[e.host_ifname] = (key, e.ifname)
            inner_peers.setdefault(key, {})[e.ifname] = (HOST, e.host_ifname)
    own = engine.own_sockets()
    host = _space(HOST, "host", engine.host, engine.nft.listing(), host_peers, own)
    cluster = engine.h.cluster
    if cluster is not None and host.tunnels:
        # Who is behind each remote MAC: the cluster store says (name and host).
        remote = {}
        for n in engine.store.networks():
            for r in cluster.remote_endpoints(n.id) if n.driver == "overlay" else []:
                remote[r.mac] = f"container {r.name} on host {r.host}"
        host.tunnels = {name: replace(t, remote=remote) for name, t in host.tunnels.items()}
    bridge_nf = observe.read_sysctl("net.bridge.bridge-nf-call-iptables") == "1"
    bridge_nf6 = observe.read_sysctl("net.bridge.bridge-nf-call-ip6tables") == "1"

    def loader(key: str, c: Container) -> Callable[[], core.Space]:
        def record() -> core.Space:
            # Its netlink sockets are opened here, inside the container's namespace.
            return _space(key, f"container {c.name}", None, list_ruleset_here(),
                          inner_peers.get(key, {}), own)

        def load() -> core.Space:
            empty = core.Space(key=key, label=f"container {c.name}", ifaces=[], routes=[])
            if not netns.sandbox_exists(c.netns):  # gone (drift): nothing in it
                return empty
            try:
                return netns.in_netns(c.netns, record)
            except OSError as exc:  # removed meanwhile
                if not _gone(exc):
                    raise
                world.notes.append(vanished(f"container {c.name}"))
                return empty
        return load

    # Each container is recorded when the path (or anything) first asks for it; who
    # holds which address behind which bridge is known from the store meanwhile.
    spaces = core.LazySpaces({key: loader(key, c) for key, c in containers.items()})
    behind: dict[tuple[str, IPAddress], tuple[str, str]] = {}
    for key, c in containers.items():
        for e in endpoints.get(c.id, []):
            port = host.iface(e.host_ifname)
            if port is None or not port.master:
                continue
            for a in e.addresses:
                behind[(port.master, a.ip)] = (key, e.host_ifname)
    world = core.World(host=host, spaces=spaces, bridge_nf=bridge_nf, bridge_nf6=bridge_nf6,
                       behind=behind, sctp=observe.has_sctp())
    world.published, world.routed = _published(engine, every)
    world.internal = [(sub.subnet, n.name) for n in engine.store.networks() if n.internal
                      for sub in n.subnets]
    modelled = Modelled(containers)
    discover(world, engine.host, modelled)
    return world, containers, modelled


class Modelled:
    """The key of each namespace recorded, by its inode: the host's and portway's
    containers' (a stat each, made only when first asked: by a path that meets a veth
    into a namespace portway did not make, or a source given as ns:NAME), then the ones
    discover() adds."""

    def __init__(self, containers: dict[str, Container]) -> None:
        self.pending: dict[str, Container] | None = containers
        self.keys: dict[int, str] = {}

    def _fill(self) -> dict[int, str]:
        if self.pending is not None:
            containers, self.pending = self.pending, None
            for key, path in ((HOST, "/proc/thread-self/ns/net"),
                              *((key, c.netns) for key, c in containers.items())):
                inode = netns.namespace_inode(path)
                if inode is not None:
                    self.keys.setdefault(inode, key)
        return self.keys

    def get(self, inode: int) -> str | None:
        return self._fill().get(inode)

    def __setitem__(self, inode: int, key: str) -> None:
        self._fill()[inode] = key


def _family_flag(version: int) -> str:
    return f"-{version}"


def _parse_from_ip(from_ip: str | None, source: str, family: int | None
                   ) -> tuple[IPAddress | None, int | None]:
    """--from-ip as an address, and the family it implies (or the one asked for)."""
    if from_ip is None:
        return None, family
    try:
        client = ipaddress.ip_address(from_ip)
    except ValueError:
        raise InvalidInput(f"invalid --from-ip {from_ip!r}",
                           "give an IPv4 or IPv6 address, e.g. 203.0.113.7 or "
                           "2001:db8::7") from None
    if source != "outside":
        raise InvalidInput("--from-ip is for an outside source",
                           "use it with 'portway trace outside ...'")
    if family is not None and family != client.version:
        raise InvalidInput(f"--from-ip {client} is IPv{client.version}, but "
                           f"{_family_flag(family)} asks for IPv{family}",
                           "give an address of that family, or drop "
                           f"{_family_flag(family)}")
    return client, client.version


def _source(engine: Engine | Observer, world: core.World, containers: dict[str, Container],
            modelled: Modelled, source: str) -> str:
    """The key of the source in world (observing a foreign namespace if asked)."""
    if source in ("host", "outside"):
        return source
    if source.startswith("ns:"):
        ns_name = source[3:]
        if not ns_name or "/" in ns_name or ns_name in (".", "..") or \
                not netns.netns_exists(ns_name):
            raise NotFound(f"no network namespace {ns_name!r}",
                           "give one that 'ip netns list' shows, as ns:NAME")
        known = modelled.get(netns.namespace_inode(netns.netns_path(ns_name)) or -1)
        if known is not None:
            return known
        return observe_foreign(engine, world, ns_name)
    try:
        addr: IPAddress | None = ipaddress.ip_address(source)
    except ValueError:
        addr = None
    if addr is not None:
        return _holder(world, addr)
    by_name = {c.name: key for key, c in containers.items()}
    if source in by_name and netns.sandbox_exists(containers[by_name[source]].netns):
        return by_name[source]
    c = engine.store.find_container(source)
    if c is None or c.network_mode == "host":
        raise NotFound(f"no such source {source!r}",
                       "give a container name, 'host', 'outside', ns:NAME or an address")
    key = os.path.basename(c.netns)
    if not c.networked:
        raise NotFound(f"container {c.name} is not running: it has no network namespace",
                       f"start it (portway start {c.name})")
    if key not in containers or not netns.sandbox_exists(c.netns):
        raise NotFound(f"container {c.name} has no network namespace",
                       "run 'portway gc' to repair it")
    return key


def _holder(world: core.World, addr: IPAddress) -> str:
    """The key of the namespace that holds addr: the host's, a container's, or one the
    host's veths lead to."""
    if addr in world.host.local():
        return HOST
    for key, space in world.spaces.items():
        if addr in space.local():
            return key
    raise NotFound(f"no namespace reachable from the host holds {addr}",
                   f"for a client beyond the host give: outside ... --from-ip {addr}; "
                   "for another namespace: ns:NAME")


def _families_of(world: core.World, src_key: str, client: IPAddress | None) -> set[int]:
    """The families the source can send: those of its addresses (not loopback or
    link-local), or of the outside client."""
    if client is not None:
        return {client.version}
    space = world.host if src_key in ("host", "outside") else world.space(src_key)
    return {a.version for i in space.ifaces for a in i.addrs
            if not a.ip.is_loopback and not a.ip.is_link_local}


@dataclass
class _Target:
    """Where the probe goes: the address and port, how to call it, notes on the way."""

    daddr: IPAddress
    dport: int
    label: str
    notes: list[str]


def _to_container(engine: Engine | Observer, world: core.World, containers: dict[str, Container],
                  src_key: str, name: str, port: int, proto: str, family: int | None,
                  client: IPAddress | None) -> _Target:
    """A destination given by container name: its address of the chosen family on a
    network it shares with the source (or its first), or for an outside source, the
    host address its port is published on."""
    target = engine.h.container(name)
    eps = engine.store.endpoints(container_id=target.id)
    if not target.networked:
        raise NotFound(f"container {target.name} is not running: it has no address",
                       f"start it (portway start {target.name})")
    if not eps:
        raise InvalidInput(f"container {target.name} has no address on a bridge network",
                           "trace to an IP address instead")
    have = {a.version for e in eps for a in e.addresses}
    if not have:  # only networks without IPAM (Podman's ipam driver none)
        raise InvalidInput(f"container {target.name} has no address portway gave it: its "
                           "networks have no IPAM", "trace to the address it gave itself")
    notes: list[str] = []
    if family is not None and family not in have:
        other = min(have)
        raise InvalidInput(f"container {target.name} has no IPv{family} address",
                           f"trace its IPv{other} address with {_family_flag(other)}, "
                           f"or drop {_family_flag(family)}")
    if family is None:
        can = _families_of(world, src_key, client)
        choice = (have & can) or have
        # From outside, the families the port is published in (-p 0.0.0.0:... is IPv4's
        # alone, -p [::]:... IPv6's): a client reaches it in one of those.
        on: set[int] = {p.container_ip.version
                         for p in engine.h.publishing.published(target, eps)
                         if p.container_port == port and p.protocol == proto} \
            if src_key == "outside" else set()
        family = min(choice & on or choice)
        if len(have) > 1 and on and on < have:
            notes.append(f"{target.name}'s {port}/{proto} is published over IPv{family} "
                         f"alone: IPv{family} is traced")
        elif len(have) > 1:
            notes.append(f"{target.name} has IPv4 and IPv6 addresses: IPv{family} is "
                         f"traced, as a client trying IPv4 first would "
                         f"({_family_flag(6 if family == 4 else 4)} traces the other)")
    shared: list[Endpoint] = []
    if src_key in containers:
        mine = {e.network_id for e in
                engine.store.endpoints(container_id=containers[src_key].id)}
        shared = [e for e in eps if e.network_id in mine]
    of_family = [e for e in (shared or eps) if any(a.version == family for a in e.addresses)] \
        or [e for e in eps if any(a.version == family for a in e.addresses)]
    chosen = min(of_family, key=lambda e: e.ifname)
    daddr: IPAddress = next(a.ip for a in chosen.addresses if a.version == family)
    dport = port
    if src_key == "outside":
        published = next((p for p in engine.h.publishing.published(target, eps)
                          if p.container_port == port and p.protocol == proto
                          and p.container_ip.version == family), None)
        if published is not None:
            daddr = _uplink_address(world, _client(client, family), published.host_ip)
            dport = published.host_port
            where = hostport(published.host_ip, published.host_port) if published.host_ip \
                else f"port {published.host_port} of every host address"
            notes.append(f"{target.name}'s {port}/{proto} is published on {where}: the "
                         f"client connects to {hostport(daddr, dport)}")
        else:
            notes.append(f"{port}/{proto} of {target.name} is not published over "
                         f"IPv{family}: the client tries its address directly")
    return _Target(daddr, dport, f"{target.name} {hostport(daddr, dport)}", notes)


def _remote_container(engine: Engine | Observer, name: str, port: int,
                      family: int | None) -> _Target | None:
    """A container on another host of an overlay network, by name (the cluster store
    knows it): its address there."""
    cluster = engine.h.cluster
    if cluster is None:
        return None
    for n in engine.store.networks():
        if n.driver != "overlay":
            continue
        for r in cluster.remote_endpoints(n.id):
            if name not in (r.name, *r.aliases):
                continue
            addrs = [a.ip for a in r.addresses if family is None or a.version == family]
            if addrs:
                addr = min(addrs, key=lambda a: a.version)
                return _Target(addr, port, f"{r.name} {hostport(addr, port)}",
                               [f"{r.name} runs on host {r.host} (overlay network {n.name}, "
                                "as the cluster store says)"])
    return None


def _client(client: IPAddress | None, family: int) -> IPAddress:
    """The outside client's address: --from-ip, or a documentation address."""
    if client is not None:
        return client
    return ipaddress.ip_address(OUTSIDE_DEFAULT if family == 4 else OUTSIDE_DEFAULT6)


def run(engine: Engine | Observer, source: str, destination: str, from_ip: str | None,
        live: bool = False, family: int | None = None) -> dict[str, Any]:
    """family: 4 or 6 (-4, -6) for a destination container with both, or None: IPv4
    where the source and the destination both have it."""
    if family not in (None, 4, 6):
        raise InvalidInput(f"unknown address family {family!r}", "use -4 or -6")
    name, port, proto = core.split_destination(destination)
    if live and proto == "sctp":
        raise InvalidInput("trace --live sends TCP or UDP probes, not SCTP",
                           "trace the SCTP path without --live")
    client, family = _parse_from_ip(from_ip, source, family)
    if port is None:
        where = f"[{name}]" if ":" in name else name
        raise InvalidInput(f"no port in {destination!r}",
                           f"say which port: {where}:80, or {where}:53/udp")
    world, containers, modelled = observe_world(engine)
    try:
        src_key = _source(engine, world, containers, modelled, source)
        discover_macvlans(world, modelled)
        try:
            literal: IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            if family is not None and family != literal.version:
                why = f"--from-ip {client}" if client is not None else _family_flag(family)
                raise InvalidInput(f"the destination {literal} is IPv{literal.version}, but "
                                   f"{why} is IPv{family}", "give both of one family")
            dest = _Target(literal, port, destination, [])
        else:
            try:
                dest = _to_container(engine, world, containers, src_key, name, port, proto,
                                     family, client)
            except NotFound:
                remote = _remote_container(engine, name, port, family)
                if remote is None:
                    raise
                dest = remote
        version = dest.daddr.version
        if src_key == "outside":
            sender = _client(client, version)
            route = world.host.lookup(sender)
            if route is None:
                raise InvalidInput(f"the host has no route to {sender}",
                                   "give --from-ip an address beyond one of its interfaces")
            packet = Packet(l4proto=proto, saddr=sender, daddr=dest.daddr, sport=SOURCE_PORT,
                            dport=dest.dport, iif=route.dev)
            label = f"outside {sender}"
            key = "outside"
        else:
            key = world.host.key if src_key == "host" else src_key
            unspecified = ipaddress.ip_address(0 if version == 4 else "::")
            packet = Packet(l4proto=proto, saddr=unspecified, daddr=dest.daddr,
                            sport=SOURCE_PORT, dport=dest.dport)
            label = "host" if src_key == "host" else world.spaces[src_key].label
        world.conntrack = _flows(packet)
        result = core.trace(world, key, packet, label, dest.label)
        far = _other_half(engine, result, label, dest) if result.tunnel is not None else None
        answer = _answer(engine, world, key, packet, result, label, dest, live, far)
        if far is not None:
            _join_halves(answer, result, far)
        return answer
    finally:
        close_world(world)


@dataclass
class _Remote:
    """The other host's half of a tunnelled trace, or why there is none."""

    host: str
    netns: str = ""
    trace: core.Trace | None = None
    why: str = ""  # not traced: the reason


def _other_half(engine: Engine | Observer, result: core.Trace, label: str,
                dest: _Target) -> _Remote:
    """The packet on the host its VXLAN device sent it to, where that host can be
    observed from here: its host namespace is on this machine (the cluster store's
    record names it) and holds the VTEP address. Else why not."""
    leg = result.tunnel
    assert leg is not None
    cluster = engine.h.cluster
    record = cluster.hosts.get(leg.vtep) if cluster is not None else None
    remote = _Remote(leg.vtep)
    if record is None:
        remote.why = f"no host of the cluster store has the address {leg.vtep}"
        return remote
    name = str(record.get("host_netns") or "")
    remote.netns = name
    if not name:
        remote.why = f"host {leg.vtep} runs in the root namespace of its own machine, " \
                     "which cannot be observed from here"
        return remote
    if not netns.netns_exists(name):
        remote.why = f"host {leg.vtep}'s namespace {name} is not on this machine"
        return remote
    where = f"host {leg.vtep}"

    def record_host() -> tuple[core.Space, bool, bool]:
        space = _space(HOST, where, None, list_ruleset_here(), {})
        return (space, observe.read_sysctl("net.bridge.bridge-nf-call-iptables") == "1",
                observe.read_sysctl("net.bridge.bridge-nf-call-ip6tables") == "1")

    host, bridge_nf, bridge_nf6 = netns.in_netns(netns.netns_path(name), record_host)
    if ipaddress.ip_address(leg.vtep) not in host.local():
        remote.why = f"namespace {name} on this machine does not hold {leg.vtep}: it is " \
                     f"not host {leg.vtep}"
        return remote
    spaces: dict[str, core.Space] = {}
    for n in engine.store.networks():
        if n.driver != "overlay" or cluster is None:
            continue
        for r in cluster.remote_endpoints(n.id):
            if r.host != ipaddress.ip_address(leg.vtep) or r.mac != leg.dmac:
                continue
            path = netns.netns_path(names.netns_name(r.container_id))
            if not netns.netns_exists(names.netns_name(r.container_id)):
                continue
            key, c_label = names.netns_name(r.container_id), f"container {r.name}"

            def record_container(key: str = key, c_label: str = c_label) -> core.Space:
                return _space(key, c_label, None, list_ruleset_here(), {})

            space = netns.in_netns(path, record_container)
            core.pair_veths(host, space)
            spaces[key] = space
    world = core.World(host=host, spaces=spaces, bridge_nf=bridge_nf, bridge_nf6=bridge_nf6,
                       sctp=observe.has_sctp())
    try:
        remote.trace = core.arrive(world, leg, label, dest.label)
    finally:
        close_world(world)
    return remote


def _join_halves(answer: dict[str, Any], local: core.Trace, remote: _Remote) -> None:
    """The answer of a tunnelled trace with the other host's half after this one's (or
    the reason it has none)."""
    data = answer["trace"]
    data["remote"] = {"host": remote.host, "netns": remote.netns,
                      "traced": remote.trace is not None, "why": remote.why}
    if remote.trace is None:
        data["summary"] = local.summary.replace(
            "(trace on that host for its half)", f"(not traced there: {remote.why}; run "
            "'portway trace' on that host for its half)")
        answer["text"] = answer["text"].replace(local.summary, data["summary"])
        return
    far = remote.trace
    data["hops"] += [h.as_dict() for h in far.hops]
    data["local_verdict"], data["local_summary"] = local.verdict, local.summary
    data["verdict"], data["fix"] = far.verdict, far.fix
    data["summary"] = f"{far.summary} (on host {remote.host}, after the VXLAN hop)"
    data["seen_source"], data["seen_destination"] = far.seen_source, far.seen_destination
    head, _, tail = answer["text"].partition("\nverdict: ")
    # The hops again, both halves in one column layout.
    top = head.split("\n")[:head.count("\n") + 1 - len(local.hops)]
    width = max((len(h.where) for h in [*local.hops, *far.hops]), default=0)
    lines = [f"{n:3}  {h.kind:<6} {h.where:<{width}}  {h.detail}"
             for n, h in enumerate(local.hops, 1)]
    lines.append(f"  -- on host {remote.host} (its namespace {remote.netns}, observed from "
                 "here)")
    for number, h in enumerate(far.hops, len(local.hops) + 1):
        lines.append(f"{number:3}  {h.kind:<6} {h.where:<{width}}  {h.detail}")
    seen = f" (seen as {far.seen_source} -> {far.seen_destination})" if far.seen_source else ""
    lines.append(f"verdict: {far.verdict}: {data['summary']}{seen}")
    if far.fix:
        lines.append(f"fix: {far.fix}")
    rest = tail.partition("\n\n")[2]  # what follows the verdict (a live trace's account)
    answer["text"] = "\n".join([*top, *lines]) + ("\n\n" + rest if rest else "")


PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


def _flows(packet: Packet) -> list[core.Flow]:
    """The host's conntrack entries towards the traced destination (read-only: a dump of
    the calling thread's namespace, which is the host's)."""
    try:
        entries = nftrace.connections(toward=(packet.l4proto, str(packet.daddr),
                                              packet.dport))
    except OSError:
        return []  # no conntrack here (the module is not loaded): nothing is held
    daddr = str(packet.daddr)
    return [core.Flow(PROTOCOLS[c.proto], c.orig, c.reply, c.replied) for c in entries
            if PROTOCOLS.get(c.proto) == packet.l4proto and c.orig[2] == daddr
            and c.orig[3] == packet.dport]


def _published(engine: Engine | Observer, every: list[Container]
               ) -> tuple[list[str], list[IPNetwork]]:
    """What portway publishes on this host (HOSTPORT/PROTO -> CONTAINER:PORT) and the
    subnets of its routed networks (which leave without masquerade on purpose); every:
    the store's containers."""
    shown = []
    for c in every:
        for p in c.ports:
            where = hostport(p.host_ip, p.host_port) if p.host_ip else str(p.host_port)
            shown.append(f"{where}/{p.protocol} -> {c.name}:{p.container_port}")
    routed = [sub.subnet for n in engine.store.networks() for sub in n.subnets
              if firewall.routed(n, sub.version)]
    return sorted(shown), routed


def _answer(engine: Engine | Observer, world: core.World, key: str, packet: Packet,
            result: core.Trace, label: str, dest: _Target, live: bool,
            far: _Remote | None = None) -> dict[str, Any]:
    data = result.as_dict()
    notes = list(dest.notes)
    if engine.host_netns:
        notes.insert(0, f"the host is network namespace {engine.host_netns}")
    notes += world.notes
    data["notes"] = notes
    data["family"] = f"ipv{packet.version}"
    data["bridge_netfilter"] = world.bridge_netfilter(packet.version)
    text = core.render(result)
    if notes:
        text = "\n".join(f"note: {n}" for n in notes) + "\n" + text
    if live:
        from portway.engine import live as live_trace

        data["live"] = live_trace.run(
            engine, world, key, packet, result, label, dest.label,
            None if far is None else live_trace.Far(far.host, far.netns, far.trace, far.why))
        text += "\n\n" + live_trace.render(data["live"])
    return {"trace": data, "text": text}


def _uplink_address(world: core.World, client: IPAddress,
                    host_ip: IPAddress | None) -> IPAddress:
    """The host address an outside client would connect to: the published address, or
    the address of the interface the client's packets arrive on (of the client's
    family)."""
    if host_ip is not None:
        return host_ip
    route = world.host.lookup(client)
    addr = world.host.first_address(route.dev, client.version, client) if route else None
    if route is not None and route.prefsrc is not None:
        addr = route.prefsrc
    if addr is None:
        raise InvalidInput(f"no host address faces {client}",
                           "give --from-ip an address beyond one of the host's interfaces")
    return addr
