"""Figures: map grids per class and metric bars, on a hand-made MVTec-layout class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.cli import main
from anobench.figures import (
    BAR_HEADER_INCHES,
    BAR_ROW_INCHES,
    CELL_INCHES,
    DPI,
    HEADER_INCHES,
    grid_size,
    overlay,
    select_images,
)
from anobench.results import write_maps_atomic

SIZE = 32
TEST_IMAGES = [
    "test/crack/000.png",
    "test/crack/001.png",
    "test/good/000.png",
    "test/good/001.png",
    "test/hole/000.png",
]


def write_class(root: Path) -> None:
    """A tiny 'carpet' class: grey images with a bright square where the mask says defect."""
    folder = root / "carpet"
    rng = np.random.default_rng(0)
    for name in ("train/good/000.png", *TEST_IMAGES):
        pixels = rng.integers(90, 110, (SIZE, SIZE, 3), dtype=np.uint8)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if "good" not in name:
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            mask[8:16, 8:16] = 255
            pixels[mask > 0] = 250
            defect, stem = path.parent.name, path.stem
            mask_path = folder / "ground_truth" / defect / f"{stem}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
        Image.fromarray(pixels).save(path)


def write_cell(results: Path, root: Path, method: str, seed: int, value: float) -> None:
    folder = results / "mvtec" / method / "bb" / "carpet" / f"seed{seed}"
    folder.mkdir(parents=True)
    record = {
        "schema": 1,
        "status": "done",
        "dataset": "mvtec",
        "method": method,
        "backbone": "bb",
        "category": "carpet",
        "seed": seed,
        "device": "cpu",
        "metrics": {"image_auroc": value, "pixel_auroc": value, "pro": value},
        "config": {
            "dataset": {
                "name": "mvtec",
                "root": str(root),
                "categories": ["carpet"],
                "synthetic": None,
            },
            "cache_dir": str(root.parent / "cache"),
        },
    }
    (folder / "metrics.json").write_text(json.dumps(record))
    maps = np.zeros((len(TEST_IMAGES), 16, 16), dtype=np.float32)
    maps[:, 4:8, 4:8] = np.arange(len(TEST_IMAGES))[:, None, None] + 1
    write_maps_atomic(folder / "maps.npz", maps, TEST_IMAGES)


def test_select_images_takes_defect_types_in_turn_then_one_good():
    chosen = select_images(TEST_IMAGES, n_anomalous=3)
    assert [TEST_IMAGES[i] for i in chosen] == [
        "test/crack/000.png",
        "test/hole/000.png",
        "test/crack/001.png",
        "test/good/000.png",
    ]
    assert [TEST_IMAGES[i] for i in select_images(TEST_IMAGES, 1)] == [
        "test/crack/000.png",
        "test/good/000.png",
    ]


def test_overlay_leaves_low_scores_clear_and_paints_high_ones():
    image = np.full((2, 2, 3), 0.5)
    score = np.array([[0.0, 1.0], [0.0, 0.0]])
    painted = overlay(image, score)
    assert np.allclose(painted[0, 0], 0.5)
    assert painted[0, 1, 0] > painted[0, 1, 2]  # jet's top is red


def test_report_figures_writes_grids_and_bars_of_the_expected_size(tmp_path):
    root, results, out = tmp_path / "data", tmp_path / "results", tmp_path / "out"
    write_class(root)
    write_cell(results, root, "a", 0, 0.9)
    write_cell(results, root, "a", 1, 0.8)
    write_cell(results, root, "b", 0, 0.7)
    assert main(["report", str(results), "--out", str(out), "--figures"]) == 0
    grid = out / "figures" / "mvtec" / "carpet.png"
    bars = out / "figures" / "metrics_mvtec.png"
    # 3 anomalous + 1 good rows; image column + 2 methods
    with Image.open(grid) as png:
        assert png.size == (
            round(3 * CELL_INCHES * DPI),
            round((4 * CELL_INCHES + HEADER_INCHES) * DPI),
        )
        pixels = np.asarray(png.convert("RGB"))
    assert (np.all(pixels == [0, 255, 0], axis=-1)).sum() > 20  # the ground-truth outline
    with Image.open(bars) as png:  # 1 class + mean, 2 methods: the 6-inch minimum width
        assert png.size == (6 * DPI, round((3 * BAR_ROW_INCHES + BAR_HEADER_INCHES) * DPI))


def test_figures_skip_a_class_whose_images_are_gone(tmp_path, capsys):
    root, results = tmp_path / "data", tmp_path / "results"
    write_cell(results, root, "a", 0, 0.9)
    assert main(["report", str(results), "--figures"]) == 0
    assert "skipped mvtec/carpet" in capsys.readouterr().out
    assert (results / "figures" / "metrics_mvtec.png").is_file()
    assert not (results / "figures" / "mvtec" / "carpet.png").exists()


@pytest.mark.parametrize("n_rows", [1, 4])
def test_grid_size_is_cells_plus_header(n_rows):
    from anobench.figures import grid_size

    assert grid_size(n_rows, 2) == (600, round((n_rows * 2.0 + HEADER_INCHES) * 100))


def test_grids_keep_the_test_images_aspect_ratio(tmp_path):
    root, results, out = tmp_path / "data", tmp_path / "results", tmp_path / "out"
    write_class(root)
    for path in (root / "carpet").rglob("*.png"):  # tall images: 48 high, 32 wide
        with Image.open(path) as image:
            image.resize((SIZE, 48), Image.Resampling.NEAREST).save(path)
    write_cell(results, root, "a", 0, 0.9)
    assert main(["report", str(results), "--out", str(out), "--figures"]) == 0
    with Image.open(out / "figures" / "mvtec" / "carpet.png") as png:
        assert png.size == grid_size(4, 1, aspect=1.5)
    assert grid_size(4, 1, aspect=1.5) == (400, round((4 * 3.0 + HEADER_INCHES) * DPI))


def test_every_bar_axis_starts_at_the_same_value():
    from anobench.figures import metric_bars
    from anobench.tables import records_frame

    records = [
        {
            "dataset": "mvtec",
            "method": "a",
            "backbone": "bb",
            "category": category,
            "seed": 0,
            "metrics": {"image_auroc": 0.98, "pixel_auroc": 0.97, "pro": pro},
        }
        for category, pro in (("carpet", 0.32), ("bottle", 0.9))
    ]
    figure = metric_bars(records_frame(records))
    limits = {ax.get_ylim() for ax in figure.axes}
    assert limits == {(20.0, 100.0)}  # the lowest bar (32) sets every panel's floor
