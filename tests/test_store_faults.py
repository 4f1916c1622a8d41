"""A results folder under attack or on a flaky cluster: each fault injected, behaviour asserted.

Issue 20's results-store rows: crafted and broken checkpoints, damaged records and maps, writes
outside results_dir, a full disk, leftovers of killed runs, two runs on one cell, errors twice.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

import anobench
from anobench.cli import main
from anobench.errors import AnobenchError
from anobench.locks import LOCK_FILE, CellBusyError, CellLock, lock_state
from anobench.results import Cell, confine
from tests.helpers import cell_dir, tiny_run_args
from tests.test_resume import EPOCHS, tiny_training

CLASSES = "category=[weave,washer]"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Finished tiny knn cells of the four synthetic classes, computed once for the module."""
    base = tmp_path_factory.mktemp("finished")
    assert main(tiny_run_args(base, "category=[weave,marble,washer,chip]")) == 0
    return base


@pytest.fixture()
def run_dir(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished results (and their synthetic data) to break."""
    for name in ("results", "cache"):
        shutil.copytree(finished / name, tmp_path / name)
    return tmp_path


@contextmanager
def warnings_of_anobench() -> Iterator[list[str]]:
    """The warning lines the anobench logger emits in the block (whatever the root config)."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("anobench")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _naming(lines: list[str], path: Path) -> list[str]:
    return [line for line in lines if str(path) in line]


# --- records and maps ----------------------------------------------------------------------------


def _damaged(text: str, kind: str) -> str:
    record = json.loads(text)
    return {
        "object": "{}",
        "list": "[]",
        "truncated": text[: len(text) // 2],
        "metric": json.dumps({**record, "metrics": {**record["metrics"], "image_auroc": "abc"}}),
    }[kind]


def test_damaged_records_are_skipped_by_readers_then_set_aside_and_recomputed_by_a_run(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_dir / "results"
    kinds = {"weave": "object", "marble": "list", "washer": "truncated", "chip": "metric"}
    records = {category: cell_dir(run_dir, category) / "metrics.json" for category in kinds}
    damaged = {c: _damaged(records[c].read_text(), kind) for c, kind in kinds.items()}
    for category, text in damaged.items():
        records[category].write_text(text)
    for command, code in (
        (["report", str(results)], 2),  # no finished cell left to tabulate
        (["status", str(results)], 1),
        (["export-maps", str(results), "--out", str(run_dir / "tiff")], 0),
    ):
        with warnings_of_anobench() as lines:
            assert main(command) == code, command
        assert all(len(_naming(lines, path)) == 1 for path in records.values()), (command, lines)
    assert not list((run_dir / "tiff").rglob("*.tiff"))  # maps of unfinished cells: not exported

    with warnings_of_anobench() as lines:
        assert main(tiny_run_args(run_dir, f"category=[{','.join(kinds)}]")) == 0
    assert all(len(_naming(lines, path)) == 1 for path in records.values()), lines
    for category, path in records.items():
        assert (path.parent / "metrics.json.corrupt").read_text() == damaged[category]
        assert json.loads(path.read_text())["metrics"]["image_auroc"] is not None
    capsys.readouterr()


def test_truncated_maps_are_reported_the_rest_exported_and_the_cell_recomputed(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_dir / "results"
    maps = cell_dir(run_dir, "weave") / "maps.npz"
    maps.write_bytes(maps.read_bytes()[:300])
    with warnings_of_anobench() as lines:
        assert main(["export-maps", str(results), "--out", str(run_dir / "tiff")]) == 0
    assert len(_naming(lines, maps)) == 1
    exported = {p.parts[-4] for p in (run_dir / "tiff").rglob("*.tiff")}
    assert exported == {"marble", "washer", "chip"}  # all but the damaged weave
    assert main(["report", str(results), "--figures"]) == 0
    flat = "".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "skippeddamagedmaps" in flat and str(maps) in flat
    assert (results / "figures" / "synthetic" / "washer.png").is_file()

    assert main(tiny_run_args(run_dir, CLASSES)) == 0
    assert (maps.parent / "maps.npz.corrupt").is_file()
    assert main(["export-maps", str(results), "--out", str(run_dir / "again")]) == 0
    again = {p.parts[-4] for p in (run_dir / "again").rglob("*.tiff")}
    assert again == {"weave", "marble", "washer", "chip"}


# --- checkpoints ---------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint.pt would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_cannot_run_code_and_training_restarts(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": _Payload(marker), "epoch": 4}, checkpoint)
    history = tiny_training(checkpoint)
    assert not marker.exists()
    assert history.resumed_from is None and history.epochs_run == EPOCHS
    assert (tmp_path / "checkpoint.pt.unusable").is_file()
    assert history.losses == tiny_training(None).losses


def test_no_module_unpickles_arbitrary_objects() -> None:
    sources = Path(anobench.__file__).parent.rglob("*.py")
    offenders = [
        path
        for path in sources
        if any(s in path.read_text() for s in ("weights_only=False", "allow_pickle=True"))
    ]
    assert offenders == []


def test_a_truncated_checkpoint_or_one_of_another_network_is_set_aside(tmp_path: Path) -> None:
    uninterrupted = tiny_training(None).losses
    checkpoint = tmp_path / "checkpoint.pt"
    tiny_training(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    truncated = tiny_training(checkpoint)
    assert truncated.resumed_from is None and truncated.losses == uninterrupted
    other = nn.Linear(4, 2)  # another setting: the checkpoint's shapes do not fit the model
    torch.save(
        {
            "model": other.state_dict(),
            "optimizer": torch.optim.Adam(other.parameters()).state_dict(),
            "scaler": {},
            "rng": {},
            "losses": [1.0],
            "epoch": 1,
        },
        checkpoint,
    )
    mismatched = tiny_training(checkpoint)
    assert mismatched.resumed_from is None and mismatched.losses == uninterrupted
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "checkpoint.pt.unusable",
        "checkpoint.pt.unusable-2",
    ]


def test_a_planted_checkpoint_is_never_loaded_and_overwrite_starts_clean(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weave = cell_dir(run_dir, "weave")
    (weave / "metrics.json").unlink()
    marker = run_dir / "payload-ran"
    torch.save({"model": _Payload(marker)}, weave / "checkpoint.pt")
    assert main(tiny_run_args(run_dir, CLASSES)) == 0
    assert "checkpoint.json names its setting" in capsys.readouterr().out
    assert (weave / "checkpoint.pt.mismatch").is_file() and not marker.exists()

    (weave / "checkpoint.pt").write_bytes(b"left by a killed run")
    assert main(tiny_run_args(run_dir, CLASSES, "overwrite=true")) == 0
    assert "overwrite=true: removed" in capsys.readouterr().out
    assert not (weave / "checkpoint.pt").exists() and not (weave / "checkpoint.json").exists()


# --- where files go ------------------------------------------------------------------------------


def test_no_write_leaves_results_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    with pytest.raises(AnobenchError, match="outside results_dir"):
        confine(Cell("synthetic", "knn", "bb", "../../../../escape", 0).directory(results), results)
    outside = tmp_path / "outside"
    outside.mkdir()
    results.mkdir()
    (results / "synthetic").symlink_to(outside, target_is_directory=True)  # planted by another user
    assert main(tiny_run_args(tmp_path, "category=weave")) == 2
    out, err = capsys.readouterr()
    assert "outside results_dir" in err and "Traceback" not in out + err
    assert list(outside.rglob("*")) == []


def test_a_full_disk_is_one_line_recorded_where_possible_and_leaves_no_half_record(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weave = cell_dir(run_dir, "weave")
    (weave / "metrics.json").unlink()
    fsync = os.fsync

    def full_for_records(fd: int) -> None:
        if ".metrics.json." in str(Path(f"/proc/self/fd/{fd}").readlink()):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_records)
    assert main(tiny_run_args(run_dir, CLASSES)) == 2  # the disk, not anobench: exit 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert (out + err).count("no space left on the device") == 1
    assert "no space left" in json.loads((weave / "error.json").read_text())["error"]
    assert not (weave / "metrics.json").exists() and not list(weave.glob(".*.tmp"))

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # nothing can be written, error.json neither
    assert main(tiny_run_args(run_dir, CLASSES)) == 2  # the disk, not anobench: exit 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "no space left on the device" in err


def test_leftovers_of_a_killed_run_are_removed_when_their_cell_runs_again(run_dir: Path) -> None:
    weave, washer = cell_dir(run_dir, "weave"), cell_dir(run_dir, "washer")
    (weave / "metrics.json").unlink()  # killed before its record
    stale = [weave / ".checkpoint.pt.k3j2x.tmp", weave / ".metrics.json.ab12.tmp"]
    stale.append(weave / ".maps.npz.q8w.npz")  # the temporary name of older versions
    for path in [*stale, washer / ".maps.npz.z1.tmp"]:
        path.write_bytes(b"x" * 1000)
    assert main(tiny_run_args(run_dir, CLASSES)) == 0
    assert not any(path.exists() for path in stale)
    assert (washer / ".maps.npz.z1.tmp").exists()  # a finished cell is not run, nor touched
    assert json.loads((weave / "metrics.json").read_text())["status"] == "done"


# --- two runs on one cell ------------------------------------------------------------------------


def _plant_lock(cell: Path, pid: int, host: str, age: float = 0.0, job: str | None = None) -> Path:
    cell.mkdir(parents=True, exist_ok=True)
    lock = cell / LOCK_FILE
    owner = {"pid": pid, "host": host, "started": "2024-01-01T00:00:00+00:00", "token": "t"}
    owner["job"] = job
    lock.write_text(json.dumps(owner))
    stamp = time.time() - age
    os.utime(lock, (stamp, stamp))
    return lock


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process on this host that owns nothing: the pid of a running job."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def test_a_live_lock_is_respected_and_a_dead_or_silent_one_taken_over(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    cell = tmp_path / "cell"
    lock = _plant_lock(cell, sleeper.pid, socket.gethostname())
    with pytest.raises(CellBusyError, match=f"pid {sleeper.pid}"):
        CellLock(cell).acquire()
    assert lock_state(lock) == "held"
    sleeper.kill()
    sleeper.wait()
    assert lock_state(lock) == "stale"  # its owner died on this host
    with CellLock(cell) as mine:
        assert json.loads(lock.read_text())["token"] == mine.owner.token
    assert not lock.exists()

    _plant_lock(cell, 1, "other-node")  # another node, heartbeat fresh
    with pytest.raises(CellBusyError, match="other-node"):
        CellLock(cell, heartbeat=0.2, stale=60).acquire()
    _plant_lock(cell, 1, "other-node", age=120)  # no heartbeat for longer than `stale`
    with CellLock(cell, heartbeat=0.2, stale=60):
        assert lock_state(lock, stale=60) == "held"
    _plant_lock(cell, 1, "other-node", age=1.0)  # late, not yet stale: wait, then take over
    with CellLock(cell, heartbeat=0.2, stale=2.0) as mine:
        assert json.loads(lock.read_text())["token"] == mine.owner.token


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_previous_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = tmp_path / "cell"
    lock = _plant_lock(cell, 1, "other-node", job="4242")  # preempted on another node just now
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    with pytest.raises(CellBusyError):
        CellLock(cell, stale=60).acquire()  # another job's: respected
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(CellBusyError):
        CellLock(cell, stale=60).acquire()  # another task of the same run: respected
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with CellLock(cell, stale=60) as mine:  # the same job, requeued: its old run has ended
        assert json.loads(lock.read_text())["job"] == mine.owner.job == "4242"


def test_a_cell_locked_by_a_running_job_is_skipped_shown_as_running_then_done(
    run_dir: Path, sleeper: subprocess.Popen, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_dir / "results"
    weave = cell_dir(run_dir, "weave")
    (weave / "metrics.json").unlink()
    _plant_lock(weave, sleeper.pid, socket.gethostname())
    assert main(tiny_run_args(run_dir, CLASSES)) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"weave/seed0: locked by pid {sleeper.pid}" in out and "that run finishes it" in out
    assert not (weave / "metrics.json").exists()
    assert main(["status", str(results)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"running: synthetic/{weave.parts[-4]}/resnet18.tv_in1k/weave/seed0" in out
    sleeper.kill()
    sleeper.wait()
    assert main(tiny_run_args(run_dir, CLASSES)) == 0
    assert json.loads((weave / "metrics.json").read_text())["status"] == "done"
    assert not (weave / LOCK_FILE).exists()


# --- messages ------------------------------------------------------------------------------------


def test_the_error_of_a_failed_cell_reaches_the_terminal_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_run_args(tmp_path, "category=weave")
    assert main([*args, "dry_run=true"]) == 0  # writes the synthetic data
    root = next((tmp_path / "cache" / "synthetic").iterdir())
    broken = sorted((root / "weave" / "test" / "good").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:40])
    capsys.readouterr()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert (out + err).count(f"cannot read image {broken}") == 1
    (log,) = (tmp_path / "results" / "_logs").glob("*.log")
    assert f"cannot read image {broken}" in log.read_text()  # and the run log keeps it
