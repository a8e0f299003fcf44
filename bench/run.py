"""`make bench`: portway side by side with netavark and the CNI plugins, in one run.

The whole run happens inside a throwaway host namespace: this process enters
it first (before any thread exists), so portway's engine, the daemon started
by the CLI and the anchors' executables all work there. Every timed setup is
followed (outside the clock) by an ICMP probe from the host namespace to the
container's address (ICMPv6 too, for a dual-stack one), so a fast but broken setup
cannot pass. IPv6 is measured beside IPv4 in the same run: set-up on a dual-stack
network against an IPv4-only one, turn about. Results go to
bench/results/latest.json and BENCHMARKS.md.
"""

from __future__ import annotations

import compileall
import ipaddress
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import idle  # noqa: E402
from portway.kernel import sandbox  # noqa: E402
from portway.testbed import make_world, reap_orphans, remove_world  # noqa: E402

PORTWAY = str(Path(sys.executable).parent / "portway")
NETAVARK = "/usr/lib/podman/netavark"
CNI_PATH = "/usr/lib/cni"
RUNS = int(os.environ.get("PORTWAY_BENCH_RUNS", "50"))
GROWTH = int(os.environ.get("PORTWAY_BENCH_GROWTH", "1000"))
# Rounds of the growth run, each from the 1st container to the GROWTH-th and back to none:
# the figure is the median of the rounds' ratios (one round's first and last hundred lie
# seconds apart, and the machine's state between them moved it by as much as the goal's
# margin: 1.22x one run, 1.52x the next).
GROWTH_ROUNDS = int(os.environ.get("PORTWAY_BENCH_GROWTH_ROUNDS", "3"))
FIREWALL = os.environ.get("PORTWAY_BENCH_FIREWALL", "1") == "1"
DNS = os.environ.get("PORTWAY_BENCH_DNS", "1") == "1"
AUDIT = os.environ.get("PORTWAY_BENCH_AUDIT", "1") == "1"
OVERLAY = os.environ.get("PORTWAY_BENCH_OVERLAY", "1") == "1"
DNS_SECONDS = float(os.environ.get("PORTWAY_BENCH_DNS_SECONDS", "2"))
CONTRACT = ROOT / "tests" / "e2e" / "data" / "podman-4.3-setup-input.json"
PODMAN = os.environ.get("PORTWAY_BENCH_PODMAN", "1") == "1"
# PORTWAY_BENCH_ONLY=dns (or throughput, the firewall section's iperf3 part, or api, the
# Python API against the kernel floor): that section alone, in a world of its own; its
# goals and table are printed and kept in bench/results/dns.json (throughput.json,
# api.json), and BENCHMARKS.md is left as it is.
ONLY = os.environ.get("PORTWAY_BENCH_ONLY", "")


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, **kw)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    return clocked(fn, *args, **kwargs)[0]


def clocked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(milliseconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 2), "p95": round(p95, 2),
            "n": len(ordered)}


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(address: str, timeout: float = 2.0) -> bool:
    """One ICMP echo from the host namespace; True if the container answered."""
    if ipaddress.ip_address(address).version == 6:
        return ping6(address, timeout)
    ident = os.getpid() & 0xFFFF
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    payload = b"portway-bench"
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        s.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            if peer[0] == address and data[ihl] == 0 and \
                    struct.unpack("!H", data[ihl + 4:ihl + 6])[0] == ident:
                return True
    return False


def ping6(address: str, timeout: float = 2.0) -> bool:
    """One ICMPv6 echo (the kernel fills in the checksum on an ICMPv6 raw socket, and
    hands back the ICMPv6 message without its IPv6 header)."""
    ident = os.getpid() & 0xFFFF
    want = ipaddress.ip_address(address)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.settimeout(timeout)
        s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"portway-bench", (address, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                return False
            if ipaddress.ip_address(peer[0].split("%")[0]) == want and data[0] == 129 and \
                    struct.unpack("!H", data[4:6])[0] == ident:
                return True
    return False


class Probe:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, what: str, address: str) -> None:
        """One echo; on a busy machine one may go unanswered in time: then one more,
        waited for longer. A setup that is not reachable answers neither."""
        if not ping(address) and not ping(address, timeout=5.0):
            self.failures.append(f"{what}: {address} did not answer")


CLI_NETS = {"v4": "benchnet", "dual": "benchnet6"}


class PortwayCli:
    """portway's CLI, a process per operation, on an IPv4-only network and a dual-stack
    one (warm: the daemon is started and the bridges exist, as for netavark's warm
    setup)."""

    def __init__(self, host: str, probe: Probe) -> None:
        self.probe = probe
        self.state = tempfile.mkdtemp(prefix="pwbench-cli-")
        self.base = [PORTWAY, "--host-netns", host, "--state-dir", self.state]
        sh(*self.base, "network", "create", "benchnet", "--subnet", "10.201.0.0/24")
        sh(*self.base, "network", "create", "benchnet6", "--ipv6", "--subnet",
           "10.201.1.0/24", "--subnet", "fd00:201::/64")
        for net in CLI_NETS.values():
            sh(*self.base, "run", "-d", "--name", "warm", "--network", net, "--", "sleep",
               "3600")
            sh(*self.base, "rm", "-f", "warm")

    def once(self, i: int, family: str, port: bool = False,
             restart: bool = False) -> tuple[float, float]:
        """run -d, then rm -f, of one container (milliseconds each); restart: with
        --restart always (what a restart policy costs: nothing is done for it at run)."""
        net = CLI_NETS[family]
        name = f"b{i}-{family}{'-p' if port else ''}{'-r' if restart else ''}"
        publish = ["-p", f"{17000 + i}:80"] if port else []
        policy = ["--restart", "always"] if restart else []
        run_ms = timed(sh, *self.base, "run", "-d", "--name", name, "--network", net,
                       *publish, *policy, "--", "sleep", "3600")
        info = json.loads(sh(*self.base, "inspect", name).stdout)[0]["NetworkSettings"][
            "Networks"][net]
        what = f"portway run -d{' -p' if port else ''}{' --restart' if restart else ''} ({net})"
        self.probe.check(what, info["IPAddress"])
        if family == "dual":
            self.probe.check(what, info["GlobalIPv6Address"])
        return run_ms, timed(sh, *self.base, "rm", "-f", name)

    def status(self) -> float:
        return timed(sh, *self.base, "daemon", "status")

    def close(self) -> None:
        try:
            sh(*self.base, "network", "rm", *CLI_NETS.values())
        finally:
            subprocess.run([*self.base, "daemon", "stop"], capture_output=True)
            shutil.rmtree(self.state, ignore_errors=True)


class Netavark:
    """netavark 1.4 with the real Podman 4.3 input, its DNS off, with or without its one
    port mapping."""

    def __init__(self, probe: Probe, with_port: bool) -> None:
        self.probe, self.with_port = probe, with_port
        self.base = json.loads(CONTRACT.read_text())
        if not with_port:
            self.base["port_mappings"] = []  # publishing is compared separately
        self.base["network_info"]["a1pnet"]["dns_enabled"] = False
        self.config = tempfile.mkdtemp(prefix="pwbench-nv-")
        self.once(RUNS)  # warm: the first setup creates the bridge

    def once(self, i: int) -> tuple[float, float]:
        kind = "p" if self.with_port else "n"
        ns = f"pwbench-nv{kind}-{i}"
        sh("ip", "netns", "add", ns)
        try:
            data = json.loads(json.dumps(self.base))
            # Addresses apart per side and run: a reused one would meet a stale
            # neighbour entry (another MAC) in the host and fail its probe.
            address = f"10.89.0.{(100 if self.with_port else 10) + i % 80}"
            data["networks"]["a1pnet"]["static_ips"] = [address]
            for mapping in data["port_mappings"]:
                mapping["host_port"] = 18000 + i
            text = json.dumps(data)
            up = timed(sh, NETAVARK, "--config", self.config, "setup", f"/run/netns/{ns}",
                       input=text)
            self.probe.check("netavark setup" + (", 1 port" if self.with_port else ""),
                             address)
            down = timed(sh, NETAVARK, "--config", self.config, "teardown",
                         f"/run/netns/{ns}", input=text)
        finally:
            sh("ip", "netns", "del", ns)
        return up, down

    def close(self) -> None:
        shutil.rmtree(self.config, ignore_errors=True)


