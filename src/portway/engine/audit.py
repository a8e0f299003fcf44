"""`portway audit`: record the host and every namespace behind its veths, then reason.

Rules of this module:
1. It changes nothing. It reads links, addresses, routes, sockets, sysctls and every
   nftables table of the host namespace and of each namespace whose veth has its other
   end in the host (named ones under /run/netns, Docker's under /var/run/docker/netns,
   any process's: trace's discovery, netns.observe_namespaces), found by asking the
   host's kernel which namespace id each one has, so no unrelated namespace is entered.
   Each namespace is read once, a dump of each kind, from one helper thread. The state
   dir is only read (names of portway's containers), never created or written.
2. core/audit.py does the reasoning; this module only records (with engine/tracer.py's
   recording of one namespace) and, with --live, sends trace --live's probes
   (engine/live.py) for each finding: the only writes, its short-lived tables and
   probe namespace, removed before it answers.
3. Two ways in: portwayd's `audit` operation (Engine.audit), and where no daemon runs
   and portway has nothing here, the short-lived observer's (engine/observer.py, as
   for trace and show): starting portwayd would turn on forwarding.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from pyroute2 import IPRoute

from portway.core import audit as core
from portway.core import names
from portway.core import trace as trace_core
from portway.kernel import netns, observe, xtables
from portway.kernel.nft import Nft


class Seams(Protocol):
    """What audit needs of an Engine: the host's netlink socket and nftables, and (for
    --live) the firewall service and owner tags."""

    host: IPRoute
    nft: Nft

    def tag(self, kind: str, object_id: str) -> str: ...

    def own_sockets(self) -> set[int]: ...


@dataclass(frozen=True)
class Found:
    key: str
    label: str
    path: str


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def discover(host: trace_core.Space) -> list[Found]:
    """The namespaces that hold the other end of one of the host's veths (host: the
    host as recorded; the caller lives in the host namespace, whose numbering of
    namespaces the veths carry), one per namespace: the machine's namespaces as trace
    finds them
    (netns.observe_namespaces: named ones, Docker's, any process's, by inode, only
    looked at), and of those, the ones the host's veths name by their namespace id."""
    wanted = {i.netnsid for i in host.ifaces if i.netnsid >= 0}
    if not wanted:
        return []
    own = netns.namespace_inode("/proc/thread-self/ns/net")
    found = [ns for ns in netns.observe_namespaces() if ns.inode != own]
    chosen = {ns.inode for ns in netns.resolve_nsids(wanted, found).values()}
    out: list[Found] = []
    for ns in found:
        if ns.inode in chosen:
            label = ns.label
            if ns.key.startswith("pid:"):
                label = f"process {ns.key[4:]} ({_comm(ns.key[4:])})"
            out.append(Found(ns.key, label, ns.path))
    return out


def container_names(state_dir: str) -> dict[str, str]:
    """portway's containers by namespace name, read from the store without writing."""
    db = os.path.join(state_dir, "portway.db")
    if not os.path.exists(db):
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT id, name FROM containers").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {names.netns_name(str(cid)): str(name) for cid, name in rows}


def _guests(host: trace_core.Space) -> set[str]:
    """The namespaces that are the host's guests (a container, a VM's or a lab's
    namespace): one of its veths ends in a bridge port of the host, or in a host veth
    without an address of its own (a routed container's, as Calico makes them); a veth
    whose host end has an address of a subnet (an uplink to another namespace) leads
    away."""
    return {i.peer[0] for i in host.ifaces if i.peer is not None and (
        i.master or not any(not a.ip.is_link_local for a in i.addrs))}


@dataclass
class Observed:
    world: trace_core.World
    notes: list[str]  # what was read how (iptables-nft's rules, translated)
    iptables: frozenset[tuple[str, str]]  # the host's tables that iptables-nft manages


def _record(key: str, label: str, own: set[int]) -> trace_core.Space:
    """One namespace, from inside it (the calling thread is there): its sockets are
    opened here. own: portwayd's listening sockets (Seams.own_sockets)."""
    from portway.engine import tracer

    return tracer._space(key, label, None, tracer.list_ruleset_here(), {}, own)


