"""What `run` takes beyond its command, checked before anything is touched: the
networks it joins (Docker's short and long `--network` forms, or another container's
namespace), and the process's environment, directory, /etc extras, sysctls, labels and
exposed ports.

Rules of this module:
1. Pure: strings in, frozen values out, InvalidInput with Docker's wording (and a hint)
   for anything it would refuse. Whatever needs the host (does the directory exist,
   which gateway is `host-gateway`) is the engine's to look up.
2. Values are kept as the user gave them where Docker keeps them so (`inspect` shows
   them back); they are normalized only where two spellings mean one thing (MACs).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass

from portway.core import validate
from portway.core.ports import port_range, protocol
from portway.errors import InvalidInput
from portway.model.types import IPAddress, NetworkMode, Protocol

SPECIAL_NETWORKS = ("host", "none")
HOST_GATEWAY = "host-gateway"
_ENV_KEY_MAX = 256
_ENV_VALUE_MAX = 128 * 1024
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")
_SYSCTL_RE = re.compile(r"net[./][a-zA-Z0-9_.\-/]+")
_DNS_OPTION_RE = re.compile(r"[a-zA-Z0-9_-]+(:[0-9]{1,5})?")
_LONG_FORM_KEYS = ("name", "alias", "ip", "ip6", "mac-address")
_UNSUPPORTED_KEYS = ("driver-opt", "link-local-ip", "gw-priority")


@dataclass(frozen=True)
class NetworkRequest:
    """One network a container joins, with what it asks for there: its addresses (at
    most one per family), aliases and MAC. ref "" is the default network."""

    ref: str
    ips: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    mac: str | None = None


@dataclass(frozen=True)
class NetworkPlan:
    """How a container is networked: mode bridge with its networks in order, host,
    none, or container (the namespace of the container named `container`)."""

    mode: NetworkMode
    requests: tuple[NetworkRequest, ...] = ()
    container: str = ""


def parse_networks(values: list[str], ip: str | None = None, ip6: str | None = None,
                   aliases: list[str] | None = None, mac: str | None = None) -> NetworkPlan:
    """Docker's --network values (NAME, host, none, container:NAME, or the long form
    name=N,alias=A,ip=…,ip6=…,mac-address=…), with --ip, --ip6, --alias and
    --mac-address applied to the first network, as Docker applies them."""
    flat = [validate.check_name("alias", a) for a in aliases or []]
    top = NetworkRequest("", tuple(validate.requested_addresses(ip, ip6)), tuple(flat),
                         parse_mac(mac) if mac is not None else None)
    special = [v for v in values if v in SPECIAL_NETWORKS or v.startswith("container:")]
    if special and len(values) > 1:
        what = special[0].split(":")[0] if special[0].startswith("container:") \
            else special[0]
        raise InvalidInput(f"--network {what} cannot be combined with other networks",
                           "give it alone")
    if special:
        value = special[0]
        if top.ips or top.aliases or top.mac:
            what = "container" if value.startswith("container:") else value
            raise InvalidInput(f"--ip, --ip6, --alias and --mac-address need a bridge "
                               f"network, not --network {what}",
                               "drop them, or pick a user network")
        if value.startswith("container:"):
            ref = value.removeprefix("container:")
            if not ref:
                raise InvalidInput("--network container: names no container",
                                   "write --network container:NAME")
            return NetworkPlan("container", container=ref)
        return NetworkPlan("host" if value == "host" else "none")
    requests = [_network_value(v) for v in values] or [NetworkRequest("")]
    seen: set[str] = set()
    for r in requests:
        if r.ref in SPECIAL_NETWORKS or r.ref.startswith("container:"):
            raise InvalidInput(f"--network name={r.ref} takes no options",
                               f"write --network {r.ref} alone")
        if r.ref in seen:
            raise InvalidInput(f"network {r.ref!r} is specified multiple times",
                               "give each network once")
        seen.add(r.ref)
    first = requests[0]
    for mine, theirs, flag, what in ((top.aliases, first.aliases, "--alias",
                                      "per-network alias"),
                                     (top.mac, first.mac, "--mac-address",
                                      "per-network MAC address")):
        if mine and theirs:
            raise InvalidInput(f"conflicting options: cannot specify both {flag} and {what}",
                               f"give it once, in --network or as {flag}")
    for version, flag in ((4, "--ip"), (6, "--ip6")):
        if _of_family(top.ips, version) and _of_family(first.ips, version):
            raise InvalidInput(f"conflicting options: cannot specify both {flag} and "
                               f"per-network IPv{version} address",
                               f"give it once, in --network or as {flag}")
    requests[0] = NetworkRequest(first.ref, first.ips + top.ips, first.aliases + top.aliases,
                                 first.mac or top.mac)
    return NetworkPlan("bridge", tuple(requests))


def _of_family(ips: tuple[str, ...], version: int) -> bool:
    return any(ipaddress.ip_address(i).version == version for i in ips)


def _network_value(value: str) -> NetworkRequest:
    if "=" not in value:
        return NetworkRequest(value)
    fields: dict[str, list[str]] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise InvalidInput(f"invalid --network {value!r}: {part!r} is not KEY=VALUE",
                               "write --network name=NET,alias=A,ip=IP,ip6=IP6,"
                               "mac-address=MAC")
        if key in _UNSUPPORTED_KEYS:
            raise InvalidInput(f"--network {key}= is not supported by portway",
                               f"drop it; portway takes {', '.join(_LONG_FORM_KEYS)}")
        if key not in _LONG_FORM_KEYS:
            raise InvalidInput(f"invalid field {key!r} in --network {value!r}",
                               f"the fields are {', '.join(_LONG_FORM_KEYS)}")
        if key != "alias" and key in fields:
            raise InvalidInput(f"--network {value!r} gives {key} twice", "give it once")
        fields.setdefault(key, []).append(val)
    name = (fields.get("name") or [""])[0]
    if not name:
        raise InvalidInput(f"--network {value!r} has no name", "add name=NETWORK")
    ip = fields["ip"][0] if "ip" in fields else None
    ip6 = fields["ip6"][0] if "ip6" in fields else None
    mac = fields["mac-address"][0] if "mac-address" in fields else None
    return NetworkRequest(name, tuple(validate.requested_addresses(ip, ip6)),
                          tuple(validate.check_name("alias", a) for a in fields.get("alias", [])),
                          parse_mac(mac) if mac is not None else None)


def parse_mac(text: str) -> str:
    """A unicast MAC address, as the kernel and `ip` write it (lower case, colons)."""
    if not _MAC_RE.fullmatch(text):
        raise InvalidInput(f"invalid MAC address {text!r}",
                           "give six hex bytes such as 02:42:ac:11:00:02")
    mac = text.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise InvalidInput(f"invalid MAC address {text!r}: it is a multicast address",
                           "give a unicast one (the first byte even), such as "
                           "02:42:ac:11:00:02")
    if mac == "00:00:00:00:00:00":
        raise InvalidInput(f"invalid MAC address {text!r}", "give one that is not all zero")
    return mac


def parse_env(items: list[str]) -> tuple[str, ...]:
    """KEY=VALUE pairs for the command's environment (the CLI has resolved `-e KEY` and
    --env-file already)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"invalid environment variable {item!r}",
                               "write it as KEY=VALUE")
        if not key:
            raise InvalidInput(f"invalid environment variable {item!r}: the name is empty",
                               "write it as KEY=VALUE")
        if "\0" in item:
            raise InvalidInput(f"environment variable {key[:40]!r} contains a NUL byte",
                               "remove it")
        if len(key) > _ENV_KEY_MAX or len(value) > _ENV_VALUE_MAX:
            raise InvalidInput(f"environment variable {key[:40]!r} is too long",
                               f"names up to {_ENV_KEY_MAX} characters, values up to "
                               f"{_ENV_VALUE_MAX}")
        out.append(item)
    return tuple(out)


