"""The CLI as a user runs it, inside a throwaway host namespace, checked with ip -j,
real TCP connections and the JSON of inspect."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

from conftest import Sandbox, ip_json, processes_in, sh, user_networks
from portway.testbed import HTTP_GET as GET_URL

HTTP_GET = ("import sys, urllib.request as u; "
            "print(u.urlopen('http://' + sys.argv[1] + '/', timeout=5).status)")


def wait_http(sb: Sandbox, container: str, address: str, attempts: int = 100) -> None:
    """The server inside a fresh container may take a moment to bind (python starts)."""
    probe = ("import socket, sys, time\n"
             f"for _ in range({attempts}):\n"
             "    try:\n"
             "        socket.create_connection((sys.argv[1], 80), 0.2).close(); break\n"
             "    except OSError: time.sleep(0.05)\n"
             "else: sys.exit(1)\n")
    sb.pw("exec", container, "--", "python3", "-c", probe, address)


def test_quick_start(sandbox: Sandbox) -> None:
    sb = sandbox
    net_id = sb.pw("network", "create", "app", "--subnet", "10.77.0.0/24").stdout.strip()
    assert len(net_id) == 64
    web_id = sb.pw("run", "-d", "--name", "web", "--network", "app", "--",
                   "python3", "-m", "http.server", "80").stdout.strip()
    assert len(web_id) == 64

    web = sb.inspect("web")
    settings = web["NetworkSettings"]
    assert isinstance(settings, dict)
    app = settings["Networks"]["app"]
    assert app["IPAddress"] == "10.77.0.2"
    assert app["IPPrefixLen"] == 24
    assert app["Gateway"] == "10.77.0.1"
    assert app["MacAddress"] == "02:42:0a:4d:00:02"
    assert web["State"]["Running"] is True  # type: ignore[index]
    netns_name = os.path.basename(settings["SandboxKey"])
    assert netns_name == f"pw-{web_id[:12]}"

    # The kernel agrees: the bridge holds the gateway, the veth is its port,
    # the container end is eth0 with the address, MAC and a default route.
    bridge = next(n for n in json.loads(sb.pw("network", "inspect", "app").stdout))
    br = bridge["Bridge"]
    addrs = ip_json(sb.host, "addr", "show", "dev", br)[0]["addr_info"]
    assert {"family": "inet", "local": "10.77.0.1", "prefixlen": 24}.items() <= \
        {k: v for a in addrs for k, v in a.items() if a["family"] == "inet"}.items()
    host_if = app["HostInterface"]
    veth = ip_json(sb.host, "link", "show", "dev", host_if)[0]
    assert veth["master"] == br
    assert veth["ifalias"].startswith("portway:") and app["EndpointID"] in veth["ifalias"]
    eth0 = ip_json(netns_name, "addr", "show", "dev", "eth0")[0]
    assert eth0["address"] == "02:42:0a:4d:00:02"
    assert any(a["local"] == "10.77.0.2" for a in eth0["addr_info"])
    routes = ip_json(netns_name, "route")
    assert any(r["dst"] == "default" and r["gateway"] == "10.77.0.1" for r in routes)
    lo = ip_json(netns_name, "link", "show", "dev", "lo")[0]
    assert "UP" in lo["flags"]
    # IPv4-only: neither end of the veth has an IPv6 address, none is ever made.
    for ns, dev in ((netns_name, "eth0"), (sb.host, host_if)):
        assert ip_json(ns, "-d", "link", "show", "dev", dev)[0]["inet6_addr_gen_mode"] == "none"
        addrs = ip_json(ns, "addr", "show", "dev", dev)[0]["addr_info"]
        assert [a for a in addrs if a["family"] == "inet6"] == []  # type: ignore[union-attr]

    wait_http(sb, "web", "10.77.0.2")
    cp = sb.pw("run", "--rm", "--name", "cli", "--network", "app", "--",
               "python3", "-c", HTTP_GET, "10.77.0.2")
    assert cp.stdout.strip() == "200"
    # --rm removed the client entirely.
    assert "cli" not in sb.pw("ps", "-a").stdout

    ps = sb.pw("ps").stdout
    assert "web" in ps and "10.77.0.2" in ps
    net = json.loads(sb.pw("network", "inspect", "app").stdout)[0]
    assert net["Name"] == "app" and net["Id"] == net_id and net["Driver"] == "bridge"
    assert net["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"}]
    assert net["Containers"][web_id]["Name"] == "web"
    assert net["Containers"][web_id]["IPv4Address"] == "10.77.0.2/24"

    sb.pw("rm", "-f", "web")
    assert not os.path.exists(f"/run/netns/{netns_name}")
    assert not os.path.exists(f"/etc/netns/{netns_name}")
    assert host_if not in sb.links()
    sb.pw("network", "rm", "app")
    assert br not in sb.links()


def test_container_files_and_hostname(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.78.0.0/24")
    sb.pw("run", "-d", "--name", "box", "--hostname", "boxy", "--network", "app",
          "--dns", "192.0.2.53", "--", "sleep", "3600")
    assert sb.pw("exec", "box", "--", "hostname").stdout.strip() == "boxy"
    hosts = sb.pw("exec", "box", "--", "cat", "/etc/hosts").stdout
    assert "10.78.0.2\tboxy box" in hosts
    resolv = sb.pw("exec", "box", "--", "cat", "/etc/resolv.conf").stdout
    # portway's DNS server on the gateway; --dns servers are where it forwards to.
    assert resolv.startswith("nameserver 10.78.0.1\n")
    # The same files are where `ip netns exec` picks them up.
    netns = os.path.basename(sb.inspect("box")["NetworkSettings"]["SandboxKey"])  # type: ignore[index]
    out = sh("ip", "netns", "exec", netns, "cat", "/etc/hosts").stdout
    assert "10.78.0.2" in out
    # exec passes the exit status through.
    assert sb.pw("exec", "box", "--", "sh", "-c", "exit 7", check=False).returncode == 7


def test_default_network_and_auto_subnet(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("run", "-d", "--name", "a", "--", "sleep", "3600")
    nets = user_networks(sb.pw("network", "ls", "--json").stdout)
    assert [n["Name"] for n in nets] == ["bridge"]
    assert nets[0]["IPAM"]["Config"][0]["Subnet"] == "172.17.0.0/16"
    # A host route that overlaps the next pool block is skipped.
    sb.in_host("ip", "route", "add", "172.18.5.0/24", "via", sb.outside_addr)
    second = json.loads(sb.pw("network", "inspect", sb.pw("network", "create", "b")
                              .stdout.strip()).stdout)[0]
    assert second["IPAM"]["Config"][0]["Subnet"] == "172.19.0.0/16"
    sb.in_host("ip", "route", "del", "172.18.5.0/24")


def test_none_and_host_modes(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("run", "-d", "--name", "iso", "--network", "none", "--", "sleep", "3600")
    out = sb.pw("exec", "iso", "--", "ip", "-j", "link").stdout
    assert [link["ifname"] for link in json.loads(out)] == ["lo"]
    cp = sb.pw("run", "-d", "--name", "hosty", "--network", "host", "--", "sleep", "3600")
    assert "isolation" in cp.stderr or "not isolated" in cp.stderr
    out = sb.pw("exec", "hosty", "--", "ip", "-j", "link").stdout
    assert "uplink0" in {link["ifname"] for link in json.loads(out)}


def test_exec_at_once_after_run_is_inside(sandbox: Sandbox) -> None:
    # run -d returns before the container's command has started; an exec at once
    # must still join the container's namespaces, never the host's.
    sb = sandbox
    for i in range(5):
        isolated = bool(i % 2)  # --network none, else the default network
        sb.pw("run", "-d", "--name", f"q{i}", "--hostname", f"quick{i}",
              *(["--network", "none"] if isolated else []), "--", "sleep", "3600")
        out = sb.pw("exec", f"q{i}", "--", "sh", "-c",
                    "hostname; cat /etc/hostname; ip -br link").stdout.split("\n")
        assert out[0] == f"quick{i}" and out[1] == f"quick{i}"
        links = sorted(line.split()[0].split("@")[0] for line in out[2:] if line)
        assert links == (["lo"] if isolated else ["eth0", "lo"])


def test_exec_info_waits_for_the_command_to_be_inside(sandbox: Sandbox) -> None:
    # Asked straight over the socket, at once after run -d returns: far sooner than a
    # CLI's exec, while the container's helper is still starting. The pid handed out
    # for exec must already be in the container's namespace.
    from portway.cli.client import Client

    sb = sandbox
    sb.pw("daemon", "start")  # by the CLI: a daemon started from here would be our child
    client = Client(str(sb.state_dir), sb.host)
    for i in range(5):
        info = client.call("run", command=["sleep", "3600"], name=f"w{i}", detach=True)
        pid = client.call("exec_info", ref=f"w{i}")["Pid"]
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(info["SandboxKey"]).st_ino
        assert os.readlink(f"/proc/{pid}/exe").endswith("/sleep")


def test_connect_and_disconnect(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "front", "--subnet", "10.80.0.0/24")
    sb.pw("network", "create", "back", "--subnet", "10.81.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "db", "--network", "back", "--",
          "python3", "-m", "http.server", "80")
    sb.pw("run", "-d", "--name", "app", "--network", "front", "--", "sleep", "3600")
    sb.pw("network", "connect", "--alias", "api", "back", "app")
    app = sb.inspect("app")["NetworkSettings"]["Networks"]  # type: ignore[index]
    assert app["back"]["Interface"] == "eth1" and app["back"]["IPAddress"] == "10.81.0.3"
    assert "api" in app["back"]["Aliases"]
    wait_http(sb, "app", "10.81.0.2")
    routes = json.loads(sb.pw("exec", "app", "--", "ip", "-j", "route").stdout)
    default = [r for r in routes if r["dst"] == "default"]
    assert default == [{"dst": "default", "gateway": "10.80.0.1", "dev": "eth0",
                        "protocol": default[0]["protocol"], "flags": []}]
    # The internal network gives db no default route.
    routes = json.loads(sb.pw("exec", "db", "--", "ip", "-j", "route").stdout)
    assert not [r for r in routes if r["dst"] == "default"]
    sb.pw("network", "disconnect", "back", "app")
    links = json.loads(sb.pw("exec", "app", "--", "ip", "-j", "link").stdout)
    assert "eth1" not in {link["ifname"] for link in links}
    assert "app" not in json.dumps(json.loads(sb.pw("network", "inspect", "back").stdout)
                                   [0]["Containers"])
    # Reconnecting gets eth1 again; disconnecting the first network moves the route.
    sb.pw("network", "connect", "front", "db")
    routes = json.loads(sb.pw("exec", "db", "--", "ip", "-j", "route").stdout)
    assert [r["gateway"] for r in routes if r["dst"] == "default"] == ["10.80.0.1"]


def served(sb: Sandbox, port: int) -> None:
    """The published port answers HTTP from the outside namespace (a fresh server takes
    a moment to bind)."""
    url = f"http://{sb.host_addr}:{port}/"
    deadline = time.monotonic() + 15
    while sh("ip", "netns", "exec", sb.outside, "python3", "-c", GET_URL, url,
             check=False).stdout.strip() != "200":
        assert time.monotonic() < deadline, f"port {port} never answered from outside"
        time.sleep(0.05)


def test_a_published_port_follows_the_container_into_another_network(
        sandbox: Sandbox) -> None:
    """Bug: after `network disconnect` from its last network and `connect` to another, a
    container's published port was refused (and still shown, and still reserved)."""
    sb = sandbox
    sb.pw("network", "create", "a", "--subnet", "10.132.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.133.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "a", "-p", "8099:80", "--",
          "python3", "-m", "http.server", "80")
    served(sb, 8099)
    sb.pw("network", "disconnect", "a", "web")
    sb.pw("network", "connect", "b", "web")
    served(sb, 8099)
    assert sb.pw("port", "web").stdout == "80/tcp -> 0.0.0.0:8099\n"
    assert sb.pw("doctor").stdout.startswith("healthy")


