"""Length under the user's control: `prefix:N` / `cap:N` budgets, `strop eval --sweep`
(sweep.json and the report's curves), the opt-in eps-conditioned length head (`quality:EPS`)
and eval.json's `quality_control` block, on real tiny runs trained here.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line, tiny_run_config
from helpers import BASE_SETS, TIMING_KEYS, strop

from strop.evaluation.analyze import analyze_run
from strop.evaluation.evaluate import evaluate_run
from strop.evaluation.export import export_programs
from strop.evaluation.report import build_report
from strop.evaluation.sweep import SweepLengthsError, count_probe_r2, parse_sweep_lengths, sweep_run
from strop.model import length_modes
from strop.model.config import ModelConfig
from strop.model.length_modes import (
    LengthMode,
    LengthModeError,
    check_length_mode,
    parse_length_mode,
)
from strop.model.network import build_model
from strop.model.quality_head import QualityHead, shortest_reaching
from strop.runs import RunFolder, read_json, read_programs
from strop.training.quality import ErrorCurveBank, curve_loss, curve_targets
from strop.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = Path(__file__).parent / "fixtures" / "length_control" / "unconditioned_metrics.jsonl"
#: cos may dip between consecutive prefix lengths by at most this much (a tiny run's noise:
#: the interpreter is not trained at every length equally often).
COS_TOL = 0.01
L_MAX = 8  # BASE_SETS


def _cli(*args: str):
    """`strop ARGS` in process (the real app and its exit codes, without a fresh interpreter)."""
    from typer.testing import CliRunner

    from strop.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(clevr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default (unconditioned) tiny run trained through every phase, in its own experiment
    folder (`exp/k16`)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("exp") / "k16"
    return train(tiny_run_config(clevr, "train.steps=16", *BASE_SETS), out, progress=False)


# --------------------------------------------------------------------------- budgets


def test_budget_modes_parse_and_bad_values_are_refused():
    assert parse_length_mode("prefix:4") == LengthMode("prefix", n=4)
    assert str(parse_length_mode("CAP:3")) == "cap:3"
    assert str(parse_length_mode("quality:0.25")) == "quality:0.25"
    for bad in ("prefix:x", "prefix:1.5", "cap:", "prefix:0", "quality:-1", "budget:4"):
        with pytest.raises(LengthModeError, match="--length-mode"):
            parse_length_mode(bad)
    cfg = ModelConfig.from_preset("tiny", teacher="pixels", l_max=8, l_min=2)
    check_length_mode(parse_length_mode("prefix:8"), cfg)
    for bad in ("prefix:9", "cap:1"):
        with pytest.raises(LengthModeError, match=r"\[L_min, L_max\] = \[2, 8\]"):
            check_length_mode(parse_length_mode(bad), cfg)
    with pytest.raises(LengthModeError, match="model.quality_head=true"):
        check_length_mode(parse_length_mode("quality:0.1"), cfg)


def test_prefix_writes_exactly_n_codes_and_records_the_mode(trained: Path, tmp_path: Path):
    path = export_programs(trained, "val", "prefix:4", out=tmp_path / "p.parquet", progress=False)
    programs = read_programs(path)
    assert programs.lengths.tolist() == [4] * len(programs)
    assert programs.meta["length_mode"] == "prefix:4"
    result = evaluate_run(trained, "val", "prefix:4", write=False, progress=False, lpips=False)
    assert result["length_mode"] == "prefix:4" and result["length_min"] == result["length_max"] == 4
    analysis = analyze_run(
        trained, "val", n_images=1, n_random_pairs=4, length_mode="prefix:4", progress=False
    )
    assert analysis["length_mode"] == "prefix:4"


def test_cap_never_exceeds_n_and_equals_the_head_where_it_is_shorter(trained: Path, tmp_path):
    head = read_programs(
        export_programs(trained, "train", "head", out=tmp_path / "h.parquet", progress=False)
    )
    saw_shorter = saw_capped = False
    for n in range(1, L_MAX + 1):
        path = export_programs(
            trained, "train", f"cap:{n}", out=tmp_path / "c.parquet", progress=False
        )
        capped = read_programs(path)
        assert capped.meta["length_mode"] == f"cap:{n}"
        assert (capped.lengths <= n).all()
        shorter = head.lengths < n
        assert (capped.lengths[shorter] == head.lengths[shorter]).all()
        assert (capped.lengths[~shorter] == n).all()
        for h, c in zip(head.codes, capped.codes, strict=True):  # the same program, cut
            assert np.array_equal(c, h[: len(c)])
        saw_shorter |= bool(shorter.any())
        saw_capped |= bool((~shorter).any())
    assert saw_shorter and saw_capped


@pytest.mark.parametrize("mode", ["prefix:99", "quality:0.1"])
def test_cli_refuses_bad_budgets_in_one_line_with_exit_2(trained: Path, mode: str):
    done = _cli("export", str(trained), "--length-mode", mode)
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --length-mode"), done.output


# --------------------------------------------------------------------------- sweep


def test_sweep_lengths_grid():
    assert parse_sweep_lengths(None, 1, 4) == [1, 2, 3, 4]
    assert parse_sweep_lengths("1, 3-4,2", 1, 8) == [1, 2, 3, 4]
    for bad in ("0,2", "9", "a", "2-x"):
        with pytest.raises(SweepLengthsError, match="--sweep-lengths"):
            parse_sweep_lengths(bad, 1, 8)


def test_count_probe_recovers_a_linear_count_and_not_noise():
    rng = np.random.default_rng(0)
    counts = rng.integers(3, 11, 200)
    informative = np.stack([counts + rng.normal(0, 0.3, 200), rng.normal(size=200)], axis=1)
    noise = rng.normal(size=(200, 2))
    assert count_probe_r2(informative, counts) > 0.9
    assert count_probe_r2(noise, counts) < 0.1
    assert count_probe_r2(noise[:5], counts[:5]) is None  # too few images


def test_sweep_writes_curves_and_operating_points_and_the_report_draws_them(trained: Path):
    sweep = sweep_run(trained, split="train", progress=False, lpips=False)
    on_disk = read_json(trained / "sweep.json")
    assert on_disk["lengths"] == list(range(1, L_MAX + 1)) == [r["n"] for r in on_disk["rows"]]
    assert set(on_disk["operating_points"]) == {"head", "fixed", "search"}
    cos = [r["cos"] for r in sweep["rows"]]
    assert all(b >= a - COS_TOL for a, b in zip(cos, cos[1:])), cos
    for row in sweep["rows"]:
        assert row["bits_per_image"] == row["n"] * 4  # K = 16
        assert row["ssim"] is not None and row["count_probe_r2"] is not None
    points = sweep["operating_points"]
    assert points["fixed"]["cos"] == pytest.approx(sweep["rows"][-1]["cos"], abs=1e-5)
    head = evaluate_run(trained, "train", "head", write=False, progress=False, lpips=False)
    assert points["head"]["length_mean"] == head["length_mean"]
    assert points["search"]["eps"] == pytest.approx(points["head"]["align_error"])

    md, html = build_report(trained.parent)
    text = md.read_text()
    assert "## Length control" in text and "figures/length_quality.png" in text
    assert (trained.parent / "figures" / "length_quality.png").is_file()
    assert "data:image/png;base64" in html.read_text() and "Length control" in html.read_text()


def test_cli_sweep_with_a_grid(trained: Path, tmp_path: Path):
    done = _cli(
        "eval",
        str(trained),
        "--split",
        "train",
        "--sweep",
        "--sweep-lengths",
        "2,4",
        "--limit",
        "8",
        "--no-lpips",
    )
    assert done.exit_code == 0, done.output
    assert [r["n"] for r in read_json(trained / "sweep.json")["rows"]] == [2, 4]
    bad = _cli("eval", str(trained), "--sweep", "--sweep-lengths", "0")
    assert bad.exit_code == 2 and bad.output.strip().startswith("error: --sweep-lengths")


def test_strop_sweep_is_its_own_command_and_eval_sweep_its_alias(trained: Path):
    """`strop sweep RUN` and `strop eval RUN --sweep` print and write the same; the alias
    refuses eval's own options in one line, named in eval's order."""
    args = ["--split", "train", "--sweep-lengths", "2,4", "--limit", "8", "--no-lpips"]
    alias = _cli("eval", str(trained), "--sweep", *args)
    rows = read_json(trained / "sweep.json")["rows"]
    own = _cli("sweep", str(trained), *args)
    assert alias.exit_code == own.exit_code == 0, alias.output + own.output
    assert own.output == alias.output and "-> " in own.output
    assert read_json(trained / "sweep.json")["rows"] == rows
    eval_only = ["--order-probe", "5", "--length-mode", "head", "--lpips-lin", "x"]
    bad = _cli("eval", str(trained), "--sweep", *eval_only)
    assert bad.exit_code == 2
    assert bad.output.strip() == (
        "error: --length-mode, --lpips-lin, --order-probe do not apply with --sweep (it scores "
        "every prefix:N and the head, fixed and search:EPS points)"
    )
    assert _cli("sweep", str(trained), "--length-mode", "head").exit_code == 2  # no such option
    lonely = _cli("eval", str(trained), "--sweep-eps", "0.1")
    assert lonely.exit_code == 2
    assert lonely.output.strip() == "error: --sweep-lengths/--sweep-eps need --sweep"


# --------------------------------------------------------------------------- quality head


#: How far a default run's logged metrics may sit from GOLDEN and still be "the same run".
#: GOLDEN was written on one x86 CPU; another CPU's kernels (AVX-512/AMX vs AVX2) round
#: differently: on this project's AMD EPYC (AVX-512) the 16-step run drifts from it by at most
#: 0.6% relative (pixel_grad_norm, step 14), as an Intel Xeon with AVX-512/AMX was reported to
#: at its first step. A real change of the default run moves far more: the same run from
#: another init seed has 94 of its ~150 logged numbers beyond this tolerance (measured
#: 2026-12-07; test_golden_tolerance_catches_a_real_change asks for at least 20).
GOLDEN_RTOL = 0.03
GOLDEN_ATOL = 1e-3
#: Logged values that no rounding can move: the schedule, not the numerics.
GOLDEN_EXACT = ("step", "phase", "lr", "w_div")


def golden_mismatches(rows: list[dict], golden: list[dict]) -> list[str]:
    """Where `rows` (a run's metrics, timing columns removed) are not GOLDEN's run: a key or
    row missing, a schedule value changed, a number beyond GOLDEN_RTOL/GOLDEN_ATOL."""
    if len(rows) != len(golden):
        return [f"{len(rows)} rows vs {len(golden)}"]
    bad = []
    for row, gold in zip(rows, golden):
        if row.keys() != gold.keys():
            bad.append(f"step {gold.get('step')}: keys {sorted(row.keys() ^ gold.keys())}")
            continue
        for key, want in gold.items():
            got = row[key]
            if key in GOLDEN_EXACT or not isinstance(want, float):
                ok = got == want
            else:
                ok = isinstance(got, (int, float)) and abs(got - want) <= max(
                    GOLDEN_ATOL, GOLDEN_RTOL * abs(want)
                )
            if not ok:
                bad.append(f"step {gold['step']} {key}: {got} vs {want}")
    return bad


def _metrics(run: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in TIMING_KEYS}
        for row in RunFolder(run).read_metrics()
    ]


def test_default_run_metrics_match_the_code_before_the_quality_head(trained):
    """GOLDEN was written by the code before the quality head (same config, same data, timing
    columns removed); a default run must reproduce it, up to the rounding of this CPU."""
    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert golden_mismatches(_metrics(trained), golden) == []


def test_golden_tolerance_catches_a_real_change(clevr, tmp_path):
    """The tolerance has teeth: the same run from another init seed is not GOLDEN's run."""
    torch.set_num_threads(1)
    cfg = tiny_run_config(clevr, "train.steps=16", *BASE_SETS, "train.seed=1")
    other = train(cfg, tmp_path / "k16", progress=False)
    golden = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert len(golden_mismatches(_metrics(other), golden)) >= 20


def test_default_model_has_no_quality_head_and_the_same_weights():
    torch.manual_seed(0)
    plain = build_model(ModelConfig.from_preset("tiny", teacher="pixels"))
    torch.manual_seed(0)
    conditioned = build_model(ModelConfig.from_preset("tiny", teacher="pixels", quality_head=True))
    assert plain.quality_head is None and not any("quality" in k for k in plain.state_dict())
    shared = conditioned.state_dict()
    for key, value in plain.state_dict().items():
        if key != "_extra_state":
            assert torch.equal(value, shared[key]), key  # built last: nothing else moves


def test_quality_head_length_never_grows_with_eps():
    torch.manual_seed(1)
    head = QualityHead(d=16, l_min=1, l_max=32)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 1.0)
        log_curve = head(torch.randn(64, 16))  # any curve, monotone or not
    eps = torch.logspace(-30, 30, 61)
    lengths = torch.stack([head.lengths(log_curve, e) for e in eps], dim=1)  # (64, 61)
    assert (lengths[:, 1:] <= lengths[:, :-1]).all()
    assert lengths.min() >= 1 and lengths.max() <= 32
    assert (lengths[:, 0] == 32).all() and (lengths[:, -1] == 1).all()  # none / every length


