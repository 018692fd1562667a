"""The pixel probe (paper Sec. 4 "decoder"; Table 5: FastGAN-style), inspection only.

    field (B, P, D) -> sg -> grid (D, h0, w0) -> 4 x [upsample x2, conv3x3, BatchNorm, GLU]
    -> conv3x3 -> sigmoid -> image (B, 3, S, S)

Design decisions
- The input is detached (stop-gradient): pixel reconstruction never shapes the interpreter,
  the program or the codebook (a test backpropagates a pixel loss and checks that no
  generator, quantizer or interpreter parameter receives a gradient).
- Four x2 upsamplings fix the start grid at S / 16. For a patch-16 teacher that is the patch
  grid itself (14 x 14 at 224 px); for other patch sizes (the tiny preset's 8 x 8 grid at 64
  px) the field is first resampled to S / 16 with area averaging, which is a no-op when the
  sizes agree. `ModelConfig` checks that S is divisible by 16.
- Nearest upsampling then a 3x3 conv (not transposed convs) avoids checkerboard artefacts;
  the GLU halves the conv's doubled channels, as in FastGAN's upsampling blocks.
- The 1x1 stem runs as a matmul over channels (`_stem`), so its weight's gradient always has
  the parameter's layout (DDP buckets need no copy; see `_stem`).
- Widths halve per block from `width` (the first conv's output), floored at 8. The last blocks
  run at full resolution and dominate the probe's cost (on a CPU, more than the whole
  transformer at the tiny preset), so keep them narrow; a trainer may also fit the probe on a
  slice of the batch, since nothing upstream depends on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UpBlock(nn.Sequential):
    """Upsample x2, conv3x3 to 2*c_out, BatchNorm, GLU over channels (-> c_out)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c_in, 2 * c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(2 * c_out),
            nn.GLU(dim=1),
        )


class PixelDecoder(nn.Module):
    """Interpreted field (B, P, D) on a (rows, cols) grid -> image (B, 3, S, S) in [0, 1]."""

    def __init__(
        self, teacher_dim: int, grid: tuple[int, int], image_size: int, width: int = 256
    ) -> None:
        super().__init__()
        if image_size % 16 != 0:
            raise ValueError(
                f"PixelDecoder: image size {image_size} is not divisible by 16 (four x2 upsamplings)"
            )
        self.grid = grid
        self.start = image_size // 16
        widths = [max(width // 2**i, 8) for i in range(5)]
        self.stem = nn.Conv2d(teacher_dim, widths[0], kernel_size=1)
        self.blocks = nn.Sequential(*(UpBlock(widths[i], widths[i + 1]) for i in range(4)))
        self.head = nn.Conv2d(widths[4], 3, kernel_size=3, padding=1)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        b, p, d = field.shape
        rows, cols = self.grid
        x = field.detach().transpose(1, 2).reshape(b, d, rows, cols)
        if (rows, cols) != (self.start, self.start):
            x = F.interpolate(x, size=(self.start, self.start), mode="area")
        return torch.sigmoid(self.head(self.blocks(self._stem(x))))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 stem convolution, computed as the matmul over channels that it is.

        `x` is a channels-last view of the field; a convolution's weight gradient then takes
        the channels-last strides on some backends (oneDNN with several threads, cuDNN) and
        the contiguous ones on others, and DDP, whose buckets follow the parameter's strides,
        pays a copy per step and warns. Through `F.linear` on a view of the weight, the
        gradient is always laid out like the parameter (same weights, same state_dict)."""
        weight = self.stem.weight.flatten(1)
        return F.linear(x.permute(0, 2, 3, 1), weight, self.stem.bias).permute(0, 3, 1, 2)
