"""Multirun sweeps: one job per cell, the record of expected cells, and `anobench status`."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override, QuotedString
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from anobench.errors import AnobenchError
from anobench.locks import live_owner
from anobench.results import (
    CHECKPOINT_FILE,
    ERROR_FILE,
    METRICS_FILE,
    Cell,
    damaged_warning,
    read_checked,
    read_record,
    split_model_folder,
    write_json_atomic,
)

log = logging.getLogger("anobench")

SWEEPS_DIR = "_sweeps"  # <results_dir>/_sweeps/<time>.json: the cells each multirun expects
SWEEP_SCHEMA = 1
_CELL_KEYS = ("category", "seed")
_SAFE_VALUE = re.compile(r"[\w.\-/]+")


def current_job_index() -> int:
    """This Hydra job's number within its multirun; 0 outside one."""
    if not HydraConfig.initialized():
        return 0
    num = OmegaConf.select(HydraConfig.get(), "job.num", default=None)
    return 0 if num is None else int(num)


def register_launcher_configs() -> None:
    """What conf/hydra/launcher/ needs: the `anobench.gpu_count` resolver, and the joblib
    plugin's config renamed to `joblib_plugin`, so that our joblib.yaml can extend it."""
    from hydra.core.plugins import Plugins

    if not OmegaConf.has_resolver("anobench.gpu_count"):
        # `${anobench.gpu_count:N}`: the GPUs visible here, or N without any
        OmegaConf.register_new_resolver("anobench.gpu_count", _gpu_count_or)
    Plugins.instance()  # imports the launcher plugins, which store their configs
    _register_slurm_launcher()
    # A file named like a stored config is merged onto it with a deprecation warning, and it
    # cannot list that config as its default; so the plugin's `joblib` moves aside.
    launchers = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    plugin = launchers.pop("joblib.yaml", None)
    if plugin is not None:
        ConfigStore.instance().store(
            group="hydra/launcher",
            name="joblib_plugin",
            node=plugin.node,
            provider=plugin.provider,
        )


def _register_slurm_launcher() -> None:
    """hydra_plugins/anobench_launcher: Hydra finds it in a wheel, not in an editable install
    (it cannot list that namespace path), so it is imported and registered here."""
    from hydra.core.plugins import Plugins

    try:
        from hydra_plugins.anobench_launcher import SlurmLauncher
    except ImportError:  # hydra-submitit-launcher is not installed: slurm.yaml then says so
        return
    plugins = Plugins.instance()
    if f"{SlurmLauncher.__module__}.{SlurmLauncher.__name__}" not in plugins.class_name_to_class:
        plugins.register(SlurmLauncher)


def _gpu_count_or(default: Any = 0) -> int:
    from anobench.hardware import gpu_count

    return gpu_count() or int(default)


# ---- expanding a multirun -------------------------------------------------------------------


@dataclass(frozen=True)
class _Combination:
    """One choice of every swept key other than category and seed, and its composed config."""

    overrides: list[str]  # in argument order, Hydra's own included
    cfg: DictConfig  # with its hydra node
    added: list[str]  # overrides the composed config implies (hardware=gpu under SLURM)


def expand_multirun_args(args: list[str]) -> list[str]:
    """One job per cell: `category=all`, `category=[a,b]` and `seed=[0,1]` become sweeps.

    `all` stands for the classes of the dataset that the arguments choose (the config is
    composed, so experiment presets count); the default `category: all` is expanded too. Unless
    the arguments ask for help or set dry_run=true, the expected cells are written to
    <results_dir>/_sweeps/<time>.json for `anobench status`.
    """
    return expand_multirun(args)[0]


