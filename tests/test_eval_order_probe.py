"""The order probe (`strop.evaluation.order_probe`): permutations, the bag-of-codes control,
and the `order_probe` block `strop eval` writes, recomputed by hand from the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from strop.evaluation.batch_encoding import encode_batch
from strop.evaluation.evaluate import evaluate_run
from strop.evaluation.order_probe import (
    PERMUTATIONS,
    OrderProbe,
    bag_of_codes_cosine,
    code_histograms,
    fit_bag_of_codes,
    permute_prefix,
    verdict,
)
from strop.evaluation.run_inputs import make_loader
from strop.metrics import cosine_per_patch, mean_ci
from strop.model.length_modes import parse_length_mode
from strop.training.checkpoint import load_model


@pytest.mark.parametrize("kind", PERMUTATIONS)
def test_permute_prefix_reorders_only_the_prefix(kind):
    codes = np.array([5, 3, 9, 1, 7, -1, -1])
    out = permute_prefix(codes, 5, kind, np.random.default_rng(0))
    assert sorted(out[:5]) == sorted(codes[:5]) and list(out[5:]) == [-1, -1]
    expected = {"reverse": [7, 1, 9, 3, 5], "sorted": [1, 3, 5, 7, 9]}
    if kind in expected:
        assert list(out[:5]) == expected[kind]
    if kind == "cyclic":  # a rotation by 1..L-1: never the identity, neighbours kept
        shift = next(s for s in range(1, 5) if list(np.roll(codes[:5], -s)) == list(out[:5]))
        assert 1 <= shift <= 4


def test_bag_of_codes_reads_a_multiset_field_and_misses_an_ordered_one():
    rng = np.random.default_rng(0)
    k, n, length = 6, 400, 4
    codes = rng.integers(0, k, size=(n, length))
    hist = code_histograms(codes, np.full(n, length), k)
    assert hist.sum(axis=1).tolist() == [length] * n
    basis = rng.normal(size=(k, 3, 5))
    linear = np.einsum("nk,kpd->npd", hist, basis) + 0.5  # a function of the multiset
    train, val = slice(0, 300), slice(300, None)  # fitted on train, scored on val
    ridge = fit_bag_of_codes(hist[train], linear[train])
    assert bag_of_codes_cosine(ridge, hist[val], linear[val]).mean() > 0.99
    ordered = basis[codes[:, 0]]  # only the first code matters: order information
    ridge = fit_bag_of_codes(hist[train], ordered[train])
    assert bag_of_codes_cosine(ridge, hist[val], ordered[val]).mean() < 0.9


def test_the_control_is_fitted_on_train_and_agrees_with_an_independent_ridge():
    """The bag-of-codes record of the order probe, refitted on train programs with its
    penalty chosen on them, lies within its interval of scikit-learn's RidgeCV fitted on the
    same train programs (its own folds and solver)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from strop.metrics import RIDGE_ALPHAS

    rng = np.random.default_rng(1)
    k, n_train, n_val = 12, 300, 80
    basis = rng.normal(size=(k, 4, 6))

    def programs(n):
        lengths = rng.integers(2, 7, n)
        codes = [rng.integers(0, k, int(m)) for m in lengths]
        padded = np.full((n, 6), -1)
        for i, c in enumerate(codes):
            padded[i, : len(c)] = c
        hist = code_histograms(padded, lengths, k)
        field = np.einsum("nk,kpd->npd", hist, basis) + rng.normal(0, 2.0, (n, 4, 6)) + 1.0
        return codes, padded, lengths, hist, field

    tr_codes, _, _, tr_hist, tr_field = programs(n_train)
    _, va_padded, va_lengths, va_hist, va_field = programs(n_val)
    probe = OrderProbe(k=k)
    probe.codes, probe.lengths = list(va_padded), va_lengths.tolist()
    probe.feats = [va_field.astype(np.float16)]
    probe.true_cos = rng.uniform(0.6, 0.9, n_val).tolist()
    record = probe._bag((tr_codes, tr_field))
    assert record["baseline"] == "bag_of_codes" and record["n_train"] == n_train
    assert record["n"] == n_val and record["alpha"] in RIDGE_ALPHAS
    theirs = make_pipeline(
        StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, cv=KFold(5, shuffle=True, random_state=3))
    ).fit(tr_hist, tr_field.reshape(n_train, -1))
    pred = theirs.predict(va_hist).reshape(va_field.shape)
    bag = cosine_per_patch(pred, va_field.astype(np.float16).astype(np.float64)).mean(axis=1)
    advantage = float(np.mean(np.asarray(probe.true_cos) - bag))
    lo, hi = record["interval"]
    assert lo <= advantage <= hi and abs(advantage - record["advantage"]) < (hi - lo) / 2
    # without train programs there is no control, and the block says why
    probe.permuted = {p: list(probe.true_cos) for p in PERMUTATIONS}
    block = probe.result(None)
    assert block["bag_of_codes"] is None and "no train programs" in block["bag_of_codes_note"]


