"""gc: compare the store (the truth) with the kernel (a cache of it) and repair drift.

Each finding is a line of the report; with dry_run nothing is changed and the
lines say what would be done. Kernel objects are ours only if they carry this
instance's owner tag (a link alias, or the alias of lo inside a namespace).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from portway.core import gateways, names
from portway.core import netavark as contract
from portway.engine.drivers.bridge import endpoint_families, onlink_subnets
from portway.errors import PortwayError
from portway.kernel import links, netns, procs
from portway.model.types import Container, Endpoint, IPAddress, IPInterface, IPNetwork, Network

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from portway.engine import Engine


class Report:
    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.lines: list[str] = []

    def problem(self, what: str) -> None:
        """A difference gc cannot repair by itself: reported either way."""
        self.lines.append(what)

    def act(self, what: str, fix: Callable[[], object]) -> None:
        if self.dry_run:
            self.lines.append(f"would {what}")
            return
        try:
            fix()
            self.lines.append(what)
        except (PortwayError, OSError) as exc:
            self.lines.append(f"failed to {what}: {exc}")


def gc(engine: Engine, dry_run: bool) -> list[str]:
    report = Report(dry_run)
    _finished_containers(engine, report)
    _stopped_containers(engine, report)
    _networks(engine, report)
    _firewall(engine, report)  # before the sandboxes: endpoints add to its sets
    _sandboxes(engine, report)
    _dns(engine, report)
    _held_ports(engine, report)
    _unknown_links(engine, report)
    if not engine.rootless:
        # A rootless user's daemon makes no namespace (Podman makes its containers'),
        # and can enter none of the machine's named ones: looking at each of them (the
        # daemon's every start runs gc) would only make a user's first container wait.
        _unknown_namespaces(engine, report)
    _trace_leftovers(engine, report)
    return report.lines


def _finished_containers(engine: Engine, report: Report) -> None:
    for c in engine.store.containers():
        c = engine.h.refresh(c)
        if c.status == "exited" and c.auto_remove:
            report.act(f"remove container {c.name}: its process ended and it was run with --rm",
                       partial(engine.h.containers.remove, c))


def _stopped_containers(engine: Engine, report: Report) -> None:
    """A stopped container has no networking (engine/lifecycle.py); one that still has
    some (portwayd died while releasing it) gives it back now."""
    for c in engine.store.containers():
        if c.runtime == "portway" and c.networked and c.status == "exited":
            report.act(f"release the networking of stopped container {c.name} (its "
                       "namespace, endpoints, published ports and names)",
                       partial(engine.h.containers.release, c))


def _networks(engine: Engine, report: Report) -> None:
    """Each network's segment as its driver observes it."""
    for n in engine.store.networks():
        driver = engine.h.driver(n)
        for repair in driver.observe(n):
            report.act(repair, partial(driver.ensure, n))


def _firewall(engine: Engine, report: Report) -> None:
    """The shared tables' base and this instance's own chains and elements, rule by rule
    and element by element as the store describes them; nothing another portway owns.
    Without any network of its own, the tables go if nobody else uses them either."""
    networks, endpoints = engine.store.networks(), engine.store.endpoints()
    known = {n.id for n in networks} | {e.id for e in endpoints} | \
        {c.id for c in engine.store.containers()}
    for repair in engine.fw.plan(networks, engine.all_published(), endpoints, known):
        report.act(repair.what, partial(engine.fw.repair, repair))
    if not engine.store.networks() and engine.fw.removable():
        report.act("delete the tables inet, bridge and arp portway: no portway here has "
                   "anything in them", engine.fw.release)


def _held_ports(engine: Engine, report: Report) -> None:
    """Every published host port held by a socket of the daemon's (engine/ports.py); one
    that something else has bound since is shadowed, and said so."""
    from portway.core.ports import format_mapping

    for c in engine.store.containers():
        if c.runtime != "portway" or not c.networked or c.status == "exited":
            continue  # Podman holds its own; a stopped container has given them back
        for p in c.ports:
            if engine.ports.holds(p):
                continue
            try:
                engine.ports.reserve(p)
            except OSError as exc:
                report.problem(f"host port {format_mapping(p)} of container {c.name} is "
                               f"shadowed: {exc.strerror}; something else in the host "
                               f"namespace has bound it (ss -aenp 'sport = :{p.host_port}'): "
                               "stop it, then run 'portway gc'")
                continue
            if report.dry_run:
                engine.ports.release(p)
                report.lines.append(f"would hold host port {format_mapping(p)} of "
                                    f"container {c.name} again")
            else:
                report.lines.append(f"hold host port {format_mapping(p)} of container "
                                    f"{c.name} again")


