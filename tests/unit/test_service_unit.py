"""contrib/portwayd.service: the systemd unit that starts portwayd at boot (so restart
policies bring containers back after a reboot) and stops it without stopping them."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "portwayd.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_the_venvs_daemon_in_the_foreground() -> None:
    service = unit()["Service"]
    assert service["Type"] == "simple"
    start = shlex.split(service["ExecStart"])
    assert start[0] == "/opt/portway/.venv/bin/portwayd"
    assert start[1:] == ["--state-dir", "/var/lib/portway"]
    stop = shlex.split(service["ExecStop"])
    assert stop[0] == "/opt/portway/.venv/bin/portway"
    assert stop[1:] == ["--state-dir", "/var/lib/portway", "daemon", "stop"]


def test_stopping_the_unit_stops_no_container() -> None:
    # The default (control-group) would kill every process the daemon started.
    assert unit()["Service"]["KillMode"] == "process"


def test_the_unit_starts_at_boot_and_the_readme_says_how() -> None:
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
    readme = (ROOT / "README.md").read_text()
    assert "contrib/portwayd.service" in readme
    assert "systemctl enable --now portwayd" in readme
