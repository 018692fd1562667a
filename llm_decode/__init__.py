"""Few-shot decoding of CLEVR scenes from STROP codes with LLMs, and its scoring. Torch-free."""

__version__ = "0.1.0"
