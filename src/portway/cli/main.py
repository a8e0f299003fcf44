"""portway's command line: parse, call the daemon, print. Standard library only.

The hot path (`run -d`, `rm`, `ps`...) imports neither `os` (about a millisecond:
it pulls in posixpath, stat and _collections_abc) nor `__future__` (annotations
naming typing's names are quoted instead), and ends with posix._exit once the
output is flushed: tearing the interpreter down is another millisecond, and a CLI
call has nothing to clean up.
"""

import posix
import sys
import time

from portway.cli.args import Arg, Command, HelpRequested, Opt, UsageError, help_text, parse
from portway.cli.client import Client, ClientError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from typing import Any

HELP_EPILOG = """examples:
  portway network create app --subnet 10.77.0.0/24
  portway run -d --name web --network app -- python3 -m http.server 80
  portway exec web -- ip -br addr
  portway ps
  portway rm -f web && portway network rm app
"""


def inspect_type(value: str) -> str:
    """inspect --type: the kinds of object portway has (Docker's others are images,
    volumes and the like)."""
    if value not in ("container", "network"):
        raise ValueError(value)
    return value


def _root() -> Command:
    """portway's grammar (Docker's flags where Docker has them)."""
    json_flag = Opt("--json", "flag", help="print JSON")
    quiet = Opt("-q --quiet", "flag", help="only the ids")
    no_trunc = Opt("--no-trunc", "flag", help="full ids (and commands)")

    def template(names: str, what: str) -> Opt:
        return Opt(names, metavar="FORMAT", help=f"{what} through a Go template, as "
                   "Docker's --format ('json': as JSON)")
    network = Command("network", "manage networks", sub_dest="net_command", subs=(
        Command("create", "create a network", args=(Arg("name", "NAME"),), opts=(
            Opt("-d --driver", default="bridge", help="bridge (one host), overlay "
                "(across the hosts of a cluster store), or macvlan (containers on the LAN "
                "of -o parent=IF)"),
            Opt("--subnet", "list", metavar="CIDR", help="IPv4 or IPv6 (default: a free "
                "one, IPv4 from Docker's pools, IPv6 a /64 of a unique local /48)"),
            Opt("--gateway", "list", metavar="IP", help="of its family's subnet (default: "
                "the subnet's first address)"),
            Opt("--ip-range", "list", metavar="CIDR",
                help="where container addresses come from"),
            # Not given (None): -o com.docker.network.enable_ipv6/enable_ipv4 decide.
            Opt("--ipv6", "flag", unset=None, help="IPv6 too (dual stack)"),
            Opt("--ipv4", metavar="BOOL",
                help="--ipv4=false with --ipv6: an IPv6-only network"),
            Opt("--internal", "flag", help="no way in or out of the host"),
            Opt("--mtu", metavar="N"),
            Opt("--aux-address", "list", metavar="NAME=IP",
                help="an address of a --subnet that containers never get"),
            Opt("--attachable", "flag", help="accepted (any container can join a portway "
                "network)"),
            Opt("-o --opt", "list", metavar="KEY=VALUE", help="a driver option, e.g. "
                "com.docker.network.bridge.name=NAME; macvlan: parent=IF, "
                "macvlan_mode=bridge|private|vepa|passthru"),
            Opt("--label", "list", metavar="KEY=VALUE"))),
        Command("ls", "list networks (with host and none)", opts=(
            json_flag, quiet, no_trunc,
            Opt("-f --filter", "list", metavar="KEY=VALUE", help="name=, driver= (regular "
                "expressions), id= (a prefix), label=KEY[=VALUE], scope=, "
                "type=custom|builtin, dangling=true|false; one key given twice: either "
                "value"),
            template("--format", "each network (.ID .Name .Driver .Scope .IPv4 .IPv6 "
                     ".Internal .Labels .Label \"KEY\" .CreatedAt); 'table ...' with "
                     "headers"))),
        Command("inspect", "show networks as JSON", args=(Arg("names", "NAME", "+"),),
                opts=(template("-f --format", "each network"),)),
        Command("rm", "remove networks (none may have a running container attached)",
                args=(Arg("names", "NAME", "+"),)),
        Command("prune", "remove networks no container uses (running or stopped)",
                opts=(Opt("-f --force", "flag", help="do not ask for confirmation"),
                      Opt("--filter", "list", metavar="KEY=VALUE", help="until= (a "
                          "duration back from now, as 24h, or a time), label=KEY[=VALUE], "
                          "label!=KEY[=VALUE]: only the networks that match them all"))),
        Command("connect", "attach a container to a network",
                args=(Arg("network", "NETWORK"), Arg("container", "CONTAINER")),
                opts=(Opt("--ip", metavar="IP"), Opt("--ip6", metavar="IPV6"),
                      Opt("--alias", "list", metavar="NAME"))),
        Command("disconnect", "detach a container from a network",
                args=(Arg("network", "NETWORK"), Arg("container", "CONTAINER")),
                opts=(Opt("-f --force", "flag"),)),
    ))
    env_opts = (
        Opt("-e --env", "list", metavar="KEY[=VALUE]", help="set a variable (KEY alone: "
            "its value here)"),
        Opt("--env-file", "list", metavar="FILE", help="read variables from a file"),
        Opt("-w --workdir", metavar="DIR", help="the command's directory (default: this "
            "one)"),
        Opt("-i --interactive", "flag", help="keep stdin open"),
        Opt("-t --tty", "flag", help="give the command a terminal"))
    run = Command("run", "run a command in a new container", help_flags="--help", opts=(
        Opt("--name", metavar="NAME", help="the container's name (default: made up)"),
        Opt("--network --net", "list", dest="network", metavar="NET",
            help="a network, host, none or container:NAME (default: the network "
            "'bridge'); or name=NET,alias=A,ip=IP,ip6=IP6,mac-address=MAC"),
        Opt("--ip", metavar="IP", help="the IPv4 address on the first network"),
        Opt("--ip6", metavar="IPV6", help="the IPv6 address on the first network"),
        Opt("--alias --network-alias", "list", dest="alias", metavar="NAME",
            help="another DNS name on the first network"),
        Opt("--mac-address", metavar="MAC", help="the MAC address on the first network"),
        Opt("-h --hostname", metavar="NAME", help="default: the container's short id (with "
            "--network host: the host's)"),
        Opt("--domainname", metavar="NAME", help="the container's domain name"),
        Opt("-p --publish", "list", dest="publish", metavar="SPEC",
            help="[IP:]HOST_PORT[-END]:CONTAINER_PORT[/udp]"),
        Opt("--expose", "list", metavar="PORT[/PROTO]", help="a port the command serves"),
        Opt("-P --publish-all", "flag", help="publish exposed ports on free host ports"),
        Opt("--dns", "list", metavar="IP", help="resolver for names portway does not know"),
        Opt("--dns-search", "list", metavar="DOMAIN", help="a search domain of resolv.conf "
            "(. for none)"),
        Opt("--dns-option", "list", metavar="OPTION", help="an option of resolv.conf"),
        Opt("--add-host", "list", metavar="NAME:IP", help="a line of /etc/hosts (IP may be "
            "host-gateway)"),
        Opt("--sysctl", "list", metavar="KEY=VALUE", help="a net.* sysctl of the "
            "container's network namespace"),
        Opt("-l --label", "list", dest="label", metavar="KEY=VALUE", help="a label"),
        *env_opts,
        Opt("-d --detach", "flag", help="print the id once the networking is ready"),
        Opt("--rm", "flag", help="remove the container when its command ends"),
        Opt("--restart", metavar="POLICY", help="no (default), always, unless-stopped or "
            "on-failure[:MAX-RETRIES]: start it again when its command ends"),
        Opt("-u --user", metavar="USER[:GROUP]", help="run as this user (name or uid)"),
        Opt("--cap-add", "list", metavar="CAP", help="a capability beyond Docker's default "
            "set (ALL: every one)"),
        Opt("--cap-drop", "list", metavar="CAP", help="a capability to take away (ALL: "
            "every one)"),
        Opt("--privileged", "flag", help="every capability: the container is not isolated")),
        args=(Arg("cmd", "COMMAND [ARG...]", "rest"),))
    exe = Command("exec", "run a command in a running container", opts=(
        *env_opts, Opt("-u --user", metavar="USER[:GROUP]", help="as this user (name or "
                       "uid; default: the container's)")),
                  args=(Arg("container", "CONTAINER"), Arg("cmd", "COMMAND [ARG...]", "rest")))
    trace = Command(
        "trace", "follow a new connection hop by hop, rule by rule",
        args=(Arg("source", "SOURCE", help="a container, 'host', 'outside', ns:NAME "
                  "(any named namespace), or an address of a namespace the host's veths "
                  "lead to"),
              Arg("destination", "DEST", help="CONTAINER:PORT, IPV4:PORT or [IPV6]:PORT, "
                  "with /udp for UDP")),
        opts=(Opt("--from-ip", metavar="IP", help="the outside client's address (default "
                  "203.0.113.10, or 2001:db8:113::10 for IPv6)"),
              Opt("-4", "flag", dest="ipv4", help="to a container with both families: "
                  "trace IPv4 (the default where the source has it)"),
              Opt("-6", "flag", dest="ipv6", help="to a container with both families: "
                  "trace IPv6"),
              Opt("--live", "flag",
                  help="also send one real probe and show the kernel's own trace of it"),
              Opt("-o --output", metavar="FILE", help="also draw the path on the "
                  "topology: FILE.svg, FILE.png or FILE.dot"),
              json_flag))
    audit = Command(
        "audit", "who can reach what on this host, through which rule; what is exposed "
        "(read-only; exit 1 if anything is)",
        opts=(Opt("--live", "flag", help="also confirm each finding with trace --live's "
                  "probe (it never leaves the host)"), json_flag))
    root = Command("portway", "Docker-style container networking that shows how every "
                   "packet moves.", epilog=HELP_EPILOG, sub_dest="command", opts=(
                       Opt("--host-netns", metavar="NAME", help="use the named network "
                           "namespace as the host (env PORTWAY_HOST_NETNS; default: the "
                           "root namespace)"),
                       Opt("--state-dir", metavar="DIR",
                           help="where state lives (env PORTWAY_STATE_DIR)"),
                       Opt("--debug", "flag", help="show tracebacks")), subs=(
        network, run, exe,
        Command("ps", "list containers (newest first)", opts=(
            Opt("-a --all", "flag", help="stopped ones too"), json_flag, quiet,
            Opt("-f --filter", "list", metavar="KEY=VALUE", help="id=, name= (a regular "
                "expression), label=KEY[=VALUE], status=, network=, exited=CODE, "
                "before=|since=CONTAINER, publish=|expose=PORT[-PORT][/PROTO]; one key "
                "given twice: either value"),
            template("--format", "each container (.ID .Names .Status .State .Ports "
                     ".Networks .Command .CreatedAt .RunningFor .Labels .Label \"KEY\" "
                     ".Image .Size .Mounts); 'table ...' with headers"),
            no_trunc,
            Opt("-n --last", metavar="N", convert=int,
                help="the N last created (any state)"),
            Opt("-l --latest", "flag", help="the last created (any state)"))),
        Command("inspect", "show containers (or networks) as JSON",
                # CONTAINER: what completion offers (a network's name is taken too).
                args=(Arg("names", "CONTAINER", "+"),),
                opts=(template("-f --format", "each one"),
                      Opt("--type", metavar="container|network", convert=inspect_type,
                          help="look the names up as this kind only (default: a "
                          "container, else a network)"))),
        Command("dns", "show the DNS records per network and recent queries",
                opts=(json_flag,)),
        Command("port", "show a container's published ports",
                args=(Arg("container", "CONTAINER"),
                      Arg("port", "PORT[/PROTO]", "?", help="only this one's host "
                          "addresses"))),
        Command("logs", "show a detached container's output",
                args=(Arg("container", "CONTAINER"),),
                opts=(Opt("-f --follow", "flag", help="then new output, until the command "
                          "ends"),
                      Opt("--tail", metavar="N", default="all", help="only the last N lines "
                          "(default all)"),
                      Opt("-t --timestamps", "flag", help="when each line came"))),
        Command("start", "start stopped containers again",
                args=(Arg("names", "CONTAINER", "+"),),
                opts=(Opt("-a --attach", "flag", help="then its output until the command "
                          "ends, and exit with the command's code (one container)"),)),
        Command("stop", "stop containers (SIGTERM, then SIGKILL)",
                args=(Arg("names", "CONTAINER", "+"),),
                opts=(Opt("-t --time", metavar="SECONDS", default=10.0, convert=float,
                          help="before SIGKILL (default 10)"),)),
        Command("restart", "stop containers (if running), then start them",
                args=(Arg("names", "CONTAINER", "+"),),
                opts=(Opt("-t --time", metavar="SECONDS", default=10.0, convert=float,
                          help="before SIGKILL (default 10)"),)),
        Command("kill", "send a signal to containers' commands",
                args=(Arg("names", "CONTAINER", "+"),),
                opts=(Opt("-s --signal", metavar="SIGNAL", default="KILL",
                          help="a name or number (default KILL)"),)),
        Command("wait", "wait until containers stop, then print their exit codes",
                args=(Arg("names", "CONTAINER", "+"),)),
        Command("rm", "remove containers", args=(Arg("names", "CONTAINER", "+"),),
                opts=(Opt("-f --force", "flag", help="stop running ones first"),)),
        Command("gc", "repair drift between the store and the kernel",
                opts=(Opt("--dry-run", "flag", help="only say what would be done"),)),
        Command("show", "the bridges, veth pairs and containers, as the kernel has them",
                opts=(json_flag,)),
        trace,
        audit,
        Command("graph", "draw the topology (Graphviz: DOT, SVG or PNG)",
                opts=(Opt("-o --output", metavar="FILE", default="-",
                          help="FILE.svg, FILE.png or FILE.dot (default: DOT on stdout)"),)),
        Command("doctor", "report every difference between the store and the kernel "
                "(read-only; exit 1 if any)"),
        Command("daemon", "manage portwayd",
                args=(Arg("action", "ACTION", choices=("run", "stop", "status", "start")),)),
        Command("completion", "print the shell completion script (bash or zsh)",
                args=(Arg("shell", "SHELL", choices=("bash", "zsh")),)),
        Command("__complete", "names for shell completion", hidden=True,
                args=(Arg("kind", "KIND", choices=("containers", "networks")),)),
    ))
    return with_docker_names(root)


