"""The layout's rules, read from the code: the package never imports a script, no import circle, short rooms."""
from __future__ import annotations

import ast

import import_graph
from conftest import REPO


def test_the_package_imports_no_script_and_no_circle_and_every_room_is_short():
    arrows = import_graph.import_arrows(REPO)
    assert not import_graph.describe(arrows)["in_circles"]
    assert import_graph.breaches(REPO, arrows) == []


def test_the_rule_reader_finds_a_planted_breach(tmp_path):
    """A package module importing a script, a long module and a long function are each named."""
    (tmp_path / "sleepstaging" / "scoring").mkdir(parents=True)
    (tmp_path / "blend.py").write_text("def main():\n    pass\n")
    body = "\n".join(f"    x{n} = {n}" for n in range(70))
    (tmp_path / "sleepstaging" / "scoring" / "bad.py").write_text(
        "import blend\n\n\ndef long_function():\n" + body + "\n" + "\n" * 600)
    found = import_graph.breaches(tmp_path, import_graph.import_arrows(tmp_path))
    assert found == ["sleepstaging.scoring.bad imports the script blend",
                     "sleepstaging/scoring/bad.py: 674 lines", "sleepstaging/scoring/bad.py:4 long_function: 71 lines"]


def test_no_test_or_bench_edits_the_import_path():
    """pyproject.toml puts the scripts and benches on the path; nothing inserts into sys.path by hand."""
    for path in sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("insert", "append") and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "path" and \
                    getattr(node.value.value, "id", None) == "sys":
                raise AssertionError(f"{path.name}:{node.lineno} edits sys.path")
