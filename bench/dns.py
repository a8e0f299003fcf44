"""DNS benchmarks: portway's server beside aardvark-dns 1.4, with dnsperf, in one run;
and portway's AAAA answers beside its A answers, on one dual-stack network.

aardvark-dns is set up the way Podman does it: netavark `setup` with DNS on,
which writes its records and starts it on the network's gateway. Both servers
forward other names to the same stand-in upstream in the outside namespace
(aardvark-dns reads it from /etc/resolv.conf, in a mount namespace of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from idle import settle

ROOT = Path(__file__).resolve().parent.parent
NETAVARK = "/usr/lib/podman/netavark"
AARDVARK = "/usr/lib/podman/aardvark-dns"
CONTRACT = ROOT / "tests" / "e2e" / "data" / "podman-4.3-setup-input.json"
FAKE_DNS = ROOT / "tests" / "e2e" / "fake_dns.py"
# Short runs, many rounds: A beside AAAA within each round, taken as a ratio per round
# (5 rounds of 3 s gave per-round medians 1.14× one run and 0.91× the next, on the
# same code: fewer pairs than the goal's 5% could be read from).
SECONDS = float(os.environ.get("PORTWAY_BENCH_DNS_SECONDS", "2"))
ROUNDS = int(os.environ.get("PORTWAY_BENCH_DNS_ROUNDS", "8"))
UPSTREAM = "198.51.100.2"  # the fake upstream, in the outside namespace
SUBNETS = ["10.207.0.0/24", "fd00:207::/64"]  # portway's network: dual stack
GATEWAY, GATEWAY6 = "10.207.0.1", "fd00:207::1"
LOADED_RATE = 40_000  # queries/s, below what either server can answer here

LATENCY = """
import socket, struct, sys, time
server, name, count, qtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
port = int(sys.argv[5]) if len(sys.argv) > 5 else 53
q = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
family = socket.AF_INET6 if ':' in server else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(2)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS: when the answer reached the socket
s.connect((server, port))
def waited():
    with open('/proc/thread-self/schedstat') as f:
        return int(f.read().split()[1])
