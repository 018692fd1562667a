"""The resolved configuration of one training run: `RunConfig` and command-line overrides.

`RunConfig` has four sections, each owned by the component it configures: `model`
(`strop.model.ModelConfig`), `curriculum` (`strop.training.curriculum.CurriculumConfig`), `train`
(`TrainConfig`, below) and `data` (`DataConfig`, below). `RunFolder.write_config` stores its
`model_dump(mode="json")` as `config.json`; `load_run_config` reads it back.

Design decisions
- Every section forbids unknown fields, so a typo in `config.json` or `--set` fails loudly.
- `apply_overrides(cfg, ["a.b=v", ...])` sets any field by dotted path. The raw string is
  handed to pydantic (lax mode: "3" -> 3, "true" -> True); sequences take comma-separated
  items (`curriculum.phase_steps=30,60,80,100`); `none`/`null` clears an optional field.
  Each value is checked against its own field at once (a bad value names its override); the
  whole config is validated once, after all of them, so cross-field checks (phase order,
  hold >= warm-up) see the final values and do not depend on the order of `--set`s. A
  cross-field error names every field involved and the flag that set it (`--steps`,
  `--batch-size`, a `--set`, or the default). Errors are one line.
- `make_run_config` always returns a validated config (`--steps 0` fails before anything is
  written). On a run folder that has a checkpoint, `--steps N` only moves the end of the run
  (like `--set train.steps=N`) and keeps the run's schedule, so a finished run can be
  extended with the flag that started it.
- Data locations (`data.path`, `data.feature_cache`) are stored in `config.json` relative to
  the run folder (`stored_config`) and resolved against it when read (`load_run_config`), so
  a run folder works from any directory and can be moved together with its data. A relative
  path that does not exist from the run folder is left as written (a config.json from before
  was relative to the directory training ran from; a missing folder's error names it as
  stored); an absolute path or a hub id stays as it is.
- `train.steps` defaults to the paper's 500k; the learning-rate schedule fields are absolute
  step numbers (warm-up end, hold end), like the curriculum's `phase_steps`.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from strop.devices import check_device
from strop.errors import error_message, field_path, validation_line
from strop.jsonfile import read_json_object
from strop.model import ModelConfig
from strop.runs.folder import RunFolder
from strop.training.curriculum import CurriculumConfig

#: Loader workers wanted when the machine has the cores for them.
MAX_DEFAULT_WORKERS = 4


def usable_cores() -> int:
    """CPU cores this process may run on (what torch's DataLoader checks its worker count
    against): the affinity mask where the OS has one, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(cores: int | None = None) -> int:
    """`train.num_workers` by default: 4, but never more than the cores (torch warns, and the
    workers would only contend)."""
    return max(0, min(MAX_DEFAULT_WORKERS, usable_cores() if cores is None else cores))


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line."""


class TrainConfig(BaseModel):
    """Optimiser, schedule, precision, logging and checkpointing of the trainer."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    steps: int = Field(500_000, ge=1, description="Total optimisation steps.")
    batch_size: int = Field(32, ge=1, description="Images per step on each process.")
    lr: float = Field(3e-4, gt=0.0, description="Peak AdamW learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Cosine floor as a share of lr.")
    warmup_steps: int = Field(30_000, ge=0, description="Linear warm-up ends at this step.")
    hold_steps: int = Field(100_000, ge=0, description="Constant lr until this step, then cosine.")
    weight_decay: float = Field(0.05, ge=0.0, description="AdamW decay on matrices only.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    grad_clip: float = Field(1.0, ge=0.0, description="Max global grad norm (0 disables).")
    pixel_decoder: bool = Field(
        True, description="Train the inspection pixel decoder (detached input, own loss)."
    )
    head_lr_mult: float = Field(
        1.0, gt=0.0, description="Length-head learning rate as a multiple of lr (paper: unstated)."
    )
    head_constant_lr: bool = Field(
        True,
        description="Keep the length head at its peak rate instead of the cosine: it starts in "
        "phase 3, when the main schedule is already decaying.",
    )
    pixel_batch: int | None = Field(
        None,
        ge=1,
        description="Images per batch the pixel probe is fitted on (None: all). Nothing upstream "
        "depends on the probe, so a slice trades only probe quality for speed.",
    )
    seed: int = Field(0, description="Seed of model init, data order and length sampling.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the differentiable forward.")
    num_workers: int = Field(
        default_factory=default_num_workers,
        ge=0,
        description="DataLoader worker processes (default: 4, at most the usable cores).",
    )
    log_every: int = Field(10, ge=1, description="Steps between metrics.jsonl rows.")
    val_every: int = Field(1000, ge=0, description="Steps between validations (0: never).")
    val_batches: int = Field(8, ge=1, description="Batches per validation.")
    checkpoint_every: int = Field(1000, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(
        3, ge=0, description="step-NNNNNNN.pt files kept besides last.pt."
    )
    tensorboard: bool = Field(False, description="Also log to RUN/tensorboard (lazy import).")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainConfig:
        if self.hold_steps and self.hold_steps < self.warmup_steps:
            raise ValueError(
                f"hold_steps ({self.hold_steps}) must be >= warmup_steps ({self.warmup_steps})"
            )
        return self


class DataConfig(BaseModel):
    """Where training images (or cached teacher features) come from."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    path: str = Field("", description="Dataset folder (CLEVR layout, synthetic, or images).")
    train_split: str = Field("train", description="Split trained on.")
    val_split: str = Field("val", description="Split validated on ('' disables validation).")
    feature_cache: str | None = Field(
        None, description="Folder written by `strop cache-features`; replaces the online teacher."
    )
    max_train_images: int | None = Field(
        None, ge=1, description="Use only the first N training images (quick runs)."
    )


class RunConfig(BaseModel):
    """Everything needed to reproduce a run; `config.json` is its JSON dump."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    model: ModelConfig
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)


# --------------------------------------------------------------------------- overrides


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def _parse_value(raw: str, annotation: Any) -> Any:
    inner, optional = _unwrap_optional(annotation)
    if optional and raw.strip().lower() in ("none", "null", ""):
        return None
    if typing.get_origin(inner) in (tuple, list, set, frozenset):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _set_path(data: dict[str, Any], cls: type[BaseModel], keys: list[str], raw: str, item: str):
    """Set the field at `keys` of the dumped config `data` to the parsed `raw`, after checking
    the value against that field alone; one-line `ConfigError` naming the override."""
    node: Any = data
    model_cls = cls
    for depth, key in enumerate(keys):
        fields = model_cls.model_fields
        if key not in fields:
            where = ".".join(keys[:depth]) or "the config"
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {'.'.join([*keys[:depth], close[0]])}?" if close else ""
            raise ConfigError(
                f"--set {item}: unknown key {'.'.join(keys[: depth + 1])!r} "
                f"({where} has: {', '.join(fields)}){hint}"
            )
        info = fields[key]
        if depth == len(keys) - 1:
            value = _parse_value(raw, info.annotation)
            kind: Any = info.annotation
            if info.metadata:  # constraints such as ge=1 live beside the type
                kind = typing.Annotated[(kind, *info.metadata)]
            try:
                TypeAdapter(kind).validate_python(value)
            except ValidationError as exc:
                msg = error_message(exc.errors()[0])
                raise ConfigError(
                    f"--set {item}: invalid value for {'.'.join(keys)} ({msg}; got {raw!r})"
                ) from None
            node[key] = value
            return
        inner, _ = _unwrap_optional(info.annotation)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            raise ConfigError(f"--set {item}: {'.'.join(keys[: depth + 1])!r} has no sub-fields")
        model_cls = inner
        node = node[key]


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """A new `RunConfig` with each `section.field=value` applied in order, then validated."""
    return _apply(cfg, [(item, f"--set {item}") for item in overrides], {})


def _apply(cfg: RunConfig, items: list[tuple[str, str]], origins: dict[str, str]) -> RunConfig:
    """Apply `(key=value, flag)` items to `cfg` and validate the result once.

    `origins` maps dotted keys to the flag that set them before (e.g. `--steps 2000`); it is
    extended here, and names the culprits of a cross-field error."""
    origins = dict(origins)
    data = cfg.model_dump()
    for item, flag in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag!r}: expected key=value, e.g. train.lr=1e-4")
        keys = key.strip().split(".")
        _set_path(data, type(cfg), keys, raw.strip(), item)
        origins[".".join(keys)] = flag
    try:
        return type(cfg).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_blame(exc, origins)) from None


