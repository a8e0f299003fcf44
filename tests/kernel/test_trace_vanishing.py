"""trace on a machine whose namespaces come and go: one that goes away while trace reads
it (a lab torn down, a VM's process ending) is skipped with a note, not a traceback."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from portway.core import trace as core
from portway.engine import tracer
from portway.kernel import netns
from portway.testbed import add_netns, del_netns


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    # pwk-: a test's own; claimed, so a killed run's are reaped.
    host = f"pwk-v-{secrets.token_hex(3)}"
    lab = f"{host}-lab"
    add_netns(host)
    add_netns(lab)
    try:
        subprocess.run(["ip", "-n", host, "link", "add", "v0", "type", "veth", "peer",
                        "name", "eth0", "netns", lab], check=True)
        yield host, lab
    finally:
        del_netns(lab)
        del_netns(host)


def test_a_namespace_that_vanishes_while_trace_reads_it_is_skipped_with_a_note(
        names: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    host, lab = names
    real = tracer._record_foreign
    entered: list[str] = []

    def vanishing(ns: netns.Namespace, found: list[netns.Namespace]
                  ) -> tuple[core.Space, dict[int, int]] | None:
        # The lab is torn down between being found and being entered.
        entered.append(ns.key)
        del_netns(lab)
        return real(ns, found)

    monkeypatch.setattr(tracer, "_record_foreign", vanishing)

    def record() -> core.World:
        world = core.World(host=tracer._space(tracer.HOST, "host", None, [], {}), spaces={})
        tracer.discover(world, None, tracer.Modelled({}))  # type: ignore[arg-type]
        return world

    world = netns.in_netns(netns.netns_path(host), record)
    assert entered == [f"ns:{lab}"]
    assert world.notes == [f"namespace {lab} went away while trace read it: skipped "
                           "(trace again if it is back)"]
    assert not dict(world.spaces) and world.host.iface("v0") is not None


def test_another_namespace_under_the_name_is_not_read_as_the_one_found(
        names: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    host, lab = names
    real = tracer._record_foreign

    def replaced(ns: netns.Namespace, found: list[netns.Namespace]
                 ) -> tuple[core.Space, dict[int, int]] | None:
        # Torn down and made again under the same name: a namespace of another inode.
        del_netns(lab)
        add_netns(lab)
        return real(ns, found)

    monkeypatch.setattr(tracer, "_record_foreign", replaced)

    def record() -> core.World:
        world = core.World(host=tracer._space(tracer.HOST, "host", None, [], {}), spaces={})
        tracer.discover(world, None, tracer.Modelled({}))  # type: ignore[arg-type]
        return world

    world = netns.in_netns(netns.netns_path(host), record)
    assert world.notes == [f"namespace {lab} went away while trace read it: skipped "
                           "(trace again if it is back)"]
    assert not dict(world.spaces)
