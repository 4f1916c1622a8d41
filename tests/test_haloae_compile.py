"""HaloAE's training loss compiled whole (hardware.compile=true): one graph, eager's numbers."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from anobench.hardware import create_hardware  # noqa: E402
from anobench.methods import haloae  # noqa: E402
from anobench.methods.base import MethodContext  # noqa: E402
from anobench.methods.cutpaste import JITTERS, _jitter_in_device_order, _jitter_one  # noqa: E402
from anobench.methods.haloae import HaloAE, HaloAEConfig  # noqa: E402
from tests.helpers import HALOAE_NARROW_32PX as NARROW  # noqa: E402
from tests.helpers import HALOAE_VGG as VGG  # noqa: E402


@pytest.mark.parametrize("with_region", [False, True])
def test_jitter_in_device_order_equals_the_host_order(with_region: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=generator)
    region = torch.rand(3, 1, 16, 16, generator=generator) > 0.5 if with_region else None
    factors = {
        name: 0.8 + 0.4 * torch.rand(3, 1, 1, 1, generator=generator) for name in JITTERS[:3]
    }
    factors["hue"] = 0.2 * torch.rand(3, 1, 1, generator=generator) - 0.1
    orders = set()
    for seed in range(6):
        torch.manual_seed(seed)
        order = torch.randperm(4).tolist()
        orders.add(tuple(order))
        expected = images
        for index in order:
            expected = _jitter_one(expected, JITTERS[index], factors[JITTERS[index]], region)
        torch.manual_seed(seed)  # the device draw on a CPU uses the same generator
        assert torch.equal(_jitter_in_device_order(images, factors, region), expected)
    assert len(orders) > 1  # the order matters and was varied


@pytest.mark.usefixtures("one_torch_thread")
def test_compiled_loss_is_one_graph_with_eager_numbers() -> None:
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward as
    Inductor would receive them (Inductor itself: bench/gpumodel/inductor_check.py)."""
    torch.manual_seed(0)
    cfg = HaloAEConfig(**NARROW)  # type: ignore[arg-type]
    hardware = create_hardware("cpu")
    method = HaloAE(cfg, MethodContext(hardware=hardware, backbone=VGG, progress=False))
    method.train_images = torch.rand(5, 3, 32, 32)
    index = torch.tensor([4, 0, 2, 1])
    weights = [0.5, 0.3, 0.2]
    params = list(method.net.parameters())
    compiled = torch.compile(method.weighted_loss, backend="aot_eager", fullgraph=True)

    def step(loss_fn: object, weights: object) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        torch.manual_seed(3)
        loss = loss_fn(index, weights)  # type: ignore[operator]
        return loss, torch.autograd.grad(loss, params)

    loss, grads = step(method.weighted_loss, weights)
    compiled_loss, compiled_grads = step(compiled, torch.tensor(weights))
    assert compiled_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    for grad, compiled_grad in zip(grads, compiled_grads, strict=True):
        scale = grad.abs().max().item()
        torch.testing.assert_close(compiled_grad, grad, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.usefixtures("one_torch_thread")
def test_compiled_training_loss_compiles_once_for_all_epochs() -> None:
    """hardware.compile=true: loss() hands the epoch's weights as a device tensor, so a new
    epoch reuses the graph; the values are the eager loss's with that epoch's weights."""
    torch.manual_seed(0)
    cfg = HaloAEConfig(**NARROW)  # type: ignore[arg-type]
    hardware = create_hardware("cpu", compile=True)
    method = HaloAE(cfg, MethodContext(hardware=hardware, backbone=VGG, progress=False))
    method.forward = method.net  # the network's own Inductor compile is not under test here
    method.train_images = torch.rand(5, 3, 32, 32)
    graphs = []

    def counting_backend(graph: torch.fx.GraphModule, _: list) -> object:
        graphs.append(graph)
        return graph.forward

    method._compiled_loss = torch.compile(
        method.weighted_loss, backend=counting_backend, dynamic=False, fullgraph=True
    )
    index = torch.tensor([4, 0, 2, 1])
    schedules = [cfg.ce_schedule, cfg.feature_schedule, cfg.image_schedule]
    for epoch in (0, 120, 250):
        torch.manual_seed(epoch)
        with torch.no_grad():
            compiled = method.loss(index, epoch)
        torch.manual_seed(epoch)
        with torch.no_grad():
            eager = method.weighted_loss(index, haloae.loss_weights(epoch, schedules))
        assert compiled.item() == pytest.approx(eager.item(), rel=1e-6)
    assert len(graphs) == 1
