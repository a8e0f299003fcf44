"""The DNS server process with both address families, against real namespaces of the
test's own, asked with dig.

Each test makes three throwaway network namespaces: a host, where the server runs
(as the engine starts it: `python -S -c ... main()` with --state-dir and --resolv)
with a bridge that holds network app's IPv4 and IPv6 gateways; a container, cli, on
that bridge with an address of each family; and an upstream resolver (fake_dns.py)
beyond a veth of the host's, reached over IPv6. The records are written in their
newer form (lists of subnets, gateways and addresses), one container in the older
form beside them. Network secret's gateways are on no interface: the server binds
them anyway (freebind). Only the test's processes are ended, by pid; the namespaces
go with the test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from portway.testbed import add_netns, del_netns

SRC = str(Path(__file__).resolve().parents[2] / "src")
FAKE_DNS = str(Path(__file__).resolve().parents[1] / "e2e" / "fake_dns.py")
BOOT = f"import sys; sys.path.insert(0, {SRC!r}); from portway.dns.server import main; main()"

GW4, GW6 = "10.150.0.1", "fd00:150::1"
CLI4, CLI6 = "10.150.0.2", "fd00:150::2"
WEB4, WEB6 = "10.150.0.3", "fd00:150::3"
OLD4 = "10.150.0.4"
VAULT4, VAULT6 = "10.151.0.2", "fd00:151::2"
UPSTREAM6, UPSTREAM_LL = "2001:db8:53::53", "fe80::53"
WORLD4, WORLD6 = "192.0.2.99", "2001:db8::99"  # what the upstream answers, every name

RECORDS = {
    "networks": [
        {"id": "n-app", "name": "app", "internal": False, "subnet": "10.150.0.0/24",
         "gateway": GW4, "subnets": ["10.150.0.0/24", "fd00:150::/64"],
         "gateways": [GW4, GW6]},
        {"id": "n-sec", "name": "secret", "internal": False, "subnet": "10.151.0.0/24",
         "gateway": "10.151.0.1", "subnets": ["10.151.0.0/24", "fd00:151::/64"],
         "gateways": ["10.151.0.1", "fd00:151::1"]},
    ],
    "containers": [
        {"id": "c-cli", "name": "cli", "dns": [], "endpoints": [
            {"ip": CLI4, "ips": [CLI4, CLI6], "network": "n-app", "names": ["cli"]}]},
        {"id": "c-web", "name": "web", "dns": [], "endpoints": [
            {"ip": WEB4, "ips": [WEB4, WEB6], "network": "n-app", "names": ["web", "api"]}]},
        {"id": "c-old", "name": "old", "dns": [], "endpoints": [  # the older form: IPv4 only
            {"ip": OLD4, "network": "n-app", "names": ["old"]}]},
        {"id": "c-vault", "name": "vault", "dns": [], "endpoints": [
            {"ip": VAULT4, "ips": [VAULT4, VAULT6], "network": "n-sec", "names": ["vault"]}]},
    ],
}


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          timeout=timeout).stdout


@dataclass
class World:
    host: str
    cont: str
    up: str
    state: Path
    resolv: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, ns: str, *cmd: str, log: str) -> subprocess.Popen[bytes]:
        """cmd in namespace ns (ip netns exec runs it under its own pid), output to log."""
        with open(self.state.parent / log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def control(self, command: str) -> dict[str, Any]:
        """A command on the server's control socket (a path: the test is in another
        network namespace, where the server's abstract addresses do not reach)."""
        path = self.state.parent / f"c-{secrets.token_hex(4)}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(path))
            try:
                s.settimeout(5)
                s.sendto(command.encode(), str(self.state / "dns.sock"))
                reply: dict[str, Any] = json.loads(s.recv(1 << 20))
            finally:
                path.unlink()
        return reply

    def dig(self, *args: str, ns: str | None = None) -> str:
        return sh("ip", "netns", "exec", ns or self.cont, "dig", "+time=2", "+tries=1",
                  "+noedns", *args)

    def short(self, server: str, *args: str) -> list[str]:
        return self.dig(f"@{server}", "+short", *args).split()

    def summary(self, server: str, *args: str) -> dict[str, Any]:
        """What an answer says, less its id and TTLs: status, flags, records."""
        out = self.dig(f"@{server}", "+noall", "+comments", "+answer", *args)
        header = next(x for x in out.splitlines() if "status:" in x)
        flags = next(x for x in out.splitlines() if x.startswith(";; flags:"))
        records = [x.split()[:1] + x.split()[2:] for x in out.splitlines()
                   if x and not x.startswith(";")]
        return {"status": header.split("status: ")[1].split(",")[0],
                "flags": flags.split(";")[2], "records": records}


