"""Shell completion made from the CLI's command table: the scripts parse (`bash -n`, and
`zsh -n` where zsh is installed), and bash, driven as readline drives it (COMP_WORDS,
COMP_CWORD), completes commands, options, option values and positionals. Also run's
new flags as the CLI parses them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from portway.cli.args import HelpRequested, parse
from portway.cli.completion import script, table
from portway.cli.main import _root

ROOT = Path(__file__).resolve().parents[2]


def complete(words: list[str], cword: int | None = None, names: str = "") -> list[str]:
    """What the bash completion offers for words (the cursor on the last one), with a
    fake portway that prints `names` for __complete."""
    fake = ("fake() { if [ \"$1\" = __complete ] || [ \"$3\" = __complete ] || "
            "[ \"$5\" = __complete ]; then printf '%s\\n' " + names + "; fi; }")
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (f"{fake}\n{script('bash', _root())}\nCOMP_WORDS=({quoted})\n"
               f"COMP_CWORD={len(words) - 1 if cword is None else cword}\n"
               "_portway\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                         check=True).stdout
    return [w for w in out.splitlines() if w]


def test_bash_script_is_valid() -> None:
    cp = subprocess.run(["bash", "-n"], input=script("bash", _root()), capture_output=True,
                        text=True)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_is_valid() -> None:
    cp = subprocess.run(["zsh", "-n"], input=script("zsh", _root()), capture_output=True,
                        text=True)
    assert cp.returncode == 0, cp.stderr


def test_bash_completes_from_the_command_table() -> None:
    assert complete(["portway", "net"]) == ["network"]
    assert complete(["portway", "network", "c"]) == ["create", "connect"]
    assert "--env-file" in complete(["portway", "run", "--env"])
    assert complete(["portway", "daemon", "st"]) == ["stop", "status", "start"]
    assert complete(["portway", "completion", ""]) == ["bash", "zsh"]
    # Options and their values are skipped wherever they are.
    assert complete(["portway", "--state-dir", "/tmp/x", "network", "in"]) == ["inspect"]
    assert complete(["fake", "rm", "-f", "w"], names="web worker db") == ["web", "worker"]
    assert complete(["fake", "network", "connect", "a"], names="app api") == ["app", "api"]
    assert complete(["fake", "network", "connect", "app", "w"], names="web") == ["web"]
    # --network: the names of networks, and host and none.
    assert complete(["fake", "run", "--network", "h"], names="app") == ["host"]
    assert complete(["fake", "run", "--name", "x", "--network", "=", "a"],
                    names="app") == ["app"]  # bash splits --network=a at the =
    # After run's command begins, its own words: files, not portway's options.
    assert complete(["fake", "run", "-d", "--", "sleep", "--n"]) == []
    # The hidden command that lists names is not offered.
    assert "__complete" not in complete(["portway", ""])


def test_the_table_holds_every_command() -> None:
    paths = {row["path"] for row in table(_root())}
    assert {"", "network", "network create", "run", "exec", "logs", "port",
            "completion"} <= paths
    assert "__complete" not in paths


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "-it", "-e", "A=1", "--env", "B", "--env-file", "f", "-w", "/srv", "-P",
      "--expose", "80", "--add-host", "db:10.0.0.5", "--mac-address", "02:42:ac:11:00:02",
      "--dns-search", "x", "--dns-option", "ndots:2", "--domainname", "example.com",
      "--sysctl", "net.core.somaxconn=1", "-l", "a=b", "--label", "c", "--", "sh"],
     {"interactive": True, "tty": True, "env": ["A=1", "B"], "env_file": ["f"],
      "workdir": "/srv", "publish_all": True, "expose": ["80"],
      "add_host": ["db:10.0.0.5"], "mac_address": "02:42:ac:11:00:02",
      "dns_search": ["x"], "dns_option": ["ndots:2"], "domainname": "example.com",
      "sysctl": ["net.core.somaxconn=1"], "label": ["a=b", "c"], "cmd": ["sh"]}),
    (["exec", "-it", "-w", "/tmp", "-e", "X=1", "web", "sh"],
     {"interactive": True, "tty": True, "workdir": "/tmp", "env": ["X=1"],
      "container": "web", "cmd": ["sh"]}),
    (["logs", "-f", "--tail", "3", "-t", "web"],
     {"follow": True, "tail": "3", "timestamps": True, "container": "web"}),
    (["logs", "web"], {"follow": False, "tail": "all", "timestamps": False}),
    (["port", "web", "80/tcp"], {"container": "web", "port": "80/tcp"}),
    (["port", "web"], {"container": "web", "port": None}),
    (["network", "create", "--aux-address", "r=10.0.0.2", "--attachable", "n"],
     {"aux_address": ["r=10.0.0.2"], "attachable": True, "name": "n"}),
    (["completion", "zsh"], {"shell": "zsh"}),
])
def test_new_flags_parse(argv: list[str], expected: dict[str, Any]) -> None:
    got = parse(_root(), argv)
    assert {k: got[k] for k in expected} == expected


def test_help_says_what_is_true() -> None:
    with pytest.raises(HelpRequested) as caught:
        parse(_root(), ["run", "--help"])
    assert "default: the container's short id" in caught.value.text
    assert "container's name)" not in caught.value.text.split("--hostname")[1][:80]
    with pytest.raises(HelpRequested) as caught:
        parse(_root(), ["network", "create", "--help"])
    assert "/24" not in caught.value.text
    with pytest.raises(HelpRequested) as caught:
        parse(_root(), ["--help"])
    assert "completion" in caught.value.text and "__complete" not in caught.value.text


def test_completion_prints_without_root() -> None:
    """`portway completion bash` needs neither root nor a daemon (setup runs it before
    anything else)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); "
            "from portway.cli.main import run; "
            "import posix; posix.geteuid = lambda: 1000; sys.exit(run(['completion', 'bash']))")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert cp.returncode == 0 and "complete -F _portway portway" in cp.stdout
