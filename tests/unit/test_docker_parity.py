"""What a Docker user meets on one host, checked on fakes of the store and the kernel
(tests/unit/fakes.py): Docker's own documentation pages as the reference."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from fakes import container_named, fake_host, rows

from portway.core import validate
from portway.errors import InvalidInput

ICC = "com.docker.network.bridge.enable_icc"
MASQ = "com.docker.network.bridge.enable_ip_masquerade"
MTU = "com.docker.network.driver.mtu"


def subnet4(net: object) -> str:
    return str(net.of_version(4).subnet)  # type: ignore[attr-defined]


def test_the_default_network_keeps_dockers_first_block(tmp_path: Path) -> None:
    """Docker's default bridge is 172.17.0.0/16 and user networks begin at 172.18: a
    user network made before portway's default one (made on first use) leaves it be."""
    h, _ = fake_host(str(tmp_path))
    assert subnet4(h.networks.create("app")) == "172.18.0.0/16"
    assert subnet4(h.networks.default()) == "172.17.0.0/16"
    assert subnet4(h.networks.create("db")) == "172.19.0.0/16"


def test_a_user_network_takes_the_default_block_only_when_nothing_else_is_free(
        tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    for n in list(range(18, 32)):
        h.networks.create(f"n{n}", subnet=f"172.{n}.0.0/16")
    h.networks.create("lan", subnet="192.168.0.0/16")
    assert subnet4(h.networks.create("last")) == "172.17.0.0/16"


def test_an_overlay_or_given_subnet_is_not_held_back(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    assert subnet4(h.networks.create("mine", subnet="172.17.0.0/16")) == "172.17.0.0/16"
    # The default network then takes the next free block.
    assert ipaddress.ip_network(subnet4(h.networks.default())) != \
        ipaddress.ip_network("172.17.0.0/16")


@pytest.mark.parametrize(("given", "kept"), [
    ("0", "false"), ("f", "false"), ("FALSE", "false"), ("False", "false"),
    ("1", "true"), ("t", "true"), ("TRUE", "true"), ("true", "true")])
def test_boolean_options_take_gos_spellings(given: str, kept: str) -> None:
    """Docker reads enable_icc and enable_ip_masquerade with strconv.ParseBool."""
    assert validate.check_options({ICC: given, MASQ: given}) == {ICC: kept, MASQ: kept}


def test_a_boolean_option_spelled_in_go_acts(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    net = h.networks.create("quiet", options=[f"{ICC}=0", f"{MASQ}=F"])
    assert net.options == {ICC: "false", MASQ: "false"}


@pytest.mark.parametrize("bad", ["maybe", "yes", "no", "2", ""])
def test_other_boolean_spellings_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="must be one of true, false"):
        validate.check_options({ICC: bad})


def test_mtu_given_twice_must_agree(tmp_path: Path) -> None:
    h, w = fake_host(str(tmp_path))
    with pytest.raises(InvalidInput, match="disagree"):
        h.networks.create("a", mtu="1400", options=[f"{MTU}=1300"])
    assert w.log == [] and rows(h) == (0, 0, 0)
    net = h.networks.create("b", mtu="1400", options=[f"{MTU}=1400"])
    assert net.mtu == 1400


def test_default_binding_of_a_network() -> None:
    from portway.core.ports import default_binding, parse_port_specs

    ports = parse_port_specs(["8080:80", "10.0.0.5:8081:80", "[::]:8082:80"])
    key = "com.docker.network.bridge.host_binding_ipv4"

    def hosts(options: dict[str, str]) -> list[str | None]:
        return [str(p.host_ip) if p.host_ip else None
                for p in default_binding(ports, options)]

    assert hosts({}) == [None, "10.0.0.5", "::"]
    assert hosts({key: "127.0.0.1"}) == ["127.0.0.1", "10.0.0.5", "::"]
    assert hosts({key: "::"}) == ["::", "10.0.0.5", "::"]
    assert hosts({key: "0.0.0.0"}) == [None, "10.0.0.5", "::"]  # both families
    for bad in ("localhost", "fe80::1", "::ffff:10.0.0.1", "10.0.0.0/8"):
        with pytest.raises(InvalidInput):
            validate.check_options({key: bad})


def test_default_binding_of_a_family_the_network_lacks() -> None:
    """Refused where the network has no subnet of the address's family, but ::1 (relayed
    to either) and 0.0.0.0 (every address of the families it has)."""
    key = "com.docker.network.bridge.host_binding_ipv4"
    for value, versions in (("::", {4}), ("2001:db8::1", {4}), ("127.0.0.1", {6}),
                            ("198.51.100.1", {6})):
        with pytest.raises(InvalidInput) as exc:
            validate.check_host_binding_family({key: value}, versions, "app")
        family = "IPv6" if ":" in value else "IPv4"
        assert exc.value.message == f"{key} {value} is an {family} address, but network " \
            f"app has no {family} (no port could be published on it)"
    for value, versions in (("::1", {4}), ("0.0.0.0", {6}), ("::", {4, 6}),
                            ("127.0.0.1", {4}), ("::", {6})):
        validate.check_host_binding_family({key: value}, versions, "app")
    validate.check_host_binding_family({}, {4}, "app")


OFF = "net.ipv6.conf.all.disable_ipv6=1"


def test_a_container_with_ipv6_off_gets_no_ipv6_address(tmp_path: Path) -> None:
    """Docker 27: --sysctl net.ipv6.conf.all.disable_ipv6=1 on a dual-stack network
    gives no IPv6 address (so /etc/hosts, DNS and published ports name none)."""
    h, _ = fake_host(str(tmp_path))
    h.networks.create("dual", ipv6=True)
    h.networks.create("six", ipv6=True, ipv4=False)
    h.containers.run(["sleep", "1"], name="off", networks=["dual"], sysctls=[OFF],
                     detach=True)
    h.containers.run(["sleep", "1"], name="on", networks=["dual"], detach=True)
    h.containers.run(["sleep", "1"], name="eth0", networks=["dual"], detach=True,
                     sysctls=["net.ipv6.conf.eth0.disable_ipv6=1"])
    h.containers.run(["sleep", "1"], name="again", networks=["dual"], detach=True,
                     sysctls=[OFF, "net.ipv6.conf.all.disable_ipv6=0"])

    def versions(name: str) -> list[int]:
        c = h.store.find_container(name)
        assert c is not None
        return [a.version for e in h.store.endpoints(container_id=c.id)
                for a in e.addresses]

    assert versions("off") == [4] and versions("eth0") == [4]
    assert versions("on") == [4, 6] and versions("again") == [4, 6]
    before = rows(h)
    for networks, extra in ((["six"], {}), (["dual"], {"ip6": "fd00::9"})):
        with pytest.raises(InvalidInput, match="turns IPv6 off on eth0"):
            h.containers.run(["sleep", "1"], networks=networks, sysctls=[OFF],
                             detach=True, **extra)
    assert rows(h) == before
    # network connect: the same.
    with pytest.raises(InvalidInput, match="IPv6 alone"):
        h.containers.connect("six", "off")
    assert rows(h) == before


def test_until_takes_dockers_durations_and_times() -> None:
    from portway.core.listing import ListingError, until_cutoff

    now = 1_700_000_000.0
    assert until_cutoff("24h", now) == now - 86400
    assert until_cutoff("1h30m", now) == now - 5400
    assert until_cutoff("90s", now) == now - 90
    assert until_cutoff("1500ms", now) == now - 1.5
    assert until_cutoff("1600000000", now) == 1_600_000_000
    assert until_cutoff("2024-05-01T10:00:00Z", now) == 1714557600
    assert until_cutoff("2024-05-01", now) == 1714521600
    for bad in ("", "yesterday", "10d", "-1h", "2024-13-01"):
        with pytest.raises(ListingError):
            until_cutoff(bad, now)


def test_network_prune_filters(tmp_path: Path) -> None:
    """network prune --filter until=, label=, label!= (Docker's), all of them must hold."""
    h, _ = fake_host(str(tmp_path))
    h.networks.create("a", labels=["team=a"])
    h.networks.create("b", labels=["team=b", "keep"])
    h.networks.create("c")
    with pytest.raises(InvalidInput, match="invalid filter 'until=soon'"):
        h.networks.prune(["until=soon"])
    with pytest.raises(InvalidInput, match="invalid filter 'name'"):
        h.networks.prune(["name=a"])
    # Made just now: none is older than an hour.
    assert h.networks.prune(["until=1h"]) == []
    assert h.networks.prune(["label=team=a"]) == ["a"]
    assert h.networks.prune(["label!=keep", "until=2100-01-01"]) == ["c"]
    assert h.networks.prune(["label=team"]) == ["b"]


def test_a_network_label_may_be_a_bare_key(tmp_path: Path) -> None:
    """docker network create --label KEY: an empty value, as run's --label."""
    h, _ = fake_host(str(tmp_path))
    assert h.networks.create("a", labels=["keep", "team=b"]).labels == \
        {"keep": "", "team": "b"}
    with pytest.raises(InvalidInput, match="invalid --label key"):
        h.networks.create("b", labels=["bad key"])


def test_hosts_of_a_container_with_ipv6_off(tmp_path: Path) -> None:
    """Its /etc/hosts names no IPv6 address: no ::1 localhost (lo has none) and an IPv4
    host-gateway alone, as Docker writes it; the control keeps both."""
    h, w = fake_host(str(tmp_path))
    h.networks.create("dual", ipv6=True)
    for name, sysctls in (("off", [OFF]), ("on", [])):
        h.containers.run(["sleep", "1"], name=name, networks=["dual"], sysctls=sysctls,
                         add_hosts=["gw:host-gateway"], detach=True)
    hosts = {}
    for name in ("off", "on"):
        c = h.store.find_container(name)
        assert c is not None
        hosts[name] = w.etc[c.netns]["hosts"]
    assert "::1" not in hosts["off"] and ":" not in hosts["off"]
    assert hosts["off"].count("\tgw\n") == 1
    assert "::1\tlocalhost" in hosts["on"] and hosts["on"].count("\tgw\n") == 2


def test_a_renumbered_container_with_ipv6_off_stays_without(tmp_path: Path) -> None:
    """An overlay container whose address another host took while its host was away is
    given a new one: of IPv4 alone, when its --sysctl turns IPv6 off."""
    from test_overlay_orchestration import two_hosts

    from portway.core import overlay

    etcd, (a, b) = two_hosts(tmp_path)
    a.networks.create("ov", driver="overlay", subnet=["10.200.0.0/24", "fd00:200::/64"],
                      ipv6=True)
    assert a.cluster is not None and b.cluster is not None
    b.cluster._snapshot(*etcd.range(overlay.PREFIX))
    b.containers.run(["sleep", "1"], name="off", networks=["ov"], sysctls=[OFF],
                     detach=True)
    (before,) = b.store.endpoints()
    assert [x.version for x in before.addresses] == [4]
    etcd.expire(b.cluster.lease)
    a.cluster._snapshot(*etcd.range(overlay.PREFIX))
    a.containers.run(["sleep", "1"], name="taker", networks=["ov"],
                     ip=str(before.addresses[0].ip), detach=True)
    b.cluster._join()
    (after,) = b.store.endpoints()
    assert after.addresses != before.addresses
    assert [x.version for x in after.addresses] == [4]


@pytest.mark.parametrize(("sysctls", "ifname", "off"), [
    ((("net.ipv6.conf.all.disable_ipv6", "1"),), "eth1", True),
    ((("net.ipv6.conf.eth0.disable_ipv6", "1"),), "eth1", False),
    # default: turned on again for an interface given an IPv6 address (as Docker does)
    ((("net.ipv6.conf.default.disable_ipv6", "1"),), "eth1", False),
    ((("net.ipv6.conf.default.disable_ipv6", "1"),), "lo", False),
    ((("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.eth0.disable_ipv6", "0")),
     "eth0", False),
])
def test_which_interfaces_have_ipv6_off(sysctls: tuple[tuple[str, str], ...], ifname: str,
                                        off: bool) -> None:
    from portway.core import runopts

    assert runopts.ipv6_off(sysctls, ifname) is off


def test_inspect_has_the_ipv6_fields_docker_never_sets(tmp_path: Path) -> None:
    """Docker 27's NetworkSettings still has LinkLocalIPv6Address, its prefix length and
    the secondary address lists (deprecated, never set): a script's template naming one
    prints Docker's empty value instead of failing."""
    from portway.engine import view

    h, _ = fake_host(str(tmp_path))
    h.networks.create("dual", ipv6=True)
    h.containers.run(["sleep", "1"], name="web", networks=["dual"], detach=True)
    settings = view.container(h, container_named(h, "web"))["NetworkSettings"]
    assert {k: settings[k] for k in ("LinkLocalIPv6Address", "LinkLocalIPv6PrefixLen",
                                     "SecondaryIPAddresses", "SecondaryIPv6Addresses")} == \
        {"LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
         "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None}


def test_an_internal_network_gives_no_gateway_in_inspect(tmp_path: Path) -> None:
    """Docker's endpoint Gateway and IPv6Gateway are the container's default gateways:
    on an --internal network (no default route) they are empty, elsewhere the network's
    (its IPAM.Config keeps them either way)."""
    from portway.engine import view

    h, _ = fake_host(str(tmp_path))
    h.networks.create("dual", ipv6=True, subnet=["10.70.0.0/24", "fd00:70::/64"])
    h.networks.create("inner", ipv6=True, internal=True,
                      subnet=["10.71.0.0/24", "fd00:71::/64"])
    h.containers.run(["sleep", "1"], name="both", networks=["dual", "inner"], detach=True)
    nets = view.container(h, container_named(h, "both"))["NetworkSettings"]["Networks"]
    assert (nets["dual"]["Gateway"], nets["dual"]["IPv6Gateway"]) == \
        ("10.70.0.1", "fd00:70::1")
    assert (nets["inner"]["Gateway"], nets["inner"]["IPv6Gateway"]) == ("", "")
    assert (nets["inner"]["IPAddress"], nets["inner"]["GlobalIPv6Address"]) == \
        ("10.71.0.2", "fd00:71::2")


V6_OPT = "com.docker.network.enable_ipv6"
V4_OPT = "com.docker.network.enable_ipv4"


@pytest.mark.parametrize(("ipv4", "ipv6", "options", "families", "kept"), [
    (None, None, {}, (True, False), {}),
    # Docker 27: the option decides when --ipv6 is not given (default-network-opts and
    # compose's driver_opts give it so), in Go's spellings.
    (None, None, {V6_OPT: "true"}, (True, True), {V6_OPT: "true"}),
    (None, None, {V6_OPT: "1"}, (True, True), {V6_OPT: "true"}),
    (None, None, {V6_OPT: "False"}, (True, False), {V6_OPT: "false"}),
    # The flag wins, and the option it overrides is not kept (Docker 28).
    (None, False, {V6_OPT: "true"}, (True, False), {}),
    (None, True, {V6_OPT: "false"}, (True, True), {}),
    # Docker 28's enable_ipv4 likewise.
    (None, True, {V4_OPT: "false"}, (False, True), {V4_OPT: "false"}),
    ("true", True, {V4_OPT: "false"}, (True, True), {}),
    ("false", True, {}, (False, True), {}),
])
def test_families_from_flags_and_options(ipv4: str | None, ipv6: bool | None,
                                         options: dict[str, str],
                                         families: tuple[bool, bool],
                                         kept: dict[str, str]) -> None:
    v4, v6, family_opts = validate.network_families(ipv4, ipv6, options)
    assert ((v4, v6), family_opts) == (families, kept)


@pytest.mark.parametrize(("ipv4", "options", "said"), [
    ("false", {}, "--ipv4=false"),
    (None, {V4_OPT: "false"}, f"-o {V4_OPT}=false"),
    (None, {V4_OPT: "0", V6_OPT: "f"}, f"-o {V4_OPT}=false"),
])
def test_a_network_without_a_family_says_which_input_left_it_out(
        ipv4: str | None, options: dict[str, str], said: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{said} needs --ipv6$"):
        validate.network_families(ipv4, None, options)


def test_a_family_option_that_is_no_bool_is_refused(tmp_path: Path) -> None:
    h, _ = fake_host(str(tmp_path))
    with pytest.raises(InvalidInput, match=f"option {V6_OPT} is not a valid bool: 'yes'"):
        h.networks.create("app", options=[f"{V6_OPT}=yes"])
    assert rows(h) == (0, 0, 0)


def test_enable_ipv6_option_makes_a_dual_stack_network(tmp_path: Path) -> None:
    """docker network create -o com.docker.network.enable_ipv6=true app: dual stack, with
    the option in Options; for any driver, as Docker's daemon reads it."""
    from portway.engine import view

    h, _ = fake_host(str(tmp_path))
    net = h.networks.create("app", options=[f"{V6_OPT}=true"])
    assert [s.version for s in net.subnets] == [4, 6]
    shown = view.network(h, net)
    assert shown["EnableIPv6"] is True and shown["Options"] == {V6_OPT: "true"}
    six = h.networks.create("six", options=[f"{V6_OPT}=true", f"{V4_OPT}=false"])
    assert [s.version for s in six.subnets] == [6]
    off = h.networks.create("off", ipv6=False, options=[f"{V6_OPT}=true"])
    assert [s.version for s in off.subnets] == [4] and off.options == {}


@pytest.mark.parametrize(("lesser", "greater"), [
    # sortorder.NaturalLess, which docker/cli's `port` sorts its lines with: digits by
    # value, before any other character; fewer leading zeros first; a prefix first.
    ("80/tcp -> 0.0.0.0:8084", "80/tcp -> 127.0.0.1:8082"),
    ("80/tcp -> 127.0.0.1:8082", "80/tcp -> [::1]:8081"),
    ("80/tcp -> [::1]:8081", "80/tcp -> [::]:8083"),
    ("80/tcp -> [::]:8083", "80/tcp -> [::]:8084"),
    ("80/tcp -> [::]:8084", "443/tcp -> 0.0.0.0:443"),
    ("90/tcp -> 0.0.0.0:9090", "90/udp -> 0.0.0.0:9090"),
    ("a1", "a01"), ("a1", "a1b"), ("a9", "a10"), ("a1b", "aa"),
])
def test_natural_order_of_port_lines(lesser: str, greater: str) -> None:
    from portway.core.ports import natural_key

    assert natural_key(lesser) < natural_key(greater)
    assert not natural_key(greater) < natural_key(lesser)


def test_port_lists_both_families_in_dockers_order(tmp_path: Path) -> None:
    """docker port sorts its lines (docker/cli since 23.0): a dual-stack container's
    IPv4 and IPv6 bindings of one port come together, whatever order -p gave."""
    h, _ = fake_host(str(tmp_path))
    h.networks.create("dual", ipv6=True)
    h.containers.run(["sleep", "1"], name="web", networks=["dual"], detach=True,
                     ports=["9090:90/udp", "[::1]:8081:80", "127.0.0.1:8082:80",
                            "[::]:8083:80", "8084:80", "443:443"])
    assert h.publishing.describe("web") == [
        "80/tcp -> 0.0.0.0:8084", "80/tcp -> 127.0.0.1:8082", "80/tcp -> [::1]:8081",
        "80/tcp -> [::]:8083", "80/tcp -> [::]:8084", "90/udp -> 0.0.0.0:9090",
        "90/udp -> [::]:9090", "443/tcp -> 0.0.0.0:443", "443/tcp -> [::]:443"]
    assert h.publishing.describe("web", "80") == [
        "0.0.0.0:8084", "127.0.0.1:8082", "[::1]:8081", "[::]:8083", "[::]:8084"]


@pytest.mark.parametrize(("args", "made"), [
    ({"ipv6": True, "mtu": 1279}, False),
    ({"ipv6": True, "ipv4": False, "subnet": "fd00:12::/64", "mtu": "1000"}, False),
    ({"options": ["com.docker.network.driver.mtu=1200", f"{V6_OPT}=true"]}, False),
    ({"ipv6": True, "mtu": 1280}, True),
    ({"mtu": 1200}, True),  # IPv4 alone: any MTU from 68
])
def test_a_network_with_ipv6_has_at_least_ipv6s_mtu(tmp_path: Path, args: dict[str, Any],
                                                     made: bool) -> None:
    """Below 1280 the kernel gives the bridge no IPv6 address (EINVAL): refused in one
    line (exit 2), where it failed half-way in the kernel (exit 5)."""
    h, _ = fake_host(str(tmp_path))
    if made:
        assert h.networks.create("app", **args).mtu == int(args.get("mtu", 1500))
        return
    with pytest.raises(InvalidInput, match="below IPv6's minimum of 1280") as e:
        h.networks.create("app", **args)
    assert e.value.exit_code == 2 and rows(h) == (0, 0, 0)
