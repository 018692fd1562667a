"""The length curriculum as pure functions: phases, truncation bias, oracle, handoff, bank."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from strop.model.length_head import round_lengths
from strop.training import curriculum as C
from strop.training.bank import ErrorCurveBank, TargetBank
from strop.training.curriculum import CurriculumConfig, OracleState

L_MIN, L_MAX = 1, 32


def cfg(**kw) -> CurriculumConfig:
    return CurriculumConfig(phase_steps=(100, 200, 300, 400), **kw)


def test_phase_boundaries_follow_config():
    c = cfg()
    assert [C.phase_at(s, c) for s in (0, 99, 100, 199, 200, 299, 300, 399, 400, 10**6)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
    ]
    c2 = CurriculumConfig(phase_steps="30,60,80,100")
    assert c2.phase_steps == (30, 60, 80, 100)
    assert [C.phase_at(s, c2) for s in (29, 30, 59, 60, 79, 80, 99, 100)] == [
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
    ]
    assert C.phase_at(5, CurriculumConfig(length_mode="fixed")) == C.FIXED_PHASE
    # Empty phases are allowed (phase 2 skipped here).
    c3 = CurriculumConfig(phase_steps=(10, 10, 20, 20))
    assert [C.phase_at(s, c3) for s in (9, 10, 19, 20)] == [1, 3, 3, 5]


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", (5, 4, 6, 7), (-1, 2, 3, 4)])
def test_phase_steps_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        CurriculumConfig(phase_steps=bad)


def test_truncation_bias_anneals_to_uniform():
    c = cfg(a0=4.0)
    assert C.truncation_bias(0, c) == 4.0
    assert C.truncation_bias(50, c) == pytest.approx(2.5)
    assert C.truncation_bias(100, c) == 1.0
    assert C.truncation_bias(350, c) == 1.0


def _hist(step: int, c: CurriculumConfig, n: int = 40_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    lengths, from_head = C.choose_lengths(step, c, L_MIN, L_MAX, n, generator=g)
    assert not from_head.any()
    assert lengths.min() >= L_MIN and lengths.max() <= L_MAX
    return torch.bincount(lengths, minlength=L_MAX + 1)[1:].double() / n


def test_phase1_histogram_biased_long_early_uniform_at_end():
    c = cfg(a0=3.0)
    early, late = _hist(0, c), _hist(100, c)
    # Early: u^(1/3) puts 1 - 0.5^3 = 87.5% of the mass on the upper half.
    assert early[L_MAX // 2 :].sum() == pytest.approx(0.875, abs=0.01)
    assert early[-1] > 5 * early[0]
    # End of phase 1: uniform; chi-square against uniform stays small (31 dof, p ~ 0.999).
    expected = 1.0 / L_MAX
    chi2 = float(((late - expected) ** 2 / expected).sum() * 40_000)
    assert chi2 < 65, chi2
    # Monotone drift in between: mean length falls over phase 1.
    means = [float((_hist(s, c) * torch.arange(1, L_MAX + 1)).sum()) for s in (0, 50, 100)]
    assert means[0] > means[1] > means[2]
    assert means[2] == pytest.approx((L_MAX + 1) / 2, abs=0.3)


def test_fixed_mode_uses_all_tokens():
    c = CurriculumConfig(length_mode="fixed")
    lengths, from_head = C.choose_lengths(10**6, c, L_MIN, L_MAX, 7)
    assert lengths.tolist() == [L_MAX] * 7 and not from_head.any()


def test_handoff_share_follows_ramp():
    c = cfg()
    n = 20_000
    predicted = torch.full((n,), 7.4)
    for step, p in [(299, 0.0), (300, 0.0), (325, 0.25), (350, 0.5), (390, 0.9), (400, 1.0)]:
        assert C.handoff_probability(step, c) == pytest.approx(p)
        g = torch.Generator().manual_seed(step)
        lengths, from_head = C.choose_lengths(step, c, L_MIN, L_MAX, n, predicted, g)
        assert from_head.double().mean() == pytest.approx(p, abs=0.015)
        assert (lengths[from_head] == 7).all()  # round(7.4), the inference rule
    with pytest.raises(ValueError, match="predicted lengths are required"):
        C.choose_lengths(350, c, L_MIN, L_MAX, 4)


def test_predicted_lengths_rounded_and_clipped():
    out = round_lengths(torch.tensor([0.2, 3.5, 31.7, 40.0]), 2, 32)
    assert out.tolist() == [2, 4, 32, 32]


def test_probe_lengths_mark_clamped():
    down, up, vd, vu = C.probe_lengths(torch.tensor([1, 2, 3, 16, 31, 32]), 2, 1, 32)
    assert down.tolist() == [1, 1, 1, 14, 29, 30]
    assert up.tolist() == [3, 4, 5, 18, 32, 32]
    assert vd.tolist() == [False, False, True, True, True, True]
    assert vu.tolist() == [True, True, True, True, False, False]


# Constructed rate-distortion curves e(L); the three regimes of eq. 4.
CURVES = {
    "flat": lambda L: 0.30,
    "elbow": lambda L: 0.30 if L >= 16 else 0.30 + 0.15 * (16 - L),
    "falling": lambda L: 0.30 + 0.05 * (16 - L),
}


def _oracle(names, lengths, state=None, c=None):
    c = c or cfg()
    lengths = torch.tensor(lengths)
    down, up, vd, vu = C.probe_lengths(lengths, c.probe_radius, L_MIN, L_MAX)
    e = torch.tensor([CURVES[n](int(L)) for n, L in zip(names, lengths)])
    ed = torch.tensor([CURVES[n](int(L)) for n, L in zip(names, down)])
    eu = torch.tensor([CURVES[n](int(L)) for n, L in zip(names, up)])
    return C.oracle_targets(lengths, e, ed, eu, vd, vu, state or OracleState(), c, L_MIN, L_MAX)


def test_oracle_moves_targets_the_right_way():
    c = cfg(delta=3.0)
    names = ["flat", "elbow", "falling"]
    targets, state, stats = _oracle(names, [16, 16, 16], c=c)
    # All three have the same error at L=16, so the same base target L_bar * 1 = 16.
    base = c.target_mean_frac * L_MAX
    assert stats.base_mean == pytest.approx(base)
    flat, elbow, falling = targets.tolist()
    assert flat == pytest.approx(base - c.delta, abs=1e-4)  # flat: compress
    assert abs(elbow - base) < 0.1 * c.delta  # elbow: keep
    assert falling > base + 0.9 * c.delta  # still falling: extend
    w = stats.w_extend + stats.w_keep + stats.w_compress
    assert w == pytest.approx(1.0)
    assert state.error_ema == pytest.approx(0.30)


def test_oracle_base_target_scales_with_relative_error():
    c = cfg(delta=0.0, target_gamma=1.0)
    lengths = torch.tensor([10, 10])
    e = torch.tensor([0.2, 0.6])
    vd = vu = torch.tensor([True, True])
    targets, state, _ = C.oracle_targets(lengths, e, e, e, vd, vu, OracleState(), c, L_MIN, L_MAX)
    # e_ema = 0.4 on the first batch: targets 16 * 0.5 and 16 * 1.5.
    assert targets.tolist() == pytest.approx([8.0, 24.0])
    # A second batch is normalised by the EMA, not by its own mean.
    e2 = torch.tensor([0.4, 0.4])
    t2, s2, _ = C.oracle_targets(lengths, e2, e2, e2, vd, vu, state, c, L_MIN, L_MAX)
    assert s2.error_ema == pytest.approx(0.4)
    # Clipping to [L_min, L_max].
    e3 = torch.tensor([1e-6, 100.0])
    t3, _, _ = C.oracle_targets(lengths, e3, e3, e3, vd, vu, s2, c, L_MIN, L_MAX)
    assert t3.tolist() == [L_MIN, L_MAX]


def test_oracle_drops_clamped_probes_from_emas():
    c = cfg()
    # The falling sample sits at L_max: its up probe is clamped and must not enter the EMA.
    _, state, _ = _oracle(["falling", "elbow"], [32, 16], c=c)
    assert state.slope_up_ema == pytest.approx(0.0)  # only the elbow's flat upper side counted
    assert not math.isnan(state.slope_down_ema)
    roundtrip = OracleState.from_dict(state.to_dict())
    assert roundtrip == state


def test_diversity_weight_warms_up_linearly():
    assert C.diversity_weight(0, 0.1, 100) == 0.0
    assert C.diversity_weight(50, 0.1, 100) == pytest.approx(0.05)
    assert C.diversity_weight(500, 0.1, 100) == pytest.approx(0.1)
    assert C.diversity_weight(0, 0.1, 0) == 0.1


def test_both_banks_keep_the_checkpoint_keys_runs_were_saved_with():
    """One `ImageBank` holds both; a resumed run reads `targets` / `errors` as before."""
    curve = ErrorCurveBank(3, l_min=1, l_max=5, decay=0.5)
    curve.update(torch.tensor([2]), torch.tensor([5]), torch.tensor([0.25]))
    assert set(curve.state_dict()) == {"errors", "visits"}
    assert set(TargetBank(2, 0.5).state_dict()) == {"targets", "visits"}
    errors, measured = curve.lookup(torch.tensor([2]))
    assert errors[0, 4] == 0.25 and measured[0].tolist() == [False] * 4 + [True]
    with pytest.raises(ValueError, match=r"error-curve bank: checkpoint holds \(3, 5\) cells"):
        ErrorCurveBank(2, l_min=1, l_max=5, decay=0.5).load_state_dict(curve.state_dict())


def test_target_bank_accumulates_and_roundtrips():
    bank = TargetBank(5, decay=0.5)
    bank.update(torch.tensor([1, 3]), torch.tensor([10.0, 20.0]))
    bank.update(torch.tensor([1]), torch.tensor([20.0]))
    t, known = bank.lookup(torch.tensor([0, 1, 3]))
    assert known.tolist() == [False, True, True]
    assert t[1:].tolist() == [15.0, 20.0]
    assert bank.coverage == pytest.approx(0.4)
    other = TargetBank(5, decay=0.5)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.targets, bank.targets) and torch.equal(other.visits, bank.visits)
    with pytest.raises(IndexError, match="outside"):
        bank.update(torch.tensor([5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="training set has 3 images"):
        TargetBank(3, 0.5).load_state_dict(bank.state_dict())
