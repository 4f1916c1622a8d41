"""Brute-force metric references written as the definitions read; slow, for tests and bench only."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def integrate_to_limit(x: list[float], y: list[float], limit: float) -> float:
    """Trapezoid area under the polyline (x, y) from x[0] to limit, interpolating y at limit."""
    area = 0.0
    for x0, y0, x1, y1 in zip(x[:-1], y[:-1], x[1:], y[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
            break
        else:
            break
    return area


def regions(
    masks: np.ndarray, structure: np.ndarray = EIGHT_CONNECTED
) -> list[tuple[int, np.ndarray]]:
    """Every connected ground-truth region of every image as (image index, [H, W] bool)."""
    found = []
    for index, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=structure)
        found.extend((index, labels == k) for k in range(1, n + 1))
    return found


def pro_loop(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float = 0.3,
    structure: np.ndarray = EIGHT_CONNECTED,
) -> float | None:
    """AUPRO with a Python loop over every distinct score and over every region."""
    masks = masks.astype(bool)
    gt_regions = regions(masks, structure)
    normal_scores = maps[~masks]
    if not gt_regions or normal_scores.size == 0:
        return None
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fprs.append(np.count_nonzero(normal_scores >= threshold) / normal_scores.size)
        overlaps = [
            np.count_nonzero(maps[index][region] >= threshold) / np.count_nonzero(region)
            for index, region in gt_regions
        ]
        pros.append(sum(overlaps) / len(overlaps))
    return integrate_to_limit(fprs, pros, fpr_limit) / fpr_limit


def pro_bincount(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """AUPRO with a Python loop over every distinct score, vectorised within each threshold."""
    masks = masks.astype(bool)
    labels = np.zeros(maps.shape, dtype=np.int64)  # 0 = normal, k = k-th region over all images
    n_regions = 0
    for index, mask in enumerate(masks):
        image_labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        labels[index] = np.where(image_labels > 0, image_labels + n_regions, 0)
        n_regions += n
    normal_scores = maps[~masks]
    if n_regions == 0 or normal_scores.size == 0:
        return None
    defect_scores = maps[masks]
    defect_labels = labels[masks]
    sizes = np.bincount(defect_labels, minlength=n_regions + 1)[1:]
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fprs.append(np.count_nonzero(normal_scores >= threshold) / normal_scores.size)
        hits = np.bincount(defect_labels[defect_scores >= threshold], minlength=n_regions + 1)
        pros.append(float(np.mean(hits[1:] / sizes)))
    return integrate_to_limit(fprs, pros, fpr_limit) / fpr_limit


def auroc_pairs(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC as the probability that a positive outscores a negative, ties counting half."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        return None
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((wins + 0.5 * ties) / (positives.size * negatives.size))


def f1_max_loop(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Largest F1 over thresholds at every distinct score, predicting anomalous for score >= t."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        return None
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = np.count_nonzero(predicted & labels)
        fp = np.count_nonzero(predicted & ~labels)
        fn = np.count_nonzero(~predicted & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def ap_loop(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Average precision: sum over descending thresholds of recall gain times precision."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        return None
    ap, last_recall = 0.0, 0.0
    for threshold in np.unique(scores)[::-1]:
        predicted = scores >= threshold
        tp = np.count_nonzero(predicted & labels)
        recall = tp / np.count_nonzero(labels)
        ap += (recall - last_recall) * tp / np.count_nonzero(predicted)
        last_recall = recall
    return ap
