"""Shared ledger in Redis: several replicas, one truth, atomic Lua scripts (`redis_scripts`).

Outages: each call has a short timeout; after a failure to reach the store a breaker keeps
callers off it (`available` is False) until a background probe succeeds. Meanwhile reservations
are held locally (fail open), settles are committed to the sqlite journal before returning, and
reads serve the last values plus own changes (`LocalState`). On recovery the journal is replayed
(idempotent: the settle script's key refuses duplicates), local reservations are pushed, and
totals re-read (`redis_recovery`).

A store that answers with an error (a script error, out of memory) is not down (`redis_store`):
such a write raises LedgerError and sets `write_error`, and nothing is journaled; a journaled
settle the store refuses on replay is moved aside, so the journal always drains. Amounts and
expiries are bounded before they reach the store, so no input can make it refuse forever. A
journal write that fails while the store is down raises LedgerError: the settle is not
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import Pending, Reservation, SettleResult, Totals, clamp_amount
from nexus_grpc.ledger.bounds import bounded, unique
from nexus_grpc.ledger.journal import Journal, JournalEntry
from nexus_grpc.ledger.local_state import LocalState
from nexus_grpc.ledger.redis_recovery import KeyLocks, Recovery
from nexus_grpc.ledger.redis_store import Down, RedisStore, Refused
from nexus_grpc.ledger.sqlite_thread import TaskSet, describe

_EXPIRE_BATCH = 500


class RedisLedger:
    kind = "redis"

    def __init__(
        self,
        url: str,
        journal_path: Path,
        *,
        wall: Callable[[], float] = time.time,
        op_timeout: float = 0.2,
        breaker_secs: float = 1.0,
        poll_secs: float = 0.05,
        prefix: str = "nexus:",
        charge_ttl_secs: float = 62 * 86400,
        reservation_grace_secs: float = 40 * 86400,
    ) -> None:
        self.url = url
        self._wall = wall
        self._journal = Journal(journal_path)
        self._state = LocalState()
        self._store = RedisStore(
            url,
            self._state,
            wall=wall,
            op_timeout=op_timeout,
            breaker_secs=breaker_secs,
            prefix=prefix,
            charge_ttl_ms=int(charge_ttl_secs * 1000),
            grace_secs=reservation_grace_secs,
        )
        self._locks = KeyLocks()
        self._recovery = Recovery(
            self._store,
            self._state,
            self._journal,
            self._locks,
            wall=wall,
            poll_secs=poll_secs,
            breaker_secs=breaker_secs,
        )
        self._task: asyncio.Task[None] | None = None
        self._writes = TaskSet()

    @property
    def available(self) -> bool:
        return self._store.up

    @property
    def write_error(self) -> str | None:
        return self._store.write_error

    @property
    def failures(self) -> int:
        """Store calls that failed to reach it (a metric; also lets tests count slow paths)."""
        return self._store.failures

    @property
    def refusals(self) -> int:
        """Store calls it answered with an error."""
        return self._store.refusals

    @property
    def replays_refused(self) -> int:
        """Journaled settles the store refused on replay (moved to redis_journal_failed)."""
        return self._recovery.replays_refused

    @property
    def polls(self) -> int:
        """Rounds of the background task (recover, catch up, load a new month) finished."""
        return self._recovery.polls

    async def start(self) -> None:
        await self._journal.open()  # raises LedgerError naming the journal file
        try:
            entries = await self._journal.entries()
        except BaseException:
            await self._journal.close()
            raise
        for entry in entries:
            self._state.journal(entry)
        self._store.connect()
        with contextlib.suppress(Down, Refused):
            await self._recovery.recover()
        self._task = asyncio.create_task(self._recovery.run(), name="nexus-redis-ledger")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._writes.drain()
        await self._store.close()
        await self._journal.close()

    # -- reads ---------------------------------------------------------------------------------

    def totals(self, scope: str, month: str) -> Totals | None:
        return self._state.view(scope, month)

    def reservation(self, key: str) -> Reservation | None:
        return self._state.reservation(key)

    async def get(self, scope: str, month: str) -> Totals:
        if self._store.up:
            with contextlib.suppress(Down, Refused):
                await self._store.read_months([month], scope=scope)
        return self._state.view(scope, month) or self._state.view_unknown(scope, month)

    async def refresh(self) -> None:
        if self._store.up:
            with contextlib.suppress(Down, Refused):
                await self._store.refresh()

    async def find(self, key: str) -> Pending | SettleResult | None:
        if self._store.up and not self._state.changed_here(key):
            with contextlib.suppress(Down, Refused):
                return await self._store.find(key)
        return self._state.find(key)

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        if not request_id:
            return None
        if self._store.up:
            with contextlib.suppress(Down, Refused):
                found = await self._store.find_request(request_id)
                if self._state.synced():
                    return found
                # right after an outage: own changes the store has not seen yet come first
                if isinstance(found, Pending) and self._state.changed_here(found.key):
                    found = None
                if isinstance(found, Pending):
                    return found
                own = self._state.find_request(request_id, own_only=True)
                return own if own is not None else found
        return self._state.find_request(request_id)  # the store unreachable: what is known here

    # -- writes --------------------------------------------------------------------------------

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        r = bounded(reservation, self._wall())
        if self._store.up:
            async with self._ordered(r.key):
                if self._store.up:
                    with contextlib.suppress(Down):
                        head = await self._store.write("reserve", self._store.reserve_args(r, limits or {}))
                        self._state.forget(r.key)
                        if head[0] == 1:
                            self._state.stored_ok(r)
                        return bool(head[0] == 1)
        self._state.hold_locally(r)  # fail open
        return True

    async def release(self, key: str) -> None:
        if self._store.up:
            async with self._ordered(key):
                if self._store.up:
                    with contextlib.suppress(Down):
                        await self._store.write("release", [key])
                        self._state.forget(key)
                        return
        self._state.release_locally(key)

    async def expire(self, now: float) -> list[str]:
        if math.isnan(now):
            return []
        released: list[str] = []
        while self._store.up:
            try:
                head = await self._store.write("expire", [repr(now), _EXPIRE_BATCH])
            except Down:
                break
            keys = [str(x) for x in head[1 : 1 + int(head[0])]]
            for key in keys:
                self._state.forget(key)
            released += keys
            if int(head[0]) < _EXPIRE_BATCH:
                break
        local = self._state.expire_locally(now, self._store.up)
        return released + [key for key in local if key not in released]

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
        charge = clamp_amount(charge_nano)
        entry = JournalEntry(key, unique(scopes), month, charge, estimated, provisional, 0, request_id, note)
        return await self._writes.shielded(self._settle_serialised(entry))

    async def _settle_serialised(self, entry: JournalEntry) -> SettleResult:
        async with self._locks.hold(entry.key):
            return await self._settle(entry)

    async def _settle(self, e: JournalEntry) -> SettleResult:
        if self._store.up and e.key not in self._state.journaled:
            with contextlib.suppress(Down):
                try:
                    return await self._store.settle(e)
                except Refused as exc:
                    raise self._store.refused(exc) from None
        duplicate, entry = self._state.plan_local_settle(e)
        if duplicate is not None:
            return duplicate
        try:
            await self._journal.put(entry)  # durable before the outcome is acknowledged
        except LedgerError as exc:
            self._store.write_error = str(exc)
            raise
        self._store.write_error = None
        self._state.journal(entry)
        return SettleResult(True, entry.charge_nano, entry.estimated)

    async def check_writable(self) -> bool:
        store = self._store
        try:
            if store.up:
                with contextlib.suppress(Down):
                    await store.probe_write()
                    store.write_error = None
                    return True
            await self._journal.touch(self._wall())  # where settles go while the store is down
        except Refused as exc:
            store.refused(exc)
            return False
        except LedgerError as exc:
            store.write_error = str(exc)
            return False
        except Exception as exc:  # never raises
            store.write_error = f"{store.label}: {describe(exc)}"
            return False
        store.write_error = None
        return True

    def _ordered(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Per-key ordering against the catch-up after an outage; nothing to order otherwise."""
        if self._state.synced():
            return contextlib.nullcontext()
        return self._locks.hold(key)
