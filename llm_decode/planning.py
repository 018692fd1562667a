"""Planning a decode: everything decided before the first request, the protocol made concrete.

`plan(cfg)` selects the shots and test images, renders each prompt and keys each request;
`output_folder` is the results folder of that protocol (`claim_folder`), so a run under another
protocol never overwrites a summary or mixes rows. `--limit N` keeps the first N drawn images
under the keys of the full run, so a full run later reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_decode.backends.base import BackendError, split_url_secrets
from llm_decode.decode_config import DecodeConfig
from llm_decode.presets import PRESETS, ModelPreset, folder_name, resolve_model
from llm_decode.prompting import PromptBuilder, Shot
from llm_decode.protocol import Selection, code_permutation, load_scene, select
from llm_decode.querying import Job
from llm_decode.results import IDENTITY_KEYS, claim_folder, request_key
from llm_decode.schema import scene_json_schema
from strop.runs import Programs, RunFolder, find_run


def output_folder(run: RunFolder, cfg: DecodeConfig, p: Plan) -> Path:
    """`RUN/llm/<model>`, unique per model identity and protocol: see `claim_folder`."""
    suffix = "-permuted" if cfg.protocol.permute_codes else ""
    identity = {k: p.identity[k] for k in IDENTITY_KEYS} | {"protocol": p.protocol}
    return claim_folder(run.llm_dir, folder_name(cfg.model) + suffix, identity)


@dataclass
class Plan:
    """Everything decided before the first request: the protocol made concrete."""

    run: RunFolder
    k: int
    selection: Selection
    shots: list[Shot]
    preset: ModelPreset
    think: bool
    max_tokens: int
    temperature: float
    card_extras: dict[str, float]  # sampling beyond temperature (--card-sampling)
    extra_body: dict[str, Any]  # sent with every request (openai backend)
    builder: PromptBuilder
    identity: dict[str, Any]  # model, backend, endpoint, K: copied into every row
    jobs: list[Job]
    #: what decides the answers and their scores besides the model: its own results folder
    protocol: dict[str, Any] = field(default_factory=dict)
    sampling_seed: int = 0
    secrets: list[str] = field(default_factory=list)  # the key and URL credentials
    key_sampling: dict[str, Any] = field(default_factory=dict)  # the request key's sampling
    #: the weights the programs came from (`strop.provenance`), copied into the summary
    weights: dict[str, Any] | None = None

    @property
    def jobs_by_key(self) -> dict[str, Job]:
        return {j.key: j for j in self.jobs}


def plan(cfg: DecodeConfig) -> Plan:
    """Select shots and test images, render the prompts and key every request."""
    run = find_run(cfg.runs, cfg.k)
    source = str(run.programs_path)
    programs, k = _programs(run, cfg.k, source)
    selection = select(programs, cfg.protocol, source)
    shots = [
        Shot(programs.codes[i].tolist(), load_scene(programs, i, source)) for i in selection.shots
    ]
    preset = resolve_model(cfg.model, cfg.served_id)
    think = preset.think if cfg.think is None else cfg.think
    max_tokens = cfg.max_tokens or preset.budget(think)
    temperature, card_extras = _sampling(cfg, preset, think)
    builder = PromptBuilder(codebook_size=k, shots=shots, think=think, template=cfg.template)
    llm = cfg.backend in ("openai", "vllm")
    endpoint, secrets = _endpoint(cfg)
    sampling: dict[str, Any] = {
        "temperature": temperature,
        "max_tokens": max_tokens,
        "parse_retries": cfg.protocol.parse_retries,
    }
    extra_body: dict[str, Any] = {}
    if llm:
        switch = preset.extra_body(think)
        extra_body = {**switch, **card_extras, **cfg.extra_body}
        if extra_body:  # absent when empty, so keys of plain models stay what they were
            sampling["extra_body"] = extra_body
    schema = scene_json_schema() if cfg.structured and llm else None
    perm = code_permutation(k, cfg.protocol.seed) if cfg.protocol.permute_codes else None
    sampling_seed = cfg.protocol.sampling_seed_or_seed
    # what keys a request besides its messages
    key_fields = {
        "model": preset.served_id if llm else cfg.backend,
        "endpoint": endpoint,
        "sampling": sampling,
        "schema": schema,
        "seed": sampling_seed,
    }
    jobs = [
        _job(programs, source, index, row, perm, builder, key_fields)
        for index, row in enumerate(selection.test)
    ]
    if cfg.limit is not None:  # the first N drawn: their keys are those of the full run
        jobs = jobs[: cfg.limit]
    identity = {
        "model": cfg.model,
        "served_id": preset.served_id if llm else None,
        "backend": cfg.backend,
        "endpoint": endpoint,
        "k": k,
        "permuted": cfg.protocol.permute_codes,
        "naive_definition": cfg.naive if cfg.backend == "naive" else None,
    }
    protocol = {
        "shots": cfg.protocol.shots,
        "test": cfg.protocol.test,
        "seed": cfg.protocol.seed,
        "sampling_seed": sampling_seed,
        "parse_retries": cfg.protocol.parse_retries,
        "sampling": {"temperature": temperature, **card_extras},
        "extra_body": extra_body,
        "max_tokens": max_tokens if llm else None,
        "structured": cfg.structured and llm,
        "think": think if llm else None,
        "template_sha256": builder.template_sha256 if llm else None,
        "scoring": cfg.scoring.model_dump(),
        "naive_definition": cfg.naive if cfg.backend == "naive" else None,
    }
    return Plan(
        run,
        k,
        selection,
        shots,
        preset,
        think,
        max_tokens,
        temperature,
        card_extras,
        extra_body,
        builder,
        identity,
        jobs,
        protocol,
        sampling_seed,
        secrets,
        sampling,
        programs.meta.get("weights"),
    )


def _programs(run: RunFolder, k: int, source: str) -> tuple[Programs, int]:
    """The run's programs and their K, the codes checked against K by the one validation every
    reader shares; with no K stored anywhere, the --k that picked the run is the K."""
    programs = run.read_programs()
    if programs.codebook_size is None:
        programs.codebook_size, programs.k_source = k, "--k"
        programs.validate(source)
        return programs, k
    return programs, programs.codebook_size


def _endpoint(cfg: DecodeConfig) -> tuple[str, list[str]]:
    """Where the answers come from, as keyed and recorded, and the URL's secrets (redacted)."""
    if cfg.backend == "naive":  # a different average scene is a different answer
        return f"naive:{cfg.naive}", []
    if cfg.backend != "openai":
        return cfg.backend, []
    return split_url_secrets(cfg.base_url.rstrip("/"))


