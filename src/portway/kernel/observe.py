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
