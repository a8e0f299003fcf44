"""Many datagrams per system call: recvmmsg(2) and sendmmsg(2) through ctypes.

Python's socket module reads and writes one datagram per call. Under load the
DNS server has dozens queued: one recvmmsg takes them all, and one sendmmsg
sends every answer, so the client is woken once per batch instead of once per
answer. IPv4 only (the server listens on gateways' IPv4 addresses).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

MSG_DONTWAIT = 0x40
SOCKADDR_IN = 16  # family, port, address, padding


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

    def __init__(self, size: int = 64, bufsize: int = 4096, outsize: int = 512) -> None:
        self.size, self.bufsize, self.outsize = size, bufsize, outsize
        self._data = ctypes.create_string_buffer(size * bufsize)
        self._names = ctypes.create_string_buffer(size * SOCKADDR_IN)
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
                hdr.name, hdr.namelen = names + i * SOCKADDR_IN, SOCKADDR_IN
                hdr.iov = ctypes.cast(iov + i * ctypes.sizeof(_Iovec),
                                      ctypes.POINTER(_Iovec))
                hdr.iovlen = 1
        self._entry = ctypes.sizeof(_Mmsghdr)
        self._namelen_at = _Msghdr.namelen.offset
        self._len_at = _Mmsghdr.len.offset
        self._name_at = _Msghdr.name.offset

    def recv(self, fd: int) -> list[tuple[bytes, bytes]]:
        """What is queued now (up to size): (datagram, the packed IPv4 address of its
        sender), in slot order: the i-th came in slot i. peer(slot) tells the sender's
        port too; send() answers to a slot's sender. A datagram longer than bufsize
        arrives cut short, as with recvfrom(bufsize).

        Each namelen is left as the kernel wrote it back: on an IPv4 socket that is
        always the size of a sockaddr_in, the size it was set to."""
        n = _recvmmsg(fd, self._rvec, self.size, MSG_DONTWAIT, None)
        if n < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(code, os.strerror(code))
        data, names, view = self._data_view, self._names_view, self._rvec_view
        size, entry, at, unpack = self.bufsize, self._entry, self._len_at, struct.unpack_from
        out = []
        for i in range(n):
            start, name = i * size, i * SOCKADDR_IN + 4
            out.append((bytes(data[start:start + unpack("I", view, i * entry + at)[0]]),
                        bytes(names[name:name + 4])))
        return out

    def peer(self, slot: int) -> tuple[str, int]:
        """A slot's sender as (address, port)."""
        at = slot * SOCKADDR_IN
        return (".".join(str(b) for b in self._names_view[at + 4:at + 8]),
                int.from_bytes(self._names_view[at + 2:at + 4], "big"))

    def send(self, fd: int, out: list[tuple[bytes, int]]) -> None:
        """Send each (datagram, slot) to that slot's sender; a datagram longer than
        outsize, or one the kernel refuses, is dropped (UDP)."""
        svec, siov, buf = self._svec_view, self._siov_view, self._out_view
        entry, names, iov_size = self._entry, self._names_addr, ctypes.sizeof(_Iovec)
        n = 0
        for data, slot in out:
            if len(data) > self.outsize:
                continue
            buf[n * self.outsize:n * self.outsize + len(data)] = data
            struct.pack_into("N", siov, n * iov_size + _Iovec.len.offset, len(data))
            struct.pack_into("P", svec, n * entry + self._name_at, names + slot * SOCKADDR_IN)
            n += 1
        start = 0
        while start < n:
            sent = _sendmmsg(fd, self._svec_addr + start * entry, n - start, 0)
            start += sent if sent > 0 else 1  # skip what the kernel refuses