def parse_labels(items: list[str]) -> tuple[tuple[str, str], ...]:
    """Docker's --label KEY=VALUE (a bare KEY: an empty value); a later one wins."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        out.update(validate.parse_key_values("--label", [f"{key}={value}"]))
    return tuple(out.items())


def parse_extra_hosts(items: list[str]) -> tuple[tuple[str, str], ...]:
    """--add-host NAME:IP (or NAME=IP; an IPv6 address may be in brackets), IP may be
    host-gateway."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            name, sep, value = item.partition(":")
        if not sep or not name or not value:
            raise InvalidInput(f"invalid --add-host {item!r}",
                               "write it as NAME:IP, e.g. db.local:10.0.0.5 or "
                               "host.docker.internal:host-gateway")
        validate.check_hostname(name)
        if value != HOST_GATEWAY:
            raw = value[1:-1] if value.startswith("[") and value.endswith("]") else value
            try:
                address = ipaddress.ip_address(raw)
            except ValueError:
                raise InvalidInput(f"invalid --add-host {item!r}: {value!r} is not an IP "
                                   "address", "give an address, or host-gateway") from None
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
                # Docker's parser refuses it too, and /etc/hosts has no place for one.
                raise InvalidInput(f"invalid --add-host {item!r}: an /etc/hosts address "
                                   f"names no interface (%{address.scope_id})",
                                   f"write it as {name}:{str(address).split('%')[0]}")
            value = str(address)
        out.append((name, value))
    return tuple(out)


