"""The trainer's data: datasets (images or cached features), batching, loaders, resume position.

Design decisions
- Each training item carries `bank_index`, its position in the training set: the key of the
  per-image length-target bank (`bank.TargetBank`).
- With `data.feature_cache`, items carry cached teacher features (`feats`); images are loaded
  beside them only when the pixel probe is trained (it needs them), so
  `train.pixel_decoder=false` gives the cache's full speed.
- Data order must survive a resume: it comes from `ResumableSampler` (seeded per epoch) plus
  the count of batches consumed in the epoch, `(epoch, batch_in_epoch)`, which is all the
  checkpoint stores. DataLoader worker seeds come from a dedicated generator, re-seeded per
  epoch, not the global one.
- A validation split that is asked for (`data.val_split` and `train.val_every` set) but
  cannot be loaded (missing, unreadable or empty) turns validation off loudly, never
  silently: `val_loader` returns the reason, which the trainer logs as a warning and writes
  to `metrics.jsonl` as a `{"event": "validation_off", "reason": ...}` row.
- Workers die with the trainer (`strop.data.workers.parent_watch`): a worker orphaned by a
  `kill -9` of the trainer used to live on.
- A dataset error inside a DataLoader worker (a corrupt image) reaches the caller as the
  worker's own one-line `DataError`, naming the file, not torch's wrapped traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from strop.data.workers import parent_watch
from strop.training import distributed as distr
from strop.training.config import ConfigError, RunConfig


class IndexedDataset(Dataset):
    """Adds `bank_index` (position in the training set) to each item: the target-bank key."""

    def __init__(self, base: Dataset, limit: int | None = None) -> None:
        self.base = base
        # torch's Dataset stub has no __len__; map-style datasets (all of ours) define it.
        n = len(base)  # type: ignore[arg-type]
        self.size = min(n, limit) if limit else n

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item["bank_index"] = i
        return item


def build_split(cfg: RunConfig, split: str) -> tuple[Dataset, bool]:
    """The dataset of `split` and whether its items carry cached teacher features (`feats`)."""
    from strop.data.datasets import build_dataset

    size = cfg.model.image_size
    if cfg.data.feature_cache:
        from strop.model.feature_cache import FeatureCacheDataset

        images = None
        if cfg.train.pixel_decoder and cfg.data.path:
            images = build_dataset(cfg.data.path, split, size)
        dataset = FeatureCacheDataset(cfg.data.feature_cache, split, images=images)
        dataset.check(cfg.model)
        return dataset, True
    return build_dataset(cfg.data.path, split, size), False


def training_set(cfg: RunConfig) -> tuple[IndexedDataset, bool]:
    """The (indexed, possibly capped) training set and whether it carries cached features."""
    dataset, cached = build_split(cfg, cfg.data.train_split)
    return IndexedDataset(dataset, cfg.data.max_train_images), cached


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The data area's `collate`, plus the keys it does not know (`bank_index`, `feats`)."""
    from strop.data.datasets import collate as collate_images

    batch = collate_images(items) if "image" in items[0] else {}
    for key, value in items[0].items():
        if key in batch:
            continue
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack([it[key] for it in items])
        elif isinstance(value, int):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
        else:
            batch[key] = [it[key] for it in items]
    return batch


class TrainData:
    """This process's share of the training set, as endless batches from a resumable position."""

    def __init__(
        self,
        dataset: IndexedDataset,
        cfg: RunConfig,
        rank: int,
        world_size: int,
        pin_memory: bool,
    ) -> None:
        t = cfg.train
        self.dataset, self.batch_size, self.seed = dataset, t.batch_size, t.seed
        n = len(dataset)
        self.sampler = distr.ResumableSampler(n, rank, world_size, seed=t.seed)
        self.batches_per_epoch = self.sampler.per_rank // t.batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"{cfg.data.path}: {self.sampler.per_rank} training images per process, "
                f"fewer than train.batch_size={t.batch_size}"
            )
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=t.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=t.num_workers,
            pin_memory=pin_memory,
            persistent_workers=t.num_workers > 0,
            collate_fn=collate,
            generator=self.generator,
            worker_init_fn=parent_watch() if t.num_workers > 0 else None,
        )
        self.epoch = 0
        self.batch_in_epoch = 0

    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless batches, continuing at (epoch, batch_in_epoch)."""
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch * self.batch_size)
            self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
            for batch in loader_batches(self.loader):
                self.batch_in_epoch += 1
                yield batch
                if self.batch_in_epoch >= self.batches_per_epoch:
                    break
            self.epoch += 1
            self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


def loader_batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Iterate `loader`; a `DataError` raised in a worker is re-raised with its own message."""
    from strop.data.datasets import DataError, worker_message

    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except DataError as exc:
            raise DataError(worker_message(exc)) from None
        yield batch


def val_loader(cfg: RunConfig) -> tuple[DataLoader | None, str | None]:
    """The validation loader, or None and why: the reason is None when validation is off by
    configuration, else one line naming the split and the error (module docstring)."""
    split = cfg.data.val_split
    if not split or not cfg.train.val_every:
        return None, None
    try:
        val_set, _ = build_split(cfg, split)
    except (FileNotFoundError, ValueError) as exc:
        return None, f"validation split {split!r} of {cfg.data.path} failed to load: {exc}"
    if len(val_set) == 0:  # type: ignore[arg-type]  # map-style; torch's stub lacks __len__
        return None, f"validation split {split!r} of {cfg.data.path} is empty"
    loader = DataLoader(val_set, batch_size=cfg.train.batch_size, shuffle=False, collate_fn=collate)
    return loader, None
