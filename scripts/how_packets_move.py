"""Write docs/how-packets-move.md from real runs of `portway trace` (make how-packets-move).

It builds a throwaway world (a host namespace, an outside namespace, three IPv4
networks with four containers, a dual-stack and an IPv6-only network with three
more), runs `portway show` and a trace of each path the firewall builds, for both
families, checks each verdict with a real connection, and writes the output as it
came, between short explanations. Everything is removed after.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from portway.testbed import (
    HOST_ADDR,
    HOST_ADDR6,
    OUTSIDE_ADDR,
    OUTSIDE_ADDR6,
    make_world,
    remove_world,
)
from portway.testbed import HTTP_GET as GET
from portway.testbed import WAIT_LISTENING as WAIT

ROOT = Path(__file__).resolve().parent.parent
PORTWAY = os.path.join(os.path.dirname(sys.executable), "portway")
REAL_HOSTS = "## Debugging real hosts"  # the chapter scripts/real_hosts_doc.py writes

INTRO = f"""# How packets move

`portway trace SOURCE DEST:PORT` follows the first packet of a new connection
through the machinery: the source's route lookup, the veth pair, the bridge
(bridged to another port, or up to the host's IP layer), every netfilter hook
with every base chain on it, of every table (portway's and anyone else's), the
rule that decided (by its comment) or the chain's policy, each address
rewrite, and the end: a listening socket, no listener, dropped (by what), no
route, or out of the host. `--json` gives the same as data.

With `--live` it also sends one real probe (a TCP SYN or a UDP datagram) over
the same path and prints the kernel's own account of it: the nftables trace
events of that packet (read over nfnetlink), one line per base chain with the
rule that decided, the verdict, and the final addresses from conntrack; then
whether static reasoning and kernel agree. The probe is selected by its
5-tuple in a short-lived table `portway_trace` (removed afterwards) and is
dropped in the egress hook of any interface that is not portway's, so it never
leaves the host; from `outside`, it comes from a throwaway namespace joined to
the host by a temporary veth.

IPv6 paths are traced the same way: an IPv6 destination is written
`[ADDR]:PORT`, `--from-ip` takes an IPv6 address, and a container with both
families is traced over IPv4 unless `-6` is given (a client that looks the name
up tries IPv4 first for a unique local address, as RFC 6724 says).

Everything below is real output, written by `make how-packets-move`
(scripts/how_packets_move.py) in a throwaway host namespace whose uplink
(`uplink0`, {HOST_ADDR} and {HOST_ADDR6}) leads to an "outside" namespace
({OUTSIDE_ADDR} and {OUTSIDE_ADDR6}), with:

"""

SETUP = [
    ("network", "create", "app", "--subnet", "10.77.0.0/24"),
    ("network", "create", "db", "--subnet", "10.78.0.0/24"),
    ("network", "create", "back", "--subnet", "10.79.0.0/24", "--internal"),
    ("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
     "python3", "-m", "http.server", "80"),
    ("run", "-d", "--name", "cache", "--network", "app", "-p", "127.0.0.1:6379:80", "--",
     "python3", "-m", "http.server", "80"),
    ("run", "-d", "--name", "store", "--network", "db", "--",
     "python3", "-m", "http.server", "5432"),
    ("run", "-d", "--name", "inner", "--network", "back", "--", "sleep", "600"),
    ("network", "create", "dual", "--ipv6", "--subnet", "10.87.0.0/24", "--subnet",
     "fd00:87::/64"),
    ("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet", "fd00:88::/64"),
    ("run", "-d", "--name", "web6", "--network", "dual", "-p", "8086:80", "--",
     "python3", "-m", "http.server", "--bind", "::", "80"),
    ("run", "-d", "--name", "cli6", "--network", "dual", "--", "sleep", "600"),
    ("run", "-d", "--name", "store6", "--network", "six", "--",
     "python3", "-m", "http.server", "--bind", "::", "5432"),
]

# (title, explanation, trace arguments, expected verdict, a real attempt: (where, url))
PATHS: list[tuple[str, str, list[str], str, tuple[str, str] | None]] = [
    ("Between containers of one network",
     "Both containers are ports of one bridge: the frame is bridged, not routed. With "
     "bridge netfilter on (portway turns it on, as Docker does), the IP hooks see the "
     "bridged packet too, with the bridge as both devices; the network's `icc` rule "
     "accepts it. The server sees the client's own address.",
     ["web", "cache:80"], "delivered", ("web", "http://10.77.0.3/")),
    ("Across networks: isolated",
     "The packet goes up to the host (its destination MAC is the bridge's own, the "
     "gateway's), is routed towards the other bridge, and the forward hook's "
     "`in-<network>` chain drops it.",
     ["web", "store:5432"], "dropped", ("web", "http://10.78.0.2:5432/")),
    ("From outside to a published port",
     "DNAT in prerouting rewrites the destination to the container; the forward hook lets "
     "DNATed connections into the network; nothing rewrites the source, so the container "
     "sees the client's own address.",
     ["outside", "web:80", "--from-ip", OUTSIDE_ADDR], "delivered",
     ("outside", f"http://{HOST_ADDR}:8080/")),
    ("From outside to an unpublished address",
     "Even with a route to the subnet, a connection that was not DNATed is dropped on its "
     "way into the network.",
     ["outside", "10.77.0.2:80", "--from-ip", OUTSIDE_ADDR], "dropped", None),
    ("From outside to a port published on 127.0.0.1",
     "portway's first prerouting rule never translates 127/8, so the kernel drops the "
     "packet as a martian (the attack of moby/moby#45610 fails).",
     ["outside", "127.0.0.1:6379", "--from-ip", OUTSIDE_ADDR], "dropped", None),
    ("From a host process to a port published on 127.0.0.1",
     "The output hook's DNAT sends the packet to the container; because its source is "
     "127.0.0.1, postrouting masquerades it to the bridge's address so the container can "
     "answer.",
     ["host", "127.0.0.1:6379"], "delivered", ("host", "http://127.0.0.1:6379/")),
    ("Hairpin: a container to its own published port",
     "Through the host's address: DNAT brings it back to the same bridge, and the "
     "network's hairpin rule masquerades it to the gateway, or the answer would bypass "
     "the host.",
     ["web", f"{HOST_ADDR}:8080"], "delivered", ("web", f"http://{HOST_ADDR}:8080/")),
    ("Outbound",
     "Routed out of the uplink; postrouting's `nat_src` map sends the network's sources to "
     "its masquerade rule: the outside sees the host's address.",
     ["web", f"{OUTSIDE_ADDR}:9000"], "leaves-host", None),
    ("An internal network",
     "Its containers get no default route, and its forward chain would drop anything "
     "that left anyway.",
     ["inner", f"{OUTSIDE_ADDR}:9000"], "no-route", None),
    ("Nothing listening",
     "The packet is delivered to the container's namespace, where no socket is bound to "
     "the port: the kernel answers with a TCP reset.",
     ["web", "cache:81"], "no-listener", ("web", "http://10.77.0.3:81/")),
    # IPv6
    ("IPv6: between containers of one network",
     "`dual` has both families: `-6` traces the IPv6 address (without it, IPv4, as for "
     "`web` and `cache` above). Bridged, with bridge netfilter's ip6tables call on: the "
     "same `icc` rule as for IPv4 accepts it, and the server sees the client's own "
     "address. Before the first packet, neighbour discovery (IPv6's ARP) finds the MAC.",
     ["cli6", "web6:80", "-6"], "delivered", ("cli6", "http://[fd00:87::2]/")),
    ("IPv6: across networks, isolated",
     "`store6` has IPv6 only, so no `-6` is needed. Routed by the host between the two "
     "bridges, and dropped by the same isolation rule as IPv4: the network's rules are "
     "per network, not per family.",
     ["cli6", "store6:5432"], "dropped", ("cli6", "http://[fd00:88::2]:5432/")),
    ("IPv6: from outside to a published port",
     "`-p 8086:80` publishes on both families: the `pub_any6_*` maps DNAT the host's "
     "IPv6 address to the container's, and the container sees the client's own IPv6 "
     "address.",
     ["outside", "web6:80", "--from-ip", OUTSIDE_ADDR6], "delivered",
     ("outside", f"http://[{HOST_ADDR6}]:8086/")),
    ("IPv6: from outside to an unpublished address",
     "As for IPv4: not DNATed, so dropped on its way into the network.",
     ["outside", "[fd00:87::2]:80", "--from-ip", OUTSIDE_ADDR6], "dropped", None),
    ("IPv6: from outside to ::1",
     "IPv6 drops a packet for `::1` that arrives on any interface but `lo` as soon as it "
     "arrives, before any netfilter hook: no rule is needed, and the live trace sees "
     "nothing of it.",
     ["outside", "[::1]:8086", "--from-ip", OUTSIDE_ADDR6], "dropped", None),
    ("IPv6: from a host process to ::1",
     "No rule DNATs `::1` (IPv6 has no `route_localnet`: the answer could never come "
     "back to it). The socket of portwayd that holds the published port takes the "
     "connection instead and relays it to the container in user space; its socket "
     "filter lets only the host's loopback in.",
     ["host", "[::1]:8086"], "delivered", ("host", "http://[::1]:8086/")),
    ("IPv6: hairpin",
     "A container through the host's IPv6 address to its own published port: DNAT back "
     "to the same bridge, masqueraded to the network's IPv6 gateway.",
     ["web6", f"[{HOST_ADDR6}]:8086"], "delivered", ("web6", f"http://[{HOST_ADDR6}]:8086/")),
    ("IPv6: outbound through NAT66",
     "Routed out of the uplink; postrouting's `nat_src6` map sends the network's IPv6 "
     "sources to its masquerade rule: the outside sees the host's IPv6 address, never the "
     "network's unique local one.",
     ["cli6", f"[{OUTSIDE_ADDR6}]:9000"], "leaves-host", None),
    ("IPv6: outbound from an IPv6-only network",
     "The same for a network without IPv4.",
     ["store6", f"[{OUTSIDE_ADDR6}]:9000"], "leaves-host", None),
]


class World:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host, self.outside = f"pwdoc-h-{tag}", f"pwdoc-o-{tag}"
        self.state = tempfile.mkdtemp(prefix="portway-doc-")

    def pw(self, *args: str) -> str:
        cp = subprocess.run([PORTWAY, "--host-netns", self.host, "--state-dir", self.state,
                             *args], capture_output=True, text=True, timeout=120)
        if cp.returncode != 0:
            raise SystemExit(f"portway {' '.join(args)} failed: {cp.stderr.strip()}")
        return cp.stdout.rstrip()

    def attempt(self, where: str, url: str) -> str:
        prefix = {"outside": ["ip", "netns", "exec", self.outside],
                  "host": ["ip", "netns", "exec", self.host]}.get(
            where, [PORTWAY, "--host-netns", self.host, "--state-dir", self.state, "exec",
                    where, "--"])
        return subprocess.run([*prefix, "python3", "-c", GET, url], capture_output=True,
                              text=True, timeout=30).stdout.strip()


def write(world: World) -> str:
    out = [INTRO, "```"]
    for args in SETUP:
        world.pw(*args)
        out.append("$ portway " + " ".join(args))
    out.append("```\n")
    for name, addr, port in (("web", "127.0.0.1", "80"), ("cache", "127.0.0.1", "80"),
                             ("store", "127.0.0.1", "5432"), ("web6", "::1", "80"),
                             ("store6", "::1", "5432")):
        world.pw("exec", name, "--", "python3", "-c", WAIT, addr, port)
    out += ["## The wiring: `portway show`", "", "```", "$ portway show", world.pw("show"),
            "```", ""]
    failures = []
    for title, text, args, verdict, real in PATHS:
        shown = world.pw("trace", *args, "--live")
        if "static and live agree" not in shown:
            failures.append(f"{title}: static and live disagree")
        if f"verdict: {verdict}" not in shown:
            failures.append(f"{title}: expected {verdict}")
        out += [f"## {title}", "", text, "", "```", f"$ portway trace {' '.join(args)} --live",
                shown, "```", ""]
        if real is not None:
            got = world.attempt(*real)
            ok = (got == "200") == (verdict == "delivered")
            if not ok:
                failures.append(f"{title}: a real connection gave {got!r}")
            out += [f"A real connection over the same path: `{got}`.", ""]
    if failures:
        raise SystemExit("how-packets-move: " + "; ".join(failures))
    return "\n".join(out)


def main() -> int:
    world = World()
    make_world(world.host, world.outside)
    try:
        text = write(world)
    finally:
        subprocess.run([PORTWAY, "--host-netns", world.host, "--state-dir", world.state,
                        "rm", "-f", "web", "cache", "store", "inner", "web6", "cli6", "store6"],
                       capture_output=True)
        subprocess.run([PORTWAY, "--host-netns", world.host, "--state-dir", world.state,
                        "network", "rm", "app", "db", "back", "dual", "six"],
                       capture_output=True)
        subprocess.run([PORTWAY, "--host-netns", world.host, "--state-dir", world.state,
                        "daemon", "stop"], capture_output=True)
        remove_world(world.host, world.outside)
        shutil.rmtree(world.state, ignore_errors=True)
    doc = ROOT / "docs" / "how-packets-move.md"
    # The chapter on real hosts is written by scripts/real_hosts_doc.py: kept as it is.
    _, marker, chapter = doc.read_text().partition(f"\n{REAL_HOSTS}\n") if doc.exists() \
        else ("", "", "")
    # (one blank line before the chapter, as real_hosts_doc.py writes it)
    doc.write_text(text.rstrip("\n") + "\n" + marker + chapter)
    print("wrote docs/how-packets-move.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
