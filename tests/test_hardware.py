"""hardware.py: the one owner of device, threads and optimiser construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anobench.config import hardware_config
from anobench.errors import AnobenchError
from anobench.hardware import create_hardware
from tests.helpers import compose_config  # noqa: E402


def test_cpu_threads_sets_torch_threads_and_rejects_zero() -> None:
    before = torch.get_num_threads()
    try:
        threads = hardware_config(compose_config("hardware=cpu", "hardware.cpu_threads=1"))
        create_hardware(threads.device, cpu_threads=threads.cpu_threads)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert hardware_config(compose_config()).cpu_threads is None  # torch's default is kept
    with pytest.raises(AnobenchError, match="hardware.cpu_threads=0 must be positive"):
        hardware_config(compose_config("hardware.cpu_threads=0"))


def _one_step(device: str, cls: type[torch.optim.Optimizer]) -> torch.optim.Optimizer:
    hardware = create_hardware(device)
    layer = nn.Linear(4, 2).to(hardware.device)
    optimizer = hardware.optimizer(cls, layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    layer(torch.ones(3, 4, device=hardware.device)).sum().backward()
    optimizer.step()
    assert not torch.equal(layer.weight.detach(), before)
    return optimizer


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_optimizer_is_not_fused_on_cpu(cls: type[torch.optim.Optimizer]) -> None:
    # CPU results stay those of torch's default (foreach/for-loop) implementation
    assert not _one_step("cpu", cls).param_groups[0].get("fused")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adam_is_fused_on_cuda() -> None:
    assert _one_step("cuda", torch.optim.Adam).param_groups[0]["fused"] is True
    assert _one_step("cuda", torch.optim.AdamW).param_groups[0]["fused"] is True
    assert not _one_step("cuda", torch.optim.SGD).param_groups[0].get("fused")
