"""Multirun expansion, sweep records, launcher configs, GPU placement, status and resubmission."""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import re
import shlex
import stat
import threading
import time
from pathlib import Path

import pytest
import torch
from hydra import compose
from hydra._internal.utils import get_args_parser
from omegaconf import OmegaConf

from anobench import cli
from anobench.config import register_configs
from anobench.data.synthetic import SyntheticSpec, ensure_synthetic
from anobench.errors import AnobenchError
from anobench.hardware import claim_slot, create_hardware
from anobench.identity import config_variant
from anobench.methods import list_methods
from anobench.results import ERROR_FILE, METRICS_FILE, OVERRIDES_FILE, Cell, write_json_atomic
from anobench.sweeps import (
    SWEEPS_DIR,
    _hydra_compose,
    current_job_index,
    expand_multirun_args,
    register_launcher_configs,
    resubmit_commands,
    sweep_status,
)

CLASSES = ["weave", "washer"]
TINY = [
    "experiment=demo",
    "dataset.synthetic.image_size=32",
    "dataset.synthetic.n_train=6",
    "dataset.synthetic.n_test_good=3",
    "dataset.synthetic.n_test_defect=3",
    "method.image_size=32",
    "latency_repeats=0",
    "progress=false",
]
KNN = ("synthetic", "knn", "resnet18.tv_in1k")
# Python 3.12+ warns on fork() in a threaded process; the forked children only touch files
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def _records(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results_dir / SWEEPS_DIR).glob("*.json"))]


def _compose(*overrides: str) -> OmegaConf:
    register_configs()
    register_launcher_configs()
    with _hydra_compose():
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# ---- expansion ------------------------------------------------------------------------------


def test_category_all_expands_to_the_classes_of_the_composed_dataset(tmp_path: Path) -> None:
    synthetic = expand_multirun_args(["-m", "experiment=demo", "dry_run=true"])
    mvtec = expand_multirun_args(["-m", "category=all", "dry_run=true"])
    assert synthetic == [
        "-m",
        "experiment=demo",
        "dry_run=true",
        "category=weave,marble,washer,chip",
    ]
    assert mvtec[1] == (
        "category=carpet,grid,leather,tile,wood,bottle,cable,capsule,hazelnut,metal_nut,pill,"
        "screw,toothbrush,transistor,zipper"
    )


def test_lists_become_sweeps_and_the_expected_cells_are_recorded(tmp_path: Path) -> None:
    other = next(m for m in list_methods() if m != "knn")
    args = ["-m", f"method=knn,{other}", *TINY, "category=[weave,washer]", "seed=[0,1]"]
    args.append(f"results_dir={tmp_path}")
    expanded = expand_multirun_args(args)
    assert expanded == [*args[:-3], "category=weave,washer", "seed=0,1", args[-1]]
    (record,) = _records(tmp_path)
    backbone = {m: _compose("experiment=demo", f"method={m}").backbone.name for m in ("knn", other)}
    expected = {
        ("synthetic", m, backbone[m], c, s) for m in ("knn", other) for c in CLASSES for s in (0, 1)
    }
    cells = {
        tuple(c[k] for k in ("dataset", "method", "backbone", "category", "seed"))
        for c in record["cells"]
    }
    assert cells == expected and len(record["cells"]) == 8
    first = record["cells"][0]
    assert first["overrides"] == [
        "method=knn",
        *TINY,
        f"results_dir={tmp_path}",
        "category=weave",
        "seed=0",
    ]
    assert record["command"] == ["anobench", "run", *expanded] and record["flags"] == []


def test_single_cells_and_explicit_sweeps_stay_as_given(tmp_path: Path) -> None:
    for args in (
        ["-m", "category=weave", "seed=3", f"results_dir={tmp_path}"],
        ["-m", "category=weave,washer", "seed=0,1", "experiment=demo", f"results_dir={tmp_path}"],
    ):
        assert expand_multirun_args(args) == args
    (single, _sweep) = sorted(_records(tmp_path), key=lambda r: len(r["cells"]))
    assert [(c["category"], c["seed"]) for c in single["cells"]] == [("weave", 3)]


def test_new_overrides_go_before_hydra_flags(tmp_path: Path) -> None:
    args = ["-m", "experiment=demo", f"results_dir={tmp_path}", "--config-name", "config"]
    expanded = expand_multirun_args(args)
    parsed = get_args_parser().parse_args(expanded)
    assert parsed.overrides[-1] == "category=weave,marble,washer,chip"
    assert _records(tmp_path)[0]["flags"] == ["--config-name", "config"]