def expand_multirun(args: list[str]) -> tuple[list[str], list[Path]]:
    """expand_multirun_args, and the sweep records it wrote (one per results folder)."""
    from anobench.config import register_configs
    from anobench.overrides import parse_overrides, run_arguments

    register_configs()
    register_launcher_configs()
    ns = run_arguments(args)
    if ns.cfg or ns.info or ns.shell_completion:
        raise AnobenchError(
            "Hydra cannot combine -m with --cfg, --info or --shell-completion; drop -m to print "
            "the config (e.g. `anobench run hydra/launcher=slurm --cfg hydra`)."
        )
    overrides = list(ns.overrides or [])
    with _hydra_compose(ns.config_dir) as loader:
        parsed = parse_overrides(overrides, loader)
        if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
            return list(args), []  # interval sweeps belong to optimising sweepers
        cell_sweeps = {o.key_or_group: o for o in parsed if _is_cell_override(o)}
        combinations = _compose_combinations(loader, ns.config_name or "config", parsed)
    launcher = str(combinations[0].cfg.hydra.launcher.get("_target_", ""))
    if launcher.endswith("SlurmLauncher") and shutil.which("srun") is None:
        raise AnobenchError(
            "hydra/launcher=slurm needs SLURM (no srun on PATH); submit from a login node of the "
            "cluster, or try the same jobs here with hydra/launcher=local."
        )
    categories, seeds = _cells_of_sweep(combinations, cell_sweeps)
    replacements = {
        "category": _cell_argument("category", categories, cell_sweeps.get("category")),
        "seed": _cell_argument("seed", seeds, cell_sweeps.get("seed")),
        # defaults that depend on the composed config (hardware=gpu under SLURM)
        **{extra: extra for c in combinations for extra in c.added},
    }
    expanded = _replace_overrides(args, overrides, parsed, replacements)
    records = []
    if not (ns.help or ns.hydra_help or any(c.cfg.dry_run for c in combinations)):
        flags = [a for a in args if a not in overrides and a not in ("-m", "--multirun")]
        for results_dir, cells in _expected_cells(combinations, categories, seeds).items():
            path = record_sweep(results_dir, cells, flags, ["anobench", "run", *expanded])
            log.info("this sweep expects %d cell(s); recorded in %s", len(cells), path)
            records.append(path)
    return expanded, records


@contextmanager
def _hydra_compose(config_dir: str | None = None) -> Iterator[Any]:
    """Hydra's compose API on anobench's configs, leaving any Hydra state as it was."""
    from anobench.overrides import hydra_session

    with hydra_session(config_dir) as loader:
        yield loader


def _is_cell_override(override: Override) -> bool:
    return (
        override.key_or_group in _CELL_KEYS
        and override.package is None
        and not (override.is_delete() or override.is_add() or override.is_force_add())
    )


def _compose_combinations(
    loader: Any, config_name: str, parsed: list[Override]
) -> list[_Combination]:
    """Compose and check the config once per combination of the swept keys but category/seed."""
    from anobench.overrides import compose_checked

    others = [o for o in parsed if not _is_cell_override(o)]
    fixed_cells = [
        o.input_line for o in parsed if _is_cell_override(o) and not o.is_sweep_override()
    ]
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in others
    ]
    combinations = []
    for choice in itertools.product(*choices):
        # with Hydra's own node, so a wrong launcher setting fails here, before any record
        cfg, added = compose_checked(loader, [*choice, *fixed_cells], config_name)
        combinations.append(_Combination(list(choice), cfg, added))
    return combinations


def _sweep_values(override: Override) -> list[Any]:
    return [v.text if isinstance(v, QuotedString) else v for v in override.sweep_iterator()]


def _cells_of_sweep(
    combinations: list[_Combination], cell_sweeps: dict[str, Override]
) -> tuple[list[str], list[int]]:
    """The classes and seeds every job combination runs; they must agree across combinations."""
    from anobench.config import resolve_categories, resolve_seeds

    found: dict[tuple[tuple[str, ...], tuple[int, ...]], list[str]] = {}
    for combination in combinations:
        cfg = combination.cfg
        available = [str(c) for c in cfg.dataset.categories]
        category = cell_sweeps.get("category")
        if category is not None and category.is_sweep_override():
            names = resolve_categories(
                [
                    name
                    for value in _sweep_values(category)
                    for name in (available if value == "all" else [str(value)])
                ],
                available,
            )
        else:
            names = resolve_categories(cfg.category, available)
        seed = cell_sweeps.get("seed")
        if seed is not None and seed.is_sweep_override():
            seeds = resolve_seeds(_sweep_values(seed))
        else:
            seeds = resolve_seeds(cfg.seed)
        key = (tuple(dict.fromkeys(names)), tuple(dict.fromkeys(seeds)))
        found.setdefault(key, []).append(" ".join(combination.overrides) or "(defaults)")
    if len(found) > 1:
        described = "; ".join(f"{jobs[0]}: {', '.join(key[0])}" for key, jobs in found.items())
        raise AnobenchError(
            f"category/seed stand for different cells in different jobs of this sweep "
            f"({described}); start one multirun per dataset or name the classes explicitly."
        )
    (names, seeds), _jobs = next(iter(found.items()))
    return list(names), list(seeds)