# Docker's other names for commands: `docker network list`, `docker container ls`, ...
# (each the command it names, parsed alike; left out of help and completion).
NETWORK_ALIASES = {"list": "ls", "remove": "rm"}
CONTAINER_ALIASES = {"ls": "ps", "list": "ps", "remove": "rm"}
CONTAINER_COMMANDS = ("run", "exec", "ls", "inspect", "port", "logs", "start", "stop",
                      "restart", "kill", "wait", "rm")


def _named(cmd: Command, name: str, hidden: bool) -> Command:
    other = object.__new__(Command)  # a copy (the copy module costs an import)
    other.__dict__.update(cmd.__dict__, name=name, hidden=hidden)
    return other


def with_docker_names(root: Command) -> Command:
    """root with Docker's aliases of network's commands, and `container` (Docker's
    `docker container ...`): the container commands again, under Docker's names."""
    network = root.subs["network"]
    for alias, name in NETWORK_ALIASES.items():
        network.subs[alias] = _named(network.subs[name], alias, hidden=True)
    subs = [_named(root.subs[CONTAINER_ALIASES.get(n, n)], n, hidden=False)
            for n in CONTAINER_COMMANDS]
    subs += [_named(root.subs[name], alias, hidden=True)
             for alias, name in CONTAINER_ALIASES.items() if alias not in CONTAINER_COMMANDS]
    subs.append(_named(root.subs["ps"], "ps", hidden=True))
    container = Command("container", "the container commands by Docker's names (docker "
                        "container ls, inspect, rm, ...)", subs=tuple(subs),
                        sub_dest="container_command")
    # Listed after network, as Docker's management commands come first.
    order = list(root.subs.items())
    root.subs = dict([*order[:1], ("container", container), *order[1:]])
    return root


