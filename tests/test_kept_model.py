"""Kept models: every method's model predicts what its test run measured; wrong models refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from anobench.cli import main
from anobench.hardware import create_hardware
from anobench.kept_model import (
    MODEL_FILE,
    MODEL_INFO_FILE,
    KeptModelError,
    frozen_fingerprint,
    load_kept_model,
)
from anobench.methods import list_methods
from anobench.per_image import read_per_image
from tests.helpers import TINY_METHOD, run_tiny


def test_contract_covers_every_method() -> None:
    assert sorted(TINY_METHOD) == list_methods()


@pytest.mark.parametrize("method", sorted(TINY_METHOD))
def test_a_kept_model_predicts_the_maps_and_scores_of_its_test_run(
    tmp_path: Path, method: str
) -> None:
    cell = run_tiny(tmp_path, method)
    record = json.loads((cell / "metrics.json").read_text())
    assert record["model"] is True
    size = sum((cell / name).stat().st_size for name in (MODEL_FILE, MODEL_INFO_FILE))
    assert record["cost"]["model_bytes"] == size
    info = json.loads((cell / MODEL_INFO_FILE).read_text())
    assert info["identity"] == record["identity"] and info["started"] == record["started"]

    test_folder = next((tmp_path / "cache" / "synthetic").iterdir()) / "weave" / "test"
    out, exported = tmp_path / "predicted", tmp_path / "exported"
    assert main(["predict", str(cell), str(test_folder), "--out", str(out)]) == 0
    assert main(["export-maps", str(cell), "--out", str(exported)]) == 0
    per_image = read_per_image(cell / "per_image.npz")
    assert per_image is not None
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "path,score"
    scores = {line.split(",")[0]: float(line.split(",")[1]) for line in lines[1:]}
    for path, expected in zip(per_image.paths, per_image.scores, strict=True):
        assert scores[str(test_folder.parent / path)] == pytest.approx(expected, rel=1e-5, abs=1e-7)
        stem = Path(path).relative_to("test").with_suffix("")
        ours = tifffile.imread(out / "maps" / f"{stem}.tiff")
        theirs = tifffile.imread(exported / "weave" / "test" / f"{stem}.tiff")  # from maps.npz
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == (48, 48)
        # maps.npz keeps float16: three significant digits
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-3 * np.abs(theirs).max())


def _cell(base: Path, category: str) -> Path:
    (path,) = [
        p.parent for p in (base / "results").rglob("metrics.json") if p.parts[-3] == category
    ]
    return path


def _predict(base: Path, cell: Path) -> int:
    images = next((base / "cache" / "synthetic").iterdir()) / cell.parts[-2] / "test" / "good"
    return main(["predict", str(cell), str(images), "--out", str(base / "out")])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps long lines


def test_a_model_of_another_config_cell_or_version_is_refused(
    knn_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weave, washer = _cell(knn_copy, "weave"), _cell(knn_copy, "washer")
    info_path = weave / MODEL_INFO_FILE
    original = info_path.read_text()

    info = json.loads(original)
    info["config"]["method"]["blur_sigma"] = 1.0  # a model trained under another config
    info_path.write_text(json.dumps(info))
    assert _predict(knn_copy, weave) == 2
    error = _error(capsys)
    assert "is not this cell's model" in error and "method.blur_sigma: 1.0 in the model" in error

    info = json.loads(original)
    info["versions"]["anobench"] = "0.0.1"
    info_path.write_text(json.dumps(info))
    assert _predict(knn_copy, weave) == 2
    assert "was made by anobench 0.0.1" in _error(capsys)

    for name in (MODEL_FILE, MODEL_INFO_FILE):  # washer's model in weave's folder
        shutil.copy(washer / name, weave / name)
    assert _predict(knn_copy, weave) == 2
    assert "category 'washer' in the model, 'weave' in the cell" in _error(capsys)

    info_path.write_text(original)  # weave's description, washer's tensors
    assert _predict(knn_copy, weave) == 2
    assert "recomputes it" in _error(capsys)


def test_a_rebuilt_backbone_that_differs_is_refused(knn_copy: Path) -> None:
    weave = _cell(knn_copy, "weave")
    record = json.loads((weave / "metrics.json").read_text())
    kept = load_kept_model(weave, create_hardware("cpu"), record=record)
    assert (
        frozen_fingerprint(kept.method)
        == json.loads((weave / MODEL_INFO_FILE).read_text())["backbone_model"]["frozen_sha256"]
    )
    torch.manual_seed(1)  # another draw of the random backbone: another fingerprint
    kept.method.extractor.model.layer2[0].conv1.weight.data.normal_()
    assert frozen_fingerprint(kept.method) != kept.info["backbone_model"]["frozen_sha256"]

    info = json.loads((weave / MODEL_INFO_FILE).read_text())
    info["backbone_model"]["frozen_sha256"] = "0" * 64
    (weave / MODEL_INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(KeptModelError, match="rebuilt backbone resnet18.tv_in1k is not the one"):
        load_kept_model(weave, create_hardware("cpu"), record=record)


class _Payload:
    """Unpickling this would create a file: what a crafted pickle would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_damaged_model_is_set_aside_and_its_cell_recomputed(
    knn_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weave = _cell(knn_copy, "weave")
    model = weave / MODEL_FILE
    model.write_bytes(model.read_bytes()[:5000])
    assert _predict(knn_copy, weave) == 2
    assert "(truncated?)" in _error(capsys)

    marker = knn_copy / "payload-ran"
    torch.save({"bank": _Payload(marker)}, model)  # a pickle where safetensors belongs
    assert _predict(knn_copy, weave) == 2
    assert not marker.exists()

    # save_model=false: the model is not wanted, so the cell stays done
    before = (weave / "metrics.json").read_text()
    run_tiny(knn_copy, "knn", "save_model=false")
    assert (weave / "metrics.json").read_text() == before
    run_tiny(knn_copy, "knn")  # save_model=true: set aside and recomputed
    assert (weave / f"{MODEL_FILE}.corrupt").is_file()
    assert (weave / f"{MODEL_INFO_FILE}.corrupt").is_file()
    assert _predict(knn_copy, weave) == 0


def test_save_model_false_keeps_no_model_and_names_the_same_cell(
    knn_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weave = _cell(knn_copy, "weave")
    again = run_tiny(knn_copy, "knn", "save_model=false", "overwrite=true")
    assert again == weave  # save_model is not part of the identity
    record = json.loads((weave / "metrics.json").read_text())
    assert record["model"] is False and record["cost"]["model_bytes"] is None
    assert not (weave / MODEL_FILE).exists()  # the earlier run's model: not this record's
    assert (weave / f"{MODEL_FILE}.superseded").is_file()
    assert _predict(knn_copy, weave) == 2
    assert "holds no kept model" in _error(capsys)
