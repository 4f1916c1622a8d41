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


# OpenCV's getGaussianKernel: for sigma <= 0 and these sizes it returns fixed taps, not a
# sampled Gaussian (OpenCV 4's table; OpenCV 5 adds one for size 9)
OPENCV_SMALL_KERNELS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}
PADDING_MODES = ("reflect", "symmetric", "replicate", "zeros")


def opencv_gaussian_kernel1d(
    kernel_size: int, sigma: float = 0.0, device: torch.device | str | None = None
) -> Tensor:
    """The taps of cv2.getGaussianKernel(kernel_size, sigma), which cv2.GaussianBlur uses.

    sigma <= 0: the fixed taps above for sizes 1-7, else sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8.
    """
    if sigma <= 0 and kernel_size in OPENCV_SMALL_KERNELS:
        return torch.tensor(OPENCV_SMALL_KERNELS[kernel_size], device=device)
    if sigma <= 0:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    return gaussian_kernel1d(sigma, kernel_size, device=device)


def _symmetric_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Indices of a length-`size` axis padded by `pad` as scipy's `reflect` (d c b a | a b c d)."""
    index = torch.arange(-pad, size + pad, device=device).remainder(2 * size)
    return torch.where(index < size, index, 2 * size - 1 - index)


def pad_maps(maps: Tensor, pad: int, padding_mode: str) -> Tensor:
    """Pad the last two axes of [B, 1, H, W] by `pad` on every side.

    Modes: `reflect` = torch's and OpenCV's BORDER_REFLECT_101 = scipy's `mirror` (d c b | a b c d),
    `symmetric` = scipy's `reflect` (d c b a | a b c d, the edge pixel repeated), `replicate`,
    `zeros`. `reflect` needs pad < size; smaller maps fall back to `replicate`.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode {padding_mode!r} is not one of {PADDING_MODES}")
    if pad == 0:
        return maps
    if padding_mode == "symmetric":
        rows = _symmetric_index(maps.shape[-2], pad, maps.device)
        cols = _symmetric_index(maps.shape[-1], pad, maps.device)
        return maps.index_select(-2, rows).index_select(-1, cols)
    if padding_mode == "zeros":
        return F.pad(maps, (pad, pad, pad, pad))
    mode = padding_mode if min(maps.shape[-2:]) > pad else "replicate"
    return F.pad(maps, (pad, pad, pad, pad), mode=mode)


def separable_blur(maps: Tensor, taps: Tensor, padding_mode: str = "reflect") -> Tensor:
    """Filter maps [B, H, W] with the 1-D `taps` along rows and columns; float32, same size out."""
    size = taps.numel()
    out = pad_maps(maps.float().unsqueeze(1), size // 2, padding_mode)
    taps = taps.to(device=out.device, dtype=out.dtype)
    out = F.conv2d(out, taps.view(1, 1, 1, size))
    out = F.conv2d(out, taps.view(1, 1, size, 1))
    return out.squeeze(1)


def gaussian_blur(
    maps: Tensor, sigma: float, kernel_size: int | None = None, padding_mode: str = "reflect"
) -> Tensor:
    """Separable Gaussian blur of maps [B, H, W] (float32), same size out; sigma <= 0: unchanged.

    The kernel has scipy's size 2 * round(4 sigma) + 1 unless given; see pad_maps for the borders.
    """
    if sigma <= 0:
        return maps
    return separable_blur(
        maps, gaussian_kernel1d(sigma, kernel_size, device=maps.device), padding_mode
    )


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
