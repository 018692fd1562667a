"""`strop report` over hand-built run folders, with and without grammar/LLM parts, and in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import strop

from strop.evaluation.report import build_report, flatten_stats
from strop.runs import Programs, RunFolder, RunFolderError, write_json


def make_run(
    root: Path, name: str, k: int, mode: str = "adaptive", seed: int = 0, n: int = 60
) -> RunFolder:
    """A run folder as the trainer/export/eval would leave it, with made-up but consistent numbers."""
    rng = np.random.default_rng(seed)
    run = RunFolder(root / name)
    run.path.mkdir(parents=True)
    run.write_config(
        {
            "model": {"preset": "tiny", "teacher": "pixels", "k": k, "l_max": 16},
            "curriculum": {"length_mode": mode},
            "train": {"steps": 100},
            "data": {"path": "data/clevr-synth"},
        }
    )
    n_obj = rng.integers(3, 11, n)
    lengths = np.clip(n_obj + rng.integers(0, 4, n), 1, 16) if mode != "fixed" else np.full(n, 16)
    codes = [rng.integers(0, k, int(length)) for length in lengths]
    run.write_programs(
        Programs(
            codes=codes,
            image_id=[f"CLEVR_val_{i:06d}" for i in range(n)],
            split=["val"] * n,
            n_objects=n_obj,
            scene=[json.dumps({"objects": [{}] * int(c)}) for c in n_obj],
            codebook_size=k,
        )
    )
    for step in range(0, 100, 10):
        run.append_metrics(
            {
                "step": step,
                "phase": 1,
                "loss": 2.0 / (1 + step),
                "align_loss": 1.0 / (1 + step),
                "mean_length": 10 + step / 20,
                "images_per_s": 50.0,
            }
        )
        if step % 50 == 0:
            run.append_metrics(
                {"step": step, "val_cos": 0.5 + step / 250, "val_r2": 0.3, "val_cb": 40.0}
            )
    run.write_eval(
        {
            "cos": 0.91 + seed / 100,
            "r2": 0.8,
            "rmse": 0.2,
            "ssim": 0.7,
            "cb_pct": 75.0,
            "eff_pct": 60.0,
            "length_mean": float(lengths.mean()),
            "length_min": int(lengths.min()),
            "length_max": int(lengths.max()),
            "bits_per_image": 40.0,
            "compression_ratio": 1234.5,
            "teacher": "pixels",
            "length_mode": "head",
            "length_vs_objects": {
                "pearson": 0.8,
                "pearson_ci": [0.7, 0.87],
                "spearman": 0.78,
                "spearman_ci": [0.66, 0.86],
                "n": n,
                "mean_length_by_objects": {"3": 4.5, "10": 11.0},
            },
        }
    )
    return run


def add_grammar_and_llm(run: RunFolder, figure_png: Path) -> None:
    write_json(
        run.grammar_dir / "summary.json",
        {
            "n_programs": 60,
            "n_tokens": 600,
            "vocab_used": 30,
            "bigram_reuse": {
                "observed": 0.42,
                "null_shuffle": 0.10,
                "null_shuffle_sd": 0.01,
                "null_unigram": 0.12,
            },
            "perplexity": {"unigram": 30.1, "bigram": 25.3},
        },
    )
    shutil.copy(figure_png, run.grammar_dir / "rank_frequency.png")
    for model, extra in (
        ("qwen3.5", {"shots": 50, "test": 15, "seed": 0, "temperature": 0.0}),
        ("naive", {"backend": "naive"}),
    ):
        write_json(
            run.llm_dir / model / "summary.json",
            {
                "n": 15,
                "parse_fails": 0,
                "count_err": 1.43,
                "attr_acc": 0.51,
                "pos_mse": 3.2,
                "pos_mae": 1.9,
                "ap": {"inf": 0.6, "1": 0.4, "0.5": 0.2},
                **extra,
            },
        )


@pytest.fixture
def png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "fig.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
        path
    )
    return path


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    exp = tmp_path / "clevr"
    make_run(exp, "k32", 32, seed=0)
    make_run(exp, "k64", 64, seed=1)
    make_run(exp, "k64-fixed", 64, mode="fixed", seed=2)
    return exp


class _Tables(HTMLParser):
    """Collects each table's data-table key and its cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.images: list[str] = []
        self._current: str | None = None
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._current = a.get("data-table")
            self.tables[self._current] = []
        elif tag in ("td", "th"):
            self._in_cell = True
        elif tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell and self._current:
            self.tables[self._current].append(data.strip())


