"""Sandboxes: a container's network namespace, the endpoints in it, and the /etc files
its processes see (hosts, hostname, resolv.conf).

Rules of this module:
1. The namespace is named after the container's id (/run/netns/pw-<12 hex>) and its lo
   carries the container's owner tag: gc finds it by the tag, never by the name alone.
2. Teardown is exhaustive and idempotent: processes, endpoints, namespace, each even if
   another failed; missing counts as removed; the errors are raised together.
3. Only the SandboxKernel touches the kernel (a fake stands in for it in unit tests).
"""

from __future__ import annotations

import _thread
import functools
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from portway.core import files, gateways, names, runopts
from portway.engine.drivers.bridge import endpoint_families
from portway.errors import PortwayError, TeardownErrors
from portway.kernel import links, netns, procs
from portway.model.types import Container, Endpoint, IPAddress, IPInterface, Network, Route

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from portway.engine.context import Host
    from portway.engine.drivers import PreparingDriver

HOST_FILES = ("hosts", "hostname", "resolv.conf")
# The thread that does a set-up's work beside its netlink work (build).
_HELPER = netns.Kept()
# The thread that does a set-up's kernel work that needs nothing allocated (early).
_EARLY = netns.Kept()


def host_hostname() -> str:
    """The host's hostname: a container in the host's namespace has it unless given
    another (Docker's rule)."""
    return socket.gethostname()


class SandboxHandle(Protocol):
    path: str

    @property
    def ipr(self) -> object: ...

    def close(self) -> None: ...


class SandboxKernel(Protocol):
    def next_id(self) -> str: ...
    def create(self, path: str, tag: str) -> SandboxHandle: ...
    def prepare(self) -> None: ...
    def close(self) -> None: ...
    def open(self, path: str) -> AbstractContextManager[SandboxHandle]: ...
    def exists(self, path: str) -> bool: ...
    def delete(self, path: str) -> None: ...
    def kill_processes(self, path: str, spare: tuple[int, ...] = ()) -> int: ...
    def write_etc(self, path: str, files: dict[str, str]) -> None: ...
    def set_sysctls(self, path: str, sysctls: dict[str, str]) -> dict[str, str]: ...
    def has_default_route(self, sandbox: SandboxHandle, version: int = 4) -> bool: ...
    def loopback_up(self, sandbox: SandboxHandle) -> None: ...
    def set_default_route(self, sandbox: SandboxHandle, ifname: str,
                          gateway: IPAddress, metric: int | None = None) -> None: ...
    def delete_routes(self, sandbox: SandboxHandle, routes: tuple[Route, ...]) -> list[str]: ...
    def readdress(self, sandbox: SandboxHandle, ifname: str, old: tuple[IPInterface, ...],
                  new: tuple[IPInterface, ...], mac: str) -> None: ...


@dataclass
class LiveSandbox:
    path: str
    ipr: IPRoute

    def close(self) -> None:
        self.ipr.close()


