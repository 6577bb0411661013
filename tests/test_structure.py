"""The floors of docs/architecture.md, read from the code's own imports (those inside functions too).

A contributor who makes a command import another, or the science import the glue, learns it here, with
the file and the import named, before the picture in the docs stops being true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "robustlip"
#: The console commands, one module each.
COMMANDS = {"train", "evaluate", "separation", "visualize", "staircase", "report", "tsipras"}
#: What the science may import: itself and the foundation.
SCIENCE = {"attacks", "models", "theory", "objectives", "metrics", "data", "schedules", "module"}
FOUNDATION = {"core"}


def _room(path: Path) -> str:
    """The first part of a module's dotted name below robustlip: ``attacks`` for attacks/pgd.py, ``train`` for train.py."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported robustlip module, names taken from it) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "robustlip":
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "robustlip"]
    return found


def _targets(module: str, names: list[str]) -> set[str]:
    """The rooms an import reaches: ``from robustlip import train`` reaches ``train``."""
    parts = module.split(".")
    if len(parts) > 1:
        return {parts[1]}
    return set(names)


SOURCES = sorted(PACKAGE.rglob("*.py"))


def _broken(rule) -> list[str]:
    broken = []
    for path in SOURCES:
        room = _room(path)
        for line, module, names in _imports(path):
            for target in _targets(module, names):
                if target != room and not rule(room, target):
                    broken.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} ({', '.join(names)})")
    return broken


def test_the_sources_are_found():
    rooms = {_room(path) for path in SOURCES}
    assert COMMANDS | SCIENCE | FOUNDATION | {"runs", "callbacks", "reporting", "evaluation", "cli"} <= rooms


@pytest.mark.parametrize(("rule", "why"), [
    (lambda room, target: not (room in COMMANDS and target in COMMANDS),
     "no command imports another; what two commands share lives in runs/ or cli.py"),
    (lambda room, target: room not in FOUNDATION or target in FOUNDATION,
     "core/ is the foundation: it imports nothing else of robustlip"),
    (lambda room, target: room not in SCIENCE or target in SCIENCE | FOUNDATION,
     "the science imports only the science and core/, never the glue"),
])
def test_imports_keep_the_floors(rule, why):
    assert _broken(rule) == [], why


def test_no_module_imports_a_private_name_of_another():
    taken = [f"{path.relative_to(PACKAGE.parent)}:{line} takes {name} from {module}"
             for path in SOURCES for line, module, names in _imports(path) for name in names
             if name.startswith("_") and not name.startswith("__")]
    assert taken == []
