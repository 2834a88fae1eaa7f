"""Shared ledger in Redis: several replicas, one truth, atomic Lua scripts (`redis_scripts`).

Outages: each call has a short timeout; after a failure to reach the store a breaker keeps
callers off it (`available` is False) until a background probe succeeds. Meanwhile reservations
are held locally (fail open), settles are committed to the sqlite journal before returning, and
reads serve the last values plus own changes (`LocalState`). On recovery the journal is replayed
(idempotent: the settle script's key refuses duplicates), local reservations are pushed, and
totals re-read.

A store that answers with an error (a script error, out of memory) is not down: such a write
raises LedgerError and sets `write_error`, and nothing is journaled; a journaled settle the store
refuses on replay is moved aside (`Journal.move_aside`), so the journal always drains. Amounts
and expiries are bounded before they reach the store, so no input can make it refuse forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisError, ResponseError, TryAgainError

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import (
    Pending,
    Reservation,
    SettleResult,
    Totals,
    clamp_amount,
    month_of,
    previous_month,
)
from nexus_grpc.ledger.bounds import bounded, unique
from nexus_grpc.ledger.journal import Journal, JournalEntry
from nexus_grpc.ledger.local_state import KnownCharge, LocalState, parse_scopes
from nexus_grpc.ledger.redis_scripts import EXPIRE, FIND_REQUEST, PRELUDE, RELEASE, RESERVE, SETTLE
from nexus_grpc.ledger.sqlite_thread import TaskSet, describe

log = logging.getLogger(__name__)

_EXPIRE_BATCH = 500
_PROBE_TTL_MS = 3_600_000


class _Down(Exception):
    """The store did not answer; the caller takes the local path."""


class _Refused(Exception):
    """The store answered with an error: retrying the same call would be refused again."""


def _transient(exc: ResponseError) -> bool:
    """Errors of a store that cannot serve writes right now (a replica during failover, a
    script running too long, a cluster reconfiguring): treated like an outage."""
    if isinstance(exc, ReadOnlyError | TryAgainError | ClusterDownError):
        return True
    return str(exc).startswith(("BUSY", "MASTERDOWN", "LOADING"))


def _where(url: str) -> str:
    """The store's address for messages, without credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{host}{parts.path}" if host else parts.path or url


