"""portway's DNS server: one process per host namespace, on every network's gateway, port 53.

Standard library only, one thread on epoll (asyncio's per-datagram cost would
be the ceiling, measured in DESIGN.md), reading and answering in batches. Local
names are answered in the loop from dictionaries built at reload time; other
names are forwarded to the upstream resolvers from the loop too, on non-blocking
sockets, with failover and (on a helper thread) TCP fallback. Nothing a client
does makes the loop wait: TCP answers are written without blocking, and what one
client address may hold (connections, buffered answers, forwarded queries in
flight) is bounded by the rules of limits.py.

The engine writes the records to STATE/dns.json and sends "reload" on the
control socket STATE/dns.sock; the reply comes after the new records are in
use, so `portway run -d` returns only once its names resolve.

Both address families, throughout: a network has gateways and subnets of either
family (each gateway gets its own sockets), a container has an address of each,
and a client address, a record or an upstream is whichever family it is. Inside,
an address is packed, as the kernel gives it: 4 bytes or 16, so the length tells
the family and one dictionary holds both.
"""

from __future__ import annotations

import _queue
import collections
import fcntl
import functools
import gc
import ipaddress
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time

from portway.dns import limits, mmsg, wire

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

TTL = 5
UPSTREAM_TIMEOUT = 2.0
# TCP deadlines are checked this often, and only while TCP clients are connected:
# the UDP path pays nothing for them. A slow client goes within TCP_IDLE + TCP_CHECK.
TCP_CHECK = 0.5
ACCEPTS_PER_ROUND = 16  # connections taken per wake-up (a burst does not wait a round each)
IP_FREEBIND = 15
IPV6_FREEBIND = 78  # Linux 4.15; older kernels take IP_FREEBIND on IPv6 sockets too
SO_RCVBUFFORCE = 33
UDP_BUFFER = 4 << 20
LOG_SIZE = 200
TIMED = 5000  # queries whose times `timing` keeps (its reply is one datagram)
TIMES = 4  # numbers kept per timed query
MAX_KEPT = 20_000  # replies kept for repeated queries (each at most 512 + 512 bytes)
# Under load, a pause after a batch lets the next queries gather: bigger batches mean
# fewer system calls and wake-ups per query on both sides, and more answers per GSO
# send. Load is a read of GATHER_AT or more, but not a full batch (a backlog: no pause).
GATHER_AT = 4
GATHER_PAUSE = 50e-6
FIONREAD = 0x541B  # ioctl: on a UDP socket, the size of the next datagram queued (0: none)
STAMP_SPACE = 64  # ancillary room for a lone read's arrival stamp (SCM_TIMESTAMPNS)
FORWARDS_PER_SOCKET = 64  # queries of one round to one upstream that share a socket
UPSTREAM_READS = 16  # upstream answers read a system call


class Forward:
    """A query on its way to the upstream resolvers."""

    __slots__ = ("index", "msg", "q", "reply", "src", "started", "upstreams")

    def __init__(self, msg: bytes, q: wire.Question, src: bytes,
                 reply: Callable[[bytes], None], upstreams: list[str],
                 started: float) -> None:
        self.msg, self.q, self.src, self.reply = msg, q, src, reply
        self.upstreams, self.started, self.index = upstreams, started, 0


class TcpClient:
    """One TCP connection: the bytes of its next query, the answers it has not read yet
    and the time by which it must send a whole query (or read some answers).

    Answers are never written blocking: what the socket does not take waits in
    `outbuf`, and epoll says when it can take more. A client that asks and does not
    read fills `outbuf`, and is closed past limits.TCP_OUTPUT_LIMIT."""

    __slots__ = ("closed", "deadline", "events", "fd", "inbuf", "outbuf", "parsing",
                 "pending", "reading", "sock", "src")

    def __init__(self, sock: socket.socket, src: bytes, deadline: float) -> None:
        self.sock, self.fd, self.src, self.deadline = sock, sock.fileno(), src, deadline
        self.inbuf, self.outbuf = bytearray(), bytearray()
        self.pending = 0  # forwarded queries whose answers are still to come
        self.events = select.EPOLLIN  # what epoll watches for it now
        self.reading = True  # False once the client has shut down its side
        self.parsing = False  # in handle_tcp: answers are written once, at its end
        self.closed = False


def pack_address(text: str) -> bytes:
    """An address as the kernel gives it (4 or 16 bytes); OSError when text is not one."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def address_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def endpoint_addresses(endpoint: dict[str, Any]) -> list[bytes]:
    """An endpoint's addresses, packed: "ips" (one per family), or the older records'
    single "ip"."""
    return [pack_address(ip) for ip in endpoint.get("ips") or [endpoint["ip"]]]


class View:
    """What the server knows, built once per reload.

    Addresses of both families share each table: a container's IPv4 and IPv6
    addresses are two keys with the same networks and the same name."""

    def __init__(self) -> None:
        self.names: dict[str, dict[str, list[bytes]]] = {}  # net -> name -> addresses
        self.net_names: dict[str, str] = {}  # net name -> id
        self.internal: set[str] = set()
        self.member: dict[bytes, tuple[str, ...]] = {}  # address -> net ids
        self.ptr: dict[bytes, tuple[str, tuple[str, ...]]] = {}
        self.custom_dns: dict[bytes, list[str]] = {}
        # Per network (Podman's, from netavark's contract): its upstream resolvers, the
        # TTL of its records (aardvark-dns answers with 0), and whether it has DNS at
        # all (dns_enabled false: no socket on its gateways, none of its names).
        self.net_dns: dict[str, list[str]] = {}
        self.ttl: dict[str, int] = {}
        self.silent: set[str] = set()
        self.subnets: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        self.gateways: list[str] = []  # in ipaddress's text form: one per address
        self.containers: dict[str, dict[str, Any]] = {}

    def set_container(self, c: dict[str, Any]) -> None:
        """Add or replace one container's names and addresses: O(its endpoints)."""
        # Every address read before anything changes: a bad one changes nothing.
        endpoints = [(e, endpoint_addresses(e)) for e in c["endpoints"]]
        self.forget(c["id"])
        endpoints = [(e, a) for e, a in endpoints if e["network"] not in self.silent]
        nets = tuple(e["network"] for e, _ in endpoints)
        for e, addresses in endpoints:
            names = self.names.setdefault(e["network"], {})
            for name in e["names"]:
                names.setdefault(name.lower(), []).extend(addresses)
            for packed in addresses:
                self.member[packed] = nets
                self.ptr[packed] = (c["name"], nets)
                if c.get("dns"):
                    self.custom_dns[packed] = list(c["dns"])
        self.containers[c["id"]] = c

    def forget(self, container_id: str) -> None:
        old = self.containers.pop(container_id, None)
        if old is None:
            return
        for e in old["endpoints"]:
            names = self.names.get(e["network"], {})
            for packed in endpoint_addresses(e):
                for name in e["names"]:
                    ips = names.get(name.lower())
                    if ips is not None and packed in ips:
                        ips.remove(packed)
                        if not ips:
                            del names[name.lower()]
                for table in (self.member, self.ptr, self.custom_dns):
                    table.pop(packed, None)

    def networks_of(self, src: bytes) -> tuple[str, ...]:
        """The networks whose names src (a packed address of either family) sees."""
        found = self.member.get(src)
        if found is not None:
            return found
        address = ipaddress.ip_address(src)
        # An address is never in a subnet of the other family (ipaddress says False).
        return tuple(nid for nid, net in self.subnets if address in net)


