"""Firewall benchmarks: per-packet cost against the number of published ports, the cost
of adding one, and TCP throughput through each path, beside the same paths without
rules, for IPv4 and IPv6 on one dual-stack network. Runs inside bench/run.py's host
namespace, with an "outside" namespace on the uplink; every number is measured in the
same run as its comparison, and the two families' runs alternate.
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import time
from typing import Any

from idle import settle
from portway.core import firewall
from portway.core.firewall import Published
from portway.kernel.nft import Nft
from portway.model.types import IPAddress
from portway.testbed import HOST_ADDR, HOST_ADDR6

SUBNETS = ["10.204.0.0/24", "fd00:204::/64"]
SCALES = (1, 1000, 10000)
FIRST_FILLER = 20000  # filler ports are 20000.., the measured one comes after them
MEASURED = 50000
RATE_ROUNDS = 5  # rounds through every scale, a connection-rate run per family in each
RATE_SECONDS = 1.0
# Cycles of every throughput path under each set of tables: drift falls on all. 12, not
# 8: one cycle's ratio of an IPv6 goal ranged 0.81-1.36 and 0.76-1.18 over 8 cycles on
# an idle machine, several times the few per cent the goals are about, so the median of
# 8 moves by about the margin; 4 more cycles cost about 3 minutes of the bench.
IPERF_CYCLES = int(os.environ.get("PORTWAY_BENCH_IPERF_CYCLES", "12"))
IPERF_RUNS = 1  # iperf3 runs per path and cycle
IPERF_SECONDS = 2
# The CPU both ends of every iperf3 run are pinned to (iperf3 -A: the client, and the
# server for that test). The whole path then runs on that one CPU (a veth hands a packet
# to the backlog of the CPU that sends it), so a run's figure is its cost per byte. Left
# to the scheduler, the two ends shared one core in some runs and had one each in others,
# and with one each the sender's segments, sent from both cores' backlogs (the ACKs that
# release them arrive on the receiver's), came in out of order and were retransmitted by
# the thousand: one path measured 11.5 and 17.3 Gbit/s seconds apart.
IPERF_CPU = (os.cpu_count() or 1) - 1

CONNECT_LOOP = """
import socket, sys, time
addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ':' in addr else socket.AF_INET
count = fails = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00')
    try:
        s.connect((addr, port)); count += 1
    except OSError:
        fails += 1
    s.close()
print(count / seconds, fails)
"""
ACCEPT_LOOP = ("import socket\n"
               "s = socket.socket(socket.AF_INET6)\n"
               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
               "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
               "s.bind(('::', 80)); s.listen(4096)\n"
               "while True:\n    c, _ = s.accept(); c.close()\n")


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, **kw)


def connect_rate(address: str, port: int, seconds: float = RATE_SECONDS) -> float:
    settle(5)
    out = sh("ip", "netns", "exec", OUTSIDE_NS[0], "python3", "-c", CONNECT_LOOP,
             address, str(port), str(seconds)).stdout.split()
    rate, fails = float(out[0]), int(out[1])
    if rate == 0 or fails > rate * seconds * 0.01:
        raise RuntimeError(f"connections to [{address}]:{port} failed ({fails})")
    return round(rate)


OUTSIDE_NS: list[str] = []


def fill(nft: Nft, instance: str, target: IPAddress, count: int, start: int) -> None:
    """count published ports to target, in batches, as portway's own elements (of the
    maps of target's family)."""
    batch: list[Published] = []
    for port in range(start, start + count):
        batch.append(Published("bench", "tcp", port, target, 80))
        if len(batch) == 1000:
            nft.apply(firewall.render_ports(batch, instance))
            batch = []
    if batch:
        nft.apply(firewall.render_ports(batch, instance))


def unfill(nft: Nft, target: IPAddress, count: int, start: int) -> None:
    ports = [Published("bench", "tcp", p, target, 80) for p in range(start, start + count)]
    for i in range(0, len(ports), 1000):
        nft.apply(firewall.render_ports_removal(ports[i:i + 1000]))


