"""Image datasets for training and export: CLEVR folders, image folders, `datasets` copies.

Every dataset yields the same item (docs/INTERFACES.md): `image` float32 (3, S, S) in [0, 1],
`index` int, `image_id` str, `n_objects` int (-1 unknown), `scene` JSON string ("" unknown).

Design decisions
- One code path for real CLEVR v1.0 and our synthetic scenes: both are `images/<split>/` plus
  `scenes/CLEVR_<split>_scenes.json`. Real CLEVR's test split has no scenes file; then the
  items are the sorted images with `n_objects = -1`.
- Any PIL mode with a known range becomes 8-bit RGB correctly (`to_rgb`: 16-bit images
  scaled, not clipped); modes with an unknown range (float) are refused naming file and mode.
- Images are resized to S x S with PIL's bicubic filter, which widens its support when it
  shrinks (antialiasing), so a real 480 x 320 CLEVR image becomes S x S without aliasing. The
  aspect ratio is not kept: cropping would cut off objects near the sides, and the synthetic
  renderer draws CLEVR's 3:2 frustum onto a square for the same result (`strop.data.camera`).
  An image with a side under `MIN_SIDE` pixels is refused, not stretched.
- Construction checks what is cheap to check (the folder exists, is not empty, every image a
  scenes file names is present) and names the first problem and a count. Decoding errors
  (a truncated PNG) surface when that item is loaded, naming the file and index.
- A path is a path: `build_dataset` treats a value as a hub dataset id only when the user
  says so (`hf://owner/name`), so a mistyped relative folder fails at once naming it, instead
  of after half a minute of hub requests.
- `datasets` copies are read with the image column cast to `Image(decode=False)` and decoded
  here, so resizing and decode errors are the same as for folders.
- Torch is imported here (items are tensors); `strop.scenes` stays torch-free.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from strop.errors import one_line
from strop.scenes import Scene, SceneFileError, load_scenes, parse_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Smallest side an image may have: a 1x1 or 64x1 image stretched to S x S is not a picture
#: of anything, so it is refused (naming the file) rather than encoded without a word.
MIN_SIDE = 8
#: A `--data` value naming a Hugging Face hub dataset; anything else is a local path.
HUB_PREFIX = "hf://"
Item = dict[str, Any]


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line naming file, index and field."""


def worker_message(exc: BaseException) -> str:
    """The one-line message of an error raised inside a DataLoader worker.

    torch re-raises a worker's exception in the main process as the same type, with the
    message "Caught X in DataLoader worker process N." plus the worker's whole traceback; its
    last line holds the original message, which names the file.
    """
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name, sep, message = last.partition(": ")
    return message if sep and "Error" in name else last


def load_image(source: str | os.PathLike[str] | bytes, size: int, *, where: str) -> torch.Tensor:
    """Decode an image file (or its bytes) to float32 (3, size, size) in [0, 1].

    `where` names the item in errors, e.g. "data/x.png: index 3".
    """
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source, where)
        with handle, Image.open(handle) as opened:
            if min(opened.size) < MIN_SIDE:
                raise DataError(
                    f"{where} field image: {opened.size[0]}x{opened.size[1]} pixels; an image "
                    f"needs at least {MIN_SIDE} pixels a side (it would be stretched to "
                    f"{size}x{size})"
                )
            rgb = to_rgb(opened, where)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
            arr = np.asarray(rgb, dtype=np.float32)
    except UnidentifiedImageError:
        # PIL's own message names the opened handle (`<_io.BufferedReader name=3>`), not the file
        raise DataError(f"{where} field image: not an image file (no format PIL reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where} field image: cannot decode image ({exc})") from None
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1).contiguous()


