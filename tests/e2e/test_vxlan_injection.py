"""A container never feeds this host's VXLAN devices.

The kernel's VXLAN socket listens on port 4789 of every address of the host and hands
what it receives to the device of the VNI in the header, whatever the outer source:
the inner frame enters that overlay network's bridge through the VXLAN port, which
`bridge portway` does not check (what comes from other hosts was checked there). So a
container of any other network, by one ordinary UDP datagram to its gateway or to the
host's VTEP address, could put a frame with any MAC and address into an overlay
network: past isolation, past the anti-spoofing checks. The attacker is a container on
a bridge network of host A; the victim a container on an overlay network of A.
Control: without the rule that stops it, the injected datagram is delivered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_overlay import Cluster, two_hosts

from conftest import Sandbox

FRAMES = str(Path(__file__).with_name("frames.py"))
LISTEN = ("import socket\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n"
          "while True:\n"
          "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n")
RULE = "containers never send to this host's VXLAN port"


@pytest.fixture
def cluster(sandbox: Sandbox, tmp_path: Path) -> Iterator[Cluster]:
    with two_hosts(sandbox, tmp_path, 1) as c:
        yield c


def delivered(sb: Sandbox, marker: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        if any(line.startswith(marker) for line in sb.pw("logs", "victim").stdout.splitlines()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_a_container_cannot_inject_frames_into_an_overlay(cluster: Cluster) -> None:
    c = cluster
    sb = c.a
    sb.pw("network", "create", "--driver", "overlay", "--subnet", "10.203.0.0/24", "ov")
    sb.pw("network", "create", "app", "--subnet", "10.98.0.0/24")
    ov = json.loads(sb.pw("network", "inspect", "ov").stdout)[0]
    vni = ov["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
    sb.pw("run", "-d", "--name", "victim", "--network", "ov", "--", "python3", "-u", "-c",
          LISTEN)
    sb.pw("run", "-d", "--name", "attacker", "--network", "app", "--", "sleep", "3600")
    victim = sb.inspect("victim")["NetworkSettings"]["Networks"]["ov"]  # type: ignore[index]
    gateway = sb.inspect("attacker")["NetworkSettings"]["Networks"]["app"]["Gateway"]  # type: ignore[index]
    vtep = sb.env["PORTWAY_ADVERTISE_ADDRESS"]

    def inject(round_: str) -> dict[str, bool]:
        """The same frame through each of the host's addresses; which got through."""
        out = {}
        for name, target in (("gateway", gateway), ("vtep", vtep)):
            marker = f"{round_}-{name}"
            # From an address of the overlay no container has, with a MAC of no one.
            sb.pw("exec", "attacker", "--", "python3", FRAMES, "vxlan", target, vni,
                  "02:42:de:ad:be:ef", "10.203.0.200", victim["MacAddress"],
                  victim["IPAddress"], "9999", marker)
            out[name] = delivered(sb, marker, 2)
        return out

    time.sleep(0.3)  # the listener binds
    guard = json.loads(sb.in_host("nft", "-j", "-a", "list", "chain", "inet", "portway",
                                  "to_host").stdout)["nftables"]
    handle = next(item["rule"]["handle"] for item in guard
                  if "rule" in item and item["rule"].get("comment") == RULE)
    sb.in_host("nft", "delete", "rule", "inet", "portway", "to_host", "handle", str(handle))
    assert inject("control") == {"gateway": True, "vtep": True}
    assert "restore chain inet portway to_host" in sb.pw("gc").stdout
    assert inject("guarded") == {"gateway": False, "vtep": False}
    assert sb.pw("gc").stdout.startswith("nothing to repair")
