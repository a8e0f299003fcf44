"""Published port specs: Docker's `-p [HOST_IP:][HOST_PORT[-END]:]CPORT[-END][/PROTO]`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

from portway.errors import InvalidInput
from portway.model.types import PROTOCOLS, IPAddress, PortMapping, Protocol

_RANGE = r"\d{1,5}(?:-\d{1,5})?"
_SPEC = re.compile(
    rf"(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d+\.\d+\.\d+\.\d+):)?"
    rf"(?:(?P<hport>{_RANGE})?:)?"
    rf"(?P<cport>{_RANGE})"
    rf"(?:/(?P<proto>[a-zA-Z]+))?"
)
HINT = "write it as [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp|/sctp], "\
       "e.g. 8080:80"


def port_range(text: str, spec: str) -> tuple[int, int]:
    lo_s, _, hi_s = text.partition("-")
    lo = int(lo_s)
    hi = int(hi_s) if hi_s else lo
    for port in (lo, hi):
        if not 1 <= port <= 65535:
            raise InvalidInput(f"invalid port {port} in {spec!r}: ports are 1-65535", HINT)
    if hi < lo:
        raise InvalidInput(f"invalid port range {text!r} in {spec!r}: the end is below the start",
                           HINT)
    return lo, hi


def check_host_ip6(host_ip: IPAddress, spec: str, written: str, text: str = "") -> None:
    """An IPv6 host address a socket can be bound to as written: not an IPv4 address in
    IPv6's clothes (the host's IPv4 sockets hold those), not a link-local one (an
    address of one link, which a port mapping has no way to name). spec: as the user
    wrote it; text: as parsed, where written is (spec, unless its address had no
    brackets)."""
    assert isinstance(host_ip, ipaddress.IPv6Address)
    if host_ip.ipv4_mapped is not None:
        plain = (text or spec).strip().replace(written, str(host_ip.ipv4_mapped), 1)
        raise InvalidInput(f"host address {written.strip('[]')} in {spec!r} is an IPv4 "
                           "address written as IPv6", f"write it as IPv4: {plain}")
    if host_ip.is_link_local:
        raise InvalidInput(f"cannot publish on {host_ip} in {spec!r}: a link-local address "
                           "belongs to one link, which a published port cannot name",
                           "publish on one of the host's other addresses (ip addr), or "
                           "on all of them (no address)")


def _bracketed(spec: str) -> str:
    """An IPv6 host address written without brackets, as Docker takes it (of more than
    three colon-separated parts, the last two are the ports: `::1:8080:80`), in
    brackets; anything else as it is."""
    parts = spec.split(":")
    if len(parts) < 4 or spec.startswith("["):
        return spec
    address = ":".join(parts[:-2])
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return spec
    return f"[{address}]:{parts[-2]}:{parts[-1]}"


def parse_port_spec(spec: str) -> list[PortMapping]:
    """One spec into one mapping per port. host_port 0 means 'pick a free one'."""
    text = spec.strip()
    m = _SPEC.fullmatch(text)
    if m is None:
        text = _bracketed(text)
        m = _SPEC.fullmatch(text)
    if m is None:
        raise InvalidInput(f"invalid port spec {spec!r}", HINT)
    proto = protocol(m.group("proto") or "tcp", f"in {spec!r}")
    host_ip: IPAddress | None = None
    if m.group("ip"):
        raw = m.group("ip").strip("[]")
        try:
            host_ip = ipaddress.ip_address(raw)
        except ValueError:
            raise InvalidInput(f"invalid host address {raw!r} in {spec!r}", HINT) from None
        # 0.0.0.0 and [::] are kept: every address of that family alone (Docker 27:
        # `-p 0.0.0.0:8080:80` publishes on IPv4 only, `-p [::]:8080:80` on IPv6 only;
        # without an address, on both).
        if host_ip.version == 6 and not host_ip.is_unspecified:
            check_host_ip6(host_ip, spec, m.group("ip"), text)
    c_lo, c_hi = port_range(m.group("cport"), spec)
    if m.group("hport"):
        h_lo, h_hi = port_range(m.group("hport"), spec)
        if c_lo == c_hi and h_hi > h_lo:
            # Docker: a range of host ports for one container port takes the first free
            # one of the range.
            return [PortMapping(container_port=c_lo, host_port=h_lo, protocol=proto,
                                host_ip=host_ip, host_port_end=h_hi)]
        if h_hi - h_lo != c_hi - c_lo:
            raise InvalidInput(f"port ranges in {spec!r} differ in length", HINT)
    else:
        h_lo, h_hi = 0, 0
    out = []
    for i in range(c_hi - c_lo + 1):
        host_port = h_lo + i if h_lo else 0
        out.append(PortMapping(container_port=c_lo + i, host_port=host_port,
                               protocol=proto, host_ip=host_ip))
    return out


# Each published port costs a map element and a held socket (two: IPv4 and IPv6): a
# bound that keeps one container from taking a whole host's ports and the daemon's
# descriptors, yet allows the port ranges media servers publish (10,000 UDP ports).
MAX_PORTS = 16384


def parse_port_specs(specs: list[str]) -> tuple[PortMapping, ...]:
    out: list[PortMapping] = []
    for spec in specs:
        out.extend(parse_port_spec(spec))
        if len(out) > MAX_PORTS:
            raise InvalidInput(f"too many published ports: -p {spec} brings them to "
                               f"{len(out)}; a container may publish at most {MAX_PORTS}",
                               "publish a smaller range (each port of a range counts)")
    seen: set[tuple[int, str, str]] = set()
    for pm in out:
        if pm.host_port == 0 or pm.host_port_end:
            continue
        key = (pm.host_port, pm.protocol, str(pm.host_ip or ""))
        if key in seen:
            raise InvalidInput(f"host port {pm.host_port}/{pm.protocol} is published twice",
                               "publish each host port once")
        seen.add(key)
    return tuple(out)


def format_mapping(pm: PortMapping) -> str:
    ip = str(pm.host_ip) if pm.host_ip else "0.0.0.0"
    if ":" in ip:
        ip = f"[{ip}]"
    host = f"{pm.host_port}-{pm.host_port_end}" if pm.host_port_end else str(pm.host_port)
    return f"{ip}:{host}->{pm.container_port}/{pm.protocol}"


_DIGITS = re.compile(r"\d+|\D")


def natural_key(text: str) -> tuple[tuple[int, int, str, int] | tuple[int, str], ...]:
    """The order docker/cli's `port` prints its lines in (sortorder.NaturalLess): a run
    of digits counts by its value (then fewer leading zeros first) and comes before any
    other character; other characters by code point. So "80/tcp -> 0.0.0.0:8080" comes
    before "80/tcp -> [::]:8080", and "[::1]" before "[::]"."""
    key: list[tuple[int, int, str, int] | tuple[int, str]] = []
    for chunk in _DIGITS.findall(text):
        if chunk.isdigit():
            value = chunk.lstrip("0")
            key.append((0, len(value), value, len(chunk) - len(value)))
        else:
            key.append((1, chunk))
    return tuple(key)


def parse_port_key(text: str) -> tuple[int, Protocol]:
    """`portway port NAME PORT[/tcp|udp]`'s port."""
    port, _, proto_text = text.partition("/")
    proto_text = (proto_text or "tcp").lower()
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535 \
            or proto_text not in PROTOCOLS:
        raise InvalidInput(f"invalid port {text!r}", "give PORT or PORT/tcp, PORT/udp or "
                           "PORT/sctp, e.g. 80/tcp")
    return int(port), protocol(proto_text, "")


