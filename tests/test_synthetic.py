"""The synthetic generator: determinism, MVTec layout, defect quality and the atomic cache."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from anobench.data import AnomalyDataset, index_split
from anobench.data import synthetic as syn
from anobench.data.synthetic import (
    DEFECTS,
    GRAYSCALE,
    SYNTHETIC_CATEGORIES,
    SyntheticSpec,
    ensure_synthetic,
    generate,
)
from anobench.errors import AnobenchError
from tests.conftest import TINY_SYNTHETIC

SMALL = SyntheticSpec(image_size=32, n_train=2, n_test_good=1, n_test_defect=5)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generation_is_byte_identical_for_a_spec(tmp_path: Path) -> None:
    first = _files(generate(tmp_path / "a", SMALL))
    second = _files(generate(tmp_path / "b", SMALL))
    assert first == second
    assert len(first) == len(SYNTHETIC_CATEGORIES) * (2 + 1 + 2 * 5)
    other = _files(generate(tmp_path / "c", replace(SMALL, seed=1)))
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first)


def test_layout_matches_mvtec(synthetic_root: Path) -> None:
    spec = TINY_SYNTHETIC
    assert sorted(p.name for p in synthetic_root.iterdir()) == sorted(spec.categories)
    for category in spec.categories:
        folder = synthetic_root / category
        assert {p.name for p in folder.iterdir()} == {"train", "test", "ground_truth"}
        train = sorted(p.name for p in (folder / "train" / "good").iterdir())
        assert train == [f"{i:03d}.png" for i in range(spec.n_train)]
        assert [p.name for p in (folder / "train").iterdir()] == ["good"]
        assert len(list((folder / "test" / "good").iterdir())) == spec.n_test_good
        defects = sorted(p.name for p in (folder / "test").iterdir() if p.name != "good")
        assert set(defects) <= set(DEFECTS[category]) and len(defects) >= 2
        assert sorted(p.name for p in (folder / "ground_truth").iterdir()) == defects
        n_defect = 0
        for defect in defects:
            images = sorted((folder / "test" / defect).iterdir())
            masks = sorted((folder / "ground_truth" / defect).iterdir())
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
            assert images[0].stem == "000"
            for image_path, mask_path in zip(images, masks, strict=True):
                mask = Image.open(mask_path)
                assert mask.mode == "L" and mask.size == Image.open(image_path).size
                values = np.asarray(mask)
                assert set(np.unique(values).tolist()) == {0, 255}
            n_defect += len(images)
        assert n_defect == spec.n_test_defect


def test_grayscale_class_is_saved_as_mode_l(synthetic_root: Path) -> None:
    assert GRAYSCALE == ("washer",)
    for category, mode in (("washer", "L"), ("weave", "RGB")):
        for path in (synthetic_root / category).rglob("*.png"):
            if "ground_truth" not in path.parts:
                assert Image.open(path).mode == mode, path


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_defects_are_visible_but_not_saturated(category: str) -> None:
    for kind in DEFECTS[category]:
        for index in range(4):
            rng = syn._rng(0, category, kind, index)
            clean, image, mask = syn._render(category, 64, rng, kind)
            assert 4 <= mask.sum() <= 0.2 * mask.size, (kind, index)
            change = np.abs(image.astype(int) - clean.astype(int)).max(axis=2)[mask]
            assert change.mean() >= 20, (kind, index)
            saturated = ((image[mask] == 0) | (image[mask] == 255)).all(axis=1)
            assert saturated.mean() < 0.5, (kind, index)


def test_normal_images_vary(synthetic_root: Path) -> None:
    for category in TINY_SYNTHETIC.categories:
        paths = sorted((synthetic_root / category / "train" / "good").iterdir())
        images = np.stack([np.asarray(Image.open(p), dtype=float) for p in paths])
        spread = np.abs(images - images.mean(axis=0)).mean()
        assert spread > 5, category  # not one image plus noise (noise alone is ~3 levels)


def _features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    early = net.layer1(x)
    later = torch.nn.functional.interpolate(net.layer2(early), size=early.shape[-2:])
    features = torch.nn.functional.avg_pool2d(torch.cat([early, later], 1), 3, 1, 1)
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def test_patch_knn_on_random_features_separates_defects(tmp_path: Path) -> None:
    spec = SyntheticSpec(image_size=32, n_train=10, n_test_good=8, n_test_defect=12)
    root = generate(tmp_path, spec)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    for category in ("weave", "marble", "washer", "chip"):
        train = AnomalyDataset(index_split(root, category, "train"), 32)
        test = AnomalyDataset(index_split(root, category, "test"), 32)
        with torch.no_grad():
            bank = _features(net, train.images.float() / 255)
            patches = _features(net, test.images.float() / 255)
        scores = torch.cdist(patches, bank).min(1).values.view(len(test), -1).amax(1)
        good, bad = scores[test.labels == 0], scores[test.labels == 1]
        auroc = (bad[:, None] > good[None]).float().mean().item()
        assert auroc > 0.7, (category, auroc)  # chance is 0.5; 0.72 to 0.93 over seeds 0-3


def test_ensure_synthetic_generates_once(tmp_path: Path, monkeypatch) -> None:
    root = ensure_synthetic(tmp_path, SMALL)
    assert root.parent == tmp_path and len(root.name) == 12
    assert json.loads((root / "spec.json").read_text())["seed"] == SMALL.seed
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache was regenerated")

    monkeypatch.setattr(syn, "generate", no_generation)
    assert ensure_synthetic(tmp_path, SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_ensure_synthetic_is_atomic_when_generation_fails(tmp_path: Path, monkeypatch) -> None:
    written = []
    real_write = syn._write_png

    def failing_write(path: Path, pixels: np.ndarray) -> None:
        if len(written) == 7:
            raise RuntimeError("killed")
        written.append(path)
        real_write(path, pixels)

    monkeypatch.setattr(syn, "_write_png", failing_write)
    with pytest.raises(RuntimeError, match="killed"):
        ensure_synthetic(tmp_path, SMALL)
    assert len(written) == 7 and written[0].exists() is False
    assert list(tmp_path.iterdir()) == []  # no final folder, no staging left behind
    monkeypatch.setattr(syn, "_write_png", real_write)
    root = ensure_synthetic(tmp_path, SMALL)
    assert len(list(root.rglob("*.png"))) == len(SYNTHETIC_CATEGORIES) * (2 + 1 + 2 * 5)


def test_ensure_synthetic_keeps_the_first_finished_copy(tmp_path: Path, monkeypatch) -> None:
    real_generate = syn.generate
    other = {}

    def racing_generate(out: Path, spec: SyntheticSpec, progress: bool = False) -> Path:
        # another process finishes first while this one is still writing
        real_generate(out, spec)
        monkeypatch.setattr(syn, "generate", real_generate)
        other["root"] = ensure_synthetic(tmp_path, spec)
        other["stamp"] = (other["root"] / "spec.json").stat().st_mtime_ns
        return out

    monkeypatch.setattr(syn, "generate", racing_generate)
    root = ensure_synthetic(tmp_path, SMALL)
    assert root == other["root"]
    assert (root / "spec.json").stat().st_mtime_ns == other["stamp"]
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    assert len(list(root.rglob("*.png"))) == len(SYNTHETIC_CATEGORIES) * (2 + 1 + 2 * 5)


def test_foreign_folder_under_the_cache_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / syn.spec_key(SMALL)).mkdir()
    with pytest.raises(AnobenchError, match=str(tmp_path / syn.spec_key(SMALL))):
        ensure_synthetic(tmp_path, SMALL)


def test_generate_refuses_to_mix_into_existing_data(tmp_path: Path) -> None:
    generate(tmp_path, SMALL)
    with pytest.raises(AnobenchError, match=str(tmp_path / SMALL.categories[0])):
        generate(tmp_path, SMALL)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"categories": ("weave", "wool")}, "weave, marble, washer, chip"),
        ({"image_size": 8}, "image_size 8"),
        ({"n_train": 0}, "n_train=0"),
    ],
)
def test_bad_specs_raise(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(AnobenchError, match=message):
        generate(tmp_path, SyntheticSpec(**change))
