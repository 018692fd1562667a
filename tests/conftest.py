"""Shared fixtures: a scenes file in real CLEVR v1.0's exact JSON shape, a tiny synthetic
CLEVR folder rendered once per session (tests that damage files copy it first), and the one
factory of tiny model and run configs (`tiny_model_config`, `tiny_run_config`).

This file imports neither torch nor the model at module level: the grammar and llm_decode
tests check that their packages never import torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llm_decode.runner import DecodeConfig
    from strop.model.config import ModelConfig
    from strop.training.config import RunConfig


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """The model every CPU test builds: the `tiny` preset (d=64, 2 layers, 4 heads, FFN 128,
    64 px images in 8-px patches, L_max=16, K=64) on the offline `pixels` teacher, so it needs
    no weights and no network. Keyword overrides win (`image_size=32`, `k=16`, ...)."""
    from strop.model.config import ModelConfig

    return ModelConfig.from_preset("tiny", **{"teacher": "pixels", **overrides})


def tiny_run_config(
    data: str | os.PathLike[str], *sets: str, k: int = 16, batch_size: int = 4
) -> RunConfig:
    """What `strop train --data DATA --preset tiny --teacher pixels --k K` builds, with each
    of `sets` applied as a `--set key=value` override."""
    from strop.training.config import make_run_config

    return make_run_config(data, "tiny", "pixels", k=k, batch_size=batch_size, overrides=list(sets))


#: With `train.steps=N` (N >= 4): a tiny run at 32 px whose four phases pass in 4 steps,
#: logged every 2 steps, never validated; for tests that need a trained run's files.
QUICK_RUN_SETS = (
    "model.image_size=32",
    "model.l_max=8",
    "model.decoder_width=16",
    "curriculum.phase_steps=1,2,3,4",
    "curriculum.probe_radius=1",
    "train.num_workers=0",
    "train.val_every=0",
    "train.log_every=2",
)


# Two scenes exactly as CLEVR_v1.0/scenes/CLEVR_val_scenes.json spells them: key order,
# 3-entry pixel_coords (u, v, depth), float32-looking coordinates, -0.0 in directions,
# relationships as lists of lists, and the info block.
REAL_CLEVR_SCENES_JSON = """{"info": {"split": "val", "license": "Creative Commons Attribution (CC BY 4.0)", "version": "1.0", "date": "2/14/2017"}, "scenes": [
{"image_index": 0, "objects": [
 {"color": "brown", "size": "large", "rotation": 178.92387258999463, "shape": "cylinder", "3d_coords": [-1.4937210083007812, -1.9936031103134155, 0.699999988079071], "material": "rubber", "pixel_coords": [119, 131, 10.801968574523926]},
 {"color": "gray", "size": "large", "rotation": 243.405459279722, "shape": "cube", "3d_coords": [1.555381178855896, -2.7364203929901123, 0.699999988079071], "material": "rubber", "pixel_coords": [198, 190, 8.60734748840332]},
 {"color": "green", "size": "small", "rotation": 230.45235024165092, "shape": "cylinder", "3d_coords": [-2.4427502155303955, 2.2842350006103516, 0.3499999940395355], "material": "rubber", "pixel_coords": [140, 66, 14.48564338684082]}],
 "relationships": {"right": [[1, 2], [2], []], "behind": [[2], [0, 2], []], "front": [[1], [], [0, 1]], "left": [[], [0], [0, 1]]},
 "image_filename": "CLEVR_val_000000.png", "split": "val",
 "directions": {"right": [0.6563112735748291, 0.7544902563095093, -0.0], "behind": [-0.754490315914154, 0.6563112735748291, 0.0], "above": [0.0, 0.0, 1.0], "below": [-0.0, -0.0, -1.0], "left": [-0.6563112735748291, -0.7544902563095093, 0.0], "front": [0.754490315914154, -0.6563112735748291, -0.0]}},
{"image_index": 1, "objects": [
 {"color": "cyan", "size": "large", "rotation": 36.94165693010678, "shape": "cube", "3d_coords": [2.2310359477996826, 1.0291388034820557, 0.4949747323989868], "material": "metal", "pixel_coords": [276, 106, 10.37960147857666]},
 {"color": "yellow", "size": "small", "rotation": 112.91296935081482, "shape": "sphere", "3d_coords": [-0.6911839842796326, -2.4071197509765625, 0.3499999940395355], "material": "metal", "pixel_coords": [142, 172, 9.04389476776123]},
 {"color": "purple", "size": "large", "rotation": 308.8174536472747, "shape": "sphere", "3d_coords": [0.4019472002983093, 2.7052571773529053, 0.699999988079071], "material": "rubber", "pixel_coords": [226, 67, 13.31867790222168]},
 {"color": "red", "size": "small", "rotation": 12.5, "shape": "cylinder", "3d_coords": [-2.6740219593048096, 0.5063111782073975, 0.3499999940395355], "material": "rubber", "pixel_coords": [100, 89, 13.0]}],
 "relationships": {"right": [[], [0, 2, 3], [], [0, 2]], "behind": [[2, 3], [2, 3], [3], []], "front": [[], [], [0, 1], [0, 1, 2]], "left": [[1, 3], [], [1, 3], [1]]},
 "image_filename": "CLEVR_val_000001.png", "split": "val",
 "directions": {"right": [0.6563112735748291, 0.7544902563095093, -0.0], "behind": [-0.754490315914154, 0.6563112735748291, 0.0], "above": [0.0, 0.0, 1.0], "below": [-0.0, -0.0, -1.0], "left": [-0.6563112735748291, -0.7544902563095093, 0.0], "front": [0.754490315914154, -0.6563112735748291, -0.0]}}
]}"""


@pytest.fixture
def real_clevr_scenes(tmp_path: Path) -> Path:
    """`CLEVR_val_scenes.json` in real CLEVR's shape, under tmp_path/scenes/."""
    path = tmp_path / "scenes" / "CLEVR_val_scenes.json"
    path.parent.mkdir(parents=True)
    path.write_text(REAL_CLEVR_SCENES_JSON, encoding="utf-8")
    assert len(json.loads(REAL_CLEVR_SCENES_JSON)["scenes"]) == 2
    return path


