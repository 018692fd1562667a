"""Every headline beside its trivial baseline, with a verdict per K, and the collapse banner.

The comparison records (`strop.baselines`) are found by their shape anywhere in a
run's eval.json, analysis.json, decode summaries (`llm/<model>/summary.json`) and QA
summaries (`llm/qa/<model>/summary.json`), so a baseline another tool adds shows up here
without new code. A run whose eval.json says `collapsed: true` gets the banner
`baselines.COLLAPSED` at the top of the report and in this section.

Design decisions
- The verdict is the report's own, recomputed from the record's interval: "beyond baseline"
  only where the interval on the advantage excludes 0 on the good side, "not beyond
  baseline" where it does not, no verdict without an interval (too few items, undefined).
  A file whose stored verdict disagrees is named in a note; the recomputed one is shown.
- A record that is not what `compare` writes (a value that is not a finite number, an
  interval that is not [lo, hi] with lo <= hi, a negative n) is skipped with a note naming
  the file, the record's path and the field: never shown, never dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from strop.baselines import BEYOND, COLLAPSED, NOT_BEYOND, find_records
from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import DASH, Section, Table
from strop.evaluation.report.formatting import fmt, fmt_ci

NO_VERDICT = "no verdict"
#: A record marked `ceiling: true` (the teacher's own pooled features) is what the codes could
#: keep at best, not a baseline to beat: shown with its gap, never counted as "not beyond".
CEILING = "ceiling"


@dataclass
class Verdict:
    """One checked record: where it sits and what the report concludes."""

    source: str  # file, relative to the run
    path: str  # dotted path of the record in that file
    record: dict[str, Any]
    verdict: str  # BEYOND, NOT_BEYOND or NO_VERDICT (with `why`)
    why: str = ""

    @property
    def headline(self) -> str:
        """What the record qualifies: its path without the baseline's own key (nor a
        `baselines` level grouping the records: `object_metrics.baselines.fg_ari.X` qualifies
        `object_metrics.fg_ari`)."""
        parts = self.path.split(".")[:-1]
        parent = ".".join(p for p in parts if p != "baselines")
        metric = str(self.record.get("metric") or "")
        if parent.endswith(metric) or not metric:
            return parent or metric
        return f"{parent} ({metric})" if parent else metric


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_record(record: dict[str, Any]) -> str | None:
    """Why `record` cannot be shown (the first bad field), or None when it can."""
    for name in ("baseline", "metric"):
        if not isinstance(record.get(name), str) or not record.get(name):
            return f"field {name}: expected a name, got {record.get(name)!r:.40}"
    for name in ("value", "baseline_value", "advantage"):
        value = record.get(name)
        if value is not None and not _number(value):
            return f"field {name}: expected a finite number or null, got {value!r:.40}"
    interval = record.get("interval")
    if interval is not None and not (
        isinstance(interval, list)
        and len(interval) == 2
        and all(_number(v) for v in interval)
        and interval[0] <= interval[1]
    ):
        return f"field interval: expected [lo, hi] with lo <= hi, got {interval!r:.60}"
    n = record.get("n")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return f"field n: expected a count, got {n!r:.40}"
    if record.get("verdict") not in (BEYOND, NOT_BEYOND, None):
        return f"field verdict: expected {BEYOND!r}, {NOT_BEYOND!r} or null, got {record.get('verdict')!r:.40}"
    return None


def verdict_of(record: dict[str, Any]) -> tuple[str, str]:
    """(verdict, why) from the record's interval alone (module docstring)."""
    interval = record.get("interval")
    if record.get("ceiling") is True:
        return CEILING, "what the codes could keep at best, not a baseline to beat"
    if interval is None:
        return NO_VERDICT, str(record.get("note") or "no interval")
    return (BEYOND, "") if interval[0] > 0 else (NOT_BEYOND, "")


def sources(run: RunData) -> list[tuple[str, Any]]:
    """Every file of the run that can hold records, by its path relative to the run."""
    out: list[tuple[str, Any]] = [("eval.json", run.eval), ("analysis/analysis.json", run.analysis)]
    out += [(f"llm/{model}/summary.json", s) for model, s in sorted(run.llm.items())]
    out += [(f"llm/qa/{model}/summary.json", s) for model, s in sorted(run.qa.items())]
    return [(name, tree) for name, tree in out if tree]


