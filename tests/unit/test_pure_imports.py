"""The CLI imports only the standard library; core/ and model/ import no I/O modules."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(imports: str, watch: str) -> list[str]:
    """Which modules matching `watch` (an expression over m) a fresh interpreter has loaded."""
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if {watch}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return eval(out)  # type: ignore[no-any-return]


def test_cli_imports_no_third_party() -> None:
    assert loaded_after("import portway.cli.main",
                        "m.split('.')[0] in ('pyroute2', 'sqlite3') or "
                        "m.startswith(('portway.engine', 'portway.store'))") == []


def test_core_has_no_io_imports() -> None:
    assert loaded_after("import portway.core.ipam, portway.core.validate, portway.core.ports, "
                        "portway.core.files, portway.core.names, portway.core.trace, "
                        "portway.core.nftsim, portway.core.graph, portway.model",
                        "m in ('pyroute2', 'sqlite3', 'subprocess', 'ctypes')") == []


def test_cli_hot_path_imports_nothing_slow() -> None:
    # What `portway run -d` loads (python -S, as the launcher starts it): none of the
    # modules that cost milliseconds each (re alone is ~7 ms, argparse ~10 ms), nor os
    # and __future__ (a millisecond and half of one).
    code = ("import sys; import portway.cli.main as m; "
            "m.Args(m.parse(m._root(), ['run', '-d', '--name', 'x', '--', 'sleep', '1'])); "
            "import portway.cli.client as c; c.encode_json({'a': [1, 'b']}); "
            "print(sorted(n for n in sys.modules if n in ('re', 'json', 'argparse', "
            "'typing', 'subprocess', 'shutil', 'enum', 'signal', 'socket', 'gettext', "
            "'os', '__future__', 'portway.cli.render')))")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = "
                          f"{sys.path!r}; {code}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_ps_without_a_format_imports_nothing_slow() -> None:
    # `portway ps` renders its table, Docker's status text and ports column, without
    # the template evaluator, re, json or typing (they load only for --format/--filter).
    rows = ("[{'Id': 'a' * 64, 'Name': '/web', 'Created': '2026-01-01T00:00:00Z', "
            "'Path': 'sleep', 'Args': ['1'], 'State': {'Status': 'running', 'Running': True, "
            "'ExitCode': 0, 'StartedAt': '2026-01-01T00:00:01Z', 'FinishedAt': ''}, "
            "'NetworkSettings': {'Ports': {'80/tcp': [{'HostIp': '0.0.0.0', "
            "'HostPort': '8080'}]}, 'Networks': {'bridge': {'IPAddress': '172.17.0.2'}}}}]")
    code = ("import sys, time; import portway.cli.main as m; "
            "a = m.Args(m.parse(m._root(), ['ps', '-a'])); "
            "from portway.cli import formats; from portway.core import listing; "
            f"rows = listing.select({rows}, listing.parse_filters(a.filter), a.last or -1); "
            "assert 'Up ' in formats.ps_table(rows, time.time(), True); "
            "print(sorted(n for n in sys.modules if n in ('re', 'json', 'argparse', "
            "'typing', 'subprocess', 'shutil', 'enum', 'os', "
            "'portway.core.gotemplate', 'dataclasses')))")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = "
                          f"{sys.path!r}; {code}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