def ip(ns: str, *args: str) -> None:
    sh("ip", "-n", ns, *args)


@contextmanager
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed")
    tag = secrets.token_hex(3)
    host, cont, up = f"pwk-h-{tag}", f"pwk-c-{tag}", f"pwk-u-{tag}"
    base = Path(tempfile.mkdtemp(prefix="pwk-dns-"))  # short: unix socket paths
    made: list[str] = []
    w = World(host, cont, up, base / "state", base / "resolv.conf")
    try:
        for ns in (host, cont, up):
            made.append(ns)
            add_netns(ns)
            # Addresses usable at once, link-local ones included: no duplicate detection.
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0",
               "net.ipv6.conf.all.accept_dad=0")
        # Network app: a bridge with both gateways, and cli's veth on it.
        ip(host, "link", "add", "pwbr0", "type", "bridge")
        ip(host, "link", "set", "pwbr0", "up")
        for address in (f"{GW4}/24", f"{GW6}/64"):
            ip(host, "addr", "add", address, "dev", "pwbr0", "nodad")
        ip(host, "link", "add", "pwv0", "type", "veth", "peer", "name", "eth0", "netns", cont)
        ip(host, "link", "set", "pwv0", "master", "pwbr0", "up")
        for address in (f"{CLI4}/24", f"{CLI6}/64"):
            ip(cont, "addr", "add", address, "dev", "eth0", "nodad")
        ip(cont, "link", "set", "eth0", "up")
        # The uplink: the upstream resolver, by a global and a link-local IPv6 address.
        ip(host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", up)
        ip(host, "addr", "add", "2001:db8:53::1/64", "dev", "up0", "nodad")
        ip(host, "link", "set", "up0", "up")
        for address in (f"{UPSTREAM6}/64", f"{UPSTREAM_LL}/64"):
            ip(up, "addr", "add", address, "dev", "eth0", "nodad")
        ip(up, "link", "set", "eth0", "up")
        # An outsider's way back to app's subnet (its queries must be refused).
        ip(up, "-6", "route", "add", "fd00:150::/64", "via", "2001:db8:53::1")
        w.state.mkdir()
        (w.state / "dns.json").write_text(json.dumps(RECORDS))
        w.resolv.write_text(f"nameserver {UPSTREAM6}\n")
        w.start(up, sys.executable, FAKE_DNS, UPSTREAM6, WORLD4, WORLD6, log="fake.log")
        w.start(host, sys.executable, "-S", "-c", BOOT, "--state-dir", str(w.state),
                "--resolv", str(w.resolv), log="dns.log")
        deadline = time.monotonic() + 10
        # The upstream listening first: a query forwarded before then is refused (ICMP)
        # and answered SERVFAIL, which a loaded machine can make happen.
        while f"[{UPSTREAM6}]:53" not in sh("ip", "netns", "exec", up, "ss", "-Hlnu"):
            assert time.monotonic() < deadline, (base / "fake.log").read_text()
            time.sleep(0.01)
        while not (w.state / "dns.sock").exists():
            assert time.monotonic() < deadline, (base / "dns.log").read_text()
            time.sleep(0.01)
        yield w
    finally:
        for proc in w.procs:  # the test's own processes, by pid
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in made:
            del_netns(ns)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def w() -> Iterator[World]:
    with world() as made:
        yield made


def test_listens_on_every_gateway_of_both_families(w: World) -> None:
    # Reloaded: the reply lists the sockets, secret's too (its gateways are on no
    # interface: freebind).
    reply = w.control("reload")
    assert reply["ok"] and sorted(reply["listening"]) == sorted(
        [GW4, GW6, "10.151.0.1", "fd00:151::1"])
    listening = sh("ip", "netns", "exec", w.host, "ss", "-HlnuT", "sport = :53")
    assert f"[{GW6}]:53" in listening and f"{GW4}:53" in listening
    tcp = sh("ip", "netns", "exec", w.host, "ss", "-Hltn", "sport = :53")
    assert "[fd00:151::1]:53" in tcp
    # IPv6 only: the IPv6 sockets take no IPv4 traffic (each family has its own).
    v6 = [line for line in sh("ip", "netns", "exec", w.host, "ss", "-Hlnue",
                              "sport = :53").splitlines() if "[" in line]
    assert len(v6) == 2 and all("v6only:1" in line for line in v6)


@pytest.mark.parametrize("server", [GW4, GW6], ids=["to IPv4", "to IPv6"])
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"], ids=["UDP", "TCP"])
def test_a_aaaa_and_ptr_of_both_families(w: World, server: str, transport: str) -> None:
    assert w.short(server, transport, "A", "web") == [WEB4]
    assert w.short(server, transport, "AAAA", "web") == [WEB6]
    assert w.short(server, transport, "AAAA", "api.app") == [WEB6]
    assert w.short(server, transport, "-x", WEB4) == ["web."]
    assert w.short(server, transport, "-x", WEB6) == ["web."]
    # A name with no address of the asked family: NOERROR, no records, authoritative.
    old = w.summary(server, transport, "AAAA", "old")
    assert old == {"status": "NOERROR", "flags": " flags: qr aa rd ra", "records": []}
    assert w.short(server, transport, "A", "old") == [OLD4]


def test_names_of_another_network_look_unknown_over_ipv6(w: World) -> None:
    # cli is on app only. vault (on secret) and names nobody has get the same answer,
    # the upstream's (reached over IPv6), for A and AAAA, from cli's IPv6 address.
    for qtype, world_answer in (("A", WORLD4), ("AAAA", WORLD6)):
        unknown = w.summary(GW6, qtype, "nobody-has-this")
        assert unknown["status"] == "NOERROR" and unknown["flags"] == " flags: qr rd ra"
        assert [r[-1] for r in unknown["records"]] == [world_answer]
        for name in ("vault", "vault.secret", "nothere.secret"):
            seen = w.summary(GW6, qtype, name)
            assert seen["status"] == unknown["status"] and seen["flags"] == unknown["flags"]
            assert [r[2:] for r in seen["records"]] == [r[2:] for r in unknown["records"]]
    # Reverse names of secret's addresses, vault's and a free one: answered here, alike.
    taken, free = w.summary(GW6, "-x", VAULT6), w.summary(GW6, "-x", "fd00:151::99")
    assert taken == free and taken["status"] == "NXDOMAIN"
    # A reverse name outside portway's subnets goes upstream (which has no PTR for it).
    assert w.summary(GW6, "-x", "2001:db8::1")["flags"] == " flags: qr rd ra"
    log = w.control("log")
    assert log["upstreams"] == [UPSTREAM6]
    how = {(e["name"], e["type"]): e["how"] for e in log["log"] if e["client"] == CLI6}
    assert how[("vault", 28)] == how[("nobody-has-this", 28)] == f"forwarded to {UPSTREAM6}"


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"], ids=["UDP", "TCP"])
def test_a_truncated_answer_is_asked_again_over_tcp_ipv6(w: World, transport: str) -> None:
    # The upstream truncates tc.* over UDP: the server asks it again over TCP, to its
    # IPv6 address, and the client gets the whole answer.
    assert w.short(GW6, transport, "tc.example") == [WORLD4]
    assert w.short(GW4, transport, "AAAA", "tc.example") == [WORLD6]
    how = {(e["client"], e["type"]): e["how"] for e in w.control("log")["log"]
           if e["name"] == "tc.example"}
    assert how == {(CLI6, 1): f"forwarded to {UPSTREAM6}", (CLI4, 28): f"forwarded to {UPSTREAM6}"}


def test_a_link_local_upstream_with_its_interface(w: World) -> None:
    w.start(w.up, sys.executable, FAKE_DNS, f"{UPSTREAM_LL}%eth0", "192.0.2.77", log="ll.log")
    w.resolv.write_text(f"nameserver fe80::99\nnameserver {UPSTREAM_LL}%up0\n")
    deadline = time.monotonic() + 5
    while w.control("log")["upstreams"] != [f"{UPSTREAM_LL}%up0"]:  # re-read within 1 s
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The fake binds (a Python process starting: slow on a busy machine). The first fake
    # already listens on port 53 there: wait for this one's own link-local socket.
    while f"[{UPSTREAM_LL}]%eth0:53" not in sh("ip", "netns", "exec", w.up, "ss", "-Hlnu"):
        assert time.monotonic() < deadline + 10, "the fake upstream never bound"
        time.sleep(0.05)
    assert w.short(GW4, "example.org") == ["192.0.2.77"]
    dns_log = (w.state.parent / "dns.log").read_text()
    assert "nameserver fe80::99 left out" in dns_log  # no interface: cannot be asked


def test_outsiders_are_refused_and_tcp_slots_count_per_ipv6_address(w: World) -> None:
    # The upstream's namespace has a route to app's gateway but is on no network.
    out = w.dig(f"@{GW6}", "web", ns=w.up)
    assert "status: REFUSED" in out
    hold = ("import socket, sys, time\n"
            f"c = socket.create_connection(({GW6!r}, 53), 3)\n"
            "print('open', flush=True)\n"
            "sys.stdin.read()\n")
    proc = subprocess.Popen(["ip", "netns", "exec", w.cont, sys.executable, "-c", hold],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        deadline = time.monotonic() + 3
        while (held := w.control("stats")["tcp"]["by_client"]) != {CLI6: 1}:
            assert time.monotonic() < deadline, held
            time.sleep(0.05)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=5)


def test_deltas_in_the_newer_form_take_effect_at_once(w: World) -> None:
    new = {"id": "c-new", "name": "new", "dns": [], "endpoints": [
        {"ip": "10.150.0.9", "ips": ["10.150.0.9", "fd00:150::9"], "network": "n-app",
         "names": ["new"]}]}
    assert w.control(json.dumps({"cmd": "set", "container": new})) == {"ok": True}
    assert w.short(GW6, "AAAA", "new") == ["fd00:150::9"]
    assert w.short(GW6, "-x", "fd00:150::9") == ["new."]
    assert w.control(json.dumps({"cmd": "forget", "id": "c-new"})) == {"ok": True}
    assert w.short(GW6, "AAAA", "new") == [WORLD6]  # unknown now: the upstream's answer


BURST = """
import json, socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.connect((sys.argv[1], 53))
name = b"\\x03web\\x00"
for i in range(200):
    s.send(struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + b"\\x00\\x1c\\x00\\x01")
print("sent", flush=True)
got = {}
for _ in range(200):
    r = s.recv(512)
    got[struct.unpack("!H", r[:2])[0]] = r[-16:]
print(json.dumps({"answers": len(got), "addresses": sorted({a.hex() for a in got.values()})}))
"""


def test_a_burst_over_ipv6_is_batched_and_coalesced(w: World) -> None:
    # 200 AAAA queries from one socket queued while the server is stopped: read 64 at a
    # time (recvmmsg of IPv6 senders) and answered in GSO sends to the IPv6 sender.
    server = w.procs[-1]
    before = w.control("log")["sent"]
    os.kill(server.pid, signal.SIGSTOP)
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", w.cont, sys.executable, "-c", BURST,
                                 GW6], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "sent\n"
    finally:
        os.kill(server.pid, signal.SIGCONT)
    out, _ = proc.communicate(timeout=30)
    assert json.loads(out) == {"answers": 200,
                               "addresses": [socket.inet_pton(socket.AF_INET6, WEB6).hex()]}
    sent = w.control("log")["sent"]
    answers, packets = sent["answers"] - before["answers"], sent["packets"] - before["packets"]
    assert answers == 200 and packets <= 200 / 8 and sent["coalesce"]


