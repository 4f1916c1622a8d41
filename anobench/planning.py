"""`anobench run dry_run=true`: the cells, their state, and a bounded time estimate."""

from __future__ import annotations

import dataclasses
import time

from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from anobench.data.mvtec import AnomalyDataset, index_split
from anobench.estimate import TIMED_BUDGET_SECONDS, TIMED_STEPS, estimate_plan
from anobench.hardware import seed_everything
from anobench.methods import Method, MethodContext, create_method
from anobench.results import CHECKPOINT_FILE, Cell
from anobench.runner import RunPlan, is_done, ordered_loader


def cell_loader(plan: RunPlan, split: str) -> DataLoader:
    """The first cell's `split` images at the method's input size, in evaluation batches."""
    cell = plan.cells[0]
    samples = index_split(plan.dataset_root, cell.category, split)
    dataset = AnomalyDataset(samples, plan.method_cfg.image_size, plan.method_cfg.resize)
    return ordered_loader(dataset, plan.hardware_cfg, plan.hardware.is_cuda, cell.seed)


def timed_fit(plan: RunPlan, loader: DataLoader, epochs: int) -> tuple[float, Method]:
    """Fit a fresh method on the first cell for `epochs` epochs; (seconds, fitted method)."""
    seed_everything(plan.cells[0].seed)
    cfg = dataclasses.replace(plan.method_cfg, epochs=epochs)
    context = MethodContext(
        hardware=plan.hardware,
        backbone=plan.backbone_cfg,
        category=plan.cells[0].category,
        progress=False,
        cache_features=plan.hardware_cfg.cache_features,
    )
    method = create_method(cfg.name, cfg, context)
    plan.hardware.synchronize()
    start = time.perf_counter()
    method.fit(loader)
    plan.hardware.synchronize()
    return time.perf_counter() - start, method


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_plan(plan: RunPlan, console: Console) -> None:
    """Print the cells with their state, then a bounded time estimate for the ones to run."""
    epochs = getattr(plan.method_cfg, "epochs", None)
    table = Table(title=f"plan: {len(plan.cells)} cells on {plan.hardware.describe()}")
    for column in ("method", "backbone", "category", "seed", "epochs", "state"):
        table.add_column(column)
    todo = []
    for cell in plan.cells:
        done = is_done(cell, plan)
        if not done:
            todo.append(cell)
        state = "done" if done else ("checkpoint" if _has_checkpoint(plan, cell) else "todo")
        table.add_row(
            cell.method,
            cell.backbone,
            cell.category,
            str(cell.seed),
            str(epochs if epochs is not None else "-"),
            state,
        )
    console.print(table)
    if not todo:
        console.print("nothing to run: every cell is done.")
        return
    console.print(
        f"timing on {plan.cells[0].category}: setup on a few training images and one training "
        "step of one sample (the fit is stopped before its first weight update), then up to "
        f"{TIMED_STEPS} full-batch steps if predicted under {TIMED_BUDGET_SECONDS:.0f} s "
        "(stopped after that); nothing is written.",
        soft_wrap=True,
    )
    estimate = estimate_plan(plan, todo)
    seconds = [cell.seconds for cell in estimate.cells]
    low, high = min(seconds), max(seconds)
    per_cell = _duration(low) if high - low < 60 else f"{_duration(low)} to {_duration(high)}"
    early = (
        ", early stopping may end training sooner" if hasattr(plan.method_cfg, "patience") else ""
    )
    console.print(
        f"estimate: {per_cell} per cell, {_duration(estimate.total_seconds)} for the "
        f"{len(todo)} cells to run on {plan.hardware.describe()} (measured in "
        f"{estimate.probe_seconds:.0f} s; a projection, not a promise: classes differ in "
        f"size{early}).",
        soft_wrap=True,
    )
    console.print(f"basis: {estimate.basis}.", soft_wrap=True, markup=False)


def _has_checkpoint(plan: RunPlan, cell: Cell) -> bool:
    return (cell.directory(plan.results_dir) / CHECKPOINT_FILE).is_file()
