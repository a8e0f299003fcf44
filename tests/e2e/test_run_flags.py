"""run's flags, `port NAME PORT`, `logs -f/--tail/-t`, network create's options and the
small bugs of issue 17 (2, 3, 5, 6), as a user runs them: the CLI in a throwaway host
namespace, checked with real connections, the kernel's own view and Docker's output.
"""

from __future__ import annotations

import calendar
import fcntl
import itertools
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import Sandbox, ip_json, sh
from portway.testbed import HTTP_GET, WAIT_LISTENING

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


def pw(sb: Sandbox, *args: str, cwd: str | None = None, input: str | None = None,
       env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """portway in the sandbox from a directory of the caller's, with stdin given."""
    cp = subprocess.run(sb.pw_cmd(*args), capture_output=True, text=True, cwd=cwd,
                        input=input if input is not None else "", timeout=timeout,
                        env=dict(os.environ, **sb.env, **(env or {})))
    if check and cp.returncode != 0:
        raise AssertionError(f"portway {' '.join(args)} failed ({cp.returncode}):\n"
                             f"{cp.stdout}{cp.stderr}")
    return cp


def in_ns(netns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", netns, *args).stdout.strip()


def one_line_error(cp: subprocess.CompletedProcess[str], text: str, code: int = 2) -> None:
    assert cp.returncode == code, (cp.returncode, cp.stderr)
    assert cp.stderr.startswith("portway:") and cp.stderr.count("\n") == 1, cp.stderr
    assert text in cp.stderr and "Traceback" not in cp.stderr, cp.stderr


@contextmanager
def host_listener(sb: Sandbox, port: int) -> Iterator[None]:
    """A TCP server in the host namespace that answers each connection with 'host'."""
    code = ("import socket\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen(); print('up', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept(); c.sendall(b'host'); c.close()\n")
    proc = subprocess.Popen(["ip", "netns", "exec", sb.host, "python3", "-c", code],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        yield
    finally:
        proc.kill()
        proc.wait()


# bug 2, -w, -e, --env-file


def test_commands_start_in_the_callers_directory(sandbox: Sandbox) -> None:
    """Bug 2: `run -d` from /srv served the daemon's directory. Now run -d, foreground
    run and exec all start in the caller's directory, or -w."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.61.0.0/24")
    with tempfile.TemporaryDirectory(prefix="pwt-srv-") as srv:
        Path(srv, "marker.txt").write_text("served from the caller's directory\n")
        pw(sb, "run", "-d", "--name", "web", "--network", "app", "-p", "8080:80", "--",
           "python3", "-m", "http.server", "80", cwd=srv)
        sb.in_host("python3", "-c", WAIT_LISTENING, "10.61.0.2", "80")
        got = sb.in_host("python3", "-c", "import urllib.request as u; print(u.urlopen("
                         "'http://127.0.0.1:8080/marker.txt', timeout=5).read().decode())")
        assert got.stdout.strip() == "served from the caller's directory"
        assert sb.inspect("web")["Config"]["WorkingDir"] == srv  # type: ignore[index]
        assert pw(sb, "run", "--rm", "--", "pwd", cwd=srv).stdout.strip() == srv
        assert pw(sb, "exec", "web", "--", "pwd", cwd=srv).stdout.strip() == srv
        assert pw(sb, "run", "--rm", "-w", "/tmp", "--", "pwd", cwd=srv).stdout == "/tmp\n"
        assert pw(sb, "exec", "-w", "/usr", "web", "--", "pwd", cwd=srv).stdout == "/usr\n"
        # A relative program runs from there too.
        Path(srv, "hello.sh").write_text("#!/bin/sh\necho hello from $(pwd)\n")
        os.chmod(Path(srv, "hello.sh"), 0o755)
        assert pw(sb, "run", "--rm", "--", "./hello.sh", cwd=srv).stdout == \
            f"hello from {srv}\n"
        before = sb.snapshot()
        for args, text in ((["run", "-d", "-w", "srv", "--", "true"], "absolute path"),
                           (["run", "-d", "-w", f"{srv}/nope", "--", "true"],
                            "does not exist"),
                           (["exec", "-w", f"{srv}/nope", "web", "--", "true"],
                            "does not exist")):
            one_line_error(pw(sb, *args, check=False), text)
        assert sb.snapshot() == before


def test_environment(sandbox: Sandbox) -> None:
    sb = sandbox
    with tempfile.NamedTemporaryFile("w", prefix="pwt-env-", suffix=".env") as f:
        f.write("# settings\nFROM_FILE=file\n\n  SHARED=from file\nPASSED\nUNSET_HERE\n")
        f.flush()
        show = ("import os; print(' '.join(os.environ.get(k, '-') for k in ('A', 'FROM_FILE', "
                "'SHARED', 'PASSED', 'UNSET_HERE', 'HOSTNAME', 'TERM')))")
        out = pw(sb, "run", "--rm", "--hostname", "box", "--env-file", f.name, "-e", "A=1",
                 "--env", "SHARED=from flag", "--", "python3", "-c", show,
                 env={"PASSED": "passed", "A": "ignored"}).stdout
        assert out == "1 file from flag passed - box -\n"
        sb.pw("run", "-d", "--name", "envy", "-e", "A=detached", "--", "sleep", "3600")
        assert pw(sb, "exec", "envy", "--", "sh", "-c", "echo $A").stdout == "detached\n"
        assert pw(sb, "exec", "-e", "A=exec", "envy", "--", "sh", "-c",
                  "echo $A").stdout == "exec\n"
        env = sb.inspect("envy")["Config"]["Env"]  # type: ignore[index]
        assert "A=detached" in env and any(e.startswith("PATH=") for e in env)
        bad = pw(sb, "run", "--env-file", "/nonexistent/pwt.env", "--", "true", check=False)
        one_line_error(bad, "cannot read --env-file /nonexistent/pwt.env")


# -i and -t


def test_stdin_is_attached_with_i(sandbox: Sandbox) -> None:
    sb = sandbox
    assert pw(sb, "run", "--rm", "-i", "--", "cat", input="hi\n").stdout == "hi\n"
    # Without -i, as with Docker, stdin is not attached: the command reads nothing.
    assert pw(sb, "run", "--rm", "--", "cat", input="hi\n").stdout == ""
    # -d -i keeps the command's stdin open: cat waits, without -i it ends at once.
    sb.pw("run", "-d", "-i", "--name", "kept", "--", "cat")
    sb.pw("run", "-d", "--name", "gone", "--", "cat")
    time.sleep(1)
    assert sb.inspect("kept")["State"]["Running"] is True  # type: ignore[index]
    assert sb.inspect("gone")["State"]["Running"] is False  # type: ignore[index]
    assert sb.inspect("kept")["Config"]["OpenStdin"] is True  # type: ignore[index]
    # -it without a terminal to read from: Docker's refusal.
    cp = pw(sb, "run", "--rm", "-it", "--", "true", input="x", check=False)
    one_line_error(cp, "the input device is not a TTY", code=1)
    one_line_error(pw(sb, "exec", "-it", "kept", "--", "true", check=False),
                   "the input device is not a TTY", code=1)


def run_in_terminal(sb: Sandbox, args: list[str], rows: int, cols: int,
                    typed: bytes = b"", timeout: float = 30) -> tuple[int, str]:
    """portway ARGS with a terminal of rows x cols as its stdin, stdout and stderr;
    what it wrote there and its exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(sb.pw_cmd(*args), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    if typed:
        time.sleep(1.5)  # the command is waiting for it by then
        os.write(master, typed)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=10)
    os.close(master)
    return code, out.decode(errors="replace")


def test_tty_gives_a_terminal_of_its_own(sandbox: Sandbox) -> None:
    sb = sandbox
    code, out = run_in_terminal(sb, ["run", "--rm", "-t", "--", "sh", "-c",
                                     "tty; stty size; echo $TERM; exit 4"], 33, 101)
    assert code == 4, out
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), out
    assert lines[1:3] == ["33 101", "xterm"], out
    # Its terminal is not the caller's.
    caller = run_in_terminal(sb, ["run", "--rm", "-i", "--", "tty"], 10, 10)[1].strip()
    assert caller != lines[0]
    # -it: what is typed reaches the command through its terminal.
    code, out = run_in_terminal(sb, ["run", "--rm", "-it", "--", "sh", "-c",
                                     "read x; echo got $x"], 24, 80, typed=b"typed\r")
    assert code == 0 and "got typed" in out, out
    # Without a terminal on stdin, -t alone still gives the command one (Docker's).
    cp = pw(sb, "run", "--rm", "-t", "--", "sh", "-c", "tty")
    assert re.fullmatch(r"/dev/pts/\d+\r?\n", cp.stdout), cp.stdout


# -P, --expose, host port ranges, port NAME PORT


def outside_get(sb: Sandbox, port: int) -> str:
    return in_ns(sb.outside, "python3", "-c", HTTP_GET, f"http://{sb.host_addr}:{port}/")


def test_publish_all_ranges_and_port(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.62.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "-P", "--expose", "80",
          "--expose", "53/udp", "--", "python3", "-m", "http.server", "80")
    lines = sb.pw("port", "web", "80").stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("0.0.0.0:"), lines
    port = int(lines[0].split(":")[1])
    low, high = map(int, in_ns(sb.host, "cat", "/proc/sys/net/ipv4/ip_local_port_range")
                    .split())
    assert low <= port <= high
    assert sb.pw("port", "web", "53/udp").stdout.startswith("0.0.0.0:")
    sb.in_host("python3", "-c", WAIT_LISTENING, "10.62.0.2", "80")
    assert outside_get(sb, port) == "200"
    web = sb.inspect("web")
    assert web["Config"]["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}  # type: ignore[index]
    assert web["HostConfig"]["PublishAllPorts"] is True  # type: ignore[index]
    cp = sb.pw("port", "web", "81", check=False)
    one_line_error(cp, "no public port '81/tcp' published for web", code=1)
    # A host port range for one container port: the first free one of it. 8000 is held
    # by a process of the host.
    holder = subprocess.Popen(["ip", "netns", "exec", sb.host, "python3", "-c",
                               "import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', "
                               "8000)); s.listen(); print('up', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        sb.pw("run", "-d", "--name", "ranged", "--network", "app", "-p", "8000-8002:80",
              "--", "python3", "-m", "http.server", "80")
        assert sb.pw("port", "ranged", "80/tcp").stdout == "0.0.0.0:8001\n"
        assert sb.pw("port", "ranged").stdout == "80/tcp -> 0.0.0.0:8001\n"
        sb.in_host("python3", "-c", WAIT_LISTENING, "10.62.0.3", "80")
        assert outside_get(sb, 8001) == "200"
        sb.pw("run", "-d", "--name", "next", "--network", "app", "-p", "8000-8002:80",
              "--", "sleep", "3600")
        assert sb.pw("port", "next", "80").stdout == "0.0.0.0:8002\n"
        cp = sb.pw("run", "-d", "--network", "app", "-p", "8000-8002:80", "--", "sleep", "1",
                   check=False)
        one_line_error(cp, "host ports 8000-8002/tcp are all taken", code=4)
    finally:
        holder.kill()
        holder.wait()


# --add-host, --dns-search, --dns-option, --domainname, --sysctl, --label, --mac-address


def test_files_names_sysctls_labels_and_mac(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--ipv6", "--subnet", "10.63.0.0/24", "--subnet",
          "fd00:63::/64")
    sb.pw("run", "-d", "--name", "box", "--network", "app", "--hostname", "box",
          "--domainname", "example.com", "--add-host", "db.local:10.9.9.9",
          "--add-host", "host.docker.internal:host-gateway", "--dns-search", "corp.example",
          "--dns-option", "ndots:3", "--sysctl", "net.ipv4.ip_unprivileged_port_start=80",
          "--label", "tier=web", "--label", "team", "--mac-address", "02:42:ac:11:00:99",
          "--", "sleep", "3600")
    hosts = sb.pw("exec", "box", "--", "cat", "/etc/hosts").stdout
    assert "10.9.9.9\tdb.local\n" in hosts
    assert "10.63.0.1\thost.docker.internal\nfd00:63::1\thost.docker.internal\n" in hosts
    assert "10.63.0.2\tbox.example.com box\n" in hosts
    resolv = sb.pw("exec", "box", "--", "cat", "/etc/resolv.conf").stdout
    assert resolv == "nameserver 10.63.0.1\nsearch corp.example\noptions ndots:3\n"
    assert sb.pw("exec", "box", "--", "cat", "/proc/sys/kernel/domainname").stdout == \
        "example.com\n"
    # The sysctl is the container's namespace's alone; the host's is as it was.
    assert sb.pw("exec", "box", "--", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"
                 ).stdout == "80\n"
    assert in_ns(sb.host, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start") == "1024"
    box = sb.inspect("box")
    netns = os.path.basename(box["NetworkSettings"]["SandboxKey"])  # type: ignore[index]
    assert ip_json(netns, "link", "show", "dev", "eth0")[0]["address"] == "02:42:ac:11:00:99"
    assert box["NetworkSettings"]["Networks"]["app"]["MacAddress"] == \
        "02:42:ac:11:00:99"  # type: ignore[index]
    assert box["Config"]["Labels"] == {"tier": "web", "team": ""}  # type: ignore[index]
    assert box["Config"]["Domainname"] == "example.com"  # type: ignore[index]
    assert box["HostConfig"]["Sysctls"] == {  # type: ignore[index]
        "net.ipv4.ip_unprivileged_port_start": "80"}
    # host-gateway leads to the host: a real connection to a server of the host's.
    connect = ("import socket; s = socket.create_connection(('host.docker.internal', 9999), "
               "5); print(s.recv(10).decode())")
    with host_listener(sb, 9999):
        assert sb.pw("exec", "box", "--", "python3", "-c", connect).stdout == "host\n"
    # Another container reaches it by its MAC's address (the guard accepts that MAC).
    out = sb.pw("run", "--rm", "--network", "app", "--", "python3", "-c",
                "import socket, sys\n"
                "try: socket.create_connection(('10.63.0.2', 9), 2)\n"
                "except ConnectionRefusedError: print('refused: it answered')\n"
                "except OSError as e: print('unreachable', e)\n").stdout
    assert out == "refused: it answered\n"
    # A MAC in use on the network, and sysctls a container may not set.
    before = sb.snapshot()
    cases = ((["--mac-address", "02:42:ac:11:00:99"], "already in use on network app by box",
              4),
             (["--mac-address", "01:00:5e:00:00:01"], "multicast", 2),
             (["--sysctl", "kernel.shmmax=1"], "not in a separate kernel namespace", 2),
             (["--sysctl", "net.ipv4.no_such_thing=1"], "does not exist", 2),
             (["--sysctl", "net.ipv4.ip_unprivileged_port_start=x"], "Invalid argument", 2),
             (["--add-host", "db"], "invalid --add-host", 2),
             (["--dns-option", "ndots 2"], "invalid --dns-option", 2))
    for flags, text, code in cases:
        cp = sb.pw("run", "-d", "--network", "app", *flags, "--", "sleep", "1", check=False)
        one_line_error(cp, text, code)
    cp = sb.pw("run", "-d", "--network", "host", "--sysctl", "net.core.somaxconn=1", "--",
               "sleep", "1", check=False)
    one_line_error(cp, "not allowed with --network host")
    assert sb.snapshot() == before


def test_long_network_form(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "front", "--subnet", "10.64.0.0/24")
    sb.pw("network", "create", "back", "--subnet", "10.65.0.0/24")
    sb.pw("run", "-d", "--name", "api", "--network", "name=front,alias=www,ip=10.64.0.40",
          "--network", "name=back,alias=svc,alias=api2,mac-address=02:00:0a:41:00:07",
          "--", "python3", "-m", "http.server", "80")
    nets = sb.inspect("api")["NetworkSettings"]["Networks"]  # type: ignore[index]
    assert nets["front"]["IPAddress"] == "10.64.0.40"
    assert nets["back"]["MacAddress"] == "02:00:0a:41:00:07"
    assert nets["front"]["Aliases"][0] == "www" and nets["back"]["Aliases"][:2] == \
        ["svc", "api2"]
    sb.in_host("python3", "-c", WAIT_LISTENING, "10.64.0.40", "80")
    # Each alias is a name on its own network only.
    for net, name, want in (("front", "www", "200"), ("back", "api2", "200"),
                            ("back", "www", "fail")):
        out = sb.pw("run", "--rm", "--network", net, "--", "python3", "-c", HTTP_GET,
                    f"http://{name}/").stdout.strip()
        assert out.startswith(want), (net, name, out)
    cp = sb.pw("run", "-d", "--network", "name=front,alias=x", "--alias", "y", "--", "true",
               check=False)
    one_line_error(cp, "cannot specify both --alias and per-network alias")


# --network container:NAME


def test_sharing_another_containers_network(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.66.0.0/24")
    web_id = sb.pw("run", "-d", "--name", "web", "--network", "app", "--",
                   "python3", "-m", "http.server", "80").stdout.strip()
    sb.pw("run", "-d", "--name", "side", "--network", "container:web", "--", "sleep", "3600")
    side = sb.inspect("side")
    assert side["HostConfig"]["NetworkMode"] == f"container:{web_id}"  # type: ignore[index]
    assert side["NetworkSettings"]["Networks"] == {}  # type: ignore[index]
    assert side["Config"]["Hostname"] == web_id[:12]  # type: ignore[index]
    links = json.loads(sb.pw("exec", "side", "--", "ip", "-j", "addr").stdout)
    assert any(a.get("local") == "10.66.0.2" for x in links for a in x["addr_info"])
    # It shares web's loopback: web's server answers on 127.0.0.1, a foreground run too.
    sb.pw("exec", "web", "--", "python3", "-c", WAIT_LISTENING, "127.0.0.1", "80")
    assert sb.pw("exec", "side", "--", "python3", "-c", HTTP_GET,
                 "http://127.0.0.1/").stdout == "200\n"
    assert sb.pw("run", "--rm", "--network", "container:web", "--", "python3", "-c",
                 HTTP_GET, "http://127.0.0.1/").stdout == "200\n"
    assert "side" in sb.pw("ps").stdout and len(sb.pw("ps", "-q").stdout.split()) == 2
    # Removing web leaves side running, with the namespace's loopback alone (Docker's).
    sb.pw("rm", "-f", "web")
    assert sb.inspect("side")["State"]["Running"] is True  # type: ignore[index]
    names = [x["ifname"] for x in json.loads(sb.pw("exec", "side", "--", "ip", "-j",
                                                   "link").stdout)]
    assert names == ["lo"]
    sb.pw("rm", "-f", "side")
    # Only a running container's network can be joined.
    sb.pw("run", "--name", "done", "--network", "app", "--", "true")
    cp = sb.pw("run", "-d", "--network", "container:done", "--", "sleep", "1", check=False)
    one_line_error(cp, "cannot join network of a non running container: done", code=4)
    cp = sb.pw("run", "-d", "--network", "container:done", "-p", "80", "--", "sleep", "1",
               check=False)
    one_line_error(cp, "conflicting options: port publishing")


# network create --aux-address, --attachable, -o com.docker.network.bridge.name


def test_network_create_options(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "lab", "--subnet", "10.67.0.0/24", "--aux-address",
          "router=10.67.0.2", "--attachable", "-o", "com.docker.network.bridge.name=br-lab")
    net = json.loads(sb.pw("network", "inspect", "lab").stdout)[0]
    assert net["IPAM"]["Config"][0]["AuxiliaryAddresses"] == {"router": "10.67.0.2"}
    assert net["Bridge"] == "br-lab" and net["Attachable"] is True
    # Docker's fields that portway has no use for, there for templates that read them.
    assert (net["Ingress"], net["ConfigFrom"], net["ConfigOnly"]) == (False, {"Network": ""},
                                                                     False)
    assert sb.pw("network", "inspect", "-f", "{{.ConfigOnly}} {{.ConfigFrom.Network}}|",
                 "none").stdout == "false |\n"
    link = ip_json(sb.host, "-d", "link", "show", "dev", "br-lab")[0]
    assert link["linkinfo"]["info_kind"] == "bridge" and net["Id"] in link["ifalias"]
    sb.pw("run", "-d", "--name", "web", "--network", "lab", "--",
          "python3", "-m", "http.server", "80")
    assert sb.inspect("web")["NetworkSettings"]["Networks"]["lab"]["IPAddress"] == \
        "10.67.0.3"  # type: ignore[index]
    sb.in_host("python3", "-c", WAIT_LISTENING, "10.67.0.3", "80")
    assert sb.pw("run", "--rm", "--network", "lab", "--", "python3", "-c", HTTP_GET,
                 "http://web/").stdout == "200\n"
    # It is portway's by its owner tag: doctor sees it go, gc makes it again.
    sb.in_host("ip", "link", "del", "br-lab")
    assert "br-lab" in sb.pw("doctor", check=False).stdout
    sb.pw("gc")
    assert ip_json(sb.host, "link", "show", "dev", "br-lab")[0]["ifname"] == "br-lab"
    before = sb.snapshot()
    for args, text, code in (
            (["-o", "com.docker.network.bridge.name=br-lab"], "taken by network lab", 4),
            (["-o", "com.docker.network.bridge.name=uplink0"], "the host has a link", 4),
            (["-o", "com.docker.network.bridge.name=way-too-long-name"], "invalid bridge name",
             2),
            (["--subnet", "10.68.0.0/24", "--aux-address", "r=10.69.0.2"], "in no --subnet",
             2),
            (["--subnet", "10.68.0.0/24", "--aux-address", "r"], "NAME=IP", 2)):
        one_line_error(sb.pw("network", "create", "other", *args, check=False), text, code)
    cp = sb.pw("run", "-d", "--network", "lab", "--ip", "10.67.0.2", "--", "sleep", "1",
               check=False)
    one_line_error(cp, "auxiliary address router", code=4)
    assert sb.snapshot() == before
    sb.pw("rm", "-f", "web")
    sb.pw("network", "rm", "lab")
    assert "br-lab" not in sb.links()


# logs -f, --tail, -t


def test_logs_follow_tail_and_timestamps(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("run", "-d", "--name", "talk", "--", "sh", "-c",
          "for i in 1 2 3 4; do echo line$i; sleep 0.4; done; sleep 1; echo last")
    follow = subprocess.Popen(sb.pw_cmd("logs", "-f", "-t", "talk"), stdout=subprocess.PIPE,
                              text=True)
    try:
        out, _ = follow.communicate(timeout=30)  # it ends when the command does
    finally:
        follow.kill()
    lines = out.splitlines()
    assert [ln.split(" ", 1)[1] for ln in lines] == ["line1", "line2", "line3", "line4",
                                                     "last"], out
    assert all(TIMESTAMP.match(ln) for ln in lines)
    stamps = [calendar.timegm(time.strptime(ln[:19], "%Y-%m-%dT%H:%M:%S"))
              + float("0." + ln[20:29]) for ln in lines]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.25 < g < 1.0 for g in gaps[:3]) and 1.2 < gaps[3] < 2.5, gaps
    assert sb.pw("logs", "--tail", "2", "talk").stdout == "line4\nlast\n"
    assert sb.pw("logs", "--tail", "0", "talk").stdout == ""
    assert sb.pw("logs", "--tail", "all", "talk").stdout.count("\n") == 5
    timed = sb.pw("logs", "-t", "--tail", "1", "talk").stdout
    assert timed == lines[-1] + "\n"
    one_line_error(sb.pw("logs", "--tail", "some", "talk", check=False), "invalid --tail")
    # -f on a command that goes on: Ctrl-C ends it (the command keeps running).
    sb.pw("run", "-d", "--name", "ticker", "--", "sh", "-c",
          "while true; do echo tick; sleep 0.2; done")
    follow = subprocess.Popen(sb.pw_cmd("logs", "-f", "ticker"), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "tick\n" and follow.stdout.readline() == "tick\n"
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=5) == 130
    finally:
        follow.kill()
    assert sb.inspect("ticker")["State"]["Running"] is True  # type: ignore[index]


# bug 3: --network host --hostname


def test_host_network_with_a_hostname(sandbox: Sandbox) -> None:
    sb = sandbox
    host_name = socket.gethostname()
    assert sb.pw("run", "--rm", "--network", "host", "--hostname", "foo", "--",
                 "hostname").stdout == "foo\n"
    assert socket.gethostname() == host_name  # the host's own is untouched
    assert sb.pw("run", "--rm", "--network", "host", "--", "hostname").stdout == \
        f"{host_name}\n"
    sb.pw("run", "-d", "--name", "h", "--network", "host", "--hostname", "foo",
          "--add-host", "db.local:10.9.9.9", "--", "sleep", "3600")
    assert sb.pw("exec", "h", "--", "hostname").stdout == "foo\n"
    assert sb.pw("exec", "h", "--", "cat", "/etc/hostname").stdout == "foo\n"
    hosts = sb.pw("exec", "h", "--", "cat", "/etc/hosts").stdout
    assert hosts.startswith(Path("/etc/hosts").read_text()) and \
        hosts.endswith("10.9.9.9\tdb.local\n")
    # Still the host's network: its uplink is there.
    assert "uplink0" in sb.pw("exec", "h", "--", "ip", "-br", "link").stdout
    assert sb.inspect("h")["Config"]["Hostname"] == "foo"  # type: ignore[index]
    sb.pw("rm", "-f", "h")


# bugs 5 and 6: help text, what daemon start and network connect/disconnect print


def test_help_and_quiet_commands(sandbox: Sandbox) -> None:
    sb = sandbox
    run_help = sb.pw("run", "--help").stdout
    assert "default: the container's short id" in run_help
    assert "/24" not in sb.pw("network", "create", "--help").stdout
    sb.pw("daemon", "stop")
    out = sb.pw("daemon", "start").stdout
    assert re.fullmatch(r"started portwayd \(pid \d+\)\n", out), out
    pid = sb.daemon_pid()
    assert sb.pw("daemon", "start").stdout == f"portwayd is already running (pid {pid})\n"
    sb.pw("network", "create", "a", "--subnet", "10.70.0.0/24")
    sb.pw("network", "create", "b", "--subnet", "10.71.0.0/24")
    sb.pw("run", "-d", "--name", "c", "--network", "a", "--", "sleep", "3600")
    assert sb.pw("network", "connect", "b", "c").stdout == ""
    assert sb.pw("network", "disconnect", "b", "c").stdout == ""


# shell completion, as bash runs it, against this sandbox's portway


def test_bash_completion_with_real_names(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.72.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    completion = sb.pw("completion", "bash").stdout
    assert sh("bash", "-n", input=completion).returncode == 0

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in sb.pw_cmd(*words))
        program = (f"{completion}\nCOMP_WORDS=({line})\nCOMP_CWORD={len(words) + 4}\n"
                   "_portway\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
        return sh("bash", "--norc", "-c", program).stdout.split()

    assert complete("net") == ["network"]
    assert complete("exec", "w") == ["web"]
    assert complete("run", "--network", "a") == ["app"]
    assert complete("network", "disconnect", "app", "") == ["web"]
