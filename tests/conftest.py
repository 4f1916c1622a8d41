"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from anobench.data.synthetic import SyntheticSpec, generate

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each computes on one thread (tiny tensors gain
    # nothing from more, and oversubscribed OpenMP threads spin-wait), runs it starts too.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

TINY_SYNTHETIC = SyntheticSpec(
    image_size=32, n_train=8, n_test_good=4, n_test_defect=6, categories=("weave", "washer")
)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic MVTec tree (one texture, one greyscale object), written once per run."""
    return generate(tmp_path_factory.mktemp("synthetic"), TINY_SYNTHETIC)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids spin-wait stalls on a busy two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def knn_cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Finished tiny knn cells of weave and washer with kept models, computed once per run."""
    from tests.helpers import run_tiny

    base = tmp_path_factory.mktemp("knn")
    run_tiny(base, "knn", category="weave")
    run_tiny(base, "knn", category="washer")
    return base


@pytest.fixture()
def knn_copy(knn_cells: Path, tmp_path: Path) -> Path:
    """A private copy of the finished knn cells (and their synthetic data) to change."""
    for name in ("results", "cache"):
        shutil.copytree(knn_cells / name, tmp_path / name)
    return tmp_path
