"""Evaluation of a trained run on a held-out split: `RUN/eval.json`.

What is measured (paper Sec. 5.2, Tables 1 and 14; Sec. 5.4): alignment of the interpreted
field with the frozen teacher (cosine, R^2, RMSE), whether token order matters (`order_probe`, see
`strop.evaluation.order_probe`), codebook use over active prefixes (CB%,
Eff%), the pixel probe's SSIM and (when its weights are at hand) LPIPS, program length
(mean/min/max), bits per image and the compression ratio, and the correlation of length with
object count (Pearson and Spearman with 95% CIs). With `--length-mode search:EPS`, also how
often the head picks the same length as the search (`head_matches_search`) and their mean
absolute difference. Runs with the quality head get a `quality_control` block (requested
vs achieved EPS against `search:EPS`, `strop.evaluation.quality_calibration`).

Design decisions
- The metric definitions live in `strop.metrics`; this module only runs the model and
  streams batches into them (`FieldStats` is exact under batching; `SplitScores` keeps
  per-image numbers only, so a split of any size streams through the device).
- `compression_ratio` = teacher bits / program bits, both summed over the split (a ratio of
  totals, not a mean of per-image ratios, which small programs would dominate). Teacher bits
  are the P x D patch features at fp16 (how `strop cache-features` stores them), program
  bits are `length * ceil(log2 K)`; `compression_ratio_worst` uses L_max for every image.
  The paper quotes float32 sources, so its ratios are twice these.
- SSIM compares the pixel decoder's output with the input image resized (area) to the
  decoder's resolution. A run trained without the pixel decoder reports `ssim: null`.
- LPIPS (v0.1, AlexNet; `strop.evaluation.lpips`) scores the same pair as SSIM. By default
  it runs when both weight files are found (torch hub cache, installed lpips package) and
  otherwise records `lpips: null` with the reason in `lpips_note`, so eval without the weights
  is as fast as before. Weight paths given explicitly, or `lpips=True`, make it required: a
  missing or wrong file is then an error. The files used are recorded in `lpips_weights`.
- Headline numbers carry their n (`n_images`) and a 95% percentile-bootstrap interval over
  the images (`ci95`: cos, r2, rmse, cb_pct, length_mean; 1000 resamples, seed 0), so the
  report can say when two runs differ by less than the noise of the split.
- Baselines (`strop.baselines` records, beside the value they qualify):
  `alignment` = {cos, r2, skill, mean_field, one_token, collapsed, ...}. `mean_field` is the
  average teacher field over the first `baseline_train_images` (default 2000) images of the
  TRAIN split (`mean_field_images` says how many), the same field for every val image;
  `one_token` is each program's first token alone, interpreted. Both are per-image paired
  comparisons of the mean patch cosine. `skill` = (cos - cos_mean_field) / (1 - cos_mean_field).
  `collapsed` (with `collapse_banner`) when the program is not beyond the mean field or its
  skill is below `SKILL_MIN` = 0.02 (our choice: 2% of the way from the average field to a
  perfect one; the K=32 run of issue 26 that collapsed had skill ~0.005, healthy runs 0.15).
  `scene_probes` (`strop.evaluation.scene_probes`) is fitted on the same train images.
  The order probe's bag-of-codes control is fitted on the first `order_probe_images` of them.
  Without a train split these are null, with the reason in `baselines_note`.
- The teacher's name is recorded as configured (`pixels`, `random-vit` are named as such so
  no one mistakes a fallback for DINO).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop import metrics
from strop.baselines import COLLAPSED, NOT_BEYOND, compare, compare_means
from strop.evaluation.batch_encoding import encode_batch
from strop.evaluation.order_probe import OrderProbe
from strop.evaluation.run_inputs import ReadArgs, Reading, dataset_path, progress_batches
from strop.evaluation.scene_probes import ProbeSplit, collect_split, scene_probes
from strop.model.length_modes import (
    LengthMode,
    check_length_mode,
    check_quality_eps,
    parse_length_mode,
)
from strop.output_unit import check_writable
from strop.provenance import write_json_of_weights
from strop.runs import RunFolder

if TYPE_CHECKING:
    import torch
    from typing_extensions import Unpack

    from strop.evaluation.batch_encoding import EncodedBatch
    from strop.evaluation.lpips import LPIPS
    from strop.model.network import Strop

#: Below this skill over the average teacher field a run is flagged collapsed (see module).
SKILL_MIN = 0.02


def evaluate_run(
    run_dir: str | os.PathLike[str],
    split: str = "val",
    length_mode: str | LengthMode | None = None,
    progress: bool = True,
    write: bool = True,
    lpips: bool | None = None,
    lpips_backbone: str | os.PathLike[str] | None = None,
    lpips_lin: str | os.PathLike[str] | None = None,
    quality_eps: Sequence[float] | None = None,
    order_probe_images: int = 256,
    baseline_train_images: int | None = 2000,
    train_split: str = "train",
    **read: Unpack[ReadArgs],
) -> dict[str, Any]:
    """Evaluate `split` and write RUN/eval.json (unless `write=False`); returns the dict.
    `read`: the dataset, batches, limit, device and checkpoint (`run_inputs.ReadArgs`).

    `order_probe_images`: how many images the order probe (`order_probe` block,
    `strop.evaluation.order_probe`) reinterprets under permutations; 0 skips it.

    `lpips`: None scores LPIPS when its weights are found, True requires it (as does giving
    `lpips_backbone` or `lpips_lin`), False skips it. A run with the quality head also gets
    the `quality_control` block (`strop.evaluation.quality_calibration`), at `quality_eps` or
    its default EPS values.

    `baseline_train_images`: how many images of `train_split` (the first; None = all) the
    baselines are fitted on: the average teacher field, the scene probes, the order probe's
    bag-of-codes control (its first `order_probe_images`)."""
    parse_length_mode(length_mode)  # a bad value fails before the model loads
    run, reading = RunFolder(Path(run_dir)), Reading(**read)
    model, info, dev = reading.model(run.path)
    if write:
        check_writable(run.eval_path)  # before the encode, not after it
    mode = parse_length_mode(length_mode, info.length_mode)
    check_length_mode(mode, info.model, run.name)
    check_quality_eps(None if quality_eps is None else list(quality_eps), info.model, run.name)
    mc = info.model
    loader = reading.loader(run.path, info, split)
    perceptual, lpips_info = lpips_network(
        lpips, lpips_backbone, lpips_lin, info.pixel_decoder, mc.image_size, dev
    )
    train, train_note = _train_split(
        model, info, dev, run.path, reading, train_split, baseline_train_images, mode,
        progress, order_probe_images, _files(loader.dataset),
    )  # fmt: skip
    scores = SplitScores(
        model, mode, info.pixel_decoder, perceptual, train, order_probe_images, quality_eps
    )
    for batch in progress_batches(loader, f"eval {run.name} [{mode}]", progress):
        scores.update(batch["image"].to(dev), batch)
    result: dict[str, Any] = {
        "run": run.name,
        "split": split,
        "n_images": scores.n_images,
        "checkpoint": str(reading.checkpoint),
        "weights": info.weights,
        "teacher": mc.teacher,
        "k": mc.k,
        "l_max": mc.l_max,
        "length_mode": str(mode),
        **scores.headline(lpips_info),
    }
    result.update(_baseline_blocks(result, scores, train, train_note, train_split))
    result.update(scores.mode_blocks())
    if write:
        write_json_of_weights(
            run.eval_path,
            result,
            run.path,
            info.weights["checkpoint_sha256"],
            "strop eval",
            info.weights_file,
        )
    return result


class SplitScores:
    """What `evaluate_run` gathers from the scored split, one batch at a time (`update`), and
    the blocks of eval.json it gives (`headline`, `mode_blocks`); only per-image numbers and
    CPU arrays are kept, never a batch's features."""

    def __init__(
        self,
        model: Strop,
        mode: LengthMode,
        use_pixels: bool,
        perceptual: LPIPS | None,
        train: ProbeSplit | None,
        order_probe_images: int,
        quality_eps: Sequence[float] | None,
    ):
        from strop.evaluation.quality_calibration import QualityCalibration

        self.model, self.mode = model, mode
        self.use_pixels, self.perceptual = use_pixels, perceptual
        self.mc = model.cfg
        self.mean_field = None if train is None else train.mean_field
        self.field_stats = metrics.FieldStats()
        self.per_image = metrics.PerImageField()
        self.baseline_fields = {
            "mean_field": metrics.PerImageField(),
            "one_token": metrics.PerImageField(),
        }
        self.counts = np.zeros(self.mc.k, dtype=np.int64)
        self.image_counts: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.head_lengths: list[np.ndarray] = []
        self.n_objects: list[int] = []
        self.ssims: list[np.ndarray] = []
        self.lpips_values: list[np.ndarray] = []
        self.probe = OrderProbe(k=self.mc.k, max_images=order_probe_images)
        self.val = ProbeSplit()
        self.calibration = (
            QualityCalibration(model, self.mc.w_mse, quality_eps) if self.mc.quality_head else None
        )
        self.n_patches = self.width = 0

    @property
    def n_images(self) -> int:
        return int(sum(len(n) for n in self.lengths))

    def update(self, images: torch.Tensor, batch: dict[str, Any]) -> None:
        """One batch of images (on the model's device) with its loader row."""
        enc = encode_batch(self.model, images, self.mode, self.mc.w_mse, self.mc.l_min)
        self._score_fields(images, enc)
        self.probe.update(self.model, enc.codes, enc.lengths, enc.feats)
        self.val.update(enc, batch["scene"])
        self.n_patches, self.width = enc.feats.shape[1], enc.feats.shape[2]
        codes_np = enc.codes.cpu().numpy()
        self.counts += metrics.code_counts(codes_np, self.mc.k)
        self.image_counts += [metrics.code_counts(row[None], self.mc.k) for row in codes_np]
        self.lengths.append(enc.lengths.cpu().numpy())
        if enc.head_lengths is not None:
            self.head_lengths.append(enc.head_lengths.cpu().numpy())
        self.n_objects += [int(n) for n in batch["n_objects"]]
        if self.calibration is not None:
            self.calibration.update(enc.feats, enc.tokens)

    def _score_fields(self, images: torch.Tensor, enc: EncodedBatch) -> None:
        """The interpreted field against the teacher's, the 1-token and mean-field baselines,
        and the pixel probe's SSIM/LPIPS."""
        import torch

        model = self.model
        with torch.no_grad():
            field = model.interpret(enc.codes, enc.lengths)
            field_np, feats_np = field.float().cpu().numpy(), enc.feats.float().cpu().numpy()
            self.field_stats.update(field_np, feats_np)
            self.per_image.update(field_np, feats_np)
            one = model.interpret(enc.codes[:, :1], torch.ones_like(enc.lengths))
            self.baseline_fields["one_token"].update(one.float().cpu().numpy(), feats_np)
            if self.mean_field is not None:
                tiled = np.broadcast_to(self.mean_field, feats_np.shape)
                self.baseline_fields["mean_field"].update(tiled, feats_np)
            if self.use_pixels:
                recon = model.decode_pixels(field).float().clamp(0, 1)
                target = probe_target(images, recon)
                self.ssims.append(metrics.ssim(recon.cpu().numpy(), target.cpu().numpy()))
                if self.perceptual is not None:
                    self.lpips_values.append(self.perceptual(recon, target).cpu().numpy())

    def headline(self, lpips_info: dict[str, Any]) -> dict[str, Any]:
        """Alignment, codebook use, the pixel probe, length, bits and compression, length vs
        objects and their intervals."""
        mc = self.mc
        length = np.concatenate(self.lengths)
        bits = metrics.program_bits(length, mc.k)
        source_bits = metrics.teacher_bits(self.n_patches, self.width)
        return {
            **{key: _finite(v) for key, v in self.field_stats.as_dict().items()},
            **metrics.codebook_usage(self.counts),
            "ssim": float(np.concatenate(self.ssims).mean()) if self.ssims else None,
            "lpips": float(np.concatenate(self.lpips_values).mean()) if self.lpips_values else None,
            **lpips_info,
            "length_mean": float(length.mean()),
            "length_min": int(length.min()),
            "length_max": int(length.max()),
            "length_std": float(length.std()),
            "bits_per_token": metrics.bits_per_token(mc.k),
            "bits_per_image": float(bits.mean()),
            "teacher_bits_per_image": source_bits,
            "teacher_dtype_bits": metrics.TEACHER_DTYPE_BITS,
            "compression_ratio": float(source_bits * len(length) / max(1, bits.sum())),
            "compression_ratio_worst": float(
                source_bits / (mc.l_max * metrics.bits_per_token(mc.k))
            ),
            "length_vs_objects": metrics.length_vs_objects(length, self.n_objects),
            "ci95": _bootstrap(self.per_image, np.stack(self.image_counts), length),
            "ci_method": "percentile bootstrap over images, 1000 resamples, seed 0",
        }

    def mode_blocks(self) -> dict[str, Any]:
        """What the length mode adds: head vs search for `search:EPS`, and the calibration of
        `quality:EPS` for runs with the quality head."""
        out: dict[str, Any] = {}
        if self.mode.kind == "search":
            length = np.concatenate(self.lengths)
            head = np.concatenate(self.head_lengths)
            out["search_eps"] = self.mode.eps
            out["head_matches_search"] = float(np.mean(head == length))
            out["head_search_mean_abs_diff"] = float(np.mean(np.abs(head - length)))
            out["head_length_mean"] = float(head.mean())
        if self.calibration is not None:
            out["quality_control"] = self.calibration.result()
        return out