def _blame(exc: ValidationError, origins: dict[str, str]) -> str:
    """One line for the first error, naming the flag(s) that set the fields involved."""
    err = exc.errors()[0]
    loc, msg = field_path(err["loc"]), error_message(err)
    if loc in origins:
        return f"{origins[loc]}: invalid value for {loc} ({msg})"
    section = f"{loc}." if loc else ""
    involved = sorted(
        (key, flag)
        for key, flag in origins.items()
        if key.startswith(section) and re.search(rf"\b{re.escape(key[len(section) :])}\b", msg)
    )
    if not involved:
        involved = sorted((k, f) for k, f in origins.items() if k.startswith(section))
    culprits = ", ".join(f"{key} from {flag}" for key, flag in involved)
    return f"{loc or 'config'}: {msg}" + (f" ({culprits})" if culprits else "")


# --------------------------------------------------------------------------- I/O


#: `DataConfig` fields that name a folder on disk (stored relative to the run folder).
DATA_PATH_FIELDS = ("path", "feature_cache")


def stored_config(cfg: RunConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`cfg` as `config.json` stores it: data folders that exist, relative to `run_dir`."""
    data = cfg.model_dump(mode="json")
    for name in DATA_PATH_FIELDS:
        value = data["data"].get(name)
        if value and Path(value).exists():
            data["data"][name] = os.path.relpath(Path(value).resolve(), Path(run_dir).resolve())
    return data


def _resolve_data_paths(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """Data folders of a stored config as paths that work from the current directory."""
    for name in DATA_PATH_FIELDS:
        value = getattr(cfg.data, name)
        if not value or Path(value).is_absolute() or value.startswith("hf://"):
            continue
        from_run = run_dir / value
        if from_run.exists():
            setattr(cfg.data, name, os.path.normpath(from_run))
    return cfg


def load_run_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    """Read and validate `RUN/config.json`, its data folders resolved against the run
    folder; one-line error naming the file and field."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: config not found (is {run_dir} a training run?)")
    return _resolve_data_paths(load_config_file(path), Path(run_dir))


