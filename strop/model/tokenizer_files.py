"""The file format of a shareable tokenizer: a self-contained folder in the Hugging Face
convention, written by `Strop.save_pretrained` and read by every loader.

    DIR/model.safetensors   the tokenizer's weights (no pickle; the teacher is not included)
    DIR/config.json         model config, teacher, K, L_max, training facts, provenance, eval
    DIR/README.md           the model card (`strop.model.card`)

`read_info(path)` reads the `TokenizerInfo` of an exported folder or of a training run folder
(its config.json only); `export_config` is the config.json an export writes.

Design decisions
- The teacher is rebuilt from its name, so a machine-local `teacher_path` is never written
  into the shared config (it is kept in `provenance` only).
- The state dict's `_extra_state` (the model's own config) is not a tensor, so it is left out
  of the safetensors file and restored from config.json before the checked load
  (`strop.model.pretrained`).
- The folder is one unit (`strop.output_unit`, name `export-model`): written aside and moved
  in together; loaders refuse a folder whose moves were cut off (`require_whole`), since the
  weights of one export beside the config.json of another would load without a word.
- Read with checks: config.json's sections are typed (`ExportedConfig`: a list where an
  object belongs is one line, not an AttributeError), its top-level K/L_max/L_min/image size
  must equal the model section's, and weights must hold floats where the model does and be
  finite (`check_dtypes`, `check_finite`). Only model.safetensors is ever read: a pickle
  beside it is not, and a `model.teacher_path` in config.json (which an export never
  writes) is refused rather than handed to transformers.
- The safetensors header is read without its tensors (`header_state`: meta tensors), so the
  shapes can be checked before anything is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from strop.errors import validation_line
from strop.jsonfile import JsonFileError, read_json_object
from strop.model.config import ModelConfig
from strop.output_unit import OutputUnitError, require_complete
from strop.provenance import weights_record

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FORMAT = "strop-tokenizer"
EXPORT_VERSION = 1


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
    return (Path(path) / WEIGHTS_NAME).is_file() and says_exported(Path(path))


def says_exported(folder: Path) -> bool:
    """Whether `folder/config.json` is an exported tokenizer's (a config that cannot be read
    says no; its reader then names what is wrong with it)."""
    try:
        return read_json_object(folder / CONFIG_NAME).get("format") == EXPORT_FORMAT
    except JsonFileError:
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


def _model_config(data: Any, path: Path) -> ModelConfig:
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise PretrainedError(f"{path}: no 'model' section")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise PretrainedError(validation_line(exc, f"{path}:", prefix="model.")) from None


def _exported_config(data: dict[str, Any], path: Path) -> ExportedConfig:
    from pydantic import ValidationError

    try:
        return ExportedConfig.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise PretrainedError(validation_line(exc, f"{path}:", got=True)) from None


def read_info(path: str | os.PathLike[str]) -> TokenizerInfo:
    """The `TokenizerInfo` of an exported folder or a run folder (its `config.json` only)."""
    folder = Path(path)
    data = read_json_object(folder / CONFIG_NAME, PretrainedError)
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


def header_state(path: Path) -> dict[str, torch.Tensor]:
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


def read_tensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError) as exc:
        raise PretrainedError(f"{path}: not loadable ({one_line_of(exc)})") from None


def check_dtypes(state: dict[str, Any], own: dict[str, Any], path: Path) -> None:
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


def check_finite(state: dict[str, Any], path: Path) -> None:
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