def _baseline_blocks(
    result: dict[str, Any],
    scores: SplitScores,
    train: ProbeSplit | None,
    train_note: str | None,
    train_split: str,
) -> dict[str, Any]:
    """`alignment` (with `collapsed`), `scene_probes` and `order_probe`, fitted on the train
    split when there is one (else their notes say why not)."""
    alignment = _alignment(result, scores.per_image, scores.baseline_fields, train is not None)
    if train is not None:
        alignment["mean_field_images"] = train.n_fields
        alignment["mean_field_split"] = train_split
    out: dict[str, Any] = {"alignment": alignment, "collapsed": alignment["collapsed"]}
    if alignment["collapsed"]:
        out["collapse_banner"] = COLLAPSED
    probes, probes_note = (
        (None, train_note) if train is None else scene_probes(train, scores.val, scores.mc.k)
    )
    out["scene_probes"] = probes
    if probes_note:
        out["scene_probes_note"] = probes_note
    if train_note:
        out["baselines_note"] = train_note
    if scores.probe.max_images > 0:
        bag_train = (
            None
            if train is None or not train.fields
            else (train.codes[: train.keep_fields], np.concatenate(train.fields))
        )
        out["order_probe"] = scores.probe.result(bag_train)
    return out


def _train_split(
    model: Any,
    info: Any,
    dev: Any,
    run_path: Path,
    reading: Reading,
    split: str,
    limit: int | None,
    mode: LengthMode,
    progress: bool,
    keep_fields: int,
    scored_files: set[Path],
) -> tuple[ProbeSplit | None, str | None]:
    """The train split's programs, scenes and average teacher field, or (None, why not).
    A train split that shares images with the scored one (an image folder has no splits:
    every split is the whole folder) gives none: its baselines would be fitted in-sample.
    `reading` gives the dataset and the batch size; `limit` is the train split's own."""
    root = dataset_path(run_path, info, reading.data)
    try:
        from strop.data.datasets import build_dataset

        shared = scored_files & _files(build_dataset(root, split, info.model.image_size))
    except (ValueError, FileNotFoundError) as exc:
        return None, f"no {split} split to fit the baselines on ({exc})"
    if shared:
        return None, (
            f"the {split} split shares {len(shared)} images with the scored split (a folder "
            "without splits?): baselines fitted on it would be in-sample, so none are given"
        )
    try:
        return collect_split(
            model, info, dev, root, split, limit, reading.batch_size, mode, progress, keep_fields
        ), None
    except (ValueError, FileNotFoundError) as exc:  # DataError is a ValueError
        return None, f"no {split} split to fit the baselines on ({exc})"


