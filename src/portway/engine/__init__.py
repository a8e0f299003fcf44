"""The Engine: portway's operations, each validated first, recorded, applied with undo.

The Engine runs in a process that is already inside the host network
namespace (the daemon enters it before starting any thread). Every operation
that changes something holds the engine lock; store writes for an operation
happen in one transaction that commits only after the kernel work succeeded,
so a crash in between leaves no rows, and the kernel objects it may have left
carry this instance's owner tag for `gc` to remove.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pyroute2 import IPRoute

from portway.core import confine, files, firewall, ipam, names, validate
from portway.core.firewall import Published
from portway.core.naming import random_name
from portway.core.ports import format_mapping, host_port_holder, parse_port_specs
from portway.engine import view
from portway.engine.dns import DnsServer, names_by_network
from portway.engine.dns import records as dns_records
from portway.engine.fw import Firewall
from portway.engine.ports import PortReservations
from portway.engine.watch import ProcessWatcher
from portway.errors import (
    Conflict,
    InvalidInput,
    KernelError,
    NotFound,
    PortwayError,
    TeardownErrors,
)
from portway.kernel import links, netns, observe, procs
from portway.kernel.nft import Nft
from portway.model.types import Container, Endpoint, Network, PortMapping
from portway.store.sqlite import SqliteStore

DEFAULT_NETWORK = "portway"
HOST_FILES = ("hosts", "hostname", "resolv.conf")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def fault_point(step: str) -> None:
    """Test-only crash injection: PORTWAY_FAULT=STEP kills the engine at that step."""
    if os.environ.get("PORTWAY_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


class Engine:
    def __init__(self, state_dir: str, host_netns: str | None = None) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.host_netns = host_netns
        os.makedirs(os.path.join(self.state_dir, "containers"), mode=0o700, exist_ok=True)
        self.store = SqliteStore(os.path.join(self.state_dir, "portway.db"))
        self._check_host(host_netns)
        self.instance = self._instance_id()
        self.lock = threading.RLock()
        self._bridge_indexes: dict[str, int] = {}  # bridge name -> ifindex (see _attach)
        self._closed = False
        # Per network, a lower bound of the lowest free address: everything below it is
        # taken, so allocation asks the store about one address, not all of them. Any
        # release lowers it; a rolled-back allocation clears it.
        self._alloc_hint: dict[str, int] = {}
        self.host = IPRoute()
        self.nft = Nft()
        self.fw = Firewall(self.nft, self.instance)
        self.ports = PortReservations()
        _raise_open_files()
        self.tools = confine.Tools(**{name: shutil.which(name) or f"/usr/bin/{name}"
                                      for name in ("unshare", "setpriv", "nsenter")})
        self._ensure_forwarding()
        self.watcher = ProcessWatcher(self._on_exit)
        self.dns = DnsServer(self)

    # set-up

    def _check_host(self, host_netns: str | None) -> None:
        want = host_netns or ""
        with self.store.transaction():
            have = self.store.get_meta("host_netns")
            if have is None:
                self.store.set_meta("host_netns", want)
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

    def _ensure_forwarding(self) -> None:
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

    def close(self) -> None:
        with self.lock:
            self._closed = True  # a process that ends from now on is seen by the next start
        self.watcher.close()
        self.ports.close()
        self.fw.close()
        self.nft.close()
        self.host.close()
        self.store.close()

    def tag(self, kind: str, object_id: str) -> str:
        return names.owner_tag(self.instance, kind, object_id)

    def host_netns_path(self) -> str:
        if self.host_netns:
            return netns.netns_path(self.host_netns)
        return "/proc/1/ns/net"

    # lookups

    def _network(self, ref: str) -> Network:
        net = self.store.find_network(ref)
        if net is None:
            raise NotFound(f"network {ref!r} not found",
                           "list networks with 'portway network ls'")
        return net

    def _container(self, ref: str) -> Container:
        c = self.store.find_container(ref)
        if c is None:
            raise NotFound(f"container {ref!r} not found", "list containers with 'portway ps -a'")
        return self._refresh(c)

    def _own(self, ref: str) -> Container:
        """A container portway runs (not one Podman runs and portway only networks)."""
        c = self._container(ref)
        if c.runtime != "portway":
            raise InvalidInput(f"container {c.name} is run by {c.runtime.capitalize()}; "
                               "portway only networks it",
                               f"manage it with {c.runtime} (e.g. {c.runtime} rm {c.name})")
        return c

    def _refresh(self, c: Container) -> Container:
        """The container with its status brought up to date with its process."""
        if c.runtime == "portway" and c.status == "running" and \
                not procs.is_alive(c.pid, c.pid_start):
            c = replace(c, status="exited", finished=c.finished or now())
            self.store.update_container(c)
        return c

    # networks

    def _taken_ranges(self) -> list[tuple[Any, str]]:
        taken: list[tuple[Any, str]] = [(n.subnet, f"network {n.name}")
                                        for n in self.store.networks()]
        ours = {n.bridge for n in self.store.networks()}
        for iface in links.observe_addresses(self.host):
            if iface.network.prefixlen < 32 or iface.ip.is_loopback:
                taken.append((iface.network, f"host address {iface}"))
        for route, dev in links.observe_routes(self.host):
            if dev not in ours:
                taken.append((route, f"host route {route} dev {dev}"))
        return taken

    def network_create(self, name: str, driver: str = "bridge", subnet: str | None = None,
                       gateway: str | None = None, ip_range: str | None = None,
                       internal: bool = False, mtu: int | str | None = None,
                       options: list[str] | None = None,
                       labels: list[str] | None = None) -> dict[str, Any]:
        validate.check_network_name(name)
        return view.network(self, self._network_create(
            name, driver, subnet, gateway, ip_range, internal, mtu, options, labels))

    def _network_create(self, name: str, driver: str, subnet: str | None, gateway: str | None,
                        ip_range: str | None, internal: bool, mtu: int | str | None,
                        options: list[str] | None, labels: list[str] | None) -> Network:
        if driver != "bridge":
            raise InvalidInput(f"unsupported network driver {driver!r}",
                               "use --driver bridge (the default)")
        opts = validate.check_options(validate.parse_key_values("--opt", options or []))
        labs = validate.parse_key_values("--label", labels or [])
        if mtu is None and "com.docker.network.driver.mtu" in opts:
            mtu = opts["com.docker.network.driver.mtu"]
        mtu_value = validate.parse_mtu(mtu) if mtu is not None else 1500
        if subnet is None and (gateway is not None or ip_range is not None):
            raise InvalidInput("--gateway and --ip-range need --subnet",
                               "give the subnet they belong to")
        with self.lock:
            if self.store.name_taken("networks", name):
                raise Conflict(f"network {name!r} already exists",
                               f"choose another name or remove it with "
                               f"'portway network rm {name}'")
            taken = self._taken_ranges()
            if subnet is None:
                net_addr = ipam.pick_subnet(taken)
            else:
                net_addr = validate.parse_subnet(subnet)
                ipam.check_subnet_free(net_addr, taken)
            gw = (validate.check_host_address("gateway",
                                              validate.parse_address("gateway", gateway),
                                              net_addr)
                  if gateway else ipam.default_gateway(net_addr))
            rng = validate.parse_ip_range(ip_range, net_addr) if ip_range else None
            network_id = names.new_id()
            network = Network(id=network_id, name=name, subnet=net_addr, gateway=gw,
                              bridge=names.bridge_name(network_id), driver=driver, ip_range=rng,
                              internal=internal, mtu=mtu_value, options=opts, labels=labs,
                              created=now())
            self._install_network(network)
            self._publish_dns()
            return network

    def _install_network(self, network: Network) -> None:
        """The row, the bridge and the rules of a validated network: all or nothing."""
        with self.store.transaction(), ExitStack() as undo:
            self.store.add_network(network)
            undo.callback(links.delete_link, self.host, network.bridge)
            self._ensure_bridge(network)
            fault_point("network_create.bridge")
            undo.callback(self.fw.remove_network, network)
            self.fw.add_network(network)
            fault_point("network_create.firewall")
            undo.pop_all()

    def _nft_teardown(self, cmds: list[dict[str, Any]]) -> None:
        """Delete what exists of cmds (missing counts as removed)."""
        self.fw.teardown(cmds)

    def _ensure_bridge(self, network: Network) -> bool:
        _, created = links.ensure_bridge(
            self.host, network.bridge, names.bridge_mac(network.id), network.mtu,
            network.gateway, network.subnet.prefixlen, self.tag("network", network.id))
        return created

    def network_ls(self) -> list[dict[str, Any]]:
        return [view.network(self, n) for n in self.store.networks()]

    def network_inspect(self, refs: list[str]) -> list[dict[str, Any]]:
        return [view.network(self, self._network(r)) for r in refs]

    def network_rm(self, refs: list[str]) -> list[str]:
        with self.lock:
            nets = [self._network(r) for r in refs]
            for net in nets:
                users = self.store.endpoints(network_id=net.id)
                if users:
                    who = ", ".join(sorted(self._container(e.container_id).name for e in users))
                    raise Conflict(f"network {net.name} has containers attached: {who}",
                                   f"remove them first (portway rm -f {who.split(',')[0]}) or "
                                   f"disconnect them")
            removed = []
            for net in nets:
                with self.store.transaction():
                    self.store.delete_network(net.id)
                    fault_point("network_rm.row")
                    self.fw.remove_network(net)
                    links.delete_link(self.host, net.bridge)
                removed.append(net.name)
            if not self.store.networks():
                # The shared tables go with the last network of every portway here.
                self.fw.release()
            self._publish_dns()
            return removed

    def network_prune(self) -> list[str]:
        with self.lock:
            unused = [n.name for n in self.store.networks()
                      if n.name != DEFAULT_NETWORK and not self.store.endpoints(network_id=n.id)]
            return self.network_rm(unused) if unused else []

    # containers

    def run(self, command: list[str], name: str | None = None,
            networks: list[str] | None = None, ip: str | None = None,
            aliases: list[str] | None = None, hostname: str | None = None,
            ports: list[str] | None = None, detach: bool = False, auto_remove: bool = False,
            dns: list[str] | None = None, cap_add: list[str] | None = None,
            cap_drop: list[str] | None = None, privileged: bool = False,
            user: str | None = None) -> dict[str, Any]:
        """Create a container with its networking ready; with detach, start its command.

        Without detach the caller starts the command itself (the CLI becomes it)
        and reports the pid through started() and the end through exited().
        """
        cmd = validate.check_command(command)
        confine.capabilities(cap_add or [], cap_drop or [], privileged)  # names checked
        if user is not None:
            procs.resolve_identity(confine.parse_user(user))
        if name is not None:
            validate.check_name("container", name)
        if hostname is not None:
            validate.check_hostname(hostname)
        alias_list = [validate.check_name("alias", a) for a in aliases or []]
        port_maps = parse_port_specs(ports or [])
        dns_servers = validate.check_dns_servers(dns or [])
        refs = list(dict.fromkeys(networks or []))
        if detach and shutil.which(cmd[0], path=procs.container_env(None)["PATH"]) is None:
            raise InvalidInput(f"command not found: {cmd[0]!r}",
                               "give a program that exists on this host (or its full path)")
        special = [r for r in refs if r in ("host", "none")]
        if special and len(refs) > 1:
            raise InvalidInput(f"--network {special[0]} cannot be combined with other networks",
                               "give it alone")
        mode = special[0] if special else "bridge"
        if mode != "bridge" and (ip or alias_list):
            raise InvalidInput(f"--ip and --alias need a bridge network, not --network {mode}",
                               "drop them, or pick a user network")
        if mode != "bridge" and port_maps:
            raise InvalidInput(f"-p cannot publish ports with --network {mode}",
                               "drop -p, or use a bridge network")
        if ip is not None and (mode != "bridge" or len(refs) != 1):
            raise InvalidInput("--ip needs exactly one user network", "add --network NAME")
        with self.lock:
            if name is not None and self.store.name_taken("containers", name):
                holder = self._container(name)
                raise Conflict(f"container name {name!r} is already in use by "
                               f"{holder.short_id}",
                               f"remove it (portway rm -f {name}) or choose another name")
            nets: list[Network] = []
            if mode == "bridge":
                nets = [self._default_network()] if not refs else [self._network(r) for r in refs]
            if port_maps:
                if nets[0].internal:
                    raise InvalidInput(f"network {nets[0].name} is internal: its containers "
                                       "cannot publish ports",
                                       "publish from a container on a non-internal network")
                port_maps = self._resolve_ports(port_maps)
            cid = names.new_id()
            cname = name or random_name(self.store.container_names())
            container = Container(
                id=cid, name=cname, hostname=hostname or cid[:12], command=cmd,
                netns=netns.netns_path(names.netns_name(cid)) if mode != "host"
                else self.host_netns_path(),
                network_mode=mode,  # type: ignore[arg-type]
                auto_remove=auto_remove, detach=detach, ports=port_maps, dns=dns_servers,
                created=now(), cap_add=tuple(cap_add or ()), cap_drop=tuple(cap_drop or ()),
                privileged=privileged, user=user or "")
            with self.store.transaction(), ExitStack() as undo:
                undo.callback(self._release_ports, port_maps)
                undo.callback(self._alloc_hint.clear)  # a rollback frees what was allocated
                self.store.add_container(container)
                endpoints = []
                for index, net in enumerate(nets):
                    endpoints.append(self._new_endpoint(
                        container, net, index, ip if index == 0 else None, alias_list))
                if mode != "host":
                    undo.callback(self._teardown_kernel, container, endpoints)
                    self._build_sandbox(container, endpoints)
                fault_point("run.sandbox")
                published = self._published(container, endpoints)
                if published:
                    undo.callback(self.fw.remove_ports, published)
                    self.fw.add_ports(published)
                    fault_point("run.ports")
                if detach:
                    container = self._start(container)
                    fault_point("run.started")
                undo.pop_all()
            if nets:
                self._publish_dns(container.id)
            return self._sandbox_info(container)

    def _default_network(self) -> Network:
        net = self.store.find_network(DEFAULT_NETWORK)
        if net is None:
            net = self._network_create(DEFAULT_NETWORK, "bridge", None, None, None, False,
                                       None, None, None)
        return net

    def _resolve_ports(self, wanted: tuple[PortMapping, ...],
                       hold: bool = True) -> tuple[PortMapping, ...]:
        """Host ports checked against portway's publications and the host's sockets, and
        held (a bound socket each, engine/ports.py) unless the runtime holds them itself
        (Podman's conmon does); a host port of 0 becomes a free one from the ephemeral
        range. All or nothing: on an error nothing stays held. Linear in the ports asked
        for and the ports published."""
        by_port: dict[tuple[str, int], list[tuple[PortMapping, str]]] = {}
        for c in self.store.containers():
            for p in c.ports:
                by_port.setdefault((p.protocol, p.host_port), []).append(
                    (p, f"container {c.name} ({format_mapping(p)})"))
        listening: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for proto in ("tcp", "udp"):
            for address, port in observe.listening(proto):
                listening.setdefault((proto, port), []).append((address, port))
        gateways = self._portway_addresses()
        low, high = observe.ephemeral_range()

        def holder_of(p: PortMapping) -> str | None:
            for other, who in by_port.get((p.protocol, p.host_port), []):
                if other.host_ip is None or p.host_ip is None or other.host_ip == p.host_ip:
                    return who
            sock = host_port_holder(listening.get((p.protocol, p.host_port), []),
                                    str(p.host_ip) if p.host_ip else None, p.host_port)
            return None if sock is None else f"a socket listening on {sock} in the host " \
                                              "namespace"

        def held_by(p: PortMapping) -> str | None:
            """Reserve p; None, or who has it (the kernel says so when no socket shows)."""
            if not hold:
                return None
            try:
                self.ports.reserve(p)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise InvalidInput(f"cannot publish on {p.host_ip}: cannot assign "
                                       "requested address (it is not an address of this host)",
                                       "give one of the host's addresses (ip addr), or none "
                                       "for all of them") from None
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise Conflict(f"cannot hold host port {p.host_port}/{p.protocol}: "
                                   "portwayd has reached its open-file limit (each published "
                                   "port holds a socket)", "publish fewer ports, or raise "
                                   "the limit (LimitNOFILE, ulimit -n) and restart "
                                   "portwayd") from None
                if exc.errno != errno.EADDRINUSE:
                    raise KernelError(f"cannot hold host port {p.host_port}/{p.protocol}: "
                                      f"{exc.strerror}", "try again") from None
                return "a socket in the host namespace (another portway, or a process that " \
                       f"is not listening: ss -aenp 'sport = :{p.host_port}')"
            return None

        out: list[PortMapping] = []
        try:
            for p in wanted:
                if p.host_ip is not None and p.host_ip in gateways:
                    raise InvalidInput(f"cannot publish on {p.host_ip}: it is the gateway of "
                                       "a portway network",
                                       "publish on a host address, or on all of them")
                if p.host_port == 0:
                    for port in range(low, high + 1):
                        candidate = replace(p, host_port=port)
                        if holder_of(candidate) is None and held_by(candidate) is None:
                            p = candidate
                            break
                    else:
                        raise Conflict(f"no free {p.protocol} port is left in {low}-{high}",
                                       "give the host port explicitly")
                else:
                    who = holder_of(p) or held_by(p)
                    if who is not None:
                        raise Conflict(f"host port {p.host_port}/{p.protocol} is already "
                                       f"taken by {who}",
                                       "pick another host port, or free that one")
                by_port.setdefault((p.protocol, p.host_port), []).append((p, "this container"))
                out.append(p)
        except BaseException:
            self._release_ports(out)
            raise
        return tuple(out)

    def _release_ports(self, ports: tuple[PortMapping, ...] | list[PortMapping]) -> None:
        for p in ports:
            self.ports.release(p)

    def _portway_addresses(self) -> set[Any]:
        """The addresses on links any portway here owns (its bridges' gateways)."""
        out: set[Any] = set()
        for link in links.observe_links(self.host):
            if names.parse_owner_tag(link.alias) is not None:
                out |= {a.ip for a in links.observe_addresses(self.host, link.index)}
        return out

    def _published(self, c: Container, endpoints: list[Endpoint] | None = None
                   ) -> list[Published]:
        """c's port mappings, resolved to the address of its first endpoint."""
        if not c.ports:
            return []
        eps = endpoints if endpoints is not None else self.store.endpoints(container_id=c.id)
        if not eps:
            return []
        first = min(eps, key=lambda e: e.ifname)
        return [Published(container_id=c.id, protocol=p.protocol, host_port=p.host_port,
                          container_ip=first.address, container_port=p.container_port,
                          host_ip=p.host_ip) for p in c.ports]

    def all_published(self) -> list[Published]:
        out: list[Published] = []
        for c in self.store.containers():
            out.extend(self._published(c))
        return out

    def port(self, ref: str) -> list[str]:
        with self.lock:
            c = self._container(ref)
            return [f"{p.container_port}/{p.protocol} -> "
                    f"{p.host_ip or '0.0.0.0'}:{p.host_port}" for p in c.ports]

    def _new_endpoint(self, container: Container, net: Network, index: int,
                      ip: str | None, aliases: list[str], ifname: str | None = None,
                      mac: str | None = None) -> Endpoint:
        if ip is not None:
            address = validate.check_host_address(
                "--ip", validate.parse_address("--ip", ip), net.subnet)
            if address == net.gateway:
                raise Conflict(f"--ip {address} is the gateway of network {net.name}",
                               "pick another address")
            if self.store.address_in_use(net.id, address):
                holder = next(e for e in self.store.endpoints(network_id=net.id)
                              if e.address == address)
                other = self.store.find_container(holder.container_id)
                raise Conflict(f"address {address} is already in use on network {net.name}"
                               + (f" by {other.name}" if other else ""),
                               "pick another --ip, or omit it")
        else:
            address = ipam.first_free(net.subnet, net.gateway,
                                      lambda a: self.store.address_in_use(net.id, a),
                                      net.ip_range, self._alloc_hint.get(net.id, 0))
            self._alloc_hint[net.id] = int(address) + 1
        eid = names.new_id()
        endpoint = Endpoint(
            id=eid, container_id=container.id, network_id=net.id,
            ifname=ifname or names.container_ifname(index),
            host_ifname=names.host_veth_name(eid), address=address,
            prefixlen=net.subnet.prefixlen, mac=mac or names.mac_for(address),
            aliases=tuple(aliases))
        self.store.add_endpoint(endpoint)
        return endpoint

    def _build_sandbox(self, container: Container, endpoints: list[Endpoint]) -> None:
        """The container's namespace, its endpoints and its /etc files.

        The anti-spoofing entries and the /etc files go on a helper thread while this
        one does the netlink work: neither depends on the other (a port without its
        entries sends nothing, so their order does not matter), and each is most of a
        millisecond of waiting on the kernel and the disk."""
        ns_name = os.path.basename(container.netns)
        tag = self.tag("container", container.id)
        etc = self._etc_files(container, endpoints)
        guard = firewall.render_guard(endpoints, self.instance)

        def beside() -> None:
            if guard:
                self.fw.apply(guard)
            if etc is not None:
                netns.write_etc_netns(ns_name, etc)

        helper = netns.Beside(beside)
        try:
            cont = netns.create_netns(ns_name, lambda ipr: links.setup_loopback(ipr, tag))
            try:
                routed = False
                for endpoint in endpoints:
                    net = self._network(endpoint.network_id)
                    with_route = not routed and not net.internal
                    self._attach(cont, container, endpoint, net, with_route, guarded=True)
                    routed = routed or with_route
            finally:
                cont.close()
        except BaseException:
            helper.join(quiet=True)  # done before the caller's undo touches the same
            raise
        helper.join()

    def _attach(self, cont: IPRoute, container: Container, endpoint: Endpoint, net: Network,
                default_route: bool, guarded: bool = False) -> None:
        """One endpoint into the container's namespace; guarded: its anti-spoofing
        entries are being added by the caller."""
        if not guarded:  # a port without them drops every frame: before or after is safe
            self.fw.add_guard([endpoint])
        fd = os.open(container.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            cached = self._bridge_indexes.get(net.bridge)
            bridge_index = cached or self._bridge_index(net)
            while True:
                try:
                    links.ensure_endpoint(self.host, cont, fd, links.EndpointSpec(
                        host_ifname=endpoint.host_ifname, ifname=endpoint.ifname,
                        mac=endpoint.mac, mtu=net.mtu, address=endpoint.address,
                        prefixlen=endpoint.prefixlen,
                        gateway=net.gateway if default_route else None,
                        bridge_index=bridge_index, tag=self.tag("endpoint", endpoint.id),
                        hairpin=bool(container.ports)))
                    return
                except PortwayError as exc:
                    if cached is not None and self._bridge_index(net) != cached:
                        # The bridge was made again since its index was remembered: again,
                        # with its new one (a pair made meanwhile is reused as it is).
                        cached, bridge_index = None, self._bridge_indexes[net.bridge]
                        continue
                    if guarded:  # the caller's undo removes the entries, once they are in
                        links.delete_link(self.host, endpoint.host_ifname)
                    else:
                        self._detach_host([endpoint])
                    raise exc.wrap(f"attach {container.name} to {net.name}") from None
        finally:
            os.close(fd)

    def _bridge_index(self, net: Network) -> int:
        """The bridge's ifindex, looked up (the bridge made if missing) and remembered.

        A remembered index saves a netlink round trip per endpoint. It goes stale only
        if the bridge is deleted; the kernel does not give a deleted link's index to
        another one soon (indexes count up), so a stale index fails (the link is gone)
        and _attach looks it up again."""
        bridge = links.observe_link(self.host, net.bridge)
        if bridge is None:
            self._ensure_bridge(net)
            bridge = links.observe_link(self.host, net.bridge)
            assert bridge is not None
        self._bridge_indexes[net.bridge] = bridge.index
        return bridge.index

    def host_resolv_path(self) -> str:
        """The host namespace's resolv.conf, as `ip netns exec` would pick it."""
        if self.host_netns:
            own = f"/etc/netns/{self.host_netns}/resolv.conf"
            if os.path.exists(own):
                return own
        return "/etc/resolv.conf"

    def _host_resolv(self) -> str:
        try:
            with open(self.host_resolv_path()) as f:
                return f.read()
        except OSError:
            return ""

    def _publish_dns(self, container_id: str | None = None) -> None:
        """Records to the DNS server: one container's, or all of them. Its failure never
        undoes the operation (gc retries)."""
        try:
            if container_id is None:
                self.dns.publish()
            else:
                self.dns.update(container_id)
        except (PortwayError, OSError) as exc:
            print(f"portwayd: DNS records not updated: {exc}", file=sys.stderr, flush=True)

    def trace(self, source: str, destination: str, from_ip: str | None = None,
              live: bool = False) -> dict[str, Any]:
        from portway.engine import tracer

        with self.lock:
            return tracer.run(self, source, destination, from_ip, live)

    # Podman, through netavark's contract (engine/podman.py)

    def podman_setup(self, netns: str, options: Any) -> dict[str, Any]:
        from portway.engine import podman

        return podman.setup(self, netns, options)

    def podman_teardown(self, netns: str, options: Any) -> dict[str, Any]:
        from portway.engine import podman

        return podman.teardown(self, netns, options)

    def podman_create(self, options: Any) -> dict[str, Any]:
        from portway.engine import podman

        return podman.create(self, options)

    def podman_update(self, network: str, dns_servers: list[str]) -> dict[str, Any]:
        from portway.engine import podman

        return podman.update(self, network, dns_servers)

    def show(self) -> dict[str, Any]:
        with self.lock:
            return view.topology(self)

    def dns_info(self) -> dict[str, Any]:
        with self.lock:
            data = dns_records(self)
            names = names_by_network(data)
            for net in data["networks"]:
                net["names"] = names.get(net["id"], {})
            log: dict[str, Any] = {"log": [], "upstreams": []}
            if self.dns.running():
                try:
                    log = self.dns.request("log")
                except PortwayError:
                    pass
            return {"networks": data["networks"], "log": log.get("log", []),
                    "upstreams": log.get("upstreams", []), "sent": log.get("sent"),
                    "running": self.dns.running()}

    def _write_files(self, container: Container) -> None:
        etc = self._etc_files(container, self.store.endpoints(container_id=container.id))
        if etc is not None:
            netns.write_etc_netns(os.path.basename(container.netns), etc)

    def _etc_files(self, container: Container,
                   endpoints: list[Endpoint]) -> dict[str, str] | None:
        """The container's /etc/hosts, hostname and resolv.conf (None: it has none)."""
        if container.network_mode == "host" or container.runtime != "portway":
            return None  # Podman writes its containers' /etc files itself
        addresses = [e.address for e in endpoints]
        nameserver = None
        if endpoints:
            first = self.store.find_network(min(endpoints, key=lambda e: e.ifname).network_id)
            nameserver = str(first.gateway) if first else None
        return {
            "hosts": files.render_hosts(container.hostname, container.name, addresses),
            "hostname": files.render_hostname(container.hostname),
            "resolv.conf": files.container_resolv_conf(self._host_resolv(), nameserver),
        }

    def _binds(self, container: Container) -> list[tuple[str, str]]:
        if container.network_mode == "host":
            return []
        directory = os.path.join(netns.ETC_NETNS, os.path.basename(container.netns))
        return [(os.path.join(directory, f), f"/etc/{f}") for f in HOST_FILES]

    def _sandbox_info(self, container: Container) -> dict[str, Any]:
        warnings = []
        if container.network_mode == "host":
            warnings.append("--network host: the container shares the host's network "
                            "namespace; it is not isolated and can bind any host port")
        if container.privileged:
            warnings.append(confine.PRIVILEGED_WARNING)
        conf = self._confinement(container)
        return {"Id": container.id, "Name": container.name, "SandboxKey": container.netns,
                "Hostname": None if container.network_mode == "host" else container.hostname,
                "Binds": self._binds(container), "Env": self._env(container, conf),
                "Argv": confine.launch_argv(conf, self.tools, list(container.command)),
                "SysfsReadOnly": not container.privileged,
                "Pid": container.pid, "NetworkMode": container.network_mode,
                "Warning": "\n".join(warnings)}

    def _confinement(self, c: Container) -> confine.Confinement:
        """What c's processes may do, its --user looked up now (as Docker does at start)."""
        return confine.Confinement(
            caps=confine.capabilities(c.cap_add, c.cap_drop, c.privileged),
            privileged=c.privileged,
            identity=procs.resolve_identity(confine.parse_user(c.user)) if c.user else None)

    def _env(self, c: Container, conf: confine.Confinement) -> dict[str, str]:
        return procs.container_env(None if c.network_mode == "host" else c.hostname,
                                   conf.identity.home if conf.identity else "/root")

    def _log_path(self, container: Container) -> str:
        directory = os.path.join(self.state_dir, "containers", container.id)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, "output.log")

    def _start(self, container: Container) -> Container:
        conf = self._confinement(container)
        child = procs.spawn_detached(
            container.netns, None if container.network_mode == "host" else container.hostname,
            self._binds(container), confine.launch_argv(conf, self.tools,
                                                        list(container.command)),
            self._log_path(container), self._env(container, conf),
            sysfs_readonly=not container.privileged)
        started = procs.start_time(child.pid)
        container = replace(container, status="running", pid=child.pid, pid_start=started,
                            started=now())
        self.store.update_container(container)
        # The watcher reaps it; Popen must not (its handle is dropped unwaited on purpose).
        child.returncode = 0
        self.watcher.watch(container.id, child.pid, child=True)
        return container

    def started(self, ref: str, pid: int) -> dict[str, Any]:
        """A foreground `run` reports the pid of the command it became."""
        with self.lock:
            c = self._container(ref)
            c = replace(c, status="running", pid=pid, pid_start=procs.start_time(pid),
                        started=now())
            self.store.update_container(c)
        self.watcher.watch(c.id, pid, child=False)
        return {"Id": c.id}

    def exited(self, ref: str, exit_code: int) -> dict[str, Any]:
        """A foreground `run` reports its command's exit status."""
        with self.lock:
            c = self.store.find_container(ref)
            if c is not None:
                self.store.update_container(replace(c, status="exited", exit_code=exit_code,
                                                    finished=c.finished or now()))
        return {}

    def _on_exit(self, container_id: str, pid: int, code: int | None) -> None:
        with self.lock:
            if self._closed:
                return
            c = self.store.find_container(container_id)
            if c is None or c.pid != pid:
                return
            if c.status == "running" or c.exit_code is None:
                c = replace(c, status="exited", finished=c.finished or now(),
                            exit_code=code if code is not None else c.exit_code)
                self.store.update_container(c)
            if c.auto_remove:
                try:
                    self._remove(c)
                except PortwayError:
                    pass  # gc will finish it

    def exec_info(self, ref: str, command: list[str] | None = None,
                  workdir: str = "/") -> dict[str, Any]:
        """How to run a command in a running container: the argv that joins its first
        process's namespaces (PID namespace included) with the container's privileges."""
        with self.lock:
            c = self._own(ref)
            if c.status != "running":
                raise Conflict(f"container {c.name} is not running", "start a new one with run")
            conf = self._confinement(c)
        # `run -d` returns before its helper has entered the namespaces and exec'd the
        # command: joining the namespaces before then would join the host's.
        init = procs.wait_init(c.pid, (self.tools.unshare, self.tools.setpriv))
        if not init:
            raise Conflict(f"container {c.name} is not running (or its command has not "
                           "started yet)", "see 'portway ps' and 'portway logs', and try again")
        return {"Id": c.id, "Pid": init, "Env": self._env(c, conf),
                "Argv": confine.exec_argv(conf, self.tools, init, workdir,
                                          list(command or []))}

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for c in self.store.containers():
                c = self._refresh(c)
                if all or c.status == "running":
                    out.append(view.container(self, c))
            return out

    def inspect(self, refs: list[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [view.container(self, self._container(r)) for r in refs]

    def logs(self, ref: str) -> dict[str, Any]:
        with self.lock:
            c = self._container(ref)
        try:
            with open(self._log_path(c), errors="replace") as f:
                return {"Log": f.read()}
        except FileNotFoundError:
            return {"Log": ""}

    def stop(self, refs: list[str], timeout: float = 10) -> list[str]:
        with self.lock:
            targets = [self._own(r) for r in refs]
        for c in targets:
            sent = self._stop_process(c, timeout)
            if sent:
                self._note_signal_exit(c, sent)
        return [c.name for c in targets]

    def _stop_process(self, c: Container, timeout: float) -> int:
        """SIGTERM, then SIGKILL after timeout; returns the last signal sent (0: none)."""
        if not procs.signal_process(c.pid, c.pid_start, signal.SIGTERM):
            return 0
        deadline = time.monotonic() + max(timeout, 0)
        while time.monotonic() < deadline and procs.is_alive(c.pid, c.pid_start):
            time.sleep(0.01)
        if procs.signal_process(c.pid, c.pid_start, signal.SIGKILL):
            self._wait_gone(c)
            return signal.SIGKILL
        return signal.SIGTERM

    def _note_signal_exit(self, c: Container, sig: int) -> None:
        """An adopted process's status is not ours to read: record the signal we sent."""
        time.sleep(0.02)  # let the watcher record a status it can read
        with self.lock:
            current = self.store.find_container(c.id)
            if current is not None and current.pid == c.pid and current.exit_code is None:
                self.store.update_container(replace(
                    current, status="exited", exit_code=128 + sig,
                    finished=current.finished or now()))

    @staticmethod
    def _wait_gone(c: Container, limit: float = 5.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and procs.is_alive(c.pid, c.pid_start):
            time.sleep(0.005)

    def rm(self, refs: list[str], force: bool = False) -> list[str]:
        with self.lock:
            targets = [self._own(r) for r in refs]
            for c in targets:
                if c.status == "running" and not force:
                    raise Conflict(f"container {c.name} is running",
                                   f"stop it first (portway stop {c.name}) or use rm -f")
            for c in targets:
                self._remove(c)
            return [c.name for c in targets]

    def _remove(self, c: Container) -> None:
        """Processes, endpoints, namespace, files, rows: each step even if one fails."""
        errors: list[str] = []
        if procs.signal_process(c.pid, c.pid_start, signal.SIGKILL):
            self._wait_gone(c)
        endpoints = self.store.endpoints(container_id=c.id)
        published = self._published(c, endpoints)
        if published:
            self.fw.remove_ports(published)
        self._release_ports(c.ports)
        fault_point("rm.ports")
        try:
            self._teardown_kernel(c, endpoints)
        except TeardownErrors as exc:
            errors.extend(exc.errors)
        fault_point("rm.kernel")
        self._released(endpoints)
        shutil.rmtree(os.path.join(self.state_dir, "containers", c.id), ignore_errors=True)
        with self.store.transaction():
            self.store.delete_container(c.id)
        if endpoints:
            self._publish_dns(c.id)
        if errors:
            raise TeardownErrors(f"remove {c.name}", errors)

    def _released(self, endpoints: list[Endpoint]) -> None:
        for e in endpoints:
            hint = self._alloc_hint.get(e.network_id)
            if hint is not None and int(e.address) < hint:
                self._alloc_hint[e.network_id] = int(e.address)

    def _detach_host(self, endpoints: list[Endpoint]) -> None:
        """The host ends of endpoints, and the anti-spoofing entries for them."""
        self.fw.remove_guard(endpoints)
        for e in endpoints:
            links.delete_link(self.host, e.host_ifname)

    def _teardown_kernel(self, c: Container, endpoints: list[Endpoint]) -> None:
        if c.network_mode == "host":
            return
        errors: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = []
        inode = procs.netns_inode(c.netns)
        steps.append(("kill processes", lambda: procs.kill_netns_processes(inode)))
        steps.append(("delete endpoints", lambda: self._detach_host(endpoints)))
        steps.append(("delete namespace",
                      lambda: netns.delete_netns(os.path.basename(c.netns))))
        for what, step in steps:
            try:
                step()
            except (PortwayError, OSError) as exc:
                errors.append(f"{what}: {exc}")
        if errors:
            raise TeardownErrors(f"tear down {c.name}", errors)

    # attach and detach running containers

    def network_connect(self, network: str, container: str, ip: str | None = None,
                        aliases: list[str] | None = None) -> dict[str, Any]:
        alias_list = [validate.check_name("alias", a) for a in aliases or []]
        with self.lock:
            net = self._network(network)
            c = self._own(container)
            if c.network_mode != "bridge":
                raise InvalidInput(f"container {c.name} uses --network {c.network_mode}",
                                   "only containers on bridge networks can be connected")
            current = self.store.endpoints(container_id=c.id)
            if any(e.network_id == net.id for e in current):
                raise Conflict(f"container {c.name} is already connected to {net.name}",
                               "nothing to do")
            if not netns.netns_exists(os.path.basename(c.netns)):
                raise Conflict(f"container {c.name} has lost its network namespace",
                               "run 'portway gc' to repair it")
            used_if = {e.ifname for e in current}
            index = next(i for i in range(len(current) + 1)
                         if names.container_ifname(i) not in used_if)
            cont = netns.open_ipr(c.netns)
            try:
                with self.store.transaction():
                    endpoint = self._new_endpoint(c, net, index, ip, alias_list)
                    want_route = not net.internal and not links.has_default_route(cont)
                    self._attach(cont, c, endpoint, net, want_route)
                    fault_point("connect.attach")
            except BaseException:
                self._alloc_hint.clear()  # the rollback freed the address again
                raise
            finally:
                cont.close()
            self._write_files(c)
            self._publish_dns(c.id)
            return {"Id": c.id, "Network": net.name, "IPAddress": str(endpoint.address)}

    def network_disconnect(self, network: str, container: str,
                           force: bool = False) -> dict[str, Any]:
        with self.lock:
            net = self._network(network)
            c = self._own(container)
            current = self.store.endpoints(container_id=c.id)
            mine = [e for e in current if e.network_id == net.id]
            if not mine:
                raise NotFound(f"container {c.name} is not connected to {net.name}",
                               "see its networks with 'portway inspect'")
            endpoint = mine[0]
            remaining = [e for e in current if e.id != endpoint.id]
            # Published ports follow the container's first endpoint: move them if needed.
            before, after = self._published(c, current), self._published(c, remaining)
            with self.store.transaction():
                self.store.delete_endpoint(endpoint.id)
                if before != after:
                    self.fw.remove_ports(before)
                    self.fw.add_ports(after)
                self._detach_host([endpoint])
                fault_point("disconnect.detach")
            self._released([endpoint])
            self._reroute(c, remaining)
            self._write_files(c)
            self._publish_dns(c.id)
            return {"Id": c.id, "Network": net.name}

    def _reroute(self, c: Container, remaining: list[Endpoint]) -> None:
        """After a detach, give the container a default route again if it lost it."""
        if not netns.netns_exists(os.path.basename(c.netns)):
            return
        cont = netns.open_ipr(c.netns)
        try:
            if links.has_default_route(cont):
                return
            for e in remaining:
                net = self._network(e.network_id)
                if not net.internal:
                    links.set_default_route(cont, e.ifname, net.gateway)
                    return
        finally:
            cont.close()

    def adopt(self) -> int:
        """After a (re)start: watch the running containers' processes again, and hold
        their published ports again (one that cannot be held is `doctor`'s to report)."""
        count = 0
        with self.lock:
            for c in self.store.containers():
                for p in c.ports if c.runtime == "portway" else ():
                    try:
                        self.ports.reserve(p)
                    except OSError:
                        pass
                c = self._refresh(c)
                if c.status == "running" and c.runtime == "portway":
                    self.watcher.watch(c.id, c.pid, child=False)
                    count += 1
        return count

    # repair

    def gc(self, dry_run: bool = False) -> list[str]:
        from portway.engine import repair

        with self.lock:
            return repair.gc(self, dry_run)