def test_report_without_grammar_and_llm_says_what_is_missing(experiment):
    md, html = build_report(experiment)
    text = md.read_text()
    assert "no grammar results: run `strop-grammar mine" in text
    assert "no LLM decoding results: run `strop-llm decode" in text
    assert "no grammar results: run <code>strop-grammar mine" in html.read_text()
    parsed = _Tables()
    parsed.feed(html.read_text())
    assert {"runs", "alignment", "fixed_vs_curriculum", "length_vs_objects", "code_usage"} <= set(
        parsed.tables
    )
    assert "grammar" not in parsed.tables and "llm" not in parsed.tables
    # alignment row values come from eval.json
    assert "0.910" in parsed.tables["alignment"] and "0.920" in parsed.tables["alignment"]
    assert "0.800 [0.700, 0.870]" in parsed.tables["length_vs_objects"]
    # fixed and curriculum side by side for K=64
    assert parsed.tables["fixed_vs_curriculum"].count("64") == 2
    # figures are embedded, not linked: the page stands alone
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert (experiment / "figures" / "length_vs_objects.png").is_file()
    assert "](figures/length_vs_objects.png)" in text


def test_report_with_grammar_and_llm(experiment, png):
    for name in ("k32", "k64"):
        add_grammar_and_llm(RunFolder(experiment / name), png)
    md, html = build_report(experiment)
    parsed = _Tables()
    parsed.feed(html.read_text())
    grammar = parsed.tables["grammar"]
    # the statistic stands beside its nulls
    assert "0.420 (null_shuffle 0.100 ± 0.010, null_unigram 0.120)" in grammar
    assert "perplexity.bigram" in parsed.tables["grammar_facts"]
    llm = parsed.tables["llm"]
    assert llm.index("naive (baseline)") < llm.index("qwen3.5")  # baselines first
    assert "AP@0.5" in llm
    assert "Protocol: shots 50, test 15, seed 0, temperature 0.000." in md.read_text()
    assert "> no grammar results" not in md.read_text()
    assert "k64-fixed: no grammar results" in md.read_text()  # the one run without grammar is named
    assert len(parsed.images) >= 4  # 2 own figures + 2 grammar figures


def test_report_shows_lpips_only_when_a_run_scored_it(experiment):
    _, html = build_report(experiment)
    parsed = _Tables()
    parsed.feed(html.read_text())
    assert "SSIM" in parsed.tables["alignment"] and "LPIPS" not in parsed.tables["alignment"]

    for name, value in (("k32", 0.1234), ("k64", None)):
        run = RunFolder(experiment / name)
        e = json.loads(run.eval_path.read_text())
        e["lpips"] = value
        if value is None:
            e["lpips_note"] = "LPIPS needs its lin weights (weights/v0.1/alex.pth): install lpips"
        run.write_eval(e)
    md, html = build_report(experiment)
    parsed = _Tables()
    parsed.feed(html.read_text())
    cells = parsed.tables["alignment"]
    assert cells.index("SSIM") + 1 == cells.index("LPIPS") and "0.123" in cells
    assert "k64: no LPIPS: LPIPS needs its lin weights" in md.read_text()
    assert "k64-fixed: no LPIPS: not scored." in md.read_text()


def test_report_survives_damaged_and_sparse_runs(tmp_path):
    exp = tmp_path / "exp"
    run = make_run(exp, "k32", 32)
    run.eval_path.write_text("{not json")
    sparse = RunFolder(exp / "k128")
    sparse.path.mkdir()
    sparse.write_config({"model": {"k": 128}})
    md, _ = build_report(exp)
    text = md.read_text()
    assert "k32/eval.json:" in text and "not valid JSON" in text
    assert "k128: no programs.parquet: run `strop export" in text
    assert "k128: no eval.json: run `strop eval" in text


def test_report_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(RunFolderError, match="no run folders"):
        build_report(tmp_path)