def _cell_argument(key: str, values: list[Any], given: Override | None) -> str | None:
    """The `key=...` argument for the expanded sweep, or None when the given one stays."""
    if given is not None and given.is_sweep_override():
        if list(map(str, _sweep_values(given))) == list(map(str, values)):
            return None
    elif len(values) == 1:
        return None
    return f"{key}={','.join(_override_value(v) for v in values)}"


def _override_value(value: Any) -> str:
    text = str(value)
    if _SAFE_VALUE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _replace_overrides(
    args: list[str],
    overrides: list[str],
    parsed: list[Override],
    replacements: dict[str, str | None],
) -> list[str]:
    """`args` with each category/seed override replaced, new ones after the last override."""
    by_line = {o.input_line: o for o in parsed}
    pending = dict(replacements)
    expanded: list[str] = []
    remaining = list(overrides)
    insert_at = 0  # Hydra's parser takes the overrides as one run of positional arguments
    for arg in args:
        if remaining and arg == remaining[0]:
            remaining.pop(0)
            override = by_line.get(arg)
            if override is not None and _is_cell_override(override):
                arg = pending.pop(override.key_or_group, None) or arg
            expanded.append(arg)
            insert_at = len(expanded)
            continue
        expanded.append(arg)
    added = [value for value in pending.values() if value is not None]
    return [*expanded[:insert_at], *added, *expanded[insert_at:]]


def _expected_cells(
    combinations: list[_Combination], categories: list[str], seeds: list[int]
) -> dict[Path, list[dict[str, Any]]]:
    """Per results folder: every cell of the sweep with the overrides of the job that runs it."""
    from anobench.identity import config_variant, reference_configs

    cells: dict[Path, list[dict[str, Any]]] = {}
    references: dict[str, Any] = {}
    for combination in combinations:
        cfg = combination.cfg
        results_dir = Path(str(cfg.results_dir)).expanduser()
        method = str(cfg.method.name)
        if method not in references:
            references[method] = reference_configs(method)
        cache_dir = Path(str(cfg.cache_dir)).expanduser()
        variant = config_variant(cfg, cache_dir, references[method]).variant.name
        for category in categories:
            for seed in seeds:
                cells.setdefault(results_dir, []).append(
                    {
                        "dataset": str(cfg.dataset.name),
                        "method": str(cfg.method.name),
                        "backbone": str(cfg.backbone.name),
                        "category": category,
                        "seed": seed,
                        "variant": variant,
                        "overrides": [
                            *combination.overrides,
                            f"category={_override_value(category)}",
                            f"seed={seed}",
                        ],
                    }
                )
    return cells


def record_sweep(
    results_dir: Path, cells: list[dict[str, Any]], flags: list[str], command: list[str]
) -> Path:
    """Write <results_dir>/_sweeps/<time>.json listing the cells a multirun expects."""
    folder = results_dir / SWEEPS_DIR
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for attempt in itertools.count():
            path = folder / (f"{stamp}.json" if attempt == 0 else f"{stamp}_{attempt}.json")
            try:  # claim the name, so two sweeps started in the same second keep both records
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                continue
        write_json_atomic(
            path,
            {
                "schema": SWEEP_SCHEMA,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cwd": str(Path.cwd()),
                "command": command,
                "flags": flags,
                "cells": cells,
            },
        )
    except OSError as err:
        raise AnobenchError(
            f"cannot record the sweep in {folder} ({err.strerror}); "
            "choose a writable results_dir=PATH."
        ) from err
    return path


