"""Untrusted tokenizer folders and inputs (issue 25, items 9-11 and their weak cases): an
edited config.json that names a teacher folder or sizes that would allocate hundreds of GB,
weights too large for float32, images that are not [0, 1] floats, hub ids that are no
folder and no network; tampered exported folders (config.json, weights, a pickle beside
them) and `strop export-model`'s output folder (a file, an experiment, read-only, cut off or
killed midway). One tiny run is trained and exported for the module (real trainer, real
files); the tests damage copies of the export.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line, tiny_run_config
from helpers import BASE_SETS, chattr
from PIL import Image
from typer.testing import CliRunner

from strop.cli import app as strop_app
from strop.data.datasets import DataError
from strop.model.network import Strop
from strop.model.pretrained import PretrainedError

pytestmark = pytest.mark.usefixtures("one_thread")


def strop(*args: object):
    return CliRunner().invoke(strop_app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(clevr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from strop.training.trainer import train

    out = tmp_path_factory.mktemp("exp") / "k16"
    return train(tiny_run_config(clevr, "train.steps=12", *BASE_SETS), out, progress=False)


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shared") / "tok"
    assert strop("export-model", run, "--out", out).exit_code == 0
    return out


@pytest.fixture(scope="module")
def model(exported: Path) -> Strop:
    return Strop.from_pretrained(exported)


def _copy(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "tok"))


def _edit(folder: Path, **model_fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model_fields)
    for key in ("k", "l_max", "l_min", "image_size"):  # the top-level copies agree
        if key in model_fields:
            config[key] = model_fields[key]
    (folder / "config.json").write_text(json.dumps(config))


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle executed')",))


# --------------------------------------------------------------------------- item 9


def test_a_teacher_path_in_an_exported_config_is_refused(exported, tmp_path) -> None:
    """An edited config.json naming a teacher folder made from_pretrained hand that folder
    (and its pytorch_model.bin pickle) to transformers."""
    folder = _copy(exported, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    _edit(folder, teacher_path=str(elsewhere))
    with pytest.raises(PretrainedError) as err:
        Strop.from_pretrained(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / 'config.json'}: field model.teacher_path:")
    assert "\n" not in message
    line = one_error_line(strop("export", folder, "--limit", 2), 1)
    assert "field model.teacher_path" in line
    # the caller's own teacher_path= still works (it is theirs, not the file's)
    assert Strop.from_pretrained(exported, teacher_path=elsewhere).cfg.k == 16


def test_a_teacher_folder_holding_only_a_pickle_is_never_unpickled(tmp_path) -> None:
    """transformers read pytorch_model.bin when a teacher folder had no safetensors; its
    refusal advised weights_only=False."""
    from strop.model.teachers import TeacherNotFoundError, load_dinov3, teacher_config

    folder = tmp_path / "dino"
    teacher_config("dinov3-s", 32, 16).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(TeacherNotFoundError) as err:
        load_dinov3("dinov3-s", folder)
    assert "weights_only" not in str(err.value) and "model.safetensors" in str(err.value)
    cause = repr(err.value.__cause__)
    assert "weights_only" not in cause and "pytorch_model.bin" not in cause, cause


SIZES = [
    ({"d": 262144}, "expects (8, 262144)"),
    ({"l_max": 10**9}, "expects (1000000000, 64)"),
    ({"layers": 10**6}, "layers=1000000, but the weights hold"),
]


def test_sizes_in_config_are_checked_against_the_weights_before_allocating(
    exported, tmp_path
) -> None:
    """d=262144 allocated 824 GB and l_max=10^9 256 GB before the shapes were compared. Run
    under an 8 GB address-space limit, which either allocation breaks."""
    folders = []
    for i, (fields, _) in enumerate(SIZES):
        folders.append(Path(shutil.copytree(exported, tmp_path / f"tok{i}")))
        _edit(folders[-1], **fields)
    probe = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from strop.model.network import Strop\n"
        "from strop.model.pretrained import PretrainedError\n"
        "for folder in sys.argv[1:]:\n"
        "    try:\n"
        "        Strop.from_pretrained(folder)\n"
        "    except PretrainedError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *map(str, folders)],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(SIZES), done.stdout
    for line, folder, (_, says) in zip(lines, folders, SIZES, strict=True):
        assert line.startswith(f"{folder / 'model.safetensors'}: weights do not fit config.json (")
        assert says in line


# --------------------------------------------------------------------------- item 10


def test_weights_too_large_for_float32_never_give_programs(exported, tmp_path, clevr) -> None:
    """Weights scaled by 1e30 (finite) loaded, and encode returned codes of -1 and lengths
    of -2^63; tokenize returned [[]]."""
    from safetensors.torch import load_file, save_file

    folder = _copy(exported, tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: v * 1e30 if v.is_floating_point() else v for k, v in tensors.items()},
        str(folder / "model.safetensors"),
    )
    huge = Strop.from_pretrained(folder)
    images = torch.rand(2, 3, 32, 32)
    for mode in ("head", "fixed", "prefix:3", "search:0.5"):
        with pytest.raises(ValueError, match="NaN or infinite .*overflow float32"):
            huge.encode(images, mode)
    files = sorted((clevr / "images" / "val").glob("*.png"))[:1]
    with pytest.raises(ValueError, match="overflow float32"):
        huge.tokenize(files)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30, 255.0, -0.5])
def test_images_outside_zero_one_or_not_finite_are_refused(model, value) -> None:
    images = torch.rand(3, 3, 32, 32)
    images[2, 1, 5, 5] = value
    finite = np.isfinite(value)
    says = "values must lie in \\[0, 1\\], got values in" if finite else "image 2 holds NaN"
    with pytest.raises(ValueError, match=says):
        model.encode(images)


def test_integer_images_are_refused_not_scaled(model) -> None:
    with pytest.raises(ValueError, match="expected floats in \\[0, 1\\], got uint8"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    codes, lengths = model.encode(torch.rand(2, 3, 32, 32))  # the valid case still works
    assert ((lengths >= 1) & (lengths <= 8)).all() and ((codes >= -1) & (codes < 16)).all()


def test_programs_out_of_range_never_leave_the_model(model) -> None:
    """The last line of defence on its own: a length or code no trained tokenizer makes."""
    from strop.model.boundary import check_programs

    z_e = torch.zeros(2, 8, 8)
    codes = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="image 1: the model gave length 9, outside"):
        check_programs(codes, torch.tensor([3, 9]), z_e, 1, 8, 16)
    codes[0, 1] = 16
    with pytest.raises(ValueError, match="image 0: the model gave code 16 at position 1"):
        check_programs(codes, torch.tensor([3, 2]), z_e, 1, 8, 16)


# --------------------------------------------------------------------------- item 11


def test_tokenize_of_nothing_is_nothing_and_a_single_path_is_refused(model, clevr) -> None:
    assert model.tokenize([]) == []
    one = sorted((clevr / "images" / "val").glob("*.png"))[0]
    for single in (one, str(one)):
        with pytest.raises(TypeError, match="takes a list of image paths, got the single path"):
            model.tokenize(single)  # type: ignore[arg-type]
    assert len(model.tokenize([one])) == 1


def test_a_bad_repo_id_is_a_usage_error_before_any_work(run, tmp_path) -> None:
    out = tmp_path / "tok"
    done = strop("export-model", run, "--out", out, "--push-to-hub", "bad id!!")
    assert done.exit_code == 2, done.output
    assert "is not a hub repo id" in done.output and "Traceback" not in done.output
    assert not out.exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed once the with ends: connections are refused


def _offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": "hf_test_token_not_real",
        **extra,
    }


@pytest.mark.parametrize("offline", [False, True], ids=["no-network", "HF_HUB_OFFLINE"])
def test_push_to_hub_without_a_network_is_one_line(run, tmp_path, offline) -> None:
    out = tmp_path / "tok"
    env = _offline_env(tmp_path, **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    args = ["export-model", str(run), "--out", str(out), "--push-to-hub", "someone/strop-k16"]
    done = subprocess.run(
        [sys.executable, "-m", "strop.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: push to hub repo someone/strop-k16")
    assert (out / "model.safetensors").is_file() and f"{out} was written" in lines[0]


# --------------------------------------------------------------------------- weak cases


@pytest.mark.parametrize("offline", [False, True], ids=["closed-port", "HF_HUB_OFFLINE"])
def test_a_mistyped_path_fails_fast_when_the_hub_cannot_be_reached(tmp_path, offline) -> None:
    """`owner/nonexist` spent ~40 s in huggingface_hub's retries of a dead network."""
    probe = (
        "import sys, time\n"
        "from strop.model.network import Strop\n"
        "from strop.model.pretrained import PretrainedError\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    Strop.from_pretrained('owner/nonexist')\n"
        "except PretrainedError as exc:\n"
        "    print(f'{time.monotonic() - start:.2f}', exc)\n"
    )
    env = _offline_env(tmp_path, **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, message = done.stdout.strip().split(" ", 1)
    assert float(seconds) < 3.0, done.stdout
    assert message.startswith("owner/nonexist: no such folder, and the hub cannot be reached (")
    assert ("HF_HUB_OFFLINE" if offline else "Connection refused") in message
    assert len(done.stdout.strip().splitlines()) == 1 and "Retrying" not in done.stderr


def test_an_empty_path_or_a_path_that_is_no_repo_id_is_refused(tmp_path, monkeypatch) -> None:
    """from_pretrained("") loaded the current directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedError, match="empty path"):
        Strop.from_pretrained("")
    with pytest.raises(PretrainedError, match="no/such/dir: no such folder, and not a hub"):
        Strop.from_pretrained("./no/such/dir")


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_images_tokenize_refuses_with_the_file_named(model, tmp_path) -> None:
    """A text file's error named `<_io.BufferedReader name=3>`; a fully transparent image
    gave the codes of its hidden colours; 1x1 and 64x1 images were stretched to 32x32."""
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError) as err:
        model.tokenize([text])
    assert str(err.value) == f"{text} field image: not an image file (no format PIL reads)"
    clear = np.zeros((32, 32, 4), dtype=np.uint8)
    clear[..., :3] = 200
    path = _save(Image.fromarray(clear, "RGBA"), tmp_path / "clear.png")
    with pytest.raises(DataError, match="clear.png field image: fully transparent"):
        model.tokenize([path])
    clear[0, 0, 3] = 255  # one visible pixel: an image, read as before
    assert len(model.tokenize([_save(Image.fromarray(clear, "RGBA"), path)])) == 1
    for size in ((1, 1), (64, 1), (7, 64)):
        tiny = _save(Image.new("RGB", size), tmp_path / f"t{size[0]}x{size[1]}.png")
        with pytest.raises(DataError, match=f"{size[0]}x{size[1]} pixels; an image needs"):
            model.tokenize([tiny])
    assert len(model.tokenize([_save(Image.new("RGB", (8, 8)), tmp_path / "ok.png")])) == 1


def test_a_preset_name_that_does_not_match_the_dimensions_is_not_reported_as_that_preset(
    exported, tmp_path
) -> None:
    """An edited `preset: "S"` over tiny dimensions loaded and the card read "preset `S`".
    Overrides of a preset are legal at training, so the card names what differs."""
    from strop.model.card import model_card

    folder = _copy(exported, tmp_path)
    _edit(folder, preset="S")
    config = json.loads((folder / "config.json").read_text())
    assert Strop.from_pretrained(folder).cfg.d == 64
    card = model_card(config)
    assert "preset `S` with other dimensions: d=64 (preset: 256), layers=2 (preset: 8)" in card
    plain = model_card(json.loads((exported / "config.json").read_text()))
    assert "preset `tiny` with other dimensions: decoder_width=16 (preset: 32)" in plain


# --------------------------------------------------------------------------- export-model out


def test_export_model_into_a_file_or_an_experiment_folder(run: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_error_line(strop("export-model", run, "--out", afile), 1)
    assert (
        line
        == f"error: {afile}: cannot write the output here (a file stands where a folder is needed)"
    )
    # An experiment folder: a config.json there made `strop report` read it as one run.
    experiment = Path(shutil.copytree(run.parent, tmp_path / "exp"))
    line = one_error_line(strop("export-model", run, "--out", experiment), 1)
    assert f"{experiment}: an experiment folder (holds the runs k16)" in line
    assert sorted(p.name for p in experiment.iterdir()) == ["k16"]
    # beside other files of the user's is fine (the Hugging Face convention)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert strop("export-model", run, "--out", mine).exit_code == 0
    assert (mine / "notes.txt").read_text() == "keep me"


def test_export_model_into_a_read_only_folder_is_one_line(run: Path, tmp_path: Path) -> None:
    """Was a SafetensorError traceback."""
    folder = tmp_path / "ro"
    folder.mkdir()
    chattr("+i", folder)
    try:
        for out in (folder, folder / "tok"):
            line = one_error_line(strop("export-model", run, "--out", out), 1)
            assert f"error: {out if out == folder else folder}" in line
            assert "cannot write the output here (Operation not permitted)" in line
    finally:
        chattr("-i", folder)


def test_an_export_cut_off_midway_is_refused_not_loaded(run: Path, exported: Path, tmp_path):
    """Re-export (another checkpoint) over a folder whose config.json cannot be replaced: the
    old writer had already replaced model.safetensors, so the folder loaded the new weights
    under the old config.json and provenance without a word."""
    from strop.model.network import Strop
    from strop.model.pretrained import PretrainedError

    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    chattr("+i", folder / "config.json")
    try:
        done = strop("export-model", run, "--out", folder, "--checkpoint", "8")
        assert one_error_line(done, 1).startswith(f"error: {folder}: cannot write")
    finally:
        chattr("-i", folder / "config.json")
    with pytest.raises(PretrainedError, match="incomplete output"):
        Strop.from_pretrained(folder)
    line = one_error_line(strop("eval", folder, "--no-lpips", "--limit", 2), 1)
    assert "incomplete output" in line and "strop export-model" in line
    # rerunning the export makes the folder whole again
    assert strop("export-model", run, "--out", folder, "--checkpoint", "8").exit_code == 0
    config = json.loads((folder / "config.json").read_text())
    assert config["provenance"]["checkpoint"] == "step-0000008.pt"
    assert config["training"]["steps"] == 8
    Strop.from_pretrained(folder)


def test_export_model_killed_midway_never_leaves_a_mixed_folder(run, exported, tmp_path):
    """SIGKILL while a re-export moves its files in: the folder is the old export, the new
    one, or refused; never the weights of one beside the config of the other."""
    import signal

    import torch
    from safetensors.torch import load_file

    from strop.model.network import Strop
    from strop.model.pretrained import PretrainedError

    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    old_weights = (folder / "model.safetensors").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "strop.cli", "export-model", str(run), "--out", str(folder)]
        + ["--checkpoint", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        staged = list(folder.glob(".export-model.staging-*/*"))
        if staged or (folder / "model.safetensors").read_bytes() != old_weights:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    try:
        model = Strop.from_pretrained(folder)
    except PretrainedError as exc:
        assert "incomplete output" in str(exc)
        return
    step = json.loads((folder / "config.json").read_text())["training"]["steps"]
    checkpoint = "last.pt" if step == 12 else f"step-{step:07d}.pt"
    want = torch.load(run / "checkpoints" / checkpoint, map_location="cpu", weights_only=False)
    have = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(have[k], want["model"][k]) for k in have)
    assert model.cfg.k == 16


def test_exported_data_path_works_from_another_directory(run, tmp_path, monkeypatch) -> None:
    """config.json's training.data_path was relative to where export-model ran."""
    monkeypatch.chdir(run.parent.parent)
    out = tmp_path / "tok"
    assert strop("export-model", Path(run.parent.name) / run.name, "--out", out).exit_code == 0
    data_path = json.loads((out / "config.json").read_text())["training"]["data_path"]
    assert Path(data_path).is_absolute() and Path(data_path).is_dir()
    monkeypatch.chdir(tmp_path)
    done = strop("export", out, "--limit", 2, "--out", tmp_path / "p.parquet")
    assert done.exit_code == 0, done.output


def test_other_weights_are_not_exported_beside_results_of_the_old(run, exported, tmp_path):
    """eval.json of the tokenizer in a folder stayed beside the weights of a re-export, and
    the report and the next model card showed them as the new tokenizer's numbers."""
    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    assert strop("eval", folder, "--no-lpips", "--limit", 2, "--order-probe", 0).exit_code == 0
    before = (folder / "model.safetensors").read_bytes()
    line = one_error_line(strop("export-model", run, "--out", folder, "--checkpoint", "8"), 1)
    assert f"{folder}: holds eval.json of the tokenizer there now" in line
    assert (folder / "model.safetensors").read_bytes() == before
    assert strop("export-model", run, "--out", folder).exit_code == 0  # the same checkpoint


def test_export_model_of_an_exported_folder_says_what_it_is(exported, tmp_path) -> None:
    """Said "checkpoints/last.pt: checkpoint not found (kept steps: none)"."""
    line = one_error_line(strop("export-model", exported, "--out", tmp_path / "again"), 1)
    assert f"{exported}: already an exported tokenizer" in line
    assert not (tmp_path / "again").exists()


def test_export_model_of_a_run_without_checkpoints(run, tmp_path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.json", bare / "config.json")
    line = one_error_line(strop("export-model", bare, "--out", tmp_path / "tok"), 1)
    assert f"{bare / 'checkpoints' / 'last.pt'}: checkpoint not found" in line
    assert not (tmp_path / "tok").exists()


# --------------------------------------------------------------------------- tampered folders


def _edit_config(edit):
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))

    return apply


