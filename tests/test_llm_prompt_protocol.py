"""Prompts, protocol selection, presets and the naive/knn baselines on synthetic programs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_decode.backends.baselines import KnnIndex, edit_distance, naive_scene
from llm_decode.presets import folder_name, resolve_model
from llm_decode.prompting import PromptBuilder, PromptError, Shot
from llm_decode.protocol import ProtocolConfig, code_permutation, load_scene, select
from llm_decode.report import build_report
from llm_decode.runner import DecodeConfig, DecodeResult, decode
from llm_decode.schema import DecodedObject, DecodedScene
from llm_decode.testing.synthetic import make_run
from strop.runs import Programs, RunFolderError, read_programs, write_programs


def obj(color="r", shape="cu", size="S", material="R", x=0.0, y=0.0) -> DecodedObject:
    return DecodedObject(color=color, shape=shape, size=size, material=material, x=x, y=y)


@pytest.fixture(scope="module")
def programs_path(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("exp") / "k64", k=64, n_train=60, n_val=20)


def shots_from(path, n=50):
    programs = read_programs(path)
    sel = select(programs, ProtocolConfig(shots=n, test=15), str(path))
    return (
        programs,
        sel,
        [Shot(programs.codes[i].tolist(), load_scene(programs, i, "p")) for i in sel.shots],
    )


# ----------------------------------------------------------------------------- prompts


def test_prompt_renders_fifty_shots_with_shared_prefix(programs_path):
    programs, sel, shots = shots_from(programs_path)
    builder = PromptBuilder(codebook_size=64, shots=shots, think=True)
    a = builder.messages(programs.codes[sel.test[0]].tolist())
    b = builder.messages(programs.codes[sel.test[1]].tolist())
    assert a[0] == b[0] and a[0]["role"] == "system"  # byte-identical shot block
    assert a[0]["content"].count("\nScene: {") == 50
    assert "64 entries (ids 0 to 63)" in a[0]["content"]
    assert "red=r" in a[0]["content"] and "cylinder=cy" in a[0]["content"]
    assert "think step by step" in a[0]["content"]
    assert (
        a[1]["content"] == "Codes: " + " ".join(map(str, programs.codes[sel.test[0]])) + "\nScene:"
    )
    assert a[1] != b[1]
    no_think = PromptBuilder(codebook_size=64, shots=shots, think=False)
    assert "step by step" not in no_think.context


def test_user_template_missing_variable_fails_loudly(tmp_path, programs_path):
    _, _, shots = shots_from(programs_path, n=3)
    bad = tmp_path / "bad.j2"
    bad.write_text(
        "{% block context %}K={{ codebook_size }} {{ legend }}{% endblock %}{% block query %}{{ codes }}{% endblock %}"
    )
    with pytest.raises(PromptError, match=r"bad\.j2: block 'context': 'legend' is undefined"):
        PromptBuilder(codebook_size=64, shots=shots, template=bad)
    leaky = tmp_path / "leaky.j2"
    leaky.write_text(
        "{% block context %}{{ codes }}{% endblock %}{% block query %}{{ codes }}{% endblock %}"
    )
    with pytest.raises(PromptError, match="'codes' is undefined"):
        PromptBuilder(codebook_size=64, shots=shots, template=leaky)
    blockless = tmp_path / "plain.j2"
    blockless.write_text("{{ codebook_size }}")
    with pytest.raises(PromptError, match="missing block 'context'"):
        PromptBuilder(codebook_size=64, shots=shots, template=blockless)
    with pytest.raises(PromptError, match="not found"):
        PromptBuilder(codebook_size=64, shots=shots, template=tmp_path / "nope.j2")


def test_user_template_without_repair_resends(tmp_path, programs_path):
    _, _, shots = shots_from(programs_path, n=3)
    ok = tmp_path / "ok.j2"
    ok.write_text(
        "{% block context %}{{ n_shots }} shots{% endblock %}{% block query %}{{ codes|join(',') }}{% endblock %}"
    )
    builder = PromptBuilder(codebook_size=64, shots=shots, template=ok)
    messages = builder.messages([1, 2])
    assert messages[1]["content"] == "1,2" and messages[0]["content"] == "3 shots"
    assert builder.repair_messages(messages, "oops", "not JSON") is None
    default = PromptBuilder(codebook_size=64, shots=shots)
    repaired = default.repair_messages(messages, "oops", "not JSON")
    assert [m["role"] for m in repaired] == ["system", "user", "assistant", "user"]
    assert "not JSON" in repaired[-1]["content"]


# ----------------------------------------------------------------------------- protocol


def test_selection_is_seeded_and_disjoint(programs_path):
    programs = read_programs(programs_path)
    cfg = ProtocolConfig(shots=50, test=15, seed=3)
    a, b = select(programs, cfg), select(programs, cfg)
    assert a == b
    assert all(programs.split[i] == "train" for i in a.shots)
    assert all(programs.split[i] == "val" for i in a.test)
    assert select(programs, cfg.model_copy(update={"seed": 4})).test != a.test


def test_single_split_is_divided_by_seed(tmp_path, programs_path):
    programs = read_programs(programs_path)
    programs.split = ["val"] * len(programs)
    sel = select(programs, ProtocolConfig(shots=40, test=15))
    assert not set(sel.shots) & set(sel.test) and len(sel.shots) == 40
    with pytest.raises(
        RunFolderError, match=r"--shots 70 needs 70 rows with scenes .* found 65 of 80"
    ):
        select(programs, ProtocolConfig(shots=70, test=15), "p.parquet")


def test_rows_without_scenes_are_refused(tmp_path):
    path = make_run(tmp_path / "k64", with_scenes=False)
    with pytest.raises(RunFolderError, match="no row has a scene"):
        select(read_programs(path), ProtocolConfig(), str(path))


def test_bad_scene_names_row_and_field(tmp_path):
    programs = Programs(
        codes=[[1, 2]],
        scene=[
            '{"image_index": 0, "image_filename": "a", "split": "val", "objects": [{"color": "pink"}]}'
        ],
        codebook_size=8,
    )
    path = write_programs(tmp_path / "programs.parquet", programs)
    with pytest.raises(RunFolderError, match=r"row 0 \(0\) field scene.objects\[0\].color"):
        load_scene(read_programs(path), 0, str(path))


def test_code_permutation_is_a_seeded_bijection():
    perm = code_permutation(64, 0)
    assert sorted(perm.tolist()) == list(range(64))
    assert (perm == code_permutation(64, 0)).all() and not (perm == code_permutation(64, 1)).all()


def test_presets():
    assert resolve_model("qwen3.5").served_id == "Qwen/Qwen3.5-397B-A17B"
    assert resolve_model("deepseek-v3.1").served_id == "deepseek-ai/DeepSeek-V3.1"
    assert resolve_model("deepseek-v3.1").think and not resolve_model("qwen3.5").think
    assert resolve_model("gpt-oss-120b", "/models/gpt").served_id == "/models/gpt"
    assert resolve_model("my/model").served_id == "my/model"
    assert folder_name("my/model") == "my--model"


# ----------------------------------------------------------------------------- baselines


def test_naive_baseline_is_the_average_scene():
    left = [obj("r", "cu", "S", "R", -2.0 + d, -2.0) for d in (0.0, 0.1)]
    right = [obj("r", "sp", "L", "M", 2.0, 2.0 + d) for d in (0.0, 0.1)]
    pool = [
        DecodedScene(objects=[left[0], right[0]]),
        DecodedScene(objects=[left[1], right[1], obj("bl", "cy", "L", "M", 2.0, 2.05)]),
    ]
    scene = naive_scene(pool, seed=0, definition="modal")
    # mean count 2.5 rounds half up to 3; r and M and L win; S/cu tie broken by order
    assert len(scene.objects) == 3
    assert {o.attributes() for o in scene.objects} == {("r", "cu", "L", "M")}
    assert scene == naive_scene(pool, seed=0, definition="modal")
    xs = sorted(round(o.x, 1) for o in scene.objects)
    assert xs[0] == pytest.approx(-1.9, abs=0.11) and xs[-1] == pytest.approx(2.0, abs=0.01)
    # Distribution-shaped: the same count and positions, attributes shared out by frequency.
    prop = naive_scene(pool, seed=0, definition="proportional")
    assert [(o.x, o.y) for o in prop.objects] == [(o.x, o.y) for o in scene.objects]
    # colours r 4/5, bl 1/5 of 3 objects -> 2.4, 0.6 -> r, r, bl (largest remainder)
    assert [o.color for o in prop.objects] == ["r", "r", "bl"]
    assert sorted(o.size for o in prop.objects) == ["L", "L", "S"]  # L 3/5, S 2/5
    sampled = naive_scene(pool, seed=0, definition="sampled")
    assert sampled == naive_scene(pool, seed=0, definition="sampled") and len(sampled.objects) == 3
    pool_objects = {o.attributes() for s in pool for o in s.objects}
    assert {o.attributes() for o in sampled.objects} <= pool_objects
    with pytest.raises(ValueError, match="naive definition"):
        naive_scene(pool, definition="median")  # type: ignore[arg-type]


def test_knn_exact_match_and_tie_breaks():
    index = KnnIndex([[1, 2, 3], [3, 2, 1], [1, 2, 3, 3], [4, 4]], codebook_size=8)
    assert index.nearest([4, 4, 4]) == 3
    # [1,2,3] and [3,2,1] have equal count vectors: edit distance picks the identical order
    assert index.nearest([3, 2, 1]) == 1
    assert index.nearest([1, 2, 3]) == 0
    # equal cosine and equal edit distance: the earlier shot
    tie = KnnIndex([[1, 2], [2, 1]], codebook_size=4)
    assert tie.nearest([1, 1, 2, 2]) == 0
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2 and edit_distance([], [1]) == 1


def baseline(backend: str, k: int, runs: Path, **fields: Any) -> DecodeResult:
    """`decode` with a baseline backend (its own name as the model) over the runs of `runs`."""
    return decode(DecodeConfig(model=backend, k=k, runs=runs, backend=backend, **fields))


def test_baselines_end_to_end_and_report(tmp_path):
    make_run(tmp_path / "exp" / "k32", k=32, seed=1)
    make_run(tmp_path / "exp" / "k64", k=64, seed=2)
    for k in (32, 64):
        for backend in ("naive", "knn"):
            result = baseline(backend, k, tmp_path / "exp")
            s = result.summary
            assert s["n"] == 15 and s["parse_fails"] == 0 and s["complete"]
            assert 0 <= s["attr_acc"] <= 1 and s["pos_mse"] >= 0
            assert s["protocol"]["shots"] == 50 and s["protocol"]["seed"] == 0
    knn = baseline("knn", 64, tmp_path / "exp").summary
    perm = baseline("knn", 64, tmp_path / "exp", protocol=ProtocolConfig(permute_codes=True))
    assert perm.folder.name == "knn-permuted" and perm.summary["permuted"]
    path, _ = build_report(tmp_path / "exp")
    text = path.read_text()
    assert text.count("| naive |") == 2 and text.count("| knn |") == 2 and "knn-permuted" in text
    assert knn["k"] == 64
    # The definitions are recorded and printed beside the numbers.
    assert knn["scoring"] == {
        "matching": "attributes",
        "position_error": "mixed",
        "attr_accuracy": "true",
    }
    assert "| attributes / mixed / true; naive=proportional |" in text
    assert "| attributes / mixed / true |" in text  # knn rows: no naive definition
    scoring = {"matching": "position", "position_error": "coordinate", "attr_accuracy": "matched"}
    modal = baseline("naive", 32, tmp_path / "exp", naive="modal", scoring=scoring).summary
    assert modal["naive_definition"] == "modal" and modal["endpoint"] == "naive:modal"
    assert modal["scoring"] == scoring
    _, _ = build_report(tmp_path / "exp")
    assert "| position / coordinate / matched; naive=modal |" in path.read_text()


def test_knn_recovers_shot_scenes(tmp_path):
    """When test images duplicate shots, knn answers their scenes exactly: AP 1."""
    path = make_run(tmp_path / "k64", k=64, n_train=50, n_val=0, seed=5)
    programs = read_programs(path)
    # append copies of 15 train rows as val rows
    idx = list(range(15))
    copy = programs.subset(idx)
    copy.split = ["val"] * 15
    copy.image_id = [f"copy{i}" for i in idx]
    merged = Programs(
        codes=programs.codes + copy.codes,
        image_id=programs.image_id + copy.image_id,
        split=programs.split + copy.split,
        n_objects=np.concatenate([programs.n_objects, copy.n_objects]),
        scene=programs.scene + copy.scene,
        codebook_size=64,
    )
    write_programs(path, merged)
    s = decode(DecodeConfig(model="knn", k=64, runs=tmp_path / "k64", backend="knn")).summary
    assert s["count_err"] == 0 and s["attr_acc"] == 1.0 and s["ap"]["0.125"] == pytest.approx(1.0)
    # the permutation control cuts the link between query and shot codes: exactness is gone
    control = ProtocolConfig(permute_codes=True)
    p = decode(
        DecodeConfig(model="knn", k=64, runs=tmp_path / "k64", backend="knn", protocol=control)
    )
    assert p.summary["ap"]["0.125"] < 0.5


def test_never_imports_torch(tmp_path):
    make_run(tmp_path / "k64", k=64)
    code = f"""
