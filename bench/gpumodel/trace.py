"""Record every aten op a computation dispatches: FLOPs, bytes moved, kernels, host syncs.

`OpTracer` is a TorchDispatchMode, so it sees the ops below autograd (forward, backward and
optimizer alike) with their real shapes, strides and dtypes. Per op it keeps what a GPU would
pay for: FLOPs by torch.utils.flop_counter's formulas, bytes read and written (each tensor's
distinct elements x its element size, so views and broadcasts cost nothing extra), the kernel
launches, the GEMM shapes behind matmuls and convolutions, and whether the host must wait for
the device (`.item()`, tensors built from Python lists).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import (
    conv_flop_count,
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}
CONV_OPS = {"convolution", "_convolution", "cudnn_convolution", "convolution_overrideable"}
ATTENTION_OPS = {
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
}
ATTENTION_BACKWARD_OPS = {f"{name}_backward" for name in ATTENTION_OPS}
# allocation and metadata only: no kernel on a GPU
NO_KERNEL_OPS = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "_unsafe_view",
    "detach",
    "alias",
    "lift_fresh",
    "lift_fresh_copy",
    "resize_",
    "set_",
    "_record_function_enter_new",
    "_record_function_exit",
}
# factories shaped like their input: they read nothing of it
LIKE_OPS = {
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "new_zeros",
    "new_ones",
}
# the host reads a device value or an output size it cannot know in advance: a stream sync
SYNC_OPS = {"_local_scalar_dense", "equal", "is_nonzero", "nonzero", "masked_select", "_unique2"}
# in-place ops that overwrite their destination without reading it
OVERWRITE_OPS = {"fill_", "zero_", "copy_", "normal_", "uniform_", "random_", "bernoulli_"}
OPTIMIZER_PREFIXES = ("_fused_adam", "_fused_sgd", "_foreach_")


@dataclass
class OpRecord:
    """One dispatched aten op, priced in what a GPU pays for it."""

    name: str  # overload packet, e.g. "convolution"
    phase: str  # forward | backward | optimizer | marker
    kind: str  # gemm | conv | attention | memory | optimizer | view | alloc | sync | h2d | marker
    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    kernels: int = 0
    dtype: str = ""  # the compute dtype (first floating input)
    shape: str = ""  # the tensor inputs' shapes, for tables
    gemms: list[list[float]] = field(default_factory=list)  # [batch, m, n, k] per GEMM
    aligned: bool = True  # GEMM n and k / conv channels multiples of 8 (16-byte rows in bf16)
    tensors: int = 0  # tensors a multi-tensor (optimizer) kernel updates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def footprint(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a kernel touches (broadcast dimensions count once)."""
    if tensor.numel() == 0:
        return 0
    elements = math.prod(s for s, st in zip(tensor.shape, tensor.stride(), strict=True) if st)
    return elements * tensor.element_size()


def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _aligned(*channels: float) -> bool:
    return all(int(c) % 8 == 0 for c in channels)


def _conv_gemms(
    x: torch.Tensor, w: torch.Tensor, out_shape: list[int], transposed: bool, groups: int
) -> tuple[float, list[list[float]], tuple[float, float, float, float]]:
    """Forward FLOPs, its implicit GEMM [groups, out pixels, out ch/g, K] and the channels."""
    flops = float(conv_flop_count(list(x.shape), list(w.shape), out_shape, transposed))
    if transposed:
        cin_g, cout_g = w.shape[0] / groups, w.shape[1]
    else:
        cout_g, cin_g = w.shape[0] / groups, w.shape[1]
    taps = math.prod(w.shape[2:])
    out_pixels = out_shape[0] * math.prod(out_shape[2:])
    k = flops / (2 * out_pixels * cout_g * groups)
    return flops, [[groups, out_pixels, cout_g, k]], (cin_g, cout_g, taps, out_pixels)


def _conv_backward(args: tuple, out: Any) -> tuple[float, list[list[float]], bool, int]:
    grad_out, x, w = args[0], args[1], args[2]
    transposed, groups, mask = bool(args[7]), int(args[9]), list(args[10])
    forward_flops, _, (cin_g, cout_g, taps, _) = _conv_gemms(
        x, w, list(grad_out.shape), transposed, groups
    )
    gemms, flops = [], 0.0
    in_pixels = x.shape[0] * math.prod(x.shape[2:])
    if mask[0]:  # grad input: a convolution back onto the input pixels
        gemms.append([groups, in_pixels, cin_g, forward_flops / (2 * in_pixels * cin_g * groups)])
        flops += forward_flops
    if mask[1]:  # grad weight: [out ch, in ch x taps] reduced over every pixel
        k = forward_flops / (2 * groups * cout_g * cin_g * taps)
        gemms.append([groups, cout_g, cin_g * taps, k])
        flops += forward_flops
    return flops, gemms, _aligned(cin_g, cout_g), sum(bool(m) for m in mask)


