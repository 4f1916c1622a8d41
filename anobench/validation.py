"""Checks no schema type can make: folder-safe names, seeds, hyperparameter ranges, unknown keys."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from anobench.errors import AnobenchError

SEED_MAX = 2**32 - 1  # NumPy's legacy seeding takes 32-bit seeds


@dataclass(frozen=True)
class Range:
    """An interval of valid values; `low`/`high` None = unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not valid
    high_open: bool = False
    note: str = ""  # what an edge value means, e.g. "0 = no blur"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (
            self.high is not None and (value > self.high or (self.high_open and value == self.high))
        )

    def describe(self) -> str:
        low = "" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        if self.high is None:
            text = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        elif self.low is None:
            text = f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"
        else:
            text = f"in {low}, {high}"
        return f"{text} ({self.note})" if self.note else text


COUNT = Range(1)  # sizes, widths, epochs, heads: whole numbers from 1
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION_OPEN = Range(0, 1, low_open=True, high_open=True)

# Valid values of every numeric scalar hyperparameter of the registered methods, by field name
# (tests/test_validation.py checks that each such field of each method is listed here).
METHOD_RANGES: dict[str, Range] = {
    "image_size": COUNT,
    "epochs": COUNT,
    "batch_size": COUNT,
    "samples_per_epoch": COUNT,
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "beta1": Range(0, 1, high_open=True),
    "beta2": Range(0, 1, high_open=True),
    "patience": COUNT,
    "val_fraction": FRACTION_OPEN,
    "blur_sigma": Range(0, note="0 = no blur; HaloAE: OpenCV's rule for blur_size"),
    "blur_size": COUNT,
    "blur_kernel": COUNT,
    "pool": COUNT,
    "bank_size": COUNT,
    "pca_variance": Range(0, 1, low_open=True),
    "pca_images": COUNT,
    "heads": COUNT,
    "head_dim": COUNT,
    "mlp_ratio": POSITIVE,
    "block_size": COUNT,
    "halo_size": COUNT,
    "dim_head": COUNT,
    "stem_channels": COUNT,
    "color_jitter": Range(0, note="0 = no jitter"),
    "patch_jitter": Range(0, note="0 = no jitter"),
    "aspect_ratio": Range(0, 1, low_open=True),
    "scar_rotation": Range(0, 180, note="degrees either way"),
    "feature_size": COUNT,
    "patch_size": COUNT,
    "embed_dim": COUNT,
    "depth": COUNT,
    "num_heads": COUNT,
    "decoder_dim": COUNT,
    "decoder_depth": COUNT,
    "decoder_heads": COUNT,
    "cos_weight": NON_NEGATIVE,
    "test_splits": COUNT,
}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, Range], owner: str) -> None:
    """Raise AnobenchError for the first numeric value outside its range."""
    for key, value in values.items():
        valid = ranges.get(key)
        if valid is not None and is_number(value) and not valid.contains(value):
            raise AnobenchError(
                f"{owner}.{key}={value} is out of range; use a value {valid.describe()}."
            )


def numeric_fields(schema: type) -> list[str]:
    """Names of the int/float fields of a config dataclass (the ones a range must cover)."""
    hints = typing.get_type_hints(schema)
    return [f.name for f in dataclasses.fields(schema) if hints[f.name] in (int, float)]


def check_seed(seed: Any) -> int:
    """A seed as an int in [0, 2**32 - 1], or AnobenchError naming the value and the range."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AnobenchError(
            f"seed={seed!r} is not an integer; use whole numbers in [0, {SEED_MAX}], "
            "one (seed=0) or a list (seed=[0,1,2])."
        )
    if not 0 <= seed <= SEED_MAX:
        raise AnobenchError(f"seed={seed} is out of range; use whole numbers in [0, {SEED_MAX}].")
    return seed


def check_folder_name(key: str, value: Any) -> str:
    """A name used as one folder of the results tree: no separators, no `.`/`..`, not empty."""
    text = str(value)
    if (
        not text.strip()
        or text in (".", "..")
        or any(sep in text for sep in ("/", "\\", "\0"))
        or text != text.strip()
    ):
        raise AnobenchError(
            f"{key}={text!r} is not a plain folder name (it becomes a folder of the results "
            "tree); use a name without '/', '\\', surrounding spaces, or '.'/'..' alone."
        )
    return text


def check_path_value(key: str, value: Any) -> str:
    """A folder setting that must not be empty (an empty path would mean the current folder)."""
    if value is None or not str(value).strip():
        raise AnobenchError(f"{key} is empty; give a folder, e.g. {key}=results.")
    return str(value)


def unknown_keys(node: Mapping[str, Any], schema: type) -> list[tuple[str, list[str]]]:
    """(dotted key, valid keys there) for every key of `node` that `schema` does not declare.

    Descends into fields whose type is itself a dataclass; dict-typed fields are free-form.
    """
    hints = typing.get_type_hints(schema)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(schema)}
    found: list[tuple[str, list[str]]] = []
    for key, value in node.items():
        key = str(key)
        if key not in fields:
            found.append((key, sorted(fields)))
            continue
        inner = _dataclass_of(fields[key])
        if inner is not None and isinstance(value, Mapping):
            found += [(f"{key}.{sub}", valid) for sub, valid in unknown_keys(value, inner)]
    return found


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass in a field's type (`X` or `X | None`), else None."""
    candidates = typing.get_args(hint) or (hint,)
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            return candidate
    return None
