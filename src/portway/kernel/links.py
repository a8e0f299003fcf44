"""Links, addresses and routes over rtnetlink sockets (pyroute2), one socket per namespace.

ensure_* create idempotently (an existing object of the right kind is kept),
delete_* remove idempotently (missing means done), observe_* only read.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portway.errors import KernelError
from portway.kernel import rtbatch
from portway.kernel.dumps import retried
from portway.kernel.netns import write_sysctl
from portway.model.types import IPAddress, IPInterface, IPNetwork, Route

RTNH_F_ONLINK = 4

GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


@dataclass(frozen=True)
class Link:
    index: int
    ifname: str
    kind: str
    alias: str
    master: int
    up: bool
    mtu: int
    mac: str
    peer: int = 0  # a veth's other end: its index, in the peer's namespace
    netnsid: int = -1  # the peer's namespace, as this one numbers it (-1: this one)
    carrier: bool = True  # IFF_LOWER_UP: a tap no process holds has none
    mode: str = ""  # a macvlan's: bridge, vepa, private, passthru, source


def _kind(msg: object) -> str:
    info = msg.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    if info is None:
        return ""
    return str(info.get_attr("IFLA_INFO_KIND") or "")


def _to_link(msg: object) -> Link:
    get = msg.get_attr  # type: ignore[attr-defined]
    return Link(
        index=int(msg["index"]),  # type: ignore[index]
        ifname=str(get("IFLA_IFNAME")),
        kind=_kind(msg),
        alias=str(get("IFLA_IFALIAS") or ""),
        master=int(get("IFLA_MASTER") or 0),
        up=bool(int(msg["flags"]) & 1),  # type: ignore[index]
        mtu=int(get("IFLA_MTU") or 0),
        mac=str(get("IFLA_ADDRESS") or ""),
        peer=int(get("IFLA_LINK") or 0),
        netnsid=_netnsid(get("IFLA_LINK_NETNSID")),
    )


def _netnsid(value: object) -> int:
    """IFLA_LINK_NETNSID as a number, -1 for none (or not assigned: 4294967295)."""
    if value is None:
        return -1
    number = int(value)  # type: ignore[call-overload]
    return -1 if number < 0 or number >= 0xFFFFFFFF else number


@retried
def observe_links(ipr: IPRoute) -> list[Link]:
    return [_to_link(m) for m in ipr.get_links()]


def observe_link(ipr: IPRoute, ifname: str) -> Link | None:
    """One link by name: the kernel looks it up (RTM_GETLINK with IFLA_IFNAME), rather
    than pyroute2's link_lookup, which dumps every link: O(1) however many veths exist."""
    try:
        return _to_link(ipr.link("get", ifname=ifname)[0])
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise


def index_of(ipr: IPRoute, ifname: str) -> int:
    link = observe_link(ipr, ifname)
    if link is None:
        raise KernelError(f"{ifname} vanished", "try again")
    return link.index


AF_INET, AF_INET6 = 2, 10
FAMILY = {4: AF_INET, 6: AF_INET6}


@retried
def observe_addresses(ipr: IPRoute, index: int | None = None) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses (of one link, or all)."""
    kwargs = {"index": index} if index is not None else {}
    out = []
    for msg in ipr.get_addr(family=AF_INET, **kwargs):
        out.append(ipaddress.IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return out


@retried
def observe_link_addresses(ipr: IPRoute) -> list[tuple[int, IPInterface]]:
    """Every address of either family with its link's index: one dump per family, however
    many links there are (a dump per link costs a round trip each)."""
    return [(int(msg["index"]),
             ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
            for family in (AF_INET, AF_INET6) for msg in ipr.get_addr(family=family)]


@retried
def observe_addresses6(ipr: IPRoute, index: int | None = None) -> list[ipaddress.IPv6Interface]:
    """The IPv6 addresses (of one link, or all), link-local ones included."""
    kwargs = {"index": index} if index is not None else {}
    return [ipaddress.IPv6Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            for msg in ipr.get_addr(family=AF_INET6, **kwargs)]


@retried
def observe_routes(ipr: IPRoute, version: int = 4) -> list[tuple[IPNetwork, str]]:
    """Main-table routes of one family with a destination prefix (not default), with
    their device."""
    names = {link.index: link.ifname for link in observe_links(ipr)}
    out: list[tuple[IPNetwork, str]] = []
    for msg in ipr.get_routes(family=FAMILY[version], table=254):
        if msg["dst_len"] == 0:
            continue
        dst = msg.get_attr("RTA_DST")
        oif = msg.get_attr("RTA_OIF")
        net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
        if version == 6 and (net.is_link_local or net.is_multicast):
            continue  # every IPv6 link has fe80::/64 and ff00::/8: nothing to avoid
        out.append((net, names.get(oif, "?")))
    return out


def observe_usable_addresses(ipr: IPRoute, ifname: str) -> list[IPAddress]:
    """A link's addresses but IPv6 link-local ones (none if the link is missing)."""
    link = observe_link(ipr, ifname)
    if link is None:
        return []
    v6 = [a.ip for a in observe_addresses6(ipr, link.index) if not a.ip.is_link_local]
    return [*(a.ip for a in observe_addresses(ipr, link.index)), *v6]