# ---- status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """How a recorded sweep ran a cell: folder, Hydra flags and overrides without category/seed."""

    cwd: str
    flags: tuple[str, ...]
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class CellState:
    cell: Cell
    state: str  # done | running | failed | missing
    detail: str = ""  # the error of a failed cell; what a missing cell has on disk
    job: _Job | None = None  # set when a recorded sweep expects the cell


def sweep_status(results_dir: Path, now: float | None = None) -> list[CellState]:
    """Every cell a recorded sweep expects or that has a folder, with its state.

    done: a valid metrics.json; running: no result, and a live run holds the cell's lock;
    failed: error.json and no metrics.json; missing: anything else (a checkpoint of an
    interrupted job, a damaged record, partial files, or nothing yet).
    """
    now = time.time() if now is None else now
    expected: dict[Cell, _Job] = {}
    for path in sorted((results_dir / SWEEPS_DIR).glob("*.json")):
        record = read_record(path)
        if record is None or record.get("schema") != SWEEP_SCHEMA:
            continue
        for entry in record["cells"]:
            cell = Cell.of(entry)
            overrides = tuple(o for o in entry["overrides"] if not o.startswith(_cell_prefixes()))
            expected[cell] = _Job(record["cwd"], tuple(record["flags"]), overrides)
    found = sorted(set(_cell_folders(results_dir)) - set(expected), key=_cell_order)
    return [
        CellState(cell, *_state(cell.directory(results_dir), now), expected.get(cell))
        for cell in [*expected, *found]
    ]


def _cell_prefixes() -> tuple[str, ...]:
    return tuple(f"{key}=" for key in _CELL_KEYS)


def _cell_order(cell: Cell) -> tuple:
    return (cell.dataset, cell.method, cell.variant, cell.backbone, cell.category, cell.seed)


def _cell_folders(results_dir: Path) -> Iterator[Cell]:
    """Cells with a folder <dataset>/<method>[+<variant>]/<backbone>/<category>/seed<N>."""
    for folder in results_dir.glob("*/*/*/*/seed*"):
        parts = folder.relative_to(results_dir).parts
        match = re.fullmatch(r"seed(-?\d+)", parts[4])
        if match and folder.is_dir() and not any(p.startswith(("_", ".")) for p in parts):
            method, variant = split_model_folder(parts[1])
            yield Cell(parts[0], method, parts[2], parts[3], int(match[1]), variant)


def _state(cell_dir: Path, now: float) -> tuple[str, str]:
    record, problem = read_checked(cell_dir / METRICS_FILE)
    if record is not None:
        return "done", ""
    owner = live_owner(cell_dir)
    if owner is not None:
        return "running", f"locked by {owner.describe()}"
    if problem is not None:
        log.warning(damaged_warning(cell_dir / METRICS_FILE, problem))
        return "missing", f"{METRICS_FILE} is damaged ({problem})"
    error = read_record(cell_dir / ERROR_FILE)
    checkpoint = cell_dir / CHECKPOINT_FILE
    if error is not None:
        kept = " (a resubmission resumes from its checkpoint.pt)" if checkpoint.is_file() else ""
        return "failed", f"{error.get('error', '')}{kept}"
    if checkpoint.is_file():
        age = now - checkpoint.stat().st_mtime
        return "missing", f"checkpoint.pt written {_ago(age)} (interrupted)"
    if cell_dir.is_dir():
        return "missing", "started, no result yet"
    return "missing", "not started"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def resubmit_commands(states: list[CellState], cwd: Path | None = None) -> list[str]:
    """`anobench run -m ...` commands that run exactly the failed and missing recorded cells.

    One command per job setting (method and the other overrides of the original sweep) and set of
    seeds; a command starts with `cd` when its sweep was started in another folder.
    """
    cwd = Path.cwd() if cwd is None else cwd
    groups: dict[_Job, dict[str, list[int]]] = {}
    for state in states:
        if state.state in ("failed", "missing") and state.job is not None:
            seeds = groups.setdefault(state.job, {}).setdefault(state.cell.category, [])
            seeds.append(state.cell.seed)
    commands = []
    for job, seeds_by_category in groups.items():
        categories_by_seeds: dict[tuple[int, ...], list[str]] = {}
        for category, seeds in seeds_by_category.items():
            categories_by_seeds.setdefault(tuple(sorted(set(seeds))), []).append(category)
        for seeds, categories in categories_by_seeds.items():
            args = [
                "anobench",
                "run",
                "-m",
                *job.flags,
                *job.overrides,
                f"category={','.join(_override_value(c) for c in categories)}",
                f"seed={','.join(map(str, seeds))}",
            ]
            command = shlex.join(args)
            if Path(job.cwd) != cwd:
                command = f"cd {shlex.quote(job.cwd)} && {command}"
            commands.append(command)
    return commands


