"""Shareable tokenizers: a self-contained folder in the Hugging Face convention.

    DIR/model.safetensors   the tokenizer's weights (no pickle; the teacher is not included)
    DIR/config.json         model config, teacher, K, L_max, training facts, provenance, eval
    DIR/README.md           the model card (`strop.model.card`)

`Strop.save_pretrained(DIR)` / `Strop.from_pretrained(DIR_or_hub_id)` come from
`PretrainedMixin`, which `Strop` inherits; `load_tokenizer(path)` reads a run folder or an
exported folder alike and returns the model with the `TokenizerInfo` an evaluation needs.

Design decisions
- The same method names and hub semantics as huggingface_hub's `PyTorchModelHubMixin`
  (`from_pretrained(id, revision=, cache_dir=, local_files_only=)`, `save_pretrained`,
  `push_to_hub`), but not the mixin itself: it serialises `__init__` arguments into
  config.json, and ours are a pydantic config plus a frozen teacher that must stay out of the
  file. Hub traffic goes through huggingface_hub's own client (`hf_hub_download`,
  `HfApi.create_repo`/`upload_folder`); nothing here speaks HTTP.
- The teacher is rebuilt from its name (the DINOv3 weights come from the local Hugging Face
  cache, or `teacher_path=`); a machine-local `teacher_path` is never written into the shared
  config (it is kept in `provenance` only).
- The state dict's `_extra_state` (the model's own config) is not a tensor, so it is left out
  of the safetensors file and restored from config.json before the checked load.
- The folder is one unit (`strop.output_unit`, name `export-model`): written aside and moved
  in together; loaders refuse a folder whose moves were cut off (`require_whole`), since the
  weights of one export beside the config.json of another would load without a word.
- Read with checks: config.json's sections are typed (`ExportedConfig`: a list where an
  object belongs is one line, not an AttributeError), its top-level K/L_max/L_min/image size
  must equal the model section's, and weights must hold floats where the model does and be
  finite (`_check_dtypes`, `_check_finite`). Only model.safetensors is ever read: a pickle
  beside it is not, and a `model.teacher_path` in config.json (which an export never
  writes) is refused rather than handed to transformers.
- Sizes are checked before they are allocated: the safetensors header's shapes (read
  without the tensors) are compared with the config on a model built on the meta device
  (`_check_fits`), so a config.json edited to d=262144 is one line, not 824 GB.
- This module imports neither `strop.model.network` (which inherits the mixin) nor training:
  it builds through `cls`, so the model layer has no cycle, and reading a run folder needs
  only its `config.json` model section and a checkpoint (`strop.model.weights`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from strop.atomic import is_disk_full
from strop.model.config import ModelConfig
from strop.model.weights import (
    CheckpointError,
    load_checkpoint_hashed,
    loadable_alternatives,
    resolve_checkpoint,
)
from strop.output_unit import OutputUnit, OutputUnitError, require_complete
from strop.provenance import weights_record
from strop.runs import RunFolderError, read_json

__all__ = [
    "CONFIG_NAME",
    "EXPORT_FORMAT",
    "WEIGHTS_NAME",
    "PretrainedError",
    "PretrainedMixin",
    "TokenizerInfo",
    "check_repo_id",
    "is_exported",
    "read_info",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FORMAT = "strop-tokenizer"
EXPORT_VERSION = 1

T = TypeVar("T", bound="PretrainedMixin")


class PretrainedError(ValueError):
    """A tokenizer folder or hub id that cannot be loaded; one line naming the file."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What a user of a trained tokenizer needs beyond its weights.

    `length_mode` is the curriculum's mode it was trained with (`adaptive` or `fixed`: a fixed
    run's length head never trained); `step` the training step of the weights; `data_path`
    the dataset it was trained on (a path on the machine that trained it)."""

    model: ModelConfig
    length_mode: str = "adaptive"
    pixel_decoder: bool = True
    data_path: str = ""
    step: int | None = None
    planned_steps: int | None = None
    source: str = ""
    exported: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None

    @property
    def weights(self) -> dict[str, Any]:
        """The weights these are, as every derived file records them (`weights_record`)."""
        return weights_record(self.step, self.provenance.get("checkpoint_sha256"))

    @property
    def weights_file(self) -> Path | None:
        """The run checkpoint the weights were loaded from; None for an exported tokenizer
        (its provenance names its source checkpoint's file name, not a path here)."""
        path = self.provenance.get("checkpoint")
        return None if self.exported or not path else Path(path)


def is_exported(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder written by `save_pretrained` (not a training run)."""
    return (Path(path) / WEIGHTS_NAME).is_file() and _says_exported(Path(path))


def _says_exported(folder: Path) -> bool:
    """Whether `folder/config.json` is an exported tokenizer's (a config that cannot be read
    says no; its reader then names what is wrong with it)."""
    try:
        return read_json(folder / CONFIG_NAME).get("format") == EXPORT_FORMAT
    except RunFolderError:
        return False


#: The unit `save_pretrained` writes (`strop.output_unit`): its files are moved in together.
UNIT = "export-model"
UNIT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)


def require_whole(folder: Path) -> None:
    """Refuse a tokenizer folder whose export was cut off while its files were moved in
    (weights of one export beside the config.json of another would load without a word)."""
    try:
        require_complete(folder, UNIT)
    except OutputUnitError as exc:
        raise PretrainedError(str(exc)) from None


class ExportedTraining(BaseModel):
    """config.json's `training` section, checked as it is read."""

    model_config = ConfigDict(extra="allow")

    steps: StrictInt | None = None
    planned_steps: StrictInt | None = None
    length_mode: Literal["adaptive", "fixed"] = "adaptive"
    pixel_decoder: StrictBool = True
    data_path: StrictStr = ""


class ExportedConfig(BaseModel):
    """The parts of an exported config.json beside `model` that loading relies on."""

    model_config = ConfigDict(extra="allow")

    training: ExportedTraining = Field(default_factory=ExportedTraining)
    provenance: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] | None = None
    k: StrictInt | None = None
    l_max: StrictInt | None = None
    l_min: StrictInt | None = None
    image_size: StrictInt | None = None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, read by the one reader of run files (`strop.runs.read_json`)."""
    try:
        return read_json(path)
    except RunFolderError as exc:
        raise PretrainedError(str(exc)) from None


def _model_config(data: Any, path: Path) -> ModelConfig:
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise PretrainedError(f"{path}: no 'model' section")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PretrainedError(f"{path}: field model.{loc}: {err['msg']}") from None


def _exported_config(data: dict[str, Any], path: Path) -> ExportedConfig:
    from pydantic import ValidationError

    try:
        return ExportedConfig.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PretrainedError(
            f"{path}: field {loc}: {err['msg']} (got {err.get('input')!r:.60})"
        ) from None


def read_info(path: str | os.PathLike[str]) -> TokenizerInfo:
    """The `TokenizerInfo` of an exported folder or a run folder (its `config.json` only)."""
    folder = Path(path)
    data = _read_json(folder / CONFIG_NAME)
    config_path = folder / CONFIG_NAME
    if data.get("format") == EXPORT_FORMAT:
        version = data.get("format_version")
        if version != EXPORT_VERSION:
            raise PretrainedError(
                f"{config_path}: format_version {version!r}; this STROP reads {EXPORT_VERSION}"
            )
        model = _model_config(data.get("model"), config_path)
        if model.teacher_path is not None:
            # export_config never writes one: a folder named here would be handed to
            # transformers (and its files read) because someone edited the file
            raise PretrainedError(
                f"{config_path}: field model.teacher_path: an exported config never names a "
                f"teacher folder (got {model.teacher_path!r:.80}); pass teacher_path= to "
                "from_pretrained to use a local teacher"
            )
        facts = _exported_config(data, config_path)
        for key in ("k", "l_max", "l_min", "image_size"):  # the card shows these copies
            given = getattr(facts, key)
            if given is not None and given != getattr(model, key):
                raise PretrainedError(
                    f"{config_path}: field {key} is {given} but model.{key} is "
                    f"{getattr(model, key)}; the file was edited or mixed from two exports"
                )
        training = facts.training
        return TokenizerInfo(
            model=model,
            length_mode=training.length_mode,
            pixel_decoder=training.pixel_decoder,
            data_path=training.data_path,
            step=training.steps,
            planned_steps=training.planned_steps,
            source=str(folder),
            exported=True,
            provenance=dict(facts.provenance),
            eval=facts.eval,
        )
    # A training run's config.json (a RunConfig dump): only the sections a user needs are read,
    # so the model layer never depends on the trainer's configuration classes.
    curriculum, train, run_data = (data.get(k) or {} for k in ("curriculum", "train", "data"))
    if "model" not in data:
        raise PretrainedError(
            f"{config_path}: neither a training run nor an exported tokenizer (no 'model' section)"
        )
    return TokenizerInfo(
        model=_model_config(data["model"], config_path),
        length_mode=str(curriculum.get("length_mode", "adaptive")),
        pixel_decoder=bool(train.get("pixel_decoder", True)),
        data_path=_from_run_folder(str(run_data.get("path", "")), folder),
        planned_steps=train.get("steps"),
        source=str(folder),
    )


def _from_run_folder(value: str, folder: Path) -> str:
    """A run's data folder as a path that works from here: `config.json` stores it relative
    to the run folder (so the folder can be moved with its data); older runs stored it
    relative to where training ran, which is kept when nothing is found beside the run."""
    if not value or value.startswith("hf://") or Path(value).is_absolute():
        return value
    beside = folder / value
    return os.path.normpath(beside) if beside.exists() else value


class PretrainedMixin:
    """`save_pretrained`, `from_pretrained`, `push_to_hub` and `from_run` for `Strop`."""

    cfg: ModelConfig

    # ------------------------------------------------------------------ save

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        info: TokenizerInfo | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        token: str | None = None,
        private: bool | None = None,
        command: str | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Path:
        """Write model.safetensors, config.json and README.md into `save_directory`; with
        `push_to_hub`, upload the folder to `repo_id` too. `command` is what a reader is told
        to rerun if this write is cut off while its files are moved in; `before_commit` runs
        under the folder's lock just before the files move in (it may refuse)."""
        if push_to_hub:
            if not repo_id:
                raise PretrainedError("push_to_hub: repo_id is required")
            check_repo_id(repo_id)  # before anything is written
        out = Path(save_directory)
        self.write_folder(out, info=info, command=command, before_commit=before_commit)
        if push_to_hub and repo_id:
            upload_folder(out, repo_id, token=token, private=private)
        return out

    def write_folder(
        self,
        out: Path,
        *,
        info: TokenizerInfo | None = None,
        command: str | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> bool:
        """`save_pretrained`'s write, without the upload; returns whether it replaced an
        export that was there (told apart under the unit's lock, so of two exports racing
        into one folder the later one knows)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        from strop.model.card import model_card

        model = self._as_model()
        info = info or TokenizerInfo(model=model.cfg)
        # One unit (`strop.output_unit`): written aside, then moved in together, so a kill or
        # a full disk midway never leaves the weights of one export beside the config of
        # another; an output folder that cannot be written fails here, in one line.
        unit = OutputUnit(out, UNIT, UNIT_FILES, command or f"save_pretrained({str(out)!r})")
        unit.open()
        with unit.writing(before_commit) as staging:
            tensors = {
                name: value.detach().to("cpu").contiguous()
                for name, value in model.state_dict().items()
                if isinstance(value, torch.Tensor)
            }
            config = export_config(model, info)
            try:
                save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
                (staging / CONFIG_NAME).write_text(
                    json.dumps(config, indent=2) + "\n", encoding="utf-8"
                )
                (staging / CARD_NAME).write_text(model_card(config), encoding="utf-8")
            except (OSError, SafetensorError) as exc:
                if is_disk_full(exc):  # one line naming the space left (`unit.writing`)
                    raise
                raise PretrainedError(
                    f"{out}: cannot write the tokenizer here ({one_line_of(exc)})"
                ) from None
        return unit.replaced

    def push_to_hub(
        self,
        repo_id: str,
        *,
        info: TokenizerInfo | None = None,
        token: str | None = None,
        private: bool | None = None,
    ) -> str:
        """Save into a temporary folder and upload it to `repo_id`; returns the commit URL."""
        import tempfile

        check_repo_id(repo_id)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(tmp, info=info)
            return upload_folder(folder, repo_id, token=token, private=private)

    @torch.no_grad()
    def tokenize(
        self, images: Sequence[str | os.PathLike[str]], length_mode: str = "head"
    ) -> list[list[int]]:
        """The program (a list of codes) of each image file in the list `images`, decoded and
        resized exactly as training data is (`strop.data.datasets.load_image`). A single
        path (a str is a sequence of characters) is a TypeError; an empty list gives []."""
        from strop.data.datasets import load_image

        if isinstance(images, (str, bytes, os.PathLike)):
            raise TypeError(
                f"tokenize takes a list of image paths, got the single path {str(images)!r:.80} "
                "(pass [path])"
            )
        paths = list(images)
        if not paths:
            return []
        model = self._as_model()
        size = model.cfg.image_size
        batch = torch.stack([load_image(p, size, where=str(p)) for p in paths])
        codes, lengths = model.encode(batch.to(model.device), length_mode)
        return [row[:n].tolist() for row, n in zip(codes.cpu(), lengths.tolist(), strict=True)]

    def _as_model(self) -> Any:
        """This object as the `Strop` it is mixed into (untyped: naming `Strop` here would make
        an import cycle with `strop.model.network`)."""
        return self

    # ------------------------------------------------------------------ load

    @classmethod
    def from_pretrained(
        cls: type[T],
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | None = None,
        map_location: str | torch.device = "cpu",
        teacher_path: str | os.PathLike[str] | None = None,
    ) -> T:
        """A tokenizer from an exported folder or a hub id, in eval mode. The teacher is
        rebuilt from its name (`teacher_path=` points a DINOv3 teacher at a local folder)."""
        folder = _resolve_folder(
            pretrained_model_name_or_path, revision, cache_dir, local_files_only, token
        )
        return cls._load_exported(folder, map_location, teacher_path)[0]

    @classmethod
    def _load_exported(
        cls: type[T],
        folder: Path,
        map_location: str | torch.device = "cpu",
        teacher_path: str | os.PathLike[str] | None = None,
    ) -> tuple[T, TokenizerInfo]:
        require_whole(folder)
        info = read_info(folder)
        if not info.exported:
            raise PretrainedError(
                f"{folder}: a training run, not an exported tokenizer "
                "(`strop export-model RUN --out DIR` makes one; `load_tokenizer` reads both)"
            )
        cfg = info.model
        if teacher_path is not None:
            cfg = cfg.model_copy(update={"teacher_path": str(teacher_path)})
        model = _checked_model(
            cls,
            cfg,
            _header_state(folder / WEIGHTS_NAME),
            map_location,
            lambda first: PretrainedError(
                f"{folder / WEIGHTS_NAME}: weights do not fit config.json ({first})"
            ),
            fill_extra_state=True,
            tensors_from=folder / WEIGHTS_NAME,
        )
        return model, info

    @classmethod
    def from_run(
        cls: type[T],
        run_dir: str | os.PathLike[str],
        which: str | int = "last",
        map_location: Any = "cpu",
    ) -> tuple[T, TokenizerInfo]:
        """The trained model of a run folder (teacher rebuilt from config.json), in eval mode."""
        info = read_info(run_dir)
        path = resolve_checkpoint(run_dir, which)
        try:
            state, sha = load_checkpoint_hashed(path, map_location=map_location)
        except CheckpointError as exc:
            others = loadable_alternatives(run_dir, path)
            hint = (
                f"; loadable: {', '.join(others)} (choose one with --checkpoint)"
                if others
                else "; no other checkpoint of this run loads"
            )
            raise CheckpointError(f"{exc}{hint}") from None
        model = _checked_model(
            cls,
            info.model,
            state["model"],
            map_location if isinstance(map_location, (str, torch.device)) else "cpu",
            lambda first: CheckpointError(
                f"{path}: weights do not fit the model of {Path(run_dir) / CONFIG_NAME} ({first})"
            ),
        )
        step = int(state["step"])
        provenance = {"checkpoint": str(path), "checkpoint_sha256": sha}
        return model, replace(info, step=step, provenance=provenance)

    @classmethod
    def load_tokenizer(
        cls: type[T],
        path: str | os.PathLike[str],
        checkpoint: str | int = "last",
        map_location: Any = "cpu",
    ) -> tuple[T, TokenizerInfo]:
        """A run folder (at `checkpoint`) or an exported folder (which has one set of weights)."""
        folder = Path(path)
        if _says_exported(folder) and not (folder / WEIGHTS_NAME).is_file():
            raise PretrainedError(
                f"{folder / WEIGHTS_NAME}: not found ({folder} is an exported tokenizer "
                "without its weights)"
            )
        if is_exported(folder):
            if str(checkpoint) != "last":
                raise PretrainedError(
                    f"{folder}: an exported tokenizer holds one set of weights; "
                    f"--checkpoint {checkpoint} applies to run folders only"
                )
            return cls._load_exported(folder, map_location)
        if not (folder / CONFIG_NAME).is_file():
            raise PretrainedError(
                f"{folder / CONFIG_NAME}: config not found ({folder} is neither a training run "
                "nor an exported tokenizer)"
            )
        return cls.from_run(folder, checkpoint, map_location)


def _checked_model(
    cls: type[T],
    cfg: ModelConfig,
    state: dict[str, Any],
    device: str | torch.device,
    mismatch: Callable[[str], Exception],
    *,
    fill_extra_state: bool = False,
    tensors_from: Path | None = None,
) -> T:
    """`cls(cfg)` with `state` loaded by `load_state_dict_checked`, on `device`, in eval mode:
    the one load of an exported folder and of a run's checkpoint. Weights that do not fit
    raise `mismatch(first line of the reason)`, each caller naming its own file.

    The shapes of `state` are checked against `cfg` on a model built on the meta device
    first (`_check_fits`), so a config.json edited to d=262144 or l_max=10^9 is refused
    before anything is allocated. `tensors_from`: the safetensors file whose header `state`
    is (meta tensors, `_header_state`); its tensors are read only once the shapes fit, and
    checked (`_check_finite`). `fill_extra_state`: the state has no `_extra_state`
    (safetensors holds tensors only), so the model's own is put in before the load."""
    _check_fits(cls, cfg, state, mismatch, fill_extra_state, tensors_from)
    if tensors_from is not None:
        state = _read_tensors(tensors_from)
        _check_finite(state, tensors_from)
    model: Any = cls(cfg)  # type: ignore[call-arg]  # Strop(cfg)
    if fill_extra_state:
        state["_extra_state"] = model.get_extra_state()
    try:
        model.load_state_dict_checked(state)
    except (ValueError, RuntimeError) as exc:
        raise mismatch(str(exc).strip().splitlines()[0]) from None
    model.to(device)
    model.eval()
    return model


def _check_fits(
    cls: type[T],
    cfg: ModelConfig,
    state: dict[str, Any],
    mismatch: Callable[[str], Exception],
    fill_extra_state: bool,
    tensors_from: Path | None,
) -> None:
    """Refuse `state` (tensors, or a header's meta tensors) that does not fit `cfg`, checked
    on a skeleton of `cls(cfg)` built on the meta device with a weightless teacher: nothing
    is allocated, whatever sizes the config names."""
    from strop.model.teachers import ShapeOnlyTeacher

    n_tensors = sum(isinstance(v, torch.Tensor) for v in state.values())
    if cfg.layers > n_tensors:  # the skeleton's build time grows with its layers
        raise mismatch(
            f"config has layers={cfg.layers}, but the weights hold {n_tensors} tensors in all"
        )
    with torch.device("meta"):
        skeleton: Any = cls(cfg, ShapeOnlyTeacher(cfg.teacher, cfg.patch_size))  # type: ignore[call-arg]
    shapes = dict(state)
    if fill_extra_state:
        shapes["_extra_state"] = skeleton.get_extra_state()
    try:
        skeleton.check_state_dict(shapes)
    except ValueError as exc:
        raise mismatch(str(exc).strip().splitlines()[0]) from None
    if tensors_from is not None:
        _check_dtypes(state, skeleton.state_dict(), tensors_from)


#: safetensors' dtype names (the header's spelling) -> torch dtypes.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _header_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as meta tensors (names, shapes and dtypes from its
    header; no tensor data is read), to check against a config before anything is built."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                part = handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(part.get_dtype())
                if dtype is None:
                    raise PretrainedError(
                        f"{path}: tensor {name} has dtype {part.get_dtype()}, which a STROP "
                        "tokenizer never holds"
                    )
                state[name] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    except (SafetensorError, OSError) as exc:
        raise PretrainedError(f"{path}: not loadable ({one_line_of(exc)})") from None
    return state


