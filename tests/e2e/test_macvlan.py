"""macvlan networks from the CLI, as Docker's: containers straight on a LAN, in a
throwaway host.

The LAN is a namespace of the test's own (`<host>-lan`, the LAN's router and one more
machine on it: 192.168.77.1), joined to the host by a veth whose host end, lan0, is
the networks' parent. The oracles are the kernel (`ip -j -d`) and real connections.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Sandbox, ip_json, sh
from portway.testbed import HTTP_GET, WAIT_LISTENING, add_netns, del_netns

LAN = "192.168.77"
# ICMP echo to argv[1] over a raw socket (there is no ping here): exit 0 on a reply.
PING = ("import socket, struct, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
        "s.settimeout(1)\n"
        "body = struct.pack('!BBHHH', 8, 0, 0, 0x77, 1) + b'portway!'\n"
        "c = sum(struct.unpack('!8H', body))\n"
        "c = (c >> 16) + (c & 0xffff); c = ~(c + (c >> 16)) & 0xffff\n"
        "s.sendto(body[:2] + struct.pack('!H', c) + body[4:], (sys.argv[1], 0))\n"
        "end = time.monotonic() + 1\n"
        "while time.monotonic() < end:\n"
        "    try: data, peer = s.recvfrom(2048)\n"
        "    except OSError: break\n"
        "    if peer[0] == sys.argv[1] and data[20] == 0: sys.exit(0)\n"
        "sys.exit(1)\n")


@pytest.fixture
def lan(sandbox: Sandbox) -> Iterator[str]:
    """The LAN's namespace; lan0, the host's end of it, is up without an address."""
    name = f"{sandbox.host}-lan"
    add_netns(name, sandbox.state_dir)
    try:
        sh("ip", "-n", sandbox.host, "link", "add", "lan0", "type", "veth", "peer", "name",
           "eth0", "netns", name)
        sh("ip", "-n", name, "addr", "add", f"{LAN}.1/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", sandbox.host, "link", "set", "lan0", "up")
        yield name
    finally:
        del_netns(name)  # the veth goes with it


def in_lan(lan: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", lan, *command], capture_output=True,
                          text=True, timeout=30)


def serve(sb: Sandbox, name: str, network: str, *flags: str) -> str:
    """A container serving HTTP on port 80; its network namespace's name."""
    sb.pw("run", "-d", "--name", name, "--network", network, *flags, "--", "python3", "-m",
          "http.server", "--bind", "::", "80")
    sb.pw("exec", name, "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    return str(sb.inspect(name)["NetworkSettings"]["SandboxKey"]).rsplit("/", 1)[1]  # type: ignore[index]


def get(sb: Sandbox, name: str, url: str) -> str:
    return sb.pw("exec", name, "--", "python3", "-c", HTTP_GET, url).stdout.strip()


def ping(sb: Sandbox, name: str, address: str) -> bool:
    """ICMP echo from the container's namespace (ping as root: the container's own
    processes may not open raw sockets)."""
    ns = str(sb.inspect(name)["NetworkSettings"]["SandboxKey"])  # type: ignore[index]
    return subprocess.run(["ip", "netns", "exec", ns.rsplit("/", 1)[1], "python3", "-c", PING,
                           address], capture_output=True).returncode == 0


def details(ns: str, ifname: str = "eth0") -> dict[str, object]:
    (link,) = ip_json(ns, "-d", "link", "show", ifname)
    return link


def test_containers_on_the_lan_in_bridge_mode(sandbox: Sandbox, lan: str) -> None:
    sb = sandbox
    cp = sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--subnet",
               f"{LAN}.0/24", "--gateway", f"{LAN}.1", "--ip-range", f"{LAN}.64/26", "pub")
    net = json.loads(sb.pw("network", "inspect", "pub").stdout)[0]
    assert cp.stdout.strip() == net["Id"]
    assert (net["Driver"], net["Options"]) == \
        ("macvlan", {"parent": "lan0", "macvlan_mode": "bridge"})
    assert net["IPAM"]["Config"] == [{"Subnet": f"{LAN}.0/24", "Gateway": f"{LAN}.1",
                                      "IPRange": f"{LAN}.64/26"}]
    assert net["Bridge"] == "" and "macvlan" in sb.pw("network", "ls").stdout
    a = serve(sb, "a", "pub")
    b = serve(sb, "b", "pub", "--ip", f"{LAN}.100")

    # Each a macvlan device of lan0, in bridge mode, with an address of its own and the
    # LAN's router as its default gateway; nothing of them in the host namespace.
    for ns, address in ((a, f"{LAN}.64"), (b, f"{LAN}.100")):
        link = details(ns)
        info = link["linkinfo"]
        assert (info["info_kind"], info["info_data"]["mode"]) == ("macvlan", "bridge")  # type: ignore[index]
        (addr,) = [x for x in ip_json(ns, "-4", "addr", "show", "eth0")[0]["addr_info"]]  # type: ignore[union-attr]
        assert (addr["local"], addr["prefixlen"]) == (address, 24)
        (default,) = ip_json(ns, "-4", "route", "show", "default")
        assert (default["gateway"], default["dev"]) == (f"{LAN}.1", "eth0")
        assert link["mtu"] == 1500  # the parent's
    assert sorted(sb.links()) == ["lan0", "lo", "uplink0"]
    assert sb.inspect("a")["NetworkSettings"]["Networks"]["pub"]["IPAddress"] == f"{LAN}.64"  # type: ignore[index]

    # Bridge mode: the containers reach each other, and the LAN reaches them (a real
    # TCP connection and ICMP), at their own addresses.
    assert get(sb, "a", f"http://{LAN}.100/") == "200"
    assert get(sb, "b", f"http://{LAN}.64/") == "200"
    assert ping(sb, "a", f"{LAN}.1")
    out = in_lan(lan, "python3", "-c", HTTP_GET, f"http://{LAN}.64/").stdout.strip()
    assert out == "200"
    assert in_lan(lan, "python3", "-c", PING, f"{LAN}.100").returncode == 0
    # Neighbours on the LAN see each container's own MAC.
    neigh = {n["dst"]: n.get("lladdr") for n in ip_json(lan, "neigh", "show", "dev", "eth0")}
    assert neigh[f"{LAN}.64"] == details(a)["address"]

    # No name service on a macvlan network (its gateway is the LAN's router): the
    # container has the host's resolvers, the name of a sibling does not resolve.
    resolv = sb.pw("exec", "a", "--", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {LAN}.1" not in resolv
    # No rule of portway's for it: nothing was made in nftables.
    tables = sh("ip", "netns", "exec", sb.host, "nft", "-j", "list", "tables").stdout
    assert "portway" not in tables

    # show and graph: the parent where a bridge would be, each container's device on it.
    show = sb.pw("show").stdout
    assert "macvlan on parent lan0 #" in show and "mode bridge" in show
    assert "MISSING" not in show and "missing or miswired" not in show
    lines = {line.split()[0]: line for line in show.splitlines() if line.strip()}
    assert f"{LAN}.64" in lines["a"] and "eth0 #" in lines["a"] and a in lines["a"]
    # trace: out of the macvlan device onto the LAN, not a veth whose end is missing.
    out = sb.pw("trace", "a", "b:80").stdout
    assert "macvlan device eth0" in out and "out of the parent lan0" in out, out
    assert "verdict: leaves-host" in out and "missing" not in out
    dot = sb.pw("graph").stdout
    assert "macvlan network pub (bridge)" in dot and dot.count('label="macvlan"') == 2

    sb.pw("rm", "-f", "a", "b")
    sb.pw("network", "rm", "pub")
    assert sorted(sb.links()) == ["lan0", "lo", "uplink0"]


def test_private_mode_keeps_containers_apart(sandbox: Sandbox, lan: str) -> None:
    sb = sandbox
    sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "-o",
          "macvlan_mode=private", "--subnet", f"{LAN}.0/24", "--gateway", f"{LAN}.1", "priv")
    serve(sb, "a", "priv", "--ip", f"{LAN}.10")
    ns = serve(sb, "b", "priv", "--ip", f"{LAN}.11")
    assert details(ns)["linkinfo"]["info_data"]["mode"] == "private"  # type: ignore[index]
    # Private: not to each other, not even ICMP; the LAN still reaches both.
    assert get(sb, "a", f"http://{LAN}.11/") == "fail URLError"
    assert not ping(sb, "b", f"{LAN}.10")
    for address in (f"{LAN}.10", f"{LAN}.11"):
        out = in_lan(lan, "python3", "-c", HTTP_GET, f"http://{address}/").stdout.strip()
        assert out == "200"