def load_config_file(path: str | os.PathLike[str]) -> RunConfig:
    """A configuration file (`configs/*.json`: a `RunConfig` dump, sections may be partial)."""
    path = Path(path)
    data = read_json_object(path, ConfigError, missing="config file not found")
    data = {key: value for key, value in data.items() if not key.startswith("_")}  # comments
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_line(exc, f"{path}:")) from None


def make_run_config(
    data: str | os.PathLike[str],
    preset: str | None = None,
    teacher: str | None = None,
    k: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    config_file: str | os.PathLike[str] | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
) -> RunConfig:
    """The configuration `strop train` builds from its flags (then `--set` overrides).

    With `config_file` the file is the base and the flags given override it; without it the
    base is the preset (default S) with the teacher (default dinov3-s). `resume_dir`: the
    `--out` folder; when it holds a run with a checkpoint, `steps` keeps that run's schedule
    and only sets `train.steps` (see the module docstring). The result is validated.
    """
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps}: must be at least 1 (total optimisation steps)")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1 (images per step)")
    items: list[tuple[str, str]] = []
    if config_file is not None:
        if preset is not None:
            raise ConfigError(
                f"--preset {preset} conflicts with --config {config_file}: the file sets model.preset"
            )
        cfg = load_config_file(config_file)
        cfg.data.path = str(data)
        items += [(f"model.teacher={teacher}", f"--teacher {teacher}")] if teacher else []
        items += [(f"model.k={k}", f"--k {k}")] if k is not None else []
    else:
        model_kw: dict[str, Any] = {"teacher": teacher or "dinov3-s"}
        if k is not None:
            model_kw["k"] = k
        try:
            model = ModelConfig.from_preset(preset or "S", **model_kw)
        except ValidationError as exc:
            raise ConfigError(validation_line(exc, prefix="model.")) from None
        cfg = RunConfig(model=model, data=DataConfig(path=str(data)))
    if batch_size is not None:
        items.append((f"train.batch_size={batch_size}", f"--batch-size {batch_size}"))
    origins: dict[str, str] = {}
    if steps is not None:
        resumed = _resumed_config(resume_dir)
        if resumed is not None:
            cfg = keep_schedule(cfg, resumed, steps)
            flag = f"--steps {steps} (the resumed run's schedule)"
        else:
            cfg = scale_schedule(cfg, steps)
            flag = f"--steps {steps}"
        origins = {key: flag for key in SCHEDULE_FIELDS}
    items += [(item, f"--set {item}") for item in overrides]
    return _apply(cfg, items, origins)


