"""A training step leaves its loss values on the device; `MetricLog` reads them on log steps
and writes the same rows as reading each value at once would."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_config

from strop.runs import RunFolder
from strop.training.log import MetricLog, StepResult

pytestmark = pytest.mark.usefixtures("one_thread")


#: What every step of these rows reports alike; only the losses vary.
_ALIKE = {"phase": 1, "commit_loss": 0.25, "diversity_loss": 0.5, "grad_norm": 1.0}


def _result(loss: float | torch.Tensor, align: float | torch.Tensor) -> StepResult:
    return StepResult(loss=loss, align_loss=align, mean_length=7.0, head_share=0.0, **_ALIKE)


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
    result = trainer.train_step(next(trainer.batches()))
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


def test_a_non_finite_loss_is_caught_at_the_next_check_naming_its_step(
    clevr, tmp_path, nan_align_error
):
    """The finite check lags at most `train.log_every` steps, and runs before any save."""
    from strop.training import checkpoint as ckpt
    from strop.training.trainer import TrainingDiverged, train

    nan_align_error(after=5)
    cfg = tiny_run_config(
        clevr,
        "train.steps=12",
        "model.image_size=32",
        "model.l_max=8",
        "train.val_every=0",
        "train.num_workers=0",
        "curriculum.phase_steps=20,21,22,23",
        "train.log_every=4",
        "train.checkpoint_every=8",
    )  # phase 1 throughout: one align_error call per step, so step 5 is the first bad one
    with pytest.raises(TrainingDiverged, match=r"step 5 \(phase 1\): non-finite loss"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints" / ckpt.LAST).exists()  # step 8's save never ran
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [__import__("json").loads(r)["step"] for r in rows] == [4]  # the row of step 8 neither