def test_flatten_stats_formats_nested_values():
    flat = flatten_stats(
        {"a": 1, "b": {"c": 0.5, "d": [1, 2]}, "e": {"value": 2.0, "null": {"shuffle": 1.0}}}
    )
    # Whole numbers stored as floats (counts) print as integers, not 2.000.
    assert flat == {"a": "1", "b.c": "0.500", "e": "2 (null shuffle 1)"}


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@pytest.mark.needs_tool
@pytest.mark.skipif(
    _chromium() is None,
    reason="no chromium on PATH (apt-get install chromium) for the browser test",
)
def test_report_renders_in_headless_chromium(experiment, png, tmp_path):
    add_grammar_and_llm(RunFolder(experiment / "k32"), png)
    _, html = build_report(experiment)
    dom = _dump_dom(html, tmp_path)
    body = re.search(r"<body[^>]*>", dom)
    assert body, f"chromium returned no DOM: {dom[:200]!r}"
    # the inline script ran and every embedded image decoded with a non-zero width
    assert 'data-images-loaded="true"' in body.group(0), body.group(0)
    n = int(re.search(r'data-image-count="(\d+)"', body.group(0)).group(1))
    assert n >= 3 and f'data-images-decoded="{n}"' in body.group(0)
    parsed = _Tables()
    parsed.feed(dom)
    assert {"alignment", "length_vs_objects", "code_usage", "grammar", "llm"} <= set(parsed.tables)
    assert "0.910" in parsed.tables["alignment"]
    # and the check can fail: one corrupted image is reported as not loaded
    broken = tmp_path / "broken.html"
    broken.write_text(html.read_text().replace("base64,iVBOR", "base64,AAAA", 1))
    assert 'data-images-loaded="false"' in _dump_dom(broken, tmp_path)


