"""Containers: what `run`, `start`, `rm`, `network connect` and `disconnect` do, step by
step, what a stopped container gives back (release), and the one API by which a runtime
that makes its own sandboxes (Podman) has them networked: attach_sandbox / detach_sandbox.

Rules of this module:
1. Validate everything, then touch the kernel: every argument is checked before the
   first kernel write, so bad input changes nothing.
2. Register the undo before the step; the store transaction commits only after the
   kernel work succeeded.
3. Removal is exhaustive: every step runs even if one fails, errors are raised
   together, and removing twice is harmless.
4. Nothing here renders rules or calls the kernel: that is the other services' work.
5. A container's networking exists while it runs (`networked`); its configuration per
   network (EndpointConfig) exists from run to rm, and is what start attaches again.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from portway.core import gateways, names, runopts, validate
from portway.core import lifecycle as rules
from portway.core.naming import random_name
from portway.core.overlay import RACES, AddressRaced
from portway.core.ports import default_binding, parse_port_specs
from portway.engine.context import fault_point, now
from portway.engine.networks import DEFAULT_NETWORK
from portway.engine.sandboxes import host_hostname
from portway.errors import Conflict, InvalidInput, NotFound, PortwayError, TeardownErrors
from portway.model.types import (
    Container,
    Endpoint,
    EndpointConfig,
    Network,
    PortMapping,
    Route,
    RunConfig,
)

if TYPE_CHECKING:
    from portway.core.firewall import Published
    from portway.engine.context import Host
    from portway.engine.dns import Announced
    from portway.engine.sandboxes import Early


P = ParamSpec("P")
T = TypeVar("T")


def raced(fn: Callable[P, T]) -> Callable[P, T]:
    """fn, made again where it lost an overlay address to another host's claim at the
    same moment (AddressRaced: what it did was undone whole, and the address is skipped
    now, so the next attempt picks another); the last loss is said as such."""
    @wraps(fn)
    def attempts(*args: P.args, **kwargs: P.kwargs) -> T:
        for _ in range(RACES - 1):
            try:
                return fn(*args, **kwargs)
            except AddressRaced as exc:
                print(f"portwayd: {exc.message}: set up again with another",
                      file=sys.stderr, flush=True)
        return fn(*args, **kwargs)
    return attempts


def each(refs: list[str], act: Callable[[str], object]) -> list[dict[str, Any]]:
    """act on every target, as Docker's commands on several containers do: each one's
    result ({"Ref", "Result"}) or error ({"Ref", "error", "hint", "exit_code"}), in order;
    a target that fails does not stop the others."""
    out: list[dict[str, Any]] = []
    for ref in refs:
        try:
            out.append({"Ref": ref, "Result": act(ref)})
        except PortwayError as exc:
            out.append({"Ref": ref, **exc.to_dict()})
    return out


@dataclass(frozen=True)
class Attachment:
    """One network a runtime's sandbox is to be plugged into, as the runtime asks."""

    network: Network
    ips: tuple[str, ...] = ()  # at most one per family
    aliases: tuple[str, ...] = ()
    ifname: str | None = None
    mac: str | None = None
    host_ifname: str | None = None  # the host end's name (None: portway's own)
    # None: portway's rule (a default route from the first network that is not
    # internal); True/False: the runtime's choice, e.g. netavark's every network's
    default_route: bool | None = None
    metric: int | None = None  # of the default routes (None: the kernel's default)
    routes: tuple[Route, ...] = ()  # static routes