def print_sweep_status(states: list[CellState], results_dir: Path, console: Console) -> None:
    """Counts per model, each failed and missing cell, and the commands that resubmit them."""
    if not states:
        console.print(f"no cells under {results_dir} and no recorded sweep in it")
        return
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    kinds = ("done", "running", "failed", "missing")
    for state in states:
        model = (state.cell.dataset, state.cell.model_folder, state.cell.backbone)
        counts.setdefault(model, dict.fromkeys(kinds, 0))[state.state] += 1
    table = Table(title=f"Cells under {results_dir}")
    for name in ("dataset", "method", "backbone", *kinds):
        table.add_column(name, justify="right" if name in kinds else "left")
    for model, row in counts.items():
        table.add_row(*model, *(str(row[s]) for s in kinds))
    console.print(table)
    if all(state.state == "done" for state in states):
        console.print(f"all {len(states)} cells are done")
        return
    unrecorded = False
    for state in states:
        if state.state != "done":
            where = state.cell.directory(Path()).as_posix()
            note = f": {state.detail}" if state.detail else ""
            console.print(f"{state.state}: {where}{note}", markup=False, soft_wrap=True)
            unrecorded = unrecorded or (state.job is None and state.state != "running")
    commands = resubmit_commands(states)
    if commands:
        console.print("\nresubmit the failed and missing cells of the recorded sweeps:")
        for command in commands:
            console.print(command, markup=False, highlight=False, soft_wrap=True)
    if unrecorded:
        console.print(
            "\ncells not from a recorded multirun: rerun the command that started them "
            "(finished cells are skipped).",
            soft_wrap=True,
        )


def status_command(ns: argparse.Namespace) -> int:
    """`anobench status`: print what is done, failed and missing; exit 1 unless all is done."""
    results_dir = Path(ns.results_dir)
    if not results_dir.is_dir():
        raise AnobenchError(
            f"results folder {results_dir} does not exist; pass the results_dir of the sweep."
        )
    console = Console()
    states = []
    for root in results_roots(results_dir):
        found = sweep_status(root)
        print_sweep_status(found, root, console)
        states += found
    return 0 if all(state.state == "done" for state in states) else 1


def print_sweep_tables(records: list[Path], console: Console) -> None:
    """After a multirun: one table per model of all the cells its sweep records expect."""
    from anobench.report import print_run_table

    for path in records:
        record = read_record(path)
        if record is None or record.get("schema") != SWEEP_SCHEMA:
            continue
        cells = [Cell.of(entry) for entry in record["cells"]]
        print_run_table(path.parent.parent, cells, console)


def results_roots(results_dir: Path, depth: int = 3) -> list[Path]:
    """`results_dir` if cells or sweep records lie directly in it, else the folders below it
    that hold some (as `anobench report` finds every record below its folder)."""

    def is_root(folder: Path) -> bool:
        return (folder / SWEEPS_DIR).is_dir() or next(_cell_folders(folder), None) is not None

    if is_root(results_dir) or depth == 0:
        return [results_dir]
    nested = [
        root
        for child in sorted(results_dir.iterdir())
        if child.is_dir() and not child.name.startswith(("_", "."))
        for root in results_roots(child, depth - 1)
        if is_root(root)
    ]
    return nested or [results_dir]
