"""portway-netavark against netavark's current contract (1.14 and later, to 2.x), in a
throwaway host.

The inputs are written here in the shapes of netavark's own test inputs
(test/testfiles/*.json in containers/netavark); each names the file it mirrors. The
oracles are what a container and the host see: `ip -j`, real connections, `dig`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from typing import Any

from test_netavark import NETAVARK, Podmanish, podman  # noqa: F401  (the fixture)

from conftest import ip_json

NET_ID = "53ce4390f2adb1681eb1a90ec8b48c49c015e0a8d336c197637e7f65e365fa9e"


def simplebridge(**network: Any) -> dict[str, Any]:
    """Mirrors testfiles/simplebridge.json: a 12-character container id (not Podman's 64
    hex digits), one IPv4 network; `network` adds to network_info."""
    info: dict[str, Any] = {
        "dns_enabled": False, "driver": "bridge", "id": NET_ID, "internal": False,
        "ipv6_enabled": False, "name": "podman", "network_interface": "podman0",
        "subnets": [{"gateway": "10.88.0.1", "subnet": "10.88.0.0/16"}]}
    info.update(network)
    return {"container_id": "6ce776ea58b5", "container_name": "testcontainer",
            "networks": {"podman": {"interface_name": "eth0",
                                    "static_ips": ["10.88.0.2"]}},
            "network_info": {"podman": info}}


def routes(ns: str, version: int = 4) -> list[dict[str, Any]]:
    return [dict(r) for r in ip_json(os.path.basename(ns), f"-{version}", "route")]


def test_version_is_a_current_netavark() -> None:
    cp = subprocess.run([NETAVARK, "version"], capture_output=True, text=True, check=True)
    version = json.loads(cp.stdout)
    assert list(version) == ["version", "commit", "build_time", "target",
                             "default_fw_driver"]
    major, minor, _ = (int(x) for x in version["version"].split("."))
    assert (major, minor) >= (1, 14)


def test_any_container_id(podman: Podmanish) -> None:  # noqa: F811
    p = podman
    data = simplebridge()
    ns = p.namespace()
    out = json.loads(p.nv("setup", ns, data=data).stdout)
    assert out["podman"]["interfaces"]["eth0"]["subnets"] == [
        {"ipnet": "10.88.0.2/16", "gateway": "10.88.0.1"}]
    assert p.pw("ps", "-a", "-q").stdout.split() == ["6ce776ea58b5"]
    p.nv("teardown", ns, data=data)
    assert p.nv("teardown", ns, data=data).stdout == ""
    bad = copy.deepcopy(data)
    bad["container_id"] = ""
    cp = p.nv("setup", ns, data=bad, check=False)
    assert cp.returncode == 1 and "container_id" in json.loads(cp.stdout)["error"]
