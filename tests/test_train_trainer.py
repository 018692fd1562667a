"""The trainer on real tiny models and real synthetic CLEVR-like data, on CPU.

Phases are compressed to a few steps; images are 32 px so a step takes milliseconds.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TIMING_KEYS
from helpers import start_strop as run_cli
from helpers import trainer_cli_args as cli_args
from helpers import trainer_config as config

from strop.runs import RunFolder
from strop.training import checkpoint as ckpt
from strop.training.config import ConfigError
from strop.training.trainer import TrainingDiverged, lr_factor, train

pytestmark = pytest.mark.usefixtures("one_thread")


def train_rows(run: Path) -> list[dict]:
    return [r for r in RunFolder(run).read_metrics() if "loss" in r]


def test_lr_schedule_warmup_hold_cosine():
    f = [lr_factor(s, 10, 20, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0
    assert all(v == 1.0 for v in f[10:20])
    assert all(a >= b for a, b in zip(f[20:], f[21:]))
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 10, 20, 100, 0.1) == pytest.approx(0.1)


def test_training_runs_every_phase_and_ends_on_predicted_lengths(clevr, tmp_path):
    run = train(config(clevr, 16), tmp_path / "run", progress=False)
    rows = RunFolder(run).read_metrics()
    train_part = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_part] == list(range(2, 17, 2))
    assert {r["phase"] for r in train_part} == {1, 2, 3, 4, 5}
    for r in train_part:
        assert {"step", "phase", "mean_length", "images_per_s", "lr"} <= set(r)
        assert {"align_loss", "commit_loss", "diversity_loss", "pixel_loss"} <= set(r)
        assert all(math.isfinite(v) for v in r.values())
        assert ("length_loss" in r) == (r["phase"] >= 3)
    assert "oracle_target_mean" not in train_part[0] and "oracle_target_mean" in train_part[-1]
    assert train_part[-1]["head_share"] == 1.0  # predicted lengths only at the end
    assert train_part[-1]["bank_coverage"] > 0.5
    val = [r for r in rows if "val_cos" in r]
    assert [r["step"] for r in val] == [8, 16]
    assert {"val_cos", "val_r2", "val_cb"} <= set(val[0])
    # Checkpoints: last.pt (step 16) plus kept steps; the model loads for export/eval.
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 16
    assert [s for s, _ in ckpt.list_steps(run)] == [8, 12, 16]  # keep_checkpoints=3
    model, cfg = ckpt.load_model(run)
    assert not model.training and cfg.model.l_max == 8
    images = torch.rand(2, 3, 32, 32)
    codes, lengths = model.encode(images)
    assert codes.shape == (2, 8) and ((lengths >= 1) & (lengths <= 8)).all()


def test_length_head_has_its_own_constant_learning_rate(clevr, tmp_path):
    run = train(config(clevr, 16, "train.head_lr_mult=10"), tmp_path / "run", progress=False)
    groups = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    cfg = config(clevr, 16)
    head, main = groups[-1], groups[0]
    assert head["lr"] == pytest.approx(10 * cfg.train.lr)  # peak rate, untouched by the cosine
    assert main["lr"] < cfg.train.lr  # the model's groups have decayed
    model, _ = ckpt.load_model(run)
    n_head = sum(p.numel() for p in model.length_head.parameters())
    assert sum(len(g["params"]) for g in groups[-1:]) == len(list(model.length_head.parameters()))
    assert n_head > 0


def test_resume_is_bit_identical(clevr, tmp_path):
    straight = train(config(clevr, 14), tmp_path / "a", progress=False)
    first = train(config(clevr, 14), tmp_path / "b", progress=False, stop_at=7)
    assert ckpt.load_checkpoint(first / "checkpoints" / "last.pt")["step"] == 7
    resumed = train(config(clevr, 14), tmp_path / "b", progress=False)
    a = ckpt.load_checkpoint(straight / "checkpoints" / "last.pt")
    b = ckpt.load_checkpoint(resumed / "checkpoints" / "last.pt")
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["curriculum"]["bank"]["targets"], b["curriculum"]["bank"]["targets"])
    assert a["curriculum"]["oracle"] == b["curriculum"]["oracle"]

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    assert strip(RunFolder(straight).read_metrics()) == strip(RunFolder(resumed).read_metrics())


def test_resume_refuses_a_different_model(clevr, tmp_path):
    train(config(clevr, 4), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume with model.k=32"):
        train(config(clevr, 8, "model.k=32"), tmp_path / "run", progress=False)
    # Extending the run (more steps) is allowed.
    train(config(clevr, 6), tmp_path / "run", progress=False)
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 6


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(clevr, tmp_path, nan_align_error):
    nan_align_error(after=5)
    with pytest.raises(
        TrainingDiverged, match=r"step 5 \(phase 2\): non-finite loss \(align_loss=nan"
    ):
        train(config(clevr, 12), tmp_path / "run", progress=False)
    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(
        torch.isfinite(v).all() for v in state["model"].values() if isinstance(v, torch.Tensor)
    )


def test_fixed_length_mode_trains_all_tokens(clevr, tmp_path):
    run = train(config(clevr, 6, "curriculum.length_mode=fixed"), tmp_path / "run", progress=False)
    rows = train_rows(run)
    assert {r["phase"] for r in rows} == {0}
    assert all(r["mean_length"] == 8 and "length_loss" not in r for r in rows)
    assert all("oracle_target_mean" not in r for r in rows)


def test_sigint_writes_a_checkpoint(clevr, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        cli_args(clevr, out, 100_000, "train.checkpoint_every=100000", "train.log_every=1")
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.is_file() and metrics.read_text().count("\n") >= 3
    ):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "checkpoint saved" in output
    state = ckpt.load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] >= 3
    logged = [r["step"] for r in train_rows(out)]
    assert logged[-1] == state["step"]


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(clevr, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(cli_args(clevr, out, 100_000, "train.checkpoint_every=2"))
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("step-0000006.pt")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=60)
    step = ckpt.load_checkpoint(last)["step"]  # intact, whatever moment the kill hit
    assert step >= 6
    resumed = run_cli(cli_args(clevr, out, step + 2, "train.checkpoint_every=2"))
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    assert ckpt.load_checkpoint(last)["step"] == step + 2


def test_ddp_two_process_gloo_run_loads_on_rank0(clevr, tmp_path):
    out = tmp_path / "ddp"
    # Two threads per rank: oneDNN then gives a channels-last input's 1x1 conv weight gradient
    # channels-last strides, the case DDP warned about.
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29500 + os.getpid() % 1000), "-m", "strop.cli"]
    cmd += cli_args(clevr, out, 6, "train.val_every=6")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Each parameter has the layout its gradient has (the pixel probe's 1x1 stem conv sees a
    # channels-last input): DDP's buckets need no extra copy, so it does not warn.
    assert "grad strides do not match bucket view strides" not in done.stderr.lower()
    state = ckpt.load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 6
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [2, 4, 6]  # rank 0 alone writes metrics
    # Every rank's oracle targets reached the bank: 2 ranks x 4 images per step.
    assert state["curriculum"]["bank"]["visits"].sum() == 2 * 4 * 3
    model, _ = ckpt.load_model(out)
    assert model.generate(model.teacher_features(torch.rand(1, 3, 32, 32))).codes.shape == (1, 8)


def test_cli_reports_bad_override_in_one_line(clevr, tmp_path):
    from typer.testing import CliRunner

    from strop.cli import app

    result = CliRunner().invoke(app, cli_args(clevr, tmp_path / "run", 4, "train.lrr=1"))
    assert result.exit_code == 2  # a usage error: the command line names an unknown key
    assert "unknown key 'train.lrr'" in result.output and "Traceback" not in result.output


def test_training_from_a_feature_cache(clevr, tmp_path):
    from strop.data.datasets import build_dataset
    from strop.model import build_model
    from strop.model.feature_cache import write_features

    cfg = config(clevr, 4)
    cache = tmp_path / "cache"
    teacher = build_model(cfg.model).teacher
    for split in ("train", "val"):
        images = build_dataset(clevr, split, cfg.model.image_size)
        write_features(images, teacher, cache, split, cfg.model.image_size, progress=False)
    # Features only (no pixel probe): the probe stays frozen, no pixel loss.
    fast = train(
        config(
            clevr,
            4,
            f"data.feature_cache={cache}",
            "train.pixel_decoder=false",
            "train.val_every=4",
        ),
        tmp_path / "fast",
        progress=False,
    )
    rows = RunFolder(fast).read_metrics()
    assert all("pixel_loss" not in r for r in rows if "loss" in r)
    assert any("val_cos" in r for r in rows)
    # Features plus images: the probe trains on the images beside the cached features.
    both = train(config(clevr, 2, f"data.feature_cache={cache}"), tmp_path / "both", progress=False)
    assert all("pixel_loss" in r for r in train_rows(both))
    # A cache made for another image size is refused with the cache's index named.
    with pytest.raises(ValueError, match=r"index.json: cached with image_size=32"):
        train(
            config(clevr, 2, f"data.feature_cache={cache}", "model.image_size=64"),
            tmp_path / "bad",
            progress=False,
        )


def test_pixel_probe_loss_scaled_by_1000_leaves_the_tokenizer_bit_identical(clevr, tmp_path):
    """Paper claim iii: pixels never shape the codebook. A tight clip makes clipping bind, so
    a probe norm mixed into the tokenizer's clip would change its update."""
    from strop.training.trainer import Trainer

    def after_steps(w_pixel: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        cfg = config(clevr, 3, f"model.w_pixel={w_pixel}", "train.grad_clip=0.01")
        trainer = Trainer(cfg, tmp_path / f"w{w_pixel}", progress=False)
        trainer.fit()
        tensors = [*trainer.model.named_parameters(), *trainer.model.named_buffers()]
        state = {k: v.detach().clone() for k, v in tensors}
        return state, trainer.run.read_metrics()

    base, base_rows = after_steps("1")
    loud, loud_rows = after_steps("1000")
    probe = [k for k in base if k.startswith("pixel_decoder.")]
    tokenizer = [k for k in base if not k.startswith("pixel_decoder.")]
    assert probe and tokenizer
    assert all(torch.equal(base[k], loud[k]) for k in tokenizer)
    assert any(not torch.equal(base[k], loud[k]) for k in probe if base[k].is_floating_point())
    # The logged tokenizer objective and its gradient norm agree; the probe's are its own.
    rows = [(a, b) for a, b in zip(base_rows, loud_rows) if "loss" in a]
    assert rows and all(
        a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] for a, b in rows
    )
    assert all(a["pixel_grad_norm"] != b["pixel_grad_norm"] for a, b in rows)


def test_a_validation_split_that_fails_to_load_is_loud(clevr, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="strop.training.trainer"):
        run = train(config(clevr, 2, "data.val_split=nosuchsplit"), tmp_path / "r", progress=False)
    events = [r for r in RunFolder(run).read_metrics() if r.get("event") == "validation_off"]
    assert len(events) == 1 and "nosuchsplit" in events[0]["reason"]
    assert "failed to load" in events[0]["reason"]
    assert any("validation off" in m and "nosuchsplit" in m for m in caplog.messages)
    # Validation turned off by configuration is not an event.
    run = train(config(clevr, 2, "train.val_every=0"), tmp_path / "off", progress=False)
    assert not [r for r in RunFolder(run).read_metrics() if r.get("event")]
