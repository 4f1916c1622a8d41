"""bench/gpumodel: the op tracer, the CUDA autocast emulation and the GPU time model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.gpumodel.autocast import cuda_autocast, emulated_gpu
from bench.gpumodel.gpu import (
    H100_SXM,
    H200_SXM,
    Calibration,
    foreach_adam,
    gemm_efficiency,
    hidden_layout_work,
    kernel_seconds,
    launches,
    simulate,
)
from bench.gpumodel.steps import split_steps
from bench.gpumodel.trace import OpRecord, OpTracer, footprint


def _trace(fn: object) -> list[OpRecord]:
    tracer = OpTracer()
    with tracer:
        fn()  # type: ignore[operator]
    return [r for r in tracer.records if r.kind not in ("view", "alloc")]


def test_conv_forward_and_backward_are_priced_as_flop_counter_counts_them() -> None:
    x = torch.randn(2, 16, 10, 10, requires_grad=True)
    conv = torch.nn.Conv2d(16, 24, 3, padding=1, bias=False)
    counter = FlopCounterMode(display=False)
    with counter:
        conv(x).sum().backward()
    records = _trace(lambda: conv(x).sum().backward())
    forward = next(r for r in records if r.name == "convolution")
    backward = next(r for r in records if r.name == "convolution_backward")
    assert forward.flops + backward.flops == counter.get_total_flops()
    assert forward.bytes_read == 4 * (x.numel() + conv.weight.numel())
    assert forward.bytes_written == 4 * 2 * 24 * 10 * 10
    assert forward.gemms == [[1, 2 * 10 * 10, 24, 16 * 9]] and forward.aligned
    # grad input [200 px x 16 ch x 24*9] and grad weight [24 x 16*9 x 200 px], two kernels
    assert backward.gemms == [[1, 200, 16, 216], [1, 24, 144, 200]] and backward.kernels == 2


def test_views_cost_nothing_and_broadcast_inputs_count_once() -> None:
    x = torch.randn(64, 32)
    bias = torch.randn(32)
    records = _trace(lambda: (x.t() + bias[:, None].expand(32, 64)).sum())
    assert [r.name for r in records] == ["add", "sum"]  # t and expand are views: free
    assert records[0].bytes_read == 4 * (64 * 32 + 32)  # the expanded bias is read once
    assert footprint(bias[:, None].expand(32, 64)) == 4 * 32
    copies = _trace(lambda: x.t().reshape(-1))  # a transposed view cannot be flattened: a copy
    assert [r.name for r in copies] == ["clone"] and copies[0].bytes_written == 4 * 64 * 32


def test_host_syncs_and_host_to_device_copies_are_flagged() -> None:
    x = torch.randn(8)
    records = _trace(lambda: (x.sum().item(), torch.tensor([1.0, 2.0]), x.__setitem__(0, 0.0)))
    kinds = [(r.name, r.kind) for r in records]
    assert ("_local_scalar_dense", "sync") in kinds
    assert ("lift_fresh", "h2d") in kinds  # a tensor from a Python list: blocking copy on CUDA
    assert sum(kind in ("sync", "h2d") for _, kind in kinds) == 2  # x[0] = 0.0 is neither


def test_cuda_autocast_policy_differs_from_cpu_autocast_where_cuda_does() -> None:
    x = torch.randn(2, 8, 12, 12)
    conv = torch.nn.Conv2d(8, 8, 3)
    with cuda_autocast():
        y = conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        assert y.dtype == torch.bfloat16
        assert F.pad(y, (1, 1, 1, 1), mode="reflect").dtype == torch.bfloat16  # CPU: float32
        assert y.softmax(-1).dtype == torch.float32  # CPU autocast keeps bfloat16
        assert F.layer_norm(y, (12,)).dtype == torch.float32
        assert (y**2).dtype == torch.float32 and y.sum().dtype == torch.float32
        assert y.mean().dtype == torch.bfloat16  # not on CUDA's lists either
        with torch.autocast("cpu", enabled=False):
            assert (x @ x.transpose(-1, -2)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert y.softmax(-1).dtype == torch.bfloat16


def test_cuda_autocast_casts_a_weight_once_per_region() -> None:
    linear = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)

    def twice() -> None:
        with cuda_autocast():
            linear(linear(x))

    casts = [r for r in _trace(twice) if r.name == "_to_copy"]
    # x, the weight and the bias once each; the second call reuses the weight and bias casts
    assert len(casts) == 3


def test_emulated_gpu_decides_as_hardware_gpu() -> None:
    hardware = emulated_gpu()
    params = [torch.nn.Parameter(torch.randn(3))]
    assert hardware.optimizer(torch.optim.Adam, params).defaults["fused"] is True
    assert (
        emulated_gpu(fused_optimizer=False).optimizer(torch.optim.AdamW, params).defaults["foreach"]
    )
    module = hardware.prepare(torch.nn.Conv2d(4, 4, 3))
    assert module.weight.is_contiguous(memory_format=torch.channels_last)
    assert hardware.to_device(torch.randn(1, 4, 5, 5)).is_contiguous(
        memory_format=torch.channels_last
    )
    assert hardware.cache_dtype == torch.bfloat16 and hardware.free_memory_bytes() > 2**34


def test_memory_bound_kernel_takes_bytes_over_bandwidth_and_h200_is_faster() -> None:
    cal = Calibration()
    op = OpRecord("add", "forward", "memory", bytes_read=2e9, bytes_written=1e9, kernels=1)
    expected = 3e9 / (H100_SXM.bandwidth * cal.bandwidth_fraction)
    assert kernel_seconds(op, H100_SXM, cal) == pytest.approx(expected)
    assert kernel_seconds(op, H200_SXM, cal) == pytest.approx(expected * 3.35 / 4.8)
    tiny = OpRecord("add", "forward", "memory", bytes_read=8, kernels=1)
    assert kernel_seconds(tiny, H100_SXM, cal) == pytest.approx(cal.kernel_min_us * 1e-6)


def test_gemm_efficiency_falls_for_small_and_unaligned_problems() -> None:
    assert gemm_efficiency(1, 8192, 8192, 8192, 132) > 0.9
    assert gemm_efficiency(1, 8192, 24, 8192, 132) < 0.3  # a 24-wide output wastes the tile
    assert gemm_efficiency(1, 256, 256, 64, 132) < 0.2  # 4 tiles on 132 SMs, short K
    cal = Calibration()
    shape = [[1, 8192, 8192, 8192]]
    aligned = OpRecord("mm", "forward", "gemm", flops=2 * 8192**3, kernels=1, gemms=shape)
    aligned.dtype = "bfloat16"
    unaligned = OpRecord(**{**aligned.to_dict(), "aligned": False})
    assert kernel_seconds(unaligned, H100_SXM, cal) == pytest.approx(
        kernel_seconds(aligned, H100_SXM, cal) / cal.unaligned_fraction
    )


def _op(kind: str, phase: str = "forward", seconds: float = 0.0) -> OpRecord:
    """A memory op that takes `seconds` on the H100 at the default calibration."""
    nbytes = seconds * H100_SXM.bandwidth * Calibration().bandwidth_fraction
    kernels = 0 if kind in ("sync", "marker", "view") else 1
    return OpRecord("op", phase, kind, bytes_read=nbytes, kernels=kernels)


def test_queue_is_host_bound_for_tiny_ops_and_device_bound_for_big_ones() -> None:
    cal = Calibration()
    tiny = simulate([_op("memory") for _ in range(100)], H100_SXM, cal)
    assert tiny.seconds == pytest.approx(100 * cal.cpu_forward_us * 1e-6)
    big = simulate([_op("memory", seconds=1e-3) for _ in range(10)], H100_SXM, cal)
    assert big.seconds == pytest.approx(10e-3)
    # a sync makes the host wait for the device, then the device waits for the next launch
    synced = simulate([_op("memory", seconds=1e-3), _op("sync")] * 2, H100_SXM, cal)
    per_pair = 1e-3 + (cal.sync_us + cal.cpu_forward_us) * 1e-6
    assert synced.seconds == pytest.approx(2 * per_pair)
    graphed = simulate([_op("memory") for _ in range(100)], H100_SXM, cal, graphed=True)
    assert graphed.seconds == pytest.approx(100 * (cal.kernel_min_us + cal.graph_kernel_us) * 1e-6)
    with pytest.raises(ValueError, match="sync"):
        simulate([_op("sync")], H100_SXM, cal, graphed=True)


def test_split_steps_cuts_at_markers_and_opens_epochs_at_syncs() -> None:
    step = OpRecord("step", "marker", "marker")
    setup = [_op("memory")]
    records = [*setup, _op("memory"), step, _op("memory"), step]  # epoch 1: two steps
    records += [_op("sync"), _op("memory"), step, _op("memory"), step, _op("memory")]  # epoch 2
    trace = split_steps(records)
    assert len(trace.steps) == 4 and trace.epoch_starts == [0, 2]
    assert trace.steady is trace.steps[3]  # the last step that does not open an epoch
    assert len(trace.epoch(1)) == 5  # the sync, two memory ops, two markers


def test_foreach_adam_moves_three_times_the_fused_bytes_in_more_launches() -> None:
    params = [torch.nn.Parameter(torch.randn(100, 10)) for _ in range(40)]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.Adam(params, fused=True, weight_decay=1e-5)
    optimizer.step()  # the state exists from here on
    fused = next(r for r in _trace(optimizer.step) if r.name == "_fused_adam_")
    assert fused.tensors == 40 and fused.bytes_read == 40 * (1000 * 16 + 4)
    unfused = foreach_adam(fused, "l2")
    kernels = [r for r in unfused if r.kernels]
    elements = 40 * 1000
    # grad + wd*param, lerp, mul, addcmul, sqrt, div, add, addcdiv: 21 float32 passes per value
    assert sum(r.bytes_read + r.bytes_written for r in kernels) == pytest.approx(84 * elements)
    assert [r.kernels for r in kernels] == [1] * 8  # 40 tensors fit one launch at every depth
    assert len(unfused) - len(kernels) == 2 * 40  # two bias corrections per tensor on the host
    assert len(foreach_adam(fused, None)) == len(unfused) - 1


def test_cuda_layout_copies_around_reflection_padding_are_priced() -> None:
    # the CPU pads channels-last maps in place of layout; CUDA's kernel copies to NCHW and the
    # next convolution copies back: two extra passes over input and output
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(2, 16, 10, 10)
    records = _trace(lambda: F.pad(x, (1, 1, 1, 1), mode="reflect").backward(grad))
    pad = next(r for r in records if r.name == "reflection_pad2d")
    backward = next(r for r in records if r.name == "reflection_pad2d_backward")
    assert hidden_layout_work(pad) == (2 * 4 * 2 * 16 * (64 + 100), 2)
    assert hidden_layout_work(backward) == (4 * 4 * 2 * 16 * 100 + 4 * 2 * 16 * 64, 3)
    cal = Calibration()
    plain = OpRecord(**{**pad.to_dict(), "name": "constant_pad_nd"})
    assert launches(pad) == 3 and launches(plain) == 1
    assert kernel_seconds(pad, H100_SXM, cal) > kernel_seconds(plain, H100_SXM, cal)
    scalar = _trace(lambda: torch.where(x > 0, x, 1.0))
    assert [launches(r) for r in scalar if r.name == "scalar_tensor"] == [0]  # a CPU scalar
