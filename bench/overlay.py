"""Overlay networks across hosts: throughput against a bare VXLAN path, container setup
on an overlay network against a bridge network, and 1,000 endpoints in the store.

Hosts A and B (and, for the last part, a new host C) are namespaces of their own, each
with its own portwayd started through the CLI as a user starts it, on an underlay
bridge with a one-member etcd (Debian's etcd-server), all made here and removed after.

- Throughput: iperf3, one stream, from a container on A to one on B over the overlay
  network, against a bare VXLAN path the bench makes in the same two host namespaces
  (a VXLAN device of its own VNI, a bridge, a veth to a namespace of its own on each
  side, static FDB and neighbour entries, the same MTU) measured with portway's tables
  removed from both hosts; in turn, OVERLAY_CYCLES times (portway gc puts the tables
  back), the bare path first every other cycle, the ratio taken within each cycle, and
  the machine's CPU time per GB beside each run.
- Setup: `portway run -d` on A, on the overlay network and on a bridge network in turn;
  and from `run -d` on A until a client on B gets an answer from the new container.
- 1,000 endpoints: records of containers on two other hosts, written to etcd as those
  hosts' portwayd writes them (under a lease); how big the store is, how long host A
  (running) takes to program them into its VXLAN device, how long a new host C takes
  from `daemon start` until its device has them all, and `run -d` on A with them there.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from idle import settle
from portway.core.names import netns_name
from portway.core.overlay import RemoteEndpoint, endpoint_key, parse_cluster_store
from portway.kernel import netns
from portway.store.etcd import Etcd
from portway.testbed import (
    ETCD_ADDR,
    add_netns,
    del_netns,
    make_underlay,
    start_etcd,
    stop_etcd,
    underlay_address,
)

PORTWAY = str(Path(sys.executable).parent / "portway")
CYCLES = int(os.environ.get("PORTWAY_BENCH_OVERLAY_CYCLES", "4"))
IPERF_SECONDS = 2
IPERF_CPU = (os.cpu_count() or 1) - 1  # the CPU both ends of every iperf3 run are on
SETUP_RUNS = int(os.environ.get("PORTWAY_BENCH_OVERLAY_RUNS", "15"))
# Samples of the time until a new container answers on another host: with 30, its p95
# (nearest rank: the 29th of the 30 sorted) is not the maximum, so one stray sample does
# not decide the goal; each takes about a second on an idle machine.
ANSWER_RUNS = int(os.environ.get("PORTWAY_BENCH_OVERLAY_ANSWERS", "30"))
ENDPOINTS = int(os.environ.get("PORTWAY_BENCH_OVERLAY_ENDPOINTS", "1000"))
STORE = f"etcd://{ETCD_ADDR}:2379"
SUBNET = "10.220.0.0/16"
RAW = ("10.221.0.2", "10.221.0.3")  # the bare path's two ends
RAW_VNI = 9999
CONNECT = ("import socket, sys\n"
           "socket.create_connection((sys.argv[1], 5201), 0.5).close()\n")
# A server on port 80 that answers each connection with one byte, and a client that
# asks for NAME:80 every 10 ms until it answers, then prints when (time.time()). Each
# attempt connects as a user's client does, with no short timeout of its own: a SYN
# that goes unanswered costs what it costs them, TCP's one-second retransmission (a
# timeout of 0.2 s per attempt hid it).
LISTEN = ("import socket\n"
          "s = socket.socket(); s.bind(('0.0.0.0', 80)); s.listen(8)\n"
          "while True:\n"
          "    c, _ = s.accept(); c.sendall(b'!'); c.close()\n")
REACH = ("import socket, sys, time\n"
         "end = time.time() + 50\n"
         "while time.time() < end:\n"
         "    try:\n"
         "        c = socket.create_connection((sys.argv[1], 80), 5)\n"
         "        if c.recv(1) == b'!': print(time.time()); break\n"
         "    except OSError: time.sleep(0.01)\n")
PHANTOMS = ("192.0.2.50", "192.0.2.51")  # the two other hosts of the 1,000 records


def sh(*args: str, timeout: float = 120, input: str | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout,
                          input=input).stdout


class Host:
    def __init__(self, netns_name: str, index: int, state: str) -> None:
        self.netns = netns_name
        self.address = underlay_address(index)
        self.state = state

    def pw(self, *args: str) -> str:
        env = dict(os.environ, PORTWAY_CLUSTER_STORE=STORE,
                   PORTWAY_ADVERTISE_ADDRESS=self.address)
        return subprocess.run([PORTWAY, "--host-netns", self.netns, "--state-dir", self.state,
                               *args], check=True, capture_output=True, text=True,
                              timeout=120, env=env).stdout

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.netns, *args)


def wait(cond: Callable[[], bool], what: str, timeout: float = 120) -> float:
    """Seconds until cond holds (polled every 10 ms)."""
    start = time.perf_counter()
    while not cond():
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"bench overlay: timed out waiting: {what}")
        time.sleep(0.01)
    return time.perf_counter() - start


def entries(host: Host, dev: str) -> tuple[int, int]:
    """The FDB entries with a remote VTEP and the permanent neighbours of dev."""
    fdb = json.loads(sh("bridge", "-n", host.netns, "-j", "fdb", "show", "dev", dev) or "[]")
    neigh = json.loads(host.ip("-j", "neigh", "show", "dev", dev) or "[]")
    return (sum(1 for e in fdb if e.get("dst")),
            sum(1 for n in neigh if "PERMANENT" in n.get("state", [])))


def busy_seconds() -> float:
    """Every core's time doing anything but idling, since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def iperf(client: list[str], address: str, cpu: list[float] | None = None) -> float:
    """One run in Gbit/s; with cpu, the machine's busy CPU seconds per GB received go there
    (every core's: the tunnel's path runs in softirq, no one process's time; a figure
    only on a machine that does nothing else)."""
    settle(5)
    before = busy_seconds()
    # Both ends on one CPU, as the bridge's throughput runs (bench/firewall.py): left to
    # the scheduler, the ends shared a core in some runs and had one each in others, and
    # the figure followed that placement more than the path.
    out = sh(*client, "iperf3", "-c", address, "-t", str(IPERF_SECONDS),
             "-A", f"{IPERF_CPU},{IPERF_CPU}", "-J", timeout=60)
    busy = busy_seconds() - before
    received = json.loads(out)["end"]["sum_received"]
    if cpu is not None and received["bytes"]:
        cpu.append(round(busy / (received["bytes"] / 1e9), 4))
    return float(received["bits_per_second"]) / 1e9


