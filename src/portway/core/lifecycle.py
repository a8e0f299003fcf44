"""A container's life after `run`, as rules: restart policies, their back-off, signals,
and what is known of how a process ended. Pure: the engine's lifecycle service
(engine/lifecycle.py) asks, this answers.

Rules of this module (Docker's, from its restart manager and daemon):
1. `--restart no|always|unless-stopped|on-failure[:N]`; only on-failure takes a maximum
   retry count (0, the default, means no maximum); --restart cannot go with --rm.
2. When a container's process ends: a container the user stopped or killed is never
   restarted; otherwise `always` and `unless-stopped` restart it, `on-failure` only after
   a non-zero exit and while fewer than N restarts were made.
3. When portwayd starts, a container that was started once before and is not running is
   started again if its policy is `always`, `unless-stopped` and the user did not stop it,
   or `on-failure` with a non-zero exit and retries left.
4. The delay before a restart starts at 100 ms and doubles up to one minute; a container
   that ran for 10 s or more starts again from 100 ms.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from portway.errors import InvalidInput

POLICIES = ("no", "always", "unless-stopped", "on-failure")
FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0

# Docker's exit code for a process whose end portwayd could not see (it is not the daemon's
# child, or it ended while no daemon was running), with State.Error saying why.
UNKNOWN_EXIT = 255
NOT_WATCHING = ("exit status unknown: the process ended while portwayd was not running, "
                "so nothing could read it")
ADOPTED = ("exit status unknown: portwayd took the process over after a restart of its own "
           "and cannot read the status of a process it did not start")
NOT_REPORTED = ("exit status unknown: the foreground 'portway run' that ran the command "
                "did not report it")


@dataclass(frozen=True)
class RestartPolicy:
    name: str = "no"
    maximum: int = 0  # on-failure's maximum retry count; 0: no maximum

    def __str__(self) -> str:
        return f"{self.name}:{self.maximum}" if self.maximum else self.name


def parse_restart_policy(text: str | None, auto_remove: bool = False) -> RestartPolicy:
    """--restart as Docker takes it."""
    if text is None or text == "":
        return RestartPolicy()
    name, colon, count = text.partition(":")
    if name not in POLICIES:
        raise InvalidInput(f"invalid restart policy {text!r}",
                           "use no, always, unless-stopped or on-failure[:MAX-RETRIES]")
    maximum = 0
    if colon:
        if name != "on-failure":
            raise InvalidInput(f"restart policy {name!r} takes no maximum retry count",
                               "only on-failure does: --restart on-failure:3")
        if not count.isdigit():
            raise InvalidInput(f"invalid maximum retry count {count!r} in --restart {text}",
                               "give a whole number: --restart on-failure:3")
        maximum = int(count)
    if auto_remove and name != "no":
        raise InvalidInput("conflicting options: --restart and --rm",
                           "a container removed when it ends cannot be restarted: "
                           "give one of them")
    return RestartPolicy(name, maximum)


def restart_on_exit(policy: RestartPolicy, exit_code: int, restart_count: int,
                    user_stopped: bool) -> bool:
    """Whether a container whose process just ended is started again."""
    if user_stopped:
        return False
    if policy.name in ("always", "unless-stopped"):
        return True
    if policy.name == "on-failure":
        return exit_code != 0 and (policy.maximum == 0 or restart_count < policy.maximum)
    return False


def restart_on_daemon_start(policy: RestartPolicy, exit_code: int, restart_count: int,
                            user_stopped: bool, started_before: bool) -> bool:
    """Whether portwayd, starting, starts a container that is not running."""
    if not started_before:
        return False
    if policy.name == "always":
        return True
    if policy.name == "unless-stopped":
        return not user_stopped
    if policy.name == "on-failure":
        return exit_code != 0 and (policy.maximum == 0 or restart_count < policy.maximum)
    return False


def next_delay(previous: float, ran_for: float) -> float:
    """The back-off before the next restart, given the last delay (0: none yet) and how
    long the process ran."""
    if ran_for >= RESET_AFTER or previous <= 0:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


def parse_signal(text: str) -> int:
    """A signal as `docker kill -s` takes it: KILL, SIGKILL, kill or 9."""
    word = text.strip().upper()
    if word.isdigit():
        number = int(word)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = word if word.startswith("SIG") else f"SIG{word}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise InvalidInput(f"invalid signal {text!r}",
                       "give a name (HUP, INT, TERM, KILL, USR1, ...) or a number")