def test_the_quality_head_has_its_own_optimiser_group_decaying_from_phase_3(clevr):
    from strop.training.optim import build_optimizer, build_scheduler

    cfg = tiny_run_config(clevr, *conditioned_sets(100), "curriculum.phase_steps=10,40,60,80")
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg, fused=False)
    assert len(optimizer.param_groups) == 4
    assert {id(p) for p in optimizer.param_groups[3]["params"]} == {
        id(p) for p in model.quality_head.parameters()
    }
    factors = [f(s) for f in build_scheduler(optimizer, cfg).lr_lambdas for s in (40, 99)]
    assert factors[6] == 1.0 and factors[7] < 0.2  # peak at phase 3's start, decayed at the end
    # the length head keeps its peak when head_constant_lr, else follows the main groups
    assert factors[4:6] == ([1.0, 1.0] if cfg.train.head_constant_lr else factors[0:2])
    plain_cfg = tiny_run_config(clevr, *conditioned_sets(100)[:-1])
    assert len(build_optimizer(build_model(plain_cfg.model), plain_cfg, False).param_groups) == 3


def test_shortest_reaching_is_the_search_rule():
    errors = torch.tensor([[0.8, 0.5, 0.4, 0.45, 0.2], [0.3, 0.3, 0.3, 0.3, 0.3]])
    assert shortest_reaching(errors, 0.45, 1).tolist() == [3, 1]
    assert shortest_reaching(errors, 0.1, 1).tolist() == [5, 5]  # none reaches it: the longest
    assert shortest_reaching(errors, torch.tensor([0.5, 0.29]), 2).tolist() == [3, 6]  # per row
    assert shortest_reaching(errors, float("inf"), 1).tolist() == [1, 1]


