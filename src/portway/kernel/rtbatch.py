"""Rtnetlink requests built by hand and sent several to a datagram: an endpoint's set-up.

pyroute2 spends about 0.3 ms of Python on each request (its request objects and filters,
and a full parse of every answer, a new link's some fifty attributes included), and an
endpoint took seven requests, each its own round trip: most of portway's own share of a
container's set-up. Here a message is a few struct.pack calls, the messages for one
namespace go out in one send, and only their acks (and the one echo asked for) are read.

Rules of this module:
1. It builds messages and reads their answers; what to send, and which error is
   harmless, is links.py's.
2. A socket lent by its owner (pyroute2's, duplicated) is used only from a send until
   every answer that send asked for is read: nothing is left for the owner to find.
3. The kernel handles a datagram's messages in order, each on its own: a message that
   fails does not stop the next ones. The caller reads every message's error.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from portway.model.types import IPAddress, IPNetwork

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x4, 0x8
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_NET_NS_FD = 18, 20, 26, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFA_ADDRESS, IFA_LOCAL, IFA_F_NODAD = 1, 2, 0x02
RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_PRIORITY = 1, 5, 4, 6
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
RT_SCOPE_LINK = 253
NLA_F_NESTED = 0x8000

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
# Sequence numbers of their own, far from the ones pyroute2 counts up from 255, so an
# answer is never taken for one of the owner's.
_FIRST_SEQ = 0x5057_0000


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _text(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


def _no_ipv6_addresses() -> bytes:
    """IFLA_AF_SPEC: IPv6 address generation none."""
    return _nested(IFLA_AF_SPEC, _nested(AF_INET6, _attr(
        IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))))


@dataclass
class Answer:
    """What the kernel said to one message: 0 or an errno, and the echo if one was asked."""

    error: int = 0
    echo: bytes = b""


@dataclass
class Batch:
    """Messages for one namespace's socket, in the order the kernel is to apply them."""

    messages: list[tuple[int, int, bytes]] = field(default_factory=list)  # type, flags, body

    def _add(self, kind: int, flags: int, body: bytes) -> int:
        self.messages.append((kind, flags, body))
        return len(self.messages) - 1

    def veth(self, ifname: str, mtu: int, peer: str, peer_netns_fd: int, peer_mac: str,
             peer_mtu: int) -> int:
        """A veth pair, its peer made in the namespace of peer_netns_fd; the new link
        is echoed (its ifindex, and its peer's in IFLA_LINK). peer_mac "": the kernel's."""
        peer_info = _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0) + _text(IFLA_IFNAME, peer) + \
            _u32(IFLA_NET_NS_FD, peer_netns_fd) + \
            (_attr(IFLA_ADDRESS, _mac(peer_mac)) if peer_mac else b"") + \
            _u32(IFLA_MTU, peer_mtu)
        body = _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0) + _text(IFLA_IFNAME, ifname) + \
            _u32(IFLA_MTU, mtu) + _nested(IFLA_LINKINFO, _text(IFLA_INFO_KIND, "veth"),
                                          _nested(IFLA_INFO_DATA,
                                                  _attr(VETH_INFO_PEER, peer_info)))
        return self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body)

    def link(self, index: int, up: bool = False, no_ipv6_addresses: bool = False,
             alias: str | None = None, master: int | None = None,
             mac: str | None = None) -> int:
        """Change a link: up, IPv6 address generation none, owner tag, bridge port, MAC."""
        flags = IFF_UP if up else 0
        body = _IFINFO.pack(AF_UNSPEC, 0, index, flags, flags)
        if no_ipv6_addresses:
            body += _no_ipv6_addresses()
        if alias is not None:
            body += _text(IFLA_IFALIAS, alias)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        if mac is not None:
            body += _attr(IFLA_ADDRESS, _mac(mac))
        return self._add(RTM_NEWLINK, 0, body)

    def address(self, index: int, address: IPAddress, prefixlen: int) -> int:
        """An address on a link, scope global; an IPv6 one without duplicate address
        detection (as links._add_address)."""
        family = AF_INET if address.version == 4 else AF_INET6
        flags = IFA_F_NODAD if address.version == 6 else 0
        packed = address.packed
        body = struct.pack("=BBBBI", family, prefixlen, flags, RT_SCOPE_UNIVERSE, index) + \
            _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        return self._add(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def default_route(self, index: int, gateway: IPAddress, metric: int | None,
                      replace: bool) -> int:
        """A default route of gateway's family via gateway out of the link, in the main
        table (proto static, as pyroute2 makes it): replacing one that exists, or added
        beside it (EEXIST if one of the same metric is there)."""
        family = AF_INET if gateway.version == 4 else AF_INET6
        body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, 0) + \
            _attr(RTA_GATEWAY, gateway.packed) + _u32(RTA_OIF, index)
        if metric is not None:
            body += _u32(RTA_PRIORITY, metric)
        mode = NLM_F_REPLACE if replace else NLM_F_EXCL
        return self._add(RTM_NEWROUTE, NLM_F_CREATE | mode, body)

    def onlink_route(self, index: int, subnet: IPNetwork) -> int:
        """A route to subnet straight out of the link, no gateway (as the kernel's own
        for an address's prefix): a subnet of the link's network the container has no
        address in, whose neighbours are on the same bridge. One that exists is
        replaced."""
        family = AF_INET if subnet.version == 4 else AF_INET6
        scope = RT_SCOPE_LINK if subnet.version == 4 else RT_SCOPE_UNIVERSE
        body = struct.pack("=BBBBBBBBI", family, subnet.prefixlen, 0, 0, RT_TABLE_MAIN,
                           RTPROT_STATIC, scope, RTN_UNICAST, 0) + \
            _attr(RTA_DST, subnet.network_address.packed) + _u32(RTA_OIF, index)
        return self._add(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)

    def send(self, sock: socket.socket) -> list[Answer]:
        """Send every message in one datagram and read every answer: one per message,
        in order. (The kernel handles them within the send: the answers are waiting.)"""
        if not self.messages:
            return []
        out = []
        for seq, (kind, flags, body) in enumerate(self.messages, _FIRST_SEQ):
            out.append(_HEADER.pack(16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                                    seq, 0) + body)
        sock.send(b"".join(out))
        answers = [Answer() for _ in self.messages]
        pending = len(self.messages)
        while pending:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < 16:
                    break
                which = seq - _FIRST_SEQ
                if 0 <= which < len(answers):  # (anything else is not this batch's)
                    if kind == NLMSG_ERROR:
                        answers[which].error = -struct.unpack_from("=i", data, offset + 16)[0]
                        pending -= 1
                    else:
                        answers[which].echo = data[offset + 16:offset + length]
                offset += (length + 3) & ~3
        return answers


def echoed_link(echo: bytes) -> tuple[int, int]:
    """(ifindex, IFLA_LINK) of an echoed link message; 0 for what it does not say."""
    if len(echo) < _IFINFO.size:
        return 0, 0
    index = _IFINFO.unpack_from(echo)[2]
    link = 0
    offset = _IFINFO.size
    while offset + 4 <= len(echo):
        length, kind = struct.unpack_from("=HH", echo, offset)
        if length < 4:
            break
        if kind & 0x3FFF == IFLA_LINK and length >= 8:
            link = struct.unpack_from("=I", echo, offset + 4)[0]
        offset += (length + 3) & ~3
    return int(index), int(link)


def host_socket() -> socket.socket:
    """A fresh rtnetlink socket in the calling thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


class HasSocket(Protocol):
    def fileno(self) -> int: ...


@contextmanager
def lent(owner: HasSocket) -> Iterator[socket.socket]:
    """The socket of a pyroute2 IPRoute, lent for a batch: a duplicate of its
    descriptor, closed afterwards. It is in the owner's namespace, wherever the calling
    thread is."""
    sock = socket.socket(fileno=os.dup(owner.fileno()))
    try:
        yield sock
    finally:
        sock.close()
