"""The Redis store as the redis ledger sees it: one client with short timeouts, the Lua scripts,
and the breaker.

Two kinds of failure are told apart. A store that cannot be reached (refused connection, timeout,
a replica in failover) raises `Down` and opens the breaker: the ledger fails open and journals.
A store that answers with an error (a script error, out of memory: `ResponseError`) raises
`Refused`: the same call would be refused again, so it must neither trip the breaker nor be
journaled for a replay that would repeat forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisError, ResponseError, TryAgainError

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import Pending, Reservation, SettleResult, Totals, month_of, previous_month
from nexus_grpc.ledger.journal import JournalEntry
from nexus_grpc.ledger.local_state import KnownCharge, LocalState, parse_scopes
from nexus_grpc.ledger.redis_scripts import EXPIRE, FIND_REQUEST, PRELUDE, RELEASE, RESERVE, SETTLE

log = logging.getLogger("nexus_grpc.ledger.redis")

_PROBE_TTL_MS = 3_600_000


class Down(Exception):
    """The store did not answer; the caller takes the local path."""


class Refused(Exception):
    """The store answered with an error: retrying the same call would be refused again."""


def transient(exc: ResponseError) -> bool:
    """Errors of a store that cannot serve writes right now (a replica during failover, a
    script running too long, a cluster reconfiguring): treated like an outage."""
    if isinstance(exc, ReadOnlyError | TryAgainError | ClusterDownError):
        return True
    return str(exc).startswith(("BUSY", "MASTERDOWN", "LOADING"))


def where(url: str) -> str:
    """The store's address for messages, without credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{host}{parts.path}" if host else parts.path or url


def _first_line(text: str, limit: int = 200) -> str:
    lines = text.strip().splitlines()
    return lines[0][:limit] if lines else "no detail"


