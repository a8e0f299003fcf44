"""Real Podman 4.3 with portway as its network backend, in a throwaway host namespace.

Podman's only helper directory holds a `netavark` wrapper around
portway-netavark and an `aardvark-dns` stand-in that refuses to run, so Debian's
netavark and aardvark-dns are out of its reach (portway.testbed.PodmanWorld).
"""

from __future__ import annotations

import json
import subprocess

from conftest import Sandbox, ip_json, netns_list, user_networks
from portway.testbed import HOST_ADDR6, HTTP_GET, PodmanWorld


def pw(p: PodmanWorld, *args: str) -> str:
    return subprocess.run(p.portway_cmd(*args), capture_output=True, text=True, timeout=60,
                          check=True).stdout


def get(where: list[str], url: str) -> str:
    return subprocess.run([*where, "python3", "-c", HTTP_GET, url], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def test_podman_on_portway(podman_world: PodmanWorld, sandbox: Sandbox) -> None:
    p, sb = podman_world, sandbox
    p.run("network", "create", "pnet")
    p.container("--name", "web", "--network", "pnet", "-p", "8080:80", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "client", "--network", "pnet", "--", "/bin/sleep", "300")
    # Portway networked them: its ps, its rules, and no one else's tables.
    ps = {c["Name"].lstrip("/"): c for c in json.loads(pw(p, "ps", "--json"))}
    assert set(ps) == {"web", "client"} and ps["web"]["Runtime"] == "podman"
    assert "8080" in sb.in_host("nft", "list", "map", "inet", "portway", "pub_any_addr").stdout
    tables = sb.in_host("nft", "list", "tables").stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table arp portway", "table bridge portway",
                                              "table inet portway"]
    # By name, both ways, through portway's DNS server.
    web_ip = ps["web"]["NetworkSettings"]["Networks"]["pnet"]["IPAddress"]
    client_ip = ps["client"]["NetworkSettings"]["Networks"]["pnet"]["IPAddress"]
    assert web_ip in p.run("exec", "client", "nslookup", "web").stdout
    assert client_ip in p.run("exec", "web", "nslookup", "client").stdout
    assert "hello from podman" in p.run("exec", "client", "wget", "-q", "-O", "-",
                                        "http://web/index.html").stdout
    # The published port, from the outside namespace and from the host.
    assert get(["ip", "netns", "exec", sb.outside], f"http://{sb.host_addr}:8080/") == "200"
    assert get(["ip", "netns", "exec", sb.host], "http://127.0.0.1:8080/") == "200"
    # Explainable: portway trace follows the outside client into Podman's container.
    trace = json.loads(pw(p, "trace", "outside", "web:80", "--from-ip", sb.outside_addr,
                          "--json", "--live"))
    assert trace["verdict"] == "delivered" and trace["live"]["agrees"]
    # `podman network reload`, as after a firewall reload flushed everything: the rules
    # come back and the published port works again.
    sb.in_host("nft", "flush", "ruleset")
    assert get(["ip", "netns", "exec", sb.outside], f"http://{sb.host_addr}:8080/",
               ).startswith("fail")
    p.run("network", "reload", "--all")
    assert get(["ip", "netns", "exec", sb.outside], f"http://{sb.host_addr}:8080/") == "200"
    assert "hello from podman" in p.run("exec", "client", "wget", "-q", "-O", "-",
                                        "http://web/index.html").stdout
    # podman network connect / disconnect.
    p.run("network", "create", "second")
    p.run("network", "connect", "second", "web")
    assert "eth1" in p.run("exec", "web", "ip", "-o", "-4", "addr").stdout
    p.run("network", "disconnect", "second", "web")
    assert "eth1" not in p.run("exec", "web", "ip", "-o", "-4", "addr").stdout
    # podman rm leaves nothing: no portway container, network, link, rule or namespace.
    # Only these two containers' namespaces: others (a user's Podman containers, another
    # run of this suite) may come and go meanwhile.
    keys = p.run("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", "web", "client")
    own_ns = {key.rsplit("/", 1)[-1] for key in keys.stdout.split()}
    assert len(own_ns) == 2 and own_ns <= set(netns_list())
    p.run("rm", "-f", "-t", "0", "web", "client")
    assert pw(p, "ps", "-a", "-q") == ""
    assert user_networks(pw(p, "network", "ls", "--json")) == []
    assert [str(x["ifname"]) for x in ip_json(sb.host, "link")] == ["lo", "uplink0"]
    assert sb.in_host("nft", "list", "tables").stdout.strip() == ""
    assert not own_ns & set(netns_list())


