"""The QA part of `strop-llm report`: accuracy per question family with CIs, per (model, K).

Design decisions
- Rebuilt from every `RUN/llm/qa/<model>/summary.json` under the experiment, like the
  decoding table; rows sort by K, baselines first, then model. A cell is
  `accuracy [Wilson 95% CI] (n)`; the `input` column says `scene` for the oracle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from llm_decode.qa.programs import FAMILIES
from llm_decode.results import SUMMARY_FILE
from strop.runs import RunFolderError, discover_runs


def collect_qa(experiment: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every QA summary under the experiment, with `run` and `folder` added."""
    found = []
    for run in discover_runs(experiment):
        for path in sorted((run.llm_dir / "qa").glob(f"*/{SUMMARY_FILE}")):
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise RunFolderError(f"{path}: not valid JSON ({exc.msg})") from None
            summary.setdefault("k", run.codebook_size)
            found.append({**summary, "run": run.name, "folder": path.parent.name})
    return found


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("accuracy") is None:
        return "-"
    lo, hi = stats["ci"]
    return f"{stats['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] ({stats['n']})"


def qa_rows(summaries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    families = [f for f in FAMILIES if any(f in (s.get("families") or {}) for s in summaries)]
    families += sorted({f for s in summaries for f in (s.get("families") or {})} - set(families))
    headers = ["Model", "K", "input", *families, "all", "parse fails"]
    rows = []
    for s in sorted(
        summaries,
        key=lambda s: (s.get("k") or 0, s.get("backend") not in ("naive", "knn"), s["folder"]),
    ):
        fams = s.get("families") or {}
        fails = f"{s.get('parse_fails', 0)} / {s.get('n', 0)}"
        if s.get("missing"):
            fails += f" ({s['missing']} missing)"
        rows.append(
            [s["folder"], str(s.get("k", "?")), str(s.get("mode", "codes"))]
            + [_cell(fams.get(f)) for f in families]
            + [_cell(s.get("overall")), fails]
        )
    return headers, rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (shared with the decoding table)."""
    return [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def qa_markdown(summaries: list[dict[str, Any]]) -> str:
    if not summaries:
        return ""
    headers, rows = qa_rows(summaries)
    return "\n".join(
        [
            "## Questions over codes (strop-llm qa)",
            "",
            *markdown_table(headers, rows),
            "",
            "Accuracy per question family [Wilson 95% CI] (n). naive: each family's majority "
            "answer; knn: the question run on the nearest shot program's scene; input `scene`: "
            "the oracle, given the true scene JSON instead of codes.",
            "",
        ]
    )


def qa_table(summaries: list[dict[str, Any]], experiment: Path) -> Table:
    headers, rows = qa_rows(summaries)
    table = Table(title=f"Questions over codes ({experiment})")
    for h in headers:
        table.add_column(h, justify="left" if h == "Model" else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table
