"""A step the GPU can run ahead of: no training step reads a tensor back to the host except
on log steps (issue 22), counted on real tiny runs on CPU.

CPU has no sync debug mode, so `strop.testing.host_reads.count_host_reads` counts every
Python-level read of tensor values (`.item()`, `float()`, `.cpu()`, `if t:`, a boolean mask
index...). On CPU every tensor is a host tensor, so the count is an upper bound of the reads
that would wait on a GPU; the ones a step still makes are named below with why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import trainer_config as config

from strop.testing.host_reads import OPTIMIZER_SITES, HostReads, count_host_reads
from strop.training import curriculum as cur
from strop.training.host_sync import to_device
from strop.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 16  # phases 1-5 (BASE_SETS: phase_steps=3,6,9,12)
LOG_EVERY = 8
#: Long log, checkpoint and validation intervals: most steps are plain steps.
SETS = (
    f"train.log_every={LOG_EVERY}",
    "train.checkpoint_every=1000",
    "train.val_every=0",
)

#: AdamW on CPU keeps each parameter's step count as a CPU tensor and reads it (`.item()`);
#: on CUDA the trainer builds the fused AdamW, whose step counts live on the device.
OPTIMIZER = OPTIMIZER_SITES


@dataclass
class StepReads:
    step: int
    phase: int
    sites: Counter[str] = field(default_factory=Counter)


def reads_per_step(trainer: Trainer) -> list[StepReads]:
    """Train to the end with reads counted; each step gets the reads from its start to the
    next step's start (so the loop's logging after a step counts for that step)."""
    steps: list[StepReads] = []
    original = trainer.train_step

    with count_host_reads() as reads:
        mark: Counter[str] = Counter()

        def close(reads: HostReads) -> None:
            if steps:
                steps[-1].sites = reads.sites - mark
            mark.clear()
            mark.update(reads.sites)

        def step(batch):
            close(reads)
            steps.append(
                StepReads(trainer.step, cur.phase_at(trainer.step, trainer.cfg.curriculum))
            )
            return original(batch)

        trainer.train_step = step  # type: ignore[method-assign]
        trainer.fit()
        close(reads)
    return steps


def is_log_step(s: StepReads) -> bool:
    done = s.step + 1
    return done % LOG_EVERY == 0 or done == STEPS


def describe(steps: list[StepReads]) -> str:
    return "\n".join(f"step {s.step} (phase {s.phase}): {dict(s.sites)}" for s in steps)


def without(sites: Counter[str], *parts: str) -> Counter[str]:
    return Counter({k: n for k, n in sites.items() if not any(p in k for p in parts)})


@pytest.fixture(scope="module")
def default_steps(clevr: Path, tmp_path_factory: pytest.TempPathFactory) -> list[StepReads]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reads") / "default"
    return reads_per_step(Trainer(config(clevr, STEPS, *SETS), out, progress=False))


def test_a_default_step_reads_nothing(default_steps):
    plain = [s for s in default_steps if not is_log_step(s)]
    assert {s.phase for s in plain} == {1, 2, 3, 4, 5}
    for s in plain:
        assert not without(s.sites, OPTIMIZER), describe([s])


def test_a_step_that_reseeds_dead_codes_reads_nothing_either(clevr, tmp_path):
    """Dead codes are found and re-seeded on the device (`VectorQuantizer.restart_dead_codes`)."""
    torch.set_num_threads(1)
    # every code counts as dead on every step: each step re-seeds
    cfg = config(clevr, 6, *SETS, "model.dead_code_threshold=1000000")
    trainer = Trainer(cfg, tmp_path / "reseed", progress=False)
    before = trainer.model.quantizer.codebook.clone()
    steps = reads_per_step(trainer)[:-1]  # the last step ends the run: final checkpoint
    plain = [s for s in steps if not is_log_step(s)]
    assert len(plain) >= 4
    for s in plain:
        assert not without(s.sites, OPTIMIZER), describe([s])
    after = trainer.model.quantizer.codebook
    assert not torch.allclose(before, after)
    reset = trainer.model.quantizer.reset_size
    assert torch.all(trainer.model.quantizer.cluster_size <= reset)  # re-seeded counts


def test_log_steps_read_the_interval_at_once(default_steps):
    logged = [s for s in default_steps if is_log_step(s)]
    assert [s.step + 1 for s in logged] == [8, 16]
    for s in logged:
        # The pending step values (one stacked transfer), the finite/stop flags of the
        # interval, the bank's coverage: a handful of reads per interval, not per step.
        reads = without(s.sites, OPTIMIZER)
        assert 0 < sum(reads.values()) <= 8, describe([s])


def test_a_quality_head_step_reads_nothing(clevr, tmp_path):
    """The error-curve bank, its targets, mask and loss stay on the device."""
    trainer = Trainer(
        config(clevr, STEPS, *SETS, "model.quality_head=true"), tmp_path / "q", progress=False
    )
    plain = [s for s in reads_per_step(trainer) if not is_log_step(s)]
    assert {s.phase for s in plain} == {1, 2, 3, 4, 5}
    for s in plain:
        assert not without(s.sites, OPTIMIZER), describe([s])


def test_the_counter_counts_each_kind_of_read_and_restores_torch():
    t = torch.arange(4.0)
    with count_host_reads() as reads:
        float(t[0])
        int(t[1])
        bool(t[2])
        t.sum().item()
        t.tolist()
        t.cpu()
        t.numpy()
        t.nonzero()
        t[t > 1]  # a boolean mask index: its size is a read
        t[torch.tensor([0, 2])]  # an index tensor is not
        to_device(t, torch.device("cpu"))  # nor is a copy in
    assert reads.count == 9, dict(reads.sites)
    assert all("test_train_host_reads.py" in site for site in reads.sites)
    with count_host_reads() as after:
        pass
    float(t[0])
    assert after.count == 0 and "__float__" not in vars(torch.Tensor)


def test_a_non_finite_probe_gradient_is_masked_on_the_device(clevr, tmp_path):
    """The pixel probe's norm is no longer read each step: a non-finite probe gradient is
    zeroed by a mask, so no NaN reaches the probe's weights and the tokenizer's update is the
    one it has without the probe's overflow."""

    def after_steps(w_pixel: str) -> dict[str, torch.Tensor]:
        cfg = config(clevr, 3, f"model.w_pixel={w_pixel}", "train.log_every=1")
        trainer = Trainer(cfg, tmp_path / f"w{w_pixel}", progress=False)
        trainer.fit()
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    base, overflow = after_steps("1"), after_steps("1e39")  # inf in float32: inf/NaN grads
    probe = [k for k in base if k.startswith("pixel_decoder.")]
    assert probe and all(overflow[k].isfinite().all() for k in probe)
    assert all(torch.equal(base[k], overflow[k]) for k in base if k not in probe)
