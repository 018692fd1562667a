"""No module reaches into another module's private names (tests excepted).

A leading underscore says "only this module relies on me": its author may rename or change it
without looking further. So no module of strop/, grammar/, llm_decode/ or bench/ may

- import one (`from strop.x import _y`, relative imports too),
- read one off an imported module (`import strop.x as m; m._y`),
- or call or read, on any object but `self`/`cls`, a private name that another module of the
  tree defines and this one does not (`trainer._batches()`: a method, attribute or function
  the other module keeps to itself).

Private names of other libraries (`os._exit`, `torch._assert_async`) and dunders are not
ours to police. What must be shared gets a public name, or moves to where it is used.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("strop", "grammar", "llm_decode", "bench")

#: (module, name) reach-ins that stay, each with its reason. Empty is the goal.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, methods, assigned names and
    attributes (`self._x = ...`, class-level `_x: int`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return {n for n in names if is_private(n)}


def reach_ins(sources: dict[str, tuple[str, bool]]) -> list[tuple[str, int, str]]:
    """(module, line, what) for each use of another module's private name.

    `sources` maps a module name to (its source text, whether it is a package `__init__`)."""
    trees = {name: ast.parse(text) for name, (text, _) in sources.items()}
    defined = {name: defined_private_names(tree) for name, tree in trees.items()}
    found: list[tuple[str, int, str]] = []
    for name, tree in trees.items():
        package = name if sources[name][1] else name.rpartition(".")[0]
        elsewhere = set().union(*(d for m, d in defined.items() if m != name)) - defined[name]
        modules: set[str] = set()  # local names bound to a module of the tree
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    if is_private(alias.name):
                        found.append((name, node.lineno, f"from {base} import {alias.name}"))
                    if f"{base}.{alias.name}" in trees:
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PACKAGES:
                        modules.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not is_private(node.attr):
                continue
            owner = ast.unparse(node.value)
            if owner in ("self", "cls"):
                continue
            if owner.split(".")[0] in modules or node.attr in elsewhere:
                found.append((name, node.lineno, f"{owner}.{node.attr}"))
    return found


def tree_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
    }


def test_the_finder_finds_each_kind_of_reach_in():
    sources = {
        "strop.a": ("def _helper(): ...\nclass T:\n    def _step(self): self._n = 1\n", False),
        "strop.b": ("from strop.a import _helper\n", False),
        "strop.c": ("from . import a\na._helper()\n", False),
        "strop.d": ("def f(t):\n    return t._step(), t._n\n", False),
        "strop.h": ("def h(t):\n    t._n = 2\n", False),  # writing one is reaching in too
        # its own private names, other libraries' and dunders are fine
        "strop.e": ("import os\nclass U:\n    def _step(self): ...\n", False),
        "strop.f": ("import os\nos._exit(0)\nx = object().__class__\n", False),
        "strop.g": ("from strop.e import U\ndef g(u: U):\n    return u._step()\n", False),
    }
    sources["strop.e"] = (sources["strop.e"][0] + "U()._step()\n", False)
    assert sorted(reach_ins(sources)) == [
        ("strop.b", 1, "from strop.a import _helper"),
        ("strop.c", 2, "a._helper"),
        ("strop.d", 2, "t._n"),
        ("strop.d", 2, "t._step"),
        ("strop.g", 3, "u._step"),
        ("strop.h", 2, "t._n"),
    ]


def test_no_module_uses_another_modules_private_name():
    found = [
        f"{module}:{line}: {what}"
        for module, line, what in reach_ins(tree_sources())
        if (module, what.rpartition(".")[2].rpartition(" ")[2]) not in ALLOWED
    ]
    assert found == []


def test_every_allowed_reach_in_is_still_there():
    """An allowlist entry whose reach-in is gone goes too."""
    present = {
        (module, what.rpartition(".")[2].rpartition(" ")[2])
        for module, _, what in reach_ins(tree_sources())
    }
    assert set(ALLOWED) <= present
