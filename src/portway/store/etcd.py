"""The cluster store: etcd v3, through its grpc-gateway JSON API (etcd3gw), for what
the hosts of an overlay network share.

Rules of this module:
1. Every request goes to the members of --cluster-store in turn until one answers;
   when none does, ClusterUnreachable says so in one line (which members, why).
2. Writes that must not collide (a network's name and VNI, an address) are one etcd
   transaction that compares create revisions: of two hosts asking at once, exactly
   one wins.
3. The watch is a stream from a revision cursor: a compacted cursor, a cancelled watch
   or a broken connection ends the stream, and the caller lists everything again and
   watches from the listed revision (Watch.run).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from portway.core.overlay import Member, prefix_end
from portway.errors import PortwayError

TIMEOUT = 3.0


class ClusterUnreachable(PortwayError):
    all_refused = True  # no member answered at all (nothing to wait for)

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message, hint or "check that etcd runs and that this host reaches "
                         "it ('portway daemon status' shows the cluster)", exit_code or 69)


class StoreRefused(PortwayError):
    """etcd answered, and said no (an unknown lease, a malformed request)."""

    exit_code = 69


# gRPC codes of answers that another member or a retry would give the same: invalid
# argument, not found, already exists, permission denied, failed precondition, out of
# range, unimplemented, unauthenticated.
DEFINITE = {3, 5, 6, 7, 9, 11, 12, 16}


def _refusal(exc: Exception) -> str | None:
    """The server's message, if exc is a definite answer (DEFINITE), else None."""
    try:
        body = json.loads(str(getattr(exc, "detail_text", "") or ""))
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("code") in DEFINITE:
        return str(body.get("message") or body.get("error") or "")
    return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    key: str
    value: str  # "" for a delete
    revision: int
    lease: int = 0  # the lease the key was put under (0: none, or a delete)


def _kv(d: dict[str, Any]) -> KV:
    return KV(key=_unb64(d["key"]), value=_unb64(d["value"]) if d.get("value") else "",
              mod_revision=int(d.get("mod_revision", 0)), lease=int(d.get("lease", 0)))


