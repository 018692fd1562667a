"""Shareable tokenizers: `strop export-model`, `Strop.from_pretrained`, the model card, and
`strop export` / `strop eval` on an exported folder. A real tiny run is trained once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from click.testing import Result
from conftest import QUICK_RUN_SETS, tiny_run_config
from typer.testing import CliRunner

from strop.cli import app
from strop.data.datasets import ClevrDataset
from strop.data.renderer import generate_dataset
from strop.model.card import model_card
from strop.model.network import Strop
from strop.model.pretrained import PretrainedError
from strop.model.tokenizer_files import teacher_facts
from strop.runs import read_programs

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
N_VAL = 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "clevr"
    generate_dataset(root, n=24, size=32, seed=3, splits=(4 / 24, 20 / 24, 0.0), progress=False)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset) -> Path:
    """A tiny run trained for 6 steps by the real trainer, then evaluated (eval.json)."""
    from strop.evaluation.evaluate import evaluate_run
    from strop.training.trainer import train

    out = tmp_path_factory.mktemp("runs") / "k16"
    cfg = tiny_run_config(dataset, "train.steps=6", *QUICK_RUN_SETS)
    train(cfg, out, progress=False)
    evaluate_run(out, batch_size=8, progress=False, lpips=False)
    return out


def strop_cli(*args: str) -> Result:
    """The `strop` command in this process (a subprocess would spend its time importing torch)."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tok"
    done = strop_cli("export-model", str(run), "--out", str(out))
    assert done.exit_code == 0, done.output
    return out


def val_images(dataset: Path) -> torch.Tensor:
    data = ClevrDataset(dataset, "val", 32)
    return torch.stack([data[i]["image"] for i in range(N_VAL)])


def test_from_pretrained_gives_the_runs_programs_bit_for_bit(run, exported, dataset):
    ours, _ = Strop.from_run(run)
    shared = Strop.from_pretrained(exported)
    images = val_images(dataset)
    codes_a, lengths_a = ours.encode(images)
    codes_b, lengths_b = shared.encode(images)
    assert torch.equal(codes_a, codes_b) and torch.equal(lengths_a, lengths_b)
    assert len(set(lengths_a.tolist())) >= 1 and codes_a.shape == (N_VAL, 8)
    # Every tensor round-trips exactly, not only the programs.
    a, b = ours.state_dict(), shared.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_exported_folder_is_pickle_free_and_says_what_it_is(exported, run):
    from safetensors import safe_open

    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    with safe_open(str(exported / "model.safetensors"), framework="pt") as handle:
        assert len(list(handle.keys())) > 10
    head = (exported / "model.safetensors").read_bytes()[:2]
    assert head not in (b"\x80\x02", b"PK")  # neither a pickle nor torch's zip container
    config = json.loads((exported / "config.json").read_text())
    assert (config["k"], config["l_max"], config["training"]["steps"]) == (16, 8, 6)
    assert config["teacher"] == {
        "name": "pixels",
        "id": None,
        "dino": False,
        "random_weights": False,
    }
    assert config["provenance"]["run"] == "k16"
    assert len(config["provenance"]["checkpoint_sha256"]) == 64
    assert config["eval"]["cos"] == json.loads((run / "eval.json").read_text())["cos"]
    card = (exported / "README.md").read_text()
    assert "This teacher is not DINO" in card and "`pixels`" in card
    assert f"{config['eval']['cos']:.4g}" in card and "Trained for 6 steps" in card


def test_card_says_when_the_teacher_is_random_or_dino():
    base = {"model": {"preset": "S"}, "k": 128, "l_max": 32, "training": {"steps": 10}}
    random_card = model_card({**base, "teacher": teacher_facts("random-vit")})
    assert "not DINO" in random_card and "weights are random" in random_card
    assert "No evaluation was recorded" in random_card
    dino_card = model_card({**base, "teacher": teacher_facts("dinov3-s")})
    assert "facebook/dinov3-vits16-pretrain-lvd1689m" in dino_card
    assert "not DINO" not in dino_card and "random" not in dino_card


def test_export_and_eval_take_an_exported_folder(run, exported, dataset, tmp_path):
    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    from_run = tmp_path / "run.parquet"
    for source, out in ((run, from_run), (folder, tmp_path / "tok.parquet")):
        done = strop_cli("export", str(source), "--out", str(out), "--data", str(dataset))
        assert done.exit_code == 0, done.output
    a, b = read_programs(from_run), read_programs(tmp_path / "tok.parquet")
    assert [c.tolist() for c in a.codes] == [c.tolist() for c in b.codes]
    assert len(a) == N_VAL
    done = strop_cli("eval", str(folder), "--no-lpips", "--limit", "8")  # data path from config
    assert done.exit_code == 0, done.output
    assert json.loads((folder / "eval.json").read_text())["n_images"] == 8
    done = strop_cli("eval", str(folder), "--checkpoint", "3")
    assert done.exit_code == 1 and "applies to run folders only" in done.output


