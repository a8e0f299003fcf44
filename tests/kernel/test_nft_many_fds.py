"""libnftables waits for the kernel with select(), which glibc aborts on a descriptor
numbered 1024 or more: a portwayd holding many descriptors (a thousand containers)
must still open nftables contexts (portway.kernel.nft keeps low ones in reserve)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BUSY = """
import os
from portway.kernel import netns
from portway.kernel.nft import Nft
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # as a busy daemon's
assert held[-1] >= 1024

def body():
    contexts = [Nft() for _ in range(3)]  # (more than one: each takes a low one)
    for i, nft in enumerate(contexts):
        nft.apply([{"add": {"table": {"family": "inet", "name": f"t{i}"}}}])
    names = sorted(t["table"]["name"] for t in contexts[0].list_ruleset() if "table" in t)
    for nft in contexts:
        nft.close()
    return names

print(netns.in_new_netns(body))
"""


def test_contexts_open_while_a_thousand_descriptors_are_held() -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    # A throwaway namespace of its own (netns.in_new_netns): nothing outside it is read
    # or changed. A process of its own: the abort this guards against ends it.
    cp = subprocess.run([sys.executable, "-c", BUSY], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, (cp.returncode, cp.stderr[-500:])
    assert cp.stdout.strip() == "['t0', 't1', 't2']"


PROBE = """
import os, socket
from portway.kernel import netns, nftrace
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # as a busy daemon's
assert held[-1] >= 1024

def body():
    os.system("ip link set lo up")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 8081))
        server.listen()
        listener = nftrace.TraceListener()
        try:
            assert listener.sock.fileno() >= 1024
            return (nftrace.send_probe("tcp", "127.0.0.1", 8081, 40001)[0],
                    nftrace.send_probe("tcp", "127.0.0.1", 8082, 40002)[0],
                    listener.read(quiet=0.05, limit=0.2))
        finally:
            listener.close()

print(netns.in_new_netns(body))
"""


def test_live_probes_are_sent_and_read_while_a_thousand_descriptors_are_held() -> None:
    # trace --live in a portwayd of a thousand containers: its probe's socket and its
    # trace listener are numbered past 1024, where select() refuses them.
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    cp = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, (cp.returncode, cp.stderr[-500:])
    assert cp.stdout.strip() == "('connected', 'refused', [])"
