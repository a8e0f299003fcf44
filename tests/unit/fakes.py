"""Fakes of the store and of the kernel seams, for the engine's orchestration tests.

Each fake keeps what the real one would make (rows, links, namespaces, rules,
processes, held ports) in plain Python, and writes every call to one shared log, so
a test can check the order of the steps and their undo. `fail_at` makes the named call
raise, to check what a failure at each step leaves behind.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from portway.core import names
from portway.core.confine import Identity, UserSpec
from portway.engine import build_host
from portway.engine.context import Host
from portway.engine.dns import Announced
from portway.errors import Conflict, KernelError
from portway.model.types import (
    Container,
    Endpoint,
    EndpointConfig,
    IPAddress,
    IPNetwork,
    Network,
    Route,
)

# A command with default dispositions dies of these.
DEADLY = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL}


@dataclass
class World:
    """What the fakes have made, and what was asked of them."""

    log: list[str] = field(default_factory=list)
    fail_at: set[str] = field(default_factory=set)
    bridges: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)  # host end -> sandbox path
    namespaces: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)  # sandbox paths with a default route
    loopback_up: set[str] = field(default_factory=set)  # runtime sandboxes whose lo is up
    etc: dict[str, dict[str, str]] = field(default_factory=dict)
    rules: set[str] = field(default_factory=set)  # firewall parts, named
    held: set[tuple[str, str, int]] = field(default_factory=set)
    processes: dict[int, str] = field(default_factory=dict)  # pid -> netns
    spawned: list[dict[str, Any]] = field(default_factory=list)  # what each spawn was given
    sysctls: dict[tuple[str, str], str] = field(default_factory=dict)  # (netns, key) -> value
    names: dict[str, str] = field(default_factory=dict)  # the DNS server's: id -> name
    next_pid: int = 1000

    def step(self, name: str) -> None:
        self.log.append(name)
        if name in self.fail_at or name.split(" ")[0] in self.fail_at:
            raise KernelError(f"{name}: failed (as the test asked)", "nothing")


class FakeStore:
    """The Store protocol in memory, with rollback and the UNIQUE constraints."""

    def __init__(self) -> None:
        self.meta: dict[str, str] = {}
        self.nets: dict[str, Network] = {}
        self.cons: dict[str, Container] = {}
        self.eps: dict[str, Endpoint] = {}
        self.cfgs: dict[tuple[str, str], EndpointConfig] = {}
        self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        saved = (dict(self.meta), dict(self.nets), dict(self.cons), dict(self.eps),
                 dict(self.cfgs)) if self._depth == 0 else None
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if saved is not None:  # the outermost rolls back
                self.meta, self.nets, self.cons, self.eps, self.cfgs = saved
            raise
        self._depth -= 1

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value

    def add_network(self, network: Network) -> None:
        if any(n.name == network.name for n in self.nets.values()):
            raise Conflict("state conflict: name", "try again")
        self.nets[network.id] = network

    def _find(self, table: dict[str, Any], ref: str) -> Any:
        for row in table.values():
            if ref in (row.name, row.id):
                return row
        found = [row for row in table.values() if len(ref) >= 3 and row.id.startswith(ref)]
        return found[0] if len(found) == 1 else None

    def find_network(self, ref: str) -> Network | None:
        return self._find(self.nets, ref)  # type: ignore[no-any-return]

    def networks(self) -> list[Network]:
        return list(self.nets.values())

    def delete_network(self, network_id: str) -> None:
        self.nets.pop(network_id, None)

    def set_network_options(self, network_id: str, options: dict[str, str]) -> None:
        self.nets[network_id] = replace(self.nets[network_id], options=dict(options))

    def add_container(self, c: Container) -> None:
        if any(x.name == c.name for x in self.cons.values()):
            raise Conflict("state conflict: name", "try again")
        self.cons[c.id] = c

    def update_container(self, c: Container) -> None:
        self.cons[c.id] = c

    def find_container(self, ref: str) -> Container | None:
        return self._find(self.cons, ref)  # type: ignore[no-any-return]

    def containers(self) -> list[Container]:
        return list(self.cons.values())

    def delete_container(self, container_id: str) -> None:
        self.eps = {k: e for k, e in self.eps.items() if e.container_id != container_id}
        self.cfgs = {k: c for k, c in self.cfgs.items() if c.container_id != container_id}
        self.cons.pop(container_id, None)

    def add_endpoint(self, e: Endpoint) -> None:
        # UNIQUE(network_id, address) of the addresses held by endpoints (a reservation
        # of the endpoint's own container is its to take).
        if any(x.network_id == e.network_id and x.address == e.address
               for x in self.eps.values()):
            raise Conflict("state conflict: address", "try again")
        self.eps[e.id] = e

    def endpoints(self, container_id: str | None = None,
                  network_id: str | None = None) -> list[Endpoint]:
        return sorted((e for e in self.eps.values()
                       if container_id in (None, e.container_id)
                       and network_id in (None, e.network_id)),
                      key=lambda e: (e.container_id, e.ifname))

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.eps.pop(endpoint_id, None)

    def address_in_use(self, network_id: str, address: IPAddress) -> bool:
        return self.address_holder(network_id, address) is not None

    def address_holder(self, network_id: str, address: IPAddress,
                       owner: str = "") -> str | None:
        for e in self.eps.values():
            if e.network_id == network_id and any(a.ip == address for a in e.addresses):
                return e.container_id
        for c in self.cfgs.values():
            if c.network_id == network_id and address in (c.ipv4, c.ipv6) and \
                    c.container_id != owner:
                return c.container_id
        return None

    def add_config(self, config: EndpointConfig) -> None:
        for c in self.cfgs.values():
            if c.network_id == config.network_id and any(
                    a is not None and a in (c.ipv4, c.ipv6) for a in (config.ipv4, config.ipv6)):
                raise Conflict("state conflict: reserved address", "try again")
        self.cfgs[(config.container_id, config.network_id)] = config

    def configs(self, container_id: str | None = None,
                network_id: str | None = None) -> list[EndpointConfig]:
        return sorted((c for c in self.cfgs.values()
                       if container_id in (None, c.container_id)
                       and network_id in (None, c.network_id)),
                      key=lambda c: (c.container_id, c.position))

    def delete_config(self, container_id: str, network_id: str) -> None:
        self.cfgs.pop((container_id, network_id), None)

    def container_names(self) -> set[str]:
        return {c.name for c in self.cons.values()}

    def name_taken(self, table: str, name: str) -> bool:
        rows = self.nets if table == "networks" else self.cons
        return any(r.name == name for r in rows.values())

    def close(self) -> None:
        pass


class FakeDriver:
    name = "bridge"

    def __init__(self, world: World) -> None:
        self.w = world

    def validate(self, network: Network) -> None:
        return None

    def ensure(self, network: Network) -> None:
        self.w.step(f"bridge.ensure {network.name}")
        self.w.bridges.add(network.bridge)

    def delete(self, network: Network) -> None:
        self.w.step(f"bridge.delete {network.name}")
        self.w.bridges.discard(network.bridge)

    def prepare(self, sandbox: Any, endpoint_id: str, host_ifname: str, ifname: str,
                network: Network) -> tuple[int, int]:
        self.w.step(f"bridge.prepare {ifname}")
        self.w.links[host_ifname] = sandbox.path
        return len(self.w.links), len(self.w.links)

    def unprepare(self, host_ifname: str) -> None:
        self.w.step("bridge.unprepare")
        self.w.links.pop(host_ifname, None)

    def attach(self, sandbox: Any, endpoint: Endpoint, network: Network,
               default_route: bool, hairpin: bool, metric: int | None = None,
               routes: tuple[Route, ...] = (),
               prepared: tuple[int, int] | None = None) -> None:
        self.w.step(f"bridge.attach {endpoint.ifname}")
        if prepared is not None and self.w.links.get(endpoint.host_ifname) != sandbox.path:
            raise KernelError(f"{endpoint.host_ifname} was not prepared", "a bug")
        self.w.links[endpoint.host_ifname] = sandbox.path
        if default_route:
            self.w.routes.add(sandbox.path)

    def detach(self, endpoint: Endpoint) -> None:
        self.w.step(f"bridge.detach {endpoint.ifname}")
        self.w.links.pop(endpoint.host_ifname, None)

    def observe(self, network: Network) -> list[str]:
        return [] if network.bridge in self.w.bridges else [f"re-create {network.bridge}"]


class FakeFirewall:
    def __init__(self, world: World) -> None:
        self.w = world
        self.members: frozenset[IPAddress] = frozenset()

    def add_network(self, network: Network) -> None:
        self.w.step(f"fw.add_network {network.name}")
        self.w.rules.add(f"network {network.id}")

    def remove_network(self, network: Network) -> None:
        self.w.step(f"fw.remove_network {network.name}")
        self.w.rules.discard(f"network {network.id}")

    def add_ports(self, ports: Any) -> None:
        self.w.step("fw.add_ports")
        self.w.rules |= {f"port {p.protocol}/{p.host_port}" for p in ports}

    def remove_ports(self, ports: Any) -> None:
        self.w.step("fw.remove_ports")
        self.w.rules -= {f"port {p.protocol}/{p.host_port}" for p in ports}

    def add_guard(self, endpoints: Any) -> None:
        self.w.step("fw.add_guard")
        self.w.rules |= {f"guard {e.host_ifname}" for e in endpoints}

    def forget_connections(self, addresses: list[IPAddress]) -> None:
        self.w.step("fw.forget_connections " + " ".join(map(str, addresses)))

    def set_members(self, addresses: Iterable[IPAddress]) -> None:
        self.members = frozenset(addresses)  # (as the real one: no change, no step)

    def remove_guard(self, endpoints: Any) -> None:
        self.w.log.append("fw.remove_guard")
        self.w.rules -= {f"guard {e.host_ifname}" for e in endpoints}

    def apply(self, cmds: list[dict[str, Any]]) -> None:
        self.w.step("fw.apply")
        for cmd in cmds:
            element = cmd.get("add", {}).get("element", {})
            if element.get("table") == "portway" and element.get("name") == "macs":
                for entry in element["elem"]:
                    self.w.rules.add(f"guard {entry['elem']['val']['concat'][0]}")

    def teardown(self, cmds: list[dict[str, Any]]) -> None:
        self.w.log.append("fw.teardown")

    def release(self) -> bool:
        self.w.log.append("fw.release")
        return True

    def missing_tables(self) -> list[str]:
        return []  # (a flush is the kernel tests' business)

    def close(self) -> None:
        pass


@dataclass
class FakeSandbox:
    path: str
    ipr: object = None

    def close(self) -> None:
        pass


class FakeSandboxKernel:
    def __init__(self, world: World) -> None:
        self.w = world

    def next_id(self) -> str:
        return names.new_id()

    def create(self, path: str, tag: str) -> FakeSandbox:
        self.w.step("netns.create")
        self.w.namespaces.add(path)
        return FakeSandbox(path)

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        pass

    @contextmanager
    def open(self, path: str) -> Iterator[FakeSandbox]:
        if path not in self.w.namespaces:
            raise KernelError(f"{path} does not exist", "gc")
        yield FakeSandbox(path)

    def exists(self, path: str) -> bool:
        return path in self.w.namespaces

    def delete(self, path: str) -> None:
        self.w.step("netns.delete")
        self.w.namespaces.discard(path)
        self.w.routes.discard(path)

    def kill_processes(self, path: str, spare: tuple[int, ...] = ()) -> int:
        self.w.step("netns.kill")
        gone = [pid for pid, ns in self.w.processes.items() if ns == path and pid not in spare]
        for pid in gone:
            del self.w.processes[pid]
        return len(gone)

    def write_etc(self, path: str, files: dict[str, str]) -> None:
        self.w.step("etc.write")
        self.w.etc[path] = files

    def set_sysctls(self, path: str, sysctls: dict[str, str]) -> dict[str, str]:
        self.w.step("netns.sysctls")
        before = {k: self.w.sysctls.get((path, k), "0") for k in sysctls}
        self.w.sysctls.update({(path, k): v for k, v in sysctls.items()})
        return before

    def has_default_route(self, sandbox: Any, version: int = 4) -> bool:
        return sandbox.path in self.w.routes

    def set_default_route(self, sandbox: Any, ifname: str, gateway: IPAddress,
                          metric: int | None = None) -> None:
        self.w.routes.add(sandbox.path)

    def loopback_up(self, sandbox: Any) -> None:
        self.w.loopback_up.add(sandbox.path)

    def delete_routes(self, sandbox: Any, routes: tuple[Route, ...]) -> list[str]:
        self.w.step("routes.delete")
        return []

    def readdress(self, sandbox: Any, ifname: str, old: tuple[Any, ...],
                  new: tuple[Any, ...], mac: str) -> None:
        self.w.step("link.readdress")


class FakeProcessKernel:
    """Processes as the engine sees them; an end is reported from a thread of its own,
    as the real watcher's thread does (exit() makes one end by itself)."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.on_exit: Any = None  # set by fake_host: the engine's Processes.on_exit
        self.watched: dict[int, tuple[str, bool]] = {}
        self.delivering: set[int] = set()
        self.threads: list[threading.Thread] = []

    def exit(self, pid: int, code: int) -> None:
        """The process ends by itself with code."""
        self.w.processes.pop(pid, None)
        self._report(pid, code)

    def _report(self, pid: int, code: int) -> None:
        if pid not in self.watched:
            return
        container_id, child = self.watched.pop(pid)
        self.delivering.add(pid)

        def deliver() -> None:
            try:
                self.on_exit(container_id, pid, code if child else None)
            finally:
                self.delivering.discard(pid)

        thread = threading.Thread(target=deliver)
        self.threads.append(thread)
        thread.start()

    def settle(self) -> None:
        """Until every end has been reported."""
        while self.threads:
            self.threads.pop().join()

    def spawn(self, netns: str, hostname: str | None, binds: list[tuple[str, str]],
              argv: list[str], log_path: str, env: dict[str, str],
              sysfs_readonly: bool, workdir: str = "/", domainname: str = "",
              stdin_path: str | None = None) -> int:
        self.w.step("process.spawn")
        self.w.spawned.append({"netns": netns, "hostname": hostname, "env": env,
                               "workdir": workdir, "domainname": domainname,
                               "stdin": stdin_path})
        self.w.next_pid += 1
        self.w.processes[self.w.next_pid] = netns
        return self.w.next_pid

    def start_time(self, pid: int) -> int:
        return 1 if pid in self.w.processes else 0

    def is_alive(self, pid: int, started: int) -> bool:
        return pid in self.w.processes

    def signal(self, pid: int, started: int, sig: int) -> bool:
        if pid not in self.w.processes:
            return False
        self.w.log.append(f"process.signal {sig}")
        del self.w.processes[pid]
        self._report(pid, 128 + sig)
        return True

    def signal_init(self, pid: int, started: int, wrappers: tuple[str, ...],
                    sig: int) -> bool:
        if pid not in self.w.processes:
            return False
        self.w.log.append(f"process.signal_init {sig}")
        if sig in DEADLY:
            del self.w.processes[pid]
            self._report(pid, 128 + sig)
        return True

    def wait_init(self, pid: int, wrappers: tuple[str, ...], timeout: float = 5.0) -> int:
        return pid if pid in self.w.processes else 0

    def resolve_identity(self, spec: UserSpec) -> Identity:
        return Identity(uid=int(spec.user) if spec.user.isdigit() else 1000)

    def find_command(self, command: str, path: str, cwd: str) -> tuple[int, str]:
        if command == "no-such-program":
            return 127, f"command not found: {command!r}"
        if command == "/etc":
            return 126, f"cannot run {command!r}: it is a directory"
        return 0, f"/usr/bin/{command}"

    def watch(self, container_id: str, pid: int, child: bool) -> None:
        self.watched[pid] = (container_id, child)

    def watching(self, pid: int) -> bool:
        return pid in self.watched or pid in self.delivering

    def index_log(self, key: str, log_path: str) -> None:
        return None

    def unindex_log(self, key: str) -> None:
        return None

    def close(self) -> None:
        pass


