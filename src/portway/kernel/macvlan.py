"""macvlan devices: one per container endpoint, on a parent interface of the host.

Rules of this module:
1. The device is made on the host's socket with a temporary name of its own (derived
   from the endpoint's id) straight into the container's namespace, and renamed there:
   the kernel makes it in the host namespace first, so the container's name (eth0)
   could meet one of the host's links (netavark retries with a random name then; a
   derived one never collides).
2. It carries its owner tag (alias): delete_macvlan removes only a device of its owner,
   and a missing one (its namespace gone, or removed already) counts as removed.
3. IPv6: the container takes no address from router advertisements (autoconf off, as
   netavark sets it), only the ones it was given; its link-local address stays, as on
   any host of a LAN.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portway.errors import KernelError
from portway.kernel import links, netns
from portway.kernel.dumps import retried
from portway.model.types import IPAddress, IPInterface, IPNetwork, Route

FAMILY = {4: 2, 6: 10}


@dataclass(frozen=True)
class MacvlanSpec:
    parent: str  # "": the interface of the host's first default route
    tmp_name: str  # its name while it passes through the host namespace
    ifname: str
    mode: str
    mac: str
    mtu: int  # 0: the parent's
    addresses: tuple[IPInterface, ...]
    gateways: tuple[IPAddress, ...]  # a default route via each
    metric: int | None
    routes: tuple[Route, ...]
    tag: str
    # The network's subnets none of the addresses is in: routed straight out of the
    # device (the LAN carries them), first, as a default route's gateway may be in one.
    onlink: tuple[IPNetwork, ...] = ()


@retried
def default_route_interface(host: IPRoute) -> int | None:
    """The output interface of the main table's first default route (IPv4, then IPv6),
    as netavark picks a macvlan's parent when none is given."""
    for family in (2, 10):
        for msg in host.get_routes(family=family, table=254):
            oif = msg.get_attr("RTA_OIF")
            if msg["dst_len"] == 0 and oif:
                return int(oif)
    return None


def parent_index(host: IPRoute, name: str) -> int | None:
    if not name:
        return default_route_interface(host)
    link = links.observe_link(host, name)
    return link.index if link is not None else None


def _error(what: str, exc: NetlinkError) -> KernelError:
    return KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}",
                       "run 'portway gc' and try again; with --debug for details")


def ensure_macvlan(host: IPRoute, cont: IPRoute, netns_fd: int, netns_path: str,
                   spec: MacvlanSpec) -> None:
    """The endpoint's macvlan device in the container's namespace: named, addressed, up,
    routed. On failure, nothing of it is left."""
    parent = parent_index(host, spec.parent)
    if parent is None:
        raise KernelError(f"parent interface {spec.parent or '(default route)'} of the "
                          "macvlan network is not on the host",
                          "create it, or give the network another parent")
    args: dict[str, object] = {"ifname": spec.tmp_name, "kind": "macvlan", "link": parent,
                               "macvlan_mode": spec.mode, "net_ns_fd": netns_fd}
    if spec.mode != "passthru":
        # passthru: the device is the parent's only one and has its MAC (setting one
        # would change the parent's).
        args["address"] = spec.mac
    if spec.mtu:
        args["mtu"] = spec.mtu
    try:
        host.link("add", **args)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            where = spec.parent or "the default-route interface"
            raise _error(f"create macvlan interface on {where}", exc) from None
        # A half-made endpoint of the same id, left in the host namespace.
        links.delete_link(host, spec.tmp_name)
        try:
            host.link("add", **args)
        except NetlinkError as again:
            raise _error("create macvlan interface", again) from None
    try:
        _set_up(cont, netns_path, spec)
    except BaseException:
        # Under its temporary name (this endpoint's: made just now), or renamed and
        # tagged.
        tmp = links.observe_link(cont, spec.tmp_name)
        if tmp is not None and tmp.kind == "macvlan":
            links.delete_link(cont, spec.tmp_name)
        _delete_tagged(cont, spec.ifname, spec.tag)
        raise


def _set_up(cont: IPRoute, netns_path: str, spec: MacvlanSpec) -> None:
    what = f"set up macvlan interface {spec.ifname}"
    link = links.observe_link(cont, spec.tmp_name)
    if link is None:
        raise KernelError(f"{what}: it vanished", "try again")
    try:
        cont.link("set", index=link.index, ifname=spec.ifname, ifalias=spec.tag)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise KernelError(f"{what}: the container has an interface {spec.ifname} "
                              "already", "give the network another interface name") \
                from None
        raise _error(what, exc) from None
    # Addresses only as given: none from the LAN's router advertisements.
    netns.in_netns(netns_path, lambda: _autoconf_off(spec.ifname))
    try:
        for a in spec.addresses:
            cont.addr("add", index=link.index, address=str(a.ip),
                      prefixlen=a.network.prefixlen)
        cont.link("set", index=link.index, state="up")
        for subnet in spec.onlink:
            links.ensure_onlink_route(cont, spec.ifname, subnet)
        for gateway in spec.gateways:
            route: dict[str, object] = {"dst": "default", "gateway": str(gateway),
                                        "oif": link.index,
                                        "family": FAMILY[gateway.version]}
            if spec.metric is not None:
                route["priority"] = spec.metric
            try:
                cont.route("add", **route)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # another network's, of the same metric
                    raise
    except NetlinkError as exc:
        raise _error(what, exc) from None
    links.ensure_routes(cont, spec.routes)


def _autoconf_off(ifname: str) -> None:
    try:
        links.set_ipv6_conf(ifname, "autoconf", "0")
    except (OSError, KernelError):
        pass  # no IPv6 in this kernel: nothing to turn off


def _delete_tagged(ipr: IPRoute, ifname: str, tag: str) -> bool:
    link = links.observe_link(ipr, ifname)
    if link is None or link.kind != "macvlan" or link.alias != tag:
        return False
    return links.delete_link(ipr, ifname)


def delete_macvlan(netns_path: str, ifname: str, tag: str) -> None:
    """The endpoint's device in the container's namespace removed, if it is there and
    its owner's (a namespace that is gone took it along)."""
    if not netns.sandbox_exists(netns_path):
        return
    try:
        ipr = netns.open_ipr(netns_path)
    except OSError:
        return  # gone meanwhile
    try:
        _delete_tagged(ipr, ifname, tag)
    finally:
        ipr.close()