def protocol(text: str, where: str) -> Protocol:
    """A published or exposed port's protocol, as Docker reads it: tcp, udp or sctp,
    in any case."""
    for known in PROTOCOLS:
        if text.lower() == known:
            return known
    raise InvalidInput(f"unsupported protocol {text.lower()!r} {where}".rstrip(),
                       "use tcp, udp or sctp")


def addresses_overlap(a: IPAddress | None, b: IPAddress | None) -> bool:
    """Whether publications on host addresses a and b share an address: None is every
    address of both families, 0.0.0.0 and :: every address of theirs."""
    if a is None or b is None:
        return True
    return a.version == b.version and (a == b or a.is_unspecified or b.is_unspecified)


def host_port_holder(sockets: list[tuple[str, int]], host_ip: str | None,
                     port: int) -> str | None:
    """The listening socket that a publication of host_ip:port would collide with."""
    for address, bound in sockets:
        if bound != port:
            continue
        # "::" may take IPv4 too (unless IPV6_V6ONLY, which the kernel does not say here);
        # a publication on 0.0.0.0 (or ::) meets every socket of its family.
        if host_ip is None or address in (host_ip, "::") or \
                (address == "0.0.0.0" and ":" not in host_ip) or \
                (host_ip in ("0.0.0.0", "::") and (":" in address) == (":" in host_ip)):
            return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return None


HOST_BINDING_OPTION = "com.docker.network.bridge.host_binding_ipv4"


def default_binding(ports: tuple[PortMapping, ...],
                    options: dict[str, str]) -> tuple[PortMapping, ...]:
    """ports as a network with Docker's host_binding_ipv4 option publishes them: a port
    given no host address takes the option's. 0.0.0.0 stays every address of both
    families (Docker's default); :: is every IPv6 address alone; another address, that
    address alone (127.0.0.1: only the host reaches the port)."""
    text = options.get(HOST_BINDING_OPTION)
    if not text:
        return ports
    address = ipaddress.ip_address(text)
    if address == ipaddress.IPv4Address("0.0.0.0"):
        return ports
    return tuple(replace(p, host_ip=address) if p.host_ip is None else p for p in ports)
