"""Per-cell locks that work on NFS: two runs never compute the same cell at once.

A lock is the file `<cell>/.lock`, created with O_CREAT|O_EXCL (atomic on NFS v3+ and local
disks) and holding its owner's pid, host, start time and a random token. While the owner works, a
thread refreshes the file's mtime every `heartbeat` seconds. A lock is stale, and may be taken
over, when its owner's pid is dead on this host, or when its mtime has not moved for `stale`
seconds (an owner on another host that was killed or lost its node), or when it was taken by
this very SLURM job before it was requeued (same SLURM_JOB_ID, lower SLURM_RESTART_COUNT: that
run has ended). Another
run meeting a live lock skips the cell (the owner finishes it); one meeting a lock from another
host whose heartbeat is late waits until the heartbeat either moves (skip) or goes stale (take
over).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from anobench.results import file_mode

log = logging.getLogger("anobench")

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats; NFS attribute caches hide mtimes for up to 60 s


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: str
    token: str
    job: str | None = None  # SLURM_JOB_ID: a requeued job keeps it ...
    restart: int = 0  # ... and counts up SLURM_RESTART_COUNT

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started}"


class CellBusyError(Exception):
    """The cell is locked by a live run; the message names its owner."""

    def __init__(self, path: Path, owner: LockOwner | None) -> None:
        who = owner.describe() if owner else "a run that is still writing its lock"
        super().__init__(f"locked by {who} ({path})")
        self.owner = owner


def _read(path: Path) -> tuple[LockOwner | None, float] | None:
    """(owner or None if unreadable, mtime) of a lock file; None when there is no lock."""
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_text())
        job = data.get("job")
        owner = LockOwner(
            int(data["pid"]),
            str(data["host"]),
            str(data["started"]),
            str(data["token"]),
            None if job is None else str(job),
            int(data.get("restart", 0)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return None, path.stat().st_mtime  # being written, or damaged: judged by its age
        except FileNotFoundError:
            return None
    return owner, mtime


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def lock_state(path: Path, now: float | None = None, stale: float = STALE_SECONDS) -> str:
    """`free`, `held` (a live owner) or `stale` for the lock file at `path`."""
    found = _read(path)
    if found is None:
        return "free"
    owner, mtime = found
    age = (time.time() if now is None else now) - mtime
    if age > stale:
        return "stale"
    if owner is not None and owner.host == socket.gethostname() and not _pid_alive(owner.pid):
        return "stale"
    return "held"


def live_owner(cell_dir: Path, stale: float = STALE_SECONDS) -> LockOwner | None:
    """The owner of a cell's live lock, or None (no lock, or a stale one)."""
    path = cell_dir / LOCK_FILE
    if lock_state(path, stale=stale) != "held":
        return None
    found = _read(path)
    return None if found is None else found[0]


class CellLock:
    """`with CellLock(cell_dir):` holds the cell's lock, refreshed by a heartbeat thread.

    Entering raises CellBusyError when a live run holds the lock (after waiting for a late
    heartbeat from another host to decide, at most `stale` seconds).
    """

    def __init__(
        self,
        cell_dir: Path,
        heartbeat: float = HEARTBEAT_SECONDS,
        stale: float = STALE_SECONDS,
    ) -> None:
        self.path = cell_dir / LOCK_FILE
        self.heartbeat = heartbeat
        self.stale = stale
        self.owner = LockOwner(
            os.getpid(),
            socket.gethostname(),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
            secrets.token_hex(8),
            os.environ.get("SLURM_JOB_ID"),
            int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CellLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(vars(self.owner), handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        return True

    def _take_over(self, found: tuple[LockOwner | None, float]) -> None:
        """Remove a stale lock, unless it changed since it was judged stale."""
        again = _read(self.path)
        if again is None or again != found:
            return
        holder = found[0].describe() if found[0] else "an unreadable lock"
        log.warning("taking over the stale lock of %s (%s)", holder, self.path)
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{self.owner.token}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, aside)
            aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first_seen: tuple[LockOwner | None, float] | None = None
        deadline = time.monotonic() + self.stale + self.heartbeat
        while True:
            if self._create():
                break
            found = _read(self.path)
            if found is None:
                continue  # released in between: try again
            owner, mtime = found
            requeued = (
                owner is not None
                and owner.job is not None
                and owner.job == self.owner.job
                and owner.restart < self.owner.restart
            )
            if requeued or lock_state(self.path, stale=self.stale) == "stale":
                self._take_over(found)
                continue
            local = owner is not None and owner.host == self.owner.host
            fresh = time.time() - mtime <= 2 * self.heartbeat
            moved = first_seen is not None and found != first_seen
            if local or fresh or moved or time.monotonic() > deadline:
                raise CellBusyError(self.path, owner)
            first_seen = first_seen or found
            log.info(
                "waiting for the late heartbeat of %s", owner.describe() if owner else "a lock"
            )
            time.sleep(min(self.heartbeat / 2, 10.0))
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="anobench-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError as err:
                log.warning("cannot refresh the lock %s (%s)", self.path, err)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        found = _read(self.path)
        if found is not None and found[0] == self.owner:
            self.path.unlink(missing_ok=True)