def _files(dataset: Any) -> set[Path]:
    """The image files of a dataset (through a `Subset`), resolved; empty when unknown."""
    files = getattr(getattr(dataset, "dataset", dataset), "files", None) or []
    return {Path(f).resolve() for f in files}


def _alignment(
    result: dict[str, Any],
    per_image: metrics.PerImageField,
    baselines: dict[str, metrics.PerImageField],
    have_mean_field: bool,
) -> dict[str, Any]:
    """The `alignment` block: the program's cos and R^2 beside the average teacher field and
    the 1-token program (paired per image), skill over the field, and the collapse flag."""
    n = len(per_image.n_vec)
    block: dict[str, Any] = {"cos": result["cos"], "r2": result["r2"], "n_images": n}

    def image_cos(stats: metrics.PerImageField) -> np.ndarray:
        return np.asarray(stats.cos_sum) / np.asarray(stats.n_vec)

    block["one_token"] = compare_means(
        image_cos(per_image), image_cos(baselines["one_token"]), name="one_token", metric="cos"
    )
    if not have_mean_field:
        block.update(
            skill=None, mean_field=None, mean_field_r2=None, r2_baseline=None, collapsed=False
        )
        return block
    field = baselines["mean_field"]
    record = compare_means(image_cos(per_image), image_cos(field), name="mean_field", metric="cos")
    block["mean_field"] = record
    block["r2_baseline"] = {
        "mean_field": compare(
            n,
            lambda idx: per_image.over(idx)["r2"],
            lambda idx: field.over(idx)["r2"],
            name="mean_field",
            metric="r2",
        )
    }
    block["mean_field_r2"] = _finite(field.over(np.arange(n))["r2"])
    base = record["baseline_value"]
    value = record["value"]
    skill = None if value is None or base is None or base >= 1 else (value - base) / (1 - base)
    block["skill"] = skill
    block["skill_min"] = SKILL_MIN
    block["collapsed"] = bool(skill is None or skill < SKILL_MIN or record["verdict"] == NOT_BEYOND)
    return block