class FakePorts:
    def __init__(self, world: World) -> None:
        self.w = world

    @staticmethod
    def _key(p: Any) -> tuple[str, str, int]:
        return p.protocol, str(p.host_ip or ""), p.host_port

    def holds(self, p: Any) -> bool:
        return self._key(p) in self.w.held

    def reserve(self, p: Any) -> None:
        self.w.step("port.reserve")
        if self._key(p) in self.w.held:
            raise OSError(98, "Address already in use")
        self.w.held.add(self._key(p))

    def release(self, p: Any) -> None:
        self.w.held.discard(self._key(p))

    def close(self) -> None:
        self.w.held.clear()


class FakeFacts:
    def taken_ranges(self, own_bridges: set[str]) -> list[tuple[IPNetwork, str]]:
        return [(ipaddress.ip_network("198.51.100.0/24"), "host address 198.51.100.1/24")]

    def portway_addresses(self) -> set[IPAddress]:
        return set()

    def link_exists(self, name: str) -> bool:
        return name in ("lo", "eth0")  # the host's own links

    def default_route_mtu(self) -> int | None:
        return None

    def link_kind_mtu(self, name: str) -> tuple[str, int] | None:
        return None

    def link_addresses(self, name: str) -> list[IPAddress]:
        return []

    def listening(self, protocol: str) -> list[tuple[str, int]]:
        return []

    def ephemeral_range(self) -> tuple[int, int]:
        return 32768, 32800


