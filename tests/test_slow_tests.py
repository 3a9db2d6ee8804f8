"""The slow list names tests that exist: a renamed test would otherwise drop out of it silently."""

from __future__ import annotations

import ast
from pathlib import Path

from slow_tests import SLOW

TESTS = Path(__file__).parent


def test_every_slow_entry_names_a_test_function() -> None:
    missing = []
    for entry in sorted(SLOW):
        filename, name = entry.split("::")
        path = TESTS / filename
        defined = (
            {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
            if path.exists()
            else set()
        )
        if name not in defined:
            missing.append(entry)
    assert not missing, f"tests/slow_tests.py names tests that do not exist: {missing}"
