"""Host time per dispatched op, measured on this CPU with a step whose kernels cost ~nothing.

ST-MAE's network (12 + 8 transformer blocks, the paper's depth) at widths of 8 on a 2-image
batch, under bf16 autocast with fused AdamW, one thread: the wall time of its forward and of
its backward + optimizer step over the number of kernel-launching ops is what eager PyTorch
costs the host per op (Python, dispatcher, autocast, autograd, the tiny CPU kernel standing in
for a launch). gpu.Calibration's host costs are a multiple of this (see bench/results).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from anobench.methods.stmae import SiameseTransitionMAE, random_split, stmae_loss
from bench.gpumodel.trace import OpTracer


@dataclass(frozen=True)
class HostCost:
    forward_us: float  # wall time of the forward over its kernel ops (views included)
    backward_us: float  # the same for backward + optimizer step
    forward_ops: int
    backward_ops: int


def measure_host_cost(repeats: int = 20) -> HostCost:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = SiameseTransitionMAE(8, 8, 4, 8, 12, 2, 8, 8, 2)
        optimizer = torch.optim.AdamW(net.parameters(), fused=True)
        features, order = torch.randn(2, 8, 8, 8), random_split(2, 4)

        def forward() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return stmae_loss(net(features, order), features, 5.0, "sample", 4)

        def backward(loss: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(3):
            backward(forward())
        tracers = OpTracer(), OpTracer()
        with tracers[0]:
            loss = forward()
        with tracers[1]:
            backward(loss)
        counts = [sum(r.kernels > 0 for r in t.records) for t in tracers]
        best = [float("inf"), float("inf")]
        for _ in range(repeats):
            start = time.perf_counter()
            loss = forward()
            middle = time.perf_counter()
            backward(loss)
            end = time.perf_counter()
            best = [min(best[0], middle - start), min(best[1], end - middle)]
        return HostCost(1e6 * best[0] / counts[0], 1e6 * best[1] / counts[1], *counts)
    finally:
        torch.set_num_threads(threads)