def observe_kind_mtu(ipr: IPRoute, ifname: str) -> tuple[str, int] | None:
    link = observe_link(ipr, ifname)
    return (link.kind, link.mtu) if link is not None else None


@retried
def observe_default_route_mtu(ipr: IPRoute) -> int | None:
    """The MTU of the interface of the main table's first default route (IPv4 before
    IPv6), or None if there is none; what netavark 1.16 gives a new bridge by default."""
    for version in (4, 6):
        for msg in ipr.get_routes(family=FAMILY[version], table=254):
            oif = msg.get_attr("RTA_OIF")
            if msg["dst_len"] == 0 and oif:
                for link in ipr.get_links(oif):
                    mtu = link.get_attr("IFLA_MTU")
                    if mtu:
                        return int(mtu)
    return None


def _kernel_error(what: str, exc: NetlinkError) -> KernelError:
    return KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}",
                       "run 'portway gc' and try again; with --debug for details")


LOOPBACK_INDEX = 1

# IPv4-only networks: container and host ends of a veth get no IPv6 address (IPv6
# address generation "none", set before the link could make one: _without_ipv6), so they
# join no solicited-node multicast group and send no MLD, DAD or router
# solicitation: multicast flooding on a bridge with IPv6 on the ports makes every new
# port slower as the bridge grows. Not disable_ipv6: a write under /proc/sys/net
# costs more with every namespace on the machine, and containers are namespaces.
# lo keeps ::1.
NO_IPV6_ADDRESSES = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}


def _without_ipv6(ipr: IPRoute, index: int, **more: Any) -> None:
    """Set the link's IPv6 address generation to none, with more attributes.

    The kernel applies a message's flags before its IFLA_AF_SPEC, and a veth that
    comes up with its peer up may get a link-local address at once (before the link
    watcher has marked it down, its operstate reads "unknown", which counts as
    ready): so state="up" in the same message is safe only while the peer is down."""
    try:
        ipr.link("set", index=index, IFLA_AF_SPEC=NO_IPV6_ADDRESSES, **more)
    except NetlinkError as exc:
        if exc.code != errno.EAFNOSUPPORT:  # a kernel without IPv6: nothing to turn off
            raise
        if more:
            ipr.link("set", index=index, **more)


def disable_ipv6(ifname: str) -> None:
    """No IPv6 at all on the link (bridges and probe links: one per network or trace,
    so the cost of a /proc/sys write does not matter)."""
    set_ipv6_conf(ifname, "disable_ipv6", "1")


