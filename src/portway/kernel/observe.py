"""Reading kernel state that portway does not own: sockets, port range, sysctls, routes."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.diag import SS_CLOSE, SS_LISTEN, DiagSocket

from portway.kernel.dumps import retried


def listening(protocol: str) -> list[tuple[str, int]]:
    """(address, port) of the listening TCP or bound (unconnected) UDP sockets in the
    calling thread's network namespace ('::' is a socket on every address, of IPv4 too
    unless it is IPv6-only)."""
    return [(addr, port) for addr, port, _ in listeners(protocol)]


def sctp_listeners(path: str = "/proc/net/sctp/eps") -> list[tuple[str, int, int]]:
    """(address, port, inode) of each SCTP endpoint's local addresses."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    out: list[tuple[str, int, int]] = []
    for line in lines:
        # ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS...
        fields = line.split()
        if len(fields) < 9:
            continue
        for addr in fields[8:]:
            try:
                text = str(ipaddress.ip_address(addr))
            except ValueError:
                continue
            out.append((text, int(fields[5]), int(fields[7])))
    return out


def has_sctp() -> bool:
    """The kernel has SCTP loaded (a packet for a local address meets an SCTP stack;
    without one the kernel answers it ICMP protocol unreachable)."""
    return os.path.isdir("/proc/net/sctp")


def listeners(protocol: str) -> list[tuple[str, int, int]]:
    """(address, port, inode) of the listening TCP or bound (unconnected) UDP sockets in
    the calling thread's network namespace, addresses as ipaddress writes them.

    Asked of sock_diag, by state: /proc/net/tcp walks the whole established-connection
    hash table, shared by every namespace (milliseconds on a large machine), while a
    dump of listeners only reads the listening table. SCTP's endpoints are read from
    /proc/net/sctp/eps (none: a kernel without SCTP, where nothing can listen)."""
    if protocol == "sctp":
        return sctp_listeners()
    state = SS_LISTEN if protocol == "tcp" else SS_CLOSE
    proto = socket.IPPROTO_TCP if protocol == "tcp" else socket.IPPROTO_UDP
    out: list[tuple[str, int, int]] = []
    with DiagSocket() as diag:
        diag.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in diag.get_sock_stats(family=family, states=1 << state, protocol=proto):
                if msg["idiag_state"] != state:
                    continue
                addr = str(ipaddress.ip_address(str(msg["idiag_src"])))
                out.append((addr, int(msg["idiag_sport"]), int(msg["idiag_inode"])))
    return out


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def read_sysctl(key: str, default: str = "") -> str:
    """A sysctl of the calling thread's network namespace ('' when it does not exist)."""
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return default


ROUTE_KINDS = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


@retried
def route_table(ipr: IPRoute, tables: bool = False) -> list[dict[str, Any]]:
    """The main table's routes of both families (tables: those of every table but
    local, too): dst, dev, gateway, prefsrc, kind, metric, table."""
    names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
    out = []
    for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        # The kernel dumps every table whatever is asked; pyroute2 filters.
        for msg in ipr.get_routes(family=family) if tables else \
                ipr.get_routes(family=family, table=254):
            get = msg.get_attr
            table = int(get("RTA_TABLE") or msg["table"])
            if table == 255:
                continue  # local: the addresses, which are read as addresses
            dst = get("RTA_DST") or anywhere
            out.append({"dst": f"{dst}/{msg['dst_len']}",
                        "dev": names.get(get("RTA_OIF"), ""),
                        "gateway": get("RTA_GATEWAY"), "prefsrc": get("RTA_PREFSRC"),
                        "kind": ROUTE_KINDS.get(int(msg["type"]), str(msg["type"])),
                        "metric": int(get("RTA_PRIORITY") or 0), "table": table})
    return out


RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable",
                8: "prohibit"}


@retried
def rules(ipr: IPRoute) -> list[dict[str, Any]]:
    """The policy routing rules (`ip rule`) of both families: priority, table, action,
    src, dst (CIDR or None), iif, oif, fwmark, invert, version."""
    out = []
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        for msg in ipr.get_rules(family=family):
            get = msg.get_attr
            src, dst = get("FRA_SRC"), get("FRA_DST")
            out.append({"priority": int(get("FRA_PRIORITY") or 0),
                        "table": int(get("FRA_TABLE") or msg["table"]),
                        "action": RULE_ACTIONS.get(int(msg["action"]), "nop"),
                        "src": f"{src}/{msg['src_len']}" if src else None,
                        "dst": f"{dst}/{msg['dst_len']}" if dst else None,
                        "iif": get("FRA_IIFNAME") or "", "oif": get("FRA_OIFNAME") or "",
                        "fwmark": get("FRA_FWMARK"), "invert": bool(msg["flags"] & 2),
                        "version": version})
    return out


NUD_STATES = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay",
              0x10: "probe", 0x20: "failed", 0x40: "noarp", 0x80: "permanent"}


@retried
def neighbours(ipr: IPRoute) -> dict[tuple[str, str], tuple[str, str]]:
    """(device, address) -> (MAC, state) from the neighbour tables (ARP and IPv6
    neighbour discovery); addresses as ipaddress writes them."""
    names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_neighbours(family=family):
            dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if dst:
                out[(names.get(int(msg["ifindex"]), "?"), str(ipaddress.ip_address(dst)))] = (
                    str(mac or ""), NUD_STATES.get(int(msg["state"]), str(msg["state"])))
    return out


@retried
def bridge_fdb(ipr: IPRoute) -> dict[tuple[str, str], str]:
    """(bridge, MAC) -> port, for the addresses the bridges have learned (not their own)."""
    names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
    out: dict[tuple[str, str], str] = {}
    for msg in ipr.get_neighbours(family=7):  # AF_BRIDGE
        master, mac = msg.get_attr("NDA_MASTER"), msg.get_attr("NDA_LLADDR")
        if master and mac and not int(msg["state"]) & 0x80:
            out[(names.get(int(master), "?"), str(mac).lower())] = \
                names.get(int(msg["ifindex"]), "?")
    return out
