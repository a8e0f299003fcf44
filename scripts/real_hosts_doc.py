"""Write the "Debugging real hosts" chapter of docs/how-packets-move.md from the scenario
suite (make real-hosts-doc).

It runs tests/e2e/test_trace_scenarios.py with PORTWAY_SCENARIO_RECORD set, so each
scenario writes down, beside its checks, what the real connection met and the text
`portway trace ... --live` printed; the chapter is those, in the order of the suite,
under each scenario's own account (its docstring, which cites the thread it comes
from). Scenarios the trace does not model yet (strict xfails) are shown as they are,
with what they need. The chapter replaces the one already in the document, or is
added at its end; scripts/how_packets_move.py keeps it when it rewrites the rest.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "e2e" / "test_trace_scenarios.py"
DOC = ROOT / "docs" / "how-packets-move.md"
MARKER = "## Debugging real hosts"

INTRO = f"""{MARKER}

The scenarios below are real problems people brought to issue trackers and Q&A sites,
each rebuilt as a real host has it: plain namespaces (a "VM", another runtime's
container), bridges, nftables rules and sysctls made by hand, never by portway, which
has nothing on these hosts (so `trace` starts no daemon and changes nothing). Each
symptom was first met by a real connection; the static verdict says the same, `--live`
agrees (where the verdict comes from a stale conntrack entry or from the way back beyond
the uplink, which a probe cannot meet, it agrees with the request alone, and says so), the
hop that decides is the one that explains it, and the `fix:` line says what to change.
Then the fix is applied, and the trace changes with the connection.

Written by `make real-hosts-doc` (scripts/real_hosts_doc.py) from the scenario suite,
tests/e2e/test_trace_scenarios.py, which `make test` runs. In the output, `host` is the
lab's host namespace, `outside` the one beyond its uplink, and the other namespaces are
named as the lab named them. A scenario marked *not modelled yet* would show what trace
says today, which is wrong, and what it needs.
"""


def scenarios() -> list[tuple[str, str, str | None]]:
    """(test name, docstring, xfail reason or None) of each scenario, in file order."""
    tree = ast.parse(SUITE.read_text())
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
            continue
        reason = None
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.xfail":
                for kw in deco.keywords:
                    if kw.arg == "reason":
                        reason = str(ast.literal_eval(kw.value))
        out.append((node.name, ast.get_docstring(node) or "", reason))
    return out


def run_suite(record: str) -> None:
    cp = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         str(SUITE)], cwd=ROOT, env=dict(os.environ,
                                                         PORTWAY_SCENARIO_RECORD=record))
    if cp.returncode != 0:
        raise SystemExit("real-hosts-doc: the scenario suite failed; nothing written")


def named(text: str, rec: dict[str, Any]) -> str:
    """The lab's random namespace names as readers would name them."""
    return text.replace(f"{rec['host']}-", "").replace(rec["host"], "host") \
        .replace(rec["outside"], "outside")


def plain(text: str, rec: dict[str, Any]) -> str:
    """text with the lab's names as readers would name them, and the static trace's table
    of hops aligned again for the shorter names (its rows are NUMBER, KIND in 6, WHERE
    padded to the longest, DETAIL: see portway.core.trace.render)."""
    width = max((len(w) for w in rec["wheres"]), default=0)
    rows: list[tuple[str, str, str, str]] = []
    out: list[str] = []
    table = False
    def flush() -> None:
        new_width = max((len(r[2]) for r in rows), default=0)
        out.extend(f"{n}  {k} {w:<{new_width}}  {d}" for n, k, w, d in rows)
        rows.clear()

    for line in text.splitlines():
        if line.startswith("trace ") or line == "the reply comes back:":
            table = True  # (the reply's rows are laid out as the request's)
        elif line.startswith("verdict:") or (table and not line.strip()):
            table = False
            flush()
        elif table and len(line) > 12 + width:
            rows.append((line[:3], line[5:11], named(line[12:12 + width].rstrip(), rec),
                         named(line[14 + width:], rec)))
            continue
        out.append(named(line, rec))
    flush()
    return "\n".join(out)


WORDS = {"vms": "VMs", "ip": "IP", "lan": "LAN", "udp": "UDP", "vm": "VM",
         "guests": "guest's", "ipv4": "IPv4", "ipv6": "IPv6"}


def title(name: str) -> str:
    """A scenario's heading, from its test's name."""
    text = " ".join(WORDS.get(w, w) for w in name.removeprefix("test_").split("_"))
    if text.startswith("IP forward"):
        return "`ip_forward`" + text[len("IP forward"):]
    return text[0].upper() + text[1:]


def chapter(records: list[dict[str, Any]]) -> str:
    out = [INTRO]
    for name, doc, reason in scenarios():
        mine = [r for r in records if r["test"] == name]
        if not mine:
            continue
        out += [f"### {title(name)}", "", textwrap.fill(" ".join(doc.split()), 88), ""]
        if reason is not None:
            out += [f"*Not modelled yet*: {reason}.", ""]
        for number, rec in enumerate(mine):
            when = "The symptom" if number == 0 else "After the fix"
            out += [f"{when}: a real connection met `{rec['real']}`.", "", "```",
                    named(f"$ portway trace {' '.join(rec['args'])} --live", rec),
                    plain(rec["text"].rstrip("\n"), rec), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    fd, record = tempfile.mkstemp(prefix="pw-scenarios-", suffix=".jsonl")
    os.close(fd)
    try:
        run_suite(record)
        with open(record) as f:
            records = [json.loads(line) for line in f if line.strip()]
    finally:
        os.unlink(record)
    text = DOC.read_text()
    head = text.split(f"\n{MARKER}\n", 1)[0].rstrip("\n")
    DOC.write_text(head + "\n\n" + chapter(records))
    print(f"wrote the chapter '{MARKER[3:]}' of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
