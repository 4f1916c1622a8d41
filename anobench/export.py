"""Export saved anomaly maps as float32 TIFF files in the layout the MVTec AD evaluator reads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile

from anobench.errors import AnobenchError
from anobench.results import MAPS_FILE


def _write_tiff_atomic(path: Path, image: np.ndarray) -> None:
    """Write one TIFF to a temporary file in the same folder, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.close(fd)
        with Path(tmp).open("wb") as handle:  # a handle, so the .tmp suffix cannot matter
            tifffile.imwrite(handle, image)
        Path(tmp).replace(path)  # os.replace: atomic within one folder
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tiff_path(out_dir: Path, category: str, image_path: str, maps_file: Path) -> Path:
    """Map `test/<defect>/<stem>.png` to `out_dir/<category>/test/<defect>/<stem>.tiff`."""
    parts = PurePosixPath(image_path).parts
    if len(parts) != 3 or parts[0] != "test" or ".." in parts:
        raise AnobenchError(
            f"{maps_file} lists image path '{image_path}', not of the form "
            "test/<defect>/<image>; re-run the cell to rewrite its maps."
        )
    return out_dir / category / "test" / parts[1] / f"{PurePosixPath(parts[2]).stem}.tiff"


def export_maps(cell_dir: Path, out_dir: Path, category: str) -> int:
    """Write each map of `cell_dir/maps.npz` as float32 TIFF; return how many were written."""
    maps_file = cell_dir / MAPS_FILE
    if not maps_file.is_file():
        raise AnobenchError(
            f"{maps_file} does not exist; run the cell with save_maps=true to keep its maps."
        )
    with np.load(maps_file, allow_pickle=False) as saved:
        if "maps" not in saved or "paths" not in saved:
            raise AnobenchError(
                f"{maps_file} lacks the arrays 'maps' and 'paths'; re-run the cell to rewrite it."
            )
        maps = saved["maps"]  # [N, H, W] float16
        paths = [str(path) for path in saved["paths"]]
    if maps.ndim != 3 or len(maps) != len(paths):
        raise AnobenchError(
            f"{maps_file} holds maps of shape {maps.shape} for {len(paths)} image paths; "
            "re-run the cell to rewrite it."
        )
    targets = [_tiff_path(out_dir, category, path, maps_file) for path in paths]
    for target, anomaly_map in zip(targets, maps, strict=True):
        _write_tiff_atomic(target, anomaly_map.astype(np.float32))
    return len(targets)


def export_run_maps(results_dir: Path, out_dir: Path) -> int:
    """Export every cell under `results_dir` (or the one cell it is); return the file count.

    A cell `<dataset>/<method>/<backbone>/<category>/seed<k>` goes to
    `out_dir/<dataset>/<method>/<backbone>/seed<k>/<category>/test/...`, so that each folder
    above `<category>` is one `anomaly_maps_dir` for the evaluator; a single cell goes to
    `out_dir/<category>/test/...`.
    """
    if (results_dir / MAPS_FILE).is_file():
        return export_maps(results_dir, out_dir, results_dir.resolve().parent.name)
    cells = sorted(path.parent for path in results_dir.rglob(MAPS_FILE))
    if not cells:
        raise AnobenchError(
            f"no {MAPS_FILE} found under {results_dir}; run with save_maps=true to keep maps."
        )
    count = 0
    for cell_dir in cells:
        relative = cell_dir.relative_to(results_dir)
        experiment_dir = out_dir / relative.parent.parent / relative.name
        count += export_maps(cell_dir, experiment_dir, cell_dir.resolve().parent.name)
    return count