class Cni:
    """The CNI reference plugins: `bridge` with `host-local` IPAM, and with portmap for
    one published port (the two timed together, as a runtime calls them: portmap gets
    the bridge plugin's result)."""

    def __init__(self, probe: Probe, with_port: bool) -> None:
        self.probe, self.with_port = probe, with_port
        self.data_dir = tempfile.mkdtemp(prefix="pwbench-cni-")
        self.name = "cniport" if with_port else "cnibench"
        self.bridge = json.dumps({
            "cniVersion": "1.0.0", "name": self.name, "type": "bridge",
            "bridge": f"{self.name}0", "isGateway": True, "ipMasq": with_port,
            "ipam": {"type": "host-local",
                     "subnet": "10.206.0.0/24" if with_port else "10.202.0.0/24",
                     "dataDir": self.data_dir}})
        self.once(RUNS)  # warm: the first ADD creates the bridge

    def once(self, i: int) -> tuple[float, float]:
        ns = f"pwbench-{self.name}-{i}"
        sh("ip", "netns", "add", ns)
        env = dict(os.environ, CNI_CONTAINERID=f"{self.name}{i}",
                   CNI_NETNS=f"/run/netns/{ns}", CNI_IFNAME="eth0", CNI_PATH=CNI_PATH,
                   CNI_COMMAND="ADD")
        port_conf = {"cniVersion": "1.0.0", "name": self.name, "type": "portmap",
                     "capabilities": {"portMappings": True},
                     "runtimeConfig": {"portMappings": [
                         {"hostPort": 19000 + i, "containerPort": 80, "protocol": "tcp"}]}}
        try:
            start = time.perf_counter()
            result = sh(f"{CNI_PATH}/bridge", input=self.bridge, env=env).stdout
            if self.with_port:
                sh(f"{CNI_PATH}/portmap", input=json.dumps(
                    {**port_conf, "prevResult": json.loads(result)}), env=env)
            up = (time.perf_counter() - start) * 1000
            address = json.loads(result)["ips"][0]["address"].split("/")[0]
            self.probe.check("CNI bridge" + (" + portmap" if self.with_port else "") +
                             " ADD", address)
            env["CNI_COMMAND"] = "DEL"
            start = time.perf_counter()
            if self.with_port:
                sh(f"{CNI_PATH}/portmap", input=json.dumps(
                    {**port_conf, "prevResult": json.loads(result)}), env=env)
            sh(f"{CNI_PATH}/bridge", input=self.bridge, env=env)
            down = (time.perf_counter() - start) * 1000
        finally:
            sh("ip", "netns", "del", ns)
        return up, down

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", f"{self.name}0"], capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def bench_setups(host: str, probe: Probe) -> dict[str, Any]:
    """portway's CLI and the anchors' executables, run i of each in turn (in an order
    that rotates with i), so a busy moment of the machine falls on all of them alike."""
    anchors = os.path.exists(NETAVARK), os.path.exists(f"{CNI_PATH}/portmap")
    pw = PortwayCli(host, probe)
    nv = (Netavark(probe, False), Netavark(probe, True)) if anchors[0] else None
    cni = (Cni(probe, False), Cni(probe, True)) if anchors[1] else None
    samples: dict[str, tuple[list[float], list[float]]] = {}

    Once = Callable[[int], tuple[float, float]]

    def side(*group: tuple[str, Once]) -> None:
        # A group's sides run next to each other, every other time backwards, so that
        # neither always follows the other's tear-down (or another side's).
        for key, _ in group:
            samples[key] = ([], [])
        turns.append(list(group))

    turns: list[list[tuple[str, Once]]] = []
    try:
        side(("portway", lambda i: pw.once(i, "v4")),
             ("portway_restart", lambda i: pw.once(i, "v4", restart=True)))
        side(("portway_dual", lambda i: pw.once(i, "dual")))
        side(("portway_p", lambda i: pw.once(i, "v4", port=True)))
        if nv:
            side(("netavark", nv[0].once))
            side(("netavark_port", nv[1].once))
        if cni:
            side(("cni", cni[0].once))
            side(("cni_portmap", cni[1].once))
        for i in range(RUNS):
            idle.settle(2)
            shift = i % len(turns)
            for group in turns[shift:] + turns[:shift]:
                for key, once in group[::-1] if i % 2 else group:
                    up, down = once(i)
                    samples[key][0].append(up)
                    samples[key][1].append(down)
        roundtrip = [pw.status() for _ in range(RUNS)]
    finally:
        pw.close()
        for anchor in (*(nv or ()), *(cni or ())):
            anchor.close()

    def pair(key: str) -> dict[str, Any] | None:
        if key not in samples:
            return None
        up, down = samples[key]
        return {"setup": stats(up), "teardown": stats(down)}

    p, dual, pp = samples["portway"], samples["portway_dual"], samples["portway_p"]
    pr = samples["portway_restart"]
    cni_plain, cni_port = pair("cni"), pair("cni_portmap")
    return {
        "portway_cli": {"run": stats(p[0]), "rm": stats(p[1]), "run_p": stats(pp[0]),
                        "run_dual": stats(dual[0]), "rm_dual": stats(dual[1]),
                        "run_restart": stats(pr[0]), "rm_restart": stats(pr[1]),
                        "cli_roundtrip": stats(roundtrip)},
        "netavark": pair("netavark"), "netavark_port": pair("netavark_port"),
        "cni": cni_plain and {"add": cni_plain["setup"], "del": cni_plain["teardown"]},
        "cni_portmap": cni_port and {"add": cni_port["setup"]},
    }


