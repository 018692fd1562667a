"""Regression: a short training must leave programs that differ between images.

The failure this guards against is silent: with too strong a commitment pull every image's
program collapses to one code per position, the interpreter learns the mean field, losses
look stable, and only the length head (which reads the teacher directly) still varies.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_config

from strop.data.datasets import ClevrDataset
from strop.data.renderer import generate_dataset
from strop.model.losses import align_error
from strop.training.checkpoint import load_model
from strop.training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scenes")
    generate_dataset(root, n=40, size=32, seed=0, progress=False)
    sets = [
        "train.steps=150", "train.lr=1e-3", "train.warmup_steps=10", "train.hold_steps=150",
        "train.num_workers=0", "train.val_every=0", "train.log_every=50",
        "train.checkpoint_every=150", "train.pixel_decoder=false",
        "curriculum.length_mode=fixed", "model.image_size=32", "model.l_max=8",
        "model.div_warmup_steps=40", "data.max_train_images=16",
    ]  # fmt: skip
    cfg = tiny_run_config(root, *sets, batch_size=16)
    run = train(cfg, tmp_path_factory.mktemp("run") / "run", progress=False)
    return root, run


def test_programs_differ_between_images_and_beat_the_mean_field(trained):
    root, run = trained
    model, cfg = load_model(run)
    data = ClevrDataset(root, "train", cfg.model.image_size)
    images = torch.stack([data[i]["image"] for i in range(16)])
    with torch.no_grad():
        feats = model.teacher_features(images)
        gen = model.generate(feats)
        field = model.interpret_tokens(gen.tokens, torch.full((16,), cfg.model.l_max))
    distinct = len({tuple(row) for row in gen.codes.tolist()})
    assert distinct >= 8, f"only {distinct} distinct programs for 16 images: the codes collapsed"
    mean_field = feats.mean(dim=0, keepdim=True).expand_as(feats)
    fitted = align_error(field, feats, cfg.model.w_mse).mean()
    baseline = align_error(mean_field, feats, cfg.model.w_mse).mean()
    assert fitted < baseline - 0.01, (
        f"align {fitted:.3f} is no better than the mean field {baseline:.3f}"
    )
