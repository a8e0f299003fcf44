"""Docker's own pages walked with portway, as a Docker user meets them on one host: what
they print and do, the CLI in a throwaway host namespace."""

from __future__ import annotations

import json

from conftest import Sandbox


def test_inspect_takes_any_object_and_reports_the_missing_apart(sandbox: Sandbox) -> None:
    """`docker inspect` takes a container or a network (--type picks one); of several
    names, the ones found are printed and each missing one is said on stderr, exit 1.
    A user network made before the default one leaves Docker's 172.17.0.0/16 to it."""
    sb = sandbox
    sb.pw("network", "create", "app")
    sb.pw("run", "-d", "--name", "web", "--network", "app", "--", "sleep", "300")
    sb.pw("run", "-d", "--name", "plain", "--", "sleep", "300")
    assert sb.pw("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                 "app", "bridge").stdout.split() == ["172.18.0.0/16", "172.17.0.0/16"]
    assert sb.pw("inspect", "-f", "{{.Name}}", "app").stdout == "app\n"
    cp = sb.pw("inspect", "web", "nosuch", "app", check=False)
    assert cp.returncode == 1
    assert [o["Name"] for o in json.loads(cp.stdout)] == ["/web", "app"]
    assert cp.stderr == "portway: error: no container or network 'nosuch'; list them " \
                        "with 'portway ps -a' and 'portway network ls'\n"
    cp = sb.pw("network", "inspect", "-f", "{{.Name}}", "app", "nosuch", "bridge",
               check=False)
    assert (cp.returncode, cp.stdout) == (1, "app\nbridge\n")
    assert cp.stderr.count("\n") == 1 and "network 'nosuch' not found" in cp.stderr
    # --type: one kind only.
    cp = sb.pw("inspect", "--type", "container", "app", check=False)
    assert cp.returncode != 0 and "container 'app' not found" in cp.stderr
    assert sb.pw("inspect", "--type", "network", "-f", "{{.Driver}}", "app").stdout == \
        "bridge\n"
    cp = sb.pw("inspect", "--type", "image", "web", check=False)
    assert cp.returncode == 2 and cp.stdout == "" and "--type" in cp.stderr
    # One name alone that is nothing: one line, no output.
    cp = sb.pw("inspect", "nosuch", check=False)
    assert cp.returncode != 0 and cp.stdout == "" and cp.stderr.count("\n") == 1
