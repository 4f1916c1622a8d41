"""Expand cells (method x category x seed), run each one, skip finished ones, record failures."""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from anobench.backbones import BackboneConfig, validate_backbone
from anobench.config import (
    DatasetConfig,
    HardwareConfig,
    backbone_config,
    dataset_config,
    hardware_config,
    method_config,
    resolve_categories,
    resolve_seeds,
    validate_run_values,
)
from anobench.cost import count_parameters, measure_inference
from anobench.data.mvtec import AnomalyDataset, index_split
from anobench.data.synthetic import SyntheticSpec, ensure_synthetic
from anobench.errors import AnobenchError, is_user_error
from anobench.hardware import Hardware, create_hardware, seed_everything
from anobench.methods import MethodContext, create_method
from anobench.metrics import compute_metrics
from anobench.results import (
    CHECKPOINT_FILE,
    ERROR_FILE,
    MAPS_FILE,
    METRICS_FILE,
    SCHEMA_VERSION,
    Cell,
    check_writable,
    git_commit,
    package_versions,
    write_json_atomic,
    write_maps_atomic,
)
from anobench.sweeps import current_job_index

log = logging.getLogger("anobench")


@dataclass(frozen=True)
class RunPlan:
    """Everything resolved from the config before any work starts."""

    cells: list[Cell]
    dataset_root: Path
    results_dir: Path
    method_cfg: Any
    backbone_cfg: BackboneConfig
    hardware_cfg: HardwareConfig
    hardware: Hardware
    resolved_config: dict
    cache_dir: Path
    overwrite: bool = False
    save_maps: bool = True
    checkpoint_every: int = 10
    pro_fpr_limit: float = 0.3
    progress: bool = True
    latency_repeats: int = 20


@dataclass
class RunSummary:
    done: list[Cell]
    skipped: list[Cell]
    failed: dict[Cell, str]  # cell -> error message
    user_errors: int = 0  # failures caused by bad input (exit code 2)

    @property
    def exit_code(self) -> int:
        if not self.failed:
            return 0
        return 2 if self.user_errors == len(self.failed) else 1


def dataset_root(ds: DatasetConfig, cache_dir: Path) -> Path:
    """The folder holding the class folders; the synthetic data is generated there once."""
    if ds.synthetic is not None:
        spec = SyntheticSpec(
            image_size=ds.synthetic.image_size,
            n_train=ds.synthetic.n_train,
            n_test_good=ds.synthetic.n_test_good,
            n_test_defect=ds.synthetic.n_test_defect,
            seed=ds.synthetic.seed,
        )
        try:
            return ensure_synthetic(cache_dir / "synthetic", spec)
        except OSError as err:
            raise AnobenchError(
                f"cannot write the synthetic data under cache_dir={cache_dir} ({err.strerror}); "
                "choose a writable cache_dir=PATH."
            ) from err
    if ds.root is None:
        raise AnobenchError(
            f"dataset.root is not set for dataset {ds.name}; pass dataset.root=/path/to/{ds.name} "
            "(the folder holding the class folders) or use dataset=synthetic."
        )
    root = Path(ds.root).expanduser()
    if not root.is_dir():
        raise AnobenchError(
            f"dataset root {root} does not exist; set dataset.root to the folder holding the "
            "class folders, or use dataset=synthetic for the built-in data."
        )
    return root


