"""The host's own connections to published ports over ::1, relayed in user space.

Every other way to a published port is DNAT in the kernel. ::1 cannot be: IPv6 has no
`route_localnet`, so the container's answer to a connection from ::1 could never come
back. For that one case the socket that holds the port listens (TCP) or receives (UDP)
and this relay carries the bytes to the container, as Docker's userland proxy does;
the container sees the connection come from its gateway.

Rules of this module:
1. Only loopback sources reach a relay: a socket filter drops every packet whose
   source is not ::1 or 127/8 before the kernel answers it, so nothing outside the
   host can see or use the relay (a port published for IPv4 only stays closed to
   IPv6 from outside).
2. The container is looked up for each new connection or UDP flow (resolve), so a
   relay follows the container across connect and disconnect.
3. One thread serves every listening socket and every UDP flow; each TCP connection
   gets a thread per direction, started on demand. Nothing here takes the engine's
   lock in the relay thread except through resolve, and the engine only ever posts
   work to it (add, remove, close), never waits for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

Key = tuple[str, str, int]  # (protocol, host address or "", port)
Target = tuple[str, int]  # the container's address and port
SO_ATTACH_FILTER = 26
UDP_IDLE = 60.0  # seconds a UDP flow lives without traffic (conntrack's unreplied 30, ×2)
NET = -0x100000  # SKF_NET_OFF: offsets from the network header


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prog(*insns: tuple[int, int, int, int]) -> tuple[bytes, Any]:
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    return bytes(_SockFprog(len(insns), ctypes.addressof(buf))), buf


_LDB, _LDW, _RSH, _JEQ, _RET = 0x30, 0x20, 0x74, 0x15, 0x06
# Accept an IPv4 packet from 127/8 or an IPv6 packet from ::1; drop anything else.
LOOPBACK_ONLY, _keep = _prog(
    (_LDB, 0, 0, NET & 0xFFFFFFFF),        # 0: A = first byte of the IP header
    (_RSH, 0, 0, 4),                       # 1: A = IP version
    (_JEQ, 0, 2, 4),                       # 2: IPv4? on to 3, else to 5
    (_LDB, 0, 0, (NET + 12) & 0xFFFFFFFF),  # 3: first byte of the IPv4 source
    (_JEQ, 9, 10, 127),                    # 4: 127/8: accept (14), else drop (15)
    (_JEQ, 0, 9, 6),                       # 5: IPv6? on to 6, else drop (15)
    (_LDW, 0, 0, (NET + 8) & 0xFFFFFFFF),   # 6-13: the IPv6 source is ::1
    (_JEQ, 0, 7, 0),
    (_LDW, 0, 0, (NET + 12) & 0xFFFFFFFF),
    (_JEQ, 0, 5, 0),
    (_LDW, 0, 0, (NET + 16) & 0xFFFFFFFF),
    (_JEQ, 0, 3, 0),
    (_LDW, 0, 0, (NET + 20) & 0xFFFFFFFF),
    (_JEQ, 0, 1, 1),
    (_RET, 0, 0, 0xFFFFFFFF),              # 14: accept
    (_RET, 0, 0, 0),                       # 15: drop
)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until src ends; then end dst's sending side."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, target: Target | None) -> None:
    """One TCP connection: to the container and back, until both sides end."""
    with client:
        if target is None:
            return
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            return
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()


class LoopbackProxy:
    def __init__(self, resolve: Callable[[Key], Target | None]) -> None:
        self._resolve = resolve
        self._sel = selectors.DefaultSelector()
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._sel.register(self._waker_r, selectors.EVENT_READ, None)
        self._posted: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        # UDP: (listener fd, client address) -> (upstream socket, last traffic)
        self._flows: dict[tuple[int, Any], tuple[socket.socket, float]] = {}

    def add(self, sock: socket.socket, key: Key) -> None:
        """Relay what reaches sock (bound, filtered to loopback) to key's container."""
        if sock.type == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
        self._post(lambda: self._sel.register(sock, selectors.EVENT_READ, ("in", key)))

    def remove(self, sock: socket.socket) -> None:
        """Stop relaying for sock and close it (in the relay thread: the selector must
        forget it before the descriptor is closed)."""
        def drop() -> None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            for flow in [f for f in self._flows if f[0] == sock.fileno()]:
                self._end_flow(flow)
            sock.close()
        self._post(drop)

    def close(self) -> None:
        if self._thread is None:  # never relayed anything
            self._sel.close()
            self._waker_r.close()
            self._waker_w.close()
            return

        def stop() -> None:
            self._closed = True
        self._post(stop)
        self._thread.join(timeout=5)

    def _post(self, work: Callable[[], object]) -> None:
        with self._lock:
            self._posted.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="loopback-proxy",
                                                daemon=True)
                self._thread.start()
        with contextlib.suppress(OSError):
            self._waker_w.send(b"x")

    def _loop(self) -> None:
        while not self._closed:
            for key, _ in self._sel.select(timeout=10):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._waker_r.recv(4096)
                elif key.data[0] == "in":
                    self._incoming(key.fileobj, key.data[1])  # type: ignore[arg-type]
                else:
                    self._reply(key.fileobj, key.data[1])  # type: ignore[arg-type]
            with self._lock:
                work, self._posted = self._posted, []
            for w in work:
                w()
            now = time.monotonic()
            for flow, (_, last) in list(self._flows.items()):
                if now - last > UDP_IDLE:
                    self._end_flow(flow)
        for key in list(self._sel.get_map().values()):
            if key.data is not None:
                key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        self._waker_r.close()
        self._waker_w.close()

    def _incoming(self, sock: socket.socket, key: Key) -> None:
        if sock.type == socket.SOCK_STREAM:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            client.setblocking(True)
            threading.Thread(target=lambda: _relay(client, self._resolve(key)),
                             daemon=True).start()
            return
        try:
            data, peer = sock.recvfrom(65535)
        except OSError:
            return
        flow = (sock.fileno(), peer)
        if flow not in self._flows:
            target = self._resolve(key)
            if target is None:
                return
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_DGRAM)
            try:
                upstream.connect(target)
            except OSError:
                upstream.close()
                return
            upstream.setblocking(False)
            self._sel.register(upstream, selectors.EVENT_READ, ("reply", (sock, peer)))
            self._flows[flow] = (upstream, time.monotonic())
        upstream = self._flows[flow][0]
        self._flows[flow] = (upstream, time.monotonic())
        with contextlib.suppress(OSError):
            upstream.send(data)

    def _reply(self, upstream: socket.socket, back: tuple[socket.socket, Any]) -> None:
        listener, peer = back
        try:
            data = upstream.recv(65535)
            listener.sendto(data, peer)
        except OSError:
            return
        self._flows[(listener.fileno(), peer)] = (upstream, time.monotonic())

    def _end_flow(self, flow: tuple[int, Any]) -> None:
        upstream, _ = self._flows.pop(flow)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(upstream)
        upstream.close()
