"""What torch.compile (Inductor) makes of a traced step: an analytic fusion model over the trace.

Inductor keeps convolutions, matmuls and fused attention as extern kernels (cuDNN, cuBLAS,
flash/memory-efficient attention) and generates the rest: chains of pointwise ops and
reductions become one kernel that reads its external inputs once and writes only what a later
kernel (or the backward, or the optimizer) reads. `BufferTracer` records, per op, the buffers it
reads and writes (ids that follow storage, so views cost nothing); `fuse` turns a trace into
the kernels Inductor would run:

- extern ops (conv, gemm, attention, optimizer, syncs, `randperm`) stay as they are;
- between two extern ops of the same phase, the generated ops form one kernel, split where a
  reduction's result is consumed by a later op (a reduction ends its kernel; BatchNorm and
  LayerNorm are a statistics reduction, then a pointwise part that fuses with its consumers;
  softmax reduces along rows it keeps, one kernel as Inductor's persistent reduction);
- a kernel reads each buffer it did not write itself once, and writes a buffer only if an op
  after the kernel reads it (or the buffer existed before the step: in-place updates).

bench/gpumodel/inductor_check.py checks this model against Inductor's own scheduler on a small
HaloAE step (kernel count and bytes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from anobench.planning import cell_loader, timed_fit
from bench.gpumodel.autocast import emulated_gpu
from bench.gpumodel.steps import TraceSetting, _plan
from bench.gpumodel.trace import OpRecord, OpTracer, _tensors, describe, footprint

EXTERN_KINDS = {"gemm", "conv", "attention", "optimizer", "sync", "h2d"}
EXTERN_NAMES = {"randperm", "_local_scalar_dense", "nonzero", "sort", "topk"}
# a reduction whose result later ops consume: it closes its kernel
REDUCTIONS = {
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "var_mean",
    "std",
    "norm",
    "linalg_vector_norm",
    "prod",
    "all",
    "any",
    "argmax",
    "argmin",
    "logsumexp",
    "nll_loss_forward",
    "nll_loss2d_forward",
    "mse_loss",
}
# a statistics reduction, then a pointwise part (that fuses with its consumers) re-reading the
# input: two kernels
NORMS = {
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "_native_batch_norm_legit_no_training",
    "native_layer_norm",
    "native_group_norm",
    "native_batch_norm_backward",
    "native_layer_norm_backward",
    "native_group_norm_backward",
}
PERSISTENT_ROWS = 1024  # Inductor's persistent reductions on CUDA: rows up to this many elements
Access = list[tuple[int, int]]  # (buffer id, bytes)


class BufferTracer(OpTracer):
    """OpTracer that also records the buffers each op reads and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[Access] = []
        self.writes: list[Access] = []
        self.sizes: list[tuple[int, int]] = []  # (largest input, largest output) elements
        self._ids: dict[int, int] = {}  # storage address -> id of the buffer living there
        self._next = 0

    def _id(self, tensor: torch.Tensor, fresh: bool) -> int:
        """The buffer a tensor views; `fresh` outputs start a new buffer at their address."""
        pointer = tensor.untyped_storage().data_ptr()
        if fresh or pointer not in self._ids:
            self._next += 1
            self._ids[pointer] = self._next
        return self._ids[pointer]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs))
        out = func(*args, **kwargs)
        backward = torch._C._current_graph_task_id() != -1
        record = describe(func, args, kwargs, out, backward)
        self.records.append(record)
        reads = [(self._id(t, False), footprint(t)) for t in inputs]
        schema = func._schema
        aliased = [r.alias_info is not None for r in schema.returns]
        fresh = [t for t, alias in zip(_tensors(out), aliased, strict=False) if not alias]
        written = [t for t, alias in zip(_tensors(out), aliased, strict=False) if alias]
        writes = [(self._id(t, True), footprint(t)) for t in fresh]
        if record.kind not in ("view", "alloc"):
            writes += [(self._id(t, False), footprint(t)) for t in written]
        self.reads.append(reads if record.kind not in ("view", "alloc") else [])
        self.writes.append(writes if record.kind not in ("view", "alloc") else [])
        outputs = _tensors(out)
        self.sizes.append(
            (
                max((t.numel() for t in inputs), default=0),
                max((t.numel() for t in outputs), default=0),
            )
        )
        return out

    def mark(self, name: str) -> None:
        super().mark(name)
        self.reads.append([])
        self.writes.append([])
        self.sizes.append((0, 0))


def _generated(record: OpRecord) -> bool:
    """An op Inductor generates code for (fusible), as opposed to an extern kernel or no kernel."""
    return (
        record.kind == "memory" and record.kernels > 0 and record.name not in EXTERN_NAMES
    ) and not record.name.startswith(("_fused_", "_foreach_"))