def resolve_extra_hosts(extra: tuple[tuple[str, str], ...],
                        gateways: list[IPAddress]) -> list[tuple[str, str]]:
    """(name, address) lines for /etc/hosts: host-gateway becomes one line per gateway."""
    out: list[tuple[str, str]] = []
    for name, value in extra:
        if value == HOST_GATEWAY:
            out += [(name, str(g)) for g in gateways]
        else:
            out.append((name, value))
    return out


def parse_dns_search(items: list[str]) -> tuple[str, ...] | None:
    """--dns-search DOMAIN... (None: the host's; `.` alone: none at all, as in Docker)."""
    if not items:
        return None
    if items == ["."]:
        return ()
    for domain in items:
        if domain == ".":
            raise InvalidInput("--dns-search . means no search domains",
                               "give it alone, or only domains")
        validate.check_hostname(domain.rstrip("."))
    return tuple(items)


def parse_dns_options(items: list[str]) -> tuple[str, ...] | None:
    """--dns-option OPTION... as resolv.conf(5) writes them (ndots:2, edns0, ...)."""
    if not items:
        return None
    for option in items:
        if not _DNS_OPTION_RE.fullmatch(option):
            raise InvalidInput(f"invalid --dns-option {option!r}",
                               "give a resolv.conf option such as ndots:2, timeout:1 or "
                               "edns0")
    return tuple(items)


def check_domainname(name: str) -> str:
    if not name:
        return name
    try:
        validate.check_hostname(name)
    except InvalidInput:
        raise InvalidInput(f"invalid domain name {name!r}",
                           "use letters, digits and - in dot-separated labels") from None
    return name


