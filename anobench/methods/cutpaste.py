"""Batched colour jitter and Cut&Paste (normal and scar) on device tensors.

CutPaste: Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization",
CVPR 2021, arXiv 2104.04015; the variant HaloAE uses is the authors' `dataset/cutpaste.py`.
Every random draw comes from torch's global RNG on the images' device (one call per batch, no
host-device sync), so training stays reproducible and resumable through training.py's checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


@dataclass
class CutPasteBatch:
    images: Tensor  # [3B, 3, H, W]: originals, CutPaste-normal, CutPaste-scar
    labels: Tensor  # [3B] long: 0 original, 1 pasted
    masks: Tensor  # [3B, H, W] bool: the pasted pixels


def _uniform(low: float, high: float, n: int, device: torch.device) -> Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _rgb_to_hsv(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)
    value, _ = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, 1.0), 0.0)
    return torch.stack([hue, saturation, value], dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    hue, saturation, value = (t.unsqueeze(1) for t in hsv.unbind(dim=1))
    # [5, 3, 1], made on the device (a tensor from a Python list would be a blocking copy)
    n = torch.arange(5.0, 0.0, -2.0, device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + hue * 6.0, 6.0)
    return value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(images: Tensor, strength: float, region: Tensor | None = None) -> Tensor:
    """torchvision's ColorJitter(b=c=s=h=strength) with independent factors per image.

    Args:
        images: [B, 3, H, W] in [0, 1].
        region: optional [B, 1, H, W] mask; contrast then blends towards the mean grey of that
            region (the cut patch), as jittering the cropped patch does.
    """
    if strength <= 0:
        return images
    batch, device = images.shape[0], images.device
    low = max(0.0, 1.0 - strength)
    factors = {
        "brightness": _uniform(low, 1.0 + strength, batch, device).view(-1, 1, 1, 1),
        "contrast": _uniform(low, 1.0 + strength, batch, device).view(-1, 1, 1, 1),
        "saturation": _uniform(low, 1.0 + strength, batch, device).view(-1, 1, 1, 1),
        "hue": _uniform(-min(strength, 0.5), min(strength, 0.5), batch, device).view(-1, 1, 1),
    }
    if order_on_device():
        return _jitter_in_device_order(images, factors, region)
    # torchvision draws a random order per call; one order per batch, drawn on the CPU (eager:
    # no device sync, and the order chooses which kernels run)
    for index in torch.randperm(4).tolist():
        images = _jitter_one(images, JITTERS[index], factors[JITTERS[index]], region)
    return images


JITTERS = ("brightness", "contrast", "saturation", "hue")


def order_on_device() -> bool:
    """Whether the jitter order is drawn on the device: when compiling (one graph, no sync)."""
    return torch.compiler.is_compiling()


def _jitter_one(images: Tensor, name: str, factor: Tensor, region: Tensor | None) -> Tensor:
    """One of ColorJitter's four adjustments with per-image factors."""
    if name == "brightness":
        return (images * factor).clamp(0.0, 1.0)
    if name == "contrast":
        gray = _gray(images)
        if region is None:
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        else:
            weight = region.to(images.dtype)
            mean = (gray * weight).sum(dim=(1, 2, 3), keepdim=True) / weight.sum(
                dim=(1, 2, 3), keepdim=True
            ).clamp_min(1.0)
        return (factor * images + (1 - factor) * mean).clamp(0.0, 1.0)
    if name == "saturation":
        return (factor * images + (1 - factor) * _gray(images)).clamp(0.0, 1.0)
    hsv = _rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + factor, 1.0)
    return _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def _jitter_in_device_order(
    images: Tensor, factors: dict[str, Tensor], region: Tensor | None
) -> Tensor:
    """The four adjustments in an order drawn on the images' device, chosen by selection.

    For a compiled step and a CUDA graph: the order stays a device tensor (no host sync, and a
    replayed graph draws a new one), each position computes all four adjustments and keeps the
    drawn one; Inductor fuses that into a few kernels. The same generator as the eager path on
    a CPU, so the same order and numbers there.
    """
    order = torch.randperm(4, device=images.device)
    for position in range(4):
        chosen = images
        for index, name in enumerate(JITTERS):
            adjusted = _jitter_one(images, name, factors[name], region)
            chosen = torch.where(order[position] == index, adjusted, chosen)
        images = chosen
    return images


