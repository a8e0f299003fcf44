"""Hostile clients against the embedded DNS server, from inside containers.

Each test first shows that the attack does what it means to (its control: the
attacker really holds what it set out to hold: answers the kernel would not
take, connection slots, forwarded queries in flight, or an oracle that tells
names apart), and then that it fails: every other container's lookups answer
within a second, and the attacker learns or keeps nothing more. What the server
holds is read from its control socket ("stats") and from the kernel (ss).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Sandbox
from portway.dns import limits

FAKE_DNS = str(Path(__file__).with_name("fake_dns.py"))


def stats(sb: Sandbox) -> dict[str, Any]:
    """The DNS server's own account of what clients hold (its control socket)."""
    # A path to answer to: an abstract address is per network namespace, and the
    # server lives in the sandbox's host namespace.
    path = sb.state_dir.parent / f"stats-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        try:
            s.settimeout(5)
            s.sendto(b"stats", str(sb.state_dir / "dns.sock"))
            reply: dict[str, Any] = json.loads(s.recv(1 << 20))
        finally:
            path.unlink()
    assert reply["ok"]
    return reply


ASK = r"""
import json, socket, struct, sys, time
server = sys.argv[1]

def ask(proto, name):
    q = struct.pack("!HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    started = time.monotonic()
    try:
        if proto == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.connect((server, 53))
                s.send(q)
                r = s.recv(4096)
        else:
            with socket.create_connection((server, 53), 3) as s:
                s.settimeout(3)
                s.sendall(len(q).to_bytes(2, "big") + q)
                r = b""
                while len(r) < 2 or len(r) < 2 + int.from_bytes(r[:2], "big"):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed by the server")
                    r += chunk
                r = r[2:]
    except OSError as exc:
        return {"ask": f"{proto}:{name}", "error": str(exc) or type(exc).__name__}
    answers = struct.unpack("!H", r[6:8])[0]
    return {"ask": f"{proto}:{name}", "ms": (time.monotonic() - started) * 1000,
            "rcode": r[3] & 15, "a": [socket.inet_ntoa(r[-4:])] if answers else []}

print(json.dumps([ask(*spec.split(":")) for spec in sys.argv[2:]]))
"""


def ask(sb: Sandbox, container: str, server: str, *specs: str) -> list[dict[str, Any]]:
    """Lookups ("udp:NAME", "tcp:NAME") from a container, each timed inside it."""
    out = sb.pw("exec", container, "--", "python3", "-c", ASK, server, *specs).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


def assert_prompt(results: list[dict[str, Any]], expected: dict[str, list[str]]) -> None:
    """Every lookup answered NOERROR with the expected address, within a second."""
    for r in results:
        assert "error" not in r, r
        assert r["rcode"] == 0 and r["a"] == expected[r["ask"].split(":")[1]], r
        assert r["ms"] < 1000, r


