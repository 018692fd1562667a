"""What issue 27's research drivers share: train a quickstart-derived run config at one torch
thread, run `strop eval`'s own scene probes on it, and write the figures as one JSON row.

Imported by the drivers beside it (`compute_curve.py`, `variant_run.py`), which run as scripts,
so this folder is on `sys.path`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from strop.evaluation.evaluate import evaluate_run
from strop.training.config import RunConfig
from strop.training.trainer import train


def train_and_probe(cfg: RunConfig, run: Path, head: dict[str, Any]) -> dict:
    """Train `cfg` into `run` at one torch thread, evaluate it, write `run`.json beside it and return the row:
    `head` (the driver's own keys) first, then the training time and the probe figures."""
    torch.set_num_threads(1)
    start = time.time()
    train(cfg, run, progress=False)
    train_s = time.time() - start
    e = evaluate_run(run, progress=False, lpips=False, order_probe_images=0)
    counts = e["scene_probes"]["attribute_counts"]
    nn = e["scene_probes"]["nearest_neighbour"]["random_shot"]
    row = {
        **head,
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
    run.with_name(f"{run.name}.json").write_text(json.dumps(row, indent=1))
    return row