class LiveSandboxKernel:
    """Named network namespaces (kernel/netns.py), entered from helper threads only.

    Namespaces are kept made ahead (spares, unnamed, held only by this process): a new
    container's is then a mount, and the next ones (most of a millisecond of the
    kernel's work each) are made once a set-up is done (prepare), on a thread whose
    unshare leaves the interpreter free. Two are kept, so that containers made one
    right after another never wait for the one being made. A spare dies with the
    process.

    With tag (container id -> owner tag), a spare is made for a container id of its
    own, its lo up and tagged for it ahead too; run takes that id (next_id), so its
    claim sends no message. A spare claimed for another id (the id was asked while no
    spare was ready, or gc re-making a container's namespace) is tagged then."""

    SPARES = 2

    def __init__(self, tag: Callable[[str], str] | None = None) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a spare was added, or making ended
        # Ready spares, each with the container id its lo is tagged for ("": none),
        # the next to be taken first.
        self._spares: list[tuple[netns.Spare, str]] = []
        self._tag = tag
        # Ids handed out by next_id whose spare is not claimed yet: never handed out
        # again (a run that fails before its claim may have recorded its container).
        self._given: set[str] = set()
        # Held while spares are being made (a plain lock, not a Thread: Thread.start()
        # waits until the new thread runs, which a busy machine makes the caller's wait).
        self._making = threading.Lock()
        self._closed = False
        # The maker: one thread for the process's life, woken by prepare (which takes
        # _making for it) through _wake, rather than a thread started for every set-up
        # (its start was a tenth of a millisecond of the set-up's own thread).
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._asked = False
        self._maker_started = False

    def _full(self) -> bool:
        with self._lock:
            return self._closed or len(self._spares) >= self.SPARES

    def _make_one(self) -> tuple[netns.Spare, str] | None:
        try:
            spare = netns.make_spare()
        except OSError:
            return None  # the next create makes its own
        cid = ""
        if self._tag is not None:
            cid = names.new_id()
            try:
                links.setup_loopback(spare.ipr, self._tag(cid))
            except (PortwayError, OSError):
                spare.close()
                return None
        return spare, cid

    def _make(self) -> None:
        """Spares up to SPARES, then _making released (the caller took it)."""
        try:
            while not self._full():
                made = self._make_one()
                if made is None:
                    return
                with self._ready:
                    keep = not self._closed and len(self._spares) < self.SPARES
                    if keep:
                        self._spares.append(made)
                        self._ready.notify_all()
                if not keep:
                    made[0].close()
                    return
        finally:
            self._making.release()
            with self._ready:
                self._ready.notify_all()

    def _maker(self) -> None:
        """The maker thread: makes spares each time prepare asks, until close."""
        while True:
            self._wake.acquire()
            with self._lock:
                asked, self._asked = self._asked, False
            if asked:
                self._make()
            if self._closed:
                return

    def _take(self) -> tuple[netns.Spare | None, str]:
        """A ready spare; if none is, the one being made is waited for (not the one
        after it)."""
        with self._ready:
            while not self._spares and self._making.locked():
                self._ready.wait()
            if self._spares:
                spare, cid = self._spares.pop(0)
                self._given.discard(cid)
                return spare, cid
        return None, ""

    def next_id(self) -> str:
        """The id for the next container: the next ready spare's, if there is one (each
        id once)."""
        with self._lock:
            if self._spares:
                cid = self._spares[0][1]
                if cid and cid not in self._given:
                    self._given.add(cid)
                    return cid
        return names.new_id()

    def create(self, path: str, tag: str) -> LiveSandbox:
        spare, cid = self._take()
        if spare is not None:
            ready = self._tag is not None and cid != "" and self._tag(cid) == tag
            ipr = netns.claim_spare(spare, os.path.basename(path),
                                    (lambda ipr: None) if ready else
                                    (lambda ipr: links.setup_loopback(ipr, tag)))
        else:
            ipr = netns.create_netns(os.path.basename(path),
                                     lambda ipr: links.setup_loopback(ipr, tag))
        return LiveSandbox(path, ipr)

    def prepare(self) -> None:
        """Make spares on a thread of their own, up to SPARES, unless they are being
        made. Asked once a set-up is done (not during it: on a busy machine the thread
        would take the set-up's core and interpreter)."""
        if self._full() or not self._making.acquire(blocking=False):
            return
        try:
            if not self._maker_started:
                _thread.start_new_thread(self._maker, ())
                self._maker_started = True
        except BaseException:
            self._making.release()
            raise
        with self._lock:
            self._asked = True
        self._wake.release()  # (held: the maker is idle, or about to wait for it)

    def close(self) -> None:
        """The spares, if any were made, are gone (nothing named them)."""
        self._closed = True
        with self._making, self._lock:  # (one being made is waited for)
            spares, self._spares = self._spares, []
        for spare, _ in spares:
            spare.close()
        if self._maker_started:
            try:
                self._wake.release()  # the maker ends
            except RuntimeError:
                pass  # (woken already: it sees _closed once its making is done)

    @contextmanager
    def open(self, path: str) -> Iterator[LiveSandbox]:
        sandbox = LiveSandbox(path, netns.open_ipr(path))
        try:
            yield sandbox
        finally:
            sandbox.close()

    def exists(self, path: str) -> bool:
        return netns.sandbox_exists(path)

    def delete(self, path: str) -> None:
        netns.delete_netns(os.path.basename(path))

    def kill_processes(self, path: str, spare: tuple[int, ...] = ()) -> int:
        return procs.kill_netns_processes(procs.netns_inode(path),
                                          spare=procs.process_trees(spare))

    def write_etc(self, path: str, files: dict[str, str]) -> None:
        netns.write_etc_netns(os.path.basename(path), files)

    def set_sysctls(self, path: str, sysctls: dict[str, str]) -> dict[str, str]:
        return netns.in_netns(path, lambda: netns.write_sysctls(sysctls))

    def has_default_route(self, sandbox: SandboxHandle, version: int = 4) -> bool:
        return links.has_default_route(sandbox.ipr, version)

    def loopback_up(self, sandbox: SandboxHandle) -> None:
        links.loopback_up(sandbox.ipr)

    def set_default_route(self, sandbox: SandboxHandle, ifname: str,
                          gateway: IPAddress, metric: int | None = None) -> None:
        links.set_default_route(sandbox.ipr, ifname, gateway, metric)

    def delete_routes(self, sandbox: SandboxHandle, routes: tuple[Route, ...]) -> list[str]:
        return links.delete_routes(sandbox.ipr, routes)

    def readdress(self, sandbox: SandboxHandle, ifname: str, old: tuple[IPInterface, ...],
                  new: tuple[IPInterface, ...], mac: str) -> None:
        links.readdress(sandbox.ipr, ifname, old, new, mac)