def _read_tensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError) as exc:
        raise PretrainedError(f"{path}: not loadable ({one_line_of(exc)})") from None


def _check_dtypes(state: dict[str, Any], own: dict[str, Any], path: Path) -> None:
    """Refuse an integer tensor where the model holds floats or the reverse
    (`load_state_dict` would cast it without a word)."""
    for name, value in state.items():
        mine = own.get(name)
        if not isinstance(mine, torch.Tensor) or not isinstance(value, torch.Tensor):
            continue
        if value.is_floating_point() != mine.is_floating_point():
            raise PretrainedError(
                f"{path}: tensor {name} is {str(value.dtype).removeprefix('torch.')}, "
                f"the model holds {str(mine.dtype).removeprefix('torch.')}"
            )


def _check_finite(state: dict[str, Any], path: Path) -> None:
    """Refuse a float tensor with NaN or infinite values: a trained tokenizer never saves
    one, and every code would come out the same. (Finite weights too large for float32
    arithmetic are caught where programs leave the model, `Strop.encode`.)"""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise PretrainedError(f"{path}: tensor {name} holds NaN or infinite values")


def one_line_of(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_config(model: Any, info: TokenizerInfo) -> dict[str, Any]:
    """The config.json of an exported tokenizer (see the module docstring)."""
    from strop.model.teachers import DINOV3_IDS

    cfg = model.cfg
    provenance = dict(info.provenance)
    if cfg.teacher_path:
        provenance["teacher_path"] = cfg.teacher_path
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model": cfg.model_copy(update={"teacher_path": None}).model_dump(mode="json"),
        "teacher": teacher_facts(cfg.teacher),
        "teacher_id": DINOV3_IDS.get(cfg.teacher, cfg.teacher),
        "k": cfg.k,
        "l_max": cfg.l_max,
        "l_min": cfg.l_min,
        "image_size": cfg.image_size,
        "training": {
            "steps": info.step,
            "planned_steps": info.planned_steps,
            "length_mode": info.length_mode,
            "pixel_decoder": info.pixel_decoder,
            "data_path": info.data_path,
        },
        "provenance": provenance,
        "eval": info.eval,
    }


