"""Result records: cell paths, atomic writes, and all records of a results tree as one DataFrame."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from anobench.errors import AnobenchError

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
MAPS_FILE = "maps.npz"
CHECKPOINT_FILE = "checkpoint.pt"
SCHEMA_VERSION = 1
RECORD_COLUMNS = ["dataset", "method", "backbone", "category", "seed"]


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method with a backbone on one class of one dataset with one seed."""

    dataset: str
    method: str
    backbone: str
    category: str
    seed: int

    def directory(self, results_dir: Path) -> Path:
        return (
            results_dir
            / self.dataset
            / self.method
            / self.backbone
            / self.category
            / f"seed{self.seed}"
        )

    def label(self) -> str:
        return f"{self.method}/{self.category}/seed{self.seed}"


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes atomically (see write_atomic)."""
    write_atomic(path, lambda handle: handle.write(data))


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    write_bytes_atomic(path, json.dumps(record, indent=2, default=_json_default).encode())


def write_maps_atomic(path: Path, maps: np.ndarray, paths: list[str]) -> None:
    """Anomaly maps [N, H, W] (float16 when in range), each path relative to its class folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        # float16 halves the size; maps beyond its range (65504) keep float32 rather than overflow
        fits = np.abs(maps).max(initial=0.0) < np.finfo(np.float16).max
        stored = maps.astype(np.float16) if fits else maps.astype(np.float32)
        np.savez_compressed(tmp, maps=stored, paths=np.array(paths))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_writable(results_dir: Path) -> None:
    """Fail early, before any training, when the results folder cannot be written."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-test"):
            pass
    except OSError as err:
        raise AnobenchError(
            f"results_dir={results_dir} is not writable ({err.strerror}); "
            "choose another with results_dir=PATH."
        ) from err


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("anobench", "torch", "torchvision", "timm", "numpy", "scikit-learn", "hydra-core"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def git_commit() -> str | None:
    """The anobench checkout's commit (with '+dirty' when modified), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def read_record(path: Path) -> dict[str, Any] | None:
    """A record, or None if the file is missing or unreadable (a torn write from old tools)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def iter_records(results_dir: Path, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    return [
        record
        for path in sorted(results_dir.rglob(filename))
        if (record := read_record(path)) is not None
    ]


def load_results(results_dir: Path) -> pd.DataFrame:
    """Every finished cell under results_dir as a tidy frame: one row per cell and metric."""
    if not results_dir.is_dir():
        raise AnobenchError(
            f"results folder {results_dir} does not exist; run `anobench run` first."
        )
    rows = []
    for record in iter_records(results_dir):
        base = {key: record[key] for key in RECORD_COLUMNS}
        base["device"] = record.get("device")
        for metric, value in record.get("metrics", {}).items():
            rows.append({**base, "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=[*RECORD_COLUMNS, "device", "metric", "value"])