@dataclass
class Early:
    """A set-up's kernel work that needs nothing allocated, done on a kept thread while
    the set-up's own thread validates, writes its rows and allocates addresses: the
    container's namespace claimed, and each endpoint's veth pair made (named after the
    endpoint id made ahead, eids), on its bridge, down. build finishes the pairs once
    the addresses are known. undo takes back whatever of it was made."""

    eids: list[str]
    sandbox: SandboxHandle | None = None
    pairs: dict[str, tuple[int, int]] = field(default_factory=dict)  # host end -> indexes
    # What was made, each with its undo, in the order made.
    made: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    job: netns.Beside | netns._Job | None = None
    taken: bool = False  # build has the sandbox (and closes it)

    def join(self) -> SandboxHandle:
        """The namespace, once the work is done (its error raised, if it failed)."""
        assert self.job is not None
        self.job.join()
        assert self.sandbox is not None
        self.taken = True
        return self.sandbox

    def undo(self) -> list[str]:
        """What was made, gone, in reverse order (missing counts as gone; teardown may
        have removed it already): the set-up failed. Its errors, one line each (the
        caller reports them beside the set-up's own)."""
        if self.job is not None:
            self.job.join(quiet=True)
        if self.sandbox is not None and not self.taken:
            self.sandbox.close()
            self.taken = True
        errors: list[str] = []
        while self.made:
            what, step = self.made.pop()
            try:
                step()
            except (PortwayError, OSError) as exc:
                errors.append(f"{what}: {exc}")
        return errors


