"""Requeue and preemption: a killed training resumes from its checkpoint as if never stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from anobench.hardware import create_hardware, seed_everything
from anobench.training import TrainHistory, index_batches, train

EPOCHS = 8
CHECKPOINT_EVERY = 2
# One training, run as a script so that it can be killed; it sleeps per epoch to be killable.
SCRIPT = """
import sys
from pathlib import Path
import torch
from tests.test_resume import tiny_training
torch.set_num_threads(1)
tiny_training(Path(sys.argv[1]), epoch_seconds=float(sys.argv[2]))
Path(sys.argv[3]).write_text("finished")
"""


def tiny_training(checkpoint: Path | None, epoch_seconds: float = 0.0) -> TrainHistory:
    """A seeded nn.Linear regression: 8 epochs of 4 shuffled batches, checkpointed every 2."""
    seed_everything(0)
    inputs = torch.randn(32, 4)  # [N, 4]
    targets = inputs @ torch.randn(4, 1) + 0.1 * torch.randn(32, 1)  # [N, 1]
    model = nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    dropout = nn.Dropout(0.2)  # draws from the global RNG, which the checkpoint must restore

    def loss_fn(batch: torch.Tensor, epoch: int) -> torch.Tensor:
        return nn.functional.mse_loss(model(dropout(inputs[batch])), targets[batch])

    def batches(generator: torch.Generator) -> list[torch.Tensor]:
        time.sleep(epoch_seconds)
        return index_batches(len(inputs), 8, generator)

    return train(
        model,
        optimizer,
        loss_fn,
        batches,
        epochs=EPOCHS,
        hardware=create_hardware("cpu"),
        checkpoint_path=checkpoint,
        checkpoint_every=CHECKPOINT_EVERY,
        progress=False,
    )


def _start(checkpoint: Path, out: Path, epoch_seconds: float) -> subprocess.Popen:
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(checkpoint), str(epoch_seconds), str(out)], cwd=root
    )


def test_killed_training_resumes_from_its_checkpoint_with_the_same_losses(tmp_path: Path) -> None:
    checkpoint = tmp_path / "cell" / "checkpoint.pt"
    out = tmp_path / "history.json"
    job = _start(checkpoint, out, epoch_seconds=0.25)
    deadline = time.monotonic() + 120
    while not checkpoint.is_file():  # SIGKILL right after the first checkpoint, like a preemption
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    assert not out.exists()  # it did not finish
    saved = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 0 < saved < EPOCHS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the script, so the float sums match bit for bit
    try:
        resumed = tiny_training(checkpoint)  # the requeued job: same cell, same checkpoint
        uninterrupted = tiny_training(None)
    finally:
        torch.set_num_threads(threads)
    assert resumed.resumed_from == saved
    assert resumed.epochs_run == len(resumed.losses) == EPOCHS
    assert resumed.losses == uninterrupted.losses


def test_finished_training_is_not_run_again_from_its_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    first = tiny_training(checkpoint)
    again = tiny_training(checkpoint)
    assert again.resumed_from == EPOCHS and again.losses == first.losses


def test_a_requeued_slurm_job_is_resubmitted_with_the_same_overrides() -> None:
    pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    launcher = SlurmLauncher(max_num_timeout=3)
    overrides = ["method=knn", "category=weave", "seed=0"]
    requeued = launcher.checkpoint(overrides, "hydra.sweep.dir", 5, "job_id_for_5", {})
    assert requeued.function is launcher
    assert requeued.args == (overrides, "hydra.sweep.dir", 5, "job_id_for_5", {})
