"""Frames to 802.1 link-local group addresses (01:80:c2:00:00:0X) skip the bridge's checks.

A bridge does not forward frames sent to these group MACs: it hands them to the host
on the port they came in on, past the prerouting hook where `bridge portway` checks
every frame. So an attacker container sends each attack to 01:80:c2:00:00:03:

- an IPv6 router advertisement, to give the host a default route through it and an
  address of its choosing;
- UDP with a spoofed source to a host address;
- from an --internal network, a DNS query to another network's DNS server under
  that network's address: the query (and the data in its name) goes upstream;
- ARP, to put itself into the host's neighbour table.

First with portway's defences against this taken away (the control: the rule that
drops what arrives on a `pwv-` port itself, the source check, the `arp portway`
table, IPv6 off on the host end), to show each attack works; then after `gc` has put
them back, to show each fails.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from conftest import Sandbox, ip_json, sh

FRAMES = str(Path(__file__).with_name("frames.py"))
GROUP = "01:80:c2:00:00:03"  # 802.1X PAE: not forwarded, passed up on the port
PREFIX = "2001:db8:77::/64"
LISTEN = ("import socket, sys\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "s.bind((sys.argv[1], int(sys.argv[2])))\n"
          "print('listening', flush=True)\n"
          "while True:\n"
          "    data, peer = s.recvfrom(2048); print(peer[0], data, flush=True)\n")


def endpoint(sb: Sandbox, name: str, net: str) -> dict[str, str]:
    return sb.inspect(name)["NetworkSettings"]["Networks"][net]  # type: ignore[index, no-any-return]


def listener(ns: str, address: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """A UDP listener that logs each datagram; returned once its socket is bound."""
    out = log.open("w")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-u", "-c", LISTEN,
                             address, str(port)], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    if not seen(log, "listening", 30):
        proc.kill()
        proc.wait()
        raise AssertionError(f"listener on {address}:{port} did not start: {log.read_text()}")
    return proc


def seen(log: Path, marker: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        if marker in log.read_text():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def attacks(sb: Sandbox, round_: str, logs: dict[str, Path], wait: float) -> dict[str, bool]:
    """Every attack; which of them worked."""
    a, i = endpoint(sb, "attacker", "app"), endpoint(sb, "insider", "inner")
    gateway = a["Gateway"]
    # 1. A router advertisement.
    sb.pw("exec", "attacker", "--", "python3", FRAMES, "ra", "eth0", a["MacAddress"], GROUP,
          PREFIX)
    # 2. Spoofed UDP to the host's uplink address.
    sb.pw("exec", "attacker", "--", "python3", FRAMES, "udp", "eth0", a["MacAddress"],
          "203.0.113.9", GROUP, sb.host_addr, "9999", f"spoofed-{round_}")
    # 3. From the internal network, a query to the other network's DNS server, under an
    # address of that network, so it is forwarded upstream.
    spoofed = gateway.rsplit(".", 1)[0] + ".200"
    sb.pw("exec", "insider", "--", "python3", FRAMES, "dns", "eth0", i["MacAddress"],
          spoofed, GROUP, gateway, f"leak-{round_}.example.test")
    # 4. ARP claiming the outside's address is at the attacker.
    sb.pw("exec", "attacker", "--", "python3", FRAMES, "arp", "eth0", a["MacAddress"],
          sb.outside_addr, sb.host_addr, GROUP)
    worked = {"udp": seen(logs["udp"], f"spoofed-{round_}", wait),
              "dns": seen(logs["dns"], f"leak-{round_}", wait)}
    host_end = a["HostInterface"]
    routes = ip_json(sb.host, "-6", "route", "show", "dev", host_end)
    worked["ra-route"] = any(r.get("dst") == "default" for r in routes)
    addrs = sh("ip", "-n", sb.host, "-6", "addr", "show", "dev", host_end).stdout
    worked["ra-address"] = "2001:db8:77:" in addrs
    neigh = sh("ip", "-n", sb.host, "neigh", "show", "dev", host_end).stdout
    worked["arp"] = sb.outside_addr in neigh
    return worked


def test_link_local_frames_do_not_reach_the_host(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.95.0.0/24")
    sb.pw("network", "create", "inner", "--subnet", "10.96.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "insider", "--network", "inner", "--", "sleep", "3600")
    app = json.loads(sb.pw("network", "inspect", "app").stdout)[0]
    logs = {"udp": tmp_path / "udp.log", "dns": tmp_path / "dns.log"}
    procs = [listener(sb.host, "0.0.0.0", 9999, logs["udp"]),
             listener(sb.outside, sb.outside_addr, 53, logs["dns"])]
    try:
        # Control: portway's defences against this taken away; every attack works.
        guard = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", "inet", "portway",
                                      "guard").stdout)["nftables"]
        handle = next(item["rule"]["handle"] for item in guard if "rule" in item and
                      "pwv-*" in json.dumps(item["rule"]["expr"]))
        sb.in_host("nft", "delete", "rule", "inet", "portway", "guard", "handle", str(handle))
        sb.in_host("nft", "flush", "chain", "inet", "portway", f"src-{app['Id'][:12]}")
        sb.in_host("nft", "delete", "table", "arp", "portway")
        for name, net in (("attacker", "app"), ("insider", "inner")):
            port = endpoint(sb, name, net)["HostInterface"]
            sb.in_host("sysctl", "-qw", f"net.ipv6.conf.{port}.disable_ipv6=0",
                       f"net.ipv6.conf.{port}.accept_ra=1")
        worked = attacks(sb, "control", logs, wait=3)
        assert worked == dict.fromkeys(worked, True), worked

        report = sb.pw("gc").stdout
        for repair in ("restore chain inet portway guard", "re-create table arp portway",
                       f"restore chain inet portway src-{app['Id'][:12]}",
                       "re-create endpoint"):
            assert repair in report, report
        # IPv6 off on the port took the route and address away again.
        sb.in_host("ip", "neigh", "flush", "dev", endpoint(sb, "attacker", "app")[
            "HostInterface"])
        worked = attacks(sb, "guarded", logs, wait=1)
        assert worked == dict.fromkeys(worked, False), worked
        assert sb.pw("gc").stdout.startswith("nothing to repair")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_networks_addresses_come_only_from_its_bridge(sandbox: Sandbox,
                                                        tmp_path: Path) -> None:
    """A host on the uplink sends a DNS query under a container's address: the server
    would forward it upstream (with whatever its name carries) and send the answer to
    the container. Control: with the network's source check emptied, it does."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.109.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    app = json.loads(sb.pw("network", "inspect", "app").stdout)[0]
    web = endpoint(sb, "web", "app")
    log = tmp_path / "upstream.log"
    upstream = listener(sb.outside, sb.outside_addr, 53, log)
    try:
        (uplink,) = ip_json(sb.host, "link", "show", "uplink0")
        (wan,) = ip_json(sb.outside, "link", "show", "wan0")

        def spoof(marker: str) -> bool:
            sh("ip", "netns", "exec", sb.outside, "python3", FRAMES, "dns", "wan0",
               str(wan["address"]), web["IPAddress"], str(uplink["address"]),
               web["Gateway"], f"{marker}.example.test")
            return seen(log, marker, 2)

        sb.in_host("nft", "flush", "chain", "inet", "portway", f"src-{app['Id'][:12]}")
        # (Sent up to three times: the listener now starts bound, but on a loaded machine
        # the forward may still be late.)
        assert any(spoof(f"control{n}") for n in range(3)), \
            "control: the spoofed query is forwarded upstream"
        assert f"restore chain inet portway src-{app['Id'][:12]}" in sb.pw("gc").stdout
        assert not spoof("guarded")
        # The container's own queries still go out.
        query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06honest\x07example"
                 b"\x04test\x00\x00\x01\x00\x01")
        sb.pw("exec", "web", "--", "python3", "-c",
              "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
              f"{query!r}, (sys.argv[1], 53))", web["Gateway"])
        assert seen(log, "honest", 3)
    finally:
        upstream.kill()
        upstream.wait()
