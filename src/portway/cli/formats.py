"""The output people script against: `ps`, `inspect`, `network ls` and `network inspect`
with Docker's --format (Go templates: core/gotemplate.py), ps's --filter, -n/--last,
-l/--latest and --no-trunc, and the default tables. Standard library only, as the rest
of the CLI; `ps` without a format imports nothing slow (core/listing.py says how).
"""

import sys
import time

from portway.cli.client import Client, ClientError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from typing import Any

    from portway.core.gotemplate import TemplateError

PS_HINT = ("ps's placeholders: .ID .Names .Status .State .Ports .Networks .Command "
           ".CreatedAt .RunningFor .Labels .Label \"KEY\" .Image (see 'portway ps --help')")
NETWORK_HINT = ("network ls's placeholders: .ID .Name .Driver .Scope .IPv4 .IPv6 .Internal "
                ".Labels .Label \"KEY\" .CreatedAt")
INSPECT_HINT = ("fields are inspect's JSON, as in {{.NetworkSettings.IPAddress}} or "
                "{{json .State}}")
NETWORK_INSPECT_HINT = ("fields are network inspect's JSON, as in {{.IPAM.Config}} or "
                        "{{json .Containers}}")


def print_json(data: "Any") -> None:
    import json

    print(json.dumps(data, indent=2))


def _template_error(exc: "TemplateError", hint: str) -> ClientError:
    return ClientError(f"template parsing error: {exc.message}", hint, 2)


def _render(fmt: str, rows: "list[Any]", headers: "dict[str, str]", hint: str) -> None:
    from portway.core.gotemplate import TemplateError
    from portway.core.listing import render

    try:
        sys.stdout.write(render(fmt, rows, headers))
    except TemplateError as exc:
        raise _template_error(exc, hint) from None


def _exclusive(a: "Any") -> None:
    if a.json and a.format:
        raise ClientError("--json and --format exclude each other", "give one of them", 2)


def cmd_ps(client: Client, a: "Any") -> int:
    from portway.core import listing

    _exclusive(a)
    try:
        filters = listing.parse_filters(a.filter)
    except listing.ListingError as exc:
        raise ClientError(exc.message, exc.hint, 2) from None
    last = a.last if a.last is not None else (1 if a.latest else -1)
    everything = a.all or last > 0 or listing.wants_all(filters)
    refs = {k: v for k, v in filters.items() if k in ("before", "since")}
    if refs:
        # A container named by before=/since= may be stopped: found among all of them.
        known = client.call("ps", all=True)
        try:
            rows = listing.created_between(
                [c for c in known if everything or c["State"].get("Running")], known, refs)
        except listing.ListingError as exc:
            raise ClientError(exc.message, exc.hint, 1) from None
    else:
        rows = client.call("ps", all=everything)
    rows = listing.select(rows, filters, last)
    trunc = not a.no_trunc
    if a.quiet:
        for c in rows:
            print(c["Id"][:12] if trunc else c["Id"])
    elif a.json:
        print_json(rows)
    elif a.format and a.format.strip() != "table":
        now = time.time()
        _render(a.format, [listing.container_context(c, now, trunc) for c in rows],
                listing.CONTAINER_HEADERS, PS_HINT)
    else:
        print(ps_table(rows, time.time(), trunc))
    return 0


def ps_table(rows: "list[dict[str, Any]]", now: float, trunc: bool) -> str:
    """portway's own ps table: Docker's status and ports, and each network's addresses."""
    from portway.cli.render import table
    from portway.core import listing

    out = []
    for c in rows:
        nets = c["NetworkSettings"]["Networks"]
        addrs = ", ".join(
            f"{n}:{'/'.join(x for x in (v['IPAddress'], v.get('GlobalIPv6Address')) if x)}"
            if v["IPAddress"] or v.get("GlobalIPv6Address") else n for n, v in nets.items())
        ports = listing.display_ports(c["NetworkSettings"].get("Ports"))
        cmd = listing.command_line(c) if c.get("Runtime", "portway") == "portway" \
            else f"(run by {c['Runtime']})"
        if trunc and len(cmd) > 30:
            cmd = cmd[:27] + "..."
        out.append([c["Id"][:12] if trunc else c["Id"], listing.name_of(c),
                    listing.status_text(c, now), addrs, ports, cmd])
    return table(out, ["CONTAINER ID", "NAME", "STATUS", "NETWORKS", "PORTS", "COMMAND"])


