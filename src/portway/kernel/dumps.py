"""Reads of the kernel's tables that survive the tables changing under them.

A netlink dump is answered in parts; when the table changes between two parts (a
namespace deleted meanwhile takes its links and their addresses and routes with it),
the kernel flags the dump as interrupted and pyroute2 raises. A read that is only a
read is then simply made again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

P = ParamSpec("P")
T = TypeVar("T")
ATTEMPTS = 5


def retried(read: Callable[P, T]) -> Callable[P, T]:
    """read, again (up to ATTEMPTS times in all) while the kernel says a dump of it was
    interrupted; read must change nothing."""

    @functools.wraps(read)
    def again(*args: P.args, **kwargs: P.kwargs) -> T:
        for _ in range(ATTEMPTS - 1):
            try:
                return read(*args, **kwargs)
            except NetlinkDumpInterrupted:
                continue
        return read(*args, **kwargs)

    return again
