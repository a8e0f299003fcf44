"""The test tree itself: pytest imports test modules by their basename (the tiers have no
__init__.py), so two files of one name in different tiers stop the whole suite at
collection, while running one tier alone still passes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_module_names_are_unique_across_tiers() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