def ensure_bridge(ipr: IPRoute, name: str, mac: str, mtu: int,
                  gateways: list[IPInterface], tag: str) -> tuple[int, bool]:
    """A bridge with its gateway addresses (one per family of its network), up; IPv6 on
    it only when one of them is IPv6. Returns (index, created)."""
    existing = observe_link(ipr, name)
    created = False
    if existing is None:
        # No multicast snooping: with it, each port that comes up makes the bridge walk
        # every port to (re)start its multicast timers, a cost that grows with the
        # number of containers. No container network has a multicast querier, and
        # without one a snooping bridge floods multicast to every port anyway: what
        # containers see is the same.
        try:
            ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu,
                     br_stp_state=0, br_forward_delay=0, br_mcast_snooping=0)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _kernel_error(f"create bridge {name}", exc) from None
        created = True
        existing = observe_link(ipr, name)
        if existing is None:
            raise KernelError(f"bridge {name} vanished while being created", "try again")
    if existing.kind != "bridge":
        raise KernelError(f"{name} exists but is a {existing.kind or 'plain'} link, not a bridge",
                          f"remove it with 'ip link del {name}'")
    index = existing.index
    try:
        if existing.alias != tag:
            ipr.link("set", index=index, ifalias=tag)
        v6 = any(g.version == 6 for g in gateways)
        set_ipv6_conf(name, "disable_ipv6", "0" if v6 else "1")
        if v6:
            # The gateway is the router of its network: it takes no advertisement from
            # a container (and forwarding=1 ignores them anyway).
            set_ipv6_conf(name, "accept_ra", "0")
            # Its link-local address is usable at once: while duplicate address
            # detection runs (a second or two), the host's first neighbour
            # solicitations into the bridge go unanswered.
            set_ipv6_conf(name, "accept_dad", "0")
        # A host process reaching a port published on 127.0.0.1 is DNATed to a
        # container with source 127.0.0.1: routing that out of the bridge needs
        # route_localnet (the firewall's guard chain keeps containers off 127/8).
        write_sysctl(f"net.ipv4.conf.{name}.route_localnet", "1")
        have = {str(a.ip) for a in observe_addresses(ipr, index)} | \
            ({str(a.ip) for a in observe_addresses6(ipr, index)} if v6 else set())
        for gateway in gateways:
            if str(gateway.ip) not in have:
                _add_address(ipr, index, gateway.ip, gateway.network.prefixlen)
        if not existing.up or existing.mtu != mtu:
            ipr.link("set", index=index, state="up", mtu=mtu)
    except NetlinkError as exc:
        raise _kernel_error(f"set up bridge {name}", exc) from None
    return index, created


IFA_F_NODAD = 0x02