ASK = """
import socket, struct, sys
count, at_once = int(sys.argv[3]), sys.argv[4] == "all at once"
sockets = []
for server, qtype in ((sys.argv[1], 1), (sys.argv[2], 28)):
    s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((server, 53))
    sockets.append(s)
    for i in range(count):
        s.send(struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + b"\\x03web\\x00" +
               struct.pack("!HH", qtype, 1))
        if not at_once:
            s.recv(512)
print("sent", flush=True)
for s in sockets if at_once else []:
    for _ in range(count):
        s.recv(512)
"""


def ask(w: World, count: int, how: str) -> subprocess.Popen[str]:
    """count A queries to app's IPv4 gateway, then count AAAA to its IPv6 one, from
    cli: one at a time, or all sent before any answer is read."""
    return subprocess.Popen(["ip", "netns", "exec", w.cont, sys.executable, "-c", ASK, GW4,
                             GW6, str(count), how], stdout=subprocess.PIPE, text=True)


def test_queries_are_timed_on_request(w: World) -> None:
    # Off (as it starts): nothing is timed.
    ask(w, 5, "one at a time").communicate(timeout=30)
    assert w.control("timing") == {"ok": True, "queries": [], "collections": []}
    # On: each answered UDP query of either family, from its arrival at the server's
    # socket (the kernel's stamp) to the server's turn, its read and its answer's send.
    assert w.control("timing start") == {"ok": True, "queries": [], "collections": []}
    before = w.control("log")["sent"]
    ask(w, 10, "one at a time").communicate(timeout=30)
    reply = w.control("timing")
    timed = reply["queries"]
    # And how many times the garbage collector ran meanwhile, by generation.
    assert len(reply["collections"]) == 3 and min(reply["collections"]) >= 0
    # Each lone answer is sent on its own (the socket's sendto), and counted.
    sent = w.control("log")["sent"]
    assert (sent["answers"] - before["answers"], sent["packets"] - before["packets"]) == (20, 20)
    assert len(timed) == 20 and all(len(t) == 4 and min(t) >= 0 for t in timed)
    assert all(sum(t[:3]) < 1e6 for t in timed)  # µs: each well under a second
    # The CPU time is the server's own: at most the wall time from its turn to the send
    # (the CPU clock is read inside the wall clock's interval; rounding aside).
    assert all(0 < t[3] <= t[1] + t[2] + 1 for t in timed), timed
    # Queued while the server is stopped: their wait before its turn is the pause.
    assert w.control("timing start")["queries"] == []
    server = w.procs[-1]
    os.kill(server.pid, signal.SIGSTOP)
    try:
        proc = ask(w, 10, "all at once")
        assert proc.stdout is not None and proc.stdout.readline() == "sent\n"
        time.sleep(0.3)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    proc.communicate(timeout=30)
    timed = w.control("timing")["queries"]
    assert len(timed) == 20 and all(t[0] >= 250_000 for t in timed)
    assert all(t[3] < 250_000 for t in timed)  # stopped is not running
    # Off again: the sockets stamp nothing, and nothing more is kept.
    ask(w, 5, "one at a time").communicate(timeout=30)
    assert w.control("timing") == {"ok": True, "queries": [], "collections": []}


def test_timing_sets_off_no_collection_of_its_own(w: World) -> None:
    # What timing keeps of each query is no object the garbage collector tracks: 3000
    # timed queries (a kept tuple each would be over four times the 700 new objects that
    # start a collection) leave the collector as still as untimed ones do, so the times
    # are not of collections the measurement itself set off.
    ask(w, 300, "one at a time").communicate(timeout=60)  # the log and caches full
    w.control("timing start")
    ask(w, 1500, "one at a time").communicate(timeout=60)
    reply = w.control("timing")
    assert len(reply["queries"]) == 3000
    assert reply["collections"][0] <= 1, reply["collections"]
