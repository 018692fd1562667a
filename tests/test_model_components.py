"""Invariances of the generator, interpreter and pixel probe, checked by real perturbations."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config

from strop.model import build_model
from strop.model.generator import (
    Generator,
    TransformerConfig,
    memory_query_attention,
    reference_mask,
)
from strop.model.interpreter import Interpreter, prefix_mask
from strop.model.length_head import round_lengths
from strop.model.losses import align_loss, pixel_loss

D, P, L, d = 24, 16, 8, 32


def _arch(layout: str = "split") -> TransformerConfig:
    return TransformerConfig(d=d, layers=2, heads=4, ffn=64, layout=layout)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _generator(layout: str = "split") -> Generator:
    return Generator(_arch(layout), teacher_dim=D, grid=(4, 4), l_max=L).eval()


def _run_blocks(gen: Generator, feats: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Generator forward with explicit query inputs, returning all outputs [sources; queries]."""
    x = torch.cat([gen.project(feats) + gen.pos_2d, queries], dim=1)
    for block in gen.blocks:
        x = block(x, n_mem=P, causal_queries=True)
    return x


@pytest.mark.parametrize("layout", ["split", "masked"])
def test_generator_query_perturbation_changes_only_later_positions(layout):
    gen = _generator(layout)
    feats = torch.randn(2, P, D)
    queries = (gen.queries + gen.prefix_pos).detach().unsqueeze(0).repeat(2, 1, 1)
    base = _run_blocks(gen, feats, queries)
    for j in (0, 3, L - 1):
        bumped = queries.clone()
        bumped[:, j] += 5.0 * torch.randn(d)
        out = _run_blocks(gen, feats, bumped)
        # sources never see any query
        assert torch.equal(out[:, :P], base[:, :P])
        # queries before j are untouched, j and later do change
        assert torch.allclose(out[:, P : P + j], base[:, P : P + j], atol=1e-6, rtol=0)
        assert (out[:, P + j :] - base[:, P + j :]).abs().amax() > 1e-3


def test_generator_sources_depend_on_features_and_queries_on_all_sources():
    gen = _generator()
    feats = torch.randn(1, P, D)
    base = gen(feats)
    bumped = feats.clone()
    bumped[:, -1] += 3.0 * torch.randn(D)  # the last patch must reach even the first query
    assert (gen(bumped)[:, 0] - base[:, 0]).abs().amax() > 1e-4


def test_split_and_masked_layouts_agree():
    q, k, v = (torch.randn(3, 4, P + L, 8) for _ in range(3))
    for causal, valid in (
        (True, None),
        (False, torch.arange(P).unsqueeze(0) < torch.tensor([[5], [16], [1]])),
    ):
        n_mem = P
        a = memory_query_attention(q, k, v, n_mem, causal, valid, layout="split")
        b = memory_query_attention(q, k, v, n_mem, causal, valid, layout="masked")
        assert torch.allclose(a, b, atol=1e-5), (causal, valid is None)


def test_reference_mask_is_the_paper_mask():
    m = reference_mask(5, 3, causal_queries=True, mem_valid=None)[0, 0]
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)


@pytest.mark.parametrize("layout", ["split", "masked"])
def test_interpreter_padding_is_invisible(layout):
    interp = Interpreter(_arch(layout), n_patches=P, teacher_dim=D, l_max=L).eval()
    tokens = torch.randn(4, L, d)
    lengths = torch.tensor([1, 3, 8, 5])
    active = prefix_mask(lengths, L)
    base = interp(tokens, lengths)
    for scale in (1.0, 1e3):
        garbage = torch.where(active.unsqueeze(-1), tokens, scale * torch.randn(4, L, d))
        assert torch.equal(interp(garbage, lengths), base)  # bit-identical
    for i, n in enumerate(lengths.tolist()):
        alone = interp(tokens[i : i + 1, :n], None)
        assert torch.allclose(alone, base[i : i + 1], atol=1e-5, rtol=1e-5)


def test_interpreter_reads_every_prefix_token():
    interp = Interpreter(_arch(), n_patches=P, teacher_dim=D, l_max=L).eval()
    tokens = torch.randn(1, L, d)
    lengths = torch.tensor([5])
    base = interp(tokens, lengths)
    bumped = tokens.clone()
    bumped[:, 4] += 3.0 * torch.randn(d)
    assert (interp(bumped, lengths) - base).abs().amax() > 1e-4


def test_pixel_gradients_never_reach_program_or_codebook():
    cfg = tiny_model_config()
    model = build_model(cfg)
    images = torch.rand(2, 3, 64, 64)
    feats = model.teacher_features(images)
    out = model(feats, torch.tensor([4, 16]))
    codebook_before = model.quantizer.codebook.clone()
    pixel_loss(model.decode_pixels(out.field), images).backward()
    upstream = [model.generator, model.quantizer, model.interpreter, model.length_head]
    for module in upstream:
        for name, param in module.named_parameters():
            assert param.grad is None or not param.grad.any(), name
    assert not model.quantizer.codebook.requires_grad
    assert torch.equal(model.quantizer.codebook, codebook_before)
    assert any(p.grad is not None and p.grad.any() for p in model.pixel_decoder.parameters())


def test_align_loss_reaches_generator_through_straight_through():
    cfg = tiny_model_config()
    model = build_model(cfg)
    feats = model.teacher_features(torch.rand(2, 3, 64, 64))
    out = model(feats, torch.tensor([4, 16]))
    align_loss(out.field, feats, 1.0).backward()
    assert model.generator.proj_in.weight.grad.abs().sum() > 0
    assert model.quantizer.proj_in.weight.grad.abs().sum() > 0
    # the length head's input is detached, and it is not part of the align loss
    assert all(p.grad is None for p in model.length_head.parameters())


def test_length_head_gradient_stays_in_the_head():
    cfg = tiny_model_config()
    model = build_model(cfg)
    feats = model.teacher_features(torch.rand(3, 3, 64, 64))
    l_hat = model.predict_length(feats)
    assert l_hat.shape == (3,) and ((l_hat > 0) & (l_hat < cfg.l_max)).all()
    l_hat.sum().backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.length_head.parameters())


def test_round_lengths_clips_and_rounds():
    l_hat = torch.tensor([0.2, 1.49, 1.51, 7.7, 40.0])
    assert round_lengths(l_hat, 2, 8).tolist() == [2, 2, 2, 8, 8]
