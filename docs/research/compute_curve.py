"""Issue 27's compute curve: the quickstart's K = 64 run config with its schedule stretched to
STEPS, trained at one torch thread, then `strop eval`'s own scene probes.

    .venv/bin/python docs/research/compute_curve.py STEPS DATA_DIR OUT_DIR

DATA_DIR is a quickstart's `runs/quickstart/data`; the run goes to OUT_DIR/k64-sSTEPS and its
row (printed, and written as OUT_DIR/k64-sSTEPS.json) holds the figures of
docs/RESEARCH_CODES_CARRY_SCENE.md's "Compute curve".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from strop.evaluation.evaluate import evaluate_run
from strop.quickstart.config import QuickstartConfig, run_config
from strop.training.trainer import train


def main(steps: int, data: Path, out: Path) -> dict:
    torch.set_num_threads(1)
    cfg = run_config(QuickstartConfig(out=out, steps=steps), 64, data)
    run = out / f"k64-s{steps}"
    start = time.time()
    train(cfg, run, progress=False)
    train_s = time.time() - start
    e = evaluate_run(run, progress=False, lpips=False, order_probe_images=0)
    counts = e["scene_probes"]["attribute_counts"]
    nn = e["scene_probes"]["nearest_neighbour"]["random_shot"]
    row = {
        "steps": steps,
        "images_seen": steps * cfg.train.batch_size,
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
    (out / f"k64-s{steps}.json").write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    print(main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
