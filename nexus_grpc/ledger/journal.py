"""The redis ledger's durable outage journal: the outcomes accepted while Redis was
unreachable, committed (WAL, synchronous=FULL) before the settle that wrote them returns.

An entry the store refuses on replay (it answers with an error: a script error, out of memory)
would be refused again on every later replay; it is moved to `redis_journal_failed` with the
store's answer, so that replay goes on with the next entry and an operator can see what was
not charged. Any failure to write the journal raises LedgerError naming the file.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nexus_grpc.ledger.sqlite_schema import upgrade_keyed_table
from nexus_grpc.ledger.sqlite_thread import SqliteThread


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A settle accepted while Redis was down; `replaces_nano` is the provisional charge it
    replaces in Redis (known locally), subtracted from the local view until replayed."""

    key: str  # the decision key
    scopes: tuple[str, ...]
    month: str
    charge_nano: int
    estimated: bool
    provisional: bool
    replaces_nano: int = 0
    request_id: str = ""
    note: str = ""


_JOURNAL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS redis_journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        decision_key TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        month TEXT NOT NULL,
        charge_nano INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        provisional INTEGER NOT NULL,
        replaces_nano INTEGER NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE IF NOT EXISTS redis_journal_failed (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        decision_key TEXT NOT NULL,
        scopes TEXT NOT NULL,
        month TEXT NOT NULL,
        charge_nano INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        provisional INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        note TEXT NOT NULL,
        error TEXT NOT NULL,
        failed_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS redis_journal_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        checked_at REAL NOT NULL DEFAULT 0
    )""",
)
_COLUMNS = "decision_key, scopes, month, charge_nano, estimated, provisional, replaces_nano, request_id, note"


def _schema(conn: sqlite3.Connection) -> None:
    for statement in _JOURNAL_SCHEMA:
        conn.execute(statement)
    # journals of the previous version: keyed by a request_id column, no labels
    upgrade_keyed_table(conn, "redis_journal")
    conn.execute("INSERT OR IGNORE INTO redis_journal_meta (id) VALUES (1)")


def _row(e: JournalEntry) -> tuple[object, ...]:
    scopes = json.dumps(list(e.scopes))
    return (e.key, scopes, e.month, e.charge_nano, int(e.estimated), int(e.provisional), e.replaces_nano)


class Journal:
    """Durable journal of settles awaiting replay into Redis (table `redis_journal`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteThread(path, name="nexus-journal", label=f"redis ledger journal {path}")

    async def open(self) -> None:
        await self._db.open(_schema)

    async def close(self) -> None:
        await self._db.close()

    async def put(self, entry: JournalEntry) -> None:
        """Insert or replace the entry of this key; committed before returning."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM redis_journal WHERE decision_key = ?", (entry.key,))
            conn.execute(
                f"INSERT INTO redis_journal ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_row(entry), entry.request_id, entry.note),
            )

        await self._db.transaction(write)

    async def remove(self, entry: JournalEntry) -> bool:
        """Remove this exact entry (not a newer one of the same key); True if it was there."""

        def delete(conn: sqlite3.Connection) -> bool:
            return _delete(conn, entry)

        return await self._db.transaction(delete)

    async def move_aside(self, entry: JournalEntry, error: str, at: float) -> None:
        """Move an entry the store refused to `redis_journal_failed`, with the store's answer."""

        def move(conn: sqlite3.Connection) -> None:
            if _delete(conn, entry):
                conn.execute(
                    "INSERT INTO redis_journal_failed (decision_key, scopes, month, charge_nano, estimated,"
                    " provisional, request_id, note, error, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*_row(entry)[:6], entry.request_id, entry.note, error, at),
                )

        await self._db.transaction(move)

    async def touch(self, at: float) -> None:
        """The small durable write of `check_writable`."""
        await self._db.transaction(
            lambda conn: conn.execute("UPDATE redis_journal_meta SET checked_at = ? WHERE id = 1", (at,))
        )

    async def entries(self) -> list[JournalEntry]:
        def read(conn: sqlite3.Connection) -> list[JournalEntry]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM redis_journal ORDER BY seq").fetchall()
            return [
                JournalEntry(
                    key, tuple(json.loads(scopes)), month, charge, bool(est), bool(prov), repl, rid, note
                )
                for key, scopes, month, charge, est, prov, repl, rid, note in rows
            ]

        return await self._db.run(read)

    async def failed(self) -> list[tuple[JournalEntry, str]]:
        """The entries moved aside, oldest first, each with the store's answer."""

        def read(conn: sqlite3.Connection) -> list[tuple[JournalEntry, str]]:
            rows = conn.execute(
                "SELECT decision_key, scopes, month, charge_nano, estimated, provisional, request_id, note,"
                " error FROM redis_journal_failed ORDER BY seq"
            ).fetchall()
            return [
                (
                    JournalEntry(
                        key, tuple(json.loads(s)), month, charge, bool(est), bool(prov), 0, rid, note
                    ),
                    err,
                )
                for key, s, month, charge, est, prov, rid, note, err in rows
            ]

        return await self._db.run(read)


def _delete(conn: sqlite3.Connection, entry: JournalEntry) -> bool:
    cur = conn.execute(
        "DELETE FROM redis_journal WHERE decision_key = ? AND charge_nano = ? AND provisional = ?",
        (entry.key, entry.charge_nano, int(entry.provisional)),
    )
    return cur.rowcount > 0