class Args(dict):  # type: ignore[type-arg]
    """Parsed values, read as attributes (a.name)."""

    def __getattr__(self, name: str) -> "Any":
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def print_json(data: "Any") -> None:
    import json

    print(json.dumps(data, indent=2))


def cmd_network(client: Client, a: Args) -> int:
    nc = a.net_command
    if nc == "create":
        net = client.call("network_create", name=a.name, driver=a.driver, subnet=a.subnet,
                          gateway=a.gateway, ip_range=a.ip_range, internal=a.internal,
                          mtu=a.mtu, options=a.opt, labels=a.label, ipv6=a.ipv6,
                          ipv4=a.ipv4, aux_addresses=a.aux_address)
        print(net["Id"])
    elif nc == "ls":
        from portway.cli.formats import cmd_network_ls

        return cmd_network_ls(client, a)
    elif nc == "inspect":
        from portway.cli.formats import cmd_inspect

        return cmd_inspect(client, a.names, ("network",), a.format)
    elif nc == "rm":
        return print_each(client.call("network_rm", refs=a.names))
    elif nc == "prune":
        from portway.core import listing

        try:  # before the question: a bad filter is said at once
            listing.parse_filters(a.filter, listing.PRUNE_FILTERS)
        except listing.ListingError as exc:
            raise ClientError(exc.message, exc.hint, 2) from None
        if not a.force and not confirm("WARNING! This will remove all custom networks not "
                                       "used by at least one container."):
            return 0
        removed = client.call("network_prune", filters=a.filter)
        if removed:
            print("Deleted Networks:\n" + "\n".join(removed))
    elif nc == "connect":
        client.call("network_connect", network=a.network, container=a.container, ip=a.ip,
                    aliases=a.alias, ip6=a.ip6)
    elif nc == "disconnect":
        client.call("network_disconnect", network=a.network, container=a.container,
                    force=a.force)
    else:
        raise ClientError("missing network command",
                          "one of: create, ls, inspect, rm, prune, connect, disconnect", 2)
    return 0


