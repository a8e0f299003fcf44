"""Containers take the id their namespace was made ahead for (portwayd keeps spares): an
id is handed out once, whatever becomes of the run that took it."""

from __future__ import annotations

from conftest import Sandbox


def test_a_run_that_could_not_start_its_command_keeps_its_id_to_itself(
        sandbox: Sandbox) -> None:
    sb = sandbox
    sb.pw("network", "create", "app", "--subnet", "10.136.0.0/24")
    # After this one, portwayd has namespaces ready, each made for an id of its own.
    sb.pw("run", "-d", "--name", "first", "--network", "app", "--", "sleep", "3600")
    # Docker's create succeeds and its start does not: the container stays, created,
    # with the id it took, and its namespace was never claimed.
    cp = sb.pw("run", "-d", "--name", "broken", "--network", "app", "--",
               "no-such-program-here", check=False)
    assert cp.returncode == 127, cp.stderr
    cp = sb.pw("run", "-d", "--name", "second", "--network", "app", "--", "sleep", "3600",
               check=False)
    assert cp.returncode == 0, cp.stderr
    ids = [sb.inspect(name)["Id"] for name in ("first", "broken", "second")]
    assert len(set(ids)) == 3, ids
    assert sb.inspect("second")["State"]["Status"] == "running"