def test_default_eps_spread_the_searchs_mean_length_over_its_range():
    from strop.evaluation.quality_calibration import default_eps

    rng = np.random.default_rng(0)
    # 300 images whose curves fall from a per-image level to a per-image floor, plus noise
    level, floor = rng.uniform(0.5, 0.9, (300, 1)), rng.uniform(0.1, 0.4, (300, 1))
    decay = np.exp(-np.arange(16)[None, :] / rng.uniform(1, 6, (300, 1)))
    errors = floor + (level - floor) * decay + rng.normal(0, 0.005, (300, 16))
    eps = default_eps(errors, l_min=1)
    assert len(eps) == 6 and eps == sorted(eps) and len(set(eps)) == 6
    means = [float(shortest_reaching(torch.from_numpy(errors), e, 1).double().mean()) for e in eps]
    steps = -np.diff([16.0, *means, 1.0])  # from the longest answer down to the shortest
    np.testing.assert_allclose(steps, np.full(7, 15 / 7), atol=0.3)


def test_error_curve_targets_are_the_measured_cells():
    bank = ErrorCurveBank(size=3, l_min=1, l_max=5, decay=0.5)
    # Image 0 measured at 1, 3, 5; image 1 only once (too few cells); image 2 never.
    bank.update(
        torch.tensor([0, 0, 0, 1]), torch.tensor([1, 3, 5, 2]), torch.tensor([0.8, 0.4, 0.2, 0.5])
    )
    bank.update(torch.tensor([0]), torch.tensor([3]), torch.tensor([0.6]))
    assert float(bank.errors[0, 2]) == pytest.approx(0.5)  # blended with decay 0.5
    log_target, mask = curve_targets(bank, torch.tensor([0, 1, 2]), min_cells=2)
    assert mask.tolist() == [
        [True, False, True, False, True],
        [False] * 5,  # one measured cell: below min_cells
        [False] * 5,
    ]
    np.testing.assert_allclose(log_target[0, [0, 2, 4]].exp(), [0.8, 0.5, 0.2], rtol=1e-6)
    perfect = log_target.clone()
    assert float(curve_loss(perfect, log_target, mask)) == 0.0
    off = perfect + torch.where(mask, 0.5, 100.0)  # unmeasured cells never count
    assert float(curve_loss(off, log_target, mask)) == pytest.approx(0.25)
    assert float(curve_loss(off, log_target, torch.zeros_like(mask))) == 0.0  # none: no loss


