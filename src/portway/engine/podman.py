"""Podman's containers, networked by portway through netavark's contract.

Podman owns the container's namespace and processes; portway owns its network:
the network (created from Podman's definition on first use, removed with its
last container), the veth pairs, the published ports, the anti-spoofing
entries and the DNS records (names, aliases and NAME.dns.podman, on the
gateway, as aardvark-dns answers them). The containers are stored with
runtime "podman", so `portway ps`, `show` and `trace` see them, and portway's
own rm/stop/exec leave them alone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from portway.core import ipam, macvlan, names
from portway.core import netavark as contract
from portway.core.firewall import PODMAN_LABEL
from portway.engine.containers import Attachment
from portway.engine.context import now
from portway.errors import Conflict, InvalidInput, NotFound, TeardownErrors
from portway.model.types import Container, IPAddress, Network

if TYPE_CHECKING:
    from portway.engine.context import Host as Engine

LABEL = PODMAN_LABEL  # on the networks portway made from Podman's definitions


def _network(engine: Engine, info: contract.NetworkInfo) -> Network:
    """portway's network for Podman's definition: the existing one, or a new one."""
    if info.driver == macvlan.DRIVER:
        return _macvlan_network(engine, info)
    net = next((n for n in engine.store.networks() if n.name == info.name), None)
    if net is not None:
        if (net.id, [(s.subnet, s.gateway) for s in net.subnets], net.bridge) != \
                (info.id, [(s.subnet, s.gateway) for s in info.subnets], info.bridge):
            raise Conflict(f"network {info.name} exists with another definition "
                           f"({', '.join(str(s.subnet) for s in net.subnets)}, bridge "
                           f"{net.bridge})",
                           "remove the old one (portway network rm) or rename the new one")
        synced = {k: v for k, v in contract.network_options(
            info, _bridge_dns(engine, info)).items() if k in contract.SYNCED_KEYS}
        if any(net.options.get(k) != synced.get(k) for k in contract.SYNCED_KEYS):
            # `podman network update --dns-add/--dns-drop` since the last setup, or the
            # addresses of an unmanaged bridge changed (or a state dir written before
            # the routes were kept).
            dns = any(net.options.get(k) != synced.get(k) for k in contract.DNS_KEYS)
            kept = {k: v for k, v in net.options.items() if k not in contract.SYNCED_KEYS}
            net = replace(net, options={**kept, **synced})
            with engine.store.transaction():
                engine.store.set_network_options(net.id, net.options)
            if dns:
                engine.containers.publish_dns()
        return net
    if info.unmanaged:
        # The caller's own bridge: attached to, never made, changed or deleted; its
        # addresses (and so its subnets) are the caller's.
        link = engine.facts.link_kind_mtu(info.bridge)
        if link is None:
            raise NotFound("in unmanaged mode, the bridge must already exist on the host: "
                           f"{info.bridge}: No such device",
                           f"create it first (ip link add {info.bridge} type bridge)")
        if link[0] != "bridge":
            raise Conflict(f"bridge interface {info.bridge} already exists but is a "
                           f"{(link[0] or 'plain').capitalize()} interface",
                           "give the network the name of a bridge")
        mtu = info.mtu or link[1]
        served = _bridge_dns(engine, info)
    else:
        served = ()
        if engine.facts.link_exists(info.bridge):
            raise Conflict(f"interface {info.bridge} already exists and is not portway's",
                           "give the Podman network another network_interface, or use "
                           "mode=unmanaged to attach to a bridge of your own")
        taken = engine.networks.taken_ranges()
        for s in info.subnets:
            ipam.check_subnet_free(s.subnet, taken)
        # No mtu option: the MTU of the host's default-route interface (netavark
        # 1.16), or the kernel's default where there is no default route.
        mtu = info.mtu or engine.facts.default_route_mtu() or 1500
    network = Network(id=info.id, name=info.name, subnets=info.subnets,
                      bridge=info.bridge, internal=info.internal, mtu=mtu,
                      options=contract.network_options(info, served), labels={LABEL: "true"},
                      created=now())
    engine.networks.install(network)
    engine.containers.publish_dns()  # the DNS server listens on the new gateways too
    return network


def _macvlan_network(engine: Engine, info: contract.NetworkInfo) -> Network:
    """A macvlan network: its parent in the options (as a CLI one's), nothing of the
    host's made; the parent checked first, with netavark's words (its setup looks the
    parent up by name, or takes the first default route's interface)."""
    options = {**contract.network_options(info), macvlan.PARENT_OPTION: info.bridge,
               macvlan.MODE_OPTION: info.macvlan_mode}
    net = next((n for n in engine.store.networks() if n.name == info.name), None)
    if net is not None:
        if (net.id, net.driver, [(s.subnet, s.gateway) for s in net.subnets],
                macvlan.parent(net)) != (info.id, macvlan.DRIVER,
                                         [(s.subnet, s.gateway) for s in info.subnets],
                                         info.bridge):
            raise Conflict(f"network {info.name} exists with another definition "
                           f"({net.driver}, {', '.join(str(s.subnet) for s in net.subnets)})",
                           "remove the old one (portway network rm) or rename the new one")
        return net
    if info.bridge and not engine.facts.link_exists(info.bridge):
        raise NotFound("Netlink error: No such device (os error 19)",
                       f"the parent interface {info.bridge} is not on the host: give the "
                       "network an existing one (podman network create -o parent=IF)")
    network = Network(id=info.id, name=info.name, subnets=info.subnets,
                      bridge=names.bridge_name(info.id), driver=macvlan.DRIVER,
                      internal=info.internal, mtu=info.mtu, options=options,
                      labels={LABEL: "true"}, created=now())
    engine.driver(network).validate(network)  # none given: a default route's interface
    engine.networks.install(network)
    return network


def _bridge_dns(engine: Engine, info: contract.NetworkInfo) -> tuple[IPAddress, ...]:
    """Where DNS is served on an unmanaged bridge with DNS: its own addresses (as
    aardvark-dns binds them; the gateway may be a router of the user's)."""
    if not (info.unmanaged and info.dns_enabled):
        return ()
    found = tuple(engine.facts.link_addresses(info.bridge))
    if not found:
        raise InvalidInput(f"bridge '{info.bridge}' in unmanaged mode has no usable IP "
                           "addresses. Aardvark-dns requires at least one address (should "
                           "not be an IPv6 link-local address) to bind to. Please add an IP "
                           "address or disable DNS for this network (--disable-dns).",
                           f"ip addr add ADDRESS/PREFIX dev {info.bridge}")
    return found


def _check_netns(path: str) -> None:
    if not os.path.isabs(path) or not os.path.exists(path):
        raise NotFound(f"network namespace {path} does not exist",
                       "give the path of the container's namespace (e.g. /run/netns/NAME)")


def _check_dhcp_proxy(opts: contract.Options) -> None:
    """netavark asks its DHCP proxy for a lease on a dhcp network; portway does not
    speak the proxy's protocol yet. Either way nothing is set up: without the proxy,
    netavark's own error; with it, portway's."""
    if not any(opts.networks[a.network].ipam == "dhcp" for a in opts.attachments):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(contract.DHCP_PROXY_SOCKET)
        except OSError as exc:
            raise contract.dhcp_unavailable(
                f"{os.strerror(exc.errno or 0)} (os error {exc.errno})") from None
    raise InvalidInput("the dhcp ipam driver is not supported by portway yet (netavark's "
                       "DHCP proxy is running, but portway does not ask it for leases)",
                       "give the network a subnet (ipam driver host-local), or none")


def setup(engine: Engine, netns_path: str, options: Any) -> dict[str, Any]:
    """netavark's setup: {"status": what netavark prints, one block per network,
    "warnings": what it logs and goes on (portway-netavark writes them to stderr)}."""
    opts = contract.parse_options(options)
    _check_netns(netns_path)
    _check_dhcp_proxy(opts)
    with engine.lock:
        existing = next((c for c in engine.store.containers() if c.id == opts.container_id),
                        None)
        if existing is not None and existing.runtime != "podman":
            raise Conflict(f"container id {opts.container_id[:12]} belongs to portway",
                           "use another container id")
        if existing is not None and existing.netns != netns_path:
            forget(engine, existing, None)  # a restart: the old namespace is gone
            existing = None
        before = {n.id for n in engine.store.networks()}
        try:
            return {"status": _setup(engine, netns_path, opts, existing),
                    "warnings": list(opts.warnings)}
        except BaseException:
            # A network this call made and no container uses goes again: a failed setup
            # leaves nothing behind.
            for net in engine.store.networks():
                if net.id not in before and not engine.store.endpoints(network_id=net.id):
                    engine.networks.remove([net.id])
            raise


def _setup(engine: Engine, netns_path: str, opts: contract.Options,
           existing: Container | None) -> dict[str, Any]:
    nets = {a.network: _network(engine, opts.networks[a.network])
            for a in opts.attachments}
    have = {e.network_id for e in engine.store.endpoints(container_id=opts.container_id)}
    taken = {e.host_ifname for e in engine.store.endpoints()}
    for a in opts.attachments:
        if a.host_ifname and nets[a.network].id not in have and \
                (a.host_ifname in taken or engine.facts.link_exists(a.host_ifname)):
            raise Conflict(f"create veth pair: interface {a.ifname} already exists on "
                           f"container namespace or {a.host_ifname} exists on host "
                           "namespace", "give another host_interface_name")
    container = existing or Container(
        id=opts.container_id, name=opts.container_name, hostname=opts.container_name,
        command=(), netns=netns_path, status="running", dns=opts.dns_servers,
        created=now(), runtime="podman")
    if existing is None and opts.ports:
        # Podman holds its containers' host ports itself (conmon binds them).
        container = replace(container, ports=engine.publishing.resolve(opts.ports,
                                                                        hold=False))
    # In the order core/gateways.py takes a Podman container's networks (Endpoints.
    # in_order: by interface name), not the caller's (Podman's networks object, by
    # network name): of networks of equal metrics, the first one's default route is
    # the one the kernel keeps (a later one's is refused as the same route), and the
    # one doctor, gc and the published ports go by.
    attachments = sorted(opts.attachments, key=lambda a: a.ifname)
    endpoints = engine.containers.attach_sandbox(container, [
        Attachment(network=nets[a.network], ips=tuple(str(ip) for ip in a.static_ips),
                   aliases=tuple(a.aliases), ifname=a.ifname, mac=a.static_mac,
                   host_ifname=a.host_ifname, **_routing(opts.networks[a.network]))
        for a in attachments], new=existing is None)
    # netavark's macvlan driver answers no DNS servers at all (not even the container's).
    return {a.network: contract.status_block(opts.networks[a.network], e.ifname, e.mac,
                                             e.addresses, opts.dns_servers
                                             if opts.networks[a.network].driver == "bridge"
                                             else (),
                                             contract.dns_addresses(nets[a.network]))
            for a, e in zip(attachments, endpoints, strict=True)}


def _routing(info: contract.NetworkInfo) -> dict[str, Any]:
    """netavark's routes for a container on the network: a default route per family via
    the gateway with the network's metric (unless internal or no_default_route), as
    every network gives one (the lowest metric wins; of equal ones, the first
    network's), and the network's static routes."""
    return {"default_route": not info.internal and not info.no_default_route,
            "metric": info.metric, "routes": info.routes}


def teardown(engine: Engine, netns_path: str, options: Any) -> dict[str, Any]:
    """Undo setup for the networks named (all when none is); a container that is not
    there is already torn down (no error, unlike netavark 1.4)."""
    opts = contract.parse_options(options)
    with engine.lock:
        c = next((c for c in engine.store.containers() if c.id == opts.container_id), None)
        if c is None or c.runtime != "podman":
            return {}
        # The networks' static routes first, as netavark does: a route that does not go
        # through the veth (blackhole, unreachable, prohibit) stays when the veth goes.
        routes = tuple(r for a in opts.attachments
                       for r in opts.networks[a.network].routes)
        errors: list[str] = []
        if routes and engine.sandbox_kernel.exists(c.netns):
            with engine.sandbox_kernel.open(c.netns) as sandbox:
                errors = engine.sandbox_kernel.delete_routes(sandbox, routes)
        forget(engine, c, {a.network for a in opts.attachments} or None)
        if errors:
            raise TeardownErrors(f"tear down {c.name}", errors)
        return {}


def forget(engine: Engine, c: Container, networks: set[str] | None) -> None:
    """c's endpoints on the named networks (all when None) gone; a network portway made
    for Podman goes with its last container (as netavark removes the bridge)."""
    for nid in engine.containers.detach_sandbox(c, networks):
        net = engine.store.find_network(nid)
        if net is not None and net.labels.get(LABEL) == "true" and \
                not engine.store.endpoints(network_id=nid):
            engine.networks.remove([net.id])


def create(engine: Engine, options: Any) -> dict[str, Any]:
    """netavark create: Podman's network definition, validated and completed as netavark
    completes it (core/netavark_create.py), avoiding what portway and the host use."""
    from portway.core import netavark_create

    with engine.lock:
        taken = engine.networks.taken_ranges()
        bridges = {n.bridge for n in engine.store.networks()}
        return netavark_create.complete(
            options, taken,
            lambda name: name in bridges or engine.facts.link_exists(name),
            lambda avoid: ipam.pick_subnet6(avoid, engine.networks.ula_global_id()),
            now(), engine.facts.link_exists)


def update(engine: Engine, network: str, dns_servers: list[str]) -> dict[str, Any]:
    """netavark update NETWORK --network-dns-servers ...: the network's own upstream
    resolvers (none: the host's again), which its containers' queries go to unless a
    container has servers of its own. A network portway has not set up yet is no error
    (as netavark: the next setup brings Podman's updated definition)."""
    from portway.core import validate

    servers = validate.check_dns_servers([s for s in dns_servers if s])
    with engine.lock:
        net = next((n for n in engine.store.networks() if n.name == network), None)
        if net is None or contract.DNS_ENABLED not in net.options:
            return {}
        options = {**net.options, contract.DNS_SERVERS: ",".join(servers)}
        with engine.store.transaction():
            engine.store.set_network_options(net.id, options)
        engine.containers.publish_dns()
        return {}
