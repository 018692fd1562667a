"""`strop.devices.DeviceTimer`: seconds of device work, waited for on CUDA, not just launched."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from strop.devices import DeviceTimer, synchronize


def test_blocks_add_up_and_time_outside_them_does_not_count():
    timer = DeviceTimer()
    cpu = torch.device("cpu")
    for _ in range(2):
        with timer.measure(cpu):
            time.sleep(0.05)
        time.sleep(0.1)  # between blocks: not billed
    assert 0.1 <= timer.seconds < 0.2


def test_a_block_that_raises_is_still_counted():
    timer = DeviceTimer()
    with pytest.raises(RuntimeError), timer.measure(torch.device("cpu")):
        time.sleep(0.05)
        raise RuntimeError("boom")
    assert timer.seconds >= 0.05


def test_strop_devices_stays_torch_free_at_import():
    code = "import sys, strop.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_work_is_timed_until_it_has_run():
    """A 0.2 s kernel: timing its launch alone (the code this replaced) measured ~0 s."""
    device = torch.device("cuda")
    torch.cuda._sleep(1000)  # warm up the context and the kernel
    synchronize(device)
    cycles_per_s = _cycles_per_second(device)
    timer = DeviceTimer()
    with timer.measure(device):
        torch.cuda._sleep(int(0.2 * cycles_per_s))
    assert timer.seconds >= 0.15, timer.seconds


def _cycles_per_second(device: torch.device) -> float:
    cycles = 10_000_000
    begin = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize(device)
    return cycles / (time.perf_counter() - begin)
