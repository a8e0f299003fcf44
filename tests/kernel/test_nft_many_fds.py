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
