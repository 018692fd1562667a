"""Every pixel-probe parameter's gradient has the parameter's own layout, whatever the
backend picks for the channels-last field (DDP's buckets follow parameter strides: a
mismatch costs a copy per step and a warning)."""

from __future__ import annotations

import pytest
import torch

from strop.model.pixel_decoder import PixelDecoder


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("grid, size", [((4, 4), 32), ((8, 8), 64), ((4, 4), 64)])
def test_gradients_are_laid_out_like_their_parameters(threads, grid, size):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        decoder = PixelDecoder(192, grid, size, width=32)
        field = torch.randn(4, grid[0] * grid[1], 192)
        decoder(field).sum().backward()
    finally:
        torch.set_num_threads(before)
    wrong = [
        (name, tuple(p.shape), p.grad.stride(), p.stride())
        for name, p in decoder.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    ]
    assert wrong == []


def test_stem_is_the_same_1x1_convolution():
    torch.manual_seed(0)
    decoder = PixelDecoder(192, (4, 4), 64, width=32)
    x = torch.randn(2, 16, 192).transpose(1, 2).reshape(2, 192, 4, 4)
    torch.testing.assert_close(decoder._stem(x), decoder.stem(x))