def conditioned_sets(steps: int) -> list[str]:
    return [f"train.steps={steps}", *BASE_SETS, "model.quality_head=true"]


def test_conditioned_run_trains_the_head_and_eval_reports_quality_control(clevr, tmp_path, trained):
    run = train(tiny_run_config(clevr, *conditioned_sets(16)), tmp_path / "k16", progress=False)
    rows = [r for r in RunFolder(run).read_metrics() if "loss" in r]
    assert any("quality_curve_loss" in r for r in rows)
    assert all(("quality_curve_loss" in r) <= (r["phase"] >= 3) for r in rows)
    # The head's gradients reach nothing else (own optimiser group, own clip): the tokenizer
    # trains step for step as the same run without the head does.
    plain = [r for r in RunFolder(trained).read_metrics() if "loss" in r]
    tokenizer_keys = ("align_loss", "commit_loss", "diversity_loss", "length_loss", "grad_norm")
    assert [[r.get(k) for k in tokenizer_keys] for r in rows] == [
        [r.get(k) for k in tokenizer_keys] for r in plain
    ]
    export_programs(run, "val", "quality:0.5", out=tmp_path / "q.parquet", progress=False)
    assert read_programs(tmp_path / "q.parquet").meta["length_mode"] == "quality:0.5"
    result = evaluate_run(run, "train", write=True, progress=False, lpips=False)
    block = result["quality_control"]
    assert len(block["rows"]) >= 5 and block["quality_passes"] == 1
    assert block["search_passes"] == L_MAX
    assert [r["eps"] for r in block["rows"]] == sorted(r["eps"] for r in block["rows"])
    lengths = [r["quality_length_mean"] for r in block["rows"]]
    assert all(b <= a for a, b in zip(lengths, lengths[1:]))  # monotone by construction
    md, _ = build_report(run)
    assert "quality_calibration.png" in md.read_text()


