"""STROP: variable-length visual programs from a frozen teacher.

Kept light on purpose: importing `strop` imports neither torch nor transformers, so the
torch-free modules (`strop.scenes`, `strop.runs`) serve `grammar` and `llm_decode`.
"""

__version__ = "0.1.0"
