"""Write docs/audit.md from real runs (make audit-doc).

It builds a throwaway host like Docker's (portway.testbed.DockerLike with the ruleset of
tests/e2e/data/docker-host.nft: four exposures planted), runs `portway audit` on it,
confirms each finding with a real connection, applies the fixes audit gives and runs it
again; then the same host through iptables-nft (docker-host.iptables), as Docker 20.10
writes it; then a host built by portway. Each claim the text makes is checked against the
output; everything is removed after.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from portway.testbed import (
    HOST_ADDR,
    OUTSIDE_ADDR,
    ROUTED_CLIENT,
    WAIT_LISTENING,
    DockerLike,
    connect,
    make_world,
    remove_world,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "tests" / "e2e" / "data" / "docker-host.nft"
PORTWAY = os.path.join(os.path.dirname(sys.executable), "portway")


class Doc:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host, self.outside = f"pwdoca-h-{tag}", f"pwdoca-o-{tag}"
        self.state = tempfile.mkdtemp(prefix="portway-doc-")
        os.rmdir(self.state)  # audit must not need it: it is made by the first change
        self.out: list[str] = []
        self.failures: list[str] = []

    def pw_argv(self, *args: str) -> list[str]:
        return [PORTWAY, "--host-netns", self.host, "--state-dir", self.state, *args]

    def pw(self, *args: str, codes: tuple[int, ...] = (0,)) -> str:
        cp = subprocess.run(self.pw_argv(*args), capture_output=True, text=True, timeout=300)
        text = (cp.stdout + cp.stderr).rstrip()
        if cp.returncode not in codes:
            raise SystemExit(f"portway {' '.join(args)} failed ({cp.returncode}): {text}")
        self.out += ["```", f"$ portway {' '.join(args)}", text,
                     *([f"(exit status {cp.returncode})"] if cp.returncode else []), "```", ""]
        return text

    def quiet(self, *args: str) -> str:
        return subprocess.run(self.pw_argv(*args), capture_output=True, text=True,
                              timeout=300).stdout

    def connect(self, where: str, netns: str, addr: str, port: int,
                source: str | None = None) -> str:
        got = connect(netns, addr, port, source)
        frm = f" from {source}" if source else ""
        self.out.append(f"    ({where}{frm}) connect {addr}:{port}  ->  {got}")
        return got

    def text(self, *paragraphs: str) -> None:
        for p in paragraphs:
            self.out += [p, ""]

    def check(self, claim: str, holds: bool) -> None:
        if not holds:
            self.failures.append(claim)


def docker_host(d: Doc) -> None:
    d.text("# portway audit: who can reach what",
           "`portway audit` answers, for the host it runs on (portway's, Docker's, "
           "Podman's, a plain `ip netns` lab), which sources can reach each published "
           "port, each listening socket of the host and each listening socket of a "
           "container, through which rule, and what of that is an exposure. It reads "
           "the host namespace and every namespace whose veth ends in it, every nftables "
           "table (not only portway's), and proves each answer with the path model of "
           "`portway trace`. It changes nothing, and on a host where portwayd does not "
           "run it starts none (it would turn on forwarding): a short-lived process looks "
           "and leaves. This page is written by `make audit-doc` (scripts/audit_doc.py) "
           "from real runs in a throwaway host namespace.")
    d.text("## Reading it",
           "The table has a row per target and a column per kind of source: **HOST** (a "
           "process of the host itself), **NEIGHBOUR** (a machine on a LAN the host is "
           "on; it may send the host any address, 127.0.0.1 and container addresses "
           "included, by routing it through the host), **ROUTED** (a client beyond the "
           "default route's gateway; it can only name the host's own addresses) and "
           "**CONTAINERS** (one container of each bridge network, for the targets of "
           "other networks). A cell is `yes` when a new connection is made (its first "
           "packet is delivered to a listening socket and the answer gets back), `no` when "
           "it is not, `-` when that source has no way to name the target. `--json` gives "
           "every trace behind every cell (`targets[].reach[]`: the verdict, the rules "
           "that let it through (`via`), the answer's way back).",
           "A finding is an exposure the traces prove, one of four:",
           "- **bypasses the input-hook firewall**: a published port reached from outside "
           "while the host's input hook would drop the same packet. DNAT rewrites the "
           "destination in prerouting, so the packet is forwarded, and the `input` chain "
           "of ufw, firewalld or a hand-written `policy drop` never sees it: Docker's most "
           "reported complaint (moby/moby#4737).",
           "- **127.0.0.1-published but reachable from a neighbour**: a port published on "
           "127.0.0.1 (or a socket on 127.0.0.1 with `route_localnet=1`) that a machine "
           "on the LAN reaches by sending to 127.0.0.1 with the host's MAC address "
           "(moby/moby#45610, kubernetes/kubernetes#90259).",
           "- **direct routed access to a container address**: the host forwards from the "
           "LAN straight to a container's address, no DNAT, no published port "
           "(moby/moby#22054).",
           "- **reachable across networks**: a container of one network connects to a "
           "container of another by its address.",
           "Nothing else is a finding: a published port without an input firewall is "
           "published on purpose, and the host reaches its containers by design. Each "
           "finding ends with its fix: the rule to add and the chain it goes to (Docker's "
           "`DOCKER-USER` where there is one, made for this; a chain before NAT for what "
           "must be dropped before DNAT), the sysctl, the bind address; and whether the "
           "fix was checked on the model: the proving traces run again with the fix's "
           "rules added and no longer connect. `--live` also sends `trace --live`'s probe "
           "for each finding (it never leaves the host). The exit status is 1 when there "
           "is a finding, for scripts and CI.")
    d.text("## A host like Docker's",
           "Two bridges made by hand, `docker0` (172.17.0.0/16) and `br-two` "
           "(172.18.0.0/16), a container behind each (a plain namespace with a veth and a "
           "TCP server on port 80 that answers `hi CLIENT-ADDRESS`), the host's own "
           "servers on 0.0.0.0:9000 and 127.0.0.1:9001, and Docker's rules written as "
           "nft (`fib daddr type local` where iptables-nft has `-m addrtype`). Four "
           "exposures are planted, the ones people report:")
    d.out += ["```", RULES.read_text().rstrip(), "```", ""]
    d.text(f"The host's uplink is {HOST_ADDR}/24; the \"outside\" namespace beyond it is "
           f"a neighbour at {OUTSIDE_ADDR} (it routes 127.0.0.1 and the containers' "
           f"networks to the host) and, from {ROUTED_CLIENT}, a routed client.")
    code_text = d.pw("audit", codes=(1,))
    data = json.loads(d.quiet("audit", "--json"))
    kinds = sorted(f["kind"] for f in data["findings"])
    d.check("the five findings of the four planted exposures", kinds == [
        "across-networks", "across-networks", "bypasses-input-firewall",
        "direct-container-access", "loopback-exposed"])
    d.check("every fix checked on the model", all(f["fix_checked"] for f in data["findings"]))
    d.check("the text says 5 findings", "5 finding(s):" in code_text)


def confirm(d: Doc, w: DockerLike) -> None:
    d.text("## Each finding, by a real connection",
           "From the neighbour, the routed client and the containers (the server answers "
           "with the address it sees):")
    d.out.append("```")
    o = w.outside
    d.check("8080 from the neighbour",
            d.connect("neighbour", o, HOST_ADDR, 8080) == f"hi {OUTSIDE_ADDR}")
    d.check("8080 from the routed client", d.connect(
        "neighbour", o, HOST_ADDR, 8080, ROUTED_CLIENT) == f"hi {ROUTED_CLIENT}")
    d.check("the host's 9000 is closed to it",
            d.connect("neighbour", o, HOST_ADDR, 9000).startswith("fail"))
    d.check("127.0.0.1:8081 from the neighbour",
            d.connect("neighbour", o, "127.0.0.1", 8081) == f"hi {OUTSIDE_ADDR}")
    d.check("127.0.0.1:9001 closed to it",
            d.connect("neighbour", o, "127.0.0.1", 9001).startswith("fail"))
    d.check("172.18.0.2 directly",
            d.connect("neighbour", o, "172.18.0.2", 80) == f"hi {OUTSIDE_ADDR}")
    d.check("172.17.0.2 guarded",
            d.connect("neighbour", o, "172.17.0.2", 80).startswith("fail"))
    d.check("docker0 to br-two", d.connect("docker0's container", w.c1, "172.18.0.2", 80)
            == "hi 172.18.0.1")
    d.check("br-two to docker0", d.connect("br-two's container", w.c2, "172.17.0.2", 80)
            == "hi 172.17.0.1")
    d.out += ["```", ""]
    d.text("The connection to 127.0.0.1:8081 works with or without `route_localnet`: "
           "DNAT rewrites 127.0.0.1 in prerouting, before the kernel's check for a "
           "martian destination, so only a rule before NAT (or no such DNAT) closes it; "
           "the sysctl matters for sockets on 127.0.0.1 themselves (here the input "
           "firewall holds 9001).")


def fixed(d: Doc) -> None:
    d.text("## The fixes applied",
           "Each `nft` line of the findings, run as printed, and audit again:")
    data = json.loads(d.quiet("audit", "--json"))
    lines = [line for f in data["findings"] for line in f["fix"] if line.startswith("nft ")]
    d.out += ["```", *lines, "```", ""]
    for line in lines:
        subprocess.run(["ip", "netns", "exec", d.host, "sh", "-c", line], check=True)
    text = d.pw("audit")
    d.check("no exposure after the fixes", "no exposure found" in text)


def iptables_host(d: Doc) -> None:
    d.text("## The same host, through iptables-nft",
           "Docker 20.10 writes its rules with iptables, which on Debian is iptables-nft: "
           "they land in nftables tables, but what has no native form there (`-m "
           "addrtype`, `-m conntrack`, `-j DNAT --to-destination`) is kept as `xt` "
           "expressions that `nft -j list ruleset` shows without their arguments. Where "
           "it finds them, audit reads those tables through `iptables-nft-save`, "
           "translates them with `iptables-restore-translate` and lists the translation "
           "from a new, empty namespace of its own: the host is only read. The fixes for "
           "chains that iptables manages are iptables commands (a native rule there would "
           "leave iptables unable to read its table). The same four exposures, written as "
           "Docker writes them (tests/e2e/data/docker-host.iptables, loaded with "
           "`iptables-nft-restore`, and the ufw-style table as before):")
    text = d.pw("audit", codes=(1,))
    d.check("iptables-nft: the same five findings", "5 finding(s):" in text)
    data = json.loads(d.quiet("audit", "--json"))
    lines = [line for f in data["findings"] for line in f["fix"]
             if line.startswith(("iptables ", "nft "))]
    d.check("iptables-nft: the fixes are iptables commands",
            bool(lines) and all(line.startswith("iptables ") for line in lines))
    d.text("The fixes, run as printed, and audit again:")
    d.out += ["```", *lines, "```", ""]
    for line in lines:
        subprocess.run(["ip", "netns", "exec", d.host, "sh", "-c", line], check=True)
    text = d.pw("audit")
    d.check("iptables-nft: no exposure after the fixes", "no exposure found" in text)


def limits(d: Doc) -> None:
    d.text("## What it does not see",
           "Audit reasons with `trace`'s model, so it shares its limits: policy routing "
           "(`ip rule`), tc and eBPF programs, iptables-legacy rules (only iptables-nft's "
           "are read), and matches it cannot evaluate (such a rule is taken as not "
           "matching, and `trace` names it). kube-proxy's NodePorts and ClusterIPs are "
           "found (their port is matched a few chains above the DNAT, in KUBE-NODEPORTS "
           "and KUBE-SERVICES), but its random choice of an endpoint (`-m statistic`) is "
           "such a match: the trace goes to the last endpoint. Its sources are one "
           "neighbour per LAN "
           "interface and one routed client per family, and a container of each network; "
           "its targets are sockets that listen now and the ports the DNAT rules and maps "
           "name. A neighbour is taken to route anything it likes to the host; a client "
           "from afar, only the addresses of the interface it comes in on.")


def portway_host(d: Doc) -> None:
    d.text("## A host built by portway",
           "Two networks, a published port on every address and one on 127.0.0.1: "
           "portway's rules drop 127/8 from outside before NAT, isolate networks (the "
           "answers included), and forward into a network only replies and published "
           "ports. Audit finds nothing (portwayd runs here, so it answers; the DNS "
           "server's sockets on the gateways are the host's own):")
    for args in (("network", "create", "app", "--subnet", "10.60.0.0/24"),
                 ("network", "create", "db", "--subnet", "10.61.0.0/24")):
        d.quiet(*args)
    for name, net, ports in (("web", "app", ["-p", "8080:80", "-p", "127.0.0.1:8081:80"]),
                             ("store", "db", [])):
        d.quiet("run", "-d", "--name", name, "--network", net, *ports, "--", "python3",
                "-m", "http.server", "80")
        d.quiet("exec", name, "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    d.out += ["```", "$ portway network create app --subnet 10.60.0.0/24",
              "$ portway network create db --subnet 10.61.0.0/24",
              "$ portway run -d --name web --network app -p 8080:80 -p 127.0.0.1:8081:80 "
              "-- python3 -m http.server 80",
              "$ portway run -d --name store --network db -- python3 -m http.server 80",
              "```", ""]
    text = d.pw("audit")
    d.check("portway's host: no exposure", "no exposure found" in text)


def many_ports(d: Doc) -> None:
    d.text("## Many ports, few traces",
           "Audit does not trace every port from every source. Ports published to one "
           "container, or to containers recorded alike behind one bridge (alike but for "
           "their own names and addresses, which no rule of any namespace singles out), "
           "on ports that nothing but their own DNAT tells apart (no rule matches them, "
           "the same sockets listen on them), take one path, and one trace stands for "
           "them all. Each such reach names the target whose trace it shares "
           "(`same_path_as` in `--json`; its proof is that trace), and a finding's fix "
           "names its own container's address and port. A container a rule names, a "
           "port a rule matches, or one published twice is traced on its own. Each "
           "namespace is read once (one netlink dump of each kind), all from one helper "
           "thread; BENCHMARKS.md has the figures for a host of 1,000 containers and "
           "10,000 published ports.",
           "Here, on the host above, three more containers on `app`, with five ports "
           "each published to ports where nothing listens:")
    for i in range(3):
        d.quiet("run", "-d", "--name", f"w{i}", "--network", "app", "-p",
                f"{9000 + 5 * i}-{9004 + 5 * i}:7000-7004", "--", "sleep", "600")
    d.out += ["```", "$ for i in 0 1 2; do portway run -d --name w$i --network app "
              "-p $((9000+5*i))-$((9004+5*i)):7000-7004 -- sleep 600; done", "```", ""]
    data = json.loads(d.quiet("audit", "--json"))
    reaches = [r for t in data["targets"] for r in t["reach"]]
    shared = [r for r in reaches if r["same_path_as"]]
    d.check("many ports: most reaches share a trace", len(shared) > len(reaches) // 2)
    example = next(r for r in shared if r["source_kind"] == "neighbour")
    d.text(f"{len(data['targets'])} targets, {len(reaches)} source-target pairs, "
           f"{len(reaches) - len(shared)} traced. One pair that shares its trace "
           "(`portway audit --json`, without its trace):")
    d.out += ["```json", json.dumps({k: v for k, v in example.items() if k != "reply"},
                                    indent=2), "```", ""]


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: it builds namespaces", file=sys.stderr)
        return 1
    d = Doc()
    make_world(d.host, d.outside)
    w: DockerLike | None = None
    try:
        w = DockerLike(d.host, d.outside, RULES.read_text())
        docker_host(d)
        d.check("the look made no state dir (no daemon)", not os.path.exists(d.state))
        confirm(d, w)
        fixed(d)
        w.remove()
        w = None
        subprocess.run(["ip", "netns", "exec", d.host, "nft", "flush", "ruleset"], check=True)
        w = DockerLike(d.host, d.outside, (RULES.parent / "ufw.nft").read_text(),
                       (RULES.parent / "docker-host.iptables").read_text())
        iptables_host(d)
        w.remove()
        w = None
        subprocess.run(["ip", "netns", "exec", d.host, "nft", "flush", "ruleset"], check=True)
        portway_host(d)
        many_ports(d)
        limits(d)
    finally:
        if w is not None:
            w.remove()
        if os.path.exists(d.state):
            for cid in d.quiet("ps", "-a", "-q").split():
                d.quiet("rm", "-f", cid)
            for net in ("app", "db"):
                d.quiet("network", "rm", net)
            d.quiet("daemon", "stop")
        remove_world(d.host, d.outside)
        shutil.rmtree(d.state, ignore_errors=True)
    if d.failures:
        print("claims that did not hold:\n  " + "\n  ".join(d.failures), file=sys.stderr)
        return 1
    (ROOT / "docs" / "audit.md").write_text("\n".join(d.out).rstrip() + "\n")
    print("wrote docs/audit.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
