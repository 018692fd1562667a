"""Command lines that cannot work are usage errors (exit 2, one message naming the option
and its value) before any work starts: an unknown `--device`, training settings no run can
use, impossible `strop data clevr-synth` values. Nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_error_line
from helpers import strop, usage_error

# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("command", ["export", "eval", "analyze", "cache-features"])
def test_device_tpu_is_a_usage_error(k64_run: Path, command: str) -> None:
    args = (
        ["--data", k64_run, "--out", k64_run / "cache"]
        if command == "cache-features"
        else [k64_run]
    )
    text = usage_error(strop(command, *args, "--device", "tpu"))
    assert "--device" in text and "tpu" in text
    assert not (k64_run / "cache").exists()


def test_train_settings_that_cannot_work_fail_at_the_command_line(clevr: Path, tmp_path: Path):
    out = tmp_path / "k64_run"
    base = ["train", "--data", clevr, "--preset", "tiny", "--teacher", "pixels", "--out", out]
    cases = {
        "train.device": [*base, "--set", "train.device=tpu"],
        "model.k": [*base, "--k", str(10**12)],
        "train.lr": [*base, "--set", "train.lr=1e999"],
    }
    for field, args in cases.items():
        line = one_error_line(strop(*args), 2)
        assert field in line, line
    assert not out.exists()  # nothing was started
    assert "less than or equal to 1048576" in usage_error(strop("model-info", "--k", str(10**12)))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--splits", "nan,1,1"], "--splits"),
        (["--splits", "1,inf,1"], "--splits"),
        (["--size", "200000"], "--size"),
    ],
)
def test_clevr_synth_refuses_impossible_values(tmp_path: Path, args, expected) -> None:
    out = tmp_path / "data"
    text = usage_error(strop("data", "clevr-synth", "--n", "5", "--out", out, *args))
    assert expected in text
    assert not out.exists()
