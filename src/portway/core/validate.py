"""Validation of everything a user can type, before anything is touched."""

from __future__ import annotations

import ipaddress
import re

from portway.errors import InvalidInput
from portway.model.types import IPAddress, IPNetwork

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
NAME_MAX = 63
RESERVED_NETWORKS = frozenset({"host", "none", "default"})
LABEL_KEY_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_./-]*")
MTU_MIN, MTU_MAX = 68, 65535

KNOWN_OPTIONS = {
    "com.docker.network.bridge.enable_ip_masquerade": ("true", "false"),
    "com.docker.network.bridge.enable_icc": ("true", "false"),
    "com.docker.network.driver.mtu": None,
    "com.docker.network.bridge.name": None,
}


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


def parse_subnet(text: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=True)
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
            f"invalid subnet {text!r}: {exc}", "give a CIDR such as 10.77.0.0/24"
        ) from None
    if net.version != 4:
        raise InvalidInput(f"subnet {text}: IPv6 networks are not supported yet", "use IPv4")
    if net.prefixlen > 30:
        raise InvalidInput(
            f"subnet {net} is too small (a gateway and a container need /30 or larger)",
            "use a prefix of /30 or shorter",
        )
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise InvalidInput(
            f"subnet {net} is a special-purpose range", "use a private range such as 10.77.0.0/24"
        )
    return net


def parse_address(what: str, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(
            f"invalid {what} {text!r}", "give an IPv4 address such as 10.77.0.5"
        ) from None


def check_host_address(what: str, address: IPAddress, subnet: IPNetwork) -> IPAddress:
    """An address that a host (gateway, container) may use inside the subnet."""
    if address.version != subnet.version or address not in subnet:
        raise InvalidInput(f"{what} {address} is outside the subnet {subnet}",
                           f"pick an address in {subnet}")
    if address == subnet.network_address:
        raise InvalidInput(f"{what} {address} is the network address of {subnet}",
                           "pick a host address")
    if address == subnet.broadcast_address:
        raise InvalidInput(f"{what} {address} is the broadcast address of {subnet}",
                           "pick a host address")
    return address


def parse_ip_range(text: str, subnet: IPNetwork) -> IPNetwork:
    try:
        rng = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"invalid --ip-range {text!r}: {exc}",
                           "give a CIDR inside the subnet") from None
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
            raise InvalidInput(f"option {key} is not supported",
                               "portway names bridges from network ids (pwbr-<id>)")
    return options


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


def check_dns_servers(servers: list[str]) -> tuple[str, ...]:
    return tuple(str(parse_address("--dns server", s)) for s in servers)


IFNAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}")


def check_ifname(what: str, name: str) -> str:
    """An interface name: at most 15 bytes (IFNAMSIZ), nothing a path or rule could
    misread."""
    if not IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(f"invalid {what} {name!r}",
                           "use 1-15 letters, digits and _ . -, starting with a letter or "
                           "digit")
    return name