def _add_address(ipr: IPRoute, index: int, address: IPAddress, prefixlen: int) -> None:
    """Add an address; one that is there already (a race with another writer) is fine.
    An IPv6 one skips duplicate address detection: portway's IPAM makes it unique on
    the link, and DAD would keep it unusable for a second or more."""
    try:
        ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen,
                 **({"flags": IFA_F_NODAD} if address.version == 6 else {}))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete a link by name; False if it was already gone."""
    try:
        ipr.link("del", ifname=ifname)
        return True
    except NetlinkError as exc:
        if exc.code in GONE:
            return False
        raise _kernel_error(f"delete {ifname}", exc) from None


@dataclass(frozen=True)
class EndpointSpec:
    host_ifname: str
    ifname: str
    mac: str
    mtu: int
    addresses: tuple[IPInterface, ...]  # one per family (Docker) or subnet (Podman)
    gateways: tuple[IPAddress, ...]  # a default route via each (none: no default route)
    bridge_index: int
    tag: str
    hairpin: bool = False  # the container publishes ports (see ensure_endpoint)
    # The default routes' metric (None: the kernel's default, and a default route of
    # the family that exists is replaced); with one, a route of the same metric that
    # exists (another network's) is kept, as the first network's.
    metric: int | None = None
    routes: tuple[Route, ...] = ()  # static routes, added after the default ones
    # The network's other subnets (none of the container's addresses is in them): routes
    # straight out of the link, so neighbours in them are reached on the bridge.
    onlink: tuple[IPNetwork, ...] = ()


def ensure_endpoint(host: IPRoute, cont: IPRoute, netns_fd: int, spec: EndpointSpec) -> None:
    """The veth pair of one endpoint: host end on the bridge, container end addressed and routed.

    The container end is created directly inside the container's namespace, so
    its name (eth0...) never meets the host's own interface names. A pair that exists
    already (a half-made endpoint) is verified and reused; any other link of that name
    is an error. The calling thread is in host's namespace (the host end's sysctls are
    written there).

    Three round trips (kernel/rtbatch.py): the pair made (its ifindexes echoed), the host
    end set, and everything of the container end in one datagram, whose messages the
    kernel applies in order: no IPv6 address generation (before it is up: its peer is
    up by then), addresses, up, default routes. In two halves (make_pair, finish_pair),
    so that a set-up can make the pair before the endpoint's addresses are known.
    """
    index, cidx = make_pair(host, cont, netns_fd, spec)
    finish_pair(host, cont, index, cidx, spec)


def make_pair(host: IPRoute, cont: IPRoute, netns_fd: int, spec: EndpointSpec
              ) -> tuple[int, int]:
    """ensure_endpoint's first half, which needs neither addresses nor MAC (spec.mac ""
    leaves the container end the kernel's until finish_pair): the pair made or reused,
    the host end tagged, on the bridge and up, with nothing of IPv6. Its ifindexes (host
    end, container end). The container end stays down: nothing passes yet."""
    what = f"endpoint {spec.host_ifname}"
    with rtbatch.host_socket() as sock:
        made = rtbatch.Batch()
        made.veth(spec.host_ifname, spec.mtu, spec.ifname, netns_fd, spec.mac, spec.mtu)
        (answer,) = made.send(sock)
        index, cidx = rtbatch.echoed_link(answer.echo)
        if answer.error == errno.EEXIST:
            index, cidx = _existing_pair(host, cont, spec)
            try:
                if spec.mac:
                    cont.link("set", index=cidx, address=spec.mac, mtu=spec.mtu)
                else:
                    cont.link("set", index=cidx, mtu=spec.mtu)
            except NetlinkError as err:
                raise _kernel_error(f"reuse {what}", err) from None
        elif answer.error:
            raise _errno_error(f"create veth {spec.host_ifname}", answer.error)
        try:
            if not (index and cidx):  # no echo (it is best effort): look them up
                index, cidx = index_of(host, spec.host_ifname), index_of(cont, spec.ifname)
        except NetlinkError as exc:
            raise _kernel_error(f"set up {what}", exc) from None
        # One message: owner tag, bridge port, no IPv6 address, up (the peer is still
        # down, so no address can be made before the mode is none).
        _set_link(sock, f"set up {what}", index, up=True, alias=spec.tag,
                  master=spec.bridge_index)
    # Nothing of IPv6 on the host end at all: a router advertisement sent to an
    # 802.1 group address arrives on this port itself, not through the bridge.
    for key, value in (("accept_ra", "0"), ("disable_ipv6", "1")):
        set_ipv6_conf(spec.host_ifname, key, value)
    return index, cidx


def finish_pair(host: IPRoute, cont: IPRoute, index: int, cidx: int, spec: EndpointSpec,
                mac: bool = False) -> None:
    """ensure_endpoint's second half, on the pair make_pair made (its ifindexes): hairpin
    on the host end, and the container end's MAC (mac: make_pair was given none),
    addresses, up and routes, in one datagram."""
    what = f"endpoint {spec.host_ifname}"
    try:
        if spec.hairpin:
            # A container reaching its own published port through a host address is
            # DNATed back to itself: the frame must go out of the port it came in on.
            # Without published ports that never happens: one netlink call saved.
            host.brport("set", index=index, mode=1)
    except NetlinkError as exc:
        raise _kernel_error(f"set up {what}", exc) from None
    inner = rtbatch.Batch()
    harmless: dict[int, int] = {}
    if mac:
        inner.link(cidx, mac=spec.mac)  # (down still: a MAC is set before it is up)
    harmless[inner.link(cidx, no_ipv6_addresses=True)] = errno.EAFNOSUPPORT
    for a in spec.addresses:
        harmless[inner.address(cidx, a.ip, a.network.prefixlen)] = errno.EEXIST
    inner.link(cidx, up=True)
    for subnet in spec.onlink:  # before the default routes: a gateway may be in one
        inner.onlink_route(cidx, subnet)
    for gateway in spec.gateways:
        step = inner.default_route(cidx, gateway, spec.metric, replace=spec.metric is None)
        if spec.metric is not None:
            harmless[step] = errno.EEXIST
    with rtbatch.lent(cont) as sock:
        answers = inner.send(sock)
    for step, got in enumerate(answers):
        if got.error and got.error != harmless.get(step):
            raise _errno_error(f"set up {what}", got.error)
    ensure_routes(cont, spec.routes)


def _errno_error(what: str, code: int) -> KernelError:
    return KernelError(f"{what}: {os.strerror(code)}",
                       "run 'portway gc' and try again; with --debug for details")


def _set_link(sock: socket.socket, what: str, index: int, up: bool = False,
              alias: str | None = None, master: int | None = None) -> None:
    """One link changed in one message, with IPv6 address generation none (see
    _without_ipv6: on a kernel without IPv6, the rest alone)."""
    batch = rtbatch.Batch()
    batch.link(index, up=up, no_ipv6_addresses=True, alias=alias, master=master)
    (answer,) = batch.send(sock)
    if answer.error == errno.EAFNOSUPPORT:
        batch = rtbatch.Batch()
        batch.link(index, up=up, alias=alias, master=master)
        (answer,) = batch.send(sock)
    if answer.error:
        raise _errno_error(what, answer.error)


RTN = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}


def _route_args(route: Route) -> dict[str, Any]:
    args: dict[str, Any] = {"dst": str(route.destination),
                            "family": FAMILY[route.destination.version],
                            "type": RTN[route.type]}
    if route.gateway is not None:
        args["gateway"] = str(route.gateway)
    if route.metric is not None:
        args["priority"] = route.metric
    return args


def ensure_routes(ipr: IPRoute, routes: tuple[Route, ...]) -> None:
    """Static routes in a namespace (one that exists, same destination and metric, is
    replaced)."""
    for route in routes:
        try:
            ipr.route("replace", **_route_args(route))
        except NetlinkError as exc:
            via = f" via {route.gateway}" if route.gateway else ""
            raise _kernel_error(f"add route {route.destination}{via}", exc) from None


def delete_routes(ipr: IPRoute, routes: tuple[Route, ...]) -> list[str]:
    """Static routes removed from a namespace; a missing one counts as removed. The
    errors, one line each."""
    errors: list[str] = []
    for route in routes:
        try:
            ipr.route("del", **_route_args(route))
        except NetlinkError as exc:
            if exc.code not in GONE:
                errors.append(f"delete route {route.destination}: {exc}")
    return errors


def _existing_pair(host: IPRoute, cont: IPRoute, spec: EndpointSpec) -> tuple[int, int]:
    """The indexes of an existing veth pair with spec's names, its ends in the host and
    the container namespace and peers of each other; KernelError if it is not that."""
    link = observe_link(host, spec.host_ifname)
    inner = observe_link(cont, spec.ifname)
    if link is None or link.kind != "veth" or inner is None or inner.kind != "veth" or \
            link.peer != inner.index or inner.peer != link.index:
        raise KernelError(f"create veth {spec.host_ifname}: an interface with that name "
                          "exists and is not this endpoint's veth pair",
                          f"remove it (ip link del {spec.host_ifname}) or run 'portway gc'")
    return link.index, inner.index


def ensure_sysctl(key: str, value: str) -> None:
    """A sysctl of the calling thread's namespace set to value, written only if it is
    not that already (a write under /proc/sys/net is not free)."""
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            if f.read().strip() == value:
                return
        write_sysctl(key, value)
    except FileNotFoundError:
        pass  # not in this kernel


def set_ipv6_conf(ifname: str, key: str, value: str) -> None:
    try:
        write_sysctl(f"net.ipv6.conf.{ifname}.{key}", value)
    except FileNotFoundError:
        pass  # IPv6 is off in this kernel


def observe_ipv6_conf(ifname: str, key: str) -> str | None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/{key}") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


@retried
def has_default_route(ipr: IPRoute, version: int = 4) -> bool:
    return any(m["dst_len"] == 0
               for m in ipr.get_routes(family=FAMILY[version], table=254)
               if version == 4 or m.get_attr("RTA_GATEWAY") is not None)


def observe_default_routes(ipr: IPRoute, version: int = 4
                           ) -> list[tuple[IPAddress, str, int]]:
    """The default routes of one family that have a single gateway, as listed: gateway,
    device and metric."""
    names = {link.index: link.ifname for link in observe_links(ipr)}
    out: list[tuple[IPAddress, str, int]] = []
    for m in ipr.get_routes(family=FAMILY[version], table=254):
        gateway = m.get_attr("RTA_GATEWAY")
        if m["dst_len"] == 0 and gateway is not None:
            out.append((ipaddress.ip_address(gateway), names.get(m.get_attr("RTA_OIF"), "?"),
                        m.get_attr("RTA_PRIORITY") or 0))
    return out


@dataclass(frozen=True)
class OtherDefault:
    """A default route without a single gateway: several next hops, straight out of a
    device, or one that discards."""

    type: str  # unicast, blackhole, unreachable, prohibit (RTN)
    metric: int
    oif: int  # (0: none, or several)
    what: str  # where it goes, for a message: "via A dev X and B dev Y", "out of X", ...


def observe_other_default_routes(ipr: IPRoute, version: int = 4) -> list[OtherDefault]:
    """The main-table default routes of one family that observe_default_routes leaves
    out (no single gateway), as listed."""
    names = {link.index: link.ifname for link in observe_links(ipr)}
    kinds = {number: kind for kind, number in RTN.items()}
    out: list[OtherDefault] = []
    for m in ipr.get_routes(family=FAMILY[version], table=254):
        if m["dst_len"] != 0 or m.get_attr("RTA_GATEWAY") is not None:
            continue
        kind = kinds.get(m["type"], str(m["type"]))
        oif = m.get_attr("RTA_OIF") or 0
        hops = m.get_attr("RTA_MULTIPATH") or []
        if hops:
            what = "via " + " and ".join(
                f"{h.get_attr('RTA_GATEWAY')} dev {names.get(h['oif'], '?')}" for h in hops)
        elif kind == "unicast":
            what = f"out of {names.get(oif, '?')}"
        else:
            what = f"nowhere ({kind})"
        out.append(OtherDefault(kind, m.get_attr("RTA_PRIORITY") or 0, oif, what))
    return out


def delete_other_default_route(ipr: IPRoute, version: int, route: OtherDefault) -> None:
    """One route observe_other_default_routes listed (gone already counts as deleted)."""
    extra = {"oif": route.oif} if route.oif else {}
    try:
        # (Scope nowhere: any scope, as ip route del asks; a device's is link.)
        ipr.route("del", dst=DEFAULT[version], family=FAMILY[version], priority=route.metric,
                  type=RTN.get(route.type, 1), scope=RT_SCOPE_NOWHERE, **extra)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise KernelError(f"delete default route {route.what} metric {route.metric}: "
                              f"{exc}", "try again") from None


def observe_default_route(ipr: IPRoute, version: int = 4) -> tuple[IPAddress, str] | None:
    """The default route of one family that the kernel takes (the lowest metric's, of
    equal ones the first listed): its gateway and device; None without one that has a
    single gateway."""
    best: tuple[int, IPAddress, str] | None = None
    for gateway, dev, metric in observe_default_routes(ipr, version):
        if best is None or metric < best[0]:
            best = (metric, gateway, dev)
    return None if best is None else (best[1], best[2])


def set_default_route(ipr: IPRoute, ifname: str, gateway: IPAddress,
                      metric: int | None = None) -> None:
    """The default route of gateway's family via gateway: the one of metric (None: the
    kernel's default) replaced, others of the family kept."""
    extra = {} if metric is None else {"priority": metric}
    try:
        index = index_of(ipr, ifname)
        ipr.route("replace", dst=DEFAULT[gateway.version], gateway=str(gateway), oif=index,
                  family=FAMILY[gateway.version], **extra)
    except NetlinkError as exc:
        raise KernelError(f"set default route via {gateway}: {exc}", "try again") from None


