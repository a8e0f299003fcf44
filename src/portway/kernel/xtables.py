"""iptables-nft's rules, as native nftables: what Docker 20.10 and netavark 1.4 write.

iptables-nft keeps its matches and targets that have no native form in nftables as
`xt` expressions, which `nft -j list ruleset` shows without their arguments: Docker's
`-m addrtype --dst-type LOCAL` and `-j DNAT --to-destination 172.17.0.2:80` become
`{"xt": {"type": "match", "name": "addrtype"}}` and `{"xt": {"type": "target",
"name": "DNAT"}}`, which no model can follow. iptables-nft-save still reads them, and
iptables-restore-translate writes them as native rules (`fib daddr type local`, `dnat
to 172.17.0.2:80`); loaded into a new, empty network namespace of this process's own
(gone once listed) they come back as JSON that trace and audit understand. Nothing of
the host is changed: its rules are only read.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from portway.errors import KernelError
from portway.kernel import netns
from portway.kernel.nft import Nft

TOOLS = {"ip": ("iptables-nft-save", "iptables-restore-translate"),
         "ip6": ("ip6tables-nft-save", "ip6tables-restore-translate")}


def has_xt(items: list[dict[str, Any]], family: str) -> set[str]:
    """The tables of family whose rules hold an xt expression."""
    return {r["table"] for i in items if (r := i.get("rule")) and r["family"] == family
            and any(isinstance(e, dict) and "xt" in e for e in r.get("expr", []))}


def managed(family: str) -> set[str]:
    """The tables of family that iptables-nft reads (iptables-nft-save's)."""
    save = TOOLS[family][0]
    if shutil.which(save) is None:
        return set()
    saved = subprocess.run([save], capture_output=True, text=True, timeout=30)
    return {line[1:].strip() for line in saved.stdout.splitlines() if line.startswith("*")}


def _complete_dnat(saved: str) -> str:
    """iptables-restore-translate 1.8.9 drops `-p tcp` from a rule that has `-m tcp`
    without a port (kube-proxy's KUBE-SEP rules), and nft then refuses its `dnat to
    ADDR:PORT` (a port mapping needs a transport protocol match): give such a rule the
    port match that changes nothing, every port."""
    out = []
    for line in saved.splitlines():
        words = line.split()
        if line.startswith("-A ") and "DNAT" in words and "--dport" not in words:
            for proto in ("tcp", "udp"):
                if f"-p {proto}" in line:
                    if f"-m {proto}" in line:
                        line = line.replace(f"-m {proto}", f"-m {proto} --dport 1:65535", 1)
                    else:
                        line = line.replace(f"-p {proto}",
                                            f"-p {proto} -m {proto} --dport 1:65535", 1)
                    break
        out.append(line)
    return "\n".join(out) + "\n"


def _translate(family: str, tables: set[str]) -> str:
    """The nft script of the named iptables-nft tables, or '' if it cannot be had."""
    save, translate = TOOLS[family]
    if shutil.which(save) is None or shutil.which(translate) is None:
        return ""
    out = []
    for table in sorted(tables):
        saved = subprocess.run([save, "-t", table], capture_output=True, text=True,
                               timeout=30)
        if saved.returncode != 0 or not saved.stdout.strip():
            continue
        done = subprocess.run([translate, "-f", "/dev/stdin"],
                              input=_complete_dnat(saved.stdout), capture_output=True,
                              text=True, timeout=30)
        if done.returncode == 0:
            out.append(done.stdout)
    return "\n".join(out)


def _listed(script: str) -> list[dict[str, Any]]:
    """The script loaded in a namespace of its own, and listed."""
    def load() -> list[dict[str, Any]]:
        nft = Nft()
        try:
            nft.run(script)
            return nft.list_ruleset()
        finally:
            nft.close()

    return netns.in_new_netns(load)


def native(items: list[dict[str, Any]]
           ) -> tuple[list[dict[str, Any]], list[str], frozenset[tuple[str, str]]]:
    """items (a ruleset listing of the calling thread's namespace) with each ip and ip6
    table that holds xt expressions replaced by its native translation; notes on what
    was translated or could not be; the tables iptables-nft manages (where it is in use:
    where some table holds xt expressions)."""
    notes: list[str] = []
    replaced: dict[tuple[str, str], list[dict[str, Any]]] = {}
    iptables: set[tuple[str, str]] = set()
    for family in ("ip", "ip6"):
        tables = has_xt(items, family)
        if not tables:
            continue
        iptables |= {(family, t) for t in managed(family)}
        script = _translate(family, tables)
        try:
            listed = _listed(script) if script else []
        except KernelError:  # a translation nft does not take: left as it is
            listed = []
        got = {(i["table"]["family"], i["table"]["name"]) for i in listed if "table" in i}
        for table in sorted(tables):
            if (family, table) not in got:
                notes.append(f"{family} {table} holds iptables-nft rules that could not be "
                             "translated (iptables-nft-save, iptables-restore-translate): "
                             "their matches and targets are not evaluated")
                continue
            replaced[(family, table)] = [i for i in listed if _table_of(i) == (family, table)]
            notes.append(f"{family} {table}: iptables-nft's rules read through "
                         "iptables-nft-save and translated to native nftables")
    if not replaced:
        return items, notes, frozenset(iptables)
    out = [i for i in items if _table_of(i) not in replaced]
    for table_items in replaced.values():
        out += table_items
    return out, notes, frozenset(iptables | set(replaced))


def _table_of(item: dict[str, Any]) -> tuple[str, str] | None:
    for kind in ("table", "chain", "rule", "set", "map", "element"):
        body = item.get(kind)
        if isinstance(body, dict):
            if kind == "table":
                return body["family"], body["name"]
            return body["family"], body["table"]
    return None
