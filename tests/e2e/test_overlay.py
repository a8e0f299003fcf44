"""Overlay networks across hosts, state in etcd, end to end.

Two hosts: the sandbox's host namespace (A) and SANDBOX-b (B), each with its own
portwayd and state dir, joined by an underlay: a bridge in SANDBOX-underlay with a veth
to each host. A real etcd (Debian's etcd-server) runs in the underlay namespace, its
data in the test's temp dir; the test starts and stops it by its pid. Real traffic
between containers on the two hosts; the kernel's own tables (`ip -d -j link`,
`bridge -j fdb`, `ip -j neigh`) and real clients as oracles.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import PORTWAY, Sandbox, ip_json, processes_in, processes_logging_under, sh
from portway.testbed import (
    ETCD_ADDR,
    HTTP_GET,
    add_netns,
    del_netns,
    etcd_member_address,
    make_underlay,
    start_etcd,
    start_etcd_cluster,
    stop_etcd,
    underlay_address,
)

A_ADDR, B_ADDR = underlay_address(0), underlay_address(1)
STORE = f"etcd://{ETCD_ADDR}:2379"
TTL = "3"

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="etcd-server is not installed (scripts/setup.sh)")

CONNECT = ("import socket, sys, time\n"
           "for _ in range(100):\n"
           "    try:\n"
           "        s = socket.create_connection((sys.argv[1], 80), 0.3)\n"
           "        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(12).decode()); break\n"
           "    except OSError: time.sleep(0.05)\n"
           "else: sys.exit(1)\n")


@dataclass
class Cluster:
    a: Sandbox
    b_host: str
    b_state: Path
    underlay: str
    etcd: list[subprocess.Popen[bytes]]
    store: str = STORE
    b_addr: str = B_ADDR  # B's --advertise-address

    def pw_a(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.a.pw(*args, check=check)

    def pw_b(self, *args: str, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ, PORTWAY_CLUSTER_STORE=self.store,
                        PORTWAY_ADVERTISE_ADDRESS=self.b_addr, PORTWAY_CLUSTER_TTL=TTL,
                        **(env or {}))
        cp = subprocess.run([PORTWAY, "--host-netns", self.b_host, "--state-dir",
                             str(self.b_state), *args], capture_output=True, text=True,
                            timeout=60, env=full_env)
        if check and cp.returncode != 0:
            raise AssertionError(f"portway (B) {' '.join(args)} failed ({cp.returncode}):\n"
                                 f"{cp.stdout}{cp.stderr}")
        return cp


@contextmanager
def two_hosts(sb: Sandbox, tmp_path: Path, members: int,
              advertise: tuple[str, str] = (A_ADDR, B_ADDR)) -> Iterator[Cluster]:
    """Hosts A (the sandbox's) and B on an underlay, and etcd (members of it) there;
    everything of theirs removed after, etcd stopped by its pids. advertise: A's and
    B's VTEPs (IPv6 ones are added to their underlay links, etcd stays on IPv4)."""
    underlay, b_host = f"{sb.host}-underlay", f"{sb.host}-b"
    b_state = tmp_path / "state-b"
    add_netns(b_host, b_state)
    etcd: list[subprocess.Popen[bytes]] = []
    try:
        make_underlay(underlay, [sb.host, b_host])
        for host, address in zip((sb.host, b_host), advertise, strict=True):
            if ":" in address:
                sh("ip", "-n", host, "addr", "add", f"{address}/64", "dev", "ul0", "nodad")
        if members == 1:
            etcd.append(start_etcd(underlay, tmp_path / "etcd"))
            store = STORE
        else:
            etcd += start_etcd_cluster(underlay, tmp_path / "etcd", members)
            store = "etcd://" + ",".join(f"{etcd_member_address(i)}:2379"
                                         for i in range(members))
        sb.env.update(PORTWAY_CLUSTER_STORE=store, PORTWAY_ADVERTISE_ADDRESS=advertise[0],
                      PORTWAY_CLUSTER_TTL=TTL)
        c = Cluster(sb, b_host, b_state, underlay, etcd, store, advertise[1])
        c.pw_a("daemon", "start")
        c.pw_b("daemon", "start")
        yield c
        # B's containers first (the network cannot go while a host has some), then A's
        # containers and the network (from A; B drops it as it sees it go).
        ids = c.pw_b("ps", "-a", "-q", check=False).stdout.split()
        if ids:
            c.pw_b("rm", "-f", *ids, check=False)
        ids = sb.pw("ps", "-a", "-q", check=False).stdout.split()
        if ids:
            sb.pw("rm", "-f", *ids, check=False)
        nets = [n["Name"] for n in json.loads(sb.pw("network", "ls", "--json").stdout)
                if n["Driver"] == "overlay"]
        if nets:
            sb.pw("network", "rm", *nets, check=False)
        wait_for(lambda: not _overlay_names(c.pw_b), "B drops the removed network")
    finally:
        leaks: list[str] = []
        if (b_state / "portway.db").exists():
            subprocess.run([PORTWAY, "--host-netns", b_host, "--state-dir", str(b_state),
                            "daemon", "stop"], capture_output=True, timeout=30)
        stray = processes_in(b_host) if os.path.exists(f"/run/netns/{b_host}") else []
        stray += [pid for pid in processes_logging_under(b_state) if pid not in stray]
        if stray:
            leaks.append(f"processes left on host B: {stray}")
            for pid in stray:
                os.kill(pid, signal.SIGKILL)
        for proc in etcd:
            stop_etcd(proc)
        del_netns(b_host)
        del_netns(underlay)
        assert not leaks, leaks


@pytest.fixture
def cluster(sandbox: Sandbox, tmp_path: Path) -> Iterator[Cluster]:
    with two_hosts(sandbox, tmp_path, 1) as c:
        yield c


@pytest.fixture
def cluster3(sandbox: Sandbox, tmp_path: Path) -> Iterator[Cluster]:
    with two_hosts(sandbox, tmp_path, 3) as c:
        yield c


def wait_for(cond: Callable[[], object], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        time.sleep(0.1)


def _overlay_names(pw: Callable[..., subprocess.CompletedProcess[str]]) -> list[str]:
    return [n["Name"] for n in json.loads(pw("network", "ls", "--json").stdout)
            if n["Driver"] == "overlay"]


def _address(pw: Callable[..., subprocess.CompletedProcess[str]], name: str,
             net: str = "ov") -> str:
    data = json.loads(pw("inspect", name).stdout)[0]
    return str(data["NetworkSettings"]["Networks"][net]["IPAddress"])


def _fdb(netns: str, dev: str) -> set[tuple[str, str]]:
    out = sh("bridge", "-n", netns, "-j", "fdb", "show", "dev", dev).stdout
    return {(e["mac"], e["dst"]) for e in json.loads(out or "[]") if e.get("dst")}


def _neigh(netns: str, dev: str) -> set[tuple[str, str]]:
    return {(str(n["dst"]), str(n["lladdr"])) for n in ip_json(netns, "neigh", "show", "dev", dev)
            if "PERMANENT" in n.get("state", [])}  # type: ignore[operator]


def test_overlay_across_two_hosts(cluster: Cluster) -> None:
    c = cluster
    status = c.pw_a("daemon", "status").stdout
    assert f"cluster store {c.store}: this host {A_ADDR} is joined" in status, status
    status_b = c.pw_b("daemon", "status").stdout
    assert f"this host {B_ADDR} is joined" in status_b, status_b
    wait_for(lambda: A_ADDR in c.pw_b("daemon", "status").stdout, "B sees host A")
    assert "etcd 3.4" in status_b and "leader" in status_b, status_b

    # Made on A, there for B.
    net_id = c.pw_a("network", "create", "--driver", "overlay", "--subnet",
                    "10.200.0.0/24", "ov").stdout.strip()
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    inspect_b = json.loads(c.pw_b("network", "inspect", "ov").stdout)[0]
    assert inspect_b["Id"] == net_id and inspect_b["Driver"] == "overlay"
    assert inspect_b["Scope"] == "global" and inspect_b["MTU"] == 1450
    vni = int(inspect_b["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
    # The same name again, from the other host: one clear line, nothing made.
    again = c.pw_b("network", "create", "--driver", "overlay", "--subnet", "10.201.0.0/24",
                   "ov", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr

    # The VXLAN device on each host: the VNI from the store, no learning, ARP answered
    # locally, dstport 4789, MTU underlay - 50, a port of the network's bridge.
    dev = f"pwvx-{net_id[:10]}"
    for host, local in ((c.a.host, A_ADDR), (c.b_host, B_ADDR)):
        link = ip_json(host, "-d", "link", "show", dev)[0]
        info = link["linkinfo"]["info_data"]  # type: ignore[index]
        assert info["id"] == vni and info["port"] == 4789 and info["local"] == local
        assert info["learning"] is False and info["proxy"] is True
        assert link["mtu"] == 1450 and link["master"] == inspect_b["Bridge"]

    c.pw_a("run", "-d", "--name", "web-a", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    c.pw_b("run", "-d", "--name", "web-b", "--network", "ov", "--network-alias", "api",
           "--", "python3", "-m", "http.server", "80")
    ip_a, ip_b = _address(c.pw_a, "web-a"), _address(c.pw_b, "web-b")
    assert ip_a != ip_b  # one address is never handed out twice, whichever host asks

    # FDB and neighbour entries from the store, never learned.
    mac_b = json.loads(c.pw_b("inspect", "web-b").stdout)[0]["NetworkSettings"][
        "Networks"]["ov"]["MacAddress"]
    wait_for(lambda: (mac_b, B_ADDR) in _fdb(c.a.host, dev), "A's FDB entry for web-b")
    assert (ip_b, mac_b) in _neigh(c.a.host, dev)

    # Real traffic both ways, by address and by name.
    out = c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, ip_b).stdout
    assert out.startswith("HTTP/1.0 200"), out
    wait_for(lambda: ip_a in {n[0] for n in _neigh(c.b_host, dev)}, "B's neighbour for web-a")
    out = c.pw_b("exec", "web-b", "--", "python3", "-c", CONNECT, "web-a").stdout
    assert out.startswith("HTTP/1.0 200"), out
    out = c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, "web-b").stdout
    assert out.startswith("HTTP/1.0 200"), out
    # Neither the VXLAN between the hosts nor the containers' flow inside it leaves a
    # conntrack entry on either host; without this host's VTEP's elements (the control:
    # in vteps, and its family in vtep_families, without which VXLAN to an address not
    # in vteps is dropped), the VXLAN does, and gc puts the elements back.
    def vxlan_flows(host: str) -> str:
        return sh("ip", "netns", "exec", host, "conntrack", "-L", "-p", "udp",
                  "--dport", "4789").stdout

    for host in (c.a.host, c.b_host):
        assert vxlan_flows(host) == "", vxlan_flows(host)
        inner = sh("ip", "netns", "exec", host, "conntrack", "-L", "-p", "tcp").stdout
        assert ip_b not in inner, inner
    sh("ip", "netns", "exec", c.a.host, "nft", "delete", "element", "inet", "portway",
       "vteps", "{", A_ADDR, "}")
    sh("ip", "netns", "exec", c.a.host, "nft", "delete", "element", "inet", "portway",
       "vtep_families", "{", "ipv4", "}")
    c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, ip_b)
    assert B_ADDR in vxlan_flows(c.a.host)
    report = c.pw_a("gc").stdout
    assert f"restore element {A_ADDR} of inet portway vteps" in report, report
    assert "restore element ipv4 of inet portway vtep_families" in report, report
    sh("ip", "netns", "exec", c.a.host, "conntrack", "-D", "-p", "udp", "--dport", "4789")
    c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, ip_b)
    assert vxlan_flows(c.a.host) == ""

    # web-b's alias on the network, from the other host too (checked with dig).
    answer = c.pw_a("exec", "web-a", "--", "dig", "+short", "api").stdout.split()
    assert answer == [ip_b], answer

    # trace follows the packet into the VXLAN hop: the neighbour entry answers ARP here,
    # the FDB entry names B's VTEP, the underlay route carries it.
    traced = json.loads(c.pw_a("trace", "--json", "web-a", "web-b:80").stdout)
    # (B's host namespace is on this machine: its half is traced too.)
    assert traced["verdict"] == "delivered" and traced["local_verdict"] == "leaves-host"
    assert f"tunnelled to host {B_ADDR} (VNI {vni}) for container web-b" in \
        traced["local_summary"], traced
    details = [h["detail"] for h in traced["hops"]]
    assert any(f"FDB: {mac_b} -> VTEP {B_ADDR}" in d for d in details), details
    assert any("underlay: route lookup" in d and "dev ul0" in d for d in details), details

    # Each host's inspect shows every host's containers, and where each is.
    seen = json.loads(c.pw_b("network", "inspect", "ov").stdout)[0]["Containers"]
    hosts = {v["Name"]: v["Host"] for v in seen.values()}
    assert hosts == {"web-a": A_ADDR, "web-b": B_ADDR}

    # web-a's address, asked for on B: another host holds it.
    taken = c.pw_b("run", "-d", "--name", "dup", "--network", "ov", "--ip", ip_a, "--",
                   "sleep", "30", check=False)
    assert taken.returncode != 0 and "already in use" in taken.stderr, taken.stderr
    assert "Traceback" not in taken.stderr

    # The network cannot go while the other host has a container on it.
    c.pw_a("rm", "-f", "web-a")
    busy = c.pw_a("network", "rm", "ov", check=False)
    assert busy.returncode != 0 and f"web-b (on {B_ADDR})" in busy.stderr, busy.stderr
    assert _overlay_names(c.pw_a) == ["ov"]

    # web-b goes: its entries go from A.
    c.pw_b("rm", "-f", "web-b")
    wait_for(lambda: (mac_b, B_ADDR) not in _fdb(c.a.host, dev), "A forgets web-b")
    assert ip_b not in {n[0] for n in _neigh(c.a.host, dev)}


def test_restart_reprograms_nothing_and_a_dead_host_is_forgotten(cluster: Cluster) -> None:
    c = cluster
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.202.0.0/24", "ov")
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    net_id = json.loads(c.pw_a("network", "inspect", "ov").stdout)[0]["Id"]
    dev = f"pwvx-{net_id[:10]}"
    c.pw_a("run", "-d", "--name", "a1", "--network", "ov", "--", "sleep", "3600")
    c.pw_b("run", "-d", "--name", "b1", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    ip_b = _address(c.pw_b, "b1")
    wait_for(lambda: ip_b in {n[0] for n in _neigh(c.a.host, dev)}, "A learns b1 from etcd")
    fdb_before, neigh_before = _fdb(c.a.host, dev), _neigh(c.a.host, dev)

    # A's daemon restarts: it re-reads the store and changes no entry of the kernel.
    monitor = subprocess.Popen(["ip", "-n", c.a.host, "monitor", "neigh"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        c.pw_a("daemon", "stop")
        c.pw_a("daemon", "start")
        wait_for(lambda: "is joined" in c.pw_a("daemon", "status").stdout, "A joins again")
        time.sleep(1.0)  # its watch has listed and converged
    finally:
        monitor.send_signal(signal.SIGTERM)
        events, _ = monitor.communicate(timeout=10)
    # Neither an FDB nor a neighbour entry of the VXLAN device was touched (what the
    # bridge itself learns on its port, "master", is the bridge's, not portway's).
    touched = [line for line in events.splitlines() if dev in line and "master" not in line]
    assert touched == [], events
    assert _fdb(c.a.host, dev) == fdb_before and _neigh(c.a.host, dev) == neigh_before
    out = c.pw_a("exec", "a1", "--", "python3", "-c", CONNECT, ip_b).stdout
    assert out.startswith("HTTP/1.0 200"), out

    # B dies (its daemon killed, nothing keeps its lease alive): after the lease's TTL,
    # its endpoint and entries are gone from A, and its address is free again.
    pid = int(c.pw_b("daemon", "status").stdout.split("pid ")[1].split(",")[0])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _fdb(c.a.host, dev) and not _neigh(c.a.host, dev),
             "A forgets the dead host's entries", timeout=int(TTL) * 4)
    seen = json.loads(c.pw_a("network", "inspect", "ov").stdout)[0]["Containers"]
    assert {v["Name"] for v in seen.values()} == {"a1"}
    c.pw_a("run", "-d", "--name", "a2", "--network", "ov", "--ip", ip_b, "--",
           "sleep", "3600")


def test_a_daemon_killed_between_set_up_and_claim(cluster: Cluster) -> None:
    """B's daemon dies in a run -d once the container runs, before the transaction that
    claims its address and name with the record that shows it to the other hosts: A
    never sees it; the next daemon (gc) leaves no container of it, and the address and
    name are free for any host at once."""
    c = cluster
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.203.0.0/24", "ov")
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    c.pw_b("daemon", "stop")
    cp = c.pw_b("run", "-d", "--name", "victim", "--network", "ov", "--ip", "10.203.0.9",
                "--", "sleep", "3600", check=False, env={"PORTWAY_FAULT": "run.started"})
    assert cp.returncode != 0 and "Traceback" not in cp.stderr, cp.stderr
    time.sleep(1.0)  # (A's watch would have seen a record by now)
    seen = json.loads(c.pw_a("network", "inspect", "ov").stdout)[0]["Containers"]
    assert seen == {}, seen
    assert "failed" not in c.pw_b("gc").stdout
    assert "victim" not in c.pw_b("ps", "-a").stdout
    c.pw_a("run", "-d", "--name", "victim", "--network", "ov", "--ip", "10.203.0.9", "--",
           "sleep", "3600")
    c.pw_a("rm", "-f", "victim")


def test_unreachable_store_is_one_clear_line(sandbox: Sandbox) -> None:
    sb = sandbox
    # Nothing listens there (the sandbox's loopback): the daemon still serves, says so.
    sb.env.update(PORTWAY_CLUSTER_STORE="etcd://127.0.0.1:1",
                  PORTWAY_ADVERTISE_ADDRESS="127.0.0.1")
    sb.pw("daemon", "start")
    status = sb.pw("daemon", "status").stdout
    assert "cluster store etcd://127.0.0.1:1: this host 127.0.0.1 is unreachable" in status
    assert "connection refused" in status
    before = sb.snapshot()
    cp = sb.pw("network", "create", "--driver", "overlay", "--subnet", "10.203.0.0/24", "ov",
               check=False)
    assert cp.returncode != 0
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the cluster store" in lines[0], cp.stderr
    assert sb.snapshot() == before
    # A bridge network needs no cluster: the single-host default stays as it is.
    sb.pw("network", "create", "br", "--subnet", "10.204.0.0/24")


def test_overlay_without_cluster_is_refused(sandbox: Sandbox) -> None:
    cp = sandbox.pw("network", "create", "--driver", "overlay", "ov", check=False)
    assert cp.returncode == 2
    assert cp.stderr.strip() == (
        "portway: error: overlay networks need a cluster store; start portwayd with "
        "--cluster-store etcd://HOST:2379 and --advertise-address IP (or set "
        "PORTWAY_CLUSTER_STORE and PORTWAY_ADVERTISE_ADDRESS)"), cp.stderr
    assert "cluster store" not in sandbox.pw("daemon", "status").stdout


def test_one_etcd_member_of_three_down(cluster3: Cluster) -> None:
    c = cluster3
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.205.0.0/24", "ov")
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    c.pw_a("run", "-d", "--name", "web-a", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    # The member both daemons talk to (the first of --cluster-store) is killed.
    c.etcd[0].kill()
    c.etcd[0].wait()
    # Changes go on through the others, and traffic with them.
    c.pw_b("run", "-d", "--name", "web-b", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    ip_a = _address(c.pw_a, "web-a")
    out = c.pw_b("exec", "web-b", "--", "python3", "-c", CONNECT, ip_a).stdout
    assert out.startswith("HTTP/1.0 200"), out
    wait_for(lambda: "web-b" in c.pw_a("network", "inspect", "ov").stdout, "A sees web-b")
    out = c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, "web-b").stdout
    assert out.startswith("HTTP/1.0 200"), out
    c.pw_b("network", "create", "--driver", "overlay", "--subnet", "10.206.0.0/24", "ov2")
    wait_for(lambda: "ov2" in _overlay_names(c.pw_a), "A sees ov2")
    status = c.pw_a("daemon", "status").stdout
    assert f"{etcd_member_address(0)}:2379: unreachable" in status, status
    assert "is joined" in status, status


def test_store_away_and_back(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.207.0.0/24", "ov")
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    c.pw_a("run", "-d", "--name", "web-a", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    c.pw_b("run", "-d", "--name", "web-b", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    ip_a = _address(c.pw_a, "web-a")
    out = c.pw_b("exec", "web-b", "--", "python3", "-c", CONNECT, ip_a).stdout
    assert out.startswith("HTTP/1.0 200"), out

    stop_etcd(c.etcd[0])
    # Traffic between the hosts goes on; a change fails with one line, changing nothing.
    out = c.pw_b("exec", "web-b", "--", "python3", "-c", CONNECT, ip_a).stdout
    assert out.startswith("HTTP/1.0 200"), out
    before = c.a.snapshot()
    cp = c.pw_a("run", "-d", "--name", "late", "--network", "ov", "--", "sleep", "30",
                check=False)
    assert cp.returncode != 0 and "cannot reach the cluster store" in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert c.a.snapshot() == before
    wait_for(lambda: "is unreachable" in c.pw_a("daemon", "status").stdout,
             "A says the store is unreachable")

    # etcd back (its data kept): both hosts catch up, and B's new container is seen on A.
    c.etcd[0] = start_etcd(c.underlay, tmp_path / "etcd")
    wait_for(lambda: "is joined" in c.pw_a("daemon", "status").stdout, "A joins again")
    wait_for(lambda: "is joined" in c.pw_b("daemon", "status").stdout, "B joins again")
    c.pw_b("run", "-d", "--name", "web-b2", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    out = c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, "web-b2").stdout
    assert out.startswith("HTTP/1.0 200"), out


def test_same_name_at_once_and_dual_stack(cluster: Cluster) -> None:
    c = cluster
    # Both hosts create "ov" at the same moment: exactly one wins, the other is told so.
    args = ("network", "create", "--driver", "overlay", "--ipv6", "--subnet",
            "10.208.0.0/24", "--subnet", "fd00:208::/64", "ov")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda pw: pw(*args, check=False), (c.pw_a, c.pw_b)))
    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 and codes[1] != 0, [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode != 0)
    assert "already exists" in loser.stderr and "Traceback" not in loser.stderr
    wait_for(lambda: _overlay_names(c.pw_a) == ["ov"] and _overlay_names(c.pw_b) == ["ov"],
             "both hosts have the one network ov")
    ids = {json.loads(pw("network", "inspect", "ov").stdout)[0]["Id"] for pw in (c.pw_a, c.pw_b)}
    assert len(ids) == 1

    # Dual stack across hosts: IPv6 neighbours answered from the store too.
    c.pw_a("run", "-d", "--name", "web-a", "--network", "ov", "-p", "8080:80", "--",
           "python3", "-m", "http.server", "--bind", "::", "80")
    c.pw_b("run", "-d", "--name", "web-b", "--network", "ov", "--",
           "python3", "-m", "http.server", "--bind", "::", "80")
    settings = json.loads(c.pw_a("inspect", "web-a").stdout)[0]["NetworkSettings"]
    ip6_a = settings["Networks"]["ov"]["GlobalIPv6Address"]
    assert ip6_a.startswith("fd00:208::"), settings
    out = c.pw_b("exec", "web-b", "--", "python3", "-c", CONNECT, ip6_a).stdout
    assert out.startswith("HTTP/1.0 200"), out
    # A port published on the local host's address, as on a bridge network.
    got = sh("ip", "netns", "exec", c.a.outside, "python3", "-c", HTTP_GET,
             f"http://{c.a.host_addr}:8080/").stdout.strip()
    assert got == "200", got


def test_doctor_and_gc_bring_the_vxlan_device_back_in_step(cluster: Cluster) -> None:
    c = cluster
    net_id = c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.209.0.0/24",
                    "ov").stdout.strip()
    dev = f"pwvx-{net_id[:10]}"
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    c.pw_a("run", "-d", "--name", "web-a", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    c.pw_b("run", "-d", "--name", "web-b", "--network", "ov", "--",
           "python3", "-m", "http.server", "80")
    ip_b = _address(c.pw_b, "web-b")
    wait_for(lambda: ip_b in {n[0] for n in _neigh(c.a.host, dev)}, "A has web-b's entries")
    fdb, neigh = _fdb(c.a.host, dev), _neigh(c.a.host, dev)
    # Someone removes web-b's FDB entry and neighbour on A by hand.
    (mac, dst), = fdb
    sh("bridge", "-n", c.a.host, "fdb", "del", mac, "dev", dev, "dst", dst)
    sh("ip", "-n", c.a.host, "neigh", "del", ip_b, "dev", dev)
    # Without its neighbour entry, trace finds no one behind the bridge for web-b's
    # address; with it but without the FDB entry, the VXLAN device sends it nowhere.
    cut = json.loads(c.pw_a("trace", "--json", "web-a", f"{ip_b}:80").stdout)
    assert cut["verdict"] == "no-route", cut
    sh("ip", "-n", c.a.host, "neigh", "replace", ip_b, "lladdr", mac, "dev", dev, "nud",
       "permanent")
    cut = json.loads(c.pw_a("trace", "--json", "web-a", f"{ip_b}:80").stdout)
    assert cut["verdict"] == "dropped" and f"no FDB entry for {mac}" in cut["summary"], cut
    sh("ip", "-n", c.a.host, "neigh", "del", ip_b, "dev", dev)
    shown = c.pw_a("show").stdout
    assert f"vxlan {dev} #" in shown and f"local {A_ADDR}, dstport 4789, mtu 1450" in shown
    row = next(line for line in shown.splitlines() if line.strip().startswith("web-b"))
    assert ip_b in row and B_ADDR in row and "MISSING fdb and neighbour" in row, shown
    report = c.pw_a("doctor", check=False)
    assert report.returncode == 1, report.stdout + report.stderr
    assert f"reprogram VXLAN device {dev} of network ov from the cluster store: add 1 FDB " \
           "and 1 neighbour entries" in report.stdout, report.stdout
    c.pw_a("gc")
    assert _fdb(c.a.host, dev) == fdb and _neigh(c.a.host, dev) == neigh
    assert c.pw_a("doctor", check=False).returncode == 0
    row = next(line for line in c.pw_a("show").stdout.splitlines()
               if line.strip().startswith("web-b"))
    assert row.rstrip().endswith("fdb + neighbour"), row
    # The device itself deleted: gc makes it again, with its entries.
    sh("ip", "-n", c.a.host, "link", "del", dev)
    assert "re-create VXLAN device" in c.pw_a("doctor", check=False).stdout
    c.pw_a("gc")
    assert _fdb(c.a.host, dev) == fdb and _neigh(c.a.host, dev) == neigh
    out = c.pw_a("exec", "web-a", "--", "python3", "-c", CONNECT, "web-b").stdout
    assert out.startswith("HTTP/1.0 200"), out


def test_an_overlay_subnet_a_host_has_is_not_made_there(cluster: Cluster) -> None:
    """A subnet free on the host that creates an overlay network may be a local
    network's on another: that host makes no part of it, says why once (log, daemon
    status), and its own network keeps every firewall element (doctor finds no drift).
    Without --subnet an overlay network comes from Docker's global pool, 10.0.0.0/8 in
    /24s, away from the local networks' 172.17-31/16."""
    c = cluster
    c.pw_b("network", "create", "--subnet", "10.210.0.0/24", "localb")
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.210.0.0/24", "ov")
    why = "overlay network ov is not made on this host: its subnet 10.210.0.0/24 overlaps " \
          "network localb of this host"
    wait_for(lambda: why in c.pw_b("daemon", "status").stdout, "B says why ov is not there")
    assert _overlay_names(c.pw_b) == []
    doctor = c.pw_b("doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert doctor.stdout.startswith(why.replace("overlay network", "note: overlay network")), \
        doctor.stdout
    assert doctor.stdout.endswith("healthy: the kernel matches the store\n"), doctor.stdout
    cp = c.pw_b("run", "-d", "--name", "b0", "--network", "ov", "--", "sleep", "60",
                check=False)
    assert cp.returncode == 3 and cp.stderr == "portway: error: overlay network 'ov' is not " \
        "made on this host; its subnet 10.210.0.0/24 overlaps network localb of this host; " \
        "remove or renumber that one, or create the overlay network with another --subnet\n", \
        cp.stderr
    assert c.pw_b("ps", "-a", "-q").stdout == ""  # nothing made
    c.pw_b("run", "-d", "--name", "b1", "--network", "localb", "--", "sleep", "60")
    c.pw_b("rm", "-f", "b1")
    log = (c.b_state / "portwayd.log").read_text()
    assert log.count("overlay network ov not made here") == 1, log
    # Without --subnet: Docker's pool for global networks.
    c.pw_a("network", "create", "--driver", "overlay", "ov2")
    subnets = json.loads(c.pw_a("network", "inspect", "ov2").stdout)[0]["IPAM"]["Config"]
    assert [s["Subnet"] for s in subnets] == ["10.0.0.0/24"], subnets
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov2"], "B makes ov2")
    # A bridge name given at create that is a link of B's own: B leaves its link alone.
    sh("ip", "-n", c.b_host, "link", "add", "brb0", "type", "bridge")
    c.pw_a("network", "create", "--driver", "overlay", "-o",
           "com.docker.network.bridge.name=brb0", "ov3")
    wait_for(lambda: "overlay network ov3 is not made on this host: bridge name 'brb0' is "
             "taken: the host has a link of that name" in c.pw_b("daemon", "status").stdout,
             "B says why ov3 is not there")
    assert "ifalias" not in ip_json(c.b_host, "link", "show", "brb0")[0]
    # Docker's way of choosing the VNI: every host's device has it; a second network
    # asking for it is refused with one line, and nothing is made.
    vni = "com.docker.network.driver.overlay.vxlanid_list=5000"
    net_id = c.pw_a("network", "create", "--driver", "overlay", "-o", vni,
                    "ov4").stdout.strip()
    wait_for(lambda: "ov4" in _overlay_names(c.pw_b), "B makes ov4")
    dev = ip_json(c.b_host, "-d", "link", "show", f"pwvx-{net_id[:10]}")[0]
    assert dev["linkinfo"]["info_data"]["id"] == 5000, dev  # type: ignore[index]
    taken = c.pw_b("network", "create", "--driver", "overlay", "-o", vni, "ov5", check=False)
    assert taken.returncode == 4 and taken.stderr == (
        "portway: error: VXLAN network identifier 5000 is taken by overlay network ov4; give "
        "another com.docker.network.driver.overlay.vxlanid_list, or omit it to get a free "
        "one\n"), taken.stderr
    assert "ov5" not in _overlay_names(c.pw_a) + _overlay_names(c.pw_b)
    c.pw_a("network", "rm", "ov3", "ov4")
    wait_for(lambda: "ov3 is not made" not in c.pw_b("daemon", "status").stdout,
             "B forgets the removed ov3")
    sh("ip", "-n", c.b_host, "link", "del", "brb0")
    # The local network gone, B makes ov at once (not at its next re-list, 30 s on).
    c.pw_b("network", "rm", "localb")
    wait_for(lambda: "ov" in _overlay_names(c.pw_b), "B makes ov", timeout=5)
    assert "not made" not in c.pw_b("daemon", "status").stdout


def test_prune_keeps_an_overlay_network_another_host_uses(cluster: Cluster) -> None:
    """network prune on B: an overlay network only A's containers are on is in use, so
    it stays (it used to stop the whole prune with 'has containers attached on other
    hosts', removing nothing); the unused ones go, the overlay one for every host."""
    c = cluster
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.211.0.0/24", "ov")
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.212.0.0/24", "idle")
    c.pw_b("network", "create", "--subnet", "10.213.0.0/24", "spare")
    c.pw_a("run", "-d", "--name", "a1", "--network", "ov", "--", "sleep", "600")
    wait_for(lambda: "a1" in c.pw_b("network", "inspect", "-f",
                                    "{{range .Containers}}{{.Name}}{{end}}", "ov").stdout,
             "B sees a1 on ov")
    pruned = c.pw_b("network", "prune", "-f", check=False)
    assert pruned.returncode == 0, pruned.stderr
    assert "ov" not in pruned.stdout.split() and {"idle", "spare"} <= set(
        pruned.stdout.split()), pruned.stdout
    assert _overlay_names(c.pw_b) == ["ov"]
    wait_for(lambda: _overlay_names(c.pw_a) == ["ov"], "A drops idle too")


def test_cluster_ttl_flag(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.env.update(PORTWAY_CLUSTER_STORE="etcd://127.0.0.1:1",
                  PORTWAY_ADVERTISE_ADDRESS="127.0.0.1", PORTWAY_CLUSTER_TTL="soon")
    cp = sb.pw("daemon", "start", check=False)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr, cp.stderr
    assert "--cluster-ttl 'soon' is not a number of seconds from 2 to 3600" in cp.stderr
    assert sb.daemon_pid() == 0
    # portwayd --cluster-ttl, remembered by the state dir: a restart without it keeps it.
    del sb.env["PORTWAY_CLUSTER_TTL"]
    daemon = [str(Path(PORTWAY).parent / "portwayd"), "--host-netns", sb.host,
              "--state-dir", str(sb.state_dir), "--cluster-ttl", "7"]
    log = sb.state_dir.parent / "portwayd-direct.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(daemon, env=dict(os.environ, **sb.env),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for(lambda: sb.daemon_pid() != 0, "portwayd serves", timeout=60)
        except AssertionError:
            raise AssertionError(f"portwayd did not serve: {log.read_text()}") from None
        assert "connection refused)), no lease (ttl 7s)" in \
            sb.pw("daemon", "status").stdout
    finally:
        sb.pw("daemon", "stop")
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()  # the daemon this test started, by its pid
            proc.wait()
    sb.pw("daemon", "start")
    assert "no lease (ttl 7s)" in sb.pw("daemon", "status").stdout


def _revision(c: Cluster) -> int:
    out = sh("ip", "netns", "exec", c.underlay, "etcdctl", "--endpoints",
             f"http://{ETCD_ADDR}:2379", "get", "/portway/", "-w", "json").stdout
    return int(json.loads(out)["header"]["revision"])


def _keys(c: Cluster, prefix: str) -> dict[str, str]:
    out = sh("ip", "netns", "exec", c.underlay, "etcdctl", "--endpoints",
             f"http://{ETCD_ADDR}:2379", "get", "--prefix", prefix).stdout.splitlines()
    return dict(zip(out[::2], out[1::2], strict=True))


def test_a_run_is_one_etcd_write_and_an_address_has_one_holder(cluster: Cluster) -> None:
    """An overlay run -d writes its address, name and record in one etcd transaction
    (one revision), once its set-up is done. Two hosts asking for one address at the
    same moment: one wins, the other is told so in one line and keeps nothing; two
    hosts that pick addresses at the same moment get two (the one whose pick the other
    took first is set up again with the next free one)."""
    c = cluster
    c.pw_a("network", "create", "--driver", "overlay", "--subnet", "10.216.0.0/24", "ov")
    wait_for(lambda: _overlay_names(c.pw_b) == ["ov"], "B sees network ov")
    net_id = json.loads(c.pw_a("network", "inspect", "ov").stdout)[0]["Id"]
    before = _revision(c)
    c.pw_a("run", "-d", "--name", "one", "--network", "ov", "--", "sleep", "3600")
    assert _revision(c) == before + 1
    ip = _address(c.pw_a, "one")
    keys = _keys(c, "/portway/")
    assert keys[f"/portway/ips/{net_id}/{ip}"] == keys[f"/portway/cnames/{net_id}/one"]
    assert f"/portway/endpoints/{net_id}/{keys[f'/portway/ips/{net_id}/{ip}']}" in keys

    def both(make_args: Callable[[str], tuple[str, ...]]
             ) -> list[subprocess.CompletedProcess[str]]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda pw: pw[1](*make_args(pw[0]), check=False),
                                 (("a", c.pw_a), ("b", c.pw_b))))

    results = both(lambda host: ("run", "-d", "--name", f"asked-{host}", "--network", "ov",
                                 "--ip", "10.216.0.50", "--", "sleep", "3600"))
    codes = sorted(r.returncode for r in results)
    assert codes[0] == 0 and codes[1] != 0, [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode != 0)
    assert loser.stderr.strip().splitlines() == [
        "portway: error: address 10.216.0.50 is already in use on network ov (on another "
        "host); pick another address, or omit it"], loser.stderr
    lost = "a" if results[0].returncode != 0 else "b"
    assert f"asked-{lost}" not in (c.pw_a if lost == "a" else c.pw_b)("ps", "-a").stdout
    held = {k.rsplit("/", 1)[1] for k in _keys(c, f"/portway/cnames/{net_id}/")}
    assert held == {"one", f"asked-{'b' if lost == 'a' else 'a'}"}

    for round_ in range(3):
        results = both(lambda host: ("run", "-d", "--name", f"pick-{host}{round_}",  # noqa: B023
                                     "--network", "ov", "--", "sleep", "3600"))
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    picked = [_address(pw, f"pick-{host}{r}") for r in range(3)
              for host, pw in (("a", c.pw_a), ("b", c.pw_b))]
    assert len(set(picked)) == 6 and ip not in picked and "10.216.0.50" not in picked

    # A host whose pick lost a race remembers that address for a while and reads the
    # store for it when it is asked for (--ip): each picked address, its holder removed,
    # asked for by both hosts at once, still goes to one of them (the claim's
    # transaction decides), the other told so in one line, keeping nothing.
    for r in range(3):
        for host, pw in (("a", c.pw_a), ("b", c.pw_b)):
            address = _address(pw, f"pick-{host}{r}")
            pw("rm", "-f", f"pick-{host}{r}")
            results = both(lambda h: ("run", "-d", "--name", f"again-{h}{r}{host}",  # noqa: B023
                                      "--network", "ov", "--ip", address,  # noqa: B023
                                      "--", "sleep", "3600"))
            codes = sorted(x.returncode for x in results)
            assert codes[0] == 0 and codes[1] != 0, [x.stderr for x in results]
            loser = next(x for x in results if x.returncode != 0)
            assert loser.stderr.strip().splitlines() == [
                f"portway: error: address {address} is already in use on network ov "
                "(on another host); pick another address, or omit it"], loser.stderr
            holders = [k for k, v in _keys(c, f"/portway/ips/{net_id}/").items()
                       if k.endswith("/" + address)]
            assert len(holders) == 1, holders
            lost = "a" if results[0].returncode != 0 else "b"
            assert f"again-{lost}{r}{host}" not in (c.pw_a if lost == "a" else c.pw_b)(
                "ps", "-a").stdout


def test_an_advertise_address_not_of_this_host_is_refused(sandbox: Sandbox) -> None:
    """The other hosts send this host's tunnel traffic to its --advertise-address: one
    it does not have (a typo) would leave every cross-host path silently broken, so the
    daemon refuses it in one line and starts nothing (Docker's swarm refuses an
    advertise address that is not a system address)."""
    sb = sandbox
    sb.env.update(PORTWAY_CLUSTER_STORE="etcd://127.0.0.1:1",
                  PORTWAY_ADVERTISE_ADDRESS="192.0.2.77")
    cp = sb.pw("daemon", "start", check=False)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr, cp.stderr
    assert (f"--advertise-address 192.0.2.77 is not an address of this host (host "
            f"namespace {sb.host}); give the address of its interface on the underlay "
            "('ip -brief address' lists them), or add it to that interface first") \
        in cp.stderr, cp.stderr
    assert sb.daemon_pid() == 0
    # An IPv6 link-local one, though the host has it: no VXLAN device takes it (every
    # overlay network's was refused, "Invalid argument").
    sb.in_host("ip", "link", "add", "ll0", "type", "veth", "peer", "name", "ll1")
    try:
        sb.in_host("ip", "addr", "add", "fe80::77/64", "dev", "ll0", "nodad")
        sb.env.update(PORTWAY_ADVERTISE_ADDRESS="fe80::77")
        cp = sb.pw("daemon", "start", check=False)
    finally:
        sb.in_host("ip", "link", "del", "ll0")
    assert cp.returncode != 0 and "Traceback" not in cp.stderr, cp.stderr
    assert "--advertise-address fe80::77 is an IPv6 link-local address: the other hosts " \
        "cannot send this host's tunnel traffic to it" in cp.stderr, cp.stderr
    assert sb.daemon_pid() == 0
    # One of its addresses is taken, IPv6 too.
    sb.in_host("ip", "addr", "add", "2001:db8:77::1/64", "dev", "lo")
    sb.env.update(PORTWAY_ADVERTISE_ADDRESS="2001:db8:77::1")
    sb.pw("daemon", "start")
    assert "this host 2001:db8:77::1 is unreachable" in sb.pw("daemon", "status").stdout


PUT_IF = """
import json, sys
from portway.core.overlay import parse_cluster_store
from portway.store.etcd import Etcd
etcd = Etcd(parse_cluster_store(sys.argv[1]))
lease = etcd.grant(30)
out = []
# Absent keys, read as absent: written, under the lease.
out.append(etcd.put_if({"/t/ip": None, "/t/name": None}, {"/t/ip": "e1", "/t/name": "e1",
                                                         "/t/rec": "r"}, lease))
# Read as e1's, still e1's: written again (under another lease).
other = etcd.grant(30)
out.append(etcd.put_if({"/t/ip": "e1", "/t/name": "e1"}, {"/t/ip": "e1", "/t/name": "e1"},
                       other))
# Read as absent, but another claimed it meanwhile: nothing written.
etcd.put("/t/taken", "e2")
out.append(etcd.put_if({"/t/taken": None, "/t/free": None}, {"/t/taken": "e1",
                                                            "/t/free": "e1"}, lease))
# Read as e1's, another's now: nothing written.
etcd.put("/t/name", "e3", other)
out.append(etcd.put_if({"/t/ip": "e1", "/t/name": "e1"}, {"/t/ip": "e9"}, lease))
kvs, _rev = etcd.range("/t/")
keys = {kv.key: [kv.value, kv.lease == other] for kv in kvs}
# A claim only while its network's key is there.
etcd.put("/n/net", "x")
out.append(etcd.create_all({"/n/ep/1": "a"}, lease, present=("/n/net",)))
out.append(etcd.create_all({"/n/ep/2": "b"}, lease, present=("/n/gone",)))
# A removal only while nothing was written under the prefix since it was read.
_kvs, rev = etcd.range("/n/ep/")
etcd.put("/n/ep/3", "c")
out.append(etcd.delete_if_unchanged("/n/ep/", rev, ("/n/net",)))
_kvs, rev = etcd.range("/n/ep/")
out.append(etcd.delete_if_unchanged("/n/ep/", rev, ("/n/net",)))
kvs, _rev = etcd.range("/n/")
print(json.dumps([out, keys, sorted(kv.key for kv in kvs)]))
etcd.revoke(lease)
etcd.revoke(other)
"""


def test_a_write_conditioned_on_what_was_read_with_real_etcd(sandbox: Sandbox,
                                                           tmp_path: Path) -> None:
    """A host that comes back registers its container's address, name and record only
    while the store has them as it read them (Etcd.put_if, one transaction): against a
    real etcd, whose compare of a key's value fails where the key does not exist, an
    absent key read as absent and one read as this endpoint's are written, and a key
    another claimed since the read leaves everything unwritten. A claim is made only
    while its network's key is there (create_all's present), and a network removed
    only while no endpoint was written on it since the removal read them
    (delete_if_unchanged: a compare over the range)."""
    underlay = f"{sandbox.host}-underlay"
    etcd: subprocess.Popen[bytes] | None = None
    try:
        make_underlay(underlay, [sandbox.host])
        etcd = start_etcd(underlay, tmp_path / "etcd")
        cp = sandbox.in_host(sys.executable, "-c", PUT_IF, STORE)
        outcome, keys, left = json.loads(cp.stdout)
        assert outcome == [True, True, False, False, True, False, False, True], cp.stdout
        assert keys == {"/t/ip": ["e1", True], "/t/name": ["e3", True],
                        "/t/rec": ["r", False], "/t/taken": ["e2", False]}, keys
        assert left == ["/n/ep/1", "/n/ep/3"], left
    finally:
        if etcd is not None:
            stop_etcd(etcd)
        del_netns(underlay)


def test_a_remembered_advertise_address_given_again_is_not_refused_before_it_is_up(
        sandbox: Sandbox) -> None:
    """After a reboot the underlay address may come up after the daemon starts. With
    PORTWAY_ADVERTISE_ADDRESS in the environment (as the docs set it up, for every
    start), the address the state dir remembers is given again: the daemon serves (the
    bridge networks need no cluster), as it does when the address is only remembered.
    Another one not of the host is still refused."""
    sb = sandbox
    sb.env.update(PORTWAY_CLUSTER_STORE="etcd://127.0.0.1:1",
                  PORTWAY_ADVERTISE_ADDRESS="192.0.2.78")
    sb.in_host("ip", "addr", "add", "192.0.2.78/32", "dev", "lo")
    sb.pw("daemon", "start")
    sb.pw("daemon", "stop")
    sb.in_host("ip", "addr", "del", "192.0.2.78/32", "dev", "lo")  # (not up yet)
    cp = sb.pw("daemon", "start", check=False)
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr
    assert "this host 192.0.2.78 is unreachable" in sb.pw("daemon", "status").stdout
    sb.pw("network", "create", "br", "--subnet", "10.204.0.0/24")
    sb.pw("run", "-d", "--name", "c1", "--network", "br", "--", "sleep", "60")
    sb.pw("rm", "-f", "c1")
    sb.pw("network", "rm", "br")
    sb.pw("daemon", "stop")
    sb.env.update(PORTWAY_ADVERTISE_ADDRESS="192.0.2.79")
    cp = sb.pw("daemon", "start", check=False)
    assert cp.returncode != 0 and "--advertise-address 192.0.2.79 is not an address of " \
        "this host" in cp.stderr, cp.stderr
    assert sb.daemon_pid() == 0
    sb.env.update(PORTWAY_ADVERTISE_ADDRESS="192.0.2.78")  # (the clean-up's daemon)


def _etcdctl(c: Cluster, *args: str) -> str:
    return sh("ip", "netns", "exec", c.underlay, "etcdctl", "--endpoints",
              f"http://{ETCD_ADDR}:2379", *args).stdout


def _host_record(c: Cluster, address: str) -> tuple[str, int] | None:
    """A host's record in etcd: its value and the lease it is under (None: not there)."""
    kvs = json.loads(_etcdctl(c, "get", f"/portway/hosts/{address}", "-w", "json")
                     ).get("kvs", [])
    if not kvs:
        return None
    return base64.b64decode(kvs[0]["value"]).decode(), int(kvs[0].get("lease", 0))


def _members_of(netns: str) -> set[str]:
    """The addresses in a host's firewall set of the cluster members' VTEPs."""
    out = sh("ip", "netns", "exec", netns, "nft", "-j", "list", "set", "inet", "portway",
             "members").stdout
    found: set[str] = set()

    def walk(x: object) -> None:
        if isinstance(x, str):
            found.add(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for item in json.loads(out)["nftables"]:
        walk(item.get("set", {}).get("elem", []))
    return found


def test_a_hosts_record_put_late_under_another_lease_is_written_again(cluster: Cluster) -> None:
    """A write of A's record that was abandoned (a stopped daemon's, or a join's that
    moved on to a new lease) lands after the write of the join that holds, under a lease
    nobody renews: A writes its record again under its own lease within seconds, so the
    record outlives that lease; and where that lease takes the record with it first, B
    drops A's VTEP from its members only until A has written it again."""
    c = cluster
    wait_for(lambda: A_ADDR in _members_of(c.b_host), "B has A's VTEP in its members")
    status = c.pw_a("daemon", "status").stdout
    lease = int(status.split(" lease ")[1].split()[0], 16)
    record = _host_record(c, A_ADDR)
    assert record is not None and record[1] == lease, (record, lease)
    value = record[0]
    for revoked in (False, True):
        late = json.dumps({**json.loads(value), "joined": "2026-01-01T00:00:00Z"})
        other = int(_etcdctl(c, "lease", "grant", "60").split()[1], 16)
        _etcdctl(c, "put", f"--lease={other:x}", f"/portway/hosts/{A_ADDR}", late)
        assert _host_record(c, A_ADDR) == (late, other)
        if revoked:  # (it runs out before A has seen the late write)
            _etcdctl(c, "lease", "revoke", f"{other:x}")
            wait_for(lambda: A_ADDR not in _members_of(c.b_host), "B drops A's VTEP")
        wait_for(lambda: _host_record(c, A_ADDR) == (value, lease),
                 "A's record under its lease again", timeout=12)
        if not revoked:
            _etcdctl(c, "lease", "revoke", f"{other:x}")
            assert _host_record(c, A_ADDR) == (value, lease)
        wait_for(lambda: A_ADDR in _members_of(c.b_host), "B has A's VTEP again")
    assert f"this host {A_ADDR} is joined, lease {lease:x}" in c.pw_a("daemon", "status").stdout
