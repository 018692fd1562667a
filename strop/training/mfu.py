"""Model FLOPs utilisation: the training FLOPs a step does, against the device's peak.

    MFU = images/s x training FLOPs per image / peak dense bf16 FLOP/s of the device

Design decisions
- Training FLOPs per image are the analytic forward FLOPs of `strop.model.cost` (what
  `strop model-info` prints, at L = L_max) times 3 (forward plus a backward of twice the
  forward), plus one forward of the teacher when it runs online (it is frozen: no backward).
  The phase-2 probe rows and the pixel probe are not counted: they are work the method
  chooses to do, not the model's, so MFU is conservative, as it is in the literature.
- Peaks are the vendors' dense (no 2:4 sparsity) bf16 tensor-core figures, keyed by the name
  `torch.cuda.get_device_name` reports. A device not in the table gets no MFU (None): the
  achieved TFLOP/s is still reported, and a wrong peak would be worse than none.
"""

from __future__ import annotations

__all__ = ["PEAK_BF16_TFLOPS", "mfu", "peak_bf16_flops", "training_flops_per_image"]

#: Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets (their tables quote
#: the 2:4-sparsity figure, twice these, with an asterisk):
#: - H100 SXM5: 989.4 (1,979 sparse); H100 PCIe: 756 (1,513 sparse). NVIDIA H100 Tensor Core
#:   GPU datasheet; the SXM dense figure also in NVIDIA's Hopper architecture whitepaper.
#: - H200 (SXM): 989.4, the same GH100 compute as H100 SXM with more memory (H200 datasheet:
#:   1,979 sparse).
#: - A100 (SXM4 and PCIe, 40/80 GB): 312 (624 sparse). NVIDIA A100 datasheet.
#: - L40S: 362.05 (733 sparse). NVIDIA L40S datasheet.
#: - L4: 121 (242 sparse). NVIDIA L4 datasheet.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.05,
    "L4": 121.0,
}


def device_key(name: str) -> str | None:
    """The `PEAK_BF16_TFLOPS` key of a CUDA device name (`torch.cuda.get_device_name`), or
    None when the device is not in the table (e.g. H100 NVL, H200 NVL: other clocks)."""
    words = name.replace("-", " ").upper().split()
    if "NVL" in words:
        return None
    if "H100" in words:
        return "H100 PCIe" if "PCIE" in words else "H100 SXM"  # SXM5 reports "H100 80GB HBM3"
    if "H200" in words:
        return "H200"
    if "A100" in words:
        return "A100"
    if "L40S" in words:
        return "L40S"
    if "L4" in words:
        return "L4"
    return None


def peak_bf16_flops(name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of the named device; None when unknown (or no device)."""
    key = device_key(name) if name else None
    return None if key is None else PEAK_BF16_TFLOPS[key] * 1e12


def training_flops_per_image(model_flops: int, teacher_flops: int = 0) -> int:
    """FLOPs of one training image: 3x the model's forward, plus the online teacher's forward
    (pass 0 when features come from a cache)."""
    return 3 * model_flops + teacher_flops


def mfu(images_per_s: float, flops_per_image: int, peak_flops: float | None) -> float | None:
    """The share of the peak the training rate uses (0..1); None without a known peak."""
    if not peak_flops:
        return None
    return images_per_s * flops_per_image / peak_flops