def test_mean_ci_bootstrap():
    mean, ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and ci[0] < 2.5 < ci[1] and ci[0] >= 1.0 and ci[1] <= 4.0
    assert mean_ci([]) == (None, None)
    assert mean_ci([0.3]) == (0.3, [0.3, 0.3])


def test_verdict_line():
    block = {"n": 10, "drop": {"random": {"mean": 0.1, "ci": [0.05, 0.15]}}, "bag_of_codes": {}}
    matters, line = verdict(block)
    assert matters is True and "carries" in line and "n=10" in line
    block["drop"]["random"] = {"mean": 0.01, "ci": [-0.02, 0.04]}
    assert verdict(block)[0] is False


def test_one_image_gets_no_verdict():
    """`strop eval --limit 1` wrote order_matters: true, "order carries information", on an
    interval [3.2e-6, 3.2e-6]: below MIN_N images there is no verdict."""
    one = {"n": 1, "drop": {"random": {"mean": 3.2e-6, "ci": [3.2e-6, 3.2e-6], "changed": 1}}}
    assert verdict(one) == (None, "order probe: too few images for a verdict (n=1 < 10)")


def test_eval_writes_the_order_probe_block_recomputable_by_hand(run_dir, dataset):  # noqa: F811
    result = evaluate_run(run_dir, batch_size=4, progress=False, lpips=False)
    probe = json.loads((run_dir / "eval.json").read_text())["order_probe"]
    assert probe == json.loads(json.dumps(result["order_probe"]))
    assert set(probe["drop"]) == set(PERMUTATIONS)
    for kind in PERMUTATIONS:
        d = probe["drop"][kind]
        assert d["n"] == probe["n"] and d["ci"][0] <= d["mean"] <= d["ci"][1]
    assert probe["bag_of_codes"]["method"].startswith("ridge") and probe["verdict"]
    # recompute the reverse drop from the model directly
    model, cfg = load_model(run_dir)
    mode = parse_length_mode(None, cfg.curriculum.length_mode)
    drops = []
    for batch in make_loader(dataset, "val", cfg.model.image_size, 8, None):
        enc = encode_batch(model, batch["image"], mode, cfg.model.w_mse, cfg.model.l_min)
        for b in range(len(enc.lengths)):
            n = int(enc.lengths[b])
            if n < 2:
                continue
            codes = enc.codes[b : b + 1].clone()
            rev = codes.clone()
            rev[0, :n] = codes[0, :n].flip(0)
            with torch.no_grad():
                f_true, f_rev = (model.interpret(c, enc.lengths[b : b + 1]) for c in (codes, rev))
            target = enc.feats[b : b + 1].numpy()
            drops.append(
                cosine_per_patch(f_true.numpy(), target).mean()
                - cosine_per_patch(f_rev.numpy(), target).mean()
            )
    assert probe["n"] == len(drops) > 0
    assert probe["drop"]["reverse"]["mean"] == pytest.approx(np.mean(drops), abs=1e-5)


def test_eval_order_probe_can_be_skipped(run_dir):  # noqa: F811
    assert "order_probe" not in evaluate_run(
        run_dir, progress=False, lpips=False, write=False, order_probe_images=0
    )


# --------------------------------------------------------------------------- no-op orders


def test_random_reordering_is_never_the_identity() -> None:
    """At L = 2 half of all random permutations were the identity: those images entered the
    random drop at exactly 0."""
    import numpy as np

    from strop.evaluation.order_probe import permute_prefix

    codes = np.array([3, 5, -1, -1])
    outs = [permute_prefix(codes, 2, "random", np.random.default_rng(s)) for s in range(40)]
    assert all(list(out) == [5, 3, -1, -1] for out in outs)
    one = permute_prefix(codes, 1, "random", np.random.default_rng(0))
    assert list(one) == list(codes)


def test_order_probe_counts_programs_a_reordering_changes(tiny_run: Path, tmp_path: Path) -> None:
    """A program that repeats one code reads the same in every order; with no program
    changed the verdict said "order shows no information" about a test that never ran."""
    from strop.evaluation.evaluate import evaluate_run
    from strop.evaluation.export import export_programs
    from strop.evaluation.order_probe import verdict
    from strop.runs import read_programs

    result = evaluate_run(tiny_run, "val", "prefix:2", write=False, progress=False, lpips=False)
    probe = result["order_probe"]
    programs = read_programs(
        export_programs(tiny_run, "val", "prefix:2", out=tmp_path / "p.parquet", progress=False)
    )
    distinct = sum(int(c[0] != c[1]) for c in programs.codes)
    assert probe["n"] == len(programs)
    for kind in ("random", "reverse", "cyclic"):
        assert probe["drop"][kind]["changed"] == distinct
    assert probe["drop"]["sorted"]["changed"] == sum(int(c[0] > c[1]) for c in programs.codes)
    if distinct == 0:
        assert probe["order_matters"] is None and "untestable" in probe["verdict"]
    same = {
        "n": 3,
        "true_cos": 0.5,
        "drop": {"random": {"mean": 0.0, "ci": [0.0, 0.0], "n": 3, "changed": 0}},
    }
    assert verdict(same) == (
        None,
        "order probe: untestable, no program changes when reordered (each of the 3 repeats "
        "a single code)",
    )