def teacher_facts(name: str) -> dict[str, Any]:
    """What the teacher is, in plain terms: its hub id, whether it is DINO, whether random."""
    from strop.model.teachers import DINOV3_IDS

    return {
        "name": name,
        "id": DINOV3_IDS.get(name),
        "dino": name in DINOV3_IDS,
        "random_weights": name == "random-vit",
    }


def _resolve_folder(
    name: str | os.PathLike[str],
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    token: str | None,
) -> Path:
    """A local folder as is; otherwise a hub id, fetched with huggingface_hub's client.

    "" is refused (Path("") is the current directory). A name that is no folder here is
    asked of the hub once, without retries (`_hub_unreachable`): a mistyped local path spent
    half a minute in the client's retries when the hub could not be reached. With no hub, a
    cached copy still loads; without one, the error says both things in one line."""
    if not str(name).strip():
        raise PretrainedError("from_pretrained: empty path (name a tokenizer folder or a hub id)")
    folder = Path(name)
    if folder.is_dir():
        require_whole(folder)
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
        if missing:
            raise PretrainedError(f"{folder}: not an exported tokenizer (no {', '.join(missing)})")
        return folder
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(name))
    except HFValidationError:
        raise PretrainedError(
            f"{name}: no such folder, and not a hub repo id (owner/name)"
        ) from None
    unreachable = None if local_files_only else _hub_unreachable(str(name), revision, token)
    files = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files.append(
                hf_hub_download(
                    str(name),
                    filename,
                    revision=revision,
                    cache_dir=None if cache_dir is None else Path(cache_dir),
                    local_files_only=local_files_only or unreachable is not None,
                    token=token,
                )
            )
        except Exception as exc:  # hub errors come in many types (offline, 404, gated, ...)
            if unreachable is not None:
                raise PretrainedError(
                    f"{name}: no such folder, and the hub cannot be reached ({unreachable}) "
                    "nor holds a cached copy"
                ) from None
            raise PretrainedError(
                f"{name}: neither a local folder nor a loadable hub repo ({type(exc).__name__}: "
                f"{one_line_of(exc)})"
            ) from None
    return Path(files[0]).parent


