"""Result records: cell paths, atomic writes, record checks, all records as one DataFrame.

The results store's guarantees live here: every file is written to a temporary file in its
folder, fsynced, given the permissions the umask gives a new file, and renamed over the target;
a record counts only when it parses and validates; a damaged file is set aside, never deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from anobench.errors import AnobenchError
from anobench.metrics import METRIC_IDS

log = logging.getLogger("anobench")

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
MAPS_FILE = "maps.npz"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_IDENTITY_FILE = "checkpoint.json"  # the identity checkpoint.pt was written under
OVERRIDES_FILE = "overrides.yaml"
SCHEMA_VERSION = 2  # 2: variant, overrides, pretrained and identity; 1 is still read
READABLE_SCHEMAS = (1, 2)
RECORD_COLUMNS = ["dataset", "method", "backbone", "category", "seed", "variant"]
VARIANT_SEPARATOR = "+"  # <method>+<variant> names a variant's folder


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method setting with a backbone on one class of a dataset, one seed.

    `variant` is "" for the method's reference setting and a short hash of the overrides
    otherwise (see anobench/identity.py); it names the folder `<method>+<variant>`.
    """

    dataset: str
    method: str
    backbone: str
    category: str
    seed: int
    variant: str = ""

    @classmethod
    def of(cls, record: dict[str, Any]) -> Cell:
        """The cell of a record or sweep entry (schema 1 entries have no variant)."""
        return cls(
            record["dataset"],
            record["method"],
            record["backbone"],
            record["category"],
            record["seed"],
            record.get("variant") or "",
        )

    @property
    def model_folder(self) -> str:
        return f"{self.method}{VARIANT_SEPARATOR}{self.variant}" if self.variant else self.method

    def directory(self, results_dir: Path) -> Path:
        return (
            results_dir
            / self.dataset
            / self.model_folder
            / self.backbone
            / self.category
            / f"seed{self.seed}"
        )

    def label(self) -> str:
        return f"{self.model_folder}/{self.category}/seed{self.seed}"


def split_model_folder(name: str) -> tuple[str, str]:
    """`knn+3fa2c1d0` -> ("knn", "3fa2c1d0"); `knn` -> ("knn", "")."""
    method, _, variant = name.partition(VARIANT_SEPARATOR)
    return method, variant


# --- writing -------------------------------------------------------------------------------------


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a new file gets under this process's umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The permissions a new folder gets under this process's umask (0755 under umask 022)."""
    return 0o777 & ~_umask()


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temporary file in the same folder, fsync, then rename over `path`.

    The file gets the umask's permissions (mkstemp would leave 0600), so a results folder shared
    on a cluster or read by a CI job under another user stays readable. A failure (disk full)
    removes the temporary file and leaves any previous `path` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        with Path(tmp).open("wb") as handle:  # a named handle: writers such as tifffile need one
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
    # float16 halves the size; maps beyond its range (65504) keep float32 rather than overflow
    fits = np.abs(maps).max(initial=0.0) < np.finfo(np.float16).max
    stored = maps.astype(np.float16) if fits else maps.astype(np.float32)
    write_atomic(
        path, lambda handle: np.savez_compressed(handle, maps=stored, paths=np.array(paths))
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def confine(path: Path, results_dir: Path) -> Path:
    """`path` when it lies inside results_dir (symlinks resolved); else AnobenchError.

    Defence in depth under the name checks of the config: no write may leave results_dir, not
    through `..` in a name nor through a symlink planted in a shared results folder.
    """
    root = results_dir.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise AnobenchError(
            f"refusing to write {path}: it resolves to {resolved}, outside results_dir={root}; "
            "use plain folder names and remove symlinks that lead out of the results folder."
        )
    return path


def set_aside(path: Path, reason: str) -> Path:
    """Rename `path` to `<name>.<reason>` (numbered if taken) so it is kept but never read."""
    target = path.with_name(f"{path.name}.{reason}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.{reason}-{number}")
    os.replace(path, target)
    return target


def is_temporary(path: Path) -> bool:
    """A temporary file of write_atomic (`.<name>.*.tmp`, or `.maps.npz.*.npz` of old tools)."""
    name = path.name
    return name.startswith(".") and (
        name.endswith(".tmp") or (name.startswith(f".{MAPS_FILE}.") and name.endswith(".npz"))
    )


def remove_temporaries(cell_dir: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in a cell folder; return them.

    Call only while holding the cell's lock: then no other process writes in the folder.
    """
    if not cell_dir.is_dir():
        return []
    stale = [p for p in cell_dir.iterdir() if is_temporary(p) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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


# --- reading and checking ------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None if the file is missing, unreadable or not an object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _cell_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not a record"
    for key in ("dataset", "method", "backbone", "category"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"has no valid '{key}'"
    seed = record.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return "has no integer 'seed'"
    if not isinstance(record.get("variant", ""), str):
        return "has a 'variant' that is not a string"
    return None


def record_problem(record: Any) -> str | None:
    """Why a parsed metrics.json is not a finished record; None when it validates."""
    problem = _cell_problem(record)
    if problem is not None:
        return problem
    if record.get("schema") not in READABLE_SCHEMAS:
        return f"has schema {record.get('schema')!r}, not one of {READABLE_SCHEMAS}"
    if record.get("status") != "done":
        return f"has status {record.get('status')!r}, not 'done'"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or not set(metrics) & set(METRIC_IDS):
        return "has no 'metrics'"
    for name in set(metrics) & set(METRIC_IDS):  # other entries (intervals, ...) are not checked
        value = metrics[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value) and 0 <= value <= 1):
            return f"has metric {name}={value!r}, not a fraction in [0, 1] or null"
    if record.get("schema", 1) >= 2:
        if not isinstance(record.get("overrides"), dict):
            return "has no 'overrides'"
        identity = record.get("identity")
        if not isinstance(identity, dict) or not isinstance(identity.get("hash"), str):
            return "has no 'identity'"
    return None


def error_problem(record: Any) -> str | None:
    """Why a parsed error.json is not a failure record; None when it is one."""
    problem = _cell_problem(record)
    if problem is None and not isinstance(record.get("error", ""), str):
        return "has an 'error' that is not a string"
    return problem


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    METRICS_FILE: record_problem,
    ERROR_FILE: error_problem,
}


