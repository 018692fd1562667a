"""`model.residual_targets` (issue 27): the align loss compares deviations from the training
set's mean teacher field, which is computed before training and travels with the run.

Real tiny trainings on the 32 px synthetic scenes; the default run beside it is the control.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from helpers import tiny_sets

from strop.data.datasets import build_dataset
from strop.model import ModelConfig, Strop, losses
from strop.training import checkpoint as ckpt
from strop.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = tiny_sets(phase_steps="2,4,6,7", lr=None)


def config(data: Path, *sets: str):
    return tiny_run_config(data, "train.steps=8", *SETS, *sets)


@pytest.fixture(scope="module")
def runs(clevr, tmp_path_factory, one_thread) -> dict[str, Path]:
    """A default run and a residual-targets run, same data and seed."""
    out = tmp_path_factory.mktemp("residual")
    return {
        "default": train(config(clevr), out / "default", progress=False),
        "residual": train(
            config(clevr, "model.residual_targets=true"), out / "res", progress=False
        ),
    }


def last_model_state(run: Path) -> dict:
    return ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def train_mean_field(clevr: Path, model: Strop) -> torch.Tensor:
    """The mean teacher field over every training image, computed here independently."""
    dataset = build_dataset(clevr, "train", 32)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        return model.teacher_features(images).double().mean(dim=0).float()


def test_the_default_model_has_no_mean_field(runs):
    assert "field_mean" not in last_model_state(runs["default"])
    model, _ = Strop.from_run(runs["default"])
    assert model.field_mean is None


def test_the_mean_field_is_the_training_sets_and_is_restored_with_the_run(clevr, runs):
    stored = last_model_state(runs["residual"])["field_mean"]
    model, _ = Strop.from_run(runs["residual"])
    assert model.field_mean is not None
    expected = train_mean_field(clevr, model)
    assert expected.abs().mean() > 0.05  # a real field, not the buffer's zeros
    torch.testing.assert_close(stored, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.field_mean, expected, atol=1e-5, rtol=1e-5)

    # The full field is the interpreter's residual plus the mean, wherever it is read.
    codes = torch.zeros(3, 4, dtype=torch.long)
    lengths = torch.full((3,), 4)
    with torch.no_grad():
        residual = model.interpreter(model.quantizer.embed_codes(codes), None)
    torch.testing.assert_close(model.interpret(codes, lengths), residual + expected)

    # ... and a model exported from the run carries it too.
    model.save_pretrained(runs["residual"].parent / "export")
    exported = Strop.from_pretrained(runs["residual"].parent / "export")
    torch.testing.assert_close(exported.field_mean, expected, atol=1e-5, rtol=1e-5)


def test_the_option_changes_what_is_trained(clevr, runs):
    default, residual = last_model_state(runs["default"]), last_model_state(runs["residual"])
    # Same seed, same initial weights and data order: only the loss differs, so the weights do.
    key = "interpreter.proj_out.weight"
    assert not torch.allclose(default[key], residual[key], atol=1e-4)

    # The align loss is the residual one: a field equal to the mean scores 1 - cos(0, .) + mse,
    # at least 1, not the small error the shared background earns it on the full field.
    model, _ = Strop.from_run(runs["residual"])
    feats = model.teacher_features(
        torch.stack([build_dataset(clevr, "train", 32)[i]["image"] for i in range(4)])
    )
    assert model.field_mean is not None
    mean = model.field_mean.expand_as(feats)
    plain = losses.align_error(mean, feats, 1.0).mean()
    seen = losses.align_error(model.align_view(mean), model.align_view(feats), 1.0).mean()
    assert seen >= 1.0 > plain + 0.3


def test_resuming_keeps_the_stored_mean_field(clevr, tmp_path):
    cfg = config(clevr, "model.residual_targets=true")
    straight = train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_at=4)
    resumed = train(cfg, tmp_path / "b", progress=False)
    a, b = last_model_state(straight), last_model_state(resumed)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key


def test_foreground_weights_need_residual_targets():
    with pytest.raises(ValueError, match="foreground_weights needs residual_targets"):
        ModelConfig.from_preset("tiny", teacher="pixels", foreground_weights=True)


def test_foreground_weights_change_what_is_trained(clevr, runs, tmp_path):
    weighted = train(
        config(clevr, "model.residual_targets=true", "model.foreground_weights=true"),
        tmp_path / "fgw",
        progress=False,
    )
    key = "interpreter.proj_out.weight"
    assert not torch.allclose(
        last_model_state(runs["residual"])[key], last_model_state(weighted)[key], atol=1e-4
    )
    # The weights: mean 1 per image, largest where the teacher deviates most from the mean.
    model, _ = Strop.from_run(weighted)
    assert model.field_mean is not None
    dataset = build_dataset(clevr, "train", 32)
    feats = model.teacher_features(torch.stack([dataset[i]["image"] for i in range(4)]))
    weights = model.patch_weights(feats)
    assert weights is not None
    torch.testing.assert_close(weights.mean(dim=1), torch.ones(4))
    deviation = (feats - model.field_mean).pow(2).sum(dim=-1)
    assert torch.equal(weights.argmax(dim=1), deviation.argmax(dim=1))
    # Off, there are none: the default and the residual-only runs average patches plainly.
    assert Strop.from_run(runs["residual"])[0].patch_weights(feats) is None
