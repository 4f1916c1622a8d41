"""Expand cells (method x category x seed), run each one, skip finished ones, record failures."""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from anobench.backbones import BackboneConfig, validate_backbone
from anobench.compat import validate_compat
from anobench.config import (
    CONF_DIR,
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
from anobench.errors import AnobenchError, is_storage_error, is_user_error, storage_error
from anobench.hardware import Hardware, create_hardware, seed_everything
from anobench.identity import (
    CellIdentity,
    Flat,
    cell_identity,
    config_variant,
    mismatch,
    write_overrides,
)
from anobench.kept_model import MODEL_FILE, MODEL_INFO_FILE, kept_model_problem, write_kept_model
from anobench.locks import CellBusyError, CellLock
from anobench.methods import Method, MethodContext, create_method
from anobench.metrics import compute_metrics
from anobench.per_image import PER_IMAGE_FILE, write_per_image
from anobench.results import (
    CHECKPOINT_FILE,
    CHECKPOINT_IDENTITY_FILE,
    ERROR_FILE,
    MAPS_FILE,
    METRICS_FILE,
    SCHEMA_VERSION,
    Cell,
    check_writable,
    confine,
    git_commit,
    maps_problem,
    package_versions,
    read_checked,
    read_record,
    remove_temporaries,
    set_aside,
    write_json_atomic,
    write_maps_atomic,
)
from anobench.runlog import TRACE_LOGGER
from anobench.statistics import cell_statistics
from anobench.sweeps import current_job_index

log = logging.getLogger("anobench")
trace = logging.getLogger(TRACE_LOGGER)  # the run log only (the cli prints errors itself)
MODEL_FILES = (MODEL_FILE, MODEL_INFO_FILE)


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
    save_model: bool = True
    checkpoint_every: int = 10
    pro_fpr_limit: float = 0.3
    progress: bool = True
    latency_repeats: int = 20
    bootstrap_resamples: int = 1000
    identities: dict[str, CellIdentity] = dataclasses.field(default_factory=dict)  # by class
    references: dict[str, Flat] = dataclasses.field(default_factory=dict)  # the method's


@dataclass
class RunSummary:
    done: list[Cell]
    skipped: list[Cell]
    failed: dict[Cell, str]  # cell -> error message
    user_errors: int = 0  # failures caused by bad input (exit code 2)
    busy: list[Cell] = dataclasses.field(default_factory=list)  # locked by another run

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
    validate_compat(cfg, CONF_DIR)
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
        tf32=hardware_cfg.tf32,
        cache_precision=hardware_cfg.cache_precision,
    )
    validate_backbone(backbone_cfg, method_cfg.image_size)
    results_dir = Path(cfg.results_dir).expanduser()
    cache_dir = Path(cfg.cache_dir).expanduser()
    root = dataset_root(ds_cfg, cache_dir)
    categories = resolve_categories(cfg.category, list(ds_cfg.categories))
    samples = {
        category: [*index_split(root, category, "train"), *index_split(root, category, "test")]
        for category in categories
    }
    seeds = resolve_seeds(cfg.seed)
    if not cfg.dry_run:
        check_writable(results_dir)
    shared = config_variant(cfg, cache_dir)
    names = (ds_cfg.name, method_cfg.name, backbone_cfg.name)
    synthetic = None if ds_cfg.synthetic is None else dataclasses.asdict(ds_cfg.synthetic)
    identities = {
        category: cell_identity(shared, names, synthetic, root / category, samples[category])
        for category in categories
    }
    cells = [
        Cell(*names, category, seed, shared.variant.name)
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
        save_model=cfg.save_model,
        checkpoint_every=cfg.checkpoint_every,
        pro_fpr_limit=cfg.pro_fpr_limit,
        progress=cfg.progress,
        latency_repeats=cfg.latency_repeats,
        bootstrap_resamples=cfg.bootstrap_resamples,
        identities=identities,
        references=shared.references,
    )


