"""SCTP ports, published as Docker publishes them (`-p 9132:80/sctp`).

This kernel may have no SCTP stack of its own (no sockets), but netfilter tracks and
NATs SCTP all the same: the test sends a real SCTP INIT, with its CRC32c, from the
outside namespace to the host's published port through a raw socket, and a raw socket
in the container sees it arrive rewritten to the container's address and port 80. The
control: the same INIT to a port that is not published does not arrive.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from conftest import Sandbox

SEND = r"""
import socket, struct, sys

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

dst, port = sys.argv[1], int(sys.argv[2])
# An INIT chunk: type 1, length 20, initiate tag, a_rwnd, streams, initial TSN.
chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234567, 65535, 1, 1, 42)
header = struct.pack("!HHII", 40000, port, 0, 0)
packet = header + chunk
packet = packet[:8] + struct.pack("<I", crc32c(packet)) + packet[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.sendto(packet, (dst, 0))
"""

RECEIVE = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    while True:
        data = s.recv(2048)
        ihl = (data[0] & 15) * 4
        dst = socket.inet_ntoa(data[16:20])
        sport, dport = struct.unpack("!HH", data[ihl:ihl + 4])
        print(f"{dst} {dport}", flush=True)
except socket.timeout:
    print("done", flush=True)
"""


def arrivals(sb: Sandbox, netns: str, port: int) -> list[str]:
    """What a raw SCTP socket in netns sees while the outside sends an INIT to the
    host's port."""
    recv = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", RECEIVE, "1.5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", sb.outside, "python3", "-c", SEND,
                        sb.host_addr, str(port)], check=True, timeout=30)
        out, _ = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return [line for line in out.splitlines() if line != "done"]


def test_a_published_sctp_port_is_dnated_to_the_container(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "sn", "--subnet", "10.132.0.0/24")
    sb.pw("run", "-d", "--name", "s1", "--network", "sn", "-p", "9132:80/sctp",
          "--", "sleep", "3600")
    c = sb.inspect("s1")
    netns = f"pw-{str(c['Id'])[:12]}"
    address = c["NetworkSettings"]["Networks"]["sn"]["IPAddress"]  # type: ignore[index]
    assert arrivals(sb, netns, 9132) == [f"{address} 80"]
    # The control: a port that is not published reaches no container.
    assert arrivals(sb, netns, 9133) == []
    # What the user sees of it, as Docker writes it.
    assert "0.0.0.0:9132->80/sctp" in sb.pw("ps").stdout
    assert sb.pw("port", "s1", "80/sctp").stdout.split()[0] == "0.0.0.0:9132"
    ports = json.loads(sb.pw("inspect", "s1").stdout)[0]["NetworkSettings"]["Ports"]
    assert ports["80/sctp"][0]["HostPort"] == "9132"
    # trace models the same path (without --live: its probes are TCP or UDP): through
    # the DNAT to the container, where (as here) no SCTP server listens.
    out = sb.pw("trace", "outside", f"{sb.host_addr}:9132/sctp").stdout
    assert f"9132 -> {address}:80 (DNAT)" in out, out
    assert "verdict: no-listener: reaches container s1, but nothing listens on 80/sctp" \
        in out, out
    # ... answered as this kernel answers: an ABORT only where it has SCTP (the raw
    # socket's INIT above met none: no SCTP stack, ICMP protocol unreachable).
    answer = "SCTP ABORT" if os.path.isdir("/proc/net/sctp") else \
        "ICMP protocol unreachable: this kernel has no SCTP"
    assert f"nothing listens on 80/sctp ({answer})" in out, out
    cp = sb.pw("trace", "--live", "outside", f"{sb.host_addr}:9132/sctp", check=False)
    assert cp.returncode == 2 and "not SCTP" in cp.stderr
    # audit finds the SCTP port in the DNAT maps as SCTP (not as a TCP port).
    audit = sb.pw("audit", "--json", check=False)
    assert audit.returncode in (0, 1), audit.stderr
    rows = [r for r in json.loads(audit.stdout)["targets"] if r.get("port") == 9132]
    assert rows and {r["protocol"] for r in rows} == {"sctp"}, rows
    # Gone with the container.
    sb.pw("rm", "-f", "s1")
    time.sleep(0.1)
    assert "9132" not in sb.in_host("nft", "list", "table", "inet", "portway").stdout


def test_sctp_on_ipv6_loopback_is_refused(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "sn6", "--ipv6", "--subnet", "10.133.0.0/24")
    before = sb.snapshot()
    cp = sb.pw("run", "-d", "--network", "sn6", "-p", "[::1]:9134:80/sctp", "--",
               "sleep", "1", check=False)
    assert cp.returncode == 2 and "relays only TCP and UDP from ::1" in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    assert sb.snapshot() == before
