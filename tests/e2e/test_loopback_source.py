"""Nothing from a bridge claims to come from the host's own 127/8.

portway's bridges have route_localnet (a host process reaching a port published on
127.0.0.1 is DNATed into the bridge with that source), and so the kernel no longer
drops a packet that arrives there from 127/8 as a martian (only from an address lo
has, such as 127.0.0.1, or with reverse-path filtering on). A container whose port
`bridge portway` does not check (a network without IPAM: its containers choose their
own addresses) could then send a host service on any host address a datagram from
127.0.0.2, which services that trust 127/8 take for the host's own. Control: without
the guard's rule against it, the datagram is delivered.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from test_netavark import Podmanish, podman  # noqa: F401  (the fixture)
from test_netavark_current import simplebridge

from conftest import ip_json, sh

RULE = "nothing from a bridge comes from the host's loopback addresses"
LISTEN = ("import socket, sys\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "s.bind(('0.0.0.0', int(sys.argv[1])))\n"
          "s.settimeout(float(sys.argv[2]))\n"
          "try:\n"
          "    data, peer = s.recvfrom(2048); print(data.decode(), peer[0], flush=True)\n"
          "except OSError:\n"
          "    print('nothing', flush=True)\n")


def test_a_container_never_sends_from_127(podman: Podmanish) -> None:  # noqa: F811
    p = podman
    data = simplebridge(name="noneipam", network_interface="podman5",
                        subnets=[], ipam_options={"driver": "none"})
    data["networks"] = {"noneipam": {"interface_name": "eth0"}}
    data["network_info"] = {"noneipam": data["network_info"]["podman"]}
    ns = p.namespace()
    out = json.loads(p.nv("setup", ns, data=data).stdout)["noneipam"]
    mac = out["interfaces"]["eth0"]["mac_address"]
    bridge_mac = str(ip_json(p.sb.host, "link", "show", "podman5")[0]["address"])
    frames = str(Path(__file__).with_name("frames.py"))

    def send(marker: str, wait: str) -> str:
        listener = subprocess.Popen(["ip", "netns", "exec", p.sb.host, "python3", "-u",
                                     "-c", LISTEN, "9999", wait],
                                    stdout=subprocess.PIPE, text=True)
        p.pids.append(listener.pid)
        time.sleep(0.5)  # listening
        sh("ip", "netns", "exec", os.path.basename(ns), "python3", frames, "udp", "eth0",
           mac, "127.0.0.2", bridge_mac, p.sb.host_addr, "9999", marker)
        got, _ = listener.communicate(timeout=10)
        return got.strip()

    guard = json.loads(p.sb.in_host("nft", "-j", "-a", "list", "chain", "inet", "portway",
                                    "guard_unlisted").stdout)["nftables"]
    handle = next(item["rule"]["handle"] for item in guard
                  if "rule" in item and item["rule"].get("comment") == RULE)
    p.sb.in_host("nft", "delete", "rule", "inet", "portway", "guard_unlisted", "handle",
                 str(handle))
    assert send("control", "3") == "control 127.0.0.2"
    assert "restore chain inet portway guard_unlisted" in p.pw("gc").stdout
    assert send("guarded", "2") == "nothing"
    p.nv("teardown", ns, data=data)
