"""portway-netavark: netavark's command line, served by portwayd.

Podman runs `netavark [--config DIR] [--rootless BOOL] [--aardvark-binary PATH]
[-f FILE] setup|teardown NETNS_PATH` (and `version`, `create`, `update NETWORK
--network-dns-servers ...`, `firewall-reload`), with JSON on stdin; installed as `netavark` in a
directory Podman looks in first (containers.conf: helper_binaries_dir), this
answers it. The work is portway's engine, reached through the daemon for this
host namespace and state dir DIR/portway/<host namespace>, started on first
use. Errors are netavark's: {"error": "..."} on stdout and exit code 1.

Rootless Podman (--rootless true) runs it as root of the user's user namespace, inside
its rootless network namespace, with --config under the user's runtime dir: the state
dir is DIR/portway/rootless, and the daemon, started by this with --rootless, lives in
that namespace (the user's own "host"), so all it makes is the user's: bridges and
rules in that namespace, files under DIR. Podman makes that namespace anew after each
time it had no running container; the daemon leaves with the last container, and one
left behind in an older namespace is told so by the namespace sent with each request.

Standard library only, like the CLI: Podman calls it for every container.
"""

from __future__ import annotations

import json
import os
import sys

from portway.cli.client import Client, ClientError

# The netavark contract spoken: 1.16's (a current Podman wants at least 1.14), less
# what docs/podman.md lists as differences.
VERSION = "1.16.0"
USAGE = ("usage: portway-netavark [--config DIR] [--rootless BOOL] [--aardvark-binary PATH] "
         "[--firewall-driver NAME] [--plugin-directory DIR]... [-f FILE] "
         "setup|teardown NETNS_PATH | version | create | update NETWORK "
         "--network-dns-servers IP... | firewall-reload")
HELP = f"""portway-netavark {VERSION}: netavark's command line, served by portway

{USAGE}

Commands:
  create           Create a network config
  setup            Configures the given network namespace with the given configuration
  update           Updates network dns servers for an already configured network
  teardown         Undo any configuration applied via setup command
  version          Display info about netavark
  firewall-reload  Re-applies firewall rules for all networks

Options:
  -f, --file FILE               read the configuration from FILE instead of stdin
      --firewall-driver NAME    accepted (NETAVARK_FW): portway's own nftables tables are used
  -c, --config DIR              config directory (portway's state goes in DIR/portway)
  -r, --rootless BOOL           this call is for rootless Podman
  -a, --aardvark-binary PATH    accepted: portway serves DNS itself
      --plugin-directory DIR    accepted: netavark plugins are not supported
  -h, --help                    print this help
  -V, --version                 print the version
"""


class UsageError(Exception):
    pass


class Done(Exception):
    """Printed what was asked (--help, --version): exit 0."""


def parse(argv: list[str]) -> dict[str, object]:
    """netavark's options, in any order before and after the subcommand."""
    out: dict[str, object] = {"config": "/run/containers/networks", "rootless": "false",
                              "file": None, "args": [], "dns_servers": []}
    takes = {"--config": "config", "-c": "config", "--rootless": "rootless",
             "-r": "rootless", "--aardvark-binary": "aardvark", "-a": "aardvark",
             "--file": "file", "-f": "file",
             # Current Podman's (5.x): accepted, with nothing to do (see docs/podman.md).
             "--firewall-driver": "firewall_driver", "--plugin-directory": "plugin_dir"}
    args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, _, value = arg.partition("=")
        if key in takes:
            if not value:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"{key} needs a value")
                value = argv[i]
            out[takes[key]] = value
        elif key == "--network-dns-servers":
            values = [value] if value else []
            while not values or (i + 1 < len(argv) and not argv[i + 1].startswith("-")):
                i += 1
                if i >= len(argv):
                    break
                values.append(argv[i])
            out["dns_servers"] = [v for x in values for v in x.split(",") if v]
        elif arg in ("-h", "--help"):
            print(HELP, end="")
            raise Done()
        elif arg in ("-V", "--version"):
            # As netavark's (clap's) --version, which `podman info` shows: NAME VERSION.
            print(f"netavark {VERSION} (portway-netavark)")
            raise Done()
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}")
        else:
            args.append(arg)
        i += 1
    out["args"] = args
    return out