SYNTH_N, SYNTH_SIZE = 12, 48


@pytest.fixture(scope="session")
def synth_clevr_ro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CLEVR folder (12 scenes, 48 px, splits 8/2/2), rendered once; do not modify."""
    from strop.data.renderer import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "clevr"
    generate_dataset(
        root, SYNTH_N, size=SYNTH_SIZE, seed=7, splits=(0.7, 0.15, 0.15), progress=False
    )
    return root


@pytest.fixture
def synth_clevr(synth_clevr_ro: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the synthetic CLEVR folder."""
    return Path(shutil.copytree(synth_clevr_ro, tmp_path / "clevr"))


def script_path(name: str) -> str:
    """The console script `name` installed beside this interpreter (`.venv/bin/strop`).

    Tests run it by path, not from PATH: the README's test line runs `.venv/bin/python -m
    pytest` with no virtualenv activated, so PATH need not contain `.venv/bin`.
    """
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(
            f"console script {name} not found beside {sys.executable}: reinstall the project"
        )
    return str(path)


@pytest.fixture
def console_script():
    """`console_script("strop")` -> the path of the installed `strop` script."""
    return script_path


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    """A decoding experiment folder, tmp_path/exp, with one synthetic K=64 run (k64: 60
    train, 20 val programs)."""
    from llm_decode.testing.synthetic import make_run

    make_run(tmp_path / "exp" / "k64", k=64, n_train=60, n_val=20)
    return tmp_path / "exp"


@pytest.fixture
def exp(exp_dir: Path) -> tuple[Path, dict[str, dict]]:
    """`exp_dir`, and the true answer for every program's codes (what the fake server answers
    with)."""
    from llm_decode.testing.synthetic import true_answers

    return exp_dir, true_answers(exp_dir / "k64")


