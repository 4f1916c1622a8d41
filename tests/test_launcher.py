"""The SLURM launcher: one job array per method time limit, jobs keeping their sweep numbers."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import submitit
from hydra import compose
from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from anobench import cli
from anobench.config import register_configs
from anobench.overrides import hydra_session
from anobench.sweeps import register_launcher_configs
from hydra_plugins.anobench_launcher import SlurmLauncher, time_limit_groups

# the paper table of conf/hydra/launcher/slurm.yaml
PAPER_MINUTES = {"knn": 30, "saae": 150, "anovit": 90, "stmae": 90, "haloae": 660}


def _slurm_config(tmp_path: Path, *overrides: str) -> tuple[DictConfig, Any]:
    register_configs()
    register_launcher_configs()
    with hydra_session() as loader:
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", f"results_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )
    return cfg, loader


def _params(cfg: DictConfig) -> dict[str, Any]:
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(params, dict)
    params.pop("_target_")
    return params


def test_time_limits_come_from_the_method_table() -> None:
    methods = ["knn", "haloae", "saae", "haloae", "mine"]
    assert time_limit_groups(methods, PAPER_MINUTES, 240) == {
        30: [0],
        660: [1, 3],
        150: [2],
        240: [4],  # a method outside the table gets timeout_min
    }


def test_the_table_composes_and_each_entry_is_overridable(tmp_path: Path) -> None:
    cfg, _ = _slurm_config(tmp_path, "hydra.launcher.timeout_min_per_method.haloae=900")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.anobench_launcher._slurm.SlurmLauncher"
    assert dict(launcher.timeout_min_per_method) == {**PAPER_MINUTES, "haloae": 900}
    assert launcher.timeout_min == 240


def _fake_srun(tmp_path: Path) -> Path:
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir(parents=True, exist_ok=True)
    srun.write_text("#!/bin/sh\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return srun.parent


def test_each_array_is_submitted_with_its_methods_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = _slurm_config(tmp_path, "hydra.launcher.partition=gpu")
    monkeypatch.setenv("PATH", f"{_fake_srun(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    launcher = SlurmLauncher(**_params(cfg))
    for minutes in (150, 660):
        # the sbatch script submitit would submit for that array
        executor = launcher._executor(minutes)
        sbatch = executor._executor._make_submission_file_text("python -m job", "uid")
        for option in (f"--time={minutes}", "--partition=gpu", "--gpus-per-node=1"):
            assert f"#SBATCH {option}\n" in sbatch
        assert executor._executor.max_num_timeout == 3


class _InProcess(SlurmLauncher):
    """The launcher with submitit's debug executor (jobs run here, when their results are
    asked for) in place of SLURM; it records each array's time limit and jobs."""

    arrays: list[tuple[int, int]]

    def _executor(self, minutes: int) -> Any:
        executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="debug")
        executor.update_parameters(timeout_min=minutes)
        self.arrays.append((minutes, len(self.arrays)))
        return executor


def test_a_sweep_of_methods_runs_one_array_per_time_limit(tmp_path: Path) -> None:
    cfg, loader = _slurm_config(tmp_path, f"hydra.launcher.submitit_folder={tmp_path / 'sub'}")
    launcher = _InProcess(**_params(cfg))
    launcher.arrays = []
    ran: list[tuple[str, str, int]] = []

    def task(job: DictConfig) -> str:
        ran.append((str(job.method.name), str(job.category), int(HydraConfig.get().job.num)))
        return str(job.method.name)

    launcher.setup(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks()),
        task_function=task,
        config=cfg,
    )
    jobs = [
        ["method=knn", "category=weave"],
        ["method=haloae", "category=weave"],
        ["method=knn", "category=chip"],
        ["method=stmae", "category=weave"],
        ["method=haloae", "category=chip"],
    ]
    results = launcher.launch(jobs, initial_job_idx=10)
    assert [r.return_value for r in results] == ["knn", "haloae", "knn", "stmae", "haloae"]
    # three arrays, all submitted before the first job ran (the debug executor runs on results)
    assert [minutes for minutes, _ in launcher.arrays] == [30, 660, 90]
    assert sorted(ran, key=lambda job: job[2]) == [
        ("knn", "weave", 10),
        ("haloae", "weave", 11),
        ("knn", "chip", 12),
        ("stmae", "weave", 13),
        ("haloae", "chip", 14),
    ]


def test_slurm_help_and_choices_hide_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "hydra/launcher=slurm_schema"]) == 2
    assert "no such hydra/launcher config" in capsys.readouterr().err