def host_netns() -> str | None:
    """The name (under /run/netns) of the namespace this process runs in, or None (the
    root namespace, or one without a name: the daemon then serves the one it starts
    in). Podman and netavark run in the host namespace they network."""
    here = os.stat("/proc/self/ns/net").st_ino
    try:
        names = sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        names = []
    for name in names:
        try:
            if os.stat(f"/run/netns/{name}").st_ino == here:
                return name
        except OSError:
            continue
    return None


def rootless_netns_path(own: os.stat_result, config: str = "") -> str:
    """Where Podman mounts the rootless network namespace this runs in, found by its
    identity; "" if not found: Podman 4's $XDG_RUNTIME_DIR/netns/rootless-netns-..., or
    Podman 5's CONFIG/rootless-netns/rootless-netns (CONFIG: the --config dir). The
    daemon leaves once it is gone (Podman removes it after the last container)."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    paths = [os.path.join(config, "rootless-netns", "rootless-netns")] if config else []
    if runtime_dir:
        directory = os.path.join(runtime_dir, "netns")
        try:
            paths += [os.path.join(directory, name) for name in os.listdir(directory)]
        except OSError:
            pass
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return path
    return ""


def read_input(path: object) -> object:
    try:
        text = open(str(path)).read() if path else sys.stdin.read()  # noqa: SIM115
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClientError(f"the network options are not JSON: {exc}") from None


def run(argv: list[str]) -> object:
    opts = parse(argv)
    args = opts["args"]
    assert isinstance(args, list)
    if not args:
        raise UsageError(USAGE)
    command = args[0]
    if command == "version":
        # netavark's fields, in its order; it prints them indented.
        print(json.dumps({"version": VERSION, "commit": "portway", "build_time": "",
                          "target": "portway-netavark", "default_fw_driver": "nftables"},
                         indent=2))
        return None
    rootless = str(opts["rootless"]).lower()
    if rootless not in ("true", "false"):
        raise UsageError(f"invalid value for --rootless: {opts['rootless']!r} (true or false)")
    if rootless == "true":
        client = Client(os.path.join(str(opts["config"]), "portway", "rootless"), None)
        own = os.stat("/proc/self/ns/net")
        client.netns = f"{own.st_dev}:{own.st_ino}"
        mounted = rootless_netns_path(own, str(opts["config"]))
        client.daemon_args = ("--rootless",) + (("--host-netns-path", mounted) if mounted
                                                else ())
    else:
        ns = host_netns()
        client = Client(os.path.join(str(opts["config"]), "portway", ns or "root"), ns)
    if command in ("setup", "teardown"):
        if len(args) != 2:
            raise UsageError(f"{command} needs the network namespace path")
        reply = client.call(f"podman_{command}", netns=args[1],
                            options=read_input(opts["file"]))
        if command == "setup" and isinstance(reply, dict) and "status" in reply:
            # What netavark logs and goes on: stderr, as its log; stdout is Podman's.
            for warning in reply.get("warnings") or ():
                print(f"[WARN  portway-netavark] {warning}", file=sys.stderr)
            return reply["status"]
        return reply
    if command == "firewall-reload":
        return client.call("podman_firewall_reload")
    if command == "create":
        return client.call("podman_create", options=read_input(opts["file"]))
    if command == "update":
        if len(args) != 2:
            raise UsageError("update needs the network name")
        return client.call("podman_update", network=args[1], dns_servers=opts["dns_servers"])
    raise UsageError(f"unknown subcommand {command}")


def main(argv: list[str] | None = None) -> None:
    try:
        result = run(sys.argv[1:] if argv is None else argv)
    except Done:
        sys.exit(0)
    except UsageError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(1)
    except ClientError as exc:
        message = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        print(json.dumps({"error": message}))
        sys.exit(1)
    except Exception as exc:  # Podman reads stdout: always answer in its format
        print(json.dumps({"error": f"unexpected failure: {exc}"}))
        sys.exit(1)
    if result:  # teardown and update print nothing, as netavark does
        print(json.dumps(result))
    sys.exit(0)


if __name__ == "__main__":
    main()
