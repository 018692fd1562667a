"""What the report reads, checked before it is shown: a value that cannot be what its field
says is left out with a note naming the file, the field and the value, never printed as is
(a `cos` of "high", a negative mean length, a QA accuracy of 7.5, `k: 999` in a K=32 run).

Design decisions
- eval.json: the headline numbers the alignment tables print are checked one by one; a bad
  one becomes null (shown as a dash) with a note, the rest of the file is still shown.
- A file whose `k` disagrees with the run's K (config.json or programs metadata) is about
  another run: the field is a problem, and the report prints the run's own K.
- QA summaries: the accuracies (overall and per family) must lie in [0, 1], with n a count
  and the interval around the accuracy; a summary failing that is skipped whole (its
  numbers cannot be trusted piecemeal), with a note.
"""

from __future__ import annotations

import math
from typing import Any

#: eval.json fields the report prints, and the range each must lie in.
EVAL_RANGES: dict[str, tuple[float, float]] = {
    "cos": (-1.0, 1.0),
    "r2": (-math.inf, 1.0),
    "rmse": (0.0, math.inf),
    "ssim": (-1.0, 1.0),
    "lpips": (0.0, math.inf),
    "cb_pct": (0.0, 100.0),
    "eff_pct": (0.0, 100.0),
    "length_mean": (0.0, math.inf),
    "length_min": (0.0, math.inf),
    "length_max": (0.0, math.inf),
    "bits_per_image": (0.0, math.inf),
    "compression_ratio": (0.0, math.inf),
}


def is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_number(value: Any, lo: float, hi: float) -> str | None:
    if not is_number(value):
        return f"expected a number, got {value!r:.40}"
    if not lo <= float(value) <= hi:
        return f"{value} is outside [{lo:g}, {hi:g}]"
    return None


def check_k(data: dict[str, Any], k: int | None, where: str, problems: list[str]) -> None:
    """A `k` field that is not the run's K: named, and removed so no table prints it."""
    if "k" not in data or k is None:
        return
    if data["k"] != k:
        problems.append(f"{where}: field k: {data['k']!r:.20} but the run's K is {k} (not shown)")
        data.pop("k")


def check_eval(data: dict[str, Any], k: int | None, where: str, problems: list[str]) -> None:
    """Bad headline numbers of eval.json become null, each with a note (module docstring)."""
    for name, (lo, hi) in EVAL_RANGES.items():
        value = data.get(name)
        if value is None:
            continue
        bad = _bad_number(value, lo, hi)
        if bad:
            problems.append(f"{where}: field {name}: {bad} (not shown)")
            data[name] = None
            (data.get("ci95") or {}).pop(name, None)
    if data.get("n_images") is not None and not is_count(data["n_images"]):
        problems.append(
            f"{where}: field n_images: expected a count, got {data['n_images']!r:.40} (not shown)"
        )
        data["n_images"] = None
    ci95 = data.get("ci95")
    if isinstance(ci95, dict):
        for name, ci in list(ci95.items()):
            if ci is not None and not (
                isinstance(ci, list) and len(ci) == 2 and all(is_number(v) for v in ci)
            ):
                problems.append(f"{where}: field ci95.{name}: not [lo, hi] (not shown)")
                ci95.pop(name)
    elif ci95 is not None:
        problems.append(f"{where}: field ci95: expected an object (not shown)")
        data["ci95"] = {}
    check_k(data, k, where, problems)


def _bad_accuracy(stats: Any) -> str | None:
    if not isinstance(stats, dict):
        return f"expected an object, got {stats!r:.40}"
    accuracy = stats.get("accuracy")
    if accuracy is not None:
        bad = _bad_number(accuracy, 0.0, 1.0)
        if bad:
            return f"accuracy: {bad}"
    if stats.get("n") is not None and not is_count(stats["n"]):
        return f"n: expected a count, got {stats['n']!r:.40}"
    ci = stats.get("ci")
    if ci is not None and accuracy is not None:
        if not (
            isinstance(ci, list)
            and len(ci) == 2
            and all(is_number(v) for v in ci)
            and 0 <= ci[0] <= accuracy <= ci[1] <= 1
        ):
            return f"ci: expected [lo, hi] around the accuracy within [0, 1], got {ci!r:.60}"
    return None


def qa_problem(summary: Any, k: int | None) -> str | None:
    """Why a QA summary cannot be shown, or None (module docstring)."""
    if not isinstance(summary, dict):
        return f"expected a JSON object, got {type(summary).__name__}"
    if k is not None and "k" in summary and summary["k"] != k:
        return f"field k: {summary['k']!r:.20} but the run's K is {k}"
    bad = _bad_accuracy(summary.get("overall"))
    if bad:
        return f"field overall.{bad}"
    families = summary.get("families") or {}
    if not isinstance(families, dict):
        return "field families: expected an object"
    for name, stats in families.items():
        bad = _bad_accuracy(stats)
        if bad:
            return f"field families.{name}.{bad}"
    return None
