"""bench/gpumodel/fusion.py and compiled.py: the Inductor-like fusion model and its pricing."""

from __future__ import annotations

import pytest
import torch

from bench.gpumodel.compiled import attention_as_bias
from bench.gpumodel.fusion import BufferTracer, fuse
from bench.gpumodel.gpu import H100_SXM, Calibration, simulate
from bench.gpumodel.trace import OpRecord

MB = 1024 * 1024 * 4  # bytes of a float32 [1024, 1024]


def _fused(fn: object) -> list[OpRecord]:
    tracer = BufferTracer()
    with tracer:
        fn()  # type: ignore[operator]
    return fuse(tracer.records, tracer.reads, tracer.writes, tracer.sizes)


def test_a_pointwise_chain_ending_in_a_reduction_is_one_kernel_reading_its_input_once() -> None:
    x = torch.rand(1024, 1024)
    fused = [r for r in _fused(lambda: ((x * 2 + 1).relu() * x).sum()) if r.kernels]
    assert len(fused) == 1
    assert fused[0].bytes_read == MB  # x read once, though two ops read it
    assert fused[0].bytes_written <= 4  # at most the sum; the temporaries never reach memory


def test_extern_ops_split_kernels_and_live_intermediates_are_written() -> None:
    x, w = torch.rand(1024, 1024), torch.rand(1024, 1024)

    def step() -> torch.Tensor:
        y = (x * 2).exp()  # read again after the matmul: written
        z = (y @ w) + 1
        return (z * y).sum()

    kinds = [(r.kind, r.bytes_read, r.bytes_written) for r in _fused(step) if r.kernels]
    assert [k for k, _, _ in kinds] == ["memory", "gemm", "memory"]
    assert kinds[0][1:] == (MB, MB)  # x in, y out (the mul's result stays in registers)
    assert kinds[2][1:] == (2 * MB, 4)  # z and y in, the sum out


def test_batch_norm_is_a_statistics_kernel_then_a_pointwise_one() -> None:
    x = torch.rand(8, 16, 32, 32, requires_grad=True)
    bn = torch.nn.BatchNorm2d(16)
    ops = _fused(lambda: bn(x).relu().sum())
    forward = [r for r in ops if r.kernels and r.name != "add_"]  # add_: the batch counter
    assert len(forward) == 2
    assert forward[0].bytes_read >= x.numel() * 4  # the statistics pass reads x
    assert forward[0].bytes_written < 1024  # and writes per-channel values only
    assert forward[1].bytes_read >= x.numel() * 4  # normalise + relu + sum re-read it


def test_compiled_step_pays_a_short_launch_per_kernel_and_graphs_keep_the_optimizer_eager() -> None:
    cal = Calibration()
    kernel = OpRecord("add", "forward", "memory", bytes_read=1e3, bytes_written=1e3, kernels=1)
    adam = OpRecord("_fused_adam_", "optimizer", "optimizer", bytes_read=1e3, tensors=10)
    ops = [kernel] * 100 + [adam]
    eager = simulate(ops, H100_SXM, cal)
    compiled = simulate(ops, H100_SXM, cal, compiled=True)
    graphed = simulate(ops, H100_SXM, cal, compiled=True, graphed=True)
    optimizer_host = cal.cpu_forward_us * 1e-6
    expected = 100 * cal.compiled_kernel_us * 1e-6 + optimizer_host
    assert compiled.host_seconds == pytest.approx(expected)
    assert eager.host_seconds > compiled.host_seconds
    assert graphed.host_seconds == pytest.approx(optimizer_host)
    assert graphed.seconds < compiled.seconds


def test_attention_as_bias_narrows_heads_and_adds_the_bias_traffic() -> None:
    q = torch.rand(6, 2, 16, 12, requires_grad=True)
    k, v = torch.rand(6, 2, 20, 12), torch.rand(6, 2, 20, 12)
    ops = [
        r
        for r in _fused(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
        )
        if r.kernels
    ]
    attention = [r for r in ops if r.kind == "attention"]
    assert len(attention) == 2  # forward and backward
    narrowed = attention_as_bias(ops, head=4)
    bias = 6 * 2 * 16 * 20 * 2
    recomputed = [r for r in narrowed if r.kind == "attention"]
    for old, new in zip(attention, recomputed, strict=True):
        assert new.flops == pytest.approx(old.flops / 3)
        assert all(4 in gemm[2:] and 12 not in gemm[2:] for gemm in new.gemms)  # [b, m, n, k]
        assert new.bytes_read == pytest.approx(old.bytes_read / 3 + bias)
    assert recomputed[1].bytes_written == pytest.approx(attention[1].bytes_written / 3 + bias)
    assert len(narrowed) == len(ops) + 2  # build the bias, reduce its gradient
