"""`anobench run`'s command line, checked before Hydra runs: any config mistake is one line.

The config is composed once here (with Hydra's own node, so launcher settings count too); every
composition error, unknown key, schema name, wrong type or out-of-range value becomes one
AnobenchError, so Hydra never prints its multi-line messages. The `*_schema` configs in the
ConfigStore type-check each group's YAML; they are never offered as choices.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anobench.errors import AnobenchError

SCHEMA_SUFFIX = "_schema"
# ConfigStore entries that only exist for a YAML to extend them; never a user's choice
HIDDEN_OPTIONS = ("joblib_plugin",)
# groups chosen for the user (method_scale follows scale, local is machine paths)
HIDDEN_GROUPS = ("method_scale", "local")
_DEBUG_ON = re.compile(r"\+{0,2}debug=(true|yes|on|1)", re.IGNORECASE)


def run_arguments(args: list[str]) -> argparse.Namespace:
    """Hydra's flags and overrides of `anobench run ARGS`; an unknown flag is one AnobenchError."""
    from hydra._internal.utils import get_args_parser

    ns, unknown = get_args_parser().parse_known_args(args)
    if unknown:
        raise AnobenchError(
            f"unknown argument {unknown[0]!r} for anobench run; give overrides as key=value "
            "and see `anobench run --help` for the flags."
        )
    return ns


def with_user_config_dir(args: list[str]) -> list[str]:
    """`args` with `--config-dir $ANOBENCH_CONFIG_DIR` first, unless they name a config folder."""
    from anobench.config import USER_CONFIG_ENV

    folder = os.environ.get(USER_CONFIG_ENV)
    given = any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in args)
    return args if not folder or given else ["--config-dir", folder, *args]


def debug_requested(args: list[str]) -> bool:
    """Whether the command line sets debug=true (known even when the config does not compose)."""
    return any(_DEBUG_ON.fullmatch(arg) for arg in args)


@contextmanager
def hydra_session(config_dir: str | None = None) -> Iterator[Any]:
    """Hydra's compose API over anobench's configs (plus --config-dir), yielding its loader.

    The search path is the one `anobench run` uses; any Hydra state of the caller is restored.
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from anobench.config import CONF_SEARCH_PATH

    search_path = create_config_search_path(CONF_SEARCH_PATH)
    if config_dir is not None:
        folder = Path(config_dir).resolve()
        if not folder.is_dir():
            raise AnobenchError(
                f"config folder {config_dir} (--config-dir or $ANOBENCH_CONFIG_DIR) is not a "
                "folder; give the folder holding your config groups (method/, dataset/, local/)."
            )
        search_path.prepend("command-line", f"file://{folder}", SearchPathQuery(provider="schema"))
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        Hydra.create_main_hydra2(task_name="anobench", config_search_path=search_path)
        yield GlobalHydra.instance().config_loader()
    finally:
        restore_gh_from_backup(backup)


def parse_overrides(overrides: list[str], loader: Any = None) -> list[Override]:
    """Hydra's parse of the overrides; bad syntax is one AnobenchError naming the argument."""
    parser = OverridesParser.create(config_loader=loader)
    for line in overrides:
        try:
            parser.parse_overrides([line])
        except OverrideParseException as err:
            first = str(err.message).splitlines()[0]
            raise AnobenchError(
                f"cannot parse the override {line!r} ({first}); write key=value, a list as "
                "key=[a,b], a sweep as key=a,b (with -m), and quote values with spaces."
            ) from err
    return parser.parse_overrides(overrides)


def check_run(ns: argparse.Namespace) -> None:
    """Compose and check the config of a single (not -m) `anobench run`."""
    overrides = list(ns.overrides or [])
    with hydra_session(ns.config_dir) as loader:
        parse_overrides(overrides)
        compose_checked(loader, overrides, ns.config_name or "config")


def run_help(ns: argparse.Namespace) -> str:
    """`anobench run --help` for these overrides (checked like a run)."""
    overrides = list(ns.overrides or [])
    with hydra_session(ns.config_dir) as loader:
        parse_overrides(overrides)
        cfg, _ = compose_checked(loader, overrides, ns.config_name or "config")
        return help_text(loader, cfg)


def compose_checked(
    loader: Any, overrides: list[str], config_name: str = "config"
) -> tuple[DictConfig, list[str]]:
    """Compose and check one job's config; (config with its hydra node, overrides to add).

    The added overrides are defaults that depend on the composed config: `hardware=gpu` when
    the SLURM launcher is chosen and the command line (or a config) picks no hardware.
    """
    from hydra import compose

    try:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise compose_error(err, loader, overrides) from err
    try:
        check_config(cfg, overrides, loader)
    except (HydraException, OmegaConfBaseException) as err:
        raise AnobenchError(f"invalid config: {_first_line(err)}") from err
    return cfg, slurm_defaults(cfg, overrides)


def check_config(cfg: DictConfig, overrides: list[str], loader: Any) -> None:
    """Everything about a composed config that Hydra accepts but anobench must not."""
    from anobench.config import (
        backbone_config,
        dataset_config,
        hardware_config,
        method_config,
        resolve_categories,
        resolve_seeds,
        validate_run_values,
    )
    from anobench.methods import method_entry

    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    assert isinstance(choices, dict)
    for group, choice in choices.items():
        if isinstance(choice, str) and not is_visible_option(choice):
            raise missing_option_error(str(group), choice, loader)
    _check_keys(cfg, method_entry(str(cfg.method.name)).config_cls, overrides)
    validate_run_values(cfg)
    method_config(cfg)
    backbone_config(cfg)
    hardware_config(cfg)
    dataset = dataset_config(cfg)
    resolve_categories(cfg.category, list(dataset.categories))
    resolve_seeds(cfg.seed)


