"""MFU: the peak table keyed by CUDA device names, the arithmetic, and what the trainer logs."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_run_config

from strop.model import ModelConfig, describe
from strop.training.mfu import device_key, mfu, peak_bf16_flops, training_flops_per_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),  # what an SXM5 H100 reports
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", None),  # other clocks: no guessed peak
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_device_names_map_to_their_datasheet_peak(name, key):
    assert device_key(name) == key
    assert (peak_bf16_flops(name) is None) == (key is None)


def test_unknown_device_has_no_mfu_and_the_arithmetic_is_the_definition():
    assert mfu(1000.0, 10**9, None) is None
    assert peak_bf16_flops(None) is None
    # The yardstick: STROP-S from cached DINOv3-S features on one H100 SXM.
    s = describe(ModelConfig.from_preset("S", teacher="dinov3-s"))
    cached = training_flops_per_image(s["flops_per_image"])
    online = training_flops_per_image(s["flops_per_image"], s["teacher_flops_per_image"])
    assert online - cached == s["teacher_flops_per_image"]
    rate_at_25 = 0.25 * peak_bf16_flops("NVIDIA H100 80GB HBM3") / cached
    assert mfu(rate_at_25, cached, 989.4e12) == pytest.approx(0.25)
    assert 5_000 < rate_at_25 < 20_000  # the order of the issue's ~10,000 img/s


def test_trainer_counts_the_online_teacher_and_logs_no_mfu_on_cpu(clevr, tmp_path):
    from strop.training.trainer import Trainer

    cfg = tiny_run_config(
        clevr, "model.image_size=32", "model.l_max=8", "train.val_every=0", "train.num_workers=0"
    )
    cfg.model.teacher = "random-vit"
    cfg.model.patch_size = 16
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    model = trainer.model.flops_per_image()
    teacher = trainer.model.flops_per_image(include_teacher=True) - model
    assert teacher > 0
    assert trainer.train_flops_per_image == 3 * model + teacher
    assert trainer.peak_flops is None  # CPU: MFU is not logged
    trainer.metrics.close()
    cfg.train.steps, cfg.train.log_every = 2, 1
    from strop.training.trainer import train

    train(cfg, tmp_path / "run2", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run2" / "metrics.jsonl").open()]
    assert rows and all("mfu" not in r and "images_per_s" in r for r in rows)
