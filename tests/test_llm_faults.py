"""strop-llm and strop-grammar under bad answers, bad input and Ctrl-C (issue 14): a real
scripted HTTP server on 127.0.0.1, real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import decode_config
from typer.testing import CliRunner

from llm_decode.runner import DecodeConfig, decode
from llm_decode.testing.fake_server import FakeServer
from llm_decode.testing.synthetic import make_run
from strop.runs import Programs, RunFolderError, read_jsonl, read_programs, write_json
from strop.runs import write_programs as write_table

#: qwen3.5: the model the Ctrl-C test's command line names, so a rerun resumes its folder
config = partial(decode_config, model="qwen3.5", shots=None)


def test_a_200_with_an_html_or_cut_json_body_is_a_failed_attempt(exp_dir):
    """It used to abort the whole decode with a traceback."""
    with FakeServer(junk_first=2) as server:  # a proxy's HTML page, twice
        result = decode(config(exp_dir, server.base_url, concurrency=1, protocol={"test": 3}))
        assert result.summary["missing"] == 0 and server.stats()["requests"] == 5
        rows = read_jsonl(result.folder / "results.jsonl")
        assert sorted(r["attempts"] for r in rows) == [1, 1, 3]
    cut = {"junk_first": 100, "junk_type": "application/json", "junk_body": '{"choices": ['}
    with FakeServer(**cut) as server:
        result = decode(
            config(exp_dir, server.base_url, model="m2", max_attempts=2, protocol={"test": 2})
        )
        assert result.summary["missing"] == 2 and server.stats()["requests"] == 4
        rows = read_jsonl(result.folder / "results.jsonl")
        assert [r["status"] for r in rows] == ["error", "error"]
        assert all("body is not valid JSON" in r["error"] for r in rows)
        assert all("gave up after 2 attempts" in r["error"] for r in rows)


def test_ap_is_null_when_nothing_was_answered(exp_dir):
    with FakeServer(status_script=[400, 400]) as server:
        result = decode(config(exp_dir, server.base_url, concurrency=1, protocol={"test": 2}))
    s = result.summary
    assert s["missing"] == 2 and s["ap"] == {k: None for k in ("inf", "1", "0.5", "0.25", "0.125")}
    assert json.loads((result.folder / "summary.json").read_text())["ap"]["inf"] is None


def test_model_names_and_endpoints_get_their_own_folders(exp_dir):
    """`org/m` and `org--m` (and one model on two endpoints) used to share one folder and
    overwrite each other's summary.json."""
    with FakeServer() as one, FakeServer() as two:
        runs = [
            decode(config(exp_dir, one.base_url, model="org/m", protocol={"test": 2})),
            decode(config(exp_dir, one.base_url, model="org--m", protocol={"test": 2})),
            decode(config(exp_dir, two.base_url, model="org/m", protocol={"test": 2})),
        ]
        again = decode(config(exp_dir, one.base_url, model="org/m", protocol={"test": 2}))
    folders = [r.folder for r in runs]
    assert len(set(folders)) == 3 and folders[0].name == "org--m"
    assert all(f.name.startswith("org--m-") for f in folders[1:])
    assert again.folder == folders[0] and again.sent == 0  # reuse checks the stored identity
    for result, (model, url) in zip(
        runs, [("org/m", one), ("org--m", one), ("org/m", two)], strict=True
    ):
        summary = json.loads((result.folder / "summary.json").read_text())
        assert (summary["model"], summary["endpoint"]) == (model, url.base_url.rstrip("/"))
        identity = json.loads((result.folder / "identity.json").read_text())
        assert identity["model"] == model and identity["endpoint"] == summary["endpoint"]


def _run_without_stored_k(root: Path) -> Path:
    """A run whose programs file stores no K, config.json says K=16, codes 99 and 50."""
    src = read_programs(make_run(root / "src", k=16, n_train=60, n_val=20))
    codes = [c.copy() for c in src.codes]
    codes[3][0], codes[70][1] = 99, 50
    run = root / "exp" / "k16"
    table = Programs(
        codes=codes,
        image_id=src.image_id,
        split=src.split,
        n_objects=src.n_objects,
        scene=src.scene,
    )
    write_table(run / "programs.parquet", table)
    write_json(run / "config.json", {"model": {"k": 16}})
    assert read_programs(run / "programs.parquet").codebook_size is None
    return root / "exp"


