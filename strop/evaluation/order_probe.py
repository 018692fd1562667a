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
cross-fitted in two folds over the evaluated images (fit on one half, scored on the other).
Why this control rather than only the sorted program: a permuted or sorted program is out of
the interpreter's training distribution, so a drop could mean "order is information" or
merely "the interpreter is brittle off-distribution". A model *trained* to read multisets
answers the first question directly: if it reaches the true order's alignment, the codes'
identities alone carry the field; if it falls well short while permutations also hurt, order
carries information the multiset does not. It needs no training split and no second pass.

The one-line verdict says order carries information at this K when the random-permutation
drop's CI lies above zero, and states the bag control's gap beside it.

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

from strop.metrics import cosine_per_patch, mean_ci

if TYPE_CHECKING:
    import torch

    from strop.model import Strop

PERMUTATIONS = ("random", "reverse", "cyclic", "sorted")
#: Ridge penalty of the bag-of-codes control, relative to the mean histogram energy.
RIDGE = 1e-2


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


def bag_of_codes_cosine(hist: np.ndarray, targets: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Per-image mean patch cosine of a two-fold cross-fitted ridge regression from code
    histograms (N, K) to teacher features (N, P, D); NaN for images of a fold too small to fit."""
    n = len(hist)
    out = np.full(n, np.nan)
    folds = [np.arange(n) % 2 == 0, np.arange(n) % 2 == 1]
    flat = targets.reshape(n, -1).astype(np.float64)
    x = np.concatenate([hist, np.ones((n, 1))], axis=1)  # with an intercept
    for test in folds:
        train = ~test
        if train.sum() < 2 or not test.any():
            continue
        xt = x[train]
        gram = xt.T @ xt
        penalty = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
        reg = penalty * np.eye(gram.shape[0])
        reg[-1, -1] = 0.0  # the intercept is not shrunk
        weights = np.linalg.solve(gram + reg, xt.T @ flat[train])
        pred = (x[test] @ weights).reshape(-1, *targets.shape[1:])
        out[test] = cosine_per_patch(pred, targets[test].astype(np.float64)).mean(axis=1)
    return out


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

    def result(self) -> dict[str, Any]:
        """The `order_probe` block of eval.json."""
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
        block["bag_of_codes"] = self._bag()
        block["order_matters"], block["verdict"] = verdict(block)
        return block

    def _bag(self) -> dict[str, Any]:
        method = (
            "ridge regression from code histograms to teacher features, two-fold cross-fitted "
            "over the probed images (order-free by construction)"
        )
        if len(self.true_cos) < 4:
            return {"method": method, "cos": None, "drop": None, "n": 0}
        hist = code_histograms(np.stack(self.codes), np.asarray(self.lengths), self.k)
        targets = np.concatenate(self.feats).astype(np.float32)
        bag = bag_of_codes_cosine(hist, targets)
        ok = np.isfinite(bag)
        drop = np.asarray(self.true_cos)[ok] - bag[ok]
        mean, ci = mean_ci(drop, seed=self.seed)
        return {
            "method": method,
            "cos": float(bag[ok].mean()),
            "drop": {"mean": mean, "ci": ci, "n": int(ok.sum())},
            "n": int(ok.sum()),
        }


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