def _gemm_shape(name: str, args: tuple) -> list[float]:
    a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
    if a.dim() == 2:
        return [1, a.shape[0], b.shape[1], a.shape[1]]
    return [a.shape[0], a.shape[1], b.shape[2], a.shape[2]]


def _attention_gemms(q: torch.Tensor, k: torch.Tensor) -> list[list[float]]:
    """Q K^T and P V of an attention call [B, H, L, d] as two batched GEMMs."""
    batch = math.prod(q.shape[:-2])
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    return [[batch, lq, lk, d], [batch, lq, d, lk]]


def describe(func: Any, args: tuple, kwargs: dict, out: Any, backward: bool) -> OpRecord:
    """Price one dispatched op."""
    name = func._overloadpacket.__name__
    phase = "backward" if backward else "forward"
    inputs = _tensors((args, kwargs))
    outputs = _tensors(out)
    floating = [t for t in inputs if t.is_floating_point()]
    dtype = _short(floating[0].dtype) if floating else ""
    shape = " ".join(f"{list(t.shape)}" for t in inputs[:3])
    record = OpRecord(name, phase, "memory", dtype=dtype, shape=shape)
    schema = func._schema
    returns_alias = [r.alias_info is not None for r in schema.returns]
    written_args = [
        i
        for i, a in enumerate(schema.arguments)
        if a.alias_info is not None and a.alias_info.is_write
    ]
    if name.startswith(OPTIMIZER_PREFIXES):
        record.phase, record.kind = "optimizer", "optimizer"
        record.tensors = len(args[0]) if isinstance(args[0], list | tuple) else 1
    if name in SYNC_OPS:
        record.kind = "sync"
        record.bytes_read = sum(footprint(t) for t in inputs)
        return record
    if name in ("lift_fresh", "lift_fresh_copy") and outputs and outputs[0].dim() > 0:
        # torch.tensor(python list, device=...): a blocking host-to-device copy
        record.kind = "h2d"
        record.bytes_written = footprint(outputs[0])
        return record
    if name in NO_KERNEL_OPS or name.startswith("empty"):
        record.kind = "alloc"
        return record
    if schema.returns and all(returns_alias) and not written_args:
        record.kind = "view"
        return record
    written = [args[i] for i in written_args if i < len(args)]
    written += [kwargs[schema.arguments[i].name] for i in written_args if i >= len(args)]
    written_tensors = _unique(_tensors(written))
    fresh = [t for t, alias in zip(_tensors(out), returns_alias, strict=False) if not alias]
    record.bytes_written = sum(footprint(t) for t in _unique(fresh + written_tensors))
    overwritten = {id(t) for t in written_tensors} if name in OVERWRITE_OPS else set()
    if name not in LIKE_OPS:
        record.bytes_read = sum(footprint(t) for t in _unique(inputs) if id(t) not in overwritten)
    record.kernels = 1
    packet = func._overloadpacket
    if name in GEMM_OPS:
        record.kind = "gemm"
        record.gemms = [_gemm_shape(name, args)]
        record.aligned = _aligned(*record.gemms[0][2:])  # n and k: the leading dimensions
    elif name in CONV_OPS:
        record.kind = "conv"
        transposed, groups = bool(args[6]), int(args[8])
        _, record.gemms, channels = _conv_gemms(
            args[0], args[1], list(outputs[0].shape), transposed, groups
        )
        record.aligned = _aligned(channels[0], channels[1])
    elif name == "convolution_backward":
        record.kind = "conv"
        record.flops, record.gemms, record.aligned, record.kernels = _conv_backward(args, out)
        return record
    elif name in ATTENTION_OPS:
        record.kind = "attention"
        record.gemms = _attention_gemms(args[0], args[1])
        if packet not in flop_registry:
            record.flops = float(sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape))
    elif name in ATTENTION_BACKWARD_OPS:
        record.kind, record.kernels = "attention", 2  # the dq/dk/dv kernel and a preprocessing pass
        record.gemms = _attention_gemms(args[1], args[2]) * 2
        if packet not in flop_registry:
            record.flops = float(
                sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)
            )
    if packet in flop_registry and not record.flops:
        record.flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
    return record


class OpTracer(TorchDispatchMode):
    """Records an OpRecord per dispatched op while active; `mark` inserts a named boundary."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[OpRecord] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        backward = torch._C._current_graph_task_id() != -1
        self.records.append(describe(func, args, kwargs, out, backward))
        return out

    def mark(self, name: str) -> None:
        self.records.append(OpRecord(name, "marker", "marker"))
