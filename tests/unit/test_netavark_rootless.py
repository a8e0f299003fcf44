"""Rootless Podman's side of portway-netavark and portwayd, without a kernel: where the
state goes, what the daemon is told, and when a rootless daemon leaves."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from portway.cli.client import Client
from portway.daemon.main import HostNamespace, Server
from portway.netavark import main as netavark


class Recorder:
    """Client.call, recorded: the client it was called on and the request."""

    def __init__(self) -> None:
        self.calls: list[tuple[Client, str, dict[str, Any]]] = []


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Recorder:
    rec = Recorder()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))

    def call(client: Client, op: str, **args: Any) -> Any:
        rec.calls.append((client, op, args))
        return {}

    monkeypatch.setattr(Client, "call", call)
    monkeypatch.setattr("sys.stdin", _Stdin('{"container_id": "x"}'))
    return rec


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text


def test_rootless_state_is_under_the_config_dir_and_the_daemon_in_this_namespace(
        recorder: Recorder) -> None:
    netavark.run(["--config", "/run/user/1000/containers/networks", "--rootless=true",
                  "setup", "/run/user/1000/netns/netns-1"])
    [(client, op, args)] = recorder.calls
    assert client.state_dir == "/run/user/1000/containers/networks/portway/rootless"
    assert client.host_netns is None  # its own namespace: Podman's rootless one
    own = os.stat("/proc/self/ns/net")
    assert client.netns == f"{own.st_dev}:{own.st_ino}"
    assert client.daemon_args == ("--rootless",)
    assert (op, args["netns"]) == ("podman_setup", "/run/user/1000/netns/netns-1")


def test_the_daemon_is_told_where_the_rootless_namespace_is_mounted(
        recorder: Recorder, tmp_path: Any) -> None:
    """Found by its identity under $XDG_RUNTIME_DIR/netns, where Podman mounts it (a
    link to this process's own namespace stands for that mount here)."""
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns" / "netns-other").write_text("")
    os.symlink("/proc/self/ns/net", tmp_path / "netns" / "rootless-netns-1")
    netavark.run(["--config", str(tmp_path), "--rootless=true", "setup", "/x"])
    [(client, _, _)] = recorder.calls
    assert client.daemon_args == ("--rootless", "--host-netns-path",
                                  str(tmp_path / "netns" / "rootless-netns-1"))


def test_a_namespace_known_by_its_mount_is_gone_with_it(tmp_path: Any) -> None:
    assert not HostNamespace(None, "/proc/self/ns/net").gone()
    (tmp_path / "plain").write_text("")  # what is left of a mount point once unmounted
    assert HostNamespace(None, str(tmp_path / "plain")).gone()
    assert HostNamespace(None, str(tmp_path / "missing")).gone()
    assert not HostNamespace(None).gone()  # the root namespace never goes


def test_rootful_is_as_before(recorder: Recorder) -> None:
    netavark.run(["--config", "/run/containers/networks", "--rootless", "false", "teardown",
                  "/run/netns/x"])
    [(client, _, _)] = recorder.calls
    assert client.state_dir.startswith("/run/containers/networks/portway/")
    assert client.netns == "" and client.daemon_args == ()


def test_a_rootless_value_that_is_not_a_bool_is_refused(
        recorder: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        netavark.main(["--rootless=yes", "setup", "/run/netns/x"])
    assert exit_.value.code == 1
    assert json.loads(capsys.readouterr().out) == {
        "error": "invalid value for --rootless: 'yes' (true or false)"}
    assert recorder.calls == []


class FakeEngine:
    host_netns = None
    state_dir = "/nonexistent"

    def __init__(self) -> None:
        self.containers = 1

    def podman_setup(self, netns: str, options: Any) -> dict[str, Any]:
        self.containers += 1
        return {}

    def podman_teardown(self, netns: str, options: Any) -> dict[str, Any]:
        self.containers -= 1
        return {}

    def ps(self, all: bool = False) -> list[Any]:
        return []

    def empty(self) -> bool:
        return self.containers == 0


@pytest.fixture
def server() -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="pwrl-") as d:
        srv = Server(os.path.join(d, "s.sock"), FakeEngine(), HostNamespace(None),
                     leave_when_empty=True)
        try:
            yield srv
        finally:
            srv.server_close()


def test_rootless_daemon_leaves_after_the_last_container(server: Server) -> None:
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    loop.start()
    assert server.dispatch({"op": "podman_teardown", "args": {"netns": "n", "options": {}}}
                           )["ok"]
    # The request being served still gets its reply; the daemon leaves once it has.
    assert server.stale and loop.is_alive()
    after = server.dispatch({"op": "ps", "args": {}})
    assert after["stale"] and "no container left" in after["error"]
    server.replied()
    loop.join(5)
    assert not loop.is_alive()


def test_shutdown_waits_for_its_own_reply(server: Server) -> None:
    """Bug: the daemon began to leave as it dispatched `shutdown`, before the reply was
    written; on a busy machine it was gone first, and `portway daemon stop` failed
    with "closed the connection without answering"."""
    import socket

    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    loop.start()
    try:
        assert server.dispatch({"op": "shutdown"})["ok"]
        loop.join(0.3)
        assert loop.is_alive(), "dispatching shutdown must not stop the loop by itself"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(server.server_address)
            s.sendall(json.dumps({"op": "shutdown"}).encode() + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        assert reply == {"ok": True, "result": {"pid": os.getpid()}}
        loop.join(5)
        assert not loop.is_alive()
    finally:
        if loop.is_alive():
            server.shutdown()
            loop.join()


def test_rootless_daemon_stays_while_containers_are_left(server: Server) -> None:
    server.dispatch({"op": "podman_setup", "args": {"netns": "n", "options": {}}})
    assert server.dispatch({"op": "podman_teardown", "args": {"netns": "n", "options": {}}}
                           )["ok"]
    assert not server.stale
    assert server.dispatch({"op": "ps", "args": {}}) == {"ok": True, "result": []}


def test_a_request_from_another_namespace_finds_the_daemon_stale(server: Server) -> None:
    reply = server.dispatch({"op": "podman_setup", "netns": "1:2",
                             "args": {"netns": "n", "options": {}}})
    assert reply["stale"] and "rootless Podman has made a new one" in reply["error"]
    assert server.engine.containers == 1  # not served


def test_a_request_from_its_own_namespace_is_served(server: Server) -> None:
    reply = server.dispatch({"op": "podman_setup", "netns": server.host.key,
                             "args": {"netns": "n", "options": {}}})
    assert reply == {"ok": True, "result": {}} and server.engine.containers == 2


def test_a_daemon_that_closes_on_its_way_out_counts_as_none() -> None:
    """Bug: a call that reached a rootless daemon as it left (after the last container)
    ended in "unexpected failure: Connection reset by peer"."""
    import socket

    with tempfile.TemporaryDirectory(prefix="pwrl-") as d:
        os.chmod(d, 0o700)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(d, "portwayd.sock"))
        listener.listen(1)

        def leave() -> None:
            conn, _ = listener.accept()
            conn.recv(1)  # the request stays unread: closing sends a reset
            conn.close()
            listener.close()
            os.unlink(os.path.join(d, "portwayd.sock"))

        leaving = threading.Thread(target=leave)
        leaving.start()
        assert Client(d, None)._ask({"op": "ps", "args": {}}) is None
        leaving.join()


@pytest.mark.parametrize(("made", "now", "message"), [
    (True, False, "is rootless Podman's, and no daemon serves it now"),
    (False, True, "is not rootless Podman's"),
])
def test_a_state_dir_serves_rootless_podman_or_not(made: bool, now: bool,
                                                    message: str) -> None:
    """A daemon started outside the rootless namespace (the CLI finding no daemon there)
    must not serve a rootless user's state from the wrong namespace, nor the reverse."""
    from types import SimpleNamespace

    from portway.engine import Engine
    from portway.errors import InvalidInput
    from portway.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory(prefix="pwrl-") as d:
        engine = SimpleNamespace(store=SqliteStore(os.path.join(d, "portway.db")),
                                 state_dir=d)
        Engine._check_host(engine, None, made)  # type: ignore[arg-type]
        Engine._check_host(engine, None, made)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=message):
            Engine._check_host(engine, None, now)  # type: ignore[arg-type]
        engine.store.close()


