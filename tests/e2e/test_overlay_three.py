"""Overlay networks across three hosts, with a three-member etcd cluster, end to end.

The proof setting of the overlay issue: three hosts, each a namespace with its own
portwayd and state dir (A is a sandbox's host namespace, B and C are SANDBOX-b and
SANDBOX-c), on an underlay bridge in SANDBOX-underlay, where three etcd members
(Debian's etcd-server) run, started and stopped by the module by their pids. The
hosts and etcd are made once for the module (each start costs seconds); each test
removes its containers and networks from every host, and the module ends with the
sandbox's leak check. A and B know every etcd member; C knows only the third, so
that a test can cut C off from the store while the cluster goes on.
Real TCP, UDP and DNS between containers on all three hosts; the kernel's own tables
and real clients as oracles.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    PORTWAY,
    Sandbox,
    clean_up_and_check,
    etc_netns_list,
    ip_json,
    netns_list,
    processes_in,
    sh,
)
from portway.core.overlay import RemoteEndpoint
from portway.testbed import (
    add_netns,
    del_netns,
    etcd_member_address,
    make_underlay,
    make_world,
    remove_world,
    restart_etcd_member,
    start_etcd_cluster,
    stop_etcd,
    underlay_address,
)

TTL = "3"
ADDRS = [underlay_address(i) for i in range(3)]
ALL_MEMBERS = "etcd://" + ",".join(f"{etcd_member_address(i)}:2379" for i in range(3))
THIRD_MEMBER = f"etcd://{etcd_member_address(2)}:2379"

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="etcd-server is not installed (scripts/setup.sh)")

CONNECT = ("import socket, sys, time\n"
           "for _ in range(100):\n"
           "    try:\n"
           "        s = socket.create_connection((sys.argv[1], 80), 0.3)\n"
           "        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(12).decode()); break\n"
           "    except OSError: time.sleep(0.05)\n"
           "else: sys.exit(1)\n")
# HTTP on 80 and a UDP echo on 53535, in one process (a container's).
SERVE = ("import socket, threading, http.server\n"
         "srv = http.server.ThreadingHTTPServer(('0.0.0.0', 80),\n"
         "                                      http.server.SimpleHTTPRequestHandler)\n"
         "threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53535))\n"
         "while True:\n"
         "    data, peer = s.recvfrom(512); s.sendto(b'echo ' + data, peer)\n")
UDP_ASK = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)\n"
           "for _ in range(30):\n"
           "    s.sendto(sys.argv[2].encode(), (sys.argv[1], 53535))\n"
           "    try: print(s.recv(512).decode()); break\n"
           "    except OSError: pass\n"
           "else: raise SystemExit(1)\n")

Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Hosts:
    sb: Sandbox  # host A
    names: list[str]  # the host namespaces of A, B, C
    states: list[Path]
    stores: list[str]
    underlay: str
    etcd_dir: Path
    etcd: list[subprocess.Popen[bytes]]

    def pw(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """portway on host i (0: A, 1: B, 2: C)."""
        env = dict(os.environ, PORTWAY_CLUSTER_STORE=self.stores[i],
                   PORTWAY_ADVERTISE_ADDRESS=ADDRS[i], PORTWAY_CLUSTER_TTL=TTL)
        cp = subprocess.run([PORTWAY, "--host-netns", self.names[i], "--state-dir",
                             str(self.states[i]), *args], capture_output=True, text=True,
                            timeout=60, env=env)
        if check and cp.returncode != 0:
            raise AssertionError(f"portway ({'ABC'[i]}) {' '.join(args)} failed "
                                 f"({cp.returncode}):\n{cp.stdout}{cp.stderr}")
        return cp

    def runner(self, i: int) -> Runner:
        return lambda *args, **kw: self.pw(i, *args, **kw)


def wait_for(cond: Callable[[], object], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        time.sleep(0.1)


def _overlays(h: Hosts, i: int) -> list[str]:
    return sorted(n["Name"] for n in json.loads(h.pw(i, "network", "ls", "--json").stdout)
                  if n["Driver"] == "overlay")


def _clear(h: Hosts) -> None:
    """Every host's containers, then the overlay networks (from A; the others drop
    them as they see them go)."""
    for i in (1, 2, 0):
        ids = h.pw(i, "ps", "-a", "-q", check=False).stdout.split()
        if ids:
            h.pw(i, "rm", "-f", *ids, check=False)
    nets = _overlays(h, 0)
    if nets:
        h.pw(0, "network", "rm", *nets, check=False)
    for i in (1, 2):
        wait_for(lambda i=i: not _overlays(h, i), f"host {'ABC'[i]} drops the networks")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    base = tmp_path_factory.mktemp("ov3")
    tag = secrets.token_hex(3)
    sb = Sandbox(host=f"pwt-h-{tag}", outside=f"pwt-o-{tag}", state_dir=base / "a",
                 netns_before=netns_list(), etc_before=etc_netns_list())
    names = [sb.host, f"{sb.host}-b", f"{sb.host}-c"]
    states = [base / "a", base / "b", base / "c"]
    underlay = f"{sb.host}-underlay"
    etcd: list[subprocess.Popen[bytes]] = []
    leaks: list[str] = []
    try:
        make_world(sb.host, sb.outside, sb.state_dir)
        for name, state in zip(names[1:], states[1:], strict=True):
            add_netns(name, state)
        make_underlay(underlay, names)
        etcd += start_etcd_cluster(underlay, base / "etcd", 3)
        sb.env.update(PORTWAY_CLUSTER_STORE=ALL_MEMBERS, PORTWAY_ADVERTISE_ADDRESS=ADDRS[0],
                      PORTWAY_CLUSTER_TTL=TTL)
        h = Hosts(sb, names, states, [ALL_MEMBERS, ALL_MEMBERS, THIRD_MEMBER], underlay,
                  base / "etcd", etcd)
        for i in range(3):
            h.pw(i, "daemon", "start")
        for i in range(3):
            wait_for(lambda i=i: all(a in h.pw(i, "daemon", "status").stdout for a in ADDRS),
                     f"host {'ABC'[i]} sees every host")
        yield h
    finally:
        for name, state in zip(names[1:], states[1:], strict=True):
            if (state / "portway.db").exists():
                subprocess.run([PORTWAY, "--host-netns", name, "--state-dir", str(state),
                                "daemon", "stop"], capture_output=True, timeout=30)
            stray = processes_in(name) if os.path.exists(f"/run/netns/{name}") else []
            if stray:
                leaks.append(f"processes left on host {name}: {stray}")
                for pid in stray:
                    os.kill(pid, signal.SIGKILL)
        for proc in etcd:
            stop_etcd(proc)
        for name in (*names[1:], underlay):
            del_netns(name)
        leaks += clean_up_and_check(sb)
        remove_world(sb.host, sb.outside)
        if leaks:
            pytest.fail("left behind:\n  " + "\n  ".join(leaks))


@pytest.fixture
def h(hosts: Hosts) -> Iterator[Hosts]:
    """The module's hosts, each test's containers and networks removed after it."""
    try:
        yield hosts
    finally:
        _clear(hosts)


def _address(h: Hosts, i: int, name: str, net: str = "ov") -> str:
    data = json.loads(h.pw(i, "inspect", name).stdout)[0]
    return str(data["NetworkSettings"]["Networks"][net]["IPAddress"])


def _mac(h: Hosts, i: int, name: str, net: str = "ov") -> str:
    data = json.loads(h.pw(i, "inspect", name).stdout)[0]
    return str(data["NetworkSettings"]["Networks"][net]["MacAddress"])


def _fdb(netns: str, dev: str) -> set[tuple[str, str]]:
    out = sh("bridge", "-n", netns, "-j", "fdb", "show", "dev", dev).stdout
    return {(e["mac"], e["dst"]) for e in json.loads(out or "[]") if e.get("dst")}


def _neigh(netns: str, dev: str) -> set[tuple[str, str]]:
    return {(str(n["dst"]), str(n["lladdr"])) for n in ip_json(netns, "neigh", "show", "dev", dev)
            if "PERMANENT" in n.get("state", [])}  # type: ignore[operator]


def _network(h: Hosts, *extra: str, subnet: str = "10.210.0.0/24", name: str = "ov") -> str:
    """An overlay network made on A, once every host has it; its VXLAN device's name."""
    net_id = h.pw(0, "network", "create", "--driver", "overlay", "--subnet", subnet,
                  *extra, name).stdout.strip()
    for i in (1, 2):
        wait_for(lambda i=i: name in _overlays(h, i), f"host {'ABC'[i]} sees network {name}")
    return f"pwvx-{net_id[:10]}"