def _dns(engine: Engine, report: Report) -> None:
    """A DNS server with the store's records while any network exists, none otherwise."""
    has_networks = bool(engine.store.networks())
    if has_networks and not engine.dns.running():
        report.act("start the DNS server: it is not running", engine.dns.publish)
    elif not has_networks and engine.dns.running():
        report.act("stop the DNS server: no network needs it", engine.dns.stop)
    elif has_networks and not report.dry_run:
        engine.dns.publish()  # the records, as the store has them (quietly: not drift)


def _sandboxes(engine: Engine, report: Report) -> None:
    for c in engine.store.containers():
        if c.network_mode in ("host", "container") or not c.networked or \
                c.status == "exited":
            # The namespace is the host's, or another container's; a stopped container
            # has none (_stopped_containers).
            continue
        endpoints = engine.store.endpoints(container_id=c.id)
        ns_name = os.path.basename(c.netns)
        if c.runtime == "podman" and not netns.sandbox_exists(c.netns):
            report.act(f"forget Podman container {c.name}: its namespace {c.netns} is gone "
                       "(Podman did not call teardown)",
                       lambda c=c: _forget_podman(engine, c))  # type: ignore[misc]
            continue
        if not netns.sandbox_exists(c.netns):
            report.act(f"re-create the network namespace of container {c.name} and its "
                       f"{len(endpoints)} endpoint(s): it is missing",
                       lambda c=c, e=endpoints: _rebuild(engine, c, e))  # type: ignore[misc]
            continue
        broken = [e for e in endpoints if not _endpoint_ok(engine, c, e)]
        for e in broken:
            addrs = ", ".join(str(a.ip) for a in e.addresses)
            report.act(f"re-create endpoint {e.host_ifname} ({e.ifname}, {addrs}) of "
                       f"container {c.name}: it is missing or incomplete",
                       lambda c=c, e=e: _reattach(engine, c, e))  # type: ignore[misc]
        if not broken:
            for what, fix in _missing_routes(engine, c, endpoints):
                report.act(what, fix)
        etc = os.path.join(netns.ETC_NETNS, ns_name)
        missing = [f for f in ("hosts", "resolv.conf") if not os.path.exists(f"{etc}/{f}")]
        if c.runtime == "portway" and missing:
            report.act(f"rewrite /etc/netns/{ns_name} files of container {c.name}",
                       partial(engine.h.sandboxes.write_files, c))


def _forget_podman(engine: Engine, c: Container) -> None:
    from portway.engine import podman

    podman.forget(engine.h, c, None)


def _endpoint_ok(engine: Engine, c: Container, e: Endpoint) -> bool:
    lan = e.host_ifname.startswith(names.MACVLAN_PREFIX)  # no host end: a macvlan device
    if not lan:
        host_end = links.observe_link(engine.host, e.host_ifname)
        if host_end is None or not host_end.master or not host_end.up:
            return False
        if links.observe_ipv6_conf(e.host_ifname, "disable_ipv6") == "0":
            return False  # its IPv6 stack would take what the container sends to 802.1 groups
    cont = netns.open_ipr(c.netns)
    try:
        inner = links.observe_link(cont, e.ifname)
        if inner is None or (lan and (inner.kind != "macvlan" or not inner.up)):
            return False
        have = {a.ip for a in links.observe_addresses(cont, inner.index)} | \
            {a.ip for a in links.observe_addresses6(cont, inner.index)}
        return all(a.ip in have for a in e.addresses)
    finally:
        cont.close()


