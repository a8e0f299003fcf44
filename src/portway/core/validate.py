"""Validation of everything a user can type, before anything is touched."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass

from portway.errors import InvalidInput
from portway.model.types import IPAddress, IPNetwork

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
NAME_MAX = 63
# host and none are pseudo-networks, bridge the default network (made on first use).
RESERVED_NETWORKS = frozenset({"host", "none", "bridge", "default"})
LABEL_KEY_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_./-]*")
MTU_MIN, MTU_MAX = 68, 65535
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")

# Docker reads its boolean options with Go's strconv.ParseBool: these spellings (kept
# as true or false, which is what the firewall and the views compare against).
GO_BOOLS = {"1": "true", "t": "true", "T": "true", "TRUE": "true", "true": "true",
            "True": "true", "0": "false", "f": "false", "F": "false", "FALSE": "false",
            "false": "false", "False": "false"}
BOOL_OPTIONS = ("com.docker.network.bridge.enable_ip_masquerade",
                "com.docker.network.bridge.enable_icc")

KNOWN_OPTIONS = {
    "com.docker.network.bridge.enable_ip_masquerade": ("true", "false"),
    "com.docker.network.bridge.enable_icc": ("true", "false"),
    "com.docker.network.driver.mtu": None,
    "com.docker.network.bridge.name": None,
    # Docker 27: per family, NAT (masquerade, the default) or routed (no NAT).
    "com.docker.network.bridge.gateway_mode_ipv4": ("nat", "routed"),
    "com.docker.network.bridge.gateway_mode_ipv6": ("nat", "routed"),
    # The host address a -p without one publishes on (despite the name, IPv6 too).
    "com.docker.network.bridge.host_binding_ipv4": None,
}
HOST_BINDING_OPTION = "com.docker.network.bridge.host_binding_ipv4"
# Docker's network options for the families (enable_ipv6 since Docker 27, enable_ipv4
# since 28): what --ipv6 and --ipv4 say, for a network whose flags do not say it.
FAMILY_OPTIONS = {4: "com.docker.network.enable_ipv4", 6: "com.docker.network.enable_ipv6"}


def network_families(ipv4: bool | str | None, ipv6: bool | None,
                     options: dict[str, str]) -> tuple[bool, bool, dict[str, str]]:
    """Docker's choice of a network's families: --ipv4 and --ipv6 where given (None: not
    given), else -o com.docker.network.enable_ipv4/enable_ipv6 (Go's boolean spellings),
    else IPv4 alone. Returns both, and the family options to keep in the network's
    options: one a flag overrides is left out, as Docker 28 leaves it out, so that
    inspect shows no option that was not followed."""
    chosen: dict[int, bool] = {}
    kept: dict[str, str] = {}
    for version, flag in ((4, ipv4), (6, ipv6)):
        key = FAMILY_OPTIONS[version]
        if flag is not None:
            chosen[version] = parse_bool(f"--ipv{version}", flag)
        elif key in options:
            value = GO_BOOLS.get(options[key])
            if value is None:
                raise InvalidInput(f"option {key} is not a valid bool: {options[key]!r}",
                                   f"write {key}=true or {key}=false")
            chosen[version] = value == "true"
            kept[key] = value
        else:
            chosen[version] = version == 4
    if not chosen[4] and not chosen[6]:
        said = "--ipv4=false" if ipv4 is not None else f"-o {FAMILY_OPTIONS[4]}=false"
        raise InvalidInput(f"{said} needs --ipv6",
                           "a network needs a family: add --ipv6")
    return chosen[4], chosen[6], kept


def check_name(kind: str, name: str) -> str:
    """A container, network or alias name: Docker's rule, bounded length."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{kind} name is empty", f"give a name matching {NAME_RE.pattern}")
    if len(name) > NAME_MAX:
        raise InvalidInput(
            f"{kind} name {name[:20]!r}... is {len(name)} characters long",
            f"use at most {NAME_MAX}",
        )
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}",
            f"use letters, digits and _ . - (matching {NAME_RE.pattern})",
        )
    return name