def _servers(h: Hosts, net: str = "ov") -> list[str]:
    """web-a, web-b, web-c on hosts A, B, C (HTTP on 80, a UDP echo on 53535); their
    addresses."""
    for i, x in enumerate("abc"):
        h.pw(i, "run", "-d", "--name", f"web-{x}", "--network", net, "--",
             "python3", "-c", SERVE)
    return [_address(h, i, f"web-{x}", net) for i, x in enumerate("abc")]


def test_tcp_udp_and_dns_between_three_hosts(h: Hosts) -> None:
    for i in range(3):
        status = h.pw(i, "daemon", "status").stdout
        assert f"this host {ADDRS[i]} is joined" in status, status
        # The cluster's three members, one of them the leader (C asks through its one).
        assert status.count("etcd 3.4") == 3 and status.count(", leader") == 1, status
    dev = _network(h)
    ips = _servers(h)
    assert len(set(ips)) == 3, ips  # no address is handed out twice across hosts
    macs = [_mac(h, i, f"web-{x}") for i, x in enumerate("abc")]

    # Each host's VXLAN device: an FDB and a neighbour entry for each of the other two
    # hosts' containers (from the store), none for its own.
    for i in range(3):
        want_fdb = {(macs[j], ADDRS[j]) for j in range(3) if j != i}
        want_neigh = {(ips[j], macs[j]) for j in range(3) if j != i}
        wait_for(lambda i=i, w=want_fdb: _fdb(h.names[i], dev) == w,
                 f"host {'ABC'[i]}'s FDB entries")
        assert _neigh(h.names[i], dev) == want_neigh

    for i, x in enumerate("abc"):
        for j, y in enumerate("abc"):
            if i == j:
                continue
            # TCP by name, UDP by address and by name, DNS (dig) from every host's
            # DNS server for the other hosts' containers.
            out = h.pw(i, "exec", f"web-{x}", "--", "python3", "-c", CONNECT,
                       f"web-{y}").stdout
            assert out.startswith("HTTP/1.0 200"), (x, y, out)
            out = h.pw(i, "exec", f"web-{x}", "--", "python3", "-c", UDP_ASK, ips[j],
                       f"{x}-to-{y}").stdout.strip()
            assert out == f"echo {x}-to-{y}", (x, y, out)
            out = h.pw(i, "exec", f"web-{x}", "--", "python3", "-c", UDP_ASK, f"web-{y}",
                       "by-name").stdout.strip()
            assert out == "echo by-name", (x, y, out)
            answer = h.pw(i, "exec", f"web-{x}", "--", "dig", "+short", f"web-{y}").stdout
            assert answer.split() == [ips[j]], (x, y, answer)
            tcp = h.pw(i, "exec", f"web-{x}", "--", "dig", "+tcp", "+short",
                       f"web-{y}").stdout
            assert tcp.split() == [ips[j]], (x, y, tcp)

    # Each host lists every container of the network, and where it runs.
    for i in range(3):
        seen = json.loads(h.pw(i, "network", "inspect", "ov").stdout)[0]["Containers"]
        assert {v["Name"]: v["Host"] for v in seen.values()} == \
            {f"web-{x}": ADDRS[j] for j, x in enumerate("abc")}


