"""Trace and time real training steps of a method at the paper setting on the CPU.

`trace_fit` fits a fresh method on synthetic data under `OpTracer`, on an `EmulatedGPU`
(hardware=gpu's decisions on the CPU), and marks the end of every optimizer step; `split_steps`
cuts that trace into steps and finds the epoch boundaries (the loop's once-per-epoch `.item()`).
`trace_backbone` traces one inference batch of the frozen backbone, `trace_loss_term` one loss
term alone; `time_cpu_step` times a training step for real on the CPU (hardware=cpu).

Needs bench/ on sys.path (bench/speed.py's bench_plan builds the plans).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from anobench.backbones import create_backbone
from anobench.config import register_configs
from anobench.planning import cell_loader, timed_fit
from anobench.runner import RunPlan
from bench.gpumodel.autocast import emulated_gpu
from bench.gpumodel.trace import OpRecord, OpTracer


@dataclass(frozen=True)
class TraceSetting:
    """How to trace a method: training images, epochs and config overrides."""

    n_train: int
    epochs: int
    overrides: tuple[str, ...] = ()


def _plan(method: str, setting: TraceSetting, tmp: Path, gpu: bool) -> RunPlan:
    from speed import bench_plan  # bench/speed.py

    register_configs()
    extra = ("hardware.device=cpu", *setting.overrides)
    return bench_plan(method, "paper", "optimised", setting.n_train, tmp, gpu, extra)


def trace_fit(method: str, setting: TraceSetting, tmp: Path) -> list[OpRecord]:
    """Every op of a fit on the emulated GPU, a `step` marker after each optimizer step."""
    plan = _plan(method, setting, tmp, gpu=True)
    plan = dataclasses.replace(plan, hardware=emulated_gpu())
    loader = cell_loader(plan, "train")
    tracer = OpTracer()
    hook = register_optimizer_step_post_hook(lambda *_: tracer.mark("step"))
    try:
        with tracer:
            timed_fit(plan, loader, setting.epochs)
    finally:
        hook.remove()
    return tracer.records


def trace_loss_term(
    fn: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...], target_first: bool
) -> list[OpRecord]:
    """Forward and backward of `1 - fn` on float32 maps, one of them requiring a gradient (as
    HaloAE's loss calls its SSIM: fn(target, reconstruction) or fn(reconstruction, target))."""
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(shape, generator=generator)
    reconstruction = (target + 0.1 * torch.rand(shape, generator=generator)).requires_grad_()
    args = (target, reconstruction) if target_first else (reconstruction, target)
    tracer = OpTracer()
    with tracer:
        (1 - fn(*args)).backward()
    return tracer.records


def trace_backbone(method: str, tmp: Path, batch: int = 32) -> list[OpRecord]:
    """Ops of the method's frozen backbone on one inference batch (bench/speed.py's roofline)."""
    plan = _plan(method, TraceSetting(4, 1), tmp, gpu=True)
    hardware = emulated_gpu()
    size = plan.method_cfg.image_size
    extractor = hardware.prepare(create_backbone(plan.backbone_cfg, size))
    images = hardware.to_device(torch.rand(batch, 3, size, size))
    tracer = OpTracer()
    with torch.no_grad(), hardware.autocast(), tracer:
        extractor(images)
    return tracer.records


@dataclass
class StepTrace:
    """A fit's trace cut at its optimizer steps."""

    steps: list[list[OpRecord]]  # ops after the previous step marker up to this step's
    epoch_starts: list[int]  # indices into `steps` of each epoch's first step

    @property
    def steady(self) -> list[OpRecord]:
        """The last step that does not open an epoch (else the last step)."""
        for index in range(len(self.steps) - 1, 0, -1):
            if index not in self.epoch_starts:
                return self.steps[index]
        return self.steps[-1]

    def epoch(self, number: int) -> list[OpRecord]:
        """Every op of epoch `number` (from 0), its opening transition included."""
        start = self.epoch_starts[number]
        end = self.epoch_starts[number + 1] if number + 1 < len(self.epoch_starts) else None
        return [op for step in self.steps[start:end] for op in step]


def split_steps(records: list[OpRecord]) -> StepTrace:
    """Cut a fit's trace after each `step` marker; a step whose ops hold a host sync (the loop's
    per-epoch `.item()`) opens a new epoch. Ops after the last marker are dropped."""
    steps: list[list[OpRecord]] = []
    current: list[OpRecord] = []
    for record in records:
        current.append(record)
        if record.kind == "marker" and record.name == "step":
            steps.append(current)
            current = []
    opens = [i for i, step in enumerate(steps) if i and any(op.kind == "sync" for op in step)]
    return StepTrace(steps, [0, *opens])


def time_cpu_step(method: str, setting: TraceSetting, tmp: Path) -> float:
    """Seconds of one training step on the CPU (hardware=cpu): a fit of two epochs minus a fit
    of one, where `setting` gives one step per epoch."""
    plan = _plan(method, setting, tmp, gpu=False)
    loader = cell_loader(plan, "train")
    timed_fit(plan, loader, 1)  # warm-up
    one, _ = timed_fit(plan, loader, 1)
    two, _ = timed_fit(plan, loader, 2)
    return two - one