def _missing_routes(engine: Engine, c: Container, endpoints: list[Endpoint]
                    ) -> list[tuple[str, Callable[[], object]]]:
    """The routes of either family the container's endpoints give it and it has lost: a
    subnet's route on its interface, and a default route of each family some network that
    gives one has, via the gateway of the network core/gateways.py names for it (what
    run, start, connect and disconnect set: the first network routes its families, a
    later one each family no earlier one has; a later network may add more, which are
    not required here); and a portway container's default route that goes via another
    network (the family's published ports would not answer); and a Podman container's
    default routes of its other networks (_other_default_routes)."""
    out: list[tuple[str, Callable[[], object]]] = []
    ordered = engine.h.endpoints.in_order(c.id, endpoints)
    networks = [n for _, n in ordered]
    owners = gateways.route_owners(networks, c.runtime == "podman")
    cont = netns.open_ipr(c.netns)
    try:
        for version in (4, 6):
            have = set(links.observe_routes(cont, version))
            for e in endpoints:
                for a in e.addresses:
                    if a.version == version and (a.network, e.ifname) not in have:
                        out.append((f"restore route {a.network} dev {e.ifname} of container "
                                    f"{c.name}: it is missing",
                                    partial(_subnet_route, c, e.ifname, a)))
                net = next((n for n in networks if n.id == e.network_id), None)
                # The network's other subnets, on-link (first: a default route's gateway
                # may be in one).
                for subnet in onlink_subnets(net, e) if net is not None else ():
                    if subnet.version == version and (subnet, e.ifname) not in have:
                        out.append((f"restore route {subnet} dev {e.ifname} of container "
                                    f"{c.name}: it is missing",
                                    partial(_onlink_route, c, e.ifname, subnet)))
            # Each family's via the network core/gateways.py names (a later network
            # routes a family the first lacks).
            # (Not via an endpoint without an address of the family: its IPv6 may be off.)
            owner = ordered[owners[version]] if version in owners else None
            sub = owner[1].of_version(version) if owner is not None and \
                version in endpoint_families(owner[1], owner[0]) else None
            if sub is not None and not links.has_default_route(cont, version):
                out.append((f"restore the IPv{version} default route of container {c.name} "
                            f"(via {sub.gateway}): it is missing",
                            partial(engine.h.endpoints.reroute, c, endpoints)))
            elif sub is not None and owner is not None:
                # One that goes another way (changed by hand): the family's published
                # ports lead to the owner's address, whose replies must leave by its
                # interface (another bridge's guard drops them). A Podman container's
                # is the lowest metric's: its network's route with its metric, and none
                # of the family that beats or ties it.
                ifname = owner[0].ifname
                if c.runtime == "podman":
                    out += _lowest_default_route(engine, c, cont, version, ordered,
                                                 owner, sub.gateway)
                elif (taken := links.observe_default_route(cont, version)) != \
                        (sub.gateway, ifname):
                    # (None: the default routes there have no single gateway, such as an
                    # unreachable one added by hand: the container's own is gone.)
                    out.append((f"restore the IPv{version} default route of container "
                                f"{c.name} ({_via(sub.gateway, ifname)}): " +
                                ("it is missing" if taken is None else
                                 f"it goes via {taken[0]} dev {taken[1]}"),
                                partial(_default_route, engine, c, ifname, sub.gateway)))
            if c.runtime == "podman":
                out += _other_default_routes(engine, c, cont, version, ordered)
    finally:
        cont.close()
    return out


def _lowest_default_route(engine: Engine, c: Container, cont: IPRoute, version: int,
                          ordered: list[tuple[Endpoint, Network]],
                          owner: tuple[Endpoint, Network], gateway: IPAddress
                          ) -> list[tuple[str, Callable[[], object]]]:
    """A Podman container's default route of version that the kernel is to take: the
    lowest metric's network's, with its metric, and none of the family that beats or
    ties it (nor one of lower metric without a single gateway: several next hops, a
    device's, one that discards) but a default route of the networks' own static routes
    (the user's: one of lower metric is the kernel's by the network's definition, and
    an unreachable or blackhole one, which has no gateway, hides no missing route)."""
    e, net = owner
    metric = gateways.metric(net, version)
    static = _static_defaults([n for _, n in ordered], version)
    mine = (gateway, e.ifname, metric)
    found = [r for r in links.observe_default_routes(cont, version)
             if r == mine or (r[0], r[2]) not in static]
    taken = min(found, key=lambda r: r[2], default=None)
    other = min((r for r in links.observe_other_default_routes(cont, version)
                 if r.metric < metric and (r.type, r.metric) not in static),
                key=lambda r: r.metric, default=None)
    if other is not None and (taken is None or other.metric < taken[2]):
        why = f"it goes {other.what}, metric {other.metric}"
    elif taken is None:
        why = "it is missing"
    elif taken[:2] != (gateway, e.ifname):
        why = f"it goes via {taken[0]} dev {taken[1]}"
    else:
        return []
    return [(f"restore the IPv{version} default route of container {c.name} "
             f"({_via(gateway, e.ifname, metric)}): {why}",
             partial(_default_route, engine, c, e.ifname, gateway, metric, keep=static))]


