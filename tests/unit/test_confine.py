"""Capabilities, --user and the argv that confines a container's processes (pure)."""

from __future__ import annotations

import pytest

from portway.core import confine
from portway.core.confine import Confinement, Identity, Tools, UserSpec
from portway.errors import InvalidInput

TOOLS = Tools(unshare="/u/unshare", setpriv="/u/setpriv", nsenter="/u/nsenter")


def mask(caps: tuple[str, ...]) -> int:
    return sum(1 << confine.ALL_CAPS.index(c) for c in caps)


def test_default_set_is_dockers() -> None:
    caps = confine.capabilities([], [], False)
    assert mask(caps) == 0xA80425FB  # what Docker 20.10 shows as CapEff
    assert "net_admin" not in caps and "sys_admin" not in caps and "net_raw" in caps


@pytest.mark.parametrize("add, drop, privileged, want", [
    (["NET_ADMIN"], [], False, set(confine.DEFAULT_CAPS) | {"net_admin"}),
    (["cap_net_admin"], ["NET_RAW"], False,
     (set(confine.DEFAULT_CAPS) - {"net_raw"}) | {"net_admin"}),
    (["NET_ADMIN"], ["ALL"], False, {"net_admin"}),
    ([], ["all"], False, set()),
    (["ALL"], ["SYS_ADMIN"], False, set(confine.ALL_CAPS) - {"sys_admin"}),
    ([], ["ALL"], True, set(confine.ALL_CAPS)),
    (["SYS_TIME", "sys_time"], [], False, set(confine.DEFAULT_CAPS) | {"sys_time"}),
])
def test_capabilities_follow_dockers_rules(add: list[str], drop: list[str], privileged: bool,
                                           want: set[str]) -> None:
    caps = confine.capabilities(add, drop, privileged)
    assert set(caps) == want
    assert len(caps) == len(set(caps))


@pytest.mark.parametrize("name", ["FLY", "", "CAP_", "net-admin", "net_admin "])
def test_unknown_capability(name: str) -> None:
    if name.strip().lower() == "net_admin":
        assert confine.cap_name(name) == "net_admin"
        return
    with pytest.raises(InvalidInput, match="unknown capability"):
        confine.cap_name(name)


@pytest.mark.parametrize("text, want", [
    ("nobody", UserSpec("nobody")), ("1000", UserSpec("1000")),
    ("1000:1000", UserSpec("1000", "1000")), ("app:staff", UserSpec("app", "staff")),
])
def test_parse_user(text: str, want: UserSpec) -> None:
    assert confine.parse_user(text) == want


@pytest.mark.parametrize("text", ["", ":", "1:", ":1", "a b", "a/b", "1:2:3", "4294967295"])
def test_parse_user_rejects(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid --user"):
        confine.parse_user(text)


def test_launch_argv_confines() -> None:
    argv = confine.launch_argv(Confinement(caps=("chown", "kill")), TOOLS, ["sleep", "1"])
    assert argv == ["/u/unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
                    "/u/setpriv", "--nnp", "--inh-caps=-all,+chown,+kill",
                    "--bounding-set=-all,+chown,+kill", "--", "sleep", "1"]


def test_launch_argv_with_user_and_privileged() -> None:
    conf = Confinement(caps=confine.ALL_CAPS, privileged=True,
                       identity=Identity(uid=7, gid=8, groups=(8, 9)))
    argv = confine.launch_argv(conf, TOOLS, ["id"])
    assert argv[6:] == ["/u/setpriv", "--reuid", "7", "--regid", "8", "--groups", "8,9",
                        "--pdeathsig", "keep", "--", "id"]
    # Privileged as root: nothing to drop, no setpriv at all.
    argv = confine.launch_argv(Confinement(privileged=True), TOOLS, ["id"])
    assert argv[-2:] == ["--", "id"] and "/u/setpriv" not in argv
    conf = Confinement(caps=(), identity=Identity(uid=5, gid=0))
    assert "--clear-groups" in confine.launch_argv(conf, TOOLS, ["id"])
    assert "--inh-caps=-all" in confine.launch_argv(conf, TOOLS, ["id"])


def test_exec_argv_joins_the_pid_namespace() -> None:
    argv = confine.exec_argv(Confinement(), TOOLS, 42, "/srv", ["ls"])
    assert argv[:7] == ["/u/nsenter", "--target=42", "--net", "--uts", "--mount", "--pid",
                        "--wd=/srv"]
    assert argv[7] == "--" and argv[8] == "/u/setpriv" and argv[-1] == "ls"
