"""CLEVR-like renderer: CLEVR's placement rules, determinism, geometry, occlusion, files, and
a plan made as the rendering goes (10^11 scenes start at once)."""

from __future__ import annotations

import hashlib
import math
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import script_path
from PIL import Image
from scipy.optimize import nnls

from strop.data import camera, placement, raycast, shading
from strop.data import renderer as R
from strop.scenes import COLORS, MATERIALS, SHAPES, SIZES, Scene, SceneObject, load_scenes


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [
        placement.sample_scene(np.random.default_rng([3, 0, i]), i, "train") for i in range(150)
    ]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = dict(n=6, size=40, splits=(0.5, 0.5, 0.0), progress=False)
    R.generate_dataset(tmp_path / "a", seed=1, **kwargs)
    R.generate_dataset(tmp_path / "b", seed=1, **kwargs)
    R.generate_dataset(tmp_path / "c", seed=2, **kwargs)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    # 6 images, 2 scenes files (the empty test split writes nothing), the folder's marker
    assert len(a) == 6 + 6 + 2 + 1 and R.MARKER in a  # images, their instance masks
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_rerun_with_fewer_images_removes_stale_ones(tmp_path: Path) -> None:
    R.generate_dataset(tmp_path / "a", 6, size=16, splits=(0.5, 0.5, 0.0), progress=False)
    (tmp_path / "a" / "images" / "train" / "mine.png").write_bytes(b"not ours")
    R.generate_dataset(
        tmp_path / "a", 3, size=16, splits=(1.0, 0.0, 0.0), progress=False, overwrite=True
    )
    R.generate_dataset(tmp_path / "b", 3, size=16, splits=(1.0, 0.0, 0.0), progress=False)
    a = _digest(tmp_path / "a")
    assert a.pop("images/train/mine.png")  # files we did not write are left alone
    assert a == _digest(tmp_path / "b")


def test_rendering_into_a_dataset_it_did_not_write_changes_nothing(tmp_path: Path) -> None:
    """Issue 14 item 1: real CLEVR uses the same file names; a folder this command did not
    write is refused, whatever the flags, and not one file is touched."""
    real = tmp_path / "CLEVR_v1.0"
    (real / "images" / "train").mkdir(parents=True)
    for i in range(8):
        (real / "images" / "train" / f"CLEVR_train_{i:06d}.png").write_bytes(b"real %d" % i)
    before = _digest(real)
    for overwrite in (False, True):
        with pytest.raises(R.OutputFolderError, match="not written by strop data clevr-synth"):
            R.generate_dataset(real, 3, size=16, progress=False, overwrite=overwrite)
    assert _digest(real) == before


def test_a_smaller_rerun_needs_overwrite_and_keeps_foreign_files(tmp_path: Path) -> None:
    """Writing 3 scenes into our own folder of 8 used to leave 3, silently (exit 0)."""
    out = tmp_path / "d"
    R.generate_dataset(out, 8, size=16, splits=(1, 0, 0), progress=False)
    before = _digest(out)
    with pytest.raises(R.OutputFolderError, match=r"--n 8 .*--overwrite.*--n 3"):
        R.generate_dataset(out, 3, size=16, splits=(1, 0, 0), progress=False)
    assert _digest(out) == before
    # The same parameters again: same bytes, nothing lost, no flag needed.
    R.generate_dataset(out, 8, size=16, splits=(1, 0, 0), progress=False)
    assert _digest(out) == before
    (out / "images" / "train" / "CLEVR_train_000011.png").write_bytes(b"added by hand")
    R.generate_dataset(out, 3, size=16, splits=(1, 0, 0), progress=False, overwrite=True)
    names = sorted(p.name for p in (out / "images" / "train").iterdir())
    assert names == [f"CLEVR_train_{i:06d}.png" for i in (0, 1, 2, 11)]


