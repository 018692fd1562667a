"""Structure analysis of a trained run (paper Sec. 4 "Program structure", App. D and G).

For each analysed image with program length L:

- counterfactual erasure `E_j(p)` of every active token j on every patch p, and pair synergy
  `S_jk(p)` for adjacent, random non-adjacent and inactive-control pairs (`strop.evaluation.erasure`);
- attribution `A(p) = argmax_j E_j(p)` and its agreement with object masks built from the
  scene's `pixel_coords`, against a spatially shuffled chance level (`strop.evaluation.object_masks`);
- the attribute-token contingency table: every object patch counts once for (attribute value,
  code of the token attributed to that patch); purity is the NMI between code and attribute
  over those patches;
- object-centric metrics of the attribution map, FG-ARI and mBO, against the renderer's exact
  instance masks (synthetic) or ellipse masks labelled approximate (real CLEVR)
  (`strop.evaluation.object_metrics`).

This module runs those per image, gathers them in an `Accumulator` and summarises the run.
Outputs: `RUN/analysis/analysis.json` and `RUN/analysis/figures/*.png` (erasure panels,
contingency heatmap, length vs object count).

Design decisions
- Programs are taken at the run's own length rule (the head's length, or all L_max tokens
  for a run trained with `curriculum.length_mode=fixed`) unless `length_mode` names another
  (`prefix:N`, `cap:N`, ...; see `strop.evaluation.export`'s design notes).
- Code-reuse statistics use the exported `programs.parquet` when it exists and was exported
  at the same length mode (the whole split),
  else the analysed images' programs; `source` says which.
- `RUN/analysis/` is one unit (`strop.output_unit`): written aside and moved in whole, so a
  kill midway never leaves a new analysis.json beside an older run's figures, and figures of
  an older analysis (erasure panels of other images) do not stay beside a newer one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop import metrics
from strop.evaluation.batch_encoding import encode_batch
from strop.evaluation.erasure import (
    choose_pairs,
    erasure_maps,
    pair_synergy,
)
from strop.evaluation.object_masks import (
    ATTRIBUTES,
    best_iou,
    object_label_map,
    pixel_frame,
)
from strop.evaluation.object_metrics import ObjectMetrics, ground_truth
from strop.evaluation.run_inputs import (
    dataset_path,
    load_run_model,
    make_loader,
    progress_batches,
)
from strop.model.length_modes import LengthMode, check_length_mode, parse_length_mode
from strop.model.weights import resolve_checkpoint
from strop.output_unit import OutputUnit
from strop.provenance import require_same_weights
from strop.runs import RunFolder, RunFolderError, write_json
from strop.scenes import SHAPES, Scene, parse_scene

if TYPE_CHECKING:
    import torch

    from strop.model import Strop


@dataclass
class Accumulator:
    """Per-image results gathered into the analysis summary."""

    effects_active: list[float] = field(default_factory=list)
    effects_inactive: list[float] = field(default_factory=list)
    synergy: dict[str, list[float]] = field(
        default_factory=lambda: {"adjacent": [], "random": [], "inactive": []}
    )
    iou: list[float] = field(default_factory=list)
    iou_shuffled: list[float] = field(default_factory=list)
    object_token_nmi: list[float] = field(default_factory=list)
    attr_pairs: dict[str, list[tuple[str, int]]] = field(
        default_factory=lambda: {a: [] for a in ATTRIBUTES}
    )
    codes: list[np.ndarray] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    n_objects: list[int] = field(default_factory=list)
    n_objects_masked: int = 0


def analyse_image(
    model: Strop,
    tokens: torch.Tensor,
    codes: np.ndarray,
    length: int,
    labels: np.ndarray | None,
    scene: Scene | None,
    n_random: int,
    rng: np.random.Generator,
    acc: Accumulator,
) -> np.ndarray:
    """Erasure, synergy and agreement for one program; returns the single-token maps (L_max, P)."""
    l_max = tokens.shape[0]
    pairs = choose_pairs(length, l_max, n_random, rng)
    inactive_single = sorted({k for _, k in pairs["inactive"]})
    singles = list(range(length)) + inactive_single
    all_pairs = pairs["adjacent"] + pairs["random"] + pairs["inactive"]
    maps = erasure_maps(model, tokens, length, [(j,) for j in singles] + list(all_pairs))
    e_single = np.zeros((l_max, maps.shape[1]))
    e_single[singles] = maps[: len(singles)]
    acc.effects_active += e_single[:length].mean(axis=1).tolist()
    acc.effects_inactive += e_single[inactive_single].mean(axis=1).tolist()
    syn = pair_synergy(maps[len(singles) :], e_single, all_pairs)
    start = 0
    for kind in ("adjacent", "random", "inactive"):
        n = len(pairs[kind])
        acc.synergy[kind] += np.abs(syn[start : start + n]).mean(axis=1).tolist()
        start += n
    if length >= 1 and labels is not None and scene is not None:
        record_agreement(e_single[:length].argmax(axis=0), codes, labels, scene, rng, acc)
    return e_single


#: Shuffled attributions per object for the chance level of its best IoU.
_SHUFFLES = 20


def record_agreement(
    attribution: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray,
    scene: Scene,
    rng: np.random.Generator,
    acc: Accumulator,
) -> None:
    """Into `acc`: each object's best IoU and shuffled chance, its patches' (attribute, code) pairs."""
    on_object = labels >= 0
    for i in np.unique(labels[on_object]):
        mask = labels == i
        acc.iou.append(best_iou(attribution, mask))
        acc.iou_shuffled.append(
            float(np.mean([best_iou(rng.permutation(attribution), mask) for _ in range(_SHUFFLES)]))
        )
        acc.n_objects_masked += 1
        obj = scene.objects[int(i)]
        for attr in ATTRIBUTES:
            acc.attr_pairs[attr] += [(getattr(obj, attr), int(codes[t])) for t in attribution[mask]]
    if on_object.any():
        score = metrics.nmi(labels[on_object], attribution[on_object])
        if score is not None:  # undefined for one object under one token: left out
            acc.object_token_nmi.append(score)


# --------------------------------------------------------------------------- summary


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(
    acc: Accumulator,
    k: int,
    programs_codes: list[np.ndarray] | None,
    reuse_source: str | None = None,
) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu

    syn = acc.synergy
    p_value = None
    if len(syn["adjacent"]) >= 2 and len(syn["random"]) >= 2:
        p_value = float(
            mannwhitneyu(syn["adjacent"], syn["random"], alternative="two-sided").pvalue
        )
    reuse_codes = programs_codes if programs_codes is not None else acc.codes
    reuse = metrics.code_reuse_stats(metrics.code_counts(reuse_codes, k))
    purity = {
        a: metrics.nmi([v for v, _ in pairs], [c for _, c in pairs])
        for a, pairs in acc.attr_pairs.items()
        if pairs
    }
    return {
        "erasure": {
            "mean_effect_active": _mean(acc.effects_active),
            "max_token_effect": float(np.max(acc.effects_active)) if acc.effects_active else None,
            "mean_effect_inactive": _mean(acc.effects_inactive),
            "n_tokens": len(acc.effects_active),
        },
        "attribution": {
            "objects": acc.n_objects_masked,
            "best_iou_mean": _mean(acc.iou),
            "best_iou_shuffled": _mean(acc.iou_shuffled),
            "object_token_nmi": _mean(acc.object_token_nmi),
        },
        "synergy": {
            "adjacent_mean_abs": _mean(syn["adjacent"]),
            "random_mean_abs": _mean(syn["random"]),
            "inactive_mean_abs": _mean(syn["inactive"]),
            "n_adjacent": len(syn["adjacent"]),
            "n_random": len(syn["random"]),
            "adjacent_vs_random_p": p_value,
        },
        "code_reuse": {
            **reuse,
            "source": reuse_source
            or ("programs.parquet" if programs_codes is not None else "analysed images"),
            "purity_nmi": _mean([v for v in purity.values() if v is not None]),
            "purity_by_attribute": purity,
        },
        "contingency": contingency_table(acc.attr_pairs),
    }


def contingency_table(attr_pairs: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """Rows `attribute=value`, columns the codes seen, counts of object patches."""
    rows, table, cols = [], [], sorted({c for pairs in attr_pairs.values() for _, c in pairs})
    index = {c: i for i, c in enumerate(cols)}
    for attr, pairs in attr_pairs.items():
        for value in sorted({v for v, _ in pairs}, key=_vocab_order(attr)):
            counts = np.zeros(len(cols), dtype=np.int64)
            for v, c in pairs:
                if v == value:
                    counts[index[c]] += 1
            rows.append(f"{attr}={value}")
            table.append(counts.tolist())
    return {"rows": rows, "codes": cols, "counts": table}


def _vocab_order(attr: str):
    from strop import scenes

    vocab = {
        "color": scenes.COLORS,
        "shape": SHAPES,
        "material": scenes.MATERIALS,
        "size": scenes.SIZES,
    }[attr]
    return lambda v: vocab.index(v) if v in vocab else len(vocab)


# --------------------------------------------------------------------------- driver


#: `RUN/analysis/` is one unit (`strop.output_unit`): analysis.json and every figure beside it.
UNIT = "analyze"
ANALYSIS_FILES = ("analysis.json", "figures/")


def analyze_run(
    run_dir: str | os.PathLike[str],
    split: str = "val",
    n_images: int = 16,
    data: str | os.PathLike[str] | None = None,
    n_random_pairs: int = 64,
    seed: int = 0,
    device: str = "auto",
    checkpoint: str = "last",
    n_panels: int = 2,
    progress: bool = True,
    length_mode: str | LengthMode | None = None,
) -> dict[str, Any]:
    """Analyse the first `n_images` of `split`; writes RUN/analysis/ and returns analysis.json's dict."""
    from strop.model.pretrained import read_info

    parse_length_mode(length_mode)  # a bad value fails before the model loads
    run = RunFolder(Path(run_dir))
    info = read_info(run.path)  # not a run: say so, and create no analysis/ folder in it
    # A mode this run cannot honour (N past L_max, quality without the head): refused before
    # the output folder is made, so a usage error leaves no empty analysis/ behind.
    check_length_mode(parse_length_mode(length_mode, info.length_mode), info.model, run.name)
    unit = OutputUnit(run.path / "analysis", UNIT, ANALYSIS_FILES, f"strop analyze {run.path}")
    unit.open()  # a folder that cannot be written fails here, before the model loads
    result: dict[str, Any] = {}

    def same_weights() -> None:  # committed only while the run holds the weights analysed
        loaded = result["weights"]["checkpoint_sha256"]
        source = None if info.exported else resolve_checkpoint(run.path, checkpoint)
        require_same_weights(run.path, loaded, "strop analyze", "analysis/", source)

    with unit.writing(same_weights) as staging:  # a failure removes the analysis/ it created
        result = _analyze(
            run,
            staging,
            split,
            n_images,
            data,
            n_random_pairs,
            seed,
            device,
            checkpoint,
            n_panels,
            progress,
            length_mode,
        )
    return result