def bench_api(probe: Probe) -> dict[str, Any]:
    """portway's Python API, and the kernel floor (the same kernel work, no store), on an
    IPv4-only network and on a dual-stack one, turn about."""
    from portway.core import names
    from portway.engine import Engine
    from portway.kernel import links, netns
    from portway.model.types import Network

    state = tempfile.mkdtemp(prefix="pwbench-api-")
    engine = Engine(state, None)
    try:
        engine.network_create("apinet", subnet="10.203.0.0/16")
        engine.network_create("apinet6", subnet=["10.211.0.0/16", "fd00:211::/64"], ipv6=True)
        nets: dict[str, Network] = {}
        for name in ("apinet", "apinet6"):
            found = engine.store.find_network(name)
            assert found is not None
            nets[name] = found
            engine.rm([engine.run(["true"], name="warm", networks=[name])["Id"]], force=True)

        def floor_once(net: Network, i: int) -> tuple[float, float]:
            eid = names.new_id()
            ns = names.netns_name(eid)
            floor_if = f"flv-{eid[:11]}"
            addresses = tuple(ipaddress.ip_interface((s.subnet.network_address + 60000 + i,
                                                      s.subnet.prefixlen))
                              for s in net.subnets)
            bridge = links.observe_link(engine.host, net.bridge)
            assert bridge is not None

            # Its namespace made ahead, untimed, as portwayd makes its next container's
            # (and as Podman makes the namespace before it calls netavark).
            spare = netns.make_spare()

            def build() -> None:
                cont = netns.claim_spare(spare, ns,
                                         lambda ipr: links.setup_loopback(ipr, "floor"))
                fd = os.open(netns.netns_path(ns), os.O_RDONLY)
                # Not a pwv- name: the floor is not portway's, and portway's bridge ports
                # with that prefix send nothing until portway lists them (anti-spoofing).
                links.ensure_endpoint(engine.host, cont, fd, links.EndpointSpec(
                    host_ifname=floor_if, ifname="eth0",
                    mac=names.mac_for(addresses[0].ip), mtu=1500, addresses=addresses,
                    gateways=tuple(s.gateway for s in net.subnets),
                    bridge_index=bridge.index, tag="floor"))
                os.close(fd)
                cont.close()

            def destroy() -> None:
                links.delete_link(engine.host, floor_if)
                netns.delete_netns(ns)

            up = timed(build)
            for a in addresses:
                probe.check("kernel floor", str(a.ip))
            return up, timed(destroy)

        def api_once(net: str, i: int) -> tuple[float, float]:
            ms, info = clocked(engine.run, ["sleep", "1"], name=f"a{i}-{net}", networks=[net])
            c = engine.inspect([info["Id"]])[0]["NetworkSettings"]["Networks"][net]
            probe.check(f"portway API run ({net})", c["IPAddress"])
            if c["GlobalIPv6Address"]:
                probe.check(f"portway API run ({net})", c["GlobalIPv6Address"])
            return ms, timed(engine.rm, [info["Id"]], force=True)

        samples: dict[str, dict[str, list[float]]] = {
            net: {"run": [], "rm": [], "floor_up": [], "floor_down": []} for net in nets}
        for i in range(RUNS):
            idle.settle(2)
            # The first set-up after the wait for an idle machine pays for waking its
            # CPUs (on this kind of VM an idle vCPU halts at once): portway and the floor
            # take that place in turn (the floor first every other pair of rounds), as
            # the networks do (every other round).
            floor_first = (i // 2) % 2 == 1
            for net in tuple(nets)[::1 if i % 2 == 0 else -1]:
                if floor_first:
                    fup, fdown = floor_once(nets[net], i)
                up, down = api_once(net, i)
                samples[net]["run"].append(up)
                samples[net]["rm"].append(down)
                if not floor_first:
                    fup, fdown = floor_once(nets[net], i)
                samples[net]["floor_up"].append(fup)
                samples[net]["floor_down"].append(fdown)

        # Growth: the 1st to the GROWTH-th container on one network, each timed, with the
        # kernel floor measured at the same container count; GROWTH_ROUNDS times.
        rounds = [growth_round(engine, probe, nets["apinet"], floor_once, r)
                  for r in range(GROWTH_ROUNDS)]
        engine.network_rm(["apinet", "apinet6"])
    finally:
        engine.close()
        shutil.rmtree(state, ignore_errors=True)
    heads = [h for growth, _ in rounds for h in growth[:100]]
    tails = [t for growth, _ in rounds for t in growth[-100:]]
    fheads = [h for _, floor in rounds for h in floor[:10]]
    ftails = [t for _, floor in rounds for t in floor[-10:]]
    per_round = [statistics.median(growth[-100:]) / statistics.median(growth[:100])
                 for growth, _ in rounds]
    v4, dual = samples["apinet"], samples["apinet6"]
    return {
        "run": stats(v4["run"]), "rm": stats(v4["rm"]),
        "floor_setup": stats(v4["floor_up"]), "floor_teardown": stats(v4["floor_down"]),
        "dual": {"run": stats(dual["run"]), "rm": stats(dual["rm"]),
                 "floor_setup": stats(dual["floor_up"]),
                 "floor_teardown": stats(dual["floor_down"])},
        "growth": {"count": GROWTH, "first100": stats(heads), "last100": stats(tails),
                   "floor_first": stats(fheads), "floor_last": stats(ftails),
                   "rounds": [round(x, 3) for x in per_round],
                   "per_round": round(statistics.median(per_round), 3)},
    }


def growth_round(engine: Any, probe: Probe, net: Any,
                 floor_once: Callable[[Any, int], tuple[float, float]],
                 number: int) -> tuple[list[float], list[float]]:
    """One round of the growth run: containers 1 to GROWTH made on net, each timed, the
    floor at every 10th count; then all removed. (The run's times, the floor's.)"""
    growth: list[float] = []
    floor: list[float] = []
    made: list[str] = []
    try:
        for i in range(GROWTH):
            if i % 10 == 0:
                idle.settle(2)
            ms, info = clocked(engine.run, ["sleep", "1"], name=f"g{number}-{i}",
                               networks=[net.name])
            growth.append(ms)
            made.append(info["Id"])
            if i % 10 == 0:
                floor.append(floor_once(net, i)[0])
        last = engine.inspect([made[-1]])[0]
        probe.check("growth, last container", last["NetworkSettings"]["Networks"][net.name]
                    ["IPAddress"])
    finally:
        for cid in made:
            engine.rm([cid], force=True)
    return growth, floor


def run_with_engine(host: str, outside: str, module: str, function: str) -> dict[str, Any]:
    """bench/<module>.py's function(engine, outside) with a fresh engine and state dir.

    The engine is told its host namespace by name, so its DNS server forwards to that
    namespace's resolv.conf (the outside namespace), never to the machine's resolvers."""
    import importlib

    from portway.engine import Engine
    from portway.engine.networks import PSEUDO_NETWORKS

    bench = getattr(importlib.import_module(module), function)
    state = tempfile.mkdtemp(prefix=f"pwbench-{module}-")
    engine = Engine(state, host)
    try:
        result: dict[str, Any] = bench(engine, outside)
        return result
    finally:
        try:  # what a failed run left in its own state dir: containers, then networks
            engine.rm([c["Id"] for c in engine.ps(all=True)], force=True)
            # (host and none are listed too, as Docker lists them, but never removed.)
            engine.network_rm([n["Id"] for n in engine.network_ls()
                               if n["Name"] not in PSEUDO_NETWORKS])
        finally:
            engine.close()
            shutil.rmtree(state, ignore_errors=True)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


def paired(t: dict[str, Any], with_rules: str, without: str) -> float:
    """The median of the ratios within each cycle of the throughput runs (each cycle
    measures both within a minute; drift between cycles falls out)."""
    pairs = zip(t["runs"][with_rules], t["runs"][without], strict=True)
    return float(statistics.median(a / b for a, b in pairs if b))


def write_report(r: dict[str, Any]) -> str:
    cli, api = r["portway_cli"], r["portway_api"]
    dual = api["dual"]
    nv, cni = r.get("netavark"), r.get("cni")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (bench/run.py) on {r['date']}: {r['machine']}; "
        f"{RUNS} runs per figure; every setup verified by an ICMP probe to the container "
        f"({r['probe_failures']} failures). Times in milliseconds. Load average (1 min) "
        f"when the run began: {r['load'][0]:.2f} (other work on this machine), when it "
        f"ended: {r['load'][1]:.2f} (its own included). Each round of a comparison starts "
        "once the machine is idle (under 10% busy for 0.2 s; a bounded wait: 2 s for a "
        "round of set-ups, 5 s for a network run, 15 s for a DNS run); the wait ran out "
        f"{r['idle']['gave_up']} of {r['idle']['waits']} times.",
        "",
        *goals_report(r),
        "## Container networking ready: portway CLI against the anchors' executables",
        "",
        "Each side through its own entry point, a process per operation, warm bridge; "
        "run i of every side in turn, in an order that rotates with i (`run -d` with and "
        "without `--restart always` next to each other, every other time backwards). "
        "netavark 1.4 gets the real Podman 4.3 input captured in `tests/e2e/data` (its port "
        "mapping and DNS removed: publishing and DNS are compared separately); CNI is the "
        "`bridge` plugin with `host-local` IPAM. Ratio = anchor ÷ portway (above 1: portway "
        "is faster).",
        "",
        "| operation | portway median | p95 | anchor | anchor median | p95 | ratio |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    def row(operation: str, mine: dict[str, float], anchor: str,
            theirs: dict[str, float]) -> str:
        return (f"| {operation} | {mine['median']} | {mine['p95']} | {anchor} | "
                f"{theirs['median']} | {theirs['p95']} | "
                f"{ratio(theirs['median'], mine['median'])} |")

    if nv:
        lines.append(row("set up", cli["run"], "netavark setup", nv["setup"]))
        lines.append(row("tear down", cli["rm"], "netavark teardown", nv["teardown"]))
    if cni:
        lines.append(row("set up", cli["run"], "CNI bridge ADD", cni["add"]))
        lines.append(row("tear down", cli["rm"], "CNI bridge DEL", cni["del"]))
    if r.get("netavark_port"):
        lines.append(row("set up with `-p`", cli["run_p"], "netavark setup, 1 port",
                         r["netavark_port"]["setup"]))
    if r.get("cni_portmap"):
        lines.append(row("set up with `-p`", cli["run_p"], "CNI bridge + portmap ADD",
                         r["cni_portmap"]["add"]))
    lines += [
        "",
        "`portway run -d` includes starting the container's process; the anchors only set up "
        "networking.",
        "",
        "The same `portway run -d` on a dual-stack network (an IPv4 /24 and an IPv6 /64), in "
        "turn with the IPv4-only one above and the anchors: set up "
        f"{cli['run_dual']['median']} (p95 {cli['run_dual']['p95']}), tear down "
        f"{cli['rm_dual']['median']} (p95 {cli['rm_dual']['p95']}); dual-stack ÷ IPv4-only: "
        f"{ratio(cli['run_dual']['median'], cli['run']['median'])} and "
        f"{ratio(cli['rm_dual']['median'], cli['rm']['median'])} (goal for set up: at most "
        "1.15).",
        "",
        *restart_report(cli),
        f"CLI round trip (`portway daemon status`): median {cli['cli_roundtrip']['median']}, "
        f"p95 {cli['cli_roundtrip']['p95']}.",
        "",
        "## Python API against the kernel floor",
        "",
        "The floor is the same kernel work done in-process with no store: a named namespace "
        "(made ahead, untimed, as portwayd makes its next container's), a veth pair created "
        "into it, address, route, bridge port. Ratio = portway ÷ floor (goal: at most 1.5). "
        "portway's set-up does more than that: it records the container, its endpoint and "
        "its address (SQLite), adds the port's anti-spoofing entries (one nftables "
        "transaction), writes its /etc files and gives the DNS server its names; the last "
        "three beside its netlink work (a helper thread, and the DNS server's own process). "
        "Its namespace made ahead has lo up and tagged for the container already; the "
        "floor brings lo up in its timed part. Each round waits for an idle machine, and "
        "its first set-up pays for waking the CPUs (here an idle vCPU halts at once): "
        "portway and the floor take that place in turn (the floor first every other pair "
        "of rounds), so that neither always pays it. The growth rounds below run back to "
        "back, without that wait.",
        "",
        "| operation | portway API median | p95 | floor median | p95 | ratio |",
        "|---|---:|---:|---:|---:|---:|",
        f"| set up | {api['run']['median']} | {api['run']['p95']} | "
        f"{api['floor_setup']['median']} | {api['floor_setup']['p95']} | "
        f"{ratio(api['run']['median'], api['floor_setup']['median'])} |",
        f"| tear down | {api['rm']['median']} | {api['rm']['p95']} | "
        f"{api['floor_teardown']['median']} | {api['floor_teardown']['p95']} | "
        f"{ratio(api['rm']['median'], api['floor_teardown']['median'])} |",
        f"| set up, dual stack | {dual['run']['median']} | {dual['run']['p95']} | "
        f"{dual['floor_setup']['median']} | {dual['floor_setup']['p95']} | "
        f"{ratio(dual['run']['median'], dual['floor_setup']['median'])} |",
        f"| tear down, dual stack | {dual['rm']['median']} | {dual['rm']['p95']} | "
        f"{dual['floor_teardown']['median']} | {dual['floor_teardown']['p95']} | "
        f"{ratio(dual['rm']['median'], dual['floor_teardown']['median'])} |",
        "",
        "Dual stack: a network with an IPv4 /16 and an IPv6 /64, its runs in turn with the "
        "IPv4-only network's, which goes first alternating; its floor gives the container "
        "both addresses and both default routes. Dual-stack ÷ IPv4-only set up: portway "
        f"{ratio(dual['run']['median'], api['run']['median'])} (goal: at most 1.15), the "
        f"kernel floor {ratio(dual['floor_setup']['median'], api['floor_setup']['median'])}.",
        "",
        f"## Growth: the 1st to the {api['growth']['count']}th container on one network (API)",
        "",
        "Each round makes the containers one by one, each timed (and the kernel floor at every "
        "10th count), then removes them all; the first and the last 100 of every round "
        "together:",
        "",
        "| containers | portway median | p95 | floor median (same count) | portway ÷ floor |",
        "|---|---:|---:|---:|---:|",
    ]
    g = api["growth"]
    for label, mine, floor in (("first 100", "first100", "floor_first"),
                               ("last 100", "last100", "floor_last")):
        lines.append(f"| {label} | {g[mine]['median']} | {g[mine]['p95']} | "
                     f"{g[floor]['median']} | {ratio(g[mine]['median'], g[floor]['median'])} |")
    lines += [
        "",
        f"Last 100 ÷ first 100: {ratio(g['last100']['median'], g['first100']['median'])} "
        "over all rounds; within each round (the 1st to the last container, then all "
        f"removed; {len(g.get('rounds', [])) or 1} rounds): "
        f"{', '.join(f'{x:.2f}×' for x in g.get('rounds', []))}, median "
        f"{g.get('per_round', 0):.2f}× (the goal's figure: at most 1.3). The kernel floor at "
        "the same counts (every 10th container): "
        f"{ratio(g['floor_last']['median'], g['floor_first']['median'])}.",
        "",
    ]
    fw = r.get("firewall")
    if fw:
        lines += firewall_report(fw)
    dns = r.get("dns")
    if dns:
        lines += dns_report(dns)
    au = r.get("audit")
    if au:
        lines += audit_report(au)
    if r.get("overlay"):
        from overlay import report as overlay_report

        lines += overlay_report(r["overlay"])
    pm = r.get("podman")
    if pm:
        lines += [
            "## Podman 4.3: `podman run --rm` with portway and with netavark 1.4",
            "",
            "The same Podman, runc and busybox rootfs, each backend in its own Podman world "
            "in the bench's host namespace, runs alternating; each container prints its eth0 "
            "address, which must be in its network (bench/podman.py). `--network none` is "
            "Podman and runc alone. Ratio = netavark ÷ portway.",
            "",
            "| network | median (ms) | p90 (ms) | runs |",
            "|---|---:|---:|---:|",
            f"| portway (portway-netavark) | {pm['portway']['median_ms']} | "
            f"{pm['portway']['p90_ms']} | {pm['portway']['runs']} |",
            f"| Debian's netavark 1.4 + aardvark-dns | {pm['netavark']['median_ms']} | "
            f"{pm['netavark']['p90_ms']} | {pm['netavark']['runs']} |",
            f"| none (no networking) | {pm['none']['median_ms']} | {pm['none']['p90_ms']} | "
            f"{pm['none']['runs']} |",
            "",
            f"Ratio: {ratio(pm['netavark']['median_ms'], pm['portway']['median_ms'])}; "
            f"networking's own share: portway "
            f"{round(pm['portway']['median_ms'] - pm['none']['median_ms'], 1)} ms, netavark "
            f"{round(pm['netavark']['median_ms'] - pm['none']['median_ms'], 1)} ms.",
            "",
        ]
    rl = r.get("podman_rootless")
    if rl:
        lines += rootless_report(rl)
    return "\n".join(lines)