def _job(
    programs: Programs,
    source: str,
    index: int,
    row: int,
    perm: np.ndarray | None,
    builder: PromptBuilder,
    key_fields: dict[str, Any],
) -> Job:
    """Test image `index` (programs row `row`) as a request: its codes as sent, prompt and key
    (`request_key` of the messages and `key_fields`)."""
    codes = programs.codes[row]
    codes = (perm[codes] if perm is not None else codes).tolist()
    messages = builder.messages(codes)
    key = request_key(messages=messages, **key_fields)
    truth = load_scene(programs, row, source)
    return Job(index, row, programs.image_id[row], codes, truth, messages, key)


def _sampling(
    cfg: DecodeConfig, preset: ModelPreset, think: bool
) -> tuple[float, dict[str, float]]:
    """(temperature, other sampling fields): the protocol's, or on request the card's for the
    thinking mode in use."""
    if not cfg.card_sampling:
        return cfg.protocol.temperature, {}
    if not preset.card(think):
        mode = "thinking" if think else "non-thinking"
        raise BackendError(
            f"--card-sampling: {cfg.model} has no card sampling for {mode} (presets with one: "
            + ", ".join(n for n, p in PRESETS.items() if p.card_sampling)
            + ")"
        )
    card = preset.card(think)
    return float(card.pop("temperature", cfg.protocol.temperature)), card