def test_readme_snippet_runs_verbatim(exported, dataset, tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    snippet = next(b for b in blocks if "from_pretrained" in b)
    assert len([line for line in snippet.splitlines() if line.strip()]) == 3
    shutil.copytree(exported, tmp_path / "my-tokenizer")
    shutil.copy(dataset / "images" / "val" / "CLEVR_val_000000.png", tmp_path)
    probe = snippet + "\nprint(programs)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    programs = json.loads(done.stdout.strip())
    want = Strop.from_pretrained(exported).encode(val_images(dataset)[:1])
    assert programs == [want[0][0, : int(want[1][0])].tolist()]


def test_from_pretrained_errors_are_one_line(tmp_path, exported):
    with pytest.raises(PretrainedError, match="no config.json, model.safetensors"):
        Strop.from_pretrained(tmp_path)
    broken = Path(shutil.copytree(exported, tmp_path / "broken"))
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(PretrainedError, match="model.safetensors: not loadable"):
        Strop.from_pretrained(broken)


def test_weights_that_do_not_fit_the_config_name_the_file(tmp_path, run, exported):
    """An exported folder and a run folder whose config.json says K=32 over K=16 weights: one
    line naming the weights (exported) or the checkpoint and the run's config (run)."""
    for source, name in ((exported, "tok"), (run, "run")):
        folder = Path(shutil.copytree(source, tmp_path / name))
        config = json.loads((folder / "config.json").read_text())
        config["model"]["k"] = 32
        if "k" in config:  # an exported folder's top-level K must agree with its model's
            config["k"] = 32
        (folder / "config.json").write_text(json.dumps(config))
        done = strop_cli("export", str(folder), "--limit", "2")
        assert done.exit_code == 1, done.output
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.output
        if source == exported:
            assert f"{folder / 'model.safetensors'}: weights do not fit config.json (" in lines[0]
        else:
            assert f"{folder}/checkpoints/" in lines[0] and lines[0].endswith("k 16 vs 32)")
            assert f"weights do not fit the model of {folder / 'config.json'} (" in lines[0]


class _HubStandIn(BaseHTTPRequestHandler):
    """Records what huggingface_hub's client asks of the hub, and refuses it (401)."""

    seen: list[tuple[str, str, str]] = []

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        self.seen.append((self.command, self.path, body))
        payload = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args) -> None:
        pass


def test_push_to_hub_goes_through_huggingface_hub_up_to_the_upload(run, tmp_path):
    """Offline, the upload itself cannot succeed: a local stand-in for the hub sees the
    client's repo-creation request (with the repo id) and refuses it; the command then fails
    with one line, after writing the folder."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "HF_TOKEN": "hf_test_token_not_real",
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        out = tmp_path / "tok"
        args = ["export-model", str(run), "--out", str(out), "--push-to-hub", "someone/strop-k16"]
        done = subprocess.run(
            [sys.executable, "-m", "strop.cli", *args], capture_output=True, text=True, env=env
        )
    finally:
        server.shutdown()
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert (out / "model.safetensors").is_file()
    creates = [s for s in _HubStandIn.seen if s[0] == "POST" and "repos/create" in s[1]]
    assert creates and json.loads(creates[0][2])["name"] == "strop-k16"


def test_a_loaded_tokenizer_takes_every_length_mode(exported, dataset):
    """`Strop.encode` / `tokenize` take what `--length-mode` takes, with the same lengths
    as `strop export` (`strop.model.length_modes`, shared)."""
    from strop.evaluation.batch_encoding import encode_batch
    from strop.model import Strop
    from strop.model.length_modes import LengthModeError, parse_length_mode

    model = Strop.from_pretrained(exported)
    images = val_images(dataset)[:6]
    head = model.encode(images)[1]
    assert model.encode(images, "prefix:3")[1].tolist() == [3] * 6
    codes, cap = model.encode(images, "cap:2")
    assert torch.equal(cap, head.clamp(max=2))
    assert ((codes >= 0).sum(1) == cap).all() and (codes[:, 2:] == -1).all()
    search = model.encode(images, "search:0.5")[1]
    by_export = encode_batch(model, images, parse_length_mode("search:0.5"), model.cfg.w_mse, 1)
    assert torch.equal(search, by_export.lengths)
    for mode in ("head", "fixed", "prefix:3", "cap:2", "search:0.5"):  # one dispatch for both
        enc = encode_batch(model, images, parse_length_mode(mode), model.cfg.w_mse, model.cfg.l_min)
        codes, lengths = model.encode(images, mode)
        assert torch.equal(lengths, enc.lengths) and torch.equal(codes, enc.codes), mode
    assert torch.equal(model.encode(images, "fixed")[1], torch.full((6,), model.cfg.l_max))
    for bad, says in (
        ("prefix:0", "at least 1"),
        ("prefix:99", "N must be in [L_min, L_max]"),
        ("quality:0.5", "no eps-conditioned length head"),
        ("longest", "expected head, fixed"),
    ):
        with pytest.raises(LengthModeError, match=re.escape(says)):
            model.encode(images, bad)
    files = sorted((dataset / "images" / "val").glob("*.png"))[:2]
    assert [len(p) for p in model.tokenize(files, "prefix:2")] == [2, 2]
