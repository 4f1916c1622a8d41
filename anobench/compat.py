"""`compat=authors`: check that a composed run computes what the authors' code computes.

The compat group (conf/compat/<mode>.yaml) sets the top-level `compat` key and the hardware
values; conf/method_compat/<method>_authors.yaml sets the method's authors'-code flags. A
command-line override can still undo one of them; then the run is not the authors' code and
`compat: authors` in its record would mislead, so it is refused before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anobench.errors import AnobenchError

COMPAT_MODES = ("none", "authors")


def compat_files(method: str, conf_dir: Path) -> list[Path]:
    """The YAML files compat=authors merges for `method` (the hardware one, then the method's)."""
    return [
        conf_dir / "compat" / "authors.yaml",
        conf_dir / "method_compat" / f"{method}_authors.yaml",
    ]


def compat_settings(method: str, conf_dir: Path) -> dict[str, Any]:
    """Dotted key -> value of every setting compat=authors makes for `method` (besides `compat`)."""
    settings: dict[str, Any] = {}
    for path in compat_files(method, conf_dir):
        settings |= _flatten(OmegaConf.to_container(OmegaConf.load(path)))  # type: ignore[arg-type]
    settings.pop("compat", None)
    return settings


def validate_compat(cfg: DictConfig, conf_dir: Path) -> None:
    """Refuse compat=authors for a method without authors' code or with one of its values undone."""
    mode = cfg.get("compat", "none")
    if mode not in COMPAT_MODES:
        raise AnobenchError(
            f"compat={mode!r} is not valid; choose it with compat=none or compat=authors."
        )
    if mode == "none":
        return
    method = cfg.method.name
    if not compat_files(method, conf_dir)[1].is_file():
        raise AnobenchError(
            f"compat=authors reproduces the authors' code of a paper method, and method={method} "
            "has none; drop compat=authors."
        )
    for key, expected in compat_settings(method, conf_dir).items():
        actual = OmegaConf.select(cfg, key)
        if actual != expected:
            raise AnobenchError(
                f"compat=authors sets {key}={_show(expected)} (the authors' code) but this run has "
                f"{key}={_show(actual)}; drop that override, or drop compat=authors."
            )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: Any) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )
