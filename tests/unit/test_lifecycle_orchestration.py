"""The lifecycle service on fakes of the store and the kernel (tests/unit/fakes.py): what
a stop gives back, what a start makes again, restart policies and their back-off, wait,
and Docker's exit codes for a command that cannot run."""

from __future__ import annotations

import ipaddress
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import fake_host, rows

from portway.engine.context import Host
from portway.errors import PortwayError
from portway.model.types import Container


def container(h: Host, name: str) -> Container:
    c = h.store.find_container(name)
    assert c is not None
    return c


def settle(h: Host) -> None:
    h.process_kernel.settle()  # type: ignore[attr-defined]


def until(check: Any, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_stop_gives_back_networking_and_start_makes_it_again(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], ports=["8080:80"],
                     ip="10.77.0.50", detach=True)
    h.lifecycle.stop("web", 1)
    settle(h)
    c = container(h, "web")
    assert c.status == "exited" and not c.networked and c.exit_code == 128 + 15
    assert not w.links and not w.namespaces and not w.held and "port tcp/8080" not in w.rules
    assert h.store.endpoints() == [] and h.store.configs(container_id=c.id)
    # The address it asked for stays reserved; its host port is free for another.
    address = ipaddress.ip_address("10.77.0.50")
    assert h.store.address_holder(h.network("app").id, address) == c.id
    with pytest.raises(PortwayError, match="already in use on network app by web"):
        h.containers.run(["sleep", "1"], name="x", networks=["app"], ip="10.77.0.50",
                         detach=True)
    h.containers.run(["sleep", "1"], name="other", networks=["app"], ports=["8080:80"],
                     detach=True)
    # Its start fails while the other holds the port, and changes nothing.
    before = (rows(h), set(w.links), set(w.namespaces), set(w.rules))
    with pytest.raises(PortwayError, match="8080/tcp is already taken by container other"):
        h.lifecycle.start("web")
    assert (rows(h), set(w.links), set(w.namespaces), set(w.rules)) == before
    assert container(h, "web").status == "exited"
    h.containers.rm(["other"], force=True)
    settle(h)
    assert h.lifecycle.start("web") == "web"
    c = container(h, "web")
    assert c.status == "running" and c.networked and c.exit_code is None
    (e,) = h.store.endpoints(container_id=c.id)
    assert e.address == address and "port tcp/8080" in w.rules
    assert w.held == {("tcp", "", 8080)} and c.netns in w.namespaces


def test_start_of_a_container_whose_network_was_removed(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="web", networks=["app"], detach=True)
    h.lifecycle.stop("web", 1)
    settle(h)
    assert h.networks.remove(["app"]) == ["app"]  # only a stopped container names it
    with pytest.raises(PortwayError, match="network app not found"):
        h.lifecycle.start("web")
    h.containers.disconnect("app", "web")
    h.lifecycle.start("web")
    assert container(h, "web").status == "running"


def test_on_failure_restarts_with_back_off_until_its_maximum(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["false"], name="f", networks=["app"], detach=True,
                     restart="on-failure:2")
    started = time.monotonic()
    for count in (1, 2, 3):
        c = container(h, "f")
        assert c.status == "running"
        h.process_kernel.exit(c.pid, 1)  # type: ignore[attr-defined]
        settle(h)
        c = container(h, "f")
        if count <= 2:
            assert c.status == "restarting" and c.restart_count == count
            assert not c.networked  # released while it waits
            until(lambda: container(h, "f").status == "running")
    assert container(h, "f").status == "exited" and container(h, "f").restart_count == 2
    assert time.monotonic() - started >= 0.3  # 100 ms, then 200 ms


def test_a_user_stop_cancels_the_policy_and_start_clears_it(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="a", networks=["app"], detach=True,
                     restart="always")
    h.lifecycle.stop("a", 1)
    settle(h)
    time.sleep(0.2)
    c = container(h, "a")
    assert c.status == "exited" and c.user_stopped
    # portwayd's start brings `always` back (dockerd does too).
    assert h.lifecycle.resume() == ["started container a again (restart policy always)"]
    c = container(h, "a")
    assert c.status == "running" and not c.user_stopped
    h.lifecycle.kill("a", signal.SIGKILL)
    settle(h)
    assert container(h, "a").status == "exited"
    assert container(h, "a").exit_code == 137


def test_wait_returns_the_exit_code(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    h.containers.run(["sleep", "1"], name="w", networks=["app"], detach=True)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(h.lifecycle.wait("w")))
    waiter.start()
    time.sleep(0.1)
    assert got == []
    h.process_kernel.exit(container(h, "w").pid, 7)  # type: ignore[attr-defined]
    waiter.join(5)
    assert got == [7]
    assert h.lifecycle.wait("w") == 7  # not running: at once


@pytest.mark.parametrize(("program", "code"), [("no-such-program", 127), ("/etc", 126)])
def test_a_command_that_cannot_run_leaves_a_created_container(
        tmp_path: Path, program: str, code: int) -> None:
    h, w = fake_host(str(tmp_path))
    h.networks.create("app", subnet="10.77.0.0/24")
    w.log.clear()
    for detach in (True, False):
        name = f"c{int(detach)}"
        with pytest.raises(PortwayError) as info:
            h.containers.run([program], name=name, networks=["app"], ports=["8080:80"],
                             detach=detach)
        assert info.value.exit_code == code
        c = container(h, name)
        assert c.status == "created" and not c.networked
    assert w.log == [] and not w.held and h.store.endpoints() == []
    with pytest.raises(PortwayError) as info:
        h.containers.run([program], name="gone", networks=["app"], auto_remove=True,
                         detach=True)
    assert h.store.find_container("gone") is None
