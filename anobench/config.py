"""Dataclass schemas for every config group, registered in Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anobench.backbones import BackboneConfig
from anobench.data.mvtec import MVTEC_CATEGORIES
from anobench.errors import AnobenchError, require_positive
from anobench.hardware import PRECISIONS
from anobench.methods import method_entry
from anobench.methods.base import _REGISTRY
from anobench.validation import (
    METHOD_RANGES,
    check_folder_name,
    check_path_value,
    check_ranges,
    check_seed,
)

CONF_PACKAGE = "anobench.conf"  # the YAML configs ship inside the package (conf/ in the repo)
CONF_SEARCH_PATH = f"pkg://{CONF_PACKAGE}"
CONF_DIR = Path(str(resources.files(CONF_PACKAGE)))
# a folder of the user's own configs, used as `anobench run --config-dir` when that is not given
USER_CONFIG_ENV = "ANOBENCH_CONFIG_DIR"


@dataclass
class SyntheticConfig:
    """Size of the built-in synthetic MVTec-layout data (generated once into the cache)."""

    image_size: int = 128
    n_train: int = 40
    n_test_good: int = 10
    n_test_defect: int = 20
    seed: int = 0


@dataclass
class DatasetConfig:
    name: str = "mvtec"
    root: str | None = None  # folder holding one sub-folder per class, MVTec AD layout
    categories: list[str] = field(default_factory=lambda: list(MVTEC_CATEGORIES))  # = `all`
    synthetic: SyntheticConfig | None = None  # set: generate this data into cache_dir first

    def __post_init__(self) -> None:
        check_folder_name("dataset.name", self.name)
        for category in self.categories:
            check_folder_name("dataset.categories", category)


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast around network forwards)
    compile: bool = False  # torch.compile the trained networks
    channels_last: bool = False
    deterministic: bool = False  # torch deterministic algorithms; slower on GPU
    num_workers: int = 0  # DataLoader workers for decoding at load time
    eval_batch_size: int = 16  # test-time batch size (does not change results)
    gpu_from_job: bool = False  # multi_gpu: pick cuda:(job index % GPU count)
    cache_features: bool = True  # frozen-backbone features computed once per class (same results)
    cpu_threads: int | None = None  # torch intra-op threads; null = torch's default (all cores)
    tf32: bool = True  # TF32 matmuls/convolutions on the GPU; false = IEEE fp32 (compat=authors)
    cache_precision: str = "auto"  # cached frozen features: auto = half on the GPU | fp32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise AnobenchError(
                f"hardware.precision={self.precision!r} is not valid; "
                f"use one of {', '.join(PRECISIONS)}."
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise AnobenchError(
                    f"hardware.device={self.device!r} is not a device; use auto, cpu, cuda or "
                    "cuda:N."
                ) from err
        require_positive("hardware", eval_batch_size=self.eval_batch_size)
        if self.cpu_threads is not None:
            require_positive("hardware", cpu_threads=self.cpu_threads)
        if self.num_workers < 0:
            raise AnobenchError(f"hardware.num_workers={self.num_workers} must be 0 or more.")


@dataclass
class RunConfig:
    """The top-level keys of `anobench run`."""

    method: Any = MISSING
    backbone: BackboneConfig = MISSING
    dataset: DatasetConfig = MISSING
    hardware: HardwareConfig = MISSING
    category: Any = "all"  # one class, a list, or `all` = dataset.categories
    seed: Any = 0  # one seed or a list
    results_dir: str = "results"
    cache_dir: str = "~/.cache/anobench"
    overwrite: bool = False  # rerun cells whose metrics.json exists
    save_maps: bool = True  # keep anomaly maps (float16) for export-maps and figures
    save_model: bool = True  # keep what was trained (model.safetensors) for predict and rescore
    checkpoint_every: int = 10  # epochs between resumable checkpoints
    pro_fpr_limit: float = 0.3
    bootstrap_resamples: int = 1000  # stratified resamples for 95% intervals per cell (0: off)
    latency_repeats: int = 20  # timed single-image predictions for latency p50/p95 (0: skip)
    progress: bool = True
    debug: bool = False  # show tracebacks
    dry_run: bool = False  # print the plan (cells, epochs, time estimate) and stop
    compat: str = "none"  # none | authors: set by the compat group (conf/compat/), never by hand


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="backbone", name="backbone_schema", node=BackboneConfig)
    store.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    store.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    for name, entry in _REGISTRY.items():
        store.store(group="method", name=f"{name}_schema", node=entry.config_cls)


def method_config(cfg: DictConfig) -> Any:
    """The method's config as its dataclass instance (runs its validation)."""
    check_ranges(cfg.method, METHOD_RANGES, "method")
    return _to_object(cfg.method, "method", method_entry(cfg.method.name).config_cls)


def backbone_config(cfg: DictConfig) -> BackboneConfig:
    return _to_object(cfg.backbone, "backbone", BackboneConfig)


def hardware_config(cfg: DictConfig) -> HardwareConfig:
    return _to_object(cfg.hardware, "hardware", HardwareConfig)


def dataset_config(cfg: DictConfig) -> DatasetConfig:
    return _to_object(cfg.dataset, "dataset", DatasetConfig)


def _to_object(node: DictConfig, group: str, cls: type) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise AnobenchError(f"invalid {group} config: {str(err).splitlines()[0]}") from err


def resolve_categories(category: Any, available: list[str]) -> list[str]:
    """`all`, one name, a comma list or a list -> class names, validated against `available`."""
    if isinstance(category, str):
        names = available if category == "all" else [c.strip() for c in category.split(",")]
    else:
        names = [str(c) for c in category]
    if not names:
        raise AnobenchError("category is empty; give a class name, a list, or all.")
    return [check_folder_name("category", name) for name in names]


def validate_run_values(cfg: DictConfig) -> None:
    """Top-level values that no schema type can check."""
    check_path_value("results_dir", cfg.results_dir)
    check_path_value("cache_dir", cfg.cache_dir)
    require_positive("", checkpoint_every=cfg.checkpoint_every)
    if not 0 < cfg.pro_fpr_limit <= 1:
        raise AnobenchError(f"pro_fpr_limit={cfg.pro_fpr_limit} must be in (0, 1].")
    if cfg.latency_repeats < 0:
        raise AnobenchError(f"latency_repeats={cfg.latency_repeats} must be 0 or more.")
    if cfg.bootstrap_resamples < 0:
        raise AnobenchError(
            f"bootstrap_resamples={cfg.bootstrap_resamples} must be 0 (no intervals) or more."
        )


def resolve_seeds(seed: Any) -> list[int]:
    """One seed or a list of seeds, each an integer in [0, 2**32 - 1]."""
    seeds = list(seed) if isinstance(seed, list | tuple | ListConfig) else [seed]
    if not seeds:
        raise AnobenchError("seed=[] is empty; give one seed (seed=0) or a list (seed=[0,1,2]).")
    return [check_seed(s) for s in seeds]
