"""The Engine: portway's Python API, a facade over small services.

Rules of this module:
1. The Engine builds one Host (engine/context.py) with the live kernel seams and the
   services, and answers every public operation (what portwayd serves) by handing it to
   the service whose job it is: networks, endpoints and IPAM, published ports,
   sandboxes and /etc files, processes, the firewall, DNS publishing. Nothing here
   renders rules or touches the kernel itself.
2. Runtime adapters (the daemon and CLI, the Podman backend, later CNI) use public
   methods only: the operations below, and Containers.attach_sandbox/detach_sandbox
   for sandboxes a runtime made itself.

The Engine runs in a process that is already inside the host network namespace (the
daemon enters it before starting any thread).
"""

from __future__ import annotations

import os
import resource
import shutil
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from portway.core import confine, names, validate
from portway.core.firewall import Published
from portway.engine import view
from portway.engine.containers import Containers, each
from portway.engine.context import Host
from portway.engine.dns import DnsServer, names_by_network
from portway.engine.dns import records as dns_records
from portway.engine.drivers.bridge import BridgeDriver
from portway.engine.drivers.macvlan import MacvlanDriver
from portway.engine.drivers.overlay import OverlayDriver
from portway.engine.endpoints import Endpoints
from portway.engine.facts import LiveHostFacts
from portway.engine.fw import Firewall
from portway.engine.lifecycle import Lifecycle
from portway.engine.networks import DEFAULT_NETWORK, PSEUDO_NETWORKS, Networks
from portway.engine.ports import PortReservations, Publishing
from portway.engine.processes import LiveProcessKernel, Processes
from portway.engine.sandboxes import LiveSandboxKernel, Sandboxes
from portway.errors import InvalidInput, PortwayError
from portway.kernel import netns
from portway.kernel.nft import Nft
from portway.model.types import Endpoint, IPAddress, Network
from portway.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from portway.core.overlay import Fdb, Neighbour
    from portway.engine.cluster import Cluster

__all__ = ["DEFAULT_NETWORK", "Engine"]


