"""`portway trace`: record the kernel state a path depends on, then reason over it.

The recording (interfaces, addresses, routes, sockets, every nftables table,
sysctls; the host namespace and each container's) is the only kernel-facing
part; core/trace.py does the reasoning on it.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from portway.core import trace as core
from portway.core.nftsim import Packet
from portway.errors import InvalidInput, NotFound
from portway.kernel import links, netns, observe
from portway.kernel.nft import Nft
from portway.model.types import Container, IPAddress

if TYPE_CHECKING:
    from portway.engine import Engine

HOST = "host"
OUTSIDE_DEFAULT = "203.0.113.10"  # TEST-NET-3: a client somewhere beyond the uplink
SOURCE_PORT = 40000


def _space(key: str, label: str, ipr: IPRoute, rules: list[dict[str, Any]],
           peers: dict[str, tuple[str, str]]) -> core.Space:
    """Links, addresses and routes through ipr; sockets and sysctls of the calling
    thread's namespace (the caller runs this inside the namespace)."""
    ifaces = []
    by_index = {link.index: link for link in links.observe_links(ipr)}
    for link in by_index.values():
        addrs = tuple(links.observe_addresses(ipr, link.index))
        master = by_index[link.master].ifname if link.master in by_index else ""
        localnet = observe.read_sysctl(f"net.ipv4.conf.{link.ifname}.route_localnet") == "1"
        ifaces.append(core.Iface(name=link.ifname, index=link.index, kind=link.kind,
                                 mac=link.mac, up=link.up, addrs=addrs, master=master,
                                 peer=peers.get(link.ifname), route_localnet=localnet,
                                 link_index=link.peer if link.kind == "veth" else 0))
    routes = [core.Route(dst=ipaddress.IPv4Network(r["dst"]), dev=r["dev"],
                         gateway=ipaddress.ip_address(r["gateway"]) if r["gateway"] else None,
                         prefsrc=ipaddress.ip_address(r["prefsrc"]) if r["prefsrc"] else None,
                         kind=r["kind"], metric=r["metric"])
              for r in observe.route_table(ipr)]
    listeners = {(proto, addr, port) for proto in ("tcp", "udp")
                 for addr, port in observe.listening(proto)}
    return core.Space(key=key, label=label, ifaces=ifaces, routes=routes,
                      listeners=listeners, ruleset=rules,
                      forwarding=observe.read_sysctl("net.ipv4.ip_forward") == "1",
                      neighbours=observe.neighbours(ipr), fdb=observe.bridge_fdb(ipr))


def observe_foreign(engine: Engine, world: core.World, name: str) -> str:
    """Add a named namespace portway did not make to world; its key."""
    key = f"ns:{name}"

    def record() -> core.Space:
        ipr, nft = IPRoute(), Nft()
        try:
            return _space(key, f"namespace {name}", ipr, nft.list_ruleset(), {})
        finally:
            ipr.close()
            nft.close()

    space = netns.in_netns(netns.netns_path(name), record)
    core.pair_veths(world.host, space)
    world.spaces[key] = space
    return key


def observe_world(engine: Engine) -> tuple[core.World, dict[str, Container]]:
    containers = {os.path.basename(c.netns): c for c in engine.store.containers()
                  if c.network_mode != "host" and netns.netns_exists(os.path.basename(c.netns))}
    host_peers: dict[str, tuple[str, str]] = {}
    inner_peers: dict[str, dict[str, tuple[str, str]]] = {}
    for key, c in containers.items():
        for e in engine.store.endpoints(container_id=c.id):
            host_peers[e.host_ifname] = (key, e.ifname)
            inner_peers.setdefault(key, {})[e.ifname] = (HOST, e.host_ifname)
    host = _space(HOST, "host", engine.host, engine.nft.list_ruleset(), host_peers)
    bridge_nf = observe.read_sysctl("net.bridge.bridge-nf-call-iptables") == "1"
    spaces: dict[str, core.Space] = {}
    for key, c in containers.items():
        def record(c: Container = c, key: str = key) -> core.Space:
            # Both open their netlink sockets here, inside the container's namespace.
            ipr, nft = IPRoute(), Nft()
            try:
                return _space(key, f"container {c.name}", ipr, nft.list_ruleset(),
                              inner_peers.get(key, {}))
            finally:
                ipr.close()
                nft.close()
        spaces[key] = netns.in_netns(c.netns, record)
    return core.World(host=host, spaces=spaces, bridge_nf=bridge_nf), containers


def _split_target(text: str) -> tuple[str, int | None, str]:
    """NAME-or-IP[:PORT][/PROTO]"""
    proto = "tcp"
    if "/" in text:
        text, _, proto = text.rpartition("/")
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"unknown protocol {proto!r} in the destination",
                               "use /tcp or /udp")
    port: int | None = None
    if ":" in text:
        text, _, raw = text.rpartition(":")
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise InvalidInput(f"invalid port {raw!r} in the destination",
                               "give a port between 1 and 65535, e.g. web:80")
        port = int(raw)
    if not text:
        raise InvalidInput("the destination is empty", "give NAME[:PORT] or IP[:PORT]")
    return text, port, proto