def run_verdicts(run: RunData, notes: list[str]) -> list[Verdict]:
    """The run's checked records; what is skipped or corrected goes into `notes`."""
    found = []
    for source, tree in sources(run):
        for path, record in find_records(tree):
            bad = check_record(record)
            if bad:
                notes.append(f"{run.name}/{source} {path}: skipped: {bad}.")
                continue
            verdict, why = verdict_of(record)
            stored = record.get("verdict") or NO_VERDICT
            if stored != verdict and verdict != CEILING:
                notes.append(
                    f"{run.name}/{source} {path}: the file says {stored!r}, its interval says "
                    f"{verdict!r}; shown: {verdict!r}."
                )
            found.append(Verdict(source, path, record, verdict, why))
    return found


def collapsed(run: RunData) -> str | None:
    """The banner for a run whose eval.json says `collapsed: true`, else None."""
    flag = (run.eval or {}).get("collapsed")
    if flag is not True:
        return None
    return f"{run.name} (K={fmt(run.k)}): {COLLAPSED}"


def stale(run: RunData) -> list[str]:
    """A "stale" banner per derived file of weights the run no longer holds: its numbers
    sit in this report beside the run's current step, and are not that step's."""
    return [f"stale: {run.name} (K={fmt(run.k)}): {reason}" for reason in run.stale]


def check_collapsed(run: RunData) -> None:
    """A `collapsed` field that is not true/false is a problem of the run (named, not read)."""
    flag = (run.eval or {}).get("collapsed", False)
    if flag is not None and not isinstance(flag, bool):
        run.problems.append(
            f"{run.name}/eval.json: field collapsed: expected true or false, got {flag!r:.40} "
            "(no banner decided from it)"
        )


def _advantage(record: dict[str, Any]) -> str:
    return fmt_ci(record.get("advantage"), record.get("interval"))


def verdicts(runs: list[RunData]) -> Section:
    sec = Section("Headlines beside their baselines", "baselines")
    ordered = sorted(runs, key=lambda r: (r.k is None, r.k or 0, r.name))
    for run in ordered:
        banner = collapsed(run)
        if banner:
            sec.notes.append(banner)
    rows, lines = [], []
    for run in ordered:
        found = run_verdicts(run, sec.notes)
        for v in found:
            r = v.record
            rows.append(
                [
                    fmt(run.k),
                    run.name,
                    v.source,
                    v.headline,
                    fmt(r.get("value")),
                    str(r["baseline"]),
                    fmt(r.get("baseline_value")),
                    _advantage(r),
                    fmt(r.get("n")),
                    v.verdict + (f" ({v.why})" if v.why else ""),
                ]
            )
        if found:
            beyond = [
                v.headline + " vs " + v.record["baseline"] for v in found if v.verdict == BEYOND
            ]
            not_beyond = [
                v.headline + " vs " + v.record["baseline"] for v in found if v.verdict == NOT_BEYOND
            ]
            undecided = sum(v.verdict == NO_VERDICT for v in found)
            compared = [v for v in found if v.verdict != CEILING]
            lines.append(
                f"K={fmt(run.k)} ({run.name}): {len(beyond)} of {len(compared)} headlines beyond "
                f"their baseline"
                + (f" ({'; '.join(beyond)})" if beyond else "")
                + (f"; not beyond: {'; '.join(not_beyond)}" if not_beyond else "")
                + (f"; {undecided} without a verdict" if undecided else "")
                + "."
            )
    if not rows:
        sec.notes.append(
            "no baselines recorded: rerun `strop eval RUN`, `strop analyze RUN` and the knn "
            "decode/QA (`strop-llm decode --backend knn`, `strop-llm qa --backend knn`) with this version."
        )
        return sec
    sec.text.append(
        "Each headline beside the trivial baseline measured in the same run on the same items. "
        "advantage: headline minus baseline, oriented so that positive is better (for an "
        "error, baseline minus headline), [95% paired bootstrap interval]. Verdict per K: "
        "'beyond baseline' only where the interval excludes 0; a headline that is not "
        "beyond its baseline is not evidence that the codes carry what it measures."
    )
    sec.text += lines
    sec.tables.append(
        Table(
            "baselines",
            [
                "K",
                "run",
                "file",
                "headline",
                "value",
                "baseline",
                "baseline value",
                "advantage [95% CI]",
                "n",
                "verdict",
            ],
            rows,
            "One row per comparison record found in the run's files (n: the paired items).",
        )
    )
    return sec


__all__ = [
    "CEILING",
    "DASH",
    "NO_VERDICT",
    "Verdict",
    "check_record",
    "collapsed",
    "verdict_of",
    "verdicts",
]