def _resumed_config(run_dir: str | os.PathLike[str] | None) -> RunConfig | None:
    """The stored config of the run in `run_dir` when it would be resumed (has a checkpoint)."""
    if run_dir is None:
        return None
    run = RunFolder(Path(run_dir))
    if not run.has_checkpoint or not run.config_path.is_file():
        return None
    return load_run_config(run_dir)


#: The fields `--steps` sets: the run's length and the schedule stretched to it.
SCHEDULE_FIELDS = (
    "train.steps",
    "train.warmup_steps",
    "train.hold_steps",
    "model.div_warmup_steps",
    "curriculum.phase_steps",
)


def keep_schedule(cfg: RunConfig, run: RunConfig, steps: int) -> RunConfig:
    """`cfg` with the schedule of the existing `run` and `train.steps=steps`: what `--steps`
    means when resuming (the run continues to `steps` on the schedule it started with)."""
    train = cfg.train.model_copy(
        update={
            "steps": steps,
            "warmup_steps": run.train.warmup_steps,
            "hold_steps": run.train.hold_steps,
        }
    )
    model = cfg.model.model_copy(update={"div_warmup_steps": run.model.div_warmup_steps})
    curriculum = cfg.curriculum.model_copy(update={"phase_steps": run.curriculum.phase_steps})
    return cfg.model_copy(update={"model": model, "train": train, "curriculum": curriculum})


#: The paper's schedule as shares of its 500k steps (Table 4; Sec. 5.1 for the warm-up and hold).
PAPER_STEPS = 500_000
_PAPER_PHASES = (100_000, 150_000, 200_000, 250_000)


def scale_schedule(cfg: RunConfig, steps: int) -> RunConfig:
    """Set `train.steps` and stretch the paper's schedule to it: lr warm-up and hold, w_div
    warm-up and the curriculum phases keep their share of the run (`--set` still overrides).

    Without this a short run (`--steps 2000`) would never leave warm-up or phase 1.
    """
    ratio = steps / PAPER_STEPS
    train = cfg.train.model_copy(
        update={
            "steps": steps,
            "warmup_steps": round(30_000 * ratio),
            "hold_steps": round(100_000 * ratio),
        }
    )
    model = cfg.model.model_copy(update={"div_warmup_steps": round(40_000 * ratio)})
    phases = tuple(round(s * ratio) for s in _PAPER_PHASES)
    curriculum = cfg.curriculum.model_copy(update={"phase_steps": phases})
    return cfg.model_copy(update={"model": model, "train": train, "curriculum": curriculum})