def add_one_ms(nft: Nft, instance: str, target: IPAddress, rounds: int = 50) -> float:
    samples = []
    for i in range(rounds):
        p = [Published("bench", "tcp", 60000 + i, target, 80)]
        start = time.perf_counter()
        nft.apply(firewall.render_ports(p, instance))
        samples.append((time.perf_counter() - start) * 1000)
        nft.apply(firewall.render_ports_removal(p))
    return round(statistics.median(samples), 3)


def linear_table(count: int, target: IPAddress) -> str:
    """The same publications as one rule per port (an iptables-style engine), in a
    table of target's family."""
    family, to = ("ip", f"{target}:80") if target.version == 4 else ("ip6", f"[{target}]:80")
    lines = [f"table {family} pwbench_linear {{",
             " chain pre { type nat hook prerouting priority -110; policy accept;"]
    for port in range(FIRST_FILLER, FIRST_FILLER + count):
        lines.append(f"  fib daddr type local tcp dport {port} dnat to {to}")
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def linear_add_one_ms(rounds: int = 20) -> float:
    """Adding one rule with the nft command, as such engines do."""
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        sh("nft", "add", "rule", "ip", "pwbench_linear", "pre", "tcp", "dport",
           str(61000 + i), "dnat", "to", "10.0.0.1:80")
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3)


