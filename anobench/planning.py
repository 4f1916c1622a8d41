"""`anobench run dry_run=true`: the cells, their epochs, and a time from measured epochs."""

from __future__ import annotations

import dataclasses
import time

from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from anobench.data.mvtec import AnomalyDataset, index_split
from anobench.hardware import seed_everything
from anobench.methods import Method, MethodContext, create_method
from anobench.results import CHECKPOINT_FILE, Cell
from anobench.runner import RunPlan, is_done, ordered_loader


@dataclasses.dataclass(frozen=True)
class EpochTiming:
    setup_seconds: float  # feature caching, statistics: paid once per cell
    epoch_seconds: float


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


def measure_epochs(plan: RunPlan) -> EpochTiming | None:
    """Fit the first cell for one and for two epochs; the difference is one epoch's time."""
    if not hasattr(plan.method_cfg, "epochs") or not plan.cells:
        return None
    loader = cell_loader(plan, "train")
    timed_fit(plan, loader, 1)  # warm-up: allocator, cudnn autotuning
    one, _ = timed_fit(plan, loader, 1)
    two, _ = timed_fit(plan, loader, 2)
    epoch = max(two - one, 1e-6)
    return EpochTiming(setup_seconds=max(one - epoch, 0.0), epoch_seconds=epoch)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_plan(plan: RunPlan, console: Console) -> None:
    """Print the cells with their state and the projected time for the remaining ones."""
    epochs = getattr(plan.method_cfg, "epochs", None)
    table = Table(title=f"plan: {len(plan.cells)} cells on {plan.hardware.describe()}")
    for column in ("method", "backbone", "category", "seed", "epochs", "state"):
        table.add_column(column)
    todo = 0
    for cell in plan.cells:
        done = is_done(cell, plan)
        todo += not done
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
    timing = measure_epochs(plan) if todo else None
    if timing is None:
        console.print(f"{todo} cells to run; no epoch-based training to time.")
        return
    per_cell = timing.setup_seconds + timing.epoch_seconds * (epochs or 1)
    console.print(
        f"measured on {plan.cells[0].category}: {timing.epoch_seconds:.2f} s/epoch, "
        f"{timing.setup_seconds:.1f} s setup; projected {_duration(per_cell)} per cell, "
        f"{_duration(per_cell * todo)} for the {todo} cells to run "
        "(classes differ in size: a projection, not a promise)."
    )


def _has_checkpoint(plan: RunPlan, cell: Cell) -> bool:
    return (cell.directory(plan.results_dir) / CHECKPOINT_FILE).is_file()
