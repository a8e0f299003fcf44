"""run's flags beyond networking, and the long and short --network forms, checked in the
pure core (core/runopts.py) with Docker's rules and wording; the /etc files they make;
port ranges and `port NAME PORT`; the log index behind `logs -t`."""

from __future__ import annotations

import ipaddress

import pytest

from portway.core import files, logs, runopts, validate
from portway.core.ports import format_mapping, parse_port_key, parse_port_specs
from portway.errors import InvalidInput
from portway.model.types import PortMapping


def test_network_forms() -> None:
    plan = runopts.parse_networks(["app", "name=db,alias=a,alias=b,ip=10.1.0.9,"
                                   "ip6=fd00::9,mac-address=02-42-AC-11-00-09"],
                                  aliases=["web"], mac="02:42:ac:11:00:02")
    assert plan.mode == "bridge"
    first, second = plan.requests
    assert (first.ref, first.aliases, first.mac) == ("app", ("web",), "02:42:ac:11:00:02")
    assert (second.ref, second.ips, second.aliases, second.mac) == \
        ("db", ("10.1.0.9", "fd00::9"), ("a", "b"), "02:42:ac:11:00:09")
    # --ip and friends go to the first network, as Docker applies them.
    assert runopts.parse_networks(["a", "b"], ip="10.0.0.5").requests[0].ips == ("10.0.0.5",)
    assert runopts.parse_networks([]).requests == (runopts.NetworkRequest(""),)
    assert runopts.parse_networks(["container:web"]) == \
        runopts.NetworkPlan("container", container="web")
    assert runopts.parse_networks(["host"]).mode == "host"


@pytest.mark.parametrize(("values", "kwargs", "message"), [
    (["app", "app"], {}, "specified multiple times"),
    (["host", "app"], {}, "cannot be combined"),
    (["container:web", "app"], {}, "--network container cannot be combined"),
    (["container:"], {}, "names no container"),
    (["none"], {"mac": "02:42:ac:11:00:02"}, "need a bridge network"),
    (["container:web"], {"aliases": ["x"]}, "not --network container"),
    (["name=app,alias=x"], {"aliases": ["y"]}, "both --alias and per-network alias"),
    (["name=app,ip=10.0.0.2"], {"ip": "10.0.0.3"}, "both --ip and per-network IPv4"),
    (["name=app,ip6=fd00::2"], {"ip6": "fd00::3"}, "both --ip6 and per-network IPv6"),
    (["name=app,mac-address=02:00:00:00:00:01"], {"mac": "02:00:00:00:00:02"},
     "both --mac-address"),
    (["name=app,color=red"], {}, "invalid field 'color'"),
    (["name=app,driver-opt=x=y"], {}, "not supported by portway"),
    (["alias=x"], {}, "has no name"),
    (["name=app,ip=fd00::2"], {}, "not an IPv4 address"),
    (["name=host,alias=x"], {}, "takes no options"),
    (["name=app,name=b"], {}, "gives name twice"),
])
def test_network_forms_refused(values: list[str], kwargs: dict[str, object],
                               message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        runopts.parse_networks(values, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("02:42:AC:11:00:02", "02:42:ac:11:00:02"),
    ("02-42-ac-11-00-02", "02:42:ac:11:00:02"),
])
def test_mac(text: str, expected: str) -> None:
    assert runopts.parse_mac(text) == expected


@pytest.mark.parametrize("text", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "02:42:ac:11:00",
                                  "02:42:ac:11:00:0g", "02:42-ac:11:00:02"])
def test_bad_mac(text: str) -> None:
    with pytest.raises(InvalidInput):
        runopts.parse_mac(text)


def test_env_labels_hosts() -> None:
    assert runopts.parse_env(["A=1", "B=", "C=x=y"]) == ("A=1", "B=", "C=x=y")
    for bad in (["A"], ["=1"], ["A=\0"]):
        with pytest.raises(InvalidInput):
            runopts.parse_env(bad)
    assert runopts.parse_labels(["a=1", "b", "a=2"]) == (("a", "2"), ("b", ""))
    assert runopts.parse_extra_hosts(["db:10.0.0.5", "v6=[fd00::5]", "six:fd00::6",
                                      "gw:host-gateway"]) == \
        (("db", "10.0.0.5"), ("v6", "fd00::5"), ("six", "fd00::6"), ("gw", "host-gateway"))
    for bad in ("db", "db:", ":10.0.0.5", "db:not-an-ip", "bad name:10.0.0.5"):
        with pytest.raises(InvalidInput):
            runopts.parse_extra_hosts([bad])
    gateways = [ipaddress.ip_address("10.7.0.1"), ipaddress.ip_address("fd00:7::1")]
    assert runopts.resolve_extra_hosts((("gw", "host-gateway"), ("db", "10.0.0.5")),
                                       gateways) == \
        [("gw", "10.7.0.1"), ("gw", "fd00:7::1"), ("db", "10.0.0.5")]


