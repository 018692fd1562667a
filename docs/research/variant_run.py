"""Issue 27's variant runs: the quickstart's K = 64 run config (its 1,200-step schedule), one
training seed, optional `--set` overrides (e.g. `model.residual_targets=true`), trained at one
torch thread, then `strop eval`'s own scene probes.

    .venv/bin/python docs/research/variant_run.py NAME SEED DATA_DIR OUT_DIR [KEY=VALUE ...]

DATA_DIR is a quickstart's `runs/quickstart/data`; the run goes to OUT_DIR/NAME and its row
(printed, and written as OUT_DIR/NAME.json) holds the figures of
docs/RESEARCH_CODES_CARRY_SCENE.md's "Residual targets".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from strop.evaluation.evaluate import evaluate_run
from strop.quickstart.config import QuickstartConfig, run_config
from strop.training.config import apply_overrides
from strop.training.trainer import train


def main(name: str, seed: int, data: Path, out: Path, overrides: list[str]) -> dict:
    torch.set_num_threads(1)
    cfg = apply_overrides(run_config(QuickstartConfig(out=out, seed=seed), 64, data), overrides)
    run = out / name
    start = time.time()
    train(cfg, run, progress=False)
    train_s = time.time() - start
    e = evaluate_run(run, progress=False, lpips=False, order_probe_images=0)
    counts = e["scene_probes"]["attribute_counts"]
    nn = e["scene_probes"]["nearest_neighbour"]["random_shot"]
    row = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "train_s": round(train_s, 1),
        "cos": e["cos"],
        "skill": e["alignment"]["skill"],
        "r2_codes": counts["value"],
        "r2_length_only": counts["length_only"]["baseline_value"],
        "r2_gain": counts["length_only"]["advantage"],
        "r2_gain_ci": counts["length_only"]["interval"],
        "nn_advantage": nn["advantage"],
        "nn_ci": nn["interval"],
        "pearson": e["length_vs_objects"]["pearson"],
        "length_mean": e["length_mean"],
    }
    (out / f"{name}.json").write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:]))
