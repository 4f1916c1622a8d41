"""anobench's SLURM launcher: hydra-submitit-launcher's, with a time limit per method.

A sweep over several methods becomes one job array per time limit (`timeout_min_per_method`,
in minutes; methods not listed get `timeout_min`), all submitted before any is waited for.
Hydra only instantiates launchers from the `hydra_plugins` package, hence this package. Hydra
imports every plugin module when it starts: the launcher (in `_slurm`, a name Hydra's scan
skips) is imported only when hydra-submitit-launcher (the `slurm` extra) is installed, so an
install without it starts without a warning.
"""

from importlib.util import find_spec

if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from hydra_plugins.anobench_launcher._slurm import SlurmConf, SlurmLauncher, time_limit_groups

    __all__ = ["SlurmConf", "SlurmLauncher", "time_limit_groups"]