def test_trace_explains_both_hosts(h: Hosts) -> None:
    dev = _network(h, subnet="10.211.0.0/24")
    ips = _servers(h)
    vni = json.loads(h.pw(0, "network", "inspect", "ov").stdout)[0]["Options"][
        "com.docker.network.driver.overlay.vxlanid_list"]
    wait_for(lambda: len(_fdb(h.names[0], dev)) == 2, "A's FDB entries")
    traced = h.pw(0, "trace", "web-a", "web-b:80").stdout
    data = json.loads(h.pw(0, "trace", "--json", "web-a", "web-b:80").stdout)
    # This host's half: into the VXLAN device, tunnelled to B's VTEP; then B's half, read
    # from B's namespace: the datagram arrives, B's device decapsulates it into its
    # bridge, B's hooks and web-b's own, and web-b's socket takes it.
    assert data["verdict"] == "delivered" and data["local_verdict"] == "leaves-host", traced
    assert data["remote"] == {"host": ADDRS[1], "netns": h.names[1], "traced": True,
                              "why": ""}, data["remote"]
    details = [f"{hop['where']}: {hop['detail']}" for hop in data["hops"]]
    text = "\n".join(details)
    assert f"FDB: {_mac(h, 1, 'web-b')} -> VTEP {ADDRS[1]}" in text, traced
    assert f"UDP {ADDRS[0]} -> {ADDRS[1]}:4789 (VXLAN, VNI {vni}) arrives on ul0" in text
    assert f"{dev}: decapsulated (VNI {vni}" in text, traced
    assert f"host {ADDRS[1]}: inet portway forward: " in text, traced
    assert f"a tcp socket listens on 0.0.0.0:80; it sees the connection from {ips[0]}" \
        in text, traced
    assert f"delivered to container web-b, {ips[1]}:80/tcp (on host {ADDRS[1]}" in \
        data["summary"], traced
    assert f"-- on host {ADDRS[1]} (its namespace {h.names[1]}, observed from here)" in traced
    # graph draws the VXLAN device and the other hosts' VTEPs with their containers.
    net_id = json.loads(h.pw(0, "network", "inspect", "ov").stdout)[0]["Id"]
    dot = h.pw(0, "graph").stdout
    for x, i in (("b", 1), ("c", 2)):
        vtep = f'"vtep:{net_id}:{ADDRS[i]}"'
        assert f'{vtep} [label="host {ADDRS[i]} (VTEP)\\nweb-{x} {ips[i]} ' \
            f'{_mac(h, i, f"web-{x}")}"' in dot, dot
        assert f'"vx:{net_id}" -> {vtep} [label="UDP {ADDRS[0]} -> {ADDRS[i]}:4789"]' in dot
    assert f"{dev} #" in dot and f"VXLAN VNI {vni}" in dot, dot
    # Nothing listens on 81 there: B's half says so (the RST comes from web-b).
    data = json.loads(h.pw(0, "trace", "--json", "web-a", "web-c:81").stdout)
    assert data["verdict"] == "no-listener" and "container web-c" in data["summary"], data

    # B's VXLAN device gone: A's half is as before, B's half drops it on arrival.
    sh("ip", "-n", h.names[1], "link", "del", dev)
    data = json.loads(h.pw(0, "trace", "--json", "web-a", "web-b:80").stdout)
    assert data["verdict"] == "dropped", data
    assert f"host {ADDRS[1]} has no VXLAN device for VNI {vni}" in data["summary"], data
    assert f"'portway doctor' on host {ADDRS[1]}" in data["fix"], data
    h.pw(1, "gc")
    data = json.loads(h.pw(0, "trace", "--json", "web-a", "web-b:80").stdout)
    assert data["verdict"] == "delivered", data

    # A host on another machine (its record names no namespace here): its half is not
    # traced, and the trace says so. (Its records are written as its daemon writes them,
    # under a lease of its own, revoked after.)
    net_id = json.loads(h.pw(0, "network", "inspect", "ov").stdout)[0]["Id"]
    far, far_ip, far_mac = "192.0.2.60", "10.211.0.60", "02:42:0a:d3:00:3c"
    lease = json.loads(_etcdctl(h, "lease", "grant", "600", "-w", "json"))["ID"]
    lease_hex = f"{lease:x}"
    record = RemoteEndpoint(id="e" * 64, network_id=net_id, container_id="f" * 64,
                            name="elsewhere", aliases=(),
                            addresses=(ipaddress.ip_interface(f"{far_ip}/24"),),
                            mac=far_mac, host=ipaddress.ip_address(far))
    try:
        _etcdctl(h, "put", "--lease", lease_hex, f"/portway/hosts/{far}",
                 json.dumps({"address": far, "instance": "x", "host_netns": "",
                             "joined": "2026-01-01T00:00:00Z"}))
        _etcdctl(h, "put", "--lease", lease_hex, f"/portway/endpoints/{net_id}/{'e' * 64}",
                 record.encode())
        wait_for(lambda: (far_mac, far) in _fdb(h.names[0], dev), "A programs elsewhere")
        data = json.loads(h.pw(0, "trace", "--json", "web-a", "elsewhere:80").stdout)
        assert data["verdict"] == "leaves-host", data
        assert data["remote"] == {"host": far, "netns": "", "traced": False, "why": (
            f"host {far} runs in the root namespace of its own machine, which cannot be "
            "observed from here")}, data
        assert f"(not traced there: host {far} runs in the root namespace" in \
            data["summary"], data
    finally:
        _etcdctl(h, "lease", "revoke", lease_hex)
    wait_for(lambda: (far_mac, far) not in _fdb(h.names[0], dev), "A forgets elsewhere")