def _other_default_routes(engine: Engine, c: Container, cont: IPRoute, version: int,
                          ordered: list[tuple[Endpoint, Network]]
                          ) -> list[tuple[str, Callable[[], object]]]:
    """A Podman container's default routes of version but the lowest metric's (which
    _missing_routes checks as the one the kernel takes): each of its networks that gives
    one has its own, with its metric (core/gateways.py, rule 3), which takes over when
    the networks before it go. One missing or changed by hand (another gateway or
    metric) is named and put back with its network's metric; no other route is
    touched: not one via another gateway (the user's), nor a default route of the
    networks' own static routes."""
    networks = [n for _, n in ordered]
    routes = gateways.default_routes(networks, podman=True).get(version, {})
    have = links.observe_default_routes(cont, version)
    static = _static_defaults(networks, version)
    out: list[tuple[str, Callable[[], object]]] = []
    for metric, i in sorted(routes.items())[1:]:
        e, net = ordered[i]
        sub = net.of_version(version)
        if sub is None or version not in endpoint_families(net, e) or \
                (sub.gateway, e.ifname, metric) in have:
            continue
        # (The network's own, out of its interface via its gateway, with another metric:
        # a default route via another gateway is not its, but one the user added.)
        changed = next((r for r in have if r[:2] == (sub.gateway, e.ifname) and
                        (r[0], r[2]) not in static), None)
        out.append((f"restore the IPv{version} default route of container {c.name} through "
                    f"network {net.name} ({_via(sub.gateway, e.ifname, metric)}): " +
                    ("it is missing" if changed is None else
                     f"there is one {_via(*changed)} instead"),
                    partial(_default_route, engine, c, e.ifname, sub.gateway, metric,
                            lowest=False, keep=static)))
    return out


def _static_defaults(networks: list[Network], version: int
                     ) -> frozenset[tuple[IPAddress | str, int]]:
    """The default routes of version that the networks' static routes give (netavark's
    `routes`: the user's), as the kernel keeps them: gateway (or, of one that discards,
    its type) and metric."""
    return frozenset(
        (r.gateway if r.gateway is not None else r.type,
         r.metric or (gateways.IPV6_ROUTE_METRIC if version == 6 else 0))
        for net in networks for r in contract.stored_routes(net)
        if r.destination.version == version and r.destination.prefixlen == 0)


def _via(gateway: IPAddress, ifname: str, metric: int | None = None) -> str:
    return f"via {gateway} dev {ifname}" + (f", metric {metric}" if metric is not None else "")


def _default_route(engine: Engine, c: Container, ifname: str, gateway: IPAddress,
                   metric: int | None = None, lowest: bool = True,
                   keep: frozenset[tuple[IPAddress | str, int]] = frozenset()) -> None:
    """c's default route of gateway's family via gateway again; with a metric (a Podman
    container's), beside the other networks' routes: lowest (the one the kernel is to
    take), those of the family that beat or tie it go (none of them is its networks'),
    and those without a single gateway that beat it;
    else those out of ifname via gateway that are not it (its metric changed by hand)
    go; either way but for keep's (gateway, metric), and the others stay."""
    if metric is not None:
        cont = netns.open_ipr(c.netns)
        try:
            for gw, dev, m in links.observe_default_routes(cont, gateway.version):
                in_the_way = m <= metric if lowest else (gw, dev) == (gateway, ifname)
                if in_the_way and (gw, dev, m) != (gateway, ifname, metric) and \
                        (gw, m) not in keep:
                    links.delete_default_route(cont, dev, gw, m)
            for other in links.observe_other_default_routes(cont, gateway.version) \
                    if lowest else ():
                if other.metric < metric and (other.type, other.metric) not in keep:
                    links.delete_other_default_route(cont, gateway.version, other)
        finally:
            cont.close()
    with engine.h.sandbox_kernel.open(c.netns) as sandbox:
        engine.h.sandbox_kernel.set_default_route(sandbox, ifname, gateway, metric)


def _subnet_route(c: Container, ifname: str, address: IPInterface) -> None:
    cont = netns.open_ipr(c.netns)
    try:
        links.ensure_subnet_route(cont, ifname, address)
    finally:
        cont.close()


def _onlink_route(c: Container, ifname: str, subnet: IPNetwork) -> None:
    cont = netns.open_ipr(c.netns)
    try:
        links.ensure_onlink_route(cont, ifname, subnet)
    finally:
        cont.close()


def _rebuild(engine: Engine, c: Container, endpoints: list[Endpoint]) -> None:
    name = os.path.basename(c.netns)
    if procs.is_alive(c.pid, c.pid_start):
        # Only the name was lost (`ip netns del`): the namespace lives on with the
        # container's process, interfaces and all. Give it its name back.
        netns.remount_netns(name, f"/proc/{c.pid}/ns/net")
        for e in endpoints:
            if not _endpoint_ok(engine, c, e):
                _reattach(engine, c, e)
        return
    for e in endpoints:
        links.delete_link(engine.host, e.host_ifname)
    netns.delete_netns(os.path.basename(c.netns))
    engine.h.sandboxes.build(c, [e for e, _ in engine.h.endpoints.in_order(c.id, endpoints)])


