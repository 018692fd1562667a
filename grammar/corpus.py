"""Program corpora for mining: one flat code array plus program offsets, and their loaders.

Design decisions
- A corpus is stored flat (`codes` int64, `offsets` of length n+1), not as a list of arrays:
  every statistic in this package is a vectorised pass over the flat array, and a million
  small NumPy arrays would cost more to iterate than the counting itself.
- Programs come only through `strop.runs` (parquet, run folders, experiments) or from a plain
  text file (one program per line, codes separated by spaces). Lines starting with `#` are
  comments, except a `# k=N` directive that declares the codebook size; two directives that
  disagree are the "mixed K" error, reported with both line numbers.
- `K` is, in order: the caller's `k`, the value recorded with the programs (parquet metadata,
  `config.json`, text directive), else max code + 1 (said so in `k_source`). A run whose
  config and programs file record different K is refused: its statistics would be computed
  against the wrong vocabulary.
- Every error is a `CorpusError` whose message is one line naming the file, the row or line,
  the field and the offending value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.runs import (
    DATASET_MANIFEST,
    PROGRAMS_DATASET_DIR,
    PROGRAMS_FILE,
    Programs,
    RunFolder,
    RunFolderError,
    discover_runs,
    read_programs,
)

#: Largest code (and K) a corpus may hold: codes are int32 in `programs.parquet`.
MAX_CODE = 2**31 - 1


class CorpusError(ValueError):
    """A corpus that cannot be mined; the message is one line naming file, row and field."""


@dataclass
class Corpus:
    """Programs as one flat code array: program `i` is `codes[offsets[i]:offsets[i + 1]]`."""

    codes: np.ndarray
    offsets: np.ndarray
    k: int
    name: str = "corpus"
    source: str = ""
    k_source: str = "given"
    #: derived arrays (program ids, per-program code counts), computed once: a corpus is never
    #: modified in place (nulls and subsets are new corpora)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.codes = np.ascontiguousarray(self.codes, dtype=np.int64)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size == 0 or self.offsets[0] != 0:
            raise CorpusError(f"{self.source or self.name}: offsets must start at 0")
        if self.offsets[-1] != self.codes.size or np.any(np.diff(self.offsets) < 0):
            raise CorpusError(f"{self.source or self.name}: offsets do not partition the codes")

    @property
    def n_programs(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_tokens(self) -> int:
        return int(self.codes.size)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def program_ids(self) -> np.ndarray:
        """For every token, the index of its program."""
        if "program_ids" not in self.cache:
            self.cache["program_ids"] = np.repeat(
                np.arange(self.n_programs, dtype=np.int64), self.lengths
            )
        return self.cache["program_ids"]

    @property
    def positions(self) -> np.ndarray:
        """For every token, its position inside its program (0-based)."""
        if "positions" not in self.cache:
            starts = np.repeat(self.offsets[:-1], self.lengths)
            self.cache["positions"] = np.arange(self.n_tokens, dtype=np.int64) - starts
        return self.cache["positions"]

    def program(self, i: int) -> np.ndarray:
        return self.codes[self.offsets[i] : self.offsets[i + 1]]

    def programs(self) -> list[np.ndarray]:
        return np.split(self.codes, self.offsets[1:-1])

    def with_codes(self, codes: np.ndarray, name: str | None = None) -> Corpus:
        """Same program lengths, other codes (the null corpora)."""
        twin = Corpus(codes, self.offsets, self.k, name or self.name, self.source, self.k_source)
        for name in ("program_ids", "positions"):  # same lengths, same layout
            if name in self.cache:
                twin.cache[name] = self.cache[name]
        return twin

    def subset(self, index: np.ndarray) -> Corpus:
        """The programs at `index`, in that order."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        offsets = np.zeros(index.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[index] - offsets[:-1], lengths)
        codes = self.codes[np.arange(offsets[-1], dtype=np.int64) + starts]
        return Corpus(codes, offsets, self.k, self.name, self.source, self.k_source)

    def validate(self) -> None:
        """Refuse an empty corpus and codes outside [0, K), naming the first bad program."""
        where = self.source or self.name
        if self.n_tokens == 0:
            raise CorpusError(f"{where}: empty corpus ({self.n_programs} programs, no codes)")
        if self.k < 1:
            raise CorpusError(f"{where}: codebook size K={self.k} must be positive")
        bad = np.nonzero((self.codes < 0) | (self.codes >= self.k))[0]
        if bad.size:
            token = int(bad[0])
            row = int(np.searchsorted(self.offsets, token, side="right") - 1)
            raise CorpusError(
                f"{where}: program {row} field codes: code {int(self.codes[token])} "
                f"outside [0, {self.k}) (K from {self.k_source})"
            )

    @classmethod
    def from_lists(
        cls,
        programs: list[list[int]] | list[np.ndarray],
        k: int | None = None,
        name: str = "corpus",
        source: str = "",
    ) -> Corpus:
        """Build (and validate) a corpus from per-program code sequences."""
        arrays = [np.asarray(p, dtype=np.int64).reshape(-1) for p in programs]
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        codes = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        k_source = "given"
        if k is None:
            k, k_source = (int(codes.max()) + 1 if codes.size else 0), "max code + 1"
        corpus = cls(codes, offsets, int(k), name, source, k_source)
        corpus.validate()
        return corpus


