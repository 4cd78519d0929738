"""The test tree itself: pytest imports test modules by basename (no __init__.py),
so two modules with one name in tests/ and integration/ stop the whole collection."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_test_module_basenames_are_unique_across_tests_and_integration() -> None:
    names = Counter(
        p.name for d in ("tests", "integration") for p in (ROOT / d).rglob("test_*.py")
    )
    assert [n for n, c in names.items() if c > 1] == [], "rename one of each pair"