def test_a_leaving_daemon_stops_at_once(server: Server) -> None:
    """A rootless user's next container starts a new daemon, which waits for this one's
    lock: the serving loop stops when told, not at its next poll."""
    import time

    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 5})
    loop.start()
    time.sleep(0.05)  # in its select, for up to 5 s
    start = time.monotonic()
    server.shutdown()
    loop.join(5)
    assert not loop.is_alive() and time.monotonic() - start < 1


def test_gc_does_not_import_the_tracer_for_its_table_name() -> None:
    from portway.engine import live, repair

    assert repair.TRACE_TABLE == live.TABLE


LEAN = """
import sys
from portway.kernel import lean_import
assert lean_import.lean()
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.iproute.linux import IPRoute as Real
assert IPRoute is Real and issubclass(NetlinkError, Exception)
loaded = [m for m in ("pyroute2.ndb.main", "pyroute2.ipdb.main", "unittest.mock", "asyncio")
          if m in sys.modules]
print(loaded)
"""


def test_the_daemon_loads_only_the_pyroute2_it_uses() -> None:
    """portwayd's start (a rootless user's first container waits for it): pyroute2's
    IPRoute without the package's __init__, which loads NDB, IPDB, unittest.mock and
    asyncio; and nothing changes for a process that imported pyroute2 already."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    import pyroute2  # noqa: F401  (the real package, in this process)

    from portway.kernel import lean_import

    assert lean_import.lean() is False


@pytest.mark.parametrize(("argv", "want"), [
    (["--state-dir", "/s", "--rootless", "--host-netns-path", "/run/user/1/netns/r"],
     {"state_dir": "/s", "rootless": True, "host_netns_path": "/run/user/1/netns/r"}),
    (["--state-dir", "/s", "--host-netns", "h1"], {"state_dir": "/s", "host_netns": "h1"}),
    (["--state-dir"], None), (["--help"], None), (["--state-dir=/s"], None),
    (["--rootles"], None)])
def test_the_daemon_reads_its_start_options_without_argparse(
        argv: list[str], want: dict[str, Any] | None) -> None:
    from portway.daemon.main import quick_args

    assert quick_args(argv) == want


def test_podman_5s_rootless_namespace_is_found_under_the_config_dir(
        recorder: Recorder, tmp_path: Any) -> None:
    """Podman 5 mounts it at CONFIG/rootless-netns/rootless-netns (libnetwork's
    internal/rootlessnetns), CONFIG being the --config it passes."""
    config = tmp_path / "containers" / "networks"
    (config / "rootless-netns").mkdir(parents=True)
    os.symlink("/proc/self/ns/net", config / "rootless-netns" / "rootless-netns")
    netavark.run(["--config", str(config), "--rootless=true", "setup", "/x"])
    [(client, _, _)] = recorder.calls
    assert client.daemon_args == ("--rootless", "--host-netns-path",
                                  str(config / "rootless-netns" / "rootless-netns"))


def test_what_a_current_podman_asks(recorder: Recorder, capsys: Any) -> None:
    """Podman 5 (containers/common libnetwork/netavark): `netavark --version` for podman
    info, --plugin-directory before a plugin driver's network, --firewall-driver from
    containers.conf; --help as netavark's prints it, on stdout with exit code 0."""
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as done:
            netavark.main([flag])
        assert done.value.code == 0
        assert capsys.readouterr().out.split()[:2] == ["netavark", netavark.VERSION]
    with pytest.raises(SystemExit) as done:
        netavark.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "setup" in out and "firewall-reload" in out
    netavark.run(["--config", "/c", "--rootless=false", "--aardvark-binary=/a",
                  "--plugin-directory", "/p1", "--plugin-directory", "/p2",
                  "--firewall-driver", "nftables", "setup", "/x"])
    [(_, op, args)] = recorder.calls
    assert (op, args["netns"]) == ("podman_setup", "/x")


