"""The one error type for a user's mistake."""

from __future__ import annotations


class AnobenchError(Exception):
    """A user-facing error: one sentence naming the file or value at fault and the fix."""


def require_positive(owner: str, **values: float | None) -> None:
    """Raise AnobenchError for the first value that is not > 0 (config validation)."""
    for key, value in values.items():
        if value is None or value <= 0:
            name = f"{owner}.{key}" if owner else key
            raise AnobenchError(f"{name}={value} must be positive.")
