"""`anobench rescore`: a cell's metrics again from its kept model, with other scoring settings.

Only keys that change how a fitted method scores may change: the method's scoring keys (its
`register(..., scoring_keys=...)`) and the evaluation's `pro_fpr_limit`. The result is the cell
of another variant (its overrides include the changed keys), evaluated and written by the
runner exactly as `anobench run` writes a cell, with `rescored_from` naming the cell whose model
it scored with; a later `anobench run` of that setting finds it done.
"""

from __future__ import annotations

import argparse
import copy
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from anobench.config import RunConfig
from anobench.errors import AnobenchError
from anobench.kept_model import load_kept_model
from anobench.methods import method_entry
from anobench.predict import cell_record, find_cell, selectors_of
from anobench.results import Cell

log = logging.getLogger("anobench")
EVALUATION_KEYS = ("pro_fpr_limit",)  # change metrics, not maps


def rescoring_keys(method: str) -> list[str]:
    """The dotted keys `anobench rescore` may change for a method."""
    return [f"method.{key}" for key in method_entry(method).scoring_keys] + list(EVALUATION_KEYS)


def parse_overrides(arguments: list[str], method: str) -> dict[str, Any]:
    """`KEY=VALUE` arguments as {dotted key: value} (values read as YAML), rescoring keys only."""
    allowed = rescoring_keys(method)
    overrides: dict[str, Any] = {}
    for argument in arguments:
        key, separator, text = argument.partition("=")
        if not separator or not key:
            raise AnobenchError(f"{argument!r} is not KEY=VALUE, e.g. method.image_score=max.")
        if key not in allowed:
            raise AnobenchError(
                f"{key} cannot change without retraining; `anobench rescore` of {method} "
                f"changes only {', '.join(allowed)}."
            )
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise AnobenchError(f"{argument!r}: {text!r} is not a value ({err}).") from err
    return overrides


def results_root(cell_dir: Path, record: dict[str, Any]) -> Path:
    """The results folder of a cell `<results>/<dataset>/<method>/<backbone>/<class>/seed<k>`."""
    expected = (record["backbone"], record["category"], f"seed{record['seed']}")
    if len(cell_dir.resolve().parts) < 6 or cell_dir.resolve().parts[-3:] != expected:
        raise AnobenchError(
            f"{cell_dir} is not where a results folder keeps cell {Cell.of(record).label()}; "
            "rescore it inside its results folder."
        )
    return cell_dir.resolve().parents[4]


def rescore_config(
    record: dict[str, Any],
    overrides: dict[str, Any],
    results_dir: Path,
    device: str,
    overwrite: bool,
) -> DictConfig:
    """The source cell's resolved config for this one cell, with the overrides applied."""
    config = copy.deepcopy(record["config"])
    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    for key, value in defaults.items():  # top-level keys added since the cell ran
        if value != "???":
            config.setdefault(key, value)
    config |= {
        "category": record["category"],
        "seed": record["seed"],
        "results_dir": str(results_dir),
        "overwrite": overwrite,
        "dry_run": False,
    }
    config["hardware"] |= {"device": device, "gpu_from_job": False}
    # through the schemas, as `anobench run` would: method.blur_sigma=2 is the float 2.0
    method = OmegaConf.merge(
        OmegaConf.structured(method_entry(str(record["method"])).config_cls), config["method"]
    )
    top = OmegaConf.structured(RunConfig)
    for key, value in overrides.items():
        try:
            if key.startswith("method."):
                OmegaConf.update(method, key.removeprefix("method."), value)
            else:
                OmegaConf.update(top, key, value)
                config[key] = top[key]
        except OmegaConfBaseException as err:
            raise AnobenchError(
                f"{key}={value!r} is not valid ({str(err).splitlines()[0]})."
            ) from err
    config["method"] = OmegaConf.to_container(method)
    return OmegaConf.create(config)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def rescore_command(ns: argparse.Namespace) -> int:
    """`anobench rescore`: plan the new variant's cell, score it with the source's kept model."""
    from anobench.report import print_run_table
    from anobench.runlog import run_log
    from anobench.runner import RunPlan, evaluate_cell, plan_run, run_cells

    source = find_cell(Path(ns.cell), selectors_of(ns))
    record = cell_record(source)
    if record is None:
        raise AnobenchError(f"{source} holds no finished record ({source}/metrics.json).")
    overrides = parse_overrides(ns.overrides, str(record["method"]))
    results_dir = results_root(source, record)
    plan = plan_run(rescore_config(record, overrides, results_dir, ns.device, ns.overwrite))
    (cell,) = plan.cells
    identity = plan.identities[cell.category]
    if cell.variant == record.get("variant", ""):
        raise AnobenchError(
            f"{' '.join(ns.overrides)} is the setting {source} has already; nothing to rescore."
        )
    recorded = ((record.get("identity") or {}).get("data") or {}).get("fingerprint") or {}
    if recorded.get("sha256") != identity.fingerprint.get("sha256"):
        raise AnobenchError(
            f"the dataset files of {cell.category} changed since {source} was measured; "
            "rerun that cell (overwrite=true) before rescoring it."
        )
    scoring = {
        k.removeprefix("method."): v for k, v in overrides.items() if k.startswith("method.")
    }
    cost = record.get("cost") or {}
    training = {  # what the kept model cost to train: the cell this one scores with
        "train_seconds": cost.get("train_seconds"),
        "peak_gpu_memory_bytes_train": cost.get("peak_gpu_memory_bytes_train"),
        "n_train": record.get("n_train"),
    }
    rescored_from = {
        "cell": source.resolve().relative_to(results_dir).as_posix(),
        "variant": record.get("variant", ""),
        "identity": (record.get("identity") or {}).get("hash"),
        "started": record.get("started"),
        "changed": overrides,
    }

    def rescore(new_cell: Cell, new_plan: RunPlan) -> dict[str, Any]:
        started = _now()
        kept = load_kept_model(
            source, new_plan.hardware, record=record, scoring=scoring, progress=new_plan.progress
        )
        extra = {"rescored_from": rescored_from}
        return evaluate_cell(new_cell, new_plan, kept.method, started, training, extra)

    with run_log(results_dir, ["rescore", str(source), *ns.overrides]):
        log.info("rescoring %s with %s", source, " ".join(ns.overrides))
        summary = run_cells(plan, rescore)
    print_run_table(plan.results_dir, plan.cells, Console())
    for failed, message in summary.failed.items():
        Console(stderr=True).print(f"[bold red]failed:[/] {failed.label()}: {message}")
    if summary.done:
        Console().print(f"rescored into {cell.directory(results_dir)}")
    return summary.exit_code