def ksoftirqd_seconds(cpu: int) -> float:
    """The CPU time of the softirq thread of `cpu` (the packets' path runs there when
    softirqs pile up, and in the interrupted task otherwise)."""
    for comm in os.scandir("/proc"):
        if comm.name.isdigit():
            try:
                with open(f"/proc/{comm.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)
            except OSError:
                continue
            if fields[0].endswith(f"(ksoftirqd/{cpu}"):
                ticks = fields[1].split()
                return (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def iperf_runs(client_ns: list[str], address: str, port: int = 5201,
               runs: int = 3, cpu: list[float] | None = None) -> list[float]:
    """`runs` single-stream runs of IPERF_SECONDS, client and server on IPERF_CPU, in
    Gbit/s; with cpu, the flow's own CPU seconds per GB received in each run go there:
    the client's and the server's (iperf3's own count: with tick-based accounting, as
    here, a softirq is charged to the task it interrupted, so the packets' path is in
    it) and the pinned CPU's softirq thread's. Another task's time on that CPU is not,
    so the figure holds on a machine that does other work too."""
    samples = []
    for _ in range(runs):
        settle(5)
        before = ksoftirqd_seconds(IPERF_CPU)
        run = subprocess.run(
            [*client_ns, "iperf3", "-c", address, "-p", str(port), "-t",
             str(IPERF_SECONDS), "-A", f"{IPERF_CPU},{IPERF_CPU}", "-J"],
            capture_output=True, text=True, timeout=60)
        softirq = ksoftirqd_seconds(IPERF_CPU) - before
        if run.returncode != 0:  # what went wrong, in iperf3's (or ip's) own words
            try:
                error = json.loads(run.stdout).get("error", run.stderr.strip())
            except ValueError:
                error = run.stderr.strip() or run.stdout.strip()
            raise RuntimeError(f"iperf3 to [{address}]:{port}: {error}")
        end = json.loads(run.stdout)["end"]
        received = end["sum_received"]
        samples.append(received["bits_per_second"] / 1e9)
        if cpu is not None and received["bytes"]:
            used = end["cpu_utilization_percent"]
            flow = ((used["host_total"] + used["remote_total"]) / 100 * received["seconds"]
                    + softirq)
            cpu.append(round(flow / (received["bytes"] / 1e9), 4))
    return samples


def iperf(client_ns: list[str], address: str, port: int = 5201, runs: int = 3) -> float:
    """The median of `runs` single-stream runs of IPERF_SECONDS, in Gbit/s."""
    return round(statistics.median(iperf_runs(client_ns, address, port, runs)), 2)


def bench_firewall(engine: Any, outside: str) -> dict[str, Any]:
    """Connection rate and the cost of publishing one more port at each scale, IPv4 and
    IPv6 side by side: both families' maps hold the same N ports, to the one container's
    address of each family. The rates come from RATE_ROUNDS rounds that each go through
    every scale (the maps filled from 1 to the most ports, then emptied), so a busy
    moment of the machine does not fall on one scale alone."""
    OUTSIDE_NS[:] = [outside]
    nft, instance = engine.nft, engine.instance
    results: dict[str, Any] = {"scales": {}, "method": {
        "rate_rounds": RATE_ROUNDS, "rate_seconds": RATE_SECONDS,
        "iperf_cycles": IPERF_CYCLES, "iperf_runs": IPERF_RUNS,
        "iperf_seconds": IPERF_SECONDS, "iperf_cpu": IPERF_CPU}}
    engine.network_create("fwnet", subnet=SUBNETS, ipv6=True)
    # Its own port is outside the fillers' range (FIRST_FILLER..), which the bench
    # adds and removes itself.
    info = engine.run(["python3", "-c", ACCEPT_LOOP], name="target", networks=["fwnet"],
                      ports=["19999:80"], detach=True)
    net = engine.inspect([info["Id"]])[0]["NetworkSettings"]["Networks"]["fwnet"]
    targets = {4: ipaddress.ip_address(net["IPAddress"]),
               6: ipaddress.ip_address(net["GlobalIPv6Address"])}
    hosts = {4: HOST_ADDR, 6: HOST_ADDR6}
    last = [Published("bench", "tcp", MEASURED, t, 80) for t in targets.values()]
    filled = 0

    def fill_to(scale: int) -> None:
        """scale - 1 fillers in each family's maps (from however many there are)."""
        nonlocal filled
        for t in targets.values():
            if scale - 1 > filled:
                fill(nft, instance, t, scale - 1 - filled, FIRST_FILLER + filled)
            elif scale - 1 < filled:
                unfill(nft, t, filled - (scale - 1), FIRST_FILLER + scale - 1)
        filled = scale - 1

    time.sleep(0.5)
    try:
        # Warm: the client's and the container's first connections are not the flat cost.
        nft.apply(firewall.render_ports(last, instance))
        for v in (4, 6):
            connect_rate(hosts[v], MEASURED, 0.5)
        nft.apply(firewall.render_ports_removal(last))
        # The cost of publishing one more port, and one DNAT rule per port, per scale.
        for scale in SCALES:
            fill_to(scale)
            add_ms = {v: add_one_ms(nft, instance, targets[v]) for v in (4, 6)}
            linear: dict[int, float] = {}
            linear_add = 0.0
            for v in (4, 6):
                sh("nft", "-f", "-", input=linear_table(scale, targets[v]))
                linear[v] = connect_rate(hosts[v], FIRST_FILLER + scale - 1)
                if v == 4:
                    linear_add = linear_add_one_ms()
                sh("nft", "delete", "table", "ip" if v == 4 else "ip6", "pwbench_linear")
            results["scales"][str(scale)] = {
                "linear_conn_per_s": linear[4], "map_add_ms": add_ms[4],
                "linear_add_ms": linear_add, "linear6_conn_per_s": linear[6],
                "map6_add_ms": add_ms[6]}
        # portway's maps: every scale in each round, the families in turn at each.
        rate_samples: dict[tuple[int, int], list[float]] = {}
        for _ in range(RATE_ROUNDS):
            for scale in SCALES:
                fill_to(scale)
                # The measured port is published last, after the fillers.
                nft.apply(firewall.render_ports(last, instance))
                for v in (4, 6):
                    rate_samples.setdefault((scale, v), []).append(
                        connect_rate(hosts[v], MEASURED))
                nft.apply(firewall.render_ports_removal(last))
            fill_to(1)
        for scale in SCALES:
            row = results["scales"][str(scale)]
            for v, key in ((4, "map_conn_per_s"), (6, "map6_conn_per_s")):
                row[key] = round(statistics.median(rate_samples[(scale, v)]))
                row[f"{key}_runs"] = rate_samples[(scale, v)]
    finally:
        fill_to(1)
        engine.rm([info["Id"]], force=True)
    results["throughput"] = bench_throughput(engine, outside)
    engine.network_rm(["fwnet"])
    return results


def bench_throughput_alone(engine: Any, outside: str) -> dict[str, Any]:
    """bench_throughput on its own network (PORTWAY_BENCH_ONLY=throughput)."""
    engine.network_create("fwnet", subnet=SUBNETS, ipv6=True)
    try:
        return {"throughput": bench_throughput(engine, outside), "method": {
            "iperf_cycles": IPERF_CYCLES, "iperf_runs": IPERF_RUNS,
            "iperf_seconds": IPERF_SECONDS, "iperf_cpu": IPERF_CPU}}
    finally:
        engine.network_rm(["fwnet"])


# The least a stateful NAT firewall costs: conntrack on (a rule that asks for a flow's
# state) and NAT's hooks registered (empty nat chains), nothing else.
CONNTRACK_ONLY = """
table inet pwbench_ct {
  chain forward { type filter hook forward priority 0; ct state established accept; }
  chain pre { type nat hook prerouting priority -100; }
  chain post { type nat hook postrouting priority 100; }
}
"""


# A published port with nothing but what any published port needs: one DNAT rule per
# family (conntrack comes with it), no filtering, no anti-spoofing.
ONE_DNAT = """
table inet pwbench_dnat {{
  chain pre {{ type nat hook prerouting priority -100;
    ip daddr {host} tcp dport 5201 dnat ip to {addr};
    ip6 daddr {host6} tcp dport 5201 dnat ip6 to {addr6}; }}
  chain post {{ type nat hook postrouting priority 100; }}
}}
"""


def bench_throughput(engine: Any, outside: str) -> dict[str, Any]:
    """iperf3 through each path of both families: with portway's rules; with its tables
    gone (inet, bridge and arp portway: NAT, filtering and the per-port source checks) and
    only conntrack and NAT's hooks in their place; with no table at all; and, for the
    published ports, one bare DNAT rule. In turn IPERF_CYCLES times; the median of every
    run of a path."""
    # (A path's key names its runs with portway's rules; _no_rules, _conntrack_only and
    # _one_dnat added, the runs with those tables in their place.)
    server = engine.run(["iperf3", "-s"], name="iperf", networks=["fwnet"],
                        ports=["5201:5201"], detach=True)
    # The client's command lives as long as the runs: on a busy machine (every settle
    # waiting its most) they take more than 10 minutes, and with the command's end the
    # container's namespace went, and the runs after it failed.
    client = engine.run(["sleep", "infinity"], name="iperfc", networks=["fwnet"],
                        detach=True)
    net = engine.inspect([server["Id"]])[0]["NetworkSettings"]["Networks"]["fwnet"]
    address, address6 = net["IPAddress"], net["GlobalIPv6Address"]
    in_client = ["ip", "netns", "exec", f"pw-{client['Id'][:12]}"]
    from_outside = ["ip", "netns", "exec", outside]
    with_rules = {
        "container_to_container": (in_client, address),
        "container_to_container6": (in_client, address6),
        "outside_to_published": (from_outside, HOST_ADDR),
        "outside_to_published6": (from_outside, HOST_ADDR6),
        "host_to_loopback_published": ([], "127.0.0.1"),
    }
    # The same topology without portway's rules: bridge netfilter stays on, as every new
    # namespace has it here, and the outside reaches the container by a plain route.
    routed = {
        "container_to_container": (in_client, address),
        "container_to_container6": (in_client, address6),
        "outside_to_container": (from_outside, address),
        "outside_to_container6": (from_outside, address6),
    }
    # The published ports' own path, with one DNAT rule in place of portway's tables.
    one_dnat = {key: with_rules[key] for key in ("outside_to_published",
                                                  "outside_to_published6")}
    states = ("", "_conntrack_only", "_no_rules")
    samples: dict[str, list[float]] = {key: [] for key in with_rules}
    samples.update({f"{key}{state}": [] for key in routed for state in states[1:]})
    samples.update({f"{key}_one_dnat": [] for key in one_dnat})
    cpu: dict[str, list[float]] = {key: [] for key in samples}
    routes = [("-4", SUBNETS[0], HOST_ADDR), ("-6", SUBNETS[1], HOST_ADDR6)]
    # One cycle's runs, by the tables in place: none, portway's, one DNAT rule, conntrack
    # and NAT only. Each IPv6 goal's two runs are next to each other (without rules,
    # then with portway's, container to container; portway's, then one DNAT rule, to the
    # published port), and every other cycle runs the list backwards: neither side of a
    # goal always goes first, and seconds, not a minute, lie between them.
    steps = [("none", key) for key in ("outside_to_container", "outside_to_container6",
                                       "container_to_container", "container_to_container6")]
    steps += [("portway", key) for key in (
        "container_to_container6", "container_to_container", "host_to_loopback_published",
        "outside_to_published", "outside_to_published6")]
    steps += [("dnat", key) for key in ("outside_to_published6", "outside_to_published")]
    steps += [("conntrack", key) for key in routed]
    state = ["portway"]

    def tables(wanted: str) -> None:
        """Only the tables of `wanted` in place (portway's are put back by gc)."""
        if wanted == state[0]:
            return
        for table in ("pwbench_ct", "pwbench_dnat"):
            subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
        if state[0] == "portway":
            engine.nft.apply(firewall.render_tables_removal())
        if wanted == "portway":
            engine.gc()  # puts portway's tables back
        elif wanted == "dnat":
            sh("nft", "-f", "-", input=ONE_DNAT.format(
                host=HOST_ADDR, host6=HOST_ADDR6, addr=address, addr6=address6))
        elif wanted == "conntrack":
            sh("nft", "-f", "-", input=CONNTRACK_ONLY)
        state[0] = wanted

    suffix = {"portway": "", "none": "_no_rules", "conntrack": "_conntrack_only",
              "dnat": "_one_dnat"}
    runners = {**routed, **with_rules}
    time.sleep(0.5)
    try:
        for family, subnet, via in routes:
            sh("ip", "-n", outside, family, "route", "add", subnet, "via", via)
        for cycle in range(IPERF_CYCLES):
            for wanted, key in (steps if cycle % 2 == 0 else steps[::-1]):
                tables(wanted)
                where, to = runners[key]
                samples[key + suffix[wanted]] += iperf_runs(
                    where, to, runs=IPERF_RUNS, cpu=cpu[key + suffix[wanted]])
        out: dict[str, Any] = {key: round(statistics.median(v), 2)
                               for key, v in samples.items()}
        # Each path's runs in cycle order: a ratio taken within each cycle (with rules
        # and without, next to each other) is not moved by the machine's drift.
        out["runs"] = {key: [round(x, 2) for x in v] for key, v in samples.items()}
        out["cpu_s_per_gb"] = cpu
        out["raw_veth_pair"] = raw_veth()
    finally:
        for table in ("pwbench_ct", "pwbench_dnat"):
            subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
        for family, subnet, _ in routes:
            subprocess.run(["ip", "-n", outside, family, "route", "del", subnet],
                           capture_output=True)
        try:
            engine.gc()  # puts the tables back, if they are still gone
        finally:
            engine.rm([server["Id"], client["Id"]], force=True)
    return out


def raw_veth() -> float:
    a, b = "pwbench-va", "pwbench-vb"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
           "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.205.0.1/24", "dev", "v0")
        sh("ip", "-n", b, "addr", "add", "10.205.0.2/24", "dev", "v1")
        sh("ip", "-n", a, "link", "set", "v0", "up")
        sh("ip", "-n", b, "link", "set", "v1", "up")
        server = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            return iperf(["ip", "netns", "exec", a], "10.205.0.2")
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        sh("ip", "netns", "del", a)
        sh("ip", "netns", "del", b)
