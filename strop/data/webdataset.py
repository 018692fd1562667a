"""WebDataset tar shards as an image input, read member by member, never unpacked to disk.

A WebDataset is a list of tar files (`data/shard-{000000..000009}.tar`); inside a tar the
members that share a key form one sample: `n01440764_10026.jpg` + `n01440764_10026.cls`.
The convention followed here was checked on webdataset's own `tariterators.py`
(`base_plus_ext`, `group_by_keys`): the key is the member path up to the first dot of its
file name (`a/b.c.jpg` -> key `a/b`, extension `c.jpg`), extensions are compared in lower
case, *consecutive* members with one key are one sample, and members without an extension
are not part of any sample. torchdata's `WebDataset` pipe and NVIDIA DALI's
`readers.webdataset` documentation state the same grouping.

Design decisions
- The image of a sample is its first member with extension jpg, jpeg, png or webp (in that
  order of preference); `json` (a scene, or `n_objects`/`num_objects`/`objects`) is read
  when present; `cls` and anything else is skipped: a programs row has no label column.
- The sample key is the row's `image_id`, so a row points back into the tar shards.
- Brace patterns are expanded here (`{000..009}` ranges keep the zero padding, `{a,b}`
  lists, nested), so no `braceexpand` dependency. `{split}` in a pattern is replaced by the
  split's name first, so `--split train,val` can read `data/{split}-{0000..0099}.tar`.
- Reading is `tarfile` in streaming mode (`r|*`, gzip/bz2/xz tars too). Counting the
  samples, which the export's shard plan needs before any image is decoded, reads only the
  headers (`r:*`, which seeks over member data in an uncompressed tar).
- Rows [start, stop) of the concatenated tars are read by opening the tar that holds row
  `start` and streaming from its beginning (the skipped members are read, not decoded): a
  plan shard costs at most one tar's worth of extra reading.
- An image that does not decode, or a sample with no image member, is an item with an
  `error` (key + reason) instead of an image: the export counts and lists it in the
  manifest and goes on. A path that is not a tar, a pattern that matches nothing, a tar with
  no image in it and a malformed brace are one-line `DataError`s before any work.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from strop.data.datasets import DataError, Item, load_image
from strop.scenes import SceneFileError, parse_scene

#: extensions of a sample's image member, in order of preference (webdataset's image names)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class BraceError(DataError):
    """A brace pattern that does not parse (unbalanced, or an empty or reversed range)."""


def expand_braces(pattern: str) -> list[str]:
    """Every string `pattern` names: `{a,b}` alternatives and `{000..012}` ranges (padded to
    the width of the first bound when it has a leading zero), nested, left to right."""
    depth, open_at = 0, -1
    for i, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                open_at = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise BraceError(f"{pattern}: '}}' at character {i + 1} closes no '{{'")
            if depth == 0:
                head, body, tail = pattern[:open_at], pattern[open_at + 1 : i], pattern[i + 1 :]
                return [
                    head + a + t for a in _alternatives(pattern, body) for t in expand_braces(tail)
                ]
    if depth:
        raise BraceError(f"{pattern}: '{{' at character {open_at + 1} is never closed")
    return [pattern]


def _alternatives(pattern: str, body: str) -> list[str]:
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        lo, hi = int(first), int(last)
        if hi < lo:
            raise BraceError(f"{pattern}: range {{{body}}} runs backwards")
        width = len(first) if first.lstrip("-").startswith("0") and len(first) > 1 else 0
        return [str(n).zfill(width) for n in range(lo, hi + 1)]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    if len(parts) == 1:
        raise BraceError(
            f"{pattern}: {{{body}}} is neither a list {{a,b}} nor a range {{000..009}}"
        )
    return [s for part in parts for s in expand_braces(part)]


def is_tar_spec(spec: str) -> bool:
    """Whether a `--data` value names tar shards (a `.tar` path or a pattern of them)."""
    return str(spec).lower().endswith(TAR_SUFFIXES)


def tar_paths(spec: str, split: str) -> list[Path]:
    """The tar files `spec` names for `split`, in pattern order; every one must exist."""
    names = expand_braces(str(spec).replace("{split}", split))
    missing = [n for n in names if not Path(n).is_file()]
    if len(missing) == len(names):
        raise DataError(
            f"{spec}: matches no file ({len(names)} name{'s' * (len(names) != 1)}, "
            f"first {names[0]})"
        )
    if missing:
        raise DataError(
            f"{spec}: {len(missing)} of {len(names)} tar files not found (first {missing[0]})"
        )
    return [Path(n) for n in names]


def split_member(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member path, or None when it has no extension."""
    match = _KEY.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def _named_files(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """(member, key, lower-case extension) of each file member whose name has an extension, in
    tar order; reading errors reach the caller, which names the file."""
    for member in tar:
        parts = split_member(member.name) if member.isfile() else None
        if parts is not None:
            yield member, *parts


def _open_tar(path: Path, mode: Literal["r:*", "r|*"]) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode)
    except (tarfile.ReadError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable tar file ({reason})") from None


def count_samples(path: Path) -> int:
    """Samples in one tar, from its headers alone; a tar with no image member is refused."""
    samples, images, last = 0, 0, None
    with _open_tar(path, "r:*") as tar:
        try:
            for _, name, extension in _named_files(tar):
                if name != last:
                    samples, last = samples + 1, name
                images += extension in IMAGE_EXTENSIONS
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path}: not a readable tar file ({exc})") from None
    if not images:
        raise DataError(
            f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) among its {samples} samples; "
            "a WebDataset sample is KEY.jpg (or .png, ...) beside KEY.json, KEY.cls"
        )
    return samples


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of one tar, streamed member by member."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    with _open_tar(path, "r|*") as tar:
        try:
            for member, name, extension in _named_files(tar):
                if name != key:
                    if key is not None:
                        yield key, sample
                    key, sample = name, {}
                handle = tar.extractfile(member)
                sample[extension] = handle.read() if handle is not None else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path}: tar ends or breaks inside member {key!r} ({exc})") from None
    if key is not None:
        yield key, sample