def test_stop_records_the_exit_and_releases_the_networking(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.82.0.0/24")
    sb.pw("run", "-d", "--name", "stubborn", "--network", "app", "--",
          "sh", "-c", "trap '' TERM; echo ignoring; while :; do sleep 0.1; done")
    deadline = time.monotonic() + 5  # a SIGTERM before the trap is set would end it
    while "ignoring" not in sb.pw("logs", "stubborn").stdout and time.monotonic() < deadline:
        time.sleep(0.02)
    netns = os.path.basename(sb.inspect("stubborn")["NetworkSettings"]["SandboxKey"])  # type: ignore[index]
    started = time.monotonic()
    sb.pw("stop", "-t", "0.5", "stubborn")
    assert time.monotonic() - started >= 0.5
    state = sb.inspect("stubborn")["State"]
    assert state["Running"] is False and state["ExitCode"] == 137  # type: ignore[index]
    # Stopped, it has no namespace, process or address (Docker's): start makes them anew.
    assert not os.path.exists(f"/run/netns/{netns}")
    assert not processes_in(netns)
    assert sb.inspect("stubborn")["NetworkSettings"]["Networks"]["app"]["IPAddress"] == ""  # type: ignore[index]
    # A clean SIGTERM exit is recorded as the command reports it. The command is the
    # first process of its PID namespace: it gets only the signals it handles (Docker's
    # rule), so this one handles SIGTERM.
    sb.pw("run", "-d", "--name", "polite", "--network", "app", "--", "sh", "-c",
          "trap 'exit 143' TERM; echo ready; while :; do sleep 0.1; done")
    deadline = time.monotonic() + 5
    while "ready" not in sb.pw("logs", "polite").stdout and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    sb.pw("stop", "polite")
    assert time.monotonic() - started < 5
    assert sb.inspect("polite")["State"]["ExitCode"] == 143  # type: ignore[index]
    cp = sb.pw("rm", "stubborn", "polite")
    assert cp.stdout.split() == ["stubborn", "polite"]


def test_foreground_run_exit_status(sandbox: Sandbox) -> None:
    sb = sandbox
    cp = sb.pw("run", "--rm", "--name", "once", "--", "sh", "-c", "echo hi; exit 3",
               check=False)
    assert cp.returncode == 3 and cp.stdout == "hi\n"
    assert sb.pw("ps", "-a", "-q").stdout == ""
    cp = sb.pw("run", "--name", "kept", "--", "true")
    assert sb.inspect("kept")["State"]["Status"] == "exited"  # type: ignore[index]
    sb.pw("rm", "kept")


def test_detached_rm_removes_itself(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("run", "-d", "--rm", "--name", "brief", "--", "sh", "-c", "sleep 0.2")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sb.pw("ps", "-a", "-q").stdout:
        time.sleep(0.05)
    assert sb.pw("ps", "-a", "-q").stdout == ""


def test_daemon_death_stops_no_container(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.83.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--",
          "python3", "-m", "http.server", "80")
    pid = sb.inspect("web")["State"]["Pid"]  # type: ignore[index]
    daemon = sb.daemon_pid()
    os.kill(daemon, signal.SIGKILL)
    time.sleep(0.1)
    assert os.path.exists(f"/proc/{pid}")
    # The next command starts a new daemon, which re-adopts the container.
    assert sb.daemon_pid() != daemon
    web = sb.inspect("web")
    assert web["State"]["Running"] is True and web["State"]["Pid"] == pid  # type: ignore[index]
    wait_http(sb, "web", "10.83.0.2")
    sb.pw("stop", "-t", "2", "web")
    assert sb.inspect("web")["State"]["Running"] is False  # type: ignore[index]


def test_gc_repairs_drift(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.84.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--",
          "python3", "-m", "http.server", "80")
    sb.pw("run", "-d", "--name", "cli", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "kept", "--network", "app", "--", "sleep", "3600")
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    web = sb.inspect("web")["NetworkSettings"]
    bridge = json.loads(sb.pw("network", "inspect", "app").stdout)[0]["Bridge"]
    kept_ns = os.path.basename(str(sb.inspect("kept")["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
    kept_eth0 = ip_json(kept_ns, "link", "show", "eth0")[0]["ifindex"]
    # Someone deletes the bridge, a veth and a namespace's name.
    sb.in_host("ip", "link", "del", bridge)
    cli_if = sb.inspect("cli")["NetworkSettings"]["Networks"]["app"]["HostInterface"]  # type: ignore[index]
    sb.in_host("ip", "link", "del", cli_if, check=False)
    sh("ip", "netns", "del", os.path.basename(web["SandboxKey"]))  # type: ignore[index]
    report = sb.pw("gc", "--dry-run").stdout
    assert "would re-create bridge" in report
    doctor = sb.pw("doctor", check=False)
    assert doctor.returncode == 1 and "drift: re-create bridge" in doctor.stdout
    report = sb.pw("gc").stdout
    assert "re-create bridge" in report and "namespace of container web" in report
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    assert sb.pw("doctor").stdout.startswith("healthy")
    wait_http(sb, "cli", "10.84.0.2")
    # A veth that only lost its bridge is put back on the new one as it is: the same
    # pair, its default route kept.
    assert ip_json(kept_ns, "link", "show", "eth0")[0]["ifindex"] == kept_eth0
    for name in ("web", "cli", "kept"):
        ns = os.path.basename(str(sb.inspect(name)["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
        assert [r["gateway"] for r in ip_json(ns, "route", "show", "default")] == \
            ["10.84.0.1"], name
    # The daemon remembered the first bridge's index: a new container still gets the
    # bridge that is there now.
    sb.pw("run", "-d", "--name", "late", "--network", "app", "--",
          "python3", "-m", "http.server", "80")
    late = sb.inspect("late")["NetworkSettings"]["Networks"]["app"]  # type: ignore[index]
    assert f"master {bridge}" in sb.in_host("ip", "-o", "link", "show",
                                           late["HostInterface"]).stdout
    wait_http(sb, "cli", late["IPAddress"])
    # Kernel objects portway owns but the store does not know are removed.
    cli = sb.inspect("cli")["NetworkSettings"]
    cli_ns = os.path.basename(cli["SandboxKey"])  # type: ignore[index]
    cli_if = cli["Networks"]["app"]["HostInterface"]  # type: ignore[index]
    sb.pw("daemon", "stop")
    con = sqlite3.connect(sb.state_dir / "portway.db")
    with con:
        con.execute("DELETE FROM endpoints WHERE container_id IN "
                    "(SELECT id FROM containers WHERE name='cli')")
        con.execute("DELETE FROM containers WHERE name='cli'")
    con.close()
    # The daemon reconciles as it starts (this command starts it): the report is in its log.
    assert sb.pw("gc").stdout.startswith("nothing to repair")
    log = (sb.state_dir / "portwayd.log").read_text()
    assert f"delete {cli_if}" in log and f"delete namespace {cli_ns}" in log
    assert cli_if not in sb.links()
    assert not os.path.exists(f"/run/netns/{cli_ns}")


def test_rm_twice_and_unknown(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("run", "-d", "--name", "x", "--", "sleep", "3600")
    sb.pw("rm", "-f", "x")
    cp = sb.pw("rm", "-f", "x", check=False)
    assert cp.returncode != 0 and "not found" in cp.stderr
    assert cp.stderr.count("\n") == 1


def test_name_that_looks_like_an_id_prefix(sandbox: Sandbox) -> None:
    sb = sandbox
    first = sb.pw("run", "-d", "--name", "first", "--", "sleep", "3600").stdout.strip()
    # A new name equal to another container's id prefix is a new name, not a clash.
    sb.pw("run", "-d", "--name", first[:4], "--", "sleep", "3600")
    assert sb.inspect(first[:4])["Name"] == f"/{first[:4]}"
    assert sb.inspect(first[:12])["Name"] == "/first"
    net = sb.pw("network", "create", "n1").stdout.strip()
    sb.pw("network", "create", net[:4])
