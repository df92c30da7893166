"""The `slow` marker, set in each test file: spelled right, and `-m "not slow"` leaves exactly those tests out."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import REPO

KNOWN_MARKS = {"slow", "parametrize", "skipif", "skip", "xfail", "filterwarnings", "usefixtures"}


def _mark_name(node: ast.AST) -> str | None:
    """``x`` of a ``pytest.mark.x`` (called or not), else None."""
    if isinstance(node, ast.Call):
        node = node.func
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "pytest"):
        return node.attr
    return None


def slow_by_source(path) -> tuple[bool, set[str]]:
    """(whole file marked slow, names of the tests decorated slow), read from the file's source."""
    tree = ast.parse(path.read_text())
    whole = any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets)
                and _mark_name(node.value) == "slow" for node in tree.body)
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
             and any(_mark_name(d) == "slow" for d in node.decorator_list)}
    return whole, names


def test_every_mark_in_the_tests_is_one_pytest_knows():
    """A misspelt ``@pytest.mark.slwo`` would put a slow test in the fast loop without a word."""
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = _mark_name(node)
            assert name is None or name in KNOWN_MARKS, f"{path.name}: unknown mark pytest.mark.{name}"


@pytest.mark.slow
def test_not_slow_deselects_exactly_the_slow_tests():
    files = ("tests/test_pipeline.py", "tests/scoring/test_postprocess.py")

    def collected(*marker):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *marker, *files],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode in (0, 5), result.stdout + result.stderr   # 5: nothing selected
        return {line.split("[")[0] for line in result.stdout.splitlines() if "::" in line}

    everything, fast, slow = collected(), collected("-m", "not slow"), collected("-m", "slow")
    pipeline_whole, _ = slow_by_source(REPO / "tests" / "test_pipeline.py")
    postprocess_whole, postprocess_slow = slow_by_source(REPO / "tests" / "scoring" / "test_postprocess.py")
    assert pipeline_whole and not postprocess_whole and "test_command_hmm" in postprocess_slow
    expected_slow = {node for node in everything if node.startswith("tests/test_pipeline.py::")
                     or node.split("::")[1] in postprocess_slow}
    assert "tests/scoring/test_postprocess.py::test_each_rule" in fast
    assert slow == expected_slow
    assert fast == everything - slow
