"""The whole STROP pipeline on the embedded default, as one job: `strop quickstart`.

Stages (each skipped when its output already exists, so an interrupted quickstart resumes):
1. render CLEVR-like scenes (`strop.data.renderer.generate_dataset`);
2-4. for every run, side by side in worker processes (`strop.quickstart.runs`): train STROP
   for every codebook size (tiny preset, offline teacher, compressed curriculum) plus the
   fixed-length baseline at one K (paper Table 15) for the report's comparison; export
   programs of the train and val splits (`programs.parquet`); evaluate on val (`eval.json`,
   with the token-order probe) and analyse a few images (`analysis/`, with FG-ARI and mBO
   against the renderer's instance masks);
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
  can still round differently. The runs use the cores side by side instead, one worker
  process each (`jobs`), which leaves every run's arithmetic as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from strop.quickstart.config import QuickstartConfig
from strop.quickstart.runs import QuickstartError, stage_runs
from strop.runs.folder import RunFolder, discover_runs

console = Console()


def _stage(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def _run_cli(args: list[str]) -> None:
    """Run one of our console scripts (next to this interpreter), streaming its output."""
    exe = Path(sys.executable).with_name(args[0])
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    console.print(f"[dim]$ {' '.join(cmd)}[/]")
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise QuickstartError(f"`{' '.join(args)}` exited with status {done.returncode}")


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


def stage_train_evaluate(qc: QuickstartConfig, data_dir: Path, experiment: Path) -> list[Path]:
    n = len(qc.planned_runs())
    _stage(
        f"2-4/7 train, export, evaluate and analyse {n} runs: {qc.preset} preset, {qc.teacher} teacher"
    )
    return stage_runs(qc, data_dir, experiment, console)


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
    stage_train_evaluate(qc, data_dir, experiment)
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

    from strop.runs.files import read_json

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
