"""Output paths that are not regular files, and a really full disk (issue 25, items 4 and 5).

Every command that writes refuses an existing output path that is not a regular file (a FIFO
hung `export --out` and `bench gpu --json`; a link to a device was replaced by a regular
file), in one line. A full disk is one line naming the path and the space left, exit 1, the
files there before whole, and no empty folder left behind.

No mocks: FIFOs are real (`os.mkfifo`; a reader end is held open so that the old code, which
opened them for writing, could not hang the test but replaced them), devices are reached
through links in tmp_path (the real /dev/null and /dev/zero are only checked to be character
devices still), and the full disk is a real tmpfs mounted for the test and filled to the
last byte (skipped where mounting is not permitted).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import fill, one_error_line, tiny_run_config
from helpers import BASE_SETS
from typer.testing import CliRunner

from strop.cli import app as strop_app

pytestmark = pytest.mark.usefixtures("one_thread")


def strop(*args: object):
    return CliRunner().invoke(strop_app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(clevr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained through every phase (real trainer), in `exp/k16`."""
    import torch

    from strop.training.trainer import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("exp") / "k16"
    return train(tiny_run_config(clevr, "train.steps=12", *BASE_SETS), out, progress=False)


@contextmanager
def fifo_with_reader(path: Path) -> Iterator[Path]:
    """A real FIFO whose read end is open: writing to it cannot block, so the old code's
    failure shows as the FIFO replaced by a regular file, not as a hung test."""
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield path
    finally:
        os.close(reader)


def device_link(tmp_path: Path, name: str = "out.parquet", device: str = "/dev/zero") -> Path:
    link = tmp_path / name
    link.symlink_to(device)
    return link


def assert_devices_untouched(*links: Path) -> None:
    for device in ("/dev/null", "/dev/zero"):
        assert stat.S_ISCHR(os.stat(device).st_mode), f"{device} is no longer a device!"
    for link in links:
        assert link.is_symlink(), f"{link} was replaced"


# --------------------------------------------------------------------------- not regular files


def test_a_fifo_a_device_and_a_folder_are_refused_by_every_single_file_writer(tmp_path):
    from strop.atomic import OutputPathError, atomic_write_text
    from strop.runs.files import append_jsonl

    with fifo_with_reader(tmp_path / "pipe") as pipe:
        link = device_link(tmp_path, "null", "/dev/null")
        folder = tmp_path / "folder"
        folder.mkdir()
        for path, kind in [(pipe, "a FIFO"), (link, "a character device"), (folder, "a folder")]:
            for write in (
                lambda p: atomic_write_text(p, "x"),
                lambda p: append_jsonl(p, {"a": 1}),
            ):
                with pytest.raises(OutputPathError) as err:
                    write(path)
                assert str(err.value).startswith(f"{path}: is {kind}")
                assert "\n" not in str(err.value)
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert_devices_untouched(link)


def test_export_out_a_fifo_or_a_device_is_refused_before_the_encode(run, clevr, tmp_path):
    """`export --out FIFO` hung forever; `--out` a link to a device was replaced."""
    with fifo_with_reader(tmp_path / "pipe.parquet") as pipe:
        line = one_error_line(strop("export", run, "--data", clevr, "--out", pipe), 1)
        assert line.startswith(f"error: {pipe}: is a FIFO (named pipe), not a regular file")
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    link = device_link(tmp_path)
    line = one_error_line(strop("export", run, "--data", clevr, "--out", link), 1)
    assert line.startswith(f"error: {link}: is a character device (through a link)")
    # a folder is a programs dataset's (`--shard-rows`): one holding other parquet names (the
    # FIFO, the device link) and no export plan is refused, and nothing in it is touched
    line = one_error_line(strop("export", run, "--data", clevr, "--out", tmp_path), 1)
    assert line.startswith(f"error: {tmp_path}: holds 2 parquet files") and "--replace" in line
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.parquet").st_mode)
    assert_devices_untouched(link)


