"""`portway graph`: the topology from `show`, as a Graphviz DOT picture.

Pure: takes the data `show --json` prints and returns DOT text; the CLI hands it
to `dot` for SVG or PNG. Left to right: the host's interfaces, the bridges, the
veth pairs (host end, then container end inside the container's box), the
published ports as the host addresses they open, and the namespaces portway did not
make that the host's veths lead to (a dashed box each).
"""

from __future__ import annotations

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
    published: set[str] = set()
    boxes: dict[str, list[str]] = {}
    for net in topo["Networks"]:
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
