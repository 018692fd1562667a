"""Numbers to table cells, and generic tables for summaries written by other tools.

Design decisions
- One formatter (`fmt`) for every cell: None and non-finite values show as an em dash,
  large values in 3 significant digits; a correlation with its interval as `r [lo, hi]`.
- Grammar and LLM summaries are written by other tools; they are rendered generically
  (nested numbers flattened to `a.b` rows) so a new statistic shows up without a change here.
  A statistic stored as a dict with an observed value and null-model values is shown as
  `observed (null_x ..., null_y ...)`: every headline figure beside its nulls.
- Bookkeeping keys (`_SKIP_KEYS`), lists and long strings are left out of those tables; a
  whole number stored as a float (a count, or a mean of counts) prints as an integer.
- Every table says in its caption what a cell is and its n (`n_of`); a headline number
  prints with its 95% interval (`fmt_est`), and a comparison says whether it is within the
  noise (`noise_word`: the two intervals overlap).
- Statistics other tools write under terse keys are explained by `STAT_LABELS` (key ->
  plain words); an unknown key shows as it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strop.baselines import is_record
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


def fmt_ci(r: Any, ci: Any, digits: int = 3) -> str:
    if r is None:
        return DASH
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f"{fmt(r, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
    return fmt(r, digits)


def fmt_est(values: dict[str, Any] | None, key: str, digits: int = 3) -> str:
    """`values[key]` with its interval from `values["ci95"][key]` when it has one."""
    values = values or {}
    return fmt_ci(values.get(key), (values.get("ci95") or {}).get(key), digits)


def fmt_count(value: Any) -> str:
    """A count: an integer even when stored as a float (42.0 -> 42)."""
    if (
        isinstance(value, (float, np.floating))
        and math.isfinite(value)
        and float(value).is_integer()
    ):
        return str(int(value))
    return fmt(value)


def n_of(values: list[Any], unit: str) -> str:
    """`n = 200 images`, or `n = 200 / 8 images` when the runs differ."""
    ns = sorted({int(v) for v in values if isinstance(v, (int, float, np.integer))})
    return f"n = {' / '.join(str(n) for n in ns)} {unit}" if ns else f"n = ? {unit} (not recorded)"


def noise_word(a: Any, b: Any) -> str:
    """Whether two values with 95% intervals differ beyond the noise (intervals apart)."""
    from strop.metrics import ci_overlap

    overlap = ci_overlap(a, b)
    if overlap is None:
        return DASH
    return "within noise" if overlap else "beyond noise"


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
                f"{name} {sub} {fmt_count(v)}"
                for sub, v in value.items()
                if not isinstance(v, (dict, list))
            ]
            continue
        sd = d.get(f"{name}_sd")
        parts.append(f"{name} {fmt_count(value)}" + (f" ± {fmt(sd)}" if sd is not None else ""))
    return f"{fmt_count(d[key])} ({', '.join(parts)})" if parts else fmt_count(d[key])


#: Bookkeeping, not results: left out of the generic statistics tables.
_SKIP_KEYS = frozenset(
    {"config", "seconds", "protocol", "usage", "run", "path", "grammar_version", "k_source"}
)


def flatten_stats(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested summary -> {"a.b": "formatted"}; lists, long strings and bookkeeping are left out."""
    out: dict[str, str] = {}
    for name, value in d.items():
        key = f"{prefix}{name}"
        if name in _SKIP_KEYS or is_record(value):  # records: the baselines section's
            continue
        if isinstance(value, dict):
            pair = _observed_with_nulls(value)
            if pair is not None:
                out[key] = pair
            else:
                out.update(flatten_stats(value, key + "."))
        elif isinstance(value, (int, float, np.number)) or value is None:
            out[key] = fmt_count(value)
        elif isinstance(value, str) and len(value) <= 40:
            out[key] = value
    return out


#: Plain words for the terse keys of analysis.json and grammar/summary.json.
STAT_LABELS = {
    "n_images": "images analysed",
    "erasure.mean_effect_active": "mean align-error change when one active token is erased",
    "erasure.max_token_effect": "largest align-error change of one erased token",
    "erasure.mean_effect_inactive": "mean change when a token past the length is erased (0 expected)",
    "erasure.n_tokens": "active tokens erased",
    "attribution.objects": "objects with a mask",
    "attribution.best_iou_mean": "mean best IoU of a token's erasure map with an object mask",
    "attribution.best_iou_shuffled": "the same with masks of another image (chance level)",
    "attribution.object_token_nmi": "NMI of token and attributed object",
    "synergy.adjacent_mean_abs": "mean |synergy| of adjacent token pairs (joint vs single erasures)",
    "synergy.random_mean_abs": "mean |synergy| of random token pairs",
    "synergy.inactive_mean_abs": "mean |synergy| with a token past the length (0 expected)",
    "synergy.n_adjacent": "adjacent pairs",
    "synergy.n_random": "random pairs",
    "synergy.adjacent_vs_random_p": "p-value, adjacent vs random |synergy| (Mann-Whitney U)",
    "code_reuse.active_codes": "codes used",
    "code_reuse.effective_vocab": "effective vocabulary exp(H)",
    "code_reuse.entropy_bits": "code entropy (bits)",
    "code_reuse.top10_share": "share of tokens in the top 10% of codes",
    "code_reuse.herfindahl": "Herfindahl concentration",
    "code_reuse.source": "codes counted from",
    "code_reuse.purity_nmi": "mean NMI of code and object attribute",
}


def stat_label(key: str) -> str:
    """`plain words (key)` for a known key, else the key."""
    words = STAT_LABELS.get(key)
    return f"{words} ({key})" if words else key


def stats_table(key: str, runs: list[RunData], get, caption: str = "") -> Table | None:
    """One row per flattened statistic, one column per run that has a summary (`get(run)`)."""
    flat = {run.name: flatten_stats(get(run)) for run in runs if get(run)}
    if not flat:
        return None
    names: list[str] = []
    for stats in flat.values():
        names += [n for n in stats if n not in names]
    have = [run for run in runs if run.name in flat]
    rows = [[stat_label(n)] + [flat[r.name].get(n, DASH) for r in have] for n in names]
    return Table(key, ["statistic"] + [label(r) for r in have], rows, caption)
