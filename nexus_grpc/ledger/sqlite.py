"""Durable single-file ledger (SPEC §5.3 `sqlite`): WAL, synchronous=FULL, one write transaction
per call, committed before the coroutine returns. Several processes may share the file
(`--workers N`): check-and-reserve and settle run under the file's write lock, and `refresh()`
re-reads what the others wrote.

All sqlite work runs on one dedicated thread; the synchronous reads (`totals`, `reservation`)
come from an in-memory copy loaded at `start()` and updated by every write with the row values
read back inside its transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nexus_grpc.ledger.base import Pending, Reservation, SettleResult, Totals, month_of, previous_month
from nexus_grpc.ledger.sqlite_thread import SqliteThread, TaskSet

now = time.time
T = TypeVar("T")
_Key = tuple[str, str]  # (scope, month)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_totals (
        scope TEXT NOT NULL,
        month TEXT NOT NULL,
        spent_nano INTEGER NOT NULL DEFAULT 0,
        reserved_nano INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, month)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ledger_reservations (
        request_id TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        amount_nano INTEGER NOT NULL,
        month TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_reservations_expiry ON ledger_reservations (expires_at)",
    """CREATE TABLE IF NOT EXISTS ledger_charges (
        request_id TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        month TEXT NOT NULL,
        charged_nano INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        provisional INTEGER NOT NULL,
        created_month TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_charges_created ON ledger_charges (created_month)",
)


@dataclass(slots=True)
class _Changes:
    """What a transaction did, for the in-memory copy: fresh rows of the touched (scope, month)
    pairs, reservations dropped and added."""

    touched: list[_Key] = field(default_factory=list)
    fresh: dict[_Key, Totals] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    added: Reservation | None = None

    def touch(self, scope: str, month: str) -> None:
        if (scope, month) not in self.touched:
            self.touched.append((scope, month))


def _schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)


def _row(conn: sqlite3.Connection, scope: str, month: str) -> Totals:
    row = conn.execute(
        "SELECT spent_nano, reserved_nano FROM ledger_totals WHERE scope = ? AND month = ?", (scope, month)
    ).fetchone()
    return Totals(row[0], row[1]) if row else Totals()


def _add(conn: sqlite3.Connection, column: str, scope: str, month: str, delta: int, ch: _Changes) -> None:
    conn.execute("INSERT OR IGNORE INTO ledger_totals (scope, month) VALUES (?, ?)", (scope, month))
    conn.execute(
        f"UPDATE ledger_totals SET {column} = MAX(0, {column} + ?) WHERE scope = ? AND month = ?",
        (delta, scope, month),
    )
    ch.touch(scope, month)


def _drop(conn: sqlite3.Connection, request_id: str, ch: _Changes) -> None:
    row = conn.execute(
        "SELECT scopes, amount_nano, month FROM ledger_reservations WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return
    conn.execute("DELETE FROM ledger_reservations WHERE request_id = ?", (request_id,))
    for scope in json.loads(row[0]):
        _add(conn, "reserved_nano", scope, row[2], -row[1], ch)
    ch.dropped.append(request_id)


def _finish(conn: sqlite3.Connection, ch: _Changes) -> _Changes:
    for scope, month in ch.touched:
        ch.fresh[(scope, month)] = _row(conn, scope, month)
    return ch


def _reserve_tx(
    conn: sqlite3.Connection, r: Reservation, limits: Mapping[str, int] | None
) -> tuple[bool, _Changes]:
    ch = _Changes()
    _drop(conn, r.key, ch)
    if limits:
        for scope in r.scopes:
            limit = limits.get(scope, 0)
            ch.touch(scope, r.month)
            if limit > 0 and _row(conn, scope, r.month).used_nano + r.amount_nano > limit:
                return False, _finish(conn, ch)
    conn.execute(
        "INSERT INTO ledger_reservations (request_id, scopes, amount_nano, month, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (r.key, json.dumps(list(r.scopes)), r.amount_nano, r.month, r.expires_at),
    )
    for scope in r.scopes:
        _add(conn, "reserved_nano", scope, r.month, r.amount_nano, ch)
    ch.added = r
    return True, _finish(conn, ch)


def _settle_tx(
    conn: sqlite3.Connection,
    request_id: str,
    scopes: Sequence[str],
    charge_nano: int,
    month: str,
    estimated: bool,
    provisional: bool,
    created_month: str,
) -> tuple[SettleResult, _Changes]:
    ch = _Changes()
    prev = conn.execute(
        "SELECT scopes, month, charged_nano, estimated, provisional FROM ledger_charges WHERE request_id = ?",
        (request_id,),
    ).fetchone()
    if prev is not None and not prev[4]:
        return SettleResult(False, prev[2], bool(prev[3])), ch
    _drop(conn, request_id, ch)
    if prev is not None:  # replace the provisional charge, in its scopes and month
        scopes, month = tuple(json.loads(prev[0])), prev[1]
        for scope in scopes:
            _add(conn, "spent_nano", scope, month, -prev[2], ch)
    for scope in scopes:
        _add(conn, "spent_nano", scope, month, charge_nano, ch)
    conn.execute(
        "INSERT OR REPLACE INTO ledger_charges (request_id, scopes, month, charged_nano, estimated,"
        " provisional, created_month) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            request_id,
            json.dumps(list(scopes)),
            month,
            charge_nano,
            int(estimated),
            int(provisional),
            created_month,
        ),
    )
    return SettleResult(True, charge_nano, estimated), _finish(conn, ch)