def bare_path(host: Host, side: int, ns: str) -> str:
    """A bare VXLAN device, bridge and veth on host to namespace ns (its end RAW[side]);
    returns the MAC of ns's end (bare_peers makes each side know the other's)."""
    host.ip("link", "add", "rawbr", "mtu", "1450", "type", "bridge")
    host.ip("link", "add", "rawvx", "mtu", "1450", "type", "vxlan", "id", str(RAW_VNI),
            "local", host.address, "dstport", "4789", "nolearning")
    host.ip("link", "add", "rawv", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
            "netns", ns)
    for dev in ("rawvx", "rawv"):
        host.ip("link", "set", dev, "master", "rawbr", "up")
    host.ip("link", "set", "rawbr", "up")
    sh("ip", "-n", ns, "addr", "add", f"{RAW[side]}/24", "dev", "eth0")
    # (The peer of a veth made with an MTU keeps the default 1500: set it too.)
    sh("ip", "-n", ns, "link", "set", "eth0", "mtu", "1450", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    return str(json.loads(sh("ip", "-n", ns, "-j", "link", "show", "eth0"))[0]["address"])


def bare_peers(host: Host, ns: str, other: Host, other_ip: str, other_mac: str) -> None:
    sh("bridge", "-n", host.netns, "fdb", "append", other_mac, "dev", "rawvx", "dst",
       other.address, "self", "permanent")
    sh("ip", "-n", ns, "neigh", "replace", other_ip, "lladdr", other_mac, "dev", "eth0",
       "nud", "permanent")


def portway_tables(host: Host) -> list[tuple[str, str]]:
    listed = json.loads(sh("ip", "netns", "exec", host.netns, "nft", "-j", "list", "tables"))
    return [(t["table"]["family"], t["table"]["name"]) for t in listed["nftables"]
            if "table" in t and t["table"]["name"] == "portway"]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def p95_rank(count: int) -> int:
    """The rank (1-based, in ascending order) of the nearest-rank 95th percentile of
    count samples: the smallest that at least 95% of them do not exceed."""
    return max(1, -(-count * 95 // 100))


def nearest_rank(xs: list[float], pct: int) -> float:
    """The nearest-rank percentile of xs (95: p95_rank's sample)."""
    rank = max(1, -(-len(xs) * pct // 100))
    return sorted(xs)[rank - 1]


def bench_overlay(tag: str | None = None) -> dict[str, Any]:
    tag = tag or secrets.token_hex(3)
    base = f"pwbov-{tag}"
    names = [f"{base}-a", f"{base}-b", f"{base}-c"]
    underlay, raw_a, raw_b = f"{base}-ul", f"{base}-ra", f"{base}-rb"
    tmp = tempfile.mkdtemp(prefix="pwbov-")
    hosts = [Host(n, i, os.path.join(tmp, "abc"[i])) for i, n in enumerate(names)]
    made: list[str] = []
    etcd: subprocess.Popen[bytes] | None = None
    a, b, c = hosts
    try:
        for name in (*names, raw_a, raw_b):
            add_netns(name)
            made.append(name)
        make_underlay(underlay, names)
        made.append(underlay)
        etcd = start_etcd(underlay, os.path.join(tmp, "etcd"))
        for h in (a, b):
            h.pw("daemon", "start")
        net_id = a.pw("network", "create", "--driver", "overlay", "--subnet", SUBNET,
                      "ov").strip()
        dev = f"pwvx-{net_id[:10]}"
        wait(lambda: "ov" in b.pw("network", "ls"), "B sees ov")
        a.pw("network", "create", "--subnet", "10.222.0.0/24", "brn")

        # Throughput.
        server = b.pw("run", "-d", "--name", "srv", "--network", "ov", "--",
                      "iperf3", "-s").strip()
        client = a.pw("run", "-d", "--name", "cli", "--network", "ov", "--",
                      "sleep", "3600").strip()
        srv_ip = json.loads(b.pw("inspect", server))[0]["NetworkSettings"]["Networks"][
            "ov"]["IPAddress"]
        mac_a = bare_path(a, 0, raw_a)
        mac_b = bare_path(b, 1, raw_b)
        bare_peers(a, raw_a, b, RAW[1], mac_b)
        bare_peers(b, raw_b, a, RAW[0], mac_a)
        raw_server = subprocess.Popen(["ip", "netns", "exec", raw_b, "iperf3", "-s"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        in_client = ["ip", "netns", "exec", netns_name(client)]
        overlay_runs: list[float] = []
        raw_runs: list[float] = []
        overlay_cpu: list[float] = []
        raw_cpu: list[float] = []
        try:
            for where, to in ((in_client, srv_ip), (["ip", "netns", "exec", raw_a], RAW[1])):
                wait(lambda where=where, to=to: subprocess.run(
                    [*where, "python3", "-c", CONNECT, to], capture_output=True).returncode
                    == 0, f"iperf3 -s answers on {to}")
            # Each cycle runs both paths next to each other, every other cycle the bare
            # path first: neither side of the ratio always goes first.
            rules = [True]

            def tables(wanted: bool) -> None:
                if wanted == rules[0]:
                    return
                for h in (a, b):
                    if wanted:
                        h.pw("gc")  # portway's tables back
                    else:
                        for family, table in portway_tables(h):
                            sh("ip", "netns", "exec", h.netns, "nft", "delete", "table",
                               family, table)
                rules[0] = wanted

            for cycle in range(CYCLES):
                for with_rules in ((True, False) if cycle % 2 == 0 else (False, True)):
                    tables(with_rules)
                    if with_rules:
                        overlay_runs.append(iperf(in_client, srv_ip, overlay_cpu))
                    else:
                        raw_runs.append(iperf(["ip", "netns", "exec", raw_a], RAW[1], raw_cpu))
            tables(True)
        finally:
            raw_server.terminate()
            raw_server.wait(10)
        b.pw("rm", "-f", "srv")
        a.pw("rm", "-f", "cli")

        # Setup: run -d on the overlay network and on the bridge network, in turn.
        def setups(count: int) -> dict[str, list[float]]:
            out: dict[str, list[float]] = {"ov": [], "brn": []}
            for i in range(count):
                for net in ("ov", "brn"):
                    settle(2)
                    start = time.perf_counter()
                    cid = a.pw("run", "-d", "--name", f"s{i}{net}", "--network", net, "--",
                               "sleep", "3600").strip()
                    out[net].append((time.perf_counter() - start) * 1000)
                    a.pw("rm", "-f", cid)
            return out

        setup = setups(SETUP_RUNS)

        # From `run -d` on A until a client on B gets an answer from it, by name: the
        # store, B's watch, its FDB/neighbour entries and DNS records, the server's start.
        probe = b.pw("run", "-d", "--name", "probe", "--network", "ov", "--",
                     "sleep", "3600").strip()
        answered: list[float] = []
        for i in range(ANSWER_RUNS):
            settle(2)
            client = subprocess.Popen(["ip", "netns", "exec", netns_name(probe), "python3",
                                       "-c", REACH, f"r{i}"], stdout=subprocess.PIPE,
                                      text=True)
            time.sleep(0.2)  # (the client's Python is up and asking)
            start = time.time()
            a.pw("run", "-d", "--name", f"r{i}", "--network", "ov", "--",
                 "python3", "-c", LISTEN)
            out, _ = client.communicate(timeout=60)
            answered.append(float(out) - start)
            a.pw("rm", "-f", f"r{i}")
        b.pw("rm", "-f", "probe")

        # 1,000 endpoints of two other hosts, as their daemons write them.
        def write_records() -> tuple[int, float]:
            store = Etcd(parse_cluster_store(STORE))
            lease = store.grant(3600)
            net = ipaddress.ip_network(SUBNET)
            start = time.perf_counter()
            for i in range(ENDPOINTS):
                addr = ipaddress.ip_interface((net.network_address + 1000 + i, net.prefixlen))
                mac = "02:42:" + ":".join(f"{x:02x}" for x in addr.ip.packed)
                eid, cid = secrets.token_hex(32), secrets.token_hex(32)
                record = RemoteEndpoint(id=eid, network_id=net_id, container_id=cid,
                                        name=f"ep{i}", aliases=(), addresses=(addr,), mac=mac,
                                        host=ipaddress.ip_address(PHANTOMS[i % 2]))
                store.put(endpoint_key(net_id, eid), record.encode(), lease)
            return lease, time.perf_counter() - start

        lease, written = netns.in_netns(netns.netns_path(underlay), write_records)
        programmed_a = wait(lambda: entries(a, dev) == (ENDPOINTS, ENDPOINTS),
                            "A programs the 1,000 endpoints")
        status = json.loads(sh("ip", "netns", "exec", underlay, "etcdctl", "--endpoints",
                               f"http://{ETCD_ADDR}:2379", "endpoint", "status", "-w",
                               "json"))[0]["Status"]
        keys = sh("ip", "netns", "exec", underlay, "etcdctl", "--endpoints",
                  f"http://{ETCD_ADDR}:2379", "get", "--prefix", "/portway/")
        start = time.perf_counter()
        c.pw("daemon", "start")
        started = time.perf_counter() - start
        new_host = started + wait(lambda: os.path.exists(f"/run/netns/{c.netns}") and
                                  dev in c.ip("link", "show") and
                                  entries(c, dev) == (ENDPOINTS, ENDPOINTS),
                                  "C programs the 1,000 endpoints")
        # As many runs as without them (a median of a few is the machine's noise), and
        # the bridge network's in turn as before: a control for the machine's load.
        crowded_both = setups(SETUP_RUNS)
        crowded = crowded_both["ov"]

        def revoke() -> None:
            Etcd(parse_cluster_store(STORE)).revoke(lease)

        netns.in_netns(netns.netns_path(underlay), revoke)
        forgotten = wait(lambda: entries(a, dev) == (0, 0), "A forgets them")
        pairs = [o / r for o, r in zip(overlay_runs, raw_runs, strict=True) if r]
        return {
            "cycles": CYCLES, "iperf_seconds": IPERF_SECONDS,
            "overlay_gbps": round(median(overlay_runs), 2),
            "raw_gbps": round(median(raw_runs), 2),
            "runs": {"overlay": [round(x, 2) for x in overlay_runs],
                     "raw": [round(x, 2) for x in raw_runs]},
            "paired": round(median(pairs), 3),
            "cpu_s_per_gb": {"overlay": overlay_cpu, "raw": raw_cpu},
            "setup_runs": SETUP_RUNS, "answer_runs": ANSWER_RUNS,
            "answered_ms": [round(x * 1000, 1) for x in answered],
            "answered_p50_ms": round(median(answered) * 1000, 1),
            "answered_p95_ms": round(nearest_rank(answered, 95) * 1000, 1),
            "setup_overlay_ms": round(median(setup["ov"]), 1),
            "setup_bridge_ms": round(median(setup["brn"]), 1),
            "setup_overlay_crowded_ms": round(median(crowded), 1),
            "crowded_runs": len(crowded),
            "setup_bridge_crowded_ms": round(median(crowded_both["brn"]), 1),
            "endpoints": ENDPOINTS,
            "write_s": round(written, 2),
            "store_db_bytes": int(status["dbSize"]),
            "store_text_bytes": len(keys.encode()),
            "program_running_s": round(programmed_a, 2),
            "program_new_host_s": round(new_host, 2),
            "daemon_start_s": round(started, 2),
            "forget_s": round(forgotten, 2),
        }
    finally:
        for h in (c, b, a):
            if os.path.exists(os.path.join(h.state, "portway.db")):
                env = dict(os.environ, PORTWAY_CLUSTER_STORE=STORE,
                           PORTWAY_ADVERTISE_ADDRESS=h.address)
                for args in (["ps", "-a", "-q"],):
                    ids = subprocess.run([PORTWAY, "--host-netns", h.netns, "--state-dir",
                                          h.state, *args], capture_output=True, text=True,
                                         env=env).stdout.split()
                    if ids:
                        subprocess.run([PORTWAY, "--host-netns", h.netns, "--state-dir",
                                        h.state, "rm", "-f", *ids], capture_output=True,
                                       env=env)
        if os.path.exists(os.path.join(a.state, "portway.db")):
            for net in ("brn", "ov"):
                subprocess.run([PORTWAY, "--host-netns", a.netns, "--state-dir", a.state,
                                "network", "rm", net], capture_output=True,
                               env=dict(os.environ, PORTWAY_CLUSTER_STORE=STORE,
                                        PORTWAY_ADVERTISE_ADDRESS=a.address))
        for h in (c, b, a):
            if os.path.exists(os.path.join(h.state, "portway.db")):
                subprocess.run([PORTWAY, "--host-netns", h.netns, "--state-dir", h.state,
                                "daemon", "stop"], capture_output=True, timeout=60)
        if etcd is not None:
            stop_etcd(etcd)
        for name in reversed(made):
            del_netns(name)
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_lines(ov: dict[str, Any]) -> list[str]:
    """CPU per byte beside the throughput runs, if this run measured it."""
    cpu = ov.get("cpu_s_per_gb")
    if not cpu or not cpu["overlay"] or not cpu["raw"]:
        return []
    each = [o / r for o, r in zip(cpu["overlay"], cpu["raw"], strict=False) if r]
    return [f"CPU per byte beside the same runs (every core's busy time during a run, from "
            f"/proc/stat, ÷ the GB received; a figure only when nothing else runs): overlay "
            f"{median(cpu['overlay']):.3f}, bare {median(cpu['raw']):.3f} s/GB; overlay ÷ "
            f"bare within each cycle, median {median(each):.2f}×.", ""]


def report(ov: dict[str, Any]) -> list[str]:
    r = ov["runs"]
    return [
        "## Overlay networks across hosts",
        "",
        "Two hosts (namespaces, each with its own portwayd started through the CLI) on an "
        "underlay bridge, with a one-member etcd (bench/overlay.py).",
        "",
        f"Throughput, iperf3 one stream for {ov['iperf_seconds']} s, from a container on "
        "host A to one on host B over an overlay network (VXLAN, MTU 1450), and over a bare "
        "VXLAN path the bench makes in the same two host namespaces (its own VXLAN device, "
        "bridge and veth to a namespace of its own on each side, static FDB and neighbour "
        "entries, the same MTU) with portway's tables removed from both hosts; both ends "
        "of every run on one CPU (iperf3 -A), as the bridge's throughput runs; in turn, "
        f"{ov['cycles']} cycles:",
        "",
        "| path | median (Gbit/s) | each cycle |",
        "|---|---:|---|",
        f"| overlay network, portway's rules | {ov['overlay_gbps']} | "
        f"{', '.join(str(x) for x in r['overlay'])} |",
        f"| bare VXLAN + bridge, no rules | {ov['raw_gbps']} | "
        f"{', '.join(str(x) for x in r['raw'])} |",
        "",
        f"Within each cycle, overlay ÷ bare: median {ov['paired']:.2f}× (goal: at least "
        "0.9×); the two runs of a cycle next to each other, the bare path first every "
        "other cycle.",
        "",
        *cpu_lines(ov),
        f"Setup: `portway run -d` on host A (wall clock of the CLI, median of "
        f"{ov['setup_runs']} each, in turn): on the overlay network "
        f"{ov['setup_overlay_ms']} ms, on a bridge network {ov['setup_bridge_ms']} ms: "
        f"{ov['setup_overlay_ms'] / ov['setup_bridge_ms']:.2f}× (goal: at most 2×; the "
        "overlay's endpoint is also claimed in one etcd transaction).",
        "",
        f"From `portway run -d` on host A (a server in Python that answers on port 80) "
        f"until a client on host B, asking for it by name every 10 ms (each attempt a "
        f"plain connect, as a user's client makes it), got its answer "
        f"(the store, B's watch, its FDB and neighbour entries and DNS records, the "
        f"server's start), {len(ov['answered_ms'])} times: p50 {ov['answered_p50_ms']} ms, "
        f"p95 {ov['answered_p95_ms']} ms (nearest rank: sample "
        f"{p95_rank(len(ov['answered_ms']))} of the {len(ov['answered_ms'])} in ascending "
        f"order; the slowest took {max(ov['answered_ms'])} ms) (goal: p95 at most 1 s).",
        "",
        f"{ov['endpoints']} endpoints of two other hosts in the store, written as their "
        f"daemons write them ({ov['write_s']} s for the writes): etcd's database "
        f"{ov['store_db_bytes'] / 1e6:.1f} MB, the keys and values under /portway/ "
        f"{ov['store_text_bytes'] / 1e3:.0f} kB. Host A (running) had them all in its VXLAN "
        f"device (an FDB and a neighbour entry each) {ov['program_running_s']} s after the "
        f"last write; a new host C had them all "
        f"{ov['program_new_host_s'] - ov['daemon_start_s']:.2f} s after its "
        f"`portway daemon start` returned (which took {ov['daemon_start_s']} s, as on any "
        f"host). With them there, `run -d` on the overlay network: "
        f"{ov['setup_overlay_crowded_ms']} ms (median of {ov['crowded_runs']}; a bridge "
        f"network's in turn, as a control: {ov.get('setup_bridge_crowded_ms', '-')} ms): "
        f"{ov['setup_overlay_crowded_ms'] / ov['setup_overlay_ms']:.2f}× the figure above "
        f"(goal: at most 1.3×). Their lease revoked, A had removed them {ov['forget_s']} s "
        "later.",
        "",
    ]


if __name__ == "__main__":
    # This section alone: python bench/overlay.py (as root, from the repository).
    result = bench_overlay()
    print(json.dumps(result, indent=2))
    print("\n".join(report(result)))
