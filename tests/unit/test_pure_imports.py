"""The CLI imports only the standard library; core/ and model/ import no I/O modules."""

from __future__ import annotations

import subprocess
import sys


def test_cli_imports_no_third_party() -> None:
    code = ("import sys; import portway.cli.main; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pyroute2', 'sqlite3', 'portway.engine')"
            " or m.startswith(('portway.engine', 'portway.store'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_core_has_no_io_imports() -> None:
    code = ("import sys; import portway.core.ipam, portway.core.validate, portway.core.ports, "
            "portway.core.files, portway.core.names, portway.model; "
            "print(sorted(m for m in ('pyroute2', 'sqlite3', 'subprocess', 'ctypes') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