def test_conditioned_run_resumes_bit_identically(clevr, tmp_path):
    """The error-curve bank and the head's log-eps statistics are checkpointed."""
    cfg = tiny_run_config(clevr, *conditioned_sets(16))

    def rows(run: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in RunFolder(run).read_metrics()
        ]

    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "resumed", progress=False, stop_at=10)
    resumed = train(cfg, tmp_path / "resumed", progress=False)
    assert rows(resumed) == rows(straight)


# --------------------------------------------------------------------------- calibration

#: |mean length of quality:EPS - mean length of search:EPS| allowed, in tokens, at every EPS
#: (L_max 8). Measured: at most 1.0. The search thresholds curves whose floor is flat to about
#: 1%, so a cell predicted 1% off moves that image's length by several tokens; the means agree
#: far better than single images do (mean per-image |difference| 0.7-1.4 tokens).
SEARCH_AGREEMENT_TOKENS = 1.25
CALIBRATION_SETS = [
    "train.steps=400", "train.lr=2e-3", "train.warmup_steps=20", "train.hold_steps=200",
    "train.head_lr_mult=10", "train.num_workers=0", "train.val_every=0", "train.log_every=50",
    "train.checkpoint_every=100000", "train.pixel_decoder=false", "model.image_size=32",
    "model.l_max=8", "model.decoder_width=16", "model.div_warmup_steps=40",
    "model.quality_head=true", "curriculum.phase_steps=150,200,400,400",
    "curriculum.probe_radius=1", "data.max_train_images=16",
]  # fmt: skip


