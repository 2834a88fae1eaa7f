"""Blocking sqlite work off the event loop.

`SqliteThread` owns one connection on one dedicated thread: every call is serialised there, so
the event loop never waits on disk. Whatever sqlite or the file system refuses comes out as a
`LedgerError` naming the file and the problem in a few words ("disk is full"). `TaskSet` runs
writes as tasks a cancelled caller cannot cut short.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nexus_grpc.errors import LedgerError

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000

# sqlite's primary result codes, in words (the extended code's low byte is the primary one)
_SQLITE_PROBLEMS = {
    sqlite3.SQLITE_FULL: "disk is full",
    sqlite3.SQLITE_READONLY: "the file is read-only",
    sqlite3.SQLITE_NOTADB: "not a sqlite database (a corrupt file, or another kind of file)",
    sqlite3.SQLITE_CORRUPT: "the database file is corrupt",
    sqlite3.SQLITE_CANTOPEN: "cannot open the file",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_AUTH: "permission denied",
    sqlite3.SQLITE_BUSY: "the file stayed locked by another process",
    sqlite3.SQLITE_LOCKED: "the file stayed locked",
    sqlite3.SQLITE_NOMEM: "out of memory",
}
_OS_PROBLEMS = {
    errno.ENOSPC: "disk is full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "the path is a directory",
    errno.ENOTDIR: "a parent of the path is not a directory",
    errno.EEXIST: "a parent of the path is not a directory",  # mkdir of the parent met a file
}


def describe(exc: BaseException) -> str:
    """A few words on why sqlite or the file system refused (never a traceback)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_PROBLEMS:
            return _SQLITE_PROBLEMS[code & 0xFF]
    elif isinstance(exc, OSError) and exc.errno in _OS_PROBLEMS:
        return _OS_PROBLEMS[exc.errno]
    elif isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class SqliteThread:
    """One sqlite connection used from a single worker thread; calls run in submission order.

    `label` names the store in errors ("sqlite ledger /path/ledger.db"). `max_page_count`, for
    tests, caps the file's size the way a full disk does (sqlite answers SQLITE_FULL)."""

    def __init__(
        self, path: Path, name: str = "nexus-sqlite", *, label: str = "", max_page_count: int | None = None
    ) -> None:
        self._path = path
        self._name = name
        self.label = label or f"sqlite {path}"
        self._max_page_count = max_page_count
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self, setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Connect (WAL, synchronous=FULL) and run `setup` in one write transaction; raises
        LedgerError naming the file when it cannot be opened, read or written."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)

        def connect() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous=FULL")
                if self._max_page_count is not None:
                    conn.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
                if setup is not None:
                    transaction(conn, setup)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

        try:
            await self._submit(connect)
        except LedgerError:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the worker thread."""

        def call() -> T:
            if self._conn is None:
                raise LedgerError(f"{self.label}: not open")
            return fn(self._conn)

        return await self._submit(call)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one write transaction, committed (durably) before returning; if
        anything fails nothing of it is committed."""
        return await self.run(lambda conn: transaction(conn, fn))

    async def close(self) -> None:
        if self._executor is None:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await self._submit(shut)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise LedgerError(f"{self.label}: not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"{self.label}: {describe(exc)}") from exc


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`fn(conn)` between BEGIN IMMEDIATE and COMMIT; rolled back if either fails (a failed
    COMMIT, e.g. on a full disk, may leave the transaction open)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # sqlite rolls back by itself after some errors (SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    return result


class TaskSet:
    """Runs writes as tasks that finish even when their caller is cancelled (a gRPC deadline):
    a commit is then never followed by a skipped cache update."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned failure must not be logged as unhandled

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _enable_wal(conn: sqlite3.Connection, attempts: int = 200) -> None:
    """Switch to WAL. Processes opening a new file together (`serve --workers N`) race for the
    exclusive lock the switch needs, and sqlite reports "locked" at once instead of waiting."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.025)