def rootless_report(rl: dict[str, Any]) -> list[str]:
    rows = [("portway cold", "portway (portway-netavark), the user's only container"),
            ("netavark cold", "Debian's netavark 1.4 + aardvark-dns, the only container"),
            ("portway warm", "portway, beside a running container"),
            ("netavark warm", "netavark, beside a running container"),
            ("none", "none (no networking)")]
    return [
        "## Rootless Podman 4.3: `podman run --rm` with portway and with netavark 1.4",
        "",
        "As above, for an unprivileged user per backend (slirp4netns, runc, the busybox "
        "rootfs; bench/podman.py). Cold: the user's only container, so Podman makes its "
        "rootless network namespace for it and removes it after (and portway starts its "
        "daemon there, and it leaves); warm: beside a running container, which keeps "
        "both. Ratio = netavark ÷ portway.",
        "",
        "| network | median (ms) | p90 (ms) | runs |",
        "|---|---:|---:|---:|",
        *(f"| {label} | {rl[key]['median_ms']} | {rl[key]['p90_ms']} | {rl[key]['runs']} |"
          for key, label in rows),
        "",
        f"Ratio: cold {ratio(rl['netavark cold']['median_ms'], rl['portway cold']['median_ms'])}"
        f", warm {ratio(rl['netavark warm']['median_ms'], rl['portway warm']['median_ms'])}.",
        "",
    ]


def restart_report(cli: dict[str, Any]) -> list[str]:
    """`run -d --restart always` beside the plain `run -d` (same run, in turn)."""
    if "run_restart" not in cli:
        return []
    run, rm = cli["run_restart"], cli["rm_restart"]
    return [
        "The same `portway run -d` with `--restart always`, next to the plain one (every "
        "other time first): set up "
        f"{run['median']} (p95 {run['p95']}), tear down {rm['median']} (p95 {rm['p95']}); "
        f"with ÷ without a restart policy: {ratio(run['median'], cli['run']['median'])} and "
        f"{ratio(rm['median'], cli['rm']['median'])} (goal for set up: at most 1.05: a "
        "policy is one more column of the container's row, and acts only when the "
        "command ends).",
        "",
    ]


def goal_row(what: str, mine: float, theirs: float, at_most: float | None = None,
             at_least: float | None = None, unit: str = "ms",
             per_cycle: float | None = None, cycle: str = "cycle") -> tuple[str, str, bool]:
    """A goal that holds a ratio: what it is, this run's figure, whether it is met."""
    value = mine / theirs if theirs else float("inf")
    figure = f"{mine:g} ÷ {theirs:g} {unit} = {value:.2f}×"
    if per_cycle is not None:  # then the goal holds the ratio within each cycle
        value = per_cycle
        figure += f"; within each {cycle}, median {value:.2f}×"
    met = (at_most is None or value <= at_most) and (at_least is None or value >= at_least)
    return what, figure, met


def spread(values: list[float], unit: str = "rounds") -> str:
    """The range of per-round (or per-cycle) ratios, and how many there were."""
    return f"{min(values):.2f}–{max(values):.2f} over {len(values)} {unit}"


