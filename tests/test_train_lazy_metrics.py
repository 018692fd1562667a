"""A training step leaves its loss values on the device; `MetricLog` reads them on log steps
and writes the same rows as reading each value at once would."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_config

from strop.runs import RunFolder
from strop.training.log import MetricLog, StepResult

pytestmark = pytest.mark.usefixtures("one_thread")


def _result(loss: float | torch.Tensor, align: float | torch.Tensor) -> StepResult:
    return StepResult(
        phase=1,
        loss=loss,
        align_loss=align,
        commit_loss=0.25,
        diversity_loss=0.5,
        grad_norm=1.0,
        mean_length=7.0,
        head_share=0.0,
    )


def test_pending_device_values_give_the_rows_that_host_floats_give(tmp_path):
    torch.manual_seed(0)
    values = torch.rand(7, 2, dtype=torch.float32) * 3
    lazy, eager = (MetricLog(RunFolder(tmp_path / n), write=False) for n in ("lazy", "eager"))
    for a, b in values:
        lazy.add(_result(a, b))
        eager.add(_result(float(a), float(b)))
    assert lazy.interval_steps == eager.interval_steps == 7
    assert lazy.state_dict() == eager.state_dict()  # a checkpoint mid-interval reads them too
    assert lazy.close_interval(7, 1, {}) == eager.close_interval(7, 1, {})


def test_train_step_leaves_its_losses_on_the_device(clevr, tmp_path):
    from strop.training.trainer import Trainer

    cfg = tiny_run_config(
        clevr,
        "model.image_size=32",
        "model.l_max=8",
        "train.val_every=0",
        "train.num_workers=0",
        "curriculum.phase_steps=0,1,2,3",
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.step = 3  # phase 3: the length head trains, pred_length is reported
    result = trainer.train_step(next(trainer._batches()))
    trainer.metrics.close()
    for name in (
        "loss",
        "align_loss",
        "commit_loss",
        "diversity_loss",
        "grad_norm",
        "length_loss",
        "pred_length",
    ):
        value = getattr(result, name)
        assert isinstance(value, torch.Tensor) and value.ndim == 0, name
