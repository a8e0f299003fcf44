"""The cluster service: this host's membership of an etcd cluster, and the overlay
networks it shares with the other hosts.

Rules of this module:
1. etcd is the truth for what hosts share: the overlay networks (name, VNI, subnets),
   address allocations and endpoints (address, MAC, host). The local store mirrors
   the overlay networks so that every other service sees them as any network; this
   host's own endpoints are in the local store as ever, and in etcd under this host's
   lease, which it keeps alive (a host that dies takes its endpoints and addresses
   with it when the lease expires).
2. Every change of this host to shared state is one etcd transaction made before the
   local change; etcd unreachable means the change fails with one line, and nothing
   local changes.
3. The kernel follows the store: a watch (list, then events from the listed revision;
   a full re-list after a compaction or a lost connection) updates the cached view,
   and converge() makes the local mirror of networks, the VXLAN devices' FDB and
   neighbour entries and the DNS records match it. An entry already right is not
   touched, so a restart or a re-list reprograms nothing.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from portway.core import ipam, names, overlay
from portway.core.overlay import AddressRaced, RemoteEndpoint
from portway.engine.context import now
from portway.engine.dns import DnsServer
from portway.errors import Conflict, PortwayError
from portway.kernel import links, vxlan
from portway.model.types import Container, Endpoint, IPAddress, Network
from portway.store.etcd import KV, TIMEOUT, ClusterUnreachable, Etcd, Event, StoreRefused, Watch

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from portway.engine.context import Host

DEFAULT_TTL = overlay.DEFAULT_TTL
FEW_MOVES = 64  # endpoints changed since the last pass, programmed as such (more: compared)
LEASE_META = "cluster_lease"
CONTENDED_FOR = 10.0  # seconds an address lost in a race is skipped (the view has it then)
# Seconds close waits for a join under way to finish its writes to the store: as long as
# the client retries one request (store/etcd.py). Past it, the join is abandoned.
CLOSE_WAIT = 2 * TIMEOUT


def log(message: str) -> None:
    print(f"portwayd: cluster: {message}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, h: Host, ipr: IPRoute, etcd: Etcd, advertise: IPAddress,
                 ttl: int = DEFAULT_TTL) -> None:
        self.h = h
        self.ipr = ipr
        self.etcd = etcd
        self.advertise = advertise
        self.ttl = ttl
        self.lease = 0
        self.state = "starting"
        self.last_error = ""
        self._view_lock = threading.Lock()
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, RemoteEndpoint] = {}  # every host's, by endpoint id
        self.hosts: dict[str, dict[str, Any]] = {}  # advertise address -> record
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.watch = Watch(etcd, overlay.PREFIX, self._snapshot, self._event, self._error)
        self.programmed = 0  # forwarding entries added or removed, for tests and status
        # Netlink requests in batches, in the namespace of ipr (this thread's).
        self.requests = vxlan.Requests() if ipr is not None else None
        # This host's endpoints whose address or name another host claimed while it was
        # away, with why: not registered (so not reachable from other hosts) until the
        # other one lets it go; reconcile_own claims them again then.
        self._lost: dict[str, str] = {}
        # This host's endpoints given new addresses for that reason instead: what changed.
        self._renumbered: dict[str, dict[str, Any]] = {}
        self._generations: dict[str, int] = {}  # renumberings, by endpoint id (generation)
        # Every host's endpoints as converge last brought the kernel in step with them:
        # the ones whose names the DNS server is given (remote_records).
        self._served: list[RemoteEndpoint] = []
        # The endpoints' records at the last re-list, raw and decoded, by key.
        self._decoded: dict[str, tuple[str, RemoteEndpoint]] = {}
        self._expired = threading.Event()  # the lease is gone: join again
        self._joining = threading.Lock()  # one join at a time (_join)
        self._host_records = 0  # writes of this host's record tried (_join)
        self._host_value = ""  # this host's record as last written (its content)
        # This host's record as the watch last saw it in the store: its content and the
        # lease it is under (None: not there); _keep_host_record compares it.
        self._own_host: tuple[str, int] | None = None
        # The view changed since the kernel was last brought in step: events set it, the
        # converge thread clears it and converges once for all that came meanwhile (a
        # host that sees 1,000 endpoints arrive converges a few times, not 1,000).
        self._dirty = threading.Event()
        self._converging = threading.Lock()  # one converge pass at a time
        # What changed in the view, counted, so that converge compares two numbers, not
        # the 1,000 entries it would otherwise hash on each event (this host's own
        # endpoints, which change neither, count nothing): per network, the version of
        # its other hosts' endpoints; the version of their names; the networks.
        self._versions: dict[str, int] = {}
        self._names_version = 0
        self._networks_version = 0
        self._names = -1  # the names version converge last published
        # The other hosts' containers whose names changed since: sent to the DNS server
        # one by one (a full publish of 1,000 of them on every host for each container
        # that comes or goes anywhere costs every host a reload of them all).
        self._dns_changed: set[str] = set()
        self._networks_seen = -1  # the networks version converge last made here
        # The cluster's overlay networks not made on this host, by name: why (said in
        # the log once, and by daemon status).
        self.not_made: dict[str, str] = {}
        # Per network: the version its device was last brought in step with.
        self._programmed: dict[str, int] = {}
        # Per network: the other hosts' endpoints that changed since (first record before,
        # last after, by endpoint id): a few of them are programmed as such, not by
        # reading and comparing the device's 2,000 entries of 1,000 endpoints.
        self._moves: dict[str, dict[str, tuple[RemoteEndpoint | None,
                                               RemoteEndpoint | None]]] = {}
        # This host's endpoints whose set-ups are under way (reserve, then publish: their
        # addresses, names and records in one transaction once their plumbing is done),
        # by endpoint id.
        self._unpublished: dict[str, tuple[Endpoint, Container]] = {}
        # Those of them of which nothing is in the store (their transaction not sent, or
        # refused): a release has nothing to remove there.
        self._unclaimed: set[str] = set()
        # Per network: addresses another host claimed first in a set-up's transaction,
        # before this host's view has its record, with when that was (address_taken
        # skips them for CONTENDED_FOR: the set-up tried again picks another; expired
        # ones are dropped as it is read or written, a network's as it goes).
        self._contended: dict[str, dict[IPAddress, float]] = {}
        # This host's endpoints released while the store was unreachable: what is still
        # to be removed from it (network id, keys with the endpoint id each holds).
        self._unreleased: dict[str, tuple[str, dict[str, str]]] = {}
        # Per network: the addresses other hosts hold, at a version (address_taken).
        self._taken: dict[str, tuple[int, frozenset[IPAddress]]] = {}

    # membership

    def start(self) -> None:
        """Join (a lease, this host's record, its endpoints again under the new lease)
        and follow the store; an unreachable etcd is retried in the background."""
        try:
            self._join()
            self._first_members()
        except PortwayError as exc:
            self._error(exc.message)
        for target, name in ((self.watch.run, "watch"), (self._keepalive, "keepalive"),
                             (self._membership, "membership"), (self._converger, "converge")):
            t = threading.Thread(target=target, daemon=True, name=f"portwayd-cluster-{name}")
            t.start()
            self._threads.append(t)

    def _join(self, lost: int | None = None) -> None:
        """A lease, this host's record and its endpoints under it, and the leases before
        revoked. lost: the lease the caller found gone; another join that replaced it
        meanwhile (a run's claim refused for it and the membership thread both join,
        at once) is left as it is. One join at a time (_joining): two interleaved joins
        each revoked the lease the other had just written this host's record under.
        This host's record is written first, without the engine's lock (unless the
        caller holds it: a run's claim): a store that will not take it (the client
        retries for up to 6 s) stalls no other command; the join then fails whole, its
        lease revoked, and the membership thread tries again. The leases are swapped
        and the endpoints registered under the engine's lock, once the lease is renewed
        (it may have run out while the join waited for that lock); once the daemon
        stops (stop), nothing: close waits for the joins' lock (CLOSE_WAIT), so a join
        whose record was being written then revokes its lease before close returns."""
        lease = self.etcd.grant(self.ttl)
        with self._joining:
            if (lost is not None and self.lease != lost) or self._stop.is_set():
                self.etcd.revoke(lease)  # (never used)
                return
            written = self._write_host_record(lease)
            if self._stop.is_set():
                # The daemon stopped while the record was written: its lease goes (the
                # record with it) while close waits, not after it.
                self.etcd.revoke(lease)
                return
        with self.h.lock, self._joining:
            if (lost is not None and self.lease != lost) or self._stop.is_set():
                # Replaced meanwhile by a whole join; or the daemon stopped while this
                # one waited for the engine's lock: nothing is swapped in or registered
                # under a lease no one keeps alive, nor written to a local store the
                # engine has closed (once close has returned, the store's client sends
                # nothing: the lease runs out by itself).
                self.etcd.revoke(lease)
                return
            if self.etcd.keepalive(lease) <= 0:
                # It ran out while this join waited for the engine's lock (nothing
                # renews it before the swap), this host's record with it: taken, the
                # host would say joined while missing from every members set.
                raise PortwayError(f"lease {lease:x} ran out before the join took it: "
                                   "joining again")
            if written != self._host_records:
                # Another join's write was tried since (and failed, its answer maybe
                # lost: it may have put the record under its lease, then revoked).
                self._write_host_record(lease)
            self._joined_under(lease)

    def _write_host_record(self, lease: int) -> int:
        """This host's record under lease (the caller holds _joining); on failure the
        lease is revoked (nothing else is under it yet). The count of writes tried."""
        self._host_value = json.dumps({
            "address": str(self.advertise), "instance": self.h.instance,
            "host_netns": self.h.host_netns or "", "joined": now()})
        try:
            return self._put_host_record(lease)
        except PortwayError:
            try:
                self.etcd.revoke(lease)
            except PortwayError:
                pass  # (it expires by itself: nothing keeps it alive)
            raise

    def _put_host_record(self, lease: int) -> int:
        """This host's record as last written (_host_value), under lease (the caller
        holds _joining). The count of writes tried: a join whose own write came before
        this one writes again under its lease before it takes it (_join)."""
        self._host_records += 1
        self.etcd.put(overlay.host_key(self.advertise), self._host_value, lease)
        return self._host_records

    def _keep_host_record(self) -> None:
        """This host's record in the store under the lease kept, as last written. A write
        of it that was abandoned (a join's whose answer was lost, which moved on to a new
        lease; a stopped daemon's, mid-join) can land after the write of the join that
        holds now: the record is then under a lease nobody renews and goes with it
        within the TTL, and every other host drops this host's VTEP (its containers
        unreachable from them) until the next join, which nothing else would start.
        Compared with the watch's view, which has each key's lease: read from the store
        only where the view differs (it may lag a write just made), and written again
        only where the store does too. Under the joins' lock: a join's write made before
        this one is made again by that join (_put_host_record's count)."""
        lease = self.lease
        if not lease or self._expired.is_set() or not self.watch.relists \
                or not self._host_value:
            return
        with self._view_lock:
            seen = self._own_host
        if seen == (self._host_value, lease):
            return
        with self._joining:
            if self._stop.is_set() or self._expired.is_set() or self.lease != lease:
                return  # (a join under way or made: it writes the record)
            kv = self.etcd.read(overlay.host_key(self.advertise))
            if kv is not None and (kv.value, kv.lease) == (self._host_value, lease):
                return
            why = "gone" if kv is None else f"under lease {kv.lease:x}" \
                if kv.lease != lease else "changed"
            try:
                self._put_host_record(lease)
            except StoreRefused:
                if self.etcd.keepalive(lease) > 0:
                    raise
                # The lease ran out too, unnoticed yet: the membership thread joins
                # again (and writes the record); the endpoints' check goes on meanwhile.
                log(f"lease {lease:x} expired: joining again")
                self._expired.set()
                return
            log(f"this host's record in the cluster store was {why}: written again under "
                f"lease {lease:x}")

    def _joined_under(self, lease: int) -> None:
        """_join's work under the engine's lock, with its new lease (this host's record
        already written under it). Once the daemon stops, no more endpoints are
        registered, nor leases revoked (close waits for this join: it sends nothing to the
        store after the stop but what is under way); the local store names the new lease
        all the same, which the next daemon revokes once it has its endpoints again (the
        earlier ones run out by themselves: nothing renews them)."""
        old, self.lease = self.lease, lease  # kept alive from now on, whatever follows
        self._expired.clear()
        for e in self._own_endpoints():
            if self._stop.is_set():
                break
            if not self._ended(e[1]):
                self._register(e, lease)
        store = self.h.store
        with store.transaction():
            remembered = store.get_meta(LEASE_META)
            store.set_meta(LEASE_META, str(lease))
        for previous in {old, int(remembered or 0)} - {0, lease}:
            if self._stop.is_set():
                break
            self.etcd.revoke(previous)  # what is still on it is no longer anyone's
        self.state = "joined"
        self.last_error = ""

    def _first_members(self) -> None:
        """The firewall's set of the members' VTEPs replaced with the store's hosts, in
        one transaction, before the daemon serves anything: the set it kept across its
        restart (adopt_members) may name a host that left meanwhile, whose address it
        would otherwise keep until the watch's first pass."""
        kvs, _revision = self.etcd.range(overlay.host_key(""))
        with self.h.lock:
            self._members([kv.key.removeprefix(overlay.host_key("")) for kv in kvs])

    def _ended(self, c: Container) -> bool:
        """c's process ended while no daemon watched it: adopt releases its networking
        (a daemon that starts joins first). Registered meanwhile, its record would make
        other hosts program entries and names for it, only to remove them again."""
        return c.runtime == "portway" and c.status == "running" and \
            not self.h.process_kernel.is_alive(c.pid, c.pid_start)

    def _keepalive(self) -> None:
        """The lease renewed every third of its TTL, and nothing else on this thread (a
        busy engine must not let it expire)."""
        interval = max(self.ttl / 3, 0.3)
        while not self._stop.wait(interval):
            lease = self.lease
            if not lease or self._expired.is_set():
                continue
            try:
                if self.etcd.keepalive(lease) <= 0 and lease == self.lease:
                    log(f"lease {lease:x} expired: joining again")
                    self._expired.set()
                elif self.state != "joined":
                    log("the cluster store answers again")
                    self.state, self.last_error = "joined", ""
            except PortwayError as exc:
                self._error(exc.message)

    def _membership(self) -> None:
        """Join again when the lease is gone (or was never had), and keep this host's
        records in the store in step with its local store."""
        rounds = 0
        while not self._stop.wait(0.5):
            rounds += 1
            try:
                if not self.lease or self._expired.is_set():
                    self._join(lost=self.lease)
                elif rounds % 10 == 0:
                    self.reconcile_own()
            except PortwayError as exc:
                self._error(exc.message)

    def _converger(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(0.5):
                continue
            self._dirty.clear()
            try:
                self.converge()
            except PortwayError as exc:
                log(f"cannot bring the kernel in step with the store: {exc.line()}")

    def _error(self, message: str) -> None:
        if self.last_error != message:
            log(message)
        self.state, self.last_error = "unreachable", message

    def stop(self) -> None:
        """Leave the store's view as it is (containers outlive the daemon: their
        endpoints stay registered until the lease expires or a new daemon takes them)."""
        self._stop.set()
        self.watch.stop()

    def close(self) -> None:
        """stop, once a join under way has finished writing to the store (it holds the
        joins' lock meanwhile), or is abandoned; then the store's client is closed:
        nothing is sent to the store after close returns (what an abandoned join has
        written is under its lease, which nothing renews). CLOSE_WAIT at most, all told,
        with the threads' ends."""
        deadline = time.monotonic() + CLOSE_WAIT
        self.stop()
        if self._joining.acquire(timeout=CLOSE_WAIT):
            self._joining.release()
        self.etcd.close()
        for t in self._threads:
            t.join(timeout=max(deadline - time.monotonic(), 0.1))
        if self.requests is not None:
            self.requests.close()

    # shared state

    def _own_endpoints(self) -> list[tuple[Endpoint, Container]]:
        store = self.h.store
        nets = {n.id for n in store.networks() if n.driver == "overlay"}
        out = []
        for e in store.endpoints():
            if e.network_id in nets:
                c = store.find_container(e.container_id)
                if c is not None:
                    out.append((e, c))
        return out

    def _record(self, e: Endpoint, c: Container) -> RemoteEndpoint:
        return RemoteEndpoint(id=e.id, network_id=e.network_id, container_id=c.id,
                              name=c.name, aliases=e.aliases, addresses=e.addresses,
                              mac=e.mac.lower(), host=self.advertise)

    def _register(self, ec: tuple[Endpoint, Container], lease: int) -> None:
        """e again under lease (a new daemon's, or after the old one expired). An address
        another host claimed meanwhile stays that host's: e is given a free one instead
        (renumbered, while its container runs), unless it was asked for (--ip). A name
        another host took, or an address asked for, cannot be picked anew: e is not
        registered (conflict() says why, ps and inspect show it) until that host lets it
        go. The log says what happened, once. Its addresses, name and record are written
        in one transaction, only while the store still has them as they were read: of
        another host's run that claims one of them between the reads and the write, and
        this, exactly one wins (a plain write would take it over under that container,
        leaving two holders of one address); this one reads again."""
        e, c = ec
        if e.id in self._unpublished:
            return  # (a set-up under way: its publish claims it, under the lease then)
        for _ in range(overlay.RACES):
            if self._register_once(e, c, lease):
                return
        log(f"{c.name} is not registered yet: other hosts kept claiming its address or "
            "name at the same moment; tried again within seconds")

    def _register_once(self, e: Endpoint, c: Container, lease: int) -> bool:
        """_register's one attempt; False: the store changed between its reads and its
        write (nothing was written)."""
        net = self.h.store.find_network(e.network_id)
        on = f" on network {net.name}" if net is not None else ""
        away = "while this host was away from the cluster store"
        read: dict[str, str | None] = {}
        taken: dict[IPAddress, str] = {}
        # (Its network's key, compared too: a removal of the network from another host,
        # which saw no container on it while this host's lease was gone, and this
        # registration: exactly one wins.)
        network_key = overlay.network_key(e.network_id)
        defined = self.etcd.get(network_key)
        for a in e.addresses:
            key = overlay.address_key(e.network_id, a.ip)
            holder = read[key] = self.etcd.get(key)
            if holder is not None and holder != e.id:
                taken[a.ip] = holder
        name_key = overlay.container_name_key(e.network_id, c.name)
        held = read[name_key] = self.etcd.get(name_key)
        reason = ""
        if defined is None:
            reason = f"its network{on.removeprefix(' on network')} was removed from the " \
                f"cluster {away}"
        elif held is not None and held != e.id:
            reason = (f"its name{on} was taken by a container on "
                      f"{self._host_of(e.network_id, held)} {away}")
        elif taken:
            ip, holder = next(iter(taken.items()))
            reason = (f"its address {ip}{on} was claimed by a container on "
                      f"{self._host_of(e.network_id, holder)} {away}")
            asked = set(taken) & set(e.requested)
            if not asked and net is not None and self._renumber(e, c, net, set(taken),
                                                                 reason):
                return True
        if reason:
            if self._lost.get(e.id) != reason and defined is None:
                log(f"{c.name} is not reachable from other hosts: {reason}; disconnect it "
                    "from that network, or remove it (create the network again for it)")
            elif self._lost.get(e.id) != reason:
                fix = "run it under another name" if not taken else \
                    "or run it without --ip for a new address" if set(taken) & \
                    set(e.requested) else "or restart it for a new address"
                log(f"{c.name} is not reachable from other hosts: {reason}; it is claimed "
                    f"again once that container is gone ({fix})")
            self._lost[e.id] = reason
            with self._view_lock:
                self.endpoints.pop(e.id, None)  # (the store has no record of it now)
            return True
        puts = {key: e.id for key in read}
        puts[overlay.endpoint_key(e.network_id, e.id)] = self._record(e, c).encode()
        if not self.etcd.put_if({**read, network_key: defined}, puts, lease):
            return False
        with self._view_lock:
            self.endpoints[e.id] = self._record(e, c)
        if self._lost.pop(e.id, None) is not None:
            log(f"{c.name} is registered again{on}: reachable from other hosts")
        return True

    def _renumber(self, e: Endpoint, c: Container, net: Network, taken: set[IPAddress],
                  reason: str) -> bool:
        """e given free addresses for those in taken, while its container runs, and
        registered with them (the other hosts' entries and names follow from its record);
        its /etc/hosts and DNS records rewritten. False: it could not be (why is logged;
        e stays as it was)."""
        generation = self.generation(e.id)
        try:
            self._drop_unfinished(e, c, net)
            new = self.h.endpoints.renumber(c, e, net, taken)
        except (PortwayError, OSError) as exc:
            if self.generation(e.id) != generation:
                # Renumbered meanwhile, by a join its transaction made when it found
                # the lease gone: e as read here is stale, and the join registered it as it
                # is now. Marked here, it would show a conflict until the next pass.
                return True
            # OSError: the kernel's own (its namespace gone after a reboot, before adopt
            # and gc ran); left to escape, it would end the join, and with it the
            # daemon's start or the membership thread.
            if self._lost.get(e.id) != reason:
                line = exc.line() if isinstance(exc, PortwayError) else str(exc)
                log(f"{c.name} could not be given a new address on network {net.name}: "
                    f"{line}")
            return False
        self._lost.pop(e.id, None)
        self._generations[e.id] = generation + 1
        before = [str(a.ip) for a in e.addresses]
        after = [str(a.ip) for a in new.addresses]
        self._renumbered[e.id] = {"PreviousIPAddresses": before, "IPAddresses": after,
                                  "Reason": reason, "Time": now()}
        try:
            self.h.sandboxes.write_files(c)
        except (PortwayError, OSError) as exc:
            # Renumbered all the same (the store and kernel have it): the join goes on.
            log(f"cannot write the /etc files of {c.name} after its new address: {exc}; "
                "its /etc/hosts names the old one until it is restarted")
        self.h.containers.publish_dns(c.id)
        log(f"{c.name} on network {net.name} has a new address, {', '.join(after)} (was "
            f"{', '.join(before)}): {reason}; reachable from other hosts again")
        return True

    def _drop_unfinished(self, e: Endpoint, c: Container, net: Network) -> None:
        """What a renumbering of e cut short after its claim (a daemon killed between its
        transaction and its own store's commit of the new address; or an earlier
        portway's, which claimed before the move and wrote the record after it) left in
        the store under an earlier lease: e's name, the addresses claimed with it and
        e's record, each only while it is e's. Left there, they would refuse every claim of the
        renumbering that finishes it until that lease is revoked."""
        name_key = overlay.container_name_key(net.id, c.name)
        raw = self.etcd.get(overlay.endpoint_key(net.id, e.id))
        if raw is None and self.etcd.get(name_key) != e.id:
            return
        owned = {name_key: e.id}
        try:
            if raw is not None:
                owned.update({overlay.address_key(net.id, a.ip): e.id
                              for a in RemoteEndpoint.decode(raw).addresses})
        except (ValueError, KeyError):
            raw = None  # (a record not of this version: the addresses read below)
        if raw is None:
            # Claimed without a record (by an earlier portway): the addresses e holds,
            # read from the store (a rare path: one range).
            kvs, _rev = self.etcd.range(overlay.address_key(net.id))
            owned.update({kv.key: e.id for kv in kvs if kv.value == e.id})
        self.etcd.delete(overlay.endpoint_key(net.id, e.id))
        self.etcd.delete_owned(owned)
        with self._view_lock:
            self.endpoints.pop(e.id, None)

    def _host_of(self, network_id: str, endpoint_id: str) -> str:
        """Where the endpoint lives, as its record in the store says."""
        try:
            raw = self.etcd.get(overlay.endpoint_key(network_id, endpoint_id))
            return f"host {RemoteEndpoint.decode(raw).host}" if raw else "another host"
        except (ValueError, KeyError):
            return "another host"

    def generation(self, endpoint_id: str) -> int:
        """How many times this host's endpoint was renumbered since the daemon started:
        a pass that read it before a renumbering sees a stale endpoint."""
        return self._generations.get(endpoint_id, 0)

    def conflict(self, endpoint_id: str) -> str | None:
        """Why this host's endpoint is not registered in the store (None: it is)."""
        return self._lost.get(endpoint_id)

    def renumbered(self, endpoint_id: str) -> dict[str, Any] | None:
        """How and why this host's endpoint was given new addresses since the daemon
        started (None: it was not)."""
        return self._renumbered.get(endpoint_id)

    def create_network(self, network: Network, asked: int | None = None) -> Network:
        """network with a VNI of its own (asked, or a free one), recorded for every host
        in one transaction: its name and VNI claimed, or Conflict (another host's
        network has the name, or the VNI asked)."""
        for _ in range(16):
            kvs, _rev = self.etcd.range(overlay.vni_key())
            taken = {int(kv.key.rsplit("/", 1)[1]) for kv in kvs
                     if kv.key.rsplit("/", 1)[1].isdigit()}
            vni = overlay.pick_vni(taken) if asked is None else asked
            network = Network(**{**network.__dict__,
                                 "options": {**network.options,
                                             overlay.VNI_OPTION: str(vni)}})
            if self.etcd.create_all({overlay.name_key(network.name): network.id,
                                     overlay.vni_key(vni): network.id,
                                     overlay.network_key(network.id):
                                         overlay.encode_network(network)}):
                with self._view_lock:
                    self.networks[network.id] = network
                return network
            if self.etcd.get(overlay.name_key(network.name)) is not None:
                raise Conflict(f"network {network.name!r} already exists in the cluster",
                               "choose another name ('portway network ls' on any host "
                               "lists them)")
            holder = self.etcd.get(overlay.vni_key(vni)) if asked is not None else None
            if holder is not None:
                with self._view_lock:
                    other = self.networks.get(holder)
                raise Conflict(f"VXLAN network identifier {vni} is taken by overlay network "
                               f"{other.name if other else holder[:12]}",
                               f"give another {overlay.VNI_OPTION}, or omit it to get a "
                               "free one")
        raise Conflict("no VNI could be claimed: other hosts keep taking them",
                       "try again")

    def remove_network(self, network: Network) -> None:
        """network gone from the store, for every host; refused while any host has a
        container on it. One transaction, made only while no endpoint was recorded on it
        since it was read (a run on another host at the same moment claims with the
        network's key present: of the two, exactly one wins)."""
        vni = network.options.get(overlay.VNI_OPTION, "")
        keys = [overlay.network_key(network.id), overlay.name_key(network.name)]
        if vni:
            keys.append(overlay.vni_key(int(vni)))
        prefix = overlay.endpoint_key(network.id, "")
        for _ in range(overlay.RACES):
            kvs, revision = self.etcd.range(prefix)
            users = []
            for kv in kvs:
                try:
                    e = RemoteEndpoint.decode(kv.value)
                except (ValueError, KeyError):
                    continue
                if e.host != self.advertise:
                    users.append(f"{e.name} (on {e.host})")
            if users:
                raise Conflict(f"network {network.name} has containers attached on other "
                               f"hosts: {', '.join(sorted(users))}",
                               "remove or disconnect them first")
            if self.etcd.delete_if_unchanged(prefix, revision, tuple(keys)):
                break
        else:
            raise Conflict(f"network {network.name} is being attached to on other hosts",
                           "try again")
        with self._view_lock:
            self.networks.pop(network.id, None)
        self.forget_network(network.id)

    def address_taken(self, network_id: str, address: IPAddress) -> bool:
        """Held by an endpoint on another host, as far as this host has seen (or just
        claimed by one first, in a race with a set-up here)."""
        return self._contended_now(network_id, address) or self._in_view(network_id, address)

    def _contended_now(self, network_id: str, address: IPAddress) -> bool:
        """address was claimed by another host first in a race with a set-up here, less
        than CONTENDED_FOR ago. The network's expired entries are dropped (its map too,
        once empty)."""
        contended = self._contended.get(network_id)
        if not contended:
            return False
        expired = time.monotonic() - CONTENDED_FOR
        for a in [a for a, when in contended.items() if when <= expired]:
            del contended[a]
        if not contended:
            del self._contended[network_id]
        return address in contended

    def _contend(self, network_id: str, address: IPAddress) -> None:
        """address lost in a race on network: skipped for CONTENDED_FOR (every network's
        expired entries dropped meanwhile)."""
        expired = time.monotonic() - CONTENDED_FOR
        self._contended = {n: kept for n, m in self._contended.items()
                           if (kept := {a: t for a, t in m.items() if t > expired})}
        self._contended.setdefault(network_id, {})[address] = time.monotonic()

    def forget_network(self, network_id: str) -> None:
        """What this service remembers of a network gone from this host (a daemon that
        makes and removes overlay networks for weeks keeps none of theirs)."""
        self._contended.pop(network_id, None)
        self._programmed.pop(network_id, None)
        with self._view_lock:
            self._taken.pop(network_id, None)
            self._versions.pop(network_id, None)

    def _in_view(self, network_id: str, address: IPAddress) -> bool:
        """Held by an endpoint on another host, as the watch's view has it."""
        with self._view_lock:
            version = self._versions.get(network_id, 0)
            cached = self._taken.get(network_id)
            if cached is None or cached[0] != version:
                cached = (version, frozenset(
                    a.ip for e in self.endpoints.values()
                    if e.network_id == network_id and e.host != self.advertise
                    for a in e.addresses))
                self._taken[network_id] = cached
            return address in cached[1]

    def _joined(self) -> None:
        if not self.lease:
            raise ClusterUnreachable(f"not joined to the cluster store {self.etcd.url()}"
                                     + (f" ({self.last_error})" if self.last_error else ""))

    def reserve(self, e: Endpoint, c: Container, network: Network) -> None:
        """e, a new endpoint of a set-up here, to be claimed with its record by publish()
        once its plumbing is done: its addresses, name and record in one transaction
        (one etcd write). Until then nothing of it is in the store; what this host's
        view already shows is refused now, before any plumbing: a name another host's
        container has on the network, an address asked for (--ip) that one holds."""
        self._joined()
        with self._view_lock:
            holder = next((r for r in self.endpoints.values()
                           if r.network_id == network.id and r.name == c.name
                           and r.id != e.id and r.host != self.advertise), None)
        if holder is not None:
            raise self._name_in_use(c, network, f"host {holder.host}")
        for address in e.requested:  # (--ip: an address it picks avoids these already)
            if self._in_view(network.id, address) or (
                    self._contended_now(network.id, address)
                    and self._claimed_elsewhere(network.id, address, e.id)):
                raise Conflict(f"address {address} is already in use on network "
                               f"{network.name} (on another host)",
                               "pick another address, or omit it")
        self._unpublished[e.id] = (e, c)
        self._unclaimed.add(e.id)

    def _claimed_elsewhere(self, network_id: str, address: IPAddress,
                           endpoint_id: str) -> bool:
        """address held in the store by another endpoint. One lost in a race a moment
        ago is asked of the store when asked for (--ip): its holder may be gone already,
        which the memory of the race (CONTENDED_FOR) does not know; free, it is
        forgotten."""
        holder = self.etcd.get(overlay.address_key(network_id, address))
        if holder is None or holder == endpoint_id:
            self._contended.get(network_id, {}).pop(address, None)
            return False
        return True

    @staticmethod
    def _name_in_use(c: Container, network: Network, where: str) -> Conflict:
        return Conflict(f"container name {c.name!r} is in use on network {network.name} "
                        f"by a container on {where}",
                        "choose another name, or remove that container there")

    def _held(self, e: Endpoint, c: Container, network: Network) -> IPAddress | None:
        """Conflict if e's name on network is another endpoint's in the store; else the
        first of e's addresses another endpoint holds there (None: none)."""
        owner = self.etcd.get(overlay.container_name_key(network.id, c.name))
        if owner is not None and owner != e.id:
            raw = self.etcd.get(overlay.endpoint_key(network.id, owner))
            where = "another host"
            try:
                where = f"host {RemoteEndpoint.decode(raw).host}" if raw else where
            except (ValueError, KeyError):
                pass
            raise self._name_in_use(c, network, where)
        for a in e.addresses:
            holder = self.etcd.get(overlay.address_key(network.id, a.ip))
            if holder is not None and holder != e.id:
                return a.ip
        return None

    def publish(self, container_id: str, only: str | None = None) -> None:
        """The container's reserved endpoints (reserve) shown to every host, as the last
        step of their set-up here (the caller holds the engine's lock and undoes the
        set-up if this fails): their addresses, names and records in one transaction
        under this host's lease. Unreachable: ClusterUnreachable, one line, and the
        set-up is undone: a container left running here that no other host can reach
        or resolve is seen nowhere as such. An address another host claimed first:
        AddressRaced (the set-up is made again, with another), or Conflict where it was
        asked for (--ip), as for a name. A lease gone meanwhile: joined again, then
        written. only: that endpoint alone."""
        reserved = [ec for ec in self._unpublished.values() if ec[1].id == container_id
                    and only in (None, ec[0].id) and ec[0].id in self._unclaimed]
        if reserved:
            self._claim_with_records(reserved)

    def _claim_with_records(self, reserved: list[tuple[Endpoint, Container]]) -> None:
        """Reserved endpoints' addresses, names and records, in one transaction (publish).
        Whether a transaction whose answer was lost was made is not known: from its
        sending on, a release removes what it may have written."""
        puts: dict[str, str] = {}
        records = {e.id: self._record(e, c) for e, c in reserved}
        for e, c in reserved:
            puts.update({overlay.address_key(e.network_id, a.ip): e.id for a in e.addresses})
            puts[overlay.container_name_key(e.network_id, c.name)] = e.id
            puts[overlay.endpoint_key(e.network_id, e.id)] = records[e.id].encode()

        # (Only while its network is in the store: one removed meanwhile by another
        # host takes nothing more.)
        present = tuple(dict.fromkeys(overlay.network_key(e.network_id) for e, _c in reserved))

        def send(lease: int) -> bool:
            try:
                return self.etcd.create_all(puts, lease, present=present)
            except ClusterUnreachable:
                for e, _c in reserved:  # (its answer lost: it may have been made)
                    self._unclaimed.discard(e.id)
                raise

        lease = self.lease
        try:
            claimed = send(lease)
        except StoreRefused:
            # The lease ran out (a stall longer than its TTL): join again (which leaves
            # them alone: they are still unclaimed), then claim.
            self._join(lost=lease)
            claimed = send(self.lease)
        if claimed:
            for e, _c in reserved:
                self._unclaimed.discard(e.id)
                del self._unpublished[e.id]
                with self._view_lock:
                    self.endpoints[e.id] = records[e.id]
            return
        # Nothing was written: they stay unclaimed, and their release has nothing to do.
        for e, c in reserved:
            net = self.h.store.find_network(e.network_id)
            if net is None or self.etcd.get(overlay.network_key(e.network_id)) is None:
                name = net.name if net is not None else e.network_id[:12]
                raise Conflict(f"network {name} was removed meanwhile (from every host)",
                               "create it again, or use another network")
            taken = self._held(e, c, net)
            if taken is None:
                continue
            if taken in e.requested:
                raise Conflict(f"address {taken} is already in use on network {net.name} "
                               "(on another host)", "pick another address, or omit it")
            self._contend(net.id, taken)
            raced = AddressRaced(f"address {taken} on network {net.name} was claimed by "
                                 "another host at the same moment", "try again")
            raced.address = taken
            raise raced
        raise AddressRaced(f"an address of {reserved[0][1].name} was claimed by another "
                           "host at the same moment", "try again")

    def release(self, endpoints: list[Endpoint]) -> None:
        """Their addresses, names and records gone from the store. Unreachable: what is
        still to go is remembered, and reconcile_own removes it once the store answers
        (a claim whose record was never put is in no view: nothing else would)."""
        pending: list[tuple[str, str, dict[str, str]]] = []
        for e in endpoints:
            unpublished = self._unpublished.pop(e.id, None)
            if e.id in self._unclaimed:
                self._unclaimed.discard(e.id)
                continue  # (reserved, never sent to the store: nothing there)
            with self._view_lock:
                record = self.endpoints.pop(e.id, None)
            c = unpublished[1] if unpublished is not None else \
                self.h.store.find_container(e.container_id)
            name = record.name if record is not None else c.name if c is not None else ""
            owned = {overlay.address_key(e.network_id, a.ip): e.id for a in e.addresses}
            if name:
                owned[overlay.container_name_key(e.network_id, name)] = e.id
            pending.append((e.id, e.network_id, owned))
        for i, (eid, network_id, owned) in enumerate(pending):
            try:
                self.etcd.delete(overlay.endpoint_key(network_id, eid))
                self.etcd.delete_owned(owned)
            except ClusterUnreachable as exc:
                self._error(exc.message)
                for later in pending[i:]:
                    self._unreleased[later[0]] = (later[1], later[2])
                return

    def _release_pending(self, own: dict[str, tuple[Endpoint, Container]]) -> None:
        """What release could not remove while the store was unreachable, removed now
        (the caller holds the engine's lock). Of an endpoint this host has again (a
        renumbering that failed kept the old one), only the addresses it no longer has."""
        for eid, (network_id, owned) in list(self._unreleased.items()):
            ec = own.get(eid)
            if ec is None:
                self.etcd.delete(overlay.endpoint_key(network_id, eid))
            else:
                kept = {overlay.address_key(network_id, a.ip) for a in ec[0].addresses}
                kept.add(overlay.container_name_key(network_id, ec[1].name))
                owned = {k: v for k, v in owned.items() if k not in kept}
            self.etcd.delete_owned(owned)
            del self._unreleased[eid]

    def reconcile_own(self) -> None:
        """This host's records in the store match its local store: endpoints it no
        longer has (a rolled-back attach, a release while etcd was away) removed, the
        ones it has put back if missing. Compared with the view the watch keeps (listed
        again at least every 30 s), not with a listing of every host's endpoints: with
        1,000 of them that costs more than a run -d, and it holds the engine's lock (a
        claim between etcd and the local store must not look like a leftover). This
        host's record first (_keep_host_record): without it, no other host sends any of
        them anything."""
        self._keep_host_record()
        if self._unreleased:
            with self.h.lock:
                self._release_pending({e.id: (e, c) for e, c in self._own_endpoints()})
        if not self.watch.relists:
            return  # nothing known of the store yet
        with self.h.lock:
            own = {e.id: (e, c) for e, c in self._own_endpoints()}
            with self._view_lock:
                stored = {i: r for i, r in self.endpoints.items() if r.host == self.advertise}
            gone = [r for i, r in stored.items() if i not in own]
            for r in gone:
                self.etcd.delete(overlay.endpoint_key(r.network_id, r.id))
                owned = {overlay.address_key(r.network_id, a.ip): r.id for a in r.addresses}
                owned[overlay.container_name_key(r.network_id, r.name)] = r.id
                self.etcd.delete_owned(owned)
                with self._view_lock:
                    self.endpoints.pop(r.id, None)
            for i, ec in own.items():
                if i not in stored or i in self._lost:
                    self._register(ec, self.lease)  # (a lost one: claimed if let go)
            for i in set(self._lost) - set(own):
                del self._lost[i]  # removed meanwhile
            for i in set(self._renumbered) - set(own):
                del self._renumbered[i]
            for i in set(self._generations) - set(own):
                del self._generations[i]

    # the view, from the watch

    def _snapshot(self, kvs: list[KV], revision: int) -> None:
        networks: dict[str, Network] = {}
        endpoints: dict[str, RemoteEndpoint] = {}
        hosts: dict[str, dict[str, Any]] = {}
        # An endpoint's record as it was at the last re-list is not decoded again (a
        # re-list, at least every 30 s, of 1,000 of them took 0.18 s of this thread's
        # time, most of it decoding the same records into the same objects).
        known, decoded = self._decoded, {}
        prefix = overlay.endpoint_key()
        own_key, own = overlay.host_key(self.advertise), None
        for kv in kvs:
            if kv.key == own_key:
                own = (kv.value, kv.lease)
            hit = known.get(kv.key) if kv.key.startswith(prefix) else None
            if hit is not None and hit[0] == kv.value:
                endpoints[hit[1].id] = hit[1]
                decoded[kv.key] = hit
                continue
            self._parse(kv.key, kv.value, networks, endpoints, hosts)
            if kv.key.startswith(prefix):
                e = endpoints.get(kv.key.rpartition("/")[2])
                if e is not None:
                    decoded[kv.key] = (kv.value, e)
        self._decoded = decoded
        with self._view_lock:
            for i in self.endpoints.keys() | endpoints.keys():  # what differs, counted
                old, new = self.endpoints.get(i), endpoints.get(i)
                if old is not new and old != new:
                    self._bump(old)
                    self._bump(new)
            self.networks, self.endpoints, self.hosts = networks, endpoints, hosts
            self._own_host = own
            self._networks_version += 1
        self.converge(force=True)

    def _move(self, old: RemoteEndpoint | None, new: RemoteEndpoint | None) -> None:
        """Remember an endpoint of another host that changed (the caller holds the view's
        lock): its entries are programmed as such where they are few."""
        old = old if old is not None and old.host != self.advertise else None
        new = new if new is not None and new.host != self.advertise else None
        for e in {x.network_id: x for x in (old, new) if x is not None}.values():
            moves = self._moves.setdefault(e.network_id, {})
            first = moves[e.id][0] if e.id in moves else \
                (old if old is not None and old.network_id == e.network_id else None)
            moves[e.id] = (first, new if new is not None and
                           new.network_id == e.network_id else None)

    def _bump(self, e: RemoteEndpoint | None) -> None:
        """e (another host's endpoint) came, changed or went: its network's entries and
        the names are to be brought in step (the caller holds the view's lock)."""
        if e is None or e.host == self.advertise:
            return
        self._versions[e.network_id] = self._versions.get(e.network_id, 0) + 1
        self._names_version += 1
        self._dns_changed.add(e.container_id)

    def _event(self, event: Event) -> None:
        rest = event.key.removeprefix(overlay.PREFIX)
        kind, _, name = rest.partition("/")
        with self._view_lock:
            versions = (self._networks_version, self._names_version)
            if kind == "endpoints":
                old = self.endpoints.get(name.rpartition("/")[2])
                if event.kind == "put":
                    self._parse(event.key, event.value, self.networks, self.endpoints,
                                self.hosts)
                else:
                    self.endpoints.pop(name.rpartition("/")[2], None)
                new = self.endpoints.get(name.rpartition("/")[2])
                if new != old:  # (the same record put again, under a new lease: nothing)
                    self._bump(old)
                    self._bump(new)
                    self._move(old, new)
            elif event.kind == "put":
                self._parse(event.key, event.value, self.networks, self.endpoints, self.hosts)
            elif kind == "networks":
                self.networks.pop(name, None)
            elif kind == "hosts":
                self.hosts.pop(name, None)
            if event.key == overlay.host_key(self.advertise):
                self._own_host = (event.value, event.lease) if event.kind == "put" else None
            if kind in ("networks", "hosts"):
                self._networks_version += 1
            changed = versions != (self._networks_version, self._names_version)
        if changed:
            self._dirty.set()  # the converge thread takes it, with whatever follows

    @staticmethod
    def _parse(key: str, value: str, networks: dict[str, Network],
               endpoints: dict[str, RemoteEndpoint], hosts: dict[str, dict[str, Any]]) -> None:
        rest = key.removeprefix(overlay.PREFIX)
        kind, _, name = rest.partition("/")
        try:
            if kind == "networks":
                networks[name] = overlay.decode_network(value)
            elif kind == "endpoints":
                e = RemoteEndpoint.decode(value)
                endpoints[e.id] = e
            elif kind == "hosts":
                hosts[name] = json.loads(value)
        except (ValueError, KeyError, TypeError) as exc:
            log(f"skipping a malformed record {key}: {exc}")

    def converge(self, force: bool = False) -> None:
        """The local mirror of the overlay networks, the VXLAN devices' entries and the
        DNS records, as the view says. A device whose wanted entries are those it was
        last brought in step with is not read again (with 1,000 endpoints, a dump of its
        entries costs more than this host's own run -d), unless force: each re-list (at
        least every 30 s) compares every device with the kernel. That comparison (the
        kernel's entries read, the difference computed) is made outside the engine's
        lock, which is taken again only to apply the difference: with 1,000 endpoints
        of other hosts it held the lock 45-85 ms, and a run -d arriving then waited.
        One pass at a time (the watch's re-list and the converge thread both make
        them): what changes in the view during one is programmed after it, as such."""
        with self._converging:
            self._converge(force)

    def _converge(self, force: bool) -> None:
        h = self.h
        with self._view_lock:
            networks = dict(self.networks)
            endpoints = list(self.endpoints.values())
            versions = dict(self._versions)
            names, networks_version = self._names_version, self._networks_version
            dns_changed, self._dns_changed = self._dns_changed, set()
            hosts = list(self.hosts)
            moves, self._moves = self._moves, {}
        changed = False
        compare: list[tuple[Network, int]] = []  # devices compared outside the lock
        with h.lock:
            if h.closed:
                return
            local = {n.id: n for n in h.store.networks() if n.driver == "overlay"}
            for net in networks.values() if force or networks_version != \
                    self._networks_seen else ():
                if net.id in local:
                    continue
                why = self._in_the_way(net)
                if why is None:
                    try:
                        h.networks.install(net)
                        changed = True
                    except PortwayError as exc:
                        why = exc.line()
                if why is not None and self.not_made.get(net.name) != why:
                    log(f"overlay network {net.name} not made here: {why}")
                if why is None:
                    self.not_made.pop(net.name, None)
                else:
                    self.not_made[net.name] = why
            for net in local.values() if force or networks_version != \
                    self._networks_seen else ():
                if net.id not in networks and not h.store.endpoints(network_id=net.id):
                    try:
                        h.networks.uninstall(net)
                        self.forget_network(net.id)
                        changed = True
                    except PortwayError as exc:
                        log(f"cannot remove overlay network {net.name} here: {exc.line()}")
            self._networks_seen = networks_version
            for name in [n for n in self.not_made if n not in {
                    net.name for net in networks.values()}]:
                del self.not_made[name]  # gone from the cluster
            self._members(hosts)
            for net in h.store.networks():
                if net.driver != "overlay":
                    continue
                want = versions.get(net.id, 0)
                if not (force or changed or self._programmed.get(net.id) != want):
                    continue
                step = moves.get(net.id, {})
                bumps = sum((o is not None) + (n is not None) for o, n in step.values())
                if not force and not changed and 0 < len(step) <= FEW_MOVES and \
                        self._programmed.get(net.id, -1) + bumps == want:
                    if self._program_moves(net, list(step.values())):
                        self._programmed[net.id] = want
                    continue
                index = self._device(net)
                if index is not None:  # (none yet: gc makes it)
                    compare.append((net, index))
            if not compare:
                self._names_published(endpoints, names, dns_changed, changed)
                return
        # The kernel's entries read and compared with the view outside the lock (the
        # batches' own socket; its lock keeps one request at a time on it).
        plans = []
        for net, index in compare:
            mine = [e for e in endpoints if e.network_id == net.id]
            plans.append((net, index, versions.get(net.id, 0), self._compare(index, mine)))
        with h.lock:
            if h.closed:
                return
            for net, index, want, plan in plans:
                if self._apply(net, index, want, plan):
                    self._programmed[net.id] = want
            self._names_published(endpoints, names, dns_changed, changed)

    def retry_not_made(self) -> None:
        """Something of this host went (a network): the overlay networks not made here
        for it are tried again at once, not at the next re-list (up to 30 s later)."""
        if not self.not_made:
            return
        with self._view_lock:
            self._networks_version += 1
        self._dirty.set()

    def _in_the_way(self, net: Network) -> str | None:
        """What keeps an overlay network another host made from being made here (the
        caller holds the engine's lock), or None. Its subnets were free on the host
        that made it, not necessarily here: one that overlaps a network of this host or
        one of its own routes would take their traffic (and the firewall's elements of
        one subnet are one network's), so it is not made, and says why."""
        h = self.h
        if h.store.name_taken("networks", net.name):
            return ("a network of this host has its name; rename or remove the local "
                    "one (portway network rm NAME) and the overlay network is made here")
        if net.bridge != names.bridge_name(net.id):
            try:  # a bridge name given at create: not a link of this host's
                h.networks.check_bridge_name(net.bridge)
            except PortwayError as exc:
                return exc.line()
        taken = h.networks.taken_ranges()
        for sub in net.subnets:
            holder = ipam.find_overlap(sub.subnet, taken)
            if holder is not None:
                return (f"its subnet {sub.subnet} overlaps {holder} of this host; remove "
                        f"or renumber that one, or create the overlay network with "
                        "another --subnet")
        return None

    def _members(self, hosts: list[str]) -> None:
        """The firewall's set of the members' VTEPs, as the view's host records say (the
        caller holds the engine's lock): no container sends VXLAN to one of them."""
        addresses = set()
        for name in hosts:
            try:
                addresses.add(ipaddress.ip_address(name))
            except ValueError:
                log(f"skipping a host record with no address for a name: {name}")
        try:
            self.h.fw.set_members(addresses)
        except PortwayError as exc:
            log(f"cannot keep the members' VTEPs in the firewall: {exc.line()}")

    def _names_published(self, endpoints: list[RemoteEndpoint], names: int,
                         dns_changed: set[str], changed: bool) -> None:
        """The DNS server given the other hosts' containers as just programmed (the
        caller holds the engine's lock)."""
        h = self.h
        # Names only after the entries: what the DNS server is given of other hosts'
        # containers (here and by any full publish until the next pass) is what was
        # just programmed, never an endpoint the watch has seen since.
        with self._view_lock:
            self._served = endpoints
        # The DNS server's records again only where other hosts' names came, went or
        # changed (this host's own are published as they change): with 1,000 of them, a
        # full publish is a reload of them all in the DNS server.
        if changed or self._names < 0:
            h.containers.publish_dns()  # (networks came or went: all of it)
        elif names != self._names and not self._publish_remote(dns_changed):
            h.containers.publish_dns()
        self._names = names

    def wanted(self, net: Network) -> tuple[set[overlay.Fdb], set[overlay.Neighbour]] | None:
        """The entries net's VXLAN device needs, as the store says (None: not read yet)."""
        if not self.watch.relists:
            return None
        with self._view_lock:
            endpoints = [e for e in self.endpoints.values() if e.network_id == net.id]
        return overlay.wanted_forwarding(endpoints, self.advertise)

    def _device(self, net: Network) -> int | None:
        """The index of net's VXLAN device (None: there is none)."""
        link = links.observe_link(self.ipr, overlay.vxlan_name(net.id))
        return link.index if link is not None else None

    def _compare(self, index: int, endpoints: list[RemoteEndpoint]) -> overlay.ForwardingPlan:
        """What the device (index) needs added and removed to have the entries of
        endpoints: read from the kernel, without the engine's lock."""
        want = overlay.wanted_forwarding(endpoints, self.advertise)
        have = vxlan.observe_forwarding(self.ipr, index, self.requests)
        return overlay.plan_forwarding(want, have)

    def _apply(self, net: Network, index: int, version: int,
               plan: overlay.ForwardingPlan) -> bool:
        """plan, made outside the engine's lock from the view at version, applied to
        net's device (the caller holds the lock), as far as it is still current: not
        if the network or its device went or was made anew meanwhile (whatever made it
        programmed it); cut to what the view still wants if it changed since (those
        changes are programmed after it, as such). False: not all of it done."""
        if self.h.store.find_network(net.id) is None or self._device(net) != index:
            return False
        with self._view_lock:
            moved = self._versions.get(net.id, 0) != version
            now = [e for e in self.endpoints.values() if e.network_id == net.id] \
                if moved else []
        if moved:
            plan = overlay.still_current(plan, overlay.wanted_forwarding(now, self.advertise))
        if plan.empty():
            return True
        errors = vxlan.apply_forwarding(self.ipr, index, plan, self.requests)
        self.programmed += len(plan.add_fdb) + len(plan.add_neigh) + len(plan.del_fdb) + \
            len(plan.del_neigh)
        for line in errors:
            log(f"network {net.name}: {line}")
        return not errors

    def _program_moves(self, net: Network,
                       moves: list[tuple[RemoteEndpoint | None, RemoteEndpoint | None]]
                       ) -> bool:
        """The entries of endpoints that changed since the device was last in step: those
        of each one's record before removed where its record after has them no more, the
        ones after added (an entry there already, or gone already, is no error)."""
        index = links.observe_link(self.ipr, overlay.vxlan_name(net.id))
        if index is None:
            return False
        before = overlay.wanted_forwarding([o for o, _ in moves if o is not None],
                                           self.advertise)
        after = overlay.wanted_forwarding([n for _, n in moves if n is not None],
                                          self.advertise)
        plan = overlay.plan_forwarding(after, before)
        if plan.empty():
            return True
        errors = vxlan.apply_forwarding(self.ipr, index.index, plan, self.requests)
        self.programmed += len(plan.add_fdb) + len(plan.add_neigh) + len(plan.del_fdb) + \
            len(plan.del_neigh)
        for line in errors:
            log(f"network {net.name}: {line}")
        return not errors

    def underlay_mtu(self) -> int:
        return underlay_mtu(self.ipr, self.advertise)

    # what others see

    def remote_records(self, containers: set[str] | None = None) -> list[dict[str, Any]]:
        """The containers on other hosts (or those of them whose ids are given), as the
        DNS server's records: one per container, with an endpoint per network. As
        converge last programmed them: a host that can resolve a name has its FDB and
        neighbour entries (else its first SYN or ARP request goes nowhere, and is
        resent only a second later)."""
        with self._view_lock:
            remote = [e for e in self._served if e.host != self.advertise
                      and (containers is None or e.container_id in containers)]
        out: dict[str, dict[str, Any]] = {}
        for e in remote:
            out.setdefault(e.container_id, {"id": e.container_id, "name": e.name, "dns": [],
                                            "endpoints": []})["endpoints"].append(
                {"ip": str(e.addresses[0].ip), "ips": [str(a.ip) for a in e.addresses],
                 "network": e.network_id,
                 "names": list(dict.fromkeys([e.name, *e.aliases, e.container_id[:12]]))})
        return list(out.values())

    def _publish_remote(self, containers: set[str]) -> bool:
        """Those containers of other hosts to the DNS server, each as one change (a set,
        or a forget where none of its endpoints is left): not a reload of all of them.
        False: not done (no server that takes changes); publish them all instead."""
        dns = self.h.dns
        if not isinstance(dns, DnsServer):
            return False
        records = {r["id"]: r for r in self.remote_records(containers)}
        try:
            for cid in sorted(containers):
                record = records.get(cid)
                reply = dns.request(json.dumps({"cmd": "set", "container": record}
                                               if record else {"cmd": "forget", "id": cid}))
                if not reply.get("ok"):
                    return False
        except (PortwayError, OSError):
            return False
        return True

    def remote_endpoints(self, network_id: str) -> list[RemoteEndpoint]:
        with self._view_lock:
            return sorted((e for e in self.endpoints.values()
                           if e.network_id == network_id and e.host != self.advertise),
                          key=lambda e: e.name)

    def status(self) -> dict[str, Any]:
        try:
            members = self.etcd.status()
        except ClusterUnreachable as exc:
            members, self.last_error = [], exc.message
        with self._view_lock:
            hosts = [{"address": a, "self": a == str(self.advertise),
                      "endpoints": sum(1 for e in self.endpoints.values()
                                       if str(e.host) == a), **{k: v for k, v in r.items()
                                                                if k != "address"}}
                     for a, r in sorted(self.hosts.items())]
            networks = sorted(n.name for n in self.networks.values())
        not_made = dict(self.not_made)
        return {"store": self.etcd.url(), "advertise_address": str(self.advertise),
                "state": self.state, "error": self.last_error,
                "lease": f"{self.lease:x}" if self.lease else "", "ttl": self.ttl,
                "revision": self.watch.revision, "relists": self.watch.relists,
                "members": members, "hosts": hosts, "networks": networks,
                "not_made": not_made,
                "programmed": self.programmed}


def underlay_mtu(ipr: IPRoute, address: IPAddress) -> int:
    """The MTU of the link that holds address (1500 if none does)."""
    for index, have in links.observe_link_addresses(ipr):
        if have.ip == address:
            for link in links.observe_links(ipr):
                if link.index == index:
                    return link.mtu
    return 1500
