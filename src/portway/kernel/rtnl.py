"""Reading a namespace's links, addresses, routes and neighbours in one dump of each kind,
over a plain rtnetlink socket, parsing only the attributes portway reads.

pyroute2 decodes every attribute of every message (a link's statistics, its per-family
settings...): about 0.6 ms a link, so `trace` and `audit` on a host with 1,000 veths,
or reading 1,000 containers' namespaces, spent seconds in parsing alone. The answers
here have the shapes of kernel/links.py's and kernel/observe.py's observe functions.
The socket belongs to the namespace of the thread that opens it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from typing import Any

from portway.kernel.links import Link
from portway.kernel.observe import NUD_STATES, ROUTE_KINDS, RULE_ACTIONS
from portway.model.types import IPInterface

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEIGH = 18, 22, 26, 30
RTM_GETRULE, RTM_NEWNETCONF, RTM_GETNETCONF, RTM_GETNSID = 34, 80, 82, 90
NETNSA_NSID, NETNSA_FD = 1, 3
NLA_TYPE_MASK = 0x3FFF
AF_BRIDGE = 7
MAIN_TABLE, LOCAL_TABLE = 254, 255

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_LINK_NETNSID, IFLA_INFO_KIND = 18, 20, 37, 1
IFLA_AF_SPEC, IFLA_INET_CONF = 26, 1
IFF_LOWER_UP = 0x10000
IFLA_INFO_DATA, IFLA_MACVLAN_MODE = 2, 1
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS = 29, 1 << 3
IFLA_INET6_CONF = 2
# include/uapi/linux/ipv6.h's DEVCONF_* (from 0)
DEVCONF_FORWARDING, DEVCONF_DISABLE_IPV6, DEVCONF_FORCE_FORWARDING = 0, 26, 59  # (59: 6.17)
# include/uapi/linux/ip.h's IPV4_DEVCONF_* (from 1)
IPV4_DEVCONF_FORWARDING, IPV4_DEVCONF_RP_FILTER, IPV4_DEVCONF_ROUTE_LOCALNET = 1, 8, 26
LINK_ATTRS = frozenset({IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER,
                        IFLA_LINKINFO, IFLA_IFALIAS, IFLA_LINK_NETNSID, IFLA_AF_SPEC})
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
NDA_DST, NDA_LLADDR, NDA_MASTER = 1, 2, 9
NUD_PERMANENT = 0x80
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_OIFNAME = \
    1, 2, 3, 6, 10, 15, 17
FIB_RULE_INVERT = 2
NETCONFA_IFINDEX, NETCONFA_FORWARDING, NETCONFA_RP_FILTER = 1, 2, 3
NETCONFA_IFINDEX_ALL = -1


_HEADER = struct.Struct("=HH").unpack_from  # an attribute's length and type


def _attrs(data: bytes, offset: int = 0, wanted: frozenset[int] | None = None
           ) -> dict[int, bytes]:
    """The attributes from offset on, by type (only the wanted ones, if given: a link
    carries some fifty, statistics included, of which a few are read)."""
    out: dict[int, bytes] = {}
    end = len(data)
    header = _HEADER  # (a local: this loop runs some fifty times a link)
    while offset + 4 <= end:
        length, kind = header(data, offset)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if (wanted is None or kind in wanted) and kind not in out:
            out[kind] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _text(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""


def _u32(value: bytes | None) -> int:
    return int(struct.unpack("=I", value[:4])[0]) if value and len(value) >= 4 else 0


def _mac(value: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in value) if value else ""


def _ip(value: bytes) -> str:
    return str(ipaddress.ip_address(value))


# A link's message, parsed: the same bytes parse to the same link, whichever namespace
# they come from (the index and every attribute read are in them). A host with 1,000
# veths sends them all at each dump, nearly all as they were the time before; parsing
# them again was two thirds of reading its links. Bounded: cleared when it outgrows
# PARSED_MAX (a change of any attribute, e.g. IPv6's re-randomised reachable time, makes
# a new entry).
_PARSED: dict[bytes, tuple[Link, tuple[int, ...], tuple[int, ...]]] = {}
PARSED_MAX = 20000


def _parse_link(msg: bytes) -> tuple[Link, tuple[int, ...], tuple[int, ...]]:
    """A RTM_NEWLINK message as a Link and its IPv4 (IPV4_DEVCONF_* n at [n - 1]) and IPv6
    (DEVCONF_* n at [n]) settings (empty: none)."""
    _, _, index, flags, _ = struct.unpack_from("=BxHiII", msg)
    a = _attrs(msg, 16, LINK_ATTRS)
    info = _attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
    spec = _attrs(a[IFLA_AF_SPEC]) if IFLA_AF_SPEC in a else {}
    inet, inet6 = spec.get(socket.AF_INET), spec.get(socket.AF_INET6)
    conf: tuple[int, ...] = ()
    raw = _attrs(inet).get(IFLA_INET_CONF) if inet else None
    if raw:
        count = len(raw) // 4
        conf = struct.unpack(f"={count}I", raw[:count * 4])
    conf6: tuple[int, ...] = ()
    raw6 = _attrs(inet6).get(IFLA_INET6_CONF) if inet6 else None
    if raw6:
        count = len(raw6) // 4
        conf6 = struct.unpack(f"={count}i", raw6[:count * 4])
    nsid = a.get(IFLA_LINK_NETNSID)
    number = int(struct.unpack("=i", nsid[:4])[0]) if nsid else -1
    kind = _text(info.get(IFLA_INFO_KIND))
    mode = ""
    if kind == "macvlan" and IFLA_INFO_DATA in info:
        mode = MACVLAN_MODES.get(_u32(_attrs(info[IFLA_INFO_DATA]).get(IFLA_MACVLAN_MODE)),
                                 "")
    link = Link(index=index, ifname=_text(a.get(IFLA_IFNAME)),
                kind=kind, alias=_text(a.get(IFLA_IFALIAS)), mode=mode,
                master=_u32(a.get(IFLA_MASTER)), up=bool(flags & 1),
                carrier=bool(flags & IFF_LOWER_UP),
                mtu=_u32(a.get(IFLA_MTU)), mac=_mac(a.get(IFLA_ADDRESS)),
                peer=_u32(a.get(IFLA_LINK)),
                netnsid=number if 0 <= number < 0xFFFFFFFF else -1)
    return link, conf, conf6


class Dumper:
    """An rtnetlink socket in the calling thread's namespace, for dumps only."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self._names: dict[int, str] | None = None
        # Each link's IPv4 settings (net.ipv4.conf.DEV.*), as the link dump carries them:
        # IPV4_DEVCONF_* n at [n - 1].
        self.inet_conf: dict[int, tuple[int, ...]] = {}
        # And its IPv6 settings (net.ipv6.conf.DEV.*): DEVCONF_* n at [n].
        self.inet6_conf: dict[int, tuple[int, ...]] = {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Dumper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dump(self, kind: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        """(message type, payload) of each message of a dump request."""
        self.seq += 1
        self.sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP,
                                   self.seq, 0) + body)
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    return
                if seq == self.seq:
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise OSError(-code, f"netlink dump {kind}: error {-code}")
                        return
                    yield mtype, data[offset + 16:offset + length]
                offset += (length + 3) & ~3

    def get(self, kind: int, body: bytes) -> bytes | None:
        """The payload of the answer to one (not a dump) request; None when the kernel
        answers with an error."""
        self.seq += 1
        self.sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, self.seq,
                                   0) + body)
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    return None
                if seq == self.seq:
                    return None if mtype == NLMSG_ERROR else data[offset + 16:offset + length]
                offset += (length + 3) & ~3

    # links and their names

    def links(self) -> list[Link]:
        out = []
        # Without the statistics (RTEXT_FILTER_SKIP_STATS, which older kernels ignore):
        # a quarter of each message, never read.
        body = struct.pack("=BxHiII", 0, 0, 0, 0, 0) + struct.pack("=HHI", 8, IFLA_EXT_MASK,
                                                                  RTEXT_FILTER_SKIP_STATS)
        seen = _PARSED
        if len(seen) > PARSED_MAX:
            seen.clear()
        for _, msg in self.dump(RTM_GETLINK, body):
            parsed = seen.get(msg)
            if parsed is None:
                parsed = seen[msg] = _parse_link(msg)
            link, conf, conf6 = parsed
            if conf:
                self.inet_conf[link.index] = conf
            if conf6:
                self.inet6_conf[link.index] = conf6
            out.append(link)
        self._names = {link.index: link.ifname for link in out}
        return out

    def ipv4_conf(self, index: int, which: int) -> int | None:
        """A net.ipv4.conf.DEV.* setting (IPV4_DEVCONF_*) of a link read by links()
        (None: unknown)."""
        conf = self.inet_conf.get(index, ())
        return conf[which - 1] if len(conf) >= which else None

    def ipv6_conf(self, index: int, which: int) -> int | None:
        """A net.ipv6.conf.DEV.* setting (DEVCONF_*, from 0) of a link read by links()
        (None: unknown, as for a link without IPv6)."""
        conf = self.inet6_conf.get(index, ())
        return conf[which] if len(conf) > which else None

    def route_localnet(self, index: int) -> bool | None:
        """net.ipv4.conf.DEV.route_localnet of a link read by links() (None: unknown)."""
        value = self.ipv4_conf(index, IPV4_DEVCONF_ROUTE_LOCALNET)
        return None if value is None else value == 1

    def names(self) -> dict[int, str]:
        if self._names is None:
            self.links()
        assert self._names is not None
        return self._names

    # addresses, routes, neighbours

    def addresses(self) -> list[tuple[int, IPInterface]]:
        """Every address of either family with its link's index (as
        links.observe_link_addresses)."""
        out: list[tuple[int, IPInterface]] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for _, msg in self.dump(RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, 0)):
                fam, prefixlen, _, _, index = struct.unpack_from("=BBBBI", msg)
                a = _attrs(msg, 8)
                if fam == family and IFA_ADDRESS in a:
                    out.append((index, ipaddress.ip_interface(
                        f"{_ip(a[IFA_ADDRESS])}/{prefixlen}")))
        return out

    def routes(self, tables: bool = False) -> list[dict[str, Any]]:
        """The main table's routes of both families (tables: those of every table but
        local, too), as observe.route_table."""
        names = self.names()
        out = []
        for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
            for _, msg in self.dump(RTM_GETROUTE, body):
                fam, dst_len, _, _, table, _, _, kind, _ = struct.unpack_from("=BBBBBBBBI", msg)
                a = _attrs(msg, 12)
                if RTA_TABLE in a:
                    table = _u32(a[RTA_TABLE])
                if fam != family or table == LOCAL_TABLE or (table != MAIN_TABLE and
                                                             not tables):
                    continue
                out.append({"dst": f"{_ip(a[RTA_DST]) if RTA_DST in a else anywhere}/{dst_len}",
                            "dev": names.get(_u32(a.get(RTA_OIF)), ""),
                            "gateway": _ip(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None,
                            "prefsrc": _ip(a[RTA_PREFSRC]) if RTA_PREFSRC in a else None,
                            "kind": ROUTE_KINDS.get(kind, str(kind)),
                            "metric": _u32(a.get(RTA_PRIORITY)), "table": table})
        return out

    def _neigh(self, family: int, skip: int = 0) -> Iterator[tuple[int, int, dict[int, bytes]]]:
        """skip: states (NUD_*) whose entries are passed over before their attributes are
        read (a bridge's permanent entries: two multicast addresses on each of its
        ports)."""
        for _, msg in self.dump(RTM_GETNEIGH, struct.pack("=BxxxiHBB", family, 0, 0, 0, 0)):
            fam, index, state, _, _ = struct.unpack_from("=BxxxiHBB", msg)
            if fam == family and not state & skip:
                yield index, state, _attrs(msg, 12)

    def neighbours(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(device, address) -> (MAC, state) (as observe.neighbours)."""
        names = self.names()
        out: dict[tuple[str, str], tuple[str, str]] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for index, state, a in self._neigh(family):
                if NDA_DST in a:
                    out[(names.get(index, "?"), _ip(a[NDA_DST]))] = (
                        _mac(a.get(NDA_LLADDR)), NUD_STATES.get(state, str(state)))
        return out

    def rules(self) -> list[dict[str, Any]]:
        """The policy routing rules of both families (as observe.rules): pyroute2's
        socket for them alone cost a millisecond or two a namespace."""
        out: list[dict[str, Any]] = []
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
            for _, msg in self.dump(RTM_GETRULE, body):
                fam, dst_len, src_len, _, table, _, _, action, flags = \
                    struct.unpack_from("=BBBBBBBBI", msg)
                if fam != family:
                    continue
                a = _attrs(msg, 12)
                src, dst = a.get(FRA_SRC), a.get(FRA_DST)
                out.append({"priority": _u32(a.get(FRA_PRIORITY)),
                            "table": _u32(a.get(FRA_TABLE)) or table,
                            "action": RULE_ACTIONS.get(action, "nop"),
                            "src": f"{_ip(src)}/{src_len}" if src else None,
                            "dst": f"{_ip(dst)}/{dst_len}" if dst else None,
                            "iif": _text(a.get(FRA_IIFNAME)), "oif": _text(a.get(FRA_OIFNAME)),
                            "fwmark": _u32(a[FRA_FWMARK]) if FRA_FWMARK in a else None,
                            "invert": bool(flags & FIB_RULE_INVERT), "version": version})
        return out

    def netconf_all(self, family: int) -> dict[str, int]:
        """The namespace-wide settings of a family (net.ipv4.conf.all.forwarding, which
        is net.ipv4.ip_forward, and .rp_filter; net.ipv6.conf.all.forwarding), as the
        kernel's netconf answer carries them: opening a /proc/sys file costs about a
        millisecond on a machine with a thousand namespaces (each has its own entries
        in one directory cache chain)."""
        body = struct.pack("=Bxxx", family) + struct.pack("=HHi", 8, NETCONFA_IFINDEX,
                                                          NETCONFA_IFINDEX_ALL)
        msg = self.get(RTM_GETNETCONF, body)
        if msg is None:
            return {}
        a = _attrs(msg, 4)
        out = {}
        for name, kind in (("forwarding", NETCONFA_FORWARDING),
                           ("rp_filter", NETCONFA_RP_FILTER)):
            if kind in a:
                out[name] = _u32(a[kind])
        return out

    def nsid(self, fd: int) -> int | None:
        """The id this namespace gives the namespace of fd (RTM_GETNSID: only asked, an
        id is never assigned by asking); None if it gives none."""
        body = struct.pack("=Bxxx", socket.AF_UNSPEC) + struct.pack("=HHI", 8, NETNSA_FD, fd)
        msg = self.get(RTM_GETNSID, body)
        got = None if msg is None else _attrs(msg, 4).get(NETNSA_NSID)
        if got is None or len(got) < 4:
            return None
        nsid = int(struct.unpack("=i", got[:4])[0])
        return nsid if nsid >= 0 else None

    def fdb(self) -> dict[tuple[str, str], str]:
        """(bridge, MAC) -> port, learned ones only (as observe.bridge_fdb)."""
        names = self.names()
        out: dict[tuple[str, str], str] = {}
        for index, _, a in self._neigh(AF_BRIDGE, skip=NUD_PERMANENT):
            master, mac = _u32(a.get(NDA_MASTER)), _mac(a.get(NDA_LLADDR))
            if master and mac:
                out[(names.get(master, "?"), mac)] = names.get(index, "?")
        return out


class FdbLookup:
    """What each bridge of a namespace has learned, asked one MAC at a time (`bridge fdb
    get MAC br BRIDGE`) over a socket opened in that namespace, instead of a dump: a
    bridge with 1,000 ports answers a dump with 3,000 permanent entries (each port's
    own and multicast addresses) that trace drops. A dict's get() as Dumper.fdb()'s
    answer has it: (bridge, MAC) -> port, learned ones only. close() it when done."""

    def __init__(self, names: dict[int, str]) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.names = dict(names)
        self.index = {name: index for index, name in names.items()}
        self.seq = 0
        self.known: dict[tuple[str, str], str | None] = {}

    def close(self) -> None:
        self.sock.close()

    def get(self, key: tuple[str, str], default: str | None = None) -> str | None:
        if key not in self.known:
            self.known[key] = self._ask(*key)
        found = self.known[key]
        return default if found is None else found

    def _ask(self, bridge: str, mac: str) -> str | None:
        master = self.index.get(bridge)
        try:
            lladdr = bytes(int(b, 16) for b in mac.split(":"))
        except ValueError:
            return None
        if master is None or len(lladdr) != 6 or self.sock.fileno() < 0:
            return None
        body = struct.pack("=BxxxiHBB", AF_BRIDGE, 0, 0, 0, 0) + \
            struct.pack("=HH", 10, NDA_LLADDR) + lladdr + bytes(2) + \
            struct.pack("=HHI", 8, NDA_MASTER, master)
        self.seq += 1
        self.sock.send(struct.pack("=IHHII", 16 + len(body), RTM_GETNEIGH, NLM_F_REQUEST,
                                   self.seq, 0) + body)
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    return None
                if seq == self.seq:
                    if mtype == NLMSG_ERROR:
                        return None  # (ENOENT: not in the table)
                    msg = data[offset + 16:offset + length]
                    _, port, state, _, _ = struct.unpack_from("=BxxxiHBB", msg)
                    if state & NUD_PERMANENT:
                        return None  # a port's own address, not one learned
                    return self.names.get(port, "?")
                offset += (length + 3) & ~3


NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
TCP_LISTEN, TCP_CLOSE = 10, 7  # a bound, unconnected UDP socket is in state CLOSE


def listeners() -> list[tuple[str, str, int, int]]:
    """(protocol, address, port, inode) of the listening TCP and bound (unconnected) UDP
    sockets of the calling thread's namespace, both families (as observe.listeners of
    each protocol): one sock_diag dump each, parsed only for those fields."""
    out: list[tuple[str, str, int, int]] = []
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_SOCK_DIAG)
    try:
        sock.bind((0, 0))
        seq = 0
        for proto, number, state in (("tcp", socket.IPPROTO_TCP, TCP_LISTEN),
                                     ("udp", socket.IPPROTO_UDP, TCP_CLOSE)):
            for family in (socket.AF_INET, socket.AF_INET6):
                seq += 1
                # inet_diag_req_v2: family, protocol, ext, pad, states; a zero socket id
                body = struct.pack("=BBBxI", family, number, 0, 1 << state) + bytes(48)
                sock.send(struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY,
                                      NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
                out += _diag(sock, seq, proto, family, state)
    finally:
        sock.close()
    return out


def _diag(sock: socket.socket, seq: int, proto: str, family: int, state: int
          ) -> list[tuple[str, str, int, int]]:
    out: list[tuple[str, str, int, int]] = []
    size = 4 if family == socket.AF_INET else 16
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, _, got, _ = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                return out
            if got == seq:
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    return out
                # inet_diag_msg: family, state, timer, retrans; id: sport, dport (network
                # order), src[16], dst[16], if, cookie[2]; expires, rqueue, wqueue, uid,
                # inode
                msg = data[offset + 16:offset + length]
                fam, st = msg[0], msg[1]
                sport = struct.unpack_from("!H", msg, 4)[0]
                src = msg[8:8 + size]
                inode = struct.unpack_from("=I", msg, 68)[0]
                if fam == family and st == state:
                    out.append((proto, str(ipaddress.ip_address(src)), int(sport),
                                int(inode)))
            offset += (length + 3) & ~3
