"""Decision thresholds for `anobench predict`: a number, or derived from a cell's test set.

Two thresholds: one on image scores (is the image anomalous?) and one on map values (which
pixels go into the binary mask). An image or pixel is flagged when its value is at or above its
threshold. From a cell's per_image.npz:
  f1       image: the F1-max threshold of the test images' scores and labels (the partition
           `image_f1_max` measures); pixel: the F1-max threshold of all test pixels.
  fpr:X    image: flags at most a fraction X of the test set's good images (the most such a
           threshold can flag); pixel: flags at most a fraction X of the pixels of the good
           test images.
An image threshold lies halfway between two neighbouring test scores, so float rounding between
the test run and a later prediction cannot move an image across it. Pixel thresholds are read
from the cell's pixel counts at its shared thresholds (per_image.npz; exact when the test maps
have at most 2048 distinct values, else within one of the 2048 steps).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from anobench.errors import AnobenchError
from anobench.statistics import PerImage, PixelSummary

RULES = ("f1", "fpr:X")
_FPR = re.compile(r"fpr:(.+)")


@dataclass(frozen=True)
class Rule:
    """A parsed --threshold: a number, or `f1`, or `fpr` with its rate."""

    kind: str  # "number" | "f1" | "fpr"
    value: float | None = None  # the number, or the false-positive rate

    def describe(self) -> str:
        if self.kind == "number":
            return f"{self.value:g}"
        return "f1" if self.kind == "f1" else f"fpr:{self.value:g}"


@dataclass(frozen=True)
class Thresholds:
    """The image-score threshold (None: no decisions) and the masks' one (None: no masks)."""

    rule: str
    image: float | None
    mask: float | None


def parse_rule(text: str) -> Rule:
    """`0.7` -> a number, `f1`, `fpr:0.05`; AnobenchError on anything else."""
    text = text.strip()
    if text.lower() == "f1":
        return Rule("f1")
    match = _FPR.fullmatch(text.lower())
    if match:
        try:
            rate = float(match.group(1))
        except ValueError:
            rate = math.nan
        if not 0 <= rate <= 1:
            raise AnobenchError(
                f"--threshold {text}: the false-positive rate must be a fraction in [0, 1], "
                "e.g. fpr:0.05."
            )
        return Rule("fpr", rate)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise AnobenchError(
            f"--threshold {text} is not valid; give a number, f1 (the test set's F1-max "
            "threshold) or fpr:0.05 (the threshold flagging 5% of the good test images)."
        )
    return Rule("number", number)


def _between(distinct: np.ndarray, index: int) -> float:
    """Halfway below distinct[index] (descending values), or just below the last one."""
    if index + 1 < distinct.size:
        return float((distinct[index] + distinct[index + 1]) / 2)
    return float(distinct[index] - max(abs(float(distinct[index])), 1.0) * 1e-6)


def _above_all(distinct: np.ndarray) -> float:
    """A threshold above every value (halfway to the next step above the maximum)."""
    step = distinct[0] - distinct[1] if distinct.size > 1 else max(abs(float(distinct[0])), 1.0)
    return float(distinct[0] + step / 2)


def image_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold whose decisions (score >= threshold) have the highest F1 on the labels."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if not labels.any() or labels.all():
        raise AnobenchError(
            "--threshold f1 needs good and anomalous test images in the cell; use fpr:X or a "
            "number."
        )
    distinct = np.unique(scores)[::-1]  # descending
    flagged = (scores[None, :] >= distinct[:, None]).astype(np.int64)  # [T, N]
    tp = flagged @ labels.astype(np.int64)
    fp = flagged.sum(axis=1) - tp
    f1 = 2 * tp / (tp + fp + labels.sum())
    return _between(distinct, int(np.argmax(f1)))


def image_fpr_threshold(good_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold flagging at most `rate` of the good images' scores."""
    scores = np.asarray(good_scores, dtype=np.float64)
    if scores.size == 0:
        raise AnobenchError("--threshold fpr:X needs good test images in the cell.")
    distinct = np.unique(scores)[::-1]
    flagged = np.array([np.count_nonzero(scores >= value) for value in distinct])  # ascending
    allowed = np.flatnonzero(flagged <= rate * scores.size + 1e-9)
    return _above_all(distinct) if allowed.size == 0 else _between(distinct, int(allowed[-1]))


def pixel_f1_threshold(pixels: PixelSummary) -> float:
    """The shared threshold with the highest pixel F1 over all test images."""
    tp = pixels.positive.sum(axis=0)  # [K] at or above each (descending) threshold
    fp = pixels.negative.sum(axis=0)
    if tp[-1] == 0 or fp[-1] == 0:
        raise AnobenchError(
            "--threshold f1 needs defect and normal pixels in the cell's test set; give "
            "--mask-threshold NUMBER."
        )
    f1 = 2 * tp / (tp + fp + tp[-1])
    return float(pixels.thresholds[int(np.argmax(f1))])


def pixel_fpr_threshold(pixels: PixelSummary, labels: np.ndarray, rate: float) -> float:
    """The lowest shared threshold flagging at most `rate` of the good images' pixels."""
    good = ~np.asarray(labels, dtype=bool)
    flagged = pixels.negative[good].sum(axis=0)  # [K] ascending
    if not good.any() or flagged[-1] == 0:
        raise AnobenchError("--threshold fpr:X needs good test images in the cell.")
    allowed = np.flatnonzero(flagged <= rate * flagged[-1])
    if allowed.size == 0:
        return float(np.nextafter(pixels.thresholds[0], np.inf))
    return float(pixels.thresholds[int(allowed[-1])])


def derive(rule: Rule, per_image: PerImage | None, mask_threshold: float | None) -> Thresholds:
    """The thresholds a rule gives on a cell's test set (`mask_threshold` wins for the masks)."""
    if rule.kind == "number":
        assert rule.value is not None
        mask = rule.value if mask_threshold is None else mask_threshold
        return Thresholds(rule.describe(), rule.value, mask)
    if per_image is None:
        raise AnobenchError(
            f"--threshold {rule.describe()} is derived from the cell's per_image.npz, which is "
            "missing or unreadable (cells of older runs have none); give a number instead."
        )
    if rule.kind == "f1":
        image = image_f1_threshold(per_image.scores, per_image.labels)
    else:
        assert rule.value is not None
        image = image_fpr_threshold(per_image.scores[~per_image.labels], rule.value)
    if mask_threshold is not None:
        return Thresholds(rule.describe(), image, mask_threshold)
    if per_image.pixels is None:
        raise AnobenchError(
            f"--threshold {rule.describe()} derives the mask threshold from per_image.npz's "
            "pixel counts, which cells run with bootstrap_resamples=0 lack; give "
            "--mask-threshold NUMBER too."
        )
    if rule.kind == "f1":
        mask = pixel_f1_threshold(per_image.pixels)
    else:
        assert rule.value is not None
        mask = pixel_fpr_threshold(per_image.pixels, per_image.labels, rule.value)
    return Thresholds(rule.describe(), image, mask)
