"""The redis ledger's way back from an outage: probe the store, push what was done locally
(releases, journaled settles, reservations held locally), re-read the totals.

What the store refuses on the way back (it answers with an error) is given up, logged once and
counted, never retried forever: a refused journaled settle is moved to `redis_journal_failed`
so that replay goes on with the next entry and the journal drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import month_of
from nexus_grpc.ledger.journal import Journal
from nexus_grpc.ledger.local_state import LocalState
from nexus_grpc.ledger.redis_store import Down, RedisStore, Refused, log
from nexus_grpc.text import plural


class KeyLocks:
    """Calls on one key run one after the other (settles, and the catch-up's pushes)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Recovery:
    def __init__(
        self,
        store: RedisStore,
        state: LocalState,
        journal: Journal,
        locks: KeyLocks,
        *,
        wall: Callable[[], float],
        poll_secs: float,
        breaker_secs: float,
    ) -> None:
        self._store = store
        self._state = state
        self._journal = journal
        self._locks = locks
        self._wall = wall
        self._poll_secs = poll_secs
        self._breaker_secs = breaker_secs
        self.replays_refused = 0  # journaled settles the store refused, moved aside
        self.polls = 0  # rounds of the background task finished (tests wait on them)

    async def recover(self) -> None:
        """Probe, then bring the store up to date with everything done locally; raises Down."""
        await self._store.probe()
        self._state.store_restarted()
        # One pass over what was done locally, then available: what arrived during the pass is
        # caught up by the background task (waiting for an empty backlog under steady traffic
        # would never end: every decision adds to it while the store counts as down).
        await self.catch_up()
        with contextlib.suppress(Refused):
            await self._store.refresh()
        self._store.up = True
        backlog = len(self._state.journaled) + len(self._state.local) + len(self._state.pending_release)
        log.info(
            "redis ledger available"
            + (f" ({plural(backlog, 'local change')} left to push)" if backlog else "")
        )

    async def catch_up(self) -> None:
        """Push releases, journaled settles and reservations made while the store was down.
        Each key is pushed under its lock, so a concurrent call on that key runs before or after.
        A reservation settled while down is left to its replayed settle, which drops it and keeps
        its place in the request index."""
        for key, r in list(self._state.pending_release.items()):
            async with self._locks.hold(key):
                if self._state.pending_release.get(key) is r and key not in self._state.journaled:
                    try:
                        await self._store.script("release", [key])
                    except Refused as exc:
                        log.warning(
                            "redis ledger: the store refused to release %r (%s); it expires", key, exc
                        )
                    self._state.release_done(key, r)
        await self._replay()
        for key, r in list(self._state.local.items()):
            async with self._locks.hold(key):
                if self._state.local.get(key) is r:
                    try:
                        await self._store.script("reserve", self._store.reserve_args(r, {}))
                    except Refused as exc:
                        log.warning(
                            "redis ledger: the store refused the reservation %r (%s); dropped", key, exc
                        )
                        self._state.drop_local(key, r)
                        continue
                    self._state.pushed(key, r)

    async def _replay(self) -> None:
        for entry in list(self._state.journaled.values()):
            async with self._locks.hold(entry.key):
                if self._state.journaled.get(entry.key) is not entry:
                    continue  # replaced meanwhile by a later settle of the same key
                try:
                    await self._store.settle(entry)  # idempotent: a replayed duplicate is refused
                except Refused as exc:
                    self.replays_refused += 1
                    log.error(
                        "redis ledger: the store refused the journaled settle of %r (%s);"
                        " moved to redis_journal_failed in %s, not charged",
                        entry.key,
                        exc,
                        self._journal.path,
                    )
                    self._state.replayed(entry)
                    await self._journal_done(self._journal.move_aside(entry, str(exc), self._wall()))
                    continue
                self._state.replayed(entry)
                await self._journal_done(self._journal.remove(entry))

    async def _journal_done(self, write: Awaitable[object]) -> None:
        """Clear a replayed entry from the journal file. If the file refuses, the entry stays in
        it and is replayed again at the next start (the store refuses the duplicate)."""
        try:
            await write
        except LedgerError as exc:
            if self._store.write_error != str(exc):
                log.warning("%s: replayed entries stay in the journal file", exc)
            self._store.write_error = str(exc)

    async def run(self) -> None:
        """The background task: recover after an outage, finish the catch-up, load a new month."""
        store = self._store
        while True:
            await asyncio.sleep(self._poll_secs)
            try:
                if not store.up and time.monotonic() >= store.retry_at:
                    await self.recover()
                elif store.up and not self._state.synced():
                    await self.catch_up()
                elif (
                    store.up
                    and not self._state.loaded(month_of(self._wall()))
                    and time.monotonic() >= store.retry_at
                ):
                    await store.refresh()
            except Down:
                continue
            except Refused:
                store.retry_at = time.monotonic() + self._breaker_secs  # not on every poll
            except Exception:  # a bug must not end recovery for good
                log.exception("redis ledger background task")
            finally:
                self.polls += 1
