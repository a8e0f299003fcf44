"""The engine's firewall service: portway's shared tables and this instance's part of them.

Rules of this module:
1. Several portway instances (the CLI's state dir, the Podman backend's, tests) may act
   in one host namespace; they share the tables `inet`, `bridge` and `arp portway`.
   The tables are created when missing and deleted when nobody has anything left in
   them, both under a lock that every instance in the namespace takes (an flock on
   the namespace itself), so one never deletes what another just began to fill.
2. An instance adds, repairs and removes only its own chains and elements: every
   element carries its owner tag, gc compares and repairs only those (and the shared
   base, which is the same for everyone), never flushes or rebuilds a whole table.
3. Drift is found by comparing rules, not counting them: the rules portway wants are
   put into a throwaway namespace once, so that what the kernel lists for them is
   what the real tables are compared with.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from portway.core import firewall
from portway.core.firewall import Published, Repair
from portway.errors import KernelError, PortwayError
from portway.kernel import nft as nft_kernel
from portway.kernel import nftrace
from portway.kernel.nft import Nft
from portway.model.types import Endpoint, IPAddress, Network


class Firewall:
    def __init__(self, nft: Nft, instance: str) -> None:
        self.nft = nft
        self.instance = instance
        # The namespace the engine lives in (its process entered it before any thread).
        self._ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._thread_lock = threading.RLock()  # flock is per open file, not per thread
        self._depth = 0
        self._canonical: dict[str, list[dict[str, Any]]] = {}
        # This host's VTEP, in a cluster (its VXLAN skips conntrack); None: in none.
        self.vtep: IPAddress | None = None
        # The cluster's members' VTEPs (every host's, this one's too), as last set.
        self.members: frozenset[IPAddress] = frozenset()

    def close(self) -> None:
        os.close(self._ns_fd)

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held while the shared tables are created or deleted (by any instance here).
        Re-entrant within this process: the flock is taken by the outermost holder."""
        with self._thread_lock:
            self._depth += 1
            if self._depth == 1:
                fcntl.flock(self._ns_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._ns_fd, fcntl.LOCK_UN)

    def missing_tables(self) -> list[str]:
        """The families of the shared tables that are not there (a flush took them)."""
        return [f for f in firewall.TABLES if self.nft.list_table(f, firewall.TABLE) is None]

    def ready(self) -> None:
        """The shared tables, created if missing (under the lock; it is re-entrant)."""
        missing = [f for f in firewall.TABLES if self.nft.list_table(f, firewall.TABLE) is None]
        if not missing:
            return
        with self.shared():
            shared = firewall.render_shared()
            for family in missing:
                if self.nft.list_table(family, firewall.TABLE) is None:
                    self._create(family, shared[family])

    def _create(self, family: str, base: list[dict[str, Any]]) -> None:
        """A shared table from its base commands (the bridge table after its prelude)."""
        if family == firewall.GUARD_FAMILY:
            self.nft.run(firewall.GUARD_PRELUDE)
        self.nft.apply(base)

    def removable(self) -> bool:
        """Whether a shared table exists that no instance has anything in."""
        listing = self._listing()
        return any(items is not None for items in listing.values()) and \
            not firewall.tables_in_use(listing)

    def release(self) -> bool:
        """Delete the shared tables if no instance has anything in them; True if gone."""
        with self.shared():
            if firewall.tables_in_use(self._listing()):
                return False
            self.teardown(firewall.render_tables_removal())
            return True

    def apply(self, cmds: list[dict[str, Any]]) -> None:
        self.nft.apply(cmds)

    def teardown(self, cmds: list[dict[str, Any]]) -> None:
        """Delete what exists of cmds: one transaction, or one by one if something in it
        is already gone (missing counts as removed)."""
        try:
            self.nft.apply(cmds)
            return
        except PortwayError:
            pass
        for cmd in cmds:
            try:
                self.nft.apply([cmd])
            except PortwayError:
                pass

    # this instance's part

    def add_network(self, network: Network) -> None:
        """Under the lock: another portway's release() cannot delete the tables between
        their check and this network's first elements (which keep them alive after)."""
        cmds = firewall.render_network(network, self.instance)
        if network.driver == "macvlan":
            return  # no rule and no container port of portway's: no tables made for it
        with self.shared():
            self.ready()
            self.apply(cmds)

    def add_vtep(self, address: IPAddress) -> None:
        """This host's VTEP, for as long as it is in a cluster (the element keeps the
        tables, as a network's do)."""
        self.vtep = address
        with self.shared():
            self.ready()
            self.apply(firewall.render_vtep(address, self.instance))

    def set_members(self, addresses: Iterable[IPAddress]) -> None:
        """The cluster's members' VTEPs, to which no container sends VXLAN: what joined
        added and what left removed, in one transaction (nothing if nothing changed)."""
        want = frozenset(addresses)
        if want == self.members:
            return
        gone, new = self.members - want, want - self.members
        removal = firewall.render_members_removal(sorted(gone, key=lambda a: (a.version,
                                                                              int(a))))
        with self.shared():
            self.ready()
            try:
                self.apply([*removal, *firewall.render_members(new, self.instance)])
            except PortwayError:  # one of those to remove was gone already (a flush)
                self.teardown(removal)
                self.apply(firewall.render_members(new, self.instance))
        self.members = want

    def adopt_members(self) -> None:
        """The members' VTEPs this instance put in the sets before a restart, taken as
        its own (gc keeps them) until the cluster's view replaces them: no container
        sends VXLAN to a member while a restarted daemon catches up with the store."""
        items = self.nft.list_table(firewall.FAMILY, firewall.TABLE) or []
        self.members = frozenset(firewall.listed_members(items, self.instance))

    def remove_network(self, network: Network) -> None:
        self.teardown(firewall.render_network_removal(network))

    def add_ports(self, ports: Iterable[Published]) -> None:
        """The ports' elements; then the unanswered UDP flows sent to their host ports
        forgotten, or those that began before (to the host, while the family's port led
        nowhere: a container that joins a network of a new family) go on past the DNAT
        for as long as they keep sending (netavark's, on setup)."""
        ports = list(ports)
        self.apply(firewall.render_ports(ports, self.instance))
        udp = sorted({(p.container_ip.version, str(p.host_ip) if p.host_ip else None,
                       p.host_port) for p in ports if p.protocol == "udp"},
                     key=lambda t: (t[0], t[1] or "", t[2]))
        if udp:
            try:
                nftrace.forget_datagram_flows(udp)
            except OSError:
                pass  # (they end when their senders pause)

    def remove_ports(self, ports: Iterable[Published]) -> None:
        self.teardown(firewall.render_ports_removal(ports))

    def forget_connections(self, addresses: list[IPAddress]) -> None:
        """The host's conntrack entries of flows to or from addresses gone (addresses
        that moved: a flow NATed to one would go on to its new holder, or nowhere)."""
        try:
            nftrace.forget_connections(addresses)
        except OSError as exc:
            raise KernelError(f"forget the connections of {', '.join(map(str, addresses))}: "
                              f"{exc.strerror}", "they end when they time out") from None

    def add_guard(self, endpoints: Iterable[Endpoint]) -> None:
        """The endpoints' anti-spoofing elements, in one transaction: as their sets'
        declarations where JSON can give them all (libnftables reads less of the
        ruleset first), else as elements; a set declared otherwise in the kernel (by
        another version) refuses the first form, and the second follows."""
        endpoints = list(endpoints)
        declared = firewall.render_guard_declared(endpoints, self.instance)
        if declared:
            try:
                self.apply(declared)
                return
            except PortwayError:
                pass
        self.apply(firewall.render_guard(endpoints, self.instance))

    def remove_guard(self, endpoints: Iterable[Endpoint]) -> None:
        cmds = firewall.render_guard_removal(endpoints)
        if cmds:
            self.teardown(cmds)

    # drift

    def _listing(self) -> dict[str, list[dict[str, Any]] | None]:
        return {f: self.nft.list_table(f, firewall.TABLE) for f in firewall.TABLES}

    def wanted(self, networks: list[Network], ports: list[Published],
               endpoints: list[Endpoint]) -> list[dict[str, Any]]:
        """This instance's chains, rules and elements."""
        cmds: list[dict[str, Any]] = []
        for n in networks:
            cmds += firewall.render_network(n, self.instance)
        if self.vtep is not None:
            cmds += firewall.render_vtep(self.vtep, self.instance)
        cmds += firewall.render_members(self.members, self.instance)
        return [*cmds, *firewall.render_ports(ports, self.instance),
                *firewall.render_guard(endpoints, self.instance)]

    def _canonical_form(self, cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the kernel lists for cmds (chains and rules only), cached."""
        key = hashlib.sha256(json.dumps(cmds, sort_keys=True).encode()).hexdigest()
        if key not in self._canonical:
            # One set of rules at a time.
            self._canonical = {key: nft_kernel.canonical(cmds, firewall.GUARD_PRELUDE)}
        return self._canonical[key]

    def plan(self, networks: list[Network], ports: list[Published],
             endpoints: list[Endpoint], known: Collection[str] = ()) -> list[Repair]:
        """Every difference between the kernel and what this instance wants; known: the
        ids of what the store holds (firewall.plan_repair)."""
        shared = firewall.render_shared()
        mine = self.wanted(networks, ports, endpoints)
        listing = self._listing()
        if all(items is None for items in listing.values()) and not mine:
            return []
        rules_only = [c for c in mine if "element" not in c["add"]]
        canonical = self._canonical_form([c for f in firewall.TABLES for c in shared[f]]
                                         + rules_only)
        return firewall.plan_repair(shared, mine, listing, canonical, self.instance, known)

    def repair(self, repair: Repair) -> None:
        if not repair.steps:
            raise PortwayError(repair.what)
        if not repair.what.startswith("re-create table"):
            for step in repair.steps:
                if step and firewall.TEXT in step[0]:
                    self.nft.run("\n".join(cmd[firewall.TEXT] for cmd in step))
                elif step:
                    self.nft.apply(list(step))
            return
        base, *rest = repair.steps
        with self.shared():  # another instance may have made it meanwhile: not twice
            family = base[0]["add"]["table"]["family"]
            if self.nft.list_table(family, firewall.TABLE) is None:
                self._create(family, list(base))
        for step in rest:
            if step:
                self.nft.apply(list(step))