@pytest.mark.parametrize("env", [{}, {"PORTWAY_CLUSTER_TTL": "30",
                                      "PORTWAY_HOST_NETNS": "h9"}])
def test_the_quick_options_mean_what_argparse_reads(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Each option (and its environment default) the same either way: `--name value`
    takes the quick path, `--name=value` argparse's."""
    from portway.daemon import main as daemon

    for key in ("PORTWAY_CLUSTER_TTL", "PORTWAY_HOST_NETNS", "PORTWAY_STATE_DIR",
                "PORTWAY_CLUSTER_STORE", "PORTWAY_ADVERTISE_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(daemon, "serve", lambda *a: calls.append(a) or 0)
    given = {"--state-dir": "/s", "--host-netns-path": "/p", "--cluster-store":
             "etcd://h:2379", "--advertise-address": "192.0.2.1", "--cluster-ttl": "20"}
    for options in (given, {"--state-dir": "/s"}):
        for argv in ([x for k, v in options.items() for x in (k, v)] + ["--rootless"],
                     [f"{k}={v}" for k, v in options.items()] + ["--rootless"]):
            with pytest.raises(SystemExit):
                daemon.main(argv)
        quick, slow = calls[-2:]
        assert quick == slow
    assert set(daemon.QUICK_OPTIONS) >= {k for k in given}
