"""Many jobs writing into one results folder: no record is lost, torn or half-written."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from anobench.results import (
    METRICS_FILE,
    Cell,
    iter_records,
    load_results,
    read_record,
    write_json_atomic,
)
from anobench.sweeps import sweep_status

WRITERS = 4
RECORDS = 20
PAYLOAD = 50_000  # characters per record, so that a write spans many system calls
# Python 3.12+ warns on fork() in a threaded process; the forked writers only touch files
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def _record(writer: int, index: int) -> dict:
    cell = Cell("synthetic", f"method{writer}", "backbone", f"class{index}", 0)
    return {
        "schema": 1,
        "status": "done",
        **dataclasses.asdict(cell),
        "metrics": {"image_auroc": index / RECORDS},
        "payload": str(writer) * PAYLOAD,
    }


def _write_cells(
    results_dir: Path, shared: Path, writer: int, start: multiprocessing.Event
) -> None:
    start.wait()
    for index in range(RECORDS):
        record = _record(writer, index)
        cell = Cell(*(record[k] for k in ("dataset", "method", "backbone", "category", "seed")))
        write_json_atomic(cell.directory(results_dir) / METRICS_FILE, record)
        write_json_atomic(shared, record)


@pytest.mark.filterwarnings(FORK_WARNING)
def test_concurrent_writers_lose_nothing_and_readers_never_see_a_torn_file(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results = tmp_path / "results"
    shared = tmp_path / "shared.json"  # every writer replaces this one after each cell
    writers = [
        context.Process(target=_write_cells, args=(results, shared, w, start))
        for w in range(WRITERS)
    ]
    for writer in writers:
        writer.start()
    start.set()
    reads = 0
    while any(w.is_alive() for w in writers) or reads == 0:
        for path in [shared, *results.rglob(METRICS_FILE)]:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            record = json.loads(text)  # a torn or partial file fails here
            assert record["payload"] == record["payload"][0] * PAYLOAD
            reads += 1
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    assert len(iter_records(results)) == WRITERS * RECORDS
    frame = load_results(results)  # the report's input, built from the files alone
    expected = {
        (f"method{w}", f"class{i}", i / RECORDS) for w in range(WRITERS) for i in range(RECORDS)
    }
    assert set(zip(frame["method"], frame["category"], frame["value"], strict=True)) == expected
    assert json.loads(shared.read_text())["category"] == f"class{RECORDS - 1}"
    assert not list(tmp_path.rglob("*.tmp"))
    assert reads > WRITERS


def _write_forever(path: Path, cell: Cell) -> None:
    for index in range(10**9):
        record = {"schema": 1, "status": "done", **dataclasses.asdict(cell), "index": index}
        write_json_atomic(path, {**record, "metrics": {"pro": 0.5}, "payload": "x" * 2_000_000})


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_writer_killed_mid_write_leaves_the_last_complete_record(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    cell = Cell("synthetic", "knn", "resnet18", "weave", 0)
    path = cell.directory(tmp_path) / METRICS_FILE
    for delay in (0.03, 0.07, 0.11, 0.17, 0.23, 0.31):
        writer = context.Process(target=_write_forever, args=(path, cell))
        writer.start()
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(timeout=30)
        record = read_record(path)
        assert record is None or len(record["payload"]) == 2_000_000
        if record is None:
            assert not path.exists()  # killed before the first rename: no file, not a torn one
    # temporary files of killed writers are neither records nor results
    assert [r for r in iter_records(tmp_path) if "payload" not in r] == []
    states = sweep_status(tmp_path)
    assert [s.state for s in states] == ["done" if path.exists() else "missing"]