def _first_line(text: str, limit: int = 200) -> str:
    lines = text.strip().splitlines()
    return lines[0][:limit] if lines else "no detail"


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
        self._label = f"redis ledger {_where(url)}"
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
        self._write_error: str | None = None
        self._read_refused: str | None = None
        self.failures = 0  # store calls that failed to reach it (a metric; tests count slow paths)
        self.refusals = 0  # store calls it answered with an error
        self.replays_refused = 0  # journaled settles the store refused, moved aside

    @property
    def available(self) -> bool:
        return self._up

    @property
    def write_error(self) -> str | None:
        return self._write_error

    async def start(self) -> None:
        await self._journal.open()  # raises LedgerError naming the journal file
        try:
            entries = await self._journal.entries()
        except BaseException:
            await self._journal.close()
            raise
        for entry in entries:
            self._state.journal(entry)
        self._client = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=self._op_timeout,
            socket_connect_timeout=self._op_timeout,
            retry=Retry(NoBackoff(), 0),  # no retry loops: the breaker and the journal handle failures
        )
        for name, body in (
            ("reserve", RESERVE),
            ("settle", SETTLE),
            ("release", RELEASE),
            ("expire", EXPIRE),
        ):
            self._scripts[name] = self._client.register_script(PRELUDE + body)
        self._scripts["find_request"] = self._client.register_script(FIND_REQUEST)
        with contextlib.suppress(_Down, _Refused):
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
            with contextlib.suppress(_Down, _Refused):
                await self._read_months([month], scope=scope)
        return self._state.view(scope, month) or self._state.view_unknown(scope, month)

    async def refresh(self) -> None:
        if self._up:
            with contextlib.suppress(_Down, _Refused):
                await self._refresh_store()

    async def find(self, key: str) -> Pending | SettleResult | None:
        if self._up and not self._state.changed_here(key):
            with contextlib.suppress(_Down, _Refused):
                return await self._find_in_store(key)
        return self._state.find(key)

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        if not request_id:
            return None
        if self._up:
            with contextlib.suppress(_Down, _Refused):
                found = await self._find_request_in_store(request_id)
                if self._state.synced():
                    return found
                # right after an outage: own changes the store has not seen yet come first
                if isinstance(found, Pending) and self._state.changed_here(found.key):
                    found = None
                if isinstance(found, Pending):
                    return found
                own = self._state.find_request(request_id, own_only=True)
                return own if own is not None else found
        return self._state.find_request(request_id)

    # -- writes --------------------------------------------------------------------------------

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        r = bounded(reservation, self._wall())
        if self._up:
            async with self._ordered(r.key):
                if self._up:
                    with contextlib.suppress(_Down):
                        head = await self._write_script("reserve", self._reserve_args(r, limits or {}))
                        self._state.forget(r.key)
                        if head[0] == 1:
                            self._state.stored_ok(r)
                        return bool(head[0] == 1)
        self._state.hold_locally(r)  # fail open
        return True

    def _reserve_args(self, r: Reservation, limits: Mapping[str, int]) -> list[str | int]:
        now = self._wall()
        deadline = max(r.expires_at, now) + self._grace_secs  # a safety net: expire() drops it first
        ttl_ms = int((deadline - now) * 1000)
        args: list[str | int] = [r.key, str(r.amount_nano), r.month, repr(r.expires_at), int(deadline * 1000)]
        args += [ttl_ms, r.request_id, r.note, len(r.scopes), *r.scopes]
        return args + [str(limits.get(scope, 0)) for scope in r.scopes]

    async def release(self, key: str) -> None:
        if self._up:
            async with self._ordered(key):
                if self._up:
                    with contextlib.suppress(_Down):
                        await self._write_script("release", [key])
                        self._state.forget(key)
                        return
        self._state.release_locally(key)

    async def expire(self, now: float) -> list[str]:
        if math.isnan(now):
            return []
        released: list[str] = []
        while self._up:
            try:
                head = await self._write_script("expire", [repr(now), _EXPIRE_BATCH])
            except _Down:
                break
            keys = [str(x) for x in head[1 : 1 + int(head[0])]]
            for key in keys:
                self._state.forget(key)
            released += keys
            if int(head[0]) < _EXPIRE_BATCH:
                break
        return released + [key for key in self._state.expire_locally(now, self._up) if key not in released]

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
        async with self._one_at_a_time(entry.key):
            return await self._settle(entry)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: str) -> AsyncIterator[None]:
        """Settles (and replays) of one key run one after the other."""
        lock, users = self._settling.get(key, (asyncio.Lock(), 0))
        self._settling[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._settling[key]
            if users == 1:
                del self._settling[key]
            else:
                self._settling[key] = (lock, users - 1)

    async def _settle(self, e: JournalEntry) -> SettleResult:
        if self._up and e.key not in self._state.journaled:
            with contextlib.suppress(_Down):
                try:
                    return await self._settle_in_store(e)
                except _Refused as exc:
                    raise self._refused(exc) from None
        duplicate, entry = self._state.plan_local_settle(e)
        if duplicate is not None:
            return duplicate
        try:
            await self._journal.put(entry)  # durable before the outcome is acknowledged
        except LedgerError as exc:
            self._write_error = str(exc)
            raise
        self._write_error = None
        self._state.journal(entry)
        return SettleResult(True, entry.charge_nano, entry.estimated)

    async def _settle_in_store(self, e: JournalEntry) -> SettleResult:
        """The settle script; raises _Down, or _Refused when the store answers with an error."""
        args: list[str | int] = [e.key, str(e.charge_nano), e.month, int(e.estimated), int(e.provisional)]
        args += [self._charge_ttl_ms, e.request_id, e.note, len(e.scopes), *e.scopes]
        head = await self._script("settle", args)
        self._write_error = None
        recorded, charged, est, prov, month, scopes_json, rid, note = head[:8]
        if recorded == 1:
            self._state.forget(e.key)  # the script dropped its reservation
        self._state.remember(e.key, KnownCharge.parse(scopes_json, month, charged, est, prov, rid, note))
        return SettleResult(recorded == 1, int(charged), est == "1")

    async def check_writable(self) -> bool:
        try:
            if self._up:
                with contextlib.suppress(_Down):
                    await self._guard(
                        lambda c: c.set(self._prefix + "writable", repr(self._wall()), px=_PROBE_TTL_MS)
                    )
                    self._write_error = None
                    return True
            await self._journal.touch(self._wall())  # where settles go while the store is down
        except _Refused as exc:
            self._write_error = self._refusal_text(exc)
            return False
        except LedgerError as exc:
            self._write_error = str(exc)
            return False
        except Exception as exc:
            self._write_error = f"{self._label}: {describe(exc)}"
            return False
        self._write_error = None
        return True

    # -- store access --------------------------------------------------------------------------

    async def _guard(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        if self._client is None:
            raise _Down
        try:
            async with asyncio.timeout(self._op_timeout):
                return await call(self._client)
        except ResponseError as exc:
            if not _transient(exc):
                self.refusals += 1
                raise _Refused(_first_line(str(exc))) from exc
            self._trip(exc)
            raise _Down from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)
            raise _Down from exc

    def _trip(self, exc: BaseException) -> None:
        self.failures += 1
        if self._up:
            why = str(exc) or type(exc).__name__
            log.warning("redis ledger unavailable (%s): failing open, journaling settles", why)
        self._up = False
        self._retry_at = time.monotonic() + self._breaker_secs

    def _refusal_text(self, exc: _Refused) -> str:
        return f"{self._label}: the store refused the write ({exc})"

    def _refused(self, exc: _Refused) -> LedgerError:
        self._write_error = self._refusal_text(exc)
        return LedgerError(self._write_error)

    async def _call(self, name: str, args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        return await self._guard(lambda c: script(keys=[], args=[self._prefix, *args], client=c))

    async def _script(self, name: str, args: Sequence[str | int]) -> list[Any]:
        """A write script: returns its head and takes in the totals it touched."""
        reply: list[Any] = await self._call(name, args)
        ver, n = int(reply[0]), int(reply[1])
        head, rest = reply[2 : 2 + n], reply[2 + n :]
        for i in range(0, len(rest), 4):
            scope, month, spent, reserved = rest[i : i + 4]
            self._state.store_totals(str(scope), str(month), Totals(int(spent), int(reserved)), ver)
        return head

    async def _write_script(self, name: str, args: Sequence[str | int]) -> list[Any]:
        """A write on behalf of a caller: a refusal raises LedgerError; raises _Down."""
        try:
            head = await self._script(name, args)
        except _Refused as exc:
            raise self._refused(exc) from None
        self._write_error = None
        return head

    async def _find_in_store(self, key: str) -> Pending | SettleResult | None:
        async def read(c: aioredis.Redis) -> list[Any]:
            pipe = c.pipeline(transaction=True)
            pipe.hmget(f"{self._prefix}res:{key}", ["scopes", "amount", "month", "rid", "note"])
            pipe.hmget(
                f"{self._prefix}charge:{key}",
                ["scopes", "month", "charged", "estimated", "provisional", "rid", "note"],
            )
            return list(await pipe.execute())

        r, c = await self._guard(read)
        if r[0] is not None:
            scopes, amount, month, rid, note = r
            return Pending(key, parse_scopes(scopes), int(amount), month, rid or "", note or "", False)
        if c[0] is None:
            return None
        charge = KnownCharge.parse(*c)
        self._state.remember(key, charge)
        return charge.answer(key)

    async def _find_request_in_store(self, request_id: str) -> Pending | SettleResult | None:
        found = [str(x) for x in await self._call("find_request", [request_id])]
        if not found:
            return None
        if found[0] == "settled":
            return SettleResult(False, int(found[2]), found[3] == "1")
        kind, key, scopes_json, amount, month, note = found[:6]
        return Pending(
            key, parse_scopes(scopes_json), int(amount), month, request_id, note, kind == "provisional"
        )

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

        try:
            reply = await self._guard(read)
        except _Refused as exc:
            if self._read_refused != str(exc):  # logged once per distinct answer
                log.warning("redis ledger: the store refused a read (%s); serving the last values", exc)
            self._read_refused = str(exc)
            raise
        self._read_refused = None
        ver = int(reply[0] or 0)
        for i, month in enumerate(months):
            spent, reserved = reply[1 + 2 * i], reply[2 + 2 * i]
            if scope is None:
                self._state.store_month(month, spent, reserved, ver)
            else:
                self._state.store_totals(scope, month, Totals(int(spent or 0), int(reserved or 0)), ver)

    async def _refresh_store(self) -> None:
        current = month_of(self._wall())
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
        with contextlib.suppress(_Refused):
            await self._refresh_store()
        self._up = True
        backlog = len(self._state.journaled) + len(self._state.local) + len(self._state.pending_release)
        log.info("redis ledger available" + (f" ({backlog} local change(s) left to push)" if backlog else ""))

    async def _catch_up(self) -> None:
        """Push releases, journaled settles and reservations made while the store was down.
        Each key is pushed under its lock, so a concurrent call on that key runs before or
        after. What the store refuses is given up (logged once), never retried forever."""
        for key, r in list(self._state.pending_release.items()):
            async with self._one_at_a_time(key):
                if self._state.pending_release.get(key) is r:
                    try:
                        await self._script("release", [key])
                    except _Refused as exc:
                        log.warning(
                            "redis ledger: the store refused to release %r (%s); it expires", key, exc
                        )
                    self._state.release_done(key, r)
        await self._replay()
        for key, r in list(self._state.local.items()):
            async with self._one_at_a_time(key):
                if self._state.local.get(key) is r:
                    try:
                        await self._script("reserve", self._reserve_args(r, {}))
                    except _Refused as exc:
                        log.warning(
                            "redis ledger: the store refused the reservation %r (%s); dropped", key, exc
                        )
                        self._state.drop_local(key, r)
                        continue
                    self._state.pushed(key, r)

    def _ordered(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Per-key ordering against the catch-up after an outage; nothing to order otherwise."""
        if self._state.synced():
            return contextlib.nullcontext()
        return self._one_at_a_time(key)

    async def _replay(self) -> None:
        for entry in list(self._state.journaled.values()):
            async with self._one_at_a_time(entry.key):
                if self._state.journaled.get(entry.key) is not entry:
                    continue  # replaced meanwhile by a later settle of the same key
                try:
                    await self._settle_in_store(entry)  # idempotent: a replayed duplicate is refused
                except _Refused as exc:
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
            if self._write_error != str(exc):
                log.warning("%s: replayed entries stay in the journal file", exc)
            self._write_error = str(exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_secs)
            try:
                if not self._up and time.monotonic() >= self._retry_at:
                    await self._recover()
                elif self._up and not self._state.synced():
                    await self._catch_up()
                elif (
                    self._up
                    and not self._state.loaded(month_of(self._wall()))
                    and time.monotonic() >= self._retry_at
                ):
                    await self._refresh_store()
            except _Down:
                continue
            except _Refused:
                self._retry_at = time.monotonic() + self._breaker_secs  # not every poll
            except Exception:  # a bug must not end recovery for good
                log.exception("redis ledger background task")
