"""A container's life after run, as a user drives it: stop gives back what Docker gives
back (its namespace and veths, its address, its published host ports, its DNS names)
and start takes them again; start, restart, kill and wait with Docker's outputs and exit
codes; commands on several containers act on each that exists; restart policies (also
across a daemon restart and a reboot); network rm and prune beside stopped containers;
what is known of an exit code; Docker's codes for a command that cannot run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

from conftest import Sandbox, sh, user_networks
from portway.testbed import HTTP_GET, make_world, remove_world


def state(sb: Sandbox, name: str) -> dict[str, Any]:
    data: dict[str, Any] = sb.inspect(name)
    return data


def get_from(ns: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", HTTP_GET, url],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def until(check: Any, what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def served(sb: Sandbox, port: int) -> None:
    """The published port answers HTTP from outside (a fresh server takes a moment)."""
    until(lambda: get_from(sb.outside, f"http://{sb.host_addr}:{port}/") == "200",
          f"port {port} never answered from outside")


def logs_count(sb: Sandbox, name: str, word: str) -> int:
    return sb.pw("logs", name).stdout.count(word)


def published(sb: Sandbox, port: int) -> bool:
    listing = sb.in_host("nft", "list", "map", "inet", "portway", "pub_any_addr").stdout
    return f" {port} " in listing.replace(":", " ").replace(",", " ")


def test_stop_gives_back_what_docker_gives_back_and_start_takes_it_again(
        sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.120.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--ip", "10.120.0.50",
          "-p", "8097:80", "--", "python3", "-m", "http.server", "80")
    sb.pw("run", "-d", "--name", "peer", "--network", "app", "--", "sleep", "3600")
    served(sb, 8097)
    web = state(sb, "web")["NetworkSettings"]
    ns = os.path.basename(web["SandboxKey"])
    veth = web["Networks"]["app"]["HostInterface"]
    assert published(sb, 8097)

    assert sb.pw("stop", "-t", "1", "web").stdout == "web\n"
    # Its namespace, veth pair and /etc files are gone; its port is no longer published.
    assert not os.path.exists(f"/run/netns/{ns}") and not os.path.exists(f"/etc/netns/{ns}")
    assert veth not in sb.links() and not published(sb, 8097)
    stopped = state(sb, "web")
    assert stopped["State"]["Status"] == "exited"
    assert stopped["NetworkSettings"]["SandboxKey"] == ""
    assert stopped["NetworkSettings"]["Ports"] == {}
    app = stopped["NetworkSettings"]["Networks"]["app"]
    assert app["IPAddress"] == "" and app["IPAMConfig"] == {"IPv4Address": "10.120.0.50"}
    assert sb.pw("port", "web").stdout == ""
    # Its name is gone from DNS; its host port is free for another container.
    assert sb.pw("exec", "peer", "--", "getent", "hosts", "web", check=False).returncode == 2
    sb.pw("run", "-d", "--name", "taker", "--network", "app", "-p", "8097:80", "--",
          "sleep", "3600")
    # ...and the host port is the taker's now: web cannot start until it is free.
    cp = sb.pw("start", "web", check=False)
    assert cp.returncode == 1 and "8097/tcp is already taken by container taker" in cp.stderr
    assert cp.stderr.count("\n") == 1
    assert state(sb, "web")["State"]["Status"] == "exited"
    sb.pw("rm", "-f", "taker")
    # The address it asked for (--ip) stays reserved for it, as Docker keeps IPAMConfig.
    cp = sb.pw("run", "-d", "--name", "thief", "--network", "app", "--ip", "10.120.0.50",
               "--", "sleep", "3600", check=False)
    assert cp.returncode == 4 and "in use on network app by web" in cp.stderr
    assert sb.pw("doctor").stdout.startswith("healthy")

    assert sb.pw("start", "web").stdout == "web\n"
    again = state(sb, "web")
    assert again["State"]["Running"] is True
    assert again["NetworkSettings"]["Networks"]["app"]["IPAddress"] == "10.120.0.50"
    served(sb, 8097)
    assert sb.pw("exec", "peer", "--", "getent", "hosts", "web").stdout.startswith(
        "10.120.0.50")
    assert sb.pw("port", "web").stdout == "80/tcp -> 0.0.0.0:8097\n"
    assert sb.pw("doctor").stdout.startswith("healthy")


def test_start_restart_kill_and_wait(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.121.0.0/24")
    script = "trap 'exit 3' TERM; echo ready; while :; do sleep 0.1; done"
    sb.pw("run", "-d", "--name", "box", "--network", "app", "--", "sh", "-c", script)
    until(lambda: logs_count(sb, "box", "ready") == 1, "box ready")
    first = state(sb, "box")["State"]["Pid"]
    # kill -s TERM reaches the command, which handles it; wait prints its exit code.
    assert sb.pw("kill", "-s", "TERM", "box").stdout == "box\n"
    assert sb.pw("wait", "box").stdout == "3\n"
    assert state(sb, "box")["State"]["ExitCode"] == 3
    # Killing a stopped container is an error, as in Docker.
    cp = sb.pw("kill", "box", check=False)
    assert cp.returncode == 1 and "box is not running" in cp.stderr
    assert cp.stderr.count("\n") == 1 and cp.stdout == ""
    cp = sb.pw("kill", "-s", "NOPE", "box", check=False)
    assert cp.returncode == 2 and "invalid signal 'NOPE'" in cp.stderr

    assert sb.pw("start", "box").stdout == "box\n"
    until(lambda: logs_count(sb, "box", "ready") == 2, "box ready again")
    second = state(sb, "box")["State"]
    assert second["Running"] is True and second["Pid"] != first
    assert sb.pw("start", "box").stdout == "box\n"  # running already: nothing to do
    # wait blocks until the container stops: SIGKILL (kill's default) gives 137.
    waiter = subprocess.Popen(sb.pw_cmd("wait", "box"), stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    assert waiter.poll() is None
    assert sb.pw("kill", "box").stdout == "box\n"
    assert waiter.communicate(timeout=15)[0] == "137\n"
    assert state(sb, "box")["State"]["ExitCode"] == 137

    # restart: a stopped container is started; a running one stopped, then started.
    assert sb.pw("restart", "box").stdout == "box\n"
    until(lambda: logs_count(sb, "box", "ready") == 3, "box ready a third time")
    pid = state(sb, "box")["State"]["Pid"]
    assert sb.pw("restart", "-t", "5", "box").stdout == "box\n"
    after = state(sb, "box")["State"]
    assert after["Running"] is True and after["Pid"] != pid and after["ExitCode"] == 0
    assert sb.pw("doctor").stdout.startswith("healthy")


def test_start_attached_shows_this_run_and_exits_with_its_code(sandbox: Sandbox) -> None:
    sb = sandbox
    counter = sb.state_dir.parent / "runs"  # the test's own file: which run this is
    sb.pw("run", "-d", "--name", "job", "--", "sh", "-c",
          'n=$(cat "$0" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$0"; '
          "echo run $n; sleep 0.5; printf 'done %s' $n; exit $((40+n))", str(counter))
    assert sb.pw("wait", "job").stdout == "41\n"
    # start -a: only this run's output (the first run's stays in logs), the last line
    # without its newline too, and the command's exit code as its own.
    cp = sb.pw("start", "-a", "job", check=False)
    assert (cp.returncode, cp.stdout) == (42, "run 2\ndone 2"), cp.stderr
    assert sb.pw("logs", "job").stdout == "run 1\ndone 1run 2\ndone 2"
    cp = sb.pw("start", "-a", "job", "other", check=False)
    assert cp.returncode == 1 and cp.stderr.count("\n") == 1
    assert "cannot start and attach multiple containers" in cp.stderr


def test_commands_on_several_containers_act_on_each_that_exists(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.123.0.0/24")
    for name in ("a", "b"):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--", "sleep", "3600")
    for command, out in ((["stop", "-t", "0"], "a\nb\n"), (["start"], "a\nb\n"),
                         (["kill"], "a\nb\n"), (["wait"], "137\n137\n"),
                         (["restart", "-t", "0"], "a\nb\n")):
        cp = sb.pw(*command, "a", "missing", "b", check=False)
        assert cp.returncode == 1 and cp.stdout == out, (command, cp.stdout, cp.stderr)
        assert cp.stderr.count("\n") == 1 and "'missing' not found" in cp.stderr, cp.stderr
    assert [state(sb, n)["State"]["Running"] for n in ("a", "b")] == [True, True]
    # A running container is not removed without -f; the others are.
    sb.pw("stop", "-t", "0", "b")
    cp = sb.pw("rm", "a", "b", check=False)
    assert cp.returncode == 1 and cp.stdout == "b\n" and "a is running" in cp.stderr
    cp = sb.pw("rm", "-f", "a", "missing", check=False)
    assert cp.returncode == 1 and cp.stdout == "a\n" and "'missing' not found" in cp.stderr
    assert sb.pw("ps", "-a", "-q").stdout == ""
    sb.pw("network", "create", "n2", "--subnet", "10.124.0.0/24")
    cp = sb.pw("network", "rm", "app", "missing", "n2", check=False)
    assert cp.returncode == 1 and cp.stdout == "app\nn2\n" and "missing" in cp.stderr
    assert user_networks(sb.pw("network", "ls", "--json").stdout) == []


def restarts(sb: Sandbox, name: str) -> int:
    return int(state(sb, name)["RestartCount"])


def test_restart_policies(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.125.0.0/24")
    began = time.monotonic()
    sb.pw("run", "-d", "--name", "flaky", "--network", "app", "--restart", "on-failure:3",
          "--", "sh", "-c", "exit 1")
    until(lambda: state(sb, "flaky")["State"]["Status"] == "exited" and
          restarts(sb, "flaky") == 3, "three restarts")
    assert time.monotonic() - began >= 0.7  # 100 ms, 200 ms, 400 ms apart
    flaky = state(sb, "flaky")
    assert flaky["State"]["ExitCode"] == 1
    assert flaky["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                    "MaximumRetryCount": 3}
    # on-failure does not restart a clean exit.
    sb.pw("run", "-d", "--name", "clean", "--network", "app", "--restart", "on-failure",
          "--", "true")
    assert sb.pw("wait", "clean").stdout == "0\n"
    time.sleep(0.5)
    assert state(sb, "clean")["State"]["Status"] == "exited" and restarts(sb, "clean") == 0
    # always (and unless-stopped) restart a clean exit too, until the user stops it.
    for policy in ("always", "unless-stopped"):
        sb.pw("run", "-d", "--name", policy, "--network", "app", "--restart", policy, "--",
              "sh", "-c", "sleep 0.2")
        until(lambda p=policy: restarts(sb, p) >= 2, f"{policy} restarting")
        sb.pw("stop", "-t", "0", policy)
        count = restarts(sb, policy)
        time.sleep(1.0)
        assert state(sb, policy)["State"]["Status"] == "exited", policy
        assert restarts(sb, policy) == count
        assert state(sb, policy)["NetworkSettings"]["SandboxKey"] == ""
    for bad, words in ((["--restart", "sometimes"], "invalid restart policy"),
                       (["--restart", "always", "--rm"], "--restart and --rm")):
        cp = sb.pw("run", "-d", *bad, "--", "sleep", "1", check=False)
        assert cp.returncode == 2 and words in cp.stderr and cp.stderr.count("\n") == 1
    assert sb.pw("doctor").stdout.startswith("healthy")


def kill_daemon_and(sb: Sandbox, pids: list[int]) -> None:
    """portwayd dies (SIGKILL), then so do these container processes, while no daemon
    runs."""
    daemon = sb.daemon_pid()
    os.kill(daemon, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{daemon}"), "the daemon's end", 5)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), "their ends", 5)


def test_what_is_known_of_an_exit_and_policies_across_a_daemon_restart(
        sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.126.0.0/24")
    for name, policy in (("always", "always"), ("unless", "unless-stopped"),
                         ("stopped", "unless-stopped"), ("plain", "no"),
                         ("adopted", "no")):
        sb.pw("run", "-d", "--name", name, "--network", "app", "--restart", policy, "--",
              "sleep", "3600")
    sb.pw("stop", "-t", "0", "stopped")
    assert state(sb, "stopped")["State"]["ExitCode"] == 137  # portwayd SIGKILLed it
    pids = [state(sb, n)["State"]["Pid"] for n in ("always", "unless", "plain")]
    kill_daemon_and(sb, pids)
    log = sb.state_dir / "portwayd.log"
    seen = log.stat().st_size
    # The next command starts a daemon: it records what ended, then starts again what
    # the restart policies say.
    states = {c["Name"].lstrip("/"): c["State"]
              for c in json.loads(sb.pw("ps", "-a", "--json").stdout)}
    with log.open() as f:
        f.seek(seen)
        report = f.read()
    assert states["always"]["Running"] and states["unless"]["Running"], states
    assert not states["stopped"]["Running"] and not states["plain"]["Running"]
    assert states["plain"]["ExitCode"] == 255
    assert states["plain"]["Error"].startswith("exit status unknown: the process ended "
                                               "while portwayd was not running")
    assert "started container always again (restart policy always)" in report
    assert "started container unless again (restart policy unless-stopped)" in report
    assert "container plain: its process ended while portwayd was not running" in report
    assert sb.pw("doctor").stdout.startswith("healthy")
    # A process this daemon adopted: it cannot read its status, but SIGKILL it knows.
    assert states["adopted"]["Running"]
    sb.pw("stop", "-t", "0", "adopted")
    assert state(sb, "adopted")["State"]["ExitCode"] == 137
    pid = state(sb, "always")["State"]["Pid"]
    kill_daemon_and(sb, [])
    sb.pw("daemon", "start")
    os.kill(pid, signal.SIGKILL)  # it ends by itself, as it were
    # ... while this daemon watches it (adopted): unknown, and the policy restarts it.
    until(lambda: restarts(sb, "always") == 1 and
          state(sb, "always")["State"]["Status"] == "running",
          "always restarted by the new daemon")
    assert state(sb, "always")["State"]["Error"] == ""


def test_always_containers_come_back_after_a_reboot(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.127.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--restart", "always",
          "-p", "8098:80", "--", "python3", "-m", "http.server", "80")
    sb.pw("run", "-d", "--name", "once", "--network", "app", "--", "sleep", "3600")
    served(sb, 8098)
    pids = [int(state(sb, n)["State"]["Pid"]) for n in ("web", "once")]
    namespaces = [os.path.basename(state(sb, n)["NetworkSettings"]["SandboxKey"])
                  for n in ("web", "once")]
    dns = int((sb.state_dir / "dns.pid").read_text().split()[0])
    # A reboot: the daemon goes, every process ends, the named namespaces and the host's
    # networking are gone; the state dir stays.
    sb.pw("daemon", "stop")
    for pid in (*pids, dns):
        os.kill(pid, signal.SIGKILL)
    for name in namespaces:
        sh("ip", "netns", "del", name)
    remove_world(sb.host, sb.outside)
    make_world(sb.host, sb.outside, sb.state_dir)
    # The service starts portwayd at boot (contrib/portwayd.service): here, `daemon start`.
    sb.pw("daemon", "start")
    served(sb, 8098)
    states = {c["Name"].lstrip("/"): c["State"]
              for c in json.loads(sb.pw("ps", "-a", "--json").stdout)}
    assert states["web"]["Running"] and not states["once"]["Running"]
    assert states["once"]["ExitCode"] == 255
    assert sb.pw("doctor").stdout.startswith("healthy")


def test_network_rm_and_prune_beside_stopped_containers(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.128.0.0/24")
    sb.pw("network", "create", "kept", "--subnet", "10.129.0.0/24")
    sb.pw("network", "create", "spare", "--subnet", "10.130.0.0/24")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "3600")
    sb.pw("run", "-d", "--name", "other", "--network", "kept", "--", "sleep", "3600")
    cp = sb.pw("network", "rm", "app", check=False)
    assert cp.returncode == 1 and "running containers attached: web" in cp.stderr
    sb.pw("stop", "-t", "0", "web", "other")
    # Only stopped containers: the network goes (Docker's rule)...
    assert sb.pw("network", "rm", "app").stdout == "app\n"
    # ...and the container's start says so, and changes nothing.
    cp = sb.pw("start", "web", check=False)
    assert cp.returncode == 1 and "network app not found" in cp.stderr
    assert cp.stderr.count("\n") == 1
    assert state(sb, "web")["State"]["Status"] == "exited"
    # It can be disconnected from the network that is gone, and connected to another.
    sb.pw("network", "disconnect", "app", "web")
    sb.pw("network", "connect", "spare", "web")
    sb.pw("start", "web")
    assert state(sb, "web")["NetworkSettings"]["Networks"]["spare"]["IPAddress"] == \
        "10.130.0.2"
    # prune asks first; with no answer (a closed stdin) it says to use -f, removes nothing.
    cp = subprocess.run(sb.pw_cmd("network", "prune"), stdin=subprocess.DEVNULL,
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1 and "give -f" in cp.stderr and cp.stderr.count("\n") == 1
    cp = subprocess.run(sb.pw_cmd("network", "prune"), input="n\n", capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 0 and "Are you sure you want to continue? [y/N]" in cp.stdout
    sb.pw("network", "create", "unused", "--subnet", "10.131.0.0/24")
    # A network only a stopped container names is kept (Docker prunes it: a known
    # complaint); one nobody names goes.
    cp = subprocess.run(sb.pw_cmd("network", "prune"), input="y\n", capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 0 and cp.stdout.endswith("Deleted Networks:\nunused\n"), cp.stdout
    assert sb.pw("network", "prune", "-f").stdout == ""
    names = {n["Name"] for n in user_networks(sb.pw("network", "ls", "--json").stdout)}
    assert names == {"kept", "spare"}


def test_commands_that_cannot_run_get_dockers_exit_codes(sandbox: Sandbox,
                                                         tmp_path: Any) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.134.0.0/24")
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    sb.pw("run", "-d", "--name", "box", "--network", "app", "--", "sleep", "3600")
    before = sb.snapshot()
    cases = [(["no-such-program-here"], 127, "command not found"),
             (["/no/such/path"], 127, "command not found"),
             (["/etc"], 126, "it is a directory"),
             ([str(plain)], 126, "not executable")]
    for i, (command, code, words) in enumerate(cases):
        for detach in (["-d"], []):
            name = f"c{i}{'d' if detach else 'f'}"
            cp = sb.pw("run", *detach, "--name", name, "--network", "app", "-p",
                       f"{8100 + i}:80", "--", *command, check=False)
            assert cp.returncode == code and words in cp.stderr, (command, cp.stderr)
            assert cp.stderr.count("\n") == 1 and "Traceback" not in cp.stderr
            # Docker's create succeeded and its start did not: the container exists,
            # created, with nothing in the kernel.
            created = state(sb, name)
            assert created["State"]["Status"] == "created", name
            assert created["NetworkSettings"]["SandboxKey"] == ""
            sb.pw("rm", name)
        cp = sb.pw("exec", "box", "--", *command, check=False)
        assert cp.returncode == code and words in cp.stderr, (command, cp.stderr)
        assert cp.stderr.count("\n") == 1
    cp = sb.pw("run", "--rm", "--name", "gone", "--network", "app", "--",
               "no-such-program-here", check=False)
    assert cp.returncode == 127
    assert sb.snapshot() == before
    assert "gone" not in sb.pw("ps", "-a").stdout
