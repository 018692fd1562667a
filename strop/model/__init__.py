"""The STROP tokenizer (paper Sec. 2.1, Fig. 2), one module per stage of the method.

    teachers        frozen DINOv3 (or offline stand-ins): images -> patch features F
    generator       F + L_max learned queries, prefix-causal transformer -> raw program z_e
    quantizer       EMA vector quantizer: z_e -> codes and straight-through tokens
    length_head     mean-pooled F (detached) -> L_hat, the program length
    interpreter     program prefix -> interpreted field F_hat, trained against F
    pixel_decoder   sg(F_hat) -> pixels, an inspection probe only
    losses          alignment, commitment, diversity, length terms
    network         `Strop`, the whole model wired from the stages above; `build_model`
    config          `ModelConfig` and the presets (paper Table 6)
    quality_head    the opt-in eps-conditioned length head: the length that reaches error EPS
    length_modes    how long each image's program is at inference (`--length-mode`)
    boundary        checks of images going into `Strop.encode` and programs coming out
    cost, info      parameter counts, FLOPs, `strop model-info` without weights
    feature_cache   frozen teacher features cached on disk
    weights         reading a run's checkpoints (`--checkpoint`), safely
    pretrained      the tokenizer API: `save_pretrained`, `from_pretrained`, `load_tokenizer`
    tokenizer_files  the exported folder's format: config.json, model.safetensors, read with checks
    hub             the hub client: fetch a hub id, upload a folder (huggingface_hub's client)
    card            the model card (README.md) of an exported tokenizer
    sharing         `strop export-model`: a run folder -> a shareable tokenizer folder

Importing this package imports torch. Modules inside it import each other by module path
(`strop.model.network`), never through this package, so it has no import cycle.
"""

from strop.model.config import PRESETS, ModelConfig, TeacherName
from strop.model.cost import count_parameters, model_flops
from strop.model.info import describe
from strop.model.interpreter import prefix_mask
from strop.model.length_head import round_lengths
from strop.model.network import ForwardOut, GenOut, Strop, build_model

__all__ = [
    "PRESETS",
    "ForwardOut",
    "GenOut",
    "ModelConfig",
    "Strop",
    "TeacherName",
    "build_model",
    "count_parameters",
    "describe",
    "model_flops",
    "prefix_mask",
    "round_lengths",
]
