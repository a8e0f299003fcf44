"""The embedded DNS server, checked with dig and getaddrinfo from inside containers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Sandbox, sh

FAKE_DNS = str(Path(__file__).with_name("fake_dns.py"))


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def dig(sb: Sandbox, container: str, *args: str) -> str:
    return sb.pw("exec", container, "--", "dig", "+time=3", "+tries=1", *args).stdout


def short(sb: Sandbox, container: str, *args: str) -> list[str]:
    return dig(sb, container, "+short", *args).split()


def status(sb: Sandbox, container: str, *args: str) -> str:
    out = dig(sb, container, "+noall", "+comments", *args)
    return out.split("status: ")[1].split(",")[0] if "status: " in out else out


@pytest.fixture
def upstream(sandbox: Sandbox) -> Iterator[Sandbox]:
    """A fake upstream resolver in the outside namespace, answering 192.0.2.99."""
    proc = subprocess.Popen(["ip", "netns", "exec", sandbox.outside, "python3", FAKE_DNS,
                             sandbox.outside_addr, "192.0.2.99"])
    time.sleep(0.3)
    try:
        yield sandbox
    finally:
        proc.kill()
        proc.wait()


def test_names_aliases_and_scopes(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.60.0.0/24")
    sb.pw("network", "create", "other", "--subnet", "10.61.0.0/24")
    web = sb.pw("run", "-d", "--name", "web", "--network", "app", "--alias", "api", "--",
                "sleep", "3600").stdout.strip()
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "far", "--network", "other", "--", "sleep", "3600")
    resolv = sb.pw("exec", "cli", "--", "cat", "/etc/resolv.conf").stdout
    assert resolv.startswith("nameserver 10.60.0.1\n") and "search example.test" in resolv
    for name in ("web", "api", "web.app", "WEB", web[:12]):
        assert short(sb, "cli", name) == ["10.60.0.2"], name
    assert "web." in dig(sb, "cli", "+short", "-x", "10.60.0.2")
    # Names of a network the querier is not on: answered as names nobody has (here,
    # with no upstream resolver listening, SERVFAIL), both ways.
    unknown = status(sb, "cli", "nobody-has-this")
    assert unknown == "SERVFAIL"
    assert status(sb, "cli", "far") == status(sb, "cli", "far.other") == unknown
    assert status(sb, "far", "web") == unknown
    assert status(sb, "far", "-x", "10.60.0.2") == "NXDOMAIN"  # answered here, not upstream
    # A name that exists has no AAAA: NOERROR with no answer.
    assert status(sb, "cli", "AAAA", "web") == "NOERROR"
    assert dig(sb, "cli", "+short", "AAAA", "web").strip() == ""
    # TCP too.
    assert short(sb, "cli", "+tcp", "web") == ["10.60.0.2"]
    # The C library resolver, as programs use it.
    out = sb.pw("exec", "cli", "--", "python3", "-c",
                "import socket; print(socket.getaddrinfo('api', 80)[0][4][0])").stdout
    assert out.strip() == "10.60.0.2"


def test_round_robin_alias(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.62.0.0/24")
    for name in ("a", "b", "c"):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--alias", "pool", "--",
              "sleep", "3600")
    first = short(sb, "a", "pool")
    second = short(sb, "a", "pool")
    assert sorted(first) == ["10.62.0.2", "10.62.0.3", "10.62.0.4"]
    assert sorted(second) == sorted(first) and second != first


BURST = """
import json, socket, struct, sys
names = sys.argv[1:]
encoded = [b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\\0" for n in names]
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
for s in socks:
    s.settimeout(3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect(("10.62.0.1", 53))
sent = {}
for i in range(600):
    s = socks[i % 4]
    s.send(struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + encoded[i % len(names)]
           + b"\\0\\1\\0\\1")
    sent[i] = s
# Every IPv4 packet that reaches this container from now on as the wire carries it,
# before the UDP layer cuts a GSO packet back into datagrams. Opened after the queries
# went (the server is stopped: no answer yet), so that only answers fill its buffer,
# which a container without CAP_NET_ADMIN cannot force past net.core.rmem_max.
tap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
print("sent", flush=True)
got, addresses, largest = set(), {n: set() for n in names}, 0
for s in socks:
    for _ in range(150):
        reply = s.recv(512)
        qid = struct.unpack("!H", reply[:2])[0]
        assert sent[qid] is s and qid not in got, qid  # to the socket that asked, once
        got.add(qid)
        addresses[names[qid % len(names)]].add(".".join(str(b) for b in reply[-4:]))
        largest = max(largest, len(reply))
tap.setblocking(False)
packets = 0
while True:
    try:
        pkt = tap.recv(65536)
    except BlockingIOError:
        break
    at = (pkt[0] & 15) * 4
    if pkt[9] == 17 and pkt[at:at + 2] == b"\\0\\x35":  # UDP from port 53
        packets += 1
print(json.dumps({"answers": len(got), "packets": packets, "largest": largest,
                  "addresses": {n: sorted(a) for n, a in addresses.items()}}))
"""


def while_stopped(sb: Sandbox, script: str, *args: str) -> Any:
    """Run script in container cli while the DNS server is stopped (SIGSTOP), until it
    prints "sent", so that everything it sent is queued at once; then let the server
    go on and return the JSON the script prints last."""
    pid = int((sb.state_dir / "dns.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        proc = subprocess.Popen(sb.pw_cmd("exec", "cli", "--", "python3", "-c", script, *args),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "sent\n"
    finally:
        os.kill(pid, signal.SIGCONT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return json.loads(out)


def burst(sb: Sandbox, *names: str) -> dict[str, Any]:
    """600 queries for names (in turn) from four sockets of container cli, all queued
    at once; what came back, and in how many packets."""
    result: dict[str, Any] = while_stopped(sb, BURST, *names)
    return result


def test_a_burst_from_several_sockets(sandbox: Sandbox) -> None:
    # Every query answered once, to the socket that sent it, with the right address.
    # The server reads them 64 at a time: the answers of a batch to one socket that have
    # one length leave as one GSO packet, which the client's socket receives as separate
    # datagrams. Names of different lengths, in turn, make groups of each length.
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.62.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    expected = {"web": ["10.62.0.2"], "web.app": ["10.62.0.2"], "cli": ["10.62.0.3"]}
    for names in (["web"], ["web.app"], ["cli", "web.app", "web"]):
        got = burst(sb, *names)
        assert got["answers"] == 600
        assert got["addresses"] == {n: expected[n] for n in names}
        assert got["packets"] < 600 / 4  # coalesced: at least four answers a packet
        assert got["largest"] <= 512
    # `portway dns` counts them: 1,800 answers and what the wire carried.
    line = next(x for x in sb.pw("dns").stdout.splitlines() if x.startswith("UDP answers"))
    answers, packets = (int(w) for w in line.split(";")[0].split() if w.isdigit())
    assert answers >= 1800 and packets < answers / 4 and "(UDP GSO)" in line
    # Its reader gone (portway dns | head), portway stops quietly.
    proc = subprocess.Popen(sb.pw_cmd("dns"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert proc.stderr.read() == b"" and proc.wait() == 120


BATCH = """
import json, socket, subprocess
from portway.dns import mmsg
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 0))
port = server.getsockname()[1]
tap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
tap.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE
clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for c in clients:
    c.settimeout(2)
    c.connect(("127.0.0.1", port))

