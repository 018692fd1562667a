"""Issue 27's compute curve: the quickstart's K = 64 run config with its schedule stretched to
STEPS, trained at one torch thread, then `strop eval`'s own scene probes.

    .venv/bin/python docs/research/compute_curve.py STEPS DATA_DIR OUT_DIR

DATA_DIR is a quickstart's `runs/quickstart/data`; the run goes to OUT_DIR/k64-sSTEPS and its
row (printed, and written as OUT_DIR/k64-sSTEPS.json) holds the figures of
docs/RESEARCH_CODES_CARRY_SCENE.md's "Compute curve".
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import train_and_probe

from strop.quickstart.config import QuickstartConfig, run_config


def main(steps: int, data: Path, out: Path) -> dict:
    cfg = run_config(QuickstartConfig(out=out, steps=steps), 64, data)
    head = {"steps": steps, "images_seen": steps * cfg.train.batch_size}
    return train_and_probe(cfg, out / f"k64-s{steps}", head)


if __name__ == "__main__":
    print(main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
