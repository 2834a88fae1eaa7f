"""Admin changes shared by the workers of one `serve --workers N`.

Each worker applies a RegistryService mutation locally, then appends it to a small sqlite log that
the parent process created for this run; every worker polls the log and replays the others'
entries in order. The log lives only as long as the run: a config reload is what makes a change
last, exactly as with one process.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS admin_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin INTEGER NOT NULL,
    method TEXT NOT NULL,
    payload BLOB NOT NULL,
    wall REAL NOT NULL
)
"""


class AdminSync:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.origin = os.getpid()
        self.last_id = 0
        self._lock = asyncio.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        conn.execute(_SCHEMA)
        return conn

    def _append(self, method: str, payload: bytes) -> None:
        with closing(self._connect()) as conn:
            conn.execute(
                "INSERT INTO admin_events (origin, method, payload, wall) VALUES (?, ?, ?, ?)",
                (self.origin, method, payload, time.time()),
            )

    def _read(self, after: int) -> list[tuple[int, int, str, bytes, float]]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT id, origin, method, payload, wall FROM admin_events WHERE id > ? ORDER BY id",
                (after,),
            ).fetchall()
        return [(int(r[0]), int(r[1]), str(r[2]), bytes(r[3]), float(r[4])) for r in rows]

    async def publish(self, method: str, payload: bytes) -> None:
        await asyncio.to_thread(self._append, method, payload)

    async def poll(self) -> list[tuple[str, bytes, int]]:
        """Other workers' changes since the last poll: (method, payload, age in ms)."""
        async with self._lock:
            rows = await asyncio.to_thread(self._read, self.last_id)
            if rows:
                self.last_id = rows[-1][0]
        now = time.time()
        return [(m, p, int((now - wall) * 1000)) for _, origin, m, p, wall in rows if origin != self.origin]