class Containers:
    def __init__(self, host: Host) -> None:
        self.h = host
        # Records sent to the DNS server by up(), by container id, whose answer
        # publish_dns reads once the set-up is done.
        self._announced: dict[str, Announced] = {}

    def publish_dns(self, container_id: str | None = None) -> None:
        """Records to the DNS server: one container's, or all of them. Its failure never
        undoes the operation (gc retries)."""
        announced = self._announced.pop(container_id, None) if container_id else None
        if self.h.dns is None:
            return
        try:
            if announced is not None:
                self.h.dns.settle(announced)
            elif container_id is None:
                self.h.dns.publish()
            else:
                self.h.dns.update(container_id)
        except (PortwayError, OSError) as exc:
            print(f"portwayd: DNS records not updated: {exc}", file=sys.stderr, flush=True)

    def ready(self, container_id: str) -> None:
        """The container's set-up is done (the caller holds the engine's lock): its DNS
        records."""
        self.publish_dns(container_id)

    def shared(self, container_id: str) -> None:
        """The last step of a set-up (the caller undoes it if this fails): on an overlay
        network, the container's endpoints made visible to the other hosts, whose
        addresses and names were claimed before the set-up (one that learns the name
        earlier sends its first SYN to an address that does not answer yet). The
        cluster store unreachable now fails the set-up with one line, as it fails the
        claim: not a container running here that no other host can reach."""
        if self.h.cluster is not None:
            self.h.cluster.publish(container_id)

    def _announce(self, c: Container, endpoints: list[Endpoint]) -> Announced | None:
        """c's records sent to the DNS server ahead of its set-up's kernel work (the
        server is a process of its own: it takes them in meanwhile); publish_dns reads
        its answer afterwards."""
        if self.h.dns is None or not endpoints:
            return None
        announced = self.h.dns.announce(c, endpoints)
        self._announced[c.id] = announced
        return announced

    def _withdraw(self, announced: Announced) -> None:
        """The set-up failed: its announced records are taken back."""
        self._announced.pop(announced.container_id, None)
        if self.h.dns is not None:
            self.h.dns.withdraw(announced)

    @raced
    def run(self, command: list[str], name: str | None = None,
            networks: list[str] | None = None, ip: str | None = None,
            aliases: list[str] | None = None, hostname: str | None = None,
            ports: list[str] | None = None, detach: bool = False, auto_remove: bool = False,
            dns: list[str] | None = None, cap_add: list[str] | None = None,
            cap_drop: list[str] | None = None, privileged: bool = False,
            user: str | None = None, ip6: str | None = None, *,
            env: list[str] | None = None, workdir: str | None = None, tty: bool = False,
            interactive: bool = False, labels: list[str] | None = None,
            add_hosts: list[str] | None = None, dns_search: list[str] | None = None,
            dns_options: list[str] | None = None, domainname: str | None = None,
            sysctls: list[str] | None = None, mac: str | None = None,
            expose: list[str] | None = None, publish_all: bool = False,
            restart: str | None = None) -> dict[str, Any]:
        """Create a container with its networking ready; with detach, start its command.

        Without detach the caller starts the command itself (the CLI becomes it)
        and reports the pid through started() and the end through exited(). A command
        that cannot be executed fails as Docker's start fails (exit code 127 or 126)
        and leaves the container created, without networking (unless --rm).
        """
        h = self.h
        cmd = validate.check_command(command)
        h.processes.check(cap_add or [], cap_drop or [], privileged, user)
        if name is not None:
            validate.check_name("container", name)
        if hostname is not None:
            validate.check_hostname(hostname)
        plan = runopts.parse_networks(networks or [], ip, ip6, aliases, mac)
        mode = plan.mode
        port_maps = parse_port_specs(ports or [])
        dns_servers = validate.check_dns_servers(dns or [], named_link=True)
        config = RunConfig(
            env=runopts.parse_env(env or []),
            workdir=h.processes.check_workdir(workdir or "/"), tty=tty,
            interactive=interactive, labels=runopts.parse_labels(labels or []),
            extra_hosts=runopts.parse_extra_hosts(add_hosts or []),
            dns_search=runopts.parse_dns_search(dns_search or []),
            dns_options=runopts.parse_dns_options(dns_options or []),
            domainname=runopts.check_domainname(domainname or ""),
            sysctls=runopts.parse_sysctls(sysctls or [], mode),
            expose=runopts.parse_expose(expose or []), publish_all=publish_all)
        _check_mode(plan, hostname, bool(port_maps), bool(dns_servers), config)
        policy = rules.parse_restart_policy(restart, auto_remove)
        with h.lock:
            if name is not None and h.store.name_taken("containers", name):
                holder = h.container(name)
                raise Conflict(f"container name {name!r} is already in use by "
                               f"{holder.short_id}",
                               f"remove it (portway rm -f {name}) or choose another name")
            nets: list[Network] = []
            owner: Container | None = None
            if mode == "bridge":
                nets = [h.networks.default() if r.ref == "" else h.networks.resolve(r.ref)
                        for r in plan.requests]
                for index, (net, req) in enumerate(zip(nets, plan.requests, strict=True)):
                    runopts.check_ipv6_off(config.sysctls, names.container_ifname(index),
                                           net.name, {s.version for s in net.subnets},
                                           any(":" in ip for ip in req.ips))
            elif mode == "container":
                owner = self._network_owner(plan.container)
                config = replace(config, network_of=owner.id,
                                 domainname=owner.config.domainname)
            if config.publish_all:
                published_ports = {(p.container_port, p.protocol) for p in port_maps}
                port_maps += tuple(PortMapping(container_port=port, host_port=0, protocol=proto)
                                   for port, proto in config.expose
                                   if (port, proto) not in published_ports)
            ignored = ""
            if port_maps and nets and nets[0].driver == "macvlan":
                # As Docker: a macvlan network publishes nothing (its containers are on
                # the LAN with addresses of their own); said, not refused.
                ignored = (f"published ports are ignored on macvlan network {nets[0].name}: "
                           "reach the container at its own address on the LAN")
                port_maps = ()
            if port_maps and nets:
                port_maps = default_binding(port_maps, nets[0].options)
            if port_maps:
                self._check_publishing(nets, port_maps, config.sysctls)
            # A container with a namespace of its own takes the id its namespace was
            # made ahead for (sandboxes.LiveSandboxKernel).
            cid = h.sandbox_kernel.next_id() if mode in ("bridge", "none") \
                else names.new_id()
            netns = {"host": h.host_netns_path(),
                     "container": owner.netns if owner else ""}.get(
                         mode, f"/run/netns/{names.netns_name(cid)}")
            try:  # (said below, in its turn; known now: no kernel work for it at all)
                h.processes.check_command(list(cmd), config.workdir, config.env)
                unrunnable: PortwayError | None = None
            except PortwayError as exc:
                unrunnable = exc
            # The kernel work that needs nothing of the store starts now, beside this
            # thread's (Sandboxes.early); any failure from here on takes it back.
            early = h.sandboxes.early(cid, netns, nets) \
                if mode == "bridge" and unrunnable is None else None
            try:
                own_hostname = owner.hostname if owner else \
                    hostname or (host_hostname() if mode == "host" else cid[:12])
                container = Container(
                    id=cid, name=name or random_name(h.store.container_names()),
                    hostname=own_hostname, command=cmd, netns=netns, network_mode=mode,
                    auto_remove=auto_remove, detach=detach, ports=port_maps, dns=dns_servers,
                    created=now(), cap_add=tuple(cap_add or ()), cap_drop=tuple(cap_drop or ()),
                    privileged=privileged, user=user or "", config=config,
                    restart_policy=policy.name, restart_max=policy.maximum, networked=False)
                configs = self.configs(container, nets, plan.requests)
                if unrunnable is not None:
                    if not auto_remove:  # Docker's create succeeded; its start did not
                        with h.store.transaction():
                            h.store.add_container(container)
                            for cfg in configs:
                                h.store.add_config(cfg)
                    raise unrunnable
                with h.store.transaction():
                    if not container.ports:
                        # Recorded as up() leaves it (the transaction holds the row until up
                        # is done), so up need not write it again. Not with ports: a
                        # networked row holds its host ports, and up checks them against
                        # the rows first.
                        container = replace(container, networked=True,
                                            netns=self.netns_of(container))
                    h.store.add_container(container)
                    for cfg in configs:
                        h.store.add_config(cfg)
                    container = self.up(container, nets, configs, detach, early)
            except BaseException:
                for error in early.undo() if early is not None else ():
                    print(f"portwayd: undo the set-up of {cid[:12]}: {error}",
                          file=sys.stderr, flush=True)
                raise
            if nets:
                self.ready(container.id)
            if container.network_mode in ("bridge", "none"):
                h.sandbox_kernel.prepare()  # the next one's namespace, now that this is done
            info = h.processes.sandbox_info(container)
            if ignored:
                info["Warning"] = "\n".join(w for w in (info["Warning"], ignored) if w)
            return info

    def _network_owner(self, ref: str) -> Container:
        """The running container whose network namespace --network container:REF joins."""
        owner = self.h.own(ref)
        if owner.status != "running":
            raise Conflict(f"cannot join network of a non running container: {owner.name}",
                           "start it first, or join a running one")
        return owner

    def _check_publishing(self, nets: list[Network], port_maps: tuple[PortMapping, ...],
                          sysctls: tuple[tuple[str, str], ...] = ()) -> None:
        """Ports that no network of the container would take, refused: each family's go
        to the network that routes it (core/gateways.py), not only to the first; none
        on an IPv6 host address where the container's --sysctl turns IPv6 off on the
        interface that would take it (it has no IPv6 address there)."""
        owners = gateways.port_owners(nets)
        first = nets[0]
        if not owners and all(n.internal for n in nets):
            which = f"network {first.name} is" if len(nets) == 1 else \
                f"networks {', '.join(n.name for n in nets)} are"
            raise InvalidInput(f"{which} internal: its containers cannot publish ports",
                               "publish from a container on a non-internal network")
        for p in port_maps:
            # ::1 is relayed to either family (engine/proxy.py).
            if p.host_ip is not None and str(p.host_ip) != "::1" and \
                    p.host_ip.version not in owners:
                shown = f"[{p.host_ip}]" if p.host_ip.version == 6 else str(p.host_ip)
                family = f"IPv{p.host_ip.version}"
                which = f"network {first.name} has no {family}" if len(nets) == 1 else \
                    f"none of networks {', '.join(n.name for n in nets)} routes {family}"
                raise InvalidInput(f"cannot publish on {shown}: {which}",
                                   "publish on an address of a family the networks "
                                   "have, or on all addresses")
            if p.host_ip is not None and p.host_ip.version == 6 and \
                    str(p.host_ip) != "::1" and runopts.ipv6_off(
                        sysctls, names.container_ifname(owners[6])):
                raise InvalidInput(f"cannot publish on [{p.host_ip}]: the container's "
                                   "--sysctl turns IPv6 off, so it has no IPv6 address",
                                   "publish on an IPv4 address or on all addresses, or "
                                   "drop the disable_ipv6 sysctl")

    def up(self, c: Container, nets: list[Network], configs: list[EndpointConfig],
           detach: bool, early: Early | None = None) -> Container:
        """c's networking from its configuration (its networks in order, each with the
        addresses and aliases asked for), its host ports held and published, and with
        detach its process: all or nothing, inside the caller's transaction, in which
        c's row exists. The container as recorded. early: its kernel work started ahead
        (Sandboxes.early), which the caller undoes if this fails."""
        h = self.h
        with ExitStack() as undo:
            undo.callback(h.endpoints.clear_hints)  # a rollback frees what was allocated
            port_maps = h.publishing.resolve(c.ports) if c.ports else ()
            undo.callback(h.publishing.release, port_maps)
            recorded, c = c, replace(c, ports=port_maps, networked=True,
                                     netns=self.netns_of(c))
            if c != recorded:
                h.store.update_container(c)
            endpoints: list[Endpoint] = []
            # (An overlay endpoint's claim is in the cluster store, outside the
            # transaction: let go on a rollback.)
            undo.callback(h.endpoints.released, endpoints)
            for index, (net, cfg) in enumerate(zip(nets, configs, strict=True)):
                endpoints.append(h.endpoints.new(c, net, index, cfg.ips, list(cfg.aliases),
                                                 mac=cfg.mac,
                                                 eid=early.eids[index] if early else None))
            announced = self._announce(c, endpoints)
            if announced is not None:
                undo.callback(self._withdraw, announced)
            if c.network_mode in ("bridge", "none"):
                undo.callback(h.sandboxes.teardown, c, endpoints)
                h.sandboxes.build(c, endpoints, nets, early)
            elif c.network_mode == "host":
                undo.callback(h.sandboxes.teardown, c, endpoints)
                h.sandboxes.write_files(c)
            elif c.config.sysctls:
                # The namespace is the other container's: what it had comes back on a
                # failure.
                before = h.sandbox_kernel.set_sysctls(c.netns, dict(c.config.sysctls))
                undo.callback(h.sandbox_kernel.set_sysctls, c.netns, before)
            fault_point("run.sandbox")
            published = h.publishing.published(c, endpoints)
            if published:
                undo.callback(h.fw.remove_ports, published)
                h.fw.add_ports(published)
                fault_point("run.ports")
            if detach:
                c = h.processes.start(c)
                # Killed by its pid on a failure after this (the overlay's claim): the
                # teardown's kill of the namespace's processes can miss one just
                # started.
                undo.callback(h.processes.kill, c)
                fault_point("run.started")
            self.shared(c.id)
            undo.pop_all()
        return c

    def configs(self, c: Container, nets: list[Network],
                requests: tuple[runopts.NetworkRequest, ...]) -> list[EndpointConfig]:
        """What c asks of each of its networks, the addresses it asks for checked (they
        stay reserved for it)."""
        out = []
        for index, (net, req) in enumerate(zip(nets, requests, strict=False)):
            v4, v6 = self.h.endpoints.requested(c, net, list(req.ips)) if req.ips \
                else (None, None)
            out.append(EndpointConfig(
                container_id=c.id, network_id=net.id, network_name=net.name, position=index,
                aliases=tuple(req.aliases), ipv4=v4, ipv6=v6, mac=req.mac))
        return out

    def netns_of(self, c: Container) -> str:
        """The network namespace c's processes join: its own, the host's, or (--network
        container:) the other container's."""
        if c.network_mode == "host":
            return self.h.host_netns_path()
        if c.network_mode == "container":
            owner = self.h.store.find_container(c.config.network_of)
            return owner.netns if owner is not None else c.netns
        return f"/run/netns/{names.netns_name(c.id)}"

    @raced
    def start(self, c: Container, user: bool) -> Container:
        """c, not running and without networking, started again: its networks attached
        anew from its configuration, its host ports held and published again, its names
        in DNS, a new process. Nothing changes if any of it fails (a network that was
        removed, a host port someone took meanwhile, a command gone). user: a user's
        start, which clears what a user's stop set and counts restarts from 0."""
        h = self.h
        h.processes.check_command(list(c.command), c.config.workdir, c.config.env)
        if c.network_mode == "container":
            self._network_owner(c.config.network_of)
        configs = h.store.configs(container_id=c.id) if c.network_mode == "bridge" else []
        nets = []
        for cfg in configs:
            net = h.store.find_network(cfg.network_id)
            if net is None:
                raise NotFound(f"network {cfg.network_name} not found: container {c.name} "
                               "was connected to it, and it was removed since",
                               f"disconnect it (portway network disconnect "
                               f"{cfg.network_name} {c.name}), and connect it to another "
                               "network if it needs one")
            nets.append(net)
        if user:
            c = replace(c, user_stopped=False, restart_count=0)
        with h.store.transaction():
            c = self.up(replace(c, error=""), nets, configs, detach=True)
        if nets:
            self.ready(c.id)
        if c.network_mode in ("bridge", "none"):
            h.sandbox_kernel.prepare()
        with h.lifecycle.changed:
            h.lifecycle.changed.notify_all()
        return c

    def rm_one(self, ref: str, force: bool = False) -> str:
        h = self.h
        with h.lock:
            c = h.own(ref)
            if c.status in ("running", "restarting") and not force:
                raise Conflict(f"container {c.name} is {c.status}",
                               f"stop it first (portway stop {c.name}) or use rm -f")
            self.remove(c)
        return ref

    def rm(self, refs: list[str], force: bool = False) -> list[dict[str, Any]]:
        return each(refs, lambda ref: self.rm_one(ref, force))

    def remove(self, c: Container) -> None:
        """Process, networking, files, rows: each step even if one fails."""
        h = self.h
        errors: list[str] = []
        running = c.status == "running" and c.runtime == "portway" and \
            h.process_kernel.is_alive(c.pid, c.pid_start)
        h.processes.kill(c)
        if c.networked:
            try:
                self.release(c, fault="rm")
            except TeardownErrors as exc:
                errors.extend(exc.errors)
        shutil.rmtree(os.path.join(h.state_dir, "containers", c.id), ignore_errors=True)
        with h.store.transaction():
            h.store.delete_container(c.id)
        h.lifecycle.forget(c, 128 + signal.SIGKILL if running else None)
        if errors:
            raise TeardownErrors(f"remove {c.name}", errors)

    def release(self, c: Container, fault: str = "release") -> Container:
        """What a container gives back when it stops (Docker's): its published ports (the
        map elements and the held host sockets), its namespace and endpoints (their
        addresses; one it asked for stays reserved in its configuration), its DNS names.
        Each step even if one fails; the store says it is released either way (gc
        removes what the kernel kept). The container as recorded."""
        h = self.h
        errors: list[str] = []
        endpoints = h.store.endpoints(container_id=c.id)
        published = h.publishing.published(c, endpoints)
        if published:
            try:
                h.fw.remove_ports(published)
            except (PortwayError, OSError) as exc:
                errors.append(f"remove its published ports: {exc}")
        h.publishing.release(c.ports)
        fault_point(f"{fault}.ports")
        try:
            h.sandboxes.teardown(c, endpoints)
        except TeardownErrors as exc:
            errors.extend(exc.errors)
        fault_point(f"{fault}.kernel")
        h.endpoints.released(endpoints)
        released = replace(h.store.find_container(c.id) or c, networked=False)
        with h.store.transaction():
            for e in endpoints:
                h.store.delete_endpoint(e.id)
            h.store.update_container(released)
        if endpoints and h.dns is not None and h.dns.running():
            # Its names go (a server that is not running gets every record, from the
            # store, when it starts).
            self.publish_dns(c.id)
        if errors:
            raise TeardownErrors(f"release the networking of {c.name}", errors)
        return released

    # attach and detach containers (a stopped one: its configuration only)

    @raced
    def connect(self, network: str, container: str, ip: str | None = None,
                aliases: list[str] | None = None, ip6: str | None = None) -> dict[str, Any]:
        h = self.h
        alias_list = [validate.check_name("alias", a) for a in aliases or []]
        ips = validate.requested_addresses(ip, ip6)
        with h.lock:
            net = h.networks.resolve(network)
            c = h.own(container)
            if c.network_mode != "bridge":
                raise InvalidInput(f"container {c.name} uses --network {c.network_mode}",
                                   "only containers on bridge networks can be connected")
            configs = h.store.configs(container_id=c.id)
            current = h.store.endpoints(container_id=c.id)
            if any(x.network_id == net.id for x in configs) or \
                    any(e.network_id == net.id for e in current):
                raise Conflict(f"container {c.name} is already connected to {net.name}",
                               "nothing to do")
            v4, v6 = h.endpoints.requested(c, net, ips)
            cfg = EndpointConfig(
                container_id=c.id, network_id=net.id, network_name=net.name,
                position=max((x.position for x in configs), default=-1) + 1,
                aliases=tuple(alias_list), ipv4=v4, ipv6=v6)
            if not c.networked:  # stopped: attached when it starts
                with h.store.transaction():
                    h.store.add_config(cfg)
                return {"Id": c.id, "Network": net.name, "IPAddress": "", "IPAddresses": []}
            if not h.sandbox_kernel.exists(c.netns):
                raise Conflict(f"container {c.name} has lost its network namespace",
                               "run 'portway gc' to repair it")
            used_if = {e.ifname for e in current}
            index = next(i for i in range(len(current) + 1)
                         if names.container_ifname(i) not in used_if)
            try:
                with h.sandbox_kernel.open(c.netns) as sandbox, h.store.transaction(), \
                        ExitStack() as undo:
                    h.store.add_config(cfg)
                    endpoint = h.endpoints.new(c, net, index, ips, alias_list)
                    undo.callback(h.endpoints.released, [endpoint])  # (its claim)
                    h.endpoints.attach_running(sandbox, c, endpoint, net)
                    undo.callback(h.endpoints.detach, [endpoint])
                    # A family no other network routes (IPv6 after the network that gave
                    # it left and came back) is routed through this one, as a
                    # disconnect reroutes; the network that routes a family keeps it
                    # (core/gateways.py).
                    h.endpoints.route(sandbox, h.endpoints.in_order(c.id,
                                                                    [*current, endpoint]))
                    fault_point("connect.attach")
                    # Each family's published ports follow the network that routes it: a
                    # container that had none for a family (it left the networks that
                    # have it) publishes them again here.
                    before = h.publishing.published(c, current)
                    after = h.publishing.published(c, [*current, endpoint])
                    if before != after:
                        if before:
                            h.fw.remove_ports(before)
                            undo.callback(h.fw.add_ports, before)
                        h.fw.add_ports(after)
                    self.shared(c.id)
                    undo.pop_all()
            except BaseException:
                h.endpoints.clear_hints()  # the rollback freed the address again
                raise
            h.sandboxes.write_files(c)
            self.ready(c.id)
            return {"Id": c.id, "Network": net.name, "IPAddress": str(endpoint.address),
                    "IPAddresses": [str(a.ip) for a in endpoint.addresses]}

    def disconnect(self, network: str, container: str, force: bool = False) -> dict[str, Any]:
        h = self.h
        with h.lock:
            c = h.own(container)
            net = h.store.find_network(network)
            configs = h.store.configs(container_id=c.id)
            # A network that was removed is still named in a stopped container's
            # configuration: it can be disconnected by that name.
            cfg = next((x for x in configs if (net is not None and x.network_id == net.id)
                        or (net is None and x.network_name == network)), None)
            current = h.store.endpoints(container_id=c.id)
            mine = [e for e in current if net is not None and e.network_id == net.id]
            if cfg is None and not mine:
                if net is None:
                    h.network(network)  # NotFound, with its hint
                raise NotFound(f"container {c.name} is not connected to {network}",
                               "see its networks with 'portway inspect'")
            name = net.name if net is not None else network
            remaining = [e for e in current if not mine or e.id != mine[0].id]
            # (Read while its configuration still orders the network it leaves.)
            before = h.publishing.published(c, current) if mine else []
            with h.store.transaction():
                if cfg is not None:
                    h.store.delete_config(c.id, cfg.network_id)
                if mine:
                    self._move_ports(c, current, remaining, mine, fault="disconnect.detach",
                                     before=before)
            if mine:
                h.endpoints.released(mine)
                h.endpoints.reroute(c, remaining)
                h.sandboxes.write_files(c)
                self.publish_dns(c.id)
            return {"Id": c.id, "Network": name}

    def _move_ports(self, c: Container, current: list[Endpoint], remaining: list[Endpoint],
                    gone: list[Endpoint], fault: str = "",
                    before: list[Published] | None = None) -> None:
        """gone's rows and interfaces removed; each family's published ports follow the
        network that routes it, so they move if it was among them. before: the ports as
        published with current (read before gone's configuration went)."""
        h = self.h
        if before is None:
            before = h.publishing.published(c, current)
        after = h.publishing.published(c, remaining)
        with h.store.transaction():
            for e in gone:
                h.store.delete_endpoint(e.id)
            if before != after:
                h.fw.remove_ports(before)
                if after:
                    h.fw.add_ports(after)
            h.endpoints.detach(gone)
            fault_point(fault)

    # for runtimes that make their own sandboxes

    @raced
    def attach_sandbox(self, container: Container, attachments: list[Attachment],
                       new: bool) -> list[Endpoint]:
        """A sandbox a runtime made (container.netns) plugged into each attachment's
        network (an endpoint it has there already is kept), its published ports added
        if the container is new (the runtime holds their sockets), or moved to the
        networks that now route their families if not; the container recorded if new.
        All or nothing. The endpoints, in the attachments' order."""
        h = self.h
        have = {e.network_id: e for e in h.store.endpoints(container_id=container.id)}
        out: list[Endpoint] = []
        with h.store.transaction(), ExitStack() as undo:
            if new:
                if h.store.name_taken("containers", container.name):
                    raise Conflict(f"container name {container.name!r} is already in use",
                                   "remove the other container first")
                h.store.add_container(container)
            added: list[Endpoint] = []
            undo.callback(h.endpoints.released, added)  # (overlay endpoints' claims)
            undo.callback(lambda: h.endpoints.detach(added))
            with h.sandbox_kernel.open(container.netns) as sandbox:
                h.sandbox_kernel.loopback_up(sandbox)
                for a in attachments:
                    endpoint = have.get(a.network.id)
                    if endpoint is None:
                        endpoint = h.endpoints.new(container, a.network, 0, list(a.ips),
                                                   list(a.aliases), ifname=a.ifname, mac=a.mac,
                                                   host_ifname=a.host_ifname)
                        added.append(endpoint)
                        route = a.default_route if a.default_route is not None else \
                            h.endpoints.wants_route(sandbox, a.network)
                        h.endpoints.attach(sandbox, container, endpoint, a.network, route,
                                           metric=a.metric, routes=a.routes)
                    out.append(endpoint)
            # A new container's ports; a container joining another network (podman
            # network connect): each family's move to the network that now routes it
            # (core/gateways.py), as connect moves a portway container's.
            before = [] if new else h.publishing.published(container, list(have.values()))
            after = h.publishing.published(container)
            if before != after:
                if before:
                    h.fw.remove_ports(before)
                    undo.callback(h.fw.add_ports, before)
                if after:
                    undo.callback(h.fw.remove_ports, after)
                    h.fw.add_ports(after)
            self.shared(container.id)
            undo.pop_all()
        self.ready(container.id)
        return out

    def detach_sandbox(self, c: Container, networks: set[str] | None) -> list[str]:
        """c's endpoints on the named networks (all when None) removed, with their ports
        and names; c forgotten once it has none. The ids of the networks it left."""
        h = self.h
        by_id = {n.id: n for n in h.store.networks()}
        current = h.store.endpoints(container_id=c.id)
        gone = [e for e in current if networks is None or
                (e.network_id in by_id and by_id[e.network_id].name in networks)]
        remaining = [e for e in current if e not in gone]
        with h.store.transaction():
            self._move_ports(c, current, remaining, gone)
            if not remaining:
                h.store.delete_container(c.id)
        h.endpoints.released(gone)
        self.publish_dns(c.id)
        return list(dict.fromkeys(e.network_id for e in gone))




