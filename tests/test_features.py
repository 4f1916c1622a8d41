"""Feature cache: tiers, keys, and cached == recomputed."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from anobench.backbones import BackboneConfig, create_backbone
from anobench.features import FeatureStore, cache_key, choose_tier, extract_features
from anobench.hardware import create_hardware

os.environ["HF_HUB_OFFLINE"] = "1"
BACKBONE = BackboneConfig(name="resnet18.tv_in1k", layers=["layer2"], pretrained=False)


def _loader(n: int = 6) -> DataLoader:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return DataLoader([{"image": image} for image in images], batch_size=4)


def _fn():  # noqa: ANN202
    extractor = create_backbone(BACKBONE, 32)
    return lambda images: extractor(images)[0]


def test_cached_and_recomputed_features_are_equal() -> None:
    hardware = create_hardware("cpu")
    fn = _fn()
    cached = FeatureStore(fn, _loader(), hardware, cache=True, progress=False)
    naive = FeatureStore(fn, _loader(), hardware, cache=False, progress=False)
    index = torch.tensor([5, 0, 3])
    assert len(cached) == len(naive) == 6
    torch.testing.assert_close(cached[index], naive[index])
    assert cached[index].shape == (3, 128, 4, 4)


def test_disk_tier_is_reused_by_key(tmp_path: Path) -> None:
    hardware = create_hardware("cpu")
    fn = _fn()
    key = cache_key(BACKBONE, 32, ["a.png"])
    first = extract_features(
        fn, _loader(), hardware, cache_dir=tmp_path, key=key, progress=False, host_budget_bytes=0
    )
    assert (tmp_path / f"{key}.npy").is_file()

    def fail(_images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the backbone ran although the cache was complete")

    again = extract_features(
        fail, _loader(), hardware, cache_dir=tmp_path, key=key, progress=False, host_budget_bytes=0
    )
    torch.testing.assert_close(first.float(), again.float(), rtol=1e-3, atol=1e-3)


def test_key_changes_with_everything_that_changes_features() -> None:
    base = cache_key(BACKBONE, 32, ["a.png"])
    assert cache_key(BACKBONE, 64, ["a.png"]) != base
    assert cache_key(BACKBONE, 32, ["b.png"]) != base
    other_layers = BackboneConfig(name=BACKBONE.name, layers=["layer3"], pretrained=False)
    assert cache_key(other_layers, 32, ["a.png"]) != base
    assert cache_key(BackboneConfig(name=BACKBONE.name, layers=["layer2"]), 32, ["a.png"]) != base
    eps = BackboneConfig(
        name=BACKBONE.name, layers=["layer2"], pretrained=False, layer_norm_eps=1e-5
    )
    assert cache_key(eps, 32, ["a.png"]) != base


def test_fp32_cache_precision_keeps_the_disk_tier_in_float32(tmp_path: Path) -> None:
    # compat=authors: no half-precision storage anywhere (the default disk tier is float16)
    fn, key = _fn(), cache_key(BACKBONE, 32, ["a.png"])
    exact = create_hardware("cpu", cache_precision="fp32")
    default = create_hardware("cpu")
    kwargs = {"cache_dir": tmp_path, "key": key, "progress": False, "host_budget_bytes": 0}
    full = extract_features(fn, _loader(), exact, **kwargs)
    half = extract_features(fn, _loader(), default, **kwargs)
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    assert (tmp_path / f"{key}-fp32.npy").is_file() and (tmp_path / f"{key}.npy").is_file()
    torch.testing.assert_close(full, torch.cat([fn(b["image"]) for b in _loader()]))


def test_tier_choice_on_cpu() -> None:
    hardware = create_hardware("cpu")
    assert choose_tier(10, hardware, host_budget_bytes=100) == "host"
    assert choose_tier(1000, hardware, host_budget_bytes=100) == "disk"
