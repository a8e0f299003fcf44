"""What people script against, as a Docker user runs it: --format (Go templates) on ps,
inspect, network ls and network inspect; ps's filters, -n, -l and --no-trunc; Docker's
status text; the default network `bridge` and the pseudo-networks host and none; and
inspect in Docker's shape. The CLI in a throwaway host namespace; the kernel and real
connections where the output names something real."""

from __future__ import annotations

import json
import sqlite3
import time

from conftest import Sandbox, sh, user_networks


def lines(sb: Sandbox, *args: str) -> list[str]:
    return sb.pw(*args).stdout.splitlines()


def wait_exited(sb: Sandbox, name: str) -> None:
    deadline = time.monotonic() + 10
    while sb.inspect(name)["State"]["Running"]:  # type: ignore[index]
        assert time.monotonic() < deadline, f"{name} still running"
        time.sleep(0.05)


def test_ps_format_table_and_json(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.120.0.0/24")
    web = sb.pw("run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
                "sleep", "300").stdout.strip()
    db = sb.pw("run", "-d", "--name", "db", "--network", "app", "--", "sleep", "301")\
        .stdout.strip()
    assert lines(sb, "ps", "--format", "{{.Names}}") == ["db", "web"]  # newest first
    # The format as a shell passes it ("\t" two characters), a table with headers.
    out = lines(sb, "ps", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.Ports}}")
    assert out[0].split() == ["CONTAINER", "ID", "NAMES", "PORTS"]
    # (Each name read at its column: a container's id may contain "db" itself.)
    assert out[0].index("NAMES") == 15
    assert [row[15:].split()[0] for row in out[1:3]] == ["db", "web"]
    assert out[1].split() == [db[:12], "db"]
    assert out[2].split() == [web[:12], "web", "0.0.0.0:8080->80/tcp"]
    assert lines(sb, "ps", "--no-trunc", "--format", "{{.ID}} {{.Command}}") == \
        [f'{db} "sleep 301"', f'{web} "sleep 300"']
    rows = [json.loads(line) for line in lines(sb, "ps", "--format", "json")]
    assert [(r["Names"], r["Networks"], r["State"], r["Image"]) for r in rows] == \
        [("db", "app", "running", ""), ("web", "app", "running", "")]
    assert rows[0]["Status"].startswith("Up ") and rows[0]["RunningFor"].endswith(" ago")
    assert lines(sb, "ps", "--format", "{{json .Names}} {{upper .State}} {{len .ID}}") == \
        ['"db" RUNNING 12', '"web" RUNNING 12']
    # -q wins over a format, as in Docker.
    assert lines(sb, "ps", "-q", "--format", "{{.Names}}") == [db[:12], web[:12]]
    assert sb.pw("ps", "--format", "table").stdout.startswith("CONTAINER ID   NAME")
    # A template that does not parse or does not fit: one line, exit code 2.
    cp = sb.pw("ps", "--format", "{{.Name}}", check=False)
    assert cp.returncode == 2 and cp.stdout == ""
    assert cp.stderr.startswith("portway: error: template parsing error: template: :1:2: "
                                'executing "" at <.Name>: can\'t evaluate field Name in type '
                                "*formatter.ContainerContext; ")
    assert cp.stderr.count("\n") == 1


