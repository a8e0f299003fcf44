"""Write docs/ipv6.md from real runs (make ipv6-doc).

It builds a throwaway world (a host namespace and an "outside" namespace joined by
a veth with addresses of both families), a dual-stack network and an IPv6-only one
with containers, and records what portway, the kernel and real connections say.
Each claim the text makes is checked against the output; everything is removed
after.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from portway.testbed import HOST_ADDR6, OUTSIDE_ADDR6, WAIT_LISTENING, make_world, remove_world

ROOT = Path(__file__).resolve().parent.parent
PORTWAY = os.path.join(os.path.dirname(sys.executable), "portway")
GET = ("import sys, urllib.request as u\n"
       "try: print(u.urlopen(sys.argv[1], timeout=3).status)\n"
       "except Exception as e: print('fail', type(e).__name__)\n")
SERVE = ["python3", "-m", "http.server", "--bind", "::", "80"]


class World:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host, self.outside = f"pwdoc6-h-{tag}", f"pwdoc6-o-{tag}"
        self.state = tempfile.mkdtemp(prefix="portway-doc-")
        self.out: list[str] = []
        self.failures: list[str] = []

    def pw_argv(self, *args: str) -> list[str]:
        return [PORTWAY, "--host-netns", self.host, "--state-dir", self.state, *args]

    def run(self, argv: list[str], shown: str, ok: bool = True) -> str:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        text = (cp.stdout + cp.stderr).rstrip()
        if ok and cp.returncode != 0:
            raise SystemExit(f"{shown} failed: {text}")
        self.out += ["```", f"$ {shown}", *([text] if text else []), "```", ""]
        return text

    def pw(self, *args: str, ok: bool = True) -> str:
        return self.run(self.pw_argv(*args), "portway " + " ".join(args), ok)

    def get(self, where: str, url: str) -> str:
        """An HTTP GET of url from a container or "outside", shown as `get URL`."""
        if where in ("outside", "host"):
            prefix = ["ip", "netns", "exec", self.outside if where == "outside" else self.host]
            shown = f"({where}) "
        else:
            prefix, shown = self.pw_argv("exec", where, "--"), f"portway exec {where} -- "
        return self.run([*prefix, "python3", "-c", GET, url], f"{shown}get {url}")

    def quiet(self, *args: str) -> str:
        return subprocess.run(self.pw_argv(*args), capture_output=True, text=True,
                              check=True, timeout=120).stdout.rstrip()

    def in_host(self, *args: str) -> str:
        return self.run(["ip", "netns", "exec", self.host, *args],
                        "(host) " + " ".join(args))

    def text(self, *paragraphs: str) -> None:
        for p in paragraphs:
            self.out += [p, ""]

    def check(self, claim: str, holds: bool) -> None:
        if not holds:
            self.failures.append(claim)


def excerpt(text: str, pattern: str) -> str:
    return "\n".join(line for line in text.splitlines() if re.search(pattern, line))


def blocks(text: str, names: tuple[str, ...]) -> str:
    """The named sets and maps of an `nft list table` listing, whole."""
    out: list[str] = []
    keep = False
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("set", "map"):
            keep = words[1] in names
        if keep:
            out.append(line)
            if line.strip() == "}":
                keep = False
    return "\n".join(out)


def write(w: World) -> None:
    w.text("# IPv6",
           "A portway network has IPv4 (the default), both families (`--ipv6`: dual "
           "stack) or IPv6 alone (`--ipv6 --ipv4=false`). Everything IPv4 has, IPv6 has "
           "too: an address and a default route per container, names (AAAA records and "
           "reverse lookups), isolation between networks, outbound masquerade (NAT66), "
           "published ports by DNAT, and the same anti-spoofing. This page shows each with "
           "real output, written by `make ipv6-doc` (scripts/ipv6_doc.py) in a throwaway "
           "host namespace whose uplink has the documentation addresses "
           f"`{HOST_ADDR6}` (the host) and `{OUTSIDE_ADDR6}` (the \"outside\" namespace). "
           "`get URL` is a three-line Python HTTP client: it prints the status, or why "
           "it failed.")

    w.text("## A dual-stack network",
           "Without `--subnet` for IPv6, the network gets a /64 of the installation's "
           "unique local /48: a random `fdXX:XXXX:XXXX::/48` chosen once and kept in the "
           "store (RFC 4193, and what Docker 27 does), the first /64 of it that overlaps "
           "no other network and no address or route of the host. IPv4 comes from the "
           "default pools as before. `--subnet` may be given more than once for IPv6 too "
           "(`--subnet fd00:77::/64 --subnet fd00:78::/64`): a container gets one IPv6 "
           "address, in the subnet of its `--ip6` or else the first with a free address, "
           "and reaches the other subnets on-link (see "
           "[networking.md](networking.md#several-subnets-on-one-network)).")
    w.pw("network", "create", "app", "--ipv6")
    ls = w.pw("network", "ls")
    net = json.loads(w.quiet("network", "inspect", "app"))[0]
    configs = net["IPAM"]["Config"]
    w.text("`network inspect` has Docker's fields:")
    w.out += ["```", json.dumps({"EnableIPv6": net["EnableIPv6"],
                                 "IPAM": {"Config": configs}}, indent=2), "```", ""]
    v6 = next(c for c in configs if ":" in c["Subnet"])
    w.check("auto IPv6 subnet is a ULA /64",
            v6["Subnet"].startswith("fd") and v6["Subnet"].endswith("::/64")
            and v6["Subnet"] in ls)
    gw6 = v6["Gateway"]

    w.text("## Containers",
           "Each container gets an address of each family on `eth0` and a default route "
           "of each family via the gateways. IPv6 addresses are added without duplicate "
           "address detection (portway's IPAM already guarantees them unique on the "
           "bridge), so they work the moment the container starts. Router advertisements "
           "play no part: the bridge guard drops any a container sends, and any the host "
           "sends into a bridge (radvd, dnsmasq's `enable-ra`, a raw socket; redirects "
           "too) is dropped on its way to a container's port (`host_out`, on the bridge's "
           "output hook: see [firewall.md](firewall.md#router-advertisements-from-the-host)"
           "). The container's `eth0` keeps the kernel's `accept_ra=1`, as Docker's does, "
           "with nothing to take: its IPv6 address and default route are portway's alone.")
    w.quiet("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--", *SERVE)
    w.quiet("exec", "web", "--", "python3", "-c", WAIT_LISTENING, "::1", "80")
    w.quiet("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "600")
    w.out += ["```",
              "$ portway run -d --name web --network app -p 8080:80 -- "
              + " ".join(SERVE),
              "$ portway run -d --name cli --network app -- sleep 600", "```", ""]
    web = json.loads(w.quiet("inspect", "web"))[0]["NetworkSettings"]["Networks"]["app"]
    web6 = web["GlobalIPv6Address"]
    w.pw("exec", "cli", "--", "ip", "-br", "addr", "show", "eth0")
    routes = w.pw("exec", "cli", "--", "ip", "-6", "route")
    w.check("default v6 route via the gateway", f"default via {gw6}" in routes)
    w.text("`inspect` shows them as Docker does:")
    w.out += ["```", json.dumps({k: web[k] for k in (
        "IPAddress", "IPPrefixLen", "Gateway", "GlobalIPv6Address", "GlobalIPv6PrefixLen",
        "IPv6Gateway")}, indent=2), "```", ""]

    w.text("## Names",
           "The network's DNS server listens on every gateway, of either family, and "
           "answers A and AAAA for container names and aliases, and reverse lookups in "
           "`in-addr.arpa` and `ip6.arpa`. `/etc/hosts` lists every address of the "
           "container.")
    aaaa = w.pw("exec", "cli", "--", "dig", "+short", "AAAA", "web")
    w.check("AAAA answers web's address", aaaa.strip() == web6)
    ptr = w.pw("exec", "cli", "--", "dig", "+short", "-x", web6)
    w.check("PTR answers web", ptr.startswith("web"))
    w.pw("exec", "cli", "--", "dig", "+short", f"@{gw6}", "A", "web")

    w.text("## Between containers",
           "Bridged, as for IPv4; the server sees the client's own address.")
    got = w.get("cli", "http://web/")
    w.check("container to container by name", got == "200")
    got = w.get("cli", f"http://[{web6}]/")
    w.check("container to container by IPv6 address", got == "200")

    w.text("## Outbound: NAT66",
           "A connection to the outside leaves through the host's uplink with the host's "
           "address as its source, as for IPv4: the network's ULA subnet is not routed "
           "beyond the host. The outside's server log shows who connected:")
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(["ip", "netns", "exec", w.outside, "python3", "-m",
                                   "http.server", "9000", "--bind", "::"], stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            subprocess.run(["ip", "netns", "exec", w.outside, "python3", "-c",
                            WAIT_LISTENING, "::1", "9000"], check=True, timeout=30)
            got = w.get("cli", f"http://[{OUTSIDE_ADDR6}]:9000/")
            w.check("outbound over IPv6", got == "200")
        finally:
            server.terminate()
            server.wait()
        log.seek(0)
        seen = excerpt(log.read(), "GET /")
    w.out += ["```", "(outside) " + seen.strip(), "```", ""]
    w.check("NAT66 shows the host's address", seen.startswith(HOST_ADDR6))
    w.text("With `-o com.docker.network.bridge.gateway_mode_ipv6=routed` the network's "
           "IPv6 is not masqueraded: for a host whose neighbours route the subnet to it "
           "(a global prefix delegated to the host, say). Containers are reachable from "
           "outside only on their published ports: as with Docker 27, a published container "
           "port is also open at the container's own address (`-p 8080:80`: port 80 of the "
           "container's IPv6 address, for a client that routes the subnet to the host), and "
           "an unpublished one is not. Unlike Docker, which then leaves the host port out "
           "for that family, the host port keeps working too; and a port published on one "
           "host address alone (`-p [2001:db8::1]:8080:80`) stays that narrow, where Docker "
           "opens it at the container's address as well.")

    w.text("## Published ports",
           "`-p 8080:80` publishes on both families of the host when the container has "
           "both (as Docker 27 does); on several networks, each family's to its "
           "address on the network that routes that family (docs/networking.md). "
           "Nothing rewrites the source: the container sees the client's own IPv6 "
           "address.")
    got = w.get("outside", f"http://[{HOST_ADDR6}]:8080/")
    w.check("published over IPv6", got == "200")
    logs = w.quiet("logs", "web")
    seen = excerpt(logs, re.escape(OUTSIDE_ADDR6))
    w.out += ["```", "$ portway logs web", seen, "```", ""]
    w.check("the container sees the client", bool(seen))
    w.pw("port", "web")
    w.text("The host's own connections to `::1` cannot be DNATed (IPv6 has no "
           "`route_localnet`: the answer could never come back to `::1`), so the socket "
           "that holds the port relays them to the container, as Docker's userland proxy "
           "does; the container sees its gateway as the client. A socket filter lets "
           "only the host's loopback reach that socket. `-p [::1]:8081:80` publishes for "
           "the host alone:")
    w.quiet("run", "-d", "--name", "lo6", "--network", "app", "-p", "[::1]:8081:80", "--",
            *SERVE)
    w.quiet("exec", "lo6", "--", "python3", "-c", WAIT_LISTENING, "::1", "80")
    w.out += ["```", "$ portway run -d --name lo6 --network app -p [::1]:8081:80 -- "
              + " ".join(SERVE), "```", ""]
    got = w.get("host", "http://[::1]:8080/")
    w.check("::1 relayed to the published port", got == "200")
    got = w.get("host", "http://[::1]:8081/")
    w.check("::1-published port from the host", got == "200")
    got = w.get("outside", f"http://[{HOST_ADDR6}]:8081/")
    w.check("::1-published port closed from outside", got != "200")
    listening = excerpt(subprocess.run(["ip", "netns", "exec", w.host, "ss", "-ltnp"],
                                       capture_output=True, text=True).stdout,
                        r":808[01]\b")
    # (by port: ss lists them in the order of the kernel's hash table, which changes from
    # run to run)
    listening = "\n".join(sorted(listening.splitlines(),
                                 key=lambda line: line.split()[3].rsplit(":", 1)[1]))
    w.out += ["```", "$ (host) ss -ltnp   (the relaying sockets)", listening, "```", ""]

    w.text("## The firewall, for both families",
           "portway's `inet portway` table holds both families' rules; each set or map "
           "that is keyed by address has an IPv6 twin (`nat_src6`, `src_in6`, `dns6`, "
           "`pub_*6_*`). A network's rules are the same for both: the dual-stack "
           "network's sources masquerade, its addresses may be entered only by "
           "DNATed or established traffic, and what comes in on its bridge must come "
           "from its subnet:")
    table = subprocess.run(["ip", "netns", "exec", w.host, "nft", "list", "table", "inet",
                            "portway"], capture_output=True, text=True, check=True).stdout
    maps = blocks(table, ("dns6", "nat_src6", "src_in6", "pub_any6_addr"))
    w.out += ["```", "$ nft list table inet portway   (the IPv6 sets and maps)", maps,
              "```", ""]
    w.check("nat_src6 holds the subnet", v6["Subnet"] in table)
    w.text("The bridge guard (the `bridge portway` table) keeps containers honest at "
           "layer 2, for IPv6 as for IPv4: a container's frames must carry its own MAC "
           "and its own addresses, it may not send router advertisements or redirects, "
           "its neighbour advertisements may only claim its own addresses, and its "
           "neighbour and router solicitations and advertisements may name only its own "
           "MAC as a link-layer address (`lladdrs`, left out below; see "
           "[firewall.md](firewall.md), \"Anti-spoofing\"); and no router advertisement "
           "or redirect of the host reaches a container's port (`host_out`):")
    guard = subprocess.run(["ip", "netns", "exec", w.host, "nft", "list", "table", "bridge",
                            "portway"], capture_output=True, text=True, check=True).stdout
    shown = blocks(guard, ("v6ports", "addrs6", "targets6")) + "\n" + excerpt(
        guard, r"^\s+[^st].*(ip6|icmpv6)")
    w.out += ["```", "$ nft list table bridge portway   (the IPv6 lines)", shown, "```", ""]
    w.check("guard drops router advertisements", "nd-router-advert" in guard)
    w.check("guard drops the host's router advertisements", "chain host_out" in guard)

    w.text("## An IPv6-only network",
           "`--ipv4=false` leaves IPv4 out: the containers have no IPv4 address and no "
           "IPv4 route, the network's DNS server listens on the IPv6 gateway only, and "
           "the container's resolv.conf names it.")
    w.pw("network", "create", "six", "--ipv6", "--ipv4=false", "--subnet", "fd00:77::/64")
    w.quiet("run", "-d", "--name", "only6", "--network", "six", "--", "sleep", "600")
    w.out += ["```", "$ portway run -d --name only6 --network six -- sleep 600", "```", ""]
    addrs = w.pw("exec", "only6", "--", "ip", "-br", "addr", "show", "eth0")
    w.check("no IPv4 on an IPv6-only network", "fd00:77::2/64" in addrs
            and not re.search(r"\b\d+\.\d+\.\d+\.\d+/", addrs))
    resolv = w.pw("exec", "only6", "--", "cat", "/etc/resolv.conf")
    w.check("resolv.conf names the v6 gateway", "nameserver fd00:77::1" in resolv)

    w.text("## The host's side",
           "With its first IPv6 network portway turns IPv6 forwarding on in the host "
           "namespace (as Docker does). Each bridge and each host end of a veth accepts "
           "no router advertisements, so forwarding never changes how the host itself "
           "learns its routes from them; an IPv4-only network's bridge has IPv6 off "
           "altogether, so no IPv6 passes between its containers.")
    w.in_host("sysctl", "net.ipv6.conf.all.forwarding")
    bridge = net["Bridge"]
    w.in_host("ip", "-6", "-br", "addr", "show", "dev", bridge)
    w.in_host("sysctl", f"net.ipv6.conf.{bridge}.accept_ra")

    w.text("## Podman",
           "Podman's dual-stack and IPv6-only networks (`podman network create --ipv6`, "
           "or `--subnet` with an IPv6 subnet) get the same through portway-netavark: "
           "see [podman.md](podman.md).")
    w.text("## Seeing it: show, graph, trace",
           "`portway show` and `portway graph` list every subnet, gateway and address of "
           "both families:")
    shown = w.pw("show")
    w.check("show lists the v6 subnet and addresses",
            v6["Subnet"] in shown and web6 in shown and "fd00:77::2" in shown)
    w.text("`portway trace` follows IPv6 paths as it does IPv4 ones, static and `--live` "
           "(the probe then goes over IPv6 too, and still never leaves the host): the "
           "`ip6` and `inet` tables' chains, the IPv6 route lookups, neighbour discovery, "
           "NAT66 and the published ports' `pub_*6_*` maps. An IPv6 destination is "
           "written `[ADDR]:PORT` and `--from-ip` takes an IPv6 address. A container "
           "with both families is traced over IPv4 by default, as a client that looks up "
           "its name tries it (RFC 6724 prefers IPv4 to a unique local address); `-6` "
           "traces its IPv6 address (and `-4` insists on IPv4). From the outside to "
           "`web`'s published port over IPv6:")
    t = w.pw("trace", "outside", "web:80", "-6", "--live")
    w.check("trace over IPv6 is delivered, static and live agreeing",
            "verdict: delivered" in t and "static and live agree" in t
            and f"[{web6}]:80" in t)
    w.text("[how-packets-move.md](how-packets-move.md) shows every IPv6 path the "
           "firewall builds, each checked by a real connection.")


def main() -> int:
    w = World()
    make_world(w.host, w.outside)
    try:
        write(w)
    finally:
        subprocess.run(w.pw_argv("rm", "-f", "web", "cli", "lo6", "only6"),
                       capture_output=True)
        subprocess.run(w.pw_argv("network", "rm", "app", "six"), capture_output=True)
        subprocess.run(w.pw_argv("daemon", "stop"), capture_output=True)
        remove_world(w.host, w.outside)
        shutil.rmtree(w.state, ignore_errors=True)
    if w.failures:
        print("ipv6-doc: claims that did not hold: " + "; ".join(w.failures))
        print("\n".join(w.out))
        return 1
    (ROOT / "docs" / "ipv6.md").write_text("\n".join(w.out).rstrip() + "\n")
    print("wrote docs/ipv6.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