def _dump_dom(html: Path, tmp_path: Path, width: int = 1400) -> str:
    cmd = [
        _chromium(),
        "--headless",
        f"--window-size={width},1000",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.needs_tool
@pytest.mark.skipif(
    _chromium() is None,
    reason="no chromium on PATH (apt-get install chromium) for the browser test",
)
def test_nothing_in_the_report_is_wider_than_the_page(experiment, png, tmp_path):
    """At a laptop's 1400 px and a narrow 700 px window, no element reaches past the page's
    right edge (the page never scrolls sideways), long paths in corpus facts included."""
    run = RunFolder(experiment / "k32")
    add_grammar_and_llm(run, png)
    summary = json.loads((run.grammar_dir / "summary.json").read_text())
    summary["output_dir"] = "/home/someone/runs/quickstart/clevr/k3"  # 40 characters
    write_json(run.grammar_dir / "summary.json", summary)
    _, html = build_report(experiment)
    for width in (1400, 700):
        body = re.search(r"<body[^>]*>", _dump_dom(html, tmp_path, width))
        assert body, "chromium returned no DOM"
        assert 'data-too-wide="0"' in body.group(0), (width, body.group(0))
        page = int(re.search(r'data-page-width="(\d+)"', body.group(0)).group(1))
        assert int(re.search(r'data-scroll-width="(\d+)"', body.group(0)).group(1)) <= page


def test_report_reads_what_grammar_and_llm_decode_really_write(tmp_path):
    """The other tools' real outputs (not hand-written summaries) land in the right tables."""
    from grammar.mine import mine_path
    from llm_decode.protocol import ProtocolConfig
    from llm_decode.runner import DecodeConfig, decode
    from llm_decode.testing.fake_server import FakeServer
    from llm_decode.testing.synthetic import make_run as make_llm_run

    exp = tmp_path / "exp"
    for k in (16, 32):
        make_llm_run(exp / f"k{k}", k=k, n_train=40, n_val=10, seed=k)
        RunFolder(exp / f"k{k}").write_config(
            {"model": {"k": k}, "curriculum": {"length_mode": "adaptive"}}
        )
    mine_path(exp, null_replicates=2, max_n=2)
    proto = ProtocolConfig(shots=8, test=4)
    decode(DecodeConfig(model="naive", backend="naive", k=16, runs=exp, protocol=proto))
    with FakeServer() as server:
        decode(
            DecodeConfig(
                model="qwen3.5",
                backend="openai",
                base_url=server.base_url,
                k=16,
                runs=exp,
                protocol=proto,
                concurrency=2,
                max_attempts=1,
            )
        )
    md, html = build_report(exp)
    parsed = _Tables()
    parsed.feed(html.read_text())
    assert any("(null_shuffle" in cell for cell in parsed.tables["grammar"])
    assert "vocab_used" in parsed.tables["grammar_facts"]
    llm = parsed.tables["llm"]
    assert "naive (baseline)" in llm and "qwen3.5" in llm and "AP@inf" in llm
    # decoding means carry a bootstrap interval over the answered images (results.jsonl)
    assert any(re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", c) for c in llm), llm
    text = md.read_text()
    assert "Protocol: shots 8, test 4, seed 0" in text
    assert "](figures/rank_frequency.png)" in text  # grammar's experiment-level figure


def test_every_table_says_what_a_cell_is_with_its_n_and_headline_intervals(experiment, png):
    """Captions with n, intervals and 'within noise', one K per run in the header, the LPIPS
    note, explained analysis keys, and a decode whose answers all failed says how to finish."""
    for name, cos_ci in (("k64", [0.90, 0.93]), ("k64-fixed", [0.91, 0.95]), ("k32", None)):
        run = RunFolder(experiment / name)
        e = run.read_eval()
        e.update(n_images=60, split="val", lpips=None, lpips_note="no AlexNet weights found")
        if cos_ci:
            e["ci95"] = {"cos": cos_ci, "cb_pct": [70.0, 80.0]}
        run.write_eval(e)
    k32 = RunFolder(experiment / "k32")
    add_grammar_and_llm(k32, png)
    write_json(
        k32.path / "analysis" / "analysis.json",
        {"n_images": 8, "synergy": {"adjacent_vs_random_p": 0.2, "n_adjacent": 12.0}},
    )
    write_json(
        k32.llm_dir / "gpt-x" / "summary.json",
        {"n": 0, "missing": 15, "complete": False, "parse_fails": 0, "protocol": {"test": 15}},
    )
    md, html = build_report(experiment)
    text = md.read_text()
    assert "codebook sizes K = 32, 64." in text
    tables = re.findall(r"^\| .*", text, flags=re.M)
    captions = re.findall(r"^\*(.+)\*$", text, flags=re.M)
    n_tables = len(re.findall(r"^\|---", text, flags=re.M))
    assert n_tables == len([c for c in captions if "n = " in c]) >= 9, captions
    assert "n = 60 images" in text and "n = 8 images" in text and "n = 60 programs" in text
    parsed = _Tables()
    parsed.feed(html.read_text())
    assert "0.930 [0.910, 0.950]" in parsed.tables["fixed_vs_curriculum"]
    assert "cos within noise" in parsed.tables["fixed_vs_curriculum"]
    assert "75.0 [70.0, 80.0]" in parsed.tables["alignment"]
    assert "LPIPS is not in this report: no AlexNet weights found" in text
    analysis = parsed.tables["analysis"]
    assert any(c.startswith("p-value, adjacent vs random") for c in analysis), analysis
    assert "12" in analysis and "12.000" not in analysis
    assert "gpt-x K=32: 15 of 15 answers missing" in text
    assert "strop-llm decode --model gpt-x --k 32 --runs" in text
    assert tables


# --------------------------------------------------------------------------- damaged sweep


GOOD_SWEEP = {
    "k": 16,
    "rows": [{"n": 1, "cos": 0.5, "count_probe_r2": None}, {"n": 2, "cos": 0.6}],
    "operating_points": {"head": {"length_mode": "head", "length_mean": 1.5, "cos": 0.55}},
}


@pytest.mark.parametrize(
    ("file", "edit", "says"),
    [
        ("sweep.json", lambda d: d.update(rows=[1, 2]), "k16/sweep.json: field rows[0]:"),
        ("sweep.json", lambda d: d["rows"][0].update(n="x"), "field rows[0].n:"),
        (
            "sweep.json",
            lambda d: d["operating_points"].update(head=None),
            "k16/sweep.json: field operating_points.head:",
        ),
        (
            "eval.json",
            lambda d: d.update(quality_control={"rows": [{"eps": "a"}]}),
            "k16/eval.json quality_control: field rows[0].eps",
        ),
    ],
)
def test_report_names_a_damaged_sweep_or_quality_block(tiny_run, tmp_path, file, edit, says):
    """A list of numbers for sweep.json's rows or a null operating point was an
    AttributeError that lost the whole report."""
    copy = Path(shutil.copytree(tiny_run, tmp_path / "exp" / "k16"))
    sweep = json.loads(json.dumps(GOOD_SWEEP))
    if file == "sweep.json":
        edit(sweep)
    (copy / "sweep.json").write_text(json.dumps(sweep))
    if file == "eval.json":
        evaluation = {"run": "k16", "cos": 0.5}
        edit(evaluation)
        (copy / "eval.json").write_text(json.dumps(evaluation))
    done = strop("report", copy.parent)
    assert done.exit_code == 0 and "Traceback" not in done.output, done.output
    assert says in (copy.parent / "report.md").read_text()
