"""The run folder: the only contract between `strop`, `grammar` and `llm_decode`.

Torch-free on purpose. Layout (`docs/FORMATS.md`)::

    EXPERIMENT/            e.g. runs/clevr
      k128/                one run
        config.json        resolved configuration
        checkpoints/       step-NNNNNNN.pt, last.pt
        metrics.jsonl      one JSON object per logged step
        programs.parquet   image_id, split, codes, length, n_objects, scene
        programs/          or, for large exports, the same rows as parquet shards +
                           manifest.json (`strop.evaluation.programs_dataset`)
        eval.json          evaluation metrics
        grammar/           strop-grammar output
        llm/<model>/       strop-llm output

One module per part of the contract; this package re-exports the names that `grammar`,
`llm_decode`, `strop.evaluation`, `strop.commands` and `bench` import from `strop.runs`
(that is nearly every public name: the run folder is their contract), so they keep one
import path; the rest of `strop` (model, training, data, quickstart, the top-level modules)
imports from the module that holds a name, and a name only they use is not re-exported.

    files         the run folder's JSON files (`read_json`, `metrics.jsonl` lines), `RunFolderError`
    programs      `Programs` and the `programs.parquet` writer and reader
    dataset       the dataset form of the programs (shards + manifest), `read_programs` of either form
    folder        `RunFolder`, the codebook size K of a run, finding the runs of an experiment
    lock          `RunLock`: one writer per run folder

Design decisions
- `programs.parquet` stores `codes` as `list<int32>` and the codebook size `K` (plus any other
  run facts) in the Parquet schema metadata under `strop`, so a reader can validate codes
  without the config, and `datasets.load_dataset("parquet", ...)` still reads it as a table.
- Every writer goes through a temporary name then `os.replace`: nothing half-written remains.
- Validation errors are one line naming file, row and field.
- Codes are checked against K in one place (`resolve_codebook_size` + `Programs.validate`),
  shared by every reader of a run's programs: K from the caller, else the file's metadata,
  else the run's `config.json`; metadata and config disagreeing is an error, not a choice.
- One writer per run folder: `RunLock` holds an exclusive lock on `RUN/.lock` (which records
  the holder's pid) for as long as a training runs; see `RunLock` for why it is a POSIX
  record lock (`fcntl.lockf`) and not an `flock`.
"""

# What the packages outside `strop`'s core import from here (see the docstring).
from strop.runs.dataset import (
    DATASET_FORMAT,
    DATASET_MANIFEST,
    DATASET_PLAN,
    DATASET_VERSION,
    PROGRAMS_DATASET_DIR,
    ProgramsDatasetError,
    concat_programs,
    is_programs_dataset,
    iter_shards,
    read_dataset,
    read_manifest,
    read_programs,
    sha256_of,
    split_counts,
)
from strop.runs.files import RunFolderError, read_json, read_jsonl, write_json
from strop.runs.folder import RunFolder, discover_runs, find_run
from strop.runs.lock import RunLock
from strop.runs.programs import PROGRAMS_FILE, Programs, programs_table, write_programs

__all__ = [
    "DATASET_FORMAT",
    "DATASET_MANIFEST",
    "DATASET_PLAN",
    "DATASET_VERSION",
    "PROGRAMS_DATASET_DIR",
    "PROGRAMS_FILE",
    "Programs",
    "ProgramsDatasetError",
    "RunFolder",
    "RunFolderError",
    "RunLock",
    "concat_programs",
    "discover_runs",
    "find_run",
    "is_programs_dataset",
    "iter_shards",
    "programs_table",
    "read_json",
    "read_jsonl",
    "read_dataset",
    "read_manifest",
    "read_programs",
    "sha256_of",
    "split_counts",
    "write_json",
    "write_programs",
]