@dataclass(frozen=True)
class CellCheck:
    """What a cell folder holds: a finished result of this very cell, or why not."""

    done: bool
    problem: str | None = None  # why a stored result cannot stand for this cell
    set_aside: tuple[tuple[str, str], ...] = ()  # (file, reason) to rename when the cell runs


def check_cell(
    cell_dir: Path,
    identity: CellIdentity,
    references: dict[str, Flat],
    save_model: bool = True,
) -> CellCheck:
    """Done = metrics.json parses, validates and is this cell's identity, and its maps load
    (and its kept model, when models are kept)."""
    record, problem = read_checked(cell_dir / METRICS_FILE)
    if record is None:
        if problem is None:
            return CellCheck(False)
        return CellCheck(
            False, f"{cell_dir / METRICS_FILE} {problem}", ((METRICS_FILE, "corrupt"),)
        )
    reason = mismatch(record, identity, references)
    if reason is not None:
        superseded = (METRICS_FILE, MAPS_FILE, PER_IMAGE_FILE, *MODEL_FILES)
        files = tuple((name, "superseded") for name in superseded)
        return CellCheck(False, f"{cell_dir / METRICS_FILE} is another setting's: {reason}", files)
    maps = cell_dir / MAPS_FILE
    damaged = maps_problem(maps) if maps.exists() else None
    if damaged is not None:
        return CellCheck(False, f"{maps} {damaged}", ((MAPS_FILE, "corrupt"),))
    damaged = kept_model_problem(cell_dir) if save_model else None
    if damaged is not None:
        return CellCheck(False, damaged, tuple((name, "corrupt") for name in MODEL_FILES))
    return CellCheck(True)


def is_done(cell: Cell, plan: RunPlan) -> bool:
    """Whether the cell's folder holds its finished result (see check_cell)."""
    cell_dir = cell.directory(plan.results_dir)
    identity = plan.identities[cell.category]
    return check_cell(cell_dir, identity, plan.references, plan.save_model).done


CellWork = Callable[[Cell, RunPlan], dict[str, Any]]  # computes a cell, returns its record