def _grid(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    return ys, xs


def _in_box(ys: Tensor, xs: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor) -> Tensor:
    top, left, h, w = (t.view(-1, 1, 1) for t in (top, left, h, w))
    return (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)  # [B, H, W]


def _paste(images: Tensor, source: Tensor, src_y: Tensor, src_x: Tensor, mask: Tensor) -> Tensor:
    """Copy source[b, :, src_y, src_x] into images where mask (all maps [B, H, W])."""
    batch, channels, height, width = images.shape
    index = (src_y.clamp(0, height - 1) * width + src_x.clamp(0, width - 1)).long()
    index = index.view(batch, 1, -1).expand(-1, channels, -1)
    moved = source.flatten(2).gather(2, index).view_as(images)
    return torch.where(mask[:, None], moved, images)


def cutpaste_normal(
    images: Tensor, area_ratio: tuple[float, float], aspect_ratio: float, jitter: float
) -> tuple[Tensor, Tensor]:
    """Copy a jittered rectangle of each image elsewhere in it; returns (images, pasted mask).

    Area is a uniform fraction of the image, the aspect ratio log-uniform in
    [aspect_ratio, 1/aspect_ratio] (cutpaste.py: CutPasteNormal).
    """
    batch, _, height, width = images.shape
    device = images.device
    area = _uniform(area_ratio[0], area_ratio[1], batch, device) * height * width
    log_low, log_high = math.log(aspect_ratio), math.log(1.0 / aspect_ratio)
    aspect = torch.exp(_uniform(log_low, log_high, batch, device))
    cut_w = torch.round(torch.sqrt(area * aspect)).clamp(1, width)
    cut_h = torch.round(torch.sqrt(area / aspect)).clamp(1, height)
    coords = torch.rand(4, batch, device=device)
    src_y, src_x = (
        torch.floor(coords[0] * (height - cut_h)),
        torch.floor(coords[1] * (width - cut_w)),
    )
    dst_y, dst_x = (
        torch.floor(coords[2] * (height - cut_h)),
        torch.floor(coords[3] * (width - cut_w)),
    )
    ys, xs = _grid(height, width, device)
    source = _in_box(ys, xs, src_y, src_x, cut_h, cut_w)
    mask = _in_box(ys, xs, dst_y, dst_x, cut_h, cut_w)
    jittered = color_jitter(images, jitter, region=source[:, None])
    shift_y, shift_x = (src_y - dst_y).view(-1, 1, 1), (src_x - dst_x).view(-1, 1, 1)
    return _paste(images, jittered, ys + shift_y, xs + shift_x, mask), mask


def cutpaste_scar(
    images: Tensor,
    width_range: tuple[float, float],
    height_range: tuple[float, float],
    max_rotation: float,
    jitter: float,
) -> tuple[Tensor, Tensor]:
    """Copy a thin jittered rectangle, rotated, elsewhere (cutpaste.py: CutPasteScar).

    Sizes are in pixels of the image; the rotated patch lies wholly inside the image and is
    sampled with nearest neighbour, as PIL's rotate(expand=True) does.
    """
    batch, _, height, width = images.shape
    device = images.device
    cut_w = torch.round(_uniform(*width_range, batch, device)).clamp(1, width)
    cut_h = torch.round(_uniform(*height_range, batch, device)).clamp(1, height)
    coords = torch.rand(4, batch, device=device)
    src_y, src_x = (
        torch.floor(coords[0] * (height - cut_h)),
        torch.floor(coords[1] * (width - cut_w)),
    )
    angle = _uniform(-max_rotation, max_rotation, batch, device) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    half_x = (cut_w * cos.abs() + cut_h * sin.abs()) / 2  # half extent of the rotated box
    half_y = (cut_w * sin.abs() + cut_h * cos.abs()) / 2
    center_y = half_y + coords[2] * (height - 2 * half_y).clamp_min(0)
    center_x = half_x + coords[3] * (width - 2 * half_x).clamp_min(0)
    ys, xs = _grid(height, width, device)
    dy, dx = ys + 0.5 - center_y.view(-1, 1, 1), xs + 0.5 - center_x.view(-1, 1, 1)
    cos, sin = cos.view(-1, 1, 1), sin.view(-1, 1, 1)
    patch_x = cos * dx + sin * dy + cut_w.view(-1, 1, 1) / 2  # position inside the upright patch
    patch_y = -sin * dx + cos * dy + cut_h.view(-1, 1, 1) / 2
    mask = (patch_x >= 0) & (patch_x < cut_w.view(-1, 1, 1))
    mask &= (patch_y >= 0) & (patch_y < cut_h.view(-1, 1, 1))
    source = _in_box(ys, xs, src_y, src_x, cut_h, cut_w)
    jittered = color_jitter(images, jitter, region=source[:, None])
    sample_y = src_y.view(-1, 1, 1) + torch.floor(patch_y)
    sample_x = src_x.view(-1, 1, 1) + torch.floor(patch_x)
    return _paste(images, jittered, sample_y, sample_x, mask), mask


def cutpaste_3way(
    images: Tensor,
    *,
    area_ratio: tuple[float, float],
    aspect_ratio: float,
    scar_width: tuple[float, float],
    scar_height: tuple[float, float],
    scar_rotation: float,
    jitter: float,
) -> CutPasteBatch:
    """Originals, CutPaste-normal and CutPaste-scar of each image (cutpaste.py: CutPaste3Way)."""
    normal, normal_mask = cutpaste_normal(images, area_ratio, aspect_ratio, jitter)
    scar, scar_mask = cutpaste_scar(images, scar_width, scar_height, scar_rotation, jitter)
    batch = images.shape[0]
    labels = torch.ones(3 * batch, dtype=torch.long, device=images.device)
    labels[:batch] = 0
    masks = torch.cat([torch.zeros_like(normal_mask), normal_mask, scar_mask])
    return CutPasteBatch(torch.cat([images, normal, scar]), labels, masks)
