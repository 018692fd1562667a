"""RunConfig, `--set` overrides and the checkpoint file format (no training needed)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from strop.training import checkpoint as ckpt
from strop.training.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_run_config,
    make_run_config,
    scale_schedule,
)


def base() -> RunConfig:
    return make_run_config("data/x", preset="tiny", teacher="pixels", k=32)


def test_make_run_config_resolves_flags():
    cfg = make_run_config("d", preset="tiny", teacher="pixels", k=32, steps=1000, batch_size=8)
    assert (cfg.model.preset, cfg.model.teacher, cfg.model.k) == ("tiny", "pixels", 32)
    assert cfg.train.steps == 1000 and cfg.train.batch_size == 8
    # The paper's schedule keeps its share of the run: phases at 20/30/40/50 %.
    assert cfg.curriculum.phase_steps == (200, 300, 400, 500)
    assert (cfg.train.warmup_steps, cfg.train.hold_steps) == (60, 200)
    assert cfg.model.div_warmup_steps == 80
    assert cfg.data.path == "d"


def test_overrides_reach_every_section_and_parse_types():
    cfg = apply_overrides(
        base(),
        [
            "curriculum.phase_steps=30,60,80,100",
            "train.checkpoint_every=7",
            "train.lr=1e-3",
            "train.compile=true",
            "train.betas=0.8,0.9",
            "model.l_max=8",
            "curriculum.length_mode=fixed",
            "data.feature_cache=/tmp/cache",
            "data.feature_cache=none",
        ],
    )
    assert cfg.curriculum.phase_steps == (30, 60, 80, 100)
    assert cfg.train.checkpoint_every == 7 and cfg.train.lr == 1e-3 and cfg.train.compile is True
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.model.l_max == 8 and cfg.curriculum.length_mode == "fixed"
    assert cfg.data.feature_cache is None


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lrr=1", r"unknown key 'train.lrr'.*did you mean train.lr\?"),
        ("trian.lr=1", r"unknown key 'trian'"),
        ("train.lr=abc", r"--set train.lr=abc: invalid value for train.lr .*got 'abc'"),
        ("train.lr=-1", r"invalid value for train.lr"),
        ("curriculum.phase_steps=1,2,3", r"invalid value for curriculum.phase_steps"),
        ("curriculum.phase_steps=50,40,60,70", r"non-decreasing"),
        ("curriculum.length_mode=sometimes", r"curriculum.length_mode"),
        ("train.lr", r"expected key=value"),
        ("train.lr.x=1", r"'train.lr' has no sub-fields"),
        ("model.d=30", r"divisible"),
    ],
)
def test_overrides_fail_with_one_line(item, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(base(), [item])
    assert "\n" not in str(info.value)


def test_config_json_roundtrip(tmp_path):
    cfg = apply_overrides(base(), ["curriculum.phase_steps=3,6,8,10"])
    (tmp_path / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    assert load_run_config(tmp_path) == cfg
    (tmp_path / "config.json").write_text(json.dumps({**cfg.model_dump(mode="json"), "extra": 1}))
    with pytest.raises(ConfigError, match=r"config.json: field extra"):
        load_run_config(tmp_path)
    with pytest.raises(ConfigError, match="config not found"):
        load_run_config(tmp_path / "nope")


def test_scale_schedule_keeps_overrides_order():
    cfg = scale_schedule(base(), 100)
    cfg = apply_overrides(cfg, ["curriculum.phase_steps=1,2,3,4"])
    assert cfg.curriculum.phase_steps == (1, 2, 3, 4)


def test_checkpoint_atomic_keep_and_weights_only(tmp_path):
    for step in (10, 20, 30, 40):
        state = {
            "step": step,
            "model": {"w": torch.full((2,), float(step))},
            "rng": ckpt.rng_state(),
        }
        ckpt.save_checkpoint(tmp_path, step, state, keep=2)
    names = sorted(p.name for p in ckpt.checkpoints_dir(tmp_path).iterdir())
    assert names == ["last.pt", "step-0000030.pt", "step-0000040.pt"]
    last = ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path))
    assert last["step"] == 40 and last["model"]["w"].tolist() == [40.0, 40.0]
    assert ckpt.load_checkpoint(ckpt.resolve_checkpoint(tmp_path, 30))["step"] == 30
    with pytest.raises(ckpt.CheckpointError, match=r"step-0000010.pt: checkpoint not found \(kept"):
        ckpt.resolve_checkpoint(tmp_path, 10)


def test_checkpoint_rng_roundtrip(tmp_path):
    import random

    import numpy as np

    state = ckpt.rng_state()
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1, "model": {}, "rng": state}, keep=0)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_checkpoint_load_refuses_code_and_garbage(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"step": 1, "model": Evil()}, bad)
    with pytest.raises(ckpt.CheckpointError, match="evil.pt: not a loadable STROP checkpoint"):
        ckpt.load_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="junk.pt"):
        ckpt.load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ckpt.CheckpointError, match="not a STROP checkpoint"):
        ckpt.load_checkpoint(other)


def test_paper_scale_config_files_load_and_flags_override():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = make_run_config("CLEVR_v1.0", k=64, config_file=root / "clevr-dino-s.json")
    assert (cfg.model.preset, cfg.model.teacher, cfg.model.l_max) == ("S", "dinov3-s", 32)
    assert cfg.model.k == 64 and cfg.train.batch_size == 128 and cfg.data.path == "CLEVR_v1.0"
    main = make_run_config("coco", config_file=root / "coco-imagenet-dino-s.json")
    assert (main.model.l_max, main.model.k) == (64, 1024)
    with pytest.raises(ConfigError, match="conflicts with --config"):
        make_run_config("d", preset="tiny", config_file=root / "clevr-dino-s.json")


def test_paper_scale_configs_say_where_every_value_comes_from():
    """Every field of configs/*.json is in configs/PROVENANCE.md, marked paper or ours."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    doc = (root / "PROVENANCE.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_0-9]+)`", doc))
    for path in sorted(root.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["_provenance"].startswith("configs/PROVENANCE.md"), path
        fields = {f for section, v in data.items() if not section.startswith("_") for f in v}
        assert fields - documented == set(), f"{path.name}: fields missing from PROVENANCE.md"
    sources = _provenance_sources(doc)
    assert sources and all(re.match(r"(paper|inferred|ours)\b", source) for source in sources)
    for source in sources:
        if source.startswith("paper"):
            assert re.search(r'Table \d+|"', source), f"a paper value without its place: {source}"


def _provenance_sources(doc: str) -> list[str]:
    """The source column of configs/PROVENANCE.md's table, one entry a field."""
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    return [line.rstrip(" |").rsplit("|", 1)[-1].strip() for line in rows]


@pytest.mark.needs_shared
def test_paper_values_quote_the_papers_own_words():
    """The quoted words in configs/PROVENANCE.md are the paper's own (its text in
    ../shared/paper beside the checkout; skipped without it)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "configs" / "PROVENANCE.md").read_text("utf-8")
    paper = sorted((Path(__file__).resolve().parents[2] / "shared" / "paper").glob("*.txt"))
    if not paper:
        pytest.skip("the paper's text is not beside the repository; quotes not checked")
    text = " ".join(paper[0].read_text(encoding="utf-8").split())
    quotes = [q for source in _provenance_sources(doc) for q in re.findall(r'"([^"]+)"', source)]
    assert quotes and [q for q in quotes if " ".join(q.split()) not in text] == []


def test_config_file_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"preset": "S", "l_max": -3}}')
    with pytest.raises(ConfigError, match=r"bad\.json: field model\.l_max"):
        make_run_config("d", config_file=bad)
