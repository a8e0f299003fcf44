"""Reading kernel state that portway does not own: sockets, port range, sysctls, routes."""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute

from portway.core.ports import parse_proc_net


def listening(protocol: str) -> list[tuple[str, int]]:
    """Sockets bound in the calling thread's network namespace, for tcp or udp."""
    out: list[tuple[str, int]] = []
    for suffix in ("", "6"):
        try:
            with open(f"/proc/thread-self/net/{protocol}{suffix}") as f:
                out.extend(parse_proc_net(f.read(), protocol))
        except FileNotFoundError:
            continue
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


def route_table(ipr: IPRoute) -> list[dict[str, Any]]:
    """The main table's IPv4 routes: dst, dev, gateway, prefsrc, kind, metric."""
    names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
    out = []
    for msg in ipr.get_routes(family=2, table=254):
        get = msg.get_attr
        dst = get("RTA_DST") or "0.0.0.0"
        out.append({"dst": f"{dst}/{msg['dst_len']}", "dev": names.get(get("RTA_OIF"), ""),
                    "gateway": get("RTA_GATEWAY"), "prefsrc": get("RTA_PREFSRC"),
                    "kind": ROUTE_KINDS.get(int(msg["type"]), str(msg["type"])),
                    "metric": int(get("RTA_PRIORITY") or 0)})
    return out


NUD_STATES = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay",
              0x10: "probe", 0x20: "failed", 0x40: "noarp", 0x80: "permanent"}


def neighbours(ipr: IPRoute) -> dict[tuple[str, str], tuple[str, str]]:
    """(device, IPv4 address) -> (MAC, state) from the neighbour table."""
    names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for msg in ipr.get_neighbours(family=2):
        dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
        if dst:
            out[(names.get(int(msg["ifindex"]), "?"), str(dst))] = (
                str(mac or ""), NUD_STATES.get(int(msg["state"]), str(msg["state"])))
    return out


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
