"""The project's structure as its imports draw it: files, import arrows, floors, and the rules the layout keeps.

A file is a node; an arrow runs from a file to each project file it imports
(``import x``, ``from x import y``, ``from x.y import z``, at any depth of
the code, tests and this folder left out). A file's floor is 1 when it
imports no project file, else one more than the highest floor it imports
(an import circle would have no floor: reported). Counted twice: with every
file its own room, and with each folder of the package as one room.

    python bench/import_graph.py                 # this checkout
    python bench/import_graph.py --repo OTHER    # another checkout (an older commit, say)

Prints the counts and, for this layout, every breach of its rules: a
package module importing a top-level script, a module over 600 lines, a
function over 60 lines.
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
PACKAGE = "sleepstaging"

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout to read")
parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def source_files(repo: Path) -> list[Path]:
    """Every Python file of the code: the top level, the package, bench/; not tests or virtual environments."""
    files = sorted(repo.glob("*.py")) + sorted((repo / "bench").glob("*.py"))
    files += sorted(p for p in (repo / PACKAGE).rglob("*.py")) if (repo / PACKAGE).is_dir() else []
    return files


def module_name(repo: Path, path: Path) -> str:
    """``sleepstaging.scoring.blend`` for sleepstaging/scoring/blend.py; ``blend`` for a top-level file."""
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[0] == "bench":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, modules) -> set[str]:
    """The project modules an import statement brings in: ``from x import y`` is module ``x.y`` where that is
    a module of the project, else ``x``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                      for alias in node.names}
    return names & set(modules)


def import_arrows(repo: Path) -> dict[str, set[str]]:
    """File (module name) -> the project files it imports."""
    modules = {module_name(repo, path): path for path in source_files(repo)}
    return {name: imported_modules(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}


def floors(arrows: dict[str, set[str]]) -> dict[str, int]:
    """Each node's floor (1: imports nothing of the project); a node in an import circle is left out."""
    floor, visiting = {}, set()

    def visit(node):
        if node in floor or node in visiting:
            return floor.get(node)
        visiting.add(node)
        below = [visit(other) for other in arrows[node]]
        visiting.discard(node)
        if None in below:
            return None
        floor[node] = 1 + max(below, default=0)
        return floor[node]

    for node in arrows:
        visit(node)
    return floor


def room_of(module: str) -> str:
    """The room a module stands in when each folder of the package is one room."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == PACKAGE and len(parts) > 2 else module


def grouped(arrows: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for module, targets in arrows.items():
        rooms.setdefault(room_of(module), set()).update(room_of(t) for t in targets)
    return {room: targets - {room} for room, targets in rooms.items()}


def breaches(repo: Path, arrows: dict[str, set[str]]) -> list[str]:
    """What breaks the layout's rules: a package module importing a script, a module or function too long."""
    scripts = {p.stem for p in repo.glob("*.py")}
    found = [f"{module} imports the script {target}" for module, targets in sorted(arrows.items())
             if module.startswith(PACKAGE) for target in sorted(targets) if target in scripts]
    for path in source_files(repo):
        text = path.read_text()
        where = path.relative_to(repo)
        if len(text.splitlines()) > MAX_MODULE_LINES and path.is_relative_to(repo / PACKAGE):
            found.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    return found


def describe(arrows: dict[str, set[str]]) -> dict:
    floor = floors(arrows)
    return {"rooms": len(arrows), "arrows": sum(len(t) for t in arrows.values()),
            "floors": max(floor.values(), default=0), "in_circles": sorted(set(arrows) - set(floor))}


def main(argv=None) -> dict:
    args = parser.parse_args(argv)
    arrows = import_arrows(args.repo)
    result = {"files": describe(arrows), "folders_as_rooms": describe(grouped(arrows)),
              "breaches": breaches(args.repo, arrows)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("files", "folders_as_rooms"):
            figures = result[key]
            print(f"{key.replace('_', ' ')}: {figures['rooms']} rooms on {figures['floors']} floors, "
                  f"{figures['arrows']} arrows, {len(figures['in_circles'])} in import circles")
        print("\n".join(["breaches of the layout's rules:", *result["breaches"]] if result["breaches"]
                        else ["no breach of the layout's rules"]))
    return result


if __name__ == "__main__":
    main()
