"""What a method costs: parameters, FLOPs per image, per-image latency."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from anobench.hardware import Hardware
from anobench.methods import Method


def count_parameters(method: Method) -> tuple[int, int]:
    """(trainable, total) parameters over every nn.Module the method holds."""
    modules = [value for value in vars(method).values() if isinstance(value, nn.Module)]
    params = {id(p): p for module in modules for p in module.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total


def gflops_per_image(method: Method, image: Tensor) -> float:
    """FLOPs of one `predict` on one image [1, 3, H, W], counted by torch's FLOP counter."""
    counter = FlopCounterMode(display=False)
    with counter:
        method.predict(image)
    return counter.get_total_flops() / 1e9


def latency_ms(
    method: Method, image: Tensor, hardware: Hardware, warmup: int = 3, repeats: int = 20
) -> tuple[float, float]:
    """(p50, p95) milliseconds of `predict` on one image, after warm-up, GPU synchronised."""
    for _ in range(warmup):
        method.predict(image)
    hardware.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method.predict(image)
        hardware.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    p50, p95 = np.percentile(times, [50, 95])
    return float(p50), float(p95)


@torch.no_grad()
def measure_inference(
    method: Method, image: Tensor, hardware: Hardware, repeats: int = 20
) -> dict[str, float]:
    """GFLOPs and latency percentiles of one image, as cost fields of a record."""
    p50, p95 = latency_ms(method, image, hardware, repeats=repeats)
    return {
        "gflops_per_image": gflops_per_image(method, image),
        "latency_ms_p50": p50,
        "latency_ms_p95": p95,
    }
