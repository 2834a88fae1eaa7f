"""The sqlite ledger's tables, and the upgrade of files written by earlier versions.

Entries are keyed by the decision key (`decision_key`) and labelled with the caller's request id
(`request_id`, indexed, so a report naming only a request id finds its decision). `seq` orders the
decisions of one request id: it is taken from the counter in `ledger_meta` when a key is first
labelled, and kept when its reservation becomes a charge. `ledger_meta` (one row) also takes the
small write of `check_writable`.

Earlier versions keyed entries by the caller's request id in a column of that name and had no
label, note or order: `migrate` renames that column to `decision_key` and adds the others (old rows
get request_id '' and note ''), after reading the table's columns with PRAGMA table_info.
It runs in the write transaction of `start()`, so processes opening one old file together
migrate it once.
"""

from __future__ import annotations

import sqlite3

from nexus_grpc.ledger.base import MAX_TOTAL_NANO

_TABLES = (
    """CREATE TABLE IF NOT EXISTS ledger_totals (
        scope TEXT NOT NULL,
        month TEXT NOT NULL,
        spent_nano INTEGER NOT NULL DEFAULT 0,
        reserved_nano INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, month)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ledger_reservations (
        decision_key TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        amount_nano INTEGER NOT NULL,
        month TEXT NOT NULL,
        expires_at REAL NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '',
        seq INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_charges (
        decision_key TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        month TEXT NOT NULL,
        charged_nano INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        provisional INTEGER NOT NULL,
        created_month TEXT NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '',
        seq INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL DEFAULT 0,
        checked_at REAL NOT NULL DEFAULT 0
    )""",
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ledger_reservations_expiry ON ledger_reservations (expires_at)",
    "CREATE INDEX IF NOT EXISTS ledger_reservations_request ON ledger_reservations (request_id, seq)",
    "CREATE INDEX IF NOT EXISTS ledger_charges_created ON ledger_charges (created_month)",
    "CREATE INDEX IF NOT EXISTS ledger_charges_request ON ledger_charges (request_id, provisional, seq)",
)
LABEL_COLUMNS = (("request_id", "TEXT NOT NULL DEFAULT ''"), ("note", "TEXT NOT NULL DEFAULT ''"))
_SEQ_COLUMN = (("seq", "INTEGER NOT NULL DEFAULT 0"),)


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def upgrade_keyed_table(
    conn: sqlite3.Connection, table: str, added: tuple[tuple[str, str], ...] = LABEL_COLUMNS
) -> None:
    """Bring a table keyed by `request_id` (earlier versions) to `decision_key` plus `added`."""
    have = columns(conn, table)
    if "decision_key" not in have and "request_id" in have:
        # the old key column held what callers passed as the key: it keeps its values
        conn.execute(f"ALTER TABLE {table} RENAME COLUMN request_id TO decision_key")
        have = columns(conn, table)
    for name, declaration in added:
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def _repair_totals(conn: sqlite3.Connection) -> None:
    """Totals stored before amounts were bounded may be REAL (sqlite turns an integer sum that
    overflows into a float) or beyond the cap: store them as integers within 0..MAX_TOTAL_NANO."""
    for col in ("spent_nano", "reserved_nano"):
        conn.execute(
            f"UPDATE ledger_totals SET {col} = CASE WHEN {col} >= :cap THEN :cap WHEN {col} <= 0 THEN 0"
            f" ELSE CAST({col} AS INTEGER) END"
            f" WHERE typeof({col}) != 'integer' OR {col} < 0 OR {col} > :cap",
            {"cap": MAX_TOTAL_NANO},
        )


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the tables (inside a write transaction)."""
    for statement in _TABLES:
        conn.execute(statement)
    for table in ("ledger_reservations", "ledger_charges"):
        upgrade_keyed_table(conn, table, LABEL_COLUMNS + _SEQ_COLUMN)
    for statement in _INDEXES:
        conn.execute(statement)
    conn.execute("INSERT OR IGNORE INTO ledger_meta (id) VALUES (1)")
    _repair_totals(conn)


def next_seq(conn: sqlite3.Connection) -> int:
    """The next number of the decision order (inside the caller's write transaction)."""
    conn.execute("UPDATE ledger_meta SET seq = seq + 1 WHERE id = 1")
    return int(conn.execute("SELECT seq FROM ledger_meta WHERE id = 1").fetchone()[0])
