"""Read-only answers where portway has nothing: `trace`, `show` and `audit` without a
daemon.

Rules of this module:
1. Nothing here changes the host it looks at. Starting portwayd would: it turns on
   `net.ipv4.ip_forward` and `bridge-nf-call-iptables` and repairs drift, so a trace
   could make a failing connection work. Where no daemon serves the state dir and the
   store holds no network and no container (or there is no store at all), the CLI asks
   this module instead, in a short-lived process of its own that enters the host
   namespace, records what it is asked about and leaves.
2. The state dir is only read: a missing one is not created, the database is opened
   read-only, and no meta row (instance, host namespace) is written.
3. Only `trace --live` (and `audit --live`) writes, and only what it always writes:
   its short-lived trace tables and probe namespace, removed before it answers.

The request comes on stdin as JSON ({"op": ..., "args": {...}}, as portwayd's); the
reply goes to stdout in marshal's format, as portwayd gives it to the CLI, or
{"need_daemon": true} when portway has networks or containers here (then the CLI asks
portwayd, which knows them).
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import sqlite3
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute

from portway.core import names
from portway.engine.fw import Firewall
from portway.errors import NotFound, PortwayError
from portway.kernel.nft import Nft
from portway.model.types import Container, Endpoint, IPAddress, Network

OPS = ("trace", "show", "audit")
DB_NAME = "portway.db"


class NoState:
    """The Store of a host where portway has nothing: empty, and read-only."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def get_meta(self, key: str) -> str | None:
        return None

    def set_meta(self, key: str, value: str) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def add_network(self, network: Network) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def find_network(self, ref: str) -> Network | None:
        return None

    def networks(self) -> list[Network]:
        return []

    def delete_network(self, network_id: str) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def add_container(self, container: Container) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def update_container(self, container: Container) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def find_container(self, ref: str) -> Container | None:
        return None

    def containers(self) -> list[Container]:
        return []

    def delete_container(self, container_id: str) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def add_endpoint(self, endpoint: Endpoint) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def endpoints(self, container_id: str | None = None,
                  network_id: str | None = None) -> list[Endpoint]:
        return []

    def delete_endpoint(self, endpoint_id: str) -> None:
        raise PortwayError("the read-only observer writes nothing")

    def address_in_use(self, network_id: str, address: IPAddress) -> bool:
        return False

    def container_names(self) -> set[str]:
        return set()

    def name_taken(self, table: str, name: str) -> bool:
        return False

    def close(self) -> None:
        pass


class _Nothing:
    """The engine's services, where there is nothing to look up."""

    cluster = None  # no overlay network's store: portway has no network here

    def container(self, ref: str) -> Container:
        raise NotFound(f"container {ref!r} not found",
                       "portway has no containers on this host: give an address "
                       "(IP:PORT) instead")

    def refresh(self, c: Container) -> Container:
        return c


class Observer:
    """What trace and show need of an Engine, on a host where portway has nothing.
    Lives in the host namespace (its process entered it before any thread)."""

    def __init__(self, state_dir: str, host_netns: str | None) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.host_netns = host_netns
        self.store = NoState()
        self.instance = names.new_id()[:8]  # tags a --live probe's namespace
        self.host = IPRoute()
        self.nft = Nft()
        self.fw = Firewall(self.nft, self.instance)
        self.h: Any = _Nothing()
        self.lock = threading.RLock()

    def tag(self, kind: str, object_id: str) -> str:
        return names.owner_tag(self.instance, kind, object_id)

    def close(self) -> None:
        self.fw.close()
        self.nft.close()
        self.host.close()

    def own_sockets(self) -> set[int]:
        """This short-lived process listens on nothing."""
        return set()

    def show(self) -> dict[str, Any]:
        from portway.engine import view

        return view.topology(self)

    def trace(self, source: str, destination: str, from_ip: str | None = None,
              live: bool = False, family: int | None = None) -> dict[str, Any]:
        from portway.engine import tracer

        return tracer.run(self, source, destination, from_ip, live, family)

    def audit(self, live: bool = False) -> dict[str, Any]:
        from portway.engine import audit

        return audit.run(self, self.state_dir, self.host_netns, live)


def portway_has_nothing(state_dir: str) -> bool:
    """True if the state dir holds no network and no container (or no store at all);
    False when it does, or when the store cannot be read without writing to it."""
    db = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(db):
        return True
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        for table in ("networks", "containers"):
            if con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]:
                return False
        return True
    except sqlite3.Error:
        return False
    finally:
        con.close()


def answer(state_dir: str, host_netns: str | None, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request, as portwayd would give it."""
    op = request.get("op")
    args = request.get("args") or {}
    if op not in OPS or not isinstance(args, dict):
        return {"ok": False, "error": f"unknown read-only operation {op!r}", "exit_code": 2}
    if not portway_has_nothing(state_dir):
        return {"need_daemon": True}
    if host_netns:
        from portway.kernel import sandbox

        try:
            sandbox.enter_netns(f"/run/netns/{host_netns}")
        except OSError as exc:
            return {"ok": False, "exit_code": 3,
                    "error": f"cannot enter host network namespace {host_netns!r}: "
                             f"{exc.strerror}",
                    "hint": f"create it with 'ip netns add {host_netns}'"}
    try:
        observer = Observer(state_dir, host_netns)
    except PortwayError as exc:
        return {"ok": False, **exc.to_dict()}
    try:
        return {"ok": True, "result": getattr(observer, op)(**args)}
    except PortwayError as exc:
        return {"ok": False, **exc.to_dict()}
    except TypeError as exc:
        return {"ok": False, "error": f"bad arguments for {op}: {exc}", "exit_code": 2}
    except Exception as exc:
        return {"ok": False, "error": f"internal error in {op}: {exc}", "exit_code": 70,
                "hint": "run again with --debug for details",
                "traceback": traceback.format_exc()}
    finally:
        observer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="portway-observe")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--host-netns", default=None)
    args = parser.parse_args(argv)
    try:
        request = json.loads(sys.stdin.read())
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except ValueError:
        reply: dict[str, Any] = {"ok": False, "error": "malformed request", "exit_code": 2}
    else:
        reply = answer(os.path.abspath(args.state_dir), args.host_netns or None, request)
    sys.stdout.buffer.write(marshal.dumps(reply))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
