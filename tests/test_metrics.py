"""Metrics against brute-force references, scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anobench import metrics
from anobench.errors import AnobenchError
from anobench.metrics import METRIC_IDS, MetricInputError
from tests import reference_metrics as ref

TOL = 1e-6


def random_case(seed: int, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Six 16x16 smoothed-noise maps with blob masks; images 0 and 3 are defect-free."""
    rng = np.random.default_rng(seed)
    masks = ndimage.gaussian_filter(rng.random((6, 16, 16)), (0, 1.5, 1.5)) > 0.54
    masks[[0, 3]] = False
    maps = ndimage.gaussian_filter(rng.random((6, 16, 16)), (0, 1, 1)) + 0.1 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels  # ties between and within classes
    return maps, masks


def image_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Forty image scores on eight levels, so that many tie, with both labels present."""
    rng = np.random.default_rng(seed)
    labels = np.arange(40) % 3 == 0
    scores = np.round(rng.random(40) * 7 + 2 * labels) / 7
    return scores, labels


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0, 0.05])
@pytest.mark.parametrize("seed", range(4))
def test_pro_matches_loop_reference_on_random_maps(seed: int, fpr_limit: float) -> None:
    maps, masks = random_case(seed)
    expected = ref.pro_loop(maps, masks, fpr_limit)
    assert len(ref.regions(masks)) >= 3
    assert metrics.pro(maps, masks, fpr_limit) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0, 0.05])
@pytest.mark.parametrize("seed", range(3))
def test_pro_matches_loop_reference_with_ties(seed: int, fpr_limit: float) -> None:
    maps, masks = random_case(seed, levels=8)
    assert len(np.unique(maps)) < 20
    expected = ref.pro_loop(maps, masks, fpr_limit)
    assert metrics.pro(maps, masks, fpr_limit) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_bincount_reference_agrees_with_loop_reference(seed: int) -> None:
    maps, masks = random_case(seed, levels=None if seed else 8)
    expected = ref.pro_loop(maps, masks, 0.3)
    assert ref.pro_bincount(maps, masks, 0.3) == pytest.approx(expected, abs=1e-12)


def test_pro_hand_computed_example() -> None:
    # Image 0: region A = two pixels scored 0.8 and 0.4; normals 0.4 and 0.2.
    # Image 1: region B = one pixel scored 0.7; normals 0.5, 0.1 and 0.3. Five normals in all.
    # Thresholds high to low give (FPR, PRO), PRO = mean of A's and B's overlap:
    #   start (0, 0); 0.8: (0, 0.25); 0.7: (0, 0.75); 0.5: (0.2, 0.75);
    #   0.4: (0.4, 1.0), the tie lets A's last pixel and one normal in together; 0.3: (0.6, 1) ...
    # Area to FPR 0.3: 0.2 * 0.75 = 0.15 on [0, 0.2]; on [0.2, 0.3] the segment to (0.4, 1.0)
    # gives PRO 0.875 at 0.3, area 0.1 * (0.75 + 0.875) / 2 = 0.08125. Total 0.23125 = 37/160,
    # divided by 0.3 gives 37/48.
    maps = np.array([[[0.8, 0.4, 0.4, 0.2]], [[0.5, 0.1, 0.3, 0.7]]])
    masks = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 1]]], dtype=bool)
    assert metrics.pro(maps, masks, 0.3) == pytest.approx(37 / 48, abs=1e-12)
    assert ref.pro_loop(maps, masks, 0.3) == pytest.approx(37 / 48, abs=1e-12)


def test_pro_counts_diagonal_neighbours_as_one_region() -> None:
    # The defect is (0,0), (0,1) and (1,2); (1,2) touches (0,1) only diagonally. 8-connected it
    # is one region with 2 of 3 pixels above the normals (PRO 2/3 until FPR 1); 4-connected it
    # is a fully found pair and a missed single pixel (PRO 1/2).
    maps = np.full((1, 3, 3), 0.5)
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = True
    maps[0, 0, 0] = maps[0, 0, 1] = 0.9
    maps[0, 1, 2] = 0.1
    four = ref.pro_loop(maps, masks, 0.3, structure=ref.FOUR_CONNECTED)
    assert four == pytest.approx(0.5, abs=1e-12)
    assert metrics.pro(maps, masks, 0.3) == pytest.approx(2 / 3, abs=1e-12)


def test_pro_averages_over_all_regions_of_all_images() -> None:
    maps, masks = random_case(0)
    masks[1] = False
    masks[1, 1:4, 1:4] = True  # three regions in one image, one of them diagonal-only linked
    masks[1, 8:10, 8:10] = True
    masks[1, 10, 10] = masks[1, 11, 11] = True
    masks[1, 13:15, 2] = True
    maps[1, 1:4, 1:4] += 0.5
    assert len(ref.regions(masks[1:2])) == 3
    expected = ref.pro_loop(maps, masks, 0.3)
    assert metrics.pro(maps, masks, 0.3) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("fpr_limit", [1.0, 0.3, 0.05])
def test_pro_lies_in_unit_interval(fpr_limit: float) -> None:
    values = []
    for seed in range(5):
        maps, masks = random_case(seed)
        for signed in (maps, -maps, maps + 10 * masks, maps - 10 * masks):
            values.append(metrics.pro(signed, masks, fpr_limit))
    assert all(0.0 <= value <= 1.0 for value in values)
    assert max(values) == pytest.approx(1.0, abs=1e-12)  # perfect maps reach 1
    assert min(values) == pytest.approx(0.0, abs=1e-12)  # inverted maps reach 0


def test_constant_maps_give_tie_aware_values() -> None:
    _, masks = random_case(1)
    maps = np.full(masks.shape, 0.25, dtype=np.float32)
    n_pos, n_all = int(masks.sum()), masks.size
    assert metrics.pixel_auroc(maps, masks) == 0.5
    assert metrics.pixel_ap(maps, masks) == pytest.approx(n_pos / n_all, abs=1e-12)
    assert metrics.pixel_f1_max(maps, masks) == pytest.approx(2 * n_pos / (n_pos + n_all))
    # One threshold takes the curve from (0, 0) to (1, 1): area 0.3^2 / 2 over 0.3.
    assert metrics.pro(maps, masks, 0.3) == pytest.approx(0.15, abs=1e-12)


@pytest.mark.parametrize("levels", [None, 5])
@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_and_ap_match_sklearn(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed, levels)
    auroc = roc_auc_score(masks.ravel(), maps.ravel())
    ap = average_precision_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(auroc, abs=TOL)
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(ref.auroc_pairs(maps, masks), abs=TOL)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(ap, abs=TOL)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(ref.ap_loop(maps, masks), abs=TOL)


@pytest.mark.parametrize("levels", [None, 5])
def test_pixel_f1_max_matches_brute_force(levels: int | None) -> None:
    maps, masks = random_case(2, levels)
    expected = ref.f1_max_loop(maps, masks)
    assert metrics.pixel_f1_max(maps, masks) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_image_metrics_match_sklearn_with_ties(seed: int) -> None:
    scores, labels = image_case(seed)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert metrics.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.image_auroc(scores, labels) == pytest.approx(ref.auroc_pairs(scores, labels))
    assert metrics.image_ap(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=TOL
    )
    assert metrics.image_f1_max(scores, labels) == pytest.approx(f1.max(), abs=TOL)
    assert metrics.image_f1_max(scores, labels) == pytest.approx(
        ref.f1_max_loop(scores, labels), abs=TOL
    )


def test_constant_image_scores_give_half_auroc() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.full(5, 3.0)
    assert metrics.image_auroc(scores, labels) == 0.5
    assert metrics.image_ap(scores, labels) == pytest.approx(0.6)
    assert metrics.image_f1_max(scores, labels) == pytest.approx(0.75)


def test_compute_metrics_returns_every_metric_as_the_single_functions_do() -> None:
    maps, masks = random_case(3)
    scores = maps.max(axis=(1, 2))
    labels = masks.any(axis=(1, 2))
    result = metrics.compute_metrics(maps, masks, scores, labels, pro_fpr_limit=0.2)
    assert tuple(result) == METRIC_IDS
    assert result == {
        "image_auroc": metrics.image_auroc(scores, labels),
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "pro": metrics.pro(maps, masks, 0.2),
        "image_ap": metrics.image_ap(scores, labels),
        "pixel_ap": metrics.pixel_ap(maps, masks),
        "image_f1_max": metrics.image_f1_max(scores, labels),
        "pixel_f1_max": metrics.pixel_f1_max(maps, masks),
    }
    assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in result.values())


def test_no_anomalous_images_gives_none_not_nan() -> None:
    maps, _ = random_case(0)
    masks = np.zeros(maps.shape, dtype=bool)
    result = metrics.compute_metrics(maps, masks, maps.mean(axis=(1, 2)), np.zeros(6))
    assert result == dict.fromkeys(METRIC_IDS)


def test_only_defect_pixels_and_only_anomalous_images_give_none() -> None:
    maps, _ = random_case(0)
    masks = np.ones(maps.shape, dtype=bool)
    result = metrics.compute_metrics(maps, masks, maps.mean(axis=(1, 2)), np.ones(6))
    assert result == dict.fromkeys(METRIC_IDS)


def test_defect_free_pixels_with_mixed_labels_keep_image_metrics() -> None:
    maps, _ = random_case(0)
    masks = np.zeros(maps.shape, dtype=bool)
    labels = np.array([0, 1, 0, 1, 0, 1])
    result = metrics.compute_metrics(maps, masks, np.arange(6.0), labels)
    assert result["image_auroc"] == pytest.approx(ref.auroc_pairs(np.arange(6.0), labels))
    assert [result[name] for name in ("pixel_auroc", "pro", "pixel_ap", "pixel_f1_max")] == [
        None
    ] * 4


def test_accepts_torch_tensors_and_half_precision() -> None:
    maps, masks = random_case(1, levels=50)  # representable in float16 without merging levels
    expected = metrics.pro(maps.astype(np.float32), masks)
    assert metrics.pro(torch.from_numpy(maps).half(), torch.from_numpy(masks)) == pytest.approx(
        expected, abs=TOL
    )
    assert metrics.pro(torch.from_numpy(maps).bfloat16(), masks) == pytest.approx(
        ref.pro_loop(torch.from_numpy(maps).bfloat16().float().numpy(), masks), abs=TOL
    )


@pytest.mark.parametrize(
    ("names", "expected"),
    [(["a.png", "b.png", "test/crack/002.png"], "'test/crack/002.png'"), (None, "index 2")],
)
def test_nan_map_raises_naming_the_image(names: list[str] | None, expected: str) -> None:
    maps = np.zeros((3, 4, 4))
    maps[2, 1, 1] = np.nan
    with pytest.raises(MetricInputError, match="NaN") as error:
        metrics.validate_inputs(maps, maps > 1, np.zeros(3), np.array([0, 1, 0]), names)
    assert expected in str(error.value)


def test_inf_image_score_raises_naming_the_image() -> None:
    maps = np.zeros((3, 4, 4))
    scores = np.array([0.0, np.inf, 1.0])
    with pytest.raises(MetricInputError, match="'b.png'"):
        metrics.compute_metrics(
            maps, maps > 1, scores, np.array([0, 1, 0]), image_names=["a.png", "b.png", "c.png"]
        )


def test_shape_mismatch_raises_with_both_shapes() -> None:
    with pytest.raises(MetricInputError) as error:
        metrics.pixel_auroc(np.zeros((2, 8, 8)), np.zeros((2, 8, 9), dtype=bool))
    assert "(2, 8, 8)" in str(error.value)
    assert "(2, 8, 9)" in str(error.value)
    assert isinstance(error.value, AnobenchError)


def test_length_mismatches_raise() -> None:
    with pytest.raises(MetricInputError, match="3 image scores but 2 labels"):
        metrics.image_auroc(np.zeros(3), np.array([0, 1]))
    with pytest.raises(MetricInputError, match="2 anomaly maps but 3 image scores"):
        metrics.validate_inputs(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), np.zeros(3), np.ones(3))


def test_non_binary_masks_and_bad_fpr_limits_raise() -> None:
    maps, masks = random_case(0)
    with pytest.raises(MetricInputError, match="0 and 1"):
        metrics.pixel_ap(maps, masks.astype(np.uint8) * 255)
    for limit in (0.0, 1.5, -0.3):
        with pytest.raises(MetricInputError, match="pro_fpr_limit"):
            metrics.pro(maps, masks, limit)
    assert not math.isnan(metrics.pro(maps, masks.astype(np.uint8), 1.0))


def test_float32_sort_route_orders_like_a_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    values = np.round(rng.standard_normal(2000) * 4) / 4  # ties, negatives
    values[:50] = 0.0
    values[50:100] = -0.0
    scores = values.astype(np.float32)
    order = metrics._descending_order(scores)
    assert np.array_equal(order, np.argsort(scores, kind="stable")[::-1])
    labels = rng.random(2000) < 0.3
    assert metrics.image_auroc(scores, labels) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )
