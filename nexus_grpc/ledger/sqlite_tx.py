"""The sqlite ledger's transactions: each runs inside one write transaction on the sqlite thread
and reports what it changed (`Changes`) so that the ledger updates its in-memory copy only after
the commit.

Totals saturate with `MIN(cap, MAX(0, col + d))`: amounts are clamped to 2**53 and totals to
2**61, so the sum never overflows and every total stays an INTEGER (an integer sum that overflows
would silently become a REAL).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from nexus_grpc.ledger.base import MAX_TOTAL_NANO, Pending, Reservation, SettleResult, Totals
from nexus_grpc.ledger.sqlite_schema import next_seq

Key = tuple[str, str]  # (scope, month)


@dataclass(slots=True)
class Changes:
    """What a transaction did, for the in-memory copy: fresh rows of the touched (scope, month)
    pairs, reservations dropped and added."""

    touched: list[Key] = field(default_factory=list)
    fresh: dict[Key, Totals] = field(default_factory=dict)
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


def row(conn: sqlite3.Connection, scope: str, month: str) -> Totals:
    row = conn.execute(
        "SELECT spent_nano, reserved_nano FROM ledger_totals WHERE scope = ? AND month = ?", (scope, month)
    ).fetchone()
    return Totals(int(row[0]), int(row[1])) if row else Totals()


def _add(conn: sqlite3.Connection, column: str, scope: str, month: str, delta: int, ch: Changes) -> None:
    conn.execute("INSERT OR IGNORE INTO ledger_totals (scope, month) VALUES (?, ?)", (scope, month))
    conn.execute(
        f"UPDATE ledger_totals SET {column} = MIN(?, MAX(0, {column} + ?)) WHERE scope = ? AND month = ?",
        (MAX_TOTAL_NANO, delta, scope, month),
    )
    ch.touch(scope, month)


def _drop(conn: sqlite3.Connection, key: str, ch: Changes) -> _Label | None:
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


def _finish(conn: sqlite3.Connection, ch: Changes) -> Changes:
    for scope, month in ch.touched:
        ch.fresh[(scope, month)] = row(conn, scope, month)
    return ch


def _seq_for(conn: sqlite3.Connection, request_id: str, before: _Label | None) -> int:
    """The order of an entry labelled `request_id`: kept from the entry it replaces when that
    carried the same label, else the next number (0 for no label: never looked up)."""
    if not request_id:
        return 0
    if before is not None and before.request_id == request_id and before.seq:
        return before.seq
    return next_seq(conn)


def reserve_tx(
    conn: sqlite3.Connection, r: Reservation, limits: Mapping[str, int] | None
) -> tuple[bool, Changes]:
    ch = Changes()
    before = _drop(conn, r.key, ch)
    if limits:
        for scope in r.scopes:
            limit = limits.get(scope, 0)
            ch.touch(scope, r.month)
            if limit > 0 and row(conn, scope, r.month).used_nano + r.amount_nano > limit:
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


class Settle(NamedTuple):
    key: str
    scopes: tuple[str, ...]
    charge_nano: int
    month: str
    estimated: bool
    provisional: bool
    request_id: str
    note: str
    created_month: str


def settle_tx(conn: sqlite3.Connection, s: Settle) -> tuple[SettleResult, Changes]:
    ch = Changes()
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


def release_tx(conn: sqlite3.Connection, key: str) -> tuple[None, Changes]:
    ch = Changes()
    _drop(conn, key, ch)
    return None, _finish(conn, ch)


def expire_tx(conn: sqlite3.Connection, at: float) -> tuple[list[str], Changes]:
    ch = Changes()
    rows = conn.execute(
        "SELECT decision_key FROM ledger_reservations WHERE expires_at <= ?", (at,)
    ).fetchall()
    for (key,) in rows:
        _drop(conn, key, ch)
    return list(ch.dropped), _finish(conn, ch)


def find(conn: sqlite3.Connection, key: str) -> Pending | SettleResult | None:
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


def find_request(conn: sqlite3.Connection, request_id: str) -> Pending | SettleResult | None:
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


def load(conn: sqlite3.Connection) -> tuple[dict[Key, Totals], dict[str, Reservation]]:
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