def test_mtu_connect_disconnect_and_ports(sandbox: Sandbox, lan: str) -> None:
    sb = sandbox
    sh("ip", "-n", sb.host, "link", "set", "lan0", "mtu", "1450")
    sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--mtu", "1400",
          "--subnet", f"{LAN}.0/24", "--gateway", f"{LAN}.1", "pub")
    sb.pw("network", "create", "back", "--subnet", "10.97.0.0/24")
    # -p on a macvlan network: ignored, as Docker ignores it, and said so.
    cp = sb.pw("run", "-d", "--name", "web", "--network", "pub", "-p", "8080:80", "--",
               "python3", "-m", "http.server", "80")
    assert "published ports are ignored on macvlan network pub" in cp.stderr
    assert sb.pw("port", "web").stdout == ""
    ns = str(sb.inspect("web")["NetworkSettings"]["SandboxKey"]).rsplit("/", 1)[1]  # type: ignore[index]
    assert details(ns)["mtu"] == 1400
    # gc knows a macvlan endpoint has no host end; one that was deleted it makes again.
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    sh("ip", "-n", ns, "link", "del", "eth0")
    assert "re-create endpoint" in sb.pw("gc").stdout
    assert details(ns)["linkinfo"]["info_kind"] == "macvlan"  # type: ignore[index]
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    # A stop gives the device back, a start makes it again.
    sb.pw("stop", "-t", "1", "web")
    sb.pw("start", "web")
    assert details(ns)["linkinfo"]["info_kind"] == "macvlan"  # type: ignore[index]
    assert sb.pw("gc").stdout.startswith("nothing to repair")

    # A container of a bridge network joins the LAN as eth1, and leaves it again.
    sb.pw("run", "-d", "--name", "app", "--network", "back", "--", "sleep", "3600")
    sb.pw("network", "connect", "--ip", f"{LAN}.50", "pub", "app")
    app = str(sb.inspect("app")["NetworkSettings"]["SandboxKey"]).rsplit("/", 1)[1]  # type: ignore[index]
    eth1 = details(app, "eth1")
    assert (eth1["linkinfo"]["info_kind"], eth1["mtu"]) == ("macvlan", 1400)  # type: ignore[index]
    # Its default route stays the first network's; the LAN is reached on its link.
    assert ping(sb, "app", f"{LAN}.1")
    assert in_lan(lan, "python3", "-c", PING, f"{LAN}.50").returncode == 0
    members = json.loads(sb.pw("network", "inspect", "pub").stdout)[0]["Containers"]
    assert sorted(m["Name"] for m in members.values()) == ["app", "web"]
    sb.pw("network", "disconnect", "pub", "app")
    assert [x["ifname"] for x in ip_json(app, "link")] == ["lo", "eth0"]
    assert in_lan(lan, "python3", "-c", PING, f"{LAN}.50").returncode != 0
    # Twice: it is gone already.
    cp = sb.pw("network", "disconnect", "pub", "app", check=False)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["-o", "parent=nosuch0"], "-o parent interface was not found on the host: nosuch0"),
    ([], "a macvlan network needs a parent interface"),
    (["-o", "parent=lan0", "-o", "macvlan_mode=source"],
     "requested macvlan mode 'source' is not valid"),
    (["-o", "parent=lan0", "-o", "com.docker.network.bridge.name=x"],
     "unknown option 'com.docker.network.bridge.name' for a macvlan network"),
])
def test_bad_macvlan_networks_change_nothing(sandbox: Sandbox, lan: str, args: list[str],
                                             words: str) -> None:
    sb = sandbox
    sb.pw("network", "ls")  # the daemon up: its start is no change of the command's
    before = sb.snapshot()
    cp = sb.pw("network", "create", "-d", "macvlan", *args, "--subnet", f"{LAN}.0/24",
               "bad", check=False)
    assert cp.returncode != 0 and words in cp.stderr, cp.stderr
    assert "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    assert sb.snapshot() == before


