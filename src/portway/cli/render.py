"""Text for `portway show`: the topology the daemon observed, made readable."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy still sees the block
if TYPE_CHECKING:
    from typing import Any


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def _end(link: dict[str, Any], fallback: str) -> str:
    if not link["Present"]:
        return f"{fallback} MISSING"
    state = "" if link["Up"] else ", down"
    return f"{link['Name']} #{link['Index']}{state}"


def veth_pair(member: dict[str, Any], ifname: str) -> str:
    host, inner = member["HostEnd"], member["ContainerEnd"]
    text = f"{_end(host, 'host end')} <-> {_end(inner, ifname)} in {inner['Netns']}"
    if host["Present"] and inner["Present"] and (
            host["Peer"] != inner["Index"] or inner["Peer"] != host["Index"]):
        text += " (NOT PEERS)"
    return text


def subnets(net: dict[str, Any]) -> tuple[str, str]:
    """A network's subnets and gateways, each family's (IPv4 first), comma-separated."""
    return (", ".join(net.get("Subnets") or [net["Subnet"]]),
            ", ".join(net.get("Gateways") or [net["Gateway"]]))


def addresses(member: dict[str, Any]) -> str:
    """An endpoint's addresses, one per family (IPv4 first), comma-separated."""
    return ", ".join(member.get("Addresses") or [member["Address"]])


def vxlan_text(vx: dict[str, Any], bridge: str) -> tuple[list[str], bool]:
    """An overlay network's VXLAN device and the containers on other hosts (lines, and
    whether anything is missing)."""
    if not vx["Present"]:
        return [f"  vxlan {vx['Expected']} MISSING (vni {vx['Vni']})"], True
    state = "up" if vx["Up"] else "DOWN"
    bad = not vx["Up"] or vx["Bridge"] != bridge
    lines = [f"  vxlan {vx['Name']} #{vx['Index']} ({state}, vni {vx['Vni']}, local "
             f"{vx['Local']}, dstport 4789, mtu {vx['Mtu']}), "
             + (f"port of {vx['Bridge']}" if vx["Bridge"] else "on no bridge")]
    rows = []
    for r in vx["Remote"]:
        entries = "fdb + neighbour" if r["Fdb"] and r["Neighbours"] else "MISSING " + \
            " and ".join(k for k, ok in (("fdb", r["Fdb"]), ("neighbour", r["Neighbours"]))
                         if not ok)
        bad = bad or entries.startswith("MISSING")
        rows.append([r["Name"], ", ".join(r["Addresses"]), r["Mac"], r["Host"], entries])
    if rows:
        lines.append("  on other hosts:")
        lines.append("  " + table(rows, ["CONTAINER", "ADDRESS", "MAC", "HOST (VTEP)",
                                         "ENTRIES ON " + vx["Name"]]).replace("\n", "\n  "))
    return lines, bad


def macvlan_text(net: dict[str, Any]) -> tuple[list[str], bool]:
    """A macvlan network: its parent on the host, and each container's macvlan device
    of it (lines, and whether anything is missing)."""
    parent = net["Bridge"]
    bad = not parent["Present"]
    where = f"{parent['Name']} #{parent['Index']}" if parent["Present"] else \
        f"{parent['Expected']} MISSING"
    subnet, gateway = subnets(net)
    addressing = f"{subnet}  gateway {gateway} (on the LAN)" if subnet else \
        "no IPAM: no subnet"
    lines = ["", f"network {net['Name']}  {addressing}"
             + (", internal" if net["Internal"] else ""),
             f"  macvlan on parent {where}, mode {net['Mode']} (no bridge, no rules, no "
             "names: the containers are on the parent's LAN)"]
    rows = []
    for m in net["Containers"]:
        inner = m["ContainerEnd"]
        device = f"{_end(inner, 'macvlan')} in {inner['Netns']}"
        bad = bad or not inner["Present"]
        rows.append([m["Name"], addresses(m), m["Mac"], device, m["Status"]])
    if rows:
        lines.append("  " + table(rows, ["CONTAINER", "ADDRESS", "MAC", "MACVLAN DEVICE",
                                         "STATUS"]).replace("\n", "\n  "))
    else:
        lines.append("  (no containers)")
    return lines, bad


def show_text(topo: dict[str, Any]) -> str:
    uplinks = ", ".join(f"{u['Name']} #{u['Index']}{'' if u['Up'] else ' down'}"
                        for u in topo["HostLinks"]) or "none"
    out = [f"host namespace {topo['HostNetns']}; other interfaces: {uplinks}"]
    trouble = False
    for net in topo["Networks"]:
        if net.get("Driver") == "macvlan":
            text, bad = macvlan_text(net)
            out += text
            trouble = trouble or bad
            continue
        bridge = net["Bridge"]
        if bridge["Present"]:
            state = "up" if bridge["Up"] else "DOWN"
            br = f"bridge {bridge['Name']} #{bridge['Index']} ({state}, mtu {bridge['Mtu']})"
        else:
            br, trouble = f"bridge {bridge['Expected']} MISSING", True
        kind = "".join(f", {m}" for m in (["internal"] if net["Internal"] else [])
                       + net.get("Modes", []))
        subnet, gateway = subnets(net)
        # No subnet: a Podman network with ipam driver none (its containers address
        # themselves, if at all).
        addressing = f"{subnet}  gateway {gateway}" if subnet else "no IPAM: no subnet"
        out += ["", f"network {net['Name']}  {addressing}{kind}", f"  {br}"]
        rows = []
        for m in net["Containers"]:
            pair = veth_pair(m, "eth?")
            trouble = trouble or "MISSING" in pair or "NOT PEERS" in pair
            port_of = m["HostEnd"].get("Bridge", "")
            if m["HostEnd"]["Present"] and port_of != bridge.get("Name"):
                pair += f" (port of {port_of or 'no bridge'})"
                trouble = True
            rows.append([m["Name"], addresses(m), m["Mac"], pair,
                         ", ".join(m["Ports"]) or "-", m["Status"]])
        if rows:
            out.append("  " + table(rows, ["CONTAINER", "ADDRESS", "MAC",
                                           "VETH PAIR (host end <-> container end)",
                                           "PUBLISHED", "STATUS"]).replace("\n", "\n  "))
        else:
            out.append("  (no containers)")
        if "Vxlan" in net:
            text, bad = vxlan_text(net["Vxlan"], bridge.get("Name", ""))
            out += text
            trouble = trouble or bad
    for c in topo["Unbridged"]:
        note = " (shares the host's network: no isolation)" if c["Mode"] == "host" else ""
        out += ["", f"container {c['Name']}: --network {c['Mode']}{note}, {c['Status']}"]
    rows = [[ns["Label"], _end(link["HostEnd"], "host end") + (
                f" (port of {link['HostEnd']['Bridge']})" if link["HostEnd"]["Bridge"] else ""),
             _end(link["End"], "its end"), ", ".join(link["End"]["Addresses"]) or "-"]
            for ns in topo.get("Foreign", []) for link in ns["Links"]]
    if rows:
        out += ["", "namespaces portway did not make, reached by the host's veths",
                "  " + table(rows, ["NAMESPACE", "HOST END", "ITS END", "ADDRESSES"])
                .replace("\n", "\n  ")]
    if trouble:
        out += ["", "some pieces are missing or miswired: 'portway doctor' lists them, "
                    "'portway gc' repairs them"]
    return "\n".join(out)