# Connects to ADDRESS:PORT and says how it went: "refused" means a RST came back.
TRY = ("import socket, sys\n"
       "try:\n"
       "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 1.0); print('open')\n"
       "except ConnectionRefusedError: print('refused')\n"
       "except OSError as e: print(type(e).__name__)\n")


def test_internal_connect_disconnect_and_aliases(h: Hosts) -> None:
    dev = _network(h, "--internal", subnet="10.212.0.0/24")
    h.pw(0, "run", "-d", "--name", "in-a", "--network", "ov", "--network-alias", "front",
         "--", "python3", "-c", SERVE)
    h.pw(2, "run", "-d", "--name", "in-c", "--network", "ov", "--", "python3", "-c", SERVE)
    ip_a = _address(h, 0, "in-a")
    # An internal network: across hosts, yes (by name and by alias, from C) ...
    out = h.pw(2, "exec", "in-c", "--", "python3", "-c", CONNECT, "front").stdout
    assert out.startswith("HTTP/1.0 200"), out
    assert h.pw(2, "exec", "in-c", "--", "dig", "+short", "front").stdout.split() == [ip_a]
    # ... but nothing leaves: the outside (whose port 80 would answer with a RST) is
    # not reached from either host.
    for i, name in ((0, "in-a"), (2, "in-c")):
        got = h.pw(i, "exec", name, "--", "python3", "-c", TRY, h.sb.outside_addr,
                   "80").stdout.strip()
        assert got != "refused" and got != "open", (name, got)

    # A running container on B joins the network later, with an alias there.
    h.pw(1, "network", "create", "--subnet", "10.213.0.0/24", "local")
    h.pw(1, "run", "-d", "--name", "late-b", "--network", "local", "--",
         "python3", "-c", SERVE)
    h.pw(1, "network", "connect", "--alias", "db", "ov", "late-b")
    ip_b, mac_b = _address(h, 1, "late-b"), _mac(h, 1, "late-b")
    for i in (0, 2):
        wait_for(lambda i=i: (mac_b, ADDRS[1]) in _fdb(h.names[i], dev),
                 f"host {'ABC'[i]} programs late-b")
    for i, name in ((0, "in-a"), (2, "in-c")):
        for target in ("late-b", "db"):
            out = h.pw(i, "exec", name, "--", "python3", "-c", CONNECT, target).stdout
            assert out.startswith("HTTP/1.0 200"), (name, target, out)
        assert h.pw(i, "exec", name, "--", "dig", "+short", "db").stdout.split() == [ip_b]
    seen = json.loads(h.pw(2, "network", "inspect", "ov").stdout)[0]["Containers"]
    assert {v["Name"] for v in seen.values()} == {"in-a", "in-c", "late-b"}

    # And leaves it: its entries and its names go from the other hosts.
    h.pw(1, "network", "disconnect", "ov", "late-b")
    for i in (0, 2):
        wait_for(lambda i=i: (mac_b, ADDRS[1]) not in _fdb(h.names[i], dev),
                 f"host {'ABC'[i]} forgets late-b")
        assert ip_b not in {n[0] for n in _neigh(h.names[i], dev)}
    wait_for(lambda: not h.pw(0, "exec", "in-a", "--", "dig", "+short", "db").stdout.strip(),
             "the alias db is gone from A's DNS")
    h.pw(1, "rm", "-f", "late-b")
    h.pw(1, "network", "rm", "local")


def test_a_container_name_is_one_containers_on_a_network(h: Hosts) -> None:
    _network(h, subnet="10.214.0.0/24")
    h.pw(0, "run", "-d", "--name", "api", "--network", "ov", "--", "sleep", "3600")
    wait_for(lambda: "api" in h.pw(1, "network", "inspect", "ov").stdout, "B sees api")
    before = json.loads(h.pw(1, "ps", "-a", "--json").stdout)
    cp = h.pw(1, "run", "-d", "--name", "api", "--network", "ov", "--", "sleep", "3600",
              check=False)
    assert cp.returncode != 0, cp.stdout
    assert cp.stderr.strip().splitlines() == [
        f"portway: error: container name 'api' is in use on network ov by a container on "
        f"host {ADDRS[0]}; choose another name, or remove that container there"], cp.stderr
    assert json.loads(h.pw(1, "ps", "-a", "--json").stdout) == before
    # A container of that name on B joining the network: refused likewise.
    h.pw(1, "network", "create", "--subnet", "10.215.0.0/24", "local")
    h.pw(1, "run", "-d", "--name", "api", "--network", "local", "--", "sleep", "3600")
    cp = h.pw(1, "network", "connect", "ov", "api", check=False)
    assert cp.returncode != 0 and "container name 'api' is in use on network ov" in \
        cp.stderr, cp.stderr
    assert "ov" not in json.loads(h.pw(1, "inspect", "api").stdout)[0][
        "NetworkSettings"]["Networks"]
    # Once A's is gone, the name is free on the network for B's.
    h.pw(0, "rm", "-f", "api")
    h.pw(1, "network", "connect", "ov", "api")
    h.pw(1, "rm", "-f", "api")
    h.pw(1, "network", "rm", "local")


