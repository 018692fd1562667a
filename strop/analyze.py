"""Structure analysis of a trained run (paper Sec. 4 "Program structure", App. D and G).

For each analysed image with program length L:

- counterfactual erasure: `E_j(p) = || F_hat(full) - F_hat(program without token j) ||_2` for
  every active token j and patch p;
- attribution: each patch goes to its most influential token, `A(p) = argmax_j E_j(p)`;
- agreement with objects: each object's mask (from the scene's `pixel_coords`) against the
  attributed regions, as the best IoU over tokens, beside a spatially shuffled attribution
  (same region sizes, random placement) as chance;
- pair synergy `S_jk(p) = E_jk(p) - E_j(p) - E_k(p)` for adjacent active pairs, random
  non-adjacent active pairs, and inactive controls (an active token paired with one past the prefix: S is 0 by
  construction, a check that erasure of inactive tokens is exact);
- the attribute-token contingency table: every object patch counts once for (attribute value,
  code of the token attributed to that patch); purity is the NMI between code and attribute
  over those patches.

Outputs: `RUN/analysis/analysis.json` and `RUN/analysis/figures/*.png` (erasure panels,
contingency heatmap, length vs object count).

Design decisions
- "Deleting" token j removes it and re-packs the rest: the remaining tokens keep their order,
  the ones after j move up one prefix position (the interpreter adds prefix positional
  encodings, so this is the program with j cut out, not a masked hole), and the prefix length
  drops by one. It is done as a permutation of the L_max tokens (erased ones moved past the new
  length), so every variant of one image runs in one batched `interpret_tokens` call with
  static shape. Erasing a token at or past L leaves the prefix untouched: E_j = 0 exactly.
- Object masks are discs around each object's projected centre, with radius
  `(S / 2) * r_world / (depth * tan(fov_x / 2))` (CLEVR's 35 mm lens on a 32 mm sensor,
  `r_world` 0.7 large / 0.35 small), in the model's S x S input, so they are independent of the
  source resolution; `pixel_coords` are rescaled from the frame they were computed in
  (`pixel_frame`: the synthetic render size, or real CLEVR's 320x240). Overlaps go to the
  nearer object. A patch belongs to a mask when its centre is inside the disc (the centre's
  own patch always does).
- Programs are taken at the run's own length rule: the head's length, or all L_max tokens
  for a run trained with `curriculum.length_mode=fixed`.
- Code-reuse statistics use the exported `programs.parquet` when it exists (the whole split),
  else the analysed images' programs; `source` says which.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop import metrics
from strop.export import (
    dataset_path,
    encode_batch,
    load_run_model,
    make_loader,
    parse_length_mode,
    progress_batches,
)
from strop.runs import RunFolder, RunFolderError, write_json
from strop.scenes import SHAPES, Scene, parse_scene

if TYPE_CHECKING:
    import torch

    from strop.model import Strop

ATTRIBUTES = ("color", "shape", "material", "size")
_SHUFFLES = 20


# --------------------------------------------------------------------------- erasure


def erasure_order(l_max: int, length: int, erase: tuple[int, ...]) -> tuple[list[int], int]:
    """Token order with `erase` removed from the program (moved past the end) and the new length."""
    dropped = set(erase)
    keep = [i for i in range(l_max) if i not in dropped]
    return keep + sorted(dropped), length - sum(1 for j in dropped if j < length)


def erased_fields(
    model: Strop,
    tokens: torch.Tensor,
    length: int,
    erasures: list[tuple[int, ...]],
    chunk: int = 128,
) -> torch.Tensor:
    """Interpreted fields (n, P, D) of one program (tokens (L_max, d)) after each erasure set."""
    import torch

    l_max = tokens.shape[0]
    outs = []
    for start in range(0, len(erasures), chunk):
        part = [erasure_order(l_max, length, e) for e in erasures[start : start + chunk]]
        order = torch.tensor([o for o, _ in part], device=tokens.device)
        lengths = torch.tensor([n for _, n in part], device=tokens.device)
        with torch.no_grad():
            outs.append(model.interpret_tokens(tokens[order], lengths))
    return torch.cat(outs)


def erasure_maps(
    model: Strop, tokens: torch.Tensor, length: int, erasures: list[tuple[int, ...]]
) -> np.ndarray:
    """`E(p) = || F_hat(full) - F_hat(erased) ||` per erasure set: (n, P)."""
    import torch

    with torch.no_grad():
        full = model.interpret_tokens(tokens[None], torch.tensor([length], device=tokens.device))
        fields = erased_fields(model, tokens, length, erasures)
        return (fields - full).float().norm(dim=-1).cpu().numpy()


def pair_synergy(
    e_pair: np.ndarray, e_single: np.ndarray, pairs: list[tuple[int, int]]
) -> np.ndarray:
    """`S_jk(p) = E_jk(p) - E_j(p) - E_k(p)`; e_single indexed by token (zeros past the prefix)."""
    return (
        np.stack([e_pair[i] - e_single[j] - e_single[k] for i, (j, k) in enumerate(pairs)])
        if pairs
        else np.zeros((0, e_single.shape[1]))
    )


def choose_pairs(
    length: int, l_max: int, n_random: int, rng: np.random.Generator
) -> dict[str, list[tuple[int, int]]]:
    """Adjacent active pairs; distinct random non-adjacent active pairs; active-inactive controls.

    Random pairs exclude adjacent ones so the two groups are disjoint: the comparison asks
    whether neighbouring tokens interact more than tokens further apart.
    """
    adjacent = [(j, j + 1) for j in range(length - 1)]
    far = [(j, k) for j in range(length) for k in range(j + 2, length)]
    pick = rng.choice(len(far), min(n_random, len(far)), replace=False) if far else []
    random = [far[i] for i in sorted(pick)]
    inactive: list[tuple[int, int]] = []
    if 0 < length < l_max:
        ks = rng.choice(np.arange(length, l_max), min(8, l_max - length), replace=False)
        inactive = [(int(rng.integers(length)), int(k)) for k in ks]
    return {"adjacent": adjacent, "random": random, "inactive": inactive}


# --------------------------------------------------------------------------- object masks


def object_radius_px(size: str, depth: float, image_size: int) -> float:
    """Projected radius (model pixels) of a CLEVR object of `size` at camera distance `depth`."""
    from strop.data.renderer import LENS_MM, SENSOR_MM, SIZE_RADIUS

    tan_half_fov = SENSOR_MM / 2 / LENS_MM
    return image_size / 2 * SIZE_RADIUS[size] / (max(depth, 1e-3) * tan_half_fov)


def object_label_map(
    scene: Scene, grid: tuple[int, int], image_size: int, source_size: tuple[int, int] | None
) -> np.ndarray:
    """(gh * gw,) object index per patch (row-major), -1 for background; nearer objects win."""
    gh, gw = grid
    ys = (np.arange(gh) + 0.5) * image_size / gh
    xs = (np.arange(gw) + 0.5) * image_size / gw
    py, px = np.meshgrid(ys, xs, indexing="ij")
    labels = np.full((gh, gw), -1, dtype=np.int64)
    sw, sh = source_size or (image_size, image_size)
    placed = [(i, o) for i, o in enumerate(scene.objects) if o.pixel_coords is not None]
    for i, obj in sorted(placed, key=lambda t: -t[1].pixel_coords[2]):  # far to near
        u, v, depth = obj.pixel_coords
        u, v = u * image_size / sw, v * image_size / sh
        r = object_radius_px(obj.size, depth, image_size)
        inside = (px - u) ** 2 + (py - v) ** 2 <= r * r
        row, col = (
            int(np.clip(v * gh / image_size, 0, gh - 1)),
            int(np.clip(u * gw / image_size, 0, gw - 1)),
        )
        inside[row, col] = True
        labels[inside] = i
    return labels.reshape(-1)


#: The frame real CLEVR v1.0 computed `pixel_coords` in (its renderer's default 320x240),
#: whatever the size of the released PNGs.
CLEVR_FRAME = (320, 240)


def pixel_frame(root: Path, split: str, scene: Scene) -> tuple[int, int] | None:
    """(width, height) that the scene's `pixel_coords` refer to.

    Synthetic scenes files record `info.image_size` (coordinates in rendered pixels); real
    CLEVR's files do not, and use `CLEVR_FRAME`. Without a scenes file, the image's own size.
    """
    from PIL import Image

    for base in (root, root / "CLEVR_v1.0"):
        scenes_file = base / "scenes" / f"CLEVR_{split}_scenes.json"
        if scenes_file.is_file():
            size = _info_image_size(scenes_file)
            return (size, size) if size else CLEVR_FRAME
        path = base / "images" / split / scene.image_filename
        if path.is_file():
            with Image.open(path) as img:
                return img.size
    return None


@functools.lru_cache(maxsize=8)
def _info_image_size(scenes_file: Path) -> int | None:
    """`info.image_size` of a scenes file, read from its head (files can hold 70k scenes)."""
    with open(scenes_file, encoding="utf-8") as handle:
        head = handle.read(4096)
    match = re.search(r'"image_size"\s*:\s*(\d+)', head.split('"scenes"')[0])
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- agreement


def best_iou(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Max over tokens of IoU(region of token, mask)."""
    best = 0.0
    for token in np.unique(attribution[mask]):
        region = attribution == token
        best = max(best, float((region & mask).sum() / (region | mask).sum()))
    return best


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
        _agreement(e_single[:length].argmax(axis=0), codes, labels, scene, rng, acc)
    return e_single


