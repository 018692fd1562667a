"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018), the pixel probe's perceptual
distance in paper Table 14, built without torchvision.

d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 ), where f_l are AlexNet's five
post-ReLU feature maps of the scaled input, n unit-normalises over channels and w_l >= 0 are
the learned 1x1 `lin` weights. Images are (B, 3, H, W) in [0, 1]; the distance is (B,).

Design decisions
- The `lpips` package imports torchvision when it is imported, and torchvision's wheels are
  tied to one torch build (none matches the pinned CPU torch). So the network is rebuilt here
  and the package is only a source of its weight file: `importlib.util.find_spec("lpips")`
  locates it without importing it.
- The trunk is torchvision's `alexnet().features` module for module (indices 0-12, the same
  state-dict keys and shapes), so torchvision's ImageNet checkpoint (`alexnet-owt-*.pth`)
  loads into it unchanged. Its `classifier.*` keys are part of that checkpoint and are
  dropped; every `features.*` key must be present with torchvision's shape, and any other key
  is an error naming the file.
- The `lin` weights are read in the lpips package's own layout, `lin{l}.model.1.weight` of
  shape (1, C_l, 1, 1) (`lpips/weights/v0.1/alex.pth`; index 1 because lpips puts a dropout
  before each 1x1 conv, a no-op at evaluation, so it is not rebuilt here), strictly.
- The computation follows lpips 0.1.4's `LPIPS(net="alex", version="0.1")` called with
  `normalize=True`: [0, 1] -> [-1, 1], the scaling layer's shift and scale, taps after the
  ReLUs at features 1, 4, 7, 9, 11, `x / (||x||_2 + 1e-10)` over channels, squared
  difference, 1x1 lin, spatial mean, sum over the five layers.
  `tests/test_eval_lpips.py` checks it against the lpips package itself when it is installed.
- No downloads: the backbone comes from an explicit path or the torch hub cache
  (`torch.hub.get_dir()/checkpoints`, which follows `$TORCH_HOME`), the lin weights from an
  explicit path or the installed lpips package. What is missing is one line saying where we
  looked and how to provide it (`LPIPSWeightsError`).
- AlexNet's stride-4 stem and two max-pools before the last taps need images of at least
  `MIN_SIZE` = 31 pixels a side.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

#: Channels of the five taps (after the ReLUs at `features` indices `TAPS`).
CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)
#: The scaling layer of lpips v0.1 (ImageNet statistics in the [-1, 1] input range).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
MIN_SIZE = 31
#: torchvision's checkpoint names, newest first (both have the same `features` layout).
BACKBONE_FILES = ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth")
LIN_FILE = Path("weights") / "v0.1" / "alex.pth"
HOW_TO_GET_LIN = (
    "install the lpips package (`pip install --no-deps lpips`) or pass --lpips-lin PATH"
)


class LPIPSWeightsError(ValueError):
    """LPIPS weights that are missing or do not fit the network; the message is one line."""


def alexnet_features() -> nn.Sequential:
    """torchvision's `alexnet().features`, layer for layer (the ReLUs are not in place so
    the taps keep their values)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)


class LPIPS(nn.Module):
    """The LPIPS v0.1 AlexNet distance; load weights with `load_backbone` and `load_lin`
    (or build a ready one with `build_lpips`)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised feature maps of images in [0, 1]."""
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i in range(TAPS[-1] + 1):
            h = self.features[i](h)
            if i in TAPS:
                out.append(_unit(h))
        return out

    def lin_convs(self) -> list[nn.Conv2d]:
        """The five 1x1 lin convolutions, in tap order."""
        return [cast(nn.Conv2d, lin) for lin in self.lins]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance (B,) between image batches (B, 3, H, W) in [0, 1], H and W >= MIN_SIZE."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (B, 3, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIZE} px a side, got {tuple(x.shape[-2:])}"
            )
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lin_convs(), self.taps(x), self.taps(y), strict=True):
            total = total + lin((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total

    def load_backbone(self, path: Path) -> None:
        """torchvision AlexNet weights (`features.*`; `classifier.*` dropped)."""
        state = _read_state(path, "AlexNet backbone")
        features = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        _check_keys(path, features, self.features.state_dict(), prefix="features.")
        self.features.load_state_dict({k.removeprefix("features."): v for k, v in features.items()})

    def load_lin(self, path: Path) -> None:
        """The lpips package's lin weights (`lin{l}.model.1.weight`, (1, C_l, 1, 1))."""
        state = _read_state(path, "LPIPS lin")
        expected = {f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(self.lin_convs())}
        _check_keys(path, state, expected)
        for i, lin in enumerate(self.lin_convs()):
            lin.weight.data.copy_(state[f"lin{i}.model.1.weight"])