def decode_config(
    runs: str | os.PathLike[str],
    base_url: str,
    *,
    model: str = "m",
    shots: int | None = 5,
    **overrides: Any,
) -> DecodeConfig:
    """A K=64 decode of `runs` against a fake server at `base_url`, with short backoffs (retries
    cost no time) and a 5 s timeout. Keyword overrides are `DecodeConfig` fields; `protocol=`
    is a dict of `ProtocolConfig` fields, over `shots` (None: the protocol's own default)."""
    from llm_decode.protocol import ProtocolConfig
    from llm_decode.runner import DecodeConfig

    fields: dict[str, Any] = {"model": model, "k": 64, "backoff_base": 0.01, "backoff_cap": 0.05}
    fields["timeout"] = 5
    fields.update(overrides, runs=runs, base_url=base_url)
    protocol = {} if shots is None else {"shots": shots}
    fields["protocol"] = ProtocolConfig(**{**protocol, **fields.get("protocol", {})})
    return DecodeConfig(**fields)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared CPU they only contend.
    Training test modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def nan_align_error(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """`nan_align_error(after=N)`: from its (N+1)-th call on, `strop.model.losses.align_error`
    returns NaN, so training diverges at a step the test knows (undone after the test)."""
    from strop.model import losses

    def poison(*, after: int) -> None:
        calls = {"n": 0}
        real = losses.align_error

        def poisoned(field, target, w_mse, *rest):
            calls["n"] += 1
            out = real(field, target, w_mse, *rest)
            return out * float("nan") if calls["n"] > after else out

        monkeypatch.setattr(losses, "align_error", poisoned)

    return poison


@pytest.fixture(scope="session")
def clevr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic scenes at 32 px (seed 0), rendered once for the training tests; read-only."""
    from strop.data.renderer import generate_dataset

    root = tmp_path_factory.mktemp("clevr")
    generate_dataset(root, n=40, size=32, seed=0, progress=False)
    return root


UNTRAINED_N_VAL = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CLEVR folder of 64 px images, 6 train and 6 val (`UNTRAINED_N_VAL`), for
    the evaluation tests' untrained `run_dir`."""
    from strop.data.renderer import generate_dataset

    root = tmp_path_factory.mktemp("data") / "clevr-synth"
    generate_dataset(
        root, n=2 * UNTRAINED_N_VAL, size=64, seed=0, splits=(0.5, 0.5, 0.0), progress=False
    )
    return root


def untrained_run(folder: Path, dataset: Path, spread: Callable[[Any], None]) -> Path:
    """A run folder as the trainer leaves it, `folder`: config.json + checkpoints/last.pt of
    a tiny untrained model (pixels teacher, seed 0) on `dataset`, its weights first changed
    in place by `spread(model)` under no_grad."""
    import torch

    from strop.model import build_model
    from strop.runs import RunFolder
    from strop.training.checkpoint import save_checkpoint
    from strop.training.config import RunConfig

    torch.manual_seed(0)
    mc = tiny_model_config(image_size=32, l_max=8, k=16, d=32, ffn=64)
    cfg = RunConfig(model=mc)
    cfg.data.path = str(dataset)
    run = RunFolder(folder)
    run.path.mkdir()
    run.write_config(cfg.model_dump(mode="json"))
    model = build_model(mc)
    with torch.no_grad():
        spread(model)
    save_checkpoint(run.path, step=1, state={"model": model.state_dict(), "step": 1})
    return run.path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """A run folder as the trainer leaves it: config.json + checkpoints/last.pt (tiny, pixels
    teacher, untrained, with the length head's output spread so programs differ in length)."""

    def spread(model: Any) -> None:
        for p in model.length_head.parameters():
            p.normal_(0, 0.5)

    return untrained_run(tmp_path_factory.mktemp("runs") / "k16", dataset, spread)


@pytest.fixture(scope="module")
def tiny_run(clevr: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A tiny unconditioned run (L_max = 8, K = 16) trained 12 steps through every phase by
    the real trainer (`helpers.BASE_SETS`: checkpoints at steps 4 and 8 kept), in `exp/k16`.
    Shared by the module, which runs on one thread meanwhile: tests that write into the run
    copy it first."""
    from helpers import BASE_SETS

    from strop.training.trainer import train

    out = tmp_path_factory.mktemp("exp") / "k16"
    return train(tiny_run_config(clevr, "train.steps=12", *BASE_SETS), out, progress=False)


@pytest.fixture
def k64_run(tmp_path: Path) -> Path:
    """An experiment, tmp_path/exp, with one synthetic run k64: programs.parquet (K=64, 30
    train and 10 val programs with their scenes) and a config.json; what the run-file readers
    and the commands on a run take."""
    from llm_decode.testing.synthetic import make_run
    from strop.runs import RunFolder

    make_run(tmp_path / "exp" / "k64", k=64, n_train=30, n_val=10)
    RunFolder(tmp_path / "exp" / "k64").write_config({"model": {"k": 64}})
    return tmp_path / "exp" / "k64"


def one_error_line(result, code: int) -> str:
    """The command failed with `code` and said so in one `error: ...` line, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs at tmp_path/disk, to run out of space on (`fill(full_disk)` takes
    its last byte): a full disk without mocks. Skipped where mounting is not permitted
    (tests run as root in the project's containers)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Write to `disk` until it has no byte left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free == 0


#: Markers of tests that a fresh clone cannot always run, and why such a test skips.
NEEDS = {
    "needs_shared": ("real-data tests", "../shared not present"),
    "needs_tool": ("external-tool tests", "chromium or the lpips package not installed"),
}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many tests of each `NEEDS` marker skipped, so a run on a fresh clone shows
    what it did not check instead of hiding it among the other skips."""
    stats = terminalreporter.stats
    for marker, (what, why) in NEEDS.items():
        ran = {
            report.nodeid
            for outcome in ("passed", "failed", "error", "skipped")
            for report in stats.get(outcome, [])
            if marker in getattr(report, "keywords", {})
        }
        skipped = {r.nodeid for r in stats.get("skipped", []) if marker in r.keywords}
        if ran:
            terminalreporter.write_line(
                f"{what} skipped: {len(skipped)} of {len(ran)}" + (f" ({why})" if skipped else "")
            )


# --------------------------------------------------------------------------- export at scale


@pytest.fixture(scope="module")
def spread_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CLEVR folder of 32 px images, `SPREAD_N` train and `SPREAD_N` val."""
    from helpers import SPREAD_N

    from strop.data.renderer import generate_dataset

    root = tmp_path_factory.mktemp("data") / "clevr-synth"
    generate_dataset(root, n=2 * SPREAD_N, size=32, seed=0, splits=(0.5, 0.5, 0.0), progress=False)
    return root


@pytest.fixture(scope="module")
def spread_run(tmp_path_factory: pytest.TempPathFactory, spread_dataset: Path) -> Path:
    """A run folder as the trainer leaves it (tiny model, pixels teacher, untrained) whose
    weights are spread so that programs tell the images apart and differ in length."""
    import torch

    def spread(model: Any) -> None:  # untrained weights give every image one program
        for name, p in model.named_parameters():
            if "teacher" not in name:
                p.add_(torch.randn_like(p) * 0.3)
        for p in model.length_head.parameters():
            p.normal_(0, 1.0)

    return untrained_run(tmp_path_factory.mktemp("runs") / "k16", spread_dataset, spread)


@pytest.fixture(scope="module")
def spread_single(spread_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The one-file export of `spread_run`'s train,val: the reference every dataset form
    (shards, torchrun ranks, tar inputs) must equal."""
    from helpers import SPREAD_N

    from strop.evaluation.export import export_programs
    from strop.runs import read_programs

    out = tmp_path_factory.mktemp("single") / "programs.parquet"
    export_programs(spread_run, split="train,val", batch_size=3, progress=False, out=out)
    programs = read_programs(out)
    assert len({tuple(c.tolist()) for c in programs.codes}) > SPREAD_N  # rows tell images apart
    assert len(set(programs.lengths.tolist())) > 1
    return programs