def test_podman_dual_stack_network(podman_world: PodmanWorld, sandbox: Sandbox) -> None:
    """`podman network create --ipv6`: Podman picks both subnets and the addresses;
    portway wires both families, names them, and publishes on both."""
    p, sb = podman_world, sandbox
    p.run("network", "create", "--ipv6", "dual")
    p.container("--name", "web", "--network", "dual", "-p", "8080:80", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "client", "--network", "dual", "--", "/bin/sleep", "300")
    ps = {c["Name"].lstrip("/"): c for c in json.loads(pw(p, "ps", "--json"))}
    web = ps["web"]["NetworkSettings"]["Networks"]["dual"]
    assert web["IPAddress"] and web["GlobalIPv6Address"].startswith("fd")
    # Podman's view agrees: netavark's answer carried both addresses.
    inspect = json.loads(p.run("inspect", "web").stdout)[0]["NetworkSettings"]
    assert inspect["Networks"]["dual"]["GlobalIPv6Address"] == web["GlobalIPv6Address"]
    assert "hello from podman" in p.run("exec", "client", "wget", "-q", "-O", "-",
                                        f"http://[{web['GlobalIPv6Address']}]/index.html").stdout
    assert web["GlobalIPv6Address"] in p.run("exec", "client", "nslookup", "-type=AAAA",
                                             "web").stdout
    outside = ["ip", "netns", "exec", sb.outside]
    assert get(outside, f"http://[{HOST_ADDR6}]:8080/") == "200"
    assert get(outside, f"http://{sb.host_addr}:8080/") == "200"
    p.run("rm", "-f", "-t", "0", "web", "client")
    assert user_networks(pw(p, "network", "ls", "--json")) == []


def test_podman_network_with_two_subnets(podman_world: PodmanWorld,
                                         sandbox: Sandbox) -> None:
    """`podman network create --subnet A --subnet B`: Podman gives each container an
    address in both subnets; portway wires both, names them, and publishes the port."""
    p, sb = podman_world, sandbox
    p.run("network", "create", "--subnet", "10.89.20.0/24", "--subnet", "10.89.21.0/24",
          "multi")
    p.container("--name", "web", "--network", "multi", "-p", "8080:80", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "client", "--network", "multi", "--", "/bin/sleep", "300")
    ps = {c["Name"].lstrip("/"): c for c in json.loads(pw(p, "ps", "--json"))}
    eps = json.loads(pw(p, "network", "inspect", "multi"))[0]
    assert [c["Subnet"] for c in eps["IPAM"]["Config"]] == ["10.89.20.0/24", "10.89.21.0/24"]
    web = ps["web"]["NetworkSettings"]["Networks"]["multi"]
    assert web["IPAddress"].startswith("10.89.20.")
    second = web["IPAddress"].replace("10.89.20.", "10.89.21.")
    inspect = json.loads(p.run("inspect", "web").stdout)[0]["NetworkSettings"]
    assert inspect["Networks"]["multi"]["IPAddress"] == web["IPAddress"]
    assert "hello from podman" in p.run("exec", "client", "wget", "-q", "-O", "-",
                                        f"http://{second}/index.html").stdout
    names = p.run("exec", "client", "nslookup", "web").stdout
    assert web["IPAddress"] in names and second in names, names
    assert get(["ip", "netns", "exec", sb.outside], f"http://{sb.host_addr}:8080/") == "200"
    p.run("rm", "-f", "-t", "0", "web", "client")
    assert user_networks(pw(p, "network", "ls", "--json")) == []


