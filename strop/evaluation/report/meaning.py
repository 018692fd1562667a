"""Report sections on what the programs mean: token order, objects, questions over codes.

- `order`: eval.json's `order_probe` block per K (alignment drop per permutation kind with
  its CI, the bag-of-codes control) and its one-line verdict per K;
- `objects`: analysis.json's `object_metrics` (FG-ARI, mBO) per K, with the masks they were
  scored against; numbers from ellipse masks (real CLEVR) are marked approximate in the
  table itself, not only in a note;
- `qa`: `strop-llm qa` summaries (`RUN/llm/qa/<model>/summary.json`) as accuracy per
  question family with CIs, one row per (model, K).

Design decisions
- Kept apart from `results` and `downstream` so the sections other work adds to the report
  do not collide; like them it reads files only and turns a missing part into a note naming
  the command that produces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import DASH, Section, Table
from strop.evaluation.report.formatting import fmt, fmt_ci

KINDS = ("random", "reverse", "cyclic", "sorted")


def order(runs: list[RunData]) -> Section:
    sec = Section("Does token order matter? (order probe)", "order")
    rows = []
    for run in runs:
        probe = (run.eval or {}).get("order_probe")
        if not probe:
            if run.eval is not None:
                sec.notes.append(
                    f"{run.name}: eval.json has no order probe: rerun `strop eval {run.folder.path}`."
                )
            continue
        drops = probe.get("drop") or {}
        bag = probe.get("bag_of_codes") or {}
        bag_drop = bag.get("drop") or {}
        rows.append(
            [run.name, fmt(run.k), fmt(probe.get("n")), fmt(probe.get("true_cos"))]
            + [
                fmt_ci((drops.get(k) or {}).get("mean"), (drops.get(k) or {}).get("ci"))
                for k in KINDS
            ]
            + [fmt_ci(bag_drop.get("mean"), bag_drop.get("ci"))]
        )
        sec.text.append(f"K={fmt(run.k)} ({run.name}): {probe.get('verdict', DASH)}.")
    if not rows:
        sec.notes.append("no order probe yet: run `strop eval RUN` on each run.")
        return sec
    sec.text.insert(
        0,
        "Each evaluated program is reinterpreted with its tokens reordered; cells are the drop "
        "in mean patch cosine against the true order, mean [95% bootstrap CI over images]. "
        "The bag-of-codes control is a ridge regression from code histograms (order-free by "
        "construction), cross-fitted over the same images: it asks whether the multiset alone "
        "carries the field, which a permutation of an interpreter trained on ordered programs "
        "cannot separate from off-distribution brittleness.",
    )
    sec.tables.append(
        Table(
            "order_probe",
            ["run", "K", "n", "cos (true order)"]
            + [f"drop: {k}" for k in KINDS]
            + ["drop: bag of codes"],
            rows,
        )
    )
    return sec


def objects(runs: list[RunData]) -> Section:
    sec = Section("Tokens and objects (FG-ARI, mBO)", "objects")
    rows = []
    for run in runs:
        om = (run.analysis or {}).get("object_metrics")
        if not om or not om.get("n_images"):
            if run.analysis is not None:
                sec.notes.append(
                    f"{run.name}: no object metrics: rerun `strop analyze {run.folder.path}` "
                    "on a dataset with scenes."
                )
            continue
        approx = " (approximate)" if om.get("approximate") else ""
        sec.notes += [f"{run.name}: {w}" for w in om.get("warnings") or [] if isinstance(w, str)]
        rows.append(
            [
                run.name,
                fmt(run.k),
                fmt_ci(om.get("fg_ari"), om.get("fg_ari_ci")) + approx,
                fmt_ci(om.get("mbo"), om.get("mbo_ci")) + approx,
                fmt(om.get("n_images")),
                fmt(om.get("n_objects")),
                str(om.get("masks") or DASH),
            ]
        )
    if not rows:
        sec.notes.append("no object metrics yet: run `strop analyze RUN` on each run.")
        return sec
    sec.text.append(
        "The token attribution map (each patch to its most influential token) scored as a "
        "segmentation: FG-ARI is the adjusted Rand index over foreground pixels, mBO the mean "
        "over objects of the best IoU with any token's region; [95% bootstrap CI]. Exact "
        "against the renderer's instance masks; against ellipses built from `pixel_coords` "
        "(real CLEVR ships no masks) the numbers are approximate and marked so."
    )
    sec.tables.append(
        Table(
            "object_metrics",
            ["run", "K", "FG-ARI", "mBO", "images", "objects", "masks"],
            rows,
        )
    )
    return sec


QA_DIR = Path("llm") / "qa"


def qa_summaries(run: RunData) -> dict[str, dict[str, Any]]:
    """`strop-llm qa` summaries of one run by model folder, as `collect` read and checked them."""
    return run.qa


def qa_table(entries: list[tuple[str, int | None, dict[str, Any]]]) -> Table | None:
    """Accuracy per family [CI] and n, one row per (model, K): shared with `strop-llm report`."""
    if not entries:
        return None
    families: list[str] = []
    for _, _, s in entries:
        families += [f for f in (s.get("families") or {}) if f not in families]
    rows = []
    for model, k, s in sorted(entries, key=lambda e: (e[1] or 0, e[0])):
        fam = s.get("families") or {}
        overall = s.get("overall") or {}
        rows.append(
            [model, fmt(k), str(s.get("mode", DASH))]
            + [
                f"{fmt_ci(fam[f].get('accuracy'), fam[f].get('ci'))} (n={fam[f].get('n')})"
                if f in fam
                else DASH
                for f in families
            ]
            + [f"{fmt_ci(overall.get('accuracy'), overall.get('ci'))} (n={overall.get('n')})"]
        )
    return Table("qa", ["model", "K", "input"] + families + ["all"], rows)


def qa(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("Questions over codes (strop-llm qa)", "qa")
    entries = [(model, run.k, s) for run in runs for model, s in qa_summaries(run).items()]
    table = qa_table(entries)
    # a summary skipped on reading is said here too, where its row would have been
    sec.notes += [p for run in runs for p in run.problems if f"/{QA_DIR.as_posix()}/" in p]
    if table is None:
        sec.notes.append(
            f"no QA results: run `strop-llm qa --backend naive --k K --runs {experiment}` "
            "(and `--backend knn`, or `--model NAME` for an LLM)."
        )
        return sec
    sec.text.append(
        "CLEVR-style questions answered from the codes; accuracy per question family "
        "[95% Wilson CI] (n). Baselines: naive answers each family's majority answer, knn "
        "answers from the nearest training program's scene; input `scene` is the oracle "
        "given the true scene JSON instead of codes."
    )
    sec.tables.append(table)
    return sec
