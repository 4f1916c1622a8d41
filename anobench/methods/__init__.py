"""The method registry: explicit imports fill it; build methods by name."""

from __future__ import annotations

from anobench.methods import (
    anovit,  # noqa: F401
    haloae,  # noqa: F401
    knn,  # noqa: F401  (each import registers its method)
    saae,  # noqa: F401
    stmae,  # noqa: F401
)
from anobench.methods.base import (
    Method,
    MethodContext,
    Scores,
    create_method,
    list_methods,
    method_entry,
    register,
)

__all__ = [
    "Method",
    "MethodContext",
    "Scores",
    "create_method",
    "list_methods",
    "method_entry",
    "register",
]
