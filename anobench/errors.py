"""The one error type for a user's mistake."""

from __future__ import annotations

import errno


class AnobenchError(Exception):
    """A user-facing error: one sentence naming the file or value at fault and the fix."""


def require_positive(owner: str, **values: float | None) -> None:
    """Raise AnobenchError for the first value that is not > 0 (config validation)."""
    for key, value in values.items():
        if value is None or value <= 0:
            name = f"{owner}.{key}" if owner else key
            raise AnobenchError(f"{name}={value} must be positive.")


# The machine's storage, not anobench, is at fault: full, over quota, read-only or not allowed.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)


def is_storage_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in STORAGE_ERRNOS


def is_user_error(err: BaseException) -> bool:
    """A failure the user fixes (config, data, disk), reported with exit code 2."""
    return isinstance(err, AnobenchError) or is_storage_error(err)


def storage_error(err: OSError) -> AnobenchError:
    """One sentence for a full, read-only or forbidden file system."""
    where = f" {err.filename}" if err.filename else " a file"
    if err.errno in (errno.EACCES, errno.EPERM):
        return AnobenchError(
            f"no permission to access{where} ({err.strerror or err}); fix its permissions or "
            "choose another results_dir / cache_dir / --out."
        )
    return AnobenchError(
        f"cannot write{where} ({err.strerror or err}); free space or choose another "
        "results_dir / cache_dir / --out."
    )
