"""Bounded time estimates for `dry_run=true`: count and time probe steps, then scale.

A probe fit sees a few training images and is stopped at an optimizer step (or once past a time
budget), so it never trains more than a few steps, whatever the method and size. Setup (feature
caching, statistics) is told apart from training by the first tensor autograd saves: setup runs
without gradients. FLOPs are torch.utils.flop_counter's (matmuls, convolutions, attention).

1. Counting probe: setup on one or two images and one training step of one sample, FLOPs
   counted (one step of a big method can take a minute on a CPU; nothing more runs there).
2. Timed probe, without the FLOP counter (it slows small operations down), only when the
   counted FLOPs at a quarter of the device's matmul rate predict it under TIMED_BUDGET_SECONDS:
   TIMED_STEPS steps of the full batch, stopped after the budget; the last step is timed warm.
3. Per cell: setup scaled to the class's training images, plus steps per epoch x epochs at the
   timed step's time, or else the counted FLOPs at the rate the counted step reached.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.flop_counter import FlopCounterMode

from anobench.data.mvtec import AnomalyDataset, index_split
from anobench.hardware import Hardware, seed_everything
from anobench.methods import MethodContext, create_method
from anobench.results import Cell
from anobench.runner import RunPlan, ordered_loader

TIMED_STEPS = 3  # full-batch steps of the timed probe: the last one, warm, is timed
TIMED_BUDGET_SECONDS = 20.0  # the timed probe runs only when predicted to take less
PREDICTED_EFFICIENCY = 0.25  # of the matmul rate, to decide whether the timed probe is cheap
SETUP_IMAGES = 8  # images of the timed fit of a method without training steps (knn)


class _StopProbe(Exception):
    """Raised from an optimizer pre-step hook: the probe has run the steps it needs."""


@dataclass(frozen=True)
class Probe:
    """What a probe fit measured on `images` training images with `batch` samples per step."""

    images: int
    batch: int
    steps: int  # optimizer steps reached (0: the method does not train)
    setup_flops: float  # before training (feature caching, statistics), for `images` images
    setup_seconds: float
    step_flops: float  # the last step of `batch` samples (forward, backward); 0 if not counted
    step_seconds: float
    test_seconds: float = 0.0  # scoring one test image (measured when the fit has no steps)

    @property
    def rate(self) -> float | None:
        """FLOP/s the probe's step reached on this device."""
        if self.steps == 0 or self.step_seconds <= 0 or self.step_flops <= 0:
            return None
        return self.step_flops / self.step_seconds


@dataclass(frozen=True)
class CellEstimate:
    cell: Cell
    seconds: float
    flops: float


@dataclass(frozen=True)
class Estimate:
    """Per-cell projections and how they were made."""

    cells: list[CellEstimate]
    basis: str  # what was measured and how it was scaled
    probes: list[Probe]
    probe_seconds: float  # wall time the measurement took

    @property
    def total_seconds(self) -> float:
        return sum(cell.seconds for cell in self.cells)


