"""The repository stands alone: nothing in it points at files or machines outside it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("strop", "grammar", "llm_decode", "bench")


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files += list((ROOT / "docs").glob("*.md")) + list((ROOT / "configs").glob("*.md"))
    files += [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    return sorted(files)


def test_no_pointer_to_a_design_document_outside_the_repository():
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "DESIGN.md" in line
    ]
    assert found == []


#: A reference to the workspace's shared folder beside the checkout: spelled as a path
#: ("../shared"), joined onto a parent folder (`parents[2] / "shared"`, `ROOT.parent /
#: "shared"`), or joined after ".." (`os.path.join(root, "..", "shared")`).
OUTSIDE_SHARED = re.compile(
    r"""\.\./shared"""
    r"""|\bparents?\b.*/\s*["']shared["']"""
    r"""|["']\.\.["']\s*,\s*["']shared["']"""
)


def test_the_shared_folder_pattern_catches_every_spelling():
    caught = [
        'REAL = Path(__file__).resolve().parents[2] / "shared" / "clevr-real"',
        "DATA = ROOT.parent / 'shared'",
        'root = Path("../shared/clevr")',
        'os.path.join(here, "..", "shared", "clevr")',
    ]
    passed = [
        'out = tmp_path_factory.mktemp("shared") / "tok"',
        "shared = parents_of(x)",
        '"shared" in name',
        'ROOT / "docs" / "shared.md"',
    ]
    assert [line for line in caught if not OUTSIDE_SHARED.search(line)] == []
    assert [line for line in passed if OUTSIDE_SHARED.search(line)] == []
    # and on real code: bench reads the real-CLEVR sample through it on purpose
    bench = (ROOT / "bench" / "bench_input.py").read_text(encoding="utf-8")
    assert OUTSIDE_SHARED.search(bench)


def test_code_points_at_no_folder_outside_the_repository():
    """The packages stand alone: data they were checked on is described in docs/, never
    reached through the workspace's ../shared folder."""
    shipped = ("strop", "grammar", "llm_decode", "prompts")  # bench reads the sample on purpose
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for pkg in shipped
        for p in sorted((ROOT / pkg).rglob("*"))
        if p.suffix in (".py", ".j2", ".jinja")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_SHARED.search(line)
    ]
    assert found == []


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add("." * node.level + node.module)
    return names


def is_test_module(name: str) -> bool:
    last = name.lstrip(".").split(".")
    return last[0] == "tests" or last[-1].startswith("test_")


def test_no_test_module_imports_another():
    """Shared fixtures live in tests/conftest.py, shared plain functions in tests/helpers.py:
    a test module imported by another runs its module-level code twice and drags its
    fixtures into the importer under the same names."""
    found = {
        f"{p.name}: {name}"
        for p in sorted((ROOT / "tests").glob("*.py"))
        for name in imported_modules(p)
        if is_test_module(name)
    }
    assert found == set()
    assert is_test_module("test_train_trainer") and is_test_module("tests.conftest")
    assert is_test_module(".test_eval_pipeline") and not is_test_module("helpers")


def test_code_names_no_machine_path():
    machine = re.compile(r"(?<![\w.])/(work|home|Users|tmp)/")
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _sources()
        if p.suffix == ".py"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if machine.search(line)
    ]
    assert found == []


def test_every_doc_a_docstring_points_at_exists():
    pointed = {
        m
        for p in _sources()
        if p.suffix == ".py"
        for m in re.findall(r"docs/([A-Z_0-9]+\.md)", p.read_text(encoding="utf-8"))
    }
    assert {"METHOD.md", "FORMATS.md"} <= pointed
    assert pointed <= {p.name for p in (ROOT / "docs").glob("*.md")}


def test_a_run_says_how_many_tests_skipped_for_want_of_shared_data_or_tools(tmp_path):
    """tests/conftest.py counts the skips of `needs_shared` and `needs_tool` tests, so a fresh
    clone's run says what it could not check (run here on a sample of both)."""
    import subprocess
    import sys

    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.needs_shared\n"
        "def test_on_shared_data():\n"
        "    pytest.skip('no ../shared')\n\n"
        "@pytest.mark.needs_shared\n"
        "def test_on_shared_data_that_is_there():\n"
        "    pass\n\n"
        "@pytest.mark.needs_tool\n"
        "def test_with_a_tool():\n"
        "    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest"]
        + ["-W", "ignore::pytest.PytestUnknownMarkWarning", "test_sample.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "real-data tests skipped: 1 of 2 (../shared not present)" in lines, done.stdout
    assert "external-tool tests skipped: 0 of 1" in lines, done.stdout
