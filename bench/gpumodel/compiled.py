"""HaloAE as `hardware.compile=true` runs it: its time budget, the attention-as-bias variant,
and the floor a step cannot go below at the calibrated efficiencies (bench/results/model_*.md).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

from bench.gpumodel.gpu import (
    Calibration,
    GPUSpec,
    hidden_layout_work,
    kernel_seconds,
    launches,
    simulate,
)
from bench.gpumodel.trace import ATTENTION_BACKWARD_OPS, ATTENTION_OPS, OpRecord

BUDGET_KINDS = ("conv", "attention", "gemm", "memory-bound")
BIAS_BYTES = 2  # a bf16 bias


def budget(ops: Sequence[OpRecord], gpu: GPUSpec, cal: Calibration) -> dict[str, list[float]]:
    """Device seconds and kernels per kind of work (the optimizer counts as memory-bound)."""
    parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for op in ops:
        if op.kind == "marker":
            continue
        kind = "memory-bound" if op.kind in ("memory", "optimizer") else op.kind
        if hidden_layout_work(op)[0]:
            kind = "memory-bound"
        parts[kind][0] += kernel_seconds(op, gpu, cal)
        parts[kind][1] += launches(op)
    return parts


def _with_head(record: OpRecord, width: float, head: float, bias: float) -> OpRecord:
    """An attention record recomputed at head size `head` (was `width`) reading `bias` bytes
    (and, backward, writing its gradient)."""
    ratio = head / width
    gemms = [  # [batch, m, n, k]: the head size is n (P V) or k (Q K^T)
        [batch, m, head if n == width else n, head if k == width else k]
        for batch, m, n, k in record.gemms
    ]
    backward = record.name in ATTENTION_BACKWARD_OPS
    return dataclasses.replace(
        record,
        name=record.name + " (bias)",
        flops=record.flops * ratio,
        gemms=gemms,
        bytes_read=record.bytes_read * ratio + bias,
        bytes_written=record.bytes_written * ratio + (bias if backward else 0.0),
    )


def attention_as_bias(ops: Sequence[OpRecord], head: int) -> list[OpRecord]:
    """The step with the relative logits as an additive SDPA bias instead of widened heads.

    Each fused attention call at head size d + 2W (q' = [q, rows, cols]) becomes one at head
    size d that reads a bf16 bias [N, h, L_q, L_k] (CUDA's memory-efficient kernel: flash takes
    none) and, backward, writes its gradient; a generated kernel builds the bias from the row
    and column logits (forward) and one reduces its gradient back onto them (backward).
    """
    out: list[OpRecord] = []
    for op in ops:
        if op.name not in ATTENTION_OPS | ATTENTION_BACKWARD_OPS or not op.gemms:
            out.append(op)
            continue
        batch, queries, keys, width = op.gemms[0]
        if width == head:
            out.append(op)
            continue
        bias = batch * queries * keys * BIAS_BYTES
        logits = batch * queries * (width - head) * BIAS_BYTES  # rows and cols: [..., L_q, W] each
        backward = op.name in ATTENTION_BACKWARD_OPS
        build = OpRecord(
            "bias from row/column logits" if not backward else "bias gradient to row/column",
            op.phase,
            "memory",
            bytes_read=bias if backward else logits,
            bytes_written=logits if backward else bias,
            kernels=1,
            dtype="bfloat16",
        )
        recomputed = _with_head(op, width, head, bias)
        out += [recomputed, build] if backward else [build, recomputed]
    return out


def attention_seconds(ops: Sequence[OpRecord], gpu: GPUSpec, cal: Calibration) -> float:
    """Device seconds of the attention kernels and the bias kernels around them."""
    return sum(
        kernel_seconds(op, gpu, cal)
        for op in ops
        if op.kind == "attention" or op.name.startswith("bias ")
    )


def floor_lines(
    ops: Sequence[OpRecord], gpu: GPUSpec, cal: Calibration, target: float
) -> list[str]:
    """Why the compiled, graphed step stays above `target` seconds, in numbers."""
    parts = budget(ops, gpu, cal)
    step = simulate(ops, gpu, cal, graphed=True, compiled=True)
    conv_flops = sum(op.flops for op in ops if op.kind == "conv")
    conv_seconds = parts["conv"][0]
    memory_bytes = sum(
        op.bytes_read + op.bytes_written for op in ops if op.kind in ("memory", "optimizer")
    )
    rest = step.seconds - conv_seconds
    needed = conv_flops / (target - rest) / 1e12 if target > rest else None
    verdict = (
        f"the rest alone ({1e3 * rest:.1f} ms) is over the target, so no convolution speed-up "
        "reaches it"
        if needed is None
        else f"reaching it would need the convolutions at {needed:.0f} TFLOP/s with the rest "
        f"unchanged ({100 * needed * 1e12 / gpu.bf16:.0f}% of the dense bf16 peak)"
    )
    return [
        f"Compiled and replayed as CUDA graphs, the step is modelled at {1e3 * step.seconds:.1f} "
        f"ms on the {gpu.name} against the {1e3 * target:.0f} ms target. The convolutions alone "
        f"take {1e3 * conv_seconds:.1f} ms: {conv_flops / 1e12:.2f} TFLOP at "
        f"{conv_flops / conv_seconds / 1e12:.0f} TFLOP/s, the rate the calibration gives cuDNN on "
        f"these shapes ({100 * cal.conv_fraction:.0f}% of the bf16 peak at best, less where tiles "
        "and waves do not fill the machine; fitted to a measured VGG19 forward). Everything else "
        f"(attention {1e3 * parts['attention'][0]:.1f} ms, GEMMs {1e3 * parts['gemm'][0]:.1f} "
        f"ms, {int(parts['memory-bound'][1])} generated and optimizer kernels moving "
        f"{memory_bytes / 1e9:.1f} GB in {1e3 * parts['memory-bound'][0]:.1f} ms) adds "
        f"{1e3 * rest:.1f} ms; {verdict}.",
    ]
