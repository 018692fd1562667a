"""`mine` end to end: planted structure vs its null, the CLI on an experiment, bad inputs."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_error_line, script_path
from helpers import strop_grammar
from typer.testing import CliRunner

from grammar.cli import app
from grammar.corpus import Corpus, CorpusError, read_text
from grammar.mine import MineConfig, mine_corpus, mine_path
from grammar.nulls import shuffle_within
from strop.runs import Programs, write_json, write_programs

FAST = {"repair_max_tokens": 20_000, "max_distance": 4}


def planted_programs(seed: int, n: int = 600, k: int = 32) -> list[np.ndarray]:
    """Programs made of 2 to 6 copies of a few fixed bigrams (the planted structure)."""
    rng = np.random.default_rng(seed)
    pieces = [(3, 7), (12, 5), (20, 9), (1, 30)]
    return [
        np.concatenate([pieces[j] for j in rng.integers(0, len(pieces), rng.integers(2, 7))])
        for _ in range(n)
    ]


def write_experiment(root: Path) -> Path:
    for i, k in enumerate((32, 64)):
        codes = planted_programs(i, n=300, k=k)
        write_programs(root / f"k{k}" / "programs.parquet", Programs(codes=codes, codebook_size=k))
    return root


def test_planted_bigrams_are_significant_and_their_shuffle_is_not() -> None:
    corpus = Corpus.from_lists(planted_programs(0), k=32)
    cfg = MineConfig(null_replicates=2, **FAST)
    result = mine_corpus(corpus, cfg)
    adjacent = result.pairs[0]
    significant = {
        (int(a), int(b))
        for a, b, q in zip(adjacent.a, adjacent.b, adjacent.q_null)
        if q < cfg.alpha
    }
    assert {(3, 7), (12, 5), (20, 9), (1, 30)} <= significant
    summary = result.summary
    assert summary["n_significant_pairs"]["observed"] >= 4
    assert summary["n_significant_pairs"]["null_shuffle"] == 0
    assert summary["compression_ratio"]["observed"] > summary["compression_ratio"]["null_shuffle"]
    assert summary["perplexity_2"]["observed"] < summary["perplexity_2"]["null_shuffle"]

    # mined as if it were the observed corpus, the shuffled corpus shows no order
    shuffled = shuffle_within(corpus, np.random.default_rng(5))
    null_result = mine_corpus(shuffled, MineConfig(null_replicates=0, **FAST))
    assert null_result.summary["n_significant_pairs"]["observed"] == 0
    assert not np.any(null_result.pairs[0].q_null < cfg.alpha)


def test_cli_mines_an_experiment_folder(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path / "exp")
    result = CliRunner().invoke(
        app,
        [
            "mine",
            str(experiment),
            "--null-replicates",
            "1",
            "--repair-max-tokens",
            "5000",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    for run, k in (("k32", 32), ("k64", 64)):
        out = experiment / run / "grammar"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["k"] == k and summary["n_programs"] == 300
        assert summary["n_tokens"] == sum(
            len(c) for c in planted_programs(0 if k == 32 else 1, n=300)
        )
        assert summary["vocab_used"] == 8
        for key in (
            "zipf_exponent",
            "compression_ratio",
            "reuse_rate",
            "perplexity_3",
            "n_significant_pairs",
        ):
            assert set(summary[key]) >= {"observed", "null_shuffle", "null_unigram"}
        ngram_lines = (out / "ngrams.tsv").read_text().splitlines()
        assert ngram_lines[0] == "n\tngram\tcount\tdoc_freq"
        assert ngram_lines[1].split("\t")[0] == "1"
        pair_lines = (out / "pairs.tsv").read_text().splitlines()
        assert pair_lines[0].split("\t")[:6] == ["pair", "kind", "count", "pmi", "llr", "q_value"]
        kinds = {line.split("\t")[1] for line in pair_lines[1:]}
        assert kinds == {"adjacent", "any"}
        rules = (out / "rules.txt").read_text().splitlines()
        assert rules and all(" -> " in line for line in rules)
        assert summary["pcfg_spot_check"]["parsed"] == summary["pcfg_spot_check"]["of"] > 0
    table = (experiment / "grammar_comparison.md").read_text()
    assert "| k32 | 32 |" in table and "| k64 | 64 |" in table
    assert (experiment / "figures" / "rank_frequency.png").stat().st_size > 1000


def test_out_folder_and_text_input(tmp_path: Path) -> None:
    text = tmp_path / "programs.txt"
    text.write_text("\n".join(" ".join(map(str, p)) for p in planted_programs(2, n=60)) + "\n")
    summaries = mine_path(text, out=tmp_path / "out", null_replicates=1, **FAST)
    assert summaries[0]["k"] == 31 and summaries[0]["k_source"] == "max code + 1"
    assert (tmp_path / "out" / "summary.json").is_file()
    assert (tmp_path / "out" / "rank_frequency.png").is_file()
    experiment = write_experiment(tmp_path / "exp")
    mine_path(experiment, out=tmp_path / "exp_out", null_replicates=0, **FAST)
    assert (tmp_path / "exp_out" / "k32" / "pairs.tsv").is_file()
    assert (tmp_path / "exp_out" / "grammar_comparison.md").is_file()
    assert not (experiment / "k32" / "grammar").exists()


def test_tiny_corpus_says_it_is_too_small_for_null_tests(tmp_path: Path) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("1 2 3\n1 2 3\n4 1 2\n")
    summary = mine_path(text, null_replicates=3, min_count=1, **FAST)[0]
    assert summary["null_tests"]["status"] == "skipped"
    assert "too small" in summary["null_tests"]["reason"]
    assert summary["n_significant_pairs"]["observed"] is None
    assert summary["compression_ratio"]["null_shuffle"] is None
    header, *rows = (tmp_path / "tiny_grammar" / "pairs.tsv").read_text().splitlines()
    q_column = header.split("\t").index("q_value")
    assert rows and all(row.split("\t")[q_column] == "" for row in rows)


def _cli_error(args: list[str]) -> str:
    """A corpus that cannot be mined: one line, exit 1 (the work failed; 2 is for bad options)."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs_fail_with_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    assert "empty corpus" in _cli_error(["mine", str(empty)])

    mixed = tmp_path / "mixed.txt"
    mixed.write_text("# k=32\n1 2 3\n4 5\n# k=64\n40 41\n")
    message = _cli_error(["mine", str(mixed)])
    assert "line 4" in message and "mixed K" in message

    out_of_range = tmp_path / "range.txt"
    out_of_range.write_text("1 2\n3 4\n5 9\n")
    message = _cli_error(["mine", str(out_of_range), "--k", "8"])
    assert "line 3" in message and "code 9 outside [0, 8)" in message

    declared = tmp_path / "declared.txt"
    declared.write_text("# k=8\n1 2\n3 12\n")
    assert "line 3" in _cli_error(["mine", str(declared)])

    not_int = tmp_path / "words.txt"
    not_int.write_text("1 2\n3 x\n")
    assert "line 2" in _cli_error(["mine", str(not_int)])

    run = tmp_path / "exp" / "k32"
    run.mkdir(parents=True)
    write_json(run / "config.json", {"model": {"k": 32}})
    message = _cli_error(["mine", str(run)])
    assert "no programs.parquet" in message

    assert "no such file" in _cli_error(["mine", str(tmp_path / "missing")])
    (tmp_path / "void").mkdir()
    assert "no run folders" in _cli_error(["mine", str(tmp_path / "void")])


