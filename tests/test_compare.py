"""Compare: per-cell differences and the exit status CI relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from anobench.cli import main
from anobench.compare import compare_frames, compare_summary

CELLS = [
    ("synthetic", "knn", "r18", category, seed, metric)
    for category in ("washer", "weave")
    for seed in (0, 1)
    for metric in ("image_auroc", "pro")
]


def results_csv(path: Path, values: dict[tuple, float], drop: tuple = ()) -> Path:
    rows = [
        dict(
            zip(("dataset", "method", "backbone", "category", "seed", "metric"), cell, strict=True),
            value=values.get(cell, 0.8),
            device="cpu",
        )
        for cell in CELLS
        if cell not in drop
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return results_csv(tmp_path / "baseline.csv", {})


def compare(baseline: Path, candidate: Path, *extra: str) -> int:
    return main(["compare", str(baseline), str(candidate), *extra])


def test_equal_results_pass(baseline, capsys):
    assert compare(baseline, baseline) == 0
    out = capsys.readouterr().out
    assert "compare: 8 cells, 0 regressed, 0 missing, 0 improved, 0 new" in out
    assert out.strip().endswith("-> OK")


def test_improvement_passes(baseline, tmp_path, capsys):
    cell = CELLS[0]
    candidate = results_csv(tmp_path / "c.csv", {cell: 0.85})
    assert compare(baseline, candidate) == 0
    assert "0 regressed, 0 missing, 1 improved" in capsys.readouterr().out


def test_drop_beyond_tolerance_fails(baseline, tmp_path, capsys):
    candidate = results_csv(tmp_path / "c.csv", {CELLS[3]: 0.794})  # -0.6 points
    assert compare(baseline, candidate) == 1
    out = capsys.readouterr().out
    assert "1 regressed" in out and out.strip().endswith("-> FAIL")
    assert "-0.60" in out
    assert compare(baseline, candidate, "--tolerance", "1") == 0


def test_drop_of_exactly_the_tolerance_passes(baseline, tmp_path):
    candidate = results_csv(tmp_path / "c.csv", {CELLS[3]: 0.795})  # -0.5 points
    assert compare(baseline, candidate) == 0


def test_missing_cell_fails_and_a_new_one_does_not(baseline, tmp_path, capsys):
    candidate = results_csv(tmp_path / "c.csv", {}, drop=(CELLS[5],))
    assert compare(baseline, candidate) == 1
    assert "1 missing" in capsys.readouterr().out
    assert compare(candidate, baseline) == 0
    assert "7 cells, 0 regressed, 0 missing, 0 improved, 1 new" in capsys.readouterr().out


def test_metric_filter_ignores_other_metrics(baseline, tmp_path):
    pro_cell = next(c for c in CELLS if c[-1] == "pro")
    candidate = results_csv(tmp_path / "c.csv", {pro_cell: 0.5})
    assert compare(baseline, candidate) == 1
    assert compare(baseline, candidate, "--metric", "image_auroc") == 0
    assert compare(baseline, candidate, "--metric", "image_auroc", "--metric", "pro") == 1
    assert compare(baseline, candidate, "--metric", "pixel_aurocc") == 2


def test_a_value_that_became_empty_counts_as_missing():
    keys = ["dataset", "method", "backbone", "category", "seed", "metric"]
    base = pd.DataFrame([("s", "m", "b", "c", 0, "pro", 0.5)], columns=[*keys, "value"])
    cand = base.assign(value=float("nan"))
    diff = compare_frames(base, cand, 0.5)
    assert list(diff["status"]) == ["missing"]
    assert compare_summary(diff, 0.5)[1] is False
    both_empty = compare_frames(cand, cand, 0.5)
    assert list(both_empty["status"]) == ["same"]


def test_bad_inputs_are_user_errors(baseline, tmp_path):
    assert compare(baseline, tmp_path / "absent.csv") == 2
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert compare(baseline, tmp_path / "other.csv") == 2
    assert compare(baseline, baseline, "--tolerance", "-1") == 2


def test_exit_status_through_a_subprocess(baseline, tmp_path):
    candidate = results_csv(tmp_path / "c.csv", {CELLS[0]: 0.7})
    script = "import sys; from anobench.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", script, "compare", str(baseline), str(candidate)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "1 regressed" in result.stdout and "-> FAIL" in result.stdout
