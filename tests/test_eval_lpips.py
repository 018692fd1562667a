"""LPIPS without torchvision: layouts of the real weight files, invariances with random
weights saved in those layouts (so the real loading path runs), weight discovery, and the
lpips package itself as the reference when it is installed."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from helpers import LPIPS_LIN, TORCHVISION_FEATURES, random_backbone, random_lin

from strop.evaluation.lpips import (
    LPIPS,
    MIN_SIZE,
    LPIPSWeights,
    LPIPSWeightsError,
    alexnet_features,
    build_lpips,
    find_weights,
    installed_lin,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> LPIPSWeights:
    root = tmp_path_factory.mktemp("lpips")
    torch.save(random_backbone(), root / "alexnet-owt-7be5be79.pth")
    torch.save(random_lin(), root / "alex.pth")
    return LPIPSWeights(backbone=root / "alexnet-owt-7be5be79.pth", lin=root / "alex.pth")


@pytest.fixture(scope="module")
def net(weights) -> LPIPS:
    torch.manual_seed(0)
    return build_lpips(weights)


def images(n: int = 4, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_layouts_match_torchvision_and_the_lpips_wheel():
    net = LPIPS()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: v for k, v in got.items() if k.startswith("features.")} == TORCHVISION_FEATURES
    assert {k: tuple(v.shape) for k, v in alexnet_features().state_dict().items()} == {
        k.removeprefix("features."): v for k, v in TORCHVISION_FEATURES.items()
    }
    lins = {
        f"lin{i}.model.1.weight": tuple(lin.weight.shape) for i, lin in enumerate(net.lin_convs())
    }
    assert lins == LPIPS_LIN and set(got) == set(TORCHVISION_FEATURES) | {
        f"lins.{i}.weight" for i in range(5)
    }


def test_loading_uses_the_files(weights, net):
    state = random_backbone()
    assert torch.equal(net.features[3].weight, state["features.3.weight"])
    assert torch.equal(net.lins[2].weight, random_lin()["lin2.model.1.weight"])
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_identity_symmetry_and_batching(net):
    x, y = images(seed=0), images(seed=1)
    with torch.no_grad():
        assert torch.equal(net(x, x), torch.zeros(4))
        d = net(x, y)
        assert (d > 0).all()
        torch.testing.assert_close(net(y, x), d)
        one_by_one = torch.cat([net(x[i : i + 1], y[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(one_by_one, d, rtol=1e-5, atol=1e-7)


def test_distance_grows_with_noise(net):
    x = images(n=8)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        d = [net(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2]


def test_smallest_image_and_bad_shapes(net):
    with torch.no_grad():
        assert net(images(2, MIN_SIZE), images(2, MIN_SIZE, seed=1)).shape == (2,)
    with pytest.raises(ValueError, match=f"at least {MIN_SIZE} px"):
        net(images(2, MIN_SIZE - 1), images(2, MIN_SIZE - 1))
    with pytest.raises(ValueError, match="one shape"):
        net(images(2), images(3))


def test_wrong_files_fail_in_one_line(weights, tmp_path):
    net = LPIPS()
    cases = {
        "lin_as_backbone": (random_lin(), "lacks features.0.bias", net.load_backbone),
        "short": ({"features.0.weight": torch.zeros(64, 3, 11, 11)}, "keys missing", net.load_backbone),
        "extra": ({**random_backbone(), "fc.weight": torch.zeros(1)}, "unexpected key fc.weight", net.load_backbone),
        "shape": ({**random_lin(), "lin1.model.1.weight": torch.zeros(1, 64, 1, 1)}, r"lin1.model.1.weight has shape \(1, 64, 1, 1\), expected \(1, 192, 1, 1\)", net.load_lin),
        "backbone_as_lin": (random_backbone(), "lacks lin0.model.1.weight", net.load_lin),
    }  # fmt: skip
    for name, (state, message, load) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(LPIPSWeightsError, match=message) as err:
            load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(LPIPSWeightsError, match="not a PyTorch state dict"):
        net.load_lin(tmp_path / "text.pth")


def test_find_weights_in_the_hub_cache_and_the_lpips_package(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    with pytest.raises(LPIPSWeightsError) as err:
        find_weights(lin=weights.lin)
    message = str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--lpips-backbone" in message and "\n" not in message

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(weights.backbone.read_bytes())
    if installed_lin() is None:
        with pytest.raises(LPIPSWeightsError, match=r"pip install --no-deps lpips.*--lpips-lin"):
            find_weights()
    # a stand-in lpips package that must be found, not imported (the real one imports torchvision)
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('lpips must not be imported')\n")
    (package / "weights" / "v0.1" / "alex.pth").write_bytes(weights.lin.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = find_weights()
    assert found == LPIPSWeights(
        hub / "alexnet-owt-7be5be79.pth", package / "weights/v0.1/alex.pth"
    )
    assert "lpips" not in sys.modules
    assert find_weights(weights.backbone, weights.lin) == weights
    with pytest.raises(LPIPSWeightsError, match="lin weights not found: .*nope.pth"):
        find_weights(lin=tmp_path / "nope.pth")


@pytest.mark.needs_tool
def test_matches_the_lpips_package(weights, monkeypatch):
    """lpips 0.1.4 itself, with a torchvision stand-in that only supplies AlexNet's layout
    (checked above against torchvision's source); runs where lpips is installed."""
    real_lin = installed_lin()
    if real_lin is None:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips)")
    torchvision = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    features = alexnet_features()
    features.load_state_dict({k.removeprefix("features."): v for k, v in random_backbone().items() if k.startswith("features.")})  # fmt: skip
    models.alexnet = lambda **_: types.SimpleNamespace(features=features)  # type: ignore[attr-defined]
    torchvision.models = models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    import lpips

    x, y = images(seed=4), images(seed=5)
    for lin in (weights.lin, real_lin):  # random lin weights, then the paper's
        ours = build_lpips(LPIPSWeights(weights.backbone, lin))
        ref = lpips.LPIPS(net="alex", version="0.1", model_path=str(lin), verbose=False)
        with torch.no_grad():
            torch.testing.assert_close(ours(x, y), ref(x, y, normalize=True).flatten())
    assert all(
        (v >= 0).all() for v in torch.load(real_lin, map_location="cpu", weights_only=True).values()
    )
