"""A throwaway world for the demo, the benchmarks and the tests: a namespace that plays
the host, joined by a veth (its uplink) to one that plays everything beyond it.

The host namespace gets its own /etc/netns/HOST/resolv.conf naming the outside
namespace, so nothing portway's DNS server forwards can leave this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# Client programs for `python3 -c` in a namespace: GET URL prints the HTTP status (or
# "fail ERROR"); WAIT ADDRESS PORT returns once something listens there (at most 5 s).
HTTP_GET = ("import sys, urllib.request as u\n"
            "try: print(u.urlopen(sys.argv[1], timeout=2).status)\n"
            "except Exception as e: print('fail', type(e).__name__)\n")
WAIT_LISTENING = ("import socket, sys, time\n"
                  "for _ in range(100):\n"
                  "    try:\n"
                  "        socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.2)"
                  ".close(); break\n"
                  "    except OSError: time.sleep(0.05)\n")

HOST_ADDR = "198.51.100.1"
OUTSIDE_ADDR = "198.51.100.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def make_world(host: str, outside: str) -> None:
    """host and outside, lo up in both, uplink0 (HOST_ADDR) <-> wan0 (OUTSIDE_ADDR),
    a default route from the host to the outside."""
    for ns in (host, outside):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", host, "link", "add", "uplink0", "type", "veth", "peer", "name", "wan0",
        "netns", outside)
    _ip("-n", host, "addr", "add", f"{HOST_ADDR}/24", "dev", "uplink0")
    _ip("-n", outside, "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "wan0")
    _ip("-n", host, "link", "set", "uplink0", "up")
    _ip("-n", outside, "link", "set", "wan0", "up")
    _ip("-n", host, "route", "add", "default", "via", OUTSIDE_ADDR)
    os.makedirs(f"/etc/netns/{host}", exist_ok=True)
    with open(f"/etc/netns/{host}/resolv.conf", "w") as f:
        f.write(f"nameserver {OUTSIDE_ADDR}\nsearch example.test\n")


def remove_world(host: str, outside: str) -> None:
    """Both namespaces and the host's /etc/netns entry; missing counts as removed."""
    for ns in (host, outside):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    shutil.rmtree(f"/etc/netns/{host}", ignore_errors=True)
