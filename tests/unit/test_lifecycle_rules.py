"""The rules of a container's life after run (core/lifecycle.py, Docker's), table by
table: restart policies as --restart takes them, when each restarts a container, the
back-off, and kill's signals."""

from __future__ import annotations

import signal

import pytest

from portway.core import lifecycle as rules
from portway.errors import InvalidInput


@pytest.mark.parametrize(("text", "name", "maximum"), [
    (None, "no", 0), ("no", "no", 0), ("always", "always", 0),
    ("unless-stopped", "unless-stopped", 0), ("on-failure", "on-failure", 0),
    ("on-failure:3", "on-failure", 3), ("on-failure:0", "on-failure", 0),
])
def test_restart_policies_parse(text: str | None, name: str, maximum: int) -> None:
    assert rules.parse_restart_policy(text) == rules.RestartPolicy(name, maximum)


@pytest.mark.parametrize(("text", "words"), [
    ("sometimes", "invalid restart policy"), ("always:3", "takes no maximum"),
    ("on-failure:x", "invalid maximum retry count"), ("on-failure:-1", "invalid maximum"),
])
def test_bad_restart_policies(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        rules.parse_restart_policy(text)


def test_restart_and_rm_conflict() -> None:
    with pytest.raises(InvalidInput, match="--restart and --rm"):
        rules.parse_restart_policy("always", auto_remove=True)
    assert rules.parse_restart_policy("no", auto_remove=True).name == "no"


@pytest.mark.parametrize(("policy", "code", "count", "stopped", "on_exit", "at_start"), [
    ("no", 1, 0, False, False, False),
    ("always", 0, 0, False, True, True),
    ("always", 0, 0, True, False, True),  # the user stopped it: not until dockerd starts
    ("unless-stopped", 0, 5, False, True, True),
    ("unless-stopped", 0, 0, True, False, False),
    ("on-failure", 0, 0, False, False, False),
    ("on-failure", 1, 0, False, True, True),
    ("on-failure:2", 1, 1, False, True, True),
    ("on-failure:2", 1, 2, False, False, False),
    ("on-failure", 255, 0, True, False, True),
])
def test_when_docker_restarts(policy: str, code: int, count: int, stopped: bool,
                              on_exit: bool, at_start: bool) -> None:
    p = rules.parse_restart_policy(policy)
    assert rules.restart_on_exit(p, code, count, stopped) is on_exit
    assert rules.restart_on_daemon_start(p, code, count, stopped, True) is at_start
    assert rules.restart_on_daemon_start(p, code, count, stopped, False) is False


def test_back_off_doubles_and_resets_after_ten_seconds_up() -> None:
    delays = [0.0]
    for _ in range(12):
        delays.append(rules.next_delay(delays[-1], ran_for=0.5))
    assert delays[1:6] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert max(delays) == rules.MAX_DELAY == 60.0
    assert rules.next_delay(60.0, ran_for=10.0) == 0.1


@pytest.mark.parametrize(("text", "number"), [
    ("KILL", 9), ("SIGKILL", 9), ("kill", 9), ("9", 9), ("HUP", 1), ("sigterm", 15),
    ("USR1", int(signal.SIGUSR1)),
])
def test_signals(text: str, number: int) -> None:
    assert rules.parse_signal(text) == number


@pytest.mark.parametrize("text", ["NOPE", "0", "999", "", "SIG"])
def test_bad_signals(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid signal"):
        rules.parse_signal(text)
