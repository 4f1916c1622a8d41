"""Convolutions whose channel counts are padded to multiples of 8 while they compute.

Tensor-core convolutions in 16-bit types want input and output channels that are multiples of
8 (16-byte rows); HaloAE's paper widths (234, 117, 58, 29, 237, 703, 380, 190, 95, ...) are
not, so cuDNN falls back to slower kernels. These layers keep the paper's parameters (same
shapes, same state_dict) and, when the convolution runs in a 16-bit type, compute with
zero-padded weights and inputs and drop the padded output channels: the extra channels hold
zeros and add zeros, so the result is the same convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGNMENT = 8
HALF_TYPES = (torch.bfloat16, torch.float16)


def runs_in_half(x: Tensor) -> bool:
    """True when a convolution of x computes in a 16-bit type (x itself or autocast's)."""
    if x.dtype in HALF_TYPES:
        return True
    device = x.device.type
    return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) in HALF_TYPES


def _pad_channels(x: Tensor, extra: int) -> Tensor:
    """x [B, C, H, W] -> [B, C + extra, H, W] with zero channels appended."""
    return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x


def _pad_dims(weight: Tensor, first: int, second: int) -> Tensor:
    """Zero-pad a weight's first two dimensions by `first` and `second`."""
    return F.pad(weight, (0, 0, 0, 0, 0, second, 0, first)) if first or second else weight


def _keep(out: Tensor, channels: int) -> Tensor:
    """The first `channels` channels of out, dense again (in out's memory format)."""
    if out.shape[1] == channels:
        return out
    dense = (
        torch.channels_last
        if out.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return out[:, :channels].contiguous(memory_format=dense)


class AlignedConv2d(nn.Conv2d):
    """nn.Conv2d computing on channel counts padded to multiples of 8 (in 16-bit types)."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        extra_in, extra_out = -self.in_channels % ALIGNMENT, -self.out_channels % ALIGNMENT
        if self.groups != 1 or not (extra_in or extra_out) or not runs_in_half(x):
            return super()._conv_forward(x, weight, bias)
        weight = _pad_dims(weight, extra_out, extra_in)  # [out, in, kh, kw]
        bias = F.pad(bias, (0, extra_out)) if bias is not None and extra_out else bias
        out = super()._conv_forward(_pad_channels(x, extra_in), weight, bias)
        return _keep(out, self.out_channels)


class AlignedConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computing on channel counts padded to multiples of 8 (in 16-bit
    types)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        extra_in, extra_out = -self.in_channels % ALIGNMENT, -self.out_channels % ALIGNMENT
        if self.groups != 1 or not (extra_in or extra_out) or not runs_in_half(x):
            return super().forward(x, output_size)
        output_padding = self._output_padding(
            x,
            output_size,
            list(self.stride),
            list(self.padding),
            list(self.kernel_size),
            2,
            list(self.dilation),
        )
        weight = _pad_dims(self.weight, extra_in, extra_out)  # [in, out, kh, kw]
        bias = self.bias
        if bias is not None and extra_out:
            bias = F.pad(bias, (0, extra_out))
        out = F.conv_transpose2d(
            _pad_channels(x, extra_in),
            weight,
            bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )
        return _keep(out, self.out_channels)
