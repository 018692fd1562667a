"""`llm/<model>/results.jsonl` (one line per answered image, resumable) and `summary.json`.

Design decisions
- A row is keyed by the sha256 of everything that determines the answer: model id, endpoint,
  messages, sampling parameters, response schema and seed. A rerun with the same protocol
  finds every key already answered and sends nothing; change any of them and the key moves,
  so stale answers are never reused. The API key is not part of the key (rotating a key must
  not redo work) and never enters a row.
- Rows are appended and flushed as each answer arrives, so a killed run keeps all finished
  answers. A torn last line (kill -9 or a full disk mid-write) is cut off before anything is
  appended, so the next row never glues onto the fragment; a line that is not JSON anywhere
  else (left by an older version) is skipped with a warning naming it. Either way the request
  has no final answer and is sent again. A write that fails (a full disk) stops the run
  with one line naming the file and the space left (`strop.atomic.write_error`); the file
  is opened only when it is a regular file (a FIFO blocked the open forever). Rows for
  requests that failed in transport are written too (status `error`) for the record, but do
  not count as done: the rerun retries them.
- The prompts are kept beside the rows, once per distinct prompt (`prompts.jsonl`, keyed by
  the sha256 every row carries as `prompt_sha256`): a row can be read with the exact messages
  that produced it, without repeating 50 shots in every row.
- `summary.json` is recomputed from the rows of the current protocol's keys, never
  accumulated, so resuming gives the same summary as one uninterrupted run.
- One folder per identity: the model (name, served id, backend, endpoint) and the protocol
  (shots, test set, seeds, sampling, thinking, template, scoring, ...: whatever the caller
  puts under `protocol`), recorded in `identity.json` and checked on reuse (`claim_folder`).
  `org/m` and `org--m` map to the same safe name, one model on two endpoints or under two
  protocols to the same model name, so a folder that holds another identity's results is
  never written into; the newcomer gets the name plus a short hash of its identity, and
  both results are kept. Folders written before `identity.json` existed are recognised by the
  identity their `summary.json` or rows carry. Nothing here is specific to decoding: any
  command that keys requests and records rows can claim folders the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

from strop.atomic import OutputPathError, open_for_append, write_error
from strop.output_unit import check_writable
from strop.runs import RunFolderError, read_json, write_json

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
IDENTITY_FILE = "identity.json"
PROMPTS_FILE = "prompts.jsonl"
#: The fields of a row's identity that decide its folder besides `protocol` (K is the run's;
#: the permutation control has its own folder suffix).
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


def repair_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a JSON-lines file, after cutting a torn last line off the file itself.

    Returns (rows, warnings): a torn tail is truncated in place (so appending starts on a
    fresh line), any other line that is not a JSON object is skipped and named.
    """
    if not path.is_file():
        return [], []
    data = path.read_bytes()
    warnings: list[str] = []
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        warnings.append(
            f"{path}: the last line was torn ({len(data) - cut} bytes, a run killed "
            "mid-write); cut off, its request is sent again"
        )
        data = data[:cut]
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            warnings.append(f"{path}: line {number} is not a JSON row; skipped")
            continue
        rows.append(row)
    return rows, warnings


