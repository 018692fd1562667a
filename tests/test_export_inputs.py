"""`strop export` over inputs as people keep them (issue 28 item 2): WebDataset tar shards
(paths, brace patterns), hub datasets in streaming mode, images that fail to decode listed in
the manifest, torchrun ranks and kill -9 over tar inputs, and the README's lines run.

Real tar files written from the synthetic renderer's images, a real tiny run (the fixtures of
tests/test_programs_dataset.py), real subprocesses for torchrun and the kill."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import SLOW_EXPORT, assert_not_rewritten, file_stamps, kill_9_in_the_next_shard, rows
from helpers import SPREAD_N as N
from typer.testing import CliRunner

from strop.cli import app
from strop.data.datasets import DataError
from strop.data.inputs import open_input
from strop.data.webdataset import BraceError, expand_braces
from strop.evaluation.export import export_programs
from strop.evaluation.programs_dataset import dataset_dir_for
from strop.runs import RunFolderError, read_programs
from strop.scenes import load_scenes

REPO = Path(__file__).resolve().parents[1]
PER_TAR = 5  # samples per tar: each split of N = 10 images is two tars
PATTERN = "{split}-{000000..000001}.tar"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, out: Path, bad: dict[str, bytes] | None = None) -> Path:
    """The synthetic CLEVR folder `root` as WebDataset shards `out/{split}-00000K.tar`:
    KEY.png + KEY.json (the scene) + KEY.cls per sample; `bad` replaces the png of those keys."""
    out.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    for split in ("train", "val"):
        _, scenes = load_scenes(root / "scenes" / f"CLEVR_{split}_scenes.json")
        for t in range(0, len(scenes), PER_TAR):
            with tarfile.open(out / f"{split}-{t // PER_TAR:06d}.tar", "w") as tar:
                for scene in scenes[t : t + PER_TAR]:
                    key = Path(scene.image_filename).stem
                    png = (root / "images" / split / scene.image_filename).read_bytes()
                    add_member(tar, f"{key}.png", bad.get(key, png))
                    add_member(tar, f"{key}.json", scene.to_json().encode())
                    add_member(tar, f"{key}.cls", b"3")
    return out


@pytest.fixture(scope="module")
def shards(spread_dataset, tmp_path_factory):  # noqa: F811
    return write_shards(spread_dataset, tmp_path_factory.mktemp("wds"))


def tar_export(run, data, out, **kw):
    return export_programs(
        run, split="train,val", batch_size=3, progress=False, out=out, data=data, **kw
    )


# --------------------------------------------------------------------------- reading tars


def test_brace_patterns_expand_like_a_shell():
    assert expand_braces("d/s-{000..002}.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar"]
    assert expand_braces("{a,b{1..2}}.tar") == ["a.tar", "b1.tar", "b2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for bad, why in [
        ("s-{000..001.tar", "never closed"),
        ("s-000}.tar", "closes no"),
        ("s-{9..1}.tar", "runs backwards"),
        ("s-{x}.tar", "neither a list"),
    ]:
        with pytest.raises(BraceError, match=why):
            expand_braces(bad)


def test_tar_samples_follow_the_webdataset_convention(tmp_path, spread_dataset):  # noqa: F811
    """Key = member path without its extensions; consecutive members are one sample; a
    member without an extension is no sample; json scenes give n_objects."""
    png = next((spread_dataset / "images" / "val").iterdir()).read_bytes()
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add_member(tar, "dir/x.seg.png", png)  # key dir/x, extension seg.png: not the image
        add_member(tar, "dir/x.PNG", png)  # same key, extension png (case ignored): the image
        add_member(tar, "README", b"no extension: skipped")
        add_member(tar, "z.webp", b"garbage")
        add_member(tar, "w.json", b'{"n_objects": 4}')
    images = open_input(str(tmp_path / "a.tar"), "val", 16)
    assert len(images) == 3
    got = list(images.iter_rows())
    assert [g["image_id"] for g in got] == ["dir/x", "z", "w"]
    assert got[0]["image"].shape == (3, 16, 16) and got[0]["n_objects"] == -1
    assert "cannot decode image" in got[1]["error"] or "not an image" in got[1]["error"]
    assert got[2]["error"].startswith("no image member")
    assert [g["index"] for g in images.iter_rows(1, 3)] == [1, 2]

    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:  # compressed shards stream too
        add_member(tar, "q.png", png)
    [only] = open_input(str(tmp_path / "b.tar.gz"), "val", 16).iter_rows()
    assert only["image_id"] == "q" and only["image"].shape == (3, 16, 16)


def test_one_process_tar_export_equals_the_folder_export(
    spread_run, spread_single, shards, tmp_path
):  # noqa: F811
    out = tar_export(spread_run, str(shards / PATTERN), tmp_path / "p.parquet")
    assert out == tmp_path / "p.parquet"  # 20 rows fit one shard: today's single file
    assert rows(read_programs(out)) == rows(spread_single)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: "nothing-{000..003}.tar",
            r"nothing-\{000..003\}.tar: matches no file \(4 names",
        ),
        (lambda d: d / "x.tar", r"x.tar: not a readable tar file"),
        (lambda d: d / "empty.tar", r"empty.tar: no images \(jpg, jpeg, png, webp\) among its 1"),
        (lambda d: "s-{000..001.tar", r"'\{' at character 3 is never closed"),
    ],
    ids=["no-match", "not-a-tar", "no-images", "bad-brace"],
)
def test_bad_tar_inputs_fail_in_one_line_before_the_encode(
    spread_run,  # noqa: F811
    tmp_path,
    monkeypatch,
    make,
    message,
):
    (tmp_path / "x.tar").write_bytes(b"this is not a tar file at all" * 40)
    with tarfile.open(tmp_path / "empty.tar", "w") as tar:
        add_member(tar, "a.txt", b"text")
    data = str(make(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["export", str(spread_run), "--data", data, "--device", "cpu", "--out", "p.parquet"]
    )
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "p.parquet").exists()


# --------------------------------------------------------------------------- failed images


def test_images_that_fail_to_decode_are_listed_not_fatal(
    spread_run, spread_single, spread_dataset, tmp_path
):  # noqa: F811
    """A truncated png and garbage bytes, next to each other so that one planned shard holds
    nothing else: the run finishes, the manifest lists both, the terminal says how many."""
    ids = spread_single.image_id[N:]  # val
    png = (spread_dataset / "images" / "val" / f"{ids[2]}.png").read_bytes()
    bad = {ids[2]: png[: len(png) // 2], ids[3]: b"\x89PNG garbage"}
    wds = write_shards(spread_dataset, tmp_path / "wds", bad)
    result = CliRunner().invoke(
        app,
        ["export", str(spread_run), "--split", "train,val", "--data", str(wds / PATTERN)]
        + ["--batch-size", "3", "--shard-rows", "2", "--device", "cpu"]
        + ["--out", str(tmp_path / "p.parquet")],
    )
    assert result.exit_code == 0, result.output
    assert "2 images failed to decode and have no program" in result.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["failed"] == {"val": 2} and manifest["splits"] == {"train": N, "val": N - 2}
    listed = {f["image_id"]: f for f in manifest["failed_images"]}
    assert set(listed) == set(bad) and all(f["split"] == "val" for f in listed.values())
    assert all("field image" in f["reason"] for f in listed.values())
    assert next(s for s in manifest["shards"] if s["file"] == "val-00001.parquet")["rows"] == 0
    kept = [r for r in rows(spread_single) if r[0] not in bad]
    assert rows(read_programs(tmp_path / "p")) == kept

    # the single-file form keeps the list in the file's metadata
    one = tar_export(spread_run, str(wds / PATTERN), tmp_path / "one.parquet")
    programs = read_programs(one)
    assert rows(programs) == kept
    assert {f["image_id"] for f in programs.meta["failed_images"]} == set(bad)


def test_folder_images_that_fail_to_decode_are_listed_by_export_and_stop_eval(
    spread_run, spread_single, spread_dataset, tmp_path
):  # noqa: F811
    """The same for a CLEVR folder: export lists a garbage png and goes on; `strop eval`,
    which needs every image, still stops on it in one line naming the file."""
    import shutil

    folder = tmp_path / "clevr"
    shutil.copytree(spread_dataset, folder)
    bad_id = spread_single.image_id[N + 1]
    (folder / "images" / "val" / f"{bad_id}.png").write_bytes(b"\x89PNG garbage")
    result = CliRunner().invoke(
        app,
        ["export", str(spread_run), "--split", "train,val", "--data", str(folder)]
        + ["--batch-size", "3", "--device", "cpu", "--out", str(tmp_path / "p.parquet")],
    )
    assert result.exit_code == 0, result.output
    assert "1 image failed to decode and have no program" in result.output
    programs = read_programs(tmp_path / "p.parquet")
    assert [f["image_id"] for f in programs.meta["failed_images"]] == [bad_id]
    assert rows(programs) == [r for r in rows(spread_single) if r[0] != bad_id]

    from strop.evaluation.run_inputs import make_loader

    with pytest.raises(DataError, match=rf"{bad_id}\.png: index 1 field image"):
        for _ in make_loader(folder, "val", 32, batch_size=3):
            pass


# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_tar_export_resumes_to_identical_rows(
    spread_run, spread_single, shards, tmp_path
):  # noqa: F811
    out, data = tmp_path / "p.parquet", str(shards / PATTERN)
    folder = dataset_dir_for(out)
    kill_9_in_the_next_shard(
        SLOW_EXPORT, [str(spread_run), str(out), data], folder / "train-00001.parquet"
    )
    finished = file_stamps(folder, "*.parquet")
    assert len(finished) < 6 and not (folder / "manifest.json").exists()
    with pytest.raises(RunFolderError, match="did not finish"):
        read_programs(folder)
    manifest = tar_export(spread_run, data, out, shard_rows=4)  # the same command again
    assert_not_rewritten(folder, finished)
    assert rows(read_programs(folder)) == rows(spread_single)
    whole = tar_export(spread_run, data, tmp_path / "whole.parquet", shard_rows=4)
    assert json.loads(whole.read_text())["shards"] == json.loads(manifest.read_text())["shards"]


# --------------------------------------------------------------------------- hub streaming


def test_hub_stream_reads_a_local_source_through_the_hub_code_path(
    spread_run,  # noqa: F811
    spread_single,  # noqa: F811
    shards,
    tmp_path,
):
    """`hf://NAME --streaming` is `datasets.load_dataset(NAME, streaming=True)`; NAME here is a
    local folder of the same tars, which `datasets` streams with its webdataset builder."""
    pytest.importorskip("datasets")
    out = tmp_path / "p.parquet"
    result = CliRunner().invoke(
        app,
        ["export", str(spread_run), "--split", "train", "--data", f"hf://{shards}", "--streaming"]
        + ["--batch-size", "3", "--shard-rows", "4", "--device", "cpu", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    streamed = read_programs(tmp_path / "p")
    want = [(i, c) for i, _, c, _, _ in rows(spread_single)[:N]]
    assert [(i, c) for i, _, c, _, _ in rows(streamed)] == want
    assert json.loads((tmp_path / "p" / "plan.json").read_text())["streaming"] is True

    with pytest.raises(DataError, match=r"--streaming reads hf://owner/name"):
        open_input(str(shards / PATTERN), "train", 32, streaming=True)


# --------------------------------------------------------------------------- README lines


def readme_lines() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Tokenize a whole dataset\n.*?```bash\n(.*?)```", text, flags=re.S)
    assert block, "README has no 'Tokenize a whole dataset' block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [argv for argv in lines if argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchruns (~1 min); CI runs it (-m slow)
def test_readme_tokenize_lines_run_here(spread_run, spread_single, shards, tmp_path):  # noqa: F811
    """Every export line of the README section runs on this machine with its own paths: one
    process, 8 GPUs as 2 CPU processes, several nodes as one node through the same c10d
    rendezvous, the hub stream on a local folder. Tar inputs equal the folder export."""
    lines = [a for a in readme_lines() if "export" in a and "--data" in a]
    assert len(lines) == 4, lines
    for i, argv in enumerate(lines):
        line = " ".join(argv)
        line = line.replace("runs/coco/s-k1024", str(spread_run)).replace("shards/", f"{shards}/")
        line = line.replace("{000000..000099}", "{000000..000001}").replace(
            "hf://owner/name", f"hf://{shards}"
        )
        line = line.replace("--nproc_per_node 8", "--nproc_per_node 2").replace(
            "--nnodes 4", "--nnodes 1"
        )
        line = line.replace("HOST:29500", f"127.0.0.1:{free_port()}")
        argv = shlex.split(line)
        if argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        else:
            assert argv[0] == "strop"
            argv = [sys.executable, "-m", "strop.cli", *argv[1:]]
        out = tmp_path / f"line{i}.parquet"
        argv += ["--batch-size", "3", "--shard-rows", "4", "--device", "cpu", "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        got = rows(read_programs(tmp_path / f"line{i}"))
        if "--streaming" in argv:  # the webdataset builder reads no scenes
            got, want = [r[:3] for r in got], [r[:3] for r in rows(spread_single)[:N]]
        else:
            want = rows(spread_single)
        assert got == want, line