def open_regular(
    path: str | os.PathLike[str], where: str, field: str = "image"
) -> io.BufferedReader:
    """Open `path` for reading only if it is a regular file: opening a named pipe blocks
    until a writer comes (forever, in `inspect --check-all` or a training loader), and a
    device never ends. The open itself does not block (`O_NONBLOCK`); the check is on the
    opened file, so nothing can be swapped in between."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{where} field {field}: not a regular file ({file_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its `st_mode`."""
    kinds = (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


#: PIL modes whose pixels are 16-bit integers (PNG, TIFF), scaled to 8 bits by 257.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(im: Image.Image, where: str) -> Image.Image:
    """8-bit RGB from any PIL mode whose range is known; a `DataError` for the others.

    `Image.convert("RGB")` clips 16-bit and 32-bit integer pixels at 255 (a 16-bit PNG comes
    out almost white) and is undefined for float images, so those modes are scaled here:
    16-bit modes (and mode "I" from a PNG, whose depth is at most 16 bits) by 1/257. Palette,
    grey+alpha and RGBA images drop their alpha, as real CLEVR's opaque RGBA frames need; a
    fully transparent image (alpha 0 everywhere) is refused: dropping its alpha would show
    colours no viewer shows.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and im.format == "PNG"):
        wide = np.asarray(im, dtype=np.float64)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr"):
        if mode in ("P", "PA") and "transparency" in im.info:
            im = im.convert("RGBA")
        alpha = next((band for band in ("A", "a") if band in im.getbands()), None)
        if alpha is not None and im.getchannel(alpha).getextrema()[1] == 0:
            raise DataError(
                f"{where} field image: fully transparent (alpha 0 everywhere), so its colours "
                "are undefined; flatten it onto a background first"
            )
        return im.convert("RGB")
    raise DataError(
        f"{where} field image: unsupported pixel mode {mode!r} (its value range is unknown); "
        "convert the file to 8- or 16-bit RGB or greyscale"
    )


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    """Image files under `folder`, sorted; an image name that is not a regular file (a named
    pipe, a device) is an error naming it, not an image to skip or to block on."""
    try:
        pattern = folder.rglob("*") if recursive else folder.iterdir()
        named = [
            p for p in pattern if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ]
        odd = [p for p in named if not p.is_file() and not p.is_dir()]
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    if odd:
        raise DataError(f"{odd[0]}: field image: not a regular file ({_kind_of(odd[0])})")
    return sorted(p for p in named if p.is_file())


def _kind_of(path: Path) -> str:
    try:
        return file_kind(path.stat().st_mode)
    except OSError as exc:
        return exc.strerror or "unreadable"


# --------------------------------------------------------------------------- CLEVR folders


def find_clevr_root(root: str | os.PathLike[str]) -> Path | None:
    """The folder holding `images/` (root itself or root/CLEVR_v1.0), or None."""
    root = Path(root)
    for candidate in (root, root / "CLEVR_v1.0"):
        if (candidate / "images").is_dir():
            return candidate
    return None


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


class ClevrDataset(Dataset):
    """An extracted `CLEVR_v1.0/` folder or a `strop data clevr-synth` folder, one split."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train", image_size: int = 128):
        base = find_clevr_root(root)
        if base is None:
            raise DataError(f"{root}: not a CLEVR folder (no images/ or CLEVR_v1.0/images/ inside)")
        self.root = base
        self.split = split
        self.image_size = int(image_size)
        self.image_dir = base / "images" / split
        if not self.image_dir.is_dir():
            found = sorted(p.name for p in _subfolders(base / "images"))
            raise DataError(
                f"{self.image_dir}: no such split folder; splits found: {found or 'none'}"
            )
        self.scenes_path = base / "scenes" / f"CLEVR_{split}_scenes.json"
        self.scenes: list[Scene] = []
        if self.scenes_path.is_file():
            try:
                _, self.scenes = load_scenes(self.scenes_path)
            except SceneFileError as exc:
                raise DataError(str(exc)) from None
            if not self.scenes:
                raise DataError(f"{self.scenes_path}: the 'scenes' list is empty")
            self.files = [self.image_dir / s.image_filename for s in self.scenes]
            self._check_present()
        else:
            self.files = _list_images(self.image_dir, recursive=False)
        if not self.files:
            raise DataError(f"{self.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        self.n_objects_list = [s.n_objects for s in self.scenes] or [-1] * len(self.files)

    def _check_present(self) -> None:
        """Every image a scene names is in the folder and is a regular file. `scandir` knows
        each entry's type from the listing itself, so this costs no stat per image."""
        try:
            with os.scandir(self.image_dir) as entries:
                kinds = {e.name: e.is_file() for e in entries}
        except OSError as exc:
            raise DataError(
                f"{self.image_dir}: cannot list the split folder ({exc.strerror or exc})"
            ) from None
        odd = [i for i, f in enumerate(self.files) if kinds.get(f.name) is False]
        if odd:
            path = self.files[odd[0]]
            kind = _kind_of(path)
            raise DataError(
                f"{path}: index {odd[0]} field image: not a regular file ({kind}); "
                f"{len(odd)} of {len(self.files)} images are not"
            )
        present = set(kinds)
        missing = [i for i, f in enumerate(self.files) if f.name not in present]
        if missing:
            first = missing[0]
            raise DataError(
                f"{self.scenes_path}: scene {first} field image_filename: "
                f"{self.files[first].name} not found in {self.image_dir} "
                f"({len(missing)} of {len(self.files)} images missing)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def image_id(self, index: int) -> str:
        return self.files[index].stem

    def __getitem__(self, index: int) -> Item:
        path = self.files[index]
        scene = self.scenes[index].to_json() if self.scenes else ""
        return {
            "image": load_image(path, self.image_size, where=f"{path}: index {index}"),
            "index": int(index),
            "image_id": self.image_id(index),
            "n_objects": int(self.n_objects_list[index]),
            "scene": scene,
        }


# --------------------------------------------------------------------------- image folders


class ImageFolderDataset(Dataset):
    """Every image under `root` (recursive, sorted), e.g. COCO or ImageNet; no scenes."""

    def __init__(self, root: str | os.PathLike[str], image_size: int = 128):
        self.root = Path(root)
        self.image_size = int(image_size)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder")
        self.files = _list_images(self.root, recursive=True)
        if not self.files:
            raise DataError(
                f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) found, recursively"
            )
        self.n_objects_list = [-1] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def image_id(self, index: int) -> str:
        return self.files[index].relative_to(self.root).with_suffix("").as_posix()

    def __getitem__(self, index: int) -> Item:
        path = self.files[index]
        return {
            "image": load_image(path, self.image_size, where=f"{path}: index {index}"),
            "index": int(index),
            "image_id": self.image_id(index),
            "n_objects": -1,
            "scene": "",
        }


# --------------------------------------------------------------------------- datasets copies


class HFImageDataset(Dataset):
    """A Hugging Face `datasets.Dataset` with an image column, read as our items.

    Optional columns, first match wins: scenes from `scene` (JSON string or dict), object
    counts from `scene`, `objects` (a list), `n_objects` or `num_objects`; ids from
    `image_id`, `image_filename` or `file_name`.
    """

    def __init__(self, dataset: Any, image_size: int = 128, source: str = "<datasets>"):
        import datasets as hfd

        self.source = source
        self.image_size = int(image_size)
        features = dataset.features
        image_cols = [k for k, v in features.items() if isinstance(v, hfd.Image)]
        image_cols += [k for k in ("image", "img") if k in features and k not in image_cols]
        if not image_cols:
            raise DataError(f"{source}: no image column; columns are {sorted(features)}")
        self.image_column = image_cols[0]
        if isinstance(features[self.image_column], hfd.Image):
            dataset = dataset.cast_column(self.image_column, hfd.Image(decode=False))
        self.dataset = dataset
        if len(dataset) == 0:
            raise DataError(f"{source}: the dataset has no rows")
        self.columns = set(features)
        self.n_objects_list = [self._n_objects(i, row) for i, row in enumerate(self._meta_rows())]

    def _meta_rows(self) -> list[dict[str, Any]]:
        wanted = [c for c in ("scene", "objects", "n_objects", "num_objects") if c in self.columns]
        if not wanted:
            return [{} for _ in range(len(self.dataset))]
        table = self.dataset.select_columns(wanted).to_dict()
        return [{c: table[c][i] for c in wanted} for i in range(len(self.dataset))]

    def _scene(self, index: int, row: dict[str, Any]) -> Scene | None:
        raw = row.get("scene")
        if raw in (None, ""):
            return None
        try:
            data = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{self.source}: index {index} field scene: not valid JSON ({exc.msg})"
            ) from None
        try:
            return parse_scene(data, source=self.source, index=index)
        except SceneFileError as exc:
            raise DataError(str(exc)) from None

    def _n_objects(self, index: int, row: dict[str, Any]) -> int:
        scene = self._scene(index, row)
        if scene is not None:
            return scene.n_objects
        if isinstance(row.get("objects"), list):
            return len(row["objects"])
        for key in ("n_objects", "num_objects"):
            value = row.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise DataError(
                    f"{self.source}: index {index} field {key}: expected a non-negative "
                    f"integer, got {value!r}"[:200]
                )
            return int(value)
        return -1

    def __len__(self) -> int:
        return len(self.dataset)

    def image_id(self, index: int, row: dict[str, Any] | None = None) -> str:
        row = self.dataset[int(index)] if row is None else row
        return next(
            (
                Path(str(row[k])).stem
                for k in ("image_id", "image_filename", "file_name")
                if row.get(k)
            ),
            f"{index:06d}",
        )

    def __getitem__(self, index: int) -> Item:
        row = self.dataset[int(index)]
        where = f"{self.source}: index {index}"
        value = row[self.image_column]
        if isinstance(value, dict):
            source = value.get("bytes") or value.get("path")
        else:  # a plain column of bytes or paths
            source = value
        if not source:
            raise DataError(f"{where} field {self.image_column}: empty image")
        scene = self._scene(index, row)
        return {
            "image": load_image(source, self.image_size, where=where),
            "index": int(index),
            "image_id": self.image_id(index, row),
            "n_objects": int(self.n_objects_list[index]),
            "scene": scene.to_json() if scene is not None else "",
        }


