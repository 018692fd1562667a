"""The package layout is the architecture: no import cycle, and layers import downwards only.

Every `import` statement counts, including those inside functions and under `TYPE_CHECKING`:
a local import hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("strop", "grammar", "llm_decode")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` names the submodule when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        (
            "strop.model",
            ("strop.training", "strop.evaluation", "strop.commands", "strop.quickstart"),
        ),
        ("strop.training", ("strop.evaluation", "strop.commands", "strop.quickstart")),
        # Evaluation uses trained models through the model layer (`Strop.load_tokenizer`).
        ("strop.evaluation", ("strop.training", "strop.commands", "strop.quickstart")),
        ("strop.data", ("strop.model", "strop.training", "strop.evaluation", "strop.commands")),
        ("grammar", ("strop.model", "strop.training", "strop.evaluation", "llm_decode")),
        ("llm_decode", ("strop.model", "strop.training", "strop.evaluation", "grammar")),
    ],
)
def test_layers_import_downwards_only(layer: str, forbidden: tuple[str, ...]):
    graph = import_graph()
    wrong = [
        (module, target)
        for module, targets in graph.items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert wrong == []


def test_strop_top_level_reads_like_the_method():
    names = sorted(p.name for p in (ROOT / "strop").iterdir() if not p.name.startswith("__"))
    packages = {n for n in names if (ROOT / "strop" / n).is_dir()}
    assert {"data", "model", "training", "evaluation", "commands"} <= packages
    modules = {n for n in names if n.endswith(".py")}
    assert modules <= {
        "cli.py",
        "cli_app.py",
        "cli_options.py",
        "atomic.py",
        "jsonfile.py",
        "errors.py",
        "output_unit.py",
        "provenance.py",
        "baselines.py",
        "devices.py",
        "scenes.py",
        "metrics.py",
        "quickstart.py",
    }


def test_product_code_imports_no_test_instrument():
    """`strop.testing` and `llm_decode.testing` serve tests and benchmarks; the product
    never reaches for them (they patch torch process-wide, or fake a server)."""
    instruments = ("strop.testing", "llm_decode.testing")
    wrong = [
        (module, target)
        for module, targets in import_graph().items()
        if not any(module == i or module.startswith(i + ".") for i in instruments)
        for target in targets
        if any(target == i or target.startswith(i + ".") for i in instruments)
    ]
    assert wrong == []