def _agreement(
    attribution: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray,
    scene: Scene,
    rng: np.random.Generator,
    acc: Accumulator,
) -> None:
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
        acc.object_token_nmi.append(metrics.nmi(labels[on_object], attribution[on_object]))


# --------------------------------------------------------------------------- summary


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(acc: Accumulator, k: int, programs_codes: list[np.ndarray] | None) -> dict[str, Any]:
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
            "source": "programs.parquet" if programs_codes is not None else "analysed images",
            "purity_nmi": _mean(list(purity.values())),
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
) -> dict[str, Any]:
    """Analyse the first `n_images` of `split`; writes RUN/analysis/ and returns analysis.json's dict."""
    run = RunFolder(Path(run_dir))
    model, cfg, dev = load_run_model(run.path, checkpoint, device)
    root = dataset_path(run.path, cfg, data)
    mc = cfg.model
    grid = tuple(model.grid)
    loader = make_loader(root, split, mc.image_size, batch_size=min(16, n_images), limit=n_images)
    out_dir = run.path / "analysis"
    fig_dir = out_dir / "figures"
    rng = np.random.default_rng(seed)
    acc = Accumulator()
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, int]] = []
    mode = parse_length_mode(None, cfg.curriculum.length_mode)
    for batch in progress_batches(loader, f"analyze {run.name}", progress):
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
    programs = _programs_codes(run, mc.k)
    result = {
        "run": run.name,
        "split": split,
        "n_images": len(acc.lengths),
        "length_mode": str(mode),
        "grid": list(grid),
        "seed": seed,
        **summarise(acc, mc.k, programs),
    }
    write_json(out_dir / "analysis.json", result)
    _figures(fig_dir, panels, grid, result["contingency"], run, acc)
    return result


def _scene(raw: str | None) -> Scene | None:
    if not raw:
        return None
    return parse_scene(json.loads(raw), source="dataset scene")


def _programs_codes(run: RunFolder, k: int) -> list[np.ndarray] | None:
    if not run.programs_path.is_file():
        return None
    try:
        programs = run.read_programs()
    except RunFolderError:
        return None
    return programs.codes if programs.codebook_size in (None, k) else None


# --------------------------------------------------------------------------- figures


def _figures(
    fig_dir: Path, panels, grid, contingency: dict[str, Any], run: RunFolder, acc: Accumulator
) -> None:
    from strop.plots import plot_contingency, plot_erasure_panel, plot_length_vs_objects

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
