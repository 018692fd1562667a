"""Mining program corpora: n-grams, pair reuse, null models, Re-Pair grammars. Torch-free."""

__version__ = "0.1.0"
