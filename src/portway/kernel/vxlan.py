"""VXLAN devices of overlay networks, and their forwarding entries (FDB and neighbour),
over the host's rtnetlink socket.

The device never learns (`nolearning`) and answers ARP/ND itself from its neighbour
entries (`proxy`): every entry comes from the cluster store, and nothing is flooded to
other hosts (there is no all-zero FDB entry). ensure_/delete_ are idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portway.core.overlay import VXLAN_PORT, Fdb, ForwardingPlan, Neighbour
from portway.errors import KernelError
from portway.kernel.links import GONE, _kernel_error, observe_link
from portway.model.types import IPAddress

NUD_PERMANENT = 0x80
NTF_SELF = 0x02


def ensure_vxlan(ipr: IPRoute, name: str, vni: int, local: IPAddress, mtu: int,
                 bridge: str, tag: str) -> int:
    """The network's VXLAN device, up, a port of bridge; returns its index. One that
    exists with another VNI or local address is made again."""
    link = observe_link(ipr, name)
    if link is not None and (link.kind != "vxlan" or not _same(ipr, link.index, vni, local)):
        if link.kind != "vxlan":
            raise KernelError(f"{name} exists but is a {link.kind or 'plain'} link, not "
                              "a VXLAN device", f"remove it with 'ip link del {name}'")
        ipr.link("del", index=link.index)
        link = None
    if link is None:
        local_attr = "vxlan_local" if local.version == 4 else "vxlan_local6"
        try:
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni,
                     vxlan_port=VXLAN_PORT, vxlan_learning=0, vxlan_proxy=1,
                     **{local_attr: str(local)}, mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _kernel_error(f"create VXLAN device {name}", exc) from None
        link = observe_link(ipr, name)
        if link is None:
            raise KernelError(f"VXLAN device {name} vanished while being created", "try again")
    bridge_link = observe_link(ipr, bridge)
    if bridge_link is None:
        raise KernelError(f"bridge {bridge} is missing", "run 'portway gc'")
    try:
        if link.alias != tag:
            ipr.link("set", index=link.index, ifalias=tag)
        if link.master != bridge_link.index or not link.up or link.mtu != mtu:
            ipr.link("set", index=link.index, master=bridge_link.index, mtu=mtu, state="up")
    except NetlinkError as exc:
        raise _kernel_error(f"set up VXLAN device {name}", exc) from None
    return link.index


def _same(ipr: IPRoute, index: int, vni: int, local: IPAddress) -> bool:
    msg = ipr.link("get", index=index)[0]
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is None:
        return False
    have_local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
    return bool(data.get_attr("IFLA_VXLAN_ID") == vni and have_local is not None
                and ipaddress.ip_address(have_local) == local)


def observe_vxlan(ipr: IPRoute, index: int) -> tuple[int, str, int] | None:
    """A VXLAN device's VNI, local address and destination port (None: not one)."""
    msg = ipr.link("get", index=index)[0]
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or ""
    return (int(data.get_attr("IFLA_VXLAN_ID") or 0), str(local),
            int(data.get_attr("IFLA_VXLAN_PORT") or VXLAN_PORT))


def observe_forwarding(ipr: IPRoute, index: int) -> tuple[set[Fdb], set[Neighbour]]:
    """The device's permanent FDB entries with a remote (dst) and its permanent
    neighbours: the entries portway programs."""
    fdb: set[Fdb] = set()
    for msg in ipr.fdb("dump", ifindex=index):
        if msg["ifindex"] != index:
            continue
        dst = msg.get_attr("NDA_DST")
        mac = msg.get_attr("NDA_LLADDR")
        if dst and mac and mac != "00:00:00:00:00:00":
            fdb.add(Fdb(str(mac).lower(), ipaddress.ip_address(dst)))
    neigh: set[Neighbour] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_neighbours(family=family, ifindex=index):
            if msg["ifindex"] != index or not msg["state"] & NUD_PERMANENT:
                continue
            dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if dst and mac:
                neigh.add(Neighbour(ipaddress.ip_address(dst), str(mac).lower()))
    return fdb, neigh


def apply_forwarding(ipr: IPRoute, index: int, plan: ForwardingPlan) -> list[str]:
    """Removals first (a MAC that moved to another host), then additions. Returns the
    errors (each entry is tried)."""
    errors: list[str] = []
    for n in plan.del_neigh:
        _try(errors, f"remove neighbour {n.ip}", lambda n=n: ipr.neigh(
            "del", dst=str(n.ip), lladdr=n.mac, ifindex=index,
            family=socket.AF_INET if n.ip.version == 4 else socket.AF_INET6))
    for f in plan.del_fdb:
        _try(errors, f"remove FDB entry {f.mac}", lambda f=f: ipr.fdb(
            "del", ifindex=index, lladdr=f.mac, dst=str(f.dst)))
    for f in plan.add_fdb:
        _try(errors, f"add FDB entry {f.mac} dst {f.dst}", lambda f=f: ipr.fdb(
            "append", ifindex=index, lladdr=f.mac, dst=str(f.dst), state=NUD_PERMANENT,
            flags=NTF_SELF))
    for n in plan.add_neigh:
        _try(errors, f"add neighbour {n.ip}", lambda n=n: ipr.neigh(
            "replace", dst=str(n.ip), lladdr=n.mac, ifindex=index, state=NUD_PERMANENT,
            family=socket.AF_INET if n.ip.version == 4 else socket.AF_INET6))
    return errors


def _try(errors: list[str], what: str, fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except NetlinkError as exc:
        if exc.code in GONE or exc.code == errno.EEXIST:
            return
        errors.append(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")
