"""Research driver of docs/RESEARCH_CODES_CARRY_SCENE.md: train one quickstart run, then probe it.

Copy to a scratch folder beside a rendered data folder `data0` (2,000 scenes, 64 px, seed 0)
and run from the repository root, one thread per run:

    nice -n 5 .venv/bin/python scratch/exp.py NAME --k 64 --seed 0 [--variant fgw]
        [--teacher hist4] [--posdiv] [--fixed --length-mode fixed] [--set key=value ...]

It trains `strop.quickstart.run_config` (the quickstart's exact schedule) into
scratch/runs/NAME and writes scratch/results/NAME.json. The loss/teacher variants are
monkeypatches for the search only, not toolkit options: `fgw` weights patches by their
squared deviation from the mean train field, `--posdiv` takes the diversity KL per program
position, `hist4` is a per-patch 4x4x4 RGB histogram teacher (sqrt of pixel fractions).
Probe: ridge (RidgeCV, 5-fold on train) from bag-of-codes + length to the 15 attribute
counts, R2 on val (uniform average over attributes) vs length alone; nearest train program
(L1 over bag-of-codes + length, ties averaged) vs a random train scene, mean abs count error
per attribute; cos of the program's field vs the mean train field; codebook statistics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from strop.model.teachers import Teacher

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent
ATTRS = {
    "color": ["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"],
    "shape": ["cube", "sphere", "cylinder"],
    "material": ["rubber", "metal"],
    "size": ["large", "small"],
}


def load_split(data: Path, split: str, size: int):
    raw = json.loads((data / "scenes" / f"CLEVR_{split}_scenes.json").read_text())["scenes"]
    imgs = np.stack(
        [
            np.asarray(
                Image.open(data / "images" / split / s["image_filename"])
                .convert("RGB")
                .resize((size, size))
            )
            for s in raw
        ]
    )
    images = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    counts = np.array(
        [
            [sum(o[a] == v for o in s["objects"]) for a, vs in ATTRS.items() for v in vs]
            for s in raw
        ],
        dtype=float,
    )
    return images, counts


# ----------------------------------------------------------------------------- loss variants
MEAN_FIELD: torch.Tensor | None = None  # (P, D) mean teacher field over train
ORIG_ALIGN = None


def fg_weighted_align(field, target, w_mse, power=1.0, floor=0.0):
    """Patches weighted by their squared deviation from the mean teacher field (label-free)."""
    field = field.float()
    target = target.float()
    cos = F.cosine_similarity(field, target, dim=-1, eps=1e-6)
    mse = (field - target).pow(2).mean(dim=-1)
    dev = (target - MEAN_FIELD.to(target)).pow(2).mean(dim=-1)  # (B, P)
    w = dev.pow(power)
    w = w / w.mean(dim=1, keepdim=True).clamp_min(1e-8)
    w = floor + (1 - floor) * w
    return ((1.0 - cos + w_mse * mse) * w).mean(dim=1)


def per_position_diversity(z_e, codebook, active, temperature):
    """Mean over positions of KL(position's batch-mean soft assignment || uniform)."""
    logits = z_e.float() @ codebook.detach().float().t() / temperature  # (B, L, K)
    probs = logits.softmax(dim=-1)
    w = active.to(probs.dtype).unsqueeze(-1)  # (B, L, 1)
    n = w.sum(0)  # (L, 1)
    mean_probs = (probs * w).sum(0) / n.clamp_min(1.0)  # (L, K)
    k = codebook.shape[0]
    kl = (mean_probs * (mean_probs * k).clamp_min(1e-12).log()).sum(-1)  # (L,)
    used = (n.squeeze(-1) > 0).to(kl.dtype)
    return (kl * used).sum() / used.sum().clamp_min(1.0)


def resid_align(field, target, w_mse):
    """cos/mse on residuals from the mean field: the interpreter's field minus mu vs target minus mu."""
    mu = MEAN_FIELD.to(target)
    f = field.float() - mu
    t = target.float() - mu
    cos = F.cosine_similarity(f, t, dim=-1, eps=1e-6)
    mse = (f - t).pow(2).mean(dim=-1)
    return (1.0 - cos + w_mse * mse).mean(dim=1)


# ----------------------------------------------------------------------------- teachers
class ColourHistTeacher(Teacher):
    """Per-patch colour histogram over a fixed 4x4x4 RGB grid (no fitting, label-free): (B, P, 64).
    sqrt of the pixel fractions (Hellinger), so cosine compares distributions sensibly."""

    def __init__(self, patch_size: int, bins: int = 4, sqrt: bool = True) -> None:
        super().__init__()
        self.teacher_name = "pixels"  # stands in for the name check of configs/caches
        self.patch_size = patch_size
        self.bins = bins
        self.sqrt = sqrt
        self.dim = bins**3
        self._normalise_with((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self._freeze()

    @torch.no_grad()
    def forward(self, images):
        self._check(images)
        b, _, h, w = images.shape
        q = (images.clamp(0, 1 - 1e-6) * self.bins).long()
        idx = q[:, 0] * self.bins * self.bins + q[:, 1] * self.bins + q[:, 2]  # (B,H,W)
        onehot = F.one_hot(idx, self.dim).permute(0, 3, 1, 2).float()  # (B,D,H,W)
        hist = F.avg_pool2d(onehot, self.patch_size)  # (B,D,h,w)
        hist = hist.flatten(2).transpose(1, 2)
        return hist.sqrt() if self.sqrt else hist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--l-max", type=int, default=16)
    ap.add_argument("--data", default=str(ROOT / "data0"))
    ap.add_argument("--variant", default="base")
    ap.add_argument("--power", type=float, default=1.0)
    ap.add_argument("--floor", type=float, default=0.0)
    ap.add_argument("--teacher", default="pixels")
    ap.add_argument("--fixed", action="store_true")
    ap.add_argument("--posdiv", action="store_true")
    ap.add_argument("--length-mode", default="head")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--probe-only", action="store_true")
    args = ap.parse_args()

    import strop.model.losses as losses
    from strop.quickstart import QuickstartConfig, run_config
    from strop.training.config import apply_overrides
    from strop.training.trainer import train

    data = Path(args.data)
    if args.teacher.startswith("hist"):
        import strop.model.network as network

        bins = int(args.teacher[4:] or 4)
        network.build_teacher = lambda *a, **kw: ColourHistTeacher(8, bins)
        args.teacher_name = "pixels"
    else:
        args.teacher_name = args.teacher
    qc = QuickstartConfig(
        steps=args.steps, seed=args.seed, l_max=args.l_max, ks=(args.k,), teacher=args.teacher_name
    )
    cfg = run_config(qc, args.k, data, fixed=args.fixed)
    if args.set:
        cfg = apply_overrides(cfg, args.set)
    run_dir = ROOT / "runs" / args.name
    tr_images, tr_counts = load_split(data, "train", cfg.model.image_size)
    va_images, va_counts = load_split(data, "val", cfg.model.image_size)

    from strop.model.network import build_model

    teacher = build_model(cfg.model).teacher
    with torch.no_grad():
        tr_feats = torch.cat(
            [teacher(tr_images[i : i + 200]) for i in range(0, len(tr_images), 200)]
        )
        va_feats = torch.cat(
            [teacher(va_images[i : i + 200]) for i in range(0, len(va_images), 200)]
        )
    global MEAN_FIELD
    MEAN_FIELD = tr_feats.mean(0)
    if args.variant == "fgw":
        losses.align_error = lambda f, t, w: fg_weighted_align(f, t, w, args.power, args.floor)
    elif args.variant == "resid":
        losses.align_error = resid_align

    if args.posdiv:
        import strop.model.quantizer as quantizer

        quantizer.diversity_loss = per_position_diversity
    t0 = time.perf_counter()
    if not args.probe_only:
        train(cfg, run_dir, progress=False)
    train_s = time.perf_counter() - t0

    from strop.model.network import Strop

    model, _ = Strop.load_tokenizer(run_dir)
    model.eval()
    res = probe(model, tr_feats, va_feats, tr_counts, va_counts, cfg.model.k, args.length_mode)
    res.update(
        length_mode=args.length_mode,
        name=args.name,
        k=args.k,
        seed=args.seed,
        steps=args.steps,
        variant=args.variant,
        sets=args.set,
        teacher=args.teacher,
        train_s=round(train_s, 1),
        l_max=args.l_max,
        fixed=args.fixed,
        posdiv=args.posdiv,
        power=args.power,
        floor=args.floor,
    )
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, list)}))


