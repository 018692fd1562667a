"""The whole STROP pipeline on the embedded default, as one job: `strop quickstart`.

Stages (each skipped when its output already exists, so an interrupted quickstart resumes):
1. render CLEVR-like scenes (`strop.data.renderer.generate_dataset`);
2. train STROP for every codebook size (tiny preset, offline teacher, compressed curriculum),
   plus the fixed-length baseline at one K (paper Table 15) for the report's comparison;
3. export programs of the train and val splits (`programs.parquet`);
4. evaluate each run on val (`eval.json`, with the token-order probe) and analyse a few
   images (`analysis/`, with FG-ARI and mBO against the renderer's instance masks);
5. mine the grammar of every run (`strop-grammar mine`);
6. decode scenes with the naive and knn baselines, and an LLM when `--base-url` is given
   (`strop-llm decode`), answer CLEVR-style questions with the naive and knn baselines
   (`strop-llm qa`), then the decoding and QA tables (`strop-llm report`);
7. write `report.md` and `report.html` over the experiment.

Design decisions
- `grammar` and `llm_decode` run as their own console scripts, in subprocesses: they meet
  `strop` only through the run folder, as a user would run them, and stay torch-free.
- The defaults are sized for 2 CPU cores in well under 20 minutes: 64 px images, the `pixels`
  teacher (8x8 patches), the `tiny` preset, L_max 16, 1200 steps with the four curriculum
  phases compressed into them. `QuickstartConfig` holds every such choice.
- Reproducible on CPU: data, training and decoding are seeded, the DataLoader runs in the main
  process (no worker order), and torch's intra-op thread count is fixed (`threads`, default
  1), because floating-point sums split over a different number of threads round
  differently: two trainings of the same run with 1 thread give bit-identical weights, with 2
  threads they differ from the 1-thread ones after 20 steps. One thread also keeps the
  tiny model's speed when other processes share the cores (two threads that wait for each
  other stall when either is descheduled). A different CPU (instruction set, BLAS kernels)
  can still round differently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from strop.runs import RunFolder, discover_runs

console = Console()


class QuickstartConfig(BaseModel):
    """Sizes of the quickstart; defaults fit 2 CPU cores in about 15 minutes."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(
        Path("runs/quickstart"), description="Output folder (data/ and clevr/ inside)."
    )
    n_images: int = Field(2000, ge=20, description="Scenes rendered (80/10/10 train/val/test).")
    image_size: int = Field(64, ge=16, description="Rendered and trained image size.")
    ks: tuple[int, ...] = Field((32, 64, 128), description="Codebook sizes, one run each.")
    teacher: str = Field("pixels", description="Offline teacher: pixels or random-vit.")
    preset: str = Field("tiny", description="Model preset.")
    l_max: int = Field(16, ge=2, description="Longest program.")
    steps: int = Field(1200, ge=8, description="Training steps per run.")
    batch_size: int = Field(32, ge=1, description="Training batch size.")
    seed: int = Field(0, description="Seed of data, training and decoding.")
    threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads for training and evaluation; fixed so that the "
        "figures do not depend on the machine's core count.",
    )
    shots: int = Field(50, ge=1, description="Few-shot pool of the decoders.")
    test: int = Field(15, ge=1, description="Held-out images decoded.")
    analyze_images: int = Field(8, ge=0, description="Images in `strop analyze` (0 skips it).")
    fixed_k: int | None = Field(
        64,
        ge=2,
        description="Also train the fixed-length baseline (all L_max tokens, no head; paper "
        "Table 15) at this K, as run `k<K>-fixed`, for the report's fixed-vs-curriculum table.",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint for LLM decoding.")
    llm_model: str = Field("qwen3.5", description="Model preset or served id for --base-url.")

    def phase_steps(self) -> tuple[int, int, int, int]:
        """Curriculum phase ends as shares of the run (random 40%, oracle 25%, head 15%, handoff 10%)."""
        s = self.steps
        return (round(0.40 * s), round(0.65 * s), round(0.80 * s), round(0.90 * s))


def run_config(qc: QuickstartConfig, k: int, data_dir: Path, fixed: bool = False):
    """The RunConfig of one quickstart run (imports torch-side configs lazily)."""
    from strop.model import ModelConfig
    from strop.training.config import DataConfig, RunConfig, TrainConfig
    from strop.training.curriculum import CurriculumConfig

    s = qc.steps
    return RunConfig(
        model=ModelConfig.from_preset(
            qc.preset,
            teacher=qc.teacher,
            k=k,
            l_max=qc.l_max,
            image_size=qc.image_size,
            div_warmup_steps=s // 4,
        ),
        curriculum=CurriculumConfig(
            phase_steps=qc.phase_steps(), length_mode="fixed" if fixed else "adaptive"
        ),
        train=TrainConfig(
            steps=s,
            batch_size=qc.batch_size,
            lr=1e-3,
            warmup_steps=max(1, s // 20),
            hold_steps=s // 2,
            seed=qc.seed,
            num_workers=0,
            pixel_batch=8,
            # The compressed curriculum gives the head ~400 steps (phases 3-5): at the main rate it
            # stays near the mean target; 10x lets it follow the per-image targets.
            head_lr_mult=10.0,
            log_every=max(1, s // 100),
            val_every=max(1, s // 4),
            val_batches=2,
            checkpoint_every=max(1, s // 4),
            keep_checkpoints=1,
        ),
        data=DataConfig(path=str(data_dir)),
    )


def _stage(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def _run_cli(args: list[str]) -> None:
    """Run one of our console scripts (next to this interpreter), streaming its output."""
    exe = Path(sys.executable).with_name(args[0])
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    console.print(f"[dim]$ {' '.join(cmd)}[/]")
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited with status {done.returncode}")


def _has_scenes(data_dir: Path) -> bool:
    return all((data_dir / "scenes" / f"CLEVR_{s}_scenes.json").is_file() for s in ("train", "val"))


def stage_data(qc: QuickstartConfig, data_dir: Path) -> None:
    from strop.data.renderer import generate_dataset

    _stage("1/7 data: CLEVR-like scenes")
    if _has_scenes(data_dir):
        console.print(f"{data_dir}: already rendered, kept")
        return
    counts = generate_dataset(data_dir, n=qc.n_images, size=qc.image_size, seed=qc.seed)
    console.print(f"rendered {counts} into {data_dir}")


def stage_train(qc: QuickstartConfig, data_dir: Path, experiment: Path) -> list[Path]:
    from strop.training.checkpoint import list_steps
    from strop.training.trainer import train

    plan = [(k, False) for k in qc.ks] + ([(qc.fixed_k, True)] if qc.fixed_k else [])
    runs = []
    for i, (k, fixed) in enumerate(plan):
        kind = "fixed-length baseline" if fixed else "curriculum"
        _stage(
            f"2/7 train K={k} {kind} ({i + 1}/{len(plan)}): {qc.preset} preset, {qc.teacher} teacher"
        )
        run_dir = experiment / (f"k{k}-fixed" if fixed else f"k{k}")
        steps_done = [s for s, _ in list_steps(run_dir)] if run_dir.exists() else []
        if steps_done and max(steps_done) >= qc.steps:
            console.print(f"{run_dir}: trained to step {max(steps_done)}, kept")
        else:
            train(run_config(qc, k, data_dir, fixed=fixed), run_dir, progress=True)
        runs.append(run_dir)
    return runs


def stage_export_eval(qc: QuickstartConfig, runs: list[Path]) -> None:
    from strop.evaluation.analyze import analyze_run
    from strop.evaluation.evaluate import evaluate_run
    from strop.evaluation.export import export_programs

    for run_dir in runs:
        run = RunFolder(run_dir)
        _stage(f"3/7 export programs: {run.name}")
        if not run.programs_path.is_file():
            export_programs(run_dir, split="train,val")
        _stage(f"4/7 evaluate and analyse: {run.name}")
        if not run.eval_path.is_file():
            evaluate_run(run_dir, split="val")
        if qc.analyze_images and not (run_dir / "analysis" / "analysis.json").is_file():
            analyze_run(run_dir, n_images=qc.analyze_images)


def stage_grammar(experiment: Path, seed: int) -> None:
    _stage("5/7 grammar: n-grams, pairs, nulls, Re-Pair")
    _run_cli(["strop-grammar", "mine", str(experiment), "--seed", str(seed)])


def stage_decode(qc: QuickstartConfig, experiment: Path) -> None:
    common = [
        "--runs",
        str(experiment),
        "--shots",
        str(qc.shots),
        "--test",
        str(qc.test),
        "--seed",
        str(qc.seed),
    ]
    for k in qc.ks:
        _stage(f"6/7 decode scenes and answer questions from codes: K={k}")
        for backend in ("naive", "knn"):
            _run_cli(["strop-llm", "decode", "--backend", backend, "--k", str(k), *common])
            _run_cli(["strop-llm", "qa", "--backend", backend, "--k", str(k), *common])
        if qc.base_url:
            _run_cli(["strop-llm", "decode", "--backend", "openai", "--model", qc.llm_model,
                      "--base-url", qc.base_url, "--k", str(k), *common])  # fmt: skip
    _run_cli(["strop-llm", "report", "--runs", str(experiment)])


def stage_report(experiment: Path) -> tuple[Path, Path]:
    from strop.evaluation.report import build_report

    _stage("7/7 report")
    return build_report(experiment)


def paper_scale_hint() -> str | None:
    """How to run the paper's CLEVR configuration, when a GPU and DINOv3 weights are here."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from huggingface_hub import try_to_load_from_cache

    from strop.model.teachers import DINOV3_IDS

    if not isinstance(try_to_load_from_cache(DINOV3_IDS["dinov3-s"], "config.json"), str):
        return (
            f"A GPU ({torch.cuda.get_device_name(0)}) is here but no DINOv3-S weights were found in "
            "the Hugging Face cache: fetch facebook/dinov3-vits16-pretrain-lvd1689m once, then run "
            "the paper-scale configuration (README, 'Paper scale')."
        )
    return (
        f"A GPU ({torch.cuda.get_device_name(0)}) and DINOv3-S weights are here: run the paper-scale "
        "CLEVR configuration with `strop train --config configs/clevr-dino-s.json --data "
        "CLEVR_v1.0 --k 128 --out runs/clevr/k128` (README, 'Paper scale')."
    )


def quickstart(qc: QuickstartConfig) -> Path:
    """Run every stage; returns the experiment folder holding the report."""
    start = time.perf_counter()
    out = qc.out
    data_dir, experiment = out / "data", out / "clevr"
    experiment.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _fix_threads(qc.threads)
    stage_data(qc, data_dir)
    runs = stage_train(qc, data_dir, experiment)
    stage_export_eval(qc, runs)
    stage_grammar(experiment, qc.seed)
    stage_decode(qc, experiment)
    md, html = stage_report(experiment)
    minutes = (time.perf_counter() - start) / 60
    console.rule("[bold green]done")
    _print_summary(experiment)
    console.print(f"report: {md}\n        {html}\nquickstart took {minutes:.1f} min")
    hint = paper_scale_hint()
    if hint:
        console.print(f"[yellow]{hint}[/]")
    return experiment


def _fix_threads(threads: int) -> None:
    """Pin torch's intra-op threads (see the module docstring: the figures depend on it)."""
    import torch

    torch.set_num_threads(threads)
    console.print(f"[dim]torch intra-op threads: {threads} (--threads)[/]")


def _print_summary(experiment: Path) -> None:
    """The headline numbers per K, from the files the stages wrote."""
    from rich.table import Table

    from strop.runs import read_json

    table = Table(title="quickstart summary (val split)")
    for col in (
        "run",
        "cos",
        "R^2",
        "CB%",
        "mean length",
        "Pearson(length, objects)",
        "naive pos MAE",
        "knn pos MAE",
    ):
        table.add_column(col)
    for run in discover_runs(experiment):
        ev = run.read_eval() if run.eval_path.is_file() else {}
        lvo = ev.get("length_vs_objects") or {}

        def mae(backend: str, run: RunFolder = run) -> str:
            path = run.llm_dir / backend / "summary.json"
            return f"{read_json(path).get('pos_mae', float('nan')):.3f}" if path.is_file() else "-"

        def f(v: object) -> str:
            return f"{v:.3f}" if isinstance(v, int | float) else "-"

        table.add_row(run.name, f(ev.get("cos")), f(ev.get("r2")), f(ev.get("cb_pct")),
                      f(ev.get("length_mean")), f(lvo.get("pearson")), mae("naive"), mae("knn"))  # fmt: skip
    console.print(table)


def clean(out: Path) -> None:
    """Remove a previous quickstart folder (used by `--fresh`)."""
    if out.exists():
        shutil.rmtree(out)
