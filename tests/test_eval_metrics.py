"""Metrics on constructed inputs whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from strop import metrics


@pytest.fixture
def field() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 16, 8))


def test_identical_field_is_perfect(field):
    assert metrics.cosine(field, field) == pytest.approx(1.0)
    assert metrics.r2_score(field, field) == pytest.approx(1.0)
    assert metrics.rmse(field, field) == 0.0


def test_opposite_and_scaled_fields(field):
    assert metrics.cosine(-field, field) == pytest.approx(-1.0)
    # cosine ignores scale, R^2 and RMSE do not
    assert metrics.cosine(3 * field, field) == pytest.approx(1.0)
    assert metrics.rmse(field + 0.5, field) == pytest.approx(0.5)


def test_r2_of_channel_mean_is_zero(field):
    mean = np.broadcast_to(field.reshape(-1, 8).mean(0), field.shape)
    assert metrics.r2_score(mean, field) == pytest.approx(0.0, abs=1e-12)
    # worse than the mean predictor -> negative
    assert metrics.r2_score(mean - field, field) < 0


def test_r2_matches_closed_form(field):
    pred = field + np.random.default_rng(1).normal(scale=0.3, size=field.shape)
    t = field.reshape(-1, 8)
    expected = 1 - ((pred.reshape(-1, 8) - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum()
    assert metrics.r2_score(pred, field) == pytest.approx(expected, rel=1e-10)


def test_streamed_stats_equal_one_shot(field):
    pred = field * 0.7 + 0.1
    stats = metrics.FieldStats()
    for i in range(4):
        stats.update(pred[i : i + 1], field[i : i + 1])
    assert stats.cos == pytest.approx(metrics.cosine(pred, field))
    assert stats.r2 == pytest.approx(metrics.r2_score(pred, field))
    assert stats.rmse == pytest.approx(metrics.rmse(pred, field))


def test_shape_mismatch_is_one_line_error(field):
    with pytest.raises(ValueError, match=r"shape mismatch: prediction \(4, 16, 7\)"):
        metrics.cosine(field[..., :7], field)


def test_codebook_usage_ignores_padding():
    codes = np.array([[0, 1, 2, -1], [0, 1, -1, -1]])
    counts = metrics.code_counts(codes, k=8)
    assert counts.tolist() == [2, 2, 1, 0, 0, 0, 0, 0]
    usage = metrics.codebook_usage(counts)
    assert usage["cb_pct"] == pytest.approx(100 * 3 / 8)
    p = np.array([2, 2, 1]) / 5
    assert usage["eff_pct"] == pytest.approx(100 * math.exp(-(p * np.log(p)).sum()) / 8)
    # uniform usage: Eff% == CB% == 100
    assert metrics.codebook_usage(np.ones(16))["eff_pct"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="code 9 outside codebook of size K=8"):
        metrics.code_counts([np.array([9])], k=8)


def test_code_reuse_stats():
    counts = np.array([90, 5, 5, 0] + [0] * 6)
    s = metrics.code_reuse_stats(counts)
    assert s["active_codes"] == 3
    assert s["top10_share"] == pytest.approx(0.9)
    assert s["herfindahl"] == pytest.approx(0.81 + 2 * 0.0025)
    assert s["entropy_bits"] == pytest.approx(-(0.9 * math.log2(0.9) + 2 * 0.05 * math.log2(0.05)))
    assert s["effective_vocab"] == pytest.approx(2 ** s["entropy_bits"])


def test_nmi_properties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 4000)
    assert metrics.nmi(a, a) == pytest.approx(1.0)
    assert metrics.nmi(a, (a + 3) % 5) == pytest.approx(1.0)  # relabelling invariant
    assert metrics.nmi(a, rng.integers(0, 5, 4000)) < 0.01
    # against the entropy definition: MI = H(a) + H(b) - H(a, b)
    b = np.where(rng.random(4000) < 0.5, a, rng.integers(0, 5, 4000))
    table, _, _ = metrics.contingency(a, b)
    h = metrics.entropy
    mi = h(table.sum(1)) + h(table.sum(0)) - h(table.reshape(-1))
    assert metrics.nmi(a, b) == pytest.approx(mi / (0.5 * (h(table.sum(1)) + h(table.sum(0)))))


def test_nmi_of_constant_labels_is_undefined_not_perfect():
    # One object under one code: 0 / 0, reported as None (JSON null), never as 1.0.
    assert metrics.nmi([3, 3, 3], [7, 7, 7]) is None
    assert metrics.nmi([], []) is None
    # One side constant, the other varied: MI 0 over a positive normaliser.
    assert metrics.nmi([3, 3, 3, 3], [1, 2, 1, 2]) == 0.0


def test_ssim_identity_constant_and_noise():
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 32, 32))
    assert metrics.ssim(img, img) == pytest.approx([1.0, 1.0])
    # constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1)
    a, b = np.full((1, 3, 24, 24), 0.2), np.full((1, 3, 24, 24), 0.6)
    c1 = metrics.SSIM_C1
    assert metrics.ssim(a, b)[0] == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1))
    small = metrics.ssim(img, np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1))
    large = metrics.ssim(img, np.clip(img + rng.normal(0, 0.3, img.shape), 0, 1))
    assert np.all(large < small) and np.all(small < 1)


def test_bits_and_compression():
    assert metrics.bits_per_token(1024) == 10
    assert metrics.bits_per_token(100) == 7
    assert metrics.program_bits(np.array([64]), 1024).tolist() == [640]  # the paper's ceiling
    assert metrics.teacher_bits(256, 384) == 256 * 384 * 16


def test_pearson_matches_scipy_and_fisher_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    c = metrics.pearson(x, y)
    assert c.r == pytest.approx(pearsonr(x, y).statistic)
    lo, hi = c.ci
    z, se = math.atanh(c.r), 1 / math.sqrt(197)
    assert lo == pytest.approx(math.tanh(z - 1.959964 * se), rel=1e-5)
    assert hi == pytest.approx(math.tanh(z + 1.959964 * se), rel=1e-5)


def test_spearman_bootstrap_ci_covers_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.integers(3, 11, 300)
    y = 2 * x + rng.normal(0, 4, 300)
    c = metrics.spearman(y, x)
    assert c.r == pytest.approx(spearmanr(y, x).statistic)
    assert c.ci[0] < c.r < c.ci[1]
    assert metrics.spearman(y, x).ci == c.ci
    f = metrics.spearman(y, x, method="fisher")
    assert f.ci[0] < f.r < f.ci[1]


def test_length_vs_objects_skips_unknown_and_reports_constant():
    out = metrics.length_vs_objects([5, 6, 7, 8, 99], [3, 4, 5, 6, -1])
    assert out["n"] == 4 and out["pearson"] == pytest.approx(1.0)
    assert out["mean_length_by_objects"] == {"3": 5.0, "4": 6.0, "5": 7.0, "6": 8.0}
    const = metrics.length_vs_objects([8, 8, 8, 8], [3, 4, 5, 6])
    assert const["pearson"] is None and "constant length" in const["note"]


def test_per_image_sums_give_fieldstats_and_a_bootstrap_interval_around_it():
    from strop import metrics

    rng = np.random.default_rng(0)
    pred = rng.normal(size=(30, 8, 12))
    target = pred + rng.normal(size=pred.shape)
    whole, per_image = metrics.FieldStats(), metrics.PerImageField()
    whole.update(pred, target)
    per_image.update(pred[:10], target[:10])
    per_image.update(pred[10:], target[10:])
    assert per_image.over(np.arange(30)) == pytest.approx(whole.as_dict())
    lo, hi = metrics.bootstrap_ci(30, lambda idx: per_image.over(idx)["r2"])
    assert lo < whole.r2 < hi and hi - lo < 0.2
    assert metrics.bootstrap_ci(1, lambda idx: 0.0) == (None, None)
    assert metrics.ci_overlap([0.1, 0.3], [0.25, 0.4]) is True
    assert metrics.ci_overlap([0.1, 0.2], [0.25, 0.4]) is False
    assert metrics.ci_overlap(None, [0.25, 0.4]) is None
