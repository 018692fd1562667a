"""What the quickstart trains: its sizes (`QuickstartConfig`) and each run's `RunConfig`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop.cli_options import Flag

if TYPE_CHECKING:
    from strop.training.config import RunConfig


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under `taskset` or a container's
    cpuset); `os.cpu_count()` where the platform has no affinity call (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class PlannedRun(NamedTuple):
    """One run of the experiment: its folder name, codebook size and length mode."""

    name: str
    k: int
    fixed: bool


class QuickstartConfig(BaseModel):
    """Sizes of the quickstart; defaults fit 2 CPU cores in about 15 minutes."""

    model_config = ConfigDict(extra="forbid")

    # `Flag`: an option of `strop quickstart` (strop.cli_options), with the command line's help
    out: Annotated[Path, Flag(help="Output folder.")] = Field(
        Path("runs/quickstart"), description="Output folder (data/ and clevr/ inside)."
    )
    n_images: Annotated[int, Flag(help="CLEVR-like scenes to render.")] = Field(
        2000, ge=20, description="Scenes rendered (80/10/10 train/val/test)."
    )
    image_size: int = Field(64, ge=16, description="Rendered and trained image size.")
    ks: Annotated[
        tuple[int, ...],
        Flag(kind=str, default="32,64,128", help="Codebook sizes, comma-separated."),
    ] = Field((32, 64, 128), description="Codebook sizes, one run each.")
    teacher: Annotated[str, Flag()] = Field(
        "pixels", description="Offline teacher: pixels or random-vit."
    )
    preset: str = Field("tiny", description="Model preset.")
    l_max: int = Field(16, ge=2, description="Longest program.")
    steps: Annotated[int, Flag(help="Training steps per codebook size.")] = Field(
        1200, ge=8, description="Training steps per run."
    )
    batch_size: int = Field(32, ge=1, description="Training batch size.")
    seed: Annotated[int, Flag()] = Field(0, description="Seed of data, training and decoding.")
    threads: Annotated[
        int,
        Flag(help="torch threads; the figures depend on it (floating-point sums), so it is fixed."),
    ] = Field(
        1,
        ge=1,
        description="torch intra-op threads for training and evaluation; fixed so that the "
        "figures do not depend on the machine's core count.",
    )
    jobs: Annotated[
        int | None,
        Flag(
            help="Runs trained side by side, one process each with --threads threads; the "
            "figures do not depend on it. Default: one per usable core, at most one per run."
        ),
    ] = Field(
        None,
        ge=1,
        description="Runs trained (and evaluated) side by side, one worker process each; None: "
        "one per usable core (`threads` cores each), at most one per run.",
    )
    shots: int = Field(50, ge=1, description="Few-shot pool of the decoders.")
    test: int = Field(15, ge=1, description="Held-out images decoded.")
    analyze_images: int = Field(
        16,
        ge=0,
        description="Images in `strop analyze` (0 skips it; below 10 its baselines get no verdict).",
    )
    fixed_k: Annotated[
        int | None,
        Flag(
            kind=int,
            default=64,
            help="Also train the fixed-length baseline at this K (0: skip it).",
        ),
    ] = Field(
        64,
        ge=2,
        description="Also train the fixed-length baseline (all L_max tokens, no head; paper "
        "Table 15) at this K, as run `k<K>-fixed`, for the report's fixed-vs-curriculum table.",
    )
    base_url: Annotated[
        str | None, Flag(help="OpenAI-compatible endpoint: also decode with an LLM.")
    ] = Field(None, description="OpenAI-compatible endpoint for LLM decoding.")
    llm_model: Annotated[str, Flag(help="Model for --base-url.")] = Field(
        "qwen3.5", description="Model preset or served id for --base-url."
    )

    @model_validator(mode="after")
    def _enough_scenes(self) -> QuickstartConfig:
        """The decoders draw `shots` from train and `test` from val: refused here, before any
        training, rather than at stage 6 after all of it."""
        from strop.data.renderer import split_counts

        counts = split_counts(self.n_images, (0.8, 0.1, 0.1))
        if counts["val"] < self.test or counts["train"] < self.shots:
            raise ValueError(
                f"--n-images {self.n_images} renders {counts['train']} train and "
                f"{counts['val']} val scenes; the decoders need --shots {self.shots} from train "
                f"and --test {self.test} from val (use at least "
                f"{max(10 * self.test, -(-10 * self.shots // 8))} images, or fewer --shots/--test)"
            )
        return self

    def planned_runs(self) -> list[PlannedRun]:
        """The runs of the experiment: one curriculum run per K, then the fixed-length one."""
        runs = [PlannedRun(f"k{k}", k, False) for k in self.ks]
        if self.fixed_k:
            runs.append(PlannedRun(f"k{self.fixed_k}-fixed", self.fixed_k, True))
        return runs

    def worker_count(self, n_runs: int) -> int:
        """`jobs`, or the usable cores over `threads`; never more than the runs (nor under 1)."""
        wanted = self.jobs or usable_cores() // self.threads
        return max(1, min(wanted, n_runs))

    def phase_steps(self) -> tuple[int, int, int, int]:
        """Curriculum phase ends as shares of the run (random 40%, oracle 25%, head 15%, handoff 10%)."""
        s = self.steps
        return (round(0.40 * s), round(0.65 * s), round(0.80 * s), round(0.90 * s))


def run_config(qc: QuickstartConfig, k: int, data_dir: Path, fixed: bool = False) -> RunConfig:
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
