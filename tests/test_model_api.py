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


#: The paper's Table 6, trainable parameters (rounded to 0.1M), with the count we measure.
TABLE_6 = [
    ("S", "dinov3-s", 13.5e6, 13_009_041),
    ("S", "dinov3-b", 14.2e6, 13_206_801),
    ("M", "dinov3-s", 64.3e6, 63_923_345),
    ("M", "dinov3-b", 65.1e6, 64_317_713),
    ("M", "dinov3-l", 65.6e6, 64_580_625),
]
#: Half of Table 6's last digit: a printed 13.5 is anything in [13.45, 13.55).
ROUNDING = 0.05e6


@pytest.mark.parametrize(("preset", "teacher", "paper", "measured"), TABLE_6)
def test_trainable_parameters_are_the_ones_measured(preset, teacher, paper, measured):
    """Trainable parameters (generator, interpreter, quantizer projections, length head), the
    teacher and the pixel probe excluded, as measured: a changed count changes every checkpoint,
    so update it knowingly (and `test_table_6_gap_is_teacher_width_only` with it)."""
    info = describe(ModelConfig.from_preset(preset, teacher=teacher))
    assert info["trainable_params"] == measured
    assert info["total_params"] == measured + info["teacher_params"]


def _teacher_width_params(preset: str, teacher: str) -> int:
    """Our parameters that read or write the teacher's width D: the generator's input
    LayerNorm + Linear (D -> d) and the interpreter's output projection (d -> D)."""
    from strop.model.network import Strop
    from strop.model.teachers import PixelTeacher

    cfg = ModelConfig.from_preset(preset, teacher=teacher)
    shape_only = PixelTeacher(cfg.patch_size)  # a weightless stand-in of the teacher's width
    shape_only.dim = cfg.teacher_dim
    with torch.device("meta"):
        model = Strop(cfg, teacher=shape_only)
    parts = (model.generator.norm_in, model.generator.proj_in, model.interpreter.proj_out)
    return sum(p.numel() for part in parts for p in part.parameters())


def test_table_6_gap_is_teacher_width_only():
    """Where our counts and Table 6 part: the whole gap grows with the teacher's width D.

    Ours: D (2d + 3) + d parameters touch D (below); everything else matches the paper. From a
    ViT-S to a ViT-B teacher (D 384 -> 768) that adds 0.20M to STROP-S and 0.39M to STROP-M,
    where Table 6 adds 0.7M and 0.8M. Per teacher channel, the gap (paper - ours) / D is the
    same for every teacher of a preset, within the table's rounding: about 1,290 for S and
    1,000 for M, i.e. about 1,540 - d. So the paper's counts hold one d x D matrix (the input
    projection, Sec. 2.1 "Encoder") plus some 1,540 parameters per teacher channel that do
    not grow with d, where ours hold two d x D matrices. The paper's text does not say what
    that part is: Table 6 counts "generator, interpreter, quantizer projections, and length
    head" (Sec. 5.1), its interpreter output is "projected with a convolution" of unstated
    size, and its length head reads "pooled DINOv3 encoder features" of unstated width. A part
    of one fixed size per channel added to ours (a pixel-decoder stem, a length head on the
    raw features) cannot fit both presets (checked below), so we keep our architecture and
    state the gap here instead of hiding it in a tolerance.
    """
    dim = {"dinov3-s": 384, "dinov3-b": 768, "dinov3-l": 1024}
    per_channel: dict[str, list[tuple[float, float]]] = {"S": [], "M": []}
    for preset, teacher, paper, measured in TABLE_6:
        d, width = ModelConfig.from_preset(preset).d, dim[teacher]
        assert _teacher_width_params(preset, teacher) == width * (2 * d + 3) + d
        # (paper - ours) / D, as an interval: the paper's figure is rounded
        per_channel[preset].append(
            ((paper - ROUNDING - measured) / width, (paper + ROUNDING - measured) / width)
        )
    bounds = {}
    for preset, expected in (("S", 1_290), ("M", 1_000)):
        low = max(lo for lo, _ in per_channel[preset])
        high = min(hi for _, hi in per_channel[preset])
        # one value per channel explains every row of the preset, and it is the one stated
        assert low <= expected <= high, (preset, per_channel[preset])
        bounds[preset] = (low, high)
    # ...and the two presets need different values: no part of one fixed size per teacher
    # channel (a decoder stem, a length head of fixed width on the raw features) added to
    # ours explains the table; the paper's extra part shrinks as d grows.
    assert bounds["M"][1] < bounds["S"][0], bounds
    ours_s = _teacher_width_params("S", "dinov3-b") - _teacher_width_params("S", "dinov3-s")
    ours_m = _teacher_width_params("M", "dinov3-b") - _teacher_width_params("M", "dinov3-s")
    assert (round(ours_s / 1e6, 2), round(ours_m / 1e6, 2)) == (0.20, 0.39)


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
    with pytest.raises(ValueError, match="expected head, fixed, prefix:N"):  # search needs EPS
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