def _release_tx(conn: sqlite3.Connection, request_id: str) -> tuple[None, _Changes]:
    ch = _Changes()
    _drop(conn, request_id, ch)
    return None, _finish(conn, ch)


def _expire_tx(conn: sqlite3.Connection, at: float) -> tuple[list[str], _Changes]:
    ch = _Changes()
    rows = conn.execute("SELECT request_id FROM ledger_reservations WHERE expires_at <= ?", (at,)).fetchall()
    for (request_id,) in rows:
        _drop(conn, request_id, ch)
    return list(ch.dropped), _finish(conn, ch)


def _load(conn: sqlite3.Connection) -> tuple[dict[_Key, Totals], dict[str, Reservation]]:
    totals = {
        (scope, month): Totals(spent, reserved)
        for scope, month, spent, reserved in conn.execute(
            "SELECT scope, month, spent_nano, reserved_nano FROM ledger_totals"
        )
    }
    reservations = {
        rid: Reservation(rid, tuple(json.loads(scopes)), amount, month, expires_at)
        for rid, scopes, amount, month, expires_at in conn.execute(
            "SELECT request_id, scopes, amount_nano, month, expires_at FROM ledger_reservations"
        )
    }
    return totals, reservations


class SqliteLedger:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteThread(path, name="nexus-ledger")
        self._totals: dict[_Key, Totals] = {}
        self._reservations: dict[str, Reservation] = {}
        self._started = False
        self._writes = TaskSet()

    @property
    def write_error(self) -> str | None:
        return None

    async def check_writable(self) -> bool:
        return True

    async def find(self, key: str) -> Pending | SettleResult | None:
        return None

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        return None

    @property
    def available(self) -> bool:
        return self._started

    async def start(self) -> None:
        await self._db.open(_schema)
        oldest_kept = previous_month(month_of(now()))
        await self._db.transaction(
            lambda conn: conn.execute("DELETE FROM ledger_charges WHERE created_month < ?", (oldest_kept,))
        )
        await self.refresh()
        self._started = True

    async def close(self) -> None:
        await self._writes.drain()
        self._started = False
        await self._db.close()

    def totals(self, scope: str, month: str) -> Totals | None:
        if not self._started:
            return None
        return self._totals.get((scope, month), Totals())

    def reservation(self, key: str) -> Reservation | None:
        return self._reservations.get(key)

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        return await self._write(lambda conn: _reserve_tx(conn, reservation, limits))

    async def release(self, key: str) -> None:
        await self._write(lambda conn: _release_tx(conn, key))

    async def expire(self, now: float) -> list[str]:
        released = await self._write(lambda conn: _expire_tx(conn, now))
        for rid in [rid for rid, r in self._reservations.items() if r.expires_at <= now]:
            del self._reservations[rid]  # released meanwhile by another process sharing the file
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
        created = month_of(now())
        return await self._write(
            lambda conn: _settle_tx(
                conn, key, tuple(scopes), charge_nano, month, estimated, provisional, created
            )
        )

    async def get(self, scope: str, month: str) -> Totals:
        fresh = await self._db.run(lambda conn: _row(conn, scope, month))
        self._totals[(scope, month)] = fresh
        return fresh

    async def refresh(self) -> None:
        self._totals, self._reservations = await self._db.run(_load)

    async def _write(self, fn: Callable[[sqlite3.Connection], tuple[T, _Changes]]) -> T:
        async def commit_then_apply() -> T:
            value, ch = await self._db.transaction(fn)
            for rid in ch.dropped:
                self._reservations.pop(rid, None)
            if ch.added is not None:
                self._reservations[ch.added.key] = ch.added
            self._totals.update(ch.fresh)
            return value

        return await self._writes.shielded(commit_then_apply())
