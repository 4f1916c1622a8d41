"""Price a traced step on a GPU: a roofline per op, launch overhead, host syncs, in one queue.

Each kernel takes max(FLOPs / (peak x efficiency), bytes / (bandwidth x efficiency)), at least
`kernel_min_us`. GEMM and convolution efficiency follows the tile a library would pick
(tile and wave quantisation, a short-K pipeline penalty) and drops for channel counts that are
not multiples of 8 (no aligned tensor-core path for 2-byte types). The host issues ops one
after another (`cpu_*_us` each); the device runs a kernel once it is issued and the previous one
is done; a sync makes the host wait for the device. The step time is that queue's steady state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.gpumodel.trace import OpRecord


@dataclass(frozen=True)
class GPUSpec:
    """Published dense peaks (FLOP/s) and memory bandwidth (bytes/s) of a GPU."""

    name: str
    bf16: float  # dense tensor-core bf16/fp16
    tf32: float  # dense tensor-core TF32 (float32 matmuls with allow_tf32)
    fp64: float  # FP64 tensor core
    fp32: float  # CUDA cores, float32 (elementwise and depthwise convolutions)
    bandwidth: float
    sms: int


# NVIDIA H100 Tensor Core GPU datasheet (SXM5): bf16 1979 TFLOP/s with sparsity = 989.4 dense,
# TF32 989 sparse = 494.7 dense, FP64 tensor core 66.9, FP32 66.9, HBM3 3.35 TB/s, 132 SMs.
H100_SXM = GPUSpec("H100 SXM 80GB", 989.4e12, 494.7e12, 66.9e12, 66.9e12, 3.35e12, 132)
# NVIDIA H200 datasheet: the H100's compute, HBM3e 4.8 TB/s.
H200_SXM = GPUSpec("H200 SXM 141GB", 989.4e12, 494.7e12, 66.9e12, 66.9e12, 4.8e12, 132)
GPUS = {"h100": H100_SXM, "h200": H200_SXM}


@dataclass(frozen=True)
class Calibration:
    """The model's free parameters; bench/results/model_*.md gives each one's source and fit."""

    gemm_fraction: float = 0.70  # best large bf16 GEMM / dense peak (cuBLAS on H100 SXM)
    conv_fraction: float = 0.45  # best large bf16 convolution (cuDNN) / dense peak: fitted
    attention_fraction: float = 0.35  # fused attention / dense peak at head dim 64
    unaligned_fraction: float = 0.30  # 16-bit channels not a multiple of 8: fitted
    bandwidth_fraction: float = 0.80  # large elementwise / copy kernels / HBM peak
    layout_fraction: float = 0.15  # CUDA's hidden NCHW <-> channels-last copies / HBM: fitted
    kernel_min_us: float = 2.5  # shortest kernel, launch to completion, queue already busy
    # host per forward / backward kernel op, per view or allocation, per further kernel of an
    # op: 2.5 x what the same ops cost on a CPU (13, 11, 2, 3 us measured), fitted
    cpu_forward_us: float = 32.5
    cpu_backward_us: float = 27.5
    cpu_metadata_us: float = 5.0
    cpu_extra_kernel_us: float = 7.5
    sync_us: float = 15.0  # a host sync: wait for the queue to drain, then copy and resume
    graph_kernel_us: float = 1.2  # per kernel when the step replays as one CUDA graph
    # host per kernel of torch.compile's generated wrapper (no op dispatch, autograd or
    # allocation per op): the 3 us of a further kernel of an op, x 2.5 as above
    compiled_kernel_us: float = 7.5
    # bytes Inductor's generated kernels move / bytes fusion.py predicts, on the small HaloAE
    # step of bench/gpumodel/inductor_check.py (Inductor's CPU scheduler: 305 / 275 MB): fitted
    fused_bytes_factor: float = 1.1


def _peak(spec: GPUSpec, dtype: str) -> float:
    if dtype in ("bfloat16", "float16"):
        return spec.bf16
    if dtype == "float64":
        return spec.fp64
    return spec.tf32  # hardware=gpu enables TF32 for float32 matmuls and convolutions


TILES = ((128, 256, 1.0), (128, 128, 0.95), (64, 128, 0.8), (64, 64, 0.6))
K_PIPELINE = 64  # prologue/epilogue cost of a tile, in K elements


def gemm_efficiency(batch: float, m: float, n: float, k: float, sms: int) -> float:
    """Fraction of the best GEMM rate a [batch x m x n x k] product reaches (tile model)."""
    best = 0.0
    for tile_m, tile_n, relative in TILES:
        tiles_m, tiles_n = math.ceil(m / tile_m), math.ceil(n / tile_n)
        tiles = batch * tiles_m * tiles_n
        fill = (m * n) / (tiles_m * tile_m * tiles_n * tile_n)
        split = 1
        if tiles < sms:  # split-K to fill the machine when the output is small
            split = int(max(1, min(sms // max(tiles, 1), k // 512)))
        blocks = tiles * split
        waves = blocks / (math.ceil(blocks / sms) * sms)
        k_part = k / split
        best = max(best, relative * fill * waves * k_part / (k_part + K_PIPELINE))
    return best


def hidden_layout_work(record: OpRecord) -> tuple[float, int]:
    """(bytes, kernels) of the layout copies CUDA makes around an op the CPU trace shows alone.

    ATen's CUDA reflection padding (ReflectionPad.cu) and im2col read NCHW-contiguous inputs
    and write NCHW outputs; under hardware=gpu the maps are channels-last, so each call copies
    its input to NCHW and the next convolution copies the output back to channels-last (the
    CPU kernels keep channels-last: no such ops in the trace). Backward: grad_output copied to
    NCHW, grad_input zero-filled, and the convolution's saved NCHW input re-laid out again.
    """
    if record.name == "reflection_pad2d":
        return 2 * record.bytes_read + 2 * record.bytes_written, 2
    if record.name == "reflection_pad2d_backward":
        grad_output = record.bytes_read - record.bytes_written  # read: grad_output and input
        return 4 * grad_output + record.bytes_written, 3
    if record.name == "im2col":
        return 2 * record.bytes_read, 1
    return 0.0, 0


# on CUDA these make a 0-dim CPU tensor (a wrapped Python scalar): no kernel
HOST_SCALARS = {"scalar_tensor"}


def kernel_seconds(record: OpRecord, spec: GPUSpec, cal: Calibration) -> float:
    """Device time of one op's kernels (0 for views, allocations and syncs)."""
    if launches(record) == 0:
        return 0.0
    hidden_bytes, hidden_kernels = hidden_layout_work(record)
    memory = (record.bytes_read + record.bytes_written) / (spec.bandwidth * cal.bandwidth_fraction)
    memory += hidden_bytes / (spec.bandwidth * cal.layout_fraction)
    compute = 0.0
    if _depthwise(record):  # one input channel per group: CUDA cores, no GEMM
        compute = record.flops / (spec.fp32 * cal.gemm_fraction)
    elif record.gemms and record.flops:
        peak = _peak(spec, record.dtype)
        fraction = {"attention": cal.attention_fraction, "conv": cal.conv_fraction}.get(
            record.kind, cal.gemm_fraction
        )
        if not record.aligned and record.dtype in ("bfloat16", "float16"):
            fraction *= cal.unaligned_fraction
        work = [2 * b * m * n * k for b, m, n, k in record.gemms]
        total = sum(work) or 1.0
        for (b, m, n, k), w in zip(record.gemms, work, strict=True):
            share = record.flops * w / total
            compute += share / (peak * fraction * max(gemm_efficiency(b, m, n, k, spec.sms), 1e-3))
    kernels = record.kernels + hidden_kernels
    return max(compute, memory, kernels * cal.kernel_min_us * 1e-6)