# --------------------------------------------------------------------------- loaders

_K_DIRECTIVE = re.compile(r"#\s*k\s*[=:]\s*(\S+)\s*$", re.IGNORECASE)


def read_text(path: str | Path, k: int | None = None) -> Corpus:
    """One program per line, space-separated non-negative integers; `# k=N` declares K."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    programs: list[list[int]] = []
    declared: tuple[int, int] | None = None  # (K, line number)
    for lineno, line in _text_lines(path):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            match = _K_DIRECTIVE.match(text)
            if match:
                value = _parse_int(match.group(1), path, lineno, "k directive")
                if declared is not None and declared[0] != value:
                    raise CorpusError(
                        f"{path}: line {lineno} declares K={value} but line {declared[1]} "
                        f"declared K={declared[0]}: mixed K in one file"
                    )
                declared = (value, lineno)
            continue
        codes = [_parse_int(tok, path, lineno, "codes") for tok in text.split()]
        if declared is not None and max(codes) >= declared[0]:
            bad = max(codes)
            raise CorpusError(
                f"{path}: line {lineno} field codes: code {bad} outside [0, {declared[0]}) "
                f"declared on line {declared[1]}: mixed K in one file"
            )
        programs.append(codes)
    if not programs:
        raise CorpusError(f"{path}: empty corpus (no program lines)")
    if k is not None and declared is not None and k != declared[0]:
        raise CorpusError(f"{path}: --k {k} disagrees with K={declared[0]} on line {declared[1]}")
    chosen = k if k is not None else (declared[0] if declared else None)
    try:
        corpus = Corpus.from_lists(programs, chosen, name=path.stem, source=str(path))
    except CorpusError as exc:
        raise CorpusError(_program_to_line(str(exc), path)) from None
    if k is None and declared is not None:
        corpus.k_source = f"line {declared[1]}"
    elif k is not None:
        corpus.k_source = "--k"
    return corpus


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file; a binary or unreadable file is a one-line
    `CorpusError` (a parquet or image passed by mistake must not end in a traceback)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in data[:8192]:
        raise CorpusError(
            f"{path}: a binary file, not a text corpus (one program per line, codes separated "
            "by spaces); pass a programs.parquet as .parquet"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(
            f"{path}: line {line}: not UTF-8 text (byte {exc.start}); expected one program per "
            "line, codes separated by spaces"
        ) from None
    return list(enumerate(text.splitlines(), start=1))


def _program_to_line(message: str, path: Path) -> str:
    """Text files are addressed by line: map 'program i' back to its line number."""
    match = re.search(r"program (\d+) ", message)
    if not match:
        return message
    wanted, seen = int(match.group(1)), -1
    for lineno, line in _text_lines(path):
        text = line.strip()
        if text and not text.startswith("#"):
            seen += 1
            if seen == wanted:
                return message.replace(f"program {wanted} ", f"line {lineno} ")
    return message


def _parse_int(token: str, path: Path, lineno: int, field: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise CorpusError(
            f"{path}: line {lineno} field {field}: {token!r} is not an integer"
        ) from None
    if value < 0:
        raise CorpusError(f"{path}: line {lineno} field {field}: negative code {value}")
    if value > MAX_CODE:
        raise CorpusError(
            f"{path}: line {lineno} field {field}: {value} is larger than {MAX_CODE} "
            "(codes are 32-bit, as in programs.parquet)"
        )
    return value


def from_programs(programs: Programs, name: str, source: str, k: int | None = None) -> Corpus:
    """Flatten a `strop.runs.Programs` table into a corpus."""
    if len(programs) == 0:
        raise CorpusError(f"{source}: empty corpus (no programs)")
    lengths = programs.lengths
    offsets = np.zeros(len(programs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    codes = np.concatenate(programs.codes) if len(programs) else np.zeros(0, dtype=np.int64)
    if k is not None:
        k_source = "--k"
    elif programs.codebook_size is not None:
        k, k_source = programs.codebook_size, programs.k_source or "programs metadata"
    else:
        k, k_source = (int(codes.max()) + 1 if codes.size else 0), "max code + 1"
    corpus = Corpus(codes, offsets, int(k), name, source, k_source)
    corpus.validate()
    return corpus


def read_parquet(path: str | Path, k: int | None = None, name: str | None = None) -> Corpus:
    """A `programs.parquet` through `strop.runs.read_programs` (which validates rows)."""
    path = Path(path)
    try:
        programs = read_programs(path, codebook_size=k)
    except RunFolderError as exc:
        raise CorpusError(str(exc)) from None
    _check_row_k(path)
    default = path.parent.name if path.name == PROGRAMS_FILE else path.stem
    return from_programs(programs, name or default, str(path), k)


def _check_row_k(path: Path) -> None:
    """A file that records K per row (a `codebook_size` or `k` column) must record one K.

    Two runs' tables concatenated into one file are the usual cause; their codes may all lie
    below the larger K, so only the per-row record can reveal the mix.
    """
    import pyarrow.parquet as pq

    if path.is_dir() or not path.suffix == ".parquet":
        return  # a programs dataset (its manifest): strop's own shards carry no per-row K
    names = pq.read_schema(path).names
    column = next((c for c in ("codebook_size", "k") if c in names), None)
    if column is None:
        return
    values = pq.read_table(path, columns=[column]).column(column).to_numpy(zero_copy_only=False)
    bad = np.nonzero(values != values[0])[0]
    if bad.size:
        i = int(bad[0])
        raise CorpusError(
            f"{path}: row {i} field {column}: K={values[i]} but row 0 has K={values[0]}: "
            "mixed K in one file"
        )


def read_run(run: RunFolder, k: int | None = None) -> Corpus:
    """The programs of one run folder, codes checked against K by `RunFolder.read_programs`
    (K from --k, the programs file, or config.json; the two disagreeing is an error)."""
    if not run.programs_path.is_file():
        raise CorpusError(
            f"{run.path}: run folder has no {PROGRAMS_FILE} (run `strop export {run.path}` first)"
        )
    try:
        programs = run.read_programs(k)
    except RunFolderError as exc:
        raise CorpusError(str(exc)) from None
    _check_row_k(run.programs_path)
    return from_programs(programs, run.name, str(run.programs_path), k)


def _not_loaded() -> Corpus:
    raise CorpusError("a programs dataset is mined shard by shard, not loaded whole")


@dataclass(frozen=True)
class Source:
    """One corpus to mine and where its results go."""

    name: str
    out_dir: Path
    load: Callable[[], Corpus]  # deferred: one run in memory at a time
    #: a programs dataset (folder or manifest): mined shard by shard instead of `load`ed
    dataset: Path | None = None


def discover(
    path: str | Path, out: str | Path | None = None, k: int | None = None
) -> tuple[list[Source], bool]:
    """The corpora under `path` and their output folders; the flag says "experiment folder".

    PATH is an experiment folder (every sub-run), a run folder, a `programs.parquet`, or a text
    file. Outputs go to `RUN/grammar/` (or `OUT/<run>/` for an experiment, `OUT/` otherwise).
    """
    from strop.runs import is_programs_dataset

    path = Path(path)
    out_path = Path(out) if out is not None else None
    if is_programs_dataset(path):  # RUN/programs/ or its manifest.json
        folder = path if path.is_dir() else path.parent
        above = folder.parent
        name = above.name if folder.name == PROGRAMS_DATASET_DIR else folder.name
        default = (
            above / "grammar" if folder.name == PROGRAMS_DATASET_DIR else above / f"{name}_grammar"
        )
        return [Source(name, out_path or default, _not_loaded, folder)], False
    if path.is_file():
        if path.suffix == ".parquet":
            loader = lambda: read_parquet(path, k)  # noqa: E731
            default = (
                path.parent / "grammar"
                if path.name == PROGRAMS_FILE
                else path.parent / f"{path.stem}_grammar"
            )
        else:
            loader = lambda: read_text(path, k)  # noqa: E731
            default = path.parent / f"{path.stem}_grammar"
        name = path.parent.name if path.name == PROGRAMS_FILE else path.stem
        return [Source(name, out_path or default, loader)], False
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    try:
        runs = discover_runs(path)
    except RunFolderError as exc:
        raise CorpusError(str(exc)) from None
    if not runs:
        raise CorpusError(
            f"{path}: no run folders (with config.json or {PROGRAMS_FILE}) and no programs found"
        )
    experiment = not (len(runs) == 1 and runs[0].path == path)
    sources = []
    for run in runs:
        if out_path is None:
            target = run.grammar_dir
        else:
            target = out_path / run.name if experiment else out_path
        dataset = run.programs_path if run.programs_path.name == DATASET_MANIFEST else None
        sources.append(Source(run.name, target, functools.partial(read_run, run, k), dataset))
    return sources, experiment