def probe_target(images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """The input images at the pixel probe's resolution (area resize when they differ), fp32."""
    import torch.nn.functional as F

    if recon.shape[-2:] != images.shape[-2:]:
        images = F.interpolate(images, size=recon.shape[-2:], mode="area")
    return images.float()


def lpips_network(
    request: bool | None,
    backbone: str | os.PathLike[str] | None,
    lin: str | os.PathLike[str] | None,
    use_pixels: bool,
    image_size: int,
    device: Any,
) -> tuple[LPIPS | None, dict[str, Any]]:
    """The LPIPS network to score the probe with, or None and why (`lpips_note`)."""
    from strop.evaluation import lpips as lpips_metric  # torch

    required = request is True or backbone is not None or lin is not None
    if request is False and required:
        raise ValueError("--no-lpips contradicts --lpips-backbone/--lpips-lin")
    if request is False:
        return None, {"lpips_note": "not requested (--no-lpips)"}
    why_not = None
    if not use_pixels:
        why_not = "the run has no pixel decoder"
    elif image_size < lpips_metric.MIN_SIZE:
        why_not = (
            f"the probe's {image_size} px images are below AlexNet's {lpips_metric.MIN_SIZE} px"
        )
    if why_not is not None:
        if required:
            raise ValueError(f"cannot score LPIPS: {why_not}")
        return None, {"lpips_note": why_not}
    try:
        weights = lpips_metric.find_weights(backbone, lin)
    except lpips_metric.LPIPSWeightsError as exc:
        if required:
            raise
        return None, {"lpips_note": str(exc)}
    network = lpips_metric.build_lpips(weights, device)
    return network, {"lpips_weights": {"backbone": str(weights.backbone), "lin": str(weights.lin)}}


def _bootstrap(
    per_image: metrics.PerImageField, image_counts: np.ndarray, length: np.ndarray
) -> dict[str, list[float | None]]:
    """95% intervals of the headline numbers over images resampled with replacement."""
    n = len(length)

    def field(key: str):
        return lambda idx: per_image.over(idx)[key]

    stats = {
        "cos": field("cos"),
        "r2": field("r2"),
        "rmse": field("rmse"),
        "cb_pct": lambda idx: metrics.codebook_usage(image_counts[idx].sum(axis=0))["cb_pct"],
        "length_mean": lambda idx: float(length[idx].mean()),
    }
    return {key: list(metrics.bootstrap_ci(n, fn)) for key, fn in stats.items()}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