def test_dns_search_and_options() -> None:
    assert runopts.parse_dns_search([]) is None
    assert runopts.parse_dns_search(["."]) == ()
    assert runopts.parse_dns_search(["example.com", "corp.example."]) == \
        ("example.com", "corp.example.")
    assert runopts.parse_dns_options(["ndots:2", "edns0"]) == ("ndots:2", "edns0")
    for bad in (["bad domain"], [".", "example.com"]):
        with pytest.raises(InvalidInput):
            runopts.parse_dns_search(bad)
    with pytest.raises(InvalidInput):
        runopts.parse_dns_options(["ndots 2"])


def test_sysctls() -> None:
    assert runopts.parse_sysctls(["net.ipv4.ip_unprivileged_port_start=0",
                                  "net/ipv4/conf/eth0.100/forwarding=1"], "bridge") == \
        (("net.ipv4.ip_unprivileged_port_start", "0"),
         ("net/ipv4/conf/eth0.100/forwarding", "1"))
    assert runopts.sysctl_path("net.ipv4.conf.eth0.forwarding") == "net/ipv4/conf/eth0/forwarding"
    assert runopts.sysctl_path("net/ipv4/conf/eth0.100/forwarding") == \
        "net/ipv4/conf/eth0.100/forwarding"
    cases = [("kernel.shmmax=1", "bridge", "not in a separate kernel namespace"),
             ("vm.swappiness=1", "bridge", "not in a separate kernel namespace"),
             ("net.ipv4.ip_forward=1", "host", "not allowed with --network host"),
             ("net.ipv4..x=1", "bridge", "invalid sysctl name"),
             ("net/../../etc=1", "bridge", "invalid sysctl name"),
             ("net.ipv4.ip_forward", "bridge", "invalid --sysctl"),
             ("net.ipv4.ip_forward=", "bridge", "invalid value")]
    for item, mode, message in cases:
        with pytest.raises(InvalidInput, match=message):
            runopts.parse_sysctls([item], mode)  # type: ignore[arg-type]


def test_expose_and_workdir() -> None:
    assert runopts.parse_expose(["80", "53/udp", "7000-7002", "80/tcp"]) == \
        ((80, "tcp"), (53, "udp"), (7000, "tcp"), (7001, "tcp"), (7002, "tcp"))
    for bad in ("http", "80/dccp", "0", "9-8"):
        with pytest.raises(InvalidInput):
            runopts.parse_expose([bad])
    assert runopts.check_workdir("/srv/./www/") == "/srv/www"
    with pytest.raises(InvalidInput, match="needs to be an absolute path"):
        runopts.check_workdir("srv")


def test_host_port_ranges_and_port_keys() -> None:
    (one,) = parse_port_specs(["8000-8010:80"])
    assert one == PortMapping(container_port=80, host_port=8000, host_port_end=8010)
    assert format_mapping(one) == "0.0.0.0:8000-8010->80/tcp"
    assert len(parse_port_specs(["8000-8001:80-81"])) == 2
    with pytest.raises(InvalidInput, match="differ in length"):
        parse_port_specs(["8000-8010:80-81"])
    # Two containers' ranges may overlap: each takes a free port of its own.
    assert len(parse_port_specs(["8000-8010:80", "8000-8010:81"])) == 2
    assert parse_port_key("80") == (80, "tcp") and parse_port_key("53/UDP") == (53, "udp")
    for bad in ("x", "0", "80/dccp", "70000"):
        with pytest.raises(InvalidInput):
            parse_port_key(bad)