@pytest.fixture(scope="module")
def calibration_run(clevr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conditioned run on 16 training images (small enough for its programs to carry each
    image, so longer prefixes do lower the error), ending in phase 3, where lengths are still
    random and the oracle probes every length. About 30 s of training on an idle 2-core
    machine."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("calibration") / "k16"
    return train(tiny_run_config(clevr, *CALIBRATION_SETS, batch_size=16), out, progress=False)


@pytest.fixture(scope="module")
def calibration(calibration_run: Path) -> dict:
    """eval.json's quality_control block of `calibration_run`, measured on its 16 training
    images in one batch: the head is asked to reproduce the search's answers on the curves it
    was trained from (the quickstart-scale check on held-out images is in BENCHMARKS.md)."""
    result = evaluate_run(
        calibration_run, "train", limit=16, write=False, progress=False, lpips=False
    )
    return result["quality_control"]


def test_quality_calibration_streams_the_split(calibration_run, calibration, monkeypatch):
    """The calibration holds no batch's features once the next batch is encoded (it used to
    keep the whole split's features and tokens on the device), and 4 batches of 4 images
    give the block that one batch of 16 gives."""
    import weakref

    import strop.evaluation.evaluate as evaluate

    alive: list[weakref.ref] = []
    peak = 0

    def tracked(*args, **kwargs):
        nonlocal peak
        gc.collect()
        peak = max(peak, sum(ref() is not None for ref in alive))
        enc = real(*args, **kwargs)
        alive.extend([weakref.ref(enc.feats), weakref.ref(enc.tokens)])
        return enc

    real = evaluate.encode_batch
    monkeypatch.setattr(evaluate, "encode_batch", tracked)
    result = evaluate_run(
        calibration_run, "train", limit=16, batch_size=4, write=False, progress=False,
        lpips=False, order_probe_images=0,
    )  # fmt: skip
    block = result["quality_control"]
    assert len(alive) == 8 and peak == 0, f"{peak} tensors of earlier batches still held"
    assert block["n_images"] == calibration["n_images"] == 16
    assert [r["eps"] for r in block["rows"]] == pytest.approx(
        [r["eps"] for r in calibration["rows"]], rel=0.05
    )
    for streamed, whole in zip(block["rows"], calibration["rows"], strict=True):
        for key in ("quality_length_mean", "search_length_mean"):
            assert streamed[key] == pytest.approx(whole[key], abs=0.25), (key, streamed, whole)


def test_quality_eps_lengths_fall_with_eps_and_agree_with_the_search(calibration: dict):
    rows = calibration["rows"]
    assert len(rows) >= 5
    lengths = [r["quality_length_mean"] for r in rows]
    assert all(b <= a for a, b in zip(lengths, lengths[1:])) and lengths[-1] < lengths[0], rows
    for r in rows:
        assert abs(r["quality_length_mean"] - r["search_length_mean"]) <= SEARCH_AGREEMENT_TOKENS, r
    assert calibration["quality_passes"] == 1 and calibration["search_passes"] == L_MAX
    assert calibration["search_over_quality_time"] > 1.0


def test_quality_eps_achieved_error_is_monotone_in_the_requested_eps(calibration: dict):
    assert calibration["spearman_requested_vs_achieved"] >= 0.9, calibration["rows"]


@pytest.mark.slow
def test_conditioned_ddp_run_gathers_every_ranks_probes(clevr, tmp_path):
    """Two gloo processes: every rank's three probe rows reach the error-curve bank."""
    import os
    import subprocess
    import sys

    from helpers import trainer_cli_args as cli_args

    from strop.training import checkpoint as ckpt

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29500 + (os.getpid() + 7) % 1000), "-m", "strop.cli"]
    cmd += cli_args(clevr, out, 8, "model.quality_head=true")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = ckpt.load_checkpoint(out / "checkpoints" / "last.pt")
    # oracle steps 3..7 (phase 2 on), 2 ranks x 4 images x 3 probe rows each; a probe clamped
    # onto its main length (L - r < L_min) lands in the same cell in the same update, once
    visits = int(state["curriculum"]["curves"]["visits"].sum())
    assert 5 * 4 * 3 < visits <= 5 * 2 * 4 * 3


def test_sweep_refuses_an_order_probe_and_quality_eps_values_are_capped(trained):
    from strop.model.length_modes import MAX_QUALITY_EPS, parse_eps_values

    bad = _cli("eval", str(trained), "--sweep", "--order-probe", "5")
    assert bad.exit_code == 2 and "--order-probe" in bad.output and "--sweep" in bad.output
    many = ",".join(str(0.01 * (i + 1)) for i in range(MAX_QUALITY_EPS + 1))
    with pytest.raises(LengthModeError, match=f"at most {MAX_QUALITY_EPS}"):
        parse_eps_values(many)
    assert len(parse_eps_values(",".join(many.split(",")[:MAX_QUALITY_EPS]))) == MAX_QUALITY_EPS


# --------------------------------------------------------------------------- bad modes and grids