def test_ps_status_as_docker(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("run", "-d", "--name", "up", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "three", "--", "sh", "-c", "exit 3")
    sb.pw("run", "-d", "--name", "killed", "--", "sleep", "300")
    sb.pw("stop", "-t", "0", "killed")  # sleep as PID 1 ignores SIGTERM: SIGKILLed
    wait_exited(sb, "three")
    status = dict(line.split(" ", 1) for line in
                  lines(sb, "ps", "-a", "--format", "{{.Names}} {{.Status}}"))
    assert status["up"].startswith("Up ") and status["up"] != "Up "
    assert status["three"].startswith("Exited (3) ") and status["three"].endswith(" ago")
    assert status["killed"].startswith("Exited (137) ")
    table = sb.pw("ps", "-a").stdout
    assert "Exited (3) " in table and "Up " in table
    assert "three" not in sb.pw("ps").stdout  # only running ones without -a
    inspected = sb.inspect("three")
    assert inspected["State"]["FinishedAt"].endswith("Z")  # type: ignore[index]
    assert inspected["Created"].endswith("Z")  # RFC 3339
    assert "T" in inspected["Created"]  # type: ignore[operator]


def test_ps_filters_last_and_latest(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "front", "--subnet", "10.121.0.0/24")
    net_id = sb.pw("network", "create", "back", "--subnet", "10.122.0.0/24").stdout.strip()
    web = sb.pw("run", "-d", "--name", "web", "--network", "front", "--label", "team=web",
                "--label", "tier=front", "--", "sleep", "300").stdout.strip()
    sb.pw("run", "-d", "--name", "web-api", "--network", "back", "-l", "team=web", "--",
          "sleep", "300")
    sb.pw("run", "-d", "--name", "done", "--network", "back", "--", "true")
    wait_exited(sb, "done")

    def names(*filters: str) -> list[str]:
        return lines(sb, "ps", *filters, "--format", "{{.Names}}")

    assert names("--filter", "name=web") == ["web-api", "web"]
    assert names("--filter", "name=^web$") == ["web"]
    assert names("-f", "name=web-api", "-f", "name=done") == ["web-api"]  # done: exited
    assert names("-a", "-f", "name=web-api", "-f", "name=done") == ["done", "web-api"]
    assert names("-f", "status=exited") == ["done"]  # a status filter needs no -a
    assert names("-f", "status=exited", "-f", "status=running") == ["done", "web-api", "web"]
    assert names("-f", "network=back") == ["web-api"]
    assert names("-f", "network=back", "-f", "name=^web") == ["web-api"]  # both keys
    assert names("-a", "-f", f"network={net_id[:6]}") == ["done", "web-api"]
    assert names("-f", f"id={web[:8]}") == ["web"]
    assert names("-f", "exited=0", "-a") == ["done"]
    assert names("-f", "label=team") == ["web-api", "web"]
    assert names("-f", "label=team=web", "-f", "label=tier=front") == ["web"]  # all labels
    assert names("-f", "label=tier=back") == []
    assert lines(sb, "ps", "-f", "name=^web$", "--format",
                 '{{.Labels}} {{.Label "tier"}}') == ["team=web,tier=front front"]
    assert names("-n", "2") == ["done", "web-api"]  # the 2 last created, any state
    assert names("-l") == ["done"]
    assert names("--latest", "-f", "status=running") == ["web-api"]
    assert lines(sb, "ps", "-q", "-f", "name=^web$") == [web[:12]]
    assert lines(sb, "ps", "-q", "--no-trunc", "-f", "name=^web$") == [web]
    # Shell completion lists the names as given, without inspect's slash.
    assert sorted(lines(sb, "__complete", "containers")) == ["done", "web", "web-api"]
    cp = sb.pw("ps", "-f", "colour=red", check=False)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1
    assert "invalid filter 'colour'" in cp.stderr
    # Relative to another container (a stopped one too), by creation.
    assert names("-a", "-f", "before=done") == ["web-api", "web"]
    assert names("-f", "since=web") == ["web-api"]  # without -a: running ones only
    assert names("-a", "-f", "since=web", "-f", f"before={web[:12]}") == []
    cp = sb.pw("ps", "-f", "since=ghost", check=False)
    assert cp.returncode == 1 and cp.stderr.count("\n") == 1 and "ghost" in cp.stderr


def test_port_filters_and_network_filters(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "used", "--label", "env=prod", "--subnet", "10.124.0.0/24")
    sb.pw("network", "create", "spare", "--label", "env=test", "--subnet", "10.125.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "used", "-p", "8080:80",
          "--expose", "9000", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "dns", "--network", "used", "-p", "5353:53/udp", "--",
          "sleep", "300")

    def names(*filters: str) -> list[str]:
        return lines(sb, "ps", *filters, "--format", "{{.Names}}")

    assert names("-f", "publish=80") == ["web"]
    assert names("-f", "publish=53/udp") == ["dns"]
    assert names("-f", "publish=1-100/udp") == ["dns"]
    assert names("-f", "publish=9000") == []  # exposed only
    assert names("-f", "expose=9000") == ["web"]

    def networks(*filters: str) -> list[str]:
        return lines(sb, "network", "ls", *filters, "--format", "{{.Name}}")

    assert networks("-f", "dangling=true") == ["spare"]  # host, none: builtin
    assert networks("--filter", "type=custom") == ["spare", "used"]  # by name
    # (bridge is made when a container first uses it: none has here.)
    assert set(networks("-f", "type=builtin")) == {"host", "none"}
    assert networks("-f", "label=env=prod") == ["used"]
    assert networks("-f", "driver=null") == ["none"]
    assert networks("-f", "name=^sp") == ["spare"]
    assert lines(sb, "network", "ls", "-q", "-f", "name=^used$") == \
        [sb.pw("network", "inspect", "-f", "{{.Id}}", "used").stdout.strip()[:12]]
    cp = sb.pw("network", "ls", "-f", "type=mine", check=False)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1
    assert "invalid filter 'type'='mine'" in cp.stderr


def test_inspect_in_docker_shape_and_formats(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.123.0.0/24")
    sb.pw("run", "-d", "--name", "plain", "-p", "8081:80", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--ip", "10.123.0.50", "--alias",
          "www", "-p", "127.0.0.1:8082:80/udp", "--", "sleep", "300")
    sb.pw("network", "connect", "bridge", "web")
    sb.pw("run", "-d", "--name", "hosty", "--network", "host", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "alone", "--network", "none", "--", "sleep", "300")
    plain = sb.inspect("plain")
    settings = plain["NetworkSettings"]
    bridge = settings["Networks"]["bridge"]  # type: ignore[index]
    assert plain["Name"] == "/plain"
    assert plain["HostConfig"]["NetworkMode"] == "bridge"  # type: ignore[index]
    assert plain["HostConfig"]["PortBindings"] == {  # type: ignore[index]
        "80/tcp": [{"HostIp": "", "HostPort": "8081"}]}
    # The top-level fields come from the default network, as Docker fills them.
    for key in ("IPAddress", "Gateway", "MacAddress", "IPPrefixLen", "EndpointID"):
        assert settings[key] == bridge[key], key  # type: ignore[index]
    assert settings["IPAddress"].startswith("172.17.")  # type: ignore[index]
    assert settings["IPPrefixLen"] == 16  # type: ignore[index]
    assert bridge["DNSNames"] == ["plain", plain["Id"][:12]]  # type: ignore[index]
    assert bridge["IPAMConfig"] is None and bridge["Aliases"] is None
    web = sb.inspect("web")
    nets = web["NetworkSettings"]["Networks"]  # type: ignore[index]
    assert web["HostConfig"]["NetworkMode"] == "app"  # type: ignore[index]
    assert nets["app"]["IPAMConfig"] == {"IPv4Address": "10.123.0.50"}
    assert nets["app"]["Aliases"] == ["www"]
    assert nets["app"]["DNSNames"] == ["web", "www", web["Id"][:12]]  # type: ignore[index]
    assert web["HostConfig"]["PortBindings"] == {  # type: ignore[index]
        "80/udp": [{"HostIp": "127.0.0.1", "HostPort": "8082"}]}
    # Connected to the default network later: the top-level fields are that network's.
    assert web["NetworkSettings"]["IPAddress"] == nets["bridge"]["IPAddress"] != ""  # type: ignore[index]
    assert sb.inspect("hosty")["HostConfig"]["NetworkMode"] == "host"  # type: ignore[index]
    assert sb.inspect("alone")["HostConfig"]["NetworkMode"] == "none"  # type: ignore[index]
    # DNSNames are what the DNS server answers.
    address = nets["app"]["IPAddress"]
    for name in nets["app"]["DNSNames"]:
        out = sb.pw("exec", "plain", "--", "getent", "hosts", name, check=False).stdout
        assert address not in out  # plain is not on app: no answer there
    sb.pw("network", "connect", "app", "plain")
    for name in nets["app"]["DNSNames"]:
        out = sb.pw("exec", "plain", "--", "getent", "hosts", name).stdout
        assert address in out or nets["bridge"]["IPAddress"] in out, (name, out)

    def fmt(template: str, *names: str) -> list[str]:
        return lines(sb, "inspect", "-f", template, *names)

    assert fmt("{{.Name}} {{.HostConfig.NetworkMode}}", "plain", "web", "hosty", "alone") == \
        ["/plain bridge", "/web app", "/hosty host", "/alone none"]
    assert fmt("{{.NetworkSettings.IPAddress}}", "plain") == [settings["IPAddress"]]
    assert fmt("{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.IPAddress}} "
               "{{end}}", "web") == \
        [f"app=10.123.0.50 bridge={nets['bridge']['IPAddress']} "]
    assert fmt('{{(index .NetworkSettings.Networks "app").IPAddress}}', "web") == \
        ["10.123.0.50"]
    assert fmt('{{index .NetworkSettings.Ports "80/udp" 0 "HostPort"}}', "web") == ["8082"]
    assert json.loads(fmt("{{json .HostConfig.PortBindings}}", "plain")[0]) == \
        {"80/tcp": [{"HostIp": "", "HostPort": "8081"}]}
    assert fmt("{{if .State.Running}}up{{else}}down{{end}} {{join .Config.Cmd \" \"}}",
               "plain") == ["up sleep 300"]
    assert fmt('{{println .Name}}{{printf "%-6s|" .State.Status}}', "plain") == \
        ["/plain", "running|"]
    assert fmt("{{.NetworkSettings.Networks.nope}}", "plain") == ["<no value>"]
    compact = sb.pw("inspect", "-f", "json", "plain", "web").stdout
    assert compact.count("\n") == 1 and [c["Name"] for c in json.loads(compact)] == \
        ["/plain", "/web"]
    cp = sb.pw("inspect", "-f", "{{.State.Pidd}}", "plain", check=False)
    assert cp.returncode == 2 and 'map has no entry for key "Pidd"' in cp.stderr
    assert cp.stderr.count("\n") == 1
    # network inspect, too.
    assert lines(sb, "network", "inspect", "-f", "{{.Name}} {{.Driver}} "
                 "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "app", "bridge") == \
        ["app bridge 10.123.0.0/24", "bridge bridge 172.17.0.0/16"]


def test_default_network_bridge_host_and_none(sandbox: Sandbox) -> None:
    sb = sandbox
    # Listed before anything exists: the pseudo-networks, as Docker lists them.
    assert lines(sb, "network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}") == \
        ["host host local", "none null local"]
    sb.pw("run", "-d", "--name", "a", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "b", "--network", "bridge", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "h", "--network", "host", "--", "sleep", "300")
    nets = {n["Name"]: n for n in json.loads(sb.pw("network", "ls", "--json").stdout)}
    assert sorted(nets) == ["bridge", "host", "none"]
    assert [n["Name"] for n in user_networks(sb.pw("network", "ls", "--json").stdout)] == \
        ["bridge"]
    bridge = nets["bridge"]
    assert {c["Name"] for c in bridge["Containers"].values()} == {"a", "b"}
    assert [c["Name"] for c in nets["host"]["Containers"].values()] == ["h"]
    assert nets["host"]["Driver"] == "host" and nets["none"]["Driver"] == "null"
    # --network bridge and no --network are one network: a and b reach each other by
    # name (portway's default network has DNS, unlike Docker's).
    out = sb.pw("exec", "a", "--", "getent", "hosts", "b").stdout
    b_address = sb.inspect("b")["NetworkSettings"]["IPAddress"]  # type: ignore[index]
    assert out.split()[0] == b_address
    # The kernel has one bridge, named after the network's id.
    assert bridge["Bridge"] in sb.links()
    table = sb.pw("network", "ls").stdout
    assert [line.split()[1] for line in table.splitlines()[1:]] == ["bridge", "host", "none"]
    host = json.loads(sb.pw("network", "inspect", "host").stdout)[0]
    assert host["Name"] == "host" and host["Id"] == nets["host"]["Id"]
    assert json.loads(sb.pw("network", "inspect", host["Id"][:12]).stdout)[0]["Name"] == "host"
    assert len(lines(sb, "network", "ls", "-q")) == 3
    assert lines(sb, "network", "ls", "--no-trunc", "--format", "{{.ID}}")[1] == \
        nets["host"]["Id"]
    out = lines(sb, "network", "ls", "--format", "table {{.Name}}\\t{{.Driver}}")
    assert out == ["NAME      DRIVER", "bridge    bridge", "host      host", "none      null"]
    cp = sb.pw("network", "rm", "host", check=False)
    assert cp.returncode == 1 and "pre-defined" in cp.stderr  # Docker's exit code
    # prune keeps the default network, as Docker's does.
    sb.pw("rm", "-f", "a", "b")
    assert sb.pw("network", "prune", "-f").stdout == ""
    assert "bridge" in sb.pw("network", "ls").stdout


def test_an_old_default_network_is_renamed_in_place(sandbox: Sandbox) -> None:
    """A state dir from before the default network was called bridge (store schema 5,
    the network called portway) keeps working: its network, container, bridge interface and
    firewall stay; the name is bridge from the next start of the daemon."""
    sb = sandbox
    cid = sb.pw("run", "-d", "--name", "old", "-p", "8090:80", "--", "python3", "-m",
                "http.server", "80").stdout.strip()
    before = json.loads(sb.pw("network", "inspect", "bridge").stdout)[0]
    sb.pw("daemon", "stop")
    con = sqlite3.connect(sb.state_dir / "portway.db")
    with con:
        con.execute("UPDATE networks SET name = 'portway'")
        con.execute("ALTER TABLE endpoints DROP COLUMN requested")
        # What schema 8 added: a container's lifecycle and its configuration per network.
        con.execute("DROP TABLE endpoint_configs")
        for column in ("restart_policy", "restart_max", "restart_count", "user_stopped",
                       "error", "networked"):
            con.execute(f"ALTER TABLE containers DROP COLUMN {column}")
        con.execute("PRAGMA user_version = 5")
    con.close()
    after = json.loads(sb.pw("network", "inspect", "bridge").stdout)[0]
    assert (after["Id"], after["Bridge"]) == (before["Id"], before["Bridge"])
    assert before["Bridge"] in sb.links()
    assert list(after["Containers"]) == [cid]
    old = sb.inspect("old")
    assert old["State"]["Running"] and old["HostConfig"]["NetworkMode"] == "bridge"  # type: ignore[index]
    assert sb.pw("doctor").stdout.startswith("healthy")
    # Still reachable through its published port, from outside.
    get = ("import sys, urllib.request as u\n"
           "try: print(u.urlopen(sys.argv[1], timeout=2).status)\n"
           "except OSError as e: print(e)")
    deadline = time.monotonic() + 10
    while True:
        status = sh("ip", "netns", "exec", sb.outside, "python3", "-c", get,
                    f"http://{sb.host_addr}:8090/").stdout.strip()
        if status == "200" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == "200"