class Script:
    """A python3 script running in a container, driven line by line: each line written
    to it is answered with one line of JSON."""

    def __init__(self, sb: Sandbox, container: str, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            sb.pw_cmd("exec", "-i", container, "--", "python3", "-u", "-c", script, *args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def line(self, timeout: float = 20) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the script in the container did not answer"
        text = self.proc.stdout.readline()
        assert text, "the script in the container ended"
        return json.loads(text)

    def command(self, text: str, timeout: float = 20) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.line(timeout)

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# 1. A TCP client that asks and never reads

NO_READ = r"""
import json, select, socket, struct, sys
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03att\x00\x00\x01\x00\x01"
frame = len(q).to_bytes(2, "big") + q

def connect():
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: answers back up
    c.connect((sys.argv[1], 53))
    c.setblocking(False)
    return c

s, asked = connect(), 0

def send(data):
    sent = 0
    while sent < len(data):
        try:
            sent += s.send(data[sent:])
        except BlockingIOError:
            if not select.select([], [s], [], 3)[1]:
                return "stuck"  # the server takes no more of this connection's queries
        except OSError as exc:
            return type(exc).__name__
    return "sent"

def read():
    s.settimeout(3)
    buf, got, end = b"", 0, "open"
    try:
        while got < asked:
            chunk = s.recv(65536)
            if not chunk:
                end = "closed"
                break
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                buf = buf[2 + int.from_bytes(buf[:2], "big"):]
                got += 1
    except ConnectionResetError:
        end = "closed"
    except TimeoutError:
        end = "timeout"
    s.setblocking(False)
    return {"answers": got, "end": end}

for line in sys.stdin:
    word, *count = line.split()
    if word == "ask":  # queries for a local name, answers left unread
        asked += int(count[0])
        print(json.dumps({"asked": asked, "send": send(frame * int(count[0]))}), flush=True)
    elif word == "new":  # a fresh connection (the kernel's buffers for it not grown yet)
        s.close()
        s, asked = connect(), 0
        print(json.dumps({"asked": asked}), flush=True)
    else:
        print(json.dumps(read()), flush=True)
"""


def send_queue(sb: Sandbox, peer: str) -> int:
    """The kernel's send queue (bytes) of the server's TCP connection to peer."""
    out = sb.in_host("ss", "-tnH", "state", "established", "( sport = :53 )").stdout
    for line in out.splitlines():
        words = line.split()
        if words[-1].startswith(f"{peer}:"):
            return int(words[1])
    raise AssertionError(f"no connection from {peer}: {out}")


def test_a_tcp_client_that_never_reads_freezes_nobody(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "a", "--subnet", "10.71.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.72.0.0/24")
    sb.pw("run", "-d", "--name", "att", "--network", "a", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "vic", "--network", "b", "--", "sleep", "3600")
    attacker = Script(sb, "att", NO_READ, "10.71.0.1")
    try:
        # Control: the attacker asks in steps and reads nothing, until the server holds
        # answers for it that the kernel would not take: the point where a blocking
        # write would have stopped the server's one loop, for every network.
        held = 0
        for _ in range(60):
            assert attacker.command("ask 200")["send"] == "sent"
            time.sleep(0.05)
            held = stats(sb)["tcp"]["unsent_bytes"]
            if held:
                break
        assert 0 < held <= limits.TCP_OUTPUT_LIMIT
        assert send_queue(sb, "10.71.0.2") > 0  # and the kernel holds answers for it too
        asked = attacker.command("ask 0")["asked"]
        # The fix: meanwhile the others' lookups answer at once, over UDP and TCP.
        assert_prompt(ask(sb, "vic", "10.72.0.1", "udp:vic", "tcp:vic"), {"vic": ["10.72.0.2"]})
        # Nothing it asked is lost: once it reads, every answer comes.
        assert attacker.command("read") == {"answers": asked, "end": "open"}
        # Asking on and on without reading (on a new connection, as the kernel's
        # buffers for the first grew while it read): closed once 64 KiB of answers
        # wait for it.
        attacker.command("new")
        attacker.command("ask 50000")  # into its own socket's buffer: the server reads on
        deadline = time.monotonic() + 5
        while not (now := stats(sb))["shed"].get("tcp: answers not read"):
            assert time.monotonic() < deadline, now
            time.sleep(0.05)
        assert now["shed"]["tcp: answers not read"] == 1 and now["tcp"]["open"] == 0
        got = attacker.command("read")
        assert got["end"] == "closed" and got["answers"] < 50000
        assert_prompt(ask(sb, "vic", "10.72.0.1", "udp:vic", "tcp:vic"), {"vic": ["10.72.0.2"]})
    finally:
        attacker.close()


# 2. Many slow TCP connections

SLOW = r"""
import json, socket, sys, time
server, count = sys.argv[1], int(sys.argv[2])
conns = [socket.create_connection((server, 53), 2) for _ in range(count)]
started = time.monotonic()
for s in conns:
    s.setblocking(True)  # MSG_DONTWAIT below, not the timeout's wait

def closed(s):
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True

time.sleep(0.3)
alive = [s for s in conns if not closed(s)]
print(json.dumps({"open": len(alive)}), flush=True)
# One byte a second on each: a query's length, then its first bytes; never a whole query.
trickle = b"\x00\x1d" + bytes(27)
sent, ended = 0, {}
while len(ended) < len(alive) and time.monotonic() - started < 10:
    due = time.monotonic() - started >= 0.5 + sent
    for i, s in enumerate(alive):
        if i not in ended and closed(s):
            ended[i] = round(time.monotonic() - started, 2)
        elif i not in ended and due:
            try:
                s.send(trickle[sent:sent + 1])
            except OSError:
                ended[i] = round(time.monotonic() - started, 2)
    sent += due
    time.sleep(0.05)
print(json.dumps({"closed_after": sorted(ended.values()), "bytes": sent}), flush=True)
"""

STEADY = r"""
import json, socket, struct, sys, time
# One connection, a whole query every second for seven seconds: a client that is slow
# but never idle keeps its connection.
q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x04peer\x00\x00\x01\x00\x01"
s = socket.create_connection((sys.argv[1], 53), 3)
s.settimeout(3)
answered = 0
for _ in range(7):
    s.sendall(len(q).to_bytes(2, "big") + q)
    r = b""
    while len(r) < 2 or len(r) < 2 + int.from_bytes(r[:2], "big"):
        chunk = s.recv(4096)
        if not chunk:
            break
        r += chunk
    answered += len(r) >= 2 + 12 and r[2 + 3] & 15 == 0  # NOERROR
    time.sleep(1)
print(json.dumps({"answered": answered}), flush=True)
"""


def test_slow_tcp_connections_lock_out_nobody(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "a", "--subnet", "10.73.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.74.0.0/24")
    sb.pw("run", "-d", "--name", "att", "--network", "a", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "peer", "--network", "a", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "vic", "--network", "b", "--", "sleep", "3600")
    steady = Script(sb, "peer", STEADY, "10.73.0.1")
    attacker = Script(sb, "att", SLOW, "10.73.0.1", "64")
    try:
        # Control: the attacker holds all its address may hold, 8 connections, each
        # fed a byte now and then; the other 56 were closed at once. (64 slots were
        # all the server had before.)
        assert attacker.line() == {"open": limits.TCP_PER_CLIENT}
        now = stats(sb)
        assert now["tcp"]["by_client"]["10.73.0.2"] == limits.TCP_PER_CLIENT
        assert now["shed"]["tcp: over the limits"] == 64 - limits.TCP_PER_CLIENT
        # The fix: other containers' TCP lookups answer at once, on its network and another.
        assert_prompt(ask(sb, "vic", "10.74.0.1", "tcp:vic", "udp:vic"),
                      {"vic": ["10.74.0.2"]})
        assert_prompt(ask(sb, "peer", "10.73.0.1", "tcp:peer"), {"peer": ["10.73.0.3"]})
        # And the slow connections go when they have sent no whole query for 5 s,
        # however many bytes trickle in.
        done = attacker.line()
        assert len(done["closed_after"]) == limits.TCP_PER_CLIENT
        assert all(limits.TCP_IDLE - 0.5 <= t <= limits.TCP_IDLE + 2 for t in done["closed_after"])
        assert 3 <= done["bytes"] < 2 + 27
        assert stats(sb)["tcp"]["by_client"].get("10.73.0.2") is None
        # A client that sends whole queries, slowly, keeps its connection past that.
        assert steady.line() == {"answered": 7}
    finally:
        attacker.close()
        steady.close()


# 3. A flood of unique names against a held upstream

FLOOD = r"""
import json, select, socket, struct, sys, time
server, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # as much as it may
s.connect((server, 53))
s.setblocking(False)
codes = {}

def query(i):
    name = b"".join(bytes([len(p)]) + p for p in (b"n%d" % i, b"flood", b"example"))
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\0\0\1\0\1"

def drain(until):
    while True:
        try:
            r = s.recv(4096)
        except BlockingIOError:
            left = until - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                return
            continue
        rcode = r[3] & 15
        key = "SERVFAIL" if rcode == 2 else \
            ("upstream" if r.endswith(socket.inet_aton("192.0.2.99")) else f"rcode {rcode}")
        codes[key] = codes.get(key, 0) + 1

def drain_quiet():
    # Until nothing has come for 10 ms: the socket's buffer holds only a few hundred
    # answers, so each 50 queries wait for what the server answers at once.
    while True:
        seen = sum(codes.values())
        drain(time.monotonic() + 0.01)
        if sum(codes.values()) == seen:
            return

started = time.monotonic()
for i in range(count):
    s.send(query(i))
    if i % 50 == 49:
        drain_quiet()
# What drain_quiet left, briefly: the server fails the held queries 2 s after they
# went upstream, and the test must let the upstream go on before that.
drain(time.monotonic() + 0.2)
print(json.dumps({"codes": codes, "seconds": round(time.monotonic() - started, 2)}))
sys.stdin.readline()  # the upstream answers again
deadline = time.monotonic() + 2.5
while sum(codes.values()) < count and time.monotonic() < deadline:
    drain(min(deadline, time.monotonic() + 0.05))
print(json.dumps({"codes": codes}))
"""


@pytest.fixture
def upstream(sandbox: Sandbox) -> Iterator[tuple[Sandbox, subprocess.Popen[bytes]]]:
    """A fake upstream resolver in the outside namespace, answering 192.0.2.99 (the
    process itself: ip netns exec execs it), stopped and continued by the test."""
    proc = subprocess.Popen(["ip", "netns", "exec", sandbox.outside, "python3", FAKE_DNS,
                             sandbox.outside_addr, "192.0.2.99"])
    time.sleep(0.3)
    try:
        yield sandbox, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_a_flood_of_forwarded_names_starves_nobody(
        upstream: tuple[Sandbox, subprocess.Popen[bytes]]) -> None:
    sb, resolver = upstream
    sb.pw("network", "create", "a", "--subnet", "10.75.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.76.0.0/24")
    sb.pw("run", "-d", "--name", "att", "--network", "a", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "vic", "--network", "b", "--", "sleep", "3600")
    assert_prompt(ask(sb, "vic", "10.76.0.1", "udp:warm.example"),
                  {"warm.example": ["192.0.2.99"]})
    resolver.send_signal(signal.SIGSTOP)  # the upstream holds every query from now on
    flood = 3000  # more than the whole table of forwarded queries in flight
    assert flood > limits.MAX_FORWARDS
    attacker = Script(sb, "att", FLOOD, "10.75.0.1", str(flood))
    victim = None
    try:
        # Control: the flood fills all it may of the table, against an upstream that
        # does not answer; each query beyond its share is answered SERVFAIL at once.
        first = attacker.line()
        share = limits.FORWARDS_PER_CLIENT
        assert first["codes"] == {"SERVFAIL": flood - share}, first
        assert stats(sb)["forwards"]["by_client"] == {"10.75.0.2": share}
        # The fix: another container's forwarded lookup is taken (in flight, not
        # shed) and answered as soon as the upstream answers.
        victim = subprocess.Popen(
            sb.pw_cmd("exec", "vic", "--", "python3", "-c", ASK, "10.76.0.1",
                      "udp:victim.example"), stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 3
        while "10.76.0.2" not in stats(sb)["forwards"]["by_client"]:
            assert time.monotonic() < deadline, "the victim's query never got in flight"
            time.sleep(0.02)
        resolver.send_signal(signal.SIGCONT)
        out, _ = victim.communicate(timeout=10)
        assert_prompt(json.loads(out), {"victim.example": ["192.0.2.99"]})
        # The attacker's held queries are answered too, once the upstream answers
        # (a burst its socket may not hold whole), and nothing is left in flight.
        last = attacker.command("go")["codes"]
        assert last["SERVFAIL"] >= flood - share and last.get("upstream", 0) > 0, last
        deadline = time.monotonic() + 5
        while (now := stats(sb))["forwards"]["in_flight"]:
            assert time.monotonic() < deadline, now
            time.sleep(0.05)
    finally:
        resolver.send_signal(signal.SIGCONT)
        if victim is not None and victim.poll() is None:
            victim.kill()
            victim.wait()
        attacker.close()


# 4. Telling other networks' names from unknown ones

LOOKUP = r"""
import json, socket, struct, sys
server = sys.argv[1]

def summary(name, qtype):
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q = struct.pack("!HHHHHH", 0x7777, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((server, 53))
        s.send(q)
        r = s.recv(4096)
    # Everything a client can read in the answer but the question it asked and the
    # TTLs (the fake upstream counts its queries in them): flags, counts, records.
    flags, qd, an, ns, ar = struct.unpack("!HHHHH", r[2:12])
    at, records = 12 + len(qname) + 4, []
    for _ in range(an + ns + ar):
        at += 2 if r[at] & 0xC0 else r.index(b"\0", at) - at + 1
        rtype, rclass, _ttl, size = struct.unpack("!HHIH", r[at:at + 10])
        records.append([rtype, rclass, r[at + 10:at + 10 + size].hex()])
        at += 10 + size
    return {"flags": flags, "counts": [qd, an, ns, ar], "records": records}

print(json.dumps({spec: summary(spec.split(":")[0], int(spec.split(":")[1]))
                  for spec in sys.argv[2:]}))
"""


def lookup(sb: Sandbox, container: str, server: str, *names: str,
           qtype: int = 1) -> dict[str, Any]:
    out = sb.pw("exec", container, "--", "python3", "-c", LOOKUP, server,
                *[f"{n}:{qtype}" for n in names]).stdout
    return {spec.rsplit(":", 1)[0]: s for spec, s in json.loads(out).items()}


def test_other_networks_names_cannot_be_told_from_unknown_ones(
        upstream: tuple[Sandbox, subprocess.Popen[bytes]]) -> None:
    sb, _ = upstream
    sb.pw("network", "create", "app", "--subnet", "10.77.0.0/24")
    sb.pw("network", "create", "secret", "--subnet", "10.78.0.0/24")
    sb.pw("network", "create", "inner", "--subnet", "10.79.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "vault", "--network", "secret", "--alias", "safe", "--",
          "sleep", "3600")
    sb.pw("run", "-d", "--name", "att", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "iso", "--network", "inner", "--", "sleep", "3600")
    # Control: the oracle works where it may. On network secret, vault's names answer
    # here (authoritative, its address) and unknown names come from the upstream.
    member = lookup(sb, "vault", "10.78.0.1", "vault", "safe", "vault.secret", "nothere")
    vault = {"flags": 0x8580, "counts": [1, 1, 0, 0], "records": [[1, 1, "0a4e0002"]]}
    assert member["vault"] == member["safe"] == member["vault.secret"] == vault
    unknown = {"flags": 0x8180, "counts": [1, 1, 0, 0], "records": [[1, 1, "c0000263"]]}
    assert member["nothere"] == unknown
    # The fix: from network app, vault's names and names nobody has get the same answer,
    # the upstream's, down to the flags; so do NAME.NETWORK for an existing network the
    # asker is not on and for one that does not exist.
    names = ["vault", "safe", "vault.secret", "nothere.secret", "vault.nonet", "nothere"]
    seen = lookup(sb, "att", "10.77.0.1", *names)
    assert all(seen[n] == unknown for n in names), seen
    aaaa = lookup(sb, "att", "10.77.0.1", "vault", "nothere", qtype=28)
    assert aaaa["vault"] == aaaa["nothere"]
    # Reverse names: vault's address and a free one of that subnet, alike.
    ptr = lookup(sb, "att", "10.77.0.1", "2.0.78.10.in-addr.arpa", "99.0.78.10.in-addr.arpa",
                 qtype=12)
    assert ptr["2.0.78.10.in-addr.arpa"] == ptr["99.0.78.10.in-addr.arpa"]
    # On an internal network, both are refused alike (unknown names are, there).
    inner = lookup(sb, "iso", "10.79.0.1", "vault", "vault.secret", "nothere")
    assert inner["vault"] == inner["vault.secret"] == inner["nothere"]
    assert inner["nothere"]["flags"] & 0xF == 5  # REFUSED
    # The server's log says the same: forwarded, both.
    log = json.loads(sb.pw("dns", "--json").stdout)["log"]
    how = {e["name"]: e["how"] for e in log if e["client"] == "10.77.0.2" and e["type"] == 1}
    assert how["vault"] == how["nothere"] == f"forwarded to {sb.outside_addr}"
