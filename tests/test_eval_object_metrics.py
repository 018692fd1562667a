"""FG-ARI and mBO (`strop.evaluation.object_metrics`): hand-computed cases, scikit-learn's
`adjusted_rand_score` on foreground pixels, the renderer's instance masks, and `strop analyze` (which refuses a mask it cannot read)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from helpers import strop
from PIL import Image

from strop.data.renderer import MASKS_DIR, generate_dataset
from strop.evaluation.object_metrics import (
    APPROXIMATE,
    EXACT,
    adjusted_rand_index,
    fg_ari,
    ground_truth,
    mbo,
    upsample_attribution,
)
from strop.scenes import load_scenes

REAL_FIXTURE = Path(__file__).parent / "fixtures" / "clevr_real"


def test_ari_hand_computed_cases():
    # identical up to relabelling
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([5, 5, 2, 2])) == 1.0
    # table [[2,0],[1,1]]: index 1, expected 2*3/6 = 1, max 2.5 -> 0
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == 0.0
    # table [[2,1,0],[0,1,2]]: index 2, expected 6*3/15 = 1.2, max 4.5 -> 0.8/3.3
    true, pred = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(true, pred) == pytest.approx(0.8 / 3.3)


def test_fg_ari_ignores_background_pixels():
    true = np.array([[-1, -1, 0, 0], [-1, -1, 1, 1]])
    good = np.array([[7, 8, 3, 3], [9, 9, 4, 4]])  # background split arbitrarily
    assert fg_ari(true, good) == 1.0
    assert fg_ari(np.full((2, 2), -1), good[:, :2]) is None


def test_mbo_hand_computed():
    true = np.array([[0, 0, -1, -1], [0, 0, 1, -1]])
    # token 3 covers object 0's left column and two background pixels (IoU 2/6), token 4
    # its right column, object 1 and one background pixel (IoU 2/6 with object 0, 1/4 with 1)
    pred = np.array([[3, 4, 4, 3], [3, 4, 4, 3]])
    assert mbo(true, pred) == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert mbo(np.full((2, 2), -1), pred[:, :2]) is None


def test_fg_ari_matches_scikit_learn_on_foreground_pixels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(30):
        shape = (int(rng.integers(3, 12)), int(rng.integers(3, 12)))
        true = rng.integers(-1, int(rng.integers(1, 6)), size=shape)
        pred = rng.integers(0, int(rng.integers(1, 8)), size=shape)
        if trial % 5 == 0:  # partly agreeing labelings
            pred = np.where(rng.random(shape) < 0.7, true + 1, pred)
        fg = true != -1
        ours = fg_ari(true, pred)
        if fg.sum() < 2:
            assert ours is None
            continue
        assert ours == pytest.approx(sklearn_metrics.adjusted_rand_score(true[fg], pred[fg]))


def test_upsample_attribution_maps_pixels_to_their_patch():
    att = np.arange(6)  # a 2 x 3 grid
    up = upsample_attribution(att, (2, 3), (4, 9))
    assert up.shape == (4, 9) and up[0, 0] == 0 and up[3, 8] == 5 and up[1, 3] == 1


def test_renderer_writes_instance_masks_recorded_in_the_scenes_file(tmp_path):
    root = tmp_path / "synth"
    generate_dataset(root, n=4, size=48, seed=1, splits=(1, 0, 0), progress=False)
    info, scenes = load_scenes(root / "scenes" / "CLEVR_train_scenes.json")
    assert info["masks"] == MASKS_DIR
    for scene in scenes:
        path = root / MASKS_DIR / "train" / scene.mask_filename
        labels = np.asarray(Image.open(path))
        assert labels.shape == (48, 48) and labels.dtype == np.uint8
        assert labels.max() <= scene.n_objects and (labels == 0).any()
        # every object's projected centre lies on its own label (or a nearer object's)
        for i, obj in enumerate(scene.objects):
            u, v, _ = obj.pixel_coords
            assert labels[int(v), int(u)] != 0, (scene.image_filename, i)
        truth, source = ground_truth(root, "train", scene)
        assert source == EXACT and truth.min() == -1 and truth.max() == labels.max() - 1


def test_old_scenes_without_masks_fall_back_to_approximate_ellipses(tmp_path):
    root = tmp_path / "synth"
    generate_dataset(root, n=2, size=48, seed=1, splits=(1, 0, 0), progress=False)
    shutil.rmtree(root / MASKS_DIR)
    path = root / "scenes" / "CLEVR_train_scenes.json"
    data = json.loads(path.read_text())
    for s in data["scenes"]:
        del s["mask_filename"]
    path.write_text(json.dumps(data))
    _, scenes = load_scenes(path)  # an older dataset still loads
    assert scenes[0].mask_filename is None
    truth, source = ground_truth(root, "train", scenes[0])
    assert source == APPROXIMATE and truth.shape == (48, 48) and truth.max() >= 0


def test_real_clevr_masks_are_approximate_at_the_image_frame():
    root = REAL_FIXTURE / "CLEVR_v1.0"
    if not root.is_dir():
        pytest.skip("no real CLEVR fixture")
    _, scenes = load_scenes(root / "scenes" / "CLEVR_train_scenes.json")
    truth, source = ground_truth(root, "train", scenes[0])
    assert source == APPROXIMATE and truth.shape == (320, 480)


def test_analyze_reports_fg_ari_and_mbo_against_exact_masks(run_dir):  # noqa: F811
    from strop.evaluation.analyze import analyze_run

    result = analyze_run(run_dir, n_images=3, n_random_pairs=2, progress=False)
    om = json.loads((run_dir / "analysis" / "analysis.json").read_text())["object_metrics"]
    assert om == json.loads(json.dumps(result["object_metrics"]))
    assert om["masks"] == EXACT and om["approximate"] is False
    assert om["n_images"] == 3 and om["n_objects"] >= 9
    assert 0 <= om["mbo"] <= 1 and -1 <= om["fg_ari"] <= 1
    assert om["fg_ari_ci"][0] <= om["fg_ari"] <= om["fg_ari_ci"][1]


def test_report_shows_order_probe_and_object_metrics_per_k(run_dir, tmp_path):  # noqa: F811
    from strop.evaluation.analyze import analyze_run
    from strop.evaluation.evaluate import evaluate_run
    from strop.evaluation.report import build_report

    probe = evaluate_run(run_dir, progress=False, lpips=False)["order_probe"]
    om = analyze_run(run_dir, n_images=2, n_random_pairs=2, progress=False)["object_metrics"]
    md, html = build_report(run_dir, out_dir=tmp_path)
    text = md.read_text()
    assert "Does token order matter?" in text and probe["verdict"] in text
    assert "K=16 (k16): order" in text
    assert f"{om['fg_ari']:.3f} [" in text and EXACT in text
    assert 'data-table="order_probe"' in html.read_text()
    assert 'data-table="object_metrics"' in html.read_text()
    assert "no QA results: run `strop-llm qa" in text


def test_eval_and_analyze_commands_print_the_verdict_and_fg_ari(run_dir):  # noqa: F811
    from typer.testing import CliRunner

    from strop.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(run_dir), "--no-lpips", "--order-probe", "4"])
    assert res.exit_code == 0 and "order " in res.output and "(n=" in res.output, res.output
    res = runner.invoke(app, ["analyze", str(run_dir), "--n-images", "2", "--random-pairs", "2"])
    assert res.exit_code == 0, res.output
    assert "FG-ARI " in res.output and "mBO " in res.output and EXACT in res.output


# --------------------------------------------------------------------------- bad masks


def _mask_png(path: Path, array, mode: str | None = None) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


def _edit_val_scenes(root: Path, edit) -> None:
    path = root / "scenes" / "CLEVR_val_scenes.json"
    data = json.loads(path.read_text())
    edit(data["scenes"])
    path.write_text(json.dumps(data))


def _fewest_objects(root: Path) -> tuple[str, int]:
    scenes = json.loads((root / "scenes" / "CLEVR_val_scenes.json").read_text())["scenes"]
    scene = min(scenes, key=lambda s: len(s["objects"]))
    return scene["mask_filename"], len(scene["objects"])


def _damage(kind: str, root: Path) -> str:
    """Damage one val mask of a copied dataset the way `kind` says; returns what the one
    error line must contain."""
    import os

    import numpy as np

    masks = root / "masks" / "val"
    name, n_objects = _fewest_objects(root)
    path = masks / name
    if kind == "corrupt":
        path.write_bytes(b"not a png at all")
        return f"{path} field mask: cannot decode the mask (not an image file)"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:60])
        return f"{path} field mask: cannot decode the mask"
    if kind == "missing":
        path.unlink()
        return f"field mask_filename: {path} not found"
    if kind == "fifo":
        path.unlink()
        os.mkfifo(path)
        return f"{path} field mask: not a regular file (a named pipe)"
    if kind == "other size":
        _mask_png(path, np.zeros((10, 12)))
        return f"{path} field mask: 12x10 pixels, but the scene's image frame is 32x32"
    if kind == "rgb":
        _mask_png(path, np.zeros((32, 32, 3)), "RGB")
        return f"{path} field mask: expected a one-channel label image"
    if kind == "more labels than objects":
        labels = np.zeros((32, 32))
        labels[:4] = n_objects + 1
        _mask_png(path, labels)
        return f"{path} field mask: label {n_objects + 1} but the scene has {n_objects} objects"
    if kind == "path in the name":

        def edit(scenes):
            next(s for s in scenes if s["mask_filename"] == name)["mask_filename"] = "../" + name

        _edit_val_scenes(root, edit)
        return f"field mask_filename: not a bare file name ('../{name}')"
    raise AssertionError(kind)


MASK_FAULTS = [
    "corrupt",
    "truncated",
    "missing",
    "fifo",
    "other size",
    "rgb",
    "more labels than objects",
    "path in the name",
]


@pytest.mark.parametrize("kind", MASK_FAULTS)
def test_analyze_refuses_a_bad_instance_mask_in_one_line(tiny_run, clevr, tmp_path, kind) -> None:
    """Corrupt/truncated masks were tracebacks, an RGB one "too many values to unpack", a
    missing or named-pipe one a silent switch to approximate ellipses, and a mask of another
    size or with more labels than objects was scored as if it fitted."""
    data = Path(shutil.copytree(clevr, tmp_path / "clevr"))
    copy = Path(shutil.copytree(tiny_run, tmp_path / "exp" / "k16"))
    says = _damage(kind, data)
    done = strop("analyze", copy, "--data", data, "--n-images", 4, "--random-pairs", 2)
    line = one_error_line(done, 1)
    assert says in line, line
    assert not (copy / "analysis" / "analysis.json").exists()


def test_scenes_without_masks_are_scored_approximate(tiny_run, clevr, tmp_path) -> None:
    """Datasets from before masks existed (no `mask_filename`) still load: ellipse masks,
    labelled approximate."""
    data = Path(shutil.copytree(clevr, tmp_path / "clevr"))
    copy = Path(shutil.copytree(tiny_run, tmp_path / "exp" / "k16"))

    def edit(scenes):
        for scene in scenes:
            scene.pop("mask_filename", None)

    _edit_val_scenes(data, edit)
    done = strop("analyze", copy, "--data", data, "--n-images", 4, "--random-pairs", 2)
    assert done.exit_code == 0, done.output
    metrics = json.loads((copy / "analysis" / "analysis.json").read_text())["object_metrics"]
    assert metrics["approximate"] is True and metrics["n_objects"] > 0