def test_podman_network_options(podman_world: PodmanWorld, sandbox: Sandbox) -> None:
    """`podman network create -o ...` with the netavark options Podman 4.3 passes on (it
    refuses `metric` itself): the MTU, isolation between networks, and netavark's
    default route per network with metric 100 (the first set up stays: same metric)."""
    p = podman_world
    p.run("network", "create", "-o", "mtu=1400", "-o", "isolate=true",
          "--subnet", "10.89.10.0/24", "front")
    p.run("network", "create", "-o", "isolate=true", "--subnet", "10.89.11.0/24", "back")
    p.container("--name", "web", "--network", "back", "--", "/bin/httpd", "-f", "-p", "80",
                "-h", "/www")
    p.container("--name", "both", "--network", "front", "--network", "back", "--",
                "/bin/sleep", "300")
    p.container("--name", "client", "--network", "front", "--", "/bin/sleep", "300")
    routes = p.run("exec", "both", "ip", "route").stdout
    defaults = [line.split() for line in routes.splitlines() if line.startswith("default")]
    assert len(defaults) == 1 and defaults[0][-2:] == ["metric", "100"], routes
    assert "mtu 1400" in p.run("exec", "client", "ip", "link", "show", "eth0").stdout
    # Two isolated networks: a client on one does not reach a server on the other.
    web_ip = p.run("inspect", "--format",
                   "{{.NetworkSettings.Networks.back.IPAddress}}", "web").stdout.strip()
    assert "hello from podman" in p.run("exec", "both", "wget", "-q", "-O", "-",
                                        f"http://{web_ip}/index.html").stdout
    blocked = p.run("exec", "client", "wget", "-q", "-T", "2", "-O", "-",
                    f"http://{web_ip}/index.html", check=False)
    assert blocked.returncode != 0 and "hello" not in blocked.stdout
    p.run("rm", "-f", "-t", "0", "web", "both", "client")
    assert user_networks(pw(p, "network", "ls", "--json")) == []


def test_podman_ipam_driver_none(podman_world: PodmanWorld, sandbox: Sandbox) -> None:
    """`podman network create --ipam-driver none`: the containers' eth0 has no address,
    only the link on the bridge; addresses they give themselves reach each other."""
    p = podman_world
    p.run("network", "create", "--ipam-driver", "none", "bare")
    assert json.loads(p.run("network", "inspect", "bare").stdout)[0]["ipam_options"] == \
        {"driver": "none"}
    p.container("--name", "web", "--network", "bare", "--cap-add", "NET_ADMIN", "--",
                "/bin/httpd", "-f", "-p", "80", "-h", "/www")
    p.container("--name", "client", "--network", "bare", "--cap-add", "NET_ADMIN", "--",
                "/bin/sleep", "300")
    for name in ("web", "client"):
        assert " inet" not in p.run("exec", name, "ip", "-o", "addr", "show", "eth0").stdout
        assert p.run("exec", name, "ip", "route").stdout.strip() == ""
    p.run("exec", "web", "ip", "addr", "add", "192.0.2.1/24", "dev", "eth0")
    p.run("exec", "client", "ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
    fetched = ""
    for _ in range(20):
        fetched = p.run("exec", "client", "wget", "-q", "-O", "-",
                        "http://192.0.2.1/index.html", check=False).stdout
        if fetched:
            break
    assert "hello from podman" in fetched
    ps = {c["Name"].lstrip("/"): c for c in json.loads(pw(p, "ps", "--json"))}
    assert set(ps) == {"web", "client"}
    p.run("rm", "-f", "-t", "0", "web", "client")
    assert user_networks(pw(p, "network", "ls", "--json")) == []
    p.run("network", "rm", "bare")