def dns_goals(dns: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The DNS section's goals. AAAA beside A is held within each round (its AAAA and
    A runs are next to each other, as the throughput goals' cycles are): the medians of
    five runs each, taken apart, move with the machine by more than the 5% asked."""
    p, a = dns["portway"], dns.get("aardvark")
    rows = []
    if a:
        for label, key in (("one name", "local_qps"), ("three names", "mixed_qps")):
            rows.append(goal_row(
                f"DNS, local names: at least 1.5× aardvark-dns's queries/s ({label})",
                p[key], a[key], at_least=1.5, unit="q/s"))
    p99 = p["local_latency_us"][1]
    rows.append(("DNS, local name, one query at a time: p99 under 300 µs",
                 latency_goal_figure(p), p99 < 300))
    if "local_aaaa_qps" in p:
        for label, aaaa, a4 in (("one name", "local_aaaa_qps", "local_qps"),
                                ("three names", "mixed_aaaa_qps", "mixed_qps")):
            runs = (p.get(f"{aaaa}_runs"), p.get(f"{a4}_runs"))
            what, figure, met = goal_row(
                f"AAAA queries/s within 5% of A (at least 0.95×): {label}", p[aaaa], p[a4],
                at_least=0.95, unit="q/s",
                per_cycle=paired({"runs": {aaaa: runs[0], a4: runs[1]}}, aaaa, a4)
                if runs[0] and runs[1] else None, cycle="round")
            key = aaaa.removesuffix("_qps")
            if p.get(f"{key}_qps_ratios"):
                figure += f" ({spread(p[f'{key}_qps_ratios'])})"
            if p.get(f"{key}_cpu_ratios"):
                cpu = p[f"{key}_cpu_ratios"]
                figure += ("; the server's CPU time per query, AAAA ÷ A within each "
                           f"round, median {statistics.median(cpu):.2f}× ({spread(cpu)})")
            rows.append((what, figure, met))
    return rows


def latency_goal_figure(p: dict[str, Any]) -> str:
    """The one-query-at-a-time p99, with what tells the server's tail from the machine's:
    each run's p99, the control's (a bare echo loop, asked in the same minutes), and the
    server's own share (arrival at its socket to its answer sent) beside the control's."""
    local, echo = p.get("local_latency") or {}, p.get("echo_latency") or {}
    p99 = p["local_latency_us"][1]
    figure = f"{p99:g} µs"
    if local.get("p99_runs"):
        figure += f" (median of {len(local['p99_runs'])} runs' p99s: " + \
            ", ".join(f"{x:g}" for x in local["p99_runs"]) + ")"
    if echo.get("p99"):
        figure += f"; the control, a bare echo loop: {echo['p99']:g} µs"
        if p99 >= 300:
            figure += (" (it misses it too: the machine's tail)" if echo["p99"] >= 300
                       else " (it meets it)")
    mine, theirs = (local.get("server_times") or {}).get("share"), \
        (echo.get("server_times") or {}).get("share")
    if mine and theirs:
        figure += (f"; arrival at the socket to the answer sent, p99: the server "
                   f"{mine[1]:g} µs, the control {theirs[1]:g} µs")
    return figure


def goals_report(r: dict[str, Any]) -> list[str]:
    """Every goal a ratio in this file is held to, the figure of this run beside it."""
    rows: list[tuple[str, str, bool]] = []

    def goal(what: str, mine: float, theirs: float, at_most: float | None = None,
             at_least: float | None = None, unit: str = "ms",
             per_cycle: float | None = None, cycle: str = "cycle") -> None:
        rows.append(goal_row(what, mine, theirs, at_most, at_least, unit, per_cycle, cycle))

    cli, api, nv = r["portway_cli"], r["portway_api"], r.get("netavark")
    if nv:
        goal("CLI `run -d` at most 0.5× netavark setup", cli["run"]["median"],
             nv["setup"]["median"], at_most=0.5)
    goal("API set up at most 1.5× the kernel floor", api["run"]["median"],
         api["floor_setup"]["median"], at_most=1.5)
    g = api["growth"]
    goal(f"growth: the last 100 of {g['count']} containers at most 1.3× the first 100",
         g["last100"]["median"], g["first100"]["median"], at_most=1.3,
         per_cycle=g.get("per_round"), cycle="round")
    goal("dual-stack set up at most 1.15× IPv4-only: CLI `run -d`", cli["run_dual"]["median"],
         cli["run"]["median"], at_most=1.15)
    goal("dual-stack set up at most 1.15× IPv4-only: API", api["dual"]["run"]["median"],
         api["run"]["median"], at_most=1.15)
    if "run_restart" in cli:
        goal("`run -d --restart always` at most 1.05× `run -d`: CLI",
             cli["run_restart"]["median"], cli["run"]["median"], at_most=1.05)
    fw = r.get("firewall")
    if fw:
        low, high = min(fw["scales"], key=int), max(fw["scales"], key=int)
        goal(f"IPv6 DNAT per-connection cost flat from {low} to {high} ports "
             "(at most 1.05×)", cost_us(fw["scales"][high]["map6_conn_per_s"]),
             cost_us(fw["scales"][low]["map6_conn_per_s"]), at_most=1.05, unit="µs")
        t = fw["throughput"]
        for label, with_rules, without in (
                ("container to container", "container_to_container6",
                 "container_to_container6_no_rules"),
                ("outside to a published port (without: one bare DNAT rule)",
                 "outside_to_published6", "outside_to_published6_one_dnat")):
            goal(f"IPv6 throughput with portway's rules at least 0.95× without: {label}",
                 t[with_rules], t[without], at_least=0.95, unit="Gbit/s",
                 per_cycle=paired(t, with_rules, without) if "runs" in t else None)
            if "runs" in t:
                each = [x / y for x, y in zip(t["runs"][with_rules], t["runs"][without],
                                              strict=True) if y]
                what, figure, met = rows[-1]
                rows[-1] = (what, f"{figure} ({spread(each, 'cycles')})", met)
    dns = r.get("dns")
    if dns:
        rows += dns_goals(dns)
    au = r.get("audit")
    if au:
        rows.append((f"`audit` at most 5 s with {au['containers']} containers and "
                     f"{au['ports']} published ports", f"{au['seconds']:.2f} s",
                     au["seconds"] <= 5))
        tr = au.get("trace")
        if tr:
            rows.append((f"static `trace` at most 150 ms with {au['containers']} containers "
                         f"and {au['ports']} published ports",
                         f"{tr['seconds'] * 1000:.0f} ms (median of {len(tr['runs'])})",
                         tr["seconds"] <= 0.150))
        lv = au.get("live")
        if lv:
            rows.append((f"`trace --live` at most 1 s with {au['containers']} containers "
                         f"and {au['ports']} published ports",
                         f"{lv['seconds']:.2f} s (median of {len(lv['runs'])})",
                         lv["seconds"] <= 1))
    ov = r.get("overlay")
    if ov:
        goal("cross-host TCP throughput over an overlay network at least 0.9× a bare VXLAN "
             "path", ov["overlay_gbps"], ov["raw_gbps"], at_least=0.9, unit="Gbit/s",
             per_cycle=ov["paired"])
        goal("overlay `run -d` at most 2× a bridge network's: CLI", ov["setup_overlay_ms"],
             ov["setup_bridge_ms"], at_most=2)
        rows.append(("from `run -d` on one host until the container answers on another: "
                     "p95 at most 1 s", f"{ov['answered_p95_ms']:g} ms",
                     ov["answered_p95_ms"] <= 1000))
        goal(f"overlay `run -d` with {ov['endpoints']} endpoints of other hosts in the store "
             "at most 1.3× with none: CLI", ov["setup_overlay_crowded_ms"],
             ov["setup_overlay_ms"], at_most=1.3)
    missed = sum(1 for *_, met in rows if not met)
    lines = [
        "## Goals",
        "",
        f"Every goal of this file and this run's figure for it ({len(rows) - missed} of "
        f"{len(rows)} met); the sections below say how each was measured.",
        "",
        "| goal | this run | |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {figure} | {'met' if met else '**missed**'} |"
              for what, figure, met in rows]
    return [*lines, ""]


def audit_report(au: dict[str, Any]) -> list[str]:
    tr = au.get("trace")
    trace_lines = [] if not tr else [
        f"One static `portway trace outside {tr['destination']}` on the same host (an "
        "outside client to the last published port: recording the host and what the path "
        f"needs, then the reasoning), {len(tr['runs'])} times: median "
        f"{tr['seconds'] * 1000:.0f} ms, each "
        f"{', '.join(f'{x * 1000:.0f}' for x in tr['runs'])} ms; verdict {tr['verdict']}.",
        ""]
    lv = au.get("live")
    if lv:
        trace_lines += [
            f"The same with `--live` (the static trace, then the probe: its short-lived "
            "trace tables and probe namespace, the packet followed through every hook, the "
            f"tables removed), {len(lv['runs'])} times: median {lv['seconds']:.2f} s, each "
            f"{', '.join(f'{x:.2f}' for x in lv['runs'])} s; live verdict {lv['verdict']}, "
            f"{'agreeing' if lv['agrees'] else 'NOT agreeing'} with the static one.", ""]
    return [
        "## `portway audit`",
        "",
        f"One look at a host with {au['containers']} containers (one network) and "
        f"{au['ports']} published ports, each to a container port of its own, as portwayd "
        "answers `portway audit` (bench/audit.py): recording the host and every namespace "
        "behind its veths, then a trace from each source to each target and of each "
        f"answer. {au['targets']} targets, {au['reaches']} source-target pairs, "
        f"{au['traced']} traced (the rest share a path), {au['findings']} findings.",
        "",
        "| runs | median (s) | each (s) |",
        "|---:|---:|---|",
        f"| {len(au['runs'])} | {au['seconds']:.2f} | "
        f"{', '.join(f'{x:.2f}' for x in au['runs'])} |",
        "",
        *trace_lines,
    ]


def cost_us(rate: float) -> float:
    """Microseconds per new connection at `rate` connections per second."""
    return round(1e6 / rate, 1)


def cpu_per_gb(t: dict[str, Any], with_rules: str, without: str) -> str:
    """The machine's CPU seconds per GB of two paths (medians), and their ratio within
    each cycle, when the run recorded them."""
    cpu = t.get("cpu_s_per_gb") or {}
    mine, theirs = cpu.get(with_rules), cpu.get(without)
    if not mine or not theirs:
        return "–"
    each = [x / y for x, y in zip(mine, theirs, strict=True) if y]
    return (f"{statistics.median(mine):.3f} ÷ {statistics.median(theirs):.3f} s/GB, within "
            f"each cycle median {statistics.median(each):.2f}× ({spread(each, 'cycles')})")


def pinned(m: dict[str, Any]) -> str:
    """How the throughput runs placed iperf3 (runs before pinning have no iperf_cpu)."""
    if "iperf_cpu" not in m:
        return "iperf3's client and server where the scheduler put them."
    return (f"Both ends of every run on one CPU, the same in every run (CPU {m['iperf_cpu']}, "
            "iperf3 -A for the client and, for that test, the server): a veth hands a "
            "packet to the backlog of the CPU that sends it, so the whole path, both "
            "directions, runs there, and a run's figure is its cost per byte. Before, the "
            "scheduler placed the two ends: on one core in some runs and on two in others, "
            "and on two the sender's segments left from both cores' backlogs (the ACKs that "
            "let them go arrive on the receiver's core), arrived out of order and were "
            "retransmitted (up to 26,000 segments in a 2 s run); one path measured 11.5 "
            "and 17.3 Gbit/s seconds apart, and the cycles' ratios of the IPv6 goals ranged "
            "0.77–1.04 and 0.79–1.20 over 12 cycles on an idle machine.")


def cpu_method(m: dict[str, Any]) -> str:
    """What the CPU-per-byte figures count (the machine's busy time before pinning)."""
    if "iperf_cpu" not in m:
        return ("every core's busy time during a run, from /proc/stat, ÷ the GB received: "
                "the packets' path runs in softirq on either core, no one process's time; a "
                "figure only when nothing else runs")
    return ("the flow's own CPU time ÷ the GB received: the client's and the server's, as "
            "iperf3 counts them, which with this kernel's tick-based accounting includes "
            "the softirqs that ran in them (the packets' whole path), and the time of the "
            "pinned CPU's softirq thread; another task's time on that CPU is not in it, so "
            "other work on the machine moves it far less than throughput")


def firewall_report(fw: dict[str, Any]) -> list[str]:
    m = fw["method"]
    lines = [
        "## Published ports: per-packet cost and cost of adding one",
        "",
        "New TCP connections per second from the outside namespace through the last "
        "published port (a Python client: its own speed caps the flat figures), and the "
        "time to publish one more port, with N ports published: portway's map elements "
        "against the same N as one DNAT rule per port (an iptables-style engine, built in "
        "the same run; its rules added with the `nft` command as such engines do). IPv4 "
        "and IPv6 side by side: one dual-stack network, the same N ports in each family's "
        "maps, to the container's address of that family, from the outside namespace to "
        "the host's uplink address of that family. Connection rates: "
        f"{m['rate_rounds']} rounds, each through every scale (the maps filled from 1 to "
        f"the most ports, then emptied), a run of {m['rate_seconds']:g} s per family at "
        "each, the families in turn; the median of a scale's runs, after a warm-up.",
        "",
        "| ports | portway conn/s | portway IPv6 conn/s | one rule per port conn/s | "
        "one rule per port IPv6 conn/s | portway add (ms) | portway IPv6 add (ms) | "
        "rule per port add (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scale, row in fw["scales"].items():
        lines.append(f"| {scale} | {row['map_conn_per_s']} | {row['map6_conn_per_s']} | "
                     f"{row['linear_conn_per_s']} | {row['linear6_conn_per_s']} | "
                     f"{row['map_add_ms']} | {row['map6_add_ms']} | {row['linear_add_ms']} |")
    low, high = min(fw["scales"], key=int), max(fw["scales"], key=int)
    first, last = fw["scales"][low], fw["scales"][high]

    def runs(key: str) -> str:
        return "; ".join(f"{scale}: " + ", ".join(str(round(x)) for x in row[f"{key}_runs"])
                         for scale, row in fw["scales"].items())

    lines += [
        "",
        f"Per-connection cost, {low} port → {high} ports "
        "(µs, the client's own share included): portway IPv6 "
        f"{cost_us(first['map6_conn_per_s'])} → {cost_us(last['map6_conn_per_s'])} "
        f"({ratio(first['map6_conn_per_s'], last['map6_conn_per_s'])}), "
        f"portway IPv4 {cost_us(first['map_conn_per_s'])} → "
        f"{cost_us(last['map_conn_per_s'])} "
        f"({ratio(first['map_conn_per_s'], last['map_conn_per_s'])}); "
        f"one rule per port IPv6 {cost_us(first['linear6_conn_per_s'])} → "
        f"{cost_us(last['linear6_conn_per_s'])} "
        f"({ratio(first['linear6_conn_per_s'], last['linear6_conn_per_s'])}), the control "
        "that shows the measure sees a cost that grows. Goal: flat, at most 1.05×.",
        "",
        f"Runs, portway IPv6 conn/s by ports: {runs('map6_conn_per_s')}.",
        f"Runs, portway IPv4 conn/s by ports: {runs('map_conn_per_s')}.",
        "",
    ]
    t = fw["throughput"]

    def path(label: str, with_rules: str, routed: str | None, note: str = "") -> str:
        if routed is None:
            return f"| {label} | {t[with_rules]} | – | – | | |"
        return (f"| {label} | {t[with_rules]} | {t[routed + '_conntrack_only']}{note} | "
                f"{t[routed + '_no_rules']}{note} | "
                f"{ratio(t[with_rules], t[routed + '_no_rules'])} | "
                f"{paired(t, with_rules, routed + '_no_rules'):.2f}× |" if "runs" in t else
                "|")

    def per_cycle(with_rules: str, without: str) -> str:
        if "runs" not in t or without not in t["runs"]:
            return "–"
        each = [a / b for a, b in zip(t["runs"][with_rules], t["runs"][without],
                                      strict=True) if b]
        return f"{paired(t, with_rules, without):.2f}× ({spread(each, 'cycles')})"

    def alone(routed: str) -> str:
        return ratio(t[f"{routed}_conntrack_only"], t[f"{routed}_no_rules"])

    lines += [
        "## Throughput (iperf3, one TCP stream, Gbit/s)",
        "",
        "One dual-stack network. Without rules: portway's tables gone (inet, bridge and arp "
        "portway: NAT, filtering and the per-port source checks; bridge netfilter stays on, "
        "as every new namespace has it here), the outside reaching the container by a plain "
        "route. Conntrack and NAT only: the same, with one table in their place that turns "
        "conntrack on (`ct state established accept` in forward) and registers NAT's hooks "
        "(empty nat chains): the least any stateful NAT firewall costs. One bare DNAT rule: "
        "below. All four in turn, "
        f"{m['iperf_cycles']} times, {m['iperf_runs']} run of {m['iperf_seconds']} s per "
        "path each time, each started on an idle machine: the median of the "
        f"{m['iperf_cycles'] * m['iperf_runs']}. A cycle is without rules, with portway's, "
        "one DNAT rule, conntrack and NAT only, every other cycle backwards, so that the two "
        "runs of each IPv6 goal are next to each other (container to container: without, "
        "then with; to the published port: with, then one DNAT rule), neither always first. "
        "Within each cycle: the ratio of those two runs, the median over the cycles (the "
        "range of the cycles' ratios beside it); the goals hold this one, which the "
        "machine's drift between cycles does not move. "
        f"{pinned(m)}",
        "",
        "| path | with portway's rules | conntrack and NAT only | without rules | "
        "ratio, with ÷ without | within each cycle (median) |",
        "|---|---:|---:|---:|---:|---:|",
        path("container to container, one bridge", "container_to_container",
             "container_to_container"),
        path("container to container, one bridge, IPv6", "container_to_container6",
             "container_to_container6"),
        path("outside to a published port (DNAT)", "outside_to_published",
             "outside_to_container", " (routed)"),
        path("outside to a published port (DNAT), IPv6", "outside_to_published6",
             "outside_to_container6", " (routed)"),
        path("host to a port published on 127.0.0.1", "host_to_loopback_published", None),
        f"| a raw veth pair, for scale | {t['raw_veth_pair']} | | | | |",
        "",
        "Published ports with one bare DNAT rule per family in place of portway's tables "
        "(what any published port needs: the same path, the same NAT, nothing else): "
        f"IPv4 {t.get('outside_to_published_one_dnat', '–')}, IPv6 "
        f"{t.get('outside_to_published6_one_dnat', '–')} Gbit/s; with portway's rules ÷ "
        "that, within each cycle: IPv4 "
        f"{per_cycle('outside_to_published', 'outside_to_published_one_dnat')}, IPv6 "
        f"{per_cycle('outside_to_published6', 'outside_to_published6_one_dnat')} (the IPv6 "
        "goal holds this one).",
        "",
        f"CPU cost per byte, beside the same runs ({cpu_method(m)}), with "
        "portway's rules ÷ without, IPv6: container to container "
        f"{cpu_per_gb(t, 'container_to_container6', 'container_to_container6_no_rules')}; "
        "to the published port (÷ one DNAT rule) "
        f"{cpu_per_gb(t, 'outside_to_published6', 'outside_to_published6_one_dnat')}.",
        "",
        "Ratio goal for IPv6: at least 0.95. Conntrack and NAT alone ÷ without, IPv6: "
        f"container to container {alone('container_to_container6')}, outside to the "
        f"container {alone('outside_to_container6')} (what a stateful NAT firewall costs "
        "before any rule of portway's). (routed): to the container's own "
        "address, no DNAT. No path has a userland proxy. (A port published on [::1] is "
        "refused: IPv6 cannot route the answer back to the host's loopback; see "
        "docs/ipv6.md.)",
        "",
    ]
    return lines


def round_ratio(p: dict[str, Any], key: str, base: str) -> str:
    """The median of key's run ÷ base's run within each round, or n/a."""
    runs, base_runs = p.get(f"{key}_runs"), p.get(f"{base}_runs")
    if not runs or not base_runs:
        return "n/a"
    return f"{paired({'runs': {key: runs, base: base_runs}}, key, base):.2f}×"


def dns_report(dns: dict[str, Any]) -> list[str]:
    p, a = dns["portway"], dns.get("aardvark")
    lines = [
        "## DNS: portway's server beside aardvark-dns 1.4",
        "",
        f"dnsperf from a container's namespace to its gateway, {DNS_SECONDS:g} s, "
        f"4 clients; both servers up at once, {dns.get('rounds', 1)} runs each, alternating, "
        "each started on an idle machine, "
        "median q/s (every run's figure below the table); latency: one query at a time "
        "from a Python client (its own cost "
        "included, the same for both), median and p99 in µs, each the median of "
        f"{dns.get('latency_runs', 3)} runs "
        "of 3000 queries (1000 forwarded); portway's A and AAAA runs in turn with the "
        "control's below, in an order that rotates, so that neither type always comes "
        "first after the dnsperf runs. "
        "aardvark-dns is set up by "
        "netavark with Podman's input. Forwarded names go to the same stand-in upstream "
        "in the outside namespace for both (aardvark-dns reads it from /etc/resolv.conf, "
        "in a mount namespace of its own); it answers in batches, and is not the limit.",
        "",
        "| | portway q/s | aardvark-dns q/s | ratio | portway p50 / p99 µs | "
        "aardvark p50 / p99 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    if a:
        lines.append(
            f"| local name | {p['local_qps']} | {a['local_qps']} | "
            f"{ratio(p['local_qps'], a['local_qps'])} | "
            f"{p['local_latency_us'][0]} / {p['local_latency_us'][1]} | "
            f"{a['local_latency_us'][0]} / {a['local_latency_us'][1]} |")
        if "mixed_qps" in p:
            lines.append(
                f"| local names, mixed | {p['mixed_qps']} | {a['mixed_qps']} | "
                f"{ratio(p['mixed_qps'], a['mixed_qps'])} | | |")
    if a and "forwarded_qps" in a:
        lines.append(
            f"| forwarded name | {p['forwarded_qps']} | {a['forwarded_qps']} | "
            f"{ratio(p['forwarded_qps'], a['forwarded_qps'])} | "
            f"{p['forwarded_latency_us'][0]} / {p['forwarded_latency_us'][1]} | "
            f"{a['forwarded_latency_us'][0]} / {a['forwarded_latency_us'][1]} |")
    else:
        lines.append(
            f"| forwarded name | {p['forwarded_qps']} | – | | "
            f"{p['forwarded_latency_us'][0]} / {p['forwarded_latency_us'][1]} | – |")
    if "local_aaaa_qps" in p:
        lines += [
            f"| local name, AAAA | {p['local_aaaa_qps']} | – | | "
            f"{p['local_aaaa_latency_us'][0]} / {p['local_aaaa_latency_us'][1]} | |",
            f"| local names, mixed, AAAA | {p['mixed_aaaa_qps']} | – | | | |",
            f"| local name, AAAA, asked over IPv6 | {p['local_aaaa_over6_qps']} | – | | | |",
        ]
    lines += ["", "Ratio = portway ÷ aardvark-dns (goal: at least 1.5; p99 under 300 µs). "
              "Local name: one name over and over; mixed: three names of three lengths in "
              "turn.", ""]
    if "local_aaaa_qps" in p:
        lines += [
            "portway's network is dual-stack: each of its A runs sits beside the same names "
            "asked for AAAA (to its IPv4 gateway), and for AAAA over IPv6 (to its IPv6 "
            "gateway), the order reversed every other round. AAAA ÷ A: one name "
            f"{ratio(p['local_aaaa_qps'], p['local_qps'])}, three names "
            f"{ratio(p['mixed_aaaa_qps'], p['mixed_qps'])}; within each round (the goal: at "
            f"least 0.95), median {round_ratio(p, 'local_aaaa_qps', 'local_qps')} and "
            f"{round_ratio(p, 'mixed_aaaa_qps', 'mixed_qps')}; AAAA "
            "asked over IPv6 ÷ over IPv4: "
            f"{ratio(p['local_aaaa_over6_qps'], p['local_aaaa_qps'])}.", ""]
    if "local_cpu_us" in p:
        lines += cpu_lines(p, a)
    if "echo_latency" in p:
        lines += tail_lines(p, a)
    if a and "loaded_avg_us" in p:
        lines += [f"At a fixed {dns['loaded_rate']} queries/s (dnsperf's average): portway "
                  f"{p['loaded_avg_us']} µs, aardvark-dns {a['loaded_avg_us']} µs.", ""]
    if a and "local_qps_runs" in p:
        def runs(side: dict[str, Any], key: str) -> str:
            return ", ".join(str(round(x)) for x in side[key])

        lines += [f"Runs, local name: portway {runs(p, 'local_qps_runs')}; aardvark-dns "
                  f"{runs(a, 'local_qps_runs')}."]
        if "mixed_qps_runs" in p:
            lines += [f"Runs, mixed: portway {runs(p, 'mixed_qps_runs')}; aardvark-dns "
                      f"{runs(a, 'mixed_qps_runs')}."]
        if "local_aaaa_qps_runs" in p:
            lines += [f"Runs, portway AAAA: one name {runs(p, 'local_aaaa_qps_runs')}; "
                      f"mixed {runs(p, 'mixed_aaaa_qps_runs')}; one name over IPv6 "
                      f"{runs(p, 'local_aaaa_over6_qps_runs')}."]
        lines += [""]
    return lines


def cpu_lines(p: dict[str, Any], a: dict[str, Any] | None) -> list[str]:
    """The servers' CPU time per answered query, beside their q/s."""
    def ratios(key: str) -> str:
        values = p.get(f"{key}_cpu_ratios") or []
        if not values:
            return "n/a"
        return f"median {statistics.median(values):.2f}× ({spread(values)})"

    def qps_ratios(key: str) -> str:
        values = p.get(f"{key}_qps_ratios") or []
        if not values:
            return "n/a"
        return f"median {statistics.median(values):.2f}× ({spread(values)})"

    theirs = ""
    if a and "local_cpu_us" in a:
        theirs = (f"; aardvark-dns (all its threads) {a['local_cpu_us']} µs one name, "
                  f"{a['mixed_cpu_us']} µs three names")
    return [
        "The servers' CPU time per answered query, from the same dnsperf runs (each "
        "server's threads' time on a CPU during the run, from /proc/PID/task/*/schedstat, "
        "÷ the queries dnsperf saw answered; the median over the runs, in µs): it depends "
        "far less than q/s on the share of the two cores dnsperf takes. portway: A "
        f"{p['local_cpu_us']}, AAAA {p['local_aaaa_cpu_us']}, AAAA over IPv6 "
        f"{p['local_aaaa_over6_cpu_us']} (one name); A {p['mixed_cpu_us']}, AAAA "
        f"{p['mixed_aaaa_cpu_us']} (three names){theirs}.",
        "",
        *([] if not p.get("answers_per_packet_runs") else [
            "How many answers the server sent a packet (a GSO send: its batching, which "
            "follows how fast dnsperf asks, and moves the CPU per query with it), median "
            "over the runs: " + ", ".join(
                f"{figure} {statistics.median(v):.1f}"
                for figure, v in p["answers_per_packet_runs"].items()) + ".", ""]),
        "AAAA ÷ A within each round (the two runs next to each other, in the other order "
        f"every other round): q/s one name {qps_ratios('local_aaaa')}, three names "
        f"{qps_ratios('mixed_aaaa')}; CPU per query one name {ratios('local_aaaa')}, "
        f"three names {ratios('mixed_aaaa')}.",
        "",
    ]


def tail_lines(p: dict[str, Any], a: dict[str, Any] | None) -> list[str]:
    """Where the tail of one query at a time is: the servers beside a bare echo loop."""
    def each(values: list[float]) -> str:
        return ", ".join(f"{x:g}" for x in values)

    def row(label: str, r: dict[str, Any] | None) -> str:
        if not r:
            return f"| {label} | – | – | – | – | – | – | – | – |"
        return (f"| {label} | {r['p50']} | {r['p99']} | {each(r.get('p50_runs', []))} | "
                f"{each(r['p99_runs'])} | "
                f"{r.get('arrived_p50', '–')} / {r.get('arrived_p99', '–')} | "
                f"{r.get('server_cpu_us', '–')} | {r.get('server_wait_us', '–')} | "
                f"{r['client_wait_us']} |")

    runs = len((p.get("local_latency") or {}).get("p99_runs", [])) or 3
    return [
        f"Where the tail of one query at a time is ({runs} runs of 3000 queries each; µs; "
        "p50 and p99: the median of the runs'): the "
        "same Python client against portway's server, aardvark-dns and, as the control, a "
        "bare Python loop on the same gateway (blocking recvfrom, the query sent back as "
        "its answer: no DNS work at all); portway's A, its AAAA and the control's runs in "
        "turn, in an order that rotates from run to run, so that the three come from the "
        "same moments of the machine (aardvark-dns's after them). A run's p99 is its 30 "
        "slowest queries: from run to run it moves with the machine (whether the client "
        "and the server woke on one vCPU or on two, any burst of other work) by more than "
        "the servers differ, which the control's runs show" + idle_note(p) + ". Arrived: the same "
        "percentiles up to the answer's "
        "arrival at the client's socket (its kernel timestamp, SO_TIMESTAMPNS), which "
        "leaves out the client's own wake-up and Python. Per query: the server's CPU time, "
        "and the time "
        "the server's and the client's threads spent runnable but waiting for a CPU "
        "(their schedstat). A tail the control shares is the machine's wake-ups and the "
        "client's, not the server's work.",
        "",
        "| server | p50 | p99 | p50 of each run | p99 of each run | arrived p50 / p99 | "
        "server CPU / query | server waiting / query | client waiting / query |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
        row("portway, A", p.get("local_latency")),
        row("portway, AAAA", p.get("local_aaaa_latency")),
        row("aardvark-dns, A", (a or {}).get("local_latency")),
        row("bare echo loop (control)", p.get("echo_latency")),
        "",
        *server_times_lines(p),
    ]


def idle_note(p: dict[str, Any]) -> str:
    """How this machine's idle CPUs wait (a wake-up on a halted vCPU takes the hypervisor)."""
    idle = p.get("cpu_idle") or {}
    if not idle.get("driver"):
        return ""
    note = f" (idle CPUs here: cpuidle driver {idle['driver']}"
    if idle.get("halt_poll_ns") is not None:
        note += f", guest_halt_poll_ns {idle['halt_poll_ns']}"
        if idle["halt_poll_ns"] == 0:
            note += (": an idle vCPU halts at once, and a task woken on it waits for the "
                     "hypervisor to run it again")
    return note + ")"


def server_times_lines(p: dict[str, Any]) -> list[str]:
    """The server's share of the same round trips, from its own stamps of each query,
    beside the control's stamps of the same kind."""
    rows = []
    for label, key in (("portway, A", "local_latency"), ("portway, AAAA", "local_aaaa_latency"),
                       ("bare echo loop (control)", "echo_latency")):
        times = (p.get(key) or {}).get("server_times")
        if times:
            control = key == "echo_latency"
            rows.append(f"| {label} | " + " | ".join(
                "–" if control and k == "read" else f"{times[k][0]:g} / {times[k][1]:g}"
                for k in ("turn", "read", "work", "share", "cpu") if k in times)
                + " | " + ", ".join(f"{x:g}" for x in p[key].get("share_p99_runs", []))
                + " |")
    if not rows:
        return []
    runs = len((p.get("local_latency") or {}).get("p99_runs", [])) or 3
    return [
        "The server's share of those round trips, from its own times of each query (the "
        "`timing` command of its control socket, on during these runs only: the kernel's "
        "stamp of the query's arrival at the server's socket, SO_TIMESTAMPNS, and the "
        "server's clock as it takes its turn, has read the query, and has sent the "
        "answer; the send's system call includes the answer's way to the client's "
        f"socket). p50 / p99 in µs, each the median of the {runs} runs. Turn: arrival to "
        "the server's turn to read (its wake-up, and any query before it); read: the "
        "read's system call; work: the answer, and its send; share: arrival to sent, "
        "the server's part, and any time it was not running before it read its clock "
        "after the send (a client woken by the answer on the server's CPU may run "
        "first: work and send, and share, include that). CPU: the server's "
        "own CPU time from its turn to the send (its thread's clock), which nothing "
        "else's running moves. The control stamps its queries the same way; its turn "
        "ends as its blocking read returns with the query (its read is inside its turn), "
        "and its work is the send alone: the server's share less the control's is what "
        "the server's own work adds to a round trip.",
        "",
        "| server | arrival to turn | read | work and send | share | CPU, turn to send | "
        "share p99 of each run |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        *collection_lines(p, runs),
    ]


def collection_lines(p: dict[str, Any], runs: int) -> list[str]:
    """How often the server's garbage collector ran during its timed runs."""
    found = [(label, (p.get(key) or {}).get("collections"))
             for label, key in (("A", "local_latency"), ("AAAA", "local_aaaa_latency"))]
    if not all(c for _, c in found):
        return []
    return ["The server's garbage collector (a run stops the loop mid-query; a full one "
            "goes over every object the server holds) ran, over the "
            f"{runs} timed runs of 3000 queries: " + "; ".join(
                f"{label} {c[0]} young, {c[1]} middle and {c[2]} full collections"
                for label, c in found) + ".", ""]


def only_api() -> None:
    """PORTWAY_BENCH_ONLY=api: the Python API against the kernel floor, IPv4-only and dual
    stack, and the growth run (PORTWAY_BENCH_RUNS, _GROWTH, _GROWTH_ROUNDS); its goals
    printed and kept in bench/results/api.json, BENCHMARKS.md left as it is."""
    print(f"bench: portway API, kernel floor, growth to {GROWTH} alone ...", flush=True)
    probe = Probe()
    api = bench_api(probe)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "api.json").write_text(json.dumps({"portway_api": api, "idle": dict(idle.COUNTS),
                                              "failures": probe.failures}, indent=2))
    g = api["growth"]
    for what, mine, theirs, at_most, per_round in (
            ("API set up at most 1.5× the kernel floor", api["run"]["median"],
             api["floor_setup"]["median"], 1.5, None),
            ("dual-stack set up at most 1.15× IPv4-only: API", api["dual"]["run"]["median"],
             api["run"]["median"], 1.15, None),
            (f"growth: the last 100 of {g['count']} containers at most 1.3× the first 100",
             g["last100"]["median"], g["first100"]["median"], 1.3, g.get("per_round"))):
        row, figure, met = goal_row(what, mine, theirs, at_most=at_most,
                                    per_cycle=per_round, cycle="round")
        print(f"| {row} | {figure} | {'met' if met else '**missed**'} |")
    print(f"kernel floor, dual stack: {api['dual']['floor_setup']['median']:g} ms; tear down "
          f"{api['rm']['median']:g} ms (floor {api['floor_teardown']['median']:g} ms)")
    if probe.failures:
        raise SystemExit("bench: some setups were not reachable:\n  " +
                         "\n  ".join(probe.failures[:10]))


def only(section: str, host: str, outside: str) -> None:
    """One section of the bench (PORTWAY_BENCH_ONLY), its goals and table printed."""
    if section == "throughput":
        print("bench: throughput (iperf3) alone ...", flush=True)
        fw = run_with_engine(host, outside, "firewall", "bench_throughput_alone")
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(
            {"firewall": fw, "idle": dict(idle.COUNTS)}, indent=2))
        t = fw["throughput"]
        for label, with_rules, without in (
                ("container to container", "container_to_container6",
                 "container_to_container6_no_rules"),
                ("outside to a published port (one bare DNAT rule)",
                 "outside_to_published6", "outside_to_published6_one_dnat")):
            each = [x / y for x, y in zip(t["runs"][with_rules], t["runs"][without],
                                          strict=True) if y]
            what, figure, met = goal_row(
                f"IPv6 throughput with portway's rules at least 0.95× without: {label}",
                t[with_rules], t[without], at_least=0.95, unit="Gbit/s",
                per_cycle=paired(t, with_rules, without))
            print(f"| {what} | {figure} ({spread(each, 'cycles')}) | "
                  f"{'met' if met else '**missed**'} |")
            print(f"  CPU per byte, with ÷ without: {cpu_per_gb(t, with_rules, without)}")
        print(json.dumps(t["runs"]))
        return
    if section != "dns":
        raise SystemExit(f"bench: PORTWAY_BENCH_ONLY={section}: only 'dns' or "
                         "'throughput' runs alone")
    print("bench: DNS against aardvark-dns ...", flush=True)
    dns = run_with_engine(host, outside, "dns", "bench_dns")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "dns.json").write_text(json.dumps({"dns": dns, "idle": dict(idle.COUNTS)},
                                             indent=2))
    rows = dns_goals(dns)
    print("\n".join([*(f"| {what} | {figure} | {'met' if met else '**missed**'} |"
                       for what, figure, met in rows), "", *dns_report(dns)]))


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root")
    # Bytecode as an installed package has it: with PYTHONDONTWRITEBYTECODE set, or a
    # source newer than its cache, every CLI call would compile portway's modules again.
    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    reap_orphans()  # of a killed run: it would weigh on every figure
    tag = secrets.token_hex(3)
    host, outside = f"pwbench-{tag}", f"pwbench-out-{tag}"
    make_world(host, outside)
    try:
        # Enter the host namespace before any thread exists: everything below runs there.
        sandbox.enter_netns(f"/run/netns/{host}")
        if ONLY == "api":
            only_api()
            return
        if ONLY:
            only(ONLY, host, outside)
            return
        probe = Probe()
        results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"), "load": [os.getloadavg()[0]],
            "machine": f"{os.cpu_count()} cores, kernel {platform.release()}, "
                       f"Python {platform.python_version()}",
        }
        print("bench: portway CLI, netavark and CNI, in turn ...", flush=True)
        results.update(bench_setups(host, probe))
        print(f"bench: portway API, kernel floor, growth to {GROWTH} ...", flush=True)
        results["portway_api"] = bench_api(probe)
        if not FIREWALL:
            results["firewall"] = None
        else:
            print("bench: firewall (ports at 1/1000/10000, throughput) ...", flush=True)
            results["firewall"] = run_with_engine(host, outside, "firewall", "bench_firewall")
        results["dns"] = None
        if DNS:
            print("bench: DNS against aardvark-dns ...", flush=True)
            results["dns"] = run_with_engine(host, outside, "dns", "bench_dns")
        results["audit"] = None
        if AUDIT:
            print("bench: portway audit with many containers and published ports ...",
                  flush=True)
            results["audit"] = run_with_engine(host, outside, "audit", "bench_audit")
        results["overlay"] = None
        if OVERLAY and shutil.which("etcd"):
            print("bench: overlay networks across hosts (etcd) ...", flush=True)
            from overlay import bench_overlay

            results["overlay"] = bench_overlay(tag)
        results["podman"] = None
        if PODMAN and shutil.which("podman"):
            print("bench: podman run with portway and with netavark ...", flush=True)
            from podman import bench_podman

            results["podman"] = bench_podman(host)
            for failure in (results["podman"] or {}).get("failures", []):
                probe.failures.append(f"podman {failure}")
        results["podman_rootless"] = None
        if PODMAN and shutil.which("podman") and shutil.which("slirp4netns"):
            print("bench: rootless podman run with portway and with netavark ...", flush=True)
            from podman import bench_podman_rootless

            results["podman_rootless"] = bench_podman_rootless(host)
            for failure in (results["podman_rootless"] or {}).get("failures", []):
                probe.failures.append(f"podman {failure}")
        results["load"].append(os.getloadavg()[0])
        results["idle"] = dict(idle.COUNTS)
        results["probe_failures"] = len(probe.failures)
        results["failures"] = probe.failures
    finally:
        remove_world(host, outside)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    report = write_report(results)
    (ROOT / "BENCHMARKS.md").write_text(report)
    print(report)
    if probe.failures:
        raise SystemExit("bench: some setups were not reachable:\n  " +
                         "\n  ".join(probe.failures[:10]))


if __name__ == "__main__":
    main()
