"""One DNS query at a time, two source trees' servers in turns, beside the control.

    bench/dns_turns.py OTHER_SRC [RUNS] [COUNT]      (as root)

For a change to the DNS server's hot path, measured against another tree's server
(OTHER_SRC: its src/ directory, e.g. main's worktree) in the same minutes of the
machine: two networks in one throwaway host namespace, each served by its own
server process (this tree's on one, OTHER_SRC's on the other), one container on
both that asks each in turn, and the control (bench/dns.py's bare echo loop, on
this tree's gateway) between them; the order rotates from run to run (RUNS, 9).
Per run and target, of COUNT queries (3000): the client's p50 and p99 round trip
(µs); the server's CPU time per query (its threads' schedstat); from the server's
own stamps of each query (`timing`, and the echo loop's of the same kind) the
p99 of arrival at its socket to its turn (its wake-up), and the p50 and p99 of its
share (arrival to its answer sent); and the slowest 1% of the round trips taken
apart, on average: the server's turn, the rest of its share, the client's wake-up
(from the answer's arrival at its socket to its clock after the read), and what is
left (the query's way to the server; the answer's way is inside the server's send,
so this is negative). Then the medians of the runs. PWTURNS_RAW=FILE keeps every
query's figures; PWTURNS_PRE_THIS (_OTHER) is Python run in that server before it
starts and PWTURNS_POST_THIS (_OTHER) after it stops (an experiment's settings).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import idle  # noqa: E402
from dns import ECHO, ECHO_PORT, GATEWAY, echo_timing  # noqa: E402
from portway.kernel import sandbox  # noqa: E402
from portway.testbed import make_world, remove_world  # noqa: E402

NETS = {"this": ("10.207.0.0/24", "fd00:207::/64"), "other": ("10.208.0.0/24", "fd00:208::/64")}
GATEWAYS = {"this": GATEWAY, "other": "10.208.0.1"}  # the control on this one's, too
# The same client as bench/dns.py's, giving each query's round trip and the part after
# its answer reached the client's socket (the client's wake-up and Python), in µs.
CLIENT = """
import json, socket, struct, sys, time
server, name, count, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.setsockopt(socket.SOL_SOCKET, 35, 1)
s.connect((server, port))
out = []
for i in range(count):
    msg = struct.pack('!HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0) + q + struct.pack('!HH', 1, 1)
    t = time.time_ns(); s.send(msg); _, anc, _, _ = s.recvmsg(4096, 64)
    done = time.time_ns()
    at = next((struct.unpack('qq', d[:16]) for lvl, typ, d in anc if typ == 35), None)
    arrived = at[0] * 10**9 + at[1] if at else done
    out.append(((done - t) / 1e3, (done - arrived) / 1e3))
print(json.dumps(out))
"""


def boot(src: str, key: str) -> str:
    """The server's start, as the engine's (a few lines of Python), with
    PWTURNS_PRE_THIS / _OTHER run before and PWTURNS_POST_THIS / _OTHER after it (an
    experiment's settings; gc.get_stats() once it has stopped)."""
    pre = os.environ.get(f"PWTURNS_PRE_{key.upper()}", "")
    post = os.environ.get(f"PWTURNS_POST_{key.upper()}", "")
    return (f"import sys; sys.path.insert(0, {src!r}); {pre}\n"
            f"from portway.dns.server import main; main()\n{post}")


def request(state: str, command: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("")
        s.settimeout(5)
        s.sendto(command.encode(), os.path.join(state, "dns.sock"))
        reply: dict[str, Any] = json.loads(s.recv(1 << 22))
    return reply


def cpu_ns(pid: int) -> int:
    """The CPU time of every thread of process pid so far (their schedstat), ns."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue
    return total


def pct(values: list[float], f: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * f))] if ordered else 0.0


def main() -> None:
    other_src = os.path.abspath(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    srcs = {"this": str(ROOT / "src"), "other": other_src}
    tag = secrets.token_hex(3)
    host, outside = f"pwturns-{tag}", f"pwturns-out-{tag}"
    make_world(host, outside)
    procs: list[subprocess.Popen[bytes]] = []
    state = tempfile.mkdtemp(prefix="pwturns-")
    engine: Any = None
    try:
        sandbox.enter_netns(f"/run/netns/{host}")
        from portway.engine import Engine

        engine = Engine(state, host)
        for key, subnets in NETS.items():
            engine.network_create(f"n{key}", subnet=list(subnets), ipv6=True)
        names = [f"n{key}" for key in NETS]
        ids = [engine.run(["sleep", "3600"], name=n, networks=names, detach=True)["Id"]
               for n in ("target", "asker")]
        asker = f"pw-{ids[1][:12]}"
        from portway.engine.dns import records as dns_records

        records = dns_records(engine.dns.engine)
        engine.dns.stop()  # its gateways are the two servers' below
        resolv = engine.host_resolv_path()
        states: dict[str, str] = {}
        for key in NETS:
            net = next(n for n in records["networks"] if n["name"] == f"n{key}")
            own = {"networks": [net], "containers": [
                {**c, "endpoints": [e for e in c["endpoints"] if e["network"] == net["id"]]}
                for c in records["containers"]]}
            states[key] = tempfile.mkdtemp(prefix=f"pwturns-{key}-")
            with open(os.path.join(states[key], "dns.json"), "w") as f:
                json.dump(own, f)
            procs.append(subprocess.Popen(
                [sys.executable, "-S", "-c", boot(srcs[key], key), "--state-dir", states[key],
                 "--resolv", resolv], start_new_session=True))
        stamps = os.path.join(state, "echo.json")
        procs.append(subprocess.Popen(["python3", "-c", ECHO, GATEWAYS["this"],
                                       str(ECHO_PORT), stamps], start_new_session=True))
        echo = echo_timing(stamps)
        deadline = time.monotonic() + 5
        while not all(os.path.exists(os.path.join(s, "dns.sock")) for s in states.values()):
            if time.monotonic() > deadline:
                raise SystemExit("dns_turns: a server did not start")
            time.sleep(0.01)
        time.sleep(0.3)
        targets = {"this": (GATEWAYS["this"], 53), "other": (GATEWAYS["other"], 53),
                   "echo": (GATEWAYS["this"], ECHO_PORT)}
        keys = list(targets)
        got: dict[str, dict[str, list[float]]] = {k: {} for k in keys}
        raw: dict[str, list[Any]] = {k: [] for k in keys}
        for i in range(runs):
            for key in keys[i % 3:] + keys[:i % 3]:
                address, port = targets[key]
                idle.settle()
                timing = echo if key == "echo" else functools.partial(request, states[key])
                timing("timing start")
                pid = procs[keys.index(key)].pid
                before = cpu_ns(pid)
                cp = subprocess.run(
                    ["ip", "netns", "exec", asker, "python3", "-c", CLIENT, address,
                     "target", str(count), str(port)], capture_output=True, text=True)
                if cp.returncode != 0:
                    raise SystemExit(f"dns_turns: the client failed: {cp.stderr[-500:]}")
                client = json.loads(cp.stdout)
                cpu = (cpu_ns(pid) - before) / 1000 / count
                timed = timing("timing")["queries"]
                if len(timed) != len(client):
                    print(f"run {i} {key}: {len(timed)} timed of {len(client)}")
                    continue
                raw[key].append([client, timed])
                rt = [c[0] for c in client]
                share = [t[0] + t[1] + t[2] for t in timed]
                turn = [t[0] for t in timed]
                # The slowest 1% of the round trips, taken apart: the server's share
                # (its turn, the rest), the client's wake-up, the kernel's way both ways.
                slow = sorted(range(len(rt)), key=rt.__getitem__)[-len(rt) // 100:]
                parts = {"slow_turn": [turn[j] for j in slow],
                         "slow_rest": [share[j] - turn[j] for j in slow],
                         "slow_client": [client[j][1] for j in slow],
                         "slow_path": [rt[j] - share[j] - client[j][1] for j in slow]}
                row = {"p50": pct(rt, .5), "p99": pct(rt, .99), "cpu": cpu,
                       "turn_p99": pct(turn, .99),
                       "share_p50": pct(share, .5), "share_p99": pct(share, .99),
                       **{k: statistics.mean(v) for k, v in parts.items()}}
                for field, value in row.items():
                    got[key].setdefault(field, []).append(value)
                print(f"run {i} {key:5}: " + " ".join(f"{k} {v:6.1f}" for k, v in row.items()),
                      flush=True)
        print("medians (and each run's p99):")
        for key in keys:
            print(f"  {key:5}: " + " ".join(
                f"{k} {statistics.median(v):6.1f}" for k, v in got[key].items()) +
                f"\n         p99s {sorted(round(x) for x in got[key]['p99'])}   share p99s "
                f"{sorted(round(x) for x in got[key]['share_p99'])}")
        dump = os.environ.get("PWTURNS_RAW")
        if dump:
            with open(dump, "w") as f:
                json.dump(raw, f)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if engine is not None:
            try:
                engine.rm([c["Id"] for c in engine.ps(all=True)], force=True)
                engine.network_rm([f"n{key}" for key in NETS])
            finally:
                engine.close()
        shutil.rmtree(state, ignore_errors=True)
        for s in locals().get("states", {}).values():
            shutil.rmtree(s, ignore_errors=True)
        remove_world(host, outside)


if __name__ == "__main__":
    main()