def probe_fit(
    plan: RunPlan,
    images: int,
    batch: int,
    steps: int,
    count: bool = True,
    budget_seconds: float | None = None,
) -> Probe:
    """Fit a fresh method of the first cell on `images` images, stopped at optimizer step `steps`.

    Training runs `batch` samples per step for one epoch and stops when the `steps`-th optimizer
    step (or the first one past `budget_seconds`) is about to update the weights. The measured
    step is the last one run. Without `count`, FLOPs are not counted (counting slows small
    operations down).
    """
    cell = plan.cells[0]
    samples = index_split(plan.dataset_root, cell.category, "train")[:images]
    dataset = AnomalyDataset(samples, plan.method_cfg.image_size, plan.method_cfg.resize)
    loader = ordered_loader(dataset, plan.hardware_cfg, plan.hardware.is_cuda, cell.seed)
    cfg = _probe_config(plan.method_cfg, batch)
    hardware = dataclasses.replace(plan.hardware, compile=False)  # compiling is not training
    context = MethodContext(
        hardware=hardware,
        backbone=plan.backbone_cfg,
        seed=cell.seed,
        category=cell.category,
        progress=False,
        cache_features=plan.hardware_cfg.cache_features,
    )
    seed_everything(cell.seed)
    method = create_method(cfg.name, cfg, context)
    counter = FlopCounterMode(display=False)
    marks: list[tuple[float, float]] = []  # (seconds, flops) when training starts, at each step
    start = time.perf_counter()

    def mark() -> None:
        hardware.synchronize()
        marks.append((time.perf_counter() - start, float(counter.get_total_flops())))

    def first_saved(tensor: torch.Tensor) -> torch.Tensor:
        if not marks:
            mark()
        return tensor

    def before_step(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        mark()
        late = budget_seconds is not None and marks[-1][0] > budget_seconds
        if len(marks) > steps or late:
            raise _StopProbe

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        with (
            counter if count else nullcontext(),
            torch.autograd.graph.saved_tensors_hooks(first_saved, lambda tensor: tensor),
        ):
            method.fit(loader)
    except _StopProbe:
        pass
    finally:
        handle.remove()
    if len(marks) < 2:  # no training step: all of it was setup; time the scoring too
        hardware.synchronize()
        seconds, flops = time.perf_counter() - start, float(counter.get_total_flops())
        return Probe(len(samples), batch, 0, flops, seconds, 0.0, 0.0, _test_seconds(plan, method))
    (t0, f0), (t_prev, f_prev), (t_last, f_last) = marks[0], marks[-2], marks[-1]
    return Probe(len(samples), batch, len(marks) - 1, f0, t0, f_last - f_prev, t_last - t_prev)


def _test_seconds(plan: RunPlan, method: Any) -> float:
    """Seconds to score one test image (the first test images, after a warm-up)."""
    cell = plan.cells[0]
    samples = index_split(plan.dataset_root, cell.category, "test")[:2]
    dataset = AnomalyDataset(samples, plan.method_cfg.image_size, plan.method_cfg.resize)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    method.predict(images[:1])
    plan.hardware.synchronize()
    start = time.perf_counter()
    method.predict(images)
    plan.hardware.synchronize()
    return (time.perf_counter() - start) / len(images)


def _probe_config(cfg: Any, batch: int) -> Any:
    """The method config of a probe: one epoch of `batch`-sample steps."""
    changes: dict[str, int] = {}
    if hasattr(cfg, "epochs"):
        changes["epochs"] = 1
    if hasattr(cfg, "batch_size"):
        changes["batch_size"] = batch
    if hasattr(cfg, "samples_per_epoch"):
        changes["samples_per_epoch"] = batch * TIMED_STEPS
    return dataclasses.replace(cfg, **changes)


def samples_per_epoch(cfg: Any, n_train: int) -> int:
    """Training samples one epoch of the method draws for a class of n_train images."""
    fixed = getattr(cfg, "samples_per_epoch", None)
    if fixed is not None:
        return int(fixed)  # HaloAE: a fixed count whatever the class size
    val_fraction = getattr(cfg, "val_fraction", None)
    if val_fraction is not None:  # AnoViT holds out a validation split (at least one image)
        return 0 if n_train < 2 else n_train - min(max(int(n_train * val_fraction), 1), n_train - 1)
    return n_train


def matmul_rate(hardware: Hardware, size: int = 1024, repeats: int = 4) -> float:
    """FLOP/s of square matmuls on the device in the run's precision (more than training gets)."""
    a = torch.rand(size, size, device=hardware.device)
    b = torch.rand(size, size, device=hardware.device)
    with hardware.autocast():
        a @ b  # warm-up
        hardware.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        hardware.synchronize()
    return 2 * size**3 * repeats / max(time.perf_counter() - start, 1e-9)


def probe_images(cfg: Any, batch: int, steps: int) -> int:
    """Training images a probe needs for `steps` steps of `batch` samples in its one epoch."""
    needed = images = batch * steps
    if getattr(cfg, "samples_per_epoch", None) is not None:
        return images  # the probe's epoch is set to enough samples, whatever the images
    while samples_per_epoch(cfg, images) < needed:
        images += 1
    return images


def estimate_plan(plan: RunPlan, todo: list[Cell]) -> Estimate:
    """Project the time of each cell in `todo` from bounded probes of the first cell."""
    start = time.perf_counter()
    cfg = plan.method_cfg
    epochs = int(getattr(cfg, "epochs", 0) or 0)
    batch = int(getattr(cfg, "batch_size", 1) or 1)
    counted = probe_fit(plan, probe_images(cfg, 1, 1), 1, 1)
    available = len(index_split(plan.dataset_root, plan.cells[0].category, "train"))
    if counted.steps:
        needed = probe_images(cfg, batch, TIMED_STEPS)
        flops = counted.setup_flops / counted.images * needed
        flops += counted.step_flops * batch * TIMED_STEPS
        predicted = flops / (PREDICTED_EFFICIENCY * matmul_rate(plan.hardware))
    else:
        needed = min(SETUP_IMAGES, available)
        predicted = counted.setup_seconds / counted.images * needed
    timed = None
    if needed <= available and needed > counted.images and predicted < TIMED_BUDGET_SECONDS:
        steps = TIMED_STEPS if counted.steps else 1
        timed = probe_fit(plan, needed, batch, steps, False, TIMED_BUDGET_SECONDS)
    setup = timed if timed is not None else counted
    warm = timed is not None and timed.steps >= 2
    cells = []
    for cell in todo:
        n_train = len(index_split(plan.dataset_root, cell.category, "train"))
        setup_seconds = setup.setup_seconds / setup.images * n_train
        setup_flops = counted.setup_flops / counted.images * n_train
        if not counted.steps:
            n_test = len(index_split(plan.dataset_root, cell.category, "test"))
            seconds = setup_seconds + n_test * setup.test_seconds
            cells.append(CellEstimate(cell, seconds, setup_flops))
            continue
        steps = math.ceil(samples_per_epoch(cfg, n_train) / batch) * epochs
        step_flops = counted.step_flops * batch  # the counted step had one sample
        step_seconds = timed.step_seconds if warm and timed else step_flops / (counted.rate or 1)
        seconds = setup_seconds + steps * step_seconds
        cells.append(CellEstimate(cell, seconds, setup_flops + steps * step_flops))
    basis = _basis(counted, timed if warm else None, setup, batch, epochs)
    return Estimate(cells, basis, [p for p in (counted, timed) if p], time.perf_counter() - start)


def _basis(counted: Probe, timed: Probe | None, setup: Probe, batch: int, epochs: int) -> str:
    images = f"{setup.images} training image{'s' if setup.images > 1 else ''}"
    setup_text = f"setup timed on {images} and scaled to each class"
    if not counted.steps:
        return f"{setup_text}, scoring timed on 2 test images (no training steps)"
    step = f"{counted.step_flops * batch / 1e9:,.1f} GFLOP per training step of {batch}"
    if timed is not None:
        return (
            f"timed: a warm training step of the full batch took {timed.step_seconds:.3g} s "
            f"({step}), x steps per epoch x {epochs} epochs; {setup_text}"
        )
    return (
        f"FLOPs: a training step of 1 sample counted and scaled to the batch ({step}), x "
        f"steps per epoch x {epochs} epochs, at the {(counted.rate or 0) / 1e9:,.1f} GFLOP/s "
        f"that step reached here (a full batch may run faster, on a GPU much faster); "
        f"{setup_text}"
    )
