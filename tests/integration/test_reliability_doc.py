"""docs/reliability.md lists every scenario test, so the report cannot fall behind the tests."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent.parent / "docs" / "reliability.md"


def scenario_tests() -> list[str]:
    """``file::function`` of every test function that takes the ``scenario`` fixture."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == "test_scenario.py":  # the record's own unit tests
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_test = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
            if is_test and "scenario" in {arg.arg for arg in node.args.args}:
                found.append(f"{path.name}::{node.name}")
    return found


def test_every_scenario_test_is_in_the_reliability_report():
    tests = scenario_tests()
    assert len(tests) >= 30, tests  # the fault, partition, churn and security scenarios
    text = DOC.read_text()
    missing = [test for test in tests if f"`{test}`" not in text and f"`{test}[" not in text]
    assert missing == [], f"add these scenarios to {DOC.name}: {missing}"