def parse_sysctls(items: list[str], mode: NetworkMode) -> tuple[tuple[str, str], ...]:
    """--sysctl KEY=VALUE: net.* only (a container's own kernel namespaces: its network
    namespace), and not with --network host (it would change the host's)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid --sysctl {item!r}", "write it as net.KEY=VALUE")
        if not (key.startswith(("net.", "net/"))):
            raise InvalidInput(f"sysctl {key!r} is not allowed: it is not in a separate "
                               "kernel namespace",
                               "a container has its own network namespace only: give "
                               "net.* sysctls")
        parts = key.split("/") if "/" in key else key.split(".")
        if not _SYSCTL_RE.fullmatch(key) or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"invalid sysctl name {key!r}",
                               "give one such as net.ipv4.ip_unprivileged_port_start")
        if mode == "host":
            raise InvalidInput(f"sysctl {key!r} is not allowed with --network host: it "
                               "would change the host's network namespace",
                               "drop it, or use a bridge network")
        if not value.strip() or any(c in value for c in "\n\0"):
            raise InvalidInput(f"invalid value for sysctl {key!r}", "give one line of text")
        out[key] = value
    return tuple(out.items())


def ipv6_off(sysctls: tuple[tuple[str, str], ...], ifname: str) -> bool:
    """Whether a container's --sysctl turn IPv6 off on its interface ifname: the last of
    net.ipv6.conf.all.disable_ipv6 (which the kernel passes on to every interface) and
    net.ipv6.conf.IFNAME.disable_ipv6 says so. (Not ...default...: Docker turns IPv6 on
    for each interface of a network with IPv6, and so does portway, default_ipv6_off.)"""
    return _last_off(sysctls, ("all", ifname))


def default_ipv6_off(sysctls: tuple[tuple[str, str], ...]) -> bool:
    """Whether a container's --sysctl net.ipv6.conf.default.disable_ipv6 turns IPv6 off
    on the interfaces made in its namespace after its start (network connect's), which
    must then turn it on again for one given an IPv6 address."""
    return _last_off(sysctls, ("default",))


def _last_off(sysctls: tuple[tuple[str, str], ...], names: tuple[str, ...]) -> bool:
    keys = {f"net.ipv6.conf.{name}.disable_ipv6" for name in names} | \
        {f"net/ipv6/conf/{name}/disable_ipv6" for name in names}
    off = False
    for key, value in sysctls:
        if key in keys:
            off = value.strip() != "0"
    return off


def check_ipv6_off(sysctls: tuple[tuple[str, str], ...], ifname: str, network: str,
                   families: set[int], ip6_asked: bool) -> None:
    """A container whose IPv6 is off on ifname takes no IPv6 address there (Docker 27
    gives it none, and names none in DNS): a network of IPv6 alone, or --ip6, is
    refused."""
    if not ipv6_off(sysctls, ifname):
        return
    turned = f"--sysctl turns IPv6 off on {ifname}"
    if ip6_asked:
        raise InvalidInput(f"--ip6 for network {network}, but {turned}",
                           "drop --ip6, or the disable_ipv6 sysctl")
    if families == {6}:
        raise InvalidInput(f"network {network} has IPv6 alone, but {turned}",
                           "use a network with IPv4, or drop the disable_ipv6 sysctl")


def sysctl_path(key: str) -> str:
    """Where a sysctl lives under /proc/sys: dots are slashes, unless the key has slashes
    already (net/ipv4/conf/eth0.100/forwarding: an interface with a dot)."""
    return key if "/" in key else key.replace(".", "/")


def parse_expose(items: list[str]) -> tuple[tuple[int, Protocol], ...]:
    """--expose PORT[-END][/tcp|udp|sctp], each port of a range once."""
    out: dict[tuple[int, Protocol], None] = {}
    for item in items:
        text, _, proto_text = item.partition("/")
        proto: Protocol = protocol(proto_text or "tcp", f"in --expose {item!r}")
        if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", text):
            raise InvalidInput(f"invalid --expose {item!r}",
                               "write it as PORT[-END][/tcp|/udp|/sctp], e.g. 80 or 53/udp")
        lo, hi = port_range(text, item)
        for port in range(lo, hi + 1):
            out[(port, proto)] = None
    return tuple(out)


def check_workdir(path: str) -> str:
    """-w: an absolute path (Docker's rule), normalized."""
    if not path.startswith("/"):
        raise InvalidInput(f"the working directory {path!r} is invalid, it needs to be an "
                           "absolute path", "give one starting with /")
    if "\0" in path:
        raise InvalidInput("the working directory contains a NUL byte", "remove it")
    return posixpath.normpath(path)
