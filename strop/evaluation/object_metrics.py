"""Object-centric metrics of token attribution: FG-ARI and mBO, as slot methods report them.

The segmentation scored is the token attribution map `A(p) = argmax_j E_j(p)` (each patch
goes to its most influential token; `strop.evaluation.analyze`), brought to the mask's pixel
grid by nearest neighbour (a pixel takes its patch's token). It is compared with
ground-truth instance masks:

- FG-ARI: the adjusted Rand index (Hubert and Arabie 1985) between the true object labels
  and the token labels over the *foreground* pixels only, as in MONet, IODINE and Slot
  Attention (background pixels are left out, so one token covering the ground is not
  rewarded). Edge cases follow scikit-learn's `adjusted_rand_score`: identical trivial
  partitions (one cluster each, or all singletons) score 1.0.
- mBO: mean best overlap (Pont-Tuset et al.), for each true object the best IoU with any
  token's region (region over all pixels, background included), averaged over objects.

Masks, and how exact they are:
- synthetic data (`strop data clevr-synth`): the renderer's per-pixel instance masks
  (`masks/<split>/*.png`, 0 background, i = the i-th object): exact;
- real CLEVR v1.0 ships no masks: ellipses built from `pixel_coords`
  (`strop.evaluation.object_masks.object_label_image`) at the image's own frame. Those
  numbers are labelled approximate (`masks: "approximate ..."`, `approximate: true`)
  wherever they appear.

Design decisions
- FG-ARI is computed per image and averaged over images, mBO averaged over objects, as the
  object-centric literature reports them; seeded bootstrap CIs over images (FG-ARI) and
  objects (mBO).
- Labels here use -1 for background (the analysis convention); the PNG's 0 is mapped on read.
- A mask the scene names is used or refused, never replaced: missing, not a regular file,
  undecodable, not one channel, not the image's frame, or holding a label above the scene's
  object count is a `DataError` naming the file (`read_mask`). Falling back to ellipses
  would quietly turn an exact result into an approximate one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop import metrics
from strop.baselines import compare
from strop.data.renderer import MASKS_DIR
from strop.evaluation.object_masks import best_iou, object_label_image, pixel_frame
from strop.scenes import Scene

EXACT = "exact (renderer instance masks)"
APPROXIMATE = "approximate (ellipses from pixel_coords; real CLEVR ships no masks)"


def adjusted_rand_index(true: np.ndarray, pred: np.ndarray) -> float:
    """ARI of two labelings of the same items (scikit-learn's definition and edge cases)."""
    table, _, _ = metrics.contingency(np.ravel(true), np.ravel(pred))
    n = int(table.sum())
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    # sklearn: one cluster each, or every item its own cluster in both, is a perfect match
    if (len(rows) == len(cols) == 1) or (len(rows) == len(cols) == n):
        return 1.0

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    index, a, b = pairs(table), pairs(rows), pairs(cols)
    expected = a * b / (n * (n - 1) / 2)
    best = (a + b) / 2
    if best == expected:
        return 1.0
    return float((index - expected) / (best - expected))


def fg_ari(true: np.ndarray, pred: np.ndarray, background: int = -1) -> float | None:
    """ARI over the pixels whose true label is not `background`; None with under 2 of them."""
    fg = np.asarray(true) != background
    if fg.sum() < 2:
        return None
    return adjusted_rand_index(np.asarray(true)[fg], np.asarray(pred)[fg])


def best_overlaps(true: np.ndarray, pred: np.ndarray, background: int = -1) -> list[float]:
    """For each true object, the best IoU with any predicted segment (mBO's terms)."""
    true, pred = np.asarray(true), np.asarray(pred)
    return [best_iou(pred, true == i) for i in np.unique(true[true != background])]


def mbo(true: np.ndarray, pred: np.ndarray, background: int = -1) -> float | None:
    """Mean best overlap over the true objects; None for an image without objects."""
    overlaps = best_overlaps(true, pred, background)
    return float(np.mean(overlaps)) if overlaps else None


def upsample_attribution(attribution: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]):
    """A (gh * gw,) patch map as an (H, W) pixel map: each pixel takes its patch's label.

    The model sees the whole image resized to a square, so pixel (y, x) of an H x W frame lies
    in patch (y * gh // H, x * gw // W) whatever the aspect ratio."""
    gh, gw = grid
    h, w = shape
    rows = np.arange(h) * gh // h
    cols = np.arange(w) * gw // w
    return np.asarray(attribution).reshape(gh, gw)[rows[:, None], cols[None, :]]


