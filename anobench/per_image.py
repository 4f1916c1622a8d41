"""A cell's per-image file (per_image.npz): paths, labels, image scores and pixel counts.

Written beside metrics.json when a cell finishes; `anobench compare --stat` reads it for paired
bootstrap tests and `anobench report --html` for the galleries of its worst images.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from anobench.results import write_atomic
from anobench.statistics import PerImage, PixelSummary

PER_IMAGE_FILE = "per_image.npz"
_COUNTS = ("positive", "negative", "regions")


def write_per_image(path: Path, per_image: PerImage) -> None:
    """Write atomically; pixel counts are stored per threshold step (int32, compressed)."""
    arrays: dict[str, np.ndarray] = {
        "paths": np.array(per_image.paths, dtype=str),
        "labels": np.asarray(per_image.labels, dtype=bool),
        "scores": np.asarray(per_image.scores, dtype=np.float64),
    }
    pixels = per_image.pixels
    if pixels is not None:
        arrays["thresholds"] = pixels.thresholds
        arrays["region_image"] = pixels.region_image
        arrays["exact"] = np.array(pixels.exact)
        for name in _COUNTS:
            counts = getattr(pixels, name)
            arrays[name] = np.diff(counts, axis=1, prepend=0).astype(np.int32)
    write_atomic(path, lambda handle: np.savez_compressed(handle, **arrays))


def read_per_image(path: Path) -> PerImage | None:
    """The per-image data of a cell, or None when the file is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            pixels = None
            if "thresholds" in saved:
                counts = {n: np.cumsum(saved[n].astype(np.int64), axis=1) for n in _COUNTS}
                pixels = PixelSummary(
                    thresholds=saved["thresholds"],
                    region_image=saved["region_image"].astype(np.int64),
                    exact=bool(saved["exact"]),
                    **counts,
                )
            return PerImage(
                paths=[str(p) for p in saved["paths"]],
                labels=saved["labels"].astype(bool),
                scores=saved["scores"].astype(np.float64),
                pixels=pixels,
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