def test_one_macvlan_network_per_parent(sandbox: Sandbox, lan: str) -> None:
    sb = sandbox
    sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--subnet",
          f"{LAN}.0/24", "one")
    cp = sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--subnet",
               "192.168.78.0/24", "two", check=False)
    assert cp.returncode != 0
    assert "network one is already using parent interface lan0" in cp.stderr


def test_dual_stack_on_the_lan(sandbox: Sandbox, lan: str) -> None:
    """IPv6 too: the container's address and default route of each family, reached
    from the LAN over IPv6 once duplicate address detection (kept: on a LAN, portway's
    IPAM is not the only one) has passed; no address from the LAN's advertisements."""
    sb = sandbox
    sh("ip", "-n", lan, "addr", "add", "fd77::1/64", "dev", "eth0", "nodad")
    sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--ipv6", "--subnet",
          f"{LAN}.0/24", "--gateway", f"{LAN}.1", "--subnet", "fd77::/64", "--gateway",
          "fd77::1", "pub")
    ns = serve(sb, "web", "pub", "--ip6", "fd77::50")
    (default,) = ip_json(ns, "-6", "route", "show", "default")
    assert (default["gateway"], default["dev"]) == ("fd77::1", "eth0")
    assert sh("ip", "netns", "exec", ns, "cat",
              "/proc/sys/net/ipv6/conf/eth0/autoconf").stdout.strip() == "0"
    for _ in range(50):
        addrs = ip_json(ns, "-6", "addr", "show", "eth0")[0]["addr_info"]
        if not any(a.get("tentative") for a in addrs):  # type: ignore[union-attr]
            break
        time.sleep(0.1)
    got = {a["local"] for a in addrs}  # type: ignore[union-attr,index]
    assert "fd77::50" in got and not any(a.startswith("fd77::") and a != "fd77::50"
                                         for a in got)
    out = in_lan(lan, "python3", "-c", HTTP_GET, "http://[fd77::50]/").stdout.strip()
    assert out == "200"


def test_two_subnets_of_a_family(sandbox: Sandbox, lan: str) -> None:
    """A macvlan network with two IPv4 subnets (Docker's --subnet A --subnet B): one
    default route, via the first subnet's gateway, wherever the container's address is,
    and the other subnet on-link."""
    sb = sandbox
    sb.pw("network", "create", "-d", "macvlan", "-o", "parent=lan0", "--subnet",
          f"{LAN}.0/24", "--gateway", f"{LAN}.1", "--subnet", "192.168.78.0/24", "lan")
    ns = serve(sb, "web", "lan", "--ip", "192.168.78.5")
    routes = [(r["dst"], r.get("gateway")) for r in ip_json(ns, "-4", "route")
              if r["dst"] == "default"]
    assert routes == [("default", f"{LAN}.1")], routes
    assert ip_json(ns, "-4", "addr", "show", "eth0")[0]["addr_info"][0]["local"] == \
        "192.168.78.5"  # type: ignore[index]
    # The first subnet is on-link: its router answers (the LAN routes the second back
    # on the same wire).
    sh("ip", "-n", lan, "route", "add", "192.168.78.0/24", "dev", "eth0")
    assert ping(sb, "web", f"{LAN}.1")