def _analyze(
    run: RunFolder,
    out_dir: Path,
    split: str,
    n_images: int,
    data: str | os.PathLike[str] | None,
    n_random_pairs: int,
    seed: int,
    device: str,
    checkpoint: str,
    n_panels: int,
    progress: bool,
    length_mode: str | LengthMode | None,
) -> dict[str, Any]:
    model, info, dev = load_run_model(run.path, checkpoint, device)
    mode = parse_length_mode(length_mode, info.length_mode)
    check_length_mode(mode, info.model, run.name)
    root = dataset_path(run.path, info, data)
    mc = info.model
    gh, gw = model.grid
    grid = (int(gh), int(gw))
    loader = make_loader(root, split, mc.image_size, batch_size=min(16, n_images), limit=n_images)
    fig_dir = out_dir / "figures"
    rng = np.random.default_rng(seed)
    acc = Accumulator()
    objects = ObjectMetrics(seed=seed)
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, int]] = []
    for batch in progress_batches(loader, f"analyze {run.name} [{mode}]", progress):
        enc = encode_batch(model, batch["image"].to(dev), mode, mc.w_mse, mc.l_min)
        for b in range(len(batch["image"])):
            length = int(enc.lengths[b])
            codes = enc.codes[b].cpu().numpy()
            scene = _scene(batch["scene"][b])
            labels = (
                object_label_map(scene, grid, mc.image_size, pixel_frame(root, split, scene))
                if scene
                else None
            )
            maps = analyse_image(
                model, enc.tokens[b], codes, length, labels, scene, n_random_pairs, rng, acc
            )
            if scene is not None and length >= 1:
                truth, source = ground_truth(root, split, scene)
                if truth is not None:
                    attribution = maps[:length].argmax(axis=0)
                    objects.add(attribution, grid, truth, source, len(scene.objects))
            acc.codes.append(codes[:length])
            acc.lengths.append(length)
            acc.n_objects.append(int(batch["n_objects"][b]))
            if len(panels) < n_panels:
                panels.append(
                    (
                        str(batch["image_id"][b]),
                        batch["image"][b].permute(1, 2, 0).numpy(),
                        maps[:length],
                        labels,
                        length,
                    )
                )
    programs, reuse_source = _programs_codes(run, mc.k, str(mode))
    result = {
        "run": run.name,
        "split": split,
        "n_images": len(acc.lengths),
        "length_mode": str(mode),
        "weights": info.weights,
        "grid": list(grid),
        "seed": seed,
        **summarise(acc, mc.k, programs, reuse_source),
        "object_metrics": objects.summary(),
    }
    write_json(out_dir / "analysis.json", result)
    _figures(fig_dir, panels, grid, result["contingency"], run, acc)
    return result


