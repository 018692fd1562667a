"""The vector quantizer: nearest code, straight-through, EMA, restarts, losses; a library oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strop.model.losses import commitment_loss, diversity_loss
from strop.model.quantizer import QuantizerConfig, VectorQuantizer

d, C, K = 32, 8, 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_nearest_code_and_straight_through():
    vq = VectorQuantizer(QuantizerConfig(d, C, K))
    x = torch.randn(3, 5, d, requires_grad=True)
    out = vq(x)
    # nearest by Euclidean distance among unit vectors, brute force
    dist = torch.cdist(out.z_e.detach().reshape(-1, C), vq.codebook)
    assert torch.equal(out.codes.reshape(-1), dist.argmin(dim=1))
    assert torch.allclose(out.z_e.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    # forward value is exactly the code's token; gradient flows back to x
    assert torch.equal(out.tokens, vq.embed_codes(out.codes))
    out.tokens.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_quantizer_runs_in_fp32_under_autocast():
    vq = VectorQuantizer(QuantizerConfig(d, C, K))
    x = torch.randn(2, 4, d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(x)
    assert out.z_e.dtype == torch.float32 and out.z_q.dtype == torch.float32
    assert torch.equal(out.codes, vq(x).codes)


def test_ema_moves_codes_toward_assigned_vectors_and_keeps_unit_norm():
    vq = VectorQuantizer(QuantizerConfig(d, C, K, decay=0.9))
    x = torch.randn(4, 6, d)
    active = torch.ones(4, 6, dtype=torch.bool)
    out = vq(x)
    used = out.codes.unique()
    target = F.normalize(
        torch.stack([out.z_e.detach()[out.codes == c].mean(0) for c in used]), dim=-1
    )
    before = (vq.codebook[used] * target).sum(-1)
    for _ in range(60):  # the initial statistics' weight decays to 0.9**60 ~ 0.002
        vq.update_codebook(out, active)
    after = (vq.codebook[used] * target).sum(-1)
    assert (after > before).all()
    assert torch.allclose(after, torch.ones_like(after), atol=1e-3)
    assert torch.allclose(vq.codebook.norm(dim=-1), torch.ones(K), atol=1e-5)


def test_only_active_positions_update_the_codebook():
    vq = VectorQuantizer(QuantizerConfig(d, C, K))
    x = torch.randn(2, 6, d)
    out = vq(x)
    active = torch.zeros(2, 6, dtype=torch.bool)
    active[0, :2] = True
    inactive_only = set(out.codes[~active].tolist()) - set(out.codes[active].tolist())
    before = vq.codebook.clone()
    vq.update_codebook(out, active)
    # codes seen only at inactive positions got a zero count: their cluster size just decays
    for c in inactive_only:
        assert vq.cluster_size[c].item() == pytest.approx(0.99)
    changed = (vq.codebook - before).abs().sum(-1) > 1e-7
    assert changed[out.codes[active]].all()


def test_dead_code_is_reseeded_from_active_vectors_with_fresh_statistics():
    vq = VectorQuantizer(QuantizerConfig(d, C, K, dead_threshold=0.5))
    x = torch.randn(2, 6, d)
    out = vq(x)
    active = torch.zeros(2, 6, dtype=torch.bool)
    active[1] = True
    vq.cluster_size[3] = 0.01  # code 3 is dead
    n = vq.restart_dead_codes(out, active)
    assert n == 1
    candidates = out.z_e.detach()[active]
    match = (candidates @ vq.codebook[3]).max()
    assert match.item() == pytest.approx(1.0, abs=1e-5)  # re-seeded from an active batch vector
    assert vq.cluster_size[3].item() == pytest.approx(vq.reset_size)
    assert torch.allclose(vq.embed_sum[3], vq.codebook[3] * vq.reset_size)
    assert vq.restart_dead_codes(out, active) == 0  # nothing dead any more


def test_losses_are_zero_or_positive_where_expected():
    z = F.normalize(torch.randn(2, 4, C), dim=-1)
    active = torch.ones(2, 4, dtype=torch.bool)
    assert commitment_loss(z, z, active).item() == pytest.approx(0.0, abs=1e-7)
    codebook = F.normalize(torch.randn(K, C), dim=-1)
    # every vector on one code: diversity near its maximum log K at low temperature
    collapsed = codebook[0].expand(2, 4, C)
    high = diversity_loss(collapsed, codebook, active, temperature=0.01).item()
    assert high == pytest.approx(torch.log(torch.tensor(float(K))).item(), rel=0.05)
    # each code once (K vectors): soft usage uniform at low temperature
    spread = codebook.view(2, K // 2, C)
    low = diversity_loss(spread, codebook, torch.ones(2, K // 2, dtype=torch.bool), 0.01).item()
    assert low < 0.05 * high


def test_against_vector_quantize_pytorch_oracle():
    """Nearest codes and the EMA codebook match the library's cosine-sim Codebook."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

    ref = Codebook(C, K, decay=0.99, eps=1e-5, threshold_ema_dead_code=0, use_cosine_sim=True)
    ref.train()
    ours = VectorQuantizer(QuantizerConfig(d, C, K, decay=0.99, eps=1e-5))
    with torch.no_grad():
        ours.codebook.copy_(ref.embed[0])
        ours.embed_sum.copy_(ref.embed_avg[0])
        ours.cluster_size.copy_(ref.cluster_size[0])
    assert vqp is not None
    for step in range(5):
        x = torch.randn(4, 6, d)
        mask = torch.rand(4, 6) > 0.3
        out = ours(x)
        z = out.z_e.detach()
        _, ref_codes, _ = ref(z, mask=mask)
        assert torch.equal(ref_codes, out.codes), step
        ours.update_codebook(out, mask)
        assert torch.allclose(ours.codebook, ref.embed[0], atol=1e-5), step
        assert torch.allclose(ours.cluster_size, ref.cluster_size[0], atol=1e-5), step


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # identical initial codebook on every rank
    vq = VectorQuantizer(QuantizerConfig(d, C, K, dead_threshold=0.5))
    gen = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    x = torch.randn(4, 6, d, generator=gen)
    active = torch.rand(4, 6, generator=gen) > 0.3
    out = vq(x)
    vq.update_codebook(out, active)
    vq.cluster_size[3] = 0.01
    n = vq.restart_dead_codes(out, active, generator=torch.Generator().manual_seed(rank))
    torch.save(
        {
            "codebook": vq.codebook,
            "cluster_size": vq.cluster_size,
            "n": n,
            "z": out.z_e.detach()[active],
            "codes": out.codes[active],
        },
        f"{out_dir}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_ddp_statistics_are_summed_and_restarts_agree_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["codebook"], r1["codebook"])
    assert r0["n"] == r1["n"] == 1
    # code 3 was re-seeded from rank 0's batch on both ranks
    assert (r0["z"] @ r1["codebook"][3]).max().item() == pytest.approx(1.0, abs=1e-5)
    # the EMA counts are the sum over both ranks' active positions
    torch.manual_seed(0)
    single = VectorQuantizer(QuantizerConfig(d, C, K))
    counts = torch.bincount(torch.cat([r0["codes"], r1["codes"]]), minlength=K).float()
    expected = single.cluster_size.lerp(counts, 0.01)
    expected[3] = single.reset_size
    assert torch.allclose(r0["cluster_size"], expected, atol=1e-6)