def mask_path(root: Path, split: str, scene: Scene) -> Path | None:
    """The scene's instance-mask PNG, when the scenes file names one and it exists."""
    if not scene.mask_filename:
        return None
    for base in (root, root / "CLEVR_v1.0"):
        path = base / MASKS_DIR / split / scene.mask_filename
        if path.exists() or path.is_symlink():
            return path
    return None


def read_mask(root: Path, split: str, scene: Scene) -> np.ndarray:
    """The (H, W) object labels (-1 background) of the mask the scene names, checked against
    the scene: a bare file name, present, a regular file, a one-channel PNG, of the image's
    own frame, with no label above the scene's object count. A mask failing any of these is
    a `DataError` naming the file; falling back to ellipses (or scoring a mask of another
    size or scene) would change FG-ARI/mBO without a word."""
    from PIL import Image, UnidentifiedImageError

    from strop.data.datasets import DataError, open_regular

    name = str(scene.mask_filename)
    where = f"{root}: {split} scene {scene.image_index} ({scene.image_filename})"
    if Path(name).name != name or name in (".", ".."):
        raise DataError(f"{where} field mask_filename: not a bare file name ({name!r})")
    path = mask_path(root, split, scene)
    if path is None:
        expected = root / MASKS_DIR / split / name
        raise DataError(f"{where} field mask_filename: {expected} not found")
    try:
        with open_regular(path, str(path), "mask") as handle, Image.open(handle) as img:
            mode, size = img.mode, img.size
            labels = np.asarray(img, dtype=np.int64) if mode in LABEL_MODES else None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        if isinstance(exc, DataError):
            raise
        why = "not an image file" if isinstance(exc, UnidentifiedImageError) else exc
        raise DataError(f"{path} field mask: cannot decode the mask ({why})") from None
    if labels is None:
        raise DataError(
            f"{path} field mask: expected a one-channel label image (0 background, i = the "
            f"i-th object), got mode {mode}"
        )
    frame = pixel_frame(root, split, scene)
    if size != tuple(frame):
        raise DataError(
            f"{path} field mask: {size[0]}x{size[1]} pixels, but the scene's image frame is "
            f"{frame[0]}x{frame[1]}"
        )
    top = int(labels.max(initial=0))
    if top > len(scene.objects) or int(labels.min(initial=0)) < 0:
        raise DataError(
            f"{path} field mask: label {top} but the scene has {len(scene.objects)} objects"
        )
    return labels - 1


#: PIL modes of a one-channel label image (8-bit, palette, 16- and 32-bit integer).
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def ground_truth(root: Path, split: str, scene: Scene) -> tuple[np.ndarray | None, str]:
    """(H, W) object labels (-1 background) and how exact they are (`EXACT` / `APPROXIMATE`)."""
    if scene.mask_filename:
        return read_mask(root, split, scene), EXACT
    if not any(o.pixel_coords for o in scene.objects):
        return None, APPROXIMATE
    frame = pixel_frame(root, split, scene)
    return object_label_image(scene, frame, frame), APPROXIMATE


def fixed_grid(shape: tuple[int, int], blocks: int) -> np.ndarray:
    """An (H, W) segmentation into `blocks` x `blocks` equal rectangles (the `fixed_grid_2x2`
    and `fixed_grid_4x4` baselines): what a map that ignores the image scores."""
    return upsample_attribution(np.arange(blocks * blocks), (blocks, blocks), shape)


#: The fixed segmentations every attribution map is set beside (name: blocks per side).
FIXED_GRIDS = {"fixed_grid_2x2": 2, "fixed_grid_4x4": 4}


@dataclass
class ImageScore:
    """One analysed image: its attribution map, its mask, and the scores of each segmentation
    of it (`"map"`: the attribution; a fixed grid's name) as (FG-ARI, best overlaps)."""

    attribution: np.ndarray
    grid: tuple[int, int]
    truth: np.ndarray
    scores: dict[str, tuple[float | None, list[float]]]


def score(truth: np.ndarray, pred: np.ndarray) -> tuple[float | None, list[float]]:
    """(FG-ARI, per-object best overlaps) of one segmentation against one mask."""
    return fg_ari(truth, pred), best_overlaps(truth, pred)