#: What `datasets.load_dataset` raises for a source it cannot read (OSError: missing files,
#: network).
DATASETS_ERRORS = (ValueError, OSError, ConnectionError)


def datasets_error(source: str, doing: str, exc: BaseException) -> DataError:
    """The one-line DataError for `exc` (one of DATASETS_ERRORS) raised while `doing` `source`."""
    return DataError(f"{source}: cannot {doing} with datasets ({one_line(exc)})")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def hf_clevr_dataset(
    name_or_path: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 128,
    cache_dir: str | None = None,
) -> HFImageDataset:
    """A `datasets` copy of CLEVR (or any image dataset): `save_to_disk` folder, Parquet
    file(s), an imagefolder, or a hub id (read from the local cache unless the user lets
    `datasets` download)."""
    import datasets as hfd

    path = Path(name_or_path)
    source = str(name_or_path)
    try:
        if path.is_dir() and _is_saved_dataset(path):
            loaded = hfd.load_from_disk(str(path))
        elif path.is_file() and path.suffix == ".parquet":
            loaded = hfd.load_dataset(
                "parquet", data_files={split: str(path)}, split=split, cache_dir=cache_dir
            )
        elif path.is_dir():
            # A local folder: `datasets` infers the builder (parquet, imagefolder, ...) and the
            # splits from the file names (train-*.parquet, train/..., ...).
            loaded = hfd.load_dataset(str(path), split=split, cache_dir=cache_dir)
        else:
            loaded = hfd.load_dataset(source, split=split, cache_dir=cache_dir)
    except DATASETS_ERRORS as exc:
        raise datasets_error(source, f"load split {split!r}", exc) from None
    if isinstance(loaded, hfd.DatasetDict):
        if split not in loaded:
            raise DataError(f"{source}: no split {split!r}; splits found: {sorted(loaded)}")
        loaded = loaded[split]
    return HFImageDataset(loaded, image_size=image_size, source=f"{source} [{split}]")


