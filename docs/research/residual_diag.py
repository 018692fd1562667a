"""Issue 27's diagnostic of residual targets: per-patch cosine of the residual (field minus
the training set's mean teacher field) binned by the size of the teacher's deviation from the
mean, each bin's share of the squared deviation, and the field R^2, on the val images.

    .venv/bin/python docs/research/residual_diag.py DATA_DIR RUN [RUN ...]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from strop.data.datasets import build_dataset
from strop.model import Strop


def images(data: str, split: str, size: int) -> torch.Tensor:
    ds = build_dataset(data, split, size)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


@torch.no_grad()
def diagnose(data: str, run: str) -> dict:
    model, _ = Strop.from_run(run)
    size = model.cfg.image_size
    val = images(data, "val", size)
    feats = model.teacher_features(val)
    field = model.interpret(*model.encode(val))
    mean = model.field_mean
    if mean is None:  # a default run: the same mean, computed here
        mean = model.teacher_features(images(data, "train", size)).mean(dim=0)
    r_teacher, r_field = feats - mean, field - mean
    norm = r_teacher.norm(dim=-1)  # (B, P)
    cos = F.cosine_similarity(r_field, r_teacher, dim=-1)
    bins = torch.bucketize(
        norm, torch.quantile(norm.flatten(), torch.tensor([0.25, 0.5, 0.75, 0.9]))
    )
    energy = (norm**2).sum()
    return {
        "run": run,
        "bins": "<q25, q25-50, q50-75, q75-90, >q90 of the deviation's norm",
        "residual_cos": [round(float(cos[bins == b].mean()), 3) for b in range(5)],
        "share_of_squared_deviation": [
            round(float((norm[bins == b] ** 2).sum() / energy), 3) for b in range(5)
        ],
        "field_r2": round(float(1 - ((field - feats) ** 2).sum() / (r_teacher**2).sum()), 3),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    for run in sys.argv[2:]:
        print(diagnose(sys.argv[1], run))
