"""Export of saved anomaly maps to the TIFF layout of the MVTec AD evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from anobench.errors import AnobenchError
from anobench.export import export_maps, export_run_maps

PATHS = ["test/crack/000.png", "test/crack/001.png", "test/good/000.png"]


def write_cell(cell_dir: Path, seed: int = 0) -> np.ndarray:
    """Write a maps.npz as the runner does; return the float16 maps."""
    maps = np.random.default_rng(seed).random((3, 5, 7)).astype(np.float16)  # [N, H, W]
    cell_dir.mkdir(parents=True)
    np.savez_compressed(cell_dir / "maps.npz", maps=maps, paths=np.array(PATHS))
    return maps


def test_export_writes_float32_tiffs_in_evaluator_layout(tmp_path: Path) -> None:
    maps = write_cell(tmp_path / "cell")
    count = export_maps(tmp_path / "cell", tmp_path / "out", "bottle")
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in tmp_path.rglob("*.tiff"))
    assert count == 3
    assert written == [
        "bottle/test/crack/000.tiff",
        "bottle/test/crack/001.tiff",
        "bottle/test/good/000.tiff",
    ]
    for index, path in enumerate(PATHS):
        stem = path.removeprefix("test/").removesuffix(".png")
        image = tifffile.imread(tmp_path / "out" / "bottle" / "test" / f"{stem}.tiff")
        assert image.dtype == np.float32
        np.testing.assert_array_equal(image, maps[index].astype(np.float32))
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_export_run_maps_gives_one_evaluator_folder_per_experiment(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_cell(results / "mvtec" / "knn" / "resnet18" / "bottle" / "seed0")
    write_cell(results / "mvtec" / "knn" / "resnet18" / "carpet" / "seed0", seed=1)
    assert export_run_maps(results, tmp_path / "out") == 6
    experiment = tmp_path / "out" / "mvtec" / "knn" / "resnet18" / "seed0"
    assert sorted(p.name for p in experiment.iterdir()) == ["bottle", "carpet"]
    assert (experiment / "carpet" / "test" / "good" / "000.tiff").is_file()


def test_missing_maps_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(AnobenchError, match="maps.npz"):
        export_maps(tmp_path, tmp_path / "out", "bottle")


def test_path_outside_test_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "cell").mkdir()
    np.savez(tmp_path / "cell" / "maps.npz", maps=np.zeros((1, 2, 2)), paths=np.array(["a.png"]))
    with pytest.raises(AnobenchError, match="'a.png'"):
        export_maps(tmp_path / "cell", tmp_path / "out", "bottle")
    assert not (tmp_path / "out").exists()


def test_maps_are_resized_to_the_original_image_size(tmp_path: Path) -> None:
    from PIL import Image

    from anobench.export import export_maps

    cell = tmp_path / "cell"
    cell.mkdir()
    maps = np.arange(16, dtype=np.float16).reshape(1, 4, 4)
    np.savez(cell / "maps.npz", maps=maps, paths=np.array(["test/crack/000.png"]))
    image = tmp_path / "data" / "bottle" / "test" / "crack" / "000.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (12, 8)).save(image)
    assert export_maps(cell, tmp_path / "out", "bottle", dataset_root=tmp_path / "data") == 1
    exported = tifffile.imread(tmp_path / "out" / "bottle" / "test" / "crack" / "000.tiff")
    assert exported.shape == (8, 12)
    assert exported.dtype == np.float32
    assert exported.min() >= 0 and exported.max() <= 15
