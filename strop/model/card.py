"""The model card (README.md) of an exported tokenizer, generated from its config.json.

Design decisions
- Everything on the card comes from the exported config.json, so the card cannot disagree
  with the weights it describes: the teacher (by hub id), K, L_max, training steps, the eval
  numbers of the run when it had an `eval.json`, and provenance.
- The card says plainly when the teacher is not DINO (`pixels`, `random-vit`) and when its
  weights are random, and when no evaluation was run: a shared tokenizer must not be mistaken
  for one trained on DINOv3 features, nor its quality assumed.
- The preset is named with what differs from it (`_preset_label`): a config saying `S` with
  other dimensions is not STROP-S, and the card must not read as if it were.
- The card carries Hugging Face front matter (`library_name`, `tags`) so the hub lists it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]

#: eval.json keys shown on the card, with their labels.
_EVAL_ROWS = (
    ("cos", "cosine (field vs teacher)"),
    ("r2", "R^2"),
    ("cb_pct", "codebook use CB%"),
    ("eff_pct", "effective codebook Eff%"),
    ("ssim", "pixel probe SSIM"),
    ("lpips", "pixel probe LPIPS"),
    ("length_mean", "mean program length"),
    ("bits_per_image", "bits per image"),
    ("compression_ratio", "compression ratio"),
)


def _teacher_lines(teacher: dict[str, Any]) -> list[str]:
    name = teacher.get("name")
    if teacher.get("dino"):
        return [f"- Teacher: DINOv3 `{teacher.get('id')}` (frozen; `{name}`)."]
    lines = [
        f"- Teacher: `{name}`. **This teacher is not DINO**: the programs encode its features."
    ]
    if teacher.get("random_weights"):
        lines.append(
            "- **The teacher's weights are random** (a seeded DINOv3 ViT-S architecture, an "
            "offline stand-in): this tokenizer is for testing the pipeline, not for research use."
        )
    if name == "pixels":
        lines.append("- The `pixels` teacher is ImageNet-normalised patch pixels (no network).")
    return lines


def _eval_lines(evaluation: dict[str, Any] | None) -> list[str]:
    if not evaluation:
        return ["No evaluation was recorded for this run (`strop eval RUN` before exporting)."]
    split, n = evaluation.get("split", "?"), evaluation.get("n_images", "?")
    lines = [
        f"On the `{split}` split ({n} images, length mode `{evaluation.get('length_mode', '?')}`):",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key, label in _EVAL_ROWS:
        value = evaluation.get(key)
        if value is None:
            continue
        lines.append(
            f"| {label} | {value:.4g} |" if isinstance(value, float) else f"| {label} | {value} |"
        )
    corr = evaluation.get("length_vs_objects") or {}
    if corr.get("pearson") is not None:
        lines.append(f"| Pearson r (length vs objects) | {corr['pearson']:.3f} |")
    return lines


#: Architecture fields a preset fixes; a config that sets one otherwise is not that preset.
_PRESET_FIELDS = ("d", "layers", "heads", "ffn", "code_dim", "decoder_width")


def _preset_label(model: dict[str, Any]) -> str:
    """The preset's name, or the name and what differs from it: `preset: "S"` with tiny
    dimensions (an override at training, or an edited file) is not STROP-S."""
    from strop.model.config import PRESETS

    name = str(model.get("preset"))
    preset = PRESETS.get(name)
    if preset is None:
        return f"`{name}`"
    differ = [
        f"{key}={model.get(key)} (preset: {getattr(preset, key)})"
        for key in _PRESET_FIELDS
        if model.get(key) is not None and model.get(key) != getattr(preset, key)
    ]
    return f"`{name}` with other dimensions: {', '.join(differ)}" if differ else f"`{name}`"


def model_card(config: dict[str, Any]) -> str:
    """README.md text for an exported tokenizer's config.json."""
    model, training = config["model"], config.get("training") or {}
    provenance = config.get("provenance") or {}
    teacher = config.get("teacher") or {"name": model.get("teacher")}
    tags = ["strop", "image-tokenizer", "visual-programs"]
    steps = training.get("steps")
    lines = [
        "---",
        "library_name: strop",
        "tags:",
        *[f"- {tag}" for tag in tags],
        "---",
        "",
        f"# STROP tokenizer ({model.get('preset')}, K={config['k']}, L_max={config['l_max']})",
        "",
        "A variable-length visual-program tokenizer trained with the STROP toolkit (paper: "
        '"Structure over Pixels: Learning Variable-Length Visual Programs"). Each image becomes '
        f"a program of 1..{config['l_max']} codes from a codebook of {config['k']}.",
        "",
        "## Model",
        "",
        *_teacher_lines(teacher),
        f"- Architecture: preset {_preset_label(model)}; d={model.get('d')}, "
        f"{model.get('layers')} layers, {model.get('heads')} heads, "
        f"{model.get('image_size')} px images in {model.get('patch_size')} px patches.",
        f"- Codebook K={config['k']}, program length {config.get('l_min', 1)}..{config['l_max']}.",
        f"- Trained for {steps if steps is not None else 'an unknown number of'} steps"
        + (f" (of {training['planned_steps']} planned)" if training.get("planned_steps") else "")
        + f", length mode `{training.get('length_mode', 'adaptive')}`.",
        "",
        "## Use",
        "",
        "```python",
        "from strop.model import Strop",
        'tokenizer = Strop.from_pretrained("THIS_FOLDER_OR_REPO")',
        "codes, lengths = tokenizer.encode(images)  # (B, 3, S, S) in [0, 1]",
        "```",
        "",
        "## Evaluation",
        "",
        *_eval_lines(config.get("eval")),
        "",
        "## Provenance",
        "",
        *[f"- {key}: `{value}`" for key, value in sorted(provenance.items())],
        "",
    ]
    return "\n".join(lines)
