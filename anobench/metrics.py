"""Image- and pixel-level anomaly detection metrics: AUROC, AP, F1-max and the normalised AUPRO."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from anobench.errors import AnobenchError

METRIC_IDS = (
    "image_auroc",
    "pixel_auroc",
    "pro",
    "image_ap",
    "pixel_ap",
    "image_f1_max",
    "pixel_f1_max",
)

# The official MVTec AD evaluator labels ground-truth regions with 8-connectivity.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class MetricInputError(AnobenchError):
    """Metric inputs that cannot be scored: NaN or inf values, mismatched shapes or lengths."""


@dataclass(frozen=True)
class _Curve:
    """Cumulative counts at each distinct score, highest first; threshold t flags score >= t."""

    tp: np.ndarray  # [T] int64 positives with score >= t
    fp: np.ndarray  # [T] int64 negatives with score >= t
    n_pos: int
    n_neg: int
    overlap: np.ndarray | None  # [T] float64 mean overlap over all ground-truth regions (PRO)


def _as_array(values: Any) -> np.ndarray:
    """Return a numpy view of an array-like or torch tensor, upcasting sub-32-bit floats."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if values.is_floating_point() and values.element_size() < 4:
            values = values.float()  # bfloat16 has no numpy equivalent
        values = values.numpy()
    return np.asarray(values)


def _image_name(index: int, image_names: Sequence[str] | None) -> str:
    return f"'{image_names[index]}'" if image_names is not None else f"at index {index}"