def plan_run(cfg: DictConfig) -> RunPlan:
    """Validate the whole config and the data index of every class, before any training."""
    validate_run_values(cfg)
    method_cfg = method_config(cfg)
    backbone_cfg = backbone_config(cfg)
    hardware_cfg = hardware_config(cfg)
    ds_cfg = dataset_config(cfg)
    hardware = create_hardware(
        hardware_cfg.device,
        hardware_cfg.precision,
        hardware_cfg.compile,
        hardware_cfg.channels_last,
        hardware_cfg.deterministic,
        job_index=current_job_index() if hardware_cfg.gpu_from_job else None,
        cpu_threads=hardware_cfg.cpu_threads,
    )
    validate_backbone(backbone_cfg, method_cfg.image_size)
    results_dir = Path(cfg.results_dir).expanduser()
    cache_dir = Path(cfg.cache_dir).expanduser()
    root = dataset_root(ds_cfg, cache_dir)
    categories = resolve_categories(cfg.category, list(ds_cfg.categories))
    for category in categories:
        index_split(root, category, "train")
        index_split(root, category, "test")
    seeds = resolve_seeds(cfg.seed)
    if not cfg.dry_run:
        check_writable(results_dir)
    cells = [
        Cell(ds_cfg.name, method_cfg.name, backbone_cfg.name, category, seed)
        for category in categories
        for seed in seeds
    ]
    return RunPlan(
        cells=cells,
        dataset_root=root,
        results_dir=results_dir,
        method_cfg=method_cfg,
        backbone_cfg=backbone_cfg,
        hardware_cfg=hardware_cfg,
        hardware=hardware,
        resolved_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        cache_dir=cache_dir,
        overwrite=cfg.overwrite,
        save_maps=cfg.save_maps,
        checkpoint_every=cfg.checkpoint_every,
        pro_fpr_limit=cfg.pro_fpr_limit,
        progress=cfg.progress,
        latency_repeats=cfg.latency_repeats,
    )


def is_done(cell: Cell, results_dir: Path) -> bool:
    return (cell.directory(results_dir) / METRICS_FILE).is_file()


