"""`make demo`: portway at work in a throwaway host namespace, narrated.

Nothing here touches the machine's own networking: a fresh namespace plays
the host, another plays the outside world (joined by a veth, the uplink),
and a temporary state dir holds portway's state. Everything is removed at
the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

from portway.testbed import make_world, reap_orphans, release, remove_world

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
PORTWAY = os.path.join(os.path.dirname(sys.executable), "portway")


class Demo:
    def __init__(self, host: str, outside: str, state_dir: str, color: bool) -> None:
        self.host, self.outside, self.state_dir = host, outside, state_dir
        self.color = color
        self.failures = 0

    def c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def title(self, text: str) -> None:
        print("\n" + self.c(BOLD, f"== {text}"))

    def say(self, text: str) -> None:
        print(self.c(DIM, f"   {text}"))

    def run(self, *args: str, show: bool = True, check: bool = True) -> str:
        shown = "portway " + " ".join(a if " " not in a else repr(a) for a in args)
        if show:
            print(self.c(BOLD, f"$ {shown}"))
        cp = subprocess.run([PORTWAY, "--host-netns", self.host, "--state-dir",
                             self.state_dir, *args], capture_output=True, text=True,
                            timeout=120)
        if show and cp.stdout.strip():
            print(cp.stdout.rstrip())
        if cp.stderr.strip():
            print(cp.stderr.rstrip())
        if check and cp.returncode != 0:
            raise SystemExit(f"demo: '{shown}' failed")
        return cp.stdout

    def host_cmd(self, *args: str, show: bool = True) -> str:
        if show:
            print(self.c(BOLD, f"$ ip netns exec {self.host} {' '.join(args)}"))
        out = subprocess.run(["ip", "netns", "exec", self.host, *args], capture_output=True,
                             text=True, check=True).stdout
        if show:
            print(out.rstrip())
        return out

    def check(self, what: str, ok: bool) -> None:
        mark = self.c(GREEN, "ok  ") if ok else self.c(RED, "FAIL")
        print(f"   [{mark}] {what}")
        if not ok:
            self.failures += 1


GET = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).status)"


def outside_get(d: Demo, url: str) -> str:
    print(d.c(BOLD, f"$ ip netns exec {d.outside} python3 -c \"{GET}\" {url}"))
    out = subprocess.run(["ip", "netns", "exec", d.outside, "python3", "-c", GET, url],
                         capture_output=True, text=True).stdout.strip()
    print(out)
    return out


def wait_listening(d: Demo, container: str, address: str, port: int) -> bool:
    probe = ("import socket, sys, time\n"
             "for _ in range(100):\n"
             "    try:\n"
             f"        socket.create_connection(('{address}', {port}), 0.2).close(); break\n"
             "    except OSError: time.sleep(0.05)\n"
             "else: sys.exit(1)\n")
    cp = subprocess.run([PORTWAY, "--host-netns", d.host, "--state-dir", d.state_dir, "exec",
                         container, "--", "python3", "-c", probe], capture_output=True)
    return cp.returncode == 0


def scenario(d: Demo) -> None:
    d.title("1. A network is a Linux bridge with a gateway address and a subnet")
    d.run("network", "create", "app", "--subnet", "10.77.0.0/24")
    net = json.loads(d.run("network", "inspect", "app", show=False))[0]
    bridge = net["Bridge"]
    d.host_cmd("ip", "-br", "addr", "show", "dev", bridge)
    d.say(f"{bridge} is the network's switch; 10.77.0.1 on it is the containers' gateway.")

    d.title("2. A container is a network namespace joined to the bridge by a veth pair")
    d.run("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
          "python3", "-m", "http.server", "80")
    d.run("run", "-d", "--name", "worker", "--network", "app", "--", "sleep", "3600")
    d.run("ps")
    web = json.loads(d.run("inspect", "web", show=False))[0]
    web_net = web["NetworkSettings"]["Networks"]["app"]
    d.say(f"web's namespace is {web['NetworkSettings']['SandboxKey']} (see 'ip netns').")
    d.say(f"Its eth0 ({web_net['IPAddress']}, {web_net['MacAddress']}) is one end of a veth; "
          f"the other end, {web_net['HostInterface']}, is a port of {bridge}:")
    d.host_cmd("ip", "-br", "link", "show", "master", bridge)
    d.run("exec", "web", "--", "ip", "route")

    d.title("3. Containers on one network reach each other through the bridge, by name")
    ok = wait_listening(d, "worker", web_net["IPAddress"], 80)
    d.run("exec", "worker", "--", "cat", "/etc/resolv.conf")
    d.say("portway's DNS server listens on each network's gateway and knows its containers:")
    d.run("exec", "worker", "--", "dig", "+short", "web")
    out = d.run("run", "--rm", "--name", "client", "--network", "app", "--", "python3", "-c",
                "import urllib.request as u; "
                "r = u.urlopen('http://web/', timeout=5); "
                "print('HTTP', r.status, 'from web')")
    d.check("a throwaway client container fetched http://web/ by name", ok and "HTTP 200" in out)

    d.title("4. A published port: DNAT in the kernel, no proxy process")
    d.run("port", "web")
    d.say("Reached from the outside namespace (another machine on the host's network):")
    out = outside_get(d, "http://198.51.100.1:8080/")
    log = d.run("logs", "web", show=False)
    d.check("the outside client got HTTP 200 from web through 198.51.100.1:8080",
            out == "200")
    d.check("web saw the client's real address (198.51.100.2), not the host's",
            "198.51.100.2 - -" in log)
    out = d.host_cmd("python3", "-c", GET, "http://127.0.0.1:8080/", show=False).strip()
    d.check("a host process reached it on 127.0.0.1:8080", out == "200")
    d.host_cmd("nft", "list", "map", "inet", "portway", "pub_any_addr")
    d.say("Ports are elements of maps: adding one is one element, whatever their number.")

    d.title("5. Outbound: masquerade to the host's address")
    server = subprocess.Popen(["ip", "netns", "exec", d.outside, "python3", "-m",
                               "http.server", "9000", "--bind", "198.51.100.2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(d, "worker", "198.51.100.2", 9000)
        d.run("exec", "worker", "--", "python3", "-c", GET, "http://198.51.100.2:9000/")
    finally:
        server.terminate()
        seen = server.communicate(timeout=5)[0]
    d.check("the outside server saw the request come from the host (198.51.100.1)",
            "198.51.100.1 - -" in seen)

    d.title("6. An internal network, and a container on two networks")
    d.run("network", "create", "backend", "--subnet", "10.88.0.0/24", "--internal")
    d.run("run", "-d", "--name", "db", "--network", "backend", "--",
          "python3", "-m", "http.server", "5432")
    d.run("network", "connect", "backend", "web")
    d.run("exec", "web", "--", "ip", "-br", "addr")
    ok = wait_listening(d, "web", "10.88.0.2", 5432)
    d.check("web reaches db over its second interface (eth1, 10.88.0.0/24)", ok)
    routes = d.run("exec", "db", "--", "ip", "route", show=False)
    d.check("db, on an internal network only, has no default route", "default" not in routes)

    d.title("7. Special modes")
    d.run("run", "--rm", "--network", "none", "--", "ip", "-br", "link")
    d.say("--network none: only lo. --network host shares the host's namespace and gives up "
          "isolation (portway warns).")

    d.title("8. The store is the truth; gc repairs the kernel when it drifts")
    d.host_cmd("ip", "link", "del", bridge)
    d.host_cmd("nft", "flush", "ruleset")
    d.say(f"(someone deleted {bridge} and flushed the firewall)")
    d.run("gc")
    d.check("web is reachable again after gc re-created the bridge and its ports",
            wait_listening(d, "worker", web_net["IPAddress"], 80))
    d.check("a second gc finds nothing to repair",
            d.run("gc", show=False).startswith("nothing to repair"))
    d.check("the published port works again from outside",
            outside_get(d, "http://198.51.100.1:8080/") == "200")

    d.title("9. See it: the wiring, and the path of a packet rule by rule")
    d.run("show")
    out = d.run("trace", "outside", "web:80", "--from-ip", "198.51.100.2", "--live")
    d.check("trace follows the outside client to web through DNAT, verdict delivered",
            "verdict: delivered" in out and "(DNAT)" in out)
    d.check("a real probe, traced by the kernel itself, took the same path",
            "static and live agree" in out)
    out = d.run("trace", "worker", "db:5432")
    d.check("and names the rule that keeps worker (app) from db (internal backend)",
            "verdict: dropped" in out)

    d.title("10. Removal leaves nothing behind")
    d.run("rm", "-f", "web", "worker", "db")
    d.run("network", "rm", "app", "backend")
    left = d.host_cmd("ip", "-br", "link", show=False).split()
    d.check("no bridge or veth is left in the host namespace",
            not [w for w in left if w.startswith(("pwbr-", "pwv-"))])
    namespaces = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    d.check("no container namespace is left", f"pw-{web['Id'][:12]}" not in namespaces)


def cleanup(host: str, outside: str, state_dir: str) -> None:
    if os.path.exists(os.path.join(state_dir, "portway.db")):
        base = [PORTWAY, "--host-netns", host, "--state-dir", state_dir]
        ids = subprocess.run([*base, "ps", "-a", "-q"], capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run([*base, "rm", "-f", *ids], capture_output=True)
        nets = [n for n in json.loads(subprocess.run([*base, "network", "ls", "--json"],
                                                     capture_output=True, text=True).stdout
                                      or "[]")
                if n["Driver"] not in ("host", "null")]  # host and none are not removable
        if nets:
            subprocess.run([*base, "network", "rm", *[n["Name"] for n in nets]],
                           capture_output=True)
        subprocess.run([*base, "daemon", "stop"], capture_output=True)
    remove_world(host, outside)
    shutil.rmtree(state_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="portway-demo", description=__doc__)
    parser.add_argument("--keep", action="store_true",
                        help="leave the sandbox running to explore; prints how to clean up")
    parser.add_argument("--clean", nargs=3, metavar=("HOST_NS", "OUTSIDE_NS", "STATE_DIR"),
                        help="remove a sandbox kept by --keep")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it creates network namespaces)")
    if args.clean:
        cleanup(*args.clean)
        print("removed")
        return
    for name in reap_orphans():
        print(f"removed {name}, left by a run that was killed")
    tag = secrets.token_hex(3)
    host, outside = f"pwdemo-host-{tag}", f"pwdemo-out-{tag}"
    state_dir = tempfile.mkdtemp(prefix="portway-demo-")
    d = Demo(host, outside, state_dir, color=sys.stdout.isatty())
    print(d.c(BOLD, "portway demo") + f": host namespace {host}, outside namespace {outside}, "
          f"state in {state_dir}")
    print("Nothing here touches this machine's own networking.")
    started = time.monotonic()
    try:
        make_world(host, outside, state_dir)
        scenario(d)
    finally:
        if args.keep:
            for name in (host, outside):
                release(name)  # the user's now: not a killed run's to reap
            print(f"\nKept. Explore with:\n  export PORTWAY_HOST_NETNS={host} "
                  f"PORTWAY_STATE_DIR={state_dir}\n  {PORTWAY} ps -a\n"
                  f"  ip netns exec {host} ip -br link\n"
                  f"Clean up with:\n  {sys.executable} -m portway.demo --clean {host} "
                  f"{outside} {state_dir}")
        else:
            cleanup(host, outside, state_dir)
    print(f"\n{d.failures} check(s) failed" if d.failures else
          f"\nall checks passed in {time.monotonic() - started:.1f} s; sandbox removed"
          if not args.keep else "")
    sys.exit(1 if d.failures else 0)


if __name__ == "__main__":
    main()
