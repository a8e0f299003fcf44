"""What `ps` and `network ls` show, the way Docker's CLI shows it: a container's status
("Up 5 minutes", "Exited (137) 3 seconds ago", "Created") in Docker's humanised
durations, the ports column, the placeholders of --format (.ID, .Names, .Status, ...),
`table` formats aligned as Go's tabwriter aligns them, and ps's --filter.

Everything works on the JSON the daemon sends (inspect's shape) and on a `now` given by
the caller, so it is pure and testable. The CLI imports this module on its hot path
(`ps`), so it imports nothing at module level; the template evaluator
(core/gotemplate.py) and `re` only when a format or a filter needs them.
"""

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from typing import Any

    from portway.core.gotemplate import Struct

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: Docker's "never"

CONTAINER_HEADERS = {
    "ID": "CONTAINER ID", "Names": "NAMES", "Image": "IMAGE", "Command": "COMMAND",
    "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE",
    "Status": "STATUS", "Size": "SIZE", "Labels": "LABELS", "Mounts": "MOUNTS",
    "LocalVolumes": "LOCAL VOLUMES", "Networks": "NETWORKS",
}
NETWORK_HEADERS = {
    "ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "IPv4": "IPV4",
    "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED AT",
}

# ps --filter: the keys portway knows (Docker's, less those about images, volumes,
# health and swarm), and Docker's container states.
PS_FILTERS = ("id", "name", "label", "status", "network", "exited", "before", "since",
              "publish", "expose")
# network ls --filter: Docker's keys. Its predefined networks are builtin, never dangling.
NETWORK_FILTERS = ("driver", "id", "label", "name", "scope", "type", "dangling")
PREDEFINED = ("bridge", "host", "none")
# network prune --filter: Docker's keys (label! keeps the networks that have the label).
PRUNE_FILTERS = ("until", "label", "label!")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
             "h": 3600.0}
STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


class ListingError(Exception):
    """Bad --filter input: what is wrong, and what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# ----------------------------------------------------------------------------- time

def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_time(text: "str | None") -> "float | None":
    """Seconds since the epoch of an RFC 3339 time ("2024-05-01T10:00:00.123456Z",
    "...+02:00"); None for no time ("", Go's zero time, or what does not parse)."""
    if not text or text.startswith("0001-01-01"):
        return None
    try:
        date, sep, clock = text.partition("T")
        if not sep:
            date, _, clock = text.partition(" ")
        y, mo, d = (int(x) for x in date.split("-"))
        offset = 0
        if clock.endswith(("Z", "z")):
            clock = clock[:-1]
        else:
            cut = max(clock.rfind("+"), clock.rfind("-"))
            if cut > 0:
                zone = clock[cut + 1:]
                hours, _, minutes = zone.partition(":")
                offset = (int(hours) * 3600 + int(minutes or 0) * 60) * \
                    (-1 if clock[cut] == "-" else 1)
                clock = clock[:cut]
        hh, mm, ss = clock.split(":")
        if not (1 <= mo <= 12 and 1 <= d <= 31):
            return None
        return _days_from_civil(y, mo, d) * 86400 + int(hh) * 3600 + int(mm) * 60 + \
            float(ss) - offset
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """Docker's humanised duration (go-units HumanDuration): "Less than a second",
    "1 second", "About a minute", "5 minutes", "About an hour", "3 hours", "2 days"..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def go_time(seconds: float, utc: bool = False, fraction: bool = False) -> str:
    """Go's time.Time.String(): "2006-01-02 15:04:05 -0700 MST" (local time unless
    utc; with fraction, the sub-second digits Go would print)."""
    import time

    whole = int(seconds // 1)
    t = time.gmtime(whole) if utc else time.localtime(whole)
    text = time.strftime("%Y-%m-%d %H:%M:%S", t)
    if fraction:
        digits = f"{seconds - whole:.9f}"[2:].rstrip("0")
        if digits:
            text += "." + digits
    return text + (" +0000 UTC" if utc else time.strftime(" %z %Z", t))


# ------------------------------------------------------------------ a container's row

def name_of(c: "dict[str, Any]") -> str:
    """The container's name without Docker's leading slash."""
    return str(c["Name"]).lstrip("/")


def status_text(c: "dict[str, Any]", now: float) -> str:
    """Docker's STATUS: "Up 5 minutes", "Exited (137) 3 seconds ago", "Created"."""
    state = c["State"]
    started = parse_time(state.get("StartedAt"))
    finished = parse_time(state.get("FinishedAt"))
    code = state.get("ExitCode")
    shown = "unknown" if code is None else str(code)
    if state.get("Running"):
        if state.get("Restarting"):
            return f"Restarting ({shown}) {human_duration(now - (finished or now))} ago"
        up = f"Up {human_duration(now - (started or now))}"
        if any("ClusterConflict" in n for n in
               (c.get("NetworkSettings") or {}).get("Networks", {}).values()):
            up += " (unreachable from other hosts)"  # inspect's ClusterConflict says why
        return up + " (Paused)" if state.get("Paused") else up
    status = state.get("Status")
    if status == "removing":
        return "Removal In Progress"
    if status == "dead" or state.get("Dead"):
        return "Dead"
    if status == "created" or (started is None and status != "exited"):
        return "Created"
    if finished is None:
        return f"Exited ({shown})"
    return f"Exited ({shown}) {human_duration(now - finished)} ago"


