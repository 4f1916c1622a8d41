"""Bootstrap intervals, per-defect metrics and significance tests: arrays in, numbers out.

A resample draws test images with replacement, normal and anomalous images separately
(stratified: every resample keeps the test set's class counts), and each image brings its whole
map and mask. Image AUROC / AP of all resamples come exactly from one sort of the image scores
and one matrix product of the resample counts. Pixel AUROC and PRO come from a `PixelSummary`:
per image (and per ground-truth region) the count of pixels at or above each of K shared
thresholds. A resample's curves at those thresholds are exact (a matrix product of its image
counts); only the curve between two thresholds is unknown, and `pixel_bootstrap` returns for every
resample a bound on what that can change (`binning_error`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from scipy import stats

from anobench.metrics import (
    aupro_from_curve,
    auroc_from_counts,
    average_precision_from_counts,
    label_regions,
    metrics_by_group,
    validate_inputs,
)

BOOTSTRAP_SEED = 0  # the same resamples for every cell of a class: intervals are comparable
CONFIDENCE = 0.95
N_THRESHOLDS = 2048  # shared thresholds of a PixelSummary (all distinct scores when fewer)
INTERVAL_METRICS = ("image_auroc", "pixel_auroc", "pro", "image_ap")
IMAGE_METRICS = ("image_auroc", "image_ap")
PIXEL_METRICS = ("pixel_auroc", "pro")
DEFECT_METRICS = ("image_auroc", "pixel_auroc", "pro", "image_ap")
_CHUNK = 256  # resamples evaluated together (bounds the [chunk, K] arrays)


@dataclass(frozen=True)
class PixelSummary:
    """Pixel counts at or above shared thresholds, per image and per ground-truth region.

    thresholds[k] descends; the last is the lowest score, so every count there is a total.
    When the thresholds are all the distinct scores (`exact`), resampled curves are exact.
    """

    thresholds: np.ndarray  # [K] map dtype, descending
    positive: np.ndarray  # [N, K] int64 defect pixels of each image scoring >= thresholds[k]
    negative: np.ndarray  # [N, K] int64 normal pixels of each image scoring >= thresholds[k]
    regions: np.ndarray  # [R, K] int64 pixels of each region scoring >= thresholds[k]
    region_image: np.ndarray  # [R] int64 image of each region
    exact: bool = False


@dataclass(frozen=True)
class PerImage:
    """What a cell keeps of each test image for intervals and paired tests."""

    paths: list[str]  # relative to the class folder: test/<defect>/<file>
    labels: np.ndarray  # [N] bool, True for anomalous images
    scores: np.ndarray  # [N] float64 image scores
    pixels: PixelSummary | None = None  # None when the bootstrap was off

    @property
    def defects(self) -> list[str]:
        return [defect_of(path) for path in self.paths]


@dataclass(frozen=True)
class Bootstrapped:
    """One metric over all resamples, with the most the shared thresholds can have moved it."""

    values: np.ndarray  # [B] float64, NaN where the resample lacks a class
    errors: np.ndarray | None = None  # [B] bound on |value - exact value|; None: exact

    @property
    def binning_error(self) -> float:
        """The largest bound over the resamples (0 when exact)."""
        if self.errors is None:
            return 0.0
        finite = self.errors[np.isfinite(self.errors)]
        return float(finite.max()) if finite.size else 0.0


@dataclass(frozen=True)
class CellStatistics:
    """Intervals, per-defect metrics and per-image data of one finished cell."""

    per_image: PerImage
    by_defect: dict[str, dict[str, Any]]
    intervals: dict[str, list[float] | None] = field(default_factory=dict)
    binning_error: dict[str, float] = field(default_factory=dict)
    resamples: int = 0
    seed: int = BOOTSTRAP_SEED

    def record_fields(self) -> dict[str, Any]:
        """The keys a cell's record gains: intervals, bootstrap settings and by_defect."""
        return {
            "intervals": self.intervals,
            "bootstrap": {
                "resamples": self.resamples,
                "seed": self.seed,
                "confidence": CONFIDENCE,
                "method": "percentile; images resampled with replacement, stratified by label",
                "thresholds": N_THRESHOLDS,
                "binning_error": self.binning_error,
            },
            "by_defect": self.by_defect,
        }