def _scene(raw: str | None) -> Scene | None:
    if not raw:
        return None
    return parse_scene(json.loads(raw), source="dataset scene")


def _programs_codes(run: RunFolder, k: int, mode: str) -> tuple[list[np.ndarray] | None, str]:
    """The exported programs' codes for code reuse, and where reuse comes from. Programs of
    another length mode (or of another K, or unreadable) are not this analysis's programs:
    reuse is recomputed from the analysed images, and `source` says why."""
    if not run.programs_path.is_file():
        return None, "analysed images"
    try:
        programs = run.read_programs()
    except RunFolderError as exc:
        return None, f"analysed images (programs.parquet unreadable: {exc})"
    if programs.codebook_size not in (None, k):
        return None, f"analysed images (programs.parquet has K={programs.codebook_size}, not {k})"
    exported = programs.meta.get("length_mode")
    if exported != mode:
        return None, (
            f"analysed images (programs.parquet was exported with length mode {exported}, "
            f"this analysis uses {mode})"
        )
    return programs.codes, "programs.parquet"


# --------------------------------------------------------------------------- figures


def _figures(
    fig_dir: Path, panels, grid, contingency: dict[str, Any], run: RunFolder, acc: Accumulator
) -> None:
    from strop.evaluation.plots import plot_contingency, plot_erasure_panel, plot_length_vs_objects

    fig_dir.mkdir(parents=True, exist_ok=True)
    for image_id, image, maps, labels, length in panels:
        plot_erasure_panel(
            fig_dir / f"erasure_{image_id}.png",
            image,
            maps,
            labels,
            grid,
            f"{run.name} {image_id} (L={length})",
        )
    if contingency["rows"]:
        plot_contingency(fig_dir / "contingency.png", contingency)
    lengths, n_obj = np.array(acc.lengths), np.array(acc.n_objects)
    if run.programs_path.is_file():
        try:
            p = run.read_programs()
            lengths, n_obj = p.lengths, p.n_objects
        except RunFolderError:
            pass
    plot_length_vs_objects([(run.name, lengths, n_obj)], fig_dir / "length_vs_objects.png")