class FakeDns:
    """The DNS server as the engine sees it: the records it has (by container id), and
    what it was told when (an announced record is the server's at once; its answer is
    read at settle)."""

    def __init__(self, world: World) -> None:
        self.w = world

    def publish(self) -> None:
        self.w.step("dns.publish")

    def update(self, container_id: str) -> None:
        self.w.step("dns.update")

    def announce(self, c: Container, endpoints: list[Endpoint]) -> Announced:
        self.w.step(f"dns.announce {c.name}")
        self.w.names[c.id] = c.name
        return Announced(c.id, None)

    def settle(self, announced: Announced) -> None:
        self.w.step("dns.settle")

    def withdraw(self, announced: Announced) -> None:
        self.w.step("dns.withdraw")
        self.w.names.pop(announced.container_id, None)

    def running(self) -> bool:
        return True

    def stop(self) -> None:
        pass

    def request(self, command: str) -> dict[str, Any]:
        return {"ok": True}


def fake_host(state_dir: str, world: World | None = None) -> tuple[Host, World]:
    """A Host whose every seam is a fake (no root, no kernel, no disk but state_dir)."""
    w = world or World()
    processes = FakeProcessKernel(w)
    h = build_host(Host(state_dir=state_dir, host_netns="fake", instance="0fa4e000",
                        store=FakeStore(), drivers={"bridge": FakeDriver(w)},
                        fw=FakeFirewall(w), sandbox_kernel=FakeSandboxKernel(w),
                        process_kernel=processes, ports=FakePorts(w),
                        facts=FakeFacts()))
    processes.on_exit = h.processes.on_exit
    return h, w


def rows(h: Host) -> tuple[int, int, int]:
    s: Any = h.store
    return len(s.nets), len(s.cons), len(s.eps)


def container_named(h: Host, name: str) -> Container:
    c = h.store.find_container(name)
    assert c is not None
    return replace(c)