def _reattach(engine: Engine, c: Container, e: Endpoint) -> None:
    """A whole pair is reused as it is (ensure_endpoint puts it back on its bridge, up,
    addressed); half of one goes first."""
    with engine.h.sandbox_kernel.open(c.netns) as sandbox:
        cont: Any = sandbox.ipr
        if e.host_ifname.startswith(names.MACVLAN_PREFIX):
            engine.h.driver(engine.h.network(e.network_id)).detach(e)  # made anew below
        elif links.observe_link(engine.host, e.host_ifname) is None:
            links.delete_link(cont, e.ifname)
        elif links.observe_link(cont, e.ifname) is None:
            links.delete_link(engine.host, e.host_ifname)
        net = engine.h.network(e.network_id)
        if c.runtime == "podman":
            # As netavark made it: a default route per family from every network that
            # gives one, with the network's metric (core/gateways.py, rule 3), whatever
            # the container's other networks' routes are; then the network's static
            # routes.
            engine.h.endpoints.attach_running(sandbox, c, e, net,
                                              gateways.gives_default_route(net),
                                              gateways.metric(net),
                                              contract.stored_routes(net))
            return
        engine.h.endpoints.attach_running(sandbox, c, e, net)
        # The default routes of the families this network routes (core/gateways.py, as
        # run, start, connect and disconnect route them); those of the container's other
        # networks are theirs to restore.
        ordered = engine.h.endpoints.in_order(c.id, engine.store.endpoints(container_id=c.id))
        engine.h.endpoints.route(sandbox, ordered, only=e)


def _unknown_links(engine: Engine, report: Report) -> None:
    networks = {n.id for n in engine.store.networks()}
    endpoints = {e.id for e in engine.store.endpoints()}
    for link in links.observe_links(engine.host):
        tag = names.parse_owner_tag(link.alias)
        if tag is None or tag[0] != engine.instance:
            continue
        _, kind, object_id = tag
        known = networks if kind == "network" else endpoints if kind == "endpoint" else None
        if known is not None and object_id not in known:
            report.act(f"delete {link.ifname}: portway {kind} {object_id[:12]} is not in the "
                       f"store", partial(links.delete_link, engine.host, link.ifname))


# engine/live.py's TABLE, named here so that gc (which every daemon start runs) does not
# import the tracer for it (a tenth of a second); a unit test keeps the two equal.
TRACE_TABLE = "portway_trace"


def _trace_leftovers(engine: Engine, report: Report) -> None:
    """What an interrupted `trace --live` can leave: its tables and its probe namespace."""
    for family in ("inet", "bridge", "netdev"):
        if engine.nft.list_table(family, TRACE_TABLE) is not None:
            report.act(f"delete table {family} {TRACE_TABLE}: left by an interrupted trace",
                       partial(engine.fw.teardown, [{"delete": {"table": {
                           "family": family, "name": TRACE_TABLE}}}]))
    for name in netns.list_netns():
        if not name.startswith("pwprobe-"):
            continue
        try:
            ipr = netns.open_ipr(netns.netns_path(name))
        except OSError:
            # Not (or no longer) a mounted namespace: another portway's trace between
            # creating the file and mounting it, or between unmounting and removing it.
            continue
        try:
            tag = names.parse_owner_tag(links.observe_loopback_tag(ipr))
        finally:
            ipr.close()
        if tag is not None and tag[0] == engine.instance and tag[1] == "probe":
            report.act(f"delete namespace {name}: left by an interrupted trace",
                       partial(netns.delete_netns, name))


def _unknown_namespaces(engine: Engine, report: Report) -> None:
    known = {c.id: c for c in engine.store.containers()}
    for name in netns.list_netns():
        if not name.startswith("pw-"):
            continue  # a cheap filter; ownership is decided by the tag below
        path = netns.netns_path(name)
        try:
            ipr = netns.open_ipr(path)
        except OSError:
            continue
        try:
            tag = names.parse_owner_tag(links.observe_loopback_tag(ipr))
        finally:
            ipr.close()
        if tag is None or tag[0] != engine.instance or tag[1] != "container":
            continue
        c = known.get(tag[2])
        if c is not None and c.networked:
            continue
        why = f"portway container {tag[2][:12]} is not in the store" if c is None else \
            f"container {c.name} is stopped"
        report.act(f"delete namespace {name} and its processes: {why}",
                   partial(_drop_namespace, name, path))


def _drop_namespace(name: str, path: str) -> None:
    procs.kill_netns_processes(procs.netns_inode(path))
    netns.delete_netns(name)
