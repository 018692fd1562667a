"""The model's public API: presets and parameter counts, FLOPs, encode/interpret, bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from strop.cli import app
from strop.model import ModelConfig, build_model, count_parameters, describe
from strop.model.interpreter import prefix_mask


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(tiny_model_config()).eval()


#: Largest accepted relative gap to the paper's Table 6 trainable-parameter counts. The paper
#: does not itemise its counts, so the gap cannot be attributed to one component; the widest
#: gap measured is S on ViT-B (-7.0%), and 8% keeps every preset/teacher pair honest.
TABLE_6_TOLERANCE = 0.08


@pytest.mark.parametrize(
    ("preset", "teacher", "paper", "measured"),
    [
        ("S", "dinov3-s", 13.5e6, 13_009_041),  # 13.01M, -3.6%
        ("M", "dinov3-b", 65.1e6, 64_317_713),  # 64.32M, -1.2%
        ("S", "dinov3-b", 14.2e6, 13_206_801),  # 13.21M, -7.0%
        ("M", "dinov3-s", 64.3e6, 63_923_345),  # 63.92M, -0.6%
    ],
)
def test_trainable_parameters_match_paper_table_6(preset, teacher, paper, measured):
    """Trainable parameters (generator, interpreter, quantizer projections, length head) are
    within TABLE_6_TOLERANCE of the paper's Table 6, and exactly the count measured when this
    test was written: a changed count changes every checkpoint, so update it knowingly."""
    info = describe(ModelConfig.from_preset(preset, teacher=teacher))
    ours = info["trainable_params"]
    gap = (ours - paper) / paper
    where = f"STROP-{preset} on {teacher}: {ours / 1e6:.2f}M trainable vs paper {paper / 1e6}M ({gap:+.1%})"
    assert abs(gap) <= TABLE_6_TOLERANCE, f"{where}, beyond the {TABLE_6_TOLERANCE:.0%} tolerance"
    assert ours == measured, f"{where}; the count measured for this test was {measured}"
    assert info["total_params"] == ours + info["teacher_params"]


def test_meta_count_equals_a_real_model(tiny):
    assert describe(tiny.cfg)["trainable_params"] == count_parameters(tiny)["trainable_params"]
    assert count_parameters(tiny)["pixel_probe_params"] == sum(
        p.numel() for p in tiny.pixel_decoder.parameters()
    )


def test_presets_and_overrides():
    s = ModelConfig.from_preset("S")
    assert (s.d, s.layers, s.ffn, s.heads, s.image_size, s.patch_size) == (256, 8, 1024, 8, 224, 16)
    m = ModelConfig.from_preset("M", k=128, l_max=32)
    assert (m.d, m.layers, m.ffn, m.heads, m.k, m.l_max) == (512, 10, 2048, 8, 128, 32)
    assert m.bits_per_program == 32 * math.log2(128)
    again = ModelConfig(**m.model_dump())
    assert again == m


def test_analytic_flops_match_torch_flop_counter(tiny):
    cfg = tiny.cfg
    feats = torch.randn(2, cfg.n_patches, tiny.teacher.dim)
    lengths = torch.full((2,), cfg.l_max)
    counter = FlopCounterMode(display=False)
    # The math backend decomposes attention into bmm calls the counter sees (the CPU fused
    # kernel is not registered with it).
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        tiny.generate(feats)
        tiny.interpret_tokens(torch.randn(2, cfg.l_max, cfg.d), lengths)
        tiny.predict_length(feats)
    measured = counter.get_total_flops() / 2
    # The counter charges causal attention as dense; the analytic count charges what the kernel computes.
    assert tiny.flops_per_image() == pytest.approx(measured, rel=0.1)
    assert (
        tiny.flops_per_image(include_teacher=True) == tiny.flops_per_image()
    )  # pixels: no matmuls


def test_encode_interpret_roundtrip_matches_training_path(tiny):
    images = torch.rand(3, 3, 64, 64)
    codes, lengths = tiny.encode(images)
    assert codes.shape == (3, tiny.cfg.l_max) and lengths.dtype == torch.long
    active = prefix_mask(lengths, tiny.cfg.l_max)
    assert (codes[~active] == -1).all() and (codes[active] >= 0).all()
    # vary the lengths so interpret groups several prefix lengths
    lengths = torch.tensor([1, 7, tiny.cfg.l_max])
    feats = tiny.teacher_features(images)
    with torch.no_grad():
        gen = tiny.generate(feats)
        masked = tiny.interpret_tokens(gen.tokens, lengths)
    field = tiny.interpret(
        gen.codes.masked_fill(~prefix_mask(lengths, tiny.cfg.l_max), -1), lengths
    )
    assert torch.allclose(field, masked, atol=1e-5)
    fixed_codes, fixed = tiny.encode(images, length_mode="fixed")
    assert (fixed == tiny.cfg.l_max).all() and (fixed_codes >= 0).all()


def test_bad_inputs_fail_with_one_clear_line(tiny):
    k, l_max = tiny.cfg.k, tiny.cfg.l_max
    with pytest.raises(ValueError, match=r"expected shape \(B, 3, 64, 64\)"):
        tiny.encode(torch.rand(1, 3, 60, 60))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny_model_config(image_size=68)
    with pytest.raises(ValueError, match=rf"row 1, position 2 holds {k}, expected 0..{k - 1}"):
        tiny.interpret(torch.tensor([[1, 2, 3], [1, 2, k]]), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="holds -1"):
        tiny.interpret(torch.tensor([[1, -1, 3]]), torch.tensor([3]))
    tiny.interpret(torch.tensor([[1, 2, -1]]), torch.tensor([2]))  # padding past the length is fine
    with pytest.raises(ValueError, match="row 0 has length 0"):
        tiny.interpret(torch.zeros(1, l_max, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match=f"length {l_max + 1}"):
        tiny.interpret(torch.zeros(1, l_max, dtype=torch.long), torch.tensor([l_max + 1]))
    with pytest.raises(ValueError, match=rf"codes: expected an integer tensor \(B, <= {l_max}\)"):
        tiny.interpret(torch.zeros(1, l_max + 1, dtype=torch.long), torch.tensor([2]))
    with pytest.raises(ValueError, match="teacher features"):
        tiny.generate(torch.randn(1, 10, 192))
    with pytest.raises(ValueError, match="length_mode"):
        tiny.encode(torch.rand(1, 3, 64, 64), length_mode="search")


def test_checkpoint_from_another_preset_is_refused(tiny):
    other = build_model(tiny_model_config(d=32, k=32))
    with pytest.raises(
        ValueError, match=r"checkpoint is preset tiny \(d=32.*: d 32 vs 64, k 32 vs 64"
    ):
        tiny.load_state_dict_checked(other.state_dict())
    sd = other.state_dict()
    sd.pop("_extra_state")  # an older checkpoint without the config: the shape is named instead
    with pytest.raises(
        ValueError, match=r"generator.queries has shape \(16, 32\).*expects \(16, 64\)"
    ):
        tiny.load_state_dict_checked(sd)
    # its own state (including the codebook buffers) loads and reproduces the outputs
    twin = build_model(tiny.cfg).eval()
    twin.load_state_dict_checked(tiny.state_dict())
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(twin.encode(images)[0], tiny.encode(images)[0])


def test_model_info_cli_json():
    result = CliRunner().invoke(
        app,
        [
            "model-info",
            "--preset",
            "S",
            "--teacher",
            "dinov3-s",
            "--k",
            "128",
            "--l-max",
            "32",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    for key in (
        "trainable_params",
        "total_params",
        "flops_per_image",
        "bits_per_program",
        "pixel_probe_params",
    ):
        assert key in info
    assert info["bits_per_program"] == 32 * 7
    assert info["total_params"] == pytest.approx(13.0e6 + 21.6e6, rel=0.05)
    table = CliRunner().invoke(app, ["model-info", "--preset", "tiny", "--teacher", "pixels"])
    assert table.exit_code == 0 and "offline stand-in" in table.output
    bad = CliRunner().invoke(
        app, ["model-info", "--preset", "tiny", "--teacher", "pixels", "--image-size", "72"]
    )
    assert bad.exit_code != 0 and "divisible by 16" in bad.output
