"""A finished cell's intervals, per-defect metrics and per_image.npz, through `anobench run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anobench import metrics
from anobench.cli import main
from anobench.per_image import PER_IMAGE_FILE, read_per_image, write_per_image
from anobench.statistics import INTERVAL_METRICS, PerImage, summarise_pixels
from tests.helpers import cell_dir, read_metrics, tiny_run_args


def test_a_run_records_intervals_per_defect_metrics_and_per_image_data(tmp_path: Path) -> None:
    assert main(tiny_run_args(tmp_path, "category=washer", "bootstrap_resamples=200")) == 0
    record = read_metrics(tmp_path, "washer")
    assert record["bootstrap"]["resamples"] == 200
    assert set(record["intervals"]) == set(INTERVAL_METRICS)
    for metric in INTERVAL_METRICS:
        low, high = record["intervals"][metric]
        assert 0.0 <= low <= record["metrics"][metric] <= high <= 1.0, metric
    assert record["bootstrap"]["binning_error"]["pro"] < 0.01
    folder = cell_dir(tmp_path, "washer")
    per_image = read_per_image(folder / PER_IMAGE_FILE)
    with np.load(folder / "maps.npz") as maps:
        assert per_image.paths == [str(p) for p in maps["paths"]]
    assert (
        metrics.image_auroc(per_image.scores, per_image.labels) == record["metrics"]["image_auroc"]
    )
    assert set(record["by_defect"]) == set(per_image.defects) - {"good"}
    for defect, values in record["by_defect"].items():
        assert values["n_images"] == per_image.defects.count(defect)
        keep = np.array([d in ("good", defect) for d in per_image.defects])
        expected = metrics.image_auroc(per_image.scores[keep], per_image.labels[keep])
        assert values["image_auroc"] == pytest.approx(expected, abs=1e-12)
    assert per_image.pixels is not None
    assert per_image.pixels.positive.shape[0] == record["n_test"]


def test_zero_resamples_turn_the_intervals_off_and_negative_is_a_user_error(tmp_path: Path):
    assert main(tiny_run_args(tmp_path, "category=washer", "bootstrap_resamples=0")) == 0
    record = read_metrics(tmp_path, "washer")
    assert record["intervals"] == {} and record["by_defect"]
    per_image = read_per_image(cell_dir(tmp_path, "washer") / PER_IMAGE_FILE)
    assert per_image.pixels is None and len(per_image.paths) == record["n_test"]
    assert main(tiny_run_args(tmp_path, "category=washer", "bootstrap_resamples=-1")) == 2


def test_per_image_file_round_trips_and_a_damaged_one_reads_as_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 2:4, 2:4] = masks[2, 5:7, 1:3] = masks[2, 0, 7] = True
    maps = rng.random((3, 8, 8)).astype(np.float32)
    saved = PerImage(
        ["test/good/0.png", "test/cut/1.png", "test/cut/2.png"],
        np.array([False, True, True]),
        np.array([0.1, 0.7, 0.4]),
        summarise_pixels(maps, masks, n_thresholds=16),
    )
    path = tmp_path / PER_IMAGE_FILE
    write_per_image(path, saved)
    loaded = read_per_image(path)
    assert loaded.paths == saved.paths and loaded.defects == ["good", "cut", "cut"]
    assert np.array_equal(loaded.labels, saved.labels)
    assert np.array_equal(loaded.scores, saved.scores)
    for name in ("thresholds", "positive", "negative", "regions", "region_image"):
        assert np.array_equal(getattr(loaded.pixels, name), getattr(saved.pixels, name)), name
    assert loaded.pixels.regions.shape == (3, 16) and not loaded.pixels.exact
    path.write_bytes(path.read_bytes()[:50])
    assert read_per_image(path) is None
    assert read_per_image(tmp_path / "absent.npz") is None
