"""The tokenizer API: `Strop.save_pretrained(DIR)`, `Strop.from_pretrained(DIR_or_hub_id)`,
`push_to_hub`, `from_run`, `load_tokenizer` and `tokenize`, from `PretrainedMixin`, which
`Strop` inherits. `load_tokenizer(path)` reads a run folder or an exported folder alike and
returns the model with the `TokenizerInfo` an evaluation needs.

The folder's format (what the files hold, how they are read and checked) is
`strop.model.tokenizer_files`; the hub client (fetching a hub id, uploading a folder) is
`strop.model.hub`. The names users import from here (`__all__`) are re-exported from there.

Design decisions
- The same method names and hub semantics as huggingface_hub's `PyTorchModelHubMixin`
  (`from_pretrained(id, revision=, cache_dir=, local_files_only=)`, `save_pretrained`,
  `push_to_hub`), but not the mixin itself: it serialises `__init__` arguments into
  config.json, and ours are a pydantic config plus a frozen teacher that must stay out of the
  file.
- The teacher is rebuilt from its name (the DINOv3 weights come from the local Hugging Face
  cache, or `teacher_path=`).
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
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from strop.atomic import is_disk_full
from strop.model.config import ModelConfig
from strop.model.hub import check_repo_id, resolve_folder, upload_folder
from strop.model.tokenizer_files import (
    CARD_NAME,
    CONFIG_NAME,
    EXPORT_FORMAT,
    UNIT,
    UNIT_FILES,
    WEIGHTS_NAME,
    PretrainedError,
    TokenizerInfo,
    check_dtypes,
    check_finite,
    export_config,
    header_state,
    is_exported,
    one_line_of,
    read_info,
    read_tensors,
    require_whole,
    says_exported,
)
from strop.model.weights import (
    CheckpointError,
    load_checkpoint_hashed,
    loadable_alternatives,
    resolve_checkpoint,
)
from strop.output_unit import OutputUnit

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

T = TypeVar("T", bound="PretrainedMixin")
StrPath = str | os.PathLike[str]  # a path as the caller gives it


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
        folder = resolve_folder(
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
            header_state(folder / WEIGHTS_NAME),
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
        cls: type[T], run_dir: StrPath, which: str | int = "last", map_location: Any = "cpu"
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
        cls: type[T], path: StrPath, checkpoint: str | int = "last", map_location: Any = "cpu"
    ) -> tuple[T, TokenizerInfo]:
        """A run folder (at `checkpoint`) or an exported folder (which has one set of weights)."""
        folder = Path(path)
        if says_exported(folder) and not (folder / WEIGHTS_NAME).is_file():
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
    is (meta tensors, `header_state`); its tensors are read only once the shapes fit, and
    checked (`check_finite`). `fill_extra_state`: the state has no `_extra_state`
    (safetensors holds tensors only), so the model's own is put in before the load."""
    _check_fits(cls, cfg, state, mismatch, fill_extra_state, tensors_from)
    if tensors_from is not None:
        state = read_tensors(tensors_from)
        check_finite(state, tensors_from)
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
        check_dtypes(state, skeleton.state_dict(), tensors_from)
