"""Published host ports: chosen, checked, held, and resolved to the container address
they lead to.

A bound socket holds each published port, as Docker's port allocator holds one, so a
host process cannot bind the port afterwards and quietly take traffic meant for the
container (over IPv6, say, which portway does not DNAT).

Rules of this module:
1. A port is checked by binding it: the kernel's answer is the truth (EADDRINUSE: held
   by someone, another portway included; EADDRNOTAVAIL: not an address of this host).
2. Traffic to a published port is DNATed before any socket sees it, except from the
   host's ::1 (IPv6 cannot DNAT it): a socket that can receive that (bound to :: or
   ::1) relays it to the container (engine/proxy.py) and takes nothing from anywhere
   else; every other held socket receives nothing (a filter drops every packet) and
   never listens.
3. The sockets live as long as the daemon; a new daemon binds them again (adopt), and
   `doctor` reports a port it cannot bind again as shadowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from portway.core import firewall, gateways
from portway.core.firewall import Published
from portway.core.ports import (
    addresses_overlap,
    format_mapping,
    host_port_holder,
    natural_key,
    parse_port_key,
)
from portway.engine.proxy import LOOPBACK_ONLY, LoopbackProxy, Target
from portway.errors import Conflict, InvalidInput, KernelError, PortwayError
from portway.model.types import Container, Endpoint, IPInterface, Network, PortMapping

if TYPE_CHECKING:
    from portway.engine.context import Host

SO_ATTACH_FILTER = 26

Key = tuple[str, str, int]  # (protocol, host address or "", port)
# What socket() says on a kernel without SCTP (no module, or none loaded).
NO_SCTP = (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: accept no bytes
_drop_buffer = ctypes.create_string_buffer(_DROP_ALL)
_DROP_PROG = bytes(_SockFprog(1, ctypes.addressof(_drop_buffer)))


def key(p: PortMapping) -> Key:
    return p.protocol, str(p.host_ip) if p.host_ip else "", p.host_port


def _bind(family: int, kind: int, address: str, port: int,
          dual_stack: bool = False, relay: bool = False, proto: int = 0) -> socket.socket:
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                        LOOPBACK_ONLY if relay else _DROP_PROG)
        if relay and kind == socket.SOCK_STREAM:
            # A relayed connection of the previous daemon may linger in TIME_WAIT; the
            # socket listens at once, so no one else can bind the port beside it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class PortReservations:
    def __init__(self, resolve: Callable[[Key], Target | None] | None = None) -> None:
        """resolve: the container address and port behind a key, for the relay of ::1
        (None: no relay, every held socket drops everything)."""
        self._held: dict[Key, list[socket.socket]] = {}
        self._proxy = LoopbackProxy(resolve) if resolve is not None else None
        self._relayed: set[socket.socket] = set()

    def holds(self, p: PortMapping) -> bool:
        return key(p) in self._held

    def reserve(self, p: PortMapping) -> None:
        """Bind p's host port: on every address of both families (one dual-stack socket,
        or an IPv4 one where IPv6 is off), or on its one address. OSError as the kernel
        says it; nothing held then."""
        k = key(p)
        if k in self._held:
            return
        kind = socket.SOCK_DGRAM if p.protocol == "udp" else socket.SOCK_STREAM
        proto = socket.IPPROTO_SCTP if p.protocol == "sctp" else 0
        # The relay of ::1 is for TCP and UDP (an SCTP port there is refused before).
        relay = self._proxy is not None and p.protocol != "sctp"
        held: list[socket.socket] = []
        try:
            if p.host_ip is None:
                try:
                    held.append(_bind(socket.AF_INET6, kind, "::", p.host_port,
                                      dual_stack=True, relay=relay, proto=proto))
                except OSError as exc:
                    if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
                    held.append(_bind(socket.AF_INET, kind, "0.0.0.0", p.host_port,
                                      proto=proto))
            else:
                family = socket.AF_INET if p.host_ip.version == 4 else socket.AF_INET6
                # ::1 is relayed, on ::1 alone or on every IPv6 address (-p [::]:...).
                relay = relay and p.host_ip.version == 6 and \
                    (p.host_ip.is_loopback or p.host_ip.is_unspecified)
                held.append(_bind(family, kind, str(p.host_ip), p.host_port, relay=relay,
                                  proto=proto))
            if self._proxy is not None and held[0].family == socket.AF_INET6 and relay:
                self._proxy.add(held[0], k)
                self._relayed.add(held[0])
        except BaseException as exc:
            for sock in held:
                sock.close()
            if p.protocol == "sctp" and isinstance(exc, OSError) and exc.errno in NO_SCTP:
                # A kernel without SCTP: no process here can take the port either.
                self._held[k] = []
                return
            raise
        self._held[k] = held

    def inodes(self) -> set[int]:
        """The inodes of the sockets held (as sock_diag and /proc/PID/fd name them): what
        trace and audit tell apart from other listeners as portwayd's own."""
        out: set[int] = set()
        for socks in self._held.values():
            for sock in socks:
                try:
                    out.add(os.fstat(sock.fileno()).st_ino)
                except OSError:
                    continue  # closed meanwhile
        return out

    def release(self, p: PortMapping) -> None:
        for sock in self._held.pop(key(p), []):
            self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        if sock in self._relayed and self._proxy is not None:
            self._relayed.discard(sock)
            self._proxy.remove(sock)
        else:
            sock.close()

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        for socks in self._held.values():
            for sock in socks:
                sock.close()
        self._held.clear()
        self._relayed.clear()