def run(engine: Engine, source: str, destination: str, from_ip: str | None,
        live: bool = False) -> dict[str, Any]:
    name, port, proto = _split_target(destination)
    if from_ip is not None:
        try:
            ipaddress.IPv4Address(from_ip)
        except ValueError:
            raise InvalidInput(f"invalid --from-ip {from_ip!r}",
                               "give an IPv4 address, e.g. 203.0.113.7") from None
        if source != "outside":
            raise InvalidInput("--from-ip is for an outside source",
                               "use it with 'portway trace outside ...'")
    if port is None:
        raise InvalidInput(f"no port in {destination!r}",
                           f"say which port: {name}:80, or {name}:53/udp")
    world, containers = observe_world(engine)
    by_name = {c.name: key for key, c in containers.items()}
    notes: list[str] = []

    if source in ("host", "outside"):
        src_key = source
    elif source.startswith("ns:"):
        ns_name = source[3:]
        if not ns_name or "/" in ns_name or ns_name in (".", "..") or \
                not netns.netns_exists(ns_name):
            raise NotFound(f"no network namespace {ns_name!r}",
                           "give one that 'ip netns list' shows, as ns:NAME")
        src_key = observe_foreign(engine, world, ns_name)
    elif source in by_name:
        src_key = by_name[source]
    else:
        c = engine.store.find_container(source)
        if c is None or c.network_mode == "host":
            raise NotFound(f"no such source {source!r}",
                           "give a container name, 'host' or 'outside'")
        src_key = os.path.basename(c.netns)
        if src_key not in containers:
            raise NotFound(f"container {c.name} has no network namespace",
                           "run 'portway gc' to repair it")

    daddr: IPAddress
    dport = port
    dst_label = destination
    try:
        daddr = ipaddress.ip_address(name)
    except ValueError:
        target = engine.h.container(name)
        eps = engine.store.endpoints(container_id=target.id)
        if not eps:
            raise InvalidInput(f"container {target.name} has no address on a bridge network",
                               "trace to an IP address instead") from None
        shared = []
        if src_key in containers:
            mine = {e.network_id for e in
                    engine.store.endpoints(container_id=containers[src_key].id)}
            shared = [e for e in eps if e.network_id in mine]
        chosen = min(shared or eps, key=lambda e: e.ifname)
        daddr = chosen.address
        published = next((p for p in target.ports if p.container_port == port
                          and p.protocol == proto), None)
        if src_key == "outside":
            if published is not None:
                daddr, dport = _uplink_address(world, from_ip, published.host_ip), \
                    published.host_port
                where = f"{published.host_ip}:{published.host_port}" if published.host_ip \
                    else f"port {published.host_port} of every host address"
                notes.append(f"{target.name}'s {port}/{proto} is published on {where}: the "
                             f"client connects to {daddr}:{dport}")
            else:
                notes.append(f"{port}/{proto} of {target.name} is not published: the client "
                             "tries its address directly")
        dst_label = f"{target.name} {daddr}:{dport}"

    if src_key == "outside":
        client = ipaddress.ip_address(from_ip or OUTSIDE_DEFAULT)
        route = world.host.lookup(client)
        if route is None:
            raise InvalidInput(f"the host has no route to {client}",
                               "give --from-ip an address beyond one of its interfaces")
        packet = Packet(l4proto=proto, saddr=client, daddr=daddr, sport=SOURCE_PORT,
                        dport=dport, iif=route.dev)
        label = f"outside {client}"
        key = "outside"
    else:
        key = world.host.key if src_key == "host" else src_key
        packet = Packet(l4proto=proto, saddr=ipaddress.IPv4Address(0), daddr=daddr,
                        sport=SOURCE_PORT, dport=dport)
        label = "host" if src_key == "host" else world.spaces[src_key].label
    result = core.trace(world, key, packet, label, dst_label)
    data = result.as_dict()
    if engine.host_netns:
        notes.insert(0, f"the host is network namespace {engine.host_netns}")
    data["notes"] = notes
    data["bridge_netfilter"] = world.bridge_nf
    text = core.render(result)
    if notes:
        text = "\n".join(f"note: {n}" for n in notes) + "\n" + text
    if live:
        from portway.engine import live as live_trace

        data["live"] = live_trace.run(engine, world, key, packet, result, label, dst_label)
        text += "\n\n" + live_trace.render(data["live"])
    return {"trace": data, "text": text}


def _uplink_address(world: core.World, from_ip: str | None,
                    host_ip: IPAddress | None) -> IPAddress:
    """The host address an outside client would connect to: the published address, or
    the address of the interface the client's packets arrive on."""
    if host_ip is not None:
        return host_ip
    client = ipaddress.ip_address(from_ip or OUTSIDE_DEFAULT)
    route = world.host.lookup(client)
    addr = world.host.first_address(route.dev) if route else None
    if route is not None and route.prefsrc is not None:
        addr = route.prefsrc
    if addr is None:
        raise InvalidInput(f"no host address faces {client}",
                           "give --from-ip an address beyond one of the host's interfaces")
    return addr
