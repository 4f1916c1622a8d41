"""The one gradient loop: autocast, grad scaling, NaN check, progress, resumable checkpoints."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from anobench.hardware import Hardware, epoch_generator, rng_state, set_rng_state
from anobench.progress import progress as progress_bar
from anobench.results import set_aside, write_atomic

log = logging.getLogger("anobench")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the cell stops and records this."""


class EpochHook(Protocol):
    """Called after each epoch; returns True to stop. Its state is checkpointed with the model."""

    def __call__(self, epoch: int, train_loss: float) -> bool: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    epochs_run: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None  # epochs already done when this call started


def index_batches(
    n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False
) -> list[Tensor]:
    """A shuffled epoch of index batches over n items."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    batches = list(order.split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def sampled_batches(
    n: int, samples_per_epoch: int, batch_size: int, generator: torch.Generator
) -> list[Tensor]:
    """An epoch of a fixed sample count drawn by repeating shuffled passes over n items."""
    passes = math.ceil(samples_per_epoch / n)
    order = torch.cat(
        [torch.randperm(n, generator=generator, device=generator.device) for _ in range(passes)]
    )
    return list(order[:samples_per_epoch].split(batch_size))


def _save_atomic(state: dict, path: Path) -> None:
    """torch.save to a unique temporary file, fsync, then rename over `path`."""
    write_atomic(path, lambda handle: torch.save(state, handle))


def portable_rng_state() -> dict:
    """rng_state() as tensors and lists only, so a checkpoint loads with weights_only=True."""
    state = rng_state()
    version, internal, gauss = state["python"]
    name, keys, position, has_gauss, cached = state["numpy"]
    portable = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": state["torch"],
    }
    if "cuda" in state:
        portable["cuda"] = list(state["cuda"])
    return portable


def restore_rng_state(portable: dict) -> None:
    """Undo portable_rng_state (RNG states must be CPU tensors, wherever the file was loaded to)."""
    version, internal, gauss = portable["python"]
    name, keys, position, has_gauss, cached = portable["numpy"]
    state = {
        "python": (int(version), tuple(int(v) for v in internal), gauss),
        "numpy": (
            name,
            keys.cpu().numpy().astype(np.uint32),
            int(position),
            int(has_gauss),
            cached,
        ),
        "torch": portable["torch"].cpu(),
    }
    if "cuda" in portable:
        state["cuda"] = [generator.cpu() for generator in portable["cuda"]]
    set_rng_state(state)


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    hook: EpochHook | None,
    hardware: Hardware,
) -> dict | None:
    """Load a checkpoint into the training state; None (state untouched) if it cannot be used.

    Loading is weights-only: tensors and plain containers, never arbitrary pickled objects, so a
    checkpoint planted in a shared results folder cannot run code. A checkpoint that does not
    load (truncated, crafted, or of another network) is set aside with a warning.
    """
    before = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "hook": hook.state_dict() if hook is not None else None,
        "rng": rng_state(),
    }
    try:
        state = torch.load(path, map_location=hardware.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if hook is not None and state.get("hook") is not None:
            hook.load_state_dict(state["hook"])
        restore_rng_state(state["rng"])
        losses = [float(v) for v in state["losses"]]
        epoch = int(state["epoch"])
    except Exception as err:  # any fault of the file: it is set aside, training restarts
        model.load_state_dict(before["model"])
        optimizer.load_state_dict(before["optimizer"])
        scaler.load_state_dict(before["scaler"])
        if hook is not None:
            hook.load_state_dict(before["hook"])
        set_rng_state(before["rng"])
        aside = set_aside(path, "unusable")
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning(
            "checkpoint %s cannot be used (%s: %s); set aside as %s, training starts from epoch 0",
            path,
            type(err).__name__,
            reason[:200],
            aside.name,
        )
        return None
    return {"losses": losses, "epoch": epoch, "stopped_early": bool(state.get("stopped_early"))}


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, int], Tensor],
    batches: Callable[[torch.Generator], Iterable[Any]],
    *,
    epochs: int,
    hardware: Hardware,
    seed: int = 0,
    desc: str = "train",
    checkpoint_path: Path | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
    epoch_hook: EpochHook | None = None,
) -> TrainHistory:
    """Run `epochs` epochs of `loss_fn(batch, epoch)` over `batches(generator)`.

    Each epoch's batches come from a generator seeded by (seed, epoch), so a run resumed from a
    checkpoint draws exactly the batches the uninterrupted run would have drawn. Every
    `checkpoint_every` epochs the model, optimizer, scaler, RNG states, history and hook state
    are written atomically to `checkpoint_path`; if that file exists at the start, training
    continues from it. The loss is checked for NaN/inf once per epoch (one host sync).
    """
    scaler = hardware.grad_scaler()
    history = TrainHistory()
    start_epoch = 0
    if checkpoint_path is not None and checkpoint_path.is_file():
        resumed = _resume(checkpoint_path, model, optimizer, scaler, epoch_hook, hardware)
        if resumed is not None:
            history.losses = resumed["losses"]
            start_epoch = resumed["epoch"]
            history.resumed_from = start_epoch
            history.stopped_early = resumed["stopped_early"]
            log.info(
                "%s: resumed at epoch %d/%d from %s", desc, start_epoch, epochs, checkpoint_path
            )
    model.train()
    epoch_bar = progress_bar(
        range(start_epoch, epochs),
        desc=desc,
        initial=start_epoch,
        total=epochs,
        enabled=progress,
        unit="epoch",
    )
    for epoch in epoch_bar:
        if history.stopped_early:
            break
        generator = epoch_generator(seed, epoch)
        loss_sum = torch.zeros((), device=hardware.device)
        steps = 0
        for batch in batches(generator):
            with hardware.autocast():
                loss = loss_fn(batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach().float()
            steps += 1
        mean_loss = loss_sum.item() / max(steps, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"training loss became {mean_loss} in epoch {epoch + 1}; try a lower learning "
                "rate or hardware.precision=fp32"
            )
        history.losses.append(mean_loss)
        epoch_bar.set_postfix(loss=f"{mean_loss:.4g}")
        if epoch_hook is not None and epoch_hook(epoch, mean_loss):
            history.stopped_early = True
        done = epoch + 1
        last = done == epochs or history.stopped_early
        if checkpoint_path is not None and (done % max(checkpoint_every, 1) == 0 or last):
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": portable_rng_state(),
                    "hook": epoch_hook.state_dict() if epoch_hook is not None else None,
                    "losses": history.losses,
                    "epoch": done,
                    "stopped_early": history.stopped_early,
                },
                checkpoint_path,
            )
    epoch_bar.close()
    history.epochs_run = len(history.losses)
    model.eval()
    return history