class Sandboxes:
    def __init__(self, host: Host) -> None:
        self.h = host

    def early(self, container_id: str, path: str, networks: list[Network]) -> Early | None:
        """The kernel work of a new container's set-up that depends on nothing the store
        allocates, started on a kept thread (Early): None if a network's driver does
        not attach in two halves (it all happens in build then). The caller undoes it
        (Early.undo) if the set-up fails, and hands it to build otherwise."""
        h = self.h
        drivers = [h.driver(n) for n in networks]
        if not all(n.driver == "bridge" and n.subnets and hasattr(d, "prepare")
                   for n, d in zip(networks, drivers, strict=True)):
            return None
        early = Early([names.new_id() for _ in networks])
        tag = h.tag("container", container_id)
        kernel = h.sandbox_kernel

        def work() -> None:
            sandbox = kernel.create(path, tag)
            early.sandbox = sandbox
            early.made.append(("delete namespace", lambda: kernel.delete(path)))
            for index, (net, driver, eid) in enumerate(zip(networks, drivers, early.eids,
                                                           strict=True)):
                preparing = cast("PreparingDriver", driver)
                host_ifname = names.host_veth_name(eid)
                early.pairs[host_ifname] = preparing.prepare(
                    sandbox, eid, host_ifname, names.container_ifname(index), net)
                early.made.append((f"delete {host_ifname}",
                                   functools.partial(preparing.unprepare, host_ifname)))

        early.job = _EARLY.beside(work)
        return early

    def build(self, container: Container, endpoints: list[Endpoint],
              networks: list[Network] | None = None, early: Early | None = None) -> None:
        """The container's namespace, its endpoints (in the order it joined their
        networks: the first routes its families) and its /etc files. networks: the
        endpoints' networks, if the caller has them (else read from the store).

        The anti-spoofing entries and the /etc files (rendered there too) go on a helper
        thread while this one does the netlink work: neither depends on the other (a
        port without its entries sends nothing, so their order does not matter), and
        each is most of a millisecond of waiting on the kernel and the disk. The helper
        reads nothing of the store (the caller's transaction holds it): the networks
        are looked up here. early: the namespace and pairs made ahead (Sandboxes.early;
        the caller undoes it on a failure), whose endpoints' ids the endpoints have."""
        h = self.h
        known = {n.id: n for n in networks or ()}
        nets = {e.network_id: known.get(e.network_id) or h.network(e.network_id)
                for e in endpoints}
        etc_path = self.etc_path(container)

        def beside() -> None:
            if endpoints:
                h.fw.add_guard(endpoints)
            etc = self.etc_files(container, endpoints, nets)
            if etc:
                h.sandbox_kernel.write_etc(etc_path, etc)

        helper = _HELPER.beside(beside)
        try:
            sandbox = early.join() if early is not None else \
                h.sandbox_kernel.create(container.netns, h.tag("container", container.id))
            try:
                # Each family's default route via the first network that gives one and
                # has the family (core/gateways.py): an IPv4-only network first, a
                # dual-stack one after: IPv6 through it.
                owners = gateways.route_owners([nets[e.network_id] for e in endpoints])
                for i, endpoint in enumerate(endpoints):
                    net = nets[endpoint.network_id]
                    # (Not a family it has no address of: its IPv6 may be off.)
                    families = endpoint_families(net, endpoint)
                    mine = {v for v, j in owners.items() if j == i} & families
                    # All of its families: with the interface, in one batch.
                    whole = bool(mine) and mine == families
                    h.endpoints.attach(sandbox, container, endpoint, net, whole,
                                       guarded=True,
                                       prepared=early.pairs.get(endpoint.host_ifname)
                                       if early is not None else None)
                    for version in sorted(mine) if not whole else ():
                        sub = net.of_version(version)
                        if sub is not None:
                            h.sandbox_kernel.set_default_route(sandbox, endpoint.ifname,
                                                               sub.gateway)
                if container.config.sysctls:
                    # After the interfaces: a sysctl may name one (net.ipv4.conf.eth0.*).
                    h.sandbox_kernel.set_sysctls(container.netns,
                                                 dict(container.config.sysctls))
            finally:
                sandbox.close()
        except BaseException:
            helper.join(quiet=True)  # done before the caller's undo touches the same
            raise
        helper.join()

    def teardown(self, c: Container, endpoints: list[Endpoint]) -> None:
        """Processes, endpoints and namespace of c; each step even if one fails. A
        container in the host's namespace or another container's has only its /etc
        files of its own. The processes of containers that share c's namespace
        (--network container:) are spared, as Docker spares them: they keep running,
        with the namespace's loopback alone once c's interfaces are gone."""
        kernel = self.h.sandbox_kernel
        if c.network_mode in ("host", "container"):
            if c.network_mode == "host":
                kernel.delete(self.etc_path(c))  # no namespace of that name: its files
            return
        sharing = tuple(d.pid for d in self.h.store.containers()
                        if d.id != c.id and d.netns == c.netns and d.status == "running"
                        and d.pid)
        errors: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("kill processes", lambda: kernel.kill_processes(c.netns, sharing)),
            ("delete endpoints", lambda: self.h.endpoints.detach(endpoints)),
            ("delete namespace", lambda: kernel.delete(c.netns)),
        ]
        for what, step in steps:
            try:
                step()
            except (PortwayError, OSError) as exc:
                errors.append(f"{what}: {exc}")
        if errors:
            raise TeardownErrors(f"tear down {c.name}", errors)

    def host_resolv(self) -> str:
        try:
            with open(self.h.host_resolv_path()) as f:
                return f.read()
        except OSError:
            return ""

    def host_hosts(self) -> str:
        try:
            with open("/etc/hosts") as f:
                return f.read()
        except OSError:
            return ""

    def etc_path(self, c: Container) -> str:
        """Where c's /etc files are kept: /etc/netns/<the basename of this path>. Its
        namespace's, or for a container in the host's namespace, the name its own
        namespace would have; one in another container's namespace has that one's."""
        if c.network_mode == "host":
            return netns.netns_path(names.netns_name(c.id))
        if c.network_mode == "container":
            owner = self.h.store.find_container(c.config.network_of)
            if owner is not None and owner.id != c.id:
                return self.etc_path(owner)
        return c.netns

    def etc_files(self, container: Container, endpoints: list[Endpoint],
                  networks: dict[str, Network] | None = None) -> dict[str, str] | None:
        """The container's /etc/hosts, hostname and resolv.conf (None: it has none of
        its own). A container in the host's namespace sees the host's, except for what
        it was given: its own hostname, --add-host lines after the host's /etc/hosts,
        --dns, --dns-search and --dns-option over the host's resolv.conf. networks: the
        endpoints' networks by id, if the caller has them (else read from the store)."""
        c, conf = container, container.config
        if c.network_mode == "container" or c.runtime != "portway":
            return None  # Podman writes its containers' /etc files itself
        if c.network_mode == "host":
            out: dict[str, str] = {}
            if c.hostname != host_hostname():
                out["hostname"] = files.render_hostname(c.hostname)
            if conf.extra_hosts:
                out["hosts"] = files.append_hosts(self.host_hosts(), runopts.resolve_extra_hosts(
                    conf.extra_hosts, [ipaddress.ip_address("127.0.0.1")]))
            if c.dns or conf.dns_search is not None or conf.dns_options is not None:
                servers, search, options = files.parse_resolv_conf(self.host_resolv())
                out["resolv.conf"] = files.render_resolv_conf(
                    c.dns or servers, search if conf.dns_search is None else conf.dns_search,
                    options if conf.dns_options is None else conf.dns_options)
            return out
        addresses = [a.ip for e in endpoints for a in e.addresses]
        nameserver = None
        gateways: list[IPAddress] = []
        if endpoints:
            # The first network's DNS server, on its first gateway (the IPv4 one, where
            # there is one; an IPv6-only network's containers ask over IPv6).
            first_id = min(endpoints, key=lambda e: e.ifname).network_id
            first = networks[first_id] if networks is not None else \
                self.h.store.find_network(first_id)
            # A macvlan network's gateway is the LAN's router: the host's resolvers.
            nameserver = str(first.gateway) if first and first.driver != "macvlan" \
                else None
            gateways = [s.gateway for s in first.subnets] if first else []
        # IPv6 turned off by --sysctl (all, or lo's): no ::1, no IPv6 host-gateway line
        # (Docker's: a name to an address the container cannot reach sends clients
        # there first).
        ipv6 = not runopts.ipv6_off(conf.sysctls, "lo")
        if not ipv6:
            gateways = [g for g in gateways if g.version == 4]
        return {
            "hosts": files.render_hosts(c.hostname, c.name, addresses, conf.domainname,
                                        runopts.resolve_extra_hosts(conf.extra_hosts,
                                                                    gateways), ipv6),
            "hostname": files.render_hostname(c.hostname),
            "resolv.conf": files.container_resolv_conf(self.host_resolv(), nameserver,
                                                       conf.dns_search, conf.dns_options),
        }

    def write_files(self, container: Container) -> None:
        etc = self.etc_files(container, self.h.store.endpoints(container_id=container.id))
        if etc:
            self.h.sandbox_kernel.write_etc(self.etc_path(container), etc)

    def binds(self, container: Container) -> list[tuple[str, str]]:
        """What is bound over the container's /etc (a file that is not there is not)."""
        directory = os.path.join(netns.ETC_NETNS, os.path.basename(self.etc_path(container)))
        return [(os.path.join(directory, f), f"/etc/{f}") for f in HOST_FILES]

    def files_missing(self, container: Container) -> list[str]:
        directory = os.path.join(netns.ETC_NETNS, os.path.basename(container.netns))
        return [f for f in ("hosts", "resolv.conf")
                if not os.path.exists(os.path.join(directory, f))]


