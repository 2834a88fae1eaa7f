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

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import (
    MAX_TOTAL_NANO,
    Pending,
    Reservation,
    SettleResult,
    Totals,
    clamp_amount,
    month_of,
    previous_month,
)
from nexus_grpc.ledger.bounds import bounded, unique
from nexus_grpc.ledger.sqlite_schema import migrate, next_seq
from nexus_grpc.ledger.sqlite_thread import SqliteThread, TaskSet, describe

T = TypeVar("T")
_Key = tuple[str, str]  # (scope, month)
log = logging.getLogger(__name__)


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


class _Label(NamedTuple):
    """The request id, note and order an entry carries into the charge that replaces it."""

    request_id: str = ""
    note: str = ""
    seq: int = 0


def _row(conn: sqlite3.Connection, scope: str, month: str) -> Totals:
    row = conn.execute(
        "SELECT spent_nano, reserved_nano FROM ledger_totals WHERE scope = ? AND month = ?", (scope, month)
    ).fetchone()
    return Totals(int(row[0]), int(row[1])) if row else Totals()


def _add(conn: sqlite3.Connection, column: str, scope: str, month: str, delta: int, ch: _Changes) -> None:
    conn.execute("INSERT OR IGNORE INTO ledger_totals (scope, month) VALUES (?, ?)", (scope, month))
    conn.execute(
        f"UPDATE ledger_totals SET {column} = MIN(?, MAX(0, {column} + ?)) WHERE scope = ? AND month = ?",
        (MAX_TOTAL_NANO, delta, scope, month),
    )
    ch.touch(scope, month)


def _drop(conn: sqlite3.Connection, key: str, ch: _Changes) -> _Label | None:
    row = conn.execute(
        "SELECT scopes, amount_nano, month, request_id, note, seq FROM ledger_reservations"
        " WHERE decision_key = ?",
        (key,),
    ).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM ledger_reservations WHERE decision_key = ?", (key,))
    for scope in json.loads(row[0]):
        _add(conn, "reserved_nano", scope, row[2], -row[1], ch)
    ch.dropped.append(key)
    return _Label(row[3], row[4], row[5])


def _finish(conn: sqlite3.Connection, ch: _Changes) -> _Changes:
    for scope, month in ch.touched:
        ch.fresh[(scope, month)] = _row(conn, scope, month)
    return ch


def _seq_for(conn: sqlite3.Connection, request_id: str, before: _Label | None) -> int:
    """The order of an entry labelled `request_id`: kept from the entry it replaces when that
    carried the same label, else the next number (0 for no label: never looked up)."""
    if not request_id:
        return 0
    if before is not None and before.request_id == request_id and before.seq:
        return before.seq
    return next_seq(conn)


def _reserve_tx(
    conn: sqlite3.Connection, r: Reservation, limits: Mapping[str, int] | None
) -> tuple[bool, _Changes]:
    ch = _Changes()
    before = _drop(conn, r.key, ch)
    if limits:
        for scope in r.scopes:
            limit = limits.get(scope, 0)
            ch.touch(scope, r.month)
            if limit > 0 and _row(conn, scope, r.month).used_nano + r.amount_nano > limit:
                return False, _finish(conn, ch)
    conn.execute(
        "INSERT INTO ledger_reservations (decision_key, scopes, amount_nano, month, expires_at,"
        " request_id, note, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.key,
            json.dumps(list(r.scopes)),
            r.amount_nano,
            r.month,
            r.expires_at,
            r.request_id,
            r.note,
            _seq_for(conn, r.request_id, before),
        ),
    )
    for scope in r.scopes:
        _add(conn, "reserved_nano", scope, r.month, r.amount_nano, ch)
    ch.added = r
    return True, _finish(conn, ch)


class _Settle(NamedTuple):
    key: str
    scopes: tuple[str, ...]
    charge_nano: int
    month: str
    estimated: bool
    provisional: bool
    request_id: str
    note: str
    created_month: str


def _settle_tx(conn: sqlite3.Connection, s: _Settle) -> tuple[SettleResult, _Changes]:
    ch = _Changes()
    prev = conn.execute(
        "SELECT scopes, month, charged_nano, estimated, provisional, request_id, note, seq"
        " FROM ledger_charges WHERE decision_key = ?",
        (s.key,),
    ).fetchone()
    if prev is not None and not prev[4]:
        return SettleResult(False, prev[2], bool(prev[3])), ch
    held = _drop(conn, s.key, ch)
    scopes, month, before = s.scopes, s.month, held
    if prev is not None:  # replace the provisional charge, in its scopes and month
        scopes, month, before = tuple(json.loads(prev[0])), prev[1], _Label(prev[5], prev[6], prev[7])
        for scope in scopes:
            _add(conn, "spent_nano", scope, month, -prev[2], ch)
    before = before or _Label()
    request_id, note = s.request_id or before.request_id, s.note or before.note
    for scope in scopes:
        _add(conn, "spent_nano", scope, month, s.charge_nano, ch)
    conn.execute(
        "INSERT OR REPLACE INTO ledger_charges (decision_key, scopes, month, charged_nano, estimated,"
        " provisional, created_month, request_id, note, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            s.key,
            json.dumps(list(scopes)),
            month,
            s.charge_nano,
            int(s.estimated),
            int(s.provisional),
            s.created_month,
            request_id,
            note,
            _seq_for(conn, request_id, before),
        ),
    )
    return SettleResult(True, s.charge_nano, s.estimated), _finish(conn, ch)


