"""Endpoints: a container's attachments to networks. Addresses (IPAM) and the driver
calls that plug a sandbox into a network and take it out.

Rules of this module:
1. An address is reserved by the store's UNIQUE(network, address) inside the caller's
   transaction: a rollback frees it. A per-network hint (a lower bound of the lowest
   free address) makes allocation ask the store about one address, not all of them;
   any release lowers it, a rolled-back allocation clears it (clear_hints).
2. A port without anti-spoofing entries sends nothing: the entries may go in before or
   after the driver's attach; on a failed attach both are undone here, unless the
   caller added the entries itself (guarded) and undoes them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from portway.core import firewall, gateways, ipam, names, runopts, validate
from portway.core.overlay import NO_CLUSTER, RACES, AddressRaced
from portway.engine.drivers import Sandbox
from portway.engine.drivers.bridge import BridgeDriver, endpoint_families
from portway.errors import Conflict, InvalidInput, PortwayError
from portway.model.types import (
    Container,
    Endpoint,
    IPAddress,
    IPInterface,
    IPNetwork,
    Network,
    Route,
)

if TYPE_CHECKING:
    from portway.engine.context import Host
    from portway.engine.drivers import PreparingDriver
    from portway.engine.sandboxes import SandboxHandle


class Endpoints:
    def __init__(self, host: Host) -> None:
        self.h = host
        # (network id, subnet) -> the lowest address that may be free
        self._hint: dict[tuple[str, IPNetwork], int] = {}

    def requested(self, container: Container, net: Network, ips: list[str]
                  ) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
        """The addresses asked for on net (at most one per family: Docker's --ip and
        --ip6), checked as _checked does."""
        asked = {a.version: a for a in self._checked(container, net, ips).values()}
        v4, v6 = asked.get(4), asked.get(6)
        return (v4 if isinstance(v4, ipaddress.IPv4Address) else None,
                v6 if isinstance(v6, ipaddress.IPv6Address) else None)

    def _checked(self, container: Container, net: Network, ips: list[str],
                 each_subnet: bool = False) -> dict[int, IPAddress]:
        """The addresses asked for on net, by the index of the subnet each is in: at most
        one per family (Docker), or with each_subnet one per subnet (Podman's
        static_ips); each of a family the network has, in one of its subnets, not its
        gateway or an auxiliary address, neither held nor reserved by another container
        (container's own reservation is its to use)."""
        store = self.h.store
        asked: dict[int, IPAddress] = {}
        families: set[int] = set()
        for text in ips:
            address = validate.parse_address("--ip" if ":" not in text else "--ip6", text)
            flag = "--ip" if address.version == 4 else "--ip6"
            if address.version in families and not each_subnet:
                raise InvalidInput(f"two {flag} addresses for network {net.name}",
                                   "give one address per family")
            families.add(address.version)
            mine = [i for i, s in enumerate(net.subnets) if s.version == address.version]
            if not mine:
                raise InvalidInput(f"{flag} {address}: network {net.name} has no "
                                   f"IPv{address.version} subnet",
                                   f"drop {flag}, or use a network with IPv{address.version}")
            index = next((i for i in mine if address in net.subnets[i].subnet), mine[0])
            sub = net.subnets[index]
            if len(mine) > 1 and address not in sub.subnet:
                where = ", ".join(str(net.subnets[i].subnet) for i in mine)
                raise InvalidInput(f"{flag} {address} is outside each of the subnets "
                                   f"{where} of network {net.name}",
                                   "pick an address in one of them")
            validate.check_host_address(flag, address, sub.subnet)
            if index in asked:
                raise InvalidInput(f"two addresses in subnet {sub.subnet} for network "
                                   f"{net.name}", "give one address per subnet")
            if address == sub.gateway:
                raise Conflict(f"{flag} {address} is the gateway of network {net.name}",
                               "pick another address")
            aux = {a: n for n, a in sub.aux_addresses}
            if address in aux:
                raise Conflict(f"{flag} {address} is the auxiliary address "
                               f"{aux[address]} of network {net.name}",
                               "pick another address")
            holder = store.address_holder(net.id, address, owner=container.id)
            if holder is not None and holder != container.id:
                other = store.find_container(holder)
                raise Conflict(f"address {address} is already in use on network "
                               f"{net.name}" + (f" by {other.name}" if other else ""),
                               f"pick another {flag}, or omit it")
            asked[index] = address
        return asked

    def new(self, container: Container, net: Network, index: int, ips: list[str],
            aliases: list[str], ifname: str | None = None,
            mac: str | None = None, host_ifname: str | None = None,
            eid: str | None = None) -> Endpoint:
        """An endpoint of container on net with its addresses reserved in the store (in
        the caller's transaction): on a Podman network one in each subnet, as netavark
        gives; on others one per family, as Docker gives (the one asked for in ips, else
        the lowest free one of the family's first subnet that has one). eid: its id, if
        made ahead (Sandboxes.early named its interface after it)."""
        store = self.h.store
        each_subnet = net.labels.get(firewall.PODMAN_LABEL) == "true"
        asked = self._checked(container, net, ips, each_subnet)
        # Docker 27: a container whose IPv6 is off (its --sysctl) gets no IPv6 address,
        # so neither /etc/hosts, DNS nor a published port names one.
        name = ifname or names.container_ifname(index)
        runopts.check_ipv6_off(container.config.sysctls, name, net.name,
                               {s.version for s in net.subnets},
                               any(a.version == 6 for a in asked.values()))
        skip = {6} if runopts.ipv6_off(container.config.sysctls, name) and \
            not each_subnet else set()
        cluster = self.h.cluster if net.driver == "overlay" else None
        if net.driver == "overlay" and cluster is None:
            raise InvalidInput(*NO_CLUSTER)
        # On an overlay network, other hosts' endpoints hold addresses too: the ones
        # seen so far are skipped. The claim, with the record, is one etcd transaction
        # once the plumbing is done (Cluster.publish); it settles races.

        def in_use(a: IPAddress) -> bool:
            return store.address_in_use(net.id, a) or \
                (cluster is not None and cluster.address_taken(net.id, a))

        addresses = self._allocate(net, asked, in_use, each_subnet, skip)
        endpoint = self._endpoint(container, net, index, addresses, asked, aliases,
                                  ifname, mac, host_ifname, eid)
        store.add_endpoint(endpoint)
        if cluster is not None:  # (last: a failure leaves nothing reserved)
            cluster.reserve(endpoint, container, net)
        return endpoint

    def _allocate(self, net: Network, asked: dict[int, IPAddress],
                  in_use: Callable[[IPAddress], bool],
                  each_subnet: bool = False,
                  skip: set[int] | None = None) -> list[IPInterface]:
        """The addresses of a new endpoint: asked holds the ones asked for, by subnet
        index. One per subnet (each_subnet), or one per family: the asked one's subnet,
        else the first subnet of the family with a free address. None of the families
        in skip."""
        addresses: list[IPInterface] = []
        # (families with an address, or none to have)
        done = {net.subnets[i].version for i in asked} | (skip or set())
        for i, sub in enumerate(net.subnets):
            if i in asked:
                address: IPAddress = asked[i]
            elif sub.version in done and not each_subnet:
                continue
            else:
                aux = {a: n for n, a in sub.aux_addresses}
                key = (net.id, sub.subnet)
                try:
                    address = ipam.first_free(
                        sub.subnet, sub.gateway,
                        lambda a: a in aux or in_use(a),  # noqa: B023
                        sub.ip_range, self._hint.get(key, 0))
                except Conflict:
                    if not each_subnet and any(s.version == sub.version
                                               for s in net.subnets[i + 1:]):
                        continue  # the family's next subnet may have one
                    raise
                self._hint[key] = int(address) + 1
            done.add(sub.version)
            addresses.append(ipaddress.ip_interface((address, sub.subnet.prefixlen)))
        return addresses

    def _endpoint(self, container: Container, net: Network, index: int,
                  addresses: list[IPInterface], asked: dict[int, IPAddress],
                  aliases: list[str], ifname: str | None, mac: str | None,
                  host_ifname: str | None, eid: str | None = None) -> Endpoint:
        store = self.h.store
        if mac is not None:
            user = next((e for e in store.endpoints(network_id=net.id) if e.mac == mac),
                        None)
            if user is not None:
                other = store.find_container(user.container_id)
                raise Conflict(f"MAC address {mac} is already in use on network {net.name}"
                               + (f" by {other.name}" if other else ""),
                               "give another --mac-address, or omit it")
        eid = eid or names.new_id()
        # A network without subnets (Podman's ipam driver none) gives no address: the
        # host end is not held to one, the MAC comes from the endpoint's id.
        endpoint = Endpoint(
            id=eid, container_id=container.id, network_id=net.id,
            ifname=ifname or names.container_ifname(index),
            host_ifname=host_ifname or (names.macvlan_name(eid) if net.driver == "macvlan"
                                        else names.host_veth_name(eid) if net.subnets
                                        else names.unchecked_veth_name(eid)),
            addresses=tuple(addresses),
            mac=mac or (names.mac_for(addresses[0].ip) if addresses else names.mac_for_id(eid)),
            aliases=tuple(aliases),
            requested=tuple(sorted(asked.values(), key=lambda a: a.version)))
        return endpoint

    def renumber(self, c: Container, old: Endpoint, net: Network,
                 taken: set[IPAddress]) -> Endpoint:
        """old, an endpoint of running c on overlay network net whose addresses in taken
        another host claimed while this host was away from the cluster store, given free
        ones instead (its other addresses kept): recorded here, its interface moved to
        them while the container runs (the MAC follows an address-derived one), with its
        anti-spoofing entries and published ports, and only then claimed in the store as
        any address, with its name and record in one etcd transaction (earlier, other
        hosts send to an address that does not answer). The caller writes the
        container's /etc files and DNS records. All or nothing: a failure leaves old as
        it was; a lost race for an address moves it again, to another."""
        h = self.h
        cluster = h.cluster
        assert cluster is not None
        # The addresses kept, by the index of the subnet each is in (as _allocate takes
        # them).
        keep: dict[int, IPAddress] = {
            i: a.ip for a in old.addresses if a.ip not in taken
            for i, s in enumerate(net.subnets) if a.ip in s.subnet}
        elsewhere = set(taken)

        def in_use(a: IPAddress) -> bool:
            return a in elsewhere or h.store.address_in_use(net.id, a) or \
                cluster.address_taken(net.id, a)

        derived = bool(old.addresses) and old.mac == names.mac_for(old.addresses[0].ip)
        generation = cluster.generation(old.id)
        # (A container whose IPv6 is off has none to be given anew either.)
        skip = {6} if runopts.ipv6_off(c.config.sysctls, old.ifname) else set()
        for _ in range(RACES):
            addresses = self._allocate(net, keep, in_use, skip=skip)
            new = replace(old, addresses=tuple(addresses),
                          mac=names.mac_for(addresses[0].ip) if derived else old.mac)
            try:
                self._move(c, old, new, net)
                break
            except AddressRaced as exc:
                # Another host claimed one of them first: it is skipped now (a kept one
                # is given up too), and the move made again with another.
                if cluster.generation(old.id) != generation:
                    raise Conflict(f"{c.name} on network {net.name} was given a new "
                                   "address meanwhile", "nothing to do") from None
                if exc.address is not None:
                    elsewhere.add(exc.address)
                    keep = {v: a for v, a in keep.items() if a != exc.address}
        else:
            raise Conflict(f"no address could be claimed on network {net.name}: other "
                           "hosts keep taking them", "try again")
        self._guard_moved(old, new)
        gone = [a.ip for a in old.addresses if a not in new.addresses]
        try:  # a running flow NATed to an old address would go on to its new holder
            h.fw.forget_connections(gone)
        except PortwayError:
            pass  # (they end when they time out)
        driver = h.driver(net)
        if new.mac != old.mac and isinstance(driver, BridgeDriver):
            try:  # the bridge learned the old MAC behind the port: no longer there
                driver.forget_mac(old)
            except PortwayError:
                pass  # (it ages out)
        return new

    def _move(self, c: Container, old: Endpoint, new: Endpoint, net: Network) -> None:
        """old's interface, anti-spoofing entries and published ports moved to new's
        addresses (and MAC), recorded here, and then new's addresses, name and record
        claimed in the store in one transaction (Cluster.publish): other hosts see it
        only once the interface has them. All or nothing: a failure, a lost race
        (AddressRaced) among them, leaves old as it was."""
        h = self.h
        cluster = h.cluster
        assert cluster is not None
        cluster.reserve(new, c, net)
        try:
            with h.sandbox_kernel.open(c.netns) as sandbox, h.store.transaction(), \
                    ExitStack() as undo:
                h.store.delete_endpoint(old.id)
                h.store.add_endpoint(new)
                h.fw.add_guard([new])
                undo.callback(self._guard_moved, new, old)
                h.sandbox_kernel.readdress(sandbox, old.ifname, old.addresses, new.addresses,
                                           new.mac)
                undo.callback(h.sandbox_kernel.readdress, sandbox, old.ifname,
                              new.addresses, old.addresses, old.mac)
                current = h.store.endpoints(container_id=c.id)
                before = h.publishing.published(
                    c, [old if e.id == old.id else e for e in current])
                after = h.publishing.published(c, current)
                if before != after:
                    h.fw.remove_ports(before)
                    undo.callback(h.fw.add_ports, before)
                    h.fw.add_ports(after)
                    undo.callback(h.fw.remove_ports, after)
                cluster.publish(c.id, only=new.id)
                undo.pop_all()
        except BaseException:
            self.clear_hints()
            cluster.release([new])
            raise

    def _guard_moved(self, old: Endpoint, new: Endpoint) -> None:
        """The anti-spoofing entries old has and new has not removed."""
        keep = firewall.render_guard_removal([new])
        gone = [cmd for cmd in firewall.render_guard_removal([old]) if cmd not in keep]
        if gone:
            self.h.fw.teardown(gone)

    def clear_hints(self) -> None:
        """After a rollback: what was allocated is free again."""
        self._hint.clear()

    def released(self, endpoints: list[Endpoint]) -> None:
        if self.h.cluster is not None:
            shared = [e for e in endpoints if self._overlay(e.network_id)]
            if shared:
                self.h.cluster.release(shared)
        for e in endpoints:
            for a in e.addresses:
                key = (e.network_id, a.network)
                hint = self._hint.get(key)
                if hint is not None and int(a.ip) < hint:
                    self._hint[key] = int(a.ip)
        # The host's conntrack entries of their addresses go with them (Docker's, on an
        # endpoint's removal): a flow that was let in (a published port, NATed or at the
        # container's address in routed mode) would otherwise stay established, and its
        # packets would be accepted as such by the next container given the address, at
        # a port it never published.
        gone = [a.ip for e in endpoints for a in e.addresses]
        if gone:
            try:
                self.h.fw.forget_connections(gone)
            except PortwayError:
                pass  # (they end when they time out)

    def _overlay(self, network_id: str) -> bool:
        net = self.h.store.find_network(network_id)
        return net is not None and net.driver == "overlay"

    def attach_running(self, sandbox: Sandbox, c: Container, endpoint: Endpoint,
                       net: Network, default_route: bool = False,
                       metric: int | None = None, routes: tuple[Route, ...] = ()) -> None:
        """attach (no default route unless asked, then with metric, and routes, as the
        driver's attach takes them), into the namespace of c, whose --sysctl are set already
        (network connect, gc's repair). An interface made there now takes the
        namespace's default settings: where c's --sysctl turns IPv6 off by default, one
        given an IPv6 address has it turned on (as Docker turns IPv6 on for each
        interface of a network with IPv6), the default kept."""
        if not (runopts.default_ipv6_off(c.config.sysctls) and
                any(a.version == 6 for a in endpoint.addresses)):
            self.attach(sandbox, c, endpoint, net, default_route, metric=metric,
                        routes=routes)
            return
        key = "net.ipv6.conf.default.disable_ipv6"
        kernel = self.h.sandbox_kernel
        kernel.set_sysctls(c.netns, {key: "0"})
        try:
            self.attach(sandbox, c, endpoint, net, default_route, metric=metric,
                        routes=routes)
        finally:
            kernel.set_sysctls(c.netns, {key: "1"})

    def attach(self, sandbox: Sandbox, container: Container, endpoint: Endpoint,
               net: Network, default_route: bool, guarded: bool = False,
               metric: int | None = None, routes: tuple[Route, ...] = (),
               prepared: tuple[int, int] | None = None) -> None:
        """One endpoint into the container's sandbox; guarded: its anti-spoofing entries
        are being added by the caller; metric and routes: as the driver's attach;
        prepared: what the driver's prepare made of it (Sandboxes.early)."""
        if not guarded:
            self.h.fw.add_guard([endpoint])
        try:
            driver = self.h.driver(net)
            if prepared is not None:
                cast("PreparingDriver", driver).attach(
                    sandbox, endpoint, net, default_route, hairpin=bool(container.ports),
                    metric=metric, routes=routes, prepared=prepared)
            else:
                driver.attach(sandbox, endpoint, net, default_route,
                              hairpin=bool(container.ports), metric=metric, routes=routes)
        except PortwayError as exc:
            if not guarded:
                self.h.fw.remove_guard([endpoint])
            raise exc.wrap(f"attach {container.name} to {net.name}") from None

    def detach(self, endpoints: list[Endpoint]) -> None:
        """The endpoints' interfaces and their anti-spoofing entries; missing counts as
        removed."""
        self.h.fw.remove_guard(endpoints)
        for e in endpoints:
            net = self.h.store.find_network(e.network_id)
            # A network row gone meanwhile (a half-removed state): the bridge driver's
            # detach needs only the endpoint.
            (self.h.driver(net) if net is not None else self.h.drivers["bridge"]).detach(e)

    def wants_route(self, sandbox: SandboxHandle, net: Network) -> bool:
        """For a runtime that leaves the choice to portway (Attachment.default_route
        None): whether an endpoint on net brings the sandbox its default route: if its
        network gives one (core/gateways.py) and the sandbox has none of the network's
        first family yet."""
        return gateways.gives_default_route(net) and \
            not self.h.sandbox_kernel.has_default_route(sandbox, net.primary.version)

    def in_order(self, container_id: str, endpoints: list[Endpoint]
                 ) -> list[tuple[Endpoint, Network]]:
        """A container's endpoints with their networks, in the order it joined the
        networks (its configuration's positions: run's --network flags, then each
        connect; the interface names follow a reconnect's first free one, not that
        order); a runtime's container without one (Podman's), by interface name. An
        endpoint whose network row is gone is left out."""
        positions = {cfg.network_id: cfg.position
                     for cfg in self.h.store.configs(container_id=container_id)}
        out: list[tuple[Endpoint, Network]] = []
        for e in sorted(endpoints, key=lambda e: (positions.get(e.network_id, 1 << 30),
                                                  e.ifname)):
            net = self.h.store.find_network(e.network_id)
            if net is not None:
                out.append((e, net))
        return out

    def route(self, sandbox: SandboxHandle, ordered: list[tuple[Endpoint, Network]],
              only: Endpoint | None = None, podman: bool = False) -> None:
        """The default route of each family the sandbox has none of, via the network
        core/gateways.py names for it among ordered (in_order's): after a connect (the
        new network routes the families no earlier one does), a disconnect (the next
        network takes the families the one that left routed), a re-made interface (only:
        just the families that endpoint routes; the others' interfaces may still be
        missing); podman: a Podman container's (core/gateways.py, rule 3)."""
        kernel = self.h.sandbox_kernel
        for version, i in sorted(gateways.route_owners([n for _, n in ordered],
                                                        podman).items()):
            endpoint, net = ordered[i]
            sub = net.of_version(version)
            if sub is None or (only is not None and endpoint.id != only.id) or \
                    version not in endpoint_families(net, endpoint):
                continue
            if not kernel.has_default_route(sandbox, version):
                # A Podman container's with its network's metric, as netavark's.
                kernel.set_default_route(sandbox, endpoint.ifname, sub.gateway,
                                         gateways.metric(net, version) if podman else None)

    def reroute(self, c: Container, remaining: list[Endpoint]) -> None:
        """After a detach, give the container a default route again, per family, if it
        lost it (route)."""
        kernel = self.h.sandbox_kernel
        if not kernel.exists(c.netns):
            return
        with kernel.open(c.netns) as sandbox:
            self.route(sandbox, self.in_order(c.id, remaining),
                       podman=c.runtime == "podman")