def check_network_name(name: str) -> str:
    check_name("network", name)
    if name in RESERVED_NETWORKS:
        raise InvalidInput(
            f"network name {name!r} is reserved", "pick another name for a user network"
        )
    return name


def _zone_free(what: str, text: str, value: IPAddress | IPNetwork) -> None:
    """Python reads an IPv6 zone (fd00::1%eth0) as part of an address; Docker's parser
    and the kernel do not. Refused here, in one line, rather than by nftables or
    netlink later (exit 5) or, for a duplicate address, not at all."""
    network = isinstance(value, ipaddress.IPv6Network)
    address = value.network_address if isinstance(value, ipaddress.IPv6Network) else value
    zone = address.scope_id if isinstance(address, ipaddress.IPv6Address) else None
    if zone:
        plain = str(value).replace(f"%{zone}", "")
        raise InvalidInput(f"invalid {what} {text!r}: %{zone} names an interface, which "
                           f"{'a range of addresses' if network else 'this address'} "
                           "cannot have", f"write it as {plain}")


def parse_subnet(text: str) -> IPNetwork:
    """A subnet of either family that a network can use: no host bits, room for a
    gateway and a container, not a special-purpose range."""
    try:
        net = ipaddress.ip_network(text, strict=True)
        _zone_free("subnet", text, net)
    except ValueError as exc:
        if "/" in str(text):
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                loose = None
            if loose is not None:
                raise InvalidInput(
                    f"invalid subnet {text!r}: host bits are set", f"did you mean {loose}?"
                ) from None
        raise InvalidInput(
            f"invalid subnet {text!r}: {exc}",
            "give a CIDR such as 10.77.0.0/24 or fd00:77::/64"
        ) from None
    smallest = 30 if net.version == 4 else 126
    if net.prefixlen > smallest:
        raise InvalidInput(
            f"subnet {net} is too small (a gateway and a container need /{smallest} or "
            "larger)", f"use a prefix of /{smallest} or shorter",
        )
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified or \
            (net.version == 6 and net.subnet_of(IPV4_MAPPED)):  # type: ignore[arg-type]
        raise InvalidInput(
            f"subnet {net} is a special-purpose range",
            "use a private range such as 10.77.0.0/24 or fd00:77::/64"
        )
    return net


def parse_address(what: str, text: str, zone: bool = False) -> IPAddress:
    """An address of either family; with an IPv6 zone (fe80::1%eth0) only if zone."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        example = {"--ip": "10.77.0.5", "--ip6": "fd00:77::5"}.get(
            what, "10.77.0.5 or fd00:77::5")
        raise InvalidInput(
            f"invalid {what} {text!r}", f"give an address such as {example} (no prefix "
            "length, no brackets)") from None
    if not zone:
        _zone_free(what, text, address)
    return address


def requested_addresses(ip: str | None, ip6: str | None) -> list[str]:
    """--ip and --ip6, each checked for its family."""
    out = []
    for flag, text, version in (("--ip", ip, 4), ("--ip6", ip6, 6)):
        if text is None:
            continue
        if parse_address(flag, text).version != version:
            other = "--ip6" if version == 4 else "--ip"
            raise InvalidInput(f"{flag} {text} is not an IPv{version} address",
                               f"give it with {other}, or give an IPv{version} address")
        out.append(text)
    return out


def check_host_address(what: str, address: IPAddress, subnet: IPNetwork) -> IPAddress:
    """An address that a host (gateway, container) may use inside the subnet."""
    if address.version != subnet.version or address not in subnet:
        raise InvalidInput(f"{what} {address} is outside the subnet {subnet}",
                           f"pick an address in {subnet}")
    if address == subnet.network_address:
        raise InvalidInput(f"{what} {address} is the network address of {subnet}",
                           "pick a host address")
    if address == subnet.broadcast_address:
        why = f"the broadcast address of {subnet}" if subnet.version == 4 else \
            f"the last address of {subnet}, which portway keeps unused (as IPv4's broadcast)"
        raise InvalidInput(f"{what} {address} is {why}", "pick a host address")
    return address


def parse_ip_range(text: str, subnet: IPNetwork) -> IPNetwork:
    try:
        rng = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"invalid --ip-range {text!r}: {exc}",
                           "give a CIDR inside the subnet") from None
    _zone_free("--ip-range", text, rng)
    if rng.version != subnet.version or not rng.subnet_of(subnet):  # type: ignore[arg-type]
        raise InvalidInput(f"--ip-range {rng} is not inside the subnet {subnet}",
                           "give a CIDR inside the subnet")
    return rng


def parse_mtu(value: str | int) -> int:
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid MTU {value!r}", f"give a number {MTU_MIN}-{MTU_MAX}") from None
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise InvalidInput(f"MTU {mtu} is out of range", f"give a number {MTU_MIN}-{MTU_MAX}")
    return mtu


IPV6_MIN_MTU = 1280  # RFC 8200; the kernel gives a link with less no IPv6 address


def check_mtu_families(mtu: int, versions: Collection[int]) -> None:
    """A network with IPv6 has an MTU of at least IPv6's minimum: below it the kernel
    refuses the bridge's IPv6 address (EINVAL), so the network could not be made."""
    if 6 in versions and 0 < mtu < IPV6_MIN_MTU:
        raise InvalidInput(f"MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}, and the "
                           "network has IPv6",
                           f"give --mtu {IPV6_MIN_MTU} or more, or leave --ipv6 out")


