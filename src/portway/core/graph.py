"""`portway graph`: the topology from `show`, as a Graphviz DOT picture.

Pure: takes the data `show --json` prints and returns DOT text; the CLI hands it
to `dot` for SVG or PNG. Left to right: the host's interfaces, the bridges, the
veth pairs (host end, then container end inside the container's box), the
published ports as the host addresses they open, and the namespaces portway did not
make that the host's veths lead to (a dashed box each). An overlay network's VXLAN
device is a port of its bridge, tunnelling to a node for each other host's VTEP.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

MISSING = "#c0392b"
NL = "\\n"  # a line break inside a DOT label


def _q(text: str) -> str:
    # Names are validated ([A-Za-z0-9_.-]); a backslash here is a DOT escape like \n.
    return '"' + text.replace('"', '\\"') + '"'


def _attrs(**kw: str) -> str:
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in kw.items()) + "]"


def to_dot(topo: dict[str, Any]) -> str:
    lines = ["digraph portway {",
             '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.15, '
             'ranksep=0.6];',
             '  node [fontname="Helvetica", fontsize=10, shape=box, style=rounded];',
             '  edge [fontname="Helvetica", fontsize=9, arrowhead=none];',
             f"  subgraph cluster_host {{ label={_q('host namespace ' + topo['HostNetns'])};"
             ' style=dashed;']
    for link in topo["HostLinks"]:
        lines.append(f"    {_q('if:' + link['Name'])} "
                     f"{_attrs(label=link['Name'] + ' #' + str(link['Index']), shape='box')};")
    ports: list[str] = []
    remote_lines: list[str] = []  # the other hosts' VTEPs: outside the host's box
    published: set[str] = set()
    boxes: dict[str, list[str]] = {}
    for net in topo["Networks"]:
        if net.get("Driver") == "macvlan":
            _macvlan(lines, boxes, ports, net)
            continue
        br = net["Bridge"]
        color = "black" if br["Present"] else MISSING
        name = br.get("Name", br.get("Expected", ""))
        label = f"{name}\\nnetwork {net['Name']}" + "".join(
            f"\\n{subnet} gw {gateway}" for subnet, gateway in zip(
                net.get("Subnets") or [net["Subnet"]], net.get("Gateways") or [net["Gateway"]],
                strict=True))
        if net["Internal"]:
            label += "\\ninternal"
        if not br["Present"]:
            label += "\\nMISSING"
        lines.append(f"    {_q('br:' + net['Id'])} [label={_q(label)}, shape=box, "
                     f'style="rounded,filled", fillcolor="#eaf2f8", color={_q(color)}];')
        for m in net["Containers"]:
            host = m["HostEnd"]
            hid = f"veth:{m['Id']}:{net['Id']}"
            hlabel = f"{host['Name']} #{host['Index']}" if host["Present"] else "veth MISSING"
            lines.append(f"    {_q(hid)} {_attrs(label=hlabel, shape='cds')};")
            lines.append(f"    {_q('br:' + net['Id'])} -> {_q(hid)};")
            inner = m["ContainerEnd"]
            cid = f"end:{m['Id']}:{net['Id']}"
            ilabel = (f"{inner['Name']} #{inner['Index']}" if inner["Present"]
                      else "MISSING") + "".join(f"\\n{a}" for a in
                                                m.get("Addresses") or [m["Address"]])
            boxes.setdefault(m["Id"], [f"{m['Name']} ({m['Status']})", inner["Netns"]])
            boxes[m["Id"]].append(f"{_q(cid)} {_attrs(label=ilabel)};")
            ports.append(f"  {_q(hid)} -> {_q(cid)} [style=bold, label=\"veth\"];")
            for spec in m["Ports"]:
                pid = f"port:{spec}"
                published.add(pid)
                lines.append(f"    {_q(pid)} {_attrs(label=spec, shape='note')};")
                ports.append(f"  {_q(pid)} -> {_q(cid)} [style=dashed, arrowhead=normal, "
                             f"label=\"DNAT\"];")
        if net.get("Vxlan"):
            remote_lines += _vxlan(lines, net)
    for c in topo["Unbridged"]:
        note = "shares the host's network:\\nno isolation" if c["Mode"] == "host" \
            else "no network"
        lines.append(f"    {_q('mode:' + c['Id'])} [label={_q(c['Name'] + NL + note)}, "
                     f'shape=box, style="rounded,dashed"];')
    foreign: dict[str, tuple[str, list[str]]] = {}
    for ns in topo.get("Foreign", []):
        for link in ns["Links"]:
            host, end = link["HostEnd"], link["End"]
            hid, eid = f"fveth:{host['Name']}", f"fend:{ns['Key']}:{host['Name']}"
            hlabel = f"{host['Name']} #{host['Index']}" + (
                f"{NL}port of {host['Bridge']}" if host["Bridge"] else "")
            lines.append(f"    {_q(hid)} {_attrs(label=hlabel, shape='cds')};")
            elabel = (f"{end['Name']} #{end['Index']}" if end["Present"] else "?") + \
                "".join(f"{NL}{a}" for a in end["Addresses"])
            foreign.setdefault(ns["Key"], (ns["Label"], []))[1].append(
                f"{_q(eid)} {_attrs(label=elabel)};")
            ports.append(f"  {_q(hid)} -> {_q(eid)} [style=bold, label=\"veth\"];")
    lines.append("  }")
    lines += remote_lines
    for key, (label, nodes) in foreign.items():
        lines.append(f"  subgraph {_q('cluster_ns:' + key)} {{ label={_q(label)};"
                     ' style="rounded,dashed";')
        lines += [f"    {node}" for node in nodes]
        lines.append("  }")
    uplinks = [f"if:{link['Name']}" for link in topo["HostLinks"]]
    for pid in sorted(published):
        for up in uplinks:
            lines.append(f"  {_q(up)} -> {_q(pid)} [style=dotted];")
    for cid, (title, netns, *nodes) in boxes.items():
        label = _q(title + NL + netns)
        lines.append(f"  subgraph {_q('cluster_' + cid)} {{ label={label};"
                     ' style="rounded,filled"; fillcolor="#fdf2e9";')
        lines += [f"    {node}" for node in nodes]
        lines.append("  }")
    lines += ports
    lines.append("}")
    return "\n".join(lines) + "\n"


def _macvlan(lines: list[str], boxes: dict[str, list[str]], ports: list[str],
             net: dict[str, Any]) -> None:
    """A macvlan network: its parent (in the host's box, where a bridge would be), and
    each container's macvlan device of it (in the container's box)."""
    parent = net["Bridge"]
    name = parent.get("Name", parent.get("Expected", ""))
    label = f"{name}\\nmacvlan network {net['Name']} ({net['Mode']})" + "".join(
        f"\\n{subnet} gw {gateway}" for subnet, gateway in zip(
            net.get("Subnets") or [], net.get("Gateways") or [], strict=True))
    if not parent["Present"]:
        label += "\\nMISSING"
    color = "black" if parent["Present"] else MISSING
    lines.append(f"    {_q('br:' + net['Id'])} [label={_q(label)}, shape=box, "
                 f'style="rounded,filled", fillcolor="#eafaf1", color={_q(color)}];')
    for m in net["Containers"]:
        inner = m["ContainerEnd"]
        cid = f"end:{m['Id']}:{net['Id']}"
        ilabel = (f"{inner['Name']} #{inner['Index']}" if inner["Present"]
                  else "MISSING") + "".join(f"\\n{a}" for a in m.get("Addresses") or [])
        boxes.setdefault(m["Id"], [f"{m['Name']} ({m['Status']})", inner["Netns"]])
        boxes[m["Id"]].append(f"{_q(cid)} {_attrs(label=ilabel)};")
        ports.append(f"  {_q('br:' + net['Id'])} -> {_q(cid)} [style=bold, "
                     'label="macvlan"];')


def _vxlan(lines: list[str], net: dict[str, Any]) -> list[str]:
    """An overlay network's VXLAN device (a port of its bridge, in the host's box), and
    a node for each other host's VTEP with the containers behind it: returns those
    nodes and the tunnels to them (drawn outside the host's box). A tunnel whose FDB or
    neighbour entries are missing is red and dashed."""
    vx = net["Vxlan"]
    vid = f"vx:{net['Id']}"
    name = vx.get("Name", vx.get("Expected", ""))
    label = f"{name} #{vx['Index']}" if vx["Present"] else f"{name}{NL}MISSING"
    label += f"{NL}VXLAN VNI {vx['Vni']}{NL}local {vx['Local']}, mtu {vx.get('Mtu', '?')}"
    color = "black" if vx["Present"] else MISSING
    lines.append(f"    {_q(vid)} [label={_q(label)}, shape=cds, color={_q(color)}];")
    lines.append(f"    {_q('br:' + net['Id'])} -> {_q(vid)};")
    hosts: dict[str, list[dict[str, Any]]] = {}
    for r in vx["Remote"]:
        hosts.setdefault(r["Host"], []).append(r)
    out: list[str] = []
    for host, remote in sorted(hosts.items()):
        tid = f"vtep:{net['Id']}:{host}"
        label = f"host {host} (VTEP)" + "".join(
            f"{NL}{r['Name']} {' '.join(r['Addresses'])} {r['Mac']}" for r in remote)
        out.append(f"  {_q(tid)} [label={_q(label)}, shape=box3d];")
        whole = all(r["Fdb"] and r["Neighbours"] for r in remote)
        style = "" if whole else f', style=dashed, color="{MISSING}"'
        note = "" if whole else f"{NL}entries MISSING"
        tunnel = f"UDP {vx['Local']} -> {host}:4789{note}"
        out.append(f"  {_q(vid)} -> {_q(tid)} [label={_q(tunnel)}{style}];")
    return out


# ------------------------------------------------------------------ a trace's path

PATH = "#1f618d"  # the path's steps
STOP = "#c0392b"  # where it stopped
DONE = "#1e8449"  # where it was delivered
_REWRITE = re.compile(r"(destination|source) (\S+) -> (\S+) \(([^)]+)\)")


def _anchors(topo: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The picture's nodes by interface name (bridges, both ends of every veth, the
    host's links) and by container name (its first interface), as to_dot names them."""
    by_if: dict[str, str] = {f"host:{link['Name']}": f"if:{link['Name']}"
                             for link in topo["HostLinks"]}
    by_container: dict[str, str] = {}
    for net in topo["Networks"]:
        br = net["Bridge"]
        by_if[f"host:{br.get('Name', br.get('Expected', ''))}"] = f"br:{net['Id']}"
        vx = net.get("Vxlan")
        if vx:
            name = vx.get("Name", vx.get("Expected", ""))
            by_if[f"host:{name}"] = f"vx:{net['Id']}"
            for r in vx["Remote"]:
                by_if[f"vtep:{name}:{r['Host']}"] = f"vtep:{net['Id']}:{r['Host']}"
        for m in net["Containers"]:
            end = f"end:{m['Id']}:{net['Id']}"
            by_container.setdefault(m["Name"], end)
            if m["HostEnd"]["Present"]:
                by_if[f"host:{m['HostEnd']['Name']}"] = f"veth:{m['Id']}:{net['Id']}"
                by_if[f"peer:{m['HostEnd']['Name']}"] = end
            by_if[f"{m['Name']}:{m['ContainerEnd'].get('Name', 'eth0')}"] = end
    for ns in topo.get("Foreign", []):
        for link in ns["Links"]:
            name = link["HostEnd"]["Name"]
            by_if[f"host:{name}"] = f"fveth:{name}"
            by_if[f"peer:{name}"] = f"fend:{ns['Key']}:{name}"
    return by_if, by_container


def _anchors_of(hop: dict[str, Any], by_if: dict[str, str], by_container: dict[str, str],
                here: str) -> list[str]:
    """The nodes a hop passes, in order, as far as the picture has them (a veth: both
    ends); here: the container the packet is in (a veth hop names its interfaces, not
    the container)."""
    kind, where = hop["kind"], hop["where"]
    if kind in ("route", "socket") and where.startswith("container "):
        node = by_container.get(where.split(" ", 1)[1])
        return [node] if node else []
    if kind == "veth" and " -> " in where:
        left, right = where.split(" -> ", 1)
        nodes = [by_if.get(f"host:{left}") or by_if.get(f"{here}:{left}"),
                 by_if.get(f"host:{right}") or by_if.get(f"peer:{left}") or
                 by_if.get(f"{here}:{right}")]
        return [n for n in nodes if n]
    if kind in ("bridge", "leave", "drop", "vxlan") and where:
        node = by_if.get(f"host:{where.split()[0]}")
        return [node] if node else []
    return []


def _step_text(number: int, hop: dict[str, Any]) -> str:
    """One line for a step on an arrow: where, what decided (shortened), what it
    rewrote."""
    detail = str(hop["detail"])
    rewrites = ", ".join(f"{m[3]} {m[1]} -> {m[2]}" for m in _REWRITE.findall(detail))
    where = str(hop["where"]).split(": ", 1)[-1]
    decided = detail.split(";", 1)[0].split(": ", 1)[-1]
    if len(decided) > 60:
        decided = decided[:57] + "..."
    text = f"{number} {where}: {decided}" if hop["kind"] == "hook" else \
        f"{number} {hop['kind']} {where}"
    return f"{text} ({rewrites})" if rewrites else text


def path_dot(topo: dict[str, Any], trace: dict[str, Any]) -> str:
    """The topology of to_dot with a trace's path drawn on it: the interfaces and
    bridges it passes numbered in order and joined by arrows, each arrow labelled with
    the hooks passed on the way (the deciding rule's verdict, the rewrites), and the
    place it ended: green where it was delivered, red where it stopped, with the
    verdict."""
    by_if, by_container = _anchors(topo)
    lines: list[str] = []
    here = ""
    steps: list[tuple[str, list[int], list[str]]] = []  # node, its steps, steps on the way
    pending: list[str] = []
    start = f"path:{trace['source']}"
    lines.append(f"  {_q(start)} [label={_q('from ' + str(trace['source']))}, shape=oval, "
                 f"color={_q(PATH)}, fontcolor={_q(PATH)}];")
    steps.append((start, [], []))
    device = ""  # the VXLAN device the path left by
    far = ""  # after it: the other host's node, where that host's half is drawn
    for number, hop in enumerate(trace["hops"], 1):
        if hop["kind"] == "route" and str(hop["where"]).startswith("container "):
            here = str(hop["where"]).split(" ", 1)[1]
        if hop["kind"] == "vxlan" and not far:
            if str(hop["where"]).startswith("host "):
                far = by_if.get(f"vtep:{device}:{str(hop['where']).split()[1]}", "")
            else:
                device = str(hop["where"])
        nodes = [far] if far else _anchors_of(hop, by_if, by_container, here)
        if not nodes:
            pending.append(_step_text(number, hop))
        for node in nodes:
            if node == steps[-1][0]:
                if number not in steps[-1][1]:
                    steps[-1][1].append(number)
                steps[-1][2].extend(pending)
            else:
                steps.append((node, [number], pending))
            pending = []
    delivered = trace.get("verdict") == "delivered"
    color = DONE if delivered else STOP
    end = f"path:end:{trace['verdict']}"
    verdict = f"{trace['verdict']}: {trace.get('summary', '')}".rstrip(": ")
    lines.append(f"  {_q(end)} [label={_q(_wrap(verdict))}, shape=note, color={_q(color)}, "
                 f"fontcolor={_q(color)}];")
    steps.append((end, [], pending))
    for node, numbers, _ in steps[1:-1]:
        lines.append(f"  {_q(node)} [color={_q(PATH)}, penwidth=2, "
                     f"xlabel={_q(','.join(str(n) for n in numbers))}];")
    last = steps[-2][0]
    if last != start:
        lines.append(f"  {_q(last)} [color={_q(color)}, penwidth=3];")
    for (a, _, _), (b, _, on_way) in itertools.pairwise(steps):
        label = NL.join(on_way)
        lines.append(f"  {_q(a)} -> {_q(b)} [color={_q(color if b == end else PATH)}, "
                     f"penwidth=2, arrowhead=normal, constraint=false, "
                     f"fontcolor={_q(PATH)}, label={_q(label)}];")
    dot = to_dot(topo)
    return dot[:dot.rindex("}")] + "\n".join(lines) + "\n}\n"


def _wrap(text: str, width: int = 48) -> str:
    """A label's long line broken at spaces (DOT does not wrap)."""
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return NL.join([*out, line])