# --------------------------------------------------------------------------- dispatch


def build_dataset(
    path: str | os.PathLike[str], split: str = "train", image_size: int = 128
) -> ClevrDataset | ImageFolderDataset | HFImageDataset:
    """Pick the loader from the layout: CLEVR folder, `datasets` copy, or image folder."""
    p = Path(path)
    if p.is_dir():
        if find_clevr_root(p) is not None:
            return ClevrDataset(p, split, image_size)
        if _is_saved_dataset(p) or any(p.glob("**/*.parquet")):
            return hf_clevr_dataset(p, split, image_size)
        return ImageFolderDataset(p / split if (p / split).is_dir() else p, image_size)
    if p.is_file() and p.suffix == ".parquet":
        return hf_clevr_dataset(p, split, image_size)
    if str(path).startswith(HUB_PREFIX):
        return hf_clevr_dataset(str(path)[len(HUB_PREFIX) :], split, image_size)
    if p.exists():
        raise DataError(f"{path}: not a dataset folder or .parquet file")
    raise DataError(
        f"{path}: no such dataset folder or file (for a Hugging Face hub dataset, write "
        f"{HUB_PREFIX}owner/name)"
    )


def collate(items: Sequence[Item]) -> dict[str, Any]:
    """Stack images, make int tensors of `index` and `n_objects`, keep strings as lists."""
    if not items:
        raise DataError("collate: empty batch")
    return {
        "image": torch.stack([it["image"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "n_objects": torch.tensor([it["n_objects"] for it in items], dtype=torch.long),
        "image_id": [it["image_id"] for it in items],
        "scene": [it["scene"] for it in items],
    }
