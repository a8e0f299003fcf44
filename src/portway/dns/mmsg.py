"""Many datagrams per system call: recvmmsg(2) and sendmmsg(2) through ctypes.

Python's socket module reads and writes one datagram per call. Under load the
DNS server has dozens queued: one recvmmsg takes them all, and one sendmmsg
sends every answer, so the client is woken once per batch instead of once per
answer. A Batch serves sockets of one family, IPv4 or IPv6: the size of the
sender addresses it keeps is the family's (sockaddr_in or sockaddr_in6).

Answers of one batch that go to the same client socket and have the same length
leave as one UDP GSO send (UDP_SEGMENT, udp(7)): one packet through routing,
nftables, the bridge and the veth, cut back into datagrams only at the client's
socket. A kernel or path that refuses it gets one datagram per send from then on.
send_to does the same for datagrams to addresses given with them (the answers of
forwarded queries), or on a connected socket (the queries to an upstream).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

MSG_DONTWAIT = 0x40
SOCKADDR_IN = 16  # family, port, address, padding
SOCKADDR_IN6 = 28  # family, port, flow label, address, scope id
# Per family: the size of its sockaddr, where in it the address is and how long, and
# how much of it from the port on tells one sender from another (not the padding).
_LAYOUT: dict[int, tuple[int, int, int, int]] = {
    socket.AF_INET: (SOCKADDR_IN, 4, 4, 6), socket.AF_INET6: (SOCKADDR_IN6, 8, 16, 26)}
SOL_UDP, UDP_SEGMENT = 17, 103
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS: when a datagram reached the socket (a timespec)
STAMP_SPACE = 32  # CMSG_SPACE(16): the header and a timespec
_STAMP = struct.Struct("=Qiiqq")  # a cmsghdr (len, level, type) and a timespec
PR_SET_TIMERSLACK = 29
MAX_SEGMENTS = 64  # per GSO send: what every kernel with UDP GSO takes (UDP_MAX_SEGMENTS)
_SEGMENT = struct.Struct("=QiiH")  # a cmsghdr (len, level, type) and the segment size
CMSG_SPACE = 24  # CMSG_SPACE(2): the header and two bytes, aligned to 8
_FAMILY = socket.AF_INET.to_bytes(2, sys.byteorder)  # sa_family: host order
_FAMILY6 = socket.AF_INET6.to_bytes(2, sys.byteorder)
_NO_GSO = (errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


class Batch:
    """Buffers for up to `size` datagrams of up to `bufsize` bytes, reused.

    The vectors are read and written as raw memory (struct, memoryview) rather than
    through ctypes' field objects, which cost a microsecond per access."""

    def __init__(self, size: int = 64, bufsize: int = 4096, outsize: int = 512,
                 family: int = socket.AF_INET) -> None:
        self.size, self.bufsize, self.outsize, self.family = size, bufsize, outsize, family
        namesize, self._addr_at, self._addr_len, self._keysize = _LAYOUT[family]
        self._namesize = namesize
        self._data = ctypes.create_string_buffer(size * bufsize)
        self._names = ctypes.create_string_buffer(size * namesize)
        self._out = ctypes.create_string_buffer(size * outsize)
        self._data_view = memoryview(self._data).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        self._out_view = memoryview(self._out).cast("B")
        self._riov = (_Iovec * size)()
        self._rvec = (_Mmsghdr * size)()
        self._siov = (_Iovec * size)()
        self._svec = (_Mmsghdr * size)()
        self._rvec_view = memoryview(self._rvec).cast("B")
        self._svec_view = memoryview(self._svec).cast("B")
        self._siov_view = memoryview(self._siov).cast("B")
        data, names, out = (ctypes.addressof(b) for b in (self._data, self._names, self._out))
        self._names_addr = names
        self._svec_addr = ctypes.addressof(self._svec)
        riov, siov = ctypes.addressof(self._riov), ctypes.addressof(self._siov)
        for i in range(size):
            self._riov[i].base, self._riov[i].len = data + i * bufsize, bufsize
            self._siov[i].base = out + i * outsize
            for vec, iov in ((self._rvec, riov), (self._svec, siov)):
                hdr = vec[i].hdr
                hdr.name, hdr.namelen = names + i * namesize, namesize
                hdr.iov = ctypes.cast(iov + i * ctypes.sizeof(_Iovec),
                                      ctypes.POINTER(_Iovec))
                hdr.iovlen = 1
        self._entry = ctypes.sizeof(_Mmsghdr)
        self._len_at = _Mmsghdr.len.offset
        self._name_at = _Msghdr.name.offset
        self._control_at = _Msghdr.control.offset
        self._out_addr = out
        self._control = ctypes.create_string_buffer(size * CMSG_SPACE)
        self._control_view = memoryview(self._control).cast("B")
        self._control_addr = ctypes.addressof(self._control)
        # Addresses for send_to, one per distinct destination of a call.
        self._to = ctypes.create_string_buffer(size * namesize)
        self._to_view = memoryview(self._to).cast("B")
        self._to_addr = ctypes.addressof(self._to)
        self._stamps = ctypes.create_string_buffer(size * STAMP_SPACE)
        self._stamps_view = memoryview(self._stamps).cast("B")
        # With stamped (see stamp()): when each datagram of the last recv reached its
        # socket, in ns since the epoch (0: not said), by slot.
        self.stamped = False
        self.arrived: list[int] = []
        self._stamped_slots = 0
        self.coalesce = True  # GSO sends; off for good once the kernel refuses one
        self.datagrams = self.packets = 0  # sent so far, for `portway dns`

    def recv(self, fd: int) -> list[tuple[bytes, bytes]]:
        """What is queued now (up to size): (datagram, the packed address of its
        sender: 4 bytes, or 16 on an IPv6 socket), in slot order: the i-th came in
        slot i. peer(slot) tells the sender's port too; send() answers to a slot's
        sender. A datagram longer than bufsize arrives cut short, as with
        recvfrom(bufsize).

        Each namelen is left as the kernel wrote it back: on a socket of the Batch's
        family that is always the size of its sockaddr, the size it was set to (so a
        Batch must not read a socket of the other family)."""
        if self.stamped:
            return self._recv_stamped(fd)
        n = _recvmmsg(fd, self._rvec, self.size, MSG_DONTWAIT, None)
        if n < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(code, os.strerror(code))
        data, names, view = self._data_view, self._names_view, self._rvec_view
        size, entry, at, unpack = self.bufsize, self._entry, self._len_at, struct.unpack_from
        namesize, addr_at, addr_len = self._namesize, self._addr_at, self._addr_len
        out = []
        for i in range(n):
            start, name = i * size, i * namesize + addr_at
            out.append((bytes(data[start:start + unpack("I", view, i * entry + at)[0]]),
                        bytes(names[name:name + addr_len])))
        return out

    def stamp(self, on: bool) -> None:
        """Whether recv also reads when each datagram reached its socket (into
        `arrived`): the sockets it reads must have SO_TIMESTAMPNS set. Off, recv costs
        what it did: no control messages are asked for."""
        view, entry = self._rvec_view, self._entry
        for i in range(self.size):
            struct.pack_into("PN", view, i * entry + self._control_at,
                             ctypes.addressof(self._stamps) + i * STAMP_SPACE if on else 0,
                             STAMP_SPACE if on else 0)
        self.stamped, self.arrived, self._stamped_slots = on, [], 0

    def _recv_stamped(self, fd: int) -> list[tuple[bytes, bytes]]:
        """recv, with `arrived`: the control buffers' lengths are given back to them
        first (the kernel wrote each message's own over them)."""
        view, entry, at = self._rvec_view, self._entry, _Msghdr.controllen.offset
        for i in range(self._stamped_slots):  # the kernel wrote only to those it filled
            struct.pack_into("N", view, i * entry + at, STAMP_SPACE)
        self.stamped = False
        try:
            out = self.recv(fd)
        finally:
            self.stamped = True
        stamps, arrived = self._stamps_view, []
        for i in range(len(out)):
            _, level, kind, sec, nsec = _STAMP.unpack_from(stamps, i * STAMP_SPACE)
            got = struct.unpack_from("N", view, i * entry + at)[0]
            ok = got >= _STAMP.size and level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
            arrived.append(sec * 1_000_000_000 + nsec if ok else 0)
        self.arrived, self._stamped_slots = arrived, len(out)
        return out

    def peer(self, slot: int) -> tuple[str, int] | tuple[str, int, int, int]:
        """A slot's sender as socket.sendto takes it: (address, port), or on IPv6
        (address, port, flow label, scope id)."""
        at = slot * self._namesize
        return self.peer_of(bytes(self._names_view[at:at + self._namesize]))

    def name(self, slot: int) -> bytes:
        """A slot's sender as the kernel wrote it (its sockaddr), for send_to."""
        at = slot * self._namesize
        return bytes(self._names_view[at:at + self._namesize])

    def peer_of(self, name: bytes) -> tuple[str, int] | tuple[str, int, int, int]:
        """A sockaddr of this family (see name) as socket.sendto takes it."""
        port = int.from_bytes(name[2:4], "big")
        if self.family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, name[4:8]), port
        flow = int.from_bytes(name[4:8], "big")  # sin6_flowinfo: network order
        scope = int.from_bytes(name[24:28], sys.byteorder)  # host order
        return socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flow, scope

    def send(self, fd: int, out: list[tuple[bytes, int]]) -> None:
        """Send each (datagram, slot) to that slot's sender; a datagram longer than
        outsize, or one the kernel refuses, is dropped (UDP). Datagrams of one length
        to one sender go as one GSO send, so a sender's datagrams of different lengths
        may arrive in another order than given (as UDP allows)."""
        sends = self._coalesced(out) if self.coalesce else [[item] for item in out
                                                            if len(item[0]) <= self.outsize]
        self._transmit(fd, sends, self._names_addr)

    def name_of(self, peer: tuple[Any, ...]) -> bytes:
        """A sender as socket.recvfrom gives it, as name(slot) would have it (its
        sockaddr): what send_to takes. An IPv6 link-local host may carry its scope's
        name ("fe80::1%eth0"): the scope id in the tuple says it already."""
        address = socket.inet_pton(self.family, str(peer[0]).partition("%")[0])
        port = int(peer[1]).to_bytes(2, "big")
        if self.family == socket.AF_INET:
            return _FAMILY + port + address + bytes(8)
        return (_FAMILY6 + port + int(peer[2]).to_bytes(4, "big") + address +
                int(peer[3]).to_bytes(4, sys.byteorder))

    def send_one(self, sock: socket.socket, data: bytes, slot: int) -> None:
        """send() of one datagram: the socket's own sendto, which costs less than a
        sendmmsg through ctypes (no vectors to fill, no grouping)."""
        if len(data) > self.outsize:
            return
        try:
            sock.sendto(data, self.peer(slot))
        except (OSError, OverflowError):  # refused, or a flow label sendto cannot take
            return  # dropped, as send drops what the kernel refuses
        self.datagrams += 1
        self.packets += 1

    def send_to(self, fd: int, out: Sequence[tuple[bytes, bytes | None]],
                strict: bool = False) -> None:
        """Send each (datagram, sockaddr) to that address (a name(slot) of a Batch of
        this family), or, all with None, to where fd is connected: at most size datagrams of
        at most outsize bytes each (ValueError otherwise), coalesced as send does. A
        datagram the kernel refuses is dropped, or with strict, raises OSError (what
        was given before it may have been sent)."""
        if len(out) > self.size or any(len(d) > self.outsize for d, _ in out):
            raise ValueError("more datagrams, or longer ones, than the Batch holds")
        names, namesize = self._to_view, self._namesize
        slots: dict[bytes | None, int] = {}
        items: list[tuple[bytes, int]] = []
        for data, name in out:
            slot = slots.get(name)
            if slot is None:
                slot = slots[name] = len(slots)
                if name is not None:
                    names[slot * namesize:(slot + 1) * namesize] = name
            items.append((data, slot))
        if not self.coalesce:
            sends = [[item] for item in items]
        else:
            groups: dict[tuple[int, int], list[tuple[bytes, int]]] = {}
            sends = []
            for item in items:
                key = (item[1], len(item[0]))
                group = groups.get(key)
                if group is None or len(group) == MAX_SEGMENTS:
                    groups[key] = group = []
                    sends.append(group)
                group.append(item)
        connected = None in slots
        self._transmit(fd, sends, 0 if connected else self._to_addr, strict)

    def _transmit(self, fd: int, sends: list[list[tuple[bytes, int]]], names: int,
                  strict: bool = False) -> None:
        """sendmmsg of sends, each a list of (datagram, slot) of one length to one
        address: the slot's sockaddr at names (0: none, fd is connected); one GSO send
        per list of more than one."""
        svec, siov, buf, control = self._svec_view, self._siov_view, self._out_view, \
            self._control_view
        entry, iov_size = self._entry, ctypes.sizeof(_Iovec)
        namesize = self._namesize if names else 0
        offset = 0
        for n, items in enumerate(sends):
            data = items[0][0] if len(items) == 1 else b"".join(d for d, _ in items)
            buf[offset:offset + len(data)] = data
            struct.pack_into("PN", siov, n * iov_size, self._out_addr + offset, len(data))
            struct.pack_into("PI", svec, n * entry + self._name_at,
                             names + items[0][1] * namesize if names else 0, namesize)
            if len(items) == 1:
                struct.pack_into("PN", svec, n * entry + self._control_at, 0, 0)
            else:
                _SEGMENT.pack_into(control, n * CMSG_SPACE, _SEGMENT.size, SOL_UDP,
                                   UDP_SEGMENT, len(items[0][0]))
                struct.pack_into("PN", svec, n * entry + self._control_at,
                                 self._control_addr + n * CMSG_SPACE, CMSG_SPACE)
            offset += len(data)
        start = 0
        while start < len(sends):
            sent = _sendmmsg(fd, self._svec_addr + start * entry, len(sends) - start, 0)
            if sent > 0:
                self.packets += sent
                self.datagrams += sum(len(items) for items in sends[start:start + sent])
                start += sent
                continue
            code = ctypes.get_errno()
            if len(sends[start]) > 1 and code in _NO_GSO:
                # This kernel or path cannot: one datagram per send from now on.
                self.coalesce = False
                self._transmit(fd, [[item] for items in sends[start:] for item in items],
                               names, strict)
                return
            if strict:
                raise OSError(code, os.strerror(code))
            start += 1  # skip what the kernel refuses

    def _coalesced(self, out: list[tuple[bytes, int]]) -> list[list[tuple[bytes, int]]]:
        """out in groups of one length to one sender (its sockaddr past the family:
        port and address, and on IPv6 flow label and scope), at most MAX_SEGMENTS
        each, in the order of each group's first datagram."""
        groups: dict[tuple[bytes, int], list[tuple[bytes, int]]] = {}
        sends = []
        names, limit = self._names_view, self.outsize
        namesize, keysize = self._namesize, self._keysize
        for item in out:
            size = len(item[0])
            if size > limit:
                continue
            at = item[1] * namesize + 2
            key = (bytes(names[at:at + keysize]), size)
            group = groups.get(key)
            if group is None or len(group) == MAX_SEGMENTS:
                groups[key] = group = []
                sends.append(group)
            group.append(item)
        return sends


def set_timer_slack(nanoseconds: int) -> None:
    """How late the kernel may wake this thread from a timed sleep (prctl(2)); the
    default, 50 µs, would double a 50 µs pause."""
    _libc.prctl(PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0)

