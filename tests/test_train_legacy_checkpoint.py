"""A run folder written by the code before the package move (tests/fixtures/legacy_run, made
at commit 4cbcb79 with flat `strop/*.py` modules) loads, exports and resumes with today's code.

Checkpoints are weights-only dicts keyed by parameter names, so module paths do not matter;
what this guards is that the state_dict keys, the config fields and the checkpoint entries
(optimizer, curriculum, RNG, data position) written before the move are still read as they
were.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strop.runs import RunFolder
from strop.training import checkpoint as ckpt

LEGACY = Path(__file__).parent / "fixtures" / "legacy_run"
#: The overrides the fixture was trained with (its README); resuming must repeat them.
LEGACY_SETS = [
    "model.image_size=32",
    "model.l_max=8",
    "model.decoder_width=8",
    "model.d=32",
    "model.layers=1",
    "model.ffn=64",
    "model.heads=2",
    "curriculum.phase_steps=2,4,6,7",
    "curriculum.probe_radius=1",
    "train.num_workers=0",
    "train.log_every=2",
    "train.val_every=100",
    "train.checkpoint_every=8",
    "train.keep_checkpoints=0",
    "train.warmup_steps=2",
    "train.hold_steps=4",
]


@pytest.fixture
def legacy_run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY, tmp_path / "run"))


def test_legacy_checkpoint_loads_into_todays_model(legacy_run):
    model, cfg = ckpt.load_model(legacy_run)
    state = ckpt.load_checkpoint(legacy_run / "checkpoints" / "last.pt")
    assert state["step"] == 8
    # Every stored weight landed in the model unchanged (strict, same names, same values).
    own = model.state_dict()
    stored = {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    assert set(stored) == {k for k, v in own.items() if isinstance(v, torch.Tensor)}
    for key, value in stored.items():
        assert torch.equal(own[key], value), key
    assert (cfg.model.d, cfg.model.layers, cfg.model.k) == (32, 1, 16)
    codes, lengths = model.encode(torch.rand(2, 3, 32, 32))
    assert codes.shape == (2, 8) and ((lengths >= 1) & (lengths <= 8)).all()


def test_legacy_run_resumes_from_step_8_to_12(legacy_run, tmp_path):
    from strop.data.renderer import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, n=24, size=32, seed=0, progress=False)
    args = ["train", "--data", str(data), "--preset", "tiny", "--teacher", "pixels", "--k", "16"]
    args += ["--out", str(legacy_run), "--batch-size", "4", "--no-progress"]
    for item in [*LEGACY_SETS, "train.steps=12"]:
        args += ["--set", item]
    done = subprocess.run(
        [sys.executable, "-m", "strop.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ckpt.load_checkpoint(legacy_run / "checkpoints" / "last.pt")["step"] == 12
    steps = [r["step"] for r in RunFolder(legacy_run).read_metrics() if "loss" in r]
    # The fixture logged steps 2..8; the resumed run continues at 10 and 12, no repeats.
    assert steps == [2, 4, 6, 8, 10, 12]
