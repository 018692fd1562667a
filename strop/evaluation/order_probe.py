"""Does token order matter? The order probe behind `eval.json`'s `order_probe` block.

Every evaluated program is interpreted again with its active prefix reordered, and the
alignment of the interpreted field with the teacher (mean patch cosine, as `cos` in eval.json)
is compared with the true order's, image by image:

- `random`: a seeded random permutation of the prefix;
- `reverse`: the prefix read backwards;
- `cyclic`: the prefix rotated by a seeded offset in [1, L-1] (keeps every neighbour pair
  but one, so it separates "absolute position matters" from "adjacency matters");
- `sorted`: the codes in ascending order (a canonical order of the multiset).

The drop (true minus permuted cosine) is reported per kind as a mean with a seeded
percentile-bootstrap 95% CI over images, and `n`, the images with at least two tokens
(shorter programs have only one order and are left out). `changed` counts the images whose
program the reordering actually changed: a prefix that repeats one code reads the same in
every order, and when no program changes, the verdict says order is untestable rather than
"shows no information". The random permutation is never the identity (at L = 2 half of all
draws would be), so its drop is not diluted by programs left as they were.

The bag-of-codes control (`bag_of_codes`) is a ridge regression from a program's code
histogram (a multiset: order thrown away by construction) to the teacher's patch features,
fitted on TRAIN programs (the first `max_images` of the train split, encoded by `strop eval`)
with its penalty chosen by 5-fold cross-validation on those train programs
(`strop.metrics.fit_ridge_cv`, one penalty for the whole field, by mean squared error), and
scored on the probed val images: never fitted on the images it scores. (The first control,
cross-fitted in two folds over ~100 val images with a fixed penalty, scored below the
average teacher field: too few images for K + 1 coefficients per feature.) It is a
comparison record (`strop.baselines`): the true order's per-image cosine against
the control's, paired. Why this control rather than only the sorted program: a permuted or
sorted program is out of the interpreter's training distribution, so a drop could mean
"order is information" or merely "the interpreter is brittle off-distribution". A model
*trained* to read multisets answers the first question directly: if it reaches the true
order's alignment, the codes' identities alone carry the field; if it falls well short while
permutations also hurt, order carries information the multiset does not. Without train
programs the control is `null` with the reason.

The one-line verdict says order carries information at this K when the random-permutation
drop's CI lies above zero, and states the bag control's gap beside it; below
`strop.baselines.MIN_N` probed images there is no verdict (`order_matters` null,
"too few images"): a CI from one image is [x, x] and proves nothing.

Design decisions
- Only the first `max_images` evaluated images enter the probe (their features are held
  for the bag control), so eval's cost and memory stay bounded on large splits.
- Permutations come from `np.random.default_rng([seed, image])`: the same image gets the
  same permutation whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from strop.baselines import MIN_N, compare_means
from strop.metrics import Ridge, cosine_per_patch, fit_ridge_cv, mean_ci

if TYPE_CHECKING:
    import torch

    from strop.model import Strop

PERMUTATIONS = ("random", "reverse", "cyclic", "sorted")


def permute_prefix(codes: np.ndarray, length: int, kind: str, rng: np.random.Generator):
    """`codes` (L_max,) with its first `length` entries reordered by `kind`; the rest kept."""
    out = codes.copy()
    prefix = codes[:length]
    if kind == "random":
        order = rng.permutation(length)
        if length > 1 and (order == np.arange(length)).all():
            order = np.roll(order, 1)  # the identity is no reordering (half the draws at L=2)
        out[:length] = prefix[order]
    elif kind == "reverse":
        out[:length] = prefix[::-1]
    elif kind == "cyclic":
        out[:length] = np.roll(prefix, -int(rng.integers(1, length)) if length > 1 else 0)
    elif kind == "sorted":
        out[:length] = np.sort(prefix)
    else:
        raise ValueError(f"unknown permutation kind {kind!r}; expected one of {PERMUTATIONS}")
    return out


def code_histograms(codes: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """(N, K) count of each code in each program's active prefix."""
    hist = np.zeros((len(codes), k), dtype=np.float64)
    for i, (row, n) in enumerate(zip(codes, lengths, strict=True)):
        np.add.at(hist[i], row[:n], 1.0)
    return hist


def fit_bag_of_codes(hist: np.ndarray, targets: np.ndarray, seed: int = 0) -> Ridge:
    """The order-free control: ridge from code histograms (N, K) to teacher features
    (N, P, D), its one penalty chosen by 5-fold CV on these (train) rows."""
    flat = targets.reshape(len(targets), -1).astype(np.float64)
    return fit_ridge_cv(hist, flat, seed=seed, per_target=False)


