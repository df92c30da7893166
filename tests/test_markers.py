"""The `slow` marker: every name in conftest.SLOW_TESTS exists, and `-m "not slow"` leaves those tests out."""
from __future__ import annotations

import ast
import subprocess
import sys

import conftest
from conftest import REPO, SLOW_TESTS


def test_every_slow_name_is_a_test_of_its_file():
    for file_name, names in SLOW_TESTS.items():
        path = REPO / "tests" / file_name
        assert path.is_file(), f"SLOW_TESTS names {file_name}, which is not in tests/"
        defined = {node.name for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
        missing = set(names or ()) - defined
        assert not missing, f"SLOW_TESTS names tests that {file_name} does not define: {sorted(missing)}"


class _Item:
    """What the marking hook reads of a collected test: its file, its name, its markers."""

    def __init__(self, file_name, name):
        self.path, self.originalname, self.markers = REPO / "tests" / file_name, name, []

    def add_marker(self, marker):
        self.markers.append(marker.name)


def test_the_hook_marks_whole_files_and_named_tests_only(monkeypatch):
    monkeypatch.setattr(conftest, "SLOW_TESTS", {"test_whole.py": None, "test_some.py": {"test_b"}})
    items = [_Item("test_whole.py", "test_a"), _Item("test_some.py", "test_a"), _Item("test_some.py", "test_b"),
             _Item("test_other.py", "test_b")]
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.markers for item in items] == [["slow"], [], ["slow"], []]


def test_not_slow_deselects_exactly_the_slow_tests():
    files = ("tests/test_pipeline.py", "tests/test_postprocess.py")

    def collected(*marker):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *marker, *files],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode in (0, 5), result.stdout + result.stderr   # 5: nothing selected
        return {line.split("[")[0] for line in result.stdout.splitlines() if "::" in line}

    everything, fast, slow = collected(), collected("-m", "not slow"), collected("-m", "slow")
    expected_slow = {node for node in everything if node.startswith("tests/test_pipeline.py::")
                     or node.split("::")[1] in (SLOW_TESTS.get("test_postprocess.py") or ())}
    assert any(node.startswith("tests/test_pipeline.py::") for node in expected_slow)
    assert "tests/test_postprocess.py::test_each_rule" in fast
    assert slow == expected_slow
    assert fast == everything - slow
