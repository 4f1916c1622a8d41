"""The method protocol, its outputs, the per-run context, and the flat registry."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor
from torch.utils.data import DataLoader

from anobench.backbones import BackboneConfig
from anobench.errors import AnobenchError
from anobench.hardware import Hardware


@dataclass
class Scores:
    """What a method returns for a batch of test images."""

    anomaly_maps: Tensor  # [B, H, W] float32 at input resolution
    image_scores: Tensor  # [B] float32, the paper's image-score rule


@dataclass(frozen=True)
class MethodContext:
    """Everything a method needs besides its own config: hardware, backbone, run bookkeeping."""

    hardware: Hardware
    backbone: BackboneConfig
    seed: int = 0
    category: str | None = None  # the class being trained (per-class paper settings)
    checkpoint_path: Path | None = None  # where training.py keeps its resumable state
    checkpoint_every: int = 10  # epochs between checkpoints
    progress: bool = True
    cache_dir: Path | None = None  # frozen-feature cache (memory-mapped tier)
    cache_features: bool = True  # False: run the frozen backbone every step (naive loop)


class Method(Protocol):
    """A method: fit on normal images, then score test images; keep and reload what it fitted.

    The kept model (anobench/kept_model.py) holds only what `fit` produced: `trained_state` (the
    trained networks' tensors, or a memory bank) and `scoring_state` (statistics scoring needs,
    as tensors or JSON numbers). A frozen backbone is never kept: `create_method` rebuilds it from
    the config, then `load_state` puts the kept state back.
    """

    def fit(self, train: DataLoader) -> None:
        """Train (or fit statistics) on train/good batches (`batch["image"]` in [0,1])."""

    def predict(self, images: Tensor) -> Scores:
        """Score a batch [B, 3, H, W] in [0,1] on the method's device."""

    def trained_state(self) -> dict[str, Tensor]:
        """What fit() trained: network weights and buffers (or a memory bank), by name."""

    def scoring_state(self) -> dict[str, Any]:
        """What predict() needs besides: statistics as tensors, sizes as JSON numbers."""

    def load_state(self, trained: dict[str, Tensor], scoring: dict[str, Any]) -> None:
        """Put a kept trained_state and scoring_state into a freshly created method."""


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type
    factory: Callable[[Any, MethodContext], Method]
    scoring_keys: tuple[str, ...] = ()  # config keys only predict() reads: `anobench rescore`


_REGISTRY: dict[str, MethodEntry] = {}


def register(
    name: str, config_cls: type, scoring_keys: tuple[str, ...] = ()
) -> Callable[[type], type]:
    """Class decorator: make a method buildable by name with its config dataclass.

    `scoring_keys`: the config keys that only change how a fitted method scores, so a kept
    model can be re-scored with another value without retraining (`anobench rescore`).
    """

    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodEntry(name, config_cls, cls, tuple(scoring_keys))
        return cls

    return decorate


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_entry(name: str) -> MethodEntry:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        raise AnobenchError(
            f"unknown method {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" Valid methods: {', '.join(list_methods())}."
        )
    return _REGISTRY[name]


def create_method(name: str, cfg: Any, context: MethodContext) -> Method:
    """Build a registered method from its config dataclass instance and the run context."""
    entry = method_entry(name)
    if not isinstance(cfg, entry.config_cls):
        raise TypeError(f"{name} expects {entry.config_cls.__name__}, got {type(cfg).__name__}")
    return entry.factory(cfg, context)
