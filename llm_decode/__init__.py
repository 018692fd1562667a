"""Few-shot decoding of CLEVR scenes from STROP codes with LLMs, and its scoring. Torch-free.

Modules:

    cli           `strop-llm`: decode, qa, report, presets
    runner        `strop-llm decode`: select, prompt, query, parse, score, record
    decode_config  `DecodeConfig` and the checks of a command line that need no run
    planning      the protocol made concrete: shots, test images, prompts, request keys
    querying      requests through a backend with bounded concurrency and retries, as rows
    protocol      which images are shots and which are tested, from one seed
    prompting     few-shot prompts from Jinja templates
    schema        the abbreviated scene the LLM reads and writes
    reasoning     a model's reasoning split from its answer (`<think>`, Harmony)
    scoring       scores of decoded scenes against the true ones, CLEVR AP
    controls      the knn baselines' `random_shot` control
    calibration   which scoring definitions reproduce the paper's naive row
    presets       what each model needs to be served and asked
    results       `results.jsonl` (resumable) and `summary.json`
    report        `strop-llm report`: the decoding table across models and K
    backends/     where answers come from: a server, vLLM offline, or a baseline
    qa/           `strop-llm qa`: CLEVR-style questions answered from programs
    testing/      test helpers: a scripted server, synthetic runs, a tiny chat model
"""

__version__ = "0.1.0"
