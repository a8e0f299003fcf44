"""A static trace on a host of many containers records only those its path meets:
LazySpaces records a namespace when first asked for by its key, and World.behind says
who holds an address behind a bridge without recording them all."""

from __future__ import annotations

import ipaddress

from test_trace_reasoning import packet, world

from portway.core.trace import LazySpaces, Space, World, render, trace


def lazy(w: World) -> tuple[World, list[str]]:
    """w with its namespaces recorded on demand (the keys in the order recorded), and
    the hint portway's store gives: each endpoint's addresses behind its bridge."""
    recorded: list[str] = []

    def loader(key: str, space: Space):  # type: ignore[no-untyped-def]
        def load() -> Space:
            recorded.append(key)
            return space
        return load

    behind = {}
    for port in w.host.ifaces:
        if port.peer is not None and port.master:
            inner = w.spaces[port.peer[0]].iface(port.peer[1])
            for a in inner.addrs if inner else ():
                behind[(port.master, a.ip)] = (port.peer[0], port.name)
    spaces = LazySpaces({k: loader(k, s) for k, s in w.spaces.items()})
    return World(host=w.host, spaces=spaces, bridge_nf=w.bridge_nf, behind=behind), recorded


def test_only_what_is_asked_for_is_recorded() -> None:
    w, recorded = lazy(world())
    assert "web" in w.spaces and recorded == []
    assert w.spaces["web"].label == "container web" and recorded == ["web"]
    assert w.spaces.get("nope") is None and w.spaces.get("store") is not None
    assert recorded == ["web", "store"]
    assert list(w.spaces) == ["web", "cache", "store"]  # all, in the loaders' order
    assert recorded == ["web", "store", "cache"]


def test_a_trace_records_only_its_path_and_says_what_an_eager_one_says() -> None:
    eager = world()
    w, recorded = lazy(world())
    p = packet("198.51.100.1", 8080, "198.51.100.2", "uplink0")
    t = trace(w, "outside", p, "outside", "web:80")
    assert t.verdict == "delivered" and recorded == ["web"]
    assert render(t) == render(trace(eager, "outside", p, "outside", "web:80"))
    t = trace(w, "web", packet("10.78.0.2", 5432), "web", "store:5432")
    assert recorded == ["web"] and t.verdict == "dropped"  # isolated before the bridge
    # An address no hint names: every namespace is looked at (and so recorded).
    t = trace(w, "host", packet("10.77.0.9", 80), "host", "10.77.0.9:80")
    assert t.verdict == "no-route" and sorted(recorded) == ["cache", "store", "web"]
    assert ipaddress.ip_address("10.77.0.9") not in {k[1] for k in w.behind}