def command_line(c: "dict[str, Any]") -> str:
    """The command as Docker's ps shows it: arguments with spaces in single quotes."""
    path = str(c.get("Path") or "")
    args = [f"'{a}'" if " " in a else a for a in c.get("Args") or []]
    return f"{path} {' '.join(args)}" if args else path


def ellipsis(text: str, width: int) -> str:
    """Docker's Ellipsis: at most width characters, the last one "…" if cut."""
    if len(text) <= width:
        return text
    return text[:width - 1] + "…" if width > 1 else text[:width]


def _ip_key(ip: str) -> "tuple[int, Any]":
    if not ip:
        return (0, ())
    if ":" not in ip:
        try:
            return (4, tuple(int(p) for p in ip.split(".")))
        except ValueError:
            return (4, (ip,))
    return (6, ip)


def _join_host_port(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def display_ports(ports: "dict[str, Any] | None") -> str:
    """Docker's PORTS column from NetworkSettings.Ports: "0.0.0.0:8080->80/tcp,
    [::]:8080->80/tcp", ranges grouped ("0.0.0.0:9000-9002->9000-9002/tcp"), ports
    exposed but not published as "80/tcp"."""
    entries: list[tuple[int, str, int, str]] = []  # private, ip, public, protocol
    for key, bindings in (ports or {}).items():
        number, _, proto = str(key).partition("/")
        try:
            private = int(number)
        except ValueError:
            continue
        proto = proto or "tcp"
        if not bindings:
            entries.append((private, "", 0, proto))
            continue
        for b in bindings:
            try:
                public = int(b.get("HostPort") or 0)
            except ValueError:
                public = 0
            entries.append((private, b.get("HostIp") or "", public, proto))
    entries.sort(key=lambda e: (e[0], _ip_key(e[1]), e[2], e[3]))
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    result: list[str] = []
    mappings: list[str] = []
    for private, ip, public, proto in entries:
        key = proto
        if ip:
            if public != private:
                mappings.append(f"{_join_host_port(ip, str(public))}->{private}/{proto}")
                continue
            key = f"{ip}/{proto}"
        group = groups.get(key)
        if group is None:
            groups[key] = [private, private]
            order.append(key)
        elif private == group[1] + 1:
            group[1] = private
        else:
            result.append(_form_group(key, group[0], group[1]))
            groups[key] = [private, private]
    result += [_form_group(k, *groups[k]) for k in order]
    return ", ".join(result + mappings)


def _form_group(key: str, first: int, last: int) -> str:
    ip, _, proto = key.rpartition("/")
    group = str(first) if first == last else f"{first}-{last}"
    if ip:
        group = f"{_join_host_port(ip, group)}->{group}"
    return f"{group}/{proto}"


def _labels_text(labels: "dict[str, str] | None") -> str:
    return ",".join(sorted(f"{k}={v}" for k, v in (labels or {}).items()))


def container_context(c: "dict[str, Any]", now: float, trunc: bool = True) -> "Struct":
    """A container (inspect's shape) as ps's --format sees it: Docker's placeholders
    .ID .Names .Image .Command .CreatedAt .RunningFor .Ports .State .Status .Size
    .Labels .Label "KEY" .Mounts .LocalVolumes .Networks."""
    from portway.core.gotemplate import Method, Struct, go_quote

    created = parse_time(c.get("Created")) or 0.0
    labels = dict((c.get("Config") or {}).get("Labels") or {})
    command = command_line(c)
    return Struct("*formatter.ContainerContext", {
        "ID": c["Id"][:12] if trunc else c["Id"],
        "Names": name_of(c),
        "Image": "",
        "Command": go_quote(ellipsis(command, 20) if trunc else command),
        "CreatedAt": go_time(created),
        "RunningFor": human_duration(now - created) + " ago",
        "Ports": display_ports(c["NetworkSettings"].get("Ports")),
        "State": c["State"]["Status"],
        "Status": status_text(c, now),
        "Size": "0B",
        "Labels": _labels_text(labels),
        "Label": Method(lambda key: labels.get(key, ""), ("str",)),
        "Mounts": "",
        "LocalVolumes": "0",
        "Networks": ",".join(sorted(c["NetworkSettings"].get("Networks") or {})),
    })


def network_context(n: "dict[str, Any]", trunc: bool = True) -> "Struct":
    """A network (network inspect's shape) as network ls's --format sees it: .ID .Name
    .Driver .Scope .IPv4 .IPv6 .Internal .Labels .Label "KEY" .CreatedAt."""
    from portway.core.gotemplate import Method, Struct

    labels = dict(n.get("Labels") or {})
    created = parse_time(n.get("Created"))
    return Struct("*network.networkContext", {
        "ID": n["Id"][:12] if trunc else n["Id"],
        "Name": n["Name"],
        "Driver": n["Driver"],
        "Scope": n.get("Scope", "local"),
        "IPv4": "true" if n.get("EnableIPv4", True) else "false",
        "IPv6": "true" if n.get("EnableIPv6") else "false",
        "Internal": "true" if n.get("Internal") else "false",
        "Labels": _labels_text(labels),
        "Label": Method(lambda key: labels.get(key, ""), ("str",)),
        "CreatedAt": "0001-01-01 00:00:00 +0000 UTC" if created is None
        else go_time(created, utc=True, fraction=True),
    })


# ------------------------------------------------------------------------- rendering

def _unescape_format(text: str) -> str:
    r"""Docker's pre-format: the two-character sequences \t and \n become a tab and a
    newline (shells pass them on as typed)."""
    out = []
    i = 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in ("\\t", "\\n"):
            out.append("\t" if pair == "\\t" else "\n")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _header_label(name: str) -> str:
    """Docker's header for {{.Label "com.example.some-key"}}: "some key"."""
    return name.split(".")[-1].replace("-", " ").replace("_", " ")


def render(fmt: str, rows: "list[Struct]", headers: "dict[str, str]") -> str:
    """Rows through a --format, as Docker's formatter does: "json" is {{json .}} per
    row; "table ..." adds a header row (the template run on the column names) and
    aligns the tab-separated columns. All or nothing: TemplateError if any row fails."""
    from portway.core.gotemplate import HEADER_FUNCS, Method, Struct, Template, TemplateError

    table = fmt.startswith("table")
    text = "{{json .}}" if fmt == "json" else fmt[len("table"):] if table else fmt
    template = Template(_unescape_format(text.strip(" ")))
    body = "".join(template.execute(row) + "\n" for row in rows)
    if not table:
        return body
    header_context = Struct("formatter.SubHeaderContext",
                            {**headers, "Label": Method(_header_label, ("str",))},
                            lenient=True)
    try:
        header = template.execute(header_context, funcs=HEADER_FUNCS)
    except TemplateError as exc:  # Docker prints what the header made before it failed
        header = exc.partial
    return tabwrite(header + "\n" + body)


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Go's text/tabwriter with Docker's settings (minwidth 10, padding 3, spaces):
    tab-terminated cells of consecutive lines form a column as wide as its widest cell
    plus the padding; the text after a line's last tab is not part of any column."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write(line0: int, line1: int) -> None:
        for cells in lines[line0:line1]:
            parts = [cell.ljust(widths[j]) if j < len(widths) and j < len(cells) - 1
                     else cell for j, cell in enumerate(cells)]
            out.append("".join(parts))

    def block(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            block(line0, this)
            widths.pop()
            line0 = this
        write(line0, line1)

    block(0, len(lines))
    return "\n".join(out)


# --------------------------------------------------------------------------- filters

def parse_filters(specs: "list[str]", accepted: "tuple[str, ...]" = PS_FILTERS,
                  ) -> "dict[str, list[str]]":
    """--filter KEY=VALUE options (repeatable) by key; ListingError for a bad one."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key:
            raise ListingError(f"bad format of filter {spec!r} (expected name=value)",
                               f"give KEY=VALUE, KEY one of {', '.join(accepted)}")
        if key not in accepted:
            raise ListingError(f"invalid filter {key!r}",
                               f"filter by one of {', '.join(accepted)}")
        if key == "status" and value not in STATES:
            raise ListingError(f"invalid filter 'status={value}'",
                               f"a status is one of {', '.join(STATES)}")
        if key == "exited":
            try:
                int(value)
            except ValueError:
                raise ListingError(f"invalid filter 'exited={value}'",
                                   "give an exit code, as in exited=0") from None
        if key in ("publish", "expose"):
            port_keys(value, key)  # raises for a bad one
        if key == "type" and value not in ("custom", "builtin"):
            raise ListingError(f"invalid filter 'type'='{value}'",
                               "a network's type is custom or builtin")
        if key == "until":
            until_cutoff(value, 0.0)  # raises for a bad one
        if key == "dangling" and value.lower() not in ("true", "false", "1", "0"):
            raise ListingError(f"invalid filter 'dangling'='{value}'",
                               "give dangling=true or dangling=false")
        out.setdefault(key, []).append(value)
    return out


def until_cutoff(value: str, now: float) -> float:
    """Docker's until= of a prune filter, as seconds since the epoch: a Go duration back
    from now ("24h", "1h30m", "90s"), a Unix time ("1700000000", with a fraction too),
    or an RFC 3339 time or date ("2024-05-01T10:00:00Z", "2024-05-01", as UTC);
    ListingError otherwise."""
    import re

    text = value.strip()
    if re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", text):
        return now - sum(float(n) * _GO_UNITS[u] for n, _, u in
                         re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|h|m|s)", text))
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    stamp = parse_time(text + "T00:00:00Z" if re.fullmatch(r"\d{4}-\d\d-\d\d", text)
                       else text)
    if stamp is None:
        raise ListingError(f"invalid filter 'until={value}'",
                           "give a duration back from now (24h, 1h30m) or a time (a Unix "
                           "time, or 2024-05-01T10:00:00Z)")
    return stamp


def prune_selects(network: "dict[str, Any]", filters: "dict[str, list[str]]",
                  now: float) -> bool:
    """Whether a network that no container uses is pruned under filters: created before
    every until=, with every label= and without any label!= (KEY or KEY=VALUE).
    network: its Created (RFC 3339) and Labels."""
    created = parse_time(network.get("Created")) or 0.0
    labels = dict(network.get("Labels") or {})
    if any(created >= until_cutoff(u, now) for u in filters.get("until", [])):
        return False
    if not _match_labels(filters.get("label"), labels):
        return False
    return not any(_match_labels([item], labels) for item in filters.get("label!", []))


def port_keys(spec: str, key: str = "publish") -> "set[str]":
    """Docker's port filter value, PORT[-PORT][/PROTO] (tcp by default), as the keys of
    a container's port maps ("80/tcp"); ListingError for a bad one."""
    ports, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    low, dash, high = ports.partition("-")
    try:
        first, last = int(low), int(high) if dash else int(low)
    except ValueError:
        first = last = -1
    if proto not in ("tcp", "udp", "sctp") or not 0 < first <= last <= 65535:
        raise ListingError(f"invalid filter '{key}={spec}'",
                           f"give {key}=PORT[-PORT][/tcp|udp|sctp], as in {key}=80/tcp")
    return {f"{port}/{proto}" for port in range(first, last + 1)}


def created_between(rows: "list[dict[str, Any]]", known: "list[dict[str, Any]]",
                    refs: "dict[str, list[str]]") -> "list[dict[str, Any]]":
    """Of rows, those created before every container before= names and after every one
    since= names (looked up among known: all containers); ListingError for a name that
    is no container's."""
    before = [created_of(r, known, "before") for r in refs.get("before", [])]
    since = [created_of(r, known, "since") for r in refs.get("since", [])]

    def created(c: "dict[str, Any]") -> float:
        return parse_time(c.get("Created")) or 0.0

    return [c for c in rows if all(created(c) < t for t in before)
            and all(created(c) > t for t in since)]


def created_of(reference: str, containers: "list[dict[str, Any]]", key: str) -> float:
    """The creation time of the container a before=/since= filter names (by name, or by
    id or a prefix of it), among every container; ListingError if none is."""
    for c in containers:
        if reference in (name_of(c), str(c["Name"])) or str(c["Id"]).startswith(reference):
            return parse_time(c.get("Created")) or 0.0
    raise ListingError(f"no such container: {reference}",
                       f"{key}= takes a container's name or id ('portway ps -a')")


def _match(patterns: "list[str] | None", source: str) -> bool:
    """Docker's Args.Match: no pattern, or one equal to source, or one that as a regular
    expression matches somewhere in it (a pattern that does not compile matches
    nothing)."""
    if not patterns or source in patterns:
        return True
    import re

    for pattern in patterns:
        try:
            if re.search(pattern, source):
                return True
        except re.error:
            continue
    return False


def _match_labels(wanted: "list[str] | None", labels: "dict[str, str]") -> bool:
    """Docker's MatchKVList: every KEY or KEY=VALUE given is on the container."""
    for item in wanted or []:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _on_network(wanted: "list[str] | None", networks: "dict[str, Any]") -> bool:
    """On one of the networks given by name, or by a prefix of its id."""
    if not wanted:
        return True
    for value in wanted:
        if value in networks:
            return True
        if any(str((n or {}).get("NetworkID") or "").startswith(value)
               for n in networks.values()):
            return True
    return False


def wants_all(filters: "dict[str, list[str]]") -> bool:
    """A status filter shows stopped containers without -a, as in Docker."""
    return "status" in filters


def select(containers: "list[dict[str, Any]]", filters: "dict[str, list[str]]",
           last: int = -1) -> "list[dict[str, Any]]":
    """The containers ps shows: newest first, those that pass every filter key (values
    of one key: any of them; label: all of them, as Docker), at most `last` if > 0."""
    def created(c: "dict[str, Any]") -> float:
        return parse_time(c.get("Created")) or 0.0

    out: list[dict[str, Any]] = []
    for c in sorted(containers, key=created, reverse=True):
        name = str(c["Name"])
        if not (_match(filters.get("name"), name) or _match(filters.get("name"),
                                                            name.lstrip("/"))):
            continue
        if not _match(filters.get("id"), c["Id"]):
            continue
        if not _match_labels(filters.get("label"),
                             dict((c.get("Config") or {}).get("Labels") or {})):
            continue
        if last > 0 and len(out) == last:
            break
        state = c["State"]
        exited = filters.get("exited")
        if exited and (state.get("Running") or
                       str(state.get("ExitCode")) not in [str(int(v)) for v in exited]):
            continue
        if "status" in filters and state.get("Status") not in filters["status"]:
            continue
        if not _on_network(filters.get("network"),
                           c["NetworkSettings"].get("Networks") or {}):
            continue
        if not _on_ports(filters.get("publish"),
                         {k for k, v in (c["NetworkSettings"].get("Ports") or {}).items()
                          if v}):
            continue
        if not _on_ports(filters.get("expose"),
                         set((c.get("Config") or {}).get("ExposedPorts") or {})):
            continue
        out.append(c)
    return out


def _on_ports(wanted: "list[str] | None", ports: "set[str]") -> bool:
    """One of the ports (or ranges) given is among the container's."""
    return not wanted or any(port_keys(w) & ports for w in wanted)


def select_networks(networks: "list[dict[str, Any]]", filters: "dict[str, list[str]]",
                    ) -> "list[dict[str, Any]]":
    """The networks `network ls --filter` shows, as Docker's: name and driver as
    patterns, id by prefix, label KEY or KEY=VALUE, type custom|builtin (bridge, host
    and none are builtin), dangling: no container attached (builtin ones never are)."""
    out = []
    for n in networks:
        name, builtin = str(n["Name"]), n["Name"] in PREDEFINED
        if not _match(filters.get("name"), name):
            continue
        if not _match(filters.get("driver"), str(n.get("Driver", ""))):
            continue
        if filters.get("id") and not any(str(n["Id"]).startswith(v) for v in filters["id"]):
            continue
        if filters.get("scope") and n.get("Scope", "local") not in filters["scope"]:
            continue
        if not _match_labels(filters.get("label"), dict(n.get("Labels") or {})):
            continue
        if filters.get("type") and ("builtin" if builtin else "custom") not in filters["type"]:
            continue
        dangling = filters.get("dangling")
        if dangling:
            wanted = dangling[-1].lower() in ("true", "1")
            if wanted != (not builtin and not n.get("Containers")):
                continue
        out.append(n)
    return out