def _etcdctl(h: Hosts, *args: str) -> str:
    return sh("ip", "netns", "exec", h.underlay, "etcdctl", "--endpoints",
              f"http://{etcd_member_address(0)}:2379", *args).stdout


def test_a_host_cut_off_past_its_lease_and_a_compaction_comes_back(h: Hosts) -> None:
    dev = _network(h, subnet="10.216.0.0/24")
    for i, name in ((0, "web-a"), (1, "old-b"), (2, "web-c")):
        h.pw(i, "run", "-d", "--name", name, "--network", "ov", "--", "python3", "-c", SERVE)
    ip_c, mac_c = _address(h, 2, "web-c"), _mac(h, 2, "web-c")
    mac_old = _mac(h, 1, "old-b")
    wait_for(lambda: (mac_old, ADDRS[1]) in _fdb(h.names[2], dev), "C programs old-b")
    wait_for(lambda: (mac_c, ADDRS[2]) in _fdb(h.names[0], dev), "A programs web-c")
    pid_c = int(h.pw(2, "daemon", "status").stdout.split("pid ")[1].split(",")[0])

    # C's one etcd member stops: C is cut off from the store (the other two members
    # keep the cluster going). C's lease runs out: the others forget its container.
    stop_etcd(h.etcd[2])
    wait_for(lambda: (mac_c, ADDRS[2]) not in _fdb(h.names[0], dev),
             "A forgets the cut-off host's container", timeout=int(TTL) * 5)
    # Meanwhile the cluster changes (a container comes, another goes), and etcd is
    # compacted past every one of those changes: C cannot catch up from its events.
    # (new-a's address is asked for: the lowest free one is web-c's, free since C's
    # lease ran out, and C would find it taken when it comes back.)
    h.pw(0, "run", "-d", "--name", "new-a", "--network", "ov", "--ip", "10.216.0.100", "--",
         "python3", "-c", SERVE)
    h.pw(1, "rm", "-f", "old-b")
    status = json.loads(_etcdctl(h, "endpoint", "status", "-w", "json"))
    revision = int(status[0]["Status"]["header"]["revision"])
    _etcdctl(h, "compact", str(revision))
    assert h.pw(2, "daemon", "status").stdout.count("is unreachable") == 1

    # C's member back: C joins again under a new lease, takes its container's address
    # and name back, lists the store anew (its old revision is compacted) and follows
    # it; the same daemon (no restart), and web-c reachable again from the others.
    h.etcd[2] = restart_etcd_member(h.underlay, h.etcd_dir, 2)
    wait_for(lambda: "is joined" in h.pw(2, "daemon", "status").stdout, "C joins again",
             timeout=30)
    for i in (0, 1):
        wait_for(lambda i=i: (mac_c, ADDRS[2]) in _fdb(h.names[i], dev),
                 f"host {'ABC'[i]} programs web-c again")
    mac_new = _mac(h, 0, "new-a")
    wait_for(lambda: (mac_new, ADDRS[0]) in _fdb(h.names[2], dev), "C programs new-a")
    wait_for(lambda: (mac_old, ADDRS[1]) not in _fdb(h.names[2], dev), "C forgets old-b")
    out = h.pw(0, "exec", "web-a", "--", "python3", "-c", CONNECT, "web-c").stdout
    assert out.startswith("HTTP/1.0 200"), out
    out = h.pw(2, "exec", "web-c", "--", "python3", "-c", CONNECT, "new-a").stdout
    assert out.startswith("HTTP/1.0 200"), out
    assert h.pw(0, "exec", "web-a", "--", "dig", "+short", "web-c").stdout.split() == [ip_c]
    assert "old-b" not in h.pw(2, "network", "inspect", "ov").stdout
    assert f"pid {pid_c}," in h.pw(2, "daemon", "status").stdout


def _cut_off_c(h: Hosts, dev: str, mac_c: str) -> None:
    """C's one etcd member stopped until C's lease ran out: A has forgotten web-c."""
    stop_etcd(h.etcd[2])
    wait_for(lambda: (mac_c, ADDRS[2]) not in _fdb(h.names[0], dev),
             "A forgets the cut-off host's container", timeout=int(TTL) * 5)


def _c_back(h: Hosts) -> None:
    h.etcd[2] = restart_etcd_member(h.underlay, h.etcd_dir, 2)
    wait_for(lambda: "is joined" in h.pw(2, "daemon", "status").stdout, "C joins again",
             timeout=30)