def reordered(per_image: PerImage, order: np.ndarray) -> PerImage:
    """The same data with the images in `order` (indices into the current order)."""
    pixels = per_image.pixels
    if pixels is not None:
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        pixels = replace(
            pixels,
            positive=pixels.positive[order],
            negative=pixels.negative[order],
            region_image=position[pixels.region_image],
        )
    paths = [per_image.paths[i] for i in order]
    return PerImage(paths, per_image.labels[order], per_image.scores[order], pixels)


def defect_of(path: str) -> str:
    """The defect type of a test image: its folder name (test/<defect>/<file>)."""
    return PurePosixPath(path).parent.name


# --- resamples -----------------------------------------------------------------------------------


def resample_indices(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[B, N] image indices of each resample: normal and anomalous images drawn separately."""
    labels = np.asarray(labels, dtype=bool)
    rng = np.random.default_rng(seed)
    indices = np.empty((resamples, labels.size), dtype=np.int64)
    for group in (~labels, labels):
        members = np.flatnonzero(group)
        if members.size:
            indices[:, group] = members[rng.integers(0, members.size, (resamples, members.size))]
    return indices


def resample_counts(indices: np.ndarray, n_images: int) -> np.ndarray:
    """[B, N] float64 how often each image is drawn in each resample."""
    resamples = indices.shape[0]
    offsets = indices + n_images * np.arange(resamples)[:, None]
    counts = np.bincount(offsets.ravel(), minlength=resamples * n_images)
    return counts.reshape(resamples, n_images).astype(np.float64)


def stratified_counts(labels: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[B, N] draw counts of `resamples` stratified resamples of the test images."""
    return resample_counts(resample_indices(labels, resamples, seed), len(labels))


# --- image metrics, exact ------------------------------------------------------------------------


def image_bootstrap(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict:
    """Image AUROC and AP of every resample (draw counts [B, N]), exactly as on the drawn images."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    distinct, inverse = np.unique(scores, return_inverse=True)
    groups = np.zeros((scores.size, distinct.size))  # [N, G] one-hot, highest score first
    groups[np.arange(scores.size), distinct.size - 1 - inverse] = 1.0
    tp = np.cumsum((counts * labels) @ groups, axis=1)  # [B, G]
    fp = np.cumsum((counts * ~labels) @ groups, axis=1)
    return {
        "image_auroc": Bootstrapped(auroc_from_counts(tp, fp)),
        "image_ap": Bootstrapped(average_precision_from_counts(tp, fp)),
    }


# --- pixel metrics, at shared thresholds ---------------------------------------------------------


def _thresholds(maps: np.ndarray, n_thresholds: int) -> tuple[np.ndarray, bool]:
    """Descending thresholds: every distinct score when there are few (exact: True), else the
    scores at evenly spaced ranks."""
    ranked = np.sort(maps, axis=None)
    distinct = ranked[np.append(ranked[1:] != ranked[:-1], True)]
    if distinct.size <= n_thresholds:
        return distinct[::-1].copy(), True
    positions = np.linspace(0, ranked.size - 1, n_thresholds).round().astype(np.int64)
    return np.unique(ranked[positions])[::-1].copy(), False


def _at_or_above(values: np.ndarray, ascending: np.ndarray) -> np.ndarray:
    """[K] how many of `values` are >= each threshold (ascending thresholds, counts reversed)."""
    ranked = np.sort(values)
    return (ranked.size - np.searchsorted(ranked, ascending, side="left"))[::-1]


def summarise_pixels(
    maps: np.ndarray, masks: np.ndarray, n_thresholds: int = N_THRESHOLDS
) -> PixelSummary:
    """Count each image's normal and defect pixels, and each region's, at shared thresholds."""
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    thresholds, exact = _thresholds(maps, n_thresholds)
    ascending = thresholds[::-1]
    region_labels, region_image = label_regions(masks)
    k = thresholds.size
    positive = np.zeros((len(maps), k), dtype=np.int64)
    negative = np.zeros((len(maps), k), dtype=np.int64)
    regions = np.zeros((region_image.size, k), dtype=np.int64)
    for index, (scores, mask, labels) in enumerate(zip(maps, masks, region_labels, strict=True)):
        negative[index] = _at_or_above(scores[~mask], ascending)
        if not mask.any():
            continue
        positive[index] = _at_or_above(scores[mask], ascending)
        for region in np.unique(labels[mask]):
            regions[region - 1] = _at_or_above(scores[labels == region], ascending)
    return PixelSummary(thresholds, positive, negative, regions, region_image, exact)


def _pixel_chunk(
    summary: PixelSummary, counts: np.ndarray, fpr_limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel AUROC, its error bound, PRO and its error bound for a chunk of resamples."""
    tp = counts @ summary.positive  # [B, K] defect pixels at or above each threshold
    fp = counts @ summary.negative
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    auroc = auroc_from_counts(tp, fp)
    # Pairs of a defect and a normal pixel between the same two thresholds count 1/2 here;
    # exactly they count 0, 1/2 or 1.
    in_bin = np.sum(np.diff(tp, axis=1, prepend=0) * np.diff(fp, axis=1, prepend=0), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc_error = np.where(np.isnan(auroc), np.nan, in_bin / (2 * n_pos * n_neg))
    if summary.region_image.size == 0:
        nan = np.full(len(counts), np.nan)
        return auroc, auroc_error, nan, nan
    region_counts = counts[:, summary.region_image]  # [B, R] draws of each region's image
    sizes = summary.regions[:, -1].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = (region_counts @ (summary.regions / sizes[:, None])) / region_counts.sum(
            axis=1, keepdims=True
        )
        fpr = fp / n_neg[:, None]
    pro = aupro_from_curve(fpr, overlap, fpr_limit)
    # Between two thresholds the exact curve rises monotonically from one corner of the box
    # (dx, dy) to the other, so it encloses at most dx * dy more or less area than the chord.
    x = np.concatenate((np.zeros((len(fpr), 1)), fpr), axis=1)
    y = np.concatenate((np.zeros((len(fpr), 1)), overlap), axis=1)
    width = np.clip(np.minimum(x[:, 1:], fpr_limit) - x[:, :-1], 0.0, None)
    pro_error = np.sum(width * np.diff(y, axis=1), axis=1) / fpr_limit
    undefined = ~np.isfinite(overlap[:, -1]) | (n_neg == 0)
    pro[undefined] = np.nan
    pro_error[undefined] = np.nan
    return auroc, auroc_error, pro, pro_error


def pixel_bootstrap(summary: PixelSummary, counts: np.ndarray, fpr_limit: float = 0.3) -> dict:
    """Pixel AUROC and PRO of every resample (draw counts [B, N]) at the summary's thresholds."""
    parts = [
        _pixel_chunk(summary, counts[start : start + _CHUNK], fpr_limit)
        for start in range(0, len(counts), _CHUNK)
    ]
    auroc, auroc_error, pro, pro_error = (np.concatenate(p) for p in zip(*parts, strict=True))
    if summary.exact:  # no score lies between two thresholds: the chords are the curves
        auroc_error = pro_error = None
    return {
        "pixel_auroc": Bootstrapped(auroc, auroc_error),
        "pro": Bootstrapped(pro, pro_error),
    }


def bootstrap_metrics(
    per_image: PerImage, counts: np.ndarray, fpr_limit: float = 0.3
) -> dict[str, Bootstrapped]:
    """Every interval metric the per-image data allows, for the resamples `counts` [B, N]."""
    found = image_bootstrap(per_image.scores, per_image.labels, counts)
    if per_image.pixels is not None:
        found |= pixel_bootstrap(per_image.pixels, counts, fpr_limit)
    return found


# --- intervals and tests -------------------------------------------------------------------------


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """[low, high]: the central `confidence` share of the finite resampled values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """Student-t interval of the mean of seed values; None below three values."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if values.size < 3:
        return None
    half = stats.t.ppf((1 + confidence) / 2, values.size - 1) * stats.sem(values)
    mean = float(values.mean())
    return [mean - float(half), mean + float(half)]


def paired_bootstrap_p(baseline: np.ndarray, candidate: np.ndarray) -> float | None:
    """One-sided p that the candidate is not worse: the share of resamples (same images on both
    sides) where candidate - baseline >= 0, counting the observed sample as one more."""
    deltas = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    deltas = deltas[np.isfinite(deltas)]
    if deltas.size == 0:
        return None
    return float((1 + np.count_nonzero(deltas >= 0)) / (deltas.size + 1))


def seed_spread_p(
    delta: float, baseline: Sequence[float], candidate: Sequence[float]
) -> tuple[float, int] | None:
    """One-sided p (and degrees of freedom) that seed noise alone gives a difference <= delta.

    The difference of two single-seed values has standard deviation sqrt(2) * sigma; sigma is
    pooled from both sides' seeds. None without at least one degree of freedom.
    """
    groups = [np.asarray(v, dtype=np.float64) for v in (baseline, candidate)]
    groups = [g[np.isfinite(g)] for g in groups]
    dof = sum(g.size - 1 for g in groups if g.size)
    if dof < 1:
        return None
    pooled = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups if g.size) / dof
    if pooled == 0:
        return (0.0 if delta < 0 else 1.0), dof
    return float(stats.t.cdf(delta / np.sqrt(2 * pooled), dof)), dof


# --- one cell ------------------------------------------------------------------------------------


def metrics_by_defect(
    maps: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    defects: Sequence[str],
    pro_fpr_limit: float = 0.3,
) -> dict[str, dict[str, Any]]:
    """Per defect type: its image count and DEFECT_METRICS on the good images plus its images."""
    found = metrics_by_group(
        maps, masks, scores, labels, defects, pro_fpr_limit=pro_fpr_limit, metric_ids=DEFECT_METRICS
    )
    counts = Counter(d for d, anomalous in zip(defects, labels, strict=True) if anomalous)
    return {defect: {"n_images": counts[defect], **values} for defect, values in found.items()}


def cell_statistics(
    maps: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    *,
    resamples: int,
    pro_fpr_limit: float = 0.3,
    seed: int = BOOTSTRAP_SEED,
) -> CellStatistics:
    """Per-defect metrics, and with resamples > 0 the bootstrap intervals of a finished cell."""
    validate_inputs(maps, masks, scores, labels, list(paths))
    labels = np.asarray(labels) != 0
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks) != 0
    by_defect = metrics_by_defect(
        maps, masks, scores, labels, [defect_of(p) for p in paths], pro_fpr_limit
    )
    if resamples <= 0:
        return CellStatistics(PerImage(list(paths), labels, scores), by_defect)
    per_image = PerImage(list(paths), labels, scores, summarise_pixels(maps, masks))
    counts = stratified_counts(labels, resamples, seed)
    found = bootstrap_metrics(per_image, counts, pro_fpr_limit)
    return CellStatistics(
        per_image,
        by_defect,
        intervals={m: percentile_interval(found[m].values) for m in INTERVAL_METRICS},
        binning_error={m: found[m].binning_error for m in PIXEL_METRICS},
        resamples=resamples,
        seed=seed,
    )
