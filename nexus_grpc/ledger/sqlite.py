"""Durable single-file ledger: WAL, synchronous=FULL, one write transaction per call, committed
before the coroutine returns. Several processes may share the file (`--workers N`):
check-and-reserve and settle run under the file's write lock, and `refresh()` re-reads what the
others wrote.

All sqlite work runs on one dedicated thread; the synchronous reads (`totals`, `reservation`)
come from an in-memory copy loaded at `start()` and updated by every committed write with the row
values read back inside its transaction. A write sqlite refuses (a full disk, a read-only or
corrupt file) raises LedgerError, commits nothing and leaves the copy as it was.

Amounts are clamped before they are stored and totals saturate with `MIN(cap, MAX(0, col + d))`,
so every total stays an INTEGER: an integer sum that overflowed would silently become a REAL.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger import sqlite_tx as tx
from nexus_grpc.ledger.base import (
    Pending,
    Reservation,
    SettleResult,
    Totals,
    clamp_amount,
    month_of,
    previous_month,
)
from nexus_grpc.ledger.bounds import bounded, unique
from nexus_grpc.ledger.sqlite_schema import migrate
from nexus_grpc.ledger.sqlite_thread import SqliteThread, TaskSet, describe

T = TypeVar("T")
log = logging.getLogger(__name__)


class SqliteLedger:
    kind = "sqlite"

    def __init__(
        self, path: Path, *, wall: Callable[[], float] = time.time, max_page_count: int | None = None
    ) -> None:
        """`wall`: the wall clock (epoch seconds). `max_page_count`, for tests: the file's size
        limit in pages, reached like a full disk."""
        self.path = path
        self._wall = wall
        self._label = f"sqlite ledger {path}"
        self._db = SqliteThread(path, name="nexus-ledger", label=self._label, max_page_count=max_page_count)
        self._totals: dict[tx.Key, Totals] = {}
        self._reservations: dict[str, Reservation] = {}
        self._started = False
        self._writes = TaskSet()
        self._write_error: str | None = None

    @property
    def available(self) -> bool:
        return self._started

    @property
    def write_error(self) -> str | None:
        return self._write_error

    async def start(self) -> None:
        await self._db.open(migrate)
        try:
            oldest_kept = previous_month(month_of(self._wall()))
            try:
                await self._db.transaction(
                    lambda conn: conn.execute(
                        "DELETE FROM ledger_charges WHERE created_month < ?", (oldest_kept,)
                    )
                )
            except LedgerError as exc:  # e.g. a full disk: serve what is stored, writes fail
                self._write_error = str(exc)
                log.warning("%s; old idempotency keys are kept", exc)
            await self.refresh()
        except BaseException:
            await self._db.close()
            raise
        self._started = True

    async def close(self) -> None:
        await self._writes.drain()
        self._started = False
        await self._db.close()

    async def check_writable(self) -> bool:
        def touch(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE ledger_meta SET checked_at = ? WHERE id = 1", (self._wall(),))

        try:
            await self._db.transaction(touch)
        except Exception as exc:
            self._write_error = (
                str(exc) if isinstance(exc, LedgerError) else f"{self._label}: {describe(exc)}"
            )
            return False
        self._write_error = None
        return True

    def totals(self, scope: str, month: str) -> Totals | None:
        if not self._started:
            return None
        return self._totals.get((scope, month), Totals())

    def reservation(self, key: str) -> Reservation | None:
        return self._reservations.get(key)

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        r = bounded(reservation, self._wall())
        return await self._write(lambda conn: tx.reserve_tx(conn, r, limits))

    async def release(self, key: str) -> None:
        await self._write(lambda conn: tx.release_tx(conn, key))

    async def expire(self, now: float) -> list[str]:
        released = await self._write(lambda conn: tx.expire_tx(conn, now))
        for key in [key for key, r in self._reservations.items() if r.expires_at <= now]:
            del self._reservations[key]  # released meanwhile by another process sharing the file
        return released

    async def settle(
        self,
        key: str,
        scopes: Sequence[str],
        charge_nano: int,
        month: str,
        *,
        estimated: bool,
        provisional: bool = False,
        request_id: str = "",
        note: str = "",
    ) -> SettleResult:
        s = tx.Settle(
            key,
            unique(scopes),
            clamp_amount(charge_nano),
            month,
            estimated,
            provisional,
            request_id,
            note,
            month_of(self._wall()),
        )
        return await self._write(lambda conn: tx.settle_tx(conn, s))

    async def find(self, key: str) -> Pending | SettleResult | None:
        return await self._db.run(lambda conn: tx.find(conn, key))

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        if not request_id:
            return None
        return await self._db.run(lambda conn: tx.find_request(conn, request_id))

    async def get(self, scope: str, month: str) -> Totals:
        try:
            fresh = await self._db.run(lambda conn: tx.row(conn, scope, month))
        except LedgerError:
            return self._totals.get((scope, month), Totals())
        self._totals[(scope, month)] = fresh
        return fresh

    async def refresh(self) -> None:
        self._totals, self._reservations = await self._db.run(tx.load)

    async def _write(self, fn: Callable[[sqlite3.Connection], tuple[T, tx.Changes]]) -> T:
        async def commit_then_apply() -> T:
            try:
                value, ch = await self._db.transaction(fn)
            except LedgerError as exc:
                self._write_error = str(exc)
                raise
            self._write_error = None
            for key in ch.dropped:
                self._reservations.pop(key, None)
            if ch.added is not None:
                self._reservations[ch.added.key] = ch.added
            self._totals.update(ch.fresh)
            return value

        return await self._writes.shielded(commit_then_apply())
