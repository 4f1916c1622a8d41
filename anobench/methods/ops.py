"""Small tensor operations shared by methods: input normalisation, map blurring and resizing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(images - mean) / std per channel; images [B, 3, H, W]."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def imagenet_normalize(images: Tensor) -> Tensor:
    return normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def gaussian_kernel1d(
    sigma: float,
    kernel_size: int | None = None,
    truncate: float = 4.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A normalised 1-D Gaussian; size 2*round(truncate*sigma)+1 unless given (scipy's rule)."""
    if kernel_size is None:
        kernel_size = 2 * int(truncate * sigma + 0.5) + 1
    x = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(
    maps: Tensor, sigma: float, kernel_size: int | None = None, padding_mode: str = "reflect"
) -> Tensor:
    """Separable Gaussian blur of maps [B, H, W] (float32), same size out."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, kernel_size, device=maps.device)
    size = kernel.numel()
    pad = size // 2
    out = maps.float().unsqueeze(1)
    # reflect padding needs pad < size; fall back to replicate for tiny maps
    mode = padding_mode if min(out.shape[-2:]) > pad else "replicate"
    if mode == "zeros":
        out = F.pad(out, (pad, pad, pad, pad))
    else:
        out = F.pad(out, (pad, pad, pad, pad), mode=mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, size))
    out = F.conv2d(out, kernel.view(1, 1, size, 1))
    return out.squeeze(1)


def resize_maps(
    maps: Tensor, size: int, mode: str = "bilinear", align_corners: bool | None = False
) -> Tensor:
    """Resize maps [B, h, w] to [B, size, size]."""
    if maps.shape[-2:] == (size, size):
        return maps
    kwargs = {"align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps.unsqueeze(1), size=(size, size), mode=mode, **kwargs).squeeze(1)


def chunked_min_distance(queries: Tensor, bank: Tensor, chunk: int = 4096) -> Tensor:
    """Euclidean distance of each query row to its nearest bank row, in chunks to bound memory."""
    out = torch.empty(queries.shape[0], device=queries.device, dtype=torch.float32)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk].float()
        best = torch.full((block.shape[0],), math.inf, device=queries.device)
        for bstart in range(0, bank.shape[0], 65536):
            distances = torch.cdist(block, bank[bstart : bstart + 65536].float())
            best = torch.minimum(best, distances.min(dim=1).values)
        out[start : start + chunk] = best
    return out