def test_bad_parquet_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "programs.parquet"
    write_programs(bad, Programs(codes=[np.array([1, 2]), np.array([3, 40])]))
    message = _cli_error(["mine", str(bad), "--k", "32"])
    assert "row 1" in message and "40" in message

    empty = tmp_path / "empty" / "programs.parquet"
    write_programs(empty, Programs(codes=[], codebook_size=32))
    assert "empty corpus" in _cli_error(["mine", str(empty)])

    mixed = tmp_path / "mixed.parquet"
    pq.write_table(
        pa.table({"codes": [[1, 2], [3, 4], [5, 6]], "codebook_size": [32, 32, 64]}), mixed
    )
    message = _cli_error(["mine", str(mixed)])
    assert "row 2" in message and "mixed K" in message

    run = tmp_path / "run"
    write_programs(run / "programs.parquet", Programs(codes=[np.array([1, 2])], codebook_size=64))
    write_json(run / "config.json", {"model": {"k": 32}})
    assert "mixed K" in _cli_error(["mine", str(run)])


def test_corpus_errors_name_line_and_value(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("1 2\n\n# comment\n-3 4\n")
    with pytest.raises(CorpusError, match=r"line 4 field codes: negative code -3"):
        read_text(path)


def test_cli_help_and_version() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.startswith("strop-grammar ")
    help_text = runner.invoke(app, ["mine", "--help"]).output
    for flag in ("--out", "--max-n", "--seed", "--null-replicates", "--k"):
        assert flag in help_text


def test_mining_never_imports_torch(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path / "exp")
    code = (
        "import sys, grammar, grammar.cli\n"
        "from grammar.mine import mine_path\n"
        f"mine_path({str(experiment)!r}, null_replicates=1, repair_max_tokens=2000)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --------------------------------------------------------------------------- bad corpora


def test_a_code_of_10_to_the_20_in_a_text_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("1 2 3\n4 5 100000000000000000000\n")
    line = one_error_line(strop_grammar("mine", corpus, "--quiet"), 1)
    assert str(corpus) in line and "line 2" in line and "100000000000000000000" in line


def test_max_n_that_overflows_the_packing_is_a_usage_error(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("1 2 3\n4 5 6\n" * 20)
    result = strop_grammar("mine", corpus, "--quiet", "--k", "1000000", "--max-n", "4")
    line = one_error_line(result, 2)
    assert "--max-n 4" in line and "K=1000000" in line
    assert not (tmp_path / "grammar").exists()  # refused before any work


def test_disk_full_while_mining_is_one_line(tmp_path: Path) -> None:
    """A file-size limit fails every write past 16 KiB (EFBIG), as a full disk does."""
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(
            " ".join(map(str, rng.integers(0, 64, rng.integers(5, 20)))) + "\n" for _ in range(3000)
        )
    )

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    out = tmp_path / "mined"
    proc = subprocess.run(
        [script_path("strop-grammar"), "mine", str(corpus), "--out", str(out), "--quiet"],
        preexec_fn=small_files,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == f"error: {out}: cannot write the results (File too large)"
    assert not list(out.glob(".*.tmp"))