def _edit_weights(edit):
    def apply(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(folder / "model.safetensors"))

    return apply


def _first_matrix(tensors) -> str:
    return next(k for k, v in tensors.items() if v.ndim == 2)


TAMPERED = [
    ("training a list", _edit_config(lambda c: c.update(training=[1])), "field training:"),
    ("provenance a list", _edit_config(lambda c: c.update(provenance=[1, 2])), "field provenance:"),
    ("eval a list", _edit_config(lambda c: c.update(eval=[1])), "field eval:"),
    (
        "steps a string",
        _edit_config(lambda c: c["training"].update(steps="many")),
        "field training.steps: Input should be a valid integer",
    ),
    (
        "length mode unknown",
        _edit_config(lambda c: c["training"].update(length_mode="budget")),
        "field training.length_mode:",
    ),
    ("k disagrees", _edit_config(lambda c: c.update(k=99)), "field k is 99 but model.k is 16"),
    (
        "integer weights",
        _edit_weights(lambda t: t.update({_first_matrix(t): t[_first_matrix(t)].long()})),
        "is int64, the model holds float32",
    ),
    (
        "NaN weights",
        _edit_weights(lambda t: t[_first_matrix(t)].fill_(float("nan"))),
        "holds NaN or infinite values",
    ),
]