def parse_key_values(what: str, items: list[str]) -> dict[str, str]:
    """KEY=VALUE pairs for --opt and --label."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid {what} {item!r}", "write it as KEY=VALUE")
        if not LABEL_KEY_RE.fullmatch(key) or len(key) > 128:
            raise InvalidInput(f"invalid {what} key {key!r}",
                               "use letters, digits and _ . / - (at most 128)")
        if len(value) > 1024 or any(ord(c) < 32 for c in value):
            raise InvalidInput(f"invalid {what} value for {key!r}",
                               "use printable text, at most 1024 characters")
        out[key] = value
    return out


def check_options(options: dict[str, str]) -> dict[str, str]:
    """The options as given, but a boolean one in Docker's other spellings (`0`, `t`,
    `FALSE`, ...) as true or false."""
    options = {key: GO_BOOLS.get(value, value) if key in BOOL_OPTIONS else value
               for key, value in options.items()}
    for key, value in options.items():
        if key not in KNOWN_OPTIONS:
            known = ", ".join(sorted(KNOWN_OPTIONS))
            raise InvalidInput(f"unknown network option {key!r}", f"known options: {known}")
        allowed = KNOWN_OPTIONS[key]
        if allowed is not None and value not in allowed:
            raise InvalidInput(f"option {key} must be one of {', '.join(allowed)}, not {value!r}",
                               f"write {key}={allowed[0]}")
        if key == "com.docker.network.driver.mtu":
            parse_mtu(value)
        if key == "com.docker.network.bridge.name":
            check_ifname("bridge name", value)
        if key == "com.docker.network.bridge.host_binding_ipv4":
            check_host_binding(value)
    return options


def check_host_binding(text: str) -> IPAddress:
    """The default host address of a network's published ports: one a port can be
    published on, as -p takes it."""
    address = parse_address("com.docker.network.bridge.host_binding_ipv4", text)
    if address.version == 6 and (address.is_link_local or address.ipv4_mapped):
        raise InvalidInput(f"com.docker.network.bridge.host_binding_ipv4 {text!r} cannot "
                           "be published on (a link-local or IPv4-mapped address)",
                           "give an address of the host, 127.0.0.1, ::1, 0.0.0.0 or ::")
    return address


def check_host_binding_family(options: dict[str, str], versions: Collection[int],
                              network: str) -> None:
    """A network's default host address of a family it has: one of the other would
    publish each port given no address on a family none of its containers has, which
    run refuses for every -p. ::1 is the exception (the host's relay takes it to either
    family), and so is 0.0.0.0 (every address of the families the network has)."""
    text = options.get(HOST_BINDING_OPTION)
    if not text:
        return
    address = ipaddress.ip_address(text)
    if address.version in versions or str(address) in ("::1", "0.0.0.0"):
        return
    family = f"IPv{address.version}"
    if address.version == 6:
        hint = "add --ipv6, or give an IPv4 address (0.0.0.0 for all, 127.0.0.1 for the " \
               "host alone) or ::1"
    else:
        hint = "drop --ipv4=false, or give an IPv6 address (:: for all, ::1 for the host " \
               "alone)"
    raise InvalidInput(f"{HOST_BINDING_OPTION} {text} is an {family} address, but network "
                       f"{network} has no {family} (no port could be published on it)",
                       hint)


def check_hostname(name: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
                        r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*", name) \
            or len(name) > 253:
        raise InvalidInput(f"invalid hostname {name!r}",
                           "use letters, digits and - in dot-separated labels")
    return name


def check_command(command: list[str]) -> tuple[str, ...]:
    if not command or not command[0]:
        raise InvalidInput("no command given", "put the command after --, as in: "
                           "portway run --name web -- python3 -m http.server 80")
    if any("\0" in arg for arg in command):
        raise InvalidInput("the command contains a NUL byte", "remove it")
    return tuple(command)


def check_dns_servers(servers: list[str], named_link: bool = False) -> tuple[str, ...]:
    """--dns servers of either family. A link-local one is asked over the host's
    interface its zone names (fe80::1%eth0), and with named_link (run's --dns) must name
    one; any other address has no zone."""
    out = []
    for text in servers:
        address = parse_address("--dns server", text, zone=True)
        if named_link and address.version == 6 and address.is_link_local and \
                not address.scope_id:
            raise InvalidInput(f"--dns server {text!r} is link-local but names no "
                               "interface", f"name the host's interface it is on, as in "
                               f"{text}%eth0 (see ip -6 addr)")
        if address.version == 6 and not address.is_link_local:
            _zone_free("--dns server", text, address)
        out.append(str(address))
    return tuple(out)


IFNAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}")


def check_ifname(what: str, name: str) -> str:
    """An interface name: at most 15 bytes (IFNAMSIZ), nothing a path or rule could
    misread."""
    if not IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(f"invalid {what} {name!r}",
                           "use 1-15 letters, digits and _ . -, starting with a letter or "
                           "digit")
    return name


@dataclass(frozen=True)
class SubnetRequest:
    """What `network create` asks of one family: a subnet (None: pick a free one),
    a gateway (None: the subnet's first address) and a range for containers."""

    version: int
    subnet: IPNetwork | None = None
    gateway: IPAddress | None = None
    ip_range: IPNetwork | None = None
    aux_addresses: tuple[tuple[str, IPAddress], ...] = ()


def plan_subnets(subnets: list[str], gateways: list[str], ip_ranges: list[str],
                 ipv4: bool = True, ipv6: bool = False,
                 aux_addresses: list[str] | None = None) -> list[SubnetRequest]:
    """Docker's --subnet/--gateway/--ip-range/--aux-address (each repeatable), --ipv4
    and --ipv6, checked together: any number of subnets per family, none overlapping
    another; each --gateway, --ip-range and --aux-address goes with the subnet that
    contains it. One request per subnet given, and one (subnet None: pick a free one)
    per family the network has but no subnet was given for; IPv4 first, each family's
    in the order given."""
    parsed = [parse_subnet(s) for s in subnets]
    if not ipv4 and not ipv6:
        raise InvalidInput("--ipv4=false needs --ipv6", "a network needs a family: add --ipv6")
    for i, net in enumerate(parsed):
        if net.version == 6 and not ipv6:
            raise InvalidInput(f"--subnet {net} is IPv6 but the network is not",
                               "add --ipv6")
        if net.version == 4 and not ipv4:
            raise InvalidInput(f"--subnet {net} is IPv4 but the network is --ipv4=false",
                               "drop --ipv4=false, or the IPv4 subnet")
        for other in parsed[:i]:
            if other.version == net.version and net.overlaps(other):
                what = "is given twice" if net == other else f"overlaps --subnet {other}"
                raise InvalidInput(f"--subnet {net} {what}",
                                   "give each subnet once, none overlapping another")
    parsed.sort(key=lambda n: n.version)  # stable: each family's in the order given

    def owner(what: str, value: IPAddress | IPNetwork) -> IPNetwork:
        """The subnet a --gateway, --ip-range or --aux-address belongs to."""
        mine = [n for n in parsed if n.version == value.version]
        if not mine:
            raise InvalidInput(f"{what} {value} has no IPv{value.version} --subnet to "
                               "belong to", f"give the IPv{value.version} subnet it belongs to")
        for net in mine:
            inside = value.subnet_of(net) if isinstance(  # type: ignore[arg-type]
                value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else value in net
            if inside:
                return net
        where = ", ".join(map(str, mine))
        verb = "is not inside" if isinstance(value, (ipaddress.IPv4Network,
                                                     ipaddress.IPv6Network)) else \
            "is outside"
        raise InvalidInput(f"{what} {value} {verb} " +
                           (f"the subnet {where}" if len(mine) == 1 else
                            f"each of the subnets {where}"),
                           f"give one inside the IPv{value.version} --subnet it goes with")

    gw: dict[IPNetwork, IPAddress] = {}
    for text in gateways:
        address = parse_address("gateway", text)
        net = owner("--gateway", address)
        if net in gw:
            raise InvalidInput(f"more than one --gateway for subnet {net}",
                               "give one gateway per subnet")
        gw[net] = check_host_address("gateway", address, net)
    rng: dict[IPNetwork, IPNetwork] = {}
    for text in ip_ranges:
        net = owner("--ip-range", _any_network("--ip-range", text))
        if net in rng:
            raise InvalidInput(f"more than one --ip-range for subnet {net}",
                               "give one range per subnet")
        rng[net] = parse_ip_range(text, net)
    aux: dict[IPNetwork, dict[str, IPAddress]] = {}
    names: set[str] = set()
    for text in aux_addresses or []:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise InvalidInput(f"invalid --aux-address {text!r}", "write it as NAME=IP")
        if name in names:
            raise InvalidInput(f"--aux-address {name} is given twice", "give each name once")
        names.add(name)
        address = parse_address("--aux-address", value)
        subnet = next((n for n in parsed if address.version == n.version and address in n),
                      None)
        if subnet is None:
            raise InvalidInput(f"--aux-address {name}={address} is in no --subnet of the "
                               "network", "give the --subnet it belongs to")
        check_host_address(f"--aux-address {name}", address, subnet)
        if address == gw.get(subnet, subnet.network_address + 1):
            raise InvalidInput(f"--aux-address {name}={address} is the network's gateway",
                               "give another address")
        if address in aux.get(subnet, {}).values():
            raise InvalidInput(f"--aux-address {address} is given twice",
                               "give each address once")
        aux.setdefault(subnet, {})[name] = address
    wanted = ([4] if ipv4 else []) + ([6] if ipv6 else [])
    plan = [SubnetRequest(version=n.version, subnet=n, gateway=gw.get(n), ip_range=rng.get(n),
                          aux_addresses=tuple(aux.get(n, {}).items())) for n in parsed]
    plan += [SubnetRequest(version=v) for v in wanted if all(n.version != v for n in parsed)]
    plan.sort(key=lambda r: r.version)
    return plan


def _any_network(what: str, text: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"invalid {what} {text!r}: {exc}",
                           "give a CIDR inside the subnet") from None
    _zone_free(what, text, net)
    return net


def parse_bool(what: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise InvalidInput(f"invalid {what} {value!r}", "give true or false")
