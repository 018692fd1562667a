"""STROP: variable-length visual programs from a frozen teacher.

Kept light on purpose: importing `strop` imports neither torch nor transformers, so the
torch-free modules (`strop.scenes`, `strop.runs`) serve `grammar` and `llm_decode`.
`strop.Strop` (the tokenizer: `strop.Strop.from_pretrained(DIR_or_hub_id)`) imports torch on
first use only.

    data          scene data: the CLEVR-like renderer and dataset loaders
    model         the tokenizer, one module per stage of the method
    training      the four-phase length curriculum and the trainer
    evaluation    what trained programs show: export, metrics, analysis, the report
    commands      the `strop` CLI, one module per area (`cli` assembles them)
    quickstart    `strop quickstart`: the whole pipeline as one job
    testing       instruments for tests and benchmarks, kept out of the product
    cli           the `strop` command line
    cli_app       what the three console scripts share: the app, exit codes, one-line errors
    cli_options   each option declared once, on the config field it sets
    scenes        the CLEVR scene schema and the scenes-file reader/writer (torch-free)
    runs          the run folder: the contract between `strop`, `grammar` and `llm_decode`
    metrics       pure metric functions (NumPy/SciPy, no torch)
    baselines     a headline beside the trivial baseline it must beat (one record shape)
    provenance    which weights a result came from, recorded in every derived file
    atomic        writing one output file atomically
    jsonfile      reading a JSON file, one line when it cannot be read
    errors        an error as one line (a pydantic validation error included)
    output_unit   multi-file outputs written as one unit
    devices       the device names accepted, and timing work on a device
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - the type is the attribute's
    """`strop.Strop` (the tokenizer, with `from_pretrained`) imports torch on first use only."""
    if name == "Strop":
        from strop.model.network import Strop

        return Strop
    raise AttributeError(f"module 'strop' has no attribute {name!r}")
