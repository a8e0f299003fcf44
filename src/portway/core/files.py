"""The files a container's processes see: /etc/hosts, /etc/hostname, /etc/resolv.conf."""

from __future__ import annotations

from collections.abc import Iterable

from portway.model.types import IPAddress


def render_hosts(hostname: str, name: str, addresses: Iterable[IPAddress],
                 domainname: str = "", extra: Iterable[tuple[str, str]] = (),
                 ipv6: bool = True) -> str:
    """Docker's /etc/hosts: localhost (::1 too unless the container's IPv6 is off), the
    --add-host lines, then the container's own addresses with its names
    (HOSTNAME.DOMAIN first where it has a domain name)."""
    lines = ["127.0.0.1\tlocalhost"]
    if ipv6:
        lines.append("::1\tlocalhost ip6-localhost ip6-loopback")
    lines += [f"{address}\t{host}" for host, address in extra]
    own = [f"{hostname}.{domainname}"] if domainname else []
    own += [hostname] + ([name] if name != hostname else [])
    for address in addresses:
        lines.append(f"{address}\t{' '.join(own)}")
    return "\n".join(lines) + "\n"


def append_hosts(host_hosts: str, extra: Iterable[tuple[str, str]]) -> str:
    """The host's /etc/hosts with --add-host lines after it (a host-mode container)."""
    text = host_hosts if not host_hosts or host_hosts.endswith("\n") else host_hosts + "\n"
    return text + "".join(f"{address}\t{host}\n" for host, address in extra)


def render_hostname(hostname: str) -> str:
    return hostname + "\n"


def render_resolv_conf(nameservers: Iterable[str], search: Iterable[str] = (),
                       options: Iterable[str] = ()) -> str:
    lines = [f"nameserver {ns}" for ns in nameservers]
    search = list(search)
    if search:
        lines.append("search " + " ".join(search))
    options = list(options)
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, options) from a resolv.conf."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        if word == "nameserver" and rest.strip():
            servers.append(rest.strip())
        elif word in ("search", "domain"):
            search = rest.split()
        elif word == "options":
            options.extend(rest.split())
    return servers, search, options


def container_resolv_conf(host_resolv: str, nameserver: str | None,
                          search: Iterable[str] | None = None,
                          options: Iterable[str] | None = None) -> str:
    """What a container gets: portway's DNS server on its network's gateway, with the
    host's search domains and options (its upstreams are the DNS server's business),
    or the ones --dns-search and --dns-option give instead (Docker's rule: each replaces
    the host's). Without a network (none mode): the host's resolvers minus loopback ones,
    which are unreachable from the container's namespace."""
    servers, host_search, host_options = parse_resolv_conf(host_resolv)
    if nameserver is not None:
        servers = [nameserver]
    else:
        servers = [s for s in servers if not s.startswith("127.") and s != "::1"]
    return render_resolv_conf(servers, host_search if search is None else search,
                              host_options if options is None else options)