def _release_tx(conn: sqlite3.Connection, key: str) -> tuple[None, _Changes]:
    ch = _Changes()
    _drop(conn, key, ch)
    return None, _finish(conn, ch)


def _expire_tx(conn: sqlite3.Connection, at: float) -> tuple[list[str], _Changes]:
    ch = _Changes()
    rows = conn.execute(
        "SELECT decision_key FROM ledger_reservations WHERE expires_at <= ?", (at,)
    ).fetchall()
    for (key,) in rows:
        _drop(conn, key, ch)
    return list(ch.dropped), _finish(conn, ch)


def _find(conn: sqlite3.Connection, key: str) -> Pending | SettleResult | None:
    r = conn.execute(
        "SELECT scopes, amount_nano, month, request_id, note FROM ledger_reservations WHERE decision_key = ?",
        (key,),
    ).fetchone()
    if r is not None:
        return Pending(key, tuple(json.loads(r[0])), r[1], r[2], r[3], r[4], False)
    c = conn.execute(
        "SELECT scopes, charged_nano, month, request_id, note, provisional, estimated FROM ledger_charges"
        " WHERE decision_key = ?",
        (key,),
    ).fetchone()
    if c is None:
        return None
    if c[5]:
        return Pending(key, tuple(json.loads(c[0])), c[1], c[2], c[3], c[4], True)
    return SettleResult(False, c[1], bool(c[6]))


def _find_request(conn: sqlite3.Connection, request_id: str) -> Pending | SettleResult | None:
    oldest = conn.execute(
        "SELECT decision_key, scopes, amount_nano, month, note, provisional FROM ("
        " SELECT decision_key, scopes, amount_nano, month, note, 0 AS provisional, seq"
        "  FROM ledger_reservations WHERE request_id = :rid"
        " UNION ALL SELECT decision_key, scopes, charged_nano, month, note, 1, seq"
        "  FROM ledger_charges WHERE request_id = :rid AND provisional = 1"
        ") ORDER BY seq, provisional LIMIT 1",
        {"rid": request_id},
    ).fetchone()
    if oldest is not None:
        key, scopes, amount, month, note, provisional = oldest
        return Pending(key, tuple(json.loads(scopes)), amount, month, request_id, note, bool(provisional))
    latest = conn.execute(
        "SELECT charged_nano, estimated FROM ledger_charges WHERE request_id = ? AND provisional = 0"
        " ORDER BY seq DESC LIMIT 1",
        (request_id,),
    ).fetchone()
    return SettleResult(False, latest[0], bool(latest[1])) if latest is not None else None


def _load(conn: sqlite3.Connection) -> tuple[dict[_Key, Totals], dict[str, Reservation]]:
    totals = {
        (scope, month): Totals(int(spent), int(reserved))
        for scope, month, spent, reserved in conn.execute(
            "SELECT scope, month, spent_nano, reserved_nano FROM ledger_totals"
        )
    }
    reservations = {
        key: Reservation(key, tuple(json.loads(scopes)), amount, month, expires_at, request_id, note)
        for key, scopes, amount, month, expires_at, request_id, note in conn.execute(
            "SELECT decision_key, scopes, amount_nano, month, expires_at, request_id, note"
            " FROM ledger_reservations"
        )
    }
    return totals, reservations


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
        self._totals: dict[_Key, Totals] = {}
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
        return await self._write(lambda conn: _reserve_tx(conn, r, limits))

    async def release(self, key: str) -> None:
        await self._write(lambda conn: _release_tx(conn, key))

    async def expire(self, now: float) -> list[str]:
        released = await self._write(lambda conn: _expire_tx(conn, now))
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
        s = _Settle(
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
        return await self._write(lambda conn: _settle_tx(conn, s))

    async def find(self, key: str) -> Pending | SettleResult | None:
        return await self._db.run(lambda conn: _find(conn, key))

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        if not request_id:
            return None
        return await self._db.run(lambda conn: _find_request(conn, request_id))

    async def get(self, scope: str, month: str) -> Totals:
        try:
            fresh = await self._db.run(lambda conn: _row(conn, scope, month))
        except LedgerError:
            return self._totals.get((scope, month), Totals())
        self._totals[(scope, month)] = fresh
        return fresh

    async def refresh(self) -> None:
        self._totals, self._reservations = await self._db.run(_load)

    async def _write(self, fn: Callable[[sqlite3.Connection], tuple[T, _Changes]]) -> T:
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
