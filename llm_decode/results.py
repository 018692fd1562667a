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
- One folder per decoding identity (model name, served id, backend, endpoint), recorded in
  `identity.json` and checked on reuse (`claim_folder`): `org/m` and `org--m` map to the same
  safe name, and one model on two endpoints to the same model name, so a folder that holds
  another identity's results is never written into; the newcomer gets the name plus a short
  hash of its identity. Folders written before `identity.json` existed are recognised by the
  identity their `summary.json` or rows carry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

from strop.output_unit import check_writable
from strop.runs import RunFolderError, read_json, read_jsonl, write_json

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
IDENTITY_FILE = "identity.json"
#: The fields of a row's identity that decide its folder (K is the run's; the permutation
#: control has its own folder suffix).
IDENTITY_KEYS = ("model", "served_id", "backend", "endpoint")
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


def identity_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps({k: identity.get(k) for k in IDENTITY_KEYS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def stored_identity(folder: Path) -> dict[str, Any] | None:
    """The identity whose results `folder` holds, or None for a new (absent or empty) folder."""
    path = folder / IDENTITY_FILE
    if path.is_file():
        return {k: read_json(path).get(k) for k in IDENTITY_KEYS}
    for source in (folder / SUMMARY_FILE, folder / RESULTS_FILE):  # written before identity.json
        if source.is_file():
            rows = [read_json(source)] if source.suffix == ".json" else read_jsonl(source)[:1]
            if rows:
                return {k: rows[0].get(k) for k in IDENTITY_KEYS}
    return None


def claim_folder(parent: Path, name: str, identity: dict[str, Any]) -> Path:
    """The results folder for `identity` under `parent`: `name` when it is new or already
    holds this identity's results, else `name-<hash of the identity>`; writes identity.json."""
    wanted = {k: identity.get(k) for k in IDENTITY_KEYS}
    for candidate in (name, f"{name}-{identity_hash(wanted)}"):
        folder = parent / candidate
        found = stored_identity(folder)
        if found is None or found == wanted:
            # A run folder that cannot be written fails here, before any request is sent.
            check_writable(folder / RESULTS_FILE)
            if not (folder / IDENTITY_FILE).is_file():
                write_json(folder / IDENTITY_FILE, wanted)
            return folder
    raise RunFolderError(f"{folder}: holds the results of {found}, not of {wanted}")
