"""What one `mine` is told (`MineConfig`), apart from the mining, so that `strop-grammar`
builds its options from it (`strop.cli_options`) without importing numpy, pandas and nltk."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from strop.cli_options import Flag


class MineConfig(BaseModel):
    """Settings of one `mine`; validated when built. The fields marked `Flag` are options of
    `strop-grammar mine` (click also checks the ranges it names, in its own words)."""

    model_config = ConfigDict(extra="forbid")

    max_n: Annotated[int, Flag(min=1, max=8)] = Field(
        4, ge=1, le=8, description="Longest n-gram counted."
    )
    seed: Annotated[int, Flag()] = Field(
        0, description="Seed of null corpora, held-out split, samples."
    )
    null_replicates: Annotated[int, Flag(min=0)] = Field(
        3, ge=0, le=1000, description="Replicates per null model."
    )
    markov_null: Annotated[bool, Flag()] = Field(
        False, description="Also run the bigram-preserving Markov null."
    )
    min_count: Annotated[int, Flag(min=1)] = Field(
        5, ge=1, description="Frequency floor for scored pairs."
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="false discovery rate")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="programs held out for perplexity")
    lm_orders: tuple[int, ...] = Field((1, 2, 3), description="n-gram LM orders")
    max_distance: int = Field(8, ge=1, description="largest distance for the MI profile")
    repair_max_tokens: Annotated[int, Flag(min=1)] = Field(
        300_000, ge=1, description="Codes given to Re-Pair."
    )
    ngram_min_count: Annotated[int, Flag(min=1)] = Field(
        2, ge=1, description="Floor for rows of ngrams.tsv (1: every n-gram)."
    )
    top: int = Field(20, ge=1, description="top n-grams, pairs and rules in summary.json")
    min_programs_for_nulls: int = Field(20, ge=2)
    min_tokens_for_nulls: int = Field(200, ge=2)
    spot_check_parses: int = Field(3, ge=0, description="programs parsed with nltk's Viterbi")
    sample_programs: Annotated[int, Flag(min=1)] = Field(
        200_000,
        ge=1,
        description="Programs dataset: sample for nulls, Re-Pair and significance (counts are "
        "exact).",
    )
    workers: Annotated[int, Flag(min=0)] = Field(
        0, ge=0, description="Programs dataset: processes counting shards (0: this one)."
    )