def _check_keys(cfg: DictConfig, method_cls: type, overrides: list[str]) -> None:
    from anobench.config import RunConfig
    from anobench.validation import unknown_keys

    top = {k: v for k, v in cfg.items() if k != "hydra"}
    found = unknown_keys(top, RunConfig)  # descends into backbone, dataset, hardware
    found += [(f"method.{key}", valid) for key, valid in unknown_keys(cfg.method, method_cls)]
    if found:
        path, valid = found[0]
        raise unknown_key_error(path, _owner(path, str(cfg.method.name)), valid, overrides)


def _owner(path: str, method: str) -> str:
    """How a message names the config node holding `path`."""
    owner = path.rpartition(".")[0] or "anobench run"
    return f"method {method}" if owner == "method" else owner


def unknown_key_error(
    path: str, owner: str, valid: list[str], overrides: list[str]
) -> AnobenchError:
    """`path` is not a key of `owner`: one line with the override, a close match, the keys."""
    leaf = path.rsplit(".", 1)[-1]
    given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == path), None)
    where = given if given is not None else f"{path} (set in a config file)"
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return AnobenchError(
        f"{where}: {owner} has no key {leaf!r}; {hint}its keys: {', '.join(valid)}."
    )


def is_visible_option(name: str) -> bool:
    """Whether a group option is a real choice (not a schema or a plugin's base config)."""
    return not name.endswith(SCHEMA_SUFFIX) and name not in HIDDEN_OPTIONS


def group_options(loader: Any, group: str) -> list[str]:
    return [o for o in loader.get_group_options(group) if is_visible_option(o)]


def missing_option_error(group: str, name: str, loader: Any) -> AnobenchError:
    """`group=name` is not a config of the group: one line with a close match and the choices."""
    options = group_options(loader, group)
    close = difflib.get_close_matches(name.removesuffix(SCHEMA_SUFFIX), options, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    if not options:
        return AnobenchError(f"{group}={name}: there is no config group {group!r}.")
    return AnobenchError(
        f"{group}={name}: no such {group} config; {hint}choices: {', '.join(options)}."
    )


def compose_error(err: BaseException, loader: Any, overrides: list[str]) -> AnobenchError:
    """One line for a Hydra composition error (Hydra's own message spans many lines)."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = str(err.missing_cfg_file).rpartition("/")
        if group:
            return missing_option_error(group, name, loader)
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        match = re.match(r"Could not override '([^']+)'", str(err))
        if match:
            return unknown_key_error(match[1], *_owner_of(cause), overrides)
        merging = re.match(r"Error merging override (.+)", str(err))
        if merging:
            return AnobenchError(f"{merging[1]}: {_first_line(cause)}.")
    ambiguous = re.match(r"Ambiguous value for argument '(.+)'", str(err))
    if ambiguous:
        return AnobenchError(
            f"{ambiguous[1]} is a sweep: run it with -m (anobench run -m ...); for a list write "
            "key=[a,b], for text with commas quote it: key='a,b'."
        )
    return AnobenchError(_first_line(err))


def _owner_of(err: OmegaConfBaseException) -> tuple[str, list[str]]:
    """The config node an unknown key was looked up in, and its keys (from its dataclass)."""
    import dataclasses

    from anobench.config import RunConfig

    schema = err.object_type if dataclasses.is_dataclass(err.object_type) else RunConfig
    method = str(getattr(schema, "name", ""))
    return _owner(str(err.full_key), method), sorted(f.name for f in dataclasses.fields(schema))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__


def slurm_defaults(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """`hardware=gpu` when the SLURM launcher runs the jobs and nothing chose the hardware."""
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    chosen = str(OmegaConf.select(cfg, "hydra.runtime.choices.hardware", default=""))
    given = any(o.lstrip("+~").split("=", 1)[0] == "hardware" for o in overrides)
    if target.endswith("SlurmLauncher") and chosen == "auto" and not given:
        return ["hardware=gpu"]
    return []


def help_text(loader: Any, cfg: DictConfig) -> str:
    """`anobench run --help`: the groups with their real choices, and the composed config."""
    lines = [
        "anobench run [OVERRIDES] [FLAGS]: train and evaluate cells (method x class x seed).",
        "",
        "Config groups (group=option):",
    ]
    for group in _user_groups(loader):
        lines.append(f"  {group}: {', '.join(group_options(loader, group))}")
    lines += [
        "",
        "Flags: -m (one job per cell; with hydra/launcher=...), --cfg job (print the config),",
        "  --config-dir DIR (add your own config folder), --info defaults, --hydra-help.",
        "",
        "Config (override any key, e.g. method.lr=2e-4; `--cfg job` prints it with yours):",
        "",
        OmegaConf.to_yaml({k: v for k, v in cfg.items() if k != "hydra"}),
    ]
    return "\n".join(lines)


def _user_groups(loader: Any, parent: str = "") -> list[str]:
    groups = []
    for name in sorted(loader.list_groups(parent)):
        group = f"{parent}/{name}" if parent else name
        if group in HIDDEN_GROUPS or (group.startswith("hydra") and group != "hydra/launcher"):
            if group == "hydra":
                groups += _user_groups(loader, group)
            continue
        if group_options(loader, group):
            groups.append(group)
        groups += _user_groups(loader, group)
    return groups