@pytest.mark.parametrize("mode", ["prefix:4_0", "cap:1_0", "prefix:\uff13", "prefix:0x3"])
def test_budgets_take_plain_integers_only(mode: str) -> None:
    """int() reads "4_0" as 40 and full-width digits as digits; a budget is typed in ASCII."""
    with pytest.raises(LengthModeError, match="N must be an integer"):
        parse_length_mode(mode)


@pytest.mark.parametrize("mode", ["quality:1_0", "search:nan", "quality:Infinity", "search:0x1"])
def test_eps_takes_plain_decimal_numbers_only(mode: str) -> None:
    with pytest.raises(LengthModeError, match="EPS must be a number"):
        parse_length_mode(mode)


def test_spelling_that_is_fine_still_parses() -> None:
    assert str(parse_length_mode(" PREFIX:3 ")) == "prefix:3"
    assert str(parse_length_mode("cap:+2")) == "cap:2"
    assert str(parse_length_mode("quality:.5")) == "quality:0.5"
    assert str(parse_length_mode("search:2E-1")) == "search:0.2"
    with pytest.raises(LengthModeError, match="at least 1, got -3"):
        parse_length_mode("prefix:-3")


def test_quality_eps_values() -> None:
    assert length_modes.parse_eps_values("0.3, 0.1,0.3,0.2") == [0.1, 0.2, 0.3]
    for bad in ("0.1,inf", "nan,0.1", "0.1,1_0", "0.1", "0.1,0.1", ",,", "-1,2"):
        with pytest.raises(LengthModeError, match="--quality-eps"):
            length_modes.parse_eps_values(bad)


def test_quality_eps_of_infinity_is_refused_not_written_as_json_infinity(tiny_run: Path) -> None:
    line = one_error_line(strop("eval", tiny_run, "--quality-eps", "0.1,inf"), 2)
    assert "--quality-eps 0.1,inf" in line and "'inf'" in line
    assert not (tiny_run / "eval.json").exists()


def test_quality_eps_on_a_run_without_the_head_is_refused_not_ignored(tiny_run: Path) -> None:
    line = one_error_line(strop("eval", tiny_run, "--quality-eps", "0.1,0.2", "--no-lpips"), 2)
    assert "--quality-eps" in line and "no eps-conditioned length head" in line
    assert not (tiny_run / "eval.json").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--length-mode", "prefix:3"],
        ["--quality-eps", "0.1,0.2"],
        ["--lpips-backbone", "alexnet.pth"],
    ],
)
def test_sweep_refuses_options_it_would_ignore(tiny_run: Path, extra: list[str]) -> None:
    line = one_error_line(strop("eval", tiny_run, "--sweep", *extra), 2)
    assert extra[0] in line and "--sweep" in line
    assert not (tiny_run / "sweep.json").exists()


def test_a_huge_sweep_range_is_refused_at_once(tiny_run: Path) -> None:
    start = time.monotonic()
    with pytest.raises(SweepLengthsError, match="got 100000000000"):
        parse_sweep_lengths("1-100000000000", 1, 8)
    line = one_error_line(
        strop("eval", tiny_run, "--sweep", "--sweep-lengths", "2,1-100000000000"), 2
    )
    assert "1-100000000000" in line and "[1, 8]" in line
    assert time.monotonic() - start < 30  # the old parser built a set of 10^11 ints


@pytest.mark.parametrize(
    ("grid", "says"),
    [
        ("8-1", "range 8-1 is empty"),
        ("1--3", "expected integers or ranges"),
        ("", "--sweep-lengths '': expected integers"),
        (" ", "--sweep-lengths ' ': expected integers"),
        ("0,2", "got 0"),
        ("9", "got 9"),
        ("1_0", "expected integers"),
    ],
)
def test_bad_sweep_grids(grid: str, says: str) -> None:
    with pytest.raises(SweepLengthsError, match="--sweep-lengths") as err:
        parse_sweep_lengths(grid, 1, 8)
    assert says in str(err.value)


def test_duplicate_and_unsorted_grids_are_read_as_a_set() -> None:
    assert parse_sweep_lengths("8, 3,3,2-4", 1, 8) == [2, 3, 4, 8]
    assert parse_sweep_lengths(None, 2, 5) == [2, 3, 4, 5]


def test_analyze_refused_mode_leaves_no_output_folder(tiny_run: Path) -> None:
    line = one_error_line(strop("analyze", tiny_run, "--length-mode", "prefix:99"), 2)
    assert "[L_min, L_max] = [1, 8]" in line
    assert not (tiny_run / "analysis").exists()
