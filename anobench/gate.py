"""`anobench compare --stat`: a cell regressed when it dropped beyond the tolerance AND the drop
is significant. Per cell the strongest test the data allows:

- paired bootstrap: both sides are results folders whose cell kept per_image.npz for the same
  test images; both are evaluated on the same stratified resamples of those images;
- seed spread: otherwise, when the cell's model and class ran with several seeds, the drop
  against sqrt(2) times the pooled seed standard deviation (Student t);
- tolerance only: otherwise the plain rule, so a gate without data never passes a real drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anobench.per_image import PER_IMAGE_FILE, read_per_image
from anobench.results import METRICS_FILE, RECORD_COLUMNS, read_record
from anobench.statistics import (
    INTERVAL_METRICS,
    Bootstrapped,
    PerImage,
    bootstrap_metrics,
    paired_bootstrap_p,
    reordered,
    seed_spread_p,
    stratified_counts,
)
from anobench.tables import KEY_COLUMNS

PAIRED, SEEDS, TOLERANCE = "paired bootstrap", "seed spread", "tolerance only"
SHORT_TESTS = {PAIRED: "boot", SEEDS: "seeds", TOLERANCE: "tol"}
NOISE = "noise"  # dropped beyond the tolerance, but not significantly
_EPS = 1e-9


@dataclass
class PerImageSource:
    """The per-image data of one side: cell key -> folder (empty for a CSV), read on demand."""

    folders: dict[tuple, Path] = field(default_factory=dict)
    fpr_limits: dict[tuple, float] = field(default_factory=dict)
    _cache: dict[tuple, PerImage | None] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, results_dir: Path) -> PerImageSource:
        source = cls()
        for path in sorted(results_dir.rglob(METRICS_FILE)):
            record = read_record(path)
            cell_keys = [k for k in RECORD_COLUMNS if k != "variant"]  # schema 1 has none
            if record is None or any(k not in record for k in cell_keys):
                continue
            key = tuple(
                (record.get(k) or "") if k == "variant" else record[k] for k in RECORD_COLUMNS
            )
            source.folders[key] = path.parent
            source.fpr_limits[key] = float((record.get("config") or {}).get("pro_fpr_limit", 0.3))
        return source

    def get(self, key: tuple) -> PerImage | None:
        if key not in self._cache:
            folder = self.folders.get(key)
            self._cache[key] = None if folder is None else read_per_image(folder / PER_IMAGE_FILE)
        return self._cache[key]


@dataclass(frozen=True)
class GateSettings:
    tolerance: float  # points
    alpha: float = 0.05
    resamples: int = 1000
    seed: int = 0


def aligned(baseline: PerImage, candidate: PerImage) -> PerImage | None:
    """The candidate's data in the baseline's image order; None unless the test sets match."""
    if sorted(baseline.paths) != sorted(candidate.paths):
        return None
    position = {path: index for index, path in enumerate(candidate.paths)}
    order = np.array([position[p] for p in baseline.paths], dtype=np.int64)
    moved = reordered(candidate, order)
    return moved if np.array_equal(moved.labels, baseline.labels) else None


def _paired(
    key: tuple,
    metric: str,
    sides: tuple[PerImageSource, PerImageSource],
    settings: GateSettings,
    cache: dict[tuple, tuple[dict[str, Bootstrapped], dict[str, Bootstrapped]] | None],
) -> float | None:
    if metric not in INTERVAL_METRICS:
        return None
    if key not in cache:
        base, cand = sides[0].get(key), sides[1].get(key)
        cand = None if base is None or cand is None else aligned(base, cand)
        if cand is None:
            cache[key] = None
        else:
            counts = stratified_counts(base.labels, settings.resamples, settings.seed)
            limit = sides[0].fpr_limits.get(key, 0.3)
            cache[key] = (
                bootstrap_metrics(base, counts, limit),
                bootstrap_metrics(cand, counts, limit),
            )
    found = cache[key]
    if found is None or metric not in found[0] or metric not in found[1]:
        return None
    return paired_bootstrap_p(found[0][metric].values, found[1][metric].values)


def _seed_values(frame: pd.DataFrame) -> dict[tuple, list[float]]:
    """Values in percent per cell key without the seed (a model's class and metric)."""
    group = [c for c in KEY_COLUMNS if c != "seed"]
    values = frame.dropna(subset=["value"])
    return {
        (key if isinstance(key, tuple) else (key,)): list(rows["value"] * 100)
        for key, rows in values.groupby(group, sort=False)
    }


def statistical_gate(
    diff: pd.DataFrame,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    sides: tuple[PerImageSource, PerImageSource],
    settings: GateSettings,
) -> pd.DataFrame:
    """The compare frame with columns test and p; drops beyond the tolerance that are not
    significant at settings.alpha become 'noise' instead of 'regressed'."""
    diff = diff.copy()
    seeds = tuple(_seed_values(frame) for frame in frames)
    group = [c for c in KEY_COLUMNS if c != "seed"]
    cache: dict[tuple, Any] = {}
    tests: list[str | None] = []
    p_values: list[float | None] = []
    for index, row in diff.iterrows():
        test, p = None, None
        if row["delta"] < -settings.tolerance - _EPS:
            key = tuple(row[c] for c in RECORD_COLUMNS)
            p = _paired(key, row["metric"], sides, settings, cache)
            test = PAIRED
            if p is None:
                spread_key = tuple(row[c] for c in group)
                spread = seed_spread_p(
                    row["delta"], seeds[0].get(spread_key, []), seeds[1].get(spread_key, [])
                )
                test, p = (SEEDS, spread[0]) if spread else (TOLERANCE, None)
            if p is not None and p >= settings.alpha:
                diff.loc[index, "status"] = NOISE
        tests.append(test)
        p_values.append(p)
    diff["test"] = tests
    diff["p"] = pd.Series(p_values, index=diff.index, dtype=float)
    return diff