def cmd_network_ls(client: Client, a: "Any") -> int:
    _exclusive(a)
    nets = client.call("network_ls")
    if a.filter:
        from portway.core import listing

        try:
            filters = listing.parse_filters(a.filter, listing.NETWORK_FILTERS)
        except listing.ListingError as exc:
            raise ClientError(exc.message, exc.hint, 2) from None
        nets = listing.select_networks(nets, filters)
    trunc = not a.no_trunc
    if a.quiet:
        for n in nets:
            print(n["Id"][:12] if trunc else n["Id"])
    elif a.json:
        print_json(nets)
    elif a.format and a.format.strip() != "table":
        from portway.core import listing

        _render(a.format, [listing.network_context(n, trunc) for n in nets],
                listing.NETWORK_HEADERS, NETWORK_HINT)
    else:
        from portway.cli.render import table

        print(table([[n["Id"][:12] if trunc else n["Id"], n["Name"], n["Driver"],
                      ", ".join(c["Subnet"] for c in n["IPAM"]["Config"]),
                      ", ".join(c["Gateway"] for c in n["IPAM"]["Config"]), n["Bridge"],
                      "yes" if n["Internal"] else "no", str(len(n["Containers"]))]
                     for n in nets],
                    ["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "BRIDGE",
                     "INTERNAL", "CONTAINERS"]))
    return 0


# inspect's kinds of object, in the order a name is looked up (Docker's `docker
# inspect` takes any object; --type says which), and the daemon's call for each.
INSPECT_CALLS = {"container": "inspect", "network": "network_inspect"}
NOT_FOUND = 3  # NotFound's exit code (portway.errors, not imported here: it is slow)


def cmd_inspect(client: Client, names: "list[str]", kinds: "tuple[str, ...]",
                fmt: "str | None") -> int:
    """`inspect` and `network inspect` as Docker's: each name looked up as each kind in
    turn; what is found is printed, each name that is not is said on stderr, and the
    exit code is then 1."""
    found: list[Any] = []
    missing: list[ClientError] = []
    for name in names:
        first: ClientError | None = None
        for kind in kinds:
            try:
                found.extend(client.call(INSPECT_CALLS[kind], refs=[name]))
                break
            except ClientError as exc:
                if exc.exit_code != NOT_FOUND:
                    raise
                first = first or exc
        else:
            if first is not None and len(kinds) > 1:
                first = ClientError(f"no container or network {name!r}",
                                    "list them with 'portway ps -a' and 'portway network "
                                    "ls'", NOT_FOUND)
            if first is not None:
                missing.append(first)
    if missing and len(names) == 1:
        raise missing[0]
    for gone in missing:
        line = f"{gone.message}; {gone.hint}" if gone.hint else gone.message
        print(f"portway: error: {line}", file=sys.stderr)
    code = print_inspected(found, fmt, INSPECT_HINT if kinds[0] == "container"
                           else NETWORK_INSPECT_HINT)
    return 1 if missing else code


def print_inspected(items: "list[Any]", fmt: "str | None", hint: str = INSPECT_HINT) -> int:
    """inspect's output, as Docker's: indented JSON; "json": one line; otherwise each
    object through the template (a field an object lacks is an error, as Docker's
    inspect reports it), the ones that worked printed, the first failure reported."""
    if not fmt:
        print_json(items)
        return 0
    if fmt == "json":
        import json

        print(json.dumps(items, separators=(",", ":"), ensure_ascii=False))
        return 0
    from portway.core.gotemplate import Template, TemplateError

    try:
        template = Template(fmt)
    except TemplateError as exc:
        raise _template_error(exc, hint) from None
    out: list[str] = []
    failed: TemplateError | None = None
    for item in items:
        try:
            out.append(template.execute(item, strict=True) + "\n")
        except TemplateError as exc:
            failed = failed or exc
    sys.stdout.write("".join(out))
    if failed is not None:
        raise _template_error(failed, hint)
    return 0
