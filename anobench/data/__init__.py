"""Datasets: the MVTec AD reader and the synthetic generator."""

from __future__ import annotations

from anobench.data.mvtec import (
    MVTEC_CATEGORIES,
    OBJECTS,
    TEXTURES,
    AnomalyDataset,
    Sample,
    index_split,
    list_categories,
)
from anobench.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    SyntheticSpec,
    ensure_synthetic,
    generate,
)

__all__ = [
    "MVTEC_CATEGORIES",
    "OBJECTS",
    "SYNTHETIC_CATEGORIES",
    "TEXTURES",
    "AnomalyDataset",
    "Sample",
    "SyntheticSpec",
    "ensure_synthetic",
    "generate",
    "index_split",
    "list_categories",
]