def test_cli_out_is_a_file_or_foreign_folder_one_line(tmp_path: Path, console_script) -> None:
    import subprocess

    target = tmp_path / "afile"
    target.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for out, expected in ((target, "exists and is not a folder"), (foreign, "not empty")):
        done = subprocess.run(
            [console_script("strop"), "data", "clevr-synth", "--n", "2", "--size", "16"]
            + ["--out", str(out), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr  # --out is a wrong command line
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(out) in lines[0], done.stderr
    assert (foreign / "notes.txt").read_text() == "mine" and target.read_text() == "x"


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    kwargs = dict(n=55, size=16, seed=4, splits=(1, 0, 0), progress=False)  # 3 chunks
    R.generate_dataset(tmp_path / "one", workers=1, **kwargs)
    R.generate_dataset(tmp_path / "two", workers=2, **kwargs)
    one, two = _digest(tmp_path / "one"), _digest(tmp_path / "two")
    assert len(one) == 55 + 55 + 1 + 1 and one == two  # images, masks, scenes file, marker


def test_scene_does_not_depend_on_output_size() -> None:
    s1 = placement.sample_scene(np.random.default_rng(5), 0, "val")
    s2 = placement.sample_scene(np.random.default_rng(5), 0, "val")
    # Before rendering, pixel_coords are in real CLEVR's 480 x 320 frame.
    assert all(0 <= o.pixel_coords[0] < 480 and 0 <= o.pixel_coords[1] < 320 for o in s1.objects)
    u480, v320, _ = s1.objects[0].pixel_coords
    shading.render_scene(s1, 64)
    assert s1.objects[0].pixel_coords[:2] == pytest.approx((u480 * 64 / 480, v320 / 5), abs=0.6)
    shading.render_scene(s1, 32)
    shading.render_scene(s2, 96)
    assert [o.coords_3d for o in s1.objects] == [o.coords_3d for o in s2.objects]
    assert s1.objects[0].pixel_coords != s2.objects[0].pixel_coords  # per size


def test_counts_bounds_and_vocabularies(scenes: list[Scene]) -> None:
    counts = [s.n_objects for s in scenes]
    assert set(counts) == set(range(3, 11))  # 150 draws cover every count in 3..10
    seen = {k: set() for k in ("color", "shape", "material", "size")}
    for s in scenes:
        for o in s.objects:
            x, y, z = o.coords_3d
            assert -3 <= x <= 3 and -3 <= y <= 3
            want_z = placement.SIZE_RADIUS[o.size] / (math.sqrt(2) if o.shape == "cube" else 1)
            assert z == pytest.approx(want_z)
            assert 0 <= o.rotation < 360
            for k in seen:
                seen[k].add(getattr(o, k))
    assert seen == {
        "color": set(COLORS),
        "shape": set(SHAPES),
        "material": set(MATERIALS),
        "size": set(SIZES),
    }


def test_min_distance_and_directional_margins(scenes: list[Scene]) -> None:
    left = np.array(camera.DIRECTIONS["left"][:2])
    behind = np.array(camera.DIRECTIONS["behind"][:2])
    pairs = 0
    for s in scenes:
        objs = s.objects
        for i in range(len(objs)):
            for j in range(i):
                d = np.subtract(objs[i].xy, objs[j].xy)
                gap = (
                    np.linalg.norm(d)
                    - placement.SIZE_RADIUS[objs[i].size]
                    - placement.SIZE_RADIUS[objs[j].size]
                )
                assert gap >= placement.MIN_DIST
                assert abs(d @ left) >= placement.MARGIN and abs(d @ behind) >= placement.MARGIN
                pairs += 1
    assert pairs > 500


def test_directions_match_camera_and_relationships_follow_clevr(scenes: list[Scene]) -> None:
    d = {k: np.array(v) for k, v in camera.DIRECTIONS.items()}
    for k in ("left", "behind"):
        assert np.linalg.norm(d[k]) == pytest.approx(1) and d[k][2] == 0
    assert d["left"] @ d["behind"] == pytest.approx(0, abs=1e-9)
    assert d["behind"] @ camera.CAMERA.forward > 0  # behind = away from the camera
    assert d["right"] @ camera.CAMERA.right > 0
    for s in scenes[:40]:
        xyz = [o.coords_3d for o in s.objects]
        assert s.directions == camera.DIRECTIONS
        for rel in ("right", "behind", "front", "left"):
            for i in range(len(xyz)):
                want = [
                    j
                    for j in range(len(xyz))
                    if j != i and np.dot(np.subtract(xyz[j], xyz[i]), d[rel]) > 0.2
                ]
                assert s.relationships[rel][i] == want
        # j is right of i exactly when i is left of j.
        n = s.n_objects
        right = {(i, j) for i in range(n) for j in s.relationships["right"][i]}
        left = {(j, i) for i in range(n) for j in s.relationships["left"][i]}
        assert right == left


def test_every_object_visible_in_its_scene(scenes: list[Scene]) -> None:
    for s in scenes[:30]:
        layers = shading.render_layers(s, 64, supersample=1)
        counts = np.bincount(layers.object_ids[layers.object_ids >= 0], minlength=s.n_objects)
        assert counts.min() >= placement.MIN_VISIBLE_FRACTION * 64 * 64


def _nearest_palette(rgb: np.ndarray) -> str:
    """The CLEVR colour that best explains `rgb` as shading * colour + grey (light, reflection)."""

    def residual(name: str) -> float:
        basis = np.stack([np.asarray(raycast.COLOR_RGB[name], float), np.ones(3)], axis=1)
        return float(nnls(basis, rgb)[1])  # non-negative shading and grey

    return min((c for c in COLORS if c != "gray"), key=residual)


def test_pixel_coords_point_at_the_object_drawn_in_its_colour(scenes: list[Scene]) -> None:
    size, checked = 128, 0
    for s in scenes[:25]:
        layers = shading.render_layers(s, size)
        for i, o in enumerate(s.objects):
            u, v, depth = o.pixel_coords
            assert 0 <= u < size and 0 <= v < size and depth > 0
            hit = int(layers.object_ids[int(v), int(u)])
            mask = layers.object_ids == i
            if hit != i:  # occluded at its centre: only by something nearer
                assert hit >= 0 and s.objects[hit].pixel_coords[2] < depth
                continue
            if o.color == "gray" or mask.sum() < 20:
                continue  # grey has no hue to check; tiny objects are mostly edge pixels
            # Vote over interior pixels (all four neighbours on the object too).
            inner = mask.copy()
            inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
            pixels = layers.image[inner].astype(float)[:40]
            votes = Counter(_nearest_palette(p) for p in pixels)
            assert votes.most_common(1)[0][0] == o.color, (s.image_index, i, o.color, votes)
            checked += 1
    assert checked > 60


def _two_spheres_in_line() -> Scene:
    """A small red sphere hidden behind a large blue one on the same camera ray."""
    target = np.array([0.0, 0.0, 0.7])
    ray = target - camera.CAMERA.pos
    ray /= np.linalg.norm(ray)
    far = target + ray * 3.0
    far[2] = 0.35
    objs = [
        SceneObject(
            color="red", shape="sphere", material="rubber", size="small", coords_3d=tuple(far)
        ),
        SceneObject(
            color="blue", shape="sphere", material="rubber", size="large", coords_3d=(0, 0, 0.7)
        ),
    ]
    return Scene(image_index=0, image_filename="x.png", split="val", objects=objs)


def test_nearer_object_occludes_whatever_the_order() -> None:
    scene = _two_spheres_in_line()
    layers = shading.render_layers(scene, 96)
    u, v, _ = scene.objects[0].pixel_coords
    assert layers.object_ids[int(v), int(u)] == 1  # the far red sphere's centre shows blue
    flipped = scene.model_copy(update={"objects": scene.objects[::-1]})
    assert np.array_equal(shading.render_layers(flipped, 96).image, layers.image)


def test_metal_has_more_contrast_than_rubber() -> None:
    base = SceneObject(
        color="green", shape="sphere", material="rubber", size="large", coords_3d=(0, 0, 0.7)
    )
    out = {}
    for material in ("rubber", "metal"):
        obj = base.model_copy(update={"material": material})
        scene = Scene(image_index=0, image_filename="x.png", split="val", objects=[obj])
        layers = shading.render_layers(scene, 96)
        lum = layers.image[layers.object_ids == 0].astype(float).mean(-1)
        out[material] = (lum.std(), lum.max())
    assert out["metal"][0] > 1.3 * out["rubber"][0]
    assert out["metal"][1] > out["rubber"][1] + 20  # a specular highlight


def test_cube_rotation_changes_the_silhouette() -> None:
    def render(rot: float) -> np.ndarray:
        obj = SceneObject(
            color="red",
            shape="cube",
            material="rubber",
            size="large",
            coords_3d=(0, 0, 0.495),
            rotation=rot,
        )
        return shading.render_layers(
            Scene(image_index=0, image_filename="x.png", split="val", objects=[obj]), 64
        ).object_ids

    assert np.array_equal(render(10.0), render(100.0))  # a cube turned by 90 degrees is itself
    assert not np.array_equal(render(10.0), render(40.0))


def test_generate_dataset_layout_and_scene_files(synth_clevr_ro: Path) -> None:
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        files = sorted((synth_clevr_ro / "images" / split).iterdir())
        assert [f.name for f in files] == [f"CLEVR_{split}_{i:06d}.png" for i in range(n)]
        info, scenes = load_scenes(synth_clevr_ro / "scenes" / f"CLEVR_{split}_scenes.json")
        assert info["split"] == split and info["image_size"] == 48
        assert [s.image_filename for s in scenes] == [f.name for f in files]
        assert all(s.split == split for s in scenes)
        for s in scenes:
            assert all(
                0 <= o.pixel_coords[0] < 48 and 0 <= o.pixel_coords[1] < 48 for o in s.objects
            )
        with Image.open(files[0]) as im:
            assert im.size == (48, 48) and im.mode == "RGB"
    assert not [p for p in synth_clevr_ro.rglob(".*")]  # no temporary files


def test_interrupted_write_leaves_no_torn_png(tmp_path: Path, monkeypatch) -> None:
    real_save = Image.Image.save
    calls = {"n": 0}

    def dying_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # image, mask, image, mask, then the third image dies
            fp.write(b"\x89PNG\r\n\x1a\n partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        R.generate_dataset(tmp_path, 5, size=24, progress=False, splits=(1, 0, 0))
    files = sorted(p.name for p in (tmp_path / "images" / "train").iterdir())
    assert files == ["CLEVR_train_000000.png", "CLEVR_train_000001.png"]
    assert sorted(p.name for p in (tmp_path / "masks" / "train").iterdir()) == files
    for name in files:
        with Image.open(tmp_path / "images" / "train" / name) as im:
            im.load()


def test_split_counts_sum_to_n() -> None:
    assert R.split_counts(1000, (0.8, 0.1, 0.1)) == {"train": 800, "val": 100, "test": 100}
    assert sum(R.split_counts(7, (0.8, 0.1, 0.1)).values()) == 7
    assert R.split_counts(10, (1, 1, 0)) == {"train": 5, "val": 5, "test": 0}
    with pytest.raises(ValueError, match="three non-negative"):
        R.split_counts(10, (0.5, -0.5, 1))


def test_cli_clevr_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from strop.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(
        app,
        [
            "data",
            "clevr-synth",
            "--n",
            "5",
            "--size",
            "32",
            "--seed",
            "3",
            "--out",
            str(out),
            "--splits",
            "0.6,0.2,0.2",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "wrote 5 scenes (train 3, val 1, test 1)" in res.output
    assert len(list((out / "images").rglob("*.png"))) == 5
    bad = runner.invoke(
        app, ["data", "clevr-synth", "--n", "5", "--out", str(out), "--splits", "0.5,0.5"]
    )
    assert bad.exit_code != 0 and "three" in bad.output


# --------------------------------------------------------------------------- scale


def test_clevr_synth_of_10_to_the_11_scenes_starts_at_once(tmp_path: Path) -> None:
    """The plan is made as the rendering goes: the first image appears within seconds, in
    bounded memory, instead of after building 4 billion chunk descriptions."""
    out = tmp_path / "huge"
    proc = subprocess.Popen(
        [
            script_path("strop"),
            "data",
            "clevr-synth",
            "--n",
            str(10**11),
            "--size",
            "16",
            "--workers",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        first = out / "images" / "train" / "CLEVR_train_000000.png"
        while not first.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert first.is_file(), proc.stdout.read() if proc.poll() is not None else "no image yet"
    finally:
        proc.kill()
        proc.wait(timeout=60)