def test_a_host_back_after_its_containers_name_was_taken_says_so_and_claims_it_again(
        h: Hosts) -> None:
    dev = _network(h, subnet="10.217.0.0/24")
    for i, name in ((0, "web-a"), (2, "web-c")):
        h.pw(i, "run", "-d", "--name", name, "--network", "ov", "--", "python3", "-c", SERVE)
    ip_c, mac_c = _address(h, 2, "web-c"), _mac(h, 2, "web-c")
    wait_for(lambda: (mac_c, ADDRS[2]) in _fdb(h.names[0], dev), "A programs web-c")
    log = h.states[2] / "portwayd.log"

    # C is cut off past its lease; B runs a container of web-c's name meanwhile (on
    # another address). A name cannot be picked anew: web-c waits for it.
    _cut_off_c(h, dev, mac_c)
    h.pw(1, "run", "-d", "--name", "web-c", "--network", "ov", "--ip", "10.217.0.150",
         "--", "sleep", "600")
    _c_back(h)
    # web-c is not registered over B's claim, and C says so: the log, inspect, ps.
    wait_for(lambda: "web-c is not reachable from other hosts" in log.read_text(),
             "C's log names web-c")
    conflict = json.loads(h.pw(2, "inspect", "web-c").stdout)[0]["NetworkSettings"][
        "Networks"]["ov"]["ClusterConflict"]
    assert conflict == (f"its name on network ov was taken by a container on host "
                        f"{ADDRS[1]} while this host was away from the cluster store")
    (row,) = [line for line in h.pw(2, "ps").stdout.splitlines() if "web-c" in line]
    assert "(unreachable from other hosts)" in row, row
    assert (mac_c, ADDRS[2]) not in _fdb(h.names[0], dev)
    assert _address(h, 2, "web-c") == ip_c  # (its address is kept)

    # B's container goes: C claims web-c's address and name again, without a restart,
    # and A reaches web-c by name.
    h.pw(1, "rm", "-f", "web-c")
    wait_for(lambda: (mac_c, ADDRS[2]) in _fdb(h.names[0], dev), "C claims web-c again",
             timeout=30)
    assert "web-c is registered again on network ov" in log.read_text()
    out = h.pw(0, "exec", "web-a", "--", "python3", "-c", CONNECT, "web-c").stdout
    assert out.startswith("HTTP/1.0 200"), out
    assert "unreachable" not in h.pw(2, "ps").stdout
    assert "ClusterConflict" not in h.pw(2, "inspect", "web-c").stdout


def test_a_host_back_after_its_address_was_taken_gives_its_container_a_new_one(
        h: Hosts) -> None:
    dev = _network(h, subnet="10.219.0.0/24")
    for i, name in ((0, "web-a"), (2, "web-c")):
        h.pw(i, "run", "-d", "--name", name, "--network", "ov", "--", "python3", "-c", SERVE)
    # A container on C that asked for its address (--ip) keeps it, and waits for it.
    h.pw(2, "run", "-d", "--name", "fixed-c", "--network", "ov", "--ip", "10.219.0.50",
         "--", "sleep", "600")
    ip_c, mac_c = _address(h, 2, "web-c"), _mac(h, 2, "web-c")
    wait_for(lambda: (mac_c, ADDRS[2]) in _fdb(h.names[0], dev), "A programs web-c")
    log = h.states[2] / "portwayd.log"

    # C is cut off past its lease; B takes web-c's address (and fixed-c's) meanwhile.
    _cut_off_c(h, dev, mac_c)
    h.pw(1, "run", "-d", "--name", "taker", "--network", "ov", "--ip", ip_c, "--",
         "sleep", "600")
    h.pw(1, "run", "-d", "--name", "taker2", "--network", "ov", "--ip", "10.219.0.50",
         "--", "sleep", "600")
    mac_taker = _mac(h, 1, "taker")
    _c_back(h)

    # web-c is given a free address at once, while it runs (the same process): the
    # log and inspect say what changed and why; nothing says it is unreachable.
    wait_for(lambda: "web-c on network ov has a new address" in log.read_text(),
             "C gives web-c a new address")

    def settled() -> dict[str, Any]:
        data = json.loads(h.pw(2, "inspect", "web-c").stdout)[0]
        return dict(data["NetworkSettings"]["Networks"]["ov"])

    # (A join pass that read web-c before its renumbering may still mark it a moment;
    # the next pass, within seconds, registers it as it is.)
    wait_for(lambda: "ClusterConflict" not in settled(), "web-c shows no conflict",
             timeout=20)
    settings = settled()
    new_ip, new_mac = settings["IPAddress"], settings["MacAddress"]
    assert new_ip != ip_c and new_mac != mac_c, settings
    assert ipaddress.ip_address(new_ip) in ipaddress.ip_network("10.219.0.0/24")
    assert "ClusterConflict" not in settings, settings
    why = (f"its address {ip_c} on network ov was claimed by a container on host "
           f"{ADDRS[1]} while this host was away from the cluster store")
    renumbered = settings["ClusterRenumbered"]
    assert renumbered["PreviousIPAddresses"] == [ip_c], renumbered
    assert renumbered["IPAddresses"] == [new_ip] and renumbered["Reason"] == why, renumbered
    assert f"web-c on network ov has a new address, {new_ip} (was {ip_c}): {why}" in \
        log.read_text()
    (row,) = [line for line in h.pw(2, "ps").stdout.splitlines() if "web-c" in line]
    assert "unreachable" not in row, row
    # Its interface, /etc/hosts and MAC: the new ones, in the container itself.
    ns = json.loads(h.pw(2, "inspect", "web-c").stdout)[0]["NetworkSettings"]["SandboxKey"]
    got = ip_json(os.path.basename(ns), "addr", "show", "dev", "eth0")[0]
    assert [a["local"] for a in got["addr_info"] if a["family"] == "inet"] == [new_ip]
    assert got["address"] == new_mac
    hosts = h.pw(2, "exec", "web-c", "--", "cat", "/etc/hosts").stdout
    assert new_ip in hosts and ip_c not in hosts, hosts
    assert h.pw(2, "exec", "web-c", "--", "dig", "+short", "web-c").stdout.split() == [new_ip]

    # Every other host follows: A's and B's devices have its new entries (and B's
    # taker's at the old address), A's DNS answers the new address, and traffic flows
    # both ways (web-c sends from its new address: its anti-spoofing entries moved).
    for i in (0, 1):
        wait_for(lambda i=i: (new_mac, ADDRS[2]) in _fdb(h.names[i], dev),
                 f"host {'ABC'[i]} programs web-c's new MAC")
        wait_for(lambda i=i: (new_ip, new_mac) in _neigh(h.names[i], dev),
                 f"host {'ABC'[i]}'s neighbour entry of web-c's new address")
    assert (ip_c, mac_taker) in _neigh(h.names[0], dev)
    wait_for(lambda: h.pw(0, "exec", "web-a", "--", "dig", "+short", "web-c").stdout.split()
             == [new_ip], "A's DNS answers web-c's new address")
    out = h.pw(0, "exec", "web-a", "--", "python3", "-c", CONNECT, "web-c").stdout
    assert out.startswith("HTTP/1.0 200"), out
    out = h.pw(2, "exec", "web-c", "--", "python3", "-c", CONNECT, "web-a").stdout
    assert out.startswith("HTTP/1.0 200"), out
    # The default route came back with the new address.
    routes = ip_json(os.path.basename(ns), "route", "show", "default")
    assert [r["gateway"] for r in routes] == ["10.219.0.1"], routes

    # fixed-c asked for its address: it keeps it and waits, as before.
    conflict = json.loads(h.pw(2, "inspect", "fixed-c").stdout)[0]["NetworkSettings"][
        "Networks"]["ov"]
    assert conflict["IPAddress"] == "10.219.0.50", conflict
    assert conflict["ClusterConflict"] == (
        f"its address 10.219.0.50 on network ov was claimed by a container on host "
        f"{ADDRS[1]} while this host was away from the cluster store"), conflict
    assert "fixed-c is not reachable from other hosts" in log.read_text()
    assert "run it without --ip for a new address" in log.read_text()