def _check_mode(plan: runopts.NetworkPlan, hostname: str | None, ports: bool, dns: bool,
                config: RunConfig) -> None:
    """What a network mode cannot have, refused as Docker refuses it."""
    mode = plan.mode
    if mode == "container":
        for given, what in ((hostname is not None, "hostname"),
                            (config.domainname != "", "domainname"),
                            (dns or config.dns_search is not None
                             or config.dns_options is not None, "dns"),
                            (bool(config.extra_hosts), "custom host-to-IP mapping")):
            if given:
                raise InvalidInput(f"conflicting options: {what} and the network mode",
                                   "a container in another's network namespace has its "
                                   "names and files: drop the option")
        if ports or config.publish_all:
            raise InvalidInput("conflicting options: port publishing and the container "
                               "type network mode", "publish the ports of the container "
                               "whose network it joins")
        if config.expose:
            raise InvalidInput("conflicting options: port exposing and the container type "
                               "network mode", "drop --expose")
    elif mode != "bridge" and (ports or config.publish_all):
        raise InvalidInput(f"-p cannot publish ports with --network {mode}",
                           "drop -p, or use a bridge network")
    if mode == "none" and any(v == runopts.HOST_GATEWAY for _, v in config.extra_hosts):
        raise InvalidInput("--add-host host-gateway needs a network: --network none has "
                           "no gateway", "give the address as NAME:IP")
    if mode == "bridge" and plan.requests[0].ref in ("", DEFAULT_NETWORK) and \
            plan.requests[0].ips:
        flag = "--ip" if any(":" not in i for i in plan.requests[0].ips) else "--ip6"
        raise InvalidInput(f"{flag} needs a user network, not the default network "
                           f"{DEFAULT_NETWORK}", "add --network NAME")
