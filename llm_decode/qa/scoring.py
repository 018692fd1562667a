"""Reading a QA answer, scoring it, and the per-family accuracy summary.

Design decisions
- An answer is one word or number from CLEVR's answer vocabulary (yes/no, 0-10, attribute
  values). The reader takes the last non-empty line of the reply (after any reasoning), a
  JSON string or `{"answer": ...}` as well as plain text, drops an `Answer:` prefix,
  quotes and final punctuation, maps number words and a few CLEVR synonyms (CLEVR's own
  question text uses "metallic", "matte", "ball", "block", ...) to the canonical word.
  Anything else is a parse failure (`QAParseError`, a `SceneParseError` so the shared
  runner's parse retry applies unchanged).
- Accuracy is exact match of the canonical answers, per family, with a Wilson 95% interval
  (well behaved at 0 and 1 and small n, unlike the normal approximation).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from llm_decode.schema import SceneParseError
from strop.scenes import COLORS, MATERIALS, SHAPES, SIZES

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SYNONYMS = {
    "true": "yes",
    "false": "no",
    "metallic": "metal",
    "shiny": "metal",
    "matte": "rubber",
    "big": "large",
    "tiny": "small",
    "ball": "sphere",
    "block": "cube",
    "grey": "gray",
    **{w: str(i) for i, w in enumerate(NUMBERS)},
}
VOCABULARY = frozenset(
    {"yes", "no", *(str(i) for i in range(11)), *COLORS, *SHAPES, *MATERIALS, *SIZES}
)


class QAParseError(SceneParseError):
    """A reply that is not one answer word; the message is one line."""


class QAAnswer(BaseModel):
    """One question's answer: what the model said, or the truth (with family and question)."""

    model_config = ConfigDict(extra="forbid")

    answer: str
    family: str | None = None
    question: str | None = None


def canonical(word: str) -> str:
    w = word.strip().strip("\"'`*").rstrip(".!").strip().lower()
    if w.endswith("s") and w[:-1] in SHAPES:
        w = w[:-1]
    return SYNONYMS.get(w, w)


def parse_qa_answer(text: str) -> QAAnswer:
    """The canonical answer in a reply (module docstring), or `QAParseError`."""
    raw = (text or "").strip()
    try:
        value = json.loads(raw)
        if isinstance(value, dict) and "answer" in value:
            raw = str(value["answer"])
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            raw = str(value)
    except ValueError:
        pass
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise QAParseError("empty answer")
    last = re.sub(r"^\s*(final\s+)?answer\s*[:\-]\s*", "", lines[-1], flags=re.IGNORECASE)
    word = canonical(last)
    if word not in VOCABULARY:
        shown = last if len(last) <= 60 else last[:57] + "..."
        raise QAParseError(f"not one answer word: {shown!r}")
    return QAAnswer(answer=word)


def score_qa(pred: QAAnswer, truth: QAAnswer, _options: Any = None) -> dict[str, Any]:
    """A row's `scores`: exact match and the family it counts for."""
    return {"correct": pred.answer == canonical(truth.answer), "family": truth.family}


def wilson_ci(correct: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends (the formula gives 1 - 1e-16 for 10 of 10)
    lo = 0.0 if correct == 0 else min(p, centre - half)
    hi = 1.0 if correct == n else max(p, centre + half)
    return [lo, hi]


def accuracy(correct: int, n: int) -> dict[str, Any]:
    return {
        "accuracy": correct / n if n else None,
        "ci": wilson_ci(correct, n),
        "n": n,
        "correct": correct,
    }


def summarize_qa(rows: list[dict[str, Any]], truths: list[QAAnswer]) -> dict[str, Any]:
    """Per-family and overall accuracy of answered rows; a parse failure counts as wrong."""
    tally: dict[str, list[int]] = {}
    parse_fails = 0
    for row, truth in zip(rows, truths, strict=True):
        fam = truth.family or "other"
        right = bool(row.get("scores") and row["scores"]["correct"])
        parse_fails += row.get("status") == "parse_fail"
        tally.setdefault(fam, [0, 0])
        tally[fam][0] += right
        tally[fam][1] += 1
    total = [sum(v[0] for v in tally.values()), sum(v[1] for v in tally.values())]
    return {
        "n": total[1],
        "parse_fails": parse_fails,
        "families": {f: accuracy(c, n) for f, (c, n) in tally.items()},
        "overall": accuracy(*total),
    }