# One UDP flow (one source port) to a published port, asked every 0.1 s; each answer
# printed as it comes.
UDP_FLOW = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.1)\n"
            "n = 0\n"
            "while True:\n"
            "    n += 1; s.sendto(str(n).encode(), (sys.argv[1], 53535))\n"
            "    try: print(s.recv(512).decode(), flush=True)\n"
            "    except OSError: pass\n"
            "    time.sleep(0.1)\n")


def test_a_renumbered_containers_published_port_follows_it_for_a_running_flow(
        h: Hosts, tmp_path: Path) -> None:
    dev = _network(h, subnet="10.221.0.0/24")
    h.pw(2, "run", "-d", "--name", "web-c", "--network", "ov", "-p", "53535:53535/udp",
         "--", "python3", "-c", SERVE)
    ip_c, mac_c = _address(h, 2, "web-c"), _mac(h, 2, "web-c")
    wait_for(lambda: (mac_c, ADDRS[2]) in _fdb(h.names[0], dev), "A programs web-c")
    log = h.states[2] / "portwayd.log"
    answers = tmp_path / "answers"
    # A client in B's host namespace keeps one flow to C's published port.
    with answers.open("w") as out:
        client = subprocess.Popen(["ip", "netns", "exec", h.names[1], "python3", "-c",
                                   UDP_FLOW, ADDRS[2]], stdout=out)
    try:
        wait_for(lambda: "echo" in answers.read_text(), "web-c answers the flow")
        # C is cut off past its lease (web-c still answers: C is on the underlay); B
        # takes web-c's address; C comes back and gives web-c a new one.
        _cut_off_c(h, dev, mac_c)
        h.pw(1, "run", "-d", "--name", "taker", "--network", "ov", "--ip", ip_c, "--",
             "sleep", "600")
        _c_back(h)
        wait_for(lambda: "web-c on network ov has a new address" in log.read_text(),
                 "C gives web-c a new address")
        seen = len(answers.read_text().splitlines())
        # The running flow's published port leads to web-c's new address: its conntrack
        # entry (which DNATs to the old one, now the taker's) is gone with the move.
        wait_for(lambda: len(answers.read_text().splitlines()) > seen + 3,
                 "the running flow reaches web-c at its new address", timeout=10)
    finally:
        client.kill()
        client.wait()