def load_view(path: str) -> View:
    with open(path) as f:
        data = json.load(f)
    view = View()
    for net in data.get("networks", []):
        nid = net["id"]
        if net.get("dns") is False:
            view.silent.add(nid)
            continue
        if net.get("dns_servers"):
            view.net_dns[nid] = [str(ipaddress.ip_address(s)) for s in net["dns_servers"]]
        if net.get("ttl") is not None:
            view.ttl[nid] = int(net["ttl"])
        view.names[nid] = {}
        view.net_names[net["name"].lower()] = nid
        if net.get("internal"):
            view.internal.add(nid)
        # "subnets"/"gateways" (any number, either family); older records have one each.
        for subnet in net.get("subnets") or [net["subnet"]]:
            view.subnets.append((nid, ipaddress.ip_network(subnet)))
        for gateway in net.get("gateways") or [net["gateway"]]:
            view.gateways.append(str(ipaddress.ip_address(gateway)))
    for container in data.get("containers", []):
        view.set_container(container)
    return view


def upstream_address(upstream: str) -> tuple[int, tuple[Any, ...]] | None:
    """Where to send queries for an upstream resolver as resolv.conf names it: its
    family and socket address, or None when it is not an address to send to. An
    IPv6 link-local one needs its interface (fe80::1%eth0): the server runs in the
    host namespace, so the name is one of the host's interfaces."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            upstream, 53, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0]
    except (OSError, UnicodeError, ValueError):  # not numeric, or no such interface
        return None
    if family == socket.AF_INET6 and len(address) == 4 and address[3] == 0 and \
            ipaddress.IPv6Address(address[0]).is_link_local:
        return None
    return family, address


def read_upstreams(path: str) -> list[str]:
    """The nameservers of a resolv.conf that queries can be sent to; the others
    (host names, link-local addresses without an interface or with one that does
    not exist) are said in the log and left out."""
    servers: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and words[0] == "nameserver":
                    if upstream_address(words[1]) is None:
                        print(f"portway-dns: {path}: nameserver {words[1]} left out: not an "
                              "address, or link-local without a host interface (fe80::1%eth0)",
                              file=sys.stderr, flush=True)
                        continue
                    servers.append(words[1])
    except OSError:
        pass
    return servers


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class Server:
    def __init__(self, state_dir: str, resolv: str) -> None:
        self.state_dir = state_dir
        self.records_path = os.path.join(state_dir, "dns.json")
        self.resolv = resolv
        self.resolv_mtime = 0.0
        self.upstreams: list[str] = []
        # Socket addresses of the upstreams, resolv.conf's and containers' own (--dns),
        # each worked out on first use: emptied when resolv.conf or the records change
        # (a link-local one's interface index may have changed with them).
        self.upstream_addresses: dict[str, tuple[int, tuple[Any, ...]] | None] = {}
        self.view = View()
        self.udp: dict[str, socket.socket] = {}
        self.tcp: dict[str, socket.socket] = {}
        self.clients: dict[int, TcpClient] = {}  # by descriptor
        self.tcp_held: collections.Counter[bytes] = collections.Counter()  # by address
        self.next_tcp_check = 0.0
        self.rotation: collections.Counter[str] = collections.Counter()
        # Encoded A and AAAA records per (name, querier's networks), built on first use.
        self.answers: dict[tuple[str, tuple[str, ...]], tuple[list[bytes], list[bytes]]] = {}
        # The hot path: whole replies (less their id) per (querier, query less its id),
        # with what the log says of them. Only replies that do not change between two
        # identical queries (one record or none, no forwarding); emptied with `answers`.
        self.replies: dict[tuple[bytes, bytes], tuple[bytes, tuple[Any, ...]]] = {}
        # One per family: a Batch keeps its family's sender addresses.
        self.batches = {socket.AF_INET: mmsg.Batch(),
                        socket.AF_INET6: mmsg.Batch(family=socket.AF_INET6)}
        self.gather = False  # a socket is under load: pause before the next poll
        self.forwarded_sent = 0  # forwarded answers sent over UDP (not through batch)
        # Between "timing start" and "timing" on the control socket: per answered UDP
        # query, in ns, from its arrival at the socket (the kernel's stamp) to the
        # server's turn to read, then to its read, then to its answer's send; and the
        # server's CPU time from its turn to that send: TIMES numbers a query, in one flat
        # list of ints (none of them an object the garbage collector tracks: a tuple a
        # query would make the timing itself set off collections while it measures).
        self.timing: list[int] | None = None
        self.timing_gc: list[int] = []  # the collector's runs by generation at its start
        # Forwarded answers for UDP clients, by the socket they go out of: sent once a
        # round of the loop (_send_queued).
        self.udp_out: dict[socket.socket, list[tuple[bytes, bytes]]] = {}
        # For queries to the upstreams, per family: their own counts, not the answers'.
        self.upstream_batches: dict[int, mmsg.Batch] = {}
        # For their answers, per family, made on first use (UPSTREAM_READS × 64 KiB).
        self.upstream_readers: dict[int, mmsg.Batch] = {}
        # In flight: by upstream socket, then by the id it went under.
        self.forwards: dict[socket.socket, dict[bytes, Forward]] = {}
        # Forwarded queries not answered yet (queued, on a socket, or on a pool
        # thread), in all and by client address: each address gets a share.
        self.forwarding: dict[bytes, int] = {}
        self.forwarding_total = 0
        self.outbox: list[Forward] = []  # queued this round of the loop
        # What the limits turned away, by kind (the control socket's "stats").
        self.shed: collections.Counter[str] = collections.Counter()
        self.expiries: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self.log: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=LOG_SIZE)
        self.pool = Pool(16)  # forwarding over TCP (truncated answers)
        # Answers that pool threads got, handed to the loop: only the loop writes to
        # clients (a TCP client's output buffer is the loop's alone).
        self.handoff: collections.deque[tuple[Forward, bytes]] = collections.deque()
        self.handoff_r, self.handoff_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = os.path.join(state_dir, "dns.sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.control.bind(path)
        self.running = True
        # epoll, registered once per socket: the loop's cost does not grow with sockets.
        self.poller = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self._watch(self.control.fileno(), self.handle_control)
        self._watch(self.handoff_r, self._take_handoffs)

    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.poller.register(fd, select.EPOLLIN)
        self.handlers[fd] = handler

    def _unwatch(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self.handlers.pop(fd, None) is not None:
            self.poller.unregister(fd)
        sock.close()

    def watch_wakeup(self, fd: int) -> None:
        """Wake the loop when fd is readable (a pipe that signals write to, see main)."""
        self._watch(fd, lambda: _drain(fd))

    # records and sockets

    def reload(self) -> None:
        try:
            self.view = load_view(self.records_path)
            self._records_changed()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"portway-dns: cannot load records: {exc}", file=sys.stderr, flush=True)
            return
        wanted = set(self.view.gateways)
        for gw in list(self.udp):
            if gw not in wanted:
                self._unwatch(self.udp.pop(gw))
                self._unwatch(self.tcp.pop(gw))
        for gw in wanted - set(self.udp):
            try:
                udp, tcp = self.udp[gw], self.tcp[gw] = self._bind(gw)
                if self.timing is not None:
                    udp.setsockopt(socket.SOL_SOCKET, mmsg.SO_TIMESTAMPNS, 1)
                self._watch(udp.fileno(), functools.partial(
                    self.handle_udp, udp, self.batches[udp.family]))
                self._watch(tcp.fileno(), functools.partial(self.handle_tcp_accept, tcp))
            except OSError as exc:
                print(f"portway-dns: cannot listen on {_where(gw, 53)}: {exc}",
                      file=sys.stderr, flush=True)
        self._check_resolv()

    @staticmethod
    def _bind(address: str) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets on address, port 53. Bound with freebind: a gateway's
        address may not be on its bridge yet (or, IPv6, still tentative), and the
        server must not wait for it. IPv6 sockets are IPv6 only: IPv4 clients of that
        network reach its IPv4 gateway, through a socket of its own."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                    except OSError:
                        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            # Room for a burst (the default, net.core.rmem_default, holds a few hundred
            # queries); FORCE: as root, past net.core.rmem_max.
            try:
                udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_BUFFER)
            except OSError:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            udp.bind((address, 53))
            udp.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, 53))
            tcp.listen(128)
            tcp.setblocking(False)
        except OSError:
            udp.close()  # not left open for each reload that tries again
            tcp.close()
            raise
        return udp, tcp

    def _check_resolv(self) -> None:
        try:
            mtime = os.stat(self.resolv).st_mtime
        except OSError:
            mtime = 0.0
        if mtime != self.resolv_mtime:
            self.resolv_mtime = mtime
            self.upstreams = read_upstreams(self.resolv)
            self.upstream_addresses = {}

    def _upstream_address(self, upstream: str) -> tuple[int, tuple[Any, ...]] | None:
        try:
            return self.upstream_addresses[upstream]
        except KeyError:
            found = self.upstream_addresses[upstream] = upstream_address(upstream)
            return found

    # answering

    def reply_to(self, msg: bytes, src: bytes, now: float) -> bytes | wire.Question | None:
        """The UDP reply to msg from src (a packed address, either family); its question
        when it is to be forwarded (start_forward, replied later); None when it is
        dropped (no question, no id to answer).

        A repeated local query costs one dictionary lookup: its reply was kept the
        first time."""
        kept = self.replies.get((src, msg[2:]))
        if kept is not None:
            self.log.append((now, src, kept[1]))
            return msg[:2] + kept[0]
        out, local, q = self._answer(msg, src)
        if out is None:
            return q
        if len(out) > 512:  # too big for plain UDP: the client retries over TCP
            return self._truncated(msg)
        # One record or none: the same reply next time (several rotate, so not kept).
        if local is not None and out[6:8] <= b"\x00\x01" and len(msg) <= 512 and \
                len(self.replies) < MAX_KEPT:
            self.replies[(src, msg[2:])] = (out[2:], local)
        return out

    def answer(self, msg: bytes, src: bytes) -> tuple[bytes | None, tuple[Any, ...] | None]:
        """The reply to msg (None when it is forwarded: replied later) and, when the
        answer is local, what the log says of it."""
        out, local, _ = self._answer(msg, src)
        return out, local

    def _answer(self, msg: bytes, src: bytes) -> tuple[
            bytes | None, tuple[Any, ...] | None, wire.Question | None]:
        """answer(), and the question when msg is to be forwarded: read once, for
        start_forward too."""
        try:
            q = wire.parse_question(msg)
        except wire.FormErr as exc:
            return (None if exc.query_id is None else
                    wire.error_response(exc.query_id, wire.FORMERR)), None, None
        if q.opcode != 0:
            return wire.response(q, wire.NOTIMP, authoritative=False), None, None
        nets = self.view.networks_of(src)
        if not nets or q.qclass != wire.CLASS_IN:
            return wire.response(q, wire.REFUSED, authoritative=False), None, None
        out = self._lookup(q, nets)
        if out is not None:
            return out, self._note(q, src, "local", 0.0, out[3] & 0xF), None
        if all(n in self.view.internal for n in nets):
            self._note(q, src, "refused: internal network, no forwarding", 0.0, wire.REFUSED)
            return wire.response(q, wire.REFUSED, authoritative=False), None, None
        return None, None, q

    def _lookup(self, q: wire.Question, nets: tuple[str, ...]) -> bytes | None:
        view = self.view
        name = q.name
        if q.qtype == wire.QTYPE_PTR:
            packed = wire.ptr_address(name)
            if packed is None:
                return None
            if packed in view.ptr:
                target, target_nets = view.ptr[packed]
                if set(target_nets) & set(nets):
                    return wire.response(q, wire.NOERROR,
                                         [wire.ptr_record(target, self._ttl(nets))])
            address = ipaddress.ip_address(packed)
            if any(address in subnet for _, subnet in view.subnets):
                return wire.response(q, wire.NXDOMAIN)  # portway's, not the world's
            return None
        cached = self.answers.get((name, nets))
        if cached is not None:
            return self._address_answer(q, name, cached)
        found: list[bytes] = []
        for nid in nets:
            found.extend(view.names.get(nid, {}).get(name, ()))
        own_network = False  # NAME.NETWORK, for a network the querier is on
        if not found and "." in name:
            short, _, netname = name.rpartition(".")
            net_id = view.net_names.get(netname)
            if net_id is not None and net_id in nets:
                own_network = True
                found = list(view.names.get(net_id, {}).get(short, ()))
        if not found:
            # Under one of the querier's own networks, the name is ours to deny. Any other
            # name it cannot see is unknown to it, a name that exists only on networks it
            # is not on included: answered as the world answers it (forwarded, or refused
            # on an internal network), so no container can tell another network's names
            # from names nobody has. The same for every query type: whether the name
            # has addresses of the asked family, or any, tells nothing either.
            return wire.response(q, wire.NXDOMAIN) if own_network else None
        unique = dict.fromkeys(found)
        ttl = self._ttl(nets)
        records = ([wire.a_record(ip, ttl) for ip in unique if len(ip) == 4],
                   [wire.aaaa_record(ip, ttl) for ip in unique if len(ip) == 16])
        if len(self.answers) < 100_000:  # bounded memory, whatever names are asked
            self.answers[(name, nets)] = records
        return self._address_answer(q, name, records)

    def _ttl(self, nets: tuple[str, ...]) -> int:
        """The TTL of an answer to a querier on nets: the lowest of theirs."""
        ttl = self.view.ttl
        return min(ttl.get(n, TTL) for n in nets) if ttl else TTL

    def _address_answer(self, q: wire.Question, name: str,
                        records: tuple[list[bytes], list[bytes]]) -> bytes:
        """The answer for a name that exists: its A or AAAA records (both for ANY).
        A name without addresses of the asked family, or asked for another type, is
        answered NOERROR with no record ("no data"), as RFC 2308 has it: not
        NXDOMAIN, which would deny the name's other records too."""
        qtype = q.qtype
        if qtype == wire.QTYPE_A:
            chosen = self._rotated(name, records[0])
        elif qtype == wire.QTYPE_AAAA:
            chosen = self._rotated(name, records[1])
        elif qtype == wire.QTYPE_ANY:
            chosen = self._rotated(name, records[0]) + self._rotated(name, records[1])
        else:
            return wire.response(q, wire.NOERROR)
        return wire.response(q, wire.NOERROR, chosen)

    def _rotated(self, name: str, records: list[bytes]) -> list[bytes]:
        """Several records for one name: a different one first each time."""
        if len(records) < 2:
            return records
        turn = self.rotation[name] % len(records)
        self.rotation[name] += 1
        return records[turn:] + records[:turn]

    # forwarding

    def start_forward(self, msg: bytes, src: bytes, reply: Callable[[bytes], None],
                      q: wire.Question | None = None) -> bool:
        """Queue msg (whose question q is, when it has been read already) for the
        querier's upstream resolvers; serve() sends what this round of the loop queued
        (send_forwards). False when msg is dropped: reply is then never called.

        A client address over its share of the forwarded queries in flight
        (limits.forward_share) is answered SERVFAIL at once: its own earlier queries
        are still waiting, so this one failed for now, as an unanswered one would, and
        the client's resolver neither waits for it nor takes it as a policy. The
        share keeps one client's flood against a slow upstream from taking the room
        every other container's lookups need."""
        if q is None:
            try:
                q = wire.parse_question(msg)
            except wire.FormErr:
                return False  # what the fast path let through but has no question: dropped
        own = self.forwarding.get(src, 0)
        if own >= limits.forward_share(self.forwarding_total):
            full = self.forwarding_total >= limits.MAX_FORWARDS
            self.shed["forwards: table full" if full else "forwards: over the client's share"] += 1
            self._note(q, src, "failed: forwarding table full" if full else
                       "failed: too many forwarded queries from this client", 0.0,
                       wire.SERVFAIL)
            reply(wire.response(q, wire.SERVFAIL, authoritative=False))
            return True
        self.forwarding[src] = own + 1
        self.forwarding_total += 1
        # The container's own resolvers, else its network's, else the host's (as
        # aardvark-dns chooses them); each list in order, failing over to the next.
        view = self.view
        upstreams = view.custom_dns.get(src) or (view.net_dns and next(
            (view.net_dns[n] for n in view.networks_of(src) if n in view.net_dns),
            None)) or self.upstreams
        self.outbox.append(Forward(msg, q, src, reply, upstreams, time.monotonic()))
        return True

    def _finish(self, fwd: Forward) -> None:
        """fwd leaves the forwarding table (answered or failed): its client's share
        has room again."""
        self.forwarding_total -= 1
        left = self.forwarding[fwd.src] - 1
        if left:
            self.forwarding[fwd.src] = left
        else:
            del self.forwarding[fwd.src]

    def send_forwards(self, fwds: list[Forward]) -> None:
        """Send each query to its current upstream, from the loop, never waiting: the
        queries of one round for one upstream share a new non-blocking socket (a fresh
        source port), each under a random id of ours, and the answers are read when
        epoll says they have come. An error or UPSTREAM_TIMEOUT moves what is left
        on that socket to the next upstream; past the last, SERVFAIL."""
        groups: dict[str, list[Forward]] = {}
        for fwd in fwds:
            if fwd.index < len(fwd.upstreams):
                groups.setdefault(fwd.upstreams[fwd.index], []).append(fwd)
            else:
                self._note(fwd.q, fwd.src, "failed: no upstream answered" if fwd.upstreams
                           else "failed: no upstream resolver",
                           time.monotonic() - fwd.started, wire.SERVFAIL)
                self._finish(fwd)
                fwd.reply(wire.response(fwd.q, wire.SERVFAIL, authoritative=False))
        for upstream, group in groups.items():
            for at in range(0, len(group), FORWARDS_PER_SOCKET):
                self._send_group(upstream, group[at:at + FORWARDS_PER_SOCKET])

    def _send_group(self, upstream: str, group: list[Forward]) -> None:
        pending: dict[bytes, Forward] = {}
        sock = None
        try:
            target = self._upstream_address(upstream)
            if target is None:  # a container's --dns that is no address to send to
                raise OSError(f"cannot send to {upstream}")
            # A socket of the upstream's family, whatever the clients' is.
            sock = socket.socket(target[0], socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            sock.connect(target[1])
            ids = os.urandom(2 * len(group))
            out: list[tuple[bytes, bytes | None]] = []
            for i, fwd in enumerate(group):
                number = int.from_bytes(ids[2 * i:2 * i + 2], "big")
                while (qid := number.to_bytes(2, "big")) in pending:
                    number = (number + 1) & 0xFFFF  # taken on this socket: the next free
                out.append((qid + fwd.msg[2:], None))
                pending[qid] = fwd
            # In one system call, those of one length as one GSO send.
            batch = self.upstream_batches.get(target[0])
            if batch is None:
                batch = self.upstream_batches[target[0]] = mmsg.Batch(
                    size=FORWARDS_PER_SOCKET, bufsize=1, family=target[0])  # sends only
            if all(len(data) <= batch.outsize for data, _ in out):
                batch.send_to(sock.fileno(), out, strict=True)
            else:
                for data, _ in out:
                    sock.send(data)
        except OSError:  # no socket, or this upstream unreachable: the next one
            if sock is not None:
                sock.close()
            self._advance(group)
            return
        self.forwards[sock] = pending
        self.expiries.append((time.monotonic() + UPSTREAM_TIMEOUT, sock))
        self._watch(sock.fileno(), functools.partial(self._upstream_answers, sock))

    def _advance(self, fwds: list[Forward]) -> None:
        for fwd in fwds:
            fwd.index += 1
        self.send_forwards(fwds)

    def _upstream_answers(self, sock: socket.socket) -> None:
        pending = self.forwards.get(sock)
        if pending is None:
            return
        # What has come, UPSTREAM_READS a system call (each read whole: any UDP size).
        reader = self.upstream_readers.get(sock.family)
        if reader is None:
            reader = self.upstream_readers[sock.family] = mmsg.Batch(
                size=UPSTREAM_READS, bufsize=65536, outsize=1, family=sock.family)
        fd = sock.fileno()
        while pending:
            try:
                answers = reader.recv(fd)
            except OSError:  # refused (an ICMP error): the next upstream, for all left
                self._end_socket(sock)
                self._advance(list(pending.values()))
                return
            if not answers:
                return  # the rest later: epoll says when
            now = time.monotonic()
            for answer, _ in answers:
                fwd = pending.pop(answer[:2], None) if len(answer) >= 12 else None
                if fwd is None:
                    continue  # not a DNS answer to one of this socket's ids: read on
                if answer[2] & 0x02:  # truncated: this upstream and the rest over TCP
                    # Still in its client's share until the thread hands the answer back.
                    self.pool.submit(self.forward, fwd.msg, fwd.src,
                                     functools.partial(self._from_thread, fwd),
                                     fwd.upstreams[fwd.index:], fwd.started)
                    continue
                self._note(fwd.q, fwd.src, f"forwarded to {fwd.upstreams[fwd.index]}",
                           now - fwd.started, answer[3] & 0xF)
                self._finish(fwd)
                fwd.reply(fwd.msg[:2] + answer[2:])  # with the client's own id
        self._end_socket(sock)

    def _end_socket(self, sock: socket.socket) -> None:
        self.forwards.pop(sock, None)  # what is left there moves on (_advance) or ends
        self._unwatch(sock)

    def _from_thread(self, fwd: Forward, answer: bytes) -> None:
        """A pool thread's answer to fwd, for the loop to send (_take_handoffs)."""
        self.handoff.append((fwd, answer))
        try:
            os.write(self.handoff_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the loop is coming

    def _take_handoffs(self) -> None:
        _drain(self.handoff_r)
        while self.handoff:
            fwd, answer = self.handoff.popleft()
            self._finish(fwd)
            fwd.reply(answer)

    def _expire_forwards(self, now: float) -> None:
        while self.expiries and self.expiries[0][0] <= now:
            sock = self.expiries.popleft()[1]
            pending = self.forwards.get(sock)
            if pending is not None:  # no answer in time: the next upstream
                left = list(pending.values())
                self._end_socket(sock)
                self._advance(left)

    def forward(self, msg: bytes, src: bytes, reply: Any, upstreams: list[str],
                started: float) -> None:
        """The blocking way, on a pool thread, for answers too long for UDP: ask each
        upstream in turn (over TCP when its UDP answer is truncated). reply is called
        once, whatever happens: the query holds a slot of its client's share till then."""
        q = wire.parse_question(msg)
        for upstream in upstreams:
            try:
                answer = self._ask(upstream, msg)
            except Exception:  # OSError, or what a hostile upstream's bytes may raise
                continue
            self._note(q, src, f"forwarded to {upstream}", time.monotonic() - started,
                       answer[3] & 0xF)
            reply(answer)
            return
        self._note(q, src, "failed: no upstream answered", time.monotonic() - started,
                   wire.SERVFAIL)
        reply(wire.response(q, wire.SERVFAIL, authoritative=False))

    @staticmethod
    def _ask(upstream: str, msg: bytes) -> bytes:
        target = upstream_address(upstream)  # not the loop's cache: this is a pool thread
        if target is None:
            raise OSError(f"cannot send to {upstream}")
        family, address = target
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(UPSTREAM_TIMEOUT)
            s.connect(address)
            s.send(msg)
            deadline = time.monotonic() + UPSTREAM_TIMEOUT
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                answer = s.recv(65535)
                if len(answer) >= 12 and answer[:2] == msg[:2]:
                    break
        if answer[2] & 0x02:  # truncated: ask again over TCP
            with socket.socket(family, socket.SOCK_STREAM) as t:
                t.settimeout(UPSTREAM_TIMEOUT)
                t.connect(address)
                t.sendall(len(msg).to_bytes(2, "big") + msg)
                size = int.from_bytes(_recv_exact(t, 2), "big")
                answer = _recv_exact(t, size)
            if len(answer) < 12:
                raise OSError("not a DNS answer")
        return answer

    def _note(self, q: wire.Question, src: bytes, how: str, seconds: float,
              rcode: int) -> tuple[Any, ...]:
        info = (q.name, q.qtype, how, seconds, rcode)
        self.log.append((time.time(), src, info))
        return info

    def log_entries(self) -> list[dict[str, Any]]:
        return [{"time": t, "client": address_text(src), "name": name, "type": qtype,
                 "how": how, "ms": round(seconds * 1000, 3), "rcode": rcode}
                for t, src, (name, qtype, how, seconds, rcode) in list(self.log)]

    # the loop

    def handle_udp(self, sock: socket.socket, batch: mmsg.Batch) -> None:
        """Read and answer sock's queries, through batch (of sock's family).

        The first query is read and answered through the socket module's own calls
        (recvfrom, sendto: compiled code, little of it, where a batch goes through
        ctypes); the kernel then says whether another is queued (FIONREAD). Only
        then are the rest read and answered in batches. So a lone query, the common
        case when nothing is busy, costs one read, one send and the question, after
        its answer has left. Fewer queries than a batch holds means the socket was
        drained: the loop goes back to epoll (level-triggered: it says so if more
        have come). One answer of a batch goes out through sendto too."""
        now = time.time()
        if not self._lone_query(sock, batch, now):
            return
        self._batches(sock, batch, now)

    def _lone_query(self, sock: socket.socket, batch: mmsg.Batch, now: float) -> bool:
        """Read and answer one query of sock's; True when another is queued."""
        timing = self.timing
        try:
            if timing is None:
                msg, peer = sock.recvfrom(batch.bufsize)
            else:
                turn, cpu = time.time_ns(), time.thread_time_ns()
                msg, ancillary, _, peer = sock.recvmsg(batch.bufsize, STAMP_SPACE)
                read = time.time_ns()
        except OSError:  # nothing there (woken for a query another read took), or an error
            return False
        try:
            src = socket.inet_pton(sock.family, peer[0].partition("%")[0])
            out = self.reply_to(msg, src, now)
        except Exception:  # never die on input
            out = None
        if isinstance(out, bytes):
            if len(out) <= batch.outsize:
                try:
                    sock.sendto(out, peer)
                    batch.datagrams += 1
                    batch.packets += 1
                except OSError:
                    pass  # refused: dropped, as a batch drops it
            if timing is not None:
                # The clocks first: what follows is the timing's own cost, not the answer's.
                ran = time.thread_time_ns() - cpu  # read inside the wall interval
                sent = time.time_ns()
                arrived = _arrival(ancillary)
                if arrived and len(timing) < TIMED * TIMES:
                    timing += (turn - arrived, read - turn, sent - read, ran)
        elif out is not None:
            self.start_forward(msg, src, functools.partial(
                self._queue_forwarded, sock, batch.name_of(peer)), out)
        try:
            return int.from_bytes(fcntl.ioctl(sock.fileno(), FIONREAD, b"\0\0\0\0"),
                                  sys.byteorder) > 0
        except OSError:
            return True  # not said: read on, as a batch would

    def _batches(self, sock: socket.socket, batch: mmsg.Batch, now: float) -> None:
        """The queries queued behind a lone one: read and answered a batch at a time."""
        # What is queued, a batch per system call each way (bounded: other sockets wait).
        reply_to, fd, timing = self.reply_to, sock.fileno(), self.timing
        for _ in range(64):
            if timing is not None:
                turn, cpu = time.time_ns(), time.thread_time_ns()
            try:
                queries = batch.recv(fd)
            except OSError:
                return
            if timing is not None:
                read = time.time_ns()
            answers: list[tuple[bytes, int]] = []
            for slot, (msg, src) in enumerate(queries):
                try:
                    out = reply_to(msg, src, now)
                except Exception:  # never die on input
                    continue
                if isinstance(out, bytes):
                    answers.append((out, slot))
                elif out is not None:
                    self.start_forward(msg, src, functools.partial(
                        self._queue_forwarded, sock, batch.name(slot)), out)
            if len(answers) == 1:
                batch.send_one(sock, *answers[0])
            elif answers:
                batch.send(fd, answers)
            if timing is not None and answers and len(timing) < TIMED * TIMES:
                ran = time.thread_time_ns() - cpu  # read inside the wall interval
                sent, arrived = time.time_ns(), batch.arrived
                for _, slot in answers:
                    if arrived[slot]:
                        timing += (turn - arrived[slot], read - turn, sent - read, ran)
            if len(queries) < batch.size:
                if len(queries) >= GATHER_AT:
                    self.gather = True  # serve() pauses once, for every socket
                return

    def _queue_forwarded(self, sock: socket.socket, name: bytes, data: bytes) -> None:
        """An upstream's answer (or SERVFAIL) for a UDP client (name: its sockaddr),
        from the loop (what a pool thread got over TCP is handed to it first): sent
        with the others of this round of the loop (_send_queued)."""
        out = self.udp_out.get(sock)
        if out is None:
            self.udp_out[sock] = out = []
        out.append((data, name))

    def _send_queued(self) -> None:
        """The forwarded answers of this round of the loop, per socket as few system
        calls and packets as the local ones: those of one length to one client as one
        GSO send. One too long for a Batch goes on its own."""
        queued, self.udp_out = self.udp_out, {}
        for sock, out in queued.items():
            batch, fd = self.batches[sock.family], sock.fileno()
            fits = [item for item in out if len(item[0]) <= batch.outsize]
            for at in range(0, len(fits), batch.size):
                batch.send_to(fd, fits[at:at + batch.size])
            for data, name in out:
                if len(data) > batch.outsize:
                    try:
                        sock.sendto(data, batch.peer_of(name))
                    except OSError:
                        continue
                    self.forwarded_sent += 1

    def _truncated(self, msg: bytes) -> bytes:
        q = wire.parse_question(msg)
        flags_answer = wire.response(q, wire.NOERROR)
        return flags_answer[:2] + (int.from_bytes(flags_answer[2:4], "big") |
                                   wire.FLAG_TC).to_bytes(2, "big") + flags_answer[4:]

    def handle_tcp_accept(self, listener: socket.socket) -> None:
        """Take the waiting connections, within the limits: limits.TCP_PER_CLIENT per
        client address and limits.MAX_TCP_CLIENTS in all (a slot taken from the
        address that holds the most when all are taken, see limits.tcp_admit). A
        connection over them is closed at once: its client sees the end of the stream
        and retries or fails, instead of waiting."""
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            # The address alone: IPv6 gives (host, port, flow label, scope), and a
            # link-local host may carry its scope ("%eth0").
            src = pack_address(peer[0].partition("%")[0])
            admit, evict = limits.tcp_admit(self.tcp_held, src, len(self.clients))
            if not admit:
                self.shed["tcp: over the limits"] += 1
                conn.close()
                continue
            if evict is not None:
                # Of that address's connections, the one quietest longest.
                oldest = min((c for c in self.clients.values() if c.src == evict),
                             key=lambda c: c.deadline)
                self.shed["tcp: slot given to another address"] += 1
                self._drop(oldest)
            conn.setblocking(False)
            client = TcpClient(conn, src, time.monotonic() + limits.TCP_IDLE)
            self.clients[client.fd] = client
            self.tcp_held[src] += 1
            self._watch(client.fd, functools.partial(self.handle_tcp, client))

    def handle_tcp(self, client: TcpClient) -> None:
        """The client's socket is readable or (with answers waiting) writable: send
        what it can take, then read and answer every whole query that came. Never
        blocks: answers wait in the client's buffer."""
        if client.outbuf:
            self._flush(client)
            if client.closed:
                return
        if not client.reading:
            if not client.outbuf:  # woken with nothing to read or write: an error, a reset
                self._drop(client)
            return
        try:
            data = client.sock.recv(65537)
        except BlockingIOError:
            return  # woken to write, not to read
        except OSError:
            self._drop(client)
            return
        if not data:  # the client is done asking; its answers still go out
            client.reading = False
            if client.pending or client.outbuf:
                self._set_events(client)
            else:
                self._drop(client)
            return
        buf = client.inbuf
        buf += data
        at, whole = 0, len(buf)
        client.parsing = True
        try:
            while whole - at >= 2:
                size = int.from_bytes(buf[at:at + 2], "big")
                if size < 12:
                    self._drop(client)
                    return
                if whole - at < 2 + size:
                    break
                msg = bytes(buf[at + 2:at + 2 + size])
                at += 2 + size
                # A whole query: the client is not idle (a byte at a time does not count).
                client.deadline = time.monotonic() + limits.TCP_IDLE
                try:
                    out, _, q = self._answer(msg, client.src)
                except Exception:  # never die on input
                    self._drop(client)
                    return
                if out is not None:
                    self._queue(client, out)
                elif self.start_forward(msg, client.src,
                                        functools.partial(self._tcp_forwarded, client), q):
                    client.pending += 1
                if client.closed:  # over its output limit
                    return
        finally:
            client.parsing = False
        del buf[:at]  # once: a read of many small queries is not moved once per query
        if client.outbuf:
            self._flush(client)

    def _queue(self, client: TcpClient, out: bytes) -> None:
        """out for client, after what it has not read yet; past the limit, the client
        (which asks and does not read) is closed."""
        client.outbuf += len(out).to_bytes(2, "big")
        client.outbuf += out
        if len(client.outbuf) > limits.TCP_OUTPUT_LIMIT:
            self._flush(client)  # only what the socket does not take counts
            if not client.closed and len(client.outbuf) > limits.TCP_OUTPUT_LIMIT:
                self.shed["tcp: answers not read"] += 1
                self._drop(client)

    def _tcp_forwarded(self, client: TcpClient, out: bytes) -> None:
        """A forwarded query's answer (or SERVFAIL) for client, from the loop."""
        client.pending -= 1
        if client.closed:
            return
        client.deadline = time.monotonic() + limits.TCP_IDLE
        self._queue(client, out)
        if not client.closed and not client.parsing:
            self._flush(client)

    def _flush(self, client: TcpClient) -> None:
        """Send what the socket takes now; watch for writability while any is left."""
        try:
            sent = client.sock.send(client.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(client)
            return
        if sent:
            del client.outbuf[:sent]
            client.deadline = time.monotonic() + limits.TCP_IDLE  # it reads: not idle
        if not client.outbuf and not client.reading and not client.pending:
            self._drop(client)  # asked, answered, and done
            return
        self._set_events(client)

    def _set_events(self, client: TcpClient) -> None:
        events = (select.EPOLLIN if client.reading else 0) | \
            (select.EPOLLOUT if client.outbuf else 0)
        if events != client.events:
            client.events = events
            self.poller.modify(client.fd, events)

    def _drop(self, client: TcpClient) -> None:
        if client.closed:
            return
        client.closed = True
        del self.clients[client.fd]
        held = self.tcp_held[client.src] - 1
        if held:
            self.tcp_held[client.src] = held
        else:
            del self.tcp_held[client.src]
        client.inbuf, client.outbuf = bytearray(), bytearray()  # freed now, not with it
        self._unwatch(client.sock)

    def _expire_tcp(self, now: float) -> None:
        """Close the TCP clients that have sent no whole query (nor read an answer)
        for limits.TCP_IDLE: a byte now and then keeps no slot. One whose forwarded
        queries are still out waits for them (they end within the upstream timeouts)."""
        for client in [c for c in self.clients.values() if c.deadline <= now and not c.pending]:
            self.shed["tcp: idle or slow"] += 1
            self._drop(client)

    def handle_control(self) -> None:
        try:
            msg, peer = self.control.recvfrom(1 << 16)
        except OSError:
            return
        command = msg.decode(errors="replace").strip()
        if command.startswith("{"):
            reply = self.apply_delta(command)
        elif command == "reload":
            self.reload()
            reply = {"ok": True, "listening": sorted(self.udp)}
        elif command == "log":
            batches, forwarded = self.batches.values(), self.forwarded_sent
            reply = {"ok": True, "log": self.log_entries(), "upstreams": self.upstreams,
                     "sent": {"answers": sum(b.datagrams for b in batches) + forwarded,
                              "packets": sum(b.packets for b in batches) + forwarded,
                              "coalesce": all(b.coalesce for b in batches)}}
        elif command == "stats":
            reply = {"ok": True, **self.stats()}
        elif command in ("timing start", "timing"):
            reply = self.time_queries(command == "timing start")
        elif command == "stop":
            self.running = False
            reply = {"ok": True}
        else:
            reply = {"ok": False}
        if peer:
            _safe(self.control.sendto, json.dumps(reply).encode(), peer)

    def time_queries(self, on: bool) -> dict[str, Any]:
        """Start timing the UDP queries (each socket's kernel stamps their arrival), or
        stop and give what was timed: per answered query (at most TIMED), µs from its
        arrival at the socket to the server's turn to read it (the server's wake-up, or
        the queries before it), from then to its read, and from its read to its answer's
        send (the send's system call included, and any time the server was not running
        meanwhile: a client woken by the answer on the server's CPU may run first); and
        the server's CPU time from its turn to the send (its own work alone, for the
        whole batch the query came in). With them, how many times the garbage collector
        ran meanwhile, by generation (a run stops the loop mid-query). Off, the UDP path
        pays nothing for it."""
        timed = self.timing or []
        collections = [g["collections"] for g in gc.get_stats()]
        ran = [] if self.timing is None else \
            [now - then for now, then in zip(collections, self.timing_gc, strict=True)]
        self.timing = [] if on else None
        self.timing_gc = collections
        for sock in self.udp.values():
            _safe(sock.setsockopt, socket.SOL_SOCKET, mmsg.SO_TIMESTAMPNS, int(on))
        for batch in self.batches.values():
            batch.stamp(on)
        return {"ok": True, "queries": [[round(x / 1000, 1) for x in timed[at:at + TIMES]]
                                        for at in range(0, len(timed), TIMES)],
                "collections": ran}

    def stats(self) -> dict[str, Any]:
        """What clients hold of the shared limits now, and what the limits turned away."""
        def by_client(counts: dict[bytes, int]) -> dict[str, int]:
            return {address_text(src): n for src, n in counts.items()}

        return {"tcp": {"open": len(self.clients), "by_client": by_client(self.tcp_held),
                        "unsent_bytes": sum(len(c.outbuf) for c in self.clients.values())},
                "forwards": {"in_flight": self.forwarding_total,
                             "by_client": by_client(self.forwarding)},
                "shed": dict(self.shed)}

    def apply_delta(self, text: str) -> dict[str, Any]:
        """One container changed: {"cmd": "set", ...container} or {"cmd": "forget", "id"}."""
        try:
            delta = json.loads(text)
            if delta["cmd"] == "set":
                self.view.set_container(delta["container"])
            elif delta["cmd"] == "forget":
                self.view.forget(delta["id"])
            else:
                return {"ok": False}
        except (ValueError, KeyError, TypeError, OSError):
            return {"ok": False}
        self._records_changed()
        return {"ok": True}

    def _records_changed(self) -> None:
        self.answers = {}
        self.replies = {}
        self.upstream_addresses = {}

    def serve(self) -> None:
        self.reload()
        last_check = time.monotonic()
        while self.running:
            wait = 1.0 if not self.expiries else \
                min(1.0, max(0.0, self.expiries[0][0] - time.monotonic()))
            if self.clients:
                wait = min(wait, TCP_CHECK)
            try:
                ready = self.poller.poll(wait)
            except OSError:  # EINTR: a signal's handler has run
                ready = []
            for fd, _ in ready:
                handler = self.handlers.get(fd)
                if handler is not None:  # else closed by an earlier handler of this round
                    handler()
            if self.outbox:
                outbox, self.outbox = self.outbox, []
                self.send_forwards(outbox)
            if self.udp_out:
                self._send_queued()
            if self.gather:
                self.gather = False
                time.sleep(GATHER_PAUSE)
            now = time.monotonic()
            self._expire_forwards(now)
            if self.udp_out:  # SERVFAIL for what expired past its last upstream
                self._send_queued()
            if self.clients and now >= self.next_tcp_check:
                self.next_tcp_check = now + TCP_CHECK
                self._expire_tcp(now)
            if now - last_check > 1.0:
                last_check = now
                self._check_resolv()
        self.pool.shutdown()


class Pool:
    """Worker threads for blocking work (forwarding over TCP): a new one whenever
    more jobs are outstanding than there are workers, up to size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.work: _queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = \
            _queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.outstanding = 0
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self.lock:
            self.outstanding += 1
            if self.outstanding > len(self.threads) and len(self.threads) < self.size:
                thread = threading.Thread(target=self._worker, daemon=True,
                                          name=f"forward-{len(self.threads)}")
                self.threads.append(thread)
                thread.start()
        self.work.put((fn, args))

    def backlog(self) -> int:
        return self.work.qsize()

    def _worker(self) -> None:
        while (item := self.work.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception as exc:  # one query's failure is logged, not fatal
                print(f"portway-dns: forwarding failed: {exc}", file=sys.stderr, flush=True)
            finally:
                with self.lock:
                    self.outstanding -= 1

    def shutdown(self) -> None:
        for _ in self.threads:
            self.work.put(None)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The kernel's arrival stamp among a read's ancillary data (SCM_TIMESTAMPNS), in
    ns since the epoch; 0 when there is none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == mmsg.SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = int.from_bytes(data[:8], sys.byteorder), \
                int.from_bytes(data[8:16], sys.byteorder)
            return seconds * 1_000_000_000 + nanoseconds
    return 0


def _drain(fd: int) -> None:
    try:
        os.read(fd, 64)
    except OSError:
        pass


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise OSError("connection closed")
        out += chunk
    return out


def _safe(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def main() -> None:
    # Started by the engine only, with exactly these options: no argparse (and no
    # concurrent.futures above), whose imports would delay every first container of a
    # network by milliseconds, waiting for this server's socket.
    args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=False))
    if set(args) != {"--state-dir", "--resolv"}:
        raise SystemExit("usage: portway-dns --state-dir DIR --resolv FILE")
    server = Server(args["--state-dir"], args["--resolv"])
    mmsg.set_timer_slack(1000)  # GATHER_PAUSE is a pause of 50 µs, not 100
    # Sockets for forwarded queries in flight and two per network: as many descriptors
    # as the hard limit allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM ends the loop at once: the signal's byte on this pipe wakes the select.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    server.watch_wakeup(wake_r)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "running", False))
    print(f"portway-dns: serving (pid {os.getpid()})", file=sys.stderr, flush=True)
    server.serve()


if __name__ == "__main__":
    threading.current_thread().name = "portway-dns"
    main()
