"""STROP: variable-length visual programs from a frozen teacher.

Kept light on purpose: importing `strop` imports neither torch nor transformers, so the
torch-free modules (`strop.scenes`, `strop.runs`) serve `grammar` and `llm_decode`.
`strop.Strop` (the tokenizer: `strop.Strop.from_pretrained(DIR_or_hub_id)`) imports torch on
first use only.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - the type is the attribute's
    """`strop.Strop` (the tokenizer, with `from_pretrained`) imports torch on first use only."""
    if name == "Strop":
        from strop.model.network import Strop

        return Strop
    raise AttributeError(f"module 'strop' has no attribute {name!r}")