def environment(a: Args) -> list[str]:
    """KEY=VALUE from --env-file (each in turn) and then -e, as Docker reads them on the
    client's side: `KEY` alone takes its value from here, or is left out if unset."""
    out: list[str] = []
    for path in a.env_file:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as exc:
            raise ClientError(f"cannot read --env-file {path}: {exc.strerror}",
                              "give a file of KEY=VALUE lines", 2) from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.lstrip()
            if not line or line.startswith("#"):
                continue
            key = line.partition("=")[0]
            if not key or any(c in key for c in " \t"):
                raise ClientError(f"--env-file {path}, line {number}: invalid variable name "
                                  f"{key!r}", "write KEY=VALUE (or KEY alone)", 2)
            out.append(line)
    out += a.env
    resolved = []
    for item in out:
        if "=" in item:
            resolved.append(item)
        elif item:
            value = _env(item)
            if value is not None:
                resolved.append(f"{item}={value}")
        else:
            raise ClientError("-e with an empty name", "write -e KEY=VALUE", 2)
    return resolved


def check_terminal(a: Args) -> None:
    """Docker's rule: -it needs a terminal to read from."""
    if a.tty and a.interactive and not a.get("detach") and not posix.isatty(0):
        raise ClientError("the input device is not a TTY",
                          "run it from a terminal, or drop -t to read from a pipe", 1)


def confirm(warning: str) -> bool:
    """Docker's prompt: "y" or "yes" goes on, any other answer does not (exit 0). Without
    an answer at all (stdin at its end: a script), a clear error saying to use -f."""
    sys.stdout.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        sys.stdout.write("\n")
        raise ClientError("no answer to the confirmation (standard input is closed)",
                          "answer y on standard input, or give -f to skip it", 1)
    return line.strip().lower() in ("y", "yes")


