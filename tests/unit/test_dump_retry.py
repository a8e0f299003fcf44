"""A read of the kernel's tables is made again when the kernel says its dump was
interrupted (gc failed with 'dump interrupted' when a namespace went meanwhile)."""

from __future__ import annotations

import pytest
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

from portway.kernel.dumps import ATTEMPTS, retried


def test_an_interrupted_dump_is_read_again() -> None:
    calls: list[int] = []

    @retried
    def links() -> list[str]:
        calls.append(1)
        if len(calls) < 3:
            raise NetlinkDumpInterrupted()
        return ["eth0"]

    assert links() == ["eth0"] and len(calls) == 3


def test_a_dump_interrupted_every_time_is_an_error_at_last() -> None:
    calls: list[int] = []

    @retried
    def links() -> list[str]:
        calls.append(1)
        raise NetlinkDumpInterrupted()

    with pytest.raises(NetlinkDumpInterrupted):
        links()
    assert len(calls) == ATTEMPTS


def test_the_reads_gc_makes_are_retried() -> None:
    from portway.kernel import links, observe

    for read in (links.observe_links, links.observe_addresses, links.observe_routes,
                 observe.route_table, observe.neighbours, observe.bridge_fdb):
        assert getattr(read, "__wrapped__", None) is not None, read.__name__
