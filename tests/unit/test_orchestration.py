"""The engine's orchestration on fakes of the store and the kernel (tests/unit/fakes.py):
the order of the steps, what a failure at each step leaves (nothing), and that
removing is exhaustive and can be done twice."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from fakes import FakeDns, fake_host, rows

from portway.engine.containers import Attachment
from portway.errors import KernelError, NotFound, PortwayError
from portway.model.types import Container

RUN_STEPS = ["netns.create", "bridge.prepare", "bridge.attach", "fw.add_ports",
             "process.spawn"]


def test_network_create_and_its_undo(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    net = h.networks.create("app", subnet="10.77.0.0/24")
    assert w.log == ["bridge.ensure app", "fw.add_network app"]
    assert rows(h) == (1, 0, 0) and net.bridge in w.bridges
    # A failure in the firewall: its undo (registered before the step, so whatever part
    # got in goes) and the bridge's run in reverse order, and no row stays.
    w.fail_at.add("fw.add_network")
    w.log.clear()
    with pytest.raises(KernelError):
        h.networks.create("db", subnet="10.78.0.0/24")
    assert w.log == ["bridge.ensure db", "fw.add_network db", "fw.remove_network db",
                     "bridge.delete db"]
    assert rows(h) == (1, 0, 0) and w.bridges == {net.bridge}


def test_a_subnet_that_collides_changes_nothing(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    with pytest.raises(PortwayError, match="overlaps"):
        h.networks.create("app", subnet="198.51.100.0/25")
    assert w.log == [] and rows(h) == (0, 0, 0)


def test_every_subnet_of_a_network_is_taken(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    first = h.networks.create("a", ipv6=True)
    second = h.networks.create("b", ipv6=True)
    assert first.of_version(6) != second.of_version(6)
    with pytest.raises(PortwayError, match="overlaps"):
        h.networks.create("c", ipv6=True, ipv4=False,
                          subnet=str(second.of_version(6).subnet))  # type: ignore[union-attr]


def test_run_steps_in_order(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    w.log.clear()
    info = h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80"],
                            detach=True)
    steps = [s for s in w.log if s.split(" ")[0] in RUN_STEPS]
    assert steps == ["netns.create", "bridge.prepare eth0", "bridge.attach eth0",
                     "fw.add_ports", "process.spawn"]
    # The namespace and the pair are made beside the set-up's own thread (they need
    # nothing allocated); the host port is held before the endpoint is attached.
    assert w.log.index("port.reserve") < w.log.index("bridge.attach eth0")
    c = h.store.find_container("web")
    assert c is not None and c.status == "running" and info["Id"] == c.id
    assert w.held == {("tcp", "", 8080)} and "port tcp/8080" in w.rules
    assert w.etc[c.netns]["hosts"].startswith("127.0.0.1")


def test_run_tells_the_dns_server_before_its_kernel_work_and_waits_after(
        tmp_path: Path) -> None:
    """The server (a process of its own) takes the new records in while the kernel work
    is done; run returns only once it has answered."""
    h, w = fake_host(str(tmp_path))
    h.dns = FakeDns(w)
    h.networks.create("app", subnet="10.77.0.0/24")
    w.log.clear()
    h.containers.run(["sleep", "1"], name="web", networks=["app"], detach=True)
    steps = [s for s in w.log if s.split(" ")[0] in [*RUN_STEPS, "dns.announce",
                                                      "dns.settle", "dns.update"]]
    # (The namespace and the pair are made meanwhile, beside: in either order with it.)
    kernel_first = [s for s in steps if s not in ("netns.create", "bridge.prepare eth0")]
    assert kernel_first == ["dns.announce web", "bridge.attach eth0", "process.spawn",
                            "dns.settle"]
    assert steps.index("netns.create") < steps.index("bridge.prepare eth0") < \
        steps.index("bridge.attach eth0")
    assert list(w.names.values()) == ["web"]


@pytest.mark.parametrize("step", RUN_STEPS)
def test_a_failed_run_takes_its_dns_records_back(tmp_path: Path, step: str) -> None:
    h, w = fake_host(str(tmp_path))
    h.dns = FakeDns(w)
    h.networks.create("app", subnet="10.77.0.0/24")
    w.fail_at.add(step)
    with pytest.raises(PortwayError):
        h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80"],
                         detach=True)
    assert w.names == {} and "dns.withdraw" in w.log and "dns.settle" not in w.log
    w.fail_at.clear()
    h.containers.run(["sleep", "1"], name="web", networks=["app"], detach=True)
    assert list(w.names.values()) == ["web"] and w.log[-1] == "dns.settle"


@pytest.mark.parametrize("step", RUN_STEPS)
def test_a_failure_at_each_step_of_run_leaves_nothing(tmp_path: Path, step: str) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    before = (set(w.links), set(w.namespaces), set(w.rules), set(w.held), dict(w.processes))
    w.fail_at.add(step)
    with pytest.raises(PortwayError):
        h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80"],
                         detach=True)
    assert rows(h) == (1, 0, 0)
    assert (set(w.links), set(w.namespaces), set(w.rules), set(w.held),
            dict(w.processes)) == before, w.log
    # The address the failed run had is free again: the next container gets it.
    w.fail_at.clear()
    h.containers.run(["sleep", "1"], name="web", networks=["app"], detach=True)
    (e,) = h.store.endpoints()
    assert e.address == ipaddress.ip_address("10.77.0.2")


def test_remove_is_exhaustive_and_can_be_done_twice(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80"],
                     detach=True)
    c = h.store.find_container("web")
    assert c is not None
    # One step of the teardown fails: the others still run, and the error says which.
    w.fail_at.add("netns.kill")
    # Under the engine's lock, as rm holds it: the killed process's end is reported from
    # the watcher's thread, which must not record the container again while it goes.
    with h.lock, pytest.raises(PortwayError, match="kill processes"):
        h.containers.remove(c)
    assert rows(h) == (1, 0, 0) and not w.links and not w.namespaces and not w.held
    assert "port tcp/8080" not in w.rules
    # Again, with everything already gone: nothing to do, no error.
    w.fail_at.clear()
    with h.lock:
        h.containers.remove(c)
    (result,) = h.containers.rm(["web"])
    assert result["exit_code"] == NotFound.exit_code and "not found" in result["error"]


def test_disconnect_moves_published_ports_to_the_first_endpoint(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("front", subnet="10.77.0.0/24")
    h.networks.create("back", subnet="10.78.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["front", "back"],
                     ports=["8080:80"], detach=True)
    c = h.store.find_container("web")
    assert c is not None
    assert [str(p.container_ip) for p in h.publishing.published(c)] == ["10.77.0.2"]
    w.log.clear()
    h.containers.disconnect("front", "web")
    assert w.log[:3] == ["fw.remove_ports", "fw.add_ports", "fw.remove_guard"]
    assert [str(p.container_ip) for p in h.publishing.published(c)] == ["10.78.0.2"]


def test_attach_sandbox_for_a_runtime_is_all_or_nothing(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    front = h.networks.create("front", subnet="10.77.0.0/24")
    back = h.networks.create("back", subnet="10.78.0.0/24")
    w.namespaces.add("/run/netns/theirs")
    c = Container(id="ab" * 32, name="pod", hostname="pod", command=(),
                  netns="/run/netns/theirs", status="running", runtime="podman")
    w.fail_at.add("bridge.attach eth1")
    with pytest.raises(PortwayError, match="attach pod to back"):
        h.containers.attach_sandbox(c, [Attachment(front, ifname="eth0"),
                                        Attachment(back, ifname="eth1")], new=True)
    assert rows(h) == (2, 0, 0) and not w.links
    w.fail_at.clear()
    endpoints = h.containers.attach_sandbox(c, [Attachment(front, ifname="eth0"),
                                                Attachment(back, ifname="eth1")], new=True)
    assert [e.ifname for e in endpoints] == ["eth0", "eth1"] and len(w.links) == 2
    assert "/run/netns/theirs" in w.namespaces  # the runtime's sandbox: never portway's
    # Its lo up, as netavark sets it: Podman relies on it (rootless published ports).
    assert w.loopback_up == {"/run/netns/theirs"}
    assert h.containers.detach_sandbox(c, {"front"}) == [front.id]
    assert len(w.links) == 1 and h.store.find_container("pod") is not None
    h.containers.detach_sandbox(c, None)
    assert not w.links and h.store.find_container("pod") is None
    assert "/run/netns/theirs" in w.namespaces


def test_a_port_follows_the_container_into_its_next_network(tmp_path: Path) -> None:
    """Bug: leaving its last network and joining another lost a container's published
    ports (they stayed reserved, and nothing reached it)."""
    h, w = fake_host(str(tmp_path))
    h.networks.create("front", subnet="10.77.0.0/24")
    h.networks.create("back", subnet="10.78.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["front"], ports=["8080:80"],
                     detach=True)
    h.containers.disconnect("front", "web")
    assert "port tcp/8080" not in w.rules and w.held == {("tcp", "", 8080)}
    h.containers.connect("back", "web")
    assert "port tcp/8080" in w.rules
    c = h.store.find_container("web")
    assert c is not None
    assert [str(p.container_ip) for p in h.publishing.published(c)] == ["10.78.0.2"]


@pytest.mark.parametrize("bad", [
    {"ip": "10.77.0.2"},  # web's address (found after the namespace is being made)
    {"ports": ["8080:81"]},  # web's host port (found in up, after the rows)
])
def test_bad_input_found_after_the_early_kernel_work_leaves_none_of_it(
        tmp_path: Path, bad: dict[str, object]) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80"],
                     detach=True)
    before = (set(w.links), set(w.namespaces), set(w.rules), set(w.held))
    w.log.clear()
    with pytest.raises(PortwayError):
        h.containers.run(["sleep", "1"], name="db", networks=["app"], detach=True,
                         **bad)  # type: ignore[arg-type]
    assert "bridge.prepare eth0" in w.log and "bridge.unprepare" in w.log, w.log
    assert (set(w.links), set(w.namespaces), set(w.rules), set(w.held)) == before, w.log
    assert len(h.store.endpoints()) == 1