def run_cells(plan: RunPlan) -> RunSummary:
    """Run every cell; a failing cell is recorded and the others go on."""
    summary = RunSummary(done=[], skipped=[], failed={})
    for index, cell in enumerate(plan.cells, start=1):
        if is_done(cell, plan.results_dir) and not plan.overwrite:
            log.info("[%d/%d] %s: done already, skipped", index, len(plan.cells), cell.label())
            summary.skipped.append(cell)
            continue
        log.info("[%d/%d] %s: running", index, len(plan.cells), cell.label())
        try:
            record = run_cell(cell, plan)
        except Exception as err:  # any fault stops this cell only; it is recorded
            message = _failure_message(err, plan)
            _record_failure(cell, plan, err, message)
            summary.failed[cell] = message
            summary.user_errors += is_user_error(err)
            log.error("%s failed: %s", cell.label(), message)
            plan.hardware.empty_cache()
            continue
        summary.done.append(cell)
        shown = {
            k: v for k, v in record["metrics"].items() if k in ("image_auroc", "pixel_auroc", "pro")
        }
        log.info("%s: %s", cell.label(), ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _failure_message(err: BaseException, plan: RunPlan) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        peak = plan.hardware.peak_memory_bytes() or 0
        return (
            f"CUDA out of memory (peak {peak / 2**30:.1f} GiB allocated); lower the method's "
            "batch size (method.batch_size=...), use hardware.precision=bf16, or a bigger GPU"
        )
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _record_failure(cell: Cell, plan: RunPlan, err: BaseException, message: str) -> None:
    write_json_atomic(
        cell.directory(plan.results_dir) / ERROR_FILE,
        {
            "schema": SCHEMA_VERSION,
            "status": "failed",
            **dataclasses.asdict(cell),
            "error": message,
            "error_type": type(err).__name__,
            "traceback": traceback.format_exception(err),
            "finished": _now(),
            "config": plan.resolved_config,
        },
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ordered_loader(
    dataset: Dataset, hardware_cfg: HardwareConfig, pin_memory: bool, seed: int
) -> DataLoader:
    """The images in index order, in evaluation batches (methods batch their training themselves).

    Each iteration of a DataLoader draws a seed; this one draws it from its own generator, not
    torch's global RNG, so a method's random stream does not depend on how often it read a loader.
    """
    return DataLoader(
        dataset,
        batch_size=hardware_cfg.eval_batch_size,
        shuffle=False,
        num_workers=hardware_cfg.num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def run_cell(cell: Cell, plan: RunPlan) -> dict[str, Any]:
    """Train and evaluate one cell; write its maps, then its record (the record marks it done)."""
    started = _now()
    cell_dir = cell.directory(plan.results_dir)
    hardware = plan.hardware
    seed_everything(cell.seed)
    image_size, resize = plan.method_cfg.image_size, plan.method_cfg.resize
    train_set = AnomalyDataset(
        index_split(plan.dataset_root, cell.category, "train"), image_size, resize, plan.progress
    )
    test_set = AnomalyDataset(
        index_split(plan.dataset_root, cell.category, "test"), image_size, resize, plan.progress
    )
    context = MethodContext(
        hardware=hardware,
        backbone=plan.backbone_cfg,
        seed=cell.seed,
        category=cell.category,
        checkpoint_path=cell_dir / CHECKPOINT_FILE,
        checkpoint_every=plan.checkpoint_every,
        progress=plan.progress,
        cache_dir=plan.cache_dir / "features",
        cache_features=plan.hardware_cfg.cache_features,
    )
    method = create_method(cell.method, plan.method_cfg, context)
    hardware.reset_peak_memory()
    start = time.perf_counter()
    method.fit(ordered_loader(train_set, plan.hardware_cfg, hardware.is_cuda, cell.seed))
    hardware.synchronize()
    train_seconds = time.perf_counter() - start
    peak_train = hardware.peak_memory_bytes()

    hardware.reset_peak_memory()
    maps, image_scores, masks, labels, paths = [], [], [], [], []
    start = time.perf_counter()
    for batch in ordered_loader(test_set, plan.hardware_cfg, hardware.is_cuda, cell.seed):
        scores = method.predict(batch["image"])
        maps.append(scores.anomaly_maps.float().cpu())
        image_scores.append(scores.image_scores.float().cpu())
        masks.append(batch["mask"].bool())
        labels.append(batch["label"])
        paths.extend(batch["path"])
    hardware.synchronize()
    test_seconds = time.perf_counter() - start
    maps_np = torch.cat(maps).numpy()
    metrics = compute_metrics(
        maps_np,
        torch.cat(masks).numpy(),
        torch.cat(image_scores).numpy(),
        torch.cat(labels).numpy(),
        pro_fpr_limit=plan.pro_fpr_limit,
        image_names=paths,
    )
    trainable, total = count_parameters(method)
    inference = (
        measure_inference(
            method, test_set[0]["image"].unsqueeze(0), hardware, repeats=plan.latency_repeats
        )
        if plan.latency_repeats > 0
        else {}
    )
    record = {
        "schema": SCHEMA_VERSION,
        "status": "done",
        **dataclasses.asdict(cell),
        "metrics": metrics,
        "cost": {
            "params_trainable": trainable,
            "params_total": total,
            "train_seconds": train_seconds,
            "test_seconds": test_seconds,
            "test_images_per_second": len(test_set) / test_seconds if test_seconds > 0 else None,
            "peak_gpu_memory_bytes_train": peak_train,
            "peak_gpu_memory_bytes_test": hardware.peak_memory_bytes(),
            **inference,
        },
        "n_train": len(train_set),
        "n_test": len(test_set),
        "n_test_anomalous": int(torch.cat(labels).sum()),
        "device": hardware.describe(),
        "precision": hardware.precision,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "started": started,
        "finished": _now(),
        "config": plan.resolved_config,
    }
    if plan.save_maps:
        write_maps_atomic(cell_dir / MAPS_FILE, maps_np, paths)
    write_json_atomic(cell_dir / METRICS_FILE, record)
    (cell_dir / ERROR_FILE).unlink(missing_ok=True)
    (cell_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return record
