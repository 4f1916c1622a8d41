"""The log file every `anobench run` leaves: <results_dir>/_logs/<time>_<host>_<pid>.log."""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from anobench.results import file_mode

LOGS_DIR = "_logs"
TRACE_LOGGER = "anobench.trace"  # records for the run log alone while one is open
log = logging.getLogger("anobench")


class _RunLogHandler(logging.FileHandler):
    """A file handler that goes quiet on a write error (disk full) rather than print tracebacks."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.setLevel(logging.CRITICAL + 1)


def _create(folder: Path, stem: str) -> Path:
    """A new, empty log file `<stem>.log` (`<stem>_2.log`, ... when taken)."""
    for attempt in itertools.count(1):
        path = folder / (f"{stem}.log" if attempt == 1 else f"{stem}_{attempt}.log")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode()))
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


@contextmanager
def run_log(results_dir: Path, args: list[str] | None = None) -> Iterator[Path | None]:
    """Copy the anobench log to a new file under results_dir/_logs while the block runs.

    The file starts with the command (`args`: the run's arguments, default sys.argv[1:]).
    Yields the file's path, or None when it cannot be created (the run goes on without it).
    """
    stem = f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{socket.gethostname()}_{os.getpid()}"
    folder = results_dir / LOGS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = _create(folder, stem)
        handler = _RunLogHandler(path, encoding="utf-8")
    except OSError as err:
        log.warning("no run log: cannot create a file in %s (%s)", folder, err.strerror)
        yield None
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    previous_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    trace = logging.getLogger(TRACE_LOGGER)
    trace.addHandler(handler)
    trace.propagate = False  # the terminal gets these from the cli, once
    try:
        arguments = shlex.join(sys.argv[1:] if args is None else args)
        handler.stream.write(f"# anobench run {arguments}\n")
        yield path
    finally:
        trace.propagate = True
        trace.removeHandler(handler)
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous_level)