def read_checked(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) when valid; (None, None) when missing; (None, problem) when damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot be read ({err})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"is not valid JSON ({err.msg} at character {err.pos})"
    problem = _CHECKS.get(path.name, _cell_problem)(record)
    return (None, problem) if problem else (record, None)


def damaged_warning(path: Path, problem: str) -> str:
    return f"skipped damaged {path.name} {path} ({problem}); the next run recomputes its cell"


def scan_records(
    results_dir: Path, filename: str = METRICS_FILE
) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Every valid record named `filename` under results_dir, and the damaged ones' problems."""
    records, damaged = [], []
    for path in sorted(results_dir.rglob(filename)):
        if any(part.startswith((".", "_")) for part in path.relative_to(results_dir).parts[:-1]):
            continue  # hidden and bookkeeping folders (_sweeps, _logs, _hydra) hold no cells
        record, problem = read_checked(path)
        if record is not None:
            records.append(record)
        elif problem is not None:
            damaged.append((path, problem))
    return records, damaged


def iter_records(results_dir: Path, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    """The valid records under results_dir; one warning line names each damaged file."""
    records, damaged = scan_records(results_dir, filename)
    for path, problem in damaged:
        log.warning(damaged_warning(path, problem))
    return records


class DamagedMapsError(AnobenchError):
    """A maps.npz that cannot be read back (truncated, or not what the runner writes)."""


def maps_problem(path: Path) -> str | None:
    """Why maps.npz is damaged, from its zip directory alone (cheap); None when it looks whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except FileNotFoundError:
        return "is missing"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"is not a readable archive ({err})"
    missing = {"maps.npy", "paths.npy"} - names
    return f"lacks {', '.join(sorted(missing))}" if missing else None


def load_maps(path: Path) -> tuple[np.ndarray, list[str]]:
    """The maps [N, H, W] and their image paths of a maps.npz; DamagedMapsError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if "maps" not in saved or "paths" not in saved:
                raise DamagedMapsError(
                    f"{path} lacks the arrays 'maps' and 'paths'; rerun its cell to rewrite it."
                )
            maps = saved["maps"]
            paths = [str(p) for p in saved["paths"]]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedMapsError(
            f"{path} is damaged ({type(err).__name__}: {err}); the next run recomputes its cell."
        ) from err
    if maps.ndim != 3 or len(maps) != len(paths):
        raise DamagedMapsError(
            f"{path} holds maps of shape {maps.shape} for {len(paths)} image paths; "
            "rerun its cell to rewrite it."
        )
    return maps, paths


def load_results(results_dir: Path) -> pd.DataFrame:
    """Every finished cell under results_dir as a tidy frame: one row per cell and metric."""
    if not results_dir.is_dir():
        raise AnobenchError(
            f"results folder {results_dir} does not exist; run `anobench run` first."
        )
    rows = []
    for record in iter_records(results_dir):
        base = {key: record.get(key, "") for key in RECORD_COLUMNS}
        base["device"] = record.get("device")
        for metric, value in record.get("metrics", {}).items():
            rows.append({**base, "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=[*RECORD_COLUMNS, "device", "metric", "value"])