def run_cells(plan: RunPlan, work: CellWork | None = None) -> RunSummary:
    """Run every cell (with `work`, default run_cell); a failing cell is recorded, others go on."""
    summary = RunSummary(done=[], skipped=[], failed={})
    for index, cell in enumerate(plan.cells, start=1):
        label = f"[{index}/{len(plan.cells)}] {cell.label()}"
        try:
            outcome = _run_locked(cell, plan, label, work or run_cell)
        except Exception as err:  # any fault stops this cell only; it is recorded
            message = _failure_message(err, plan)
            _record_failure(cell, plan, err, message)
            summary.failed[cell] = message
            summary.user_errors += is_user_error(err)
            log.error("%s failed; the error is in its error.json and below", cell.label())
            trace.error("%s failed: %s", cell.label(), message)
            plan.hardware.empty_cache()
            continue
        if outcome is None:
            summary.skipped.append(cell)
        elif outcome == "busy":
            summary.busy.append(cell)
        else:
            summary.done.append(cell)
            shown = {k: v for k, v in outcome.items() if k in ("image_auroc", "pixel_auroc", "pro")}
            log.info("%s: %s", cell.label(), ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
    return summary


def _run_locked(
    cell: Cell, plan: RunPlan, label: str, work: CellWork
) -> dict[str, Any] | str | None:
    """Run one cell under its lock: its metrics, "busy" (another run holds it) or None (done)."""
    cell_dir = confine(cell.directory(plan.results_dir), plan.results_dir)
    identity = plan.identities[cell.category]
    if not plan.overwrite and check_cell(cell_dir, identity, plan.references, plan.save_model).done:
        log.info("%s: done already, skipped", label)
        return None
    try:
        lock = CellLock(cell_dir)
        lock.acquire()
    except CellBusyError as busy:
        log.info("%s: %s; skipped, that run finishes it", label, busy)
        return "busy"
    try:
        # another run may have finished it meanwhile
        check = check_cell(cell_dir, identity, plan.references, plan.save_model)
        if check.done and not plan.overwrite:
            log.info("%s: finished by another run meanwhile, skipped", label)
            return None
        log.info("%s: running", label)
        _prepare_cell(cell_dir, check, identity, plan)
        return work(cell, plan)["metrics"]
    finally:
        lock.release()


def _prepare_cell(cell_dir: Path, check: CellCheck, identity: CellIdentity, plan: RunPlan) -> None:
    """Under the lock: drop a killed run's temporaries, set aside unusable files, check the
    checkpoint's identity and name the identity the next checkpoints are written under."""
    stale = remove_temporaries(cell_dir)
    if stale:
        log.info("removed %d temporary file(s) a killed run left in %s", len(stale), cell_dir)
    if check.problem is not None:
        moved = [
            set_aside(cell_dir / name, reason).name
            for name, reason in check.set_aside
            if (cell_dir / name).exists()
        ]
        log.warning("%s; set aside as %s, recomputing", check.problem, ", ".join(moved))
    checkpoint = cell_dir / CHECKPOINT_FILE
    sidecar = cell_dir / CHECKPOINT_IDENTITY_FILE
    if plan.overwrite:
        if checkpoint.exists():
            log.info("overwrite=true: removed %s; training starts from epoch 0", checkpoint)
        checkpoint.unlink(missing_ok=True)
    elif checkpoint.exists():
        stored = read_record(sidecar)
        reason = (
            f"no readable {CHECKPOINT_IDENTITY_FILE} names its setting"
            if stored is None
            else mismatch(stored, identity, plan.references)
        )
        if reason is not None:
            aside = set_aside(checkpoint, "mismatch")
            log.warning(
                "%s is not this setting's (%s); set aside as %s, training starts from epoch 0",
                checkpoint,
                reason,
                aside.name,
            )
    write_json_atomic(
        sidecar,
        {
            "dataset": identity.dataset,
            "method": identity.method,
            "backbone": identity.backbone,
            **identity.record_fields(),
            "written": _now(),
            "config": plan.resolved_config,
        },
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _failure_message(err: BaseException, plan: RunPlan) -> str:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device of results_dir={plan.results_dir} ({err.strerror}); "
            "free space or choose another results_dir, then rerun (finished cells are kept)"
        )
    if is_storage_error(err):  # read-only, over quota, file too large, no permission
        return str(storage_error(err))
    if isinstance(err, torch.OutOfMemoryError):
        peak = plan.hardware.peak_memory_bytes() or 0
        return (
            f"CUDA out of memory (peak {peak / 2**30:.1f} GiB allocated); lower the method's "
            "batch size (method.batch_size=...), use hardware.precision=bf16, or a bigger GPU"
        )
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _record_failure(cell: Cell, plan: RunPlan, err: BaseException, message: str) -> None:
    """error.json in the cell's folder, where possible (not outside results_dir, disk full)."""
    identity = plan.identities.get(cell.category)
    try:
        path = confine(cell.directory(plan.results_dir) / ERROR_FILE, plan.results_dir)
        write_json_atomic(
            path,
            {
                "schema": SCHEMA_VERSION,
                "status": "failed",
                **dataclasses.asdict(cell),
                **(identity.record_fields() if identity is not None else {}),
                "error": message,
                "error_type": type(err).__name__,
                "traceback": traceback.format_exception(err),
                "finished": _now(),
                "config": plan.resolved_config,
            },
        )
    except (OSError, AnobenchError) as failure:
        log.warning(
            "%s: the failure could not be recorded in %s (%s)", cell.label(), ERROR_FILE, failure
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
    """Train and evaluate one cell; write its maps and model, then its record (that marks it
    done)."""
    started = _now()
    cell_dir = confine(cell.directory(plan.results_dir), plan.results_dir)
    hardware = plan.hardware
    seed_everything(cell.seed)
    image_size, resize = plan.method_cfg.image_size, plan.method_cfg.resize
    train_set = AnomalyDataset(
        index_split(plan.dataset_root, cell.category, "train"), image_size, resize, plan.progress
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
    training = {
        "train_seconds": time.perf_counter() - start,
        "peak_gpu_memory_bytes_train": hardware.peak_memory_bytes(),
        "n_train": len(train_set),
    }
    return evaluate_cell(cell, plan, method, started, training)


def evaluate_cell(
    cell: Cell,
    plan: RunPlan,
    method: Method,
    started: str,
    training: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the test set with a fitted method; write its maps, model, then its record.

    `training`: train_seconds, peak_gpu_memory_bytes_train and n_train of the fit; `extra`:
    more record fields (a re-scored cell's `rescored_from`).
    """
    cell_dir = confine(cell.directory(plan.results_dir), plan.results_dir)
    identity = plan.identities[cell.category]
    hardware = plan.hardware
    image_size, resize = plan.method_cfg.image_size, plan.method_cfg.resize
    test_set = AnomalyDataset(
        index_split(plan.dataset_root, cell.category, "test"), image_size, resize, plan.progress
    )
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
    statistics = cell_statistics(
        maps_np,
        torch.cat(masks).numpy(),
        torch.cat(image_scores).numpy(),
        torch.cat(labels).numpy(),
        paths,
        resamples=plan.bootstrap_resamples,
        pro_fpr_limit=plan.pro_fpr_limit,
    )
    trainable, total = count_parameters(method)
    inference = (
        measure_inference(
            method, test_set[0]["image"].unsqueeze(0), hardware, repeats=plan.latency_repeats
        )
        if plan.latency_repeats > 0
        else {}
    )
    header = {**dataclasses.asdict(cell), **identity.record_fields(), **(extra or {})}
    model_bytes = _keep_model(
        cell_dir,
        method,
        {**header, "started": started, "config": plan.resolved_config},
        plan.save_model,
    )
    record = {
        "schema": SCHEMA_VERSION,
        "status": "done",
        **header,
        "metrics": metrics,
        **statistics.record_fields(),
        "cost": {
            "params_trainable": trainable,
            "params_total": total,
            "train_seconds": training["train_seconds"],
            "test_seconds": test_seconds,
            "test_images_per_second": len(test_set) / test_seconds if test_seconds > 0 else None,
            "peak_gpu_memory_bytes_train": training["peak_gpu_memory_bytes_train"],
            "peak_gpu_memory_bytes_test": hardware.peak_memory_bytes(),
            **inference,
            "model_bytes": model_bytes,
        },
        "n_train": training["n_train"],
        "n_test": len(test_set),
        "n_test_anomalous": int(torch.cat(labels).sum()),
        "device": hardware.describe(),
        "precision": hardware.precision,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "started": started,
        "finished": _now(),
        "maps": plan.save_maps,
        "model": plan.save_model,
        "config": plan.resolved_config,
    }
    write_per_image(cell_dir / PER_IMAGE_FILE, statistics.per_image)
    if plan.save_maps:
        write_maps_atomic(cell_dir / MAPS_FILE, maps_np, paths)
    write_overrides(cell_dir, cell.method, identity.variant)
    write_json_atomic(cell_dir / METRICS_FILE, record)
    for done_with in (ERROR_FILE, CHECKPOINT_FILE, CHECKPOINT_IDENTITY_FILE):
        (cell_dir / done_with).unlink(missing_ok=True)
    return record


def _keep_model(cell_dir: Path, method: Method, header: dict[str, Any], save: bool) -> int | None:
    """Write the cell's kept model (before its record marks it done); its size in bytes.

    With save_model=false a model left by an earlier run of the cell is set aside: it is not
    the model of the record about to be written.
    """
    if save:
        return write_kept_model(cell_dir, method, header)
    for name in (MODEL_FILE, MODEL_INFO_FILE):
        if (cell_dir / name).exists():
            set_aside(cell_dir / name, "superseded")
    return None
