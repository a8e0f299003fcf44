"""What ps and network ls show, as Docker's CLI shows it: status text and humanised
durations, the ports column, --format placeholders and tables, and ps's --filter."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from portway.core import listing
from portway.core.gotemplate import TemplateError

NOW = listing.parse_time("2026-03-01T12:00:00Z")
assert NOW is not None


def iso(seconds_ago: float) -> str:
    at = NOW - seconds_ago  # type: ignore[operator]
    fraction = f"{at % 1:.6f}"[1:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + fraction + "Z"


def container(name: str, status: str = "running", created: float = 60,
              started: float | None = 30, finished: float | None = None, code: int = 0,
              labels: dict[str, str] | None = None, networks: tuple[str, ...] = ("bridge",),
              ports: dict[str, Any] | None = None, cid: str = "",
              exposed: dict[str, Any] | None = None) -> dict[str, Any]:
    cid = cid or (name.encode().hex() * 64)[:64]
    return {
        "Id": cid, "Name": f"/{name}", "Created": iso(created), "Path": "sleep",
        "Args": ["300", "a b"],
        "State": {"Status": status, "Running": status == "running", "ExitCode": code,
                  "StartedAt": iso(started) if started is not None else listing.ZERO_TIME,
                  "FinishedAt": iso(finished) if finished is not None else listing.ZERO_TIME},
        "Config": {"Labels": labels or {}, "ExposedPorts": exposed},
        "NetworkSettings": {"Ports": ports or {},
                            "Networks": {n: {"NetworkID": (n.encode().hex() * 64)[:64],
                                             "IPAddress": ""}
                                         for n in networks}},
    }


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "Less than a second"), (0.9, "Less than a second"), (1, "1 second"),
    (59, "59 seconds"), (60, "About a minute"), (119, "About a minute"), (120, "2 minutes"),
    (3599, "59 minutes"), (3600, "About an hour"), (5399, "About an hour"),
    (5400, "2 hours"), (47 * 3600, "47 hours"), (48 * 3600, "2 days"),
    (13 * 86400, "13 days"), (14 * 86400, "2 weeks"), (59 * 86400, "8 weeks"),
    (60 * 86400, "2 months"), (729 * 86400, "24 months"), (730 * 86400, "2 years"),
])
def test_human_durations_as_docker(seconds: float, text: str) -> None:
    assert listing.human_duration(seconds) == text


@pytest.mark.parametrize(("c", "text"), [
    (container("a", started=300), "Up 5 minutes"),
    (container("a", started=0.2), "Up Less than a second"),
    (container("a", "exited", started=100, finished=3, code=137), "Exited (137) 3 seconds ago"),
    (container("a", "exited", started=9000, finished=7200), "Exited (0) 2 hours ago"),
    (container("a", "created", started=None), "Created"),
    (container("a", "exited", started=None, finished=None), "Exited (0)"),
])
def test_status_as_docker(c: dict[str, Any], text: str) -> None:
    assert listing.status_text(c, NOW) == text  # type: ignore[arg-type]


def test_parse_time() -> None:
    assert listing.parse_time("1970-01-01T00:00:01.5Z") == 1.5
    assert listing.parse_time("1970-01-01T01:00:00+01:00") == 0
    assert listing.parse_time("2024-02-29T00:00:00Z") == 1709164800
    for nothing in ("", None, listing.ZERO_TIME, "garbage", "2024-13-01T00:00:00Z"):
        assert listing.parse_time(nothing) is None


@pytest.mark.parametrize(("ports", "text"), [
    ({}, ""),
    ({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}, "0.0.0.0:8080->80/tcp"),
    ({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]},
     "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp"),
    ({f"{p}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(p)}] for p in (9000, 9001, 9002)},
     "0.0.0.0:9000-9002->9000-9002/tcp"),
    ({"53/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}], "80/tcp": None},
     "127.0.0.1:53->53/udp, 80/tcp"),
])
def test_ports_column_as_docker(ports: dict[str, Any], text: str) -> None:
    assert listing.display_ports(ports) == text


def test_container_placeholders() -> None:
    c = container("web", started=300, labels={"b": "2", "a": "1"},
                  networks=("bridge", "app"),
                  ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]})
    ctx = listing.container_context(c, NOW)  # type: ignore[arg-type]
    out = listing.render("{{.ID}}|{{.Names}}|{{.Image}}|{{.Command}}|{{.RunningFor}}|"
                         "{{.Status}}|{{.State}}|{{.Ports}}|{{.Labels}}|{{.Label \"b\"}}|"
                         "{{.Networks}}|{{.Size}}", [ctx], listing.CONTAINER_HEADERS)
    assert out == (f"{c['Id'][:12]}|web||\"sleep 300 'a b'\"|About a minute ago|Up 5 minutes|"
                   "running|0.0.0.0:8080->80/tcp|a=1,b=2|2|app,bridge|0B\n")
    created = time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(NOW - 60))  # type: ignore[operator]
    assert listing.render("{{.CreatedAt}}", [ctx], {}) == created + "\n"
    # Commands longer than 20 characters are cut with an ellipsis, unless --no-trunc.
    c["Args"] = ["-c", "while true; do sleep 1; done"]
    assert listing.render("{{.Command}}", [listing.container_context(c, NOW)], {}) == \
        '"sleep -c \'while tru…"\n'
    full = listing.container_context(c, NOW, trunc=False)  # type: ignore[arg-type]
    assert listing.render("{{.ID}} {{.Command}}", [full], {}) == \
        f"{c['Id']} \"sleep -c 'while true; do sleep 1; done'\"\n"
    row = json.loads(listing.render("json", [ctx], {}))
    assert row["Names"] == "web" and row["Status"] == "Up 5 minutes" and "Label" not in row


def test_tables_as_docker() -> None:
    rows = [listing.container_context(c, NOW)  # type: ignore[arg-type]
            for c in (container("web", cid="a" * 64), container("database", cid="b" * 64))]
    out = listing.render("table {{.ID}}\\t{{.Names}}\\t{{.Status}}", rows,
                         listing.CONTAINER_HEADERS)
    assert out == ("CONTAINER ID   NAMES      STATUS\n"
                   "aaaaaaaaaaaa   web        Up 30 seconds\n"
                   "bbbbbbbbbbbb   database   Up 30 seconds\n")
    # No rows: the header alone; Docker's functions leave the header as it is.
    assert listing.render("table {{upper .Names}}: {{.Label \"com.x.some-key\"}}", [],
                          listing.CONTAINER_HEADERS) == "NAMES: some key\n"
    # A header that cannot be made shows what it made before failing (as Docker).
    assert listing.render("table {{json .}}", rows[:1], listing.CONTAINER_HEADERS) \
        .startswith("\n{")
    with pytest.raises(TemplateError, match="can't evaluate field Bogus"):
        listing.render("{{.Bogus}}", rows, listing.CONTAINER_HEADERS)


def test_tabwriter_elastic_columns() -> None:
    # Go's tabwriter: a column is as wide as its widest cell + 3 (at least 10); the text
    # after a line's last tab is not in a column; a column ends where a line lacks it.
    assert listing.tabwrite("a\tb\tc\nlonger-cell\tx\ty\n") == \
        "a             b         c\nlonger-cell   x         y\n"
    assert listing.tabwrite("a\tb\nno tab here\nc\td\n") == \
        "a         b\nno tab here\nc         d\n"


def test_network_placeholders() -> None:
    n = {"Id": "f" * 64, "Name": "app", "Driver": "bridge", "Scope": "local",
         "EnableIPv6": True, "EnableIPv4": True, "Internal": False, "Labels": {"x": "y"},
         "Created": "2026-03-01T12:00:00.250000Z"}
    ctx = listing.network_context(n)
    assert listing.render("{{.ID}} {{.Name}} {{.Driver}} {{.Scope}} {{.IPv4}} {{.IPv6}} "
                          "{{.Internal}} {{.Labels}} {{.Label \"x\"}} {{.CreatedAt}}", [ctx],
                          listing.NETWORK_HEADERS) == \
        "ffffffffffff app bridge local true true false x=y y 2026-03-01 12:00:00.25 +0000 UTC\n"
    assert listing.render("table {{.Name}}\\t{{.Driver}}", [ctx], listing.NETWORK_HEADERS) == \
        "NAME      DRIVER\napp       bridge\n"


# ------------------------------------------------------------------------- filters

PEOPLE = [
    container("web", created=30, labels={"team": "web", "tier": "front"},
              networks=("app",), cid="1" * 64,
              ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                     "443/tcp": None}),
    container("web-old", "exited", created=3000, started=2000, finished=1000, code=137,
              labels={"team": "web"}, networks=("app",), cid="2" * 64),
    container("db", created=60, labels={"team": "data"}, networks=("back", "app"),
              cid="3" * 64, ports={"53/udp": [{"HostIp": "", "HostPort": "5353"}]},
              exposed={"5432/tcp": {}}),
    container("job", "exited", created=90, started=80, finished=70, code=0, cid="4" * 64),
    container("new", "created", created=10, started=None, networks=(), cid="5" * 64),
]


def names(filters: list[str], last: int = -1) -> list[str]:
    chosen = listing.select(PEOPLE, listing.parse_filters(filters), last)
    return [listing.name_of(c) for c in chosen]


@pytest.mark.parametrize(("filters", "expected"), [
    ([], ["new", "web", "db", "job", "web-old"]),  # newest first
    (["name=web"], ["web", "web-old"]),  # a match anywhere, as Docker's regexp match
    (["name=^web$"], ["web"]),
    (["name=^/web$"], ["web"]),
    (["name=web", "name=db"], ["web", "db", "web-old"]),  # one key twice: either
    (["name=[unclosed"], []),
    (["status=exited"], ["job", "web-old"]),
    (["status=exited", "status=created"], ["new", "job", "web-old"]),
    (["status=running", "label=team=web"], ["web"]),  # different keys: both
    (["label=team"], ["web", "db", "web-old"]),
    (["label=team=web", "label=tier=front"], ["web"]),  # labels: all of them, as Docker
    (["label=team=web", "label=tier"], ["web"]),
    (["network=back"], ["db"]),
    (["network=app", "network=back"], ["web", "db", "web-old"]),
    (["network=6261636b"], ["db"]),  # the start of a network id (back's)
    (["id=" + "3" * 12], ["db"]),
    (["id=" + "3" * 64], ["db"]),
    (["exited=137"], ["web-old"]),
    (["exited=0", "status=exited"], ["job"]),
    (["NAME = db "], ["db"]),  # keys are case-insensitive, spaces trimmed (Docker)
    (["publish=80"], ["web"]),  # a container port with a host binding, tcp by default
    (["publish=80/tcp"], ["web"]),
    (["publish=53/udp"], ["db"]),
    (["publish=50-90"], ["web"]),  # a range
    (["publish=81"], []),
    (["publish=5432"], []),  # exposed, not published
    (["expose=5432"], ["db"]),
    (["expose=5000-6000/tcp", "publish=80"], []),  # different keys: both
    (["publish=80", "publish=53/udp"], ["web", "db"]),
])
def test_filters_as_docker(filters: list[str], expected: list[str]) -> None:
    assert names(filters) == expected


def test_last_and_latest() -> None:
    assert names([], last=2) == ["new", "web"]
    assert names(["status=exited"], last=1) == ["job"]
    assert names(["label=team"], last=2) == ["web", "db"]


@pytest.mark.parametrize(("spec", "message"), [
    ("name", "bad format of filter 'name' (expected name=value)"),
    ("=x", "bad format of filter"),
    ("ancestor=ubuntu", "invalid filter 'ancestor'"),
    ("status=sleeping", "invalid filter 'status=sleeping'"),
    ("exited=x", "invalid filter 'exited=x'"),
    ("publish=http", "invalid filter 'publish=http'"),
    ("publish=90-80", "invalid filter 'publish=90-80'"),
    ("expose=80/icmp", "invalid filter 'expose=80/icmp'"),
    ("publish=70000", "invalid filter 'publish=70000'"),
])
def test_bad_filters(spec: str, message: str) -> None:
    with pytest.raises(listing.ListingError) as err:
        listing.parse_filters([spec])
    assert message in err.value.message and err.value.hint


def test_status_filter_shows_stopped_ones() -> None:
    assert listing.wants_all(listing.parse_filters(["status=exited"]))
    assert not listing.wants_all(listing.parse_filters(["name=x"]))


@pytest.mark.parametrize(("refs", "everything", "expected"), [
    ({"before": ["db"]}, True, ["job", "web-old"]),
    ({"since": ["db"]}, True, ["new", "web"]),
    ({"since": ["db"]}, False, ["web"]),  # without -a, running ones only
    ({"since": ["web-old"], "before": ["web"]}, True, ["db", "job"]),
    ({"before": ["4" * 12]}, True, ["web-old"]),  # by id, or the start of one
    ({"since": ["/job"]}, True, ["new", "web", "db"]),
])
def test_before_and_since(refs: dict[str, list[str]], everything: bool,
                          expected: list[str]) -> None:
    rows = [c for c in PEOPLE if everything or c["State"]["Running"]]
    chosen = listing.select(listing.created_between(rows, PEOPLE, refs), {})
    assert [listing.name_of(c) for c in chosen] == expected


def test_before_a_container_that_is_not_there() -> None:
    with pytest.raises(listing.ListingError) as err:
        listing.created_between(PEOPLE, PEOPLE, {"before": ["ghost"]})
    assert err.value.message == "no such container: ghost" and "before=" in err.value.hint


NETWORKS = [
    {"Name": "bridge", "Id": "a" * 64, "Driver": "bridge", "Scope": "local",
     "Labels": {}, "Containers": {}},
    {"Name": "host", "Id": "b" * 64, "Driver": "host", "Scope": "local", "Labels": {},
     "Containers": {}},
    {"Name": "none", "Id": "c" * 64, "Driver": "null", "Scope": "local", "Labels": {},
     "Containers": {}},
    {"Name": "app", "Id": "d" * 64, "Driver": "bridge", "Scope": "local",
     "Labels": {"env": "prod"}, "Containers": {"1" * 64: {}}},
    {"Name": "spare", "Id": "e" * 64, "Driver": "bridge", "Scope": "local",
     "Labels": {"env": "test"}, "Containers": {}},
]


@pytest.mark.parametrize(("filters", "expected"), [
    ([], ["bridge", "host", "none", "app", "spare"]),
    (["name=app"], ["app"]),
    (["name=^(app|spare)$"], ["app", "spare"]),
    (["name=a"], ["app", "spare"]),  # a match anywhere, as Docker
    (["driver=bridge"], ["bridge", "app", "spare"]),
    (["driver=null"], ["none"]),
    (["id=ddd"], ["app"]),
    (["label=env"], ["app", "spare"]),
    (["label=env=test"], ["spare"]),
    (["type=builtin"], ["bridge", "host", "none"]),
    (["type=custom"], ["app", "spare"]),
    (["dangling=true"], ["spare"]),  # builtin ones never dangle
    (["dangling=false"], ["bridge", "host", "none", "app"]),
    (["scope=swarm"], []),
    (["driver=bridge", "dangling=1", "label=env"], ["spare"]),
])
def test_network_filters_as_docker(filters: list[str], expected: list[str]) -> None:
    chosen = listing.select_networks(
        NETWORKS, listing.parse_filters(filters, listing.NETWORK_FILTERS))
    assert [n["Name"] for n in chosen] == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("type=user", "invalid filter 'type'='user'"),
    ("dangling=maybe", "invalid filter 'dangling'='maybe'"),
    ("status=running", "invalid filter 'status'"),
])
def test_bad_network_filters(spec: str, message: str) -> None:
    with pytest.raises(listing.ListingError) as err:
        listing.parse_filters([spec], listing.NETWORK_FILTERS)
    assert message in err.value.message and err.value.hint
