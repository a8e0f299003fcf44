"""What a container's processes may do: capabilities, user, and how they are started.

Rules of this module:
1. A container's command never runs with more than it was given: Docker's default
   capability set unless --cap-add/--cap-drop/--privileged say otherwise, no_new_privs
   unless --privileged, a PID namespace of its own with its own /proc.
2. The privileges are dropped by util-linux programs between portway's helper and the
   command (`unshare` for the PID namespace and /proc, `setpriv` for capabilities, user
   and no_new_privs), so the helper never has to outlive its exec: the process portway
   watches is `unshare`, which waits for the command and exits with its status.
3. Everything here is pure: names in, argv lists out. Paths of the programs and the
   user's passwd entry are looked up by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from portway.errors import InvalidInput

# Linux capability numbers 0-40, by name (lower case, without CAP_).
ALL_CAPS = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)

# Docker's default set (moby oci/caps/defaults.go): enough to run a service as root and
# change users, bind low ports and send raw packets; not enough to administer the network,
# mount, enter namespaces, trace processes or load modules.
DEFAULT_CAPS = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)

MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to the kernel

PRIVILEGED_WARNING = ("--privileged: the container has every capability: it can enter "
                      "other namespaces (the host's too), change its addresses and routes "
                      "and mount file systems; it is not isolated")


def cap_name(text: str) -> str:
    """`NET_ADMIN`, `cap_net_admin` or `ALL` as portway writes it: `net_admin`, `all`."""
    name = text.strip().lower().removeprefix("cap_")
    if name != "all" and name not in ALL_CAPS:
        raise InvalidInput(f"unknown capability {text!r}",
                           "give a name from capabilities(7), such as NET_ADMIN or "
                           "CAP_SYS_TIME, or ALL")
    return name


def capabilities(add: Iterable[str], drop: Iterable[str], privileged: bool) -> tuple[str, ...]:
    """The capability set of a container's processes, by Docker's rules: --privileged
    gives all; ALL in --cap-add gives all but the dropped; ALL in --cap-drop gives only
    the added; otherwise the default set, less the dropped, plus the added."""
    adds = [cap_name(c) for c in add]
    drops = [cap_name(c) for c in drop]
    if privileged:
        return ALL_CAPS
    if "all" in adds:
        chosen = [c for c in ALL_CAPS if c not in drops]
    elif "all" in drops:
        chosen = [c for c in adds if c != "all"]
    else:
        chosen = [c for c in DEFAULT_CAPS if c not in drops] + adds
    wanted = set(chosen)
    return tuple(c for c in ALL_CAPS if c in wanted)  # capability order, no repeats


@dataclass(frozen=True)
class UserSpec:
    """--user as given: a name or a uid, and maybe a group name or gid."""

    user: str
    group: str | None = None


def parse_user(text: str) -> UserSpec:
    """`NAME|UID[:GROUP|GID]`, Docker's --user."""
    user, sep, group = text.partition(":")
    parts = [user, group] if sep else [user]
    for part in parts:
        if not part or any(c in part for c in " \t\n/\0:"):
            raise InvalidInput(f"invalid --user {text!r}",
                               "give NAME, UID, NAME:GROUP or UID:GID")
        if part.isdigit() and int(part) > MAX_ID:
            raise InvalidInput(f"invalid --user {text!r}: ids go up to {MAX_ID}",
                               "give a smaller uid or gid")
    return UserSpec(user, group if sep else None)


@dataclass(frozen=True)
class Identity:
    """Who the command runs as: uid, gid, supplementary groups and home directory."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    home: str = "/root"


@dataclass(frozen=True)
class Tools:
    """Where the util-linux programs live on this host."""

    unshare: str = "/usr/bin/unshare"
    setpriv: str = "/usr/bin/setpriv"
    nsenter: str = "/usr/bin/nsenter"


@dataclass(frozen=True)
class Confinement:
    caps: tuple[str, ...] = DEFAULT_CAPS
    privileged: bool = False
    identity: Identity | None = None  # None: as root, with portway's own groups


def setpriv_argv(conf: Confinement, tools: Tools) -> list[str]:
    """setpriv and its options that turn a root process into the container's one; empty
    when there is nothing to change (privileged, as root)."""
    args: list[str] = []
    if not conf.privileged:
        wanted = "".join(f",+{c}" for c in conf.caps)
        # Inheritable and bounding both: root's permitted set after exec is their union.
        args += ["--nnp", f"--inh-caps=-all{wanted}", f"--bounding-set=-all{wanted}"]
    ident = conf.identity
    if ident is not None:
        args += ["--reuid", str(ident.uid), "--regid", str(ident.gid)]
        args += (["--groups", ",".join(str(g) for g in ident.groups)] if ident.groups
                 else ["--clear-groups"])
        # Changing the uid clears the parent-death signal `unshare --kill-child` set.
        args += ["--pdeathsig", "keep"]
    return [tools.setpriv, *args, "--"] if args else []


def launch_argv(conf: Confinement, tools: Tools, command: list[str]) -> list[str]:
    """What the helper execs once it is in the container's net, uts and mount namespaces:
    a PID namespace with its own /proc, the command as its first process, confined."""
    return [tools.unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "--",
            *setpriv_argv(conf, tools), *command]


def exec_argv(conf: Confinement, tools: Tools, init_pid: int, workdir: str,
              command: list[str]) -> list[str]:
    """`portway exec`: join the namespaces of the container's first process (its PID
    namespace too, so the command cannot signal host processes) with the same limits."""
    return [tools.nsenter, f"--target={init_pid}", "--net", "--uts", "--mount", "--pid",
            f"--wd={workdir}", "--", *setpriv_argv(conf, tools), *command]