def print_each(results: "list[dict[str, Any]]") -> int:
    """What a command on several targets did: each one's result on stdout, each one's
    error on stderr; 1 if any failed (Docker's exit code), else 0."""
    failed = False
    for r in results:
        if "error" in r:
            line = f"{r['error']}; {r['hint']}" if r.get("hint") else r["error"]
            print(f"portway: error: {line}", file=sys.stderr)
            failed = True
        else:
            print(r["Result"])
    return 1 if failed else 0


def cmd_run(client: Client, a: Args) -> int:
    command = a.cmd
    if not command:
        raise ClientError("no command given", "put the command after --, as in: portway run "
                          "--name web -- python3 -m http.server 80", 2)
    check_terminal(a)
    info = client.call("run", command=command, name=a.name, networks=a.network, ip=a.ip,
                       aliases=a.alias, hostname=a.hostname, ports=a.publish,
                       detach=a.detach, auto_remove=a.rm, dns=a.dns, cap_add=a.cap_add,
                       cap_drop=a.cap_drop, privileged=a.privileged, user=a.user, ip6=a.ip6,
                       env=environment(a), workdir=a.workdir or posix.getcwd(), tty=a.tty,
                       interactive=a.interactive, labels=a.label, add_hosts=a.add_host,
                       dns_search=a.dns_search, dns_options=a.dns_option,
                       domainname=a.domainname, sysctls=a.sysctl, mac=a.mac_address,
                       expose=a.expose, publish_all=a.publish_all, restart=a.restart)
    for warning in (info.get("Warning") or "").splitlines():
        print(f"portway: warning: {warning}", file=sys.stderr)
    if a.detach:
        print(info["Id"])
        return 0
    return run_foreground(client, info, command, a.rm)


