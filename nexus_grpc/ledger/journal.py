"""Blocking sqlite work off the event loop, and the redis ledger's durable outage journal.

`SqliteThread` owns one connection on one dedicated thread: every call is serialised there, so
the event loop never waits on disk. `Journal` keeps the outcomes accepted while Redis was
unreachable, committed (WAL, synchronous=FULL) before the settle that wrote them returns.
`LocalState` is the redis ledger's view: the store's last values plus own changes not yet in it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from nexus_grpc.ledger.base import Reservation, SettleResult, Totals

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


@dataclass(frozen=True, slots=True)
class KnownCharge:
    """A charge the store confirmed (kept for idempotent answers during an outage)."""

    scopes: tuple[str, ...]
    month: str
    charged_nano: int
    estimated: bool
    provisional: bool

    @staticmethod
    def parse(scopes_json: str, month: str, charged: str, estimated: str, provisional: str) -> KnownCharge:
        scopes = json.loads(scopes_json)
        return KnownCharge(
            tuple(scopes) if isinstance(scopes, list) else (),
            month,
            int(charged),
            estimated == "1",
            provisional == "1",
        )


_Key = tuple[str, str]  # (scope, month)
_KNOWN_CHARGES = 100_000


def _shift(deltas: dict[_Key, int], scopes: tuple[str, ...], month: str, amount: int) -> None:
    for scope in scopes:
        value = deltas.get((scope, month), 0) + amount
        if value:
            deltas[(scope, month)] = value
        else:
            deltas.pop((scope, month), None)


class LocalState:
    """The redis ledger's local view: the last values read from the store (`base`, with the
    store's version so an older snapshot never overwrites newer values) plus own changes the
    store has not seen yet: reservations held locally, releases of stored reservations, and
    journaled settles."""

    def __init__(self) -> None:
        self.base: dict[_Key, Totals] = {}
        self._ver: dict[_Key, int] = {}
        self._months: set[str] = set()
        self._dspent: dict[_Key, int] = {}
        self._dreserved: dict[_Key, int] = {}
        self.stored: dict[str, Reservation] = {}  # own reservations held in the store
        self.local: dict[str, Reservation] = {}  # held locally while the store was down
        self.pending_release: dict[str, Reservation] = {}  # in the store, released while down
        self.journaled: dict[str, JournalEntry] = {}
        self._charges: OrderedDict[str, KnownCharge] = OrderedDict()

    # -- views
    def view(self, scope: str, month: str) -> Totals | None:
        key = (scope, month)
        base = self.base.get(key)
        if base is None and month not in self._months:
            return None
        return self._own(key, base or Totals())

    def view_unknown(self, scope: str, month: str) -> Totals:
        return self._own((scope, month), Totals())

    def _own(self, key: _Key, base: Totals) -> Totals:
        spent = base.spent_nano + self._dspent.get(key, 0)
        return Totals(max(0, spent), max(0, base.reserved_nano + self._dreserved.get(key, 0)))

    def reservation(self, request_id: str) -> Reservation | None:
        return self.stored.get(request_id) or self.local.get(request_id)

    def loaded(self, month: str) -> bool:
        return month in self._months

    def months(self) -> set[str]:
        return self._months | {month for _, month in self.base}

    def synced(self) -> bool:
        return not (self.local or self.pending_release or self.journaled)

    # -- values read from the store
    def store_totals(self, scope: str, month: str, totals: Totals, ver: int) -> None:
        key = (scope, month)
        if ver >= self._ver.get(key, -1):
            self.base[key] = totals
            self._ver[key] = ver

    def store_month(self, month: str, spent: dict[str, str], reserved: dict[str, str], ver: int) -> None:
        scopes = set(spent) | set(reserved) | {scope for scope, m in self.base if m == month}
        for scope in scopes:
            totals = Totals(int(spent.get(scope, 0)), int(reserved.get(scope, 0)))
            self.store_totals(scope, month, totals, ver)
        self._months.add(month)

    def store_restarted(self) -> None:
        self._ver.clear()  # the store may have lost data and restarted its version counter

    def remember(self, request_id: str, charge: KnownCharge) -> None:
        self._charges[request_id] = charge
        self._charges.move_to_end(request_id)
        while len(self._charges) > _KNOWN_CHARGES:
            self._charges.popitem(last=False)

    # -- reservations
    def forget(self, request_id: str) -> None:
        """The store now holds the truth about this id's reservation: drop local traces."""
        self.stored.pop(request_id, None)
        for held, sign in ((self.local, -1), (self.pending_release, 1)):
            r = held.pop(request_id, None)
            if r is not None:
                _shift(self._dreserved, r.scopes, r.month, sign * r.amount_nano)

    def stored_ok(self, r: Reservation) -> None:
        self.stored[r.key] = r

    def hold_locally(self, r: Reservation) -> None:
        self.release_locally(r.key)
        self.local[r.key] = r
        _shift(self._dreserved, r.scopes, r.month, r.amount_nano)

    def release_locally(self, request_id: str) -> bool:
        r = self.local.pop(request_id, None)
        if r is None:
            r = self.stored.pop(request_id, None)
            if r is None:
                return False
            self.pending_release[request_id] = r
        _shift(self._dreserved, r.scopes, r.month, -r.amount_nano)
        return True

    def expire_locally(self, at: float, store_up: bool) -> list[str]:
        released = [rid for rid, r in self.local.items() if r.expires_at <= at]
        for rid in released:
            self.release_locally(rid)
        for rid in [rid for rid, r in self.stored.items() if r.expires_at <= at]:
            if store_up:
                del self.stored[rid]  # already purged from the store by another replica
            elif self.release_locally(rid):
                released.append(rid)
        return released

    def release_done(self, request_id: str, r: Reservation) -> None:
        if self.pending_release.get(request_id) is r:
            del self.pending_release[request_id]
            _shift(self._dreserved, r.scopes, r.month, r.amount_nano)

    def pushed(self, request_id: str, r: Reservation) -> None:
        if self.local.get(request_id) is r:
            del self.local[request_id]
            _shift(self._dreserved, r.scopes, r.month, -r.amount_nano)
            self.stored[request_id] = r

    # -- settles
    def plan_local_settle(self, e: JournalEntry) -> tuple[SettleResult | None, JournalEntry]:
        """The entry to journal for a settle made while the store is down, or the duplicate's answer."""
        prev = self.journaled.get(e.request_id)
        if prev is not None:
            if not prev.provisional:
                return SettleResult(False, prev.charge_nano, prev.estimated), prev
            return None, replace(e, scopes=prev.scopes, month=prev.month, replaces_nano=prev.replaces_nano)
        known = self._charges.get(e.request_id)
        if known is None:
            return None, e
        if not known.provisional:
            return SettleResult(False, known.charged_nano, known.estimated), e
        return None, replace(e, scopes=known.scopes, month=known.month, replaces_nano=known.charged_nano)

    def journal(self, entry: JournalEntry) -> None:
        prev = self.journaled.get(entry.request_id)
        if prev is not None:
            self._unjournal(prev)
        self.journaled[entry.request_id] = entry
        _shift(self._dspent, entry.scopes, entry.month, entry.charge_nano - entry.replaces_nano)
        self.release_locally(entry.request_id)

    def replayed(self, entry: JournalEntry) -> None:
        if self.journaled.get(entry.request_id) is entry:
            self._unjournal(entry)

    def _unjournal(self, entry: JournalEntry) -> None:
        del self.journaled[entry.request_id]
        _shift(self._dspent, entry.scopes, entry.month, entry.replaces_nano - entry.charge_nano)


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