def _kernels(
    ops: list[int],
    records: Sequence[OpRecord],
    sizes: Sequence[tuple[int, int]],
    persistent_rows: int,
) -> list[list[int]]:
    """Split a run of generated ops (indices) into kernels.

    A kernel is one loop over one iteration space: an op over another number of elements
    starts a new kernel, except the pointwise epilogue of a reduction over its result's
    elements. A reduction ends its kernel unless it is persistent (rows of at most
    `persistent_rows` elements: Triton keeps the row in registers, so full-size consumers such
    as softmax's normalisation stay in the kernel).
    """
    kernels: list[list[int]] = []
    current: list[int] = []
    space = 0  # elements the current kernel iterates over
    epilogue = 0  # after a non-persistent reduction: its result's elements

    def close() -> None:
        nonlocal current, space, epilogue
        if current:
            kernels.append(current)
        current, space, epilogue = [], 0, 0

    for index in ops:
        name = records[index].name
        inputs, outputs = sizes[index]
        if name in NORMS:  # statistics: a kernel of their own, then the pointwise part
            close()
            kernels.append([index])
            current, space = [index], outputs
            continue
        reduction = name in REDUCTIONS
        elements = inputs if reduction else outputs
        if current and elements != space and not (epilogue and elements == epilogue):
            close()
        if epilogue and elements == epilogue:
            space, epilogue = epilogue, 0
        current.append(index)
        space = space or elements
        if reduction and outputs < inputs:
            if inputs // max(outputs, 1) <= persistent_rows:
                continue
            kernels.append(current)
            current, space, epilogue = [], 0, outputs
    close()
    return kernels


def fuse(
    records: Sequence[OpRecord],
    reads: Sequence[Access],
    writes: Sequence[Access],
    sizes: Sequence[tuple[int, int]],
    persistent_rows: int = PERSISTENT_ROWS,
) -> list[OpRecord]:
    """The trace as the kernels Inductor would run (markers and extern ops kept in place);
    `persistent_rows=0` for Inductor's CPU backend, which has no persistent reductions."""
    last_read: dict[int, int] = {}
    born: dict[int, int] = {}  # where a buffer is first written; -1: it existed before
    for position, (read, written) in enumerate(zip(reads, writes, strict=True)):
        for buffer, _ in read:
            last_read[buffer] = position
            born.setdefault(buffer, -1)
        for buffer, _ in written:
            born.setdefault(buffer, position)
    out: list[OpRecord] = []
    run: list[int] = []
    phase = ""

    def flush() -> None:
        for kernel in _kernels(run, records, sizes, persistent_rows):
            out.append(_kernel_record(kernel, records, reads, writes, last_read, born))
        run.clear()

    for index, record in enumerate(records):
        if record.kind in ("view", "alloc"):
            continue
        if _generated(record) and (not run or record.phase == phase):
            run.append(index)
            phase = record.phase
            continue
        flush()
        if _generated(record):
            run.append(index)
            phase = record.phase
        else:
            out.append(record)
    flush()
    return out


def _kernel_record(
    kernel: list[int],
    records: Sequence[OpRecord],
    reads: Sequence[Access],
    writes: Sequence[Access],
    last_read: dict[int, int],
    born: dict[int, int],
) -> OpRecord:
    """One generated kernel: external inputs read once, live outputs written once."""
    end = kernel[-1]
    norm_stats = len(kernel) == 1 and records[end].name in NORMS
    produced: set[int] = set()
    read_bytes: dict[int, int] = {}
    write_bytes: dict[int, int] = {}
    for index in kernel:
        for buffer, size in reads[index]:
            if buffer not in produced:
                read_bytes[buffer] = max(read_bytes.get(buffer, 0), size)
        for buffer, size in writes[index]:
            produced.add(buffer)
            if norm_stats:
                # the statistics kernel writes per-channel values only; the normalised map is
                # the next kernel's
                continue
            read_later = last_read.get(buffer, -1) > end
            output = buffer not in last_read and index == end  # the computation's result
            if read_later or output or born.get(buffer, -1) < kernel[0]:
                write_bytes[buffer] = max(write_bytes.get(buffer, 0), size)
    first = records[kernel[0]]
    names = "+".join(dict.fromkeys(records[i].name for i in kernel))
    return OpRecord(
        names if len(names) <= 60 else names[:57] + "...",
        first.phase,
        "memory",
        flops=sum(records[i].flops for i in kernel),
        bytes_read=float(sum(read_bytes.values())),
        bytes_written=float(sum(write_bytes.values())),
        kernels=1,
        dtype=first.dtype,
        shape=first.shape,
    )


def trace_fit_fused(method: str, setting: TraceSetting, tmp: Path) -> list[OpRecord]:
    """steps.trace_fit's fit, traced with buffers and fused as `hardware.compile=true` runs it:
    the compiled code path (colour-jitter order on the device) and Inductor's kernels."""
    from anobench.methods import cutpaste

    plan = dataclasses.replace(_plan(method, setting, tmp, gpu=True), hardware=emulated_gpu())
    loader = cell_loader(plan, "train")
    tracer = BufferTracer()
    hook = register_optimizer_step_post_hook(lambda *_: tracer.mark("step"))
    compiled_path = cutpaste.order_on_device
    cutpaste.order_on_device = lambda: True
    try:
        with tracer:
            timed_fit(plan, loader, setting.epochs)
    finally:
        hook.remove()
        cutpaste.order_on_device = compiled_path
    return fuse(tracer.records, tracer.reads, tracer.writes, tracer.sizes)
