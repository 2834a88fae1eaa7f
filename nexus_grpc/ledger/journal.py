"""The redis ledger's durable outage journal: the outcomes accepted while Redis was
unreachable, committed (WAL, synchronous=FULL) before the settle that wrote them returns.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nexus_grpc.ledger.sqlite_thread import SqliteThread


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A settle accepted while Redis was down; `replaces_nano` is the provisional charge it
    replaces in Redis (known locally), subtracted from the local view until replayed."""

    request_id: str
    scopes: tuple[str, ...]
    month: str
    charge_nano: int
    estimated: bool
    provisional: bool
    replaces_nano: int = 0


_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS redis_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    month TEXT NOT NULL,
    charge_nano INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    provisional INTEGER NOT NULL,
    replaces_nano INTEGER NOT NULL
)
"""


class Journal:
    """Durable journal of settles awaiting replay into Redis (table `redis_journal`)."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, name="nexus-journal")

    async def open(self) -> None:
        def schema(conn: sqlite3.Connection) -> None:
            conn.execute(_JOURNAL_SCHEMA)

        await self._db.open(schema)

    async def close(self) -> None:
        await self._db.close()

    async def put(self, entry: JournalEntry) -> None:
        """Insert or replace the entry of this request_id; committed before returning."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM redis_journal WHERE request_id = ?", (entry.request_id,))
            conn.execute(
                "INSERT INTO redis_journal (request_id, scopes, month, charge_nano, estimated,"
                " provisional, replaces_nano) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.request_id,
                    json.dumps(list(entry.scopes)),
                    entry.month,
                    entry.charge_nano,
                    int(entry.estimated),
                    int(entry.provisional),
                    entry.replaces_nano,
                ),
            )

        await self._db.transaction(write)

    async def remove(self, entry: JournalEntry) -> bool:
        """Remove this exact entry (not a newer one of the same id); True if it was there."""

        def delete(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM redis_journal WHERE request_id = ? AND charge_nano = ? AND provisional = ?",
                (entry.request_id, entry.charge_nano, int(entry.provisional)),
            )
            return cur.rowcount > 0

        return await self._db.transaction(delete)

    async def entries(self) -> list[JournalEntry]:
        def read(conn: sqlite3.Connection) -> list[JournalEntry]:
            rows = conn.execute(
                "SELECT request_id, scopes, month, charge_nano, estimated, provisional, replaces_nano"
                " FROM redis_journal ORDER BY seq"
            ).fetchall()
            return [
                JournalEntry(rid, tuple(json.loads(scopes)), month, charge, bool(est), bool(prov), repl)
                for rid, scopes, month, charge, est, prov, repl in rows
            ]

        return await self._db.run(read)
