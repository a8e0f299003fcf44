"""VXLAN devices of overlay networks, and their forwarding entries (FDB and neighbour),
over the host's rtnetlink socket.

The device never learns (`nolearning`) and answers ARP/ND itself from its neighbour
entries (`proxy`): every entry comes from the cluster store, and nothing is flooded to
other hosts (there is no all-zero FDB entry). ensure_/delete_ are idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portway.core.overlay import VXLAN_PORT, Fdb, ForwardingPlan, Neighbour
from portway.errors import KernelError
from portway.kernel.dumps import retried
from portway.kernel.links import GONE, _kernel_error, observe_link
from portway.model.types import IPAddress

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NETLINK_ROUTE, RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 0, 28, 29, 30
NLMSG_ERROR, NLMSG_DONE, NLM_F_DUMP = 2, 3, 0x300
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE, NLM_F_APPEND = \
    0x1, 0x4, 0x100, 0x400, 0x800
NDA_DST, NDA_LLADDR = 1, 2
AF_BRIDGE = 7
# Requests sent before their answers are read: at most this many at a time (each answer
# is 36 bytes, an error's more; the socket's buffer holds a few thousand).
BATCH = 256


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


@retried
def observe_forwarding(ipr: IPRoute, index: int, requests: Requests | None = None
                       ) -> tuple[set[Fdb], set[Neighbour]]:
    """The device's permanent FDB entries with a remote (dst) and its permanent
    neighbours: the entries portway programs. With requests (made in ipr's namespace),
    read over its plain socket: pyroute2 decodes every attribute of every entry, a
    second or more for the 2,000 entries of 1,000 endpoints."""
    if requests is not None:
        with requests.lock:
            return _observe_plain(requests.sock, index)
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


class Requests:
    """An rtnetlink socket in the namespace of the thread that made it, for
    apply_forwarding's batches (their answers are read on it, one batch at a time)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()


def apply_forwarding(ipr: IPRoute, index: int, plan: ForwardingPlan,
                     requests: Requests | None = None) -> list[str]:
    """Removals first (a MAC that moved to another host), then additions. Returns the
    errors (each entry is tried). With requests (made in ipr's namespace), the entries
    go in batches, each batch in one write and its answers read after: 1,000 entries,
    one request and its answer at a time, took seconds."""
    if requests is not None:
        with requests.lock:
            return _apply_batched(requests.sock, index, plan)
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


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _ndmsg(family: int, index: int, state: int, flags: int) -> bytes:
    return struct.pack("=BxxxiHBB", family, index, state, flags, 0)


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _requests(index: int, plan: ForwardingPlan) -> list[tuple[str, int, int, bytes]]:
    """(what, message type, flags, body) of each change of plan, in apply_forwarding's
    order, as ip neigh and bridge fdb send them."""
    out: list[tuple[str, int, int, bytes]] = []
    mac = bytes.fromhex
    for n in plan.del_neigh:
        out.append((f"remove neighbour {n.ip}", RTM_DELNEIGH, 0,
                    _ndmsg(_family(n.ip), index, 0, 0) + _attr(NDA_DST, n.ip.packed)))
    for f in plan.del_fdb:
        out.append((f"remove FDB entry {f.mac}", RTM_DELNEIGH, 0,
                    _ndmsg(AF_BRIDGE, index, 0, NTF_SELF)
                    + _attr(NDA_LLADDR, mac(f.mac.replace(":", "")))
                    + _attr(NDA_DST, f.dst.packed)))
    for f in plan.add_fdb:
        out.append((f"add FDB entry {f.mac} dst {f.dst}", RTM_NEWNEIGH,
                    NLM_F_CREATE | NLM_F_APPEND,
                    _ndmsg(AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF)
                    + _attr(NDA_LLADDR, mac(f.mac.replace(":", "")))
                    + _attr(NDA_DST, f.dst.packed)))
    for n in plan.add_neigh:
        out.append((f"add neighbour {n.ip}", RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
                    _ndmsg(_family(n.ip), index, NUD_PERMANENT, 0)
                    + _attr(NDA_DST, n.ip.packed)
                    + _attr(NDA_LLADDR, mac(n.mac.replace(":", "")))))
    return out


def _apply_batched(sock: socket.socket, index: int, plan: ForwardingPlan) -> list[str]:
    errors: list[str] = []
    requests = _requests(index, plan)
    for start in range(0, len(requests), BATCH):
        chunk = requests[start:start + BATCH]
        data = b"".join(struct.pack("=IHHII", 16 + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_ACK | flags, start + i + 1, 0) + body
                        for i, (_, kind, flags, body) in enumerate(chunk))
        try:
            sock.send(data)
        except OSError as exc:
            return errors + [f"{what}: {exc.strerror}" for what, *_ in chunk]
        pending = {start + i + 1: what for i, (what, *_) in enumerate(chunk)}
        while pending:
            reply = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(reply):
                length, mtype, _, seq, _ = struct.unpack_from("=IHHII", reply, offset)
                if length < 16:
                    break
                if mtype == NLMSG_ERROR and seq in pending:
                    what = pending.pop(seq)
                    code = -struct.unpack_from("=i", reply, offset + 16)[0]
                    if code and code not in GONE and code != errno.EEXIST:
                        errors.append(f"{what}: {os.strerror(code)}")
                offset += (length + 3) & ~3
    return errors


def _dump(sock: socket.socket, family: int) -> Iterator[tuple[int, int, dict[int, bytes]]]:
    """(ifindex, state, attributes) of each neighbour entry of family (AF_BRIDGE: the
    FDB)."""
    sock.send(struct.pack("=IHHII", 28, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
              + _ndmsg(family, 0, 0, 0))
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, _, _, _ = struct.unpack_from("=IHHII", data, offset)
            if length < 16 or mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + 16)[0]
                raise KernelError(f"list neighbour entries: {os.strerror(code)}",
                                  "try again")
            fam, index, state, _, _ = struct.unpack_from("=BxxxiHBB", data, offset + 16)
            if fam == family:
                attrs: dict[int, bytes] = {}
                at, end = offset + 28, offset + length
                while at + 4 <= end:
                    size, kind = struct.unpack_from("=HH", data, at)
                    if size < 4:
                        break
                    attrs.setdefault(kind & 0x3FFF, data[at + 4:at + size])
                    at += (size + 3) & ~3
                yield index, state, attrs
            offset += (length + 3) & ~3


def _observe_plain(sock: socket.socket, index: int) -> tuple[set[Fdb], set[Neighbour]]:
    fdb: set[Fdb] = set()
    for at, _state, a in _dump(sock, AF_BRIDGE):
        dst, mac = a.get(NDA_DST), a.get(NDA_LLADDR)
        if at == index and dst and mac and any(mac):
            fdb.add(Fdb(":".join(f"{b:02x}" for b in mac), ipaddress.ip_address(dst)))
    neigh: set[Neighbour] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for at, state, a in _dump(sock, family):
            dst, mac = a.get(NDA_DST), a.get(NDA_LLADDR)
            if at == index and state & NUD_PERMANENT and dst and mac:
                neigh.add(Neighbour(ipaddress.ip_address(dst),
                                    ":".join(f"{b:02x}" for b in mac)))
    return fdb, neigh


def _try(errors: list[str], what: str, fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except NetlinkError as exc:
        if exc.code in GONE or exc.code == errno.EEXIST:
            return
        errors.append(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")
