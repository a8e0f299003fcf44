"""The kernel's own account of a packet: nftables trace events and conntrack, over netlink.

nft 1.0.6 prints `monitor trace` only as text, so portway reads the NFT_MSG_TRACE
messages of the NFNLGRP_NFTRACE group itself, and dumps conntrack (ctnetlink)
for the connection's final tuple. Both sockets belong to the namespace of the
thread that opens them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTRACE = 9
NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_TRACE = 17
IPCTNL_MSG_CT_GET = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF

FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", -1: "continue",
            -2: "break", -3: "jump", -4: "goto", -5: "return"}


@dataclass(frozen=True)
class TraceEvent:
    trace_id: int
    family: str
    table: str
    chain: str
    kind: str  # rule, policy, return
    handle: int | None
    verdict: str
    target: str  # a jump's or goto's chain
    iif: int
    oif: int
    network: bytes  # the IP header as the hook saw it (up to 40 bytes)
    transport: bytes

    def protocol(self) -> int | None:
        """The transport protocol from the network header: IPv4's protocol field, or
        IPv6's next header (the probe carries no extension headers)."""
        if not self.network:
            return None
        version = self.network[0] >> 4
        if version == 4 and len(self.network) >= 10:
            return self.network[9]
        if version == 6 and len(self.network) >= 7:
            return self.network[6]
        return None

    def first_segment(self) -> bool:
        """A TCP SYN without ACK (the connection's first packet), or not TCP at all."""
        if self.protocol() == 6 and len(self.transport) >= 14:
            return self.transport[13] & 0x12 == 0x02
        return True


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def parse_trace(payload: bytes) -> TraceEvent:
    """One NFT_MSG_TRACE message body (after the netlink header)."""
    family = FAMILIES.get(payload[0], str(payload[0]))
    attrs = dict(_attrs(payload[4:]))

    def text(key: int) -> str:
        return attrs[key].rstrip(b"\0").decode() if key in attrs else ""

    def u32(key: int) -> int:
        return int(struct.unpack("!I", attrs[key][:4])[0]) if key in attrs else 0

    verdict, target = "", ""
    if 5 in attrs:
        inner = dict(_attrs(attrs[5]))
        if 1 in inner:
            code = struct.unpack("!i", inner[1][:4])[0]
            verdict = VERDICTS.get(code, str(code))
        if 2 in inner:
            target = inner[2].rstrip(b"\0").decode()
    handle = int(struct.unpack("!Q", attrs[3][:8])[0]) if 3 in attrs else None
    return TraceEvent(trace_id=u32(6), family=family, table=text(1), chain=text(2),
                      kind=TRACE_TYPES.get(u32(4), str(u32(4))), handle=handle,
                      verdict=verdict or ("accept" if u32(16) == 1 else "drop"
                                          if 16 in attrs else ""),
                      target=target, iif=u32(10), oif=u32(12), network=attrs.get(8, b""),
                      transport=attrs.get(9, b""))


def _ready(sock: socket.socket, events: int, timeout: float) -> bool:
    """Whether sock is ready (POLLIN, POLLOUT) within timeout seconds. Through poll():
    select() refuses a descriptor numbered 1024 or more, and portwayd with a thousand
    containers holds more (trace --live failed there with \"filedescriptor out of range
    in select()\")."""
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class TraceListener:
    """Subscribed to the trace group of the calling thread's namespace until closed."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)

    def read(self, quiet: float = 0.2, limit: float = 2.0) -> list[TraceEvent]:
        """Events until none has come for `quiet` seconds (at most `limit` in all)."""
        events: list[TraceEvent] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not _ready(self.sock, select.POLLIN, quiet):
                break
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE:
                    events.append(parse_trace(data[offset + 16:offset + length]))
                offset += (length + 3) & ~3
        return events

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Connection:
    proto: int
    orig: tuple[str, int, str, int]  # src, sport, dst, dport as the client sent it
    reply: tuple[str, int, str, int]  # as the answer comes back: src is the real server
    status: int = 0  # CTA_STATUS: IPS_SEEN_REPLY (2) once a reply passed

    @property
    def replied(self) -> bool:
        return bool(self.status & IPS_SEEN_REPLY)


IPS_SEEN_REPLY = 1 << 1


# CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST: (is source, length)
CTA_IP = {1: (True, 4), 2: (False, 4), 3: (True, 16), 4: (False, 16)}


def _tuple(data: bytes) -> tuple[int, tuple[str, int, str, int]]:
    src = dst = ""
    proto = sport = dport = 0
    for kind, body in _attrs(data):
        if kind == 1:
            for k, v in _attrs(body):
                if k in CTA_IP:
                    is_src, length = CTA_IP[k]
                    text = str(ipaddress.ip_address(v[:length]))
                    src, dst = (text, dst) if is_src else (src, text)
        elif kind == 2:
            for k, v in _attrs(body):
                if k == 1:
                    proto = v[0]
                elif k == 2:
                    sport = struct.unpack("!H", v[:2])[0]
                elif k == 3:
                    dport = struct.unpack("!H", v[:2])[0]
    return proto, (src, sport, dst, dport)


def connections(family: int | None = None, toward: tuple[str, str, int] | None = None
                ) -> list[Connection]:
    """The conntrack table of the calling thread's namespace: of one family (AF_INET,
    AF_INET6), or both. toward (protocol, address, port): the entries whose original
    direction goes there, as the kernel filters them (CTA_FILTER, Linux 5.8; for IPv6
    by protocol and port only); a busy host holds tens of thousands of entries, and
    reading them all cost a trace a second. A kernel that ignores the filter sends them
    all: the caller tests each entry's address and port itself either way."""
    if toward is not None:
        family = socket.AF_INET6 if ":" in toward[1] else socket.AF_INET
    if family is not None:
        return _connections(family, toward)
    return [*_connections(socket.AF_INET), *_connections(socket.AF_INET6)]


