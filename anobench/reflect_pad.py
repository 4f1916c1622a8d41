"""Reflection padding that keeps channels-last maps channels-last.

ATen's CUDA reflection padding (ReflectionPad.cu) makes its input NCHW-contiguous and writes an
NCHW output, so on the channels-last maps of `hardware=gpu` every call copies the input to NCHW
and the next convolution copies the output back (its backward: the same again and a zero fill).
Here the border rows and columns are concatenated around the map (cat keeps the input's layout)
and the backward folds the reflected gradient rows back with two thin in-place additions per
side. Same values as F.pad(mode="reflect").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _pad(x: Tensor, pad: int, dim: int) -> Tensor:
    """Reflect-pad one dimension by `pad` (the edge itself is not repeated)."""
    if pad == 0:
        return x
    size = x.shape[dim]
    head, tail = x.narrow(dim, 1, pad), x.narrow(dim, size - 1 - pad, pad)
    if pad > 1:
        head, tail = head.flip(dim), tail.flip(dim)
    return torch.cat([head, x, tail], dim)


def _unpad(grad: Tensor, pad: int, dim: int) -> Tensor:
    """The gradient of `_pad`: the centre, plus each reflected border added where it came from."""
    if pad == 0:
        return grad
    size = grad.shape[dim] - 2 * pad
    out = grad.narrow(dim, pad, size).clone(memory_format=torch.preserve_format)
    head, tail = grad.narrow(dim, 0, pad), grad.narrow(dim, size + pad, pad)
    if pad > 1:
        head, tail = head.flip(dim), tail.flip(dim)
    out.narrow(dim, 1, pad).add_(head)
    out.narrow(dim, size - 1 - pad, pad).add_(tail)
    return out


class _ReflectPad2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, pad_h: int, pad_w: int) -> Tensor:
        ctx.pads = (pad_h, pad_w)
        return _pad(_pad(x, pad_h, -2), pad_w, -1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        pad_h, pad_w = ctx.pads
        return _unpad(_unpad(grad, pad_w, -1), pad_h, -2), None, None


def reflect_pad2d(x: Tensor, padding: tuple[int, int]) -> Tensor:
    """F.pad(x, (w, w, h, h), mode="reflect") for maps [..., H, W], layout kept."""
    pad_h, pad_w = padding
    if pad_h >= x.shape[-2] or pad_w >= x.shape[-1]:
        raise ValueError(f"reflection padding {padding} needs a larger map than {x.shape}")
    return _ReflectPad2d.apply(x, pad_h, pad_w)


class ReflectionPad2d(nn.Module):
    """nn.ReflectionPad2d(padding) for an int padding, keeping channels-last maps so."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return reflect_pad2d(x, (self.padding, self.padding))
