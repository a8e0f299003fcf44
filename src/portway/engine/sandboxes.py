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

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from portway.core import files, firewall
from portway.errors import PortwayError, TeardownErrors
from portway.kernel import links, netns, procs
from portway.model.types import Container, Endpoint, IPAddress

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from portway.engine.context import Host

HOST_FILES = ("hosts", "hostname", "resolv.conf")


class SandboxHandle(Protocol):
    path: str

    @property
    def ipr(self) -> object: ...

    def close(self) -> None: ...


class SandboxKernel(Protocol):
    def create(self, path: str, tag: str) -> SandboxHandle: ...
    def open(self, path: str) -> AbstractContextManager[SandboxHandle]: ...
    def exists(self, path: str) -> bool: ...
    def delete(self, path: str) -> None: ...
    def kill_processes(self, path: str) -> int: ...
    def write_etc(self, path: str, files: dict[str, str]) -> None: ...
    def has_default_route(self, sandbox: SandboxHandle, version: int = 4) -> bool: ...
    def set_default_route(self, sandbox: SandboxHandle, ifname: str,
                          gateway: IPAddress) -> None: ...


@dataclass
class LiveSandbox:
    path: str
    ipr: IPRoute

    def close(self) -> None:
        self.ipr.close()


class LiveSandboxKernel:
    """Named network namespaces (kernel/netns.py), entered from helper threads only."""

    def create(self, path: str, tag: str) -> LiveSandbox:
        ipr = netns.create_netns(os.path.basename(path),
                                 lambda ipr: links.setup_loopback(ipr, tag))
        return LiveSandbox(path, ipr)

    @contextmanager
    def open(self, path: str) -> Iterator[LiveSandbox]:
        sandbox = LiveSandbox(path, netns.open_ipr(path))
        try:
            yield sandbox
        finally:
            sandbox.close()

    def exists(self, path: str) -> bool:
        return netns.netns_exists(os.path.basename(path))

    def delete(self, path: str) -> None:
        netns.delete_netns(os.path.basename(path))

    def kill_processes(self, path: str) -> int:
        return procs.kill_netns_processes(procs.netns_inode(path))

    def write_etc(self, path: str, files: dict[str, str]) -> None:
        netns.write_etc_netns(os.path.basename(path), files)

    def has_default_route(self, sandbox: SandboxHandle, version: int = 4) -> bool:
        return links.has_default_route(sandbox.ipr, version)

    def set_default_route(self, sandbox: SandboxHandle, ifname: str,
                          gateway: IPAddress) -> None:
        links.set_default_route(sandbox.ipr, ifname, gateway)


class Sandboxes:
    def __init__(self, host: Host) -> None:
        self.h = host

    def build(self, container: Container, endpoints: list[Endpoint]) -> None:
        """The container's namespace, its endpoints and its /etc files.

        The anti-spoofing entries and the /etc files go on a helper thread while this
        one does the netlink work: neither depends on the other (a port without its
        entries sends nothing, so their order does not matter), and each is most of a
        millisecond of waiting on the kernel and the disk."""
        h = self.h
        etc = self.etc_files(container, endpoints)
        guard = firewall.render_guard(endpoints, h.instance)

        def beside() -> None:
            if guard:
                h.fw.apply(guard)
            if etc is not None:
                h.sandbox_kernel.write_etc(container.netns, etc)

        helper = netns.Beside(beside)
        try:
            sandbox = h.sandbox_kernel.create(container.netns, h.tag("container", container.id))
            try:
                routed = False
                for endpoint in endpoints:
                    net = h.network(endpoint.network_id)
                    with_route = not routed and not net.internal
                    h.endpoints.attach(sandbox, container, endpoint, net, with_route,
                                       guarded=True)
                    routed = routed or with_route
            finally:
                sandbox.close()
        except BaseException:
            helper.join(quiet=True)  # done before the caller's undo touches the same
            raise
        helper.join()

    def teardown(self, c: Container, endpoints: list[Endpoint]) -> None:
        """Processes, endpoints and namespace of c; each step even if one fails."""
        if c.network_mode == "host":
            return
        kernel = self.h.sandbox_kernel
        errors: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("kill processes", lambda: kernel.kill_processes(c.netns)),
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

    def etc_files(self, container: Container,
                  endpoints: list[Endpoint]) -> dict[str, str] | None:
        """The container's /etc/hosts, hostname and resolv.conf (None: it has none)."""
        if container.network_mode == "host" or container.runtime != "portway":
            return None  # Podman writes its containers' /etc files itself
        addresses = [a.ip for e in endpoints for a in e.addresses]
        nameserver = None
        if endpoints:
            # The first network's DNS server, on its first gateway (the IPv4 one, where
            # there is one; an IPv6-only network's containers ask over IPv6).
            first = self.h.store.find_network(min(endpoints, key=lambda e: e.ifname).network_id)
            nameserver = str(first.gateway) if first else None
        return {
            "hosts": files.render_hosts(container.hostname, container.name, addresses),
            "hostname": files.render_hostname(container.hostname),
            "resolv.conf": files.container_resolv_conf(self.host_resolv(), nameserver),
        }

    def write_files(self, container: Container) -> None:
        etc = self.etc_files(container, self.h.store.endpoints(container_id=container.id))
        if etc is not None:
            self.h.sandbox_kernel.write_etc(container.netns, etc)

    def binds(self, container: Container) -> list[tuple[str, str]]:
        if container.network_mode == "host":
            return []
        directory = os.path.join(netns.ETC_NETNS, os.path.basename(container.netns))
        return [(os.path.join(directory, f), f"/etc/{f}") for f in HOST_FILES]

    def files_missing(self, container: Container) -> list[str]:
        directory = os.path.join(netns.ETC_NETNS, os.path.basename(container.netns))
        return [f for f in ("hosts", "resolv.conf")
                if not os.path.exists(os.path.join(directory, f))]