class Publishing:
    """The ports service: which host ports a container gets, and the firewall's view of
    them (Published: a host port resolved to the container address behind it)."""

    def __init__(self, host: Host) -> None:
        self.h = host

    def resolve(self, wanted: tuple[PortMapping, ...],
                hold: bool = True) -> tuple[PortMapping, ...]:
        """Host ports checked against portway's publications and the host's sockets, and
        held (a bound socket each) unless the runtime holds them itself (Podman's conmon
        does); a host port of 0 becomes a free one from the ephemeral range. All or
        nothing: on an error nothing stays held. Linear in the ports asked for and the
        ports published."""
        h = self.h
        by_port: dict[tuple[str, int], list[tuple[PortMapping, str]]] = {}
        for c in h.store.containers():
            # A stopped container has given its host ports back (Docker's).
            for p in c.ports if c.networked else ():
                by_port.setdefault((p.protocol, p.host_port), []).append(
                    (p, f"container {c.name} ({format_mapping(p)})"))
        # Only what the ports asked for can collide: the sockets of their protocols, and
        # the gateways when one names a host address (each of these asks the kernel).
        # A runtime that holds its ports itself has bound them already (Podman binds them
        # before it asks for the network, and again when `network reload` asks anew):
        # its sockets are not someone else's.
        listening: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for proto in sorted({p.protocol for p in wanted}) if hold else ():
            for address, port in h.facts.listening(proto):
                listening.setdefault((proto, port), []).append((address, port))
        gateways = h.facts.portway_addresses() \
            if any(p.host_ip is not None for p in wanted) else set()
        low, high = h.facts.ephemeral_range()

        def holder_of(p: PortMapping) -> str | None:
            for other, who in by_port.get((p.protocol, p.host_port), []):
                if addresses_overlap(other.host_ip, p.host_ip):
                    return who
            sock = host_port_holder(listening.get((p.protocol, p.host_port), []),
                                    str(p.host_ip) if p.host_ip else None, p.host_port)
            return None if sock is None else f"a socket listening on {sock} in the host " \
                                              "namespace"

        def held_by(p: PortMapping) -> str | None:
            """Reserve p; None, or who has it (the kernel says so when no socket shows)."""
            if not hold:
                return None
            try:
                h.ports.reserve(p)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise InvalidInput(f"cannot publish on {p.host_ip}: cannot assign "
                                       "requested address (it is not an address of this host)",
                                       "give one of the host's addresses (ip addr), or none "
                                       "for all of them") from None
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise Conflict(f"cannot hold host port {p.host_port}/{p.protocol}: "
                                   "portwayd has reached its open-file limit (each published "
                                   "port holds a socket)", "publish fewer ports, or raise "
                                   "the limit (LimitNOFILE, ulimit -n) and restart "
                                   "portwayd") from None
                if exc.errno != errno.EADDRINUSE:
                    raise KernelError(f"cannot hold host port {p.host_port}/{p.protocol}: "
                                      f"{exc.strerror}", "try again") from None
                return "a socket in the host namespace (another portway, or a process that " \
                       f"is not listening: ss -aenp 'sport = :{p.host_port}')"
            return None

        out: list[PortMapping] = []
        try:
            for p in wanted:
                if p.protocol == "sctp" and p.host_ip is not None and \
                        p.host_ip.version == 6 and p.host_ip.is_loopback:
                    raise InvalidInput(f"cannot publish {format_mapping(p)} on ::1: "
                                       "portway relays only TCP and UDP from ::1",
                                       "publish it on 127.0.0.1, or on all addresses")
                if p.host_ip is not None and p.host_ip in gateways:
                    raise InvalidInput(f"cannot publish on {p.host_ip}: it is the gateway of "
                                       "a portway network",
                                       "publish on a host address, or on all of them")
                if p.host_port == 0 or p.host_port_end:
                    # Any free port: of the range asked for (`-p 8000-8010:80`), or of
                    # the ephemeral range (`-p 80`, -P).
                    first, last = (p.host_port, p.host_port_end) if p.host_port_end \
                        else (low, high)
                    for port in range(first, last + 1):
                        candidate = replace(p, host_port=port, host_port_end=0)
                        if holder_of(candidate) is None and held_by(candidate) is None:
                            p = candidate
                            break
                    else:
                        if p.host_port_end:
                            raise Conflict(f"host ports {first}-{last}/{p.protocol} are all "
                                           "taken", "pick another range, or free one of "
                                           "them")
                        raise Conflict(f"no free {p.protocol} port is left in {low}-{high}",
                                       "give the host port explicitly")
                else:
                    who = holder_of(p) or held_by(p)
                    if who is not None:
                        raise Conflict(f"host port {p.host_port}/{p.protocol} is already "
                                       f"taken by {who}",
                                       "pick another host port, or free that one")
                by_port.setdefault((p.protocol, p.host_port), []).append((p, "this container"))
                out.append(p)
        except BaseException:
            self.release(out)
            raise
        return tuple(out)

    def release(self, ports: tuple[PortMapping, ...] | list[PortMapping]) -> None:
        for p in ports:
            self.h.ports.release(p)

    def owners(self, c: Container, endpoints: list[Endpoint] | None = None
               ) -> dict[int, tuple[Endpoint, Network]]:
        """{IP version: c's endpoint (and its network) that takes the family's published
        ports}: the one whose network routes the family (core/gateways.py), if it has an
        address of the family (one whose --sysctl turns IPv6 off has none: its ports are
        IPv4's alone, and the relay of ::1 goes to its IPv4 address)."""
        eps = endpoints if endpoints is not None else self.h.store.endpoints(container_id=c.id)
        if not eps:
            return {}
        ordered = self.h.endpoints.in_order(c.id, eps)
        return {v: ordered[i]
                for v, i in gateways.port_owners([n for _, n in ordered],
                                                  c.runtime == "podman").items()
                if any(a.version == v for a in ordered[i][0].addresses)}

    def published(self, c: Container, endpoints: list[Endpoint] | None = None
                  ) -> list[Published]:
        """c's port mappings, resolved per family to the address of that family of the
        endpoint whose network routes it (owners)."""
        if not c.ports:
            return []
        # Each family the container has (Docker 27: -p 8080:80 publishes on both), to
        # the first address of the family of that family's endpoint (a Podman container
        # has one per subnet, and netavark forwards to the first); a port published on
        # one host address, in that address's family only; ::1 is the relay's alone (no
        # rule can DNAT it).
        targets: list[tuple[IPInterface, bool]] = []
        for version, (endpoint, net) in sorted(self.owners(c, endpoints).items()):
            address = next((a for a in endpoint.addresses if a.version == version), None)
            if address is not None:
                targets.append((address, firewall.routed(net, version)))
        # 0.0.0.0 and :: are every address of their family: to the firewall, any.
        return [Published(container_id=c.id, protocol=p.protocol, host_port=p.host_port,
                          container_ip=a.ip, container_port=p.container_port,
                          host_ip=None if every else p.host_ip,
                          # Routed mode opens the container port at the container's
                          # address for a port published on every host address; one
                          # published on one address (127.0.0.1, say) stays that narrow.
                          routed=routed and every)
                for p in c.ports for a, routed in targets
                for every in [p.host_ip is None or p.host_ip.is_unspecified]
                if p.host_ip is None or (p.host_ip.version == a.version and
                                         not (a.version == 6 and p.host_ip.is_loopback))]

    def all_published(self) -> list[Published]:
        out: list[Published] = []
        for c in self.h.store.containers():
            out.extend(self.published(c))
        return out

    def target(self, k: Key) -> Target | None:
        """The container address and port behind a held port, for the relay of ::1:
        the container's IPv6 address if it has one, else its IPv4 one."""
        with self.h.lock:
            # (A stopped container has given its ports back: another may hold the key.)
            for c in self.h.store.containers():
                if c.status != "running" or not c.networked:
                    continue
                for p in c.ports:
                    if key(p) != k:
                        continue
                    owners = self.owners(c)
                    if not owners:
                        return None
                    version = max(owners)
                    best = next(a for a in owners[version][0].addresses
                                if a.version == version)
                    return str(best.ip), p.container_port
        return None

    def bindings(self, c: Container) -> list[tuple[str, str, int]]:
        """c's ports as Docker shows them: ("80/tcp", host address, host port), one per
        family the port is published on ("0.0.0.0" and "::" for all addresses). None
        while it is stopped: its ports are published while it runs."""
        if not c.networked:
            return []
        versions = sorted(self.owners(c)) or [4]
        return [(f"{p.container_port}/{p.protocol}", ip, p.host_port) for p in c.ports
                for ip in ([str(p.host_ip)] if p.host_ip else
                           ["0.0.0.0" if v == 4 else "::" for v in versions])]

    def describe(self, ref: str, port: str | None = None) -> list[str]:
        """`portway port NAME [PORT[/PROTO]]`: every published port, or the host
        addresses of one (Docker's output for each)."""
        wanted = parse_port_key(port) if port is not None else None
        with self.h.lock:
            c = self.h.container(ref)
            bound = self.bindings(c)
        if wanted is None:  # sorted as Docker's CLI sorts them (since Docker 23)
            return sorted((f"{key} -> {f'[{ip}]' if ':' in ip else ip}:{host_port}"
                           for key, ip, host_port in bound), key=natural_key)
        key = f"{wanted[0]}/{wanted[1]}"
        lines = [f"{f'[{ip}]' if ':' in ip else ip}:{host_port}"
                 for k, ip, host_port in bound if k == key]
        if not lines:
            raise PortwayError(f"no public port {key!r} published for {c.name}",
                               f"see what it publishes with 'portway port {c.name}'")
        return sorted(lines, key=natural_key)

