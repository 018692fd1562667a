"""Mining of program corpora: n-grams, pair reuse, null models, Re-Pair grammars. Torch-free.

The STROP paper ("Structure over Pixels: Learning Variable-Length Visual Programs") reads
code reuse from usage statistics (active codes, effective vocabulary, purity) and names
grammar inference over the learned code sequences as a direction it leaves open (Sec. 7).
This package is that analysis: it treats each image's program as a sentence over the
codebook and asks whether its structure exceeds what null corpora with the same lengths
and code frequencies show.

Modules, in the order `mine` uses them: `config` (`MineConfig`, light: the CLI's options),
`corpus` (loading, validation), `ngrams`, `zipf`, `pairs`, `nulls`, `perplexity`, `repair`,
`pcfg`, `summary` (summary.json), `output`, `mine`, `compare`, `cli`;
`stream` mines a programs dataset shard by shard, in bounded memory.
It reads programs only through `strop.runs` and never imports torch.
"""

__version__ = "0.1.0"
