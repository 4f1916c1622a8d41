"""Benchmark: HaloAE's SSIM (centred float32, depthwise window) against 2 x 11 shifted sums.

Run as `python bench/ssim.py [--device cuda]`; times forward + backward of the feature SSIM at the
demo and paper shapes side by side and writes bench/results/ssim_<device>.md. The shifted-sum
filter here is the first implementation anobench used (float32, elementwise); the GPU cost
model (bench/costmodel.py) reuses it to price the step as it was when speed_h100.md was measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from publish import publish  # noqa: E402  (bench/publish.py)
from torch import Tensor

from anobench.methods import haloae
from anobench.methods.ops import gaussian_kernel1d

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "demo features (48 px)": (2, 704, 12, 12),
    "demo image (48 px)": (2, 3, 48, 48),
    "paper features (256 px)": (4, 704, 64, 64),
    "paper image (256 px)": (4, 3, 256, 256),
}


def shifted_sum_filter(maps: Tensor, taps: Tensor) -> Tensor:
    """The previous filter: separable zero-padded window as shifted sums in float32."""
    weights, pad, (height, width) = taps.tolist(), len(taps) // 2, maps.shape[-2:]
    padded = F.pad(maps, (pad, pad, 0, 0))
    maps = sum(t * padded[..., :, i : i + width] for i, t in enumerate(weights))
    padded = F.pad(maps, (0, 0, pad, pad))
    return sum(t * padded[..., i : i + height, :] for i, t in enumerate(weights))


def ssim_with(filter_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def ssim(a: Tensor, b: Tensor) -> Tensor:
        taps = gaussian_kernel1d(1.5, 11)
        mu_a, mu_b, aa, bb, ab = filter_fn(torch.stack([a, b, a * a, b * b, a * b]), taps)
        var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        return (num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()

    return ssim


def time_step(ssim: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor, repeat: int) -> float:
    """Best wall time of forward + backward over `repeat` runs (after one warm-up)."""
    best = float("inf")
    for attempt in range(repeat + 1):
        b.grad = None
        if a.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        ssim(a, b).backward()
        if a.is_cuda:
            torch.cuda.synchronize()
        if attempt:
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    out = args.out or ROOT / "bench" / "results" / f"ssim_{device.type}.md"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    rows = []
    for label, shape in SHAPES.items():
        generator = torch.Generator().manual_seed(0)
        a = torch.rand(shape, generator=generator).to(device)
        b = (a + 0.1 * torch.randn(shape, generator=generator).to(device)).requires_grad_()
        timings, values = [], []
        for ssim in (ssim_with(shifted_sum_filter), haloae.ssim):
            timings.append(time_step(ssim, a, b, args.repeat))
            values.append(ssim(a, b).item())
        rows.append(
            f"| {label} | {list(shape)} | {1e3 * timings[0]:.1f} | {1e3 * timings[1]:.1f} | "
            f"**{timings[0] / timings[1]:.1f}x** | {abs(values[0] - values[1]):.1e} |"
        )
    lines = [
        f"# HaloAE SSIM: depthwise window vs shifted sums ({device.type})",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {name}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        f"- command: `python bench/ssim.py --device {args.device} --repeat {args.repeat}`",
        "- forward + backward of 1 - SSIM (11-tap Gaussian, sigma 1.5, zero padding) on one "
        "batch, best of the repeats; the training loss takes it on the features and the image",
        "",
        "| input | shape | shifted sums ms | depthwise (anobench) ms | speed-up "
        "| abs diff of SSIM |",
        "|:--|:--|--:|--:|--:|--:|",
        *rows,
        "",
    ]
    publish("\n".join(lines), out)


if __name__ == "__main__":
    main()
