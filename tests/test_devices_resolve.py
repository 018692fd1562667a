"""`strop.devices.resolve_device`: the one place a `--device` name becomes a torch device (eval,
export, cache-features), with torchrun's LOCAL_RANK for `auto` (`Rank.gpu`)."""

from __future__ import annotations

import pytest
import torch

from strop.devices import resolve_device
from strop.evaluation.distributed import Rank


def test_auto_is_the_cpu_without_cuda_and_this_ranks_gpu_with_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", 3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", Rank(1, 2, 1).gpu) == torch.device("cuda:1")


def test_a_cuda_name_without_cuda_is_one_line_naming_the_option(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"^--device cuda:1: CUDA is not available on this machine$"
    ):
        resolve_device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_process_alone_takes_the_default_gpu_and_a_torchrun_rank_its_own():
    assert Rank(0, 1, 3).gpu is None
    assert Rank(2, 4, 2).gpu == 2
