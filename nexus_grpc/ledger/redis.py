"""Shared ledger in Redis (SPEC §5.3 `redis`): several replicas, one truth, atomic Lua scripts.

Keys (prefix `nexus:`): `spent:<month>` and `reserved:<month>` hashes (scope -> nano-USD),
`res:<id>` reservation hashes plus the `res_exp` expiry index, `charge:<id>` idempotency keys
(expiring after ~62 days), and `ver`, bumped by every script so a refresh never overwrites newer
values with an older snapshot.

Outages: each call has a short timeout; after a failure a breaker keeps callers off the store
(`available` is False) until a background probe succeeds. Meanwhile reservations are held locally
(fail open), settles are committed to the sqlite journal (`LocalState`) before returning, and reads
serve the last values plus own changes. On recovery the journal is replayed (idempotent: the
settle script's key refuses duplicates), local reservations are pushed, and totals re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from nexus_grpc.ledger.base import Pending, Reservation, SettleResult, Totals, month_of, previous_month
from nexus_grpc.ledger.journal import Journal, JournalEntry
from nexus_grpc.ledger.local_state import KnownCharge, LocalState
from nexus_grpc.ledger.redis_scripts import EXPIRE, PRELUDE, RELEASE, RESERVE, SETTLE
from nexus_grpc.ledger.sqlite_thread import TaskSet

now = time.time
log = logging.getLogger(__name__)

_EXPIRE_BATCH = 500


class _Down(Exception):
    """The store did not answer; the caller takes the local path."""


class RedisLedger:
    kind = "redis"

    def __init__(
        self,
        url: str,
        journal_path: Path,
        *,
        op_timeout: float = 0.2,
        breaker_secs: float = 1.0,
        poll_secs: float = 0.05,
        prefix: str = "nexus:",
        charge_ttl_secs: float = 62 * 86400,
        reservation_grace_secs: float = 40 * 86400,
    ) -> None:
        self.url = url
        self._op_timeout = op_timeout
        self._breaker_secs = breaker_secs
        self._poll_secs = poll_secs
        self._prefix = prefix
        self._charge_ttl_ms = int(charge_ttl_secs * 1000)
        self._grace_secs = reservation_grace_secs
        self._journal = Journal(journal_path)
        self._state = LocalState()
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._up = False
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._writes = TaskSet()
        self._settling: dict[str, tuple[asyncio.Lock, int]] = {}
        self.failures = 0  # store calls that failed (a metric; also lets tests count slow paths)

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
        return self._up

    async def start(self) -> None:
        await self._journal.open()
        for entry in await self._journal.entries():
            self._state.journal(entry)
        self._client = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=self._op_timeout,
            socket_connect_timeout=self._op_timeout,
            retry=Retry(NoBackoff(), 0),  # no retry loops: the breaker and the journal handle failures
        )
        for name, body in (("reserve", RESERVE), ("settle", SETTLE), ("release", RELEASE)):
            self._scripts[name] = self._client.register_script(PRELUDE + body)
        self._scripts["expire"] = self._client.register_script(PRELUDE + EXPIRE)
        with contextlib.suppress(_Down):
            await self._recover()
        self._task = asyncio.create_task(self._run(), name="nexus-redis-ledger")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._writes.drain()
        self._up = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self._journal.close()

    # -- reads ---------------------------------------------------------------------------------

    def totals(self, scope: str, month: str) -> Totals | None:
        return self._state.view(scope, month)

    def reservation(self, key: str) -> Reservation | None:
        return self._state.reservation(key)

    async def get(self, scope: str, month: str) -> Totals:
        if self._up:
            with contextlib.suppress(_Down):
                await self._read_months([month], scope=scope)
        return self._state.view(scope, month) or self._state.view_unknown(scope, month)

    async def refresh(self) -> None:
        if self._up:
            with contextlib.suppress(_Down):
                await self._refresh_store()

    # -- writes --------------------------------------------------------------------------------

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        r = reservation
        if self._up:
            async with self._ordered(r.key):
                if self._up:
                    with contextlib.suppress(_Down):
                        head = await self._script("reserve", self._reserve_args(r, limits or {}))
                        self._state.forget(r.key)
                        if head[0] == 1:
                            self._state.stored_ok(r)
                        return bool(head[0] == 1)
        self._state.hold_locally(r)  # fail open
        return True

    def _reserve_args(self, r: Reservation, limits: Mapping[str, int]) -> list[str | int]:
        deadline = max(r.expires_at, now()) + self._grace_secs  # a safety net: expire() drops it first
        args: list[str | int] = [r.key, str(r.amount_nano), r.month, repr(r.expires_at)]
        args += [int(deadline * 1000), len(r.scopes), *r.scopes]
        return args + [str(limits.get(scope, 0)) for scope in r.scopes]

    async def release(self, key: str) -> None:
        if self._up:
            async with self._ordered(key):
                if self._up:
                    with contextlib.suppress(_Down):
                        await self._script("release", [key])
                        self._state.forget(key)
                        return
        self._state.release_locally(key)

    async def expire(self, now: float) -> list[str]:
        released: list[str] = []
        while self._up:
            try:
                head = await self._script("expire", [repr(now), _EXPIRE_BATCH])
            except _Down:
                break
            ids = [str(x) for x in head[1 : 1 + int(head[0])]]
            for rid in ids:
                self._state.forget(rid)
            released += ids
            if int(head[0]) < _EXPIRE_BATCH:
                break
        return released + [rid for rid in self._state.expire_locally(now, self._up) if rid not in released]

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
        entry = JournalEntry(key, tuple(scopes), month, charge_nano, estimated, provisional)
        return await self._writes.shielded(self._settle_serialised(entry))

    async def _settle_serialised(self, entry: JournalEntry) -> SettleResult:
        async with self._one_at_a_time(entry.request_id):
            return await self._settle(entry)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, request_id: str) -> AsyncIterator[None]:
        """Settles (and replays) of one request_id run one after the other."""
        lock, users = self._settling.get(request_id, (asyncio.Lock(), 0))
        self._settling[request_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._settling[request_id]
            if users == 1:
                del self._settling[request_id]
            else:
                self._settling[request_id] = (lock, users - 1)

    async def _settle(self, e: JournalEntry) -> SettleResult:
        if self._up and e.request_id not in self._state.journaled:
            with contextlib.suppress(_Down):
                return await self._settle_in_store(e)
        duplicate, entry = self._state.plan_local_settle(e)
        if duplicate is not None:
            return duplicate
        await self._journal.put(entry)  # durable before the outcome is acknowledged
        self._state.journal(entry)
        return SettleResult(True, entry.charge_nano, entry.estimated)

    async def _settle_in_store(self, e: JournalEntry) -> SettleResult:
        args: list[str | int] = [e.request_id, str(e.charge_nano), e.month, int(e.estimated)]
        args += [int(e.provisional), self._charge_ttl_ms, len(e.scopes), *e.scopes]
        head = await self._script("settle", args)
        recorded, charged, est, prov, month, scopes_json = head[:6]
        if recorded == 1:
            self._state.forget(e.request_id)  # the script dropped its reservation
        self._state.remember(e.request_id, KnownCharge.parse(scopes_json, month, charged, est, prov))
        return SettleResult(recorded == 1, int(charged), est == "1")

    # -- store access --------------------------------------------------------------------------

    async def _guard(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        if self._client is None:
            raise _Down
        try:
            async with asyncio.timeout(self._op_timeout):
                return await call(self._client)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failures += 1
            if self._up:
                log.warning("redis ledger unavailable (%s): failing open, journaling settles", exc)
            self._up = False
            self._retry_at = time.monotonic() + self._breaker_secs
            raise _Down from exc

    async def _script(self, name: str, args: Sequence[str | int]) -> list[Any]:
        script = self._scripts[name]
        reply: list[Any] = await self._guard(lambda c: script(keys=[], args=[self._prefix, *args], client=c))
        ver, n = int(reply[0]), int(reply[1])
        head, rest = reply[2 : 2 + n], reply[2 + n :]
        for i in range(0, len(rest), 4):
            scope, month, spent, reserved = rest[i : i + 4]
            self._state.store_totals(str(scope), str(month), Totals(int(spent), int(reserved)), ver)
        return head

    async def _read_months(self, months: Sequence[str], scope: str | None = None) -> None:
        async def read(c: aioredis.Redis) -> list[Any]:
            pipe = c.pipeline(transaction=True)
            pipe.get(self._prefix + "ver")
            for month in months:
                if scope is None:
                    pipe.hgetall(f"{self._prefix}spent:{month}")
                    pipe.hgetall(f"{self._prefix}reserved:{month}")
                else:
                    pipe.hget(f"{self._prefix}spent:{month}", scope)
                    pipe.hget(f"{self._prefix}reserved:{month}", scope)
            return list(await pipe.execute())

        reply = await self._guard(read)
        ver = int(reply[0] or 0)
        for i, month in enumerate(months):
            spent, reserved = reply[1 + 2 * i], reply[2 + 2 * i]
            if scope is None:
                self._state.store_month(month, spent, reserved, ver)
            else:
                self._state.store_totals(scope, month, Totals(int(spent or 0), int(reserved or 0)), ver)

    async def _refresh_store(self) -> None:
        current = month_of(now())
        await self._read_months(sorted({current, previous_month(current), *self._state.months()}))

    # -- recovery ------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Probe, then bring the store up to date with everything done locally; raises _Down."""
        if self._client is not None:
            # pooled connections from before the outage may lead to a store that has restarted
            # since: drop them, or each would fail once more and trip the breaker after recovery
            await self._client.connection_pool.disconnect()
        await self._guard(lambda c: c.ping())
        self._state.store_restarted()
        # One pass over what was done locally, then available: what arrived during the pass is
        # caught up by the background task (waiting for an empty backlog under steady traffic
        # would never end: every decision adds to it while the store counts as down).
        await self._catch_up()
        await self._refresh_store()
        self._up = True
        backlog = len(self._state.journaled) + len(self._state.local) + len(self._state.pending_release)
        log.info("redis ledger available" + (f" ({backlog} local change(s) left to push)" if backlog else ""))

    async def _catch_up(self) -> None:
        """Push releases, journaled settles and reservations made while the store was down.
        Each id is pushed under its lock, so a concurrent call on that id runs before or after."""
        for rid, r in list(self._state.pending_release.items()):
            async with self._one_at_a_time(rid):
                if self._state.pending_release.get(rid) is r:
                    await self._script("release", [rid])
                    self._state.release_done(rid, r)
        await self._replay()
        for rid, r in list(self._state.local.items()):
            async with self._one_at_a_time(rid):
                if self._state.local.get(rid) is r:
                    await self._script("reserve", self._reserve_args(r, {}))
                    self._state.pushed(rid, r)

    def _ordered(self, request_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Per-id ordering against the catch-up after an outage; nothing to order otherwise."""
        if self._state.synced():
            return contextlib.nullcontext()
        return self._one_at_a_time(request_id)

    async def _replay(self) -> None:
        for entry in list(self._state.journaled.values()):
            async with self._one_at_a_time(entry.request_id):
                if self._state.journaled.get(entry.request_id) is not entry:
                    continue  # replaced meanwhile by a later settle of the same id
                await self._settle_in_store(entry)  # idempotent: a replayed duplicate is refused
                self._state.replayed(entry)
                await self._journal.remove(entry)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_secs)
            try:
                if not self._up and time.monotonic() >= self._retry_at:
                    await self._recover()
                elif self._up and not self._state.synced():
                    await self._catch_up()
                elif self._up and not self._state.loaded(month_of(now())):
                    await self._refresh_store()
            except _Down:
                continue
            except Exception:  # a bug must not end recovery for good
                log.exception("redis ledger background task")