class RedisStore:
    def __init__(
        self,
        url: str,
        state: LocalState,
        *,
        wall: Callable[[], float],
        op_timeout: float,
        breaker_secs: float,
        prefix: str,
        charge_ttl_ms: int,
        grace_secs: float,
    ) -> None:
        self.url = url
        self.label = f"redis ledger {where(url)}"
        self._state = state
        self._wall = wall
        self._op_timeout = op_timeout
        self._breaker_secs = breaker_secs
        self._prefix = prefix
        self._charge_ttl_ms = charge_ttl_ms
        self._grace_secs = grace_secs
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._read_refused: str | None = None
        self.up = False
        self.retry_at = 0.0
        self.write_error: str | None = None  # also set by the ledger for journal failures
        self.failures = 0  # calls that failed to reach the store (a metric; tests count slow paths)
        self.refusals = 0  # calls the store answered with an error

    def connect(self) -> None:
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

    async def close(self) -> None:
        self.up = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def probe(self) -> None:
        """PING on fresh connections; raises Down."""
        if self._client is not None:
            # pooled connections from before the outage may lead to a store that has restarted
            # since: drop them, or each would fail once more and trip the breaker after recovery
            await self._client.connection_pool.disconnect()
        await self.guard(lambda c: c.ping())

    # -- calls -----------------------------------------------------------------------------------

    async def guard(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        if self._client is None:
            raise Down
        try:
            async with asyncio.timeout(self._op_timeout):
                return await call(self._client)
        except ResponseError as exc:
            if not transient(exc):
                self.refusals += 1
                raise Refused(_first_line(str(exc))) from exc
            self._trip(exc)
            raise Down from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)
            raise Down from exc

    def _trip(self, exc: BaseException) -> None:
        self.failures += 1
        if self.up:
            why = str(exc) or type(exc).__name__
            log.warning("redis ledger unavailable (%s): failing open, journaling settles", why)
        self.up = False
        self.retry_at = time.monotonic() + self._breaker_secs

    def refused(self, exc: Refused) -> LedgerError:
        """The LedgerError of a write the store refused (also kept as `write_error`)."""
        self.write_error = f"{self.label}: the store refused the write ({exc})"
        return LedgerError(self.write_error)

    async def _call(self, name: str, args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        return await self.guard(lambda c: script(keys=[], args=[self._prefix, *args], client=c))

    async def script(self, name: str, args: Sequence[str | int]) -> list[Any]:
        """A write script: returns its head and takes in the totals it touched; raises Down or
        Refused. A success clears `write_error`."""
        reply: list[Any] = await self._call(name, args)
        self.write_error = None
        ver, n = int(reply[0]), int(reply[1])
        head, rest = reply[2 : 2 + n], reply[2 + n :]
        for i in range(0, len(rest), 4):
            scope, month, spent, reserved = rest[i : i + 4]
            self._state.store_totals(str(scope), str(month), Totals(int(spent), int(reserved)), ver)
        return head

    async def write(self, name: str, args: Sequence[str | int]) -> list[Any]:
        """A write on behalf of a caller: a refusal raises LedgerError; raises Down."""
        try:
            return await self.script(name, args)
        except Refused as exc:
            raise self.refused(exc) from None

    def reserve_args(self, r: Reservation, limits: Mapping[str, int]) -> list[str | int]:
        now = self._wall()
        deadline = max(r.expires_at, now) + self._grace_secs  # a safety net: expire() drops it first
        ttl_ms = int((deadline - now) * 1000)
        args: list[str | int] = [r.key, str(r.amount_nano), r.month, repr(r.expires_at), int(deadline * 1000)]
        args += [ttl_ms, r.request_id, r.note, len(r.scopes), *r.scopes]
        return args + [str(limits.get(scope, 0)) for scope in r.scopes]

    async def settle(self, e: JournalEntry) -> SettleResult:
        """The settle script; raises Down, or Refused when the store answers with an error."""
        args: list[str | int] = [e.key, str(e.charge_nano), e.month, int(e.estimated), int(e.provisional)]
        args += [self._charge_ttl_ms, e.request_id, e.note, len(e.scopes), *e.scopes]
        head = await self.script("settle", args)
        recorded, charged, est, prov, month, scopes_json, rid, note = head[:8]
        if recorded == 1:
            self._state.forget(e.key)  # the script dropped its reservation
        self._state.remember(e.key, KnownCharge.parse(scopes_json, month, charged, est, prov, rid, note))
        return SettleResult(recorded == 1, int(charged), est == "1")

    async def probe_write(self) -> None:
        """The small write of `check_writable`; raises Down or Refused."""
        await self.guard(lambda c: c.set(self._prefix + "writable", repr(self._wall()), px=_PROBE_TTL_MS))

    # -- reads -----------------------------------------------------------------------------------

    async def find(self, key: str) -> Pending | SettleResult | None:
        async def read(c: aioredis.Redis) -> list[Any]:
            pipe = c.pipeline(transaction=True)
            pipe.hmget(f"{self._prefix}res:{key}", ["scopes", "amount", "month", "rid", "note"])
            pipe.hmget(
                f"{self._prefix}charge:{key}",
                ["scopes", "month", "charged", "estimated", "provisional", "rid", "note"],
            )
            return list(await pipe.execute())

        r, c = await self.guard(read)
        if r[0] is not None:
            scopes, amount, month, rid, note = r
            return Pending(key, parse_scopes(scopes), int(amount), month, rid or "", note or "", False)
        if c[0] is None:
            return None
        charge = KnownCharge.parse(*c)
        self._state.remember(key, charge)
        return charge.answer(key)

    async def find_request(self, request_id: str) -> Pending | SettleResult | None:
        found = [str(x) for x in await self._call("find_request", [request_id])]
        if not found:
            return None
        if found[0] == "settled":
            return SettleResult(False, int(found[2]), found[3] == "1")
        kind, key, scopes_json, amount, month, note = found[:6]
        scopes = parse_scopes(scopes_json)
        return Pending(key, scopes, int(amount), month, request_id, note, kind == "provisional")

    async def read_months(self, months: Sequence[str], scope: str | None = None) -> None:
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
            reply = await self.guard(read)
        except Refused as exc:
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

    async def refresh(self) -> None:
        current = month_of(self._wall())
        await self.read_months(sorted({current, previous_month(current), *self._state.months()}))