def _depthwise(record: OpRecord) -> bool:
    return record.kind == "conv" and any(b > 1 and min(m, n) <= 1 for b, m, n, _ in record.gemms)


def host_seconds(record: OpRecord, cal: Calibration) -> float:
    """Host time to issue one op in eager mode."""
    if record.kind == "marker":
        return 0.0
    if launches(record) == 0:
        return cal.cpu_metadata_us * 1e-6
    first = cal.cpu_backward_us if record.phase == "backward" else cal.cpu_forward_us
    return (first + (launches(record) - 1) * cal.cpu_extra_kernel_us) * 1e-6


def launches(record: OpRecord) -> int:
    """Kernel launches of an op; a multi-tensor optimizer kernel takes 36 tensors per launch."""
    if record.kind == "optimizer":
        return max(1, math.ceil(record.tensors / 36))
    if record.kernels == 0 or record.name in HOST_SCALARS:
        return 0
    return record.kernels + hidden_layout_work(record)[1]


# torch.optim.adam._multi_tensor_adam (foreach, not capturable), per step: (op, tensor lists,
# float32 values read + written per parameter element); then bias corrections on the host
FOREACH_ADAM = (
    ("_foreach_lerp_", 2, 3),  # exp_avg <- lerp(exp_avg, grad)
    ("_foreach_mul_", 1, 2),  # exp_avg_sq *= beta2
    ("_foreach_addcmul_", 3, 3),  # exp_avg_sq += (1 - beta2) grad^2
    ("_foreach_sqrt", 2, 2),
    ("_foreach_div_", 1, 2),  # / bias correction
    ("_foreach_add_", 1, 2),  # + eps
    ("_foreach_addcdiv_", 3, 4),  # param -= step * exp_avg / denom
)
WEIGHT_DECAY = {"l2": ("_foreach_add", 3, 3), "decoupled": ("_foreach_mul_", 1, 2)}
MAX_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36}  # per multi_tensor_apply launch, by list count
MAX_ELEMENTS = 65536 * 320  # per launch: chunk size x blocks