def _raise_open_files() -> None:
    """As many descriptors as the kernel allows a process: every published port holds a
    socket (two, for IPv4 and IPv6), and the daemon runs as root, which may raise its
    hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = hard
    want = max(hard, min(ceiling, 1 << 20))
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ensure_forwarding() -> None:
    """Routing between networks and out, and bridged traffic through the inet hooks
    (so `enable_icc=false` can act on traffic within one bridge)."""
    for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            netns.write_sysctl(key, "1")
        except FileNotFoundError:
            pass  # no br_netfilter: icc=false cannot act within a bridge


def build_host(h: Host) -> Host:
    """The services, on a Host whose seams are set (live ones, or a test's fakes)."""
    h.networks = Networks(h)
    h.endpoints = Endpoints(h)
    h.publishing = Publishing(h)
    h.sandboxes = Sandboxes(h)
    h.processes = Processes(h)
    h.containers = Containers(h)
    h.lifecycle = Lifecycle(h)
    return h


class Engine:
    def __init__(self, state_dir: str, host_netns: str | None = None,
                 rootless: bool = False, cluster_store: str | None = None,
                 advertise_address: str | None = None,
                 cluster_ttl: str | None = None) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.host_netns = host_netns
        self.rootless = rootless  # serving rootless Podman in its rootless namespace
        os.makedirs(os.path.join(self.state_dir, "containers"), mode=0o700, exist_ok=True)
        self.store = SqliteStore(os.path.join(self.state_dir, "portway.db"))
        self._check_host(host_netns, rootless)
        self.instance = self._instance_id()
        self.host = IPRoute()
        self.nft = Nft()
        self.fw = Firewall(self.nft, self.instance)
        self.ports = PortReservations(lambda k: self.h.publishing.target(k))
        _raise_open_files()
        self.tools = confine.Tools(**{name: shutil.which(name) or f"/usr/bin/{name}"
                                      for name in ("unshare", "setpriv", "nsenter")})
        _ensure_forwarding()
        self.h = build_host(Host(
            state_dir=self.state_dir, host_netns=host_netns, instance=self.instance,
            store=self.store, drivers={
                "bridge": BridgeDriver(self.host, self.tag),
                "macvlan": MacvlanDriver(self.host, self.tag, self._netns_of),
                "overlay": OverlayDriver(
                    self.host, self.tag, self._advertised, self._wanted,
                    lambda: self.h.cluster.requests if self.h.cluster is not None else None)},
            fw=self.fw, sandbox_kernel=LiveSandboxKernel(lambda cid: self.tag("container", cid)),
            process_kernel=LiveProcessKernel(lambda *a: self.h.processes.on_exit(*a)),
            ports=self.ports, facts=LiveHostFacts(self.host), tools=self.tools))
        self.lock = self.h.lock
        self.dns = DnsServer(self.h)
        self.h.dns = self.dns
        self.h.cluster = self._cluster(cluster_store, advertise_address, cluster_ttl)
        if self.h.cluster is not None:
            self.fw.vtep = self.h.cluster.advertise  # what gc wants of the tables

    def _cluster(self, url: str | None, address: str | None,
                 ttl_text: str | None = None) -> Cluster | None:
        """The cluster this host is in: --cluster-store, --advertise-address and
        --cluster-ttl, or the ones this state dir was last started with (remembered, as
        a restarted daemon must stay in its cluster)."""
        from portway.core import overlay

        given = address
        with self.store.transaction():
            url = url or self.store.get_meta("cluster_store")
            remembered = self.store.get_meta("advertise_address")
            address = address or remembered
            ttl_text = ttl_text or self.store.get_meta("cluster_ttl")
            if url is None and address is None:
                return None
            if url is None or address is None:
                raise InvalidInput("--cluster-store and --advertise-address go together",
                                   "give both (etcd://HOST:2379 and this host's underlay "
                                   "address), or neither")
            members = overlay.parse_cluster_store(url)
            advertise = overlay.parse_advertise_address(address)
            # One given again as it is remembered (PORTWAY_ADVERTISE_ADDRESS in the
            # environment of every start, a unit's flag) is a remembered one: after a
            # reboot its address may come up after the daemon starts.
            if given is not None and (remembered is None or advertise !=
                                      overlay.parse_advertise_address(remembered)):
                self._check_advertised(advertise)
            ttl = overlay.parse_cluster_ttl(ttl_text) if ttl_text else overlay.DEFAULT_TTL
            self.store.set_meta("cluster_store", url)
            self.store.set_meta("advertise_address", str(advertise))
            if ttl_text:
                self.store.set_meta("cluster_ttl", str(ttl))
        # Only a host in a cluster pays for the HTTP client's import.
        from portway.engine.cluster import Cluster
        from portway.store.etcd import Etcd

        return Cluster(self.h, self.host, Etcd(members), advertise, ttl)

    def _check_advertised(self, address: IPAddress) -> None:
        """--advertise-address is an address of this host (as Docker's swarm refuses one
        that is not a system address): the other hosts send this host's tunnel traffic
        to it, and one it does not have leaves every cross-host path silently broken.
        (A remembered one is not checked, given again or not: an address not up yet
        after a reboot must not keep the daemon from serving the bridge networks.)"""
        from portway.kernel import links

        if any(a.ip == address for _index, a in links.observe_link_addresses(self.host)):
            return
        where = f" (host namespace {self.host_netns})" if self.host_netns else ""
        raise InvalidInput(f"--advertise-address {address} is not an address of this "
                           f"host{where}",
                           "give the address of its interface on the underlay ('ip -brief "
                           "address' lists them), or add it to that interface first")

    def _netns_of(self, endpoint: Endpoint) -> str | None:
        c = self.store.find_container(endpoint.container_id)
        return c.netns if c is not None else None

    def _advertised(self) -> IPAddress | None:
        return self.h.cluster.advertise if self.h.cluster is not None else None

    def _wanted(self, network: Network) -> tuple[set[Fdb], set[Neighbour]] | None:
        return self.h.cluster.wanted(network) if self.h.cluster is not None else None

    def start_cluster(self) -> None:
        if self.h.cluster is not None:
            with self.h.lock:
                self.fw.adopt_members()
                self.fw.add_vtep(self.h.cluster.advertise)
            self.h.cluster.start()

    def cluster_status(self) -> dict[str, Any] | None:
        return self.h.cluster.status() if self.h.cluster is not None else None

    def overlay_not_made(self) -> dict[str, str]:
        """The cluster's overlay networks this host does not make, and why (no call to
        etcd: what the last pass over the store's view found)."""
        return dict(self.h.cluster.not_made) if self.h.cluster is not None else {}

    # set-up

    def _check_host(self, host_netns: str | None, rootless: bool) -> None:
        """The state dir serves one host namespace: the one it was made for. A rootless
        Podman user's is their rootless network namespace, which Podman makes anew
        after each time it had no container, so it has no name: only portway-netavark,
        which runs in it, starts that daemon."""
        want = host_netns or ""
        mode = "rootless" if rootless else ""
        with self.store.transaction():
            have = self.store.get_meta("host_netns")
            have_mode = self.store.get_meta("mode") or ""
            if have is None:
                self.store.set_meta("host_netns", want)
                self.store.set_meta("mode", mode)
            elif have_mode != mode:
                raise InvalidInput(
                    f"state dir {self.state_dir} is rootless Podman's, and no daemon serves "
                    "it now (it runs only while the user has containers)"
                    if have_mode else f"state dir {self.state_dir} is not rootless Podman's",
                    "look while their containers run (or with podman unshare "
                    "--rootless-netns portway ...)" if have_mode else
                    "give rootless Podman a --config dir of its own")
            elif have != want:
                raise InvalidInput(
                    f"state dir {self.state_dir} belongs to host namespace "
                    f"{have or '(root)'}, not {want or '(root)'}",
                    "give the matching --host-netns, or another --state-dir")

    def _instance_id(self) -> str:
        with self.store.transaction():
            value = self.store.get_meta("instance")
            if value is None:
                value = names.new_id()[:8]
                self.store.set_meta("instance", value)
        return value

    def close(self) -> None:
        if self.h.cluster is not None:
            self.h.cluster.close()
        with self.lock:
            self.h.closed = True  # a process that ends from now on is seen by the next start
        self.h.lifecycle.close()
        self.h.process_kernel.close()
        self.h.sandbox_kernel.close()
        self.ports.close()
        self.fw.close()
        self.nft.close()
        self.host.close()
        self.store.close()

    def tag(self, kind: str, object_id: str) -> str:
        return names.owner_tag(self.instance, kind, object_id)

    def host_netns_path(self) -> str:
        return self.h.host_netns_path()

    def host_resolv_path(self) -> str:
        return self.h.host_resolv_path()

    def all_published(self) -> list[Published]:
        return self.h.publishing.all_published()

    # networks

    def network_create(self, name: str, driver: str = "bridge",
                       subnet: str | list[str] | None = None,
                       gateway: str | list[str] | None = None,
                       ip_range: str | list[str] | None = None,
                       internal: bool = False, mtu: int | str | None = None,
                       options: list[str] | None = None, labels: list[str] | None = None,
                       ipv6: bool | None = None, ipv4: bool | str | None = None,
                       aux_addresses: list[str] | None = None,
                       attachable: bool = False) -> dict[str, Any]:
        """attachable: accepted, as Docker's --attachable, and changes nothing: any
        container can join any portway network."""
        validate.check_network_name(name)
        return view.network(self.h, self.h.networks.create(
            name, driver, subnet, gateway, ip_range, internal, mtu, options, labels, ipv6,
            ipv4, aux_addresses))

    def network_ls(self) -> list[dict[str, Any]]:
        """Every network, the pseudo-networks host and none too, by name (as Docker)."""
        with self.lock:
            nets = [view.network(self.h, n) for n in self.store.networks()]
            nets += [view.pseudo_network(self.h, name) for name in PSEUDO_NETWORKS]
        return sorted(nets, key=lambda n: view.natural_key(n["Name"]))

    def network_inspect(self, refs: list[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [self._network_view(r) for r in refs]

    def _network_view(self, ref: str) -> dict[str, Any]:
        if ref not in PSEUDO_NETWORKS and self.store.find_network(ref) is not None:
            return view.network(self.h, self.h.network(ref))
        for name in PSEUDO_NETWORKS:
            if ref == name or (len(ref) >= 3 and \
                    view.pseudo_network_id(self.h, name).startswith(ref)):
                return view.pseudo_network(self.h, name)
        return view.network(self.h, self.h.network(ref))  # not found: its error

    def network_rm(self, refs: list[str]) -> list[dict[str, Any]]:
        """Each network that has no running container attached (a stopped one's
        configuration keeps naming it: its start then says the network is gone)."""
        def remove(ref: str) -> str:
            self.h.networks.remove([ref])
            return ref

        return each(refs, remove)

    def network_prune(self, filters: list[str] | None = None) -> list[str]:
        return self.h.networks.prune(filters)

    def network_connect(self, network: str, container: str, ip: str | None = None,
                        aliases: list[str] | None = None,
                        ip6: str | None = None) -> dict[str, Any]:
        return self.h.containers.connect(network, container, ip, aliases, ip6)

    def network_disconnect(self, network: str, container: str,
                           force: bool = False) -> dict[str, Any]:
        return self.h.containers.disconnect(network, container, force)

    # containers

    def run(self, command: list[str], name: str | None = None,
            networks: list[str] | None = None, ip: str | None = None,
            aliases: list[str] | None = None, hostname: str | None = None,
            ports: list[str] | None = None, detach: bool = False, auto_remove: bool = False,
            dns: list[str] | None = None, cap_add: list[str] | None = None,
            cap_drop: list[str] | None = None, privileged: bool = False,
            user: str | None = None, ip6: str | None = None,
            **options: Any) -> dict[str, Any]:
        """options: the rest of `run`'s flags, as Containers.run names them (env,
        workdir, tty, interactive, labels, add_hosts, dns_search, dns_options, domainname,
        sysctls, mac, expose, publish_all, restart)."""
        return self.h.containers.run(command, name, networks, ip, aliases, hostname, ports,
                                     detach, auto_remove, dns, cap_add, cap_drop, privileged,
                                     user, ip6, **options)

    def started(self, ref: str, pid: int) -> dict[str, Any]:
        return self.h.processes.started(ref, pid)

    def exited(self, ref: str, exit_code: int, pid: int | None = None) -> dict[str, Any]:
        return self.h.processes.exited(ref, exit_code, pid)

    def exec_info(self, ref: str, command: list[str] | None = None,
                  workdir: str = "/", user: str | None = None) -> dict[str, Any]:
        return self.h.processes.exec_info(ref, command, workdir, user)

    def empty(self) -> bool:
        """No container, of any runtime, is recorded (rootless Podman's daemon then
        leaves)."""
        with self.lock:
            return not self.store.containers()

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for c in self.store.containers():
                c = self.h.refresh(c)
                if all or c.status in ("running", "restarting"):
                    out.append(view.container(self.h, c))
            return out

    def inspect(self, refs: list[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [view.container(self.h, self.h.container(r)) for r in refs]

    def logs(self, ref: str, tail: int | str | None = None, timestamps: bool = False,
             since: int = 0, follow: bool = False) -> dict[str, Any]:
        return self.h.processes.logs(ref, tail, timestamps, since, follow)

    # the life of containers: each acts on every target that exists and reports the
    # others, as Docker's commands on several containers do (containers.each)

    def start(self, refs: list[str]) -> list[dict[str, Any]]:
        return each(refs, self.h.lifecycle.start)

    def stop(self, refs: list[str], timeout: float = 10) -> list[dict[str, Any]]:
        return each(refs, lambda ref: self.h.lifecycle.stop(ref, timeout))

    def restart(self, refs: list[str], timeout: float = 10) -> list[dict[str, Any]]:
        return each(refs, lambda ref: self.h.lifecycle.restart(ref, timeout))

    def kill(self, refs: list[str], signal: str = "KILL") -> list[dict[str, Any]]:
        from portway.core.lifecycle import parse_signal

        number = parse_signal(signal)
        return each(refs, lambda ref: self.h.lifecycle.kill(ref, number))

    def wait(self, refs: list[str]) -> list[dict[str, Any]]:
        return each(refs, self.h.lifecycle.wait)

    def rm(self, refs: list[str], force: bool = False) -> list[dict[str, Any]]:
        return self.h.containers.rm(refs, force)

    def port(self, ref: str, port: str | None = None) -> list[str]:
        return self.h.publishing.describe(ref, port)

    def adopt(self) -> tuple[int, list[str]]:
        return self.h.processes.adopt()

    def resume(self) -> list[str]:
        return self.h.lifecycle.resume()

    # seeing and repairing

    def show(self) -> dict[str, Any]:
        with self.lock:
            return view.topology(self)

    def dns_info(self) -> dict[str, Any]:
        with self.lock:
            data = dns_records(self.h)
            by_network = names_by_network(data)
            for net in data["networks"]:
                net["names"] = by_network.get(net["id"], {})
            log: dict[str, Any] = {"log": [], "upstreams": []}
            if self.dns.running():
                try:
                    log = self.dns.request("log")
                except PortwayError:
                    pass
            return {"networks": data["networks"], "log": log.get("log", []),
                    "upstreams": log.get("upstreams", []), "sent": log.get("sent"),
                    "running": self.dns.running()}

    def own_sockets(self) -> set[int]:
        """The inodes of the sockets this daemon listens on: those that hold published
        ports (trace and audit name them as portwayd's)."""
        return self.ports.inodes()

    def trace(self, source: str, destination: str, from_ip: str | None = None,
              live: bool = False, family: int | None = None) -> dict[str, Any]:
        from portway.engine import tracer

        with self.lock:
            return tracer.run(self, source, destination, from_ip, live, family)

    def audit(self, live: bool = False) -> dict[str, Any]:
        from portway.engine import audit

        return audit.run(self, self.state_dir, self.host_netns, live, self.lock)

    def gc(self, dry_run: bool = False) -> list[str]:
        from portway.engine import repair

        with self.lock:
            return repair.gc(self, dry_run)

    # Podman, through netavark's contract (engine/podman.py)

    def podman_setup(self, netns: str, options: Any) -> dict[str, Any]:
        from portway.engine import podman

        with self.lock:
            # `podman network reload` (after a firewall reload flushed everything) tears
            # each container down and sets it up again: its network's rules must be back
            # before its elements go in, as netavark puts its chains back on setup.
            if self.store.networks() and self.h.fw.missing_tables():
                self.gc()
            return podman.setup(self.h, netns, options)

    def podman_teardown(self, netns: str, options: Any) -> dict[str, Any]:
        from portway.engine import podman

        return podman.teardown(self.h, netns, options)

    def podman_create(self, options: Any) -> dict[str, Any]:
        from portway.engine import podman

        return podman.create(self.h, options)

    def podman_firewall_reload(self) -> dict[str, Any]:
        """netavark firewall-reload (after a firewall flush, e.g. firewalld's reload):
        portway's rules and elements put back, with gc's repair of everything else."""
        self.gc()
        return {}

    def podman_update(self, network: str, dns_servers: list[str]) -> dict[str, Any]:
        from portway.engine import podman

        return podman.update(self.h, network, dns_servers)
