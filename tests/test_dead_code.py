"""Issue 11.8: no dead code in bot/ and handlers/.

A function, method or property defined there and named nowhere in the project (bot,
handlers, storage, tests, bench) is dead: `vulture bot handlers` finds the same ones (it
also lists pydantic validators and the like, which are called by name from outside).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN_DECORATORS = {"property", "staticmethod", "classmethod"}
# Storage methods of the money path that are going away: the services must not call them.
GOING_AWAY = {"revive_with_code", "recapture", "rehold", "list_due", "set_next_poll"}


def _trees(*folders: str) -> list[tuple[str, ast.AST]]:
    return [
        (folder, ast.parse(path.read_text(encoding="utf-8")))
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]


def _names_used(tree: ast.AST) -> set[str]:
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.add(node.value)  # getattr(self, "_m_" + ...) and the like
    return used


def test_every_function_in_bot_and_handlers_is_used() -> None:
    defined: dict[str, str] = {}
    used: set[str] = set()
    for folder, tree in _trees("bot", "handlers", "storage", "tests", "bench"):
        used |= _names_used(tree)
        if folder not in ("bot", "handlers"):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            plain = all(
                isinstance(d, ast.Name) and d.id in PLAIN_DECORATORS for d in node.decorator_list
            )
            if plain and not node.name.startswith("__"):
                defined.setdefault(node.name, f"{folder}:{node.lineno}")
    dead = sorted(name for name in defined if name not in used)
    assert dead == [], f"never used: {dead}"


def test_services_call_none_of_the_money_paths_going_away() -> None:
    called = set()
    for _folder, tree in _trees("bot", "handlers"):
        called |= _names_used(tree) & GOING_AWAY
    assert called == set()
