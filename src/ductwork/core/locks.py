"""Per-stage locks keyed by fingerprint: two runners never compute the same stage run at once.

Runners that share a store and a records database would otherwise both miss the stage cache
and compute the same fingerprint twice (twice the cost, and for an LLM stage twice the bill).
Before it hands a stage to the executor the runner takes the lock of the stage's fingerprint
without blocking. When another runner holds it, the stage waits (the rest of the DAG goes on)
and the runner tries again; once it has the lock it reads the stage cache again, so the stage
computed by the other runner is reused (``cached``). The lock is released after the stage's
result is recorded.

Both kinds of lock belong to the holding process and die with it, so a runner killed in the
middle of a stage never blocks the next one:

* :class:`FileStageLocks` (SQLite records): an ``fcntl`` lock on ``locks/<fp>.lock`` next to
  the database (by default ``<store>/locks/``); the kernel drops it when the process exits.
  Works between processes of one machine (and on shared filesystems whose ``flock`` is
  cluster-wide; NFS and most network filesystems: no).
* :class:`PgStageLocks` (PostgreSQL records): a session advisory lock on a dedicated
  connection; the server drops it when that connection ends (also when the process is killed:
  the server sees the socket close). Works between machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ductwork.errors import StoreError

# How often a waiting stage tries the lock again (seconds).
POLL_S = 0.2


class StageLocks(Protocol):
    """Non-blocking, re-entrant locks held by one runner; ``close`` releases them all."""

    def acquire(self, fingerprint: str) -> bool:
        """Take the lock; True when this runner holds it (also if it already did)."""
        ...

    def release(self, fingerprint: str) -> None:
        """Give the lock up (a no-op when it is not held)."""
        ...

    def close(self) -> None: ...


def advisory_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` from any string (sha256, first 8 bytes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class NoStageLocks:
    """For platforms without ``fcntl`` (Windows): stages are never waited for."""

    def acquire(self, fingerprint: str) -> bool:
        return True

    def release(self, fingerprint: str) -> None:
        return None

    def close(self) -> None:
        return None


class FileStageLocks:
    """``flock`` on one file per fingerprint under ``directory``; the file goes on release.

    Removing the file on release is safe because a taker checks, after it got the lock, that
    the file it locked is still the one at the path (same inode); if the holder removed it in
    between, it starts over on the new file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    def _path(self, fingerprint: str) -> Path:
        return self.directory / f"{fingerprint}.lock"

    def acquire(self, fingerprint: str) -> bool:
        import fcntl

        with self._mutex:
            if fingerprint in self._held:
                return True
            path = self._path(fingerprint)
            for _ in range(10):
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                except FileNotFoundError:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:
                    msg = f"cannot create the stage lock file {path}: {exc}"
                    raise StoreError(
                        msg, hint="Check that the store directory is writable."
                    ) from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return False
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:  # (the file stays empty: writing the pid costs ~3 ms on ext4)
                    self._held[fingerprint] = fd
                    return True
                os.close(fd)  # the holder removed the file after we opened it: try the new one
            return False

    def release(self, fingerprint: str) -> None:
        with self._mutex:
            fd = self._held.pop(fingerprint, None)
            if fd is None:
                return
            with contextlib.suppress(OSError):
                os.unlink(self._path(fingerprint))
            os.close(fd)  # closing the descriptor drops the flock

    def close(self) -> None:
        for fingerprint in list(self._held):
            self.release(fingerprint)


class PgStageLocks:
    """Session advisory locks on one dedicated PostgreSQL connection, opened on first use.

    ``connect`` returns a new autocommit psycopg connection. The connection is not shared with
    the records' queries, so a long transaction there never delays a lock and closing it
    releases exactly this runner's locks.
    """

    def __init__(self, connect: Callable[[], Any], where: str) -> None:
        self._connect = connect
        self._where = where
        self._conn: Any = None
        self._held: set[str] = set()
        self._mutex = threading.Lock()

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def acquire(self, fingerprint: str) -> bool:
        import psycopg
        from psycopg.rows import tuple_row

        with self._mutex:
            if fingerprint in self._held:
                return True
            key = advisory_key(f"ductwork:stage:{fingerprint}")
            for attempt in (1, 2):
                try:
                    cur = self._connection().cursor(row_factory=tuple_row)
                    row = cur.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()
                    break
                except psycopg.OperationalError as exc:
                    # The session ended, and with it every lock it held. Those stages may now
                    # be computed twice (harmless: artifacts are content-addressed); the run
                    # goes on with a new session.
                    self._held.clear()
                    self._drop()
                    if attempt == 2:
                        msg = f"cannot take a stage lock in {self._where}: {exc}"
                        raise StoreError(
                            msg, hint="Check the database server, then run again: it resumes."
                        ) from exc
            if row is None or not row[0]:
                return False
            self._held.add(fingerprint)
            return True

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()  # ends the session: the server drops its locks
            self._conn = None

    def release(self, fingerprint: str) -> None:
        import psycopg

        with self._mutex:
            if fingerprint not in self._held:
                return
            self._held.discard(fingerprint)
            if self._conn is None or self._conn.closed:
                return  # the session is gone, and its locks with it
            key = advisory_key(f"ductwork:stage:{fingerprint}")
            try:
                self._conn.execute("select pg_advisory_unlock(%s)", (key,))
            except psycopg.Error:
                self._drop()

    def close(self) -> None:
        with self._mutex:
            self._held.clear()
            self._drop()