CTA_TUPLE_ORIG, CTA_FILTER, CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 25, 1, 2
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 2, 1, 3
CTA_IP_V4_DST = 2
# The kernel's CTA_FILTER_F_* flags (net/netfilter/nf_internals.h): what to compare.
FILTER_IP_DST, FILTER_PROTO_NUM, FILTER_PROTO_DST_PORT = 1 << 1, 1 << 3, 1 << 5
NLA_F_NESTED = 0x8000
IPPROTO = {"tcp": 6, "udp": 17, "sctp": 132}


def _nla(kind: int, body: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(body), kind) + body + bytes(-len(body) % 4)


def _filter(family: int, toward: tuple[str, str, int]) -> bytes:
    """A dump request's attributes that keep only the entries toward (protocol,
    address, port) in their original direction."""
    proto, addr, port = toward
    l4 = _nla(CTA_PROTO_NUM, bytes([IPPROTO[proto]])) + \
        _nla(CTA_PROTO_DST_PORT, struct.pack("!H", port))
    tuple_ = _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, l4)
    flags = FILTER_PROTO_NUM | FILTER_PROTO_DST_PORT
    if family == socket.AF_INET:
        # (An IPv6 address compared by the kernel's filter excludes the entries that
        # have it, the opposite of what it should: there the port alone is asked for.)
        ip = _nla(CTA_IP_V4_DST, ipaddress.ip_address(addr).packed)
        tuple_ = _nla(CTA_TUPLE_IP | NLA_F_NESTED, ip) + tuple_
        flags |= FILTER_IP_DST
    return _nla(CTA_TUPLE_ORIG | NLA_F_NESTED, tuple_) + _nla(
        CTA_FILTER | NLA_F_NESTED, _nla(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags)) +
        _nla(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", 0)))


def _connections(family: int, toward: tuple[str, str, int] | None = None
                 ) -> list[Connection]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        body = struct.pack("=BBH", family, 0, 0)
        if toward is not None and toward[0] in IPPROTO:
            body += _filter(family, toward)
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, 1,
                              0) + body)
        out: list[Connection] = []
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, offset)
                if mtype == NLMSG_ERROR and length >= 20 and \
                        struct.unpack_from("=i", data, offset + 16)[0] and toward is not None:
                    return _connections(family)  # a kernel that refuses the filter
                if mtype in (NLMSG_DONE, NLMSG_ERROR) or length < 16:
                    return out
                attrs = dict(_attrs(data[offset + 20:offset + length]))
                if 1 in attrs and 2 in attrs:
                    proto, orig = _tuple(attrs[1])
                    _, reply = _tuple(attrs[2])
                    status = struct.unpack(">I", attrs[3][:4])[0] if len(attrs.get(3, b"")) \
                        >= 4 else 0
                    out.append(Connection(proto, orig, reply, status))
                offset += (length + 3) & ~3
    finally:
        sock.close()


IPCTNL_MSG_CT_DELETE, NLM_F_ACK, CTA_PROTO_SRC_PORT = 2, 0x4, 2
# CTA_IP_V4_SRC, CTA_IP_V4_DST / CTA_IP_V6_SRC, CTA_IP_V6_DST, per family
CTA_IP_ENDS: dict[int, tuple[int, int]] = {socket.AF_INET: (1, 2), socket.AF_INET6: (3, 4)}