def _hub_unreachable(repo_id: str, revision: str | None, token: str | None) -> str | None:
    """Why the hub cannot be reached (offline mode, a refused or timed-out connection), or
    None when it answered (even "no such repo": the download then says so at once). One
    request, no retries; huggingface_hub's own download retries a dead network for ~40 s."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_NAME, revision=revision), token=token)
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except HfHubHTTPError:
        return None
    except Exception as exc:  # connection errors of the client's HTTP library
        return f"{_endpoint()}: {type(exc).__name__}: {one_line_of(exc)}"
    return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if the hub would take it as a repo id (`owner/name` or `name`); otherwise a
    one-line PretrainedError, raised before any work is done."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PretrainedError(
            f"{repo_id!r:.80} is not a hub repo id owner/name ({one_line_of(exc).rstrip('.')})"
        ) from None
    return repo_id


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` (if needed) and upload the exported folder; returns the commit URL.
    A failed upload (no network, refused credentials, HF_HUB_OFFLINE) is one line."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    missing = [
        n for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if not (Path(folder) / n).is_file()
    ]
    if missing:
        raise PretrainedError(f"{folder}: not an exported tokenizer (no {', '.join(missing)})")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            commit_message="Upload STROP tokenizer",
        )
    except Exception as exc:  # the client raises its HTTP library's errors and its own
        raise PretrainedError(
            f"push to hub repo {repo_id} ({endpoint or _endpoint()}) failed: "
            f"{type(exc).__name__}: {one_line_of(exc)}; {folder} was written and can be "
            "uploaded later"
        ) from None
    return str(getattr(commit, "commit_url", commit))