def foreach_adam(fused: OpRecord, weight_decay: str | None) -> list[OpRecord]:
    """The multi-tensor (foreach) Adam/AdamW step that does the same work as a fused one.

    The fused op reads param, grad, exp_avg, exp_avg_sq and a step counter per tensor (16 bytes
    per float32 element + 4 per tensor); the foreach path makes a pass per operation and reads
    each step counter on the host (two per tensor).
    """
    tensors = fused.tensors
    elements = (fused.bytes_read - 4 * tensors) / 16
    ops = [WEIGHT_DECAY[weight_decay]] if weight_decay else []
    records = []
    for name, lists, values in [*ops, *FOREACH_ADAM]:
        kernels = max(math.ceil(tensors / MAX_TENSORS[lists]), math.ceil(elements / MAX_ELEMENTS))
        records.append(
            OpRecord(
                name,
                "optimizer",
                "memory",
                bytes_read=4 * elements * (values - 1),
                bytes_written=4 * elements,
                kernels=kernels,
                dtype="float32",
            )
        )
    records += [OpRecord("_get_value", "optimizer", "alloc") for _ in range(2 * tensors)]
    return records


@dataclass(frozen=True)
class StepTime:
    seconds: float  # steady-state wall time of one pass
    device_seconds: float  # sum of kernel times
    host_seconds: float  # host issue time (0 when graphed)
    kernels: int
    syncs: int
    flops: float
    bytes: float


def inductor_traffic(record: OpRecord, cal: Calibration) -> OpRecord:
    """A fused record's bytes as Inductor moves them: fusion.py's estimate x the fitted factor
    for generated kernels (extern kernels and the optimizer as they are)."""
    if record.kind != "memory" or record.phase == "optimizer":
        return record
    factor = cal.fused_bytes_factor
    return dataclasses.replace(
        record, bytes_read=record.bytes_read * factor, bytes_written=record.bytes_written * factor
    )


def simulate(
    records: Sequence[OpRecord],
    spec: GPUSpec,
    cal: Calibration,
    graphed: bool = False,
    compiled: bool = False,
) -> StepTime:
    """Steady-state time of `records` run back to back: the second of two passes.

    With `graphed` the pass replays as one CUDA graph: no host cost per op, `graph_kernel_us`
    per kernel on the device, and no syncs allowed (a trace with one is refused). With
    `compiled` (records from fusion.fuse) the forward and backward run from torch.compile's
    wrapper at `compiled_kernel_us` per kernel, or, also `graphed`, as CUDA graphs
    (mode="reduce-overhead"), while the optimizer step stays eager.
    """
    ops = [r for r in records if r.kind != "marker"]
    syncs = sum(r.kind in ("sync", "h2d") for r in ops)
    if graphed and syncs:
        raise ValueError(f"a CUDA graph cannot hold the {syncs} host syncs of this trace")
    device = [kernel_seconds(r, spec, cal) for r in ops]
    kernels = [launches(r) for r in ops]
    in_graph = [graphed and (not compiled or r.phase != "optimizer") for r in ops]
    device = [
        d + k * cal.graph_kernel_us * 1e-6 if k and graph else d
        for d, k, graph in zip(device, kernels, in_graph, strict=True)
    ]
    host = []
    for record, count, graph in zip(ops, kernels, in_graph, strict=True):
        if graph:
            host.append(0.0)
        elif compiled and record.phase != "optimizer":
            host.append(count * cal.compiled_kernel_us * 1e-6)
        else:
            host.append(host_seconds(record, cal))
    host_t = device_t = 0.0
    ends = []
    for _ in range(2):
        for record, issue, run in zip(ops, host, device, strict=True):
            host_t += issue
            if record.kind in ("sync", "h2d"):
                host_t = max(host_t, device_t) + cal.sync_us * 1e-6
            elif run:
                device_t = max(device_t, host_t) + run
        ends.append(max(host_t, device_t))
    return StepTime(
        seconds=ends[1] - ends[0],
        device_seconds=sum(device),
        host_seconds=sum(host),
        kernels=sum(kernels),
        syncs=syncs,
        flops=sum(r.flops for r in ops),
        bytes=sum(r.bytes_read + r.bytes_written for r in ops),
    )