class Etcd:
    """A client of one etcd cluster (its members tried in turn)."""

    def __init__(self, members: tuple[Member, ...], timeout: float = TIMEOUT) -> None:
        self.members = members
        self.timeout = timeout
        self._clients = [Etcd3Client(host=m.host, port=m.port, timeout=timeout,
                                     api_path="/v3/") for m in members]
        self._current = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def url(self) -> str:
        return "etcd://" + ",".join(str(m) for m in self.members)

    def _call(self, fn: Callable[[Etcd3Client], Any]) -> Any:
        """fn on the members in turn, from the last one that answered. A round in which
        some member answered with an error (an election under way: "no leader") is tried
        again for a few seconds; refused connections alone are not."""
        deadline = time.monotonic() + 2 * self.timeout
        while True:
            try:
                return self._round(fn)
            except ClusterUnreachable as exc:
                if exc.all_refused or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def close(self) -> None:
        """Nothing more is sent: a request from now on (a retry, or the next member tried,
        of one under way too) fails as unreachable at once. A request already sent is
        not taken back: its answer is waited for as before."""
        self._closed.set()

    def _round(self, fn: Callable[[Etcd3Client], Any]) -> Any:
        errors = []
        with self._lock:
            start = self._current
        for i in range(len(self._clients)):
            if self._closed.is_set():
                raise ClusterUnreachable(f"the client of the cluster store {self.url()} "
                                         "is closed (the daemon stops)")
            index = (start + i) % len(self._clients)
            client = self._clients[index]
            try:
                result = fn(client)
            except Etcd3Exception as exc:
                refused = _refusal(exc)
                if refused is not None:
                    # An answer, not a failure to reach: another member says the same.
                    raise StoreRefused(f"the cluster store refused: {refused}") from None
                errors.append(f"{self.members[index]}: {_short(exc)}")
                continue
            except requests.RequestException as exc:
                errors.append(f"{self.members[index]}: {_short(exc)}")
                continue
            with self._lock:
                self._current = index
            return result
        unreachable = ClusterUnreachable("cannot reach the cluster store " + self.url() + " ("
                                         + "; ".join(errors) + ")")
        unreachable.all_refused = all(e.endswith(("connection refused", "no route to host",
                                                  "network unreachable", "timed out"))
                                      for e in errors)
        raise unreachable

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(lambda c: c.post(c.get_url(path), json=body))
        return result

    # reads

    def range(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under prefix, and the store's revision they were read at."""
        reply = self.post("/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [_kv(d) for d in reply.get("kvs", [])], int(reply["header"]["revision"])

    def get(self, key: str) -> str | None:
        kv = self.read(key)
        return kv.value if kv is not None else None

    def read(self, key: str) -> KV | None:
        """key's value with its lease (None: there is no such key)."""
        reply = self.post("/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    # writes

    def put(self, key: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.post("/kv/put", body)

    def delete(self, *keys: str) -> None:
        if keys:
            self.post("/kv/txn", {"success": [{"request_delete_range": {"key": _b64(k)}}
                                              for k in keys]})

    def delete_owned(self, owned: dict[str, str]) -> None:
        """Delete each key of owned only while it still holds its value there (an address
        another host has claimed since stays that host's)."""
        for key, value in owned.items():
            self.post("/kv/txn", {
                "compare": [{"key": _b64(key), "result": "EQUAL", "target": "VALUE",
                             "value": _b64(value)}],
                "success": [{"request_delete_range": {"key": _b64(key)}}]})

    def create_all(self, puts: dict[str, str], lease: int = 0,
                   deletes: tuple[str, ...] = (), present: tuple[str, ...] = ()) -> bool:
        """Put every key of puts, in one transaction, only if none of them exists
        and every key of present does (and delete deletes with them). False: one
        exists, or one of present does not (nothing was written)."""
        put_ops = [{"request_put": {"key": _b64(k), "value": _b64(v),
                                    **({"lease": lease} if lease else {})}}
                   for k, v in puts.items()]
        reply = self.post("/kv/txn", {
            "compare": [{"key": _b64(k), "result": "EQUAL", "target": "CREATE",
                         "create_revision": 0} for k in puts] +
                       [{"key": _b64(k), "result": "GREATER", "target": "CREATE",
                         "create_revision": 0} for k in present],
            "success": put_ops + [{"request_delete_range": {"key": _b64(k)}}
                                  for k in deletes]})
        return bool(reply.get("succeeded", False))

    def delete_if_unchanged(self, prefix: str, revision: int, keys: tuple[str, ...]) -> bool:
        """Delete keys, in one transaction, only if no key under prefix was written
        since revision (as a range read at revision saw them, so no key was added).
        False: one was (nothing was deleted)."""
        reply = self.post("/kv/txn", {
            "compare": [{"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                         "result": "LESS", "target": "MOD", "mod_revision": revision + 1}],
            "success": [{"request_delete_range": {"key": _b64(k)}} for k in keys]})
        return bool(reply.get("succeeded", False))

    def put_if(self, expect: dict[str, str | None], puts: dict[str, str],
               lease: int = 0) -> bool:
        """Put every key of puts, in one transaction, only while each key of expect
        holds the value given there (None: it does not exist), as they were read before
        deciding what to put. False: one changed meanwhile (nothing was written). (etcd
        fails a compare of the value of a key that does not exist: the absent ones are
        compared by their create revision, 0.)"""
        compare: list[dict[str, Any]] = [
            {"key": _b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
            if v is None else
            {"key": _b64(k), "result": "EQUAL", "target": "VALUE", "value": _b64(v)}
            for k, v in expect.items()]
        reply = self.post("/kv/txn", {
            "compare": compare,
            "success": [{"request_put": {"key": _b64(k), "value": _b64(v),
                                         **({"lease": lease} if lease else {})}}
                        for k, v in puts.items()]})
        return bool(reply.get("succeeded", False))

    # leases

    def grant(self, ttl: int) -> int:
        return int(self.post("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's new TTL; 0 or less: it has expired."""
        reply = self.post("/lease/keepalive", {"ID": lease})
        return int(reply.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        try:
            self.post("/kv/lease/revoke", {"ID": lease})
        except PortwayError:
            pass  # unknown or expired: gone either way

    # the cluster

    def status(self) -> list[dict[str, Any]]:
        """The cluster's members, each with whether it answered (and its version and
        whether it leads)."""
        members = self.post("/cluster/member/list", {}).get("members", [])
        out = []
        for m in members:
            urls = m.get("clientURLs", [])
            entry: dict[str, Any] = {"name": m.get("name", ""), "client_urls": urls,
                                     "id": str(m.get("ID", "")), "healthy": False}
            for url in urls:
                try:
                    reply = requests.post(url.rstrip("/") + "/v3/maintenance/status",
                                          json={}, timeout=self.timeout).json()
                except (requests.RequestException, ValueError):
                    continue
                entry.update(healthy=True, version=reply.get("version", ""),
                             leader=str(reply.get("leader")) == entry["id"])
                break
            out.append(entry)
        return out

    # watching

    def stream(self, prefix: str, start_revision: int, stop: threading.Event,
               opened: Callable[[requests.Response], None]) -> Iterator[Event | None]:
        """The events under prefix from start_revision on, as they come; None for a
        progress notice. Ends (returns) when the cursor was compacted, the watch was
        cancelled or the connection broke: the caller lists again. Opens none once stop
        is set or the client is closed (close: the stream is not sent through _round)."""
        if stop.is_set() or self._closed.is_set():
            return
        client = self._clients[self._current]
        body: dict[str, Any] = {"create_request": {
            "key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
            "start_revision": start_revision, "progress_notify": True}}
        try:
            resp = client.session.post(client.get_url("/watch"), json=body, stream=True,
                                       timeout=(self.timeout, 30))
        except requests.RequestException:
            return
        opened(resp)
        try:
            for line in _lines(resp):
                if stop.is_set():
                    return
                result = json.loads(line).get("result", {})
                if int(result.get("compact_revision", 0) or 0) > 0 or result.get("canceled"):
                    return
                events = result.get("events", [])
                if not events:
                    yield None
                for e in events:
                    kv = _kv(e["kv"])
                    yield Event("delete" if e.get("type") == "DELETE" else "put",
                                kv.key, kv.value, kv.mod_revision, kv.lease)
        except (requests.RequestException, ValueError, AttributeError):
            return
        finally:
            resp.close()


def _lines(resp: requests.Response) -> Iterator[bytes]:
    """The stream's messages (one JSON object a line) as each arrives: chunk_size=None
    hands over what the connection has, where iter_lines would wait for 512 bytes."""
    buffer = b""
    for chunk in resp.iter_content(chunk_size=None):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _short(exc: BaseException) -> str:
    """The reason, short: etcd3gw keeps it in detail_text (the requests error, or the
    server's answer)."""
    text = str(getattr(exc, "detail_text", None) or exc)
    for needle, said in (("Connection refused", "connection refused"),
                         ("timed out", "timed out"), ("No route to host", "no route to host"),
                         ("Network is unreachable", "network unreachable")):
        if needle in text:
            return said
    return text.splitlines()[0][:120] if text else type(exc).__name__


class Watch:
    """List-then-watch under a prefix, for good: on_snapshot gets every key and the
    revision, then on_event each change; after a compaction, a cancelled watch or a
    lost connection, on_snapshot again (a full re-list), then the events from there."""

    def __init__(self, etcd: Etcd, prefix: str,
                 on_snapshot: Callable[[list[KV], int], None],
                 on_event: Callable[[Event], None],
                 on_error: Callable[[str], None]) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.on_error = on_error
        self.stop_event = threading.Event()
        self._resp: requests.Response | None = None
        self.revision = 0
        self.relists = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                kvs, revision = self.etcd.range(self.prefix)
            except PortwayError as exc:
                self.on_error(exc.message)
                self.stop_event.wait(1.0)
                continue
            self.relists += 1
            self.revision = revision
            self.on_snapshot(kvs, revision)
            for event in self.etcd.stream(self.prefix, revision + 1, self.stop_event,
                                          self._opened):
                if event is None:
                    continue
                self.revision = max(self.revision, event.revision)
                self.on_event(event)
            if not self.stop_event.is_set():
                self.stop_event.wait(0.5)

    def _opened(self, resp: requests.Response) -> None:
        self._resp = resp

    def stop(self) -> None:
        self.stop_event.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.raw._fp.fp.raw._sock.shutdown(2)  # unblock the reader at once
            except Exception:
                pass
            resp.close()


def wait_ready(etcd: Etcd, timeout: float) -> None:
    """Until etcd answers (ClusterUnreachable past timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            etcd.range("/portway/")
            return
        except ClusterUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
