"""export / eval / analyze on a tiny untrained model saved as a real run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import UNTRAINED_N_VAL as N_VAL

from strop.evaluation.batch_encoding import encode_batch
from strop.evaluation.erasure import erasure_maps, erasure_order
from strop.evaluation.evaluate import evaluate_run
from strop.evaluation.export import export_programs
from strop.evaluation.object_masks import object_label_map
from strop.model.length_modes import LengthModeError, parse_length_mode, search_lengths
from strop.model.losses import align_error
from strop.runs import read_programs
from strop.scenes import Scene, parse_scene
from strop.training.checkpoint import load_model


def red_cube_and_blue_sphere(red: dict, blue: dict) -> Scene:
    """A val scene of a large red metal cube and a small blue rubber sphere, placed by `red`
    and `blue` (their `3d_coords` and, where given, `pixel_coords`)."""
    cube = {"color": "red", "shape": "cube", "material": "metal", "size": "large", **red}
    sphere = {"color": "blue", "shape": "sphere", "material": "rubber", "size": "small", **blue}
    return parse_scene(
        {"image_index": 0, "image_filename": "x.png", "split": "val", "objects": [cube, sphere]}
    )


def test_parse_length_mode():
    assert str(parse_length_mode("search:0.25")) == "search:0.25"
    assert parse_length_mode("FIXED").kind == "fixed"
    for bad in ("search:", "search:-1", "search:abc", "longest"):
        with pytest.raises(LengthModeError, match="--length-mode"):
            parse_length_mode(bad)


def test_export_round_trip_reinterprets_to_the_same_field(run_dir, dataset):
    path = export_programs(run_dir, split="val", batch_size=4, progress=False)
    programs = read_programs(path)
    assert len(programs) == N_VAL and programs.codebook_size == 16
    assert programs.meta["length_mode"] == "head" and programs.meta["teacher"] == "pixels"
    scenes = [parse_scene(json.loads(s)) for s in programs.scene]
    assert programs.n_objects.tolist() == [s.n_objects for s in scenes]
    assert programs.image_id[0] == "CLEVR_val_000000"

    model, cfg = load_model(run_dir)
    from strop.data.datasets import ClevrDataset

    images = torch.stack([ClevrDataset(dataset, "val", 32)[i]["image"] for i in range(N_VAL)])
    with torch.no_grad():
        feats = model.teacher_features(images)
        gen = model.generate(feats)
        direct = model.interpret_tokens(gen.tokens, torch.as_tensor(programs.lengths))
    padded = torch.as_tensor(programs.padded(pad=-1))
    stored = model.interpret(padded, torch.as_tensor(programs.lengths))
    torch.testing.assert_close(stored, direct, atol=1e-5, rtol=1e-4)
    # the stored lengths are the head's: clip(round(L_hat), L_min, L_max)
    assert programs.lengths.tolist() == model.head_lengths(feats).tolist()

    # datasets can read it as a plain table
    from datasets import load_dataset

    table = load_dataset("parquet", data_files=str(path), split="train")
    assert table[0]["codes"] == programs.codes[0].tolist() and table.num_rows == N_VAL


def test_export_several_splits_into_one_file(run_dir, dataset, tmp_path):
    path = export_programs(
        run_dir,
        split="train,val",
        batch_size=4,
        limit=3,
        progress=False,
        out=tmp_path / "p.parquet",
    )
    programs = read_programs(path)
    assert programs.split == ["train"] * 3 + ["val"] * 3
    assert programs.image_id[0].startswith("CLEVR_train_") and programs.image_id[3].startswith(
        "CLEVR_val_"
    )


def test_search_picks_the_shortest_prefix_under_eps(run_dir, dataset):
    model, cfg = load_model(run_dir)
    from strop.data.datasets import ClevrDataset

    images = torch.stack([ClevrDataset(dataset, "val", 32)[i]["image"] for i in range(3)])
    with torch.no_grad():
        feats = model.teacher_features(images)
        gen = model.generate(feats)
        l_max = cfg.model.l_max
        ref = torch.stack(
            [
                align_error(
                    model.interpret_tokens(gen.tokens, torch.full((3,), n)), feats, cfg.model.w_mse
                )
                for n in range(1, l_max + 1)
            ],
            dim=1,
        )
    eps = float(ref.median())
    lengths, errors = search_lengths(
        model, feats, gen.tokens, eps, cfg.model.w_mse, l_min=1, chunk=5
    )
    torch.testing.assert_close(errors, ref, atol=1e-5, rtol=1e-4)
    for i in range(3):
        below = (ref[i] <= eps).nonzero()
        expected = int(below[0]) + 1 if len(below) else l_max
        assert int(lengths[i]) == expected
    enc = encode_batch(model, images, parse_length_mode(f"search:{eps}"), cfg.model.w_mse, 1)
    assert enc.lengths.tolist() == lengths.tolist()
    assert ((enc.codes >= 0).sum(1) == enc.lengths).all()


def test_eval_writes_eval_json(run_dir):
    result = evaluate_run(run_dir, batch_size=4, progress=False, length_mode="search:0.5")
    on_disk = json.loads((run_dir / "eval.json").read_text())
    assert on_disk["cos"] == pytest.approx(result["cos"])
    for key in (
        "cos",
        "r2",
        "rmse",
        "cb_pct",
        "eff_pct",
        "ssim",
        "length_mean",
        "length_min",
        "length_max",
        "bits_per_image",
        "compression_ratio",
        "teacher",
        "head_matches_search",
    ):
        assert on_disk[key] is not None, key
    assert -1 <= result["cos"] <= 1 and 0 <= result["ssim"] <= 1 and 0 < result["cb_pct"] <= 100
    assert set(result["length_vs_objects"]) >= {
        "pearson",
        "pearson_ci",
        "spearman",
        "spearman_ci",
        "n",
    }
    assert result["length_vs_objects"]["n"] == N_VAL
    # P=16 patches of width 8*8*3=192 at fp16 over length * ceil(log2 16) bits
    assert result["compression_ratio"] == pytest.approx(16 * 192 * 16 / (4 * result["length_mean"]))
    assert result["teacher"] == "pixels" and result["length_mode"] == "search:0.5"


@pytest.fixture
def lpips_files(tmp_path, monkeypatch):
    """Random LPIPS weights in torchvision's and lpips' layouts; an empty torch hub cache."""
    from helpers import random_backbone, random_lin

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.save(random_backbone(), tmp_path / "alexnet.pth")
    torch.save(random_lin(), tmp_path / "alex.pth")
    return tmp_path / "alexnet.pth", tmp_path / "alex.pth"


def test_eval_scores_lpips_when_its_weights_are_given(run_dir, lpips_files):
    from strop.evaluation.lpips import installed_lin

    backbone, lin = lpips_files
    plain = evaluate_run(run_dir, batch_size=4, progress=False, write=False)
    if installed_lin() is None:  # nothing in the (empty) hub cache, no lpips package
        assert plain["lpips"] is None and "--lpips-backbone" in plain["lpips_note"]
    scored = evaluate_run(
        run_dir, batch_size=4, progress=False, lpips_backbone=backbone, lpips_lin=lin
    )
    assert 0 < scored["lpips"] < 10 and scored["ssim"] == plain["ssim"]
    assert scored["lpips_weights"] == {"backbone": str(backbone), "lin": str(lin)}
    assert json.loads((run_dir / "eval.json").read_text())["lpips"] == scored["lpips"]
    off = evaluate_run(run_dir, batch_size=4, progress=False, write=False, lpips=False)
    assert off["lpips"] is None and "--no-lpips" in off["lpips_note"]


def test_eval_cli_lpips_flags(run_dir, lpips_files):
    from typer.testing import CliRunner

    from strop.cli import app

    backbone, lin = lpips_files
    runner = CliRunner()
    args = ["eval", str(run_dir), "--limit", "4", "--batch-size", "4"]
    res = runner.invoke(app, [*args, "--lpips-backbone", str(backbone), "--lpips-lin", str(lin)])
    assert res.exit_code == 0 and " lpips " in res.output, res.output
    res = runner.invoke(app, [*args, "--lpips-backbone", str(lin.parent / "nope.pth")])
    assert res.exit_code == 1 and "LPIPS AlexNet backbone not found" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, [*args, "--lpips-backbone", str(lin), "--lpips-lin", str(lin)])
    assert res.exit_code == 1 and "lacks features.0.bias" in res.output, res.output
    res = runner.invoke(app, [*args, "--no-lpips", "--lpips-lin", str(lin)])
    assert res.exit_code == 2 and "contradicts" in res.output, res.output


def test_erasing_a_token_outside_the_prefix_changes_nothing(run_dir, dataset):
    model, _ = load_model(run_dir)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.generate(model.teacher_features(images)).tokens[0]
    length = 5
    maps = erasure_maps(model, tokens, length, [(6,), (7,), (6, 7), (0,), (4,)])
    assert np.all(maps[:3] == 0.0)  # inactive: bit-identical field
    assert np.all(maps[3:].max(axis=1) > 0)  # active tokens do matter
    order, new_len = erasure_order(8, length, (1, 6))
    assert order == [0, 2, 3, 4, 5, 7, 1, 6] and new_len == 4


def test_object_masks_follow_pixel_coords():
    scene = red_cube_and_blue_sphere(
        {"3d_coords": [0, 0, 0.7], "pixel_coords": [16, 16, 12.0]},
        {"3d_coords": [2, 2, 0.35], "pixel_coords": [60, 4, 14.0]},
    )
    labels = object_label_map(scene, (8, 8), 64, source_size=(64, 64)).reshape(8, 8)
    assert labels[2, 2] == 0 and labels[0, 7] == 1 and labels[7, 0] == -1
    # the same coordinates given at 128x128 source resolution land at half the position
    half = object_label_map(scene, (8, 8), 64, source_size=(128, 128)).reshape(8, 8)
    assert half[1, 1] == 0 and half[0, 3] == 1


def test_analyze_writes_json_and_figures(run_dir):
    from strop.evaluation.analyze import analyze_run

    result = analyze_run(run_dir, n_images=3, n_random_pairs=4, progress=False)
    on_disk = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert on_disk["n_images"] == 3 and on_disk["grid"] == [4, 4]
    assert on_disk["erasure"]["mean_effect_inactive"] in (
        None,
        0.0,
    )  # erasing past the prefix is exact
    assert on_disk["synergy"]["inactive_mean_abs"] in (None, 0.0)
    assert result["attribution"]["objects"] > 0
    cont = on_disk["contingency"]
    assert cont["rows"][0].startswith("color=") and len(cont["counts"]) == len(cont["rows"])
    # every object patch counts once per attribute: the color rows sum to the size rows
    counts = np.array(cont["counts"])
    colors = [i for i, r in enumerate(cont["rows"]) if r.startswith("color=")]
    sizes = [i for i, r in enumerate(cont["rows"]) if r.startswith("size=")]
    assert counts[colors].sum() == counts[sizes].sum() > 0
    figures = {p.name for p in (run_dir / "analysis" / "figures").glob("*.png")}
    assert {"contingency.png", "length_vs_objects.png", "erasure_CLEVR_val_000000.png"} <= figures


def test_cli_commands_end_to_end(run_dir):
    from typer.testing import CliRunner

    from strop.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["export", str(run_dir), "--length-mode", "fixed", "--batch-size", "4"]
    )
    assert res.exit_code == 0, res.output
    assert read_programs(run_dir / "programs.parquet").lengths.tolist() == [8] * N_VAL
    res = runner.invoke(app, ["eval", str(run_dir), "--limit", "4"])
    assert res.exit_code == 0 and "cos " in res.output, res.output
    res = runner.invoke(app, ["report", str(run_dir.parent)])
    assert res.exit_code == 0, res.output
    assert (run_dir.parent / "report.html").is_file()
    # errors at the edge are one line, exit status 2
    res = runner.invoke(app, ["export", str(run_dir), "--length-mode", "search:x"])
    assert res.exit_code == 2 and "EPS must be a number" in res.output
    res = runner.invoke(app, ["eval", str(run_dir.parent / "nope")])
    assert res.exit_code == 1 and "config not found" in res.output


def test_attributionrecord_agreement_and_contingency():
    from strop.evaluation.analyze import Accumulator, record_agreement, summarise
    from strop.evaluation.object_masks import best_iou

    labels = np.array([-1, 0, 0, -1, 1, 1, 1, -1])
    perfect = np.array([2, 0, 0, 2, 1, 1, 1, 2])  # token j owns exactly object j's patches
    assert best_iou(perfect, labels == 0) == 1.0 and best_iou(perfect, labels == 1) == 1.0
    assert best_iou(np.zeros(8, dtype=int), labels == 0) == pytest.approx(2 / 8)
    scene = red_cube_and_blue_sphere({"3d_coords": [0, 0, 0]}, {"3d_coords": [1, 1, 0]})
    acc = Accumulator()
    record_agreement(perfect, np.array([5, 9, 3]), labels, scene, np.random.default_rng(0), acc)
    out = summarise(acc, k=16, programs_codes=None)
    assert out["attribution"]["best_iou_mean"] == 1.0 > out["attribution"]["best_iou_shuffled"]
    assert out["attribution"]["object_token_nmi"] == pytest.approx(1.0)
    assert out["code_reuse"]["purity_by_attribute"]["color"] == pytest.approx(1.0)
    cont = out["contingency"]
    assert cont["codes"] == [5, 9]
    assert cont["counts"][cont["rows"].index("color=red")] == [2, 0]
    assert cont["counts"][cont["rows"].index("color=blue")] == [0, 3]


def test_pixel_frame_synthetic_and_real_clevr(dataset, tmp_path):
    from strop.data.datasets import ClevrDataset
    from strop.evaluation.object_masks import CLEVR_FRAME, pixel_frame

    scene = ClevrDataset(dataset, "val", 32).scenes[0]
    assert pixel_frame(dataset, "val", scene) == (64, 64)  # synthetic: info.image_size
    real = tmp_path / "CLEVR_v1.0" / "scenes"
    real.mkdir(parents=True)
    (real / "CLEVR_val_scenes.json").write_text('{"info": {"version": "1.0"}, "scenes": []}')
    assert pixel_frame(tmp_path, "val", scene) == CLEVR_FRAME


def test_export_refuses_a_scenes_file_that_lists_an_image_twice(run_dir, dataset, tmp_path):
    """Issue 17: duplicated rows put test images among the shots of a decode."""
    import json
    import shutil

    copy = tmp_path / "dup"
    shutil.copytree(dataset, copy)
    scenes_path = copy / "scenes" / "CLEVR_val_scenes.json"
    data = json.loads(scenes_path.read_text())
    data["scenes"].append(data["scenes"][0])
    scenes_path.write_text(json.dumps(data))
    name = data["scenes"][0]["image_filename"].rsplit(".", 1)[0]
    with pytest.raises(ValueError, match=f"1 image ids appear more than once \\({name}\\)"):
        export_programs(run_dir, split="val", data=copy, progress=False, out=tmp_path / "p.parquet")


def test_export_never_silently_drops_programs_of_other_splits(run_dir, tmp_path):
    """`strop export RUN --split val` over a train,val export refuses, naming the ways on."""
    from typer.testing import CliRunner

    from strop.cli import app

    runner = CliRunner()
    both = ["export", str(run_dir), "--split", "train,val", "--length-mode", "fixed"]
    assert runner.invoke(app, both).exit_code == 0
    programs = run_dir / "programs.parquet"
    before = programs.read_bytes()
    assert len(read_programs(programs)) == 2 * N_VAL

    for extra in (["--split", "val"], ["--split", "train,val", "--limit", "2"]):
        res = runner.invoke(app, ["export", str(run_dir), *extra])
        assert res.exit_code == 1, res.output
        line = res.output.strip()
        assert line.count("\n") == 0 and line.startswith("error: "), line
        assert "would drop" in line and "--replace" in line and "--out FILE" in line, line
        assert programs.read_bytes() == before

    other = tmp_path / "val.parquet"
    res = runner.invoke(app, ["export", str(run_dir), "--split", "val", "--out", str(other)])
    assert res.exit_code == 0 and len(read_programs(other)) == N_VAL, res.output
    res = runner.invoke(app, ["export", str(run_dir), "--split", "val", "--replace"])
    assert res.exit_code == 0 and len(read_programs(programs)) == N_VAL, res.output
    # The same splits again lose nothing: no --replace needed.
    assert runner.invoke(app, ["export", str(run_dir), "--split", "val"]).exit_code == 0