class ResultsFile:
    """Append-only results with resume: `done` maps key -> the final row for that key."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        self.summary_path = self.folder / SUMMARY_FILE
        self.done: dict[str, dict[str, Any]] = {}
        rows, self.warnings = repair_jsonl(self.path)
        for row in rows:
            if row.get("status") in DONE_STATUSES and "key" in row:
                self.done[row["key"]] = row
        self._handle: TextIO | None = None
        self.prompts = PromptStore(self.folder / PROMPTS_FILE)

    def append(self, row: dict[str, Any]) -> None:
        # flush, not fsync: the row survives the process being killed, which is the failure
        # resuming is for; an fsync per answer would stall the event loop on slow disks.
        handle, self._handle = self._handle, None  # a failed append closes it
        self._handle = _append_line(self.path, handle, json.dumps(row, ensure_ascii=False))
        if row.get("status") in DONE_STATUSES:
            self.done[row["key"]] = row

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise _append_error(self.path, exc) from None
            finally:
                _close_quietly(handle)
        self.prompts.close()

    def write_summary(self, summary: dict[str, Any]) -> Path:
        write_json(self.summary_path, summary)
        return self.summary_path


class PromptStore:
    """`prompts.jsonl`: each distinct prompt once, `{"sha256", "messages"}` (see the module)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        rows, _ = repair_jsonl(path)
        self.known = {r["sha256"] for r in rows if isinstance(r.get("sha256"), str)}
        self._handle: TextIO | None = None

    def add(self, messages: list[dict[str, str]]) -> str:
        """Store `messages` unless already stored; returns their sha256."""
        digest = messages_sha256(messages)
        if digest not in self.known:
            row = {"sha256": digest, "messages": messages}
            handle, self._handle = self._handle, None  # a failed append closes it
            self._handle = _append_line(self.path, handle, json.dumps(row, ensure_ascii=False))
            self.known.add(digest)
        return digest

    def read(self) -> dict[str, list[dict[str, str]]]:
        """Every stored prompt by sha256."""
        rows, _ = repair_jsonl(self.path)
        return {r["sha256"]: r["messages"] for r in rows if "sha256" in r}

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.flush()
            except OSError as exc:
                raise _append_error(self.path, exc) from None
            finally:
                _close_quietly(handle)


def _append_line(path: Path, handle: TextIO | None, line: str) -> TextIO | None:
    """Append `line` to `path` and flush it, opening the file on first use (a regular file
    only: a FIFO would block the open). Returns the handle to keep; a failed write (a full
    disk) closes it and is one `RunFolderError` line naming the file and the space left."""
    try:
        if handle is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(open_for_append(path), "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        handle.write(line + "\n")
        handle.flush()
        return handle
    except OSError as exc:
        if handle is not None:
            _close_quietly(handle)
        raise _append_error(path, exc) from None


def _append_error(path: Path, exc: OSError) -> OutputPathError:
    return write_error(path, exc, kept="the rows written before are kept; rerun to send the rest")


def _close_quietly(handle: TextIO) -> None:
    """Close a handle whose buffer could not be written: closing flushes it again, which
    fails again on a full disk (the second traceback of a failed run)."""
    try:
        handle.close()
    except OSError:
        pass


def identity_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def stored_identity(folder: Path, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The identity (its `keys`) whose results `folder` holds, or None for a new folder."""
    path = folder / IDENTITY_FILE
    if path.is_file():
        stored = read_json(path)
        return {k: stored.get(k) for k in keys}
    for source in (folder / SUMMARY_FILE, folder / RESULTS_FILE):  # written before identity.json
        if source.is_file():
            rows = [read_json(source)] if source.suffix == ".json" else repair_jsonl(source)[0][:1]
            if rows:
                return {k: rows[0].get(k) for k in keys}
    return None


def claim_folder(parent: Path, name: str, identity: dict[str, Any]) -> Path:
    """The results folder for `identity` under `parent`: `name` when it is new or already
    holds this identity's results, else `name-<hash of the identity>`; writes identity.json.

    `identity` is compared whole (JSON-normalised), so whatever a caller puts in it (the
    protocol included) separates results."""
    wanted = json.loads(json.dumps(identity, sort_keys=True, default=str))
    keys = tuple(wanted)
    for candidate in (name, f"{name}-{identity_hash(wanted)}"):
        folder = parent / candidate
        found = stored_identity(folder, keys)
        if found is None or found == wanted:
            # A run folder that cannot be written fails here, before any request is sent.
            check_writable(folder / RESULTS_FILE)
            if not (folder / IDENTITY_FILE).is_file():
                write_json(folder / IDENTITY_FILE, wanted)
            return folder
    raise RunFolderError(f"{folder}: holds the results of {found}, not of {wanted}")
