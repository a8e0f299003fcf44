"""pyroute2 without its package's start-up cost, for portwayd's start.

`import pyroute2` (which any `from pyroute2.x import y` runs first) imports the whole
library: NDB, IPDB, the CLI console, the remote and WireGuard sockets and more, and
through pyroute2.lab unittest.mock and asyncio; portway uses IPRoute and a few netlink
modules. A daemon's start pays that on the way to its first answer, which a rootless
Podman user pays with their first container of a session (the daemon lives only as long
as their containers). lean() puts a bare package object in its place, so that only the
modules portway imports are loaded, with the package's one public name portway uses
(IPRoute) on it, and lab's mixin without its mocking (used by pyroute2's own tests).

Rules of this module:
1. It changes nothing once pyroute2 is imported (a process that imported it already, a
   test, keeps the real package); it must run before anything imports pyroute2.
2. Anything unexpected leaves the normal import in place: lean() is an optimisation,
   never a requirement.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any


class _LabApi:
    """pyroute2.lab.LAB_API as it is when mocking is off (always, outside pyroute2's
    own tests): a mixin that only passes its arguments on."""

    def __init__(self, *argv: Any, **kwarg: Any) -> None:
        super().__init__(*argv, **kwarg)


def lean() -> bool:
    """Load pyroute2's IPRoute without the package's __init__; True if it did."""
    if "pyroute2" in sys.modules:
        return False
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return False
    package = types.ModuleType("pyroute2")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    package.__package__ = "pyroute2"
    lab = types.ModuleType("pyroute2.lab")
    lab.LAB_API = _LabApi  # type: ignore[attr-defined]
    lab.registry = []  # type: ignore[attr-defined]
    lab.use_mock = False  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = package
    sys.modules["pyroute2.lab"] = lab
    try:
        from pyroute2.iproute.linux import IPRoute
    except Exception:
        for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
            del sys.modules[name]
        return False
    package.IPRoute = IPRoute  # type: ignore[attr-defined]
    package.lab = lab  # type: ignore[attr-defined]
    return True
