"""run's flags through the engine, on fakes of the store and the kernel: what a container
is given (environment, directory, files, sysctls, ports, MACs), another container's
namespace shared and never torn down with the guest, and the network options."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import fake_host, rows

from portway.errors import Conflict


def test_network_options(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    net = h.networks.create("lab", subnet="10.5.0.0/24", aux_addresses=["router=10.5.0.2"],
                            options=["com.docker.network.bridge.name=br-lab"])
    assert net.bridge == "br-lab" and "br-lab" in w.bridges
    h.containers.run(["sleep", "1"], name="a", networks=["lab"])
    assert str(h.store.endpoints()[0].address) == "10.5.0.3"  # the aux address skipped
    with pytest.raises(Conflict, match="auxiliary address router"):
        h.containers.run(["sleep", "1"], networks=["lab"], ip="10.5.0.2")
    for bridge, message in (("br-lab", "taken by network lab"), ("eth0", "the host has")):
        with pytest.raises(Conflict, match=message):
            h.networks.create("x", options=[f"com.docker.network.bridge.name={bridge}"])
    assert rows(h) == (1, 1, 1)