import sys
from typer.testing import CliRunner
from llm_decode.cli import app
import llm_decode.backends.openai_compat, llm_decode.backends.baselines, llm_decode.testing.fake_server
result = CliRunner().invoke(app, ["decode", "--backend", "naive", "--k", "64", "--runs", r"{tmp_path / "k64"}"])
assert result.exit_code == 0, result.output
bad = [m for m in ("torch", "transformers") if m in sys.modules]
assert not bad, bad
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]


def test_vllm_backend_missing_is_one_clear_line(tmp_path):
    pytest.importorskip("typer")
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    make_run(tmp_path / "k64", k=64)
    from typer.testing import CliRunner

    from llm_decode.cli import app

    result = CliRunner().invoke(
        app,
        [
            "decode",
            "--model",
            "qwen3.5",
            "--backend",
            "vllm",
            "--k",
            "64",
            "--runs",
            str(tmp_path / "k64"),
            "--test",
            "2",
        ],
    )
    assert result.exit_code == 1  # the work cannot run here (1); 2 is for a wrong command line
    assert "needs vLLM installed" in result.output and "Traceback" not in result.output


def test_cli_rejects_bad_options_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from llm_decode.cli import app

    make_run(tmp_path / "k64", k=64)
    runner = CliRunner()
    bad_backend = runner.invoke(
        app, ["decode", "--backend", "gpt", "--model", "x", "--k", "64", "--runs", str(tmp_path)]
    )
    assert bad_backend.exit_code == 2 and "option backend" in bad_backend.output
    no_run = runner.invoke(
        app, ["decode", "--backend", "naive", "--k", "99", "--runs", str(tmp_path)]
    )
    assert no_run.exit_code == 1 and "no run with K=99; runs found: k64 (K=64)" in no_run.output
    no_model = runner.invoke(app, ["decode", "--k", "64", "--runs", str(tmp_path)])
    assert no_model.exit_code == 2 and "--model is required" in no_model.output
    assert runner.invoke(app, ["--version"]).output.startswith("strop-llm ")