def test_category_all_across_datasets_and_print_flags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AnobenchError, match="one multirun per dataset"):
        expand_multirun_args(["-m", "dataset=mvtec,synthetic", f"results_dir={tmp_path}"])
    with pytest.raises(AnobenchError, match="drop -m"):
        expand_multirun_args(["-m", "hydra/launcher=slurm", "--cfg", "hydra"])
    assert not (tmp_path / SWEEPS_DIR).exists()


def test_composition_errors_in_a_sweep_are_one_line_and_record_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, expected in (
        (["-m", "method=nope", f"results_dir={tmp_path}"], "method=nope: no such method config"),
        (
            [
                "-m",
                "hydra/launcher=local",
                "hydra.launcher.no_such_key=1",
                f"results_dir={tmp_path}",
            ],
            "hydra.launcher.no_such_key=1: hydra.launcher has no key 'no_such_key'",
        ),
        (
            ["-m", "method=knn,saae", "category=../up", f"results_dir={tmp_path}"],
            "category='../up'",
        ),
    ):
        with pytest.raises(AnobenchError, match=re.escape(expected)):
            expand_multirun_args(args)
        assert cli.main(["run", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
    assert not (tmp_path / SWEEPS_DIR).exists()


# ---- launcher configs -----------------------------------------------------------------------


def test_slurm_launcher_composes_to_the_expected_sbatch_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["run", "hydra/launcher=slurm", "--cfg", "hydra"]) == 0
    printed = capsys.readouterr().out
    for line in ("gpus_per_node: 1", "timeout_min: 240", "max_num_timeout: 3", "partition: null"):
        assert f"    {line}\n" in printed
    launcher = _compose(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600"
    ).hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 600)
    assert launcher.signal_delay_s == 120 and launcher.array_parallelism == 64
    # the sbatch script submitit would submit, built as the launcher builds it (srun faked)
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    monkeypatch.setenv("PATH", f"{_fake_srun(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    skip = ("_target_", "submitit_folder", "timeout_min_per_method")  # anobench's own key
    params = {k: v for k, v in launcher.items() if k not in skip}
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=tmp_path / "submitit",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m job", "uid")
    for option in ("--partition=gpu", "--gpus-per-node=1", "--time=600", "--signal=USR2@120"):
        assert f"#SBATCH {option}\n" in sbatch
    assert "#SBATCH --cpus-per-task=8\n" in sbatch and "#SBATCH --mem=64GB\n" in sbatch
    assert executor._executor.max_num_timeout == 3


def _fake_srun(tmp_path: Path) -> Path:
    """A folder holding an executable `srun`, so that submitit believes it is on SLURM."""
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir(exist_ok=True)
    srun.write_text("#!/bin/sh\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return srun.parent


def test_slurm_sweeps_need_srun_and_record_one_job_per_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["-m", "method=knn", "hydra/launcher=slurm", *TINY, f"results_dir={tmp_path}"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(AnobenchError, match="no srun"):
        expand_multirun_args(args)
    assert not (tmp_path / SWEEPS_DIR).exists()
    monkeypatch.setenv("PATH", str(_fake_srun(tmp_path)))
    # the SLURM jobs run on a GPU unless the command line picks the hardware
    assert expand_multirun_args(args)[-2:] == ["category=weave,marble,washer,chip", "hardware=gpu"]
    (record,) = _records(tmp_path)
    assert [c["overrides"][-2:] for c in record["cells"]] == [
        [f"category={c}", "seed=0"] for c in ("weave", "marble", "washer", "chip")
    ]
    assert all(c["overrides"][:2] == args[1:3] for c in record["cells"])
    chosen = expand_multirun_args([*args, "hardware=cpu"])
    assert "hardware=cpu" in chosen and "hardware=gpu" not in chosen


def test_local_and_joblib_launchers_default_to_the_gpu_count() -> None:
    expected = torch.cuda.device_count()
    local = _compose("hydra/launcher=local").hydra.launcher
    joblib = _compose("hydra/launcher=joblib").hydra.launcher
    assert local.gpus_per_node == expected and local.timeout_min == 1440
    assert joblib.n_jobs == (expected or 2) and joblib.batch_size == "1"
    assert _compose("hydra/launcher=joblib", "hydra.launcher.n_jobs=3").hydra.launcher.n_jobs == 3


# ---- GPU placement --------------------------------------------------------------------------


def test_job_index_prefers_its_gpu_and_never_shares_a_held_one(tmp_path: Path) -> None:
    gpus = ["gpu-a", "gpu-b", "gpu-c"]
    first, held = claim_slot(gpus, 1 % 3, tmp_path)
    second, held_too = claim_slot(gpus, 4 % 3, tmp_path)  # job 4 also prefers gpu-b
    third, last = claim_slot(gpus, 2 % 3, tmp_path)
    assert (first, second, third) == (1, 2, 0)
    claimed: list[int] = []
    waiter = threading.Thread(
        target=lambda: claimed.append(claim_slot(gpus, 0, tmp_path, poll_seconds=0.05)[0])
    )
    waiter.start()
    time.sleep(0.3)
    assert claimed == []  # every GPU is held: the fourth job waits
    held_too.release()
    waiter.join(timeout=10)
    assert claimed == [2]
    del held, last


def _claim_and_exit(lock_dir: Path) -> None:
    claim_slot(["gpu-a"], 0, lock_dir)
    os._exit(0)  # a job killed or ended without releasing its Hardware


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_gpu_lock_ends_with_its_process(tmp_path: Path) -> None:
    job = multiprocessing.get_context("fork").Process(target=_claim_and_exit, args=(tmp_path,))
    job.start()
    job.join(timeout=60)
    assert job.exitcode == 0
    index, _lock = claim_slot(["gpu-a"], 0, tmp_path, poll_seconds=0.05)
    assert index == 0


def test_cpu_jobs_take_no_gpu_lock_and_job_index_is_zero_outside_a_multirun() -> None:
    hardware = create_hardware("cpu", job_index=3)
    assert hardware.device == torch.device("cpu") and hardware.gpu_lock is None
    assert current_job_index() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_multi_gpu_hardware_places_jobs_on_free_gpus() -> None:
    count = torch.cuda.device_count()
    first = create_hardware("cuda", job_index=count + 1)
    assert first.device == torch.device("cuda", 1 % count) and first.gpu_lock is not None
    claimed: list[torch.device] = []
    other = threading.Thread(
        target=lambda: claimed.append(create_hardware("cuda", job_index=1).device)
    )
    other.start()
    other.join(timeout=1.0)
    if count == 1:
        assert claimed == []  # the only GPU is held: the second job waits for it
        del first  # the first job ends, and its GPU lock with it
        other.join(timeout=10)
        assert claimed == [torch.device("cuda", 0)]
    else:
        assert len(claimed) == 1 and claimed[0] != first.device
    assert create_hardware("cuda:0", job_index=5).device == torch.device("cuda", 0)


# ---- status and resubmission ----------------------------------------------------------------


@functools.cache
def _variant() -> str:
    """The variant of TINY knn runs (method.image_size=32 is not the demo's size)."""
    return config_variant(_compose("method=knn", *TINY), None).variant.name


def _write_done(results_dir: Path, cell: Cell) -> None:
    record = {"schema": 1, "status": "done", **dataclasses.asdict(cell), "metrics": {"pro": 0.5}}
    write_json_atomic(cell.directory(results_dir) / METRICS_FILE, record)


def test_status_lists_done_failed_and_missing_cells(tmp_path: Path) -> None:
    args = ["-m", "method=knn", *TINY, "category=[weave,washer]", "seed=[0,1]"]
    expand_multirun_args([*args, f"results_dir={tmp_path}"])
    cells = [Cell(*KNN, c, s, _variant()) for c in CLASSES for s in (0, 1)]
    _write_done(tmp_path, cells[0])
    _write_done(tmp_path, cells[2])
    write_json_atomic(cells[1].directory(tmp_path) / ERROR_FILE, {"error": "CUDA out of memory"})
    cells[3].directory(tmp_path).mkdir(parents=True)
    (cells[3].directory(tmp_path) / "checkpoint.pt").write_bytes(b"")
    stray = Cell("synthetic", "knn", "other_backbone", "chip", 0)
    stray.directory(tmp_path).mkdir(parents=True)
    states = {s.cell: s for s in sweep_status(tmp_path)}
    assert [states[c].state for c in cells] == ["done", "failed", "done", "missing"]
    assert states[cells[1]].detail == "CUDA out of memory"
    assert "checkpoint.pt written" in states[cells[3]].detail
    assert states[stray].state == "missing" and states[stray].job is None
    assert len(states) == 5


def test_resubmit_commands_run_exactly_the_failed_and_missing_cells(tmp_path: Path) -> None:
    other = next(m for m in list_methods() if m != "knn")
    results = tmp_path / "results"
    args = ["-m", f"method=knn,{other}", *TINY, "category=[weave,washer]", "seed=[0,1]"]
    expand_multirun_args([*args, f"results_dir={results}"])
    expected = {Cell.of(c) for c in _records(results)[0]["cells"]}
    knn = [Cell(*KNN, c, s, _variant()) for c in CLASSES for s in (0, 1)]
    not_done = {knn[1], knn[3], next(c for c in expected if c.method == other and c.seed == 0)}
    for cell in expected - not_done:
        _write_done(results, cell)
    write_json_atomic(knn[3].directory(results) / ERROR_FILE, {"error": "boom"})
    commands = resubmit_commands(sweep_status(results), cwd=Path.cwd())
    assert len(commands) == 2  # one per method
    assert commands[0].endswith(f"results_dir={results} category=weave,washer seed=1")
    for path in (results / SWEEPS_DIR).glob("*.json"):
        path.unlink()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["anobench", "run", "-m"]
        expand_multirun_args(argv[3:])
    resubmitted = {Cell.of(c) for record in _records(results) for c in record["cells"]}
    assert resubmitted == not_done


def test_status_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", str(tmp_path / "nowhere")]) == 2
    expand_multirun_args(["-m", *TINY, "category=weave", f"results_dir={tmp_path}"])
    assert cli.main(["status", str(tmp_path)]) == 1
    assert "anobench run -m" in capsys.readouterr().out
    _write_done(tmp_path, Cell(*KNN, "weave", 0, _variant()))
    assert cli.main(["status", str(tmp_path)]) == 0


def test_status_finds_the_results_folders_below_the_one_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `anobench status` and `anobench report` default to results/, the demo writes results/demo
    _write_done(tmp_path / "demo", Cell(*KNN, "weave", 0))
    _write_done(tmp_path / "other" / "sweep", Cell(*KNN, "washer", 1))
    assert cli.main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("Cells under") == 2 and out.count("all 1 cells are done") == 2
    assert "no cells" not in out
    assert cli.main(["status", str(tmp_path / "other")]) == 0
    assert capsys.readouterr().out.count("all 1 cells are done") == 1


# ---- real multiruns -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data of TINY, generated once so that the jobs only read it."""
    cache = tmp_path_factory.mktemp("cache")
    spec = SyntheticSpec(image_size=32, n_train=6, n_test_good=3, n_test_defect=3)
    ensure_synthetic(cache / "synthetic", spec)
    return cache


def _expected_files(seeds: list[int]) -> set[str]:
    cells = [Cell(*KNN, c, s, _variant()) for c in CLASSES for s in seeds]
    model_folder = cells[0].directory(Path()).parents[2]
    return {
        str(cell.directory(Path()) / name)
        for cell in cells
        for name in (
            METRICS_FILE,
            "maps.npz",
            "per_image.npz",
            OVERRIDES_FILE,
            "model.safetensors",
            "model.json",
        )
    } | {str(model_folder / OVERRIDES_FILE)}


def _result_files(results_dir: Path) -> set[str]:
    return {
        str(p.relative_to(results_dir))
        for p in results_dir.rglob("*")
        if p.is_file() and not p.relative_to(results_dir).parts[0].startswith("_")
    }


# submitit's local executor starts every job as a fresh interpreter at once: two jobs keep it short
@pytest.mark.parametrize(
    ("launcher", "seeds"), [("joblib", [0, 1]), ("local", [0])], ids=["joblib", "local"]
)
def test_multirun_writes_exactly_one_cell_per_job(
    launcher: str, seeds: list[int], tmp_path: Path, tiny_cache: Path
) -> None:
    results = tmp_path / "results"
    code = cli.main(
        [
            "run",
            "-m",
            f"hydra/launcher={launcher}",
            *TINY,
            "category=[weave,washer]",
            f"seed=[{','.join(map(str, seeds))}]",
            f"results_dir={results}",
            f"cache_dir={tiny_cache}",
        ]
    )
    assert code == 0
    assert _result_files(results) == _expected_files(seeds)
    for cell in (Cell(*KNN, c, s, _variant()) for c in CLASSES for s in seeds):
        record = json.loads((cell.directory(results) / METRICS_FILE).read_text())
        assert (record["category"], record["seed"]) == (cell.category, cell.seed)
        assert record["config"]["category"] == cell.category  # one class per job
    states = sweep_status(results)
    assert len(states) == 2 * len(seeds) and {s.state for s in states} == {"done"}
    if launcher == "local":
        assert len(list(results.glob("_hydra/multirun/*/.submitit/*/*_log.out"))) == 2