def test_trace_live_follows_the_probe_to_the_other_host(h: Hosts) -> None:
    dev = _network(h, subnet="10.218.0.0/24")
    _servers(h)
    wait_for(lambda: len(_fdb(h.names[0], dev)) == 2, "A's FDB entries")
    # B's namespace is on this machine: the probe is followed through the tunnel, B's
    # hooks are read from B, and the connection is made.
    data = json.loads(h.pw(0, "trace", "--live", "--json", "web-a", "web-b:80").stdout)
    live = data["live"]
    assert live["verdict"] == "delivered" and live["agrees"], live
    assert live["followed"] == {"host": ADDRS[1], "netns": h.names[1], "followed": True,
                                "why": ""}, live
    far = [(hop["family"], hop["table"], hop["chain"]) for hop in live["hops"]
           if hop["host"] == ADDRS[1]]
    assert ("inet", "portway", "forward") in far and ("bridge", "portway", "spoof") in far
    # Its reply too, live: through B's hooks (from web-b's port), into the tunnel, and
    # back through A's.
    ips = [_address(h, 0, "web-a"), _address(h, 1, "web-b")]
    reply = live["reply"]
    port = live["probe"]["source"].rpartition(":")[2]
    assert reply["what"] == f"tcp reply {ips[1]}:80 -> {ips[0]}:{port}", reply
    back = [(hop["host"], hop["family"], hop["table"], hop["chain"]) for hop in reply["hops"]]
    assert back[0] == (ADDRS[1], "bridge", "portway", "spoof"), back
    assert (ADDRS[1], "inet", "portway", "forward") in back, back
    assert ("", "inet", "portway", "forward") in back, back
    assert [b[0] for b in back] == sorted((b[0] for b in back), reverse=True), back
    assert reply["why"] == "" and not reply["dropped"], reply
    text = h.pw(0, "trace", "--live", "web-a", "web-b:81").stdout
    assert f"host {ADDRS[1]}: inet portway forward (forward): accept" in text, text
    assert "live verdict: no-listener" in text and "static and live agree" in text, text
    assert f"its tcp reply {ips[1]}:81 -> {ips[0]}:" in text, text  # (the RST)
    assert f"host {ADDRS[1]}: bridge portway spoof (prerouting): policy accept" in \
        text.partition("traced back:")[2], text
    data = json.loads(h.pw(0, "trace", "--live", "--json", "web-a", "web-b:53535/udp").stdout)
    assert data["live"]["verdict"] == "delivered", data["live"]
    assert ("", "inet", "portway", "forward") in [
        (hop["host"], hop["family"], hop["table"], hop["chain"])
        for hop in data["live"]["reply"]["hops"]], data["live"]["reply"]
    # A rule on B (a table of the test's own) drops web-b's answers to web-a: the
    # request arrives, and the live trace of the reply says where it ends.
    sh("ip", "netns", "exec", h.names[1], "nft", "-f", "-", input=(
        "table inet pwtest_drop {\n chain reply_drop {\n  type filter hook forward priority 0;\n"
        f"  tcp sport 80 ip daddr {ips[0]} drop\n }}\n}}\n"))
    try:
        live = json.loads(h.pw(0, "trace", "--live", "--json", "web-a",
                               "web-b:80").stdout)["live"]
    finally:
        sh("ip", "netns", "exec", h.names[1], "nft", "delete", "table", "inet", "pwtest_drop")
    assert live["verdict"] == "dropped", live
    assert live["summary"].startswith(
        f"delivered, but the reply was dropped on host {ADDRS[1]} by inet pwtest_drop "
        "reply_drop: "), live
    assert (ADDRS[1], "inet", "pwtest_drop", "reply_drop") in [
        (hop["host"], hop["family"], hop["table"], hop["chain"])
        for hop in live["reply"]["hops"]], live["reply"]
    for i in (0, 1):
        assert "portway_trace" not in sh("ip", "netns", "exec", h.names[i], "nft",
                                         "list", "tables").stdout

    # A host on another machine: the probe stops where the tunnel would leave A, and the
    # trace says so. (Its records as its daemon writes them, under a lease of its own;
    # a neighbour entry for its VTEP, so the datagram gets as far as A's uplink.)
    net_id = json.loads(h.pw(0, "network", "inspect", "ov").stdout)[0]["Id"]
    far_host, far_ip, far_mac = "192.0.2.61", "10.218.0.61", "02:42:0a:da:00:3d"
    lease_hex = f"{json.loads(_etcdctl(h, 'lease', 'grant', '600', '-w', 'json'))['ID']:x}"
    record = RemoteEndpoint(id="d" * 64, network_id=net_id, container_id="c" * 64,
                            name="elsewhere", aliases=(),
                            addresses=(ipaddress.ip_interface(f"{far_ip}/24"),),
                            mac=far_mac, host=ipaddress.ip_address(far_host))
    try:
        _etcdctl(h, "put", "--lease", lease_hex, f"/portway/hosts/{far_host}",
                 json.dumps({"address": far_host, "instance": "x", "host_netns": "",
                             "joined": "2026-01-01T00:00:00Z"}))
        _etcdctl(h, "put", "--lease", lease_hex, f"/portway/endpoints/{net_id}/{'d' * 64}",
                 record.encode())
        sh("ip", "-n", h.names[0], "neigh", "replace", far_host, "lladdr",
           "02:00:00:00:00:61", "dev", "ul0", "nud", "permanent")
        wait_for(lambda: (far_mac, far_host) in _fdb(h.names[0], dev), "A programs elsewhere")
        data = json.loads(h.pw(0, "trace", "--live", "--json", "web-a",
                               "elsewhere:80").stdout)
        live = data["live"]
        assert live["verdict"] == "leaves-host" and live["agrees"], live
        assert str(live["stopped_at"]).startswith("stop"), live
        assert live["summary"].startswith(
            f"reached the host's edge inside the VXLAN tunnel to host {far_host}; stopped "
            f"there by the trace, not followed there (host {far_host} runs in the root "
            "namespace of its own machine"), live
        assert live["followed"]["followed"] is False, live
    finally:
        sh("ip", "-n", h.names[0], "neigh", "del", far_host, "dev", "ul0", check=False)
        _etcdctl(h, "lease", "revoke", lease_hex)
    wait_for(lambda: (far_mac, far_host) not in _fdb(h.names[0], dev), "A forgets elsewhere")