class WebDatasetImages:
    """The samples of a split's tar shards as rows 0..N-1 (tars in pattern order).

    Not a torch map-style dataset (no random access in a stream): `iter_rows(start, stop)`
    yields dataset items (docs/INTERFACES.md), or `{"image_id", "index", "error"}` for a sample
    whose image cannot be decoded.
    """

    def __init__(
        self, spec: str, split: str = "train", image_size: int = 128, limit: int | None = None
    ):
        self.source = str(spec)
        self.split = split
        self.image_size = int(image_size)
        self.tars = tar_paths(self.source, split)
        self.counts = [count_samples(p) for p in self.tars]
        total = sum(self.counts)
        self.n_rows = total if limit is None else min(total, limit)

    def __len__(self) -> int:
        return self.n_rows

    def iter_rows(self, start: int = 0, stop: int | None = None) -> Iterator[Item]:
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        first = 0  # row index of the current tar's first sample
        for path, count in zip(self.tars, self.counts, strict=True):
            if first + count <= start:
                first += count
                continue
            if first >= stop:
                return
            for offset, (key, sample) in enumerate(iter_samples(path)):
                index = first + offset
                if index >= stop:
                    return
                if index >= start:
                    yield self._item(index, key, sample, path)
            first += count

    def _item(self, index: int, key: str, sample: dict[str, bytes], path: Path) -> Item:
        where = f"{path}: sample {key}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            reason = f"no image member ({', '.join(IMAGE_EXTENSIONS)}; has {', '.join(sample)})"
            return {"index": index, "image_id": key, "error": reason}
        try:
            image = load_image(sample[ext], self.image_size, where=where)
            n_objects, scene = self._meta(sample.get("json"), where)
        except DataError as exc:
            reason = str(exc).removeprefix(where).lstrip(": ")
            return {"index": index, "image_id": key, "error": reason}
        return {
            "image": image,
            "index": index,
            "image_id": key,
            "n_objects": n_objects,
            "scene": scene,
        }

    @staticmethod
    def _meta(raw: bytes | None, where: str) -> tuple[int, str]:
        """(n_objects, scene JSON) from a sample's json member: a scene (has `objects`), or
        `n_objects`/`num_objects`; (-1, "") without one."""
        if raw is None:
            return -1, ""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{where} field json: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("objects"), list):
            try:
                scene = parse_scene(data, source=where)
            except SceneFileError as exc:
                raise DataError(str(exc)) from None
            return scene.n_objects, scene.to_json()
        for name in ("n_objects", "num_objects"):
            value = data.get(name) if isinstance(data, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value, ""
        return -1, ""
