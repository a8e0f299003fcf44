"""Write docs/overlay.md from a real run (make overlay-doc), or show it (make demo-cluster).

It builds two throwaway hosts (network namespaces, each with its own portwayd and state
dir) on an underlay bridge, starts a real etcd there, makes an overlay network from one
host, runs a container on each, and records what portway, the kernel and real
connections say. Everything is removed after, etcd stopped by its pid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portway.testbed import (
    ETCD_ADDR,
    add_netns,
    del_netns,
    make_underlay,
    start_etcd,
    stop_etcd,
    underlay_address,
)

ROOT = Path(__file__).resolve().parent.parent
PORTWAY = os.path.join(os.path.dirname(sys.executable), "portway")
STORE = f"etcd://{ETCD_ADDR}:2379"
GET = ("import sys, urllib.request as u\n"
       "try: print(u.urlopen(sys.argv[1], timeout=3).status)\n"
       "except Exception as e: print('fail', type(e).__name__)\n")


class Doc:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.hosts = [f"pwdocov-{tag}-a", f"pwdocov-{tag}-b"]
        self.underlay = f"pwdocov-{tag}-ul"
        self.tmp = tempfile.mkdtemp(prefix="portway-ov-")
        self.states = [os.path.join(self.tmp, n) for n in ("a", "b")]
        self.out: list[str] = []
        self.failures: list[str] = []

    def argv(self, i: int, *args: str) -> list[str]:
        return [PORTWAY, "--host-netns", self.hosts[i], "--state-dir", self.states[i], *args]

    def env(self, i: int) -> dict[str, str]:
        return dict(os.environ, PORTWAY_CLUSTER_STORE=STORE,
                    PORTWAY_ADVERTISE_ADDRESS=underlay_address(i))

    def run(self, argv: list[str], shown: str, env: dict[str, str] | None = None,
            ok: bool = True) -> str:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        text = (cp.stdout + cp.stderr).rstrip()
        if ok and cp.returncode != 0:
            raise SystemExit(f"{shown} failed: {text}")
        self.out += ["```", f"$ {shown}", *([text] if text else []), "```", ""]
        return text

    def pw(self, i: int, *args: str, ok: bool = True) -> str:
        return self.run(self.argv(i, *args), f"(host {'ab'[i]}) portway " + " ".join(args),
                        self.env(i), ok)

    def quiet(self, i: int, *args: str) -> str:
        return subprocess.run(self.argv(i, *args), capture_output=True, text=True,
                              check=True, timeout=120, env=self.env(i)).stdout

    def kernel(self, i: int, *args: str) -> str:
        return self.run(["ip", "netns", "exec", self.hosts[i], *args],
                        f"(host {'ab'[i]}) " + " ".join(args))

    def text(self, *paragraphs: str) -> None:
        for p in paragraphs:
            self.out += [p, ""]

    def check(self, claim: str, holds: bool) -> None:
        if not holds:
            self.failures.append(claim)

    def wait(self, what: str, cond: object, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {what}")
            time.sleep(0.1)


def inspect_ip(d: Doc, i: int, name: str) -> str:
    data = json.loads(d.quiet(i, "inspect", name))[0]
    return str(data["NetworkSettings"]["Networks"]["multi"]["IPAddress"])


def scenario(d: Doc) -> None:
    d.text("# Overlay networks: containers on several hosts, one network",
           "An overlay network spans the hosts of a cluster: each host runs its own "
           "portwayd, and they share what must be shared — the networks, their VXLAN "
           "network identifiers (VNIs), address allocations and endpoints (address, MAC, "
           "host) — in etcd, an existing distributed store. On each host the network is "
           "a local bridge (holding the gateway, as a bridge network's) with a VXLAN "
           "device as one of its ports. The VXLAN device never learns and never floods: "
           "its FDB entries (which MAC lives behind which host) and neighbour entries "
           "(which MAC an address has, so that ARP and ND are answered on the host "
           "itself) are programmed from the store.",
           "This page is written by `make overlay-doc` from a real run: two hosts "
           "(network namespaces, each with its own portwayd and state dir) on an "
           "underlay bridge (192.0.2.0/24), with Debian's etcd 3.4 on 192.0.2.100. "
           "`make demo-cluster` runs the same and prints it.",
           "## Joining a cluster",
           "Each host's portwayd is started with the cluster store and the address its "
           "VXLAN traffic uses (the underlay address):",
           "```\nportwayd --cluster-store etcd://192.0.2.100:2379 --advertise-address "
           "192.0.2.1\n```",
           "or, where the CLI starts the daemon on first use, with "
           "`PORTWAY_CLUSTER_STORE` and `PORTWAY_ADVERTISE_ADDRESS` in its environment. "
           "The state dir remembers both: a daemon restarted without them stays in its "
           "cluster. The advertise address may be IPv6: the hosts' tunnels then run over "
           "IPv6, whichever family etcd is reached by. One that is not an address of the "
           "host is refused in one line (the other hosts would send its tunnel traffic "
           "nowhere), as Docker's swarm refuses one, and so is an IPv6 link-local one "
           "(no VXLAN device takes it); the one the state dir remembers "
           "is not checked, given again or not (after a reboot it may come up after "
           "the daemon, which serves the bridge networks meanwhile). Several etcd "
           "members are given "
           "comma-separated "
           "(`etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379`); each request goes to "
           "the next one when one does not answer. `--cluster-ttl SECONDS` (or "
           "`PORTWAY_CLUSTER_TTL`; 2 to 3600, 10 by default, also remembered) sets how "
           "long this host's lease lasts unrenewed, that is how soon the others forget "
           "a host that died. `daemon status` shows the cluster:")
    d.quiet(0, "daemon", "start")
    d.quiet(1, "daemon", "start")
    d.wait("both hosts joined", lambda: underlay_address(1) in d.quiet(0, "daemon", "status"))
    status = d.pw(0, "daemon", "status")
    d.check("status shows the store joined", f"cluster store {STORE}: this host" in status
            and "is joined" in status)
    d.text("Each host keeps its presence and its endpoints under an etcd lease (10 s "
           "unless `--cluster-ttl` says otherwise) "
           "that it renews every third of that: a host that dies (its daemon gone, "
           "nothing renewing the lease) is forgotten by every other host when the lease "
           "expires, with its endpoints, and its addresses return to the pool. Killing "
           "portwayd alone stops no container; a daemon that starts again takes its "
           "endpoints under its new lease before the old one runs out. A host cut off "
           "from the store for longer than its lease (the others have forgotten its "
           "containers meanwhile) joins again when the store answers, takes its "
           "containers' addresses and names back, and they are reachable again, without "
           "a restart. While it tries to join again, the daemon serves every other "
           "command (`ps`, `inspect`, a bridge network's `run`): a store that grants a "
           "lease but will not take the host's record (it refuses writes, or stops "
           "answering mid-way) fails that attempt, in the log, without holding the "
           "daemon's lock, and the daemon tries again every half second; so does an "
           "attempt whose new lease ran out while it waited for the daemon's lock (a "
           "command that held it past the lease's TTL), and one under way when the "
           "daemon stops goes no further than the host's record, whose lease it revokes. "
           "The daemon's stop waits for that, for at most 6 s (as long as the store's "
           "client retries one request); a join the store holds up longer is abandoned, "
           "and the client sends nothing more once the daemon has stopped (a request "
           "already on its way is not taken back: what it writes is under the join's "
           "lease, which nothing renews, and goes with it within the lease's TTL). "
           "Where another host took a container's address meanwhile, the "
           "container is given a free one at once, while it runs (see below). Where "
           "another host took its name, or the address was the user's own (`--ip`), "
           "neither can be picked anew: that container is not registered over it, `ps` "
           "shows it `Up ... (unreachable from other hosts)`, `inspect` says why and "
           "which host holds it (`NetworkSettings.Networks.NET.ClusterConflict`), the "
           "daemon's log says it once, and the host claims the name and address again "
           "by itself, within seconds, once the other container is gone. Where "
           "another host removed the network meanwhile (it saw no container on it), the "
           "container is not registered on it either: it is shown the same way, and "
           "waits to be disconnected or removed.",
           "## One network for every host",
           "`network create --driver overlay` on any host creates the network for all: "
           "its name and a VNI are claimed in one etcd transaction (of two hosts that "
           "create the same name at once, exactly one wins), and every host makes its "
           "own bridge and VXLAN device as it sees the network appear. The MTU is the "
           "underlay's less the 50 bytes VXLAN adds (70 between IPv6 VTEPs, whose outer "
           "header is 20 bytes longer). Without `--subnet` the network gets a "
           "free /24 of 10.0.0.0/8, Docker's pool "
           "for overlay networks, kept apart from the pools of the hosts' own bridge "
           "networks (172.17-31.0.0/16, 192.168.0.0/16); with `--ipv6`, a /64 of the "
           "creating host's unique local /48. A subnet free on the host that creates the "
           "network may still be used on another (by one of its own networks, or a route): "
           "that host does not make the network, says why once in its log, and `daemon "
           "status` and `doctor` there show it (`overlay network NAME is not made on this "
           "host: its "
           "subnet 10.210.0.0/24 overlaps network localb of this host; ...`) until the "
           "network or the local one goes. A host's own processes reach the network's "
           "containers that run on it, not those on other hosts: they connect from the "
           "network's gateway address, which every host's bridge holds, so the answer "
           "stays on the container's host (`portway trace host ADDR:PORT` says so). "
           "Connect from a container on the network, or to a port the container publishes "
           "on its host.")
    net_id = d.pw(0, "network", "create", "--driver", "overlay", "--subnet",
                  "10.200.0.0/24", "multi").strip()
    d.wait("B has the network", lambda: "multi" in d.quiet(1, "network", "ls"))
    d.pw(1, "network", "ls")
    dup = d.pw(1, "network", "create", "--driver", "overlay", "--subnet", "10.201.0.0/24",
               "multi", ok=False)
    d.check("a second create of the name fails", "already exists" in dup)
    dev = f"pwvx-{net_id[:10]}"
    link = d.kernel(1, "ip", "-d", "link", "show", dev)
    d.check("vxlan attributes", "dstport 4789" in link and "nolearning" in link
            and "proxy" in link and "mtu 1450" in link)
    d.text("## Containers on two hosts",
           "Addresses come from the network's subnet as on a bridge network. Each is "
           "claimed in one etcd transaction together with the container's name on the "
           "network and the endpoint's record, from which every other host programs its "
           "FDB and neighbour entries and its DNS records (one write per container), so "
           "no two hosts ever hand out one address. The transaction is made once the "
           "container's interface is on the bridge and its process runs: a host that can "
           "resolve the name can reach the container (a client never sends its first SYN "
           "into a path that is not there yet, which would cost it TCP's one-second "
           "retransmission). Of two hosts that pick one address at the same moment, the "
           "second to claim it sets its container up again with the next free address; "
           "an address asked for (`--ip`) is refused there in one line instead. The host "
           "that lost such a race skips that address for 10 s where it picks one (its "
           "view of the store may not show the winner's record yet); an address asked "
           "for is checked with the store itself, so `--ip` with it is given as soon as "
           "the other host's container is gone.")
    d.pw(0, "run", "-d", "--name", "web-a", "--network", "multi", "--",
         "python3", "-m", "http.server", "80")
    d.pw(1, "run", "-d", "--name", "web-b", "--network", "multi", "--",
         "python3", "-m", "http.server", "80")
    inspect = json.loads(d.quiet(0, "network", "inspect", "multi"))[0]
    d.check("inspect shows both", {v["Name"] for v in inspect["Containers"].values()}
            == {"web-a", "web-b"})
    d.pw(0, "network", "inspect", "-f",
         "{{range .Containers}}{{.Name}}: {{.IPv4Address}} on {{.Host}}; {{end}}", "multi")
    d.text("What the hosts share is in etcd, under `/portway/`: the hosts (under their "
           "leases), the network with its name and VNI, each address claimed and each "
           "endpoint (its host's under that host's lease):")
    keys = d.run(["ip", "netns", "exec", d.underlay, "sh", "-c",
                  f"etcdctl --endpoints http://{ETCD_ADDR}:2379 get --prefix --keys-only "
                  "/portway/ | grep ."],
                 "etcdctl get --prefix --keys-only /portway/ | grep .")
    d.check("keys", "/portway/ips/" in keys and "/portway/endpoints/" in keys)
    time.sleep(1)
    d.text("Host A's VXLAN device knows where web-b is, and what its MAC is, from the "
           "store:")
    fdb = d.kernel(0, "bridge", "fdb", "show", "dev", dev)
    d.check("fdb dst B", f"dst {underlay_address(1)}" in fdb)
    d.kernel(0, "ip", "neigh", "show", "dev", dev)
    d.text("`portway show` draws the VXLAN device beside the bridge, and the containers "
           "on other hosts with whether the device has their entries (`MISSING` where "
           "not: `portway doctor` lists the difference, `portway gc` reprograms it):")
    shown = d.pw(0, "show")
    d.check("show has the vxlan", f"vxlan {dev}" in shown and "fdb + neighbour" in shown)
    d.text("`portway trace` follows a connection across the hosts. On this host: the "
           "VXLAN device's neighbour entry answers ARP, its FDB entry names the remote "
           "VTEP, then encapsulation and the underlay route. A container on another host "
           "is traced by name (the cluster store says where it is). Then the other "
           "host's half, where that host can be observed from here (its host namespace, "
           "which its record in the store names, is on this machine and holds the VTEP "
           "address): the datagram through its prerouting and input hooks, decapsulated "
           "by its device of that VNI into its bridge, its hooks and the container's "
           "own, up to the socket. The verdict is the far end's. Where the other host "
           "cannot be observed (another machine), the trace ends where the packet leaves "
           "this host and says why; `portway trace` on that host traces its half.")
    traced = d.pw(0, "trace", "web-a", "web-b:80")
    d.check("trace reaches web-b on host b", "-- on host 192.0.2.2" in traced and
            "verdict: delivered: delivered to container web-b" in traced)
    d.text("`trace --live` sends one real probe and reads the kernel's own trace of it. "
           "Where the other host can be observed from here, the probe is followed through "
           "the tunnel: the trace tables and a listener are set up in that host's "
           "namespace too, its hooks are listed after this host's, and each half is "
           "compared with its static half. Its reply is traced live too: from the far "
           "container's port through that host's hooks, into the tunnel, and back "
           "through this host's (the static trace does not walk the reply of a flow "
           "conntrack does not track, so these hops are the kernel's alone); a reply "
           "dropped on the way is named with the rule and host that dropped it, and where "
           "no hook saw a reply the output says where the live view of it stops. (Where "
           "the other host cannot be observed, the probe is stopped in the "
           "egress hook of the interface the tunnel would leave by, and the live verdict "
           "says it stopped inside the tunnel to that host, and why it was not followed.)")
    live = d.pw(0, "trace", "--live", "web-a", "web-b:80")
    d.check("the live probe is followed to host b",
            "host 192.0.2.2: inet portway forward (forward): accept" in live and
            "static and live agree" in live and "live verdict: delivered" in live)
    d.check("its reply is traced back through both hosts",
            "traced back:" in live and "host 192.0.2.2: bridge portway spoof (prerouting): "
            "policy accept" in live.partition("traced back:")[2])
    d.text("`portway graph` draws the VXLAN device as a port of the network's bridge, "
           "and each other host's VTEP with its containers, the tunnel between them "
           "(red and dashed where the device lacks their entries); a traced path goes "
           "through the tunnel to the other host. Its nodes for the tunnel:")
    dot = d.run(["sh", "-c", " ".join(d.argv(0, "graph")) + " | grep -e '\"vx:' "
                 "-e '\"vtep:'"], "(host a) portway graph | grep -e '\"vx:' -e '\"vtep:'",
                d.env(0))
    d.check("graph has the vtep", f"vtep:{net_id}:192.0.2.2" in dot)
    d.text("Containers reach each other by address and by name: the DNS server on each "
           "host answers the names of the containers on every host.")
    got = d.run(d.argv(0, "exec", "web-a", "--", "python3", "-c", GET, "http://web-b/"),
                "(host a) portway exec web-a -- get http://web-b/", d.env(0))
    d.check("A reaches B by name", got.strip() == "200")
    got = d.run(d.argv(1, "exec", "web-b", "--", "python3", "-c", GET, "http://web-a/"),
                "(host b) portway exec web-b -- get http://web-a/", d.env(1))
    d.check("B reaches A by name", got.strip() == "200")
    d.text("A container name is one container's on an overlay network, whichever host "
           "runs it (its DNS name is one): the name is claimed in the same etcd "
           "transaction as the address.")
    taken = d.pw(1, "run", "-d", "--name", "web-a", "--network", "multi", "--",
                 "sleep", "60", ok=False)
    d.check("the name is taken", "is in use on network multi by a container on host "
            "192.0.2.1" in taken)
    d.text("## A host that comes back",
           "Host B is cut off from the store (here a blackhole route to etcd on B) for "
           "longer than its lease: A forgets web-b, and its address is free on A's "
           "side. A container on A takes it meanwhile:")
    ip_b = inspect_ip(d, 1, "web-b")
    subprocess.run(["ip", "-n", d.hosts[1], "route", "add", "blackhole", f"{ETCD_ADDR}/32"],
                   check=True)
    d.wait("A forgets web-b", lambda: "web-b" not in d.quiet(0, "network", "inspect",
                                                             "multi"), timeout=40)
    d.pw(0, "run", "-d", "--name", "taker", "--network", "multi", "--ip", ip_b, "--",
         "sleep", "600")
    subprocess.run(["ip", "-n", d.hosts[1], "route", "del", "blackhole", f"{ETCD_ADDR}/32"],
                   check=True)
    log = Path(d.states[1]) / "portwayd.log"
    d.wait("B gives web-b a new address", lambda: "web-b on network multi has a new address"
           in log.read_text(), timeout=40)
    d.text("When B reaches the store again, it joins under a new lease and finds web-b's "
           "address taken: web-b gets the lowest free address instead, claimed in one "
           "etcd transaction as any address, while it runs. Its interface (address, and "
           "the MAC derived from it; the routes are kept), its anti-spoofing entries, "
           "published ports, `/etc/hosts` and DNS records follow (a flow to a published "
           "port that was running goes on to the new address: B's conntrack entries of "
           "the old one are dropped), and every other host "
           "programs its new FDB and neighbour entries from its record. B's log says "
           "what changed:")
    line = d.run(["grep", "-o", "web-b on network multi has a new address.*", str(log)],
                 "(host b) grep -o 'web-b on network multi has a new address.*' "
                 "portwayd.log")
    d.check("the log line names the taker's host", "host 192.0.2.1" in line)
    d.text("and so does `inspect` (`ClusterRenumbered`, until the daemon restarts):")
    shown = d.pw(1, "inspect", "-f",
                 "{{json .NetworkSettings.Networks.multi.ClusterRenumbered}}", "web-b")
    d.check("inspect shows the old address", f'"PreviousIPAddresses":["{ip_b}"]' in shown)
    d.wait("A has web-b again", lambda: "web-b" in d.quiet(0, "network", "inspect",
                                                           "multi"))
    d.pw(0, "network", "inspect", "-f",
         "{{range .Containers}}{{.Name}}: {{.IPv4Address}} on {{.Host}}; {{end}}", "multi")
    d.wait("A's DNS answers web-b's new address",
           lambda: d.quiet(0, "exec", "web-a", "--", "dig", "+short", "web-b").strip() not in
           ("", ip_b))
    got = d.run(d.argv(0, "exec", "web-a", "--", "python3", "-c", GET, "http://web-b/"),
                "(host a) portway exec web-a -- get http://web-b/", d.env(0))
    d.check("A reaches web-b at its new address", got.strip() == "200")
    d.quiet(0, "rm", "-f", "taker")
    d.text("## What fails, and how",
           "A change needs the store: when etcd cannot be reached, `network create`, "
           "`run` on an overlay network and `network rm` fail with one line and change "
           "nothing, while the traffic between the hosts goes on (the kernel keeps its "
           "entries). That holds as well when etcd stops answering in the middle of a "
           "`run`, `start` or `network connect`, before its claim and record are "
           "written: the command fails with that line and is undone (no container runs "
           "here that other hosts can neither reach nor resolve), and whatever that "
           "transaction may have written (its answer lost) is removed within seconds of "
           "etcd's return. The "
           "watch that keeps each host in step follows the store from a "
           "revision; after a compaction or a lost connection it lists everything again "
           "and brings the kernel in step, touching only the entries that differ (a "
           "restarted daemon reprograms nothing). A watch that sees no event for 30 s is "
           "renewed the same way, so each host lists the store at least that often; "
           "each such pass reads the VXLAN devices' entries and compares them with the "
           "store without holding the daemon's lock (a `run -d` meanwhile does not wait "
           "for it), and takes the lock only to apply what differs; "
           "`portway doctor` compares each VXLAN device's entries with the store, and "
           "`portway gc` reprograms what differs. The entries go to the kernel in "
           "batches of netlink requests (a host that forgets 1,000 endpoints removes "
           "their 2,000 entries in one pass). A network is removed only when no host "
           "has containers on it (of a `network rm` and a `run` on another host at the "
           "same moment, exactly one wins: the run's claim needs the network in the "
           "store, and the removal is made only while no container was recorded on it "
           "since it looked):")
    d.pw(0, "rm", "-f", "web-a")
    busy = d.pw(0, "network", "rm", "multi", ok=False)
    d.check("rm refused for B's container", "web-b (on 192.0.2.2)" in busy)
    d.pw(1, "rm", "-f", "web-b")
    d.pw(0, "network", "rm", "multi")
    d.wait("B drops the network", lambda: "multi" not in d.quiet(1, "network", "ls"))
    d.text("## Containers send no tunnel traffic",
           "A host hands what arrives on UDP 4789 to the overlay network of the VNI in "
           "its header, trusting that only another host's VTEP sends there. So no "
           "container sends VXLAN to a member of the cluster: a container's datagram to "
           "its own host's port 4789 is dropped in `input`, and one to another member's "
           "VTEP (which would leave masqueraded to this host's address, looking like its "
           "tunnel traffic) in `forward`, by the sets `members` and `members6` of every "
           "member's `--advertise-address`, which each daemon keeps in step with the "
           "hosts that join and leave (docs/firewall.md). As the kernel's VXLAN socket "
           "takes the port on every address of a host, a member also drops VXLAN to its "
           "own addresses other than its VTEP (a second address of it would otherwise be "
           "a way in that no other member knows to stop). A container's own VXLAN to "
           "other addresses (kind, flannel) passes.")
    d.text("## Not yet",
           "Published ports and outbound traffic of an overlay network go through the "
           "local host, as on a bridge network. A container's name that another host "
           "took while its own host was cut off is not given up: that container waits "
           "for it (names are the user's, and cannot be picked anew). Cross-host TCP "
           "throughput, against a bare VXLAN path between the same hosts, is measured in "
           "BENCHMARKS.md. Nothing of it "
           "is tracked: the VXLAN between the hosts' VTEPs (UDP 4789 to or from the "
           "`--advertise-address`) is marked `notrack` in the raw-priority chains "
           "`guard` and `guard_out`, and the frames between the network's containers "
           "in its `src-` chain (docs/firewall.md), so no conntrack entry is made or "
           "looked up for either, on either host. What is left is the rules a frame "
           "meets: on the sending host 3 rules of `bridge portway` (2 hash lookups: "
           "its EtherType, and its port, MAC and address in one), 3 of the guard and "
           "5 in forward (2 lookups, `src_in` and `fwd_in`: the VXLAN check ends at its "
           "port comparison), and 1 in `guard_out` for the tunnel's packet; "
           "on the receiving host 6 of the guard (2 lookups) and 1 in input for the "
           "tunnel's packet (the `host_in` lookup: it comes from no portway bridge), "
           "then 1 of `bridge portway`, 3 of the guard and 5 in "
           "forward for the frame it carried. Frames bridged "
           "between containers also pass the IP hooks (portway's guard and forward "
           "chains, on both hosts), because bridge netfilter is on for the whole host "
           "namespace (`net.bridge.bridge-nf-call-iptables`, which `enable_icc=false` "
           "and Docker's own bridges rely on), and the kernel's per-bridge switch "
           "(`ip link set BRIDGE type bridge nf_call_iptables 0`) cannot exempt a bridge "
           "from it: it only adds one where the namespace-wide switch is off.")


def main() -> int:
    if os.geteuid() != 0:
        print("overlay_doc: run as root", file=sys.stderr)
        return 1
    if shutil.which("etcd") is None:
        print("overlay_doc: etcd-server is not installed (make setup)", file=sys.stderr)
        return 1
    d = Doc()
    etcd = None
    try:
        for i, host in enumerate(d.hosts):
            add_netns(host, d.states[i])
        make_underlay(d.underlay, d.hosts)
        etcd = start_etcd(d.underlay, os.path.join(d.tmp, "etcd"))
        scenario(d)
    finally:
        for i in range(2):
            subprocess.run(d.argv(i, "daemon", "stop"), capture_output=True, timeout=60,
                           env=d.env(i))
        if etcd is not None:
            stop_etcd(etcd)
        for ns in (*d.hosts, d.underlay):
            del_netns(ns)
        shutil.rmtree(d.tmp, ignore_errors=True)
    text = "\n".join(d.out).rstrip() + "\n"
    if d.failures:
        print("claims that did not hold:\n  " + "\n  ".join(d.failures), file=sys.stderr)
        return 1
    if "--print" in sys.argv:
        print(text)
    else:
        (ROOT / "docs" / "overlay.md").write_text(text)
        print("wrote docs/overlay.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
