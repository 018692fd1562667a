"""The repository stands alone: nothing in it points at files or machines outside it."""

from __future__ import annotations

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
        if "../shared" in line
    ]
    assert found == []


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
