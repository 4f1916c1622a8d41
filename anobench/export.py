"""Export saved anomaly maps as float32 TIFF files in the layout the MVTec AD evaluator reads."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from anobench.config import DatasetConfig, SyntheticConfig
from anobench.errors import AnobenchError
from anobench.progress import progress
from anobench.results import (
    MAPS_FILE,
    METRICS_FILE,
    DamagedMapsError,
    damaged_warning,
    load_maps,
    read_checked,
    write_atomic,
)

log = logging.getLogger("anobench")


def write_tiff_atomic(path: Path, image: np.ndarray) -> None:
    """Write one TIFF atomically, readable by others (results.write_atomic)."""
    write_atomic(path, lambda handle: tifffile.imwrite(handle, image))


def _tiff_path(out_dir: Path, category: str, image_path: str, maps_file: Path) -> Path:
    """Map `test/<defect>/<stem>.png` to `out_dir/<category>/test/<defect>/<stem>.tiff`."""
    parts = PurePosixPath(image_path).parts
    if len(parts) != 3 or parts[0] != "test" or ".." in parts:
        raise AnobenchError(
            f"{maps_file} lists image path '{image_path}', not of the form "
            "test/<defect>/<image>; re-run the cell to rewrite its maps."
        )
    return out_dir / category / "test" / parts[1] / f"{PurePosixPath(parts[2]).stem}.tiff"


def to_original_size(anomaly_map: np.ndarray, image: Path) -> np.ndarray:
    """Bilinear resize of a map to its image's original size (the evaluator compares there)."""
    try:
        with Image.open(image) as handle:
            width, height = handle.size
    except OSError as err:
        raise AnobenchError(f"cannot read image {image} to size its map ({err}).") from err
    if anomaly_map.shape == (height, width):
        return anomaly_map
    tensor = torch.from_numpy(anomaly_map.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def export_maps(
    cell_dir: Path, out_dir: Path, category: str, dataset_root: Path | None = None
) -> int:
    """Write each map of `cell_dir/maps.npz` as float32 TIFF; return how many were written.

    With `dataset_root`, each map is resized to its test image's original size, as the official
    evaluator expects; without it, maps keep the model's input resolution.
    """
    maps_file = cell_dir / MAPS_FILE
    if not maps_file.is_file():
        raise AnobenchError(
            f"{maps_file} does not exist; run the cell with save_maps=true to keep its maps."
        )
    maps, paths = load_maps(maps_file)  # [N, H, W] float16; DamagedMapsError if unreadable
    targets = [_tiff_path(out_dir, category, path, maps_file) for path in paths]
    for target, path, anomaly_map in zip(targets, paths, maps, strict=True):
        anomaly_map = anomaly_map.astype(np.float32)
        if dataset_root is not None:
            anomaly_map = to_original_size(anomaly_map, dataset_root / category / path)
        write_tiff_atomic(target, anomaly_map)
    return len(targets)


def _recorded_dataset_root(cell_dir: Path) -> Path | None:
    """The dataset root a finished cell read, or None (maps then stay at model resolution)."""
    from anobench.runner import dataset_root  # the runner imports torch-heavy modules

    record, _ = read_checked(cell_dir / METRICS_FILE)
    if record is None or not isinstance(record.get("config"), dict):
        return None
    config = record["config"]
    dataset = config["dataset"]
    try:
        return dataset_root(
            DatasetConfig(
                name=dataset["name"],
                root=dataset.get("root"),
                categories=list(dataset.get("categories", [])),
                synthetic=_synthetic(dataset.get("synthetic")),
            ),
            Path(config["cache_dir"]).expanduser(),
        )
    except AnobenchError as err:
        log.warning("maps of %s stay at model resolution: %s", cell_dir, err)
        return None


def _synthetic(values: dict | None) -> SyntheticConfig | None:
    return None if values is None else SyntheticConfig(**values)


def export_run_maps(results_dir: Path, out_dir: Path) -> int:
    """Export every cell under `results_dir` (or the one cell it is); return the file count.

    A cell `<dataset>/<method>/<backbone>/<category>/seed<k>` goes to
    `out_dir/<dataset>/<method>/<backbone>/seed<k>/<category>/test/...`, so that each folder
    above `<category>` is one `anomaly_maps_dir` for the evaluator; a single cell goes to
    `out_dir/<category>/test/...`.
    """
    if (results_dir / MAPS_FILE).is_file():
        root = _recorded_dataset_root(results_dir)
        _check_out_dir(out_dir, [root])
        return export_maps(results_dir, out_dir, results_dir.resolve().parent.name, root)
    cells = sorted(path.parent for path in results_dir.rglob(MAPS_FILE))
    if not cells:
        raise AnobenchError(
            f"no {MAPS_FILE} found under {results_dir}; run with save_maps=true to keep maps."
        )
    roots = [_recorded_dataset_root(cell_dir) for cell_dir in cells]
    _check_out_dir(out_dir, roots)
    count, damaged = 0, []
    for cell_dir, root in progress(
        list(zip(cells, roots, strict=True)), desc="export", unit="cell"
    ):
        _, problem = read_checked(cell_dir / METRICS_FILE)
        if problem is not None:
            log.warning(damaged_warning(cell_dir / METRICS_FILE, problem))
            damaged.append(cell_dir)
            continue
        relative = cell_dir.relative_to(results_dir)
        experiment_dir = out_dir / relative.parent.parent / relative.name
        try:
            count += export_maps(cell_dir, experiment_dir, cell_dir.resolve().parent.name, root)
        except DamagedMapsError as err:
            log.warning("skipped the maps of %s: %s", cell_dir, err)
            damaged.append(cell_dir)
    if damaged:
        log.warning(
            "%d cell(s) not exported (damaged files, named above); the next `anobench run` "
            "of those cells recomputes them",
            len(damaged),
        )
    return count


def check_out_folder(out: Path, folders: list[tuple[Path, str]]) -> None:
    """Refuse an --out that is a file or lies inside one of `folders` (what, e.g. "the dataset
    root"): files written there would sit among that folder's images, and a dataset reader
    would take them for test images on the next run."""
    resolved = out.expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise AnobenchError(f"--out {out} is a file; give a folder.")
    for folder, what in folders:
        if resolved.is_relative_to(folder.expanduser().resolve()):
            raise AnobenchError(
                f"--out {out} lies inside {what} {folder}, where the outputs would mix with its "
                "images; choose a folder outside it."
            )


def _check_out_dir(out_dir: Path, dataset_roots: list[Path | None]) -> None:
    """export-maps: --out must lie outside every dataset the cells read."""
    check_out_folder(out_dir, [(root, "the dataset root") for root in dataset_roots if root])
