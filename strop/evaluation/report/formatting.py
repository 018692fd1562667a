"""Numbers to table cells, and generic tables for summaries written by other tools.

Design decisions
- One formatter (`fmt`) for every cell: None and non-finite values show as an em dash,
  large values in 3 significant digits; a correlation with its interval as `r [lo, hi]`.
- Grammar and LLM summaries are written by other tools; they are rendered generically
  (nested numbers flattened to `a.b` rows) so a new statistic shows up without a change here.
  A statistic stored as a dict with an observed value and null-model values is shown as
  `observed (null_x ..., null_y ...)`: every headline figure beside its nulls.
- Bookkeeping keys (`_SKIP_KEYS`), lists and long strings are left out of those tables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import DASH, Table


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return DASH if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return DASH
        return f"{number:.{digits}f}" if abs(number) < 1e5 else f"{number:.3g}"
    return str(value)


def fmt_ci(r: Any, ci: Any) -> str:
    if r is None:
        return DASH
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f"{fmt(r)} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(r)


def label(run: RunData) -> str:
    """A run's name with its codebook size, as column headers and figure legends show it."""
    return f"{run.name} (K={run.k})" if run.k is not None else run.name


_OBSERVED_KEYS = ("observed", "value", "real", "actual", "statistic", "stat")


def _observed_with_nulls(d: dict[str, Any]) -> str | None:
    """`observed (null_a m ± sd, ...)` for a statistic stored beside its null-model values."""
    key = next((k for k in _OBSERVED_KEYS if k in d), None)
    if key is None or not any("null" in k for k in d) or isinstance(d[key], (list, dict)):
        return None
    parts = []
    for name, value in d.items():
        if name == key or name.endswith("_sd") or isinstance(value, list):
            continue
        if isinstance(value, dict):
            parts += [
                f"{name} {sub} {fmt(v)}"
                for sub, v in value.items()
                if not isinstance(v, (dict, list))
            ]
            continue
        sd = d.get(f"{name}_sd")
        parts.append(f"{name} {fmt(value)}" + (f" ± {fmt(sd)}" if sd is not None else ""))
    return f"{fmt(d[key])} ({', '.join(parts)})" if parts else fmt(d[key])


#: Bookkeeping, not results: left out of the generic statistics tables.
_SKIP_KEYS = frozenset(
    {"config", "seconds", "protocol", "usage", "run", "path", "grammar_version", "k_source"}
)


def flatten_stats(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested summary -> {"a.b": "formatted"}; lists, long strings and bookkeeping are left out."""
    out: dict[str, str] = {}
    for name, value in d.items():
        key = f"{prefix}{name}"
        if name in _SKIP_KEYS:
            continue
        if isinstance(value, dict):
            pair = _observed_with_nulls(value)
            if pair is not None:
                out[key] = pair
            else:
                out.update(flatten_stats(value, key + "."))
        elif isinstance(value, (int, float, np.number)) or value is None:
            out[key] = fmt(value)
        elif isinstance(value, str) and len(value) <= 40:
            out[key] = value
    return out


def stats_table(key: str, runs: list[RunData], get) -> Table | None:
    """One row per flattened statistic, one column per run that has a summary (`get(run)`)."""
    flat = {run.name: flatten_stats(get(run)) for run in runs if get(run)}
    if not flat:
        return None
    names: list[str] = []
    for stats in flat.values():
        names += [n for n in stats if n not in names]
    have = [run for run in runs if run.name in flat]
    rows = [[n] + [flat[r.name].get(n, DASH) for r in have] for n in names]
    return Table(key, ["statistic"] + [label(r) for r in have], rows)
