"""Blocking sqlite work off the event loop.

`SqliteThread` owns one connection on one dedicated thread: every call is serialised there, so
the event loop never waits on disk. `TaskSet` runs writes as tasks a cancelled caller cannot cut
short.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000


class SqliteThread:
    """One sqlite connection used from a single worker thread; calls run in submission order."""

    def __init__(self, path: Path, name: str = "nexus-sqlite") -> None:
        self._path = path
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self, setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)

        def connect() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            self._conn = conn
            if setup is not None:
                transaction(conn, setup)

        await self._submit(connect)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the worker thread."""

        def call() -> T:
            if self._conn is None:
                raise RuntimeError("sqlite connection is not open")
            return fn(self._conn)

        return await self._submit(call)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one write transaction, committed (durably) before returning."""
        return await self.run(lambda conn: transaction(conn, fn))

    async def close(self) -> None:
        if self._executor is None:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._submit(shut)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("sqlite thread is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
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