@pytest.mark.parametrize(("name", "tamper", "says"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_tampered_tokenizer_folder_is_refused_in_one_line(exported, tmp_path, name, tamper, says):
    """Lists where objects belong were AttributeError/TypeError tracebacks; a string step,
    a top-level K that disagrees with the model, integer or NaN weights loaded silently."""
    from strop.model.network import Strop
    from strop.model.pretrained import PretrainedError

    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    tamper(folder)
    with pytest.raises(PretrainedError) as err:
        Strop.from_pretrained(folder)
    assert says in str(err.value) and str(folder) in str(err.value)
    line = one_error_line(strop("export", folder, "--limit", 2), 1)
    assert says in line


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"format": "strop-tokenizer\xff"}', "config.json: not a UTF-8 text file"),
        (
            b'{"format": "strop-tokenizer", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "config.json: JSON nested too deeply",
        ),
    ],
)
def test_an_unreadable_config_is_named_by_export_and_eval(exported, tmp_path, content, says):
    """`strop export DIR` printed "'utf-8' codec can't decode byte 0xff" (no file) and a
    RecursionError traceback."""
    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    (folder / "config.json").write_bytes(content)
    for command in ("export", "eval"):
        line = one_error_line(strop(command, folder, "--limit", 2), 1)
        assert f"{folder / 'config.json'}" in line and says in line


def test_an_exported_folder_without_its_weights_says_so(exported, tmp_path) -> None:
    """Was "checkpoints/last.pt: checkpoint not found", as if it were a training run."""
    folder = Path(shutil.copytree(exported, tmp_path / "tok"))
    (folder / "model.safetensors").unlink()
    line = one_error_line(strop("eval", folder, "--limit", 2), 1)
    assert f"{folder / 'model.safetensors'}: not found" in line and "without its weights" in line


def test_a_pickle_placed_beside_the_weights_is_never_read(exported, tmp_path) -> None:
    import pickle

    from strop.model.network import Strop

    folder = Path(shutil.copytree(exported, tmp_path / "tok"))

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    for name in ("pytorch_model.bin", "model.pt", "checkpoints/last.pt"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(pickle.dumps(Boom()))
    model = Strop.from_pretrained(folder)
    assert model.cfg.k == 16
    done = strop("export", folder, "--limit", 2, "--out", tmp_path / "p.parquet")
    assert done.exit_code == 0, done.output
