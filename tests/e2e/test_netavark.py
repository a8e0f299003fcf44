"""portway-netavark fed netavark-format JSON directly, as Podman would, in a throwaway host.

The input is the shape Podman 4.3 sends (data/ holds a capture of a real call and its
command line); the containers are plain named namespaces standing in for Podman's.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, Sandbox, ip_json, sh, user_networks
from portway.testbed import HOST_ADDR6, HTTP_GET, WAIT_LISTENING

NETAVARK = str(BIN / "portway-netavark")
DATA = Path(__file__).with_name("data")
NET_ID = "41134968bfba5d6a3e88b7eedbaad47b55a2a677e514273eaff7380ec88ce133"


def net_info(name: str = "a1pnet", third: int = 89, nid: str = NET_ID,
             bridge: str = "podman1", internal: bool = False) -> dict[str, Any]:
    return {"name": name, "id": nid, "driver": "bridge", "network_interface": bridge,
            "created": "2026-11-28T04:39:02.972042187Z",
            "subnets": [{"subnet": f"10.{third}.0.0/24", "gateway": f"10.{third}.0.1"}],
            "ipv6_enabled": False, "internal": internal, "dns_enabled": True,
            "ipam_options": {"driver": "host-local"}}


def options(name: str, ip: str, ports: list[dict[str, Any]] | None = None,
            **extra: Any) -> dict[str, Any]:
    return {"container_id": secrets.token_hex(32), "container_name": name,
            "port_mappings": ports or [],
            "networks": {"a1pnet": {"static_ips": [ip], "aliases": [name[:12]],
                                    "interface_name": "eth0", **extra}},
            "network_info": {"a1pnet": net_info()}}


@dataclass
class Podmanish:
    sb: Sandbox
    config: Path
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def nv(self, *args: str, data: Any = None, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(["ip", "netns", "exec", self.sb.host, NETAVARK, "--config",
                             str(self.config), "--rootless=false",
                             "--aardvark-binary=/usr/lib/podman/aardvark-dns", *args],
                            input=json.dumps(data) if data is not None else "",
                            capture_output=True, text=True, timeout=60)
        if check:
            assert cp.returncode == 0, (args, cp.stdout, cp.stderr)
        return cp

    def namespace(self) -> str:
        name = f"{self.sb.host}-c{len(self.namespaces)}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        self.namespaces.append(name)
        return f"/run/netns/{name}"

    def serve(self, netns: str, port: int = 80) -> None:
        ns = os.path.basename(netns)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-m", "http.server",
                                 "--bind", "::", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.pids.append(proc.pid)
        sh("ip", "netns", "exec", ns, "python3", "-c", WAIT_LISTENING, "127.0.0.1", str(port))

    def pw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        state = self.config / "portway" / self.sb.host
        return subprocess.run([str(BIN / "portway"), "--host-netns", self.sb.host,
                               "--state-dir", str(state), *args], capture_output=True,
                              text=True, timeout=60, check=check)


@pytest.fixture
def podman(sandbox: Sandbox) -> Iterator[Podmanish]:
    # A short directory, as Podman's /run/containers/networks is: the daemon's socket
    # lives three levels below it, and a socket's path may have at most 107 bytes
    # (pytest's own temporary paths get longer with every worker).
    config = Path(tempfile.mkdtemp(prefix="pwnv-"))
    p = Podmanish(sandbox, config / "networks")
    try:
        yield p
    finally:
        for pid in p.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in p.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        state = p.config / "portway" / sandbox.host
        left: list[str] = []
        networks: list[Any] = []
        if (state / "portway.db").exists():
            # Every test tears down what it set up: nothing of Podman's is left.
            left = p.pw("ps", "-a", "-q").stdout.split()
            networks = user_networks(p.pw("network", "ls", "--json").stdout)
            p.pw("daemon", "stop")
        shutil.rmtree(config, ignore_errors=True)
        assert left == [] and networks == [], (left, networks)


def get(where: list[str], url: str) -> str:
    return subprocess.run([*where, "python3", "-c", HTTP_GET, url], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def test_setup_and_teardown_like_podman(podman: Podmanish) -> None:
    p = podman
    # What Podman 4.3.1 sent netavark on this kind of machine (captured), as is.
    capture = json.loads((DATA / "podman-4.3-setup-input.json").read_text())
    web = p.namespace()
    out = json.loads(p.nv("setup", web, data=capture).stdout)
    block = out["a1pnet"]
    iface = block["interfaces"]["eth0"]
    assert iface["subnets"] == [{"ipnet": "10.89.0.88/24", "gateway": "10.89.0.1"}]
    assert block["dns_server_ips"] == ["10.89.0.1"]
    assert block["dns_search_domains"] == ["dns.podman"]
    ns = os.path.basename(web)
    inner = {str(x["ifname"]): x for x in ip_json(ns, "addr")}
    assert inner["eth0"]["address"] == iface["mac_address"]
    assert [a["local"] for a in inner["eth0"]["addr_info"]  # type: ignore[attr-defined]
            if a["family"] == "inet"] == ["10.89.0.88"]
    assert {str(x["ifname"]) for x in ip_json(p.sb.host, "link")} >= {"podman1"}
    # The rules are portway's: the published port is an element of its map.
    assert "8080" in p.sb.in_host("nft", "list", "map", "inet", "portway",
                                  "pub_any_addr").stdout
    # It works: from the outside namespace through the published port, by name via DNS.
    p.serve(web)
    assert get(["ip", "netns", "exec", p.sb.outside], f"http://{p.sb.host_addr}:8080/") == "200"
    name = capture["container_name"]
    dig = sh("ip", "netns", "exec", ns, "dig", "+short", "@10.89.0.1",
             f"{name}.dns.podman").stdout.split()
    assert dig == ["10.89.0.88"]
    # portway sees it, and leaves it to Podman.
    assert "(run by podman)" in p.pw("ps").stdout
    cp = p.pw("rm", "-f", name, check=False)
    assert cp.returncode == 1 and "run by Podman" in cp.stderr
    # Teardown, twice: the second has nothing to do and says so by succeeding.
    p.nv("teardown", web, data=capture)
    assert p.nv("teardown", web, data=capture).stdout == ""
    assert "podman1" not in {str(x["ifname"]) for x in ip_json(p.sb.host, "link")}
    assert "portway" not in p.sb.in_host("nft", "list", "tables").stdout
    assert [x["ifname"] for x in ip_json(ns, "link")] == ["lo"]


def test_two_containers_several_networks_static_mac_internal(podman: Podmanish) -> None:
    p = podman
    a, b = p.namespace(), p.namespace()
    back = net_info("back", 90, "ab" * 32, "podman2", internal=True)
    first = options("alpha", "10.89.0.10", static_mac="02:00:00:00:00:0a")
    first["networks"]["back"] = {"static_ips": ["10.90.0.10"], "aliases": ["db"],
                                 "interface_name": "eth1"}
    first["network_info"]["back"] = back
    out = json.loads(p.nv("setup", a, data=first).stdout)
    assert out["a1pnet"]["interfaces"]["eth0"]["mac_address"] == "02:00:00:00:00:0a"
    assert out["back"]["interfaces"]["eth1"]["subnets"][0]["ipnet"] == "10.90.0.10/24"
    second = options("beta", "10.89.0.11")
    p.nv("setup", b, data=second)
    p.serve(a)
    # beta reaches alpha by name and alias; the internal network gave alpha no route out.
    nb = os.path.basename(b)
    assert sh("ip", "netns", "exec", nb, "dig", "+short", "@10.89.0.1", "alpha").stdout.split() \
        == ["10.89.0.10"]
    assert get(["ip", "netns", "exec", nb], "http://10.89.0.10/") == "200"
    routes = ip_json(os.path.basename(a), "route")
    assert [r.get("dev") for r in routes if r["dst"] == "default"] == ["eth0"]
    # Podman's network disconnect: teardown of one network only.
    only_back = copy.deepcopy(first)
    del only_back["networks"]["a1pnet"]
    p.nv("teardown", a, data=only_back)
    assert "eth1" not in {x["ifname"] for x in ip_json(os.path.basename(a), "link")}
    assert "podman2" not in {str(x["ifname"]) for x in ip_json(p.sb.host, "link")}
    # ...and connect: setup with just that network again.
    again = json.loads(p.nv("setup", a, data=only_back).stdout)
    assert list(again) == ["back"]
    p.nv("teardown", a, data=first)
    p.nv("teardown", b, data=second)


def test_port_ranges_and_both_protocols(podman: Podmanish) -> None:
    p = podman
    web = p.namespace()
    data = options("ranger", "10.89.0.20", [
        {"host_ip": "", "container_port": 80, "host_port": 9080, "range": 3,
         "protocol": "tcp"},
        {"host_ip": "127.0.0.1", "container_port": 53, "host_port": 5353, "range": 1,
         "protocol": "tcp,udp"}])
    p.nv("setup", web, data=data)
    any_addr = p.sb.in_host("nft", "list", "map", "inet", "portway", "pub_any_addr").stdout
    assert all(f"tcp . {port}" in any_addr for port in (9080, 9081, 9082))
    one = p.sb.in_host("nft", "list", "map", "inet", "portway", "pub_ip_addr").stdout
    assert "127.0.0.1 . tcp . 5353" in one and "127.0.0.1 . udp . 5353" in one
    p.serve(web, 81)
    assert get(["ip", "netns", "exec", p.sb.outside], f"http://{p.sb.host_addr}:9081/") == "200"
    # A second container may not take a published port that is taken.
    clash = options("clash", "10.89.0.21", [{"host_ip": "", "container_port": 80,
                                            "host_port": 9082, "range": 1,
                                            "protocol": "tcp"}])
    # ...and a network the failed setup made for it goes again.
    clash["networks"]["back"] = {"static_ips": ["10.90.0.21"], "interface_name": "eth1"}
    clash["network_info"]["back"] = net_info("back", 90, "ab" * 32, "podman2")
    other = p.namespace()
    cp = p.nv("setup", other, data=clash, check=False)
    assert cp.returncode == 1 and "9082" in json.loads(cp.stdout)["error"]
    assert [x["ifname"] for x in ip_json(os.path.basename(other), "link")] == ["lo"]
    assert "podman2" not in {str(x["ifname"]) for x in ip_json(p.sb.host, "link")}
    assert [n["Name"] for n in user_networks(p.pw("network", "ls", "--json").stdout)] == \
        ["a1pnet"]
    p.nv("teardown", web, data=data)


def test_dual_stack_and_ipv6_only_networks(podman: Podmanish) -> None:
    """Podman's `network create --ipv6` (both families) and `--subnet fd..::/64` (IPv6
    only): an address per subnet, each with its gateway, DNS on every gateway, a port
    published on both families."""
    p = podman
    a, b, c = p.namespace(), p.namespace(), p.namespace()
    dual = net_info()
    dual.update(ipv6_enabled=True, subnets=[
        {"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"},
        {"subnet": "fd00:89::/64", "gateway": "fd00:89::1"}])
    web = options("web6", "10.89.0.10", [{"host_ip": "", "container_port": 80,
                                          "host_port": 8080, "range": 1,
                                          "protocol": "tcp"}])
    web["networks"]["a1pnet"]["static_ips"] = ["10.89.0.10", "fd00:89::10"]
    web["network_info"]["a1pnet"] = dual
    out = json.loads(p.nv("setup", a, data=web).stdout)["a1pnet"]
    assert out["interfaces"]["eth0"]["subnets"] == [
        {"ipnet": "10.89.0.10/24", "gateway": "10.89.0.1"},
        {"ipnet": "fd00:89::10/64", "gateway": "fd00:89::1"}]
    assert out["dns_server_ips"] == ["10.89.0.1", "fd00:89::1"]
    client = copy.deepcopy(web)
    client.update(container_id=secrets.token_hex(32), container_name="client6",
                  port_mappings=[])
    client["networks"]["a1pnet"].update(static_ips=["10.89.0.11", "fd00:89::11"],
                                        aliases=[])
    p.nv("setup", b, data=client)
    p.serve(a)
    nb = ["ip", "netns", "exec", os.path.basename(b)]
    assert get(nb, "http://[fd00:89::10]/") == "200"
    assert sh(*nb, "dig", "+short", "@fd00:89::1", "AAAA", "web6.dns.podman").stdout.split() \
        == ["fd00:89::10"]
    outside = ["ip", "netns", "exec", p.sb.outside]
    assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
    assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
    # IPv6 only: no IPv4 address, DNS on the IPv6 gateway.
    six = net_info("six", nid="cd" * 32, bridge="podman3")
    six.update(ipv6_enabled=True, subnets=[{"subnet": "fd00:77::/64"}])
    only = options("only6", "fd00:77::5")
    only["networks"] = {"six": only["networks"]["a1pnet"]}
    only["network_info"] = {"six": six}
    out = json.loads(p.nv("setup", c, data=only).stdout)["six"]
    assert out["interfaces"]["eth0"]["subnets"] == [{"ipnet": "fd00:77::5/64",
                                                     "gateway": "fd00:77::1"}]
    assert out["dns_server_ips"] == ["fd00:77::1"]
    nc = os.path.basename(c)
    assert [x["family"] for x in ip_json(nc, "addr", "show", "eth0")[0]["addr_info"]  # type: ignore[attr-defined]
            if x["scope"] == "global"] == ["inet6"]
    assert sh("ip", "netns", "exec", nc, "dig", "+short", "@fd00:77::1", "AAAA",
              "only6").stdout.split() == ["fd00:77::5"]
    for ns, data in ((a, web), (b, client), (c, only)):
        p.nv("teardown", ns, data=data)


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda d: d.pop("container_id"), "container_id"),
    (lambda d: d.update(container_name="bad name"), "invalid container name"),
    (lambda d: d["networks"]["a1pnet"].update(static_ips=["10.1.1.1"]), "not in a subnet"),
    (lambda d: d["networks"]["a1pnet"].update(static_mac="zz"), "mac address zz"),
    (lambda d: d["network_info"]["a1pnet"].update(driver="vxlan"), "not supported"),
    (lambda d: d["network_info"]["a1pnet"].update(network_interface="a/b"), "invalid"),
    (lambda d: d.update(port_mappings=[{"container_port": 80, "host_port": 70000}]),
     "out of 1-65535"),
    (lambda d: d.update(port_mappings=[{"container_port": 80, "host_port": 80,
                                        "protocol": "dccp"}]), "dccp"),
    # A gateway outside the subnet, the host's own default gateway at that: the host
    # would route its default traffic into the bridge (validated as network create does).
    (lambda d: d["network_info"]["a1pnet"]["subnets"][0].update(gateway="198.51.100.2"),
     "outside the subnet"),
    (lambda d: d["network_info"]["a1pnet"]["subnets"][0].update(subnet="10.89.0.1/24"),
     "host bits"),
])
def test_invalid_input_changes_nothing(podman: Podmanish, mutate: Any, words: str) -> None:
    p = podman
    ns = p.namespace()
    data = options("bad", "10.89.0.30")
    mutate(data)
    before = p.sb.snapshot()
    cp = p.nv("setup", ns, data=data, check=False)
    assert cp.returncode == 1 and words in json.loads(cp.stdout)["error"], cp.stdout
    after = p.sb.snapshot()
    assert (after["links"], after["addrs"], after["routes"]) == \
        (before["links"], before["addrs"], before["routes"])


def test_bad_calls(podman: Podmanish) -> None:
    p = podman
    cp = p.nv("setup", "/run/netns/nonesuch", data=options("x", "10.89.0.40"), check=False)
    assert cp.returncode == 1 and "does not exist" in json.loads(cp.stdout)["error"]
    # Teardown of a namespace that is gone (Podman removed it first): nothing to do.
    assert p.nv("teardown", "/run/netns/nonesuch", data=options("x", "10.89.0.40")).stdout \
        == ""
    cp = subprocess.run(["ip", "netns", "exec", p.sb.host, NETAVARK, "setup", "/x"],
                        input="{not json", capture_output=True, text=True)
    assert cp.returncode == 1 and "not JSON" in json.loads(cp.stdout)["error"]
    cp = subprocess.run([NETAVARK, "frobnicate"], capture_output=True, text=True)
    assert cp.returncode == 1 and "unknown subcommand" in json.loads(cp.stdout)["error"]
    version = json.loads(subprocess.run([NETAVARK, "version"], capture_output=True,
                                        text=True).stdout)
    assert version["version"] == "1.16.0"
    created = json.loads(p.nv("create", data={"network": {"name": "fresh", "id": "1f" * 32},
                                              "used": {"interfaces": ["podman1"]},
                                              "options": {}}).stdout)
    assert created["network_interface"] == "podman2" and created["driver"] == "bridge"
    assert created["subnets"][0]["subnet"].endswith("/24") and len(created["id"]) == 64
    # --ipv6: both families (a /64 of the installation's unique local /48); an IPv6
    # subnet alone: IPv6 only.
    dual = json.loads(p.nv("create", data={"network": {"name": "dual", "ipv6_enabled": True,
                                                       "id": "2f" * 32},
                                           "used": {}, "options": {}}).stdout)
    assert [s["subnet"][:2] for s in dual["subnets"]] == ["10", "fd"]
    assert dual["subnets"][1]["subnet"].endswith("::/64") and dual["ipv6_enabled"] is True
    six = json.loads(p.nv("create", data={"network": {
        "name": "six", "id": "3f" * 32, "subnets": [{"subnet": "fd00:99::/64"}]}, "used": {},
        "options": {}}).stdout)
    assert six["subnets"] == [{"subnet": "fd00:99::/64", "gateway": "fd00:99::1"}]
    assert six["ipv6_enabled"] is True


def test_gc_forgets_a_container_podman_removed_without_teardown(podman: Podmanish) -> None:
    p = podman
    ns = p.namespace()
    data = options("lost", "10.89.0.50", [{"host_ip": "", "container_port": 80,
                                          "host_port": 8181, "range": 1, "protocol": "tcp"}])
    p.nv("setup", ns, data=data)
    sh("ip", "netns", "del", os.path.basename(ns))  # Podman crashed between the two calls
    p.namespaces.remove(os.path.basename(ns))
    assert "forget Podman container lost" in p.pw("doctor", check=False).stdout
    assert "forget Podman container lost" in p.pw("gc").stdout
    assert p.pw("ps", "-a", "-q").stdout == ""
    assert "8181" not in p.sb.in_host("nft", "list", "tables").stdout
    assert p.pw("gc").stdout.startswith("nothing to repair")


def test_an_unspecified_host_ip_publishes_on_its_family_alone(podman: Podmanish) -> None:
    """Podman's -p 0.0.0.0:8080:80 (host_ip 0.0.0.0) publishes on IPv4 alone and -p
    [::]:8081:80 on IPv6 alone, as netavark does (both were published on both
    families: a port meant for IPv4 was open over IPv6 too); host_ip "" on both."""
    p = podman
    web = p.namespace()
    dual = net_info()
    dual.update(ipv6_enabled=True, subnets=[
        {"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"},
        {"subnet": "fd00:89::/64", "gateway": "fd00:89::1"}])
    data = options("web", "10.89.0.10", [
        {"host_ip": host_ip, "container_port": 80, "host_port": port, "range": 1,
         "protocol": "tcp"}
        for host_ip, port in (("0.0.0.0", 8080), ("::", 8081), ("", 8082))])
    data["networks"]["a1pnet"]["static_ips"] = ["10.89.0.10", "fd00:89::10"]
    data["network_info"]["a1pnet"] = dual
    p.nv("setup", web, data=data)
    p.serve(web)
    outside = ["ip", "netns", "exec", p.sb.outside]
    assert get(outside, f"http://{p.sb.host_addr}:8080/") == "200"
    assert get(outside, f"http://[{HOST_ADDR6}]:8080/").startswith("fail")
    assert get(outside, f"http://{p.sb.host_addr}:8081/").startswith("fail")
    assert get(outside, f"http://[{HOST_ADDR6}]:8081/") == "200"
    assert get(outside, f"http://{p.sb.host_addr}:8082/") == "200"  # control: both
    assert get(outside, f"http://[{HOST_ADDR6}]:8082/") == "200"
    p.nv("teardown", web, data=data)
