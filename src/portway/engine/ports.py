"""Published host ports, held: a bound socket per published port, as Docker's port
allocator holds one, so a host process cannot bind the port afterwards and quietly
take traffic meant for the container (over IPv6, say, which portway does not DNAT).

Rules of this module:
1. A port is checked by binding it: the kernel's answer is the truth (EADDRINUSE: held
   by someone, another portway included; EADDRNOTAVAIL: not an address of this host).
2. A held socket never receives anything (a filter drops every packet) and never
   listens: traffic to a published port is DNATed before any socket sees it.
3. The sockets live as long as the daemon; a new daemon binds them again (adopt), and
   `doctor` reports a port it cannot bind again as shadowed.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from portway.model.types import PortMapping

SO_ATTACH_FILTER = 26

Key = tuple[str, str, int]  # (protocol, host address or "", port)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: accept no bytes
_drop_buffer = ctypes.create_string_buffer(_DROP_ALL)
_DROP_PROG = bytes(_SockFprog(1, ctypes.addressof(_drop_buffer)))


def key(p: PortMapping) -> Key:
    return p.protocol, str(p.host_ip) if p.host_ip else "", p.host_port


def _bind(family: int, kind: int, address: str, port: int,
          dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_PROG)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class PortReservations:
    def __init__(self) -> None:
        self._held: dict[Key, list[socket.socket]] = {}

    def holds(self, p: PortMapping) -> bool:
        return key(p) in self._held

    def reserve(self, p: PortMapping) -> None:
        """Bind p's host port: on every address of both families (one dual-stack socket,
        or an IPv4 one where IPv6 is off), or on its one address. OSError as the kernel
        says it; nothing held then."""
        k = key(p)
        if k in self._held:
            return
        kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
        held: list[socket.socket] = []
        try:
            if p.host_ip is None:
                try:
                    held.append(_bind(socket.AF_INET6, kind, "::", p.host_port,
                                      dual_stack=True))
                except OSError as exc:
                    if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
                    held.append(_bind(socket.AF_INET, kind, "0.0.0.0", p.host_port))
            else:
                family = socket.AF_INET if p.host_ip.version == 4 else socket.AF_INET6
                held.append(_bind(family, kind, str(p.host_ip), p.host_port))
        except BaseException:
            for sock in held:
                sock.close()
            raise
        self._held[k] = held

    def release(self, p: PortMapping) -> None:
        for sock in self._held.pop(key(p), []):
            sock.close()

    def close(self) -> None:
        for socks in self._held.values():
            for sock in socks:
                sock.close()
        self._held.clear()