def _pixel_arrays(
    maps: Any, masks: Any, image_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check anomaly maps and masks; return float maps and bool masks, both [N, H, W]."""
    maps = _as_array(maps)
    masks = _as_array(masks)
    if maps.ndim != 3:
        raise MetricInputError(f"anomaly maps must be [N, H, W] but have shape {maps.shape}.")
    if maps.shape != masks.shape:
        raise MetricInputError(
            f"anomaly maps have shape {maps.shape} but masks have shape {masks.shape}; "
            "resize the maps to the mask resolution."
        )
    if image_names is not None and len(image_names) != len(maps):
        raise MetricInputError(
            f"got {len(image_names)} image names for {len(maps)} anomaly maps; "
            "pass one name per test image."
        )
    # float64 stays float64 so that distinct scores never merge; smaller types go to float32.
    if maps.dtype != np.float64:
        maps = maps.astype(np.float32, copy=False)
    finite = np.isfinite(maps).all(axis=(1, 2))
    if not finite.all():
        index = int(np.argmin(finite))
        raise MetricInputError(
            f"the anomaly map of image {_image_name(index, image_names)} contains NaN or inf; "
            "check the method's scoring for an overflow or a division by zero."
        )
    if masks.dtype != np.bool_:
        if np.any((masks != 0) & (masks != 1)):
            raise MetricInputError(
                "masks must hold only 0 and 1 (or bool); binarise them with `mask > 0` first."
            )
        masks = masks != 0
    return maps, masks


def _image_arrays(
    scores: Any, labels: Any, image_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check image scores and labels; return float64 scores and bool labels, both [N]."""
    scores = _as_array(scores)
    labels = _as_array(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise MetricInputError(
            f"image scores and labels must be 1-D but have shapes {scores.shape} and "
            f"{labels.shape}."
        )
    if len(scores) != len(labels):
        raise MetricInputError(
            f"got {len(scores)} image scores but {len(labels)} labels; "
            "pass one score and one label per test image."
        )
    if image_names is not None and len(image_names) != len(scores):
        raise MetricInputError(
            f"got {len(image_names)} image names for {len(scores)} image scores; "
            "pass one name per test image."
        )
    scores = scores.astype(np.float64, copy=False)
    finite = np.isfinite(scores)
    if not finite.all():
        index = int(np.argmin(finite))
        raise MetricInputError(
            f"the image score of image {_image_name(index, image_names)} is {scores[index]}; "
            "check the method's image-score rule for an overflow or a division by zero."
        )
    if labels.dtype != np.bool_:
        if np.any((labels != 0) & (labels != 1)):
            raise MetricInputError("image labels must be 0 (normal) or 1 (anomalous).")
        labels = labels != 0
    return scores, labels


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricInputError(f"pro_fpr_limit must lie in (0, 1] but is {fpr_limit}.")


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Weight 1 / (region size * number of regions) for each defect pixel, in flat C order."""
    region_ids = []  # per image: [defects in image] int, global 0-based region id
    n_regions = 0
    for mask in masks:
        labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        region_ids.append(labels[mask].astype(np.int64) + (n_regions - 1))
        n_regions += n
    ids = np.concatenate(region_ids)
    sizes = np.bincount(ids, minlength=n_regions)
    return 1.0 / (sizes[ids].astype(np.float64) * n_regions)


def _curve(
    scores: np.ndarray, positive: np.ndarray, defect_weights: np.ndarray | None = None
) -> _Curve | None:
    """Build cumulative counts from one global sort; None when either class is absent.

    Args:
        scores: [P] scores, flattened.
        positive: [P] bool, True for anomalous pixels or images.
        defect_weights: [n_pos] PRO weight of each positive in flat order, or None to skip PRO.
    """
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Peak beyond the input, P pixels and T distinct scores: order 8P + ranked scores 4-8P
    # (freed before the counts) + ends, tp, fp 8T each, so at most ~32 bytes per pixel (~0.9 GB
    # for a full MVTec class, 200 x 384 x 384 = 30M); bench/metrics.py measured 16 bytes per
    # pixel (459 MiB) there with 7.6M distinct float32 scores.
    return _ranked_curve(_descending_order(scores), scores, positive, defect_weights)


def _descending_order(scores: np.ndarray) -> np.ndarray:
    """[P] int64 indices, highest score first and equal scores by descending index, exactly as
    np.argsort(scores, kind="stable")[::-1]; float32 scores take a several times faster route,
    one in-place sort of 64-bit keys (order-preserving score bits << 32 | index)."""
    if scores.dtype != np.float32 or scores.size >= 2**32:
        return np.argsort(scores, kind="stable")[::-1]
    keys = scores.view(np.uint32).astype(np.uint64)
    negative = keys >= 0x80000000
    keys ^= np.uint64(0x80000000)  # IEEE floats order as integers once positives get the sign
    keys[negative] ^= np.uint64(0x7FFFFFFF)  # bit and negatives have all bits flipped
    keys[keys == 0x7FFFFFFF] = 0x80000000  # -0.0 ties with 0.0
    del negative
    keys <<= np.uint64(32)
    keys |= np.arange(scores.size, dtype=np.uint64)
    keys.sort()
    keys &= np.uint64(0xFFFFFFFF)
    return keys.view(np.int64)[::-1]


def _ranked_curve(
    order: np.ndarray,
    scores: np.ndarray,
    positive: np.ndarray,
    defect_weights: np.ndarray | None = None,
) -> _Curve | None:
    """Cumulative counts over the items `order` lists, highest score first; None without both
    classes among them. defect_weights: PRO weight of every positive of `positive` in flat order.
    """
    ranked_positive = positive[order]
    weights = None
    if defect_weights is not None:
        # Only positives carry PRO weight, so the cumulative sum runs over them alone.
        pos_ranks = np.flatnonzero(ranked_positive)
        flat_positives = np.flatnonzero(positive)
        weights = defect_weights[np.searchsorted(flat_positives, order[pos_ranks])]
        del pos_ranks, flat_positives
    return _counted_curve(scores[order], ranked_positive, weights)


def _counted_curve(
    ranked: np.ndarray, ranked_positive: np.ndarray, positive_weights: np.ndarray | None = None
) -> _Curve | None:
    """Cumulative counts from scores in descending order; None without both classes.

    positive_weights: [n_pos] PRO weight of each positive in that order, or None to skip PRO.
    """
    pos_ranks = np.flatnonzero(ranked_positive)  # [n_pos] ranks of the positives
    n_pos = pos_ranks.size
    n_neg = ranked.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ends = np.flatnonzero(ranked[1:] != ranked[:-1])  # last rank of each group of equal scores
    ends = np.append(ends, ranked.size - 1)  # [T]
    tp = np.searchsorted(pos_ranks, ends, side="right")
    fp = ends + 1 - tp
    del ends
    overlap = None
    if positive_weights is not None:
        cumulative = np.concatenate(([0.0], np.cumsum(positive_weights)))
        overlap = np.minimum(cumulative[tp], 1.0)
    return _Curve(tp=tp, fp=fp, n_pos=n_pos, n_neg=n_neg, overlap=overlap)


def _auroc(curve: _Curve | None) -> float | None:
    """Tie-aware ROC area (trapezoids over grouped ties), exact in integer arithmetic."""
    if curve is None:
        return None
    fp = np.concatenate(([0], curve.fp))
    tp = np.concatenate(([0], curve.tp))
    twice_area = int(np.sum(np.diff(fp) * (tp[1:] + tp[:-1])))
    return twice_area / (2 * curve.n_pos * curve.n_neg)


def _average_precision(curve: _Curve | None) -> float | None:
    """Step-wise AP, sum of recall gain times precision, as scikit-learn defines it."""
    if curve is None:
        return None
    recall_gain = np.diff(curve.tp, prepend=0)
    precision = curve.tp / (curve.tp + curve.fp)
    return float(np.sum(recall_gain * precision) / curve.n_pos)


def _f1_max(curve: _Curve | None) -> float | None:
    """Largest F1 = 2 TP / (TP + FP + P) over all thresholds."""
    if curve is None:
        return None
    return float(np.max(2 * curve.tp / (curve.tp + curve.fp + curve.n_pos)))


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) over [0, limit], with y linearly interpolated at limit."""
    inside = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit, x[0] = 0
    area = float(np.sum((x[1:inside] - x[: inside - 1]) * (y[1:inside] + y[: inside - 1]))) / 2
    if inside < x.size and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += float((limit - x0) * (y0 + y_limit)) / 2
    return area


def _aupro(curve: _Curve | None, fpr_limit: float) -> float | None:
    """Area under the PRO curve up to fpr_limit over fpr_limit, as the MVTec AD evaluator does."""
    if curve is None or curve.overlap is None:
        return None
    fpr = np.concatenate(([0.0], curve.fp / curve.n_neg))
    pro_values = np.concatenate(([0.0], curve.overlap))
    return min(max(_area_to_limit(fpr, pro_values, fpr_limit) / fpr_limit, 0.0), 1.0)


def _pixel_curve(maps: np.ndarray, masks: np.ndarray, with_pro: bool) -> _Curve | None:
    weights = _region_weights(masks) if with_pro and masks.any() else None
    return _curve(maps.reshape(-1), masks.reshape(-1), weights)


def image_auroc(scores: Any, labels: Any) -> float | None:
    """Image-level AUROC; None without both normal and anomalous images."""
    return _auroc(_curve(*_image_arrays(scores, labels)))


def image_ap(scores: Any, labels: Any) -> float | None:
    """Image-level average precision; None without both normal and anomalous images."""
    return _average_precision(_curve(*_image_arrays(scores, labels)))


def image_f1_max(scores: Any, labels: Any) -> float | None:
    """Image-level F1 at the best threshold; None without both normal and anomalous images."""
    return _f1_max(_curve(*_image_arrays(scores, labels)))


def pixel_auroc(maps: Any, masks: Any) -> float | None:
    """Pixel-level AUROC over all pixels of all images; None without both pixel classes."""
    return _auroc(_pixel_curve(*_pixel_arrays(maps, masks), with_pro=False))


def pixel_ap(maps: Any, masks: Any) -> float | None:
    """Pixel-level average precision; None without both pixel classes."""
    return _average_precision(_pixel_curve(*_pixel_arrays(maps, masks), with_pro=False))


def pixel_f1_max(maps: Any, masks: Any) -> float | None:
    """Pixel-level F1 at the best threshold; None without both pixel classes."""
    return _f1_max(_pixel_curve(*_pixel_arrays(maps, masks), with_pro=False))


def pro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float | None:
    """Area under the PRO curve up to fpr_limit, divided by fpr_limit; None without both classes."""
    _check_fpr_limit(fpr_limit)
    return _aupro(_pixel_curve(*_pixel_arrays(maps, masks), with_pro=True), fpr_limit)


def _validated(
    anomaly_maps: Any,
    masks: Any,
    image_scores: Any,
    labels: Any,
    image_names: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check all inputs together; return maps, masks, scores and labels as numpy arrays."""
    maps, masks = _pixel_arrays(anomaly_maps, masks, image_names)
    scores, labels = _image_arrays(image_scores, labels, image_names)
    if len(maps) != len(scores):
        raise MetricInputError(
            f"got {len(maps)} anomaly maps but {len(scores)} image scores; "
            "pass one map and one score per test image."
        )
    return maps, masks, scores, labels


def validate_inputs(
    anomaly_maps: Any,
    masks: Any,
    image_scores: Any,
    labels: Any,
    image_names: Sequence[str] | None = None,
) -> None:
    """Raise MetricInputError on NaN or inf values and on mismatched shapes or lengths."""
    _validated(anomaly_maps, masks, image_scores, labels, image_names)


def compute_metrics(
    anomaly_maps: Any,
    masks: Any,
    image_scores: Any,
    labels: Any,
    *,
    pro_fpr_limit: float = 0.3,
    image_names: Sequence[str] | None = None,
) -> dict[str, float | None]:
    """Return every metric in METRIC_IDS; pixel metrics and PRO share one sort of all pixels."""
    _check_fpr_limit(pro_fpr_limit)
    maps, masks, scores, labels = _validated(anomaly_maps, masks, image_scores, labels, image_names)
    pixels = _pixel_curve(maps, masks, with_pro=True)
    images = _curve(scores, labels)
    values = {
        "image_auroc": _auroc(images),
        "pixel_auroc": _auroc(pixels),
        "pro": _aupro(pixels, pro_fpr_limit),
        "image_ap": _average_precision(images),
        "pixel_ap": _average_precision(pixels),
        "image_f1_max": _f1_max(images),
        "pixel_f1_max": _f1_max(pixels),
    }
    return {metric: values[metric] for metric in METRIC_IDS}


# --- curves of many resamples at once (anobench.statistics) --------------------------------------


def label_regions(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth regions as the MVTec AD evaluator finds them (8-connected components).

    Returns labels [N, H, W] int64 (0: background, regions numbered 1.. across all images) and
    the image of each region [R] int64, so region r has label r + 1.
    """
    masks = _as_array(masks).astype(bool, copy=False)
    labels = np.zeros(masks.shape, dtype=np.int64)
    images = []
    for index, mask in enumerate(masks):
        found, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        labels[index] = np.where(found > 0, found + len(images), 0)
        images.extend([index] * n)
    return labels, np.asarray(images, dtype=np.int64)


def _with_origin(values: np.ndarray) -> np.ndarray:
    return np.concatenate((np.zeros((*values.shape[:-1], 1)), values), axis=-1)


def auroc_from_counts(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """ROC areas from cumulative (weighted) counts [..., T], thresholds high to low, the last
    flagging everything; trapezoids over grouped ties as `pixel_auroc`; NaN without both classes.
    """
    tp0, fp0 = _with_origin(tp), _with_origin(fp)
    twice_area = np.sum(np.diff(fp0, axis=-1) * (tp0[..., 1:] + tp0[..., :-1]), axis=-1)
    total = 2.0 * tp[..., -1] * fp[..., -1]
    return np.divide(twice_area, total, out=np.full(total.shape, np.nan), where=total > 0)


def average_precision_from_counts(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Step-wise AP from cumulative (weighted) counts [..., T] as `image_ap`; NaN if no positive."""
    flagged = tp + fp
    precision = np.divide(tp, flagged, out=np.zeros(tp.shape), where=flagged > 0)
    gain = np.diff(_with_origin(tp), axis=-1)
    n_pos = tp[..., -1]
    total = np.sum(gain * precision, axis=-1)
    return np.divide(total, n_pos, out=np.full(n_pos.shape, np.nan), where=n_pos > 0)


def aupro_from_curve(fpr: np.ndarray, overlap: np.ndarray, fpr_limit: float) -> np.ndarray:
    """Normalised area under PRO curves [..., T] (FPR and mean region overlap, thresholds high to
    low) up to fpr_limit, interpolated at the limit as `pro` does."""
    _check_fpr_limit(fpr_limit)
    x, y = _with_origin(fpr), _with_origin(overlap)
    x0, x1, y0, y1 = x[..., :-1], x[..., 1:], y[..., :-1], y[..., 1:]
    inside = x1 <= fpr_limit
    area = np.sum(np.where(inside, (x1 - x0) * (y0 + y1), 0.0), axis=-1) / 2
    crossing = (x0 < fpr_limit) & ~inside
    slope = np.divide(y1 - y0, x1 - x0, out=np.zeros(x0.shape), where=crossing)
    y_limit = y0 + slope * (fpr_limit - x0)
    area += np.sum(np.where(crossing, (fpr_limit - x0) * (y0 + y_limit), 0.0), axis=-1) / 2
    return np.clip(area / fpr_limit, 0.0, 1.0)


def metrics_by_group(
    anomaly_maps: Any,
    masks: Any,
    image_scores: Any,
    labels: Any,
    groups: Sequence[str],
    *,
    pro_fpr_limit: float = 0.3,
    metric_ids: Sequence[str] = METRIC_IDS,
) -> dict[str, dict[str, float | None]]:
    """`compute_metrics` (the metrics in metric_ids) on the normal images plus each group's
    anomalous images, per group (e.g. defect type) of the anomalous images; one sort of all
    pixels serves every group."""
    _check_fpr_limit(pro_fpr_limit)
    maps, masks, scores, labels = _validated(anomaly_maps, masks, image_scores, labels, None)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise MetricInputError(f"got {groups.size} groups for {labels.size} images.")
    flat, positive = maps.reshape(-1), masks.reshape(-1)
    order = _descending_order(flat)
    ranked, ranked_positive = flat[order], positive[order]
    ranked_image = (order // (flat.size // max(len(maps), 1))).astype(np.int32)  # [P]
    region_labels, region_image = label_regions(masks)
    # 1 / region size of each defect pixel, in rank order; a group divides by its region count
    region_ids = region_labels.reshape(-1)[order[ranked_positive]] - 1
    del order, region_labels
    sizes = np.bincount(region_ids, minlength=region_image.size).astype(np.float64)
    inverse_size = 1.0 / sizes[region_ids]  # [n_pos]
    positive_image = ranked_image[ranked_positive]  # [n_pos]
    found = {}
    for group in sorted(set(groups[labels].tolist())):
        keep = ~labels | (groups == group)  # [N] images of this group's test set
        n_regions = int(np.count_nonzero(keep[region_image]))
        weights = inverse_size[keep[positive_image]] / n_regions if n_regions else None
        kept = np.flatnonzero(keep[ranked_image])  # indexing by position beats a bool mask 4x
        pixels = _counted_curve(ranked[kept], ranked_positive[kept], weights)
        images = _curve(scores[keep], labels[keep])
        found[group] = {
            metric: _FROM_CURVES[metric](images, pixels, pro_fpr_limit) for metric in metric_ids
        }
    return found


# metric id -> its value from the image curve, the pixel curve and the PRO limit
_FROM_CURVES = {
    "image_auroc": lambda images, pixels, limit: _auroc(images),
    "pixel_auroc": lambda images, pixels, limit: _auroc(pixels),
    "pro": lambda images, pixels, limit: _aupro(pixels, limit),
    "image_ap": lambda images, pixels, limit: _average_precision(images),
    "pixel_ap": lambda images, pixels, limit: _average_precision(pixels),
    "image_f1_max": lambda images, pixels, limit: _f1_max(images),
    "pixel_f1_max": lambda images, pixels, limit: _f1_max(pixels),
}
