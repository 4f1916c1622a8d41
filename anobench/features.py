"""Frozen-backbone feature cache: compute once per class, reuse every epoch.

Tiers, fastest first: GPU memory (half precision) when the features fit in half of the free
GPU memory, else pinned host memory when they fit in `host_budget_bytes`, else a memory-mapped
file under the cache folder (float16), keyed so that a stale cache is never used.
`hardware.cache_precision=fp32` (compat=authors) keeps every tier in float32.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from anobench.backbones import BackboneConfig
from anobench.hardware import Hardware
from anobench.progress import progress as progress_bar

HOST_BUDGET_BYTES = 16 * 2**30


def cache_key(
    backbone: BackboneConfig, image_size: int, paths: Sequence[str], extra: str = ""
) -> str:
    """A hash of everything that determines the features: model, weights, layers, size, images."""
    weights = backbone.weights
    if weights and Path(weights).expanduser().is_file():
        stat = Path(weights).expanduser().stat()
        weights = f"{weights}:{stat.st_size}:{stat.st_mtime_ns}"
    payload = json.dumps(
        {
            "name": backbone.name,
            "layers": list(backbone.layers),
            "pretrained": backbone.pretrained,
            "weights": weights,
            "padding": backbone.padding_mode,
            "kwargs": dict(backbone.model_kwargs),
            **({"ln_eps": backbone.layer_norm_eps} if backbone.layer_norm_eps is not None else {}),
            "size": image_size,
            "paths": list(paths),
            "extra": extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def choose_tier(nbytes: int, hardware: Hardware, host_budget_bytes: int = HOST_BUDGET_BYTES) -> str:
    free = hardware.free_memory_bytes()
    if free is not None and nbytes < free // 2:
        return "gpu"
    if nbytes <= host_budget_bytes:
        return "host"
    return "disk"


@torch.no_grad()
def extract_features(
    fn: Callable[[Tensor], Tensor],
    loader: DataLoader,
    hardware: Hardware,
    *,
    cache_dir: Path | None = None,
    key: str | None = None,
    progress: bool = True,
    desc: str = "features",
    host_budget_bytes: int = HOST_BUDGET_BYTES,
) -> Tensor:
    """Run `fn` (images [B,3,H,W] in [0,1] on the device -> features [B,...]) over the loader.

    Returns all features [N, ...] stacked in the fastest tier that fits (see module doc).
    Only the disk tier needs `cache_dir` and `key`; it is reused on a later call with the same key.
    """
    count = len(loader.dataset)  # type: ignore[arg-type]
    if key is not None and hardware.cache_precision == "fp32":
        key = f"{key}-fp32"  # the disk tier is float16 otherwise: never mix the two
    if cache_dir is not None and key is not None:
        cached = _load_disk(cache_dir, key)
        if cached is not None:
            return cached
    store: Tensor | np.memmap | None = None
    tier = "gpu"
    offset = 0
    for batch in progress_bar(loader, desc=desc, enabled=progress, unit="batch"):
        images = hardware.to_device(batch["image"])
        with hardware.autocast():
            features = fn(images)
        if store is None:
            item_bytes = (
                features[0].numel() * torch.empty((), dtype=hardware.cache_dtype).element_size()
            )
            tier = choose_tier(item_bytes * count, hardware, host_budget_bytes)
            if tier == "disk" and (cache_dir is None or key is None):
                tier = "host"
            store = _allocate(tier, (count, *features.shape[1:]), hardware, cache_dir, key)
        chunk = features.to(hardware.cache_dtype)
        if isinstance(store, np.memmap):
            store[offset : offset + len(chunk)] = chunk.float().cpu().numpy().astype(store.dtype)
        else:
            store[offset : offset + len(chunk)].copy_(chunk, non_blocking=True)
        offset += len(chunk)
    if store is None:
        raise ValueError("no images to extract features from")
    if isinstance(store, np.memmap):
        store.flush()
        _mark_complete(cache_dir, key)  # type: ignore[arg-type]
        return torch.from_numpy(np.asarray(store))
    hardware.synchronize()
    return store


def _disk_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.complete"


def _allocate(
    tier: str, shape: tuple[int, ...], hardware: Hardware, cache_dir: Path | None, key: str | None
) -> Tensor | np.memmap:
    if tier == "gpu":
        return torch.empty(shape, dtype=hardware.cache_dtype, device=hardware.device)
    if tier == "host":
        return torch.empty(shape, dtype=hardware.cache_dtype, pin_memory=hardware.is_cuda)
    data_path, _ = _disk_paths(cache_dir, key)  # type: ignore[arg-type]
    data_path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(
        data_path.with_suffix(f".{os.getpid()}.partial.npy"),
        mode="w+",
        dtype=np.float32 if hardware.cache_precision == "fp32" else np.float16,
        shape=shape,
    )


def _mark_complete(cache_dir: Path, key: str) -> None:
    data_path, marker = _disk_paths(cache_dir, key)
    os.replace(data_path.with_suffix(f".{os.getpid()}.partial.npy"), data_path)
    marker.touch()


def _load_disk(cache_dir: Path, key: str) -> Tensor | None:
    data_path, marker = _disk_paths(cache_dir, key)
    if not marker.is_file() or not data_path.is_file():
        return None
    return torch.from_numpy(np.load(data_path, mmap_mode="c"))  # copy-on-write: file stays intact


class FeatureStore:
    """Frozen-backbone features of a fixed image set, fetched by index batch.

    With `cache=True` they are computed once (extract_features, fastest tier) and indexed every
    step; with `cache=False` the backbone runs on the indexed images at every access — the naive
    loop, kept for benchmarks and for checking that caching changes nothing.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        loader: DataLoader,
        hardware: Hardware,
        *,
        cache: bool = True,
        cache_dir: Path | None = None,
        key: str | None = None,
        progress: bool = True,
        desc: str = "features",
    ) -> None:
        self.fn = fn
        self.hardware = hardware
        self.cache = cache
        if cache:
            self._data = extract_features(
                fn, loader, hardware, cache_dir=cache_dir, key=key, progress=progress, desc=desc
            )
        else:
            self._data = hardware.to_device(torch.cat([batch["image"] for batch in loader]))

    def __len__(self) -> int:
        return self._data.shape[0]

    @property
    def device(self) -> torch.device:
        return self._data.device

    @torch.no_grad()
    def __getitem__(self, index: Tensor) -> Tensor:
        """Features of the images at `index`, float32 on the device."""
        selected = self._data[index.to(self._data.device)]
        if self.cache:
            return self.hardware.to_device(selected).float()
        with self.hardware.autocast():
            return self.fn(self.hardware.to_device(selected)).float()
