"""`strop-grammar mine`'s files are one unit (issue 18, Bad 2).

A mine of corpus B into a folder holding corpus A's results, killed after it replaced
`pairs.tsv`, left ngrams/pairs/rules of B beside summary/grammar.pcfg of A. Real processes
killed with SIGKILL; a real OS error (an immutable file, `chattr +i`, which stops root too)
failing the move midway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from grammar.cli import app
from strop.output_unit import OutputUnitError, require_complete

FILES = ("ngrams.tsv", "pairs.tsv", "rules.txt", "grammar.pcfg", "rank_frequency.png")
ARGS = ("--null-replicates", "2", "--repair-max-tokens", "20000", "--ngram-min-count", "1")


def corpus(path: Path, seed: int, n: int) -> Path:
    """Programs built from a few repeated pieces (so Re-Pair finds rules), one per line."""
    rng = np.random.default_rng(seed)
    pieces = [(3, 7), (12, 5), (20, 9), (1, 30), (seed, 2)]
    lines = [
        " ".join(
            str(c) for j in rng.integers(0, len(pieces), rng.integers(2, 7)) for c in pieces[j]
        )
        for _ in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def mine(text: Path, out: Path) -> None:
    result = CliRunner().invoke(app, ["mine", str(text), "--out", str(out), "--quiet", *ARGS])
    assert result.exit_code == 0, result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES if (folder / name).is_file()}


def described(folder: Path) -> tuple[int, int]:
    summary = json.loads((folder / "summary.json").read_text())
    return summary["n_programs"], summary["n_tokens"]


def chattr(flag: str, path: Path) -> bool:
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    except FileNotFoundError:
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Corpora A and B and each one's results mined alone (the two wholes a folder may hold)."""
    root = tmp_path_factory.mktemp("corpora")
    refs = {}
    for name, seed, n in (("a", 1, 900), ("b", 2, 700)):
        text = corpus(root / f"{name}.txt", seed, n)
        mine(text, root / f"ref_{name}")
        refs[name] = (text, root / f"ref_{name}")
    return refs


def test_mine_killed_midway_leaves_the_previous_results_whole(references, tmp_path):
    (a, ref_a), (b, ref_b) = references["a"], references["b"]
    out = tmp_path / "grammar"
    mine(a, out)
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "grammar.cli", "mine", str(b), "--out", str(out), "--quiet", *ARGS],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def pairs_written() -> bool:  # B's pairs.tsv, wherever the writer puts it first
        return any(p.stat().st_mtime > started for p in out.rglob("pairs.tsv"))

    deadline = time.time() + 300
    while not pairs_written() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "mine finished before the kill; enlarge corpus B"
    # Every file describes one corpus: A's, whole (the kill came before B's were moved in).
    require_complete(out, "mine")
    assert described(out) == described(ref_a)
    assert snapshot(out) == snapshot(ref_a)
    # The next mine replaces A's unit with B's, and clears what the killed one left.
    mine(b, out)
    assert described(out) == described(ref_b) and snapshot(out) == snapshot(ref_b)
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.json", *FILES])


def test_a_move_that_fails_midway_marks_the_folder_and_readers_refuse_it(references, tmp_path):
    (a, _), (b, ref_b) = references["a"], references["b"]
    out = tmp_path / "grammar"
    mine(a, out)
    if not chattr("+i", out / "rules.txt"):
        pytest.skip("chattr +i is not available on this file system")
    try:
        result = CliRunner().invoke(app, ["mine", str(b), "--out", str(out), "--quiet", *ARGS])
    finally:
        chattr("-i", out / "rules.txt")
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and str(out) in line and "Operation not permitted" in line, line
    with pytest.raises(OutputUnitError, match="incomplete output .*rerun strop-grammar mine"):
        require_complete(out, "mine")
    mine(b, out)  # a rerun makes it whole again
    require_complete(out, "mine")
    assert snapshot(out) == snapshot(ref_b)


def test_tsv_files_get_the_umask_permissions(references):
    _, ref_a = references["a"]
    mask = os.umask(0)
    os.umask(mask)
    for name in ("ngrams.tsv", "pairs.tsv", "summary.json", "rules.txt"):
        assert (ref_a / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
