"""nftables through libnftables' JSON API, in-process (ctypes), one transaction per call.

Every change portway makes to the firewall is one JSON batch handed to
libnftables, which the kernel applies atomically: all of it or none of it.

libnftables waits for the kernel's answers with select(), which handles only file
descriptors below FD_SETSIZE (1024): given a socket numbered higher, glibc aborts the
whole process. portwayd with a thousand containers holds more descriptors than that
(a pidfd and a log each, a socket per published port), so this module keeps a few
descriptors below 1024 in reserve and frees them only while a context opens its socket
(libnftables opens it in nft_ctx_new, and keeps it for the context's life).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from typing import Any

from portway.errors import KernelError

FD_SETSIZE = 1024
RESERVE = 16  # low descriptors held for the contexts to come
_reserved: list[int] = []
_reserve_lock = threading.Lock()


def _reserve() -> None:
    """Hold free descriptors below FD_SETSIZE, up to RESERVE (fewer if none is free)."""
    while len(_reserved) < RESERVE:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if fd >= FD_SETSIZE:
            os.close(fd)
            return
        _reserved.append(fd)


_reserve()

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_HANDLE = 1 << 3


class Nft:
    """A libnftables context, bound to the network namespace of the thread that
    creates it (its netlink socket is opened with it). The engine's context is
    created in the host namespace; to read another namespace, create one there.
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            raise KernelError("libnftables is not installed",
                              "install it: apt-get install libnftables1 nftables") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        with _reserve_lock:
            # The context's netlink socket takes the lowest free descriptor: one of the
            # reserve, freed for it (select() in libnftables aborts on a higher one).
            while _reserved:
                os.close(_reserved.pop())
            try:
                self._ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
            finally:
                _reserve()
        lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()
        self._kept: tuple[int, list[dict[str, Any]]] | None = None
        self._applied = 0  # transactions committed through apply()

    def run(self, command: str) -> str:
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            first = err.strip().splitlines()[0] if err.strip() else f"error {rc}"
            raise KernelError(f"nftables refused the change: {first}",
                              "run with --debug for the whole batch")
        return out

    def apply(self, commands: list[dict[str, Any]]) -> None:
        """One atomic transaction."""
        if commands:
            self.run(json.dumps({"nftables": commands}))
            self._applied += 1

    def mark(self) -> tuple[int | None, int]:
        """Where the ruleset stands, for keep_listing(): its generation, and how many
        transactions this context has committed."""
        return generation(), self._applied

    def keep_listing(self, mark: tuple[int | None, int]) -> None:
        """After changes of this context's own that undid each other since mark (trace
        --live's tables, added and removed): the listing kept at mark's generation stands
        for the ruleset again, if nothing else changed it meanwhile (the kernel moves the
        generation by one a transaction: by exactly this context's count). Otherwise
        the next listing() lists again, as it would have."""
        before, applied = mark
        kept, now = self._kept, generation()
        if before is None or now is None or kept is None or kept[0] != before:
            return
        if now - before == self._applied - applied:
            self._kept = (now, kept[1])

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The table's objects as JSON, or None if it does not exist."""
        try:
            out = self.run(f"list table {family} {name}")
        except KernelError:
            return None
        items: list[dict[str, Any]] = json.loads(out)["nftables"]
        return items

    def list_ruleset(self) -> list[dict[str, Any]]:
        """Every table of every family, with handles."""
        items: list[dict[str, Any]] = json.loads(self.run("list ruleset"))["nftables"]
        return items

    def listing(self) -> list[dict[str, Any]]:
        """list_ruleset(), kept while the ruleset's generation (which the kernel moves at
        every change, of any table) stays the same; the calling thread must be in this
        context's namespace. The very same list comes back, so what a reader worked out
        from it (trace's index of each set: on a host of 10,000 published ports, listing
        and indexing cost a trace 200 ms) is kept too. Its readers never change it."""
        before = generation()
        kept = self._kept
        if before is not None and kept is not None and kept[0] == before:
            return kept[1]
        items = self.list_ruleset()
        if before is not None and generation() == before:  # (no change while listing)
            self._kept = (before, items)
        return items

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 10, 0, 1
NFT_MSG_NEWGEN, NFT_MSG_GETGEN, NFTA_GEN_ID = 15, 16, 1


def generation() -> int | None:
    """The nftables ruleset's generation in the calling thread's namespace (the kernel
    moves it at every change), or None if it cannot be read."""
    import socket
    import struct

    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 12)
    except OSError:
        return None
    try:
        sock.bind((0, 0))
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        sock.send(struct.pack("=IHHII", 20, kind, 0x1, 1, 0) + struct.pack("=BBH", 0, 0, 0))
        data = sock.recv(1 << 12)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                at = offset + 20  # after the netlink and nfgenmsg headers
                while at + 4 <= offset + length:
                    size, attr = struct.unpack_from("=HH", data, at)
                    if size < 4:
                        break
                    if attr & 0x3FFF == NFTA_GEN_ID and size >= 8:
                        return int(struct.unpack_from("!I", data, at + 4)[0])
                    at += (size + 3) & ~3
                return None
            offset += (length + 3) & ~3
        return None
    except OSError:
        return None
    finally:
        sock.close()


def has_tables() -> bool:
    """Whether the calling thread's namespace has any nftables table, of any family: one
    small dump over a plain netlink socket, where making a libnftables context costs
    milliseconds (a container's namespace usually has none)."""
    import socket
    import struct

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         12)  # NETLINK_NETFILTER
    try:
        sock.bind((0, 0))
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE
        sock.send(struct.pack("=IHHII", 20, kind, 0x1 | 0x300, 1, 0) +
                  struct.pack("=BBH", 0, 0, 0))
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, offset)
                if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
                    return True
                if mtype in (2, 3) or length < 16:  # NLMSG_ERROR, NLMSG_DONE
                    return False
                offset += (length + 3) & ~3
    finally:
        sock.close()


def canonical(commands: list[dict[str, Any]], prelude: str = "") -> list[dict[str, Any]]:
    """The ruleset the kernel lists after being given exactly these commands (after the
    text commands of prelude), in a throwaway network namespace: the form to compare a
    live table's rules with."""
    from portway.kernel import netns

    def body() -> list[dict[str, Any]]:
        nft = Nft()
        try:
            if prelude:
                nft.run(prelude)
            nft.apply(commands)
            return nft.list_ruleset()
        finally:
            nft.close()

    return netns.in_new_netns(body)