def run_foreground(client: Client, info: "dict[str, Any]", command: list[str],
                   auto_remove: bool) -> int:
    """Fork; the child enters the container's namespaces and becomes `unshare`, which runs
    the command confined (info["Argv"]); the parent forwards signals to the command,
    waits, and reports the end to the daemon. Without -i the command's stdin is
    /dev/null (Docker's: not attached); with -t it gets a terminal of its own, a
    pseudo-terminal whose other side the parent relays (cli/terminal.py)."""
    import os
    import signal

    from portway.kernel import sandbox

    term = None
    if info.get("Tty"):
        from portway.cli.terminal import Relay

        term = Relay(interactive=bool(info.get("Interactive")))
    # The child reports its exec (or its end) by closing its end of this pipe (it is
    # close-on-exec): only then is the pid the command, inside its namespaces.
    exec_r, exec_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the container's process
        os.close(exec_r)
        try:
            if term is not None:
                term.become_child()
            elif not info.get("Interactive", True):
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
            os.chdir(info.get("Workdir") or os.getcwd())
            sandbox.enter_sandbox(info["SandboxKey"], info["Hostname"],
                                  [(s, t) for s, t in info["Binds"]], info["SysfsReadOnly"],
                                  info.get("Domainname") or "")
            os.execvpe(info["Argv"][0], info["Argv"], info["Env"])
        except OSError as exc:
            print(f"portway: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        os._exit(127)
    interrupts = [0]

    def forward(signum: int, _frame: "Any") -> None:
        # To the command, not to `unshare` (which ignores SIGINT and SIGTERM while it
        # waits); as its PID namespace's first process, the command gets only the
        # signals it handles, as in Docker. A command that ignores Ctrl-C (sleep, as
        # PID 1) would then keep the terminal: a second Ctrl-C kills it.
        target = sandbox.init_child(pid) or pid
        if signum == signal.SIGINT:
            interrupts[0] += 1
            if interrupts[0] == 2:
                print("portway: second interrupt: killing the container's command",
                      file=sys.stderr)
                # unshare itself: --kill-child then kills the command, and unshare's
                # status is the command's (unshare cannot pass on a SIGKILL it sees).
                signum, target = signal.SIGKILL, pid
        try:
            os.kill(target, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    os.close(exec_w)
    os.read(exec_r, 1)
    os.close(exec_r)
    try:
        client.call("started", ref=info["Id"], pid=pid)
    except ClientError as exc:
        print(f"portway: warning: {exc.message}", file=sys.stderr)
    if term is not None:
        status = term.relay(pid)
    else:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code
    try:
        client.call("exited", ref=info["Id"], exit_code=code, pid=pid)
        if auto_remove:  # the daemon may have removed it already: either is fine
            client.call("rm", refs=[info["Id"]], force=True)
    except ClientError as exc:
        print(f"portway: warning: {exc.message}", file=sys.stderr)
    return code


def cmd_exec(client: Client, a: Args) -> int:
    command = a.cmd
    if not command:
        raise ClientError("no command given", "put the command after --", 2)
    import os

    check_terminal(a)
    extra = environment(a)
    # The daemon finds the command as the container would (127: no such program, 126:
    # one that cannot be executed), before anything runs.
    info = client.call("exec_info", ref=a.container, command=command,
                       workdir=a.workdir or os.getcwd(), user=a.user)
    env = dict(info["Env"])
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    if not a.interactive and not a.tty:
        # Docker's: stdin not attached. (-t: the command uses this terminal.)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    # nsenter joins the namespaces of the container's first process, forks into its PID
    # namespace, and exits with the command's status; setpriv drops what the container
    # may not have (as for its first process).
    argv = info["Argv"]
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        raise ClientError(f"cannot run {argv[0]!r}: {exc.strerror}",
                          "install util-linux (nsenter, setpriv)", 127) from None


def print_dns(info: "dict[str, Any]") -> None:
    from portway.cli.render import table

    state = "running" if info["running"] else "not running"
    upstreams = ", ".join(info["upstreams"]) or "(none)"
    print(f"DNS server: {state}; upstream resolvers: {upstreams}")
    sent = info.get("sent")
    if sent:
        how = ("answers to one socket with one length share a packet (UDP GSO)"
               if sent["coalesce"] else "one packet each: the kernel refused UDP GSO")
        print(f"UDP answers sent: {sent['answers']} in {sent['packets']} packets; {how}")
    for net in info["networks"]:
        where = ", ".join(f"[{g}]:53" if ":" in g else f"{g}:53"
                          for g in net.get("gateways") or [net["gateway"]])
        where += " (internal: no forwarding)" if net["internal"] else ""
        print(f"\nnetwork {net['name']}, served on {where}")
        rows = [[name, ", ".join(ips)] for name, ips in sorted(net["names"].items())]
        if rows:
            print(table(rows, ["NAME", "ADDRESSES"]))
    if info["log"]:
        print("\nrecent queries")
        qtypes = {1: "A", 12: "PTR", 28: "AAAA", 255: "ANY"}
        rcodes = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
        rows = [[time.strftime("%H:%M:%S", time.localtime(e["time"])), e["client"],
                 e["name"], qtypes.get(e["type"], str(e["type"])),
                 rcodes.get(e["rcode"], str(e["rcode"])), e["how"], f"{e['ms']} ms"]
                for e in info["log"][-20:]]
        print(table(rows, ["TIME", "CLIENT", "NAME", "TYPE", "RESULT", "HOW", "TOOK"]))


def picture_format(output: str) -> str:
    """dot, svg or png, from -o's file name ("-": DOT on stdout)."""
    import os

    fmt = "dot" if output == "-" else os.path.splitext(output)[1].lstrip(".").lower()
    if fmt not in ("dot", "gv", "svg", "png"):
        raise ClientError(f"cannot tell the picture format from {output!r}",
                          "name the file .svg, .png or .dot", 2)
    return fmt


def write_picture(dot: str, output: str, announce: bool = True) -> None:
    """DOT to stdout ("-"), to a .dot file, or through Graphviz to SVG or PNG; the
    file's name printed if announce."""
    fmt = picture_format(output)
    if output == "-":
        sys.stdout.write(dot)
        return
    if fmt in ("dot", "gv"):
        with open(output, "w") as f:
            f.write(dot)
        if announce:
            print(output)
        return
    import shutil
    import subprocess

    if shutil.which("dot") is None:
        raise ClientError("Graphviz's dot program is not installed",
                          "apt-get install graphviz, or write DOT with -o FILE.dot", 2)
    cp = subprocess.run(["dot", f"-T{fmt}", "-o", output], input=dot, text=True,
                        capture_output=True)
    if cp.returncode != 0:
        raise ClientError(f"dot failed: {cp.stderr.strip().splitlines()[0]}",
                          "write DOT with -o FILE.dot to look at it", 5)
    if announce:
        print(output)


def cmd_graph(client: Client, output: str) -> int:
    from portway.core.graph import to_dot

    picture_format(output)  # a bad name is refused before anything is read
    write_picture(to_dot(client.observe("show")), output)
    return 0


def cmd_audit(client: Client, a: Args) -> int:
    """Through portwayd if it runs; if not, and portway has nothing here, through the
    short-lived observer that changes nothing (portway.engine.observer)."""
    result = client.observe("audit", live=a.live)
    if a.json:
        print_json(result["audit"])
    else:
        print(result["text"])
    return 1 if result["audit"]["findings"] else 0


def cmd_daemon(client: Client, a: Args) -> int:
    if a.action == "run":
        from portway.daemon.main import serve

        return serve(client.state_dir, client.host_netns,
                     cluster_store=_env("PORTWAY_CLUSTER_STORE") or None,
                     advertise_address=_env("PORTWAY_ADVERTISE_ADDRESS") or None,
                     cluster_ttl=_env("PORTWAY_CLUSTER_TTL") or None)
    if a.action == "start":
        status = client.running()
        if status is not None:
            print(f"portwayd is already running (pid {status['pid']})")
            return 0
        client.start_daemon()
        status = client.running()
        print(f"started portwayd (pid {status['pid'] if status else '?'})")
        return 0
    if a.action == "stop":
        pid = client.stop_daemon()
        print("portwayd was not running" if pid is None else f"stopped portwayd (pid {pid})")
        return 0
    status = client.running()
    if status is None:
        print("portwayd is not running")
        return 1
    print(f"portwayd is running (pid {status['pid']}, state dir {status['state_dir']}, "
          f"host namespace {status['host_netns'] or '(root)'})")
    cluster = client.call("cluster_status")
    if cluster is not None:
        print_cluster(cluster)
    return 0


def print_cluster(c: "dict[str, Any]") -> None:
    """The cluster part of `daemon status`: the store and its members, the hosts, this
    host's state."""
    state = c["state"] + (f" ({c['error']})" if c["error"] else "")
    print(f"cluster store {c['store']}: this host {c['advertise_address']} is {state}"
          + (f", lease {c['lease']}" if c["lease"] else ", no lease")
          + f" (ttl {c['ttl']}s)"
          + f", revision {c['revision']}")
    for m in c["members"]:
        role = "leader" if m.get("leader") else "member"
        health = f"etcd {m.get('version', '')}, {role}" if m["healthy"] else "unreachable"
        print(f"  etcd member {m['name'] or m['id']} {', '.join(m['client_urls'])}: {health}")
    for h in c["hosts"]:
        mark = " (this host)" if h["self"] else ""
        print(f"  host {h['address']}{mark}: {h['endpoints']} endpoint(s), "
              f"joined {h.get('joined', '?')}")
    if c["networks"]:
        print(f"  overlay networks: {', '.join(c['networks'])}")
    for name, why in sorted(c.get("not_made", {}).items()):
        print(f"  overlay network {name} is not made on this host: {why}")


def cmd_logs(client: Client, a: Args) -> int:
    """Docker's `logs`: the output so far (its last --tail lines), and with -f what comes
    next, until the command ends (or Ctrl-C)."""
    reply = client.call("logs", ref=a.container, tail=a.tail, timestamps=a.timestamps,
                        follow=a.follow)
    sys.stdout.write(reply["Log"])
    while a.follow and reply["Running"]:
        sys.stdout.flush()
        time.sleep(0.1)
        try:
            reply = client.call("logs", ref=a.container, since=reply["Offset"],
                                timestamps=a.timestamps, follow=True)
        except ClientError as exc:
            if exc.exit_code == 3:  # removed meanwhile: its output has ended
                return 0
            raise
        sys.stdout.write(reply["Log"])
    return 0


def cmd_start_attached(client: Client, a: Args) -> int:
    """Docker's `start -a`: start one container, print what its command writes from then
    on until it ends (the output of earlier runs stays in `logs`), and exit with the
    command's exit code."""
    if len(a.names) != 1:
        raise ClientError("you cannot start and attach multiple containers at once",
                          "give one container to 'start -a'")
    offset = client.call("logs", ref=a.names[0], tail="0")["Offset"]
    [started] = client.call("start", refs=a.names)
    if "error" in started:
        raise ClientError(started["error"], started.get("hint") or "")
    running = True
    while running:
        reply = client.call("logs", ref=a.names[0], since=offset, follow=True)
        sys.stdout.write(reply["Log"])
        sys.stdout.flush()
        offset, running = reply["Offset"], reply["Running"]
        if running:
            time.sleep(0.1)
    # Ended: what it wrote last (a line without its newline too), then its code.
    while True:
        reply = client.call("logs", ref=a.names[0], since=offset)
        if reply["Offset"] == offset:
            break
        sys.stdout.write(reply["Log"])
        offset = reply["Offset"]
    [waited] = client.call("wait", refs=a.names)
    if "error" in waited:
        raise ClientError(waited["error"], waited.get("hint") or "")
    return int(waited["Result"])


def dispatch(client: Client, a: Args) -> int:
    if a.command == "network":
        return cmd_network(client, a)
    if a.command == "run":
        return cmd_run(client, a)
    if a.command == "exec":
        return cmd_exec(client, a)
    if a.command == "ps":
        from portway.cli.formats import cmd_ps

        return cmd_ps(client, a)
    if a.command == "inspect":
        from portway.cli.formats import cmd_inspect

        kinds = ("container", "network") if a.type is None else (a.type,)
        return cmd_inspect(client, a.names, kinds, a.format)
    if a.command == "dns":
        info = client.call("dns_info")
        if a.json:
            print_json(info)
        else:
            print_dns(info)
    elif a.command == "port":
        for line in client.call("port", ref=a.container, port=a.port):
            print(line)
    elif a.command == "logs":
        return cmd_logs(client, a)
    elif a.command == "start":
        if a.attach:
            return cmd_start_attached(client, a)
        return print_each(client.call("start", refs=a.names))
    elif a.command == "stop":
        return print_each(client.call("stop", refs=a.names, timeout=a.time))
    elif a.command == "restart":
        return print_each(client.call("restart", refs=a.names, timeout=a.time))
    elif a.command == "kill":
        return print_each(client.call("kill", refs=a.names, signal=a.signal))
    elif a.command == "wait":
        return print_each(client.call("wait", refs=a.names))
    elif a.command == "rm":
        return print_each(client.call("rm", refs=a.names, force=a.force))
    elif a.command == "gc":
        lines = client.call("gc", dry_run=a.dry_run)
        print("\n".join(lines) if lines else "nothing to repair: the kernel matches the store")
    elif a.command == "doctor":
        lines = client.call("gc", dry_run=True)
        # What gc cannot make here: the cluster's overlay networks this host left out.
        try:
            not_made: dict[str, str] = client.call("overlay_not_made")
        except ClientError:  # a daemon of an earlier portway, still running
            not_made = {}
        for name, why in sorted(not_made.items()):
            print(f"note: overlay network {name} is not made on this host: {why}")
        if not lines:
            print("healthy: the kernel matches the store")
            return 0
        for line in lines:
            print(f"drift: {line.removeprefix('would ')}")
        print(f"{len(lines)} difference(s); 'portway gc' applies the fixes above")
        return 1
    elif a.command == "show":
        topo = client.observe("show")
        if a.json:
            print_json(topo)
        else:
            from portway.cli.render import show_text

            print(show_text(topo))
    elif a.command == "trace":
        if a.ipv4 and a.ipv6:
            raise ClientError("-4 and -6 exclude each other", "give one of them", 2)
        family = {"family": 4 if a.ipv4 else 6} if a.ipv4 or a.ipv6 else {}
        if a.output:
            picture_format(a.output)  # a bad name is refused before the trace
        result = client.observe("trace", source=a.source, destination=a.destination,
                             from_ip=a.from_ip, live=a.live, **family)
        if a.json:
            print_json(result["trace"])
        else:
            print(result["text"])
        if a.output:
            from portway.core.graph import path_dot

            write_picture(path_dot(client.observe("show"), result["trace"]), a.output,
                          announce=not a.json)
    elif a.command == "audit":
        return cmd_audit(client, a)
    elif a.command == "graph":
        return cmd_graph(client, a.output)
    elif a.command == "daemon":
        return cmd_daemon(client, a)
    elif a.command == "__complete":
        return cmd_complete(client, a.kind)
    else:
        raise ClientError("missing command", "see 'portway --help'", 2)
    return 0


def cmd_complete(client: Client, kind: str) -> int:
    """Names for the completion scripts: nothing (and no daemon started) when portwayd is
    not running."""
    if client.running() is None:
        return 0
    if kind == "containers":
        for c in client.call("ps", all=True):
            print(c["Name"].lstrip("/"))  # inspect's "/web"
    else:
        for n in client.call("network_ls"):
            print(n["Name"])
    return 0


def _env(name: str) -> str | None:
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode("utf-8", "surrogateescape")


def run(argv: list[str]) -> int:
    """The CLI on argv (without the program name); returns the exit status."""
    root = _root()
    try:
        args = Args(parse(root, argv))
    except HelpRequested as exc:
        print(exc.text)
        return 0
    except UsageError as exc:
        print(f"portway: {exc.message}; see '{exc.prog} --help'", file=sys.stderr)
        return 2
    if args.command is None or (args.command == "network" and args.net_command is None) \
            or (args.command == "container" and args.container_command is None):
        group = args.command
        print(help_text(root if group is None else root.subs[group],
                        "portway" if group is None else f"portway {group}"),
              file=sys.stderr)
        return 2
    if args.command == "container":
        args["command"] = CONTAINER_ALIASES.get(args.container_command,
                                                args.container_command)
        if args.command == "inspect" and args.type is None:
            args["type"] = "container"  # docker container inspect: containers alone
    if args.command == "network":
        args["net_command"] = NETWORK_ALIASES.get(args.net_command, args.net_command)
    if args.command == "completion":  # needs neither root nor the daemon
        from portway.cli.completion import script

        sys.stdout.write(script(args.shell, root))
        return 0
    if args.host_netns is None:
        args["host_netns"] = _env("PORTWAY_HOST_NETNS") or None
    if args.state_dir is None:
        args["state_dir"] = _env("PORTWAY_STATE_DIR") or "/var/lib/portway"
    try:
        if posix.geteuid() != 0 and args.command == "__complete":
            return 0  # completing as another user: no names to offer
        if posix.geteuid() != 0:
            raise ClientError("portway must run as root (it creates network namespaces, "
                              "links and firewall rules)", "run it with sudo", 77)
        if args.host_netns is not None and ("/" in args.host_netns
                                            or args.host_netns in ("", ".", "..")):
            raise ClientError(f"invalid host namespace name {args.host_netns!r}",
                              "give a name from 'ip netns list'", 2)
        return dispatch(Client(args.state_dir, args.host_netns), args)
    except ClientError as exc:
        if args.debug and exc.traceback:
            print(exc.traceback, file=sys.stderr)
        line = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        print(f"portway: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _reader_gone():
            return 120  # portway dns | head: the rest has no reader, as in main()
        if args.debug:
            raise
        print(f"portway: error: unexpected failure: {sys.exc_info()[1]}; "
              "run again with --debug for details", file=sys.stderr)
        return 70


def _reader_gone() -> bool:
    """Standard output is a pipe whose reader has closed it."""
    import select

    poller = select.poll()
    poller.register(1, 0)  # POLLERR is reported whatever is asked for
    return any(events & select.POLLERR for _, events in poller.poll(0))


def main() -> None:
    code = run(sys.argv[1:])
    try:
        sys.stdout.flush()
    except OSError:  # a reader that went away (portway ps | head): as Python does
        code = code or 120
    try:
        sys.stderr.flush()
    except OSError:
        pass
    posix._exit(code)


if __name__ == "__main__":
    main()