def test_codes_outside_the_codebook_are_refused_by_every_reader(tmp_path):
    exp = _run_without_stored_k(tmp_path)
    with pytest.raises(RunFolderError) as err:
        decode(DecodeConfig(model="naive", backend="naive", k=16, runs=exp))
    message = str(err.value)
    assert "row 3" in message and "code 99 outside [0, 16) (K from config.json)" in message

    from grammar.cli import app

    result = CliRunner().invoke(app, ["mine", str(exp / "k16")])
    assert result.exit_code != 0
    assert "row 3" in result.output and "code 99 outside [0, 16) (K from config.json)" in (
        result.output
    )


def test_ctrl_c_during_decode_says_what_is_saved_and_a_rerun_resumes(exp_dir, console_script):
    # Two answers, then the third request is told to come back in 120 s: the signal arrives
    # in that state (two saved, the rest waiting), however slowly the machine runs.
    with FakeServer(status_script=[0, 0, 429], retry_after=120) as server:
        args = [console_script("strop-llm"), "decode", "--model", "qwen3.5", "--k", "64"]
        args += ["--runs", str(exp_dir), "--base-url", server.base_url, "--concurrency", "1"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        # A suite started in the background of a non-interactive shell (`... &`) runs with
        # SIGINT ignored, and an ignored signal stays ignored across exec: the child then
        # never sees the Ctrl-C. Give it the disposition a terminal would.
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        results = exp_dir / "k64" / "llm" / "qwen3.5" / "results.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (
            len(read_jsonl(results)) >= 2 and server.stats()["statuses"].get("429")
        ):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say why: the signal state of the process
            state = Path(f"/proc/{proc.pid}/status").read_text()
            proc.kill()
            out, err = proc.communicate()
            signals = [line for line in state.splitlines() if line.startswith("Sig")]
            raise AssertionError(f"no exit 60 s after SIGINT; {signals}; {err[-2000:]}") from None
        assert proc.returncode == 130, (out, err)
        saved = len([r for r in read_jsonl(results) if r["status"] == "ok"])
        assert saved == 2
        expected = f"interrupted: {saved} of 15 answers saved in {results}; rerun the same command"
        assert expected in " ".join(err.split()), err
        assert "Traceback" not in err
        again = decode(config(exp_dir, server.base_url))
        assert again.sent == 15 - saved and again.summary["complete"]


@pytest.mark.parametrize("guard", ["within", "wait_for"])
def test_a_cancel_as_the_request_finishes_is_never_lost(guard):
    """The race behind a Ctrl-C that hung in CI: the task is cancelled in the same loop turn
    as the awaited call finishes. `within` keeps the cancellation; Python 3.11's
    `asyncio.wait_for` (the old guard) returned the result and ran on."""
    import asyncio
    import sys

    from llm_decode.backends.openai_compat import within

    if guard == "wait_for" and sys.version_info >= (3, 12):
        pytest.skip("asyncio.wait_for keeps the cancellation from Python 3.12 on")

    async def scenario() -> str:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def request() -> str:
            if guard == "within":
                await within(done, 10)
            else:
                await asyncio.wait_for(done, 10)
            await asyncio.sleep(0.5)  # what a lost cancel runs on into (a retry's wait)
            return "ran on"

        task = asyncio.create_task(request())
        await asyncio.sleep(0)  # the task now waits on `done`
        done.set_result(1)  # the answer arrives ...
        task.cancel()  # ... and Ctrl-C in the same turn
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(scenario()) == ("cancelled" if guard == "within" else "ran on")


def test_template_help_says_it_can_run_code():
    from llm_decode.cli import app

    result = CliRunner().invoke(app, ["decode", "--help"], env={"COLUMNS": "200"})
    assert "can run code" in " ".join(result.output.split())


def test_a_binary_file_as_a_text_corpus_is_one_line(tmp_path):
    from grammar.cli import app

    blob = tmp_path / "programs.bin"
    blob.write_bytes(np.arange(256, dtype=np.uint8).tobytes() * 4)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("1 2 3\n4 5 \xe9\n".encode("latin-1"))
    for path, expected in ((blob, "a binary file, not a text corpus"), (latin, "line 2")):
        result = CliRunner().invoke(app, ["mine", str(path)])
        assert result.exit_code != 0 and "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], result.output


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
