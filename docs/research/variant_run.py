"""Issue 27's variant runs: the quickstart's K = 64 run config (its 1,200-step schedule), one
training seed, optional `--set` overrides (e.g. `model.residual_targets=true`), trained at one
torch thread, then `strop eval`'s own scene probes.

    .venv/bin/python docs/research/variant_run.py NAME SEED DATA_DIR OUT_DIR [KEY=VALUE ...]

DATA_DIR is a quickstart's `runs/quickstart/data`; the run goes to OUT_DIR/NAME and its row
(printed, and written as OUT_DIR/NAME.json) holds the figures of
docs/RESEARCH_CODES_CARRY_SCENE.md's "Residual targets".
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import train_and_probe

from strop.quickstart.config import QuickstartConfig, run_config
from strop.training.config import apply_overrides


def main(name: str, seed: int, data: Path, out: Path, overrides: list[str]) -> dict:
    cfg = apply_overrides(run_config(QuickstartConfig(out=out, seed=seed), 64, data), overrides)
    head = {"name": name, "seed": seed, "overrides": overrides}
    return train_and_probe(cfg, out / name, head)


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:]))