@dataclass
class ObjectMetrics:
    """Per-image FG-ARI and per-object best overlaps, gathered over the analysed images, with
    the same scores of the baselines (fixed grids; the maps paired with another image's mask).

    Masks that cannot score are counted and named in `warnings`, never folded in silently:
    a mask with no foreground pixel (FG-ARI and mBO undefined: the image is left out and its
    masks do not label the result), and a mask with fewer segments than the scene has objects
    (objects merged under one label, or hidden): with one true segment, FG-ARI is 0 for any
    map that splits it, whatever the map's quality."""

    seed: int = 0
    images: list[ImageScore] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    empty_masks: int = 0
    fewer_segments: int = 0
    single_segment: int = 0

    @property
    def fg_ari(self) -> list[float]:
        return [s for s in (im.scores["map"][0] for im in self.images) if s is not None]

    @property
    def overlaps(self) -> list[float]:
        return [o for im in self.images for o in im.scores["map"][1]]

    def add(
        self,
        attribution: np.ndarray,
        grid: tuple[int, int],
        truth: np.ndarray,
        source: str,
        n_objects: int | None = None,
    ) -> None:
        """Score one image's map; `n_objects`: how many objects its scene lists (None: unknown)."""
        truth = np.asarray(truth)
        segments = len(np.unique(truth[truth >= 0]))
        if segments == 0:
            self.empty_masks += 1
            return
        if n_objects is not None and segments < n_objects:
            self.fewer_segments += 1
            self.single_segment += segments == 1
        pred = upsample_attribution(attribution, grid, truth.shape)
        scores = {"map": score(truth, pred)}
        for name, blocks in FIXED_GRIDS.items():
            scores[name] = score(truth, fixed_grid(truth.shape, blocks))
        self.images.append(ImageScore(np.asarray(attribution), grid, truth, scores))
        self.sources.add(source)

    def baselines(self) -> dict[str, dict[str, Any]]:
        """`{metric: {baseline: record}}` for FG-ARI (over images) and mBO (over the objects of
        the resampled images), paired: each image scores the map and every baseline."""
        images = [im for im in self.images if im.scores["map"][0] is not None]
        n = len(images)
        shuffled = [
            score(im.truth, upsample_attribution(other.attribution, other.grid, im.truth.shape))
            for im, other in zip(images, images[1:] + images[:1], strict=True)
        ]
        per_image = {"map": [im.scores["map"] for im in images], "shuffled_maps": shuffled}
        for name in FIXED_GRIDS:
            per_image[name] = [im.scores[name] for im in images]

        def ari(name: str):
            values = np.array([s[0] for s in per_image[name]], dtype=np.float64)
            return lambda idx: values[idx].mean()

        def mean_overlap(name: str):
            lists = [s[1] for s in per_image[name]]
            return lambda idx: np.mean([o for i in idx for o in lists[i]])

        out: dict[str, dict[str, Any]] = {"fg_ari": {}, "mbo": {}}
        for name in (*FIXED_GRIDS, "shuffled_maps"):
            if name == "shuffled_maps" and n < 2:
                continue  # one image has no other image's mask to pair with
            for metric, stat in (("fg_ari", ari), ("mbo", mean_overlap)):
                out[metric][name] = compare(
                    n, stat("map"), stat(name), name=name, metric=metric, seed=self.seed
                )
        return out

    def warnings(self) -> list[str]:
        notes = []
        if self.empty_masks:
            notes.append(
                f"{self.empty_masks} mask(s) hold no object pixel: FG-ARI and mBO are undefined "
                "there, those images are left out"
            )
        if self.fewer_segments:
            notes.append(
                f"{self.fewer_segments} mask(s) hold fewer segments than their scene has objects "
                f"(merged or hidden), {self.single_segment} of them one segment: FG-ARI of one "
                "true segment is 0 for any map that splits it"
            )
        return notes

    def summary(self) -> dict[str, Any]:
        ari, ari_ci = metrics.mean_ci(self.fg_ari, seed=self.seed)
        mbo_mean, mbo_ci = metrics.mean_ci(self.overlaps, seed=self.seed)
        approximate = APPROXIMATE in self.sources
        return {
            "fg_ari": ari,
            "fg_ari_ci": ari_ci,
            "mbo": mbo_mean,
            "mbo_ci": mbo_ci,
            "n_images": len(self.fg_ari),
            "n_objects": len(self.overlaps),
            "masks": APPROXIMATE if approximate else (EXACT if self.sources else None),
            "approximate": approximate,
            "baselines": self.baselines(),
            "skipped": {"empty_masks": self.empty_masks},
            "fewer_segments_than_objects": self.fewer_segments,
            "warnings": self.warnings(),
            "definitions": "FG-ARI: adjusted Rand index over foreground pixels; mBO: mean over "
            "objects of the best IoU with any token's attributed region; CIs: bootstrap over "
            "images / objects; baselines: fixed_grid_BxB = the frame cut into B x B equal "
            "blocks, shuffled_maps = each image's mask scored against the next analysed "
            "image's map",
        }
