"""The one progress bar: tqdm in a terminal, a log line every few percent anywhere else.

tqdm redraws its line with carriage returns, which a SLURM log, a CI log or `> file` keeps as
junk. When stderr is not a terminal, `progress` returns LineProgress instead: the same calls
(iteration, update, set_postfix, close), one `desc: n/total unit (p%)` log line per STEP, at
most one per MIN_INTERVAL seconds, so a bar that finishes within seconds prints nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

log = logging.getLogger("anobench")

STEP = 0.1  # a line every 10 %
MIN_INTERVAL = 5.0  # seconds between two lines of one bar


class LineProgress:
    """A progress counter that logs one line each time it passes another STEP of its total."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        desc: str,
        total: int | None,
        unit: str,
        initial: int = 0,
        step: float = STEP,
        min_interval: float | None = None,  # None: MIN_INTERVAL
    ) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.n = initial
        self.step = step
        self.min_interval = MIN_INTERVAL if min_interval is None else min_interval
        self.postfix = ""
        self._next = self._mark_after(initial)
        self._logged_at = initial
        self._last_time = time.monotonic()
        self._lines = 0

    def _mark_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        done = n / self.total
        return (int(done / self.step + 1e-9) + 1) * self.step

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            return
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total or self.n / self.total < self._next - 1e-9:
            return
        self._next = self._mark_after(self.n)
        last = self.n >= self.total
        if time.monotonic() - self._last_time >= self.min_interval or (last and self._lines):
            self._log()

    def _log(self) -> None:
        if self.n == self._logged_at and self.n != 0:
            return
        self._logged_at = self.n
        self._last_time = time.monotonic()
        self._lines += 1
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        log.info(
            "%s: %d/%s %s%s%s", self.desc, self.n, self.total or "?", self.unit, percent, extra
        )

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Log the final count of a bar without a total that ran for a while."""
        if not self.total and self.n and time.monotonic() - self._last_time >= self.min_interval:
            self._log()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    enabled: bool = True,
    total: int | None = None,
    unit: str = "it",
    initial: int = 0,
    stream: TextIO | None = None,
) -> tqdm | LineProgress:
    """A progress bar over `iterable` (or for manual `update`s up to `total`)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    stream = sys.stderr if stream is None else stream
    if not enabled or stream.isatty():
        return tqdm(
            iterable,
            desc=desc,
            total=total,
            initial=initial,
            unit=unit,
            disable=not enabled,
            leave=False,
            dynamic_ncols=True,
            file=stream,
        )
    return LineProgress(iterable, desc, total, unit, initial)
