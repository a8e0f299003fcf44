"""The CLI's hand-written parser and request encoder, against portway's real grammar."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.cli.args import HelpRequested, UsageError, parse
from portway.cli.client import absolute, encode_json
from portway.cli.main import _root


def p(*argv: str) -> dict[str, Any]:
    return parse(_root(), list(argv))


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "-d", "--name", "web", "--network", "app", "--", "python3", "-m", "x"],
     {"command": "run", "detach": True, "name": "web", "network": ["app"],
      "cmd": ["python3", "-m", "x"]}),
    # The command starts at the first word that is not an option, -- or not.
    (["run", "--rm", "sleep", "-x", "--name", "y"],
     {"rm": True, "name": None, "cmd": ["sleep", "-x", "--name", "y"]}),
    (["run", "--name=web", "-p80:80", "-p", "127.0.0.1:81:80/udp", "--net", "a", "--net=b",
      "-h", "box", "--alias", "api", "--network-alias", "www", "--dns", "10.0.0.9", "--", "ls"],
     {"name": "web", "publish": ["80:80", "127.0.0.1:81:80/udp"], "network": ["a", "b"],
      "hostname": "box", "alias": ["api", "www"], "dns": ["10.0.0.9"], "cmd": ["ls"]}),
    (["run", "-d"], {"detach": True, "cmd": []}),
    (["exec", "web", "--", "ip", "-br", "addr"],
     {"command": "exec", "container": "web", "cmd": ["ip", "-br", "addr"]}),
    (["exec", "web", "ip", "-br"], {"container": "web", "cmd": ["ip", "-br"]}),
    (["network", "create", "app", "--subnet", "10.77.0.0/24", "--internal", "-o", "a=b",
      "--opt=c=d", "--label", "x=y"],
     {"command": "network", "net_command": "create", "name": "app", "driver": "bridge",
      "subnet": ["10.77.0.0/24"], "internal": True, "opt": ["a=b", "c=d"], "label": ["x=y"]}),
    (["network", "create", "--subnet", "10.1.0.0/24", "app"], {"name": "app"}),
    (["network", "connect", "--ip", "10.1.0.9", "app", "web", "--alias", "w"],
     {"network": "app", "container": "web", "ip": "10.1.0.9", "alias": ["w"]}),
    (["network", "disconnect", "-f", "app", "web"], {"force": True}),
    (["network", "rm", "a", "b"], {"names": ["a", "b"]}),
    (["network", "ls", "-q"], {"quiet": True, "json": False}),
    (["ps", "-aq"], {"all": True, "quiet": True, "json": False}),
    (["ps"], {"format": None, "filter": [], "no_trunc": False, "last": None, "latest": False}),
    (["ps", "-a", "--format", "table {{.ID}}\\t{{.Names}}", "-f", "name=x",
      "--filter=status=exited", "--no-trunc", "-n", "3", "-l"],
     {"all": True, "format": "table {{.ID}}\\t{{.Names}}", "filter": ["name=x", "status=exited"],
      "no_trunc": True, "last": 3, "latest": True}),
    (["inspect", "-f", "{{.Name}}", "a", "b"], {"format": "{{.Name}}", "names": ["a", "b"]}),
    (["network", "ls", "--format", "json", "--no-trunc"],
     {"net_command": "ls", "format": "json", "no_trunc": True}),
    (["network", "inspect", "--format={{.Name}}", "app"], {"format": "{{.Name}}",
                                                          "names": ["app"]}),
    (["stop", "-t", "2.5", "a", "b"], {"time": 2.5, "names": ["a", "b"]}),
    (["stop", "a"], {"time": 10.0}),
    (["rm", "-f", "a"], {"force": True, "names": ["a"]}),
    (["--host-netns", "h1", "--state-dir=/tmp/s", "--debug", "ps"],
     {"host_netns": "h1", "state_dir": "/tmp/s", "debug": True, "command": "ps"}),
    (["trace", "web", "db:5432/udp", "--live", "--from-ip", "1.2.3.4"],
     {"source": "web", "destination": "db:5432/udp", "live": True, "from_ip": "1.2.3.4"}),
    (["graph", "-o", "x.svg"], {"output": "x.svg"}),
    (["graph"], {"output": "-"}),
    (["daemon", "status"], {"action": "status"}),
    (["gc", "--dry-run"], {"dry_run": True}),
    ([], {"command": None}),
    # Docker's boolean flags take a value too.
    (["network", "create", "--ipv6=false", "--internal=true", "--attachable=0", "n"],
     {"ipv6": False, "internal": True, "attachable": False, "name": "n"}),
    (["network", "create", "--ipv6=True", "--ipv4=false", "n"], {"ipv6": True,
                                                               "ipv4": "false"}),
    # Neither given: None, so that -o com.docker.network.enable_ipv6/_ipv4 decide.
    (["network", "create", "n"], {"ipv6": None, "ipv4": None, "internal": False}),
    (["run", "-d", "--rm=false", "--privileged=true", "ls"], {"detach": True, "rm": False,
                                                            "privileged": True}),
    (["run", "-d=false", "-i=true", "ls"], {"detach": False, "interactive": True}),
    (["network"], {"command": "network", "net_command": None}),
])
def test_parses(argv: list[str], expected: dict[str, Any]) -> None:
    got = p(*argv)
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(("argv", "message", "prog"), [
    (["bogus"], "unknown command 'bogus'", "portway"),
    (["run", "--bogus"], "unknown option --bogus", "portway run"),
    (["run", "-dx"], "unknown option -x in -dx", "portway run"),
    (["run", "--rm=yes"], "option --rm: invalid value 'yes' (true or false)", "portway run"),
    (["run", "-d=no"], "option -d: invalid value 'no' (true or false)", "portway run"),
    (["run", "--name"], "option --name needs a value (NAME)", "portway run"),
    (["stop", "-t", "soon", "a"], "option -t: invalid value 'soon'", "portway stop"),
    (["rm"], "CONTAINER is missing", "portway rm"),
    (["network", "connect", "app"], "missing CONTAINER", "portway network connect"),
    (["network", "create", "a", "b"], "unexpected argument(s): b", "portway network create"),
    (["daemon", "go"], "ACTION must be one of run, stop, status, start", "portway daemon"),
    (["network", "make"], "unknown command 'make'", "portway network"),
    (["ps", "-n"], "option -n needs a value (N)", "portway ps"),
    (["ps", "--last", "x"], "option --last: invalid value 'x'", "portway ps"),
    (["inspect", "-f"], "option -f needs a value (FORMAT)", "portway inspect"),
])
def test_usage_errors(argv: list[str], message: str, prog: str) -> None:
    with pytest.raises(UsageError) as caught:
        p(*argv)
    assert message in caught.value.message and caught.value.prog == prog


def test_help() -> None:
    with pytest.raises(HelpRequested) as caught:
        p("--help")
    assert "usage: portway [OPTIONS] COMMAND" in caught.value.text
    assert "trace" in caught.value.text and "examples:" in caught.value.text
    with pytest.raises(HelpRequested) as caught:
        p("run", "--help")
    assert "-h, --hostname NAME" in caught.value.text  # run's -h is the hostname
    assert p("run", "-h", "box", "ls")["hostname"] == "box"
    with pytest.raises(HelpRequested) as caught:
        p("network", "create", "-h")
    assert "usage: portway network create [OPTIONS] NAME" in caught.value.text


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                           allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                max_size=4),
    max_leaves=20)


@given(JSONISH)
def test_requests_encode_as_json_reads_them(value: Any) -> None:
    assert json.loads(encode_json(value).encode("utf-8")) == value


def test_argv_bytes_that_are_not_utf8_survive() -> None:
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert json.loads(encode_json({"cmd": [odd]}).encode("utf-8")) == {"cmd": [odd]}


@given(st.lists(st.sampled_from(["", ".", "..", "a", "b.c", "..d", "/"]), max_size=8)
       .map("/".join))
def test_state_dir_paths_resolve_as_abspath_does(path: str) -> None:
    expected = os.path.abspath(path)
    if expected.startswith("//"):  # POSIX leaves a leading "//" open; on Linux it is "/"
        expected = expected[1:]
    assert absolute(path) == expected
