"""The README's quickstart figures, from a quickstart folder:
`python -m strop.evaluation.readme_figures runs/quickstart`.

Prints the paragraph of numbers the README quotes (length vs object count per K, mean length
at the fewest and most objects, fixed vs curriculum alignment at the baseline's K, decoding
baselines), each from the file that holds it, so the README is regenerated, never retyped.

Design decisions
- Reads files only (eval.json, llm/<backend>/summary.json), like the report: no torch.
- Every number names its split and n; the fixed-vs-curriculum comparison is made at the K of
  the fixed run (64 by default) and says whether the two 95% intervals overlap.
- Every figure is stated with its baseline and verdict: the lines end with each run's
  comparison records (`strop.baselines`; found and checked as the report does,
  `strop.evaluation.report.verdicts`), a headline with a figure above and no record says
  so, and a run whose eval.json says `collapsed` is stated as collapsed first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from strop.evaluation.report.formatting import fmt, fmt_ci
from strop.metrics import ci_overlap
from strop.runs import RunFolder, RunFolderError, discover_runs, read_json


def _eval(run: RunFolder) -> dict[str, Any]:
    return read_json(run.eval_path) if run.eval_path.is_file() else {}


def _llm(run: RunFolder, backend: str) -> dict[str, Any]:
    path = run.llm_dir / backend / "summary.json"
    return read_json(path) if path.is_file() else {}


def _ci(e: dict[str, Any], key: str) -> str:
    lo, hi = ((e.get("ci95") or {}).get(key)) or (None, None)
    return f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""


def figures(quickstart_dir: str | Path) -> list[str]:
    """The README's figures as lines of Markdown prose."""
    experiment = Path(quickstart_dir) / "clevr"
    if not experiment.is_dir():
        experiment = Path(quickstart_dir)
    runs = discover_runs(experiment)
    curriculum = [r for r in runs if not r.name.endswith("-fixed") and _eval(r)]
    if not curriculum:
        raise RunFolderError(f"{experiment}: no evaluated quickstart runs (eval.json)")
    ks = [str(r.codebook_size) for r in curriculum]
    evals = [_eval(r) for r in curriculum]
    split, n = evals[0].get("split", "val"), evals[0].get("n_images")
    pearson = " / ".join(
        f"{(e.get('length_vs_objects') or {}).get('pearson', 0):.2f}" for e in evals
    )
    lines = [
        f"Program length tracked object count on the {n} {split} scenes: Pearson {pearson} "
        f"for K = {' / '.join(ks)}."
    ]
    by_objects = (evals[0].get("length_vs_objects") or {}).get("mean_length_by_objects") or {}
    if by_objects:
        lo, hi = min(by_objects, key=int), max(by_objects, key=int)
        lines.append(
            f"Mean length rose from {by_objects[lo]:.1f} tokens ({lo} objects) to "
            f"{by_objects[hi]:.1f} ({hi} objects) at K = {ks[0]}."
        )
    for fixed in (r for r in runs if r.name.endswith("-fixed")):
        base = next((r for r in curriculum if r.codebook_size == fixed.codebook_size), None)
        ef = _eval(fixed)
        if base is None or not ef:
            continue
        eb = _eval(base)
        overlap = ci_overlap((ef.get("ci95") or {}).get("cos"), (eb.get("ci95") or {}).get("cos"))
        noise = {True: "within noise", False: "beyond noise", None: "no intervals"}[overlap]
        lines.append(
            f"At K = {fixed.codebook_size} the fixed-length baseline ({ef.get('length_mean', 0):.0f} "
            f"tokens) reached cos {ef.get('cos', 0):.3f}{_ci(ef, 'cos')} vs the curriculum's "
            f"{eb.get('cos', 0):.3f}{_ci(eb, 'cos')} at {eb.get('length_mean', 0):.1f} tokens "
            f"({noise}; 95% bootstrap intervals over the {ef.get('n_images')} {split} images)."
        )
    knn = [_llm(r, "knn") for r in curriculum]
    naive = [_llm(r, "naive") for r in curriculum]
    if all(knn) and all(naive):
        shots = (knn[0].get("protocol") or {}).get("shots", "?")

        def errors(summaries: list[dict[str, Any]]) -> str:
            return " / ".join(f"{s.get('count_err', 0):.2f}" for s in summaries)

        lines.append(
            f"Decoding baselines on {knn[0].get('n')} {split} scenes ({shots} shots): knn count "
            f"error {errors(knn)} vs naive {errors(naive)}."
        )
    return lines + baseline_lines(curriculum)


def _verdict_text(v: Any) -> str:
    r = v.record
    adv = fmt_ci(r.get("advantage"), r.get("interval"))
    why = f" ({v.why})" if v.why else ""
    return (
        f"{v.headline} {fmt(r.get('value'))} vs {r['baseline']} {fmt(r.get('baseline_value'))}: "
        f"advantage {adv}, n = {r.get('n')}, {v.verdict}{why}"
    )


def baseline_lines(runs: list[RunFolder]) -> list[str]:
    """Per K: the collapse verdict, then every headline beside its baseline with its verdict;
    the figures above without any record are named as such."""
    from strop.evaluation.report.collect import load_run
    from strop.evaluation.report.verdicts import BEYOND, CEILING, collapsed, run_verdicts

    lines = []
    for folder in runs:
        run = load_run(folder)
        notes: list[str] = []
        found = run_verdicts(run, notes)
        banner = collapsed(run)
        head = f"K = {run.k}"
        if banner:
            lines.append(f"{head}: {banner.split(': ', 1)[1]}; its figures above say little.")
        if not found:
            lines.append(
                f"{head}: no baseline recorded for any figure above (rerun `strop eval`, "
                "`strop analyze` and the knn decode/QA with this version)."
            )
            continue
        beyond = sum(v.verdict == BEYOND for v in found)
        compared = sum(v.verdict != CEILING for v in found)  # a ceiling is not to be beaten
        lines.append(
            f"{head}, beside their baselines ({beyond} of {compared} beyond): "
            + "; ".join(_verdict_text(v) for v in found)
            + "."
        )
        quoted = {"length_vs_objects": "Pearson(length, objects)", "count_err": "knn count error"}
        for key, figure in quoted.items():
            if not any(key in v.path for v in found):
                lines.append(f"{head}: {figure} has no baseline recorded: not evidence alone.")
        lines += [f"{head}: {note}" for note in notes]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m strop.evaluation.readme_figures QUICKSTART_DIR", file=sys.stderr)
        return 2
    try:
        print("\n".join(figures(args[0])))
    except (RunFolderError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
