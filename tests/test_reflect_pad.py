"""Layout-keeping reflection padding: F.pad(mode="reflect")'s values and gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anobench.backbones import BackboneConfig, create_model
from anobench.reflect_pad import ReflectionPad2d, reflect_pad2d
from bench.gpumodel.trace import OpTracer


@pytest.mark.parametrize("padding", [(1, 1), (2, 3), (0, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_equal_torch_reflection_padding(
    padding: tuple[int, int], channels_last: bool
) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ours = reflect_pad2d(x, padding)
    reference = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode="reflect")
    assert torch.equal(ours, reference)
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(reference)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    (reference_grad,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-12, atol=1e-12)


def test_module_is_a_drop_in_for_nn_reflection_pad_without_the_nchw_kernel() -> None:
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    assert torch.equal(ReflectionPad2d(1)(x), torch.nn.ReflectionPad2d(1)(x))
    tracer = OpTracer()
    with tracer:
        ReflectionPad2d(1)(x)
    assert not any("reflection_pad" in record.name for record in tracer.records)
    with pytest.raises(ValueError, match="larger map"):
        reflect_pad2d(torch.randn(1, 1, 2, 2), (2, 2))


def test_reflect_padded_backbone_equals_torch_padding_mode_reflect() -> None:
    cfg = BackboneConfig(name="resnet18", layers=["layer1"], pretrained=False)
    torch.manual_seed(0)
    reference = create_model(cfg)
    for module in reference.modules():
        if isinstance(module, torch.nn.Conv2d) and module.padding != (0, 0):
            module.padding_mode = "reflect"  # torch's own (NCHW kernel on CUDA)
    ours = create_model(replace(cfg, padding_mode="reflect"))
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=1e-6, atol=1e-6)