def delete_default_route(ipr: IPRoute, ifname: str, gateway: IPAddress, metric: int) -> None:
    """One default route (gone already counts as deleted)."""
    try:
        ipr.route("del", dst=DEFAULT[gateway.version], gateway=str(gateway),
                  oif=index_of(ipr, ifname), priority=metric, family=FAMILY[gateway.version])
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise KernelError(f"delete default route via {gateway} dev {ifname} metric "
                              f"{metric}: {exc}", "try again") from None


DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}
RTPROT_KERNEL, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 2, 253, 255


RTPROT_RA = 9


def readdress(ipr: IPRoute, ifname: str, old: tuple[IPInterface, ...],
              new: tuple[IPInterface, ...], mac: str) -> None:
    """A running namespace's ifname moved from the addresses old to new, its MAC set to
    mac (a veth's changes while it is up). The routes out of it that the kernel did not
    make (default, static) are put back after: it drops an interface's IPv4 routes with
    its last IPv4 address, and a route whose source was an old address takes the new one
    of its family."""
    what = f"change the address of {ifname}"
    try:
        index = index_of(ipr, ifname)
        kept = [m for v in sorted({a.version for a in (*old, *new)})
                for m in ipr.get_routes(family=FAMILY[v], table=254, oif=index)
                if m["proto"] not in (RTPROT_KERNEL, RTPROT_RA)]
        if _mac(ipr, index) != mac.lower():
            ipr.link("set", index=index, address=mac)
        for a in old:
            if a not in new:
                try:
                    ipr.addr("del", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
                except NetlinkError as exc:
                    if exc.code not in GONE:
                        raise
        for a in new:
            if a not in old:
                _add_address(ipr, index, a.ip, a.network.prefixlen)
        moved = {str(a.ip): str(b.ip) for a in old for b in new
                 if a.version == b.version and a != b}
        for m in kept:
            family = m["family"]
            dst = m.get_attr("RTA_DST")
            spec: dict[str, Any] = {
                "dst": f"{dst}/{m['dst_len']}" if dst else DEFAULT[4 if family == AF_INET else 6],
                "family": family, "oif": index, "table": 254, "proto": m["proto"],
                "scope": m["scope"]}
            for attr, key in (("RTA_GATEWAY", "gateway"), ("RTA_PRIORITY", "priority"),
                              ("RTA_PREFSRC", "prefsrc")):
                value = m.get_attr(attr)
                if value is not None:
                    spec[key] = moved.get(value, value) if key == "prefsrc" else value
            ipr.route("replace", **spec)
    except NetlinkError as exc:
        raise _kernel_error(what, exc) from None


def forget_learned(ipr: IPRoute, ifname: str, mac: str) -> None:
    """The bridge's entry for mac on its port ifname gone (one it learned: the MAC is no
    longer behind that port); missing counts as done."""
    try:
        ipr.fdb("del", ifindex=index_of(ipr, ifname), lladdr=mac)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise _kernel_error(f"forget {mac} on {ifname}", exc) from None


def ensure_subnet_route(ipr: IPRoute, ifname: str, address: IPInterface) -> None:
    """The route to address's subnet on ifname, as the kernel makes it when the address
    is added (for a route deleted since: the address is kept)."""
    extra: dict[str, Any] = {"scope": RT_SCOPE_LINK, "prefsrc": str(address.ip)} \
        if address.version == 4 else {"priority": 256}
    try:
        ipr.route("replace", dst=str(address.network), oif=index_of(ipr, ifname),
                  family=FAMILY[address.version], proto=RTPROT_KERNEL, **extra)
    except NetlinkError as exc:
        raise _kernel_error(f"add route {address.network} dev {ifname}", exc) from None


def ensure_onlink_route(ipr: IPRoute, ifname: str, subnet: IPNetwork) -> None:
    """A route to subnet straight out of ifname, no gateway (as attach makes it for a
    subnet of the container's network it has no address in)."""
    try:
        batch = rtbatch.Batch()
        batch.onlink_route(index_of(ipr, ifname), subnet)
        with rtbatch.lent(ipr) as sock:
            (answer,) = batch.send(sock)
    except NetlinkError as exc:
        raise _kernel_error(f"add route {subnet} dev {ifname}", exc) from None
    if answer.error:
        raise _errno_error(f"add route {subnet} dev {ifname}", answer.error)


def setup_loopback(ipr: IPRoute, tag: str) -> None:
    """In a new container namespace: lo up, and the owner tag on lo (the namespace's tag).

    lo is index 1 in every namespace (the kernel's LOOPBACK_IFINDEX): no lookup. One
    hand-built message on ipr's socket (kernel/rtbatch.py)."""
    batch = rtbatch.Batch()
    batch.link(LOOPBACK_INDEX, up=True, alias=tag)
    with rtbatch.lent(ipr) as sock:
        (answer,) = batch.send(sock)
    if answer.error:
        raise _errno_error("set up lo", answer.error)


def loopback_up(ipr: IPRoute) -> None:
    """lo up in a runtime's namespace (netavark does it at every setup; Podman relies on
    it: rootless Podman's published ports reach the container through its own address,
    and a namespace's own addresses are reached through lo). Untagged: the namespace is
    the runtime's."""
    ipr.link("set", index=LOOPBACK_INDEX, state="up")


def observe_loopback_tag(ipr: IPRoute) -> str:
    link = observe_link(ipr, "lo")
    return link.alias if link else ""


def setup_probe(ipr: IPRoute, tag: str) -> None:
    """In a probe namespace (a client beyond the host's uplink): lo tagged but left down,
    so 127/8 is not local and a probe to 127.0.0.1 goes out, as a neighbour's would."""
    ipr.link("set", index=LOOPBACK_INDEX, ifalias=tag)
    write_sysctl("net.ipv4.conf.all.route_localnet", "1")
    write_sysctl("net.ipv4.conf.default.route_localnet", "1")


NUD_PERMANENT = 0x80


def add_probe_link(host: IPRoute, probe: IPRoute, netns_fd: int, host_ifname: str,
                   client: IPAddress, gateway: IPAddress) -> None:
    """A veth from the host into a probe namespace that plays an outside client at
    `client`: the client's address on eth0 with a default route via the host's address
    `gateway` (on-link), and a route back to the client through host_ifname."""
    try:
        host.link("add", ifname=host_ifname, kind="veth",
                  peer={"ifname": "eth0", "net_ns_fd": netns_fd})
        index = index_of(host, host_ifname)
        disable_ipv6(host_ifname)
        host.link("set", index=index, state="up")
        host.route("add", dst=f"{client}/32", oif=index)
        inner = index_of(probe, "eth0")
        probe.addr("add", index=inner, address=str(client), prefixlen=32)
        probe.link("set", index=inner, state="up")
        probe.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=inner,
                    flags=RTNH_F_ONLINK)
        # Both neighbours written down: an ARP request sent before the link passes
        # traffic is lost, and its retry comes a second later, after the probe gave up.
        host.neigh("add", dst=str(client), lladdr=_mac(probe, inner), ifindex=index,
                   state=NUD_PERMANENT)
        probe.neigh("add", dst=str(gateway), lladdr=_mac(host, index), ifindex=inner,
                    state=NUD_PERMANENT)
        _wait_passing(probe, inner)
    except NetlinkError as exc:
        raise _kernel_error(f"set up probe link {host_ifname}", exc) from None