def bag_of_codes_cosine(ridge: Ridge, hist: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-image mean patch cosine of the control's field for `hist` (N, K) with `targets`
    (N, P, D)."""
    pred = ridge.predict(hist).reshape(targets.shape)
    return cosine_per_patch(pred, targets.astype(np.float64)).mean(axis=1)


@dataclass
class OrderProbe:
    """Accumulates per-image cosines under each reordering, batch by batch."""

    k: int
    seed: int = 0
    max_images: int = 256
    seen: int = 0
    true_cos: list[float] = field(default_factory=list)
    permuted: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PERMUTATIONS})
    #: images whose program the reordering actually changed (a prefix that repeats one code,
    #: or is already sorted, reads the same in every order)
    changed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PERMUTATIONS, 0))
    codes: list[np.ndarray] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    feats: list[np.ndarray] = field(default_factory=list)

    def update(
        self, model: Strop, codes: torch.Tensor, lengths: torch.Tensor, feats: torch.Tensor
    ) -> None:
        """One batch: `codes` (B, L_max) padded with -1, `lengths` (B,), teacher `feats` (B, P, D)."""
        import torch

        room = self.max_images - self.seen
        if room <= 0:
            return
        codes_np = codes[:room].cpu().numpy()
        lengths_np = lengths[:room].cpu().numpy().astype(int)
        target = feats[:room].float().cpu().numpy()
        keep = np.flatnonzero(lengths_np >= 2)
        index = self.seen + np.arange(len(codes_np))
        self.seen += len(codes_np)
        if not len(keep):
            return
        codes_np, lengths_np, target, index = (
            codes_np[keep],
            lengths_np[keep],
            target[keep],
            index[keep],
        )
        variants = [codes_np]
        for kind in PERMUTATIONS:
            variants.append(
                np.stack(
                    [
                        permute_prefix(c, n, kind, np.random.default_rng([self.seed, int(i)]))
                        for c, n, i in zip(codes_np, lengths_np, index, strict=True)
                    ]
                )
            )
            self.changed[kind] += int((variants[-1] != codes_np).any(axis=1).sum())
        dev_lengths = torch.as_tensor(np.tile(lengths_np, len(variants)))
        batch = torch.as_tensor(np.concatenate(variants), dtype=torch.long)
        with torch.no_grad():
            fields = model.interpret(batch, dev_lengths).float().cpu().numpy()
        cos = cosine_per_patch(fields, np.tile(target, (len(variants), 1, 1))).mean(axis=1)
        cos = cos.reshape(len(variants), -1)
        self.true_cos += cos[0].tolist()
        for j, kind in enumerate(PERMUTATIONS, start=1):
            self.permuted[kind] += cos[j].tolist()
        self.codes += list(codes_np)
        self.lengths += lengths_np.tolist()
        self.feats.append(target.astype(np.float16))

    def result(self, train: tuple[list[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
        """The `order_probe` block of eval.json; `train` = (train programs' active prefixes,
        their teacher features (N, P, D)) for the bag-of-codes control."""
        true = np.asarray(self.true_cos)
        n = len(true)
        block: dict[str, Any] = {
            "n": n,
            "images_considered": self.seen,
            "alignment": "mean patch cosine of the interpreted field with the teacher",
            "ci": "95% percentile bootstrap over images (seeded)",
            "true_cos": float(true.mean()) if n else None,
            "drop": {},
        }
        for kind in PERMUTATIONS:
            drop = true - np.asarray(self.permuted[kind])
            mean, ci = mean_ci(drop, seed=self.seed)
            block["drop"][kind] = {"mean": mean, "ci": ci, "n": n, "changed": self.changed[kind]}
        block["bag_of_codes"] = self._bag(train)
        if block["bag_of_codes"] is None:
            block["bag_of_codes_note"] = (
                "no train programs to fit it on"
                if train is None or len(train[0]) < 5
                else "no probed image"
            )
        block["order_matters"], block["verdict"] = verdict(block)
        return block

    def _bag(self, train: tuple[list[np.ndarray], np.ndarray] | None) -> dict[str, Any] | None:
        method = (
            "ridge regression from code histograms to teacher features (order-free by "
            "construction), fitted on train programs, penalty by 5-fold CV on them; scored on "
            "the probed images"
        )
        if train is None or len(train[0]) < 5 or not self.true_cos:
            return None
        codes, feats = train
        lengths = np.array([len(c) for c in codes])
        width = int(lengths.max(initial=1))
        padded = np.full((len(codes), width), -1, dtype=np.int64)
        for i, c in enumerate(codes):
            padded[i, : len(c)] = c
        ridge = fit_bag_of_codes(code_histograms(padded, lengths, self.k), feats, self.seed)
        hist = code_histograms(np.stack(self.codes), np.asarray(self.lengths), self.k)
        targets = np.concatenate(self.feats).astype(np.float32)
        bag = bag_of_codes_cosine(ridge, hist, targets)
        true = np.asarray(self.true_cos)
        record = compare_means(true, bag, name="bag_of_codes", metric="cos", seed=self.seed)
        mean, ci = mean_ci(true - bag, seed=self.seed)
        record.update(
            {
                "method": method,
                "cos": float(bag.mean()),
                "drop": {"mean": mean, "ci": ci, "n": len(bag)},
                "alpha": float(ridge.alpha[0]),
                "n_train": len(codes),
            }
        )
        return record


def verdict(block: dict[str, Any]) -> tuple[bool | None, str]:
    """(order matters?, one line) from the random-permutation drop and the bag control."""
    rand = block["drop"].get("random") or {}
    if not block.get("n") or rand.get("ci") is None:
        return None, "order probe: no program with two or more tokens"
    if rand.get("changed") == 0:  # absent in blocks written before the count existed
        return None, (
            f"order probe: untestable, no program changes when reordered (each of the "
            f"{block['n']} repeats a single code)"
        )
    if block["n"] < MIN_N:
        return None, f"order probe: too few images for a verdict (n={block['n']} < {MIN_N})"
    lo, hi = rand["ci"]
    matters = bool(lo > 0)
    text = (
        f"order {'carries' if matters else 'shows no'} information: a random permutation "
        f"{'lowers' if rand['mean'] > 0 else 'changes'} cosine by {rand['mean']:.3f} "
        f"[{lo:.3f}, {hi:.3f}]"
    )
    true = block.get("true_cos")
    if true:  # the size of the effect beside its significance
        text += f", {100 * rand['mean'] / true:.1f}% of the true order's {true:.3f}"
    text += f" (n={block['n']})"
    bag = block.get("bag_of_codes") or {}
    if bag.get("drop"):
        d = bag["drop"]
        text += (
            f"; a bag-of-codes regressor trails the true order by {d['mean']:.3f} "
            f"[{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"
        )
    return matters, text