def _read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LPIPSWeightsError(f"{what} weights not found: {path}") from None
    except Exception as exc:
        raise LPIPSWeightsError(
            f"{what} weights {path} are not a PyTorch state dict ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LPIPSWeightsError(f"{what} weights {path} are not a state dict of tensors")
    return state


def _check_keys(
    path: Path,
    got: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    prefix: str = "",
) -> None:
    want = {prefix + k: tuple(v.shape) for k, v in expected.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshapen = sorted(k for k in set(want) & set(got) if tuple(got[k].shape) != want[k])
    if missing:
        raise LPIPSWeightsError(f"{path} lacks {missing[0]} ({len(missing)} keys missing)")
    if unexpected:
        raise LPIPSWeightsError(f"{path} has unexpected key {unexpected[0]}")
    if misshapen:
        k = misshapen[0]
        raise LPIPSWeightsError(f"{path}: {k} has shape {tuple(got[k].shape)}, expected {want[k]}")


@dataclass(frozen=True)
class LPIPSWeights:
    """Where the two weight files of LPIPS were found."""

    backbone: Path
    lin: Path


def hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (`$TORCH_HOME/hub/checkpoints`, else
    `~/.cache/torch/hub/checkpoints`), where torchvision keeps AlexNet."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def installed_lin() -> Path | None:
    """The lin weights of the installed lpips package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (Path(folder) / LIN_FILE).is_file():
            return Path(folder) / LIN_FILE
    return None


def find_weights(
    backbone: str | os.PathLike[str] | None = None, lin: str | os.PathLike[str] | None = None
) -> LPIPSWeights:
    """The backbone and lin files: the given paths, else the torch hub cache and the
    installed lpips package. Raises `LPIPSWeightsError` naming what is missing."""
    return LPIPSWeights(
        backbone=_given_or_found(backbone, "LPIPS AlexNet backbone", _hub_backbone),
        lin=_given_or_found(lin, "LPIPS lin weights", _installed_lin),
    )


def _given_or_found(
    given: str | os.PathLike[str] | None, what: str, find: Callable[[], Path]
) -> Path:
    """`given` when it names a file (else a one-line error naming `what`), else `find()`."""
    if given is None:
        return find()
    path = Path(given)
    if not path.is_file():
        raise LPIPSWeightsError(f"{what} not found: {path}")
    return path


def _hub_backbone() -> Path:
    """torchvision's AlexNet weights in the torch hub cache, or `LPIPSWeightsError`."""
    folder = hub_checkpoints()
    found = [folder / name for name in BACKBONE_FILES if (folder / name).is_file()]
    if not found:
        raise LPIPSWeightsError(
            f"LPIPS needs torchvision's AlexNet weights: no {BACKBONE_FILES[0]} in {folder}; "
            "copy it there (or set TORCH_HOME) or pass --lpips-backbone PATH"
        )
    return found[0]


def _installed_lin() -> Path:
    """The installed lpips package's lin weights, or `LPIPSWeightsError`."""
    found = installed_lin()
    if found is None:
        raise LPIPSWeightsError(f"LPIPS needs its lin weights ({LIN_FILE}): {HOW_TO_GET_LIN}")
    return found


def build_lpips(weights: LPIPSWeights, device: str | torch.device = "cpu") -> LPIPS:
    """A frozen LPIPS network in eval mode with both weight files loaded."""
    model = LPIPS()
    model.load_backbone(weights.backbone)
    model.load_lin(weights.lin)
    model.requires_grad_(False)
    return model.eval().to(device)