def _orig(family: int, c: Connection) -> bytes:
    """The CTA_TUPLE_ORIG that names c (its protocol and ports: TCP, UDP or SCTP)."""
    src_kind, dst_kind = CTA_IP_ENDS[family]
    src, sport, dst, dport = c.orig
    ip = _nla(src_kind, ipaddress.ip_address(src).packed) + \
        _nla(dst_kind, ipaddress.ip_address(dst).packed)
    l4 = _nla(CTA_PROTO_NUM, bytes([c.proto])) + \
        _nla(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)) + \
        _nla(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    return _nla(CTA_TUPLE_ORIG | NLA_F_NESTED, _nla(CTA_TUPLE_IP | NLA_F_NESTED, ip) +
                _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, l4))


def forget_connections(addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
                       ) -> int:
    """The TCP, UDP and SCTP conntrack entries of the calling thread's namespace with
    one of addresses at an end, as sent or as answered (a published port's entry has the
    container's address as its reply's source), deleted: none keeps steering a running
    flow to an address that has moved. How many; one gone meanwhile counts as done."""
    wanted = {str(a) for a in addresses}
    count = 0
    for family in sorted({socket.AF_INET if a.version == 4 else socket.AF_INET6
                          for a in addresses}):
        count += _delete(family, [
            c for c in _connections(family) if c.proto in IPPROTO.values() and
            wanted & {c.orig[0], c.orig[2], c.reply[0], c.reply[2]}])
    return count


def forget_datagram_flows(ports: Sequence[tuple[int, str | None, int]]) -> int:
    """The UDP conntrack entries of the calling thread's namespace sent to one of ports
    (IP version, host address or None for every one, port) and never answered, deleted:
    a datagram flow that began while the port led nowhere (to the host, whose held
    socket drops it, before the port was published for the family) keeps its entry
    while it goes on, and so its way, past the published port's DNAT (netavark's
    flush_udp_conntrack, Docker's too, by port alone). A flow that was answered (the
    host's or a container's own, to that port elsewhere) is left alone. How many."""
    count = 0
    for version in sorted({v for v, _, _ in ports}):
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        wanted = [(host, port) for v, host, port in ports if v == version]
        count += _delete(family, [
            c for c in _connections(family) if c.proto == IPPROTO["udp"] and
            not c.replied and
            any(c.orig[3] == port and host in (None, c.orig[2]) for host, port in wanted)])
    return count


def _delete(family: int, doomed: list[Connection]) -> int:
    """The entries doomed deleted; how many (one gone meanwhile counts as done)."""
    if not doomed:
        return 0
    count = 0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        for seq, c in enumerate(doomed, 1):
            body = struct.pack("=BBH", family, 0, 0) + _orig(family, c)
            sock.send(struct.pack("=IHHII", 16 + len(body), kind,
                                  NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
            data = sock.recv(1 << 16)
            err = -struct.unpack_from("=i", data, 16)[0] if len(data) >= 20 else 0
            if err == 0:
                count += 1
            elif err != errno.ENOENT:
                raise OSError(err, os.strerror(err))
    finally:
        sock.close()
    return count


def send_probe(proto: str, daddr: str, dport: int, sport: int,
               wait: float = 0.8) -> tuple[str, tuple[str, int]]:
    """One TCP SYN (a connection attempt) or one UDP datagram from the calling thread's
    namespace, from port sport. Returns the outcome (connected, refused, unreachable,
    timeout, answered, error:...) and the local address the kernel chose."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    v6 = ipaddress.ip_address(daddr).version == 6
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if v6 else "0.0.0.0", sport))
        if proto == "tcp":
            s.setblocking(False)
            err = s.connect_ex((daddr, dport))
            if err not in (0, errno.EINPROGRESS):
                return _outcome(err), s.getsockname()
            writable = _ready(s, select.POLLOUT, wait)
            local = s.getsockname()
            if not writable:
                return "timeout", local
            return _outcome(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)), local
        try:
            s.connect((daddr, dport))
            s.send(b"portway trace probe")
            s.settimeout(wait)
            s.recv(512)
            return "answered", s.getsockname()
        except TimeoutError:
            return "timeout", s.getsockname()
        except OSError as exc:
            return _outcome(exc.errno or 0), s.getsockname()


def _outcome(err: int) -> str:
    if err == 0:
        return "connected"
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return f"error:{errno.errorcode.get(err, err)}"


def udp_in_errors() -> int:
    """UDP datagrams the calling thread's namespace dropped on receipt, both families
    (InErrors: a socket filter's drop, or a full buffer): the only trace a datagram
    dropped by a socket's filter leaves."""
    total = 0
    try:
        with open("/proc/thread-self/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        if len(rows) == 2:
            total += int(rows[1][rows[0].index("InErrors")])
        with open("/proc/thread-self/net/snmp6") as f:
            total += sum(int(line.split()[1]) for line in f
                         if line.startswith("Udp6InErrors"))
    except (OSError, ValueError, IndexError):
        pass
    return total
