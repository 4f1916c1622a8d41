"""hydra-submitit-launcher's SLURM launcher with a time limit per method (see __init__.py).

No `from __future__ import annotations`: Hydra runs plugin modules before they are in
sys.modules, where dataclasses cannot resolve string annotations.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
_CELL_KEYS = ("category", "seed")  # jobs differing only in these share a method


@dataclass
class SlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.anobench_launcher._slurm.SlurmLauncher"
    timeout_min_per_method: dict[str, int] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher", name="slurm_schema", node=SlurmConf, provider="anobench"
)


def time_limit_groups(
    methods: list[str], minutes: dict[str, int], default: int
) -> dict[int, list[int]]:
    """Job indices by time limit: each job's method's minutes, else `default`."""
    groups: dict[int, list[int]] = {}
    for index, method in enumerate(methods):
        groups.setdefault(int(minutes.get(method, default)), []).append(index)
    return groups


class SlurmLauncher(SubmititSlurmLauncher):
    """One SLURM job array per time limit; jobs keep their sweep numbers."""

    def __init__(self, timeout_min_per_method: Any = None, **params: Any) -> None:
        super().__init__(**params)
        if OmegaConf.is_config(timeout_min_per_method):
            timeout_min_per_method = OmegaConf.to_container(timeout_min_per_method, resolve=True)
        self.minutes = {str(k): int(v) for k, v in dict(timeout_min_per_method or {}).items()}

    def job_methods(self, job_overrides: list[list[str]]) -> list[str]:
        """The method each job runs, from its composed config (once per setting, not per cell)."""
        assert self.hydra_context is not None and self.config is not None
        found: dict[tuple[str, ...], str] = {}
        methods = []
        for overrides in job_overrides:
            key = tuple(o for o in overrides if o.split("=", 1)[0] not in _CELL_KEYS)
            if key not in found:
                config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                found[key] = str(config.method.name)
            methods.append(found[key])
        return methods

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        assert self.config is not None
        job_overrides = [list(o) for o in job_overrides]
        default = int(self.params["timeout_min"])
        groups = time_limit_groups(self.job_methods(job_overrides), self.minutes, default)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        jobs: dict[int, Any] = {}
        for minutes, indices in groups.items():
            executor = self._executor(minutes)
            log.info(f"{len(indices)} job(s), time limit {minutes} min:")
            job_params = []
            for index in indices:
                number = initial_job_idx + index
                log.info(f"\t#{number} : {' '.join(filter_overrides(job_overrides[index]))}")
                job_params.append(
                    (
                        job_overrides[index],
                        "hydra.sweep.dir",
                        number,
                        f"job_id_for_{number}",
                        Singleton.get_state(),
                    )
                )
            submitted = executor.map_array(self, *zip(*job_params, strict=True))
            jobs.update(zip(indices, submitted, strict=True))
        return [jobs[index].results()[0] for index in range(len(job_overrides))]

    def _executor(self, minutes: int) -> Any:
        """An executor with the launcher's parameters and this time limit (as the plugin's)."""
        import submitit

        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        init_params.update(
            {f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in specific_init_keys}
        )
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        skip = specific_init_keys | {"submitit_folder"}
        params = {
            k if k in base else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items()
            if k not in skip
        }
        params["timeout_min"] = minutes
        executor.update_parameters(**params)
        return executor