# The host end's address on an IPv6 probe link: the probe's next hop (link-local, as a
# router's is, so no address of the host is lent to the link).
PROBE_GATEWAY6 = "fe80::1"


def add_probe_link6(host: IPRoute, probe: IPRoute, netns_fd: int, host_ifname: str,
                    client: IPAddress) -> None:
    """add_probe_link for an IPv6 client: the client's address on eth0 with a default
    route via fe80::1 (the host end's only address), and a route back to it. No address
    is generated on either end and both neighbours are written down, so nothing waits for
    duplicate address detection or asks with neighbour discovery."""
    try:
        host.link("add", ifname=host_ifname, kind="veth",
                  peer={"ifname": "eth0", "net_ns_fd": netns_fd})
        index = index_of(host, host_ifname)
        inner = index_of(probe, "eth0")
        _without_ipv6(host, index)
        _without_ipv6(probe, inner)
        set_ipv6_conf(host_ifname, "accept_ra", "0")
        host.addr("add", index=index, address=PROBE_GATEWAY6, prefixlen=64,
                  flags=IFA_F_NODAD)
        probe.addr("add", index=inner, address=str(client), prefixlen=128, flags=IFA_F_NODAD)
        host.link("set", index=index, state="up")
        probe.link("set", index=inner, state="up")
        host_mac = _mac(host, index)
        probe_mac = _mac(probe, inner)
        host.neigh("add", dst=str(client), lladdr=probe_mac, ifindex=index,
                   family=AF_INET6, state=NUD_PERMANENT)
        probe.neigh("add", dst=PROBE_GATEWAY6, lladdr=host_mac, ifindex=inner,
                    family=AF_INET6, state=NUD_PERMANENT)
        host.route("add", dst=f"{client}/128", oif=index, family=AF_INET6)
        probe.route("add", dst="::/0", gateway=PROBE_GATEWAY6, oif=inner, family=AF_INET6)
        _wait_passing(probe, inner)
    except NetlinkError as exc:
        raise _kernel_error(f"set up probe link {host_ifname}", exc) from None


def _mac(ipr: IPRoute, index: int) -> str:
    (msg,) = ipr.get_links(index)
    return str(msg.get_attr("IFLA_ADDRESS"))


def _wait_passing(ipr: IPRoute, index: int, timeout: float = 1.0) -> None:
    """Until a link just set up reads operationally up: the kernel gives it its queue
    (until then it drops what is sent) in the same step, which a busy machine defers.
    A link still not up after timeout is left to the probe to find so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (msg,) = ipr.get_links(index)
        if msg.get_attr("IFLA_OPERSTATE") == "UP":
            return
        time.sleep(0.002)