def ridge_r2(xtr, ytr, xva, yva):
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    m = RidgeCV(alphas=np.logspace(-2, 4, 13), cv=5).fit(xtr, ytr)
    return float(r2_score(yva, m.predict(xva), multioutput="uniform_average"))


def nn_advantage(xtr, xva, ctr, cva):
    """Mean abs count error (per attribute) of the nearest train program's scene vs a random one.
    Ties among nearest programs: their scenes' errors are averaged."""
    d = np.abs(xva[:, None, :] - xtr[None, :, :]).sum(-1)  # L1 (B_va, B_tr)
    nn_err, rnd_err = [], []
    for i in range(len(xva)):
        ties = np.flatnonzero(d[i] == d[i].min())
        nn_err.append(np.abs(ctr[ties] - cva[i]).mean())
        rnd_err.append(np.abs(ctr - cva[i]).mean())
    return (
        float(np.mean(rnd_err) - np.mean(nn_err)),
        float(np.mean(nn_err)),
        float(np.mean(rnd_err)),
    )


@torch.no_grad()
def probe(model, tr_feats, va_feats, tr_counts, va_counts, k, length_mode="head"):
    def enc(feats):
        codes, lengths = [], []
        for i in range(0, len(feats), 200):
            c, n = model.encode_features(feats[i : i + 200], length_mode)
            codes.append(c)
            lengths.append(n)
        return torch.cat(codes).numpy(), torch.cat(lengths).numpy()

    ctr, ltr = enc(tr_feats)
    cva, lva = enc(va_feats)
    l_max = ctr.shape[1]

    def bag(codes, lengths):
        b = np.zeros((len(codes), k))
        for i, row in enumerate(codes):
            for c in row[row >= 0]:
                b[i, c] += 1
        return np.concatenate([b, lengths[:, None].astype(float)], 1)

    def pos_onehot(codes, lengths):
        b = np.zeros((len(codes), l_max * k))
        for i, row in enumerate(codes):
            for j, c in enumerate(row):
                if c >= 0:
                    b[i, j * k + c] = 1
        return np.concatenate([b, lengths[:, None].astype(float)], 1)

    btr, bva = bag(ctr, ltr), bag(cva, lva)
    res = {}
    res["r2_codes"] = ridge_r2(btr, tr_counts, bva, va_counts)
    res["r2_len"] = ridge_r2(
        ltr[:, None].astype(float), tr_counts, lva[:, None].astype(float), va_counts
    )
    res["r2_posonehot"] = ridge_r2(pos_onehot(ctr, ltr), tr_counts, pos_onehot(cva, lva), va_counts)
    res["nn_adv"], res["nn_err"], res["rnd_err"] = nn_advantage(btr, bva, tr_counts, va_counts)
    # nearest by position-wise Hamming distance
    ham = (cva[:, None, :] != ctr[None, :, :]).sum(-1)
    nn_err = [
        np.abs(tr_counts[np.flatnonzero(h == h.min())] - c).mean()
        for h, c in zip(ham, va_counts, strict=True)
    ]
    res["nn_adv_hamming"] = float(res["rnd_err"] - np.mean(nn_err))
    n_obj_va = va_counts[:, :8].sum(1)
    res["pearson_len_obj"] = float(np.corrcoef(lva, n_obj_va)[0, 1])
    res["len_mean"] = float(lva.mean())
    res["len_std"] = float(lva.std())
    # alignment: program field vs teacher, and the mean field baseline
    lengths_t = torch.from_numpy(lva)
    field = model.interpret(torch.from_numpy(cva).clamp_min(0), lengths_t)
    cos_prog = F.cosine_similarity(field, va_feats, dim=-1).mean().item()
    mu = tr_feats.mean(0, keepdim=True)
    cos_mean = F.cosine_similarity(mu.expand_as(va_feats), va_feats, dim=-1).mean().item()
    res["cos_prog"], res["cos_meanfield"] = cos_prog, cos_mean
    # R2 of the field on the residual (per-element) vs mean field
    res["field_r2"] = float(1 - ((field - va_feats) ** 2).sum() / ((va_feats - mu) ** 2).sum())
    # codebook health (val+train programs, active positions)
    allc = np.concatenate([ctr[ctr >= 0], cva[cva >= 0]])
    p = np.bincount(allc, minlength=k) / len(allc)
    res["codes_used"] = int((p > 0).sum())
    res["perplexity"] = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    ent = []
    for j in range(l_max):
        col = ctr[:, j]
        col = col[col >= 0]
        if len(col) < 20:
            break
        q = np.bincount(col, minlength=k) / len(col)
        ent.append(float(np.exp(-(q[q > 0] * np.log(q[q > 0])).sum())))
    res["pos_perplexity"] = [round(e, 1) for e in ent]
    res["unique_programs_frac"] = float(len({tuple(r) for r in ctr}) / len(ctr))
    return res


if __name__ == "__main__":
    main()
