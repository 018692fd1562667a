"""The comparison record every headline carries (`strop.baselines`), on constructed
cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from strop.baselines import (
    BEYOND,
    NOT_BEYOND,
    compare,
    compare_means,
    find_records,
    is_record,
)


def test_a_clearly_better_headline_is_beyond_its_baseline():
    rng = np.random.default_rng(0)
    base = rng.normal(0.7, 0.05, 200)
    rec = compare_means(base + 0.05, base, name="mean_field", metric="cos")
    assert rec["verdict"] == BEYOND
    assert rec["advantage"] == pytest.approx(0.05)
    assert rec["interval"][0] > 0 and rec["n"] == 200 and is_record(rec)


def test_an_equal_headline_is_not_beyond_and_an_error_is_oriented():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0, 1, 300)
    assert compare_means(a, b, name="random_shot", metric="x")["verdict"] == NOT_BEYOND
    # a lower error is better: advantage = baseline - headline
    rec = compare_means(b - 1.0, b, name="naive", metric="count_error", higher_is_better=False)
    assert rec["advantage"] == pytest.approx(1.0) and rec["verdict"] == BEYOND
    worse = compare_means(b + 1.0, b, name="naive", metric="count_error", higher_is_better=False)
    assert worse["advantage"] == pytest.approx(-1.0) and worse["verdict"] == NOT_BEYOND


def test_too_few_items_get_no_verdict():
    rec = compare_means([0.9, 0.8, 0.95], [0.1, 0.2, 0.1], name="mean_field", metric="cos")
    assert rec["verdict"] is None and "too few" in rec["note"] and rec["interval"] is None
    one = compare_means([0.9], [0.1], name="mean_field", metric="cos")
    assert one["verdict"] is None and one["advantage"] == pytest.approx(0.8)


def test_undefined_statistics_and_bad_pairs():
    rec = compare(50, lambda idx: float("nan"), lambda idx: 0.0, name="b", metric="m")
    assert rec["verdict"] is None and rec["advantage"] is None
    with pytest.raises(ValueError, match="one value per item"):
        compare_means([1.0, 2.0], [1.0], name="b", metric="m")


def test_non_mean_statistics_are_resampled_pairwise():
    """An R^2-like statistic of a predictor that copies the target beats one that ignores it."""
    rng = np.random.default_rng(2)
    y = rng.normal(size=100)

    def r2(pred):
        return lambda idx: (
            1 - np.sum((y[idx] - pred[idx]) ** 2) / np.sum((y[idx] - y[idx].mean()) ** 2)
        )

    rec = compare(100, r2(y + 0.1 * rng.normal(size=100)), r2(np.zeros(100)), name="z", metric="r2")
    assert rec["verdict"] == BEYOND and rec["value"] > 0.95


def test_records_are_found_anywhere_in_a_tree():
    rec = compare_means(np.ones(20), np.zeros(20), name="mean_field", metric="cos")
    tree = {"alignment": {"cos": 1.0, "mean_field": rec}, "rows": [{"x": 1, "fixed": rec}]}
    assert [p for p, _ in find_records(tree)] == ["alignment.mean_field", "rows[0].fixed"]
