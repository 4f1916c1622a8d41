"""Channel-aligned convolutions: the same convolution, on channel counts padded to 8."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from anobench.methods import aligned_conv
from anobench.methods.aligned_conv import AlignedConv2d, AlignedConvTranspose2d
from anobench.methods.haloae import HaloAEConfig, HaloAENet
from bench.gpumodel.autocast import cuda_autocast
from bench.gpumodel.trace import OpTracer

CASES = [
    (nn.Conv2d, AlignedConv2d, {"kernel_size": 3, "padding": 1}),
    (nn.Conv2d, AlignedConv2d, {"kernel_size": 5, "bias": False}),
    (nn.ConvTranspose2d, AlignedConvTranspose2d, {"kernel_size": 3, "padding": 1}),
    (nn.ConvTranspose2d, AlignedConvTranspose2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
]


@pytest.mark.parametrize(("plain_cls", "aligned_cls", "kwargs"), CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_padded_channels_give_the_same_convolution_and_gradients(
    plain_cls: type[nn.Module],
    aligned_cls: type[nn.Module],
    kwargs: dict,
    channels_last: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    plain = plain_cls(13, 29, **kwargs)
    aligned = aligned_cls(13, 29, **kwargs)
    aligned.load_state_dict(plain.state_dict())  # the paper's parameters, unchanged
    x = torch.randn(2, 13, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    monkeypatch.setattr(aligned_conv, "runs_in_half", lambda _x: True)  # pad in float32 too
    out, reference = aligned(x), plain(x)
    assert out.shape == reference.shape == (2, 29, *reference.shape[-2:])
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *aligned.parameters()], grad)
    reference_grads = torch.autograd.grad(reference, [x, *plain.parameters()], grad)
    for new, old in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


def test_only_16_bit_convolutions_are_padded() -> None:
    conv = AlignedConv2d(13, 29, 3)
    x = torch.randn(1, 13, 8, 8)
    for context, aligned in ((contextlib.nullcontext(), False), (cuda_autocast(), True)):
        tracer = OpTracer()
        with tracer, context:
            conv(x)
        record = next(r for r in tracer.records if r.name == "convolution")
        assert record.aligned is aligned
        assert record.gemms[0][2] == (32 if aligned else 29)  # output channels computed


def test_haloae_convolutions_all_run_aligned_under_bf16() -> None:
    cfg = HaloAEConfig(
        image_size=48,
        block_size=2,
        stem_channels=13,
        encoder_channels=[13, 7],
        encoder_heads=[2, 2],
        encoder_kernels=[3, 5],
        decoder_widths=[7, 13],
        decoder_channels=[9, 704],
        decoder_heads=[2, 2],
        decoder_kernels=[3, 1],
        image_decoder_channels=[11, 3],
        dim_head=4,
    )
    net = HaloAENet(cfg, 704)
    tracer = OpTracer()
    with tracer, cuda_autocast():
        logits, _, image = net(torch.randn(2, 704, 12, 12))
    convs = [r for r in tracer.records if r.name == "convolution"]
    assert len(convs) == 14 and all(r.aligned for r in convs)  # stem, 5 + 6 in stages, 2
    assert image.shape == (2, 3, 48, 48) and logits.shape == (2, 2)
