"""Reading the host namespace's state that portway does not own: sockets, port range."""

from __future__ import annotations

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