def observe_world(seams: Seams, state_dir: str) -> Observed:
    """The host and every namespace behind its veths (rule 1), each read once: one dump
    of each kind per namespace, all of them from one helper thread that enters each in
    turn."""
    from portway.engine import tracer

    rules, notes, iptables = xtables.native(seams.nft.listing())
    own = seams.own_sockets()
    host = tracer._space(tracer.HOST, "host", seams.host, rules, {}, own)
    portway = container_names(state_dir)
    found = discover(host)
    labels = {}
    for f in found:
        name = f.key.removeprefix("ns:")
        labels[f.path] = (f.key, f"container {portway[name]}" if name in portway else f.label)
    recorded = netns.visit([f.path for f in found],
                           lambda path: _record(*labels[path], own))
    spaces: dict[str, trace_core.Space] = {}
    for f, space in zip(found, recorded, strict=True):
        if space is not None:  # (None: gone meanwhile)
            trace_core.pair_veths(host, space)
            spaces[f.key] = space
    guests = _guests(host)
    for key in [k for k in spaces if k not in guests]:
        # The far end of a link to a LAN: the world, not a guest; its veths unpaired.
        del spaces[key]
        host.ifaces[:] = [replace(i, peer=None) if i.peer is not None and i.peer[0] == key
                          else i for i in host.ifaces]
    return Observed(trace_core.World(
        host=host, spaces=spaces,
        bridge_nf=observe.read_sysctl("net.bridge.bridge-nf-call-iptables") == "1",
        bridge_nf6=observe.read_sysctl("net.bridge.bridge-nf-call-ip6tables") == "1",
        sctp=observe.has_sctp()), notes, iptables)


def _live(seams: Seams, world: trace_core.World, finding: core.Finding) -> list[dict[str, Any]]:
    """trace --live's probe for each proof of a finding, where one can be sent."""
    from portway.engine import live

    out: list[dict[str, Any]] = []
    for r in finding.reaches:
        base = {"source": r.source.label}
        if r.packet.daddr.is_loopback and r.source.kind != "host":
            out.append({**base, "verdict": "not probed", "agrees": True,
                        "summary": "a probe namespace cannot send to a loopback address "
                                   "over its veth (its own lo takes it)"})
            continue
        if r.packet.l4proto not in ("tcp", "udp"):
            out.append({**base, "verdict": "not probed", "agrees": True,
                        "summary": f"trace --live probes are TCP or UDP, not "
                                   f"{r.packet.l4proto.upper()}"})
            continue
        if r.source.kind == "container" and not r.source.key.startswith("ns:"):
            out.append({**base, "verdict": "not probed", "agrees": True,
                        "summary": "probes start only in named namespaces (/run/netns)"})
            continue
        result = live.run(cast(Any, seams), world, r.source.key, r.packet, r.trace,
                          r.source.label, r.target.label)
        summary = result["summary"]
        if result["verdict"] != r.trace.verdict and r.source.iif:
            summary += f" (the probe comes in on a veth of its own, not on {r.source.iif}: " \
                f"a rule that names {r.source.iif} does not apply to it)"
        out.append({**base, "verdict": result["verdict"], "summary": summary,
                    "agrees": result["agrees"], "disagreements": result["disagreements"],
                    "static_ingress": result["static_ingress"]})
    return out


def run(seams: Seams, state_dir: str, host_netns: str | None, live: bool = False,
        lock: AbstractContextManager[Any] | None = None) -> dict[str, Any]:
    """lock: held while the kernel is read or probed (portwayd's engine lock), not while
    the traces are reasoned out, which on a large host takes a while."""
    held = lock if lock is not None else nullcontext()
    with held:
        seen = observe_world(seams, state_dir)
    world = seen.world
    try:
        result = core.audit(world, seen.iptables)
        result.notes[:0] = seen.notes
        if live:
            with held:
                for finding in result.findings:
                    finding.live = _live(seams, world, finding)
    finally:
        from portway.engine import tracer

        tracer.close_world(world)
    if host_netns:
        result.notes.insert(0, f"the host is network namespace {host_netns}")
    data = result.as_dict()
    return {"audit": data, "text": core.render(result)}