def echo(short, long):
    # client 0: ten of one length, three longer; client 1: five of the first length
    plan = [(0, short)] * 10 + [(1, short)] * 5 + [(0, long)] * 3
    sent = [set(), set()]
    for i, (who, size) in enumerate(plan):
        data = bytes([i]) * size
        clients[who].send(data)
        sent[who].add(data)
    batch = mmsg.Batch()
    queued = batch.recv(server.fileno())
    batch.send(server.fileno(), [(data, slot) for slot, (data, _) in enumerate(queued)])
    got = [{c.recv(4096) for _ in range(len(s))} for c, s in zip(clients, sent)]
    packets = 0
    tap.setblocking(False)
    while True:
        try:
            pkt, (_, _, kind, _, _) = tap.recvfrom(65536)
        except BlockingIOError:
            break
        at = (pkt[0] & 15) * 4
        if kind == socket.PACKET_HOST and pkt[at:at + 2] == port.to_bytes(2, "big"):
            packets += 1
    return {"queued": len(queued), "echoed": got == sent, "packets": packets,
            "coalesce": batch.coalesce}

print(json.dumps([echo(40, 50),
                  subprocess.run(["ip", "link", "set", "lo", "mtu", "100"], check=True) and None,
                  echo(120, 130)]))
"""


def test_batch_coalesces_and_falls_back(sandbox: Sandbox) -> None:
    # mmsg.Batch against the kernel, on loopback in the sandbox's host namespace:
    # answers to one socket with one length leave as one GSO packet, and where the
    # kernel refuses GSO (a segment bigger than the path's MTU allows), each answer
    # still arrives, one per send, and GSO stays off for that Batch.
    out = sandbox.in_host(sys.executable, "-c", BATCH).stdout
    first, _, second = json.loads(out)
    assert first == {"queued": 18, "echoed": True, "packets": 3, "coalesce": True}
    assert second["queued"] == 18 and second["echoed"] and second["coalesce"] is False


SEND_TO = """
import json, socket, time
from portway.dns import mmsg
def udp(port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(2)
    return s
server, r1, r2 = udp(), udp(), udp()
tap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
tap.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE
tap.setblocking(False)
def packets_to(*ports):
    count = {p: 0 for p in ports}
    while True:
        try:
            pkt, (_, _, kind, _, _) = tap.recvfrom(65536)
        except BlockingIOError:
            return [count[p] for p in ports]
        at = (pkt[0] & 15) * 4
        port = int.from_bytes(pkt[at + 2:at + 4], "big")
        if kind == socket.PACKET_HOST and pkt[9] == 17 and port in count:
            count[port] += 1
ports = [r.getsockname()[1] for r in (r1, r2)]
batch = mmsg.Batch()
for r in (r1, r2):  # the batch learns their addresses from a datagram of each
    r.sendto(b"hello", server.getsockname())
names = [batch.name(slot) for slot in range(len(batch.recv(server.fileno())))]
packets_to(*ports)
# To addresses: ten of one length and three longer to r1, five to r2.
plan = [(0, 40)] * 10 + [(1, 40)] * 5 + [(0, 50)] * 3
sent = [set(), set()]
out = []
for i, (who, size) in enumerate(plan):
    out.append((bytes([i]) * size, names[who]))
    sent[who].add(out[-1][0])
batch.send_to(server.fileno(), out)
got = [{r.recv(4096) for _ in range(len(s))} for r, s in zip((r1, r2), sent)]
addressed = {"echoed": got == sent, "packets": packets_to(*ports)}
# Connected: six of one length to r1.
conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
conn.connect(r1.getsockname())
six = [bytes([i]) * 30 for i in range(6)]
batch.send_to(conn.fileno(), [(d, None) for d in six])
connected = {"echoed": {r1.recv(4096) for _ in six} == set(six), "packets": packets_to(ports[0])}
# Strict: to a port nobody has, the refusal (ICMP) of the first send fails the next.
nobody = udp()
gone = nobody.getsockname()
nobody.close()
dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dead.connect(gone)
batch.send_to(dead.fileno(), [(b"x" * 20, None)], strict=True)
time.sleep(0.1)
try:
    batch.send_to(dead.fileno(), [(b"x" * 20, None)], strict=True)
    strict = "sent"
except ConnectionRefusedError:
    strict = "refused"
batch.send_to(dead.fileno(), [(b"x" * 20, None)])  # not strict: dropped, no error
too_many = []
for bad in ([(b"x", None)] * 65, [(b"x" * 513, None)]):
    try:
        batch.send_to(conn.fileno(), bad)
        too_many.append("sent")
    except ValueError:
        too_many.append("refused")
print(json.dumps({"addressed": addressed, "connected": connected, "strict": strict,
                  "too_many": too_many}))
"""


def test_batch_sends_to_addresses_and_connected(sandbox: Sandbox) -> None:
    # mmsg.Batch.send_to against the kernel, on loopback in the sandbox's host
    # namespace (the server sends forwarded answers and queries to its upstreams with
    # it): datagrams of one length to one address leave as one GSO packet, addressed
    # or on a connected socket; with strict, a refusal raises.
    out = json.loads(sandbox.in_host(sys.executable, "-c", SEND_TO).stdout)
    assert out == {"addressed": {"echoed": True, "packets": [2, 1]},
                   "connected": {"echoed": True, "packets": [1]},
                   "strict": "refused", "too_many": ["refused", "refused"]}


def test_updates_are_immediate(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.63.0.0/24")
    sb.pw("network", "create", "side", "--subnet", "10.64.0.0/24")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    # run -d returns once the name resolves: no wait needed.
    sb.pw("run", "-d", "--name", "new", "--network", "app", "--", "sleep", "3600")
    assert short(sb, "cli", "new") == ["10.63.0.3"]
    sb.pw("run", "-d", "--name", "aside", "--network", "side", "--", "sleep", "3600")
    unknown = status(sb, "cli", "nobody-has-this")
    assert status(sb, "cli", "aside") == unknown  # not on cli's network: as if nobody had it
    sb.pw("network", "connect", "--alias", "helper", "app", "aside")
    assert short(sb, "cli", "helper") == ["10.63.0.4"]
    sb.pw("network", "disconnect", "app", "aside")
    assert short(sb, "cli", "helper") == []  # a name nobody has now: forwarded, unanswered
    assert status(sb, "cli", "aside") == unknown  # on a network cli is not on: the same
    sb.pw("rm", "-f", "new")
    assert short(sb, "cli", "new") == []


def test_forwarding_failover_and_internal(upstream: Sandbox) -> None:
    sb = upstream
    sb.pw("network", "create", "app", "--subnet", "10.65.0.0/24")
    sb.pw("network", "create", "inner", "--subnet", "10.66.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "db", "--network", "inner", "--", "sleep", "3600")
    assert short(sb, "cli", "example.org") == ["192.0.2.99"]
    # The first upstream is dead (nobody at .3): the answer comes from the next one.
    Path(f"/etc/netns/{sb.host}/resolv.conf").write_text(
        f"nameserver 198.51.100.3\nnameserver {sb.outside_addr}\n")
    time.sleep(1.2)  # the server re-reads resolv.conf within a second of a change
    started = time.monotonic()
    assert sb.pw("exec", "cli", "--", "dig", "+short", "+time=5", "+tries=1",
                 "failover.example").stdout.split() == ["192.0.2.99"]
    assert time.monotonic() - started < 5
    log = sb.pw("dns").stdout
    assert f"forwarded to {sb.outside_addr}" in log and "failover.example" in log
    # An internal network resolves its own names and nothing else.
    assert short(sb, "db", "db") == ["10.66.0.2"]
    assert status(sb, "db", "example.org") == "REFUSED"
    # --dns: this container's other names go to its own servers.
    sb.pw("run", "-d", "--name", "own", "--network", "app", "--dns", "198.51.100.9", "--",
          "sleep", "3600")
    assert status(sb, "own", "example.org") == "SERVFAIL"  # nobody at .9
    assert short(sb, "own", "cli") == ["10.65.0.2"]  # local names still local
    # Queries to portway's server leave no conntrack entry (notrack); the forwarded
    # ones, from the host's own socket to the upstream, are tracked as usual.
    dump = sh("ip", "netns", "exec", sb.host, sys.executable, "-c",
              "from portway.kernel.nftrace import connections\n"
              "for c in connections(): print(c.proto, *c.orig)").stdout.splitlines()
    udp53 = [line.split() for line in dump if line.startswith("17 ") and
             line.split()[4] == "53"]
    assert [u for u in udp53 if u[3] in ("10.65.0.1", "10.66.0.1")] == []
    assert any(u[3] == sb.outside_addr for u in udp53)


SAME_IDS = """
import json, socket, struct
name = b"\\x07example\\x03org\\x00"
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
for s in socks:
    s.settimeout(5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.connect(("10.64.0.1", 53))
for qid in range(100):  # every socket uses the same ids, 0 to 99
    for s in socks:
        s.send(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\\0\\1\\0\\1")
# The packets that reach this container from now on, as the wire carries them (BURST).
tap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
print("sent", flush=True)
got = [sorted(struct.unpack("!H", r[:2])[0] for r in (s.recv(512) for _ in range(100))
              if r.endswith(socket.inet_aton("192.0.2.99"))) for s in socks]
tap.setblocking(False)
packets = 0
while True:
    try:
        pkt = tap.recv(65536)
    except BlockingIOError:
        break
    at = (pkt[0] & 15) * 4
    if pkt[9] == 17 and pkt[at:at + 2] == b"\\0\\x35":  # UDP from port 53
        packets += 1
print(json.dumps({"ids": got, "packets": packets}))
"""


def test_forwarded_burst_with_the_same_ids(upstream: Sandbox) -> None:
    # 400 forwarded queries queued at once, four sockets asking under the same 100 ids:
    # they share upstream sockets under ids of the server's own, and every answer
    # still reaches the socket that asked, under its own id, once. The answers go
    # back as local ones do: those of a round of the server's loop to one socket with
    # one length as one GSO packet.
    sb = upstream
    sb.pw("network", "create", "app", "--subnet", "10.64.0.0/24")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    got = while_stopped(sb, SAME_IDS)
    assert got["ids"] == [list(range(100))] * 4
    assert got["packets"] < 400 / 4
    line = next(x for x in sb.pw("dns").stdout.splitlines() if x.startswith("UDP answers"))
    answers, packets = (int(w) for w in line.split(";")[0].split() if w.isdigit())
    assert answers >= 400 and packets < answers / 4


def test_refuses_outsiders_and_survives_garbage(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.67.0.0/24")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    # A client outside portway's networks, with a route to the gateway: refused.
    sh("ip", "-n", sb.outside, "route", "add", "10.67.0.0/24", "via", sb.host_addr)
    out = sh("ip", "netns", "exec", sb.outside, "dig", "+time=2", "+tries=1", "@10.67.0.1",
             "cli").stdout
    assert "status: REFUSED" in out
    # Random bytes, truncated headers, huge TCP lengths, from inside a container.
    rng = random.Random(1234)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            for _ in range(300)]
    junk += [b"", b"\x12", b"\x12\x34\x01\x00\x00\x01", b"\x00" * 12,
             b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
             b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63]
    script = ("import socket, sys\n"
              "data = [bytes.fromhex(h) for h in sys.stdin.read().split()]\n"
              "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "for d in data: u.sendto(d or b'\\0', ('10.67.0.1', 53))\n"
              "for size in (b'\\xff\\xff', b'\\x00\\x05', b'\\x00\\x0c'):\n"
              "    t = socket.create_connection(('10.67.0.1', 53), 2)\n"
              "    t.sendall(size + b'\\x01' * 40); t.close()\n"
              "conns = [socket.create_connection(('10.67.0.1', 53), 2) for _ in range(100)]\n"
              "for c in conns: c.close()\n")
    cp = subprocess.run(sb.pw_cmd("exec", "cli", "--", "python3", "-c", script),
                        input=" ".join(j.hex() or "00" for j in junk), text=True,
                        capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert short(sb, "cli", "cli") == ["10.67.0.2"]
    assert short(sb, "cli", "+tcp", "cli") == ["10.67.0.2"]
    assert sb.pw("dns", "--json").returncode == 0


HOSTILE_UPSTREAM = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    msg, peer = s.recvfrom(4096)
    for junk in (b"", msg[:2], msg[:11], msg[:2] + b"\\x81"):  # its id, and no answer
        s.sendto(junk, peer)
"""


def test_survives_a_hostile_upstream(sandbox: Sandbox) -> None:
    # An upstream that answers with empty or cut-short datagrams carrying the query's
    # id: the query waits for a real answer, then fails; the server goes on.
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.69.0.0/24")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    proc = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-c",
                             HOSTILE_UPSTREAM])
    try:
        time.sleep(0.3)
        assert status(sb, "cli", "example.org") == "SERVFAIL"
        assert short(sb, "cli", "cli") == ["10.69.0.2"]
    finally:
        proc.kill()
        proc.wait()
    # Nobody listening there now: the ICMP port-unreachable fails the query at once,
    # not after the upstream timeout (2 s).
    started = time.monotonic()
    assert status(sb, "cli", "refused.example") == "SERVFAIL"
    assert time.monotonic() - started < 1.5
    assert "failed: no upstream answered" in sb.pw("dns").stdout


def test_server_follows_networks_and_gc(sandbox: Sandbox) -> None:
    sb = sandbox
    pid_file = sb.state_dir / "dns.pid"
    sb.pw("network", "create", "app", "--subnet", "10.68.0.0/24")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    pid = int(pid_file.read_text().split()[0])
    # Killed: gc starts it again with the same records.
    os.kill(pid, 9)
    time.sleep(0.2)
    assert "start the DNS server" in sb.pw("gc").stdout
    assert short(sb, "cli", "cli") == ["10.68.0.2"]
    # The daemon's death does not stop it.
    daemon = sb.daemon_pid()
    pid = int(pid_file.read_text().split()[0])
    os.kill(daemon, 9)
    time.sleep(0.2)
    assert alive(pid)
    assert short(sb, "cli", "cli") == ["10.68.0.2"]
    # The last network takes it away (the fixture then checks no process is left).
    sb.pw("rm", "-f", "cli")
    sb.pw("network", "rm", "app")
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists()
    assert not alive(pid)
