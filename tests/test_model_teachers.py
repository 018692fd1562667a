"""Teachers: the real DINOv3 architecture (random weights), local loading, freezing, errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model_config
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from strop.model import ModelConfig, build_model, teachers
from strop.model.teachers import (
    DINOV3_IDS,
    PixelTeacher,
    TeacherNotFoundError,
    ViTTeacher,
    build_teacher,
    count_teacher_parameters,
    teacher_config,
)


def _tiny_dinov3(patch: int = 16) -> DINOv3ViTModel:
    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,  # head dim 16, divisible by 4 for the 2D RoPE
        intermediate_size=64,
        num_register_tokens=4,  # the config's default is 0; DINOv3 checkpoints have 4
        patch_size=patch,
        image_size=64,
    )
    return DINOv3ViTModel(cfg)


def test_vit_s16_architecture_gives_196_tokens_of_width_384():
    cfg = teacher_config("dinov3-s", image_size=224, patch_size=16)
    assert (cfg.hidden_size, cfg.num_register_tokens, cfg.patch_size) == (384, 4, 16)
    full_layers = cfg.num_hidden_layers
    cfg.num_hidden_layers = 1  # keep the test fast; the token layout does not depend on depth
    torch.manual_seed(0)
    teacher = ViTTeacher(DINOv3ViTModel(cfg), "random-vit")
    feats = teacher(torch.rand(1, 3, 224, 224))
    assert feats.shape == (1, 196, 384)
    assert teacher.grid(224) == (14, 14)
    # the full-size architecture: 12 layers and ~21.6M parameters (paper Table 6: 35.1 - 13.5)
    assert full_layers == 12
    assert count_teacher_parameters("dinov3-s") == pytest.approx(21.6e6, rel=0.01)
    assert count_teacher_parameters("dinov3-b") == pytest.approx(85.7e6, rel=0.01)


def test_patch_tokens_drop_cls_and_registers():
    model = _tiny_dinov3().eval()
    teacher = ViTTeacher(model, "random-vit")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        hidden = model(pixel_values=(images - teacher.mean) / teacher.std).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 16
    assert torch.equal(teacher(images), hidden[:, 5:])


def test_local_folder_loads_with_its_processor_normalisation(tmp_path):
    model = _tiny_dinov3()
    model.save_pretrained(tmp_path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": mean, "image_std": std})
    )
    teacher = build_teacher("dinov3-s", path=tmp_path, image_size=64)
    assert teacher.teacher_name == "dinov3-s" and teacher.dim == 32
    assert torch.allclose(teacher.mean.flatten(), torch.tensor(mean))
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(
            pixel_values=(images - torch.tensor(mean).view(1, 3, 1, 1))
            / torch.tensor(std).view(1, 3, 1, 1)
        )
    assert torch.allclose(teacher(images), expected.last_hidden_state[:, 5:], atol=1e-5)


def test_missing_weights_name_the_id_and_how_to_get_them(tmp_path):
    with pytest.raises(TeacherNotFoundError, match="huggingface-cli download") as err:
        build_teacher("dinov3-s", path=tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    with pytest.raises(TeacherNotFoundError, match="no DINOv3 weights"):
        build_teacher("dinov3-b", path=tmp_path)  # an empty folder
    with pytest.raises(TeacherNotFoundError) as err:
        build_teacher("dinov3-l")  # not in this machine's cache
    assert DINOV3_IDS["dinov3-l"] in str(err.value)
    assert "\n" not in str(err.value)


def test_teacher_is_frozen_outside_state_dict_and_stays_in_eval():
    model = build_model(
        tiny_model_config(),
        teacher=ViTTeacher(_tiny_dinov3(8), "random-vit"),
    )
    model.train()
    teacher = model.teacher
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in model.state_dict())
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())
    images = torch.rand(2, 3, 64, 64)
    a, b = model.teacher_features(images), model.teacher_features(images)
    assert torch.equal(a, b)  # no RoPE jitter: eval mode holds under model.train()
    assert not a.requires_grad
    assert model.teacher_name == "random-vit"


def test_random_vit_is_seeded_and_leaves_global_rng_alone(monkeypatch):
    # one layer instead of twelve keeps the test fast; seeding does not depend on depth
    monkeypatch.setitem(teachers._VIT_SIZES, "random-vit", (384, 1, 6, 1536))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_teacher("random-vit", image_size=32, patch_size=16, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_teacher("random-vit", image_size=32, patch_size=16, seed=7)
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(a(images), b(images))
    assert a.teacher_name == "random-vit" and a.dim == 384


def test_pixel_teacher_is_normalised_patches():
    teacher = PixelTeacher(8)
    images = torch.rand(2, 3, 16, 16)
    feats = teacher(images)
    assert feats.shape == (2, 4, 192)
    normed = (images - teacher.mean) / teacher.std
    # the second patch in row-major order is rows 0-7, columns 8-15
    assert torch.allclose(feats[:, 1], normed[:, :, :8, 8:].reshape(2, -1))


def test_dinov3_teacher_needs_16_pixel_patches():
    with pytest.raises(ValueError, match="16-pixel patches"):
        ModelConfig.from_preset("tiny", teacher="dinov3-s", patch_size=8)
    assert ModelConfig.from_preset("tiny", teacher="dinov3-s").patch_size == 16
