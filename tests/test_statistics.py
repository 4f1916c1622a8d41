"""Bootstrap intervals against brute force (a loop over resamples calling scikit-learn and the
metrics module on the drawn images), per-defect metrics against the filtered test set, tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from anobench import metrics
from anobench import statistics as st

N_IMAGES, SIZE = 14, 12


def case(seed: int, levels: int | None = None) -> tuple[np.ndarray, ...]:
    """Fourteen 12x12 maps with blob masks (five images defect-free), scores and defect types."""
    rng = np.random.default_rng(seed)
    masks = ndimage.gaussian_filter(rng.random((N_IMAGES, SIZE, SIZE)), (0, 1.5, 1.5)) > 0.53
    masks[:5] = False
    masks[5:, 5, 5] = True  # every anomalous image has a defect
    maps = ndimage.gaussian_filter(rng.random((N_IMAGES, SIZE, SIZE)), (0, 1, 1)) + 0.08 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels  # ties within and between classes
    maps = maps.astype(np.float32)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2)).astype(np.float64) + rng.normal(0, 0.02, N_IMAGES)
    paths = [
        f"test/{'good' if not label else ('crack', 'hole')[i % 2]}/{i:03d}.png"
        for i, label in enumerate(labels)
    ]
    return maps, masks, scores, labels, paths


def test_resamples_keep_the_class_counts_and_draw_with_replacement():
    labels = np.array([0, 0, 0, 1, 1, 0, 1], dtype=bool)
    indices = st.resample_indices(labels, 200, seed=3)
    assert indices.shape == (200, 7)
    assert (labels[indices] == labels).all()  # each position keeps its label
    counts = st.resample_counts(indices, 7)
    assert (counts.sum(axis=1) == 7).all()
    assert (counts.max(axis=1) > 1).any()  # some image drawn twice
    assert np.array_equal(st.resample_indices(labels, 200, seed=3), indices)  # seeded
    assert not np.array_equal(st.resample_indices(labels, 200, seed=4), indices)


@pytest.mark.parametrize("seed", [0, 1])
def test_image_bootstrap_equals_a_loop_calling_scikit_learn(seed):
    _, _, scores, labels, _ = case(seed)
    scores = np.round(scores, 2)  # ties
    indices = st.resample_indices(labels, 300, seed)
    found = st.image_bootstrap(scores, labels, st.resample_counts(indices, N_IMAGES))
    auroc = [roc_auc_score(labels[i], scores[i]) for i in indices]
    ap = [average_precision_score(labels[i], scores[i]) for i in indices]
    assert found["image_auroc"].values == pytest.approx(auroc, abs=1e-12)
    assert found["image_ap"].values == pytest.approx(ap, abs=1e-12)
    assert st.percentile_interval(found["image_auroc"].values) == pytest.approx(
        list(np.percentile(auroc, [2.5, 97.5])), abs=1e-12
    )


@pytest.mark.parametrize("levels", [None, 6])
def test_pixel_bootstrap_is_exact_when_every_score_is_a_threshold(levels):
    maps, masks, _, labels, _ = case(2, levels)
    indices = st.resample_indices(labels, 40, 0)
    summary = st.summarise_pixels(maps, masks)
    assert summary.thresholds.size == len(np.unique(maps)) <= st.N_THRESHOLDS
    found = st.pixel_bootstrap(summary, st.resample_counts(indices, N_IMAGES), 0.3)
    auroc = [roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in indices]
    pro = [metrics.pro(maps[i], masks[i], 0.3) for i in indices]
    assert found["pixel_auroc"].values == pytest.approx(auroc, abs=1e-12)
    assert found["pro"].values == pytest.approx(pro, abs=1e-12)
    assert found["pro"].binning_error == 0.0


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_pixel_bootstrap_with_few_thresholds_stays_within_its_bound(fpr_limit):
    maps, masks, _, labels, _ = case(3)
    indices = st.resample_indices(labels, 40, 1)
    summary = st.summarise_pixels(maps, masks, n_thresholds=24)
    assert summary.thresholds.size == 24
    found = st.pixel_bootstrap(summary, st.resample_counts(indices, N_IMAGES), fpr_limit)
    auroc = np.array([roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in indices])
    pro = np.array([metrics.pro(maps[i], masks[i], fpr_limit) for i in indices])
    auroc_gap = np.abs(found["pixel_auroc"].values - auroc)
    pro_gap = np.abs(found["pro"].values - pro)
    assert auroc_gap.max() > 1e-6 and pro_gap.max() > 1e-6  # binning does change the values
    assert (auroc_gap <= found["pixel_auroc"].errors + 1e-12).all()
    assert (pro_gap <= found["pro"].errors + 1e-12).all()


def test_cell_intervals_match_the_brute_force_intervals():
    maps, masks, scores, labels, paths = case(4)
    result = st.cell_statistics(maps, masks, scores, labels, paths, resamples=200, seed=7)
    indices = st.resample_indices(labels, 200, 7)
    brute = {
        "image_auroc": [roc_auc_score(labels[i], scores[i]) for i in indices],
        "image_ap": [average_precision_score(labels[i], scores[i]) for i in indices],
        "pixel_auroc": [roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in indices],
        "pro": [metrics.pro(maps[i], masks[i], 0.3) for i in indices],
    }
    for metric, values in brute.items():
        expected = np.percentile(values, [2.5, 97.5])
        assert result.intervals[metric] == pytest.approx(list(expected), abs=1e-12), metric
    point = metrics.compute_metrics(maps, masks, scores, labels)
    low, high = result.intervals["image_auroc"]
    assert low < point["image_auroc"] < high
    fields = result.record_fields()
    assert fields["bootstrap"]["resamples"] == 200 and fields["bootstrap"]["seed"] == 7
    assert set(fields["intervals"]) == set(st.INTERVAL_METRICS)


def test_no_resamples_means_no_intervals_but_per_defect_metrics():
    maps, masks, scores, labels, paths = case(5)
    result = st.cell_statistics(maps, masks, scores, labels, paths, resamples=0)
    assert result.intervals == {} and result.per_image.pixels is None
    assert set(result.by_defect) == {"crack", "hole"}


def test_per_defect_metrics_equal_the_metrics_of_the_filtered_test_set():
    maps, masks, scores, labels, paths = case(6)
    defects = [st.defect_of(p) for p in paths]
    found = st.metrics_by_defect(maps, masks, scores, labels, defects, 0.3)
    assert set(found) == {"crack", "hole"}
    for defect, values in found.items():
        keep = np.array([d in ("good", defect) for d in defects])
        expected = metrics.compute_metrics(maps[keep], masks[keep], scores[keep], labels[keep])
        assert values.pop("n_images") == sum(d == defect for d in defects)
        assert set(values) == set(st.DEFECT_METRICS)
        assert values == pytest.approx({m: expected[m] for m in values}, abs=1e-12), defect
        every = metrics.metrics_by_group(maps, masks, scores, labels, defects)[defect]
        assert every == pytest.approx(expected, abs=1e-12), defect
        assert values["pixel_auroc"] == pytest.approx(
            roc_auc_score(masks[keep].ravel(), maps[keep].ravel()), abs=1e-12
        )


def test_mean_interval_is_the_student_t_interval():
    assert st.mean_interval([0.9, 0.92]) is None
    low, high = st.mean_interval([0.90, 0.92, 0.94])
    # mean 0.92, standard error 0.02 / sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302653 * 0.02 / np.sqrt(3)
    assert (low, high) == pytest.approx((0.92 - half, 0.92 + half), abs=1e-6)


def test_paired_bootstrap_flags_a_real_drop_and_passes_a_same_distribution_resample():
    rng = np.random.default_rng(1)
    labels = np.arange(120) % 3 == 0
    baseline = rng.normal(0, 1, 120) + 1.5 * labels
    same = rng.normal(0, 1, 120) + 1.5 * labels  # a second draw of the same model
    worse = rng.normal(0, 1, 120) + 0.6 * labels
    counts = st.stratified_counts(labels, 1000)

    def auroc(scores):
        return st.image_bootstrap(scores, labels, counts)["image_auroc"].values

    drop = metrics.image_auroc(worse, labels) - metrics.image_auroc(baseline, labels)
    assert drop < -0.1
    assert st.paired_bootstrap_p(auroc(baseline), auroc(worse)) < 0.01
    noise = metrics.image_auroc(same, labels) - metrics.image_auroc(baseline, labels)
    assert noise < -0.005  # a plain 0.5-point gate would fail this
    assert st.paired_bootstrap_p(auroc(baseline), auroc(same)) > 0.05


def test_seed_spread_p_by_hand():
    # pooled variance of (1, 3) and (2, 4): (2 + 2) / 2 = 2; t = -4 / sqrt(2 * 2) = -2, dof 2
    p, dof = st.seed_spread_p(-4.0, [1.0, 3.0], [2.0, 4.0])
    assert dof == 2 and p == pytest.approx(0.0917517, abs=1e-6)
    assert st.seed_spread_p(-4.0, [1.0], [2.0]) is None
    assert st.seed_spread_p(-0.1, [1.0, 1.0], [2.0]) == (0.0, 1)
