"""`anobench predict`: images of any size and mode, thresholds from the test set, which cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from anobench.cli import main
from anobench.errors import AnobenchError
from anobench.metrics import image_f1_max
from anobench.statistics import summarise_pixels
from anobench.thresholds import (
    image_f1_threshold,
    image_fpr_threshold,
    parse_rule,
    pixel_fpr_threshold,
)
from tests.helpers import run_tiny


def _cell(base: Path, category: str) -> Path:
    (path,) = [
        p.parent for p in (base / "results").rglob("metrics.json") if p.parts[-3] == category
    ]
    return path


def _data(base: Path, category: str) -> Path:
    return next((base / "cache" / "synthetic").iterdir()) / category


def _scores(out: Path) -> list[list[str]]:
    return [line.split(",") for line in (out / "scores.csv").read_text().splitlines()[1:]]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps long lines


def test_images_of_any_size_and_mode_get_maps_at_their_own_size(
    knn_cells: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    parts = tmp_path / "parts"
    (parts / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (768, 1024, 4), dtype=np.uint8), "RGBA").save(
        parts / "rgba.png"
    )  # an MVTec-sized photo with an alpha channel
    Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8), "L").save(
        parts / "sub" / "gray.jpg"
    )
    deep = rng.integers(20000, 65535, (60, 100)).astype(np.uint16)  # 16-bit greyscale
    Image.fromarray(deep).save(parts / "deep16.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(parts / ".hidden.png")
    (parts / "notes.txt").write_text("not an image")
    single = tmp_path / "single.bmp"
    Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)).save(single)
    out = tmp_path / "out"
    cell = _cell(knn_cells, "weave")
    arguments = ["predict", str(cell), str(parts), str(single), "--out", str(out)]
    assert main([*arguments, "--threshold", "0.5", "--batch-size", "2"]) == 0

    sizes = {"deep16": (60, 100), "rgba": (768, 1024), "sub/gray": (90, 70), "single": (33, 47)}
    for name, shape in sizes.items():
        anomaly_map = tifffile.imread(out / "maps" / f"{name}.tiff")
        assert anomaly_map.dtype == np.float32 and anomaly_map.shape == shape
        assert np.isfinite(anomaly_map).all()
        with Image.open(out / "overlays" / f"{name}.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == shape[::-1]
        with Image.open(out / "masks" / f"{name}.png") as mask:
            values = np.asarray(mask)
            assert mask.mode == "L" and values.shape == shape and set(np.unique(values)) <= {0, 255}
            np.testing.assert_array_equal(values == 255, anomaly_map >= 0.5)
    rows = _scores(out)
    assert [Path(row[0]).name for row in rows] == [
        "deep16.png",
        "rgba.png",
        "gray.jpg",
        "single.bmp",
    ]
    assert all(row[2] == str(float(row[1]) >= 0.5).lower() for row in rows)
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == 4 and summary["threshold"]["image"] == 0.5
    assert summary["method"] == "knn" and summary["category"] == "weave"


def test_derived_thresholds_give_the_stated_rates_on_the_test_images(tmp_path: Path) -> None:
    cell = run_tiny(tmp_path, "knn", image_size=48)  # maps at the images' own size: no resize
    record = json.loads((cell / "metrics.json").read_text())
    test = _data(tmp_path, "weave") / "test"

    out = tmp_path / "fpr"
    assert (
        main(
            ["predict", str(cell), str(test / "good"), "--out", str(out), "--threshold", "fpr:0.4"]
        )
        == 0
    )
    rows = _scores(out)
    assert sum(row[2] == "true" for row in rows) == math.floor(0.4 * len(rows)) == 1
    masks = [np.asarray(Image.open(p)) == 255 for p in sorted((out / "masks").rglob("*.png"))]
    flagged = np.mean(np.concatenate([m.ravel() for m in masks]))
    # the pixel threshold sits on one of 2048 shared thresholds: at most one step below 0.4
    assert 0.4 - 0.005 <= flagged <= 0.4

    out = tmp_path / "f1"
    assert main(["predict", str(cell), str(test), "--out", str(out), "--threshold", "f1"]) == 0
    decisions = np.array([row[2] == "true" for row in _scores(out)])
    labels = np.array([Path(row[0]).parent.name != "good" for row in _scores(out)])
    tp = np.sum(decisions & labels)
    f1 = 2 * tp / (decisions.sum() + labels.sum())
    assert f1 == pytest.approx(record["metrics"]["image_f1_max"], abs=1e-12)
    summary = json.loads((out / "predict.json").read_text())
    assert summary["threshold"]["rule"] == "f1" and summary["threshold"]["mask"] is not None


def test_a_results_folder_needs_selectors_when_several_cells_match(
    knn_cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = knn_cells / "results"
    images = _data(knn_cells, "washer") / "test" / "good"
    out = tmp_path / "out"
    assert main(["predict", str(results), str(images), "--out", str(out)]) == 2
    error = _error(capsys)
    assert "2 cells with a kept model" in error and "/washer/seed0" in error
    assert "/weave/seed0" in error
    assert main(["predict", str(results), str(images), "--out", str(out), "--method", "saae"]) == 2
    assert "none of the 2 cells" in _error(capsys)
    assert (
        main(["predict", str(results), str(images), "--out", str(out), "--category", "washer"]) == 0
    )
    assert json.loads((out / "predict.json").read_text())["category"] == "washer"


def test_out_inside_the_dataset_or_an_image_folder_is_refused(
    knn_cells: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = _cell(knn_cells, "weave")
    images = _data(knn_cells, "weave") / "test" / "good"
    inside_images = images / "predicted"
    assert main(["predict", str(cell), str(images), "--out", str(inside_images)]) == 2
    assert "lies inside the image folder" in _error(capsys)
    single = next(images.iterdir())
    inside_data = _data(knn_cells, "weave") / "predicted"
    assert main(["predict", str(cell), str(single), "--out", str(inside_data)]) == 2
    assert "lies inside the cell's dataset root" in _error(capsys)
    assert not inside_images.exists() and not inside_data.exists()


def test_threshold_rules() -> None:
    assert parse_rule("0.25").value == 0.25 and parse_rule("F1").kind == "f1"
    assert parse_rule("fpr:0.05").value == 0.05
    for bad in ("abc", "fpr:1.5", "fpr:x", "nan"):
        with pytest.raises(AnobenchError, match="--threshold"):
            parse_rule(bad)

    scores = np.array([0.1, 0.2, 0.2, 0.3])
    flags = {
        rate: int(np.sum(scores >= image_fpr_threshold(scores, rate)))
        for rate in (0, 0.25, 0.5, 0.75, 1)
    }
    assert flags == {
        0: 0,
        0.25: 1,
        0.5: 1,
        0.75: 3,
        1: 4,
    }  # ties move together, never past the rate

    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.integers(0, 6, 30) / 5  # many ties
        labels = rng.random(30) < 0.4
        decisions = values >= image_f1_threshold(values, labels)
        f1 = 2 * np.sum(decisions & labels) / (decisions.sum() + labels.sum())
        assert f1 == pytest.approx(image_f1_max(values, labels), abs=1e-12)

    maps = rng.random((4, 16, 16)).astype(np.float32)
    masks = np.zeros((4, 16, 16), dtype=bool)
    masks[2:, 4:8, 4:8] = True
    labels = np.array([False, False, True, True])
    pixels = summarise_pixels(maps, masks)  # 1024 distinct values: exact thresholds
    for rate in (0.0, 0.01, 0.3):
        threshold = pixel_fpr_threshold(pixels, labels, rate)
        good = maps[~labels]
        assert np.mean(good >= threshold) == pytest.approx(math.floor(rate * good.size) / good.size)