def test_etc_files_with_the_new_flags() -> None:
    hosts = files.render_hosts("box", "web", [ipaddress.ip_address("10.0.0.2")],
                               "example.com", [("db", "10.0.0.9")])
    assert hosts.splitlines()[2:] == ["10.0.0.9\tdb", "10.0.0.2\tbox.example.com box web"]
    host_resolv = "nameserver 1.1.1.1\nsearch corp\noptions ndots:1\n"
    assert files.container_resolv_conf(host_resolv, "10.0.0.1") == \
        "nameserver 10.0.0.1\nsearch corp\noptions ndots:1\n"
    assert files.container_resolv_conf(host_resolv, "10.0.0.1", ("a.example",),
                                       ("ndots:3", "edns0")) == \
        "nameserver 10.0.0.1\nsearch a.example\noptions ndots:3 edns0\n"
    assert files.container_resolv_conf(host_resolv, "10.0.0.1", (), ()) == \
        "nameserver 10.0.0.1\n"
    assert files.append_hosts("127.0.0.1 localhost", [("gw", "127.0.0.1")]) == \
        "127.0.0.1 localhost\n127.0.0.1\tgw\n"


def test_aux_addresses_and_bridge_names() -> None:
    plan = validate.plan_subnets(["10.5.0.0/24", "fd00:5::/64"], [], [], True, True,
                                 ["router=10.5.0.5", "router6=fd00:5::5"])
    assert [p.aux_addresses for p in plan] == \
        [(("router", ipaddress.ip_address("10.5.0.5")),),
         (("router6", ipaddress.ip_address("fd00:5::5")),)]
    cases = [(["r=10.6.0.5"], "in no --subnet"), (["r=10.5.0.1"], "gateway"),
             (["r=10.5.0.255"], "broadcast"), (["r"], "invalid --aux-address"),
             (["r=10.5.0.5", "r=10.5.0.6"], "given twice"),
             (["r=10.5.0.5", "s=10.5.0.5"], "given twice")]
    for aux, message in cases:
        with pytest.raises(InvalidInput, match=message):
            validate.plan_subnets(["10.5.0.0/24"], [], [], True, False, aux)
    with pytest.raises(InvalidInput, match="in no --subnet"):
        validate.plan_subnets([], [], [], True, False, ["r=10.5.0.5"])
    opts = {"com.docker.network.bridge.name": "br-lab"}
    assert validate.check_options(opts) == opts
    for bad in ("", "a" * 16, "br lab", "../x"):
        with pytest.raises(InvalidInput, match="invalid bridge name"):
            validate.check_options({"com.docker.network.bridge.name": bad})


def test_log_index_tail_and_timestamps() -> None:
    index = logs.parse_index("6 1000000000\n12 2000000001\ngarbage\n12 3\n")
    assert index.sizes == (6, 12)
    data = b"hello\nworld\nnew"
    assert logs.tail_start(data, 1) == 12 and logs.tail_start(data, 2) == 6
    assert logs.tail_start(data, 9) == 0 and logs.tail_start(data, 0) == len(data)
    assert logs.tail_start(b"a\nb\n", 1) == 2
    text = logs.render(data, 0, index, now_ns=5_000_000_000)
    assert text.splitlines() == ["1970-01-01T00:00:01.000000000Z hello",
                                 "1970-01-01T00:00:02.000000001Z world",
                                 "1970-01-01T00:00:05.000000000Z new"]
    # From an offset, lines keep their own times; \r is no line end (Docker's split).
    assert logs.render(b"world\n", 6, index, 0) == "1970-01-01T00:00:02.000000001Z world\n"
    assert logs.render(b"a\rb\n", 0, index, 0).count("Z ") == 1
    assert logs.render(data, 0, None, 0) == "hello\nworld\nnew"
    assert logs.parse_tail("all") is None and logs.parse_tail("3") == 3
    with pytest.raises(InvalidInput, match="invalid --tail"):
        logs.parse_tail("-1")


def test_sctp_ports_as_docker_reads_them() -> None:
    """Docker publishes and exposes SCTP ports (`-p 9132:80/sctp`, `--expose 80/sctp`),
    the protocol in any case."""
    (one,) = parse_port_specs(["9132:80/SCTP"])
    assert (one.protocol, one.host_port, one.container_port) == ("sctp", 9132, 80)
    assert format_mapping(one) == "0.0.0.0:9132->80/sctp"
    assert runopts.parse_expose(["80/sctp"]) == ((80, "sctp"),)
    assert parse_port_key("80/sctp") == (80, "sctp")
    with pytest.raises(InvalidInput, match="unsupported protocol 'dccp'") as exc:
        parse_port_specs(["80/dccp"])
    assert exc.value.hint == "use tcp, udp or sctp"