def test_a_units_file_that_is_a_fifo_is_refused_and_nothing_is_moved_in(run, tmp_path):
    """`strop report --out DIR` where report.md is a FIFO: os.replace put a file there."""
    out = tmp_path / "out"
    out.mkdir()
    with fifo_with_reader(out / "report.md") as pipe:
        line = one_error_line(strop("report", run.parent, "--out", out), 1)
        assert line.startswith(f"error: {pipe}: is a FIFO")
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
        assert not (out / "report.html").exists()  # all or nothing
        assert sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_export_model_over_a_device_link_is_refused(run, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    link = device_link(out, "model.safetensors", "/dev/null")
    line = one_error_line(strop("export-model", run, "--out", out), 1)
    assert line.startswith(f"error: {link}: is a character device (through a link)")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert_devices_untouched(link)


def test_the_decoders_results_file_as_a_fifo_is_refused_not_waited_on(tmp_path):
    from llm_decode.results import RESULTS_FILE, ResultsFile, claim_folder
    from strop.atomic import OutputPathError

    folder = tmp_path / "llm" / "m"
    folder.mkdir(parents=True)
    os.mkfifo(folder / RESULTS_FILE)  # no reader: the old open("a") waited forever
    with pytest.raises(OutputPathError, match="is a FIFO"):
        claim_folder(tmp_path / "llm", "m", {"model": "m"})
    with pytest.raises(OutputPathError, match="is a FIFO"):
        ResultsFile(folder).append({"key": "k", "status": "ok"})


def bench(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("gpu", [True, False], ids=["bench gpu", "bench"])
def test_bench_json_that_is_not_a_regular_file_or_has_no_folder(tmp_path, gpu):
    """--json FIFO hung; --json /dev/null (as root) replaced the machine's /dev/null;
    --json /nonexistent/x.json created /nonexistent."""
    argv = ["gpu", "--dry-run"] if gpu else ["--only", "grammar", "--quick"]
    prefix = "error: bench gpu: --json" if gpu else "error: bench: --json"
    link = device_link(tmp_path, "null.json", "/dev/null")
    with fifo_with_reader(tmp_path / "pipe.json") as pipe:
        for target, says in [
            (pipe, "is a FIFO"),
            (link, "is a character device (through a link)"),
            (tmp_path / "missing" / "x.json", f"({tmp_path / 'missing'}: no such folder"),
        ]:
            done = bench(*argv, "--json", str(target))
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, done.stderr
            assert lines[0].startswith(f"{prefix} {target}") and says in lines[0], lines[0]
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert not (tmp_path / "missing").exists()
    assert_devices_untouched(link)


def test_bench_gpu_that_measured_nothing_is_a_failure() -> None:
    """`--budget-s 1e-300` exited 0 with every row skipped."""
    from bench.bench_gpu import ROWS, Row, failures

    skipped = [Row(s.name, status="skipped", note="time budget spent") for s in ROWS]
    cache = [Row("feature cache read dinov3-s (32px, 1 process)")]
    lines = failures(skipped + cache, 1e-300, 3.2)
    assert lines == [
        "error: bench gpu: --budget-s 1e-300 ran out before any row was measured "
        "(the setup alone took 3.2 s); give it more time"
    ]
    one_ran = [Row(ROWS[0].name), *skipped[1:], *cache]
    assert failures(one_ran, 10.0, 3.2) == []


# --------------------------------------------------------------------------- file modes


def test_the_umask_is_read_without_setting_it() -> None:
    from strop.atomic import current_umask

    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # unchanged by the read
    finally:
        os.umask(before)


def test_without_proc_the_umask_is_the_one_at_import_and_never_set(monkeypatch) -> None:
    """Where /proc cannot tell the umask, every write set it to 0 and back: a file another
    thread created meanwhile got mode 0666. It is read once, at import, instead."""
    import strop.atomic as atomic

    calls: list[int] = []
    monkeypatch.setattr(atomic, "_proc_umask", lambda: None)
    monkeypatch.setattr(atomic, "_IMPORT_UMASK", 0o027)
    monkeypatch.setattr(atomic.os, "umask", lambda mask: calls.append(mask) or 0)
    assert atomic.current_umask() == 0o027
    assert atomic.plain_file_mode() == 0o640
    assert calls == []


def test_exported_weights_get_the_umask_mode_and_a_second_export_says_it_replaced(run, tmp_path):
    """model.safetensors was 0600 beside 0644 files; two exports both said "wrote"."""
    out = tmp_path / "tok"
    before = os.umask(0o027)
    try:
        first = strop("export-model", run, "--out", out)
    finally:
        os.umask(before)
    assert first.exit_code == 0 and first.output.startswith(f"wrote {out}"), first.output
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert set(modes.values()) == {"0o640"}, modes
    second = strop("export-model", run, "--out", out)
    assert second.exit_code == 0, second.output
    assert second.output.startswith(f"replaced the tokenizer in {out}"), second.output


# --------------------------------------------------------------------------- a full disk


def copy_run(run: Path, disk: Path) -> Path:
    """The run's config, metrics and last checkpoint (not every kept step) on the disk."""
    copy = disk / "exp" / "k16"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "checkpoints/last.pt"):
        shutil.copyfile(run / name, copy / name)
    return copy


def assert_disk_full_line(result, path: Path) -> None:
    line = one_error_line(result, 1)
    assert line.startswith(f"error: {path}: cannot write the output here (the disk is full: "), line
    assert "0 bytes free" in line, line


def test_a_full_disk_is_one_line_for_every_command_and_earlier_files_stay(
    run, clevr, full_disk
) -> None:
    """eval, eval --sweep, export, analyze, report and export-model on a real full tmpfs:
    each was a traceback (ENOSPC); analyze and export-model left an empty folder."""
    copy = copy_run(run, full_disk)
    earlier = {"eval.json": '{"earlier": 1}\n', "sweep.json": '{"earlier": 2}\n'}
    for name, text in earlier.items():
        (copy / name).write_text(text)
    fill(full_disk)
    common = ["--data", clevr, "--no-lpips", "--limit", 2]
    assert_disk_full_line(strop("eval", copy, *common, "--order-probe", 0), copy / "eval.json")
    assert_disk_full_line(strop("eval", copy, *common, "--sweep"), copy / "sweep.json")
    assert_disk_full_line(
        strop("export", copy, "--data", clevr, "--limit", 2), copy / "programs.parquet"
    )
    assert_disk_full_line(strop("analyze", copy, "--data", clevr), copy / "analysis")
    assert_disk_full_line(strop("report", copy.parent), copy.parent)
    tok = full_disk / "tok"
    assert_disk_full_line(strop("export-model", copy, "--out", tok), tok)
    for name, text in earlier.items():
        assert (copy / name).read_text() == text
    assert not (copy / "analysis").exists() and not tok.exists()
    assert sorted(p.name for p in copy.iterdir() if not p.name.startswith(".")) == sorted(
        ["checkpoints", "config.json", "metrics.jsonl", *earlier]
    )
    assert not [p for p in full_disk.rglob(".*") if "staging" in p.name or p.suffix == ".tmp"]


def test_qa_on_a_full_disk_is_one_line_and_keeps_the_rows(full_disk) -> None:
    """`strop-llm qa` failed with ENOSPC twice ("during handling of the above exception")."""
    from llm_decode.cli import app as llm_app
    from llm_decode.testing.fake_server import FakeServer
    from llm_decode.testing.synthetic import make_run

    make_run(full_disk / "exp" / "k64", k=64, n_train=30, n_val=10)
    fill(full_disk)
    argv = ["qa", "--model", "m", "--k", "64", "--runs", str(full_disk / "exp")]
    argv += ["--shots", "10", "--test", "3", "--concurrency", "1"]
    with FakeServer(answers={}) as server:
        result = CliRunner().invoke(llm_app, [*argv, "--base-url", server.base_url])
    line = one_error_line(result, 1)
    assert "cannot write the output here (the disk is full: 0 bytes free)" in line, line
    assert "rows written before are kept" in line or "files there before are unchanged" in line