out, arrived = [], []
before = waited()
for i in range(count):
    msg = struct.pack('!HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0) + q + \\
        struct.pack('!HH', qtype, 1)
    t = time.time_ns(); s.send(msg); _, anc, _, _ = s.recvmsg(4096, 64)
    done = time.time_ns()
    at = next((struct.unpack('qq', d[:16]) for lvl, typ, d in anc if typ == 35), None)
    out.append((done - t) / 1e3)
    if at is not None:
        arrived.append((at[0] * 10**9 + at[1] - t) / 1e3)
waits = waited() - before
out.sort(); arrived.sort()
p = lambda v, f: v[int(len(v) * f)] if v else 0.0
print(p(out, .5), p(out, .99), waits / count / 1000, p(arrived, .5), p(arrived, .99))
"""
# The control for the latency's tail: the least a UDP answer costs on this path, a bare
# Python loop (blocking recvfrom, the query sent back as its own answer, QR set) on the
# gateway, beside portway's server. Whatever tail both have is the machine's and the
# client's, not the server's. It stamps each query as the server's `timing` does (the
# kernel's arrival stamp, its clock back from the read and after the send, and its CPU
# time for the send, kept as plain numbers in one list: nothing for its garbage collector);
# a b"timing" datagram has it write them to a file and answer.
ECHO = """
import json, socket, sys, time
addr, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.bind((addr, port))
timed = []
while True:
    m, anc, _, peer = s.recvmsg(512, 64)
    turn, cpu = time.time_ns(), time.thread_time_ns()
    if m == b'timing':
        with open(path, 'w') as f:
            json.dump(timed, f)
        s.sendto(b'ok', peer)
        timed = []
        continue
    s.sendto(m[:2] + bytes([m[2] | 0x80]) + m[3:], peer)
    ran, sent = time.thread_time_ns() - cpu, time.time_ns()
    for _, kind, d in anc:
        if kind == 35 and len(d) >= 16:
            at = int.from_bytes(d[:8], sys.byteorder) * 10**9 + \\
                int.from_bytes(d[8:16], sys.byteorder)
            timed += ((turn - at) / 1e3, 0.0, (sent - turn) / 1e3, ran / 1e3)  # flat
"""
ECHO_PORT = 5300
# Runs of one query at a time, each target's: a run's p99 is its 30 slowest queries, and
# from run to run it moves with the machine (whether the client and the server woke on
# one vCPU or two, a burst of other work) by more than the servers differ: the figure is
# the median of the runs' p99s.
LATENCY_RUNS = int(os.environ.get("PORTWAY_BENCH_DNS_LATENCY_RUNS", "7"))


def echo_timing(path: str) -> Callable[[str], dict[str, Any]]:
    """For the echo loop, what a portway server's control socket gives for `timing
    start` and `timing`: its stamps of each query since the last call (written to path)."""
    def request(command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"timing", (GATEWAY, ECHO_PORT))
            s.recv(16)
        with open(path) as f:
            flat = json.load(f)
        return {"ok": True, "queries": [flat[at:at + 4] for at in range(0, len(flat), 4)]}

    return request


def cpu_idle() -> dict[str, Any]:
    """How the machine's idle CPUs wait: the cpuidle driver, and for haltpoll (a guest's)
    how long a vCPU polls before it halts (0: it halts at once)."""
    found: dict[str, Any] = {}
    for key, path in (("driver", "/sys/devices/system/cpu/cpuidle/current_driver"),
                      ("halt_poll_ns", "/sys/module/haltpoll/parameters/guest_halt_poll_ns")):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        found[key] = int(text) if text.isdigit() else text
    return found


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, **kw)


def sched(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting on a run queue) of every thread of process pid, from
    /proc/PID/task/*/schedstat: nanoseconds, where /proc/PID/stat counts 10 ms ticks."""
    ran = waited = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                fields = f.read().split()
        except OSError:
            continue  # a thread that has just ended
        ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran, waited


def aardvark_pid() -> int:
    """The aardvark-dns that serves this network namespace (the calling thread's), or 0."""
    ours = os.stat("/proc/thread-self/ns/net")
    found = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "aardvark-dns":
                    continue
            theirs = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            found = max(found, int(entry))
    return found


def dnsperf(netns: str, server: str, queries: list[str], rate: int = 0,
            pid: int = 0, sent: Callable[[], tuple[int, int]] | None = None
            ) -> dict[str, float]:
    """dnsperf's queries per second and average latency (µs) for queries ("NAME TYPE"
    lines, asked in turn), as fast as it can or at a fixed rate; with the server's pid,
    also the server's CPU time per answered query (µs: its threads' time on a CPU during
    the run ÷ the queries dnsperf saw answered), which depends far less than q/s on how
    the two cores are shared between dnsperf and the server (it still follows how many
    queries each wake-up finds: with sent, a function giving the server's answers and
    packets sent so far, the answers per packet say how many). Every query must be answered
    NOERROR: a figure for lost or failed queries would mean nothing."""
    settle()
    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as f:
        f.write("".join(f"{q}\n" for q in queries))
        path = f.name
    try:
        before = sched(pid) if pid else (0, 0)
        sent_before = sent() if sent else (0, 0)
        for attempt in range(3):
            # dnsperf has exited 255 on a machine busy with other work: such a run is
            # made again (said on stderr), and the third failure shows what it printed.
            run = subprocess.run(
                ["ip", "netns", "exec", netns, "dnsperf", "-s", server, "-d", path,
                 "-l", str(SECONDS), "-c", "4", "-q", "200",
                 *(["-Q", str(rate)] if rate else [])],
                capture_output=True, text=True, timeout=SECONDS + 60)
            out = run.stdout
            if run.returncode == 0:
                break
            print(f"bench: dnsperf exited {run.returncode} (attempt {attempt + 1}): "
                  f"{(run.stderr or out)[-300:].strip()}", file=sys.stderr)
        else:
            raise RuntimeError(f"dnsperf failed 3 times: {(run.stderr + out)[-400:]}")
        after = sched(pid) if pid else (0, 0)
        sent_after = sent() if sent else (0, 0)
    finally:
        os.unlink(path)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    codes = re.search(r"Response codes:\s+(.*)", out)
    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    if qps is None or avg is None or codes is None or lost is None or done is None:
        raise RuntimeError(f"dnsperf said: {out[-400:]}")
    # A few queries are still on their way when dnsperf's time is up.
    if not codes.group(1).startswith("NOERROR") or "," in codes.group(1) or \
            float(lost.group(1)) > 0.1:
        raise RuntimeError(f"{server}: not every query answered NOERROR: {out[-400:]}")
    result = {"qps": round(float(qps.group(1))), "avg_us": round(float(avg.group(1)) * 1e6)}
    if pid:
        result["cpu_us"] = round((after[0] - before[0]) / 1000 / int(done.group(1)), 3)
    if sent and sent_after[1] > sent_before[1]:
        result["per_packet"] = round((sent_after[0] - sent_before[0]) /
                                     (sent_after[1] - sent_before[1]), 2)
    return result


def latency(netns: str, server: str, name: str, count: int = 3000,
            qtype: int = 1, runs: int = LATENCY_RUNS, port: int = 53,
            pid: int = 0) -> dict[str, Any]:
    """p50 and p99 round trip (µs) of one query at a time (qtype 1 is A, 28 AAAA): see
    latencies, for one server and query type."""
    return latencies(netns, name, {"one": (server, port, qtype, pid, None)}, count,
                     runs)["one"]


# What latencies asks: the server's address and port, the query type, the server's pid
# (0: not known) and, for portway's server, its control socket's request (for `timing`).
Target = tuple[str, int, int, int, "Callable[[str], dict[str, Any]] | None"]


def latencies(netns: str, name: str, targets: dict[str, Target], count: int = 3000,
              runs: int = LATENCY_RUNS) -> dict[str, dict[str, Any]]:
    """By target, p50 and p99 round trip (µs) of one query at a time: the median of
    `runs` runs, each started on an idle machine (one run's p99 is a few dozen
    queries: one burst of other work moves it); with several targets, run i of each
    in turn, in an order that rotates with i, so that the targets' figures come from
    the same moments of the machine and none always runs first (after the dnsperf
    runs). The same percentiles to the answer's arrival at the client's socket
    (SO_TIMESTAMPNS): the round trip less the client's wake-up and its Python after
    it. Beside them, per query, the time the client's thread and (with its pid) the
    server's threads spent runnable but not running (µs, from their schedstat): two
    wake-ups per round trip, each the machine's to give. With timing (portway's
    server, and the echo loop's stamps of the same kind), the server's own times of
    each query (see Server.time_queries): arrival
    at its socket to its turn, to its read, to its answer's send, and its CPU time
    from its turn to the send."""
    keys = list(targets)
    raw: dict[str, dict[str, list[float]]] = {k: {} for k in keys}
    for i in range(runs):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            server, port, qtype, pid, timing = targets[key]
            settle()
            if timing is not None:
                timing("timing start")
            before = sched(pid) if pid else (0, 0)
            out = sh("ip", "netns", "exec", netns, "python3", "-c", LATENCY, server, name,
                     str(count), str(qtype), str(port)).stdout.split()
            after = sched(pid) if pid else (0, 0)
            got = raw[key]
            for field, value in zip(("p50", "p99", "client_wait", "arrived_p50",
                                     "arrived_p99"), out, strict=True):
                got.setdefault(field, []).append(float(value))
            got.setdefault("server_cpu", []).append((after[0] - before[0]) / 1000 / count)
            got.setdefault("server_wait", []).append((after[1] - before[1]) / 1000 / count)
            if timing is not None:
                reply = timing("timing")
                timed = reply["queries"]
                for gen, ran in enumerate(reply.get("collections", [])):
                    got.setdefault(f"gc{gen}", []).append(ran)
                for at, part in enumerate(("turn", "read", "work", "cpu")):
                    column = sorted(t[at] for t in timed)
                    got.setdefault(f"{part}_p50", []).append(percentile(column, 0.5))
                    got.setdefault(f"{part}_p99", []).append(percentile(column, 0.99))
                share = sorted(sum(t[:3]) for t in timed)
                got.setdefault("share_p50", []).append(percentile(share, 0.5))
                got.setdefault("share_p99", []).append(percentile(share, 0.99))
    results: dict[str, dict[str, Any]] = {}
    for key, got in raw.items():
        pid, timing = targets[key][3], targets[key][4]

        def mid(field: str, got: dict[str, list[float]] = got) -> float:
            return round(statistics.median(got[field]), 1)

        result: dict[str, Any] = {
            "p50": mid("p50"), "p99": mid("p99"), "p99_runs": [round(x, 1) for x in got["p99"]],
            "p50_runs": [round(x, 1) for x in got["p50"]],
            "client_wait_us": mid("client_wait"),
            # From the query's send to the answer's arrival at the client's socket (its
            # kernel timestamp): the round trip less the client's own wake-up.
            "arrived_p50": mid("arrived_p50"), "arrived_p99": mid("arrived_p99")}
        if pid:
            result["server_wait_us"] = mid("server_wait")
            result["server_cpu_us"] = mid("server_cpu")
        if timing is not None:
            # Inside the server, from the query's arrival at its socket: to its turn
            # (the wake-up), to its read, to its answer's send; share: the whole; cpu:
            # the server's CPU time from its turn to the send.
            result["server_times"] = {part: (mid(f"{part}_p50"), mid(f"{part}_p99"))
                                      for part in ("turn", "read", "work", "share", "cpu")}
            result["share_p99_runs"] = [round(x, 1) for x in got["share_p99"]]
            if "gc0" in got:  # the server's garbage collector's runs, by generation
                result["collections"] = [sum(got[f"gc{gen}"]) for gen in range(3)]
        results[key] = result
    return results


def percentile(ordered: list[float], fraction: float) -> float:
    """The value at fraction of an ascending list (as LATENCY takes it), 0 when empty."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


@contextlib.contextmanager
def portway_side(engine: Any, outside: str) -> Iterator[str]:
    """portway's dual-stack network with three containers; yields the asking container's
    namespace."""
    engine.network_create("dnsnet", subnet=SUBNETS, ipv6=True)
    target = engine.run(["sleep", "infinity"], name="target", networks=["dnsnet"], detach=True)
    client = engine.run(["sleep", "infinity"], name="asker", networks=["dnsnet"], detach=True)
    third = engine.run(["sleep", "infinity"], name="db", networks=["dnsnet"], detach=True)
    fake = subprocess.Popen(["ip", "netns", "exec", outside, "python3", str(FAKE_DNS),
                             UPSTREAM, "192.0.2.99"])
    try:
        time.sleep(0.3)
        yield f"pw-{client['Id'][:12]}"
    finally:
        fake.kill()
        fake.wait()
        engine.rm([target["Id"], client["Id"], third["Id"]], force=True)
        engine.network_rm(["dnsnet"])


@contextlib.contextmanager
def aardvark_side(upstream: str) -> Iterator[str | None]:
    """The same with netavark and aardvark-dns (None when they are not installed).
    aardvark-dns forwards to the resolvers in /etc/resolv.conf: netavark runs, and
    starts it, in a mount namespace of its own where that file names `upstream`."""
    if not (os.path.exists(NETAVARK) and os.path.exists(AARDVARK)):
        yield None
        return
    config = tempfile.mkdtemp(prefix="pwbench-aardvark-")
    resolv = os.path.join(config, "resolv.conf")
    with open(resolv, "w") as f:
        f.write(f"nameserver {upstream}\n")
    own_resolv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv]
    base = json.loads(CONTRACT.read_text())
    base["port_mappings"] = []
    net = base["network_info"]["a1pnet"]
    net["dns_enabled"] = True
    setups = []
    try:
        for i, name in enumerate(("target", "asker", "db")):
            data = json.loads(json.dumps(base))
            data["container_id"] = f"{i:064x}"
            data["container_name"] = name
            data["networks"]["a1pnet"]["static_ips"] = [f"10.89.0.{10 + i}"]
            data["networks"]["a1pnet"]["aliases"] = [name]
            ns = f"pwbench-dns-{i}"
            sh("ip", "netns", "add", ns)
            setups.append((ns, json.dumps(data)))
            sh(*own_resolv, NETAVARK, "--config", config, "--aardvark-binary", AARDVARK,
               "setup", f"/run/netns/{ns}", input=json.dumps(data))
        time.sleep(0.5)
        yield setups[1][0]
    finally:
        for ns, text in reversed(setups):
            subprocess.run([NETAVARK, "--config", config, "--aardvark-binary", AARDVARK,
                            "teardown", f"/run/netns/{ns}"], input=text, capture_output=True,
                           text=True)
            sh("ip", "netns", "del", ns)
        shutil.rmtree(config, ignore_errors=True)


def pair_ratios(runs: dict[str, list[float]], key: str, base: str) -> list[float]:
    """key's run ÷ base's run, round by round."""
    return [round(x / y, 3) for x, y in zip(runs[key], runs[base], strict=True) if y]


def bench_dns(engine: Any, outside: str) -> dict[str, Any]:
    """Both servers up at once; their dnsperf runs alternate, ROUNDS each, and the
    median is reported, so a slow moment of the machine does not pick the winner.

    One name asked over and over is the best case for portway's coalesced answers
    (one length); three names of three lengths in turn are closer to real traffic.
    (Not PTR: aardvark-dns 1.4 also forwards a PTR query for a container's address
    upstream, which would measure its forwarding.) At a fixed rate both servers keep
    up with, the average latency shows what portway's pause under load costs. Every
    run starts on an idle machine.

    portway's network is dual-stack: each of its A runs sits next to the same names asked
    for AAAA, the two in the other order every other round, and for AAAA over IPv6 to its
    IPv6 gateway, so the families' figures come from the same moments of the machine.
    Each run also gives the server's CPU time per answered query, which the share of the
    two cores dnsperf takes moves far less than q/s."""
    one = ["target A"]
    mix = ["target A", "asker A", "db A"]
    one6 = ["target AAAA"]
    mix6 = ["target AAAA", "asker AAAA", "db AAAA"]
    with portway_side(engine, outside) as pw, aardvark_side(UPSTREAM) as av:
        with open(os.path.join(engine.state_dir, "dns.pid")) as f:
            pw_pid = int(f.read().split()[0])
        servers = {"portway": (pw, GATEWAY, pw_pid)}
        if av is not None:
            servers["aardvark"] = (av, "10.89.0.1", aardvark_pid())
        # (side, figure, namespace, server, queries), in pairs: each pair's two runs are
        # next to each other in every round, in the other order every other round.
        pairs = [(("portway", "local", pw, GATEWAY, one),
                  ("portway", "local_aaaa", pw, GATEWAY, one6)),
                 (("portway", "mixed", pw, GATEWAY, mix),
                  ("portway", "mixed_aaaa", pw, GATEWAY, mix6)),
                 (("portway", "local_aaaa_over6", pw, GATEWAY6, one6),)]
        if av is not None:
            pairs += [(("aardvark", "local", av, "10.89.0.1", one),),
                      (("aardvark", "mixed", av, "10.89.0.1", mix),)]
        runs: dict[str, dict[str, list[float]]] = {k: {} for k in servers}
        cpu: dict[str, dict[str, list[float]]] = {k: {} for k in servers}
        per_packet: dict[str, list[float]] = {}

        def sent() -> tuple[int, int]:
            """portway's server: answers and packets (GSO sends) sent so far."""
            counts = engine.dns.request("log")["sent"]
            return counts["answers"], counts["packets"]

        for i in range(ROUNDS):
            for pair in pairs:
                for side, figure, netns, address, queries in \
                        (pair if i % 2 == 0 else pair[::-1]):
                    got = dnsperf(netns, address, queries, pid=servers[side][2],
                                  sent=sent if side == "portway" else None)
                    if "per_packet" in got:
                        per_packet.setdefault(figure, []).append(got["per_packet"])
                    runs[side].setdefault(figure, []).append(got["qps"])
                    if "cpu_us" in got:
                        cpu[side].setdefault(figure, []).append(got["cpu_us"])
        results: dict[str, Any] = {}
        # portway's A and AAAA one at a time, with the server's own times of each query,
        # and the control (a bare echo loop on the same gateway, asked by the same
        # client): their runs in turn (see latencies).
        fd, stamps = tempfile.mkstemp(prefix="pwbench-echo-")
        os.close(fd)
        echo = subprocess.Popen(["python3", "-c", ECHO, GATEWAY, str(ECHO_PORT), stamps])
        try:
            time.sleep(0.3)
            alone = latencies(pw, "target", {
                "A": (GATEWAY, 53, 1, pw_pid, engine.dns.request),
                "AAAA": (GATEWAY, 53, 28, pw_pid, engine.dns.request),
                "echo": (GATEWAY, ECHO_PORT, 1, echo.pid, echo_timing(stamps))})
        finally:
            echo.kill()
            echo.wait()
            os.unlink(stamps)
        for side, (netns, address, pid) in servers.items():
            local = alone["A"] if side == "portway" else latency(netns, address, "target",
                                                                  pid=pid)
            results[side] = {
                **{f"{figure}_qps": round(statistics.median(v))
                   for figure, v in runs[side].items()},
                **{f"{figure}_qps_runs": v for figure, v in runs[side].items()},
                **{f"{figure}_cpu_us": round(statistics.median(v), 2)
                   for figure, v in cpu[side].items()},
                **{f"{figure}_cpu_us_runs": v for figure, v in cpu[side].items()},
                "loaded_avg_us": dnsperf(netns, address, one, LOADED_RATE)["avg_us"],
                "local_latency_us": (local["p50"], local["p99"]),
                "local_latency": local,
                "forwarded_qps": dnsperf(netns, address, ["example.org A"])["qps"],
                "forwarded_latency_us": tuple(
                    latency(netns, address, "example.org", 1000)[k] for k in ("p50", "p99")),
            }
        p = results["portway"]
        aaaa = alone["AAAA"]
        p["local_aaaa_latency_us"] = (aaaa["p50"], aaaa["p99"])
        p["local_aaaa_latency"] = aaaa
        p["echo_latency"] = alone["echo"]
        p["cpu_idle"] = cpu_idle()
        p["answers_per_packet_runs"] = per_packet
        for key, base in (("local_aaaa", "local"), ("mixed_aaaa", "mixed")):
            p[f"{key}_qps_ratios"] = pair_ratios(runs["portway"], key, base)
            p[f"{key}_cpu_ratios"] = pair_ratios(cpu["portway"], key, base)
    return {"portway": results["portway"], "aardvark": results.get("aardvark"),
            "rounds": ROUNDS, "seconds": SECONDS, "loaded_rate": LOADED_RATE,
            "latency_runs": LATENCY_RUNS}
