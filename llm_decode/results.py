"""`llm/<model>/results.jsonl` (one line per answered image, resumable) and `summary.json`.

Design decisions
- A row is keyed by the sha256 of everything that determines the answer: model id, endpoint,
  messages, sampling parameters, response schema and seed. A rerun with the same protocol
  finds every key already answered and sends nothing; change any of them and the key moves,
  so stale answers are never reused. The API key is not part of the key (rotating a key must
  not redo work) and never enters a row.
- Rows are appended and flushed as each answer arrives, so a killed run keeps all finished
  answers (a torn last line is skipped by `strop.runs.read_jsonl`). Rows for requests that
  failed in transport are written too (status `error`) for the record, but do not count as
  done: the rerun retries them.
- `summary.json` is recomputed from the rows of the current protocol's keys, never
  accumulated, so resuming gives the same summary as one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

from strop.runs import read_jsonl, write_json

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
#: Row statuses; `ok` and `parse_fail` are final answers, `error` is retried on rerun.
DONE_STATUSES = frozenset({"ok", "parse_fail"})


def request_key(
    *,
    model: str,
    endpoint: str,
    messages: list[dict[str, str]],
    sampling: dict[str, Any],
    schema: dict[str, Any] | None,
    seed: int,
) -> str:
    """sha256 of the canonical JSON of what determines one answer."""
    payload = {
        "model": model,
        "endpoint": endpoint,
        "messages": messages,
        "sampling": sampling,
        "schema": schema,
        "seed": seed,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def messages_sha256(messages: list[dict[str, str]]) -> str:
    blob = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultsFile:
    """Append-only results with resume: `done` maps key -> the final row for that key."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        self.summary_path = self.folder / SUMMARY_FILE
        self.done: dict[str, dict[str, Any]] = {}
        for row in read_jsonl(self.path):
            if row.get("status") in DONE_STATUSES and "key" in row:
                self.done[row["key"]] = row
        self._handle: TextIO | None = None

    def append(self, row: dict[str, Any]) -> None:
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        # flush, not fsync: the row survives the process being killed, which is the failure
        # resuming is for; an fsync per answer would stall the event loop on slow disks.
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        if row.get("status") in DONE_STATUSES:
            self.done[row["key"]] = row

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def write_summary(self, summary: dict[str, Any]) -> Path:
        write_json(self.summary_path, summary)
        return self.summary_path
