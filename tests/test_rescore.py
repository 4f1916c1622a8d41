"""`anobench rescore`: another scoring setting from a kept model, as a new variant's cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anobench.cli import main
from anobench.kept_model import MODEL_INFO_FILE
from anobench.per_image import read_per_image
from anobench.rescore import rescore_config
from tests.helpers import run_tiny


def _cell(base: Path, category: str) -> Path:
    (path,) = [
        p.parent for p in (base / "results").rglob("metrics.json") if p.parts[-3] == category
    ]
    return path


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_rescore_writes_the_cell_a_fresh_run_of_that_setting_writes(
    knn_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _cell(knn_copy, "weave")
    before = {p.parts[-5] for p in (knn_copy / "results").rglob("metrics.json")}
    assert main(["rescore", str(source), "method.blur_sigma=2", "--device", "cpu"]) == 0
    after = {p.parts[-5] for p in (knn_copy / "results").rglob("metrics.json")}
    (folder,) = after - before
    rescored = source.parents[3] / folder / source.relative_to(source.parents[2])
    record = json.loads((rescored / "metrics.json").read_text())
    assert record["overrides"]["method.blur_sigma"] == 2.0
    assert record["rescored_from"]["cell"] == source.relative_to(knn_copy / "results").as_posix()
    assert record["rescored_from"]["changed"] == {"method.blur_sigma": 2}
    info = json.loads((rescored / MODEL_INFO_FILE).read_text())
    assert info["config"]["method"]["blur_sigma"] == 2.0 and info["started"] == record["started"]

    fresh = run_tiny(tmp_path / "fresh", "knn", "method.blur_sigma=2")
    expected = json.loads((fresh / "metrics.json").read_text())
    assert f"knn+{expected['variant']}" == folder  # the same variant as a run of the setting
    assert record["metrics"] == pytest.approx(expected["metrics"], abs=1e-12)
    assert record["by_defect"] == expected["by_defect"]

    capsys.readouterr()
    run_tiny(knn_copy, "knn", "method.blur_sigma=2")  # a run of the setting finds it done
    assert "done already, skipped" in capsys.readouterr().out
    images = next((knn_copy / "cache" / "synthetic").iterdir()) / "weave" / "test"
    out = tmp_path / "out"  # and its model scores with the new setting
    assert main(["predict", str(rescored), str(images), "--out", str(out)]) == 0
    scores = [float(line.split(",")[1]) for line in (out / "scores.csv").read_text().split()[1:]]
    per_image = read_per_image(fresh / "per_image.npz")
    assert per_image is not None and scores == pytest.approx(list(per_image.scores), rel=1e-5)


def test_rescore_refuses_keys_that_need_retraining_and_unchanged_settings(
    knn_cells: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _cell(knn_cells, "weave")
    assert main(["rescore", str(source), "method.pool=5"]) == 2
    error = _error(capsys)
    assert "method.pool cannot change without retraining" in error
    assert "changes only method.blur_sigma, pro_fpr_limit" in error
    assert main(["rescore", str(source), "method.blur_sigma=4"]) == 2  # its own value
    assert "nothing to rescore" in _error(capsys)
    assert main(["rescore", str(source), "method.blur_sigma=wide"]) == 2
    assert "method.blur_sigma='wide' is not valid" in _error(capsys)
    assert main(["rescore", str(source), "blur"]) == 2
    assert "is not KEY=VALUE" in _error(capsys)


def test_a_record_from_before_a_new_top_level_key_is_rescored_with_its_default(
    knn_cells: Path,
) -> None:
    record = json.loads((_cell(knn_cells, "weave") / "metrics.json").read_text())
    del record["config"]["save_model"], record["config"]["bootstrap_resamples"]
    cfg = rescore_config(record, {"method.blur_sigma": 3}, knn_cells / "results", "cpu", False)
    assert cfg.save_model is True and cfg.bootstrap_resamples == 1000
    assert cfg.method.blur_sigma == 3.0 and isinstance(cfg.method.blur_sigma, float)
    assert (cfg.category, cfg.seed, cfg.hardware.device) == ("weave", 0, "cpu")
