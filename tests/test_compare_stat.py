"""`anobench compare --stat` on results folders with per-image data, and on CSVs (seed spread),
plus the Markdown / JSON outputs and the 80-column terminal table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from anobench import metrics
from anobench.cli import main
from anobench.per_image import PER_IMAGE_FILE, write_per_image
from anobench.results import Cell
from anobench.statistics import PerImage, summarise_pixels
from tests.test_report import make_record, write_record

N_GOOD, N_BAD, SIZE = 40, 40, 16
LABELS = np.arange(N_GOOD + N_BAD) >= N_GOOD
PATHS = [f"test/{'crack' if bad else 'good'}/{i:03d}.png" for i, bad in enumerate(LABELS)]


def draw(seed: int, separation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps, masks and image scores of one model; `separation` sets how well it detects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(LABELS), SIZE, SIZE), dtype=bool)
    masks[LABELS, 4:9, 5:11] = True
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), (0, 1, 1))
    maps = (noise / noise.std() + separation * masks).astype(np.float32)
    scores = rng.normal(size=len(LABELS)) + separation * LABELS
    return maps, masks, scores


def write_cell(results: Path, seed: int, separation: float, category: str = "carpet") -> dict:
    maps, masks, scores = draw(seed, separation)
    values = metrics.compute_metrics(maps, masks, scores, LABELS)
    record = make_record("m", category, 0, values)
    write_record(results, record)
    folder = Cell("mvtec", "m", "bb", category, 0).directory(results)
    per_image = PerImage(PATHS, LABELS, scores, summarise_pixels(maps, masks, 256))
    write_per_image(folder / PER_IMAGE_FILE, per_image)
    return values


def compare(baseline: Path, candidate: Path, *extra: str) -> int:
    return main(["compare", str(baseline), str(candidate), "--metric", "image_auroc", *extra])


def test_a_real_drop_fails_and_a_same_distribution_resample_passes(tmp_path, capsys):
    base = write_cell(tmp_path / "base", seed=1, separation=1.2)
    same = write_cell(tmp_path / "same", seed=3, separation=1.2)  # another draw, same model
    worse = write_cell(tmp_path / "worse", seed=2, separation=0.4)
    assert same["image_auroc"] < base["image_auroc"] - 0.005  # the plain gate fails it:
    assert compare(tmp_path / "base", tmp_path / "same") == 1
    capsys.readouterr()
    assert compare(tmp_path / "base", tmp_path / "same", "--stat") == 0
    out = capsys.readouterr().out
    assert "noise" in out and "boot" in out and "0 regressed" in out
    assert worse["image_auroc"] < base["image_auroc"] - 0.1
    assert compare(tmp_path / "base", tmp_path / "worse", "--stat") == 1
    out = capsys.readouterr().out
    assert "1 regressed" in out and "<0.001" in out and "significance 0.05" in out


def test_pixel_metrics_are_tested_on_the_same_images_too(tmp_path, capsys):
    write_cell(tmp_path / "base", seed=1, separation=1.2)
    write_cell(tmp_path / "worse", seed=2, separation=0.4)
    code = main(
        ["compare", str(tmp_path / "base"), str(tmp_path / "worse"), "--stat", "--format", "json"]
    )
    verdict = json.loads(capsys.readouterr().out)
    assert code == 1 and verdict["ok"] is False and verdict["mode"] == "stat"
    cells = {c["metric"]: c for c in verdict["cells"]}
    for metric in ("pixel_auroc", "pro", "image_auroc", "image_ap"):
        assert cells[metric]["test"] == "paired bootstrap", metric
        assert cells[metric]["status"] == "regressed" and cells[metric]["p"] < 0.01, metric
    assert cells["pixel_f1_max"]["test"] == "tolerance only"  # no bootstrap of this metric


def test_a_different_test_set_is_not_paired(tmp_path, capsys):
    write_cell(tmp_path / "base", seed=1, separation=1.2)
    write_cell(tmp_path / "same", seed=3, separation=1.2)
    folder = Cell("mvtec", "m", "bb", "carpet", 0).directory(tmp_path / "same")
    other = PerImage([p.replace("crack", "hole") for p in PATHS], LABELS, np.zeros(len(LABELS)))
    write_per_image(folder / PER_IMAGE_FILE, other)
    assert compare(tmp_path / "base", tmp_path / "same", "--stat") == 1
    assert "tol" in capsys.readouterr().out  # one seed, no pairing: the tolerance decides


def seeded_csv(path: Path, values: dict[int, float]) -> Path:
    rows = [
        {"dataset": "mvtec", "method": "m", "backbone": "bb", "category": "carpet", "seed": s}
        | {"metric": "image_auroc", "value": v}
        for s, v in values.items()
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csvs_fall_back_to_the_seed_spread(tmp_path, capsys):
    base = seeded_csv(tmp_path / "b.csv", {0: 0.90, 1: 0.92, 2: 0.94})
    noisy = seeded_csv(tmp_path / "n.csv", {0: 0.89, 1: 0.92, 2: 0.94})  # -1 point: spread is 2
    far = seeded_csv(tmp_path / "f.csv", {0: 0.80, 1: 0.82, 2: 0.84})
    assert compare(base, noisy) == 1
    assert compare(base, noisy, "--stat") == 0
    assert compare(base, far, "--stat") == 1
    out = capsys.readouterr().out
    assert "seeds" in out and "3 regressed" in out


def test_markdown_holds_every_key_and_the_verdict(tmp_path, capsys):
    base = seeded_csv(tmp_path / "b.csv", {0: 0.90})
    cand = seeded_csv(tmp_path / "c.csv", {0: 0.80})
    assert compare(base, cand, "--stat", "--format", "md") == 1
    text = capsys.readouterr().out
    assert "| dataset | method | backbone | category | seed | variant | metric |" in text
    row = "| mvtec | m | bb | carpet | 0 |  | image_auroc | 90.0 | 80.0 | -10.00 | **regressed** |"
    assert row in text
    assert "tolerance only" in text and text.rstrip().endswith("-> FAIL`")


def test_terminal_table_keeps_every_key_whole_at_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    backbone = "vit_base_patch16_384.augreg_in21k_ft_in1k"
    rows = [
        {"dataset": "mvtec", "method": "haloae", "backbone": backbone, "category": c, "seed": 123}
        | {"metric": "pixel_f1_max", "value": v}
        for c, v in (("toothbrush", 0.5), ("transistor", 0.6))
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame(rows).assign(value=[0.1234, 0.9999]).to_csv(tmp_path / "c.csv", index=False)
    assert main(["compare", str(tmp_path / "b.csv"), str(tmp_path / "c.csv"), "--stat"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"mvtec / haloae / {backbone}" in lines
    table = [line for line in lines if "pixel_f1_max" in line]
    assert len(table) == 2 and all(len(line) <= 80 for line in table)
    assert "toothbrush" in table[0] and "123" in table[0] and "regressed" in table[0]
    assert "transistor" in table[1] and "improved" in table[1]


@pytest.mark.parametrize("option", [["--alpha", "1.5"], ["--resamples", "0"]])
def test_bad_gate_options_are_user_errors(tmp_path, option):
    base = seeded_csv(tmp_path / "b.csv", {0: 0.9})
    assert compare(base, base, "--stat", *option) == 2
    assert compare(base, tmp_path / "empty_folder_missing") == 2
    (tmp_path / "empty").mkdir()
    assert compare(base, tmp_path / "empty") == 2
