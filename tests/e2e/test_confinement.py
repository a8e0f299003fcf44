"""A container's processes cannot step out of their network.

Each escape is tried from a default container, where it must fail, and from a
--privileged one (the control), where the same attempt succeeds: so the test
shows the attempt is real, and that what stops it is the confinement (Docker's
default capabilities, no_new_privs, a PID namespace and /proc of its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import Sandbox, ip_json
from portway.testbed import HTTP_GET, WAIT_LISTENING

# Docker's default capability set as the kernel shows it (CapEff/CapBnd).
DEFAULT_MASK = 0xA80425FB


def attempt(sb: Sandbox, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return sb.pw("exec", name, "--", *command, check=False)


def status(sb: Sandbox, name: str, field: str) -> str:
    out = sb.pw("exec", name, "--", "grep", f"^{field}:", "/proc/self/status").stdout
    return out.split(":", 1)[1].strip()


def test_a_container_cannot_leave_its_network(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "inner", "--subnet", "10.93.0.0/24", "--internal")
    sb.pw("run", "-d", "--name", "jail", "--network", "inner", "--", "sleep", "3600")
    cp = sb.pw("run", "-d", "--name", "free", "--network", "inner", "--privileged", "--",
               "sleep", "3600")
    assert "--privileged" in cp.stderr and "not isolated" in cp.stderr
    daemon = sb.daemon_pid()
    host_ns = f"/run/netns/{sb.host}"

    # The first process, as the host sees it, has the default set and no_new_privs.
    pid = int(sb.inspect("jail")["State"]["Pid"])  # type: ignore[index, call-overload]
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == DEFAULT_MASK
    assert int(fields["CapBnd"], 16) == DEFAULT_MASK
    assert fields["NoNewPrivs"].strip() == "1"
    # So does a command run by exec.
    assert int(status(sb, "jail", "CapEff"), 16) == DEFAULT_MASK
    assert status(sb, "jail", "NoNewPrivs") == "1"

    # 1. Entering the host's network namespace (by its name, or by a process's).
    for target in (host_ns, "/proc/1/ns/net"):
        cp = attempt(sb, "jail", "nsenter", f"--net={target}", "true")
        assert cp.returncode != 0 and "Operation not permitted" in cp.stderr, cp.stderr
        assert attempt(sb, "free", "nsenter", f"--net={target}", "true").returncode == 0
    # ... which is how a container would leave an internal network: the control does.
    server = subprocess.Popen(["ip", "netns", "exec", sb.outside, "python3", "-m",
                               "http.server", "9300", "--bind", sb.outside_addr],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["ip", "netns", "exec", sb.outside, "python3", "-c", WAIT_LISTENING,
                        sb.outside_addr, "9300"], check=True)
        url = f"http://{sb.outside_addr}:9300/"
        out = attempt(sb, "free", "nsenter", f"--net={host_ns}", "python3", "-c", HTTP_GET,
                      url).stdout.strip()
        assert out == "200", "control: a privileged container leaves its internal network"
        out = attempt(sb, "jail", "nsenter", f"--net={host_ns}", "python3", "-c", HTTP_GET,
                      url)
        assert out.returncode != 0 and "200" not in out.stdout
        assert attempt(sb, "jail", "python3", "-c", HTTP_GET, url).stdout.startswith("fail")
    finally:
        server.terminate()
        server.wait(timeout=5)

    # 2. Mounting or remounting anything.
    for command in (["mount", "-t", "tmpfs", "pwtest", "/mnt"],
                    ["mount", "-o", "remount,rw", "/sys"]):
        cp = attempt(sb, "jail", *command)
        assert cp.returncode != 0, command
        assert attempt(sb, "free", *command).returncode == 0, command

    # 3. Changing its own addresses and routes (the ones anti-spoofing and isolation
    # key on): refused, and the kernel shows them unchanged.
    jail_ns = os.path.basename(str(sb.inspect("jail")["NetworkSettings"]["SandboxKey"]))  # type: ignore[index]
    before = ip_json(jail_ns, "addr"), ip_json(jail_ns, "route")
    for command in (["ip", "addr", "add", "10.93.0.200/24", "dev", "eth0"],
                    ["ip", "route", "add", "default", "via", "10.93.0.1"],
                    ["ip", "link", "set", "eth0", "address", "02:42:0a:5d:00:c8"]):
        cp = attempt(sb, "jail", *command)
        assert cp.returncode != 0 and "Operation not permitted" in cp.stderr, command
        assert attempt(sb, "free", *command).returncode == 0, command
    assert (ip_json(jail_ns, "addr"), ip_json(jail_ns, "route")) == before

    # 4. Seeing (and so signalling or tracing) host processes: its /proc is its own.
    pids = attempt(sb, "jail", "sh", "-c", "ls /proc | grep '^[0-9]'").stdout.split()
    assert str(daemon) not in pids and "1" in pids and len(pids) < 10, pids
    cp = attempt(sb, "jail", "kill", "-0", str(daemon))
    assert cp.returncode != 0
    cp = attempt(sb, "free", "sh", "-c", f"umount /proc && test -d /proc/{daemon}")
    assert cp.returncode == 0, "control: with CAP_SYS_ADMIN the host's /proc is back"
    cp = attempt(sb, "jail", "sh", "-c", f"umount /proc || test -d /proc/{daemon}")
    assert cp.returncode != 0


def test_capabilities_and_user(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.94.0.0/24")
    sb.pw("run", "-d", "--name", "admin", "--network", "app", "--cap-drop", "ALL",
          "--cap-add", "net_admin", "--", "sleep", "3600")
    assert int(status(sb, "admin", "CapEff"), 16) == 1 << 12
    assert attempt(sb, "admin", "ip", "route", "add", "192.0.2.0/24", "via",
                   "10.94.0.1").returncode == 0
    sb.pw("run", "-d", "--name", "nobind", "--network", "app", "--cap-drop",
          "NET_BIND_SERVICE", "--", "sleep", "3600")
    cp = attempt(sb, "nobind", "python3", "-c",
                 "import socket; socket.socket().bind(('0.0.0.0', 80))")
    assert cp.returncode != 0 and "Permission denied" in cp.stderr
    sb.pw("run", "-d", "--name", "user", "--network", "app", "--user", "65534:65534", "--",
          "sleep", "3600")
    assert attempt(sb, "user", "id", "-u").stdout.strip() == "65534"
    assert int(status(sb, "user", "CapEff"), 16) == 0
    info = sb.inspect("admin")
    assert info["HostConfig"]["CapAdd"] == ["net_admin"]  # type: ignore[index]
    assert info["HostConfig"]["CapDrop"] == ["ALL"]  # type: ignore[index]
    assert sb.inspect("user")["Config"]["User"] == "65534:65534"  # type: ignore[index]
    # exec -u: another user than the container's, its capabilities as the container's.
    cp = sb.pw("exec", "-u", "0", "user", "--", "sh", "-c", "id -u; echo $HOME")
    assert cp.stdout.split() == ["0", "/root"]
    assert sb.pw("exec", "--user", "nobody", "admin", "--", "id", "-u").stdout == "65534\n"
    for user, message in (("no-such-user-here", "unable to find user"),
                          ("1:", "invalid --user")):
        cp = sb.pw("exec", "-u", user, "admin", "--", "true", check=False)
        assert cp.returncode == 2 and message in cp.stderr, cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1
    # A foreground run is confined the same way, and keeps its exit status.
    cp = sb.pw("run", "--rm", "--network", "app", "--", "sh", "-c",
               "grep CapEff /proc/self/status; exit 4", check=False)
    assert cp.returncode == 4 and int(cp.stdout.split()[1], 16) == DEFAULT_MASK

    # Bad input: one line, exit 2, nothing made.
    before = sb.snapshot()
    for args, message in ((["--cap-add", "FLY"], "unknown capability 'FLY'"),
                          (["--user", "no-such-user-here"], "unable to find user"),
                          (["--user", "1:"], "invalid --user")):
        cp = sb.pw("run", "-d", "--network", "app", *args, "--", "sleep", "1", check=False)
        assert cp.returncode == 2 and message in cp.stderr, cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1
    assert sb.snapshot() == before
    names = [c["Name"] for c in json.loads(sb.pw("ps", "-a", "--json").stdout)]
    assert sorted(names) == ["/admin", "/nobind", "/user"]


def test_the_command_is_its_pid_namespaces_first_process(sandbox: Sandbox) -> None:
    """As in Docker: PID 1 gets only the signals it handles. A foreground run that
    ignores Ctrl-C is killed by a second one."""
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.110.0.0/24")
    run = subprocess.Popen([*sb.pw_cmd("run", "--rm", "--name", "fg", "--network", "app",
                                       "--", "sleep", "3600")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while sb.pw("ps", "-q").stdout.strip() == "" or \
                not str(sb.inspect("fg")["State"]["Pid"]).isdigit():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert sb.pw("exec", "fg", "--", "cat", "/proc/1/cmdline").stdout == "sleep\x003600\x00"
        run.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert run.poll() is None, "sleep, as PID 1 with no handler, ignores SIGINT"
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=10)
        assert run.returncode == 137 and "second interrupt" in err
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
