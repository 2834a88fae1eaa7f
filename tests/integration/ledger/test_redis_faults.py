"""RedisLedger against hostile or absurd inputs and a store that answers with errors, on a real
redis-server: saturating totals, bounded expiries, refused writes, refused replays, a journal that
cannot be written, request ids through an outage, an old journal file."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support.net import async_wait_until
from support.redis_server import RedisServer

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import (
    MAX_AMOUNT_NANO,
    MAX_TOTAL_NANO,
    Pending,
    Reservation,
    SettleResult,
    Totals,
    month_of,
)
from nexus_grpc.ledger.bounds import MAX_HOLD_SECS
from nexus_grpc.ledger.journal import Journal, JournalEntry
from nexus_grpc.ledger.redis import RedisLedger

pytestmark = pytest.mark.redis

MONTH = month_of(time.time())
BAD_MONTH = "2031-07"  # its spent hash is made a string: every script touching it fails (WRONGTYPE)
G, T = "global", "tenant-a"
GRACE = 40 * 86400


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def store(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield client
    client.close()


def ledger(server: RedisServer, path: Path, wall: Callable[[], float] = time.time) -> RedisLedger:
    return RedisLedger(server.url, path, wall=wall, op_timeout=0.25, breaker_secs=0.1, poll_secs=0.02)


def res(key: str, amount: int, *, request_id: str = "", note: str = "") -> Reservation:
    return Reservation(key, (G, T), amount, MONTH, time.time() + 300, request_id, note)


def journal_rows(path: Path, table: str = "redis_journal") -> list[tuple[str, ...]]:
    with sqlite3.connect(path) as conn:
        columns = "decision_key, request_id, note" + (", error" if table == "redis_journal_failed" else "")
        return [tuple(row) for row in conn.execute(f"SELECT {columns} FROM {table} ORDER BY seq")]


def test_thousands_of_max_size_charges_saturate_and_the_store_stays_available(
    server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    """Before totals saturated, enough large reports made HINCRBY overflow: the store refused
    every later settle, the breaker opened for good and each replay hit the same error."""
    path = tmp_path / "a.db"
    spent, reserved = f"nexus:spent:{MONTH}", f"nexus:reserved:{MONTH}"

    async def body() -> None:
        a = ledger(server, path)
        await a.start()
        try:
            for batch in range(40):  # 2000 settles, 50 at a time (the client pools 100 connections)
                calls = [a.settle(f"k{batch}-{i}", [G, T], 10**30, MONTH, estimated=False) for i in range(50)]
                assert set(await asyncio.gather(*calls)) == {SettleResult(True, MAX_AMOUNT_NANO, False)}
            assert a.available and a.failures == 0 and a.refusals == 0
            assert store.hget(spent, G) == store.hget(spent, T) == str(MAX_TOTAL_NANO)
            assert a.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, 0)
            assert await a.reserve(Reservation("huge", (G, T), 10**40, MONTH, time.time() + 10**12))
            assert store.hget(reserved, G) == str(MAX_AMOUNT_NANO)
            # a total stored near int64 before the cap existed: capped, no overflow
            store.hset(spent, "legacy", str(2**63 - 100))
            assert await a.settle("l", ["legacy"], 10**30, MONTH, estimated=False) == SettleResult(
                True, MAX_AMOUNT_NANO, False
            )
            assert store.hget(spent, "legacy") == str(MAX_TOTAL_NANO)
            # the same during an outage: journaled, then replayed without a single refusal
            server.freeze()
            for i in range(300):
                result = await a.settle(f"j{i}", [G, T], 10**30, MONTH, estimated=True)
                assert result == SettleResult(True, MAX_AMOUNT_NANO, True)
            assert not a.available
            assert len(journal_rows(path)) == 300
            assert a.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, MAX_AMOUNT_NANO)
            server.thaw()
            await async_wait_until(
                lambda: a.available and not journal_rows(path), "the ledger is back with its journal replayed"
            )
            assert a.replays_refused == 0 and a.refusals == 0
            assert store.hget(spent, G) == str(MAX_TOTAL_NANO)
            assert await a.settle("j7", [G], 1, MONTH, estimated=False) == SettleResult(
                False, MAX_AMOUNT_NANO, True
            )
            await a.refresh()
            assert a.totals(T, MONTH) == Totals(MAX_TOTAL_NANO, MAX_AMOUNT_NANO)
        finally:
            await a.close()

    asyncio.run(body())


def test_absurd_expiries_never_reach_the_store(
    server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    """An expiry of 1e300 (or a TTL of 10**12 s) once made PEXPIREAT fail on every retry."""
    now = time.time()
    hold_ms = (MAX_HOLD_SECS + GRACE) * 1000

    async def body() -> None:
        a = ledger(server, tmp_path / "a.db", wall=lambda: now)
        await a.start()
        try:
            absurd = {"far": 1e300, "inf": math.inf, "nan": math.nan, "ttl": now + 10**12}
            for key, expires_at in absurd.items():
                assert await a.reserve(Reservation(key, (G,), 5, MONTH, expires_at, "rq"))
            assert a.available and a.failures == 0 and a.refusals == 0
            for key in absurd:
                assert store.zscore("nexus:res_exp", key) == now + MAX_HOLD_SECS
                assert hold_ms - 60_000 < store.pttl(f"nexus:res:{key}") <= hold_ms
            assert 0 < store.pttl("nexus:rq:rq") <= hold_ms
            assert await a.expire(now + MAX_HOLD_SECS - 1) == []
            assert sorted(await a.expire(now + MAX_HOLD_SECS)) == sorted(absurd)
            assert await a.expire(math.nan) == []
            # held locally during an outage, pushed on recovery, bounded as well
            server.freeze()
            assert await a.reserve(Reservation("later", (G,), 5, MONTH, 1e300))
            assert not a.available
            server.thaw()
            await async_wait_until(
                lambda: store.zscore("nexus:res_exp", "later") is not None,
                "the reservation pushed to the store",
            )
            assert store.zscore("nexus:res_exp", "later") == now + MAX_HOLD_SECS
            assert a.refusals == 0
        finally:
            await a.close()

    asyncio.run(body())


def test_a_write_the_store_refuses_raises_and_is_not_journaled(
    server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "a.db"
    store.set(f"nexus:spent:{BAD_MONTH}", "not a hash")

    async def body() -> None:
        a = ledger(server, path)
        await a.start()
        try:
            with pytest.raises(LedgerError) as refused:
                await a.settle("k", [G], 5, BAD_MONTH, estimated=False)
            message = str(refused.value)
            assert message.startswith(
                f"redis ledger 127.0.0.1:{server.port}/0: the store refused the write ("
            )
            assert "WRONGTYPE" in message and "\n" not in message
            assert a.write_error == message
            assert a.available and a.failures == 0 and a.refusals == 1
            assert journal_rows(path) == []
            assert await a.find("k") is None
            with pytest.raises(LedgerError, match="refused"):
                await a.reserve(Reservation("r", (G,), 5, BAD_MONTH, time.time() + 60), {G: 100})
            assert a.reservation("r") is None
            # the next write that succeeds clears the error
            assert await a.settle("ok", [G], 5, MONTH, estimated=False) == SettleResult(True, 5, False)
            assert a.write_error is None
            # out of memory: the store refuses writes, and says so to check_writable
            store.config_set("maxmemory", "1")
            try:
                assert not await a.check_writable()
                error = a.write_error
                assert error is not None and "refused" in error and "maxmemory" in error
                assert a.available
            finally:
                store.config_set("maxmemory", "0")
            assert await a.check_writable()
            assert a.write_error is None
        finally:
            await a.close()

    asyncio.run(body())


def test_a_journaled_settle_the_store_refuses_is_moved_aside_and_replay_goes_on(
    server: RedisServer, store: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.db"

    async def body() -> None:
        journal = Journal(path)  # written while the store was down, by a process that ended
        await journal.open()
        await journal.put(JournalEntry("bad", (G,), BAD_MONTH, 5, False, False, 0, "rb", "nb"))
        await journal.put(JournalEntry("good", (G, T), MONTH, 7, False, False, 0, "rg", "ng"))
        await journal.put(JournalEntry("bad-too", (T,), BAD_MONTH, 9, True, False, 0, "", ""))
        await journal.close()
        store.set(f"nexus:spent:{BAD_MONTH}", "not a hash")
        a = ledger(server, path)
        with caplog.at_level(logging.ERROR, logger="nexus_grpc.ledger.redis"):
            await a.start()
            try:
                assert a.available
                assert journal_rows(path) == []
                assert a.replays_refused == 2
                failed = journal_rows(path, "redis_journal_failed")
                assert [row[:3] for row in failed] == [("bad", "rb", "nb"), ("bad-too", "", "")]
                assert all("WRONGTYPE" in row[3] for row in failed)
                assert store.hget(f"nexus:spent:{MONTH}", T) == "7"
                assert await a.find_request("rg") == SettleResult(False, 7, False)
                polled = a.polls
                await async_wait_until(
                    lambda: a.polls >= polled + 10, "ten more rounds of the background task"
                )
                assert a.replays_refused == 2  # nothing replayed or logged again
            finally:
                await a.close()
        moved = [r for r in caplog.records if "redis_journal_failed" in r.getMessage()]
        assert len(moved) == 2

    asyncio.run(body())


def test_a_journal_that_cannot_be_written_refuses_the_settle(
    server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    """PRAGMA query_only makes the journal's connection refuse writes (SQLITE_READONLY, the
    error of a read-only file): a settle during an outage is then not acknowledged."""
    path = tmp_path / "a.db"

    async def body() -> None:
        a = ledger(server, path)
        await a.start()
        journal_db = a._journal._db
        try:
            await a.settle("before", [G], 100, MONTH, estimated=False)
            await asyncio.to_thread(server.stop)
            await journal_db.run(lambda conn: conn.execute("PRAGMA query_only = ON"))
            with pytest.raises(LedgerError) as refused:
                await a.settle("k", [G], 5, MONTH, estimated=False, request_id="q")
            assert str(refused.value) == f"redis ledger journal {path}: the file is read-only"
            assert a.write_error == str(refused.value)
            assert not a.available
            assert a.totals(G, MONTH) == Totals(100, 0)  # nothing half-applied
            assert await a.find("k") is None
            assert await a.find_request("q") is None
            assert not await a.check_writable()
            await journal_db.run(lambda conn: conn.execute("PRAGMA query_only = OFF"))
            assert await a.check_writable()
            assert a.write_error is None
            assert await a.settle("k", [G], 5, MONTH, estimated=False, request_id="q") == SettleResult(
                True, 5, False
            )
            assert await a.find_request("q") == SettleResult(False, 5, False)
            await asyncio.to_thread(server.start)  # empty: "before" went with the data
            await async_wait_until(
                lambda: a.available and not journal_rows(path), "the ledger is back with its journal replayed"
            )
            assert store.hget(f"nexus:spent:{MONTH}", G) == "5"
        finally:
            await a.close()

    asyncio.run(body())


def test_request_ids_and_notes_go_through_an_outage(
    server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "a.db"

    async def body() -> None:
        a, b = ledger(server, path), ledger(server, tmp_path / "b.db")
        await a.start()
        await b.start()
        try:
            assert await a.reserve(res("k1", 40, request_id="req", note="priced"))
            assert await a.reserve(res("k2", 5, request_id="req"))
            server.freeze()
            # settled by key with no labels: the journal entry carries the reservation's
            assert await a.settle("k1", [G, T], 30, MONTH, estimated=False) == SettleResult(True, 30, False)
            assert not a.available
            assert journal_rows(path) == [("k1", "req", "priced")]
            assert await a.find("k1") == SettleResult(False, 30, False)
            assert await a.find_request("req") == Pending("k2", (G, T), 5, MONTH, "req", "", False)
            assert await a.reserve(res("k3", 7, request_id="other", note="n3"))
            assert await a.find_request("other") == Pending("k3", (G, T), 7, MONTH, "other", "n3", False)
            assert await a.find_request("nobody") is None
            server.thaw()
            await async_wait_until(
                lambda: a.available and not journal_rows(path) and store.exists("nexus:res:k3") == 1,
                "the journal replayed and the reservation pushed",
            )
            # another replica finds all of it in the store
            assert await b.find("k1") == SettleResult(False, 30, False)
            assert await b.find_request("other") == Pending("k3", (G, T), 7, MONTH, "other", "n3", False)
            assert await b.find_request("req") == Pending("k2", (G, T), 5, MONTH, "req", "", False)
            assert await b.settle("k2", [G, T], 4, MONTH, estimated=True) == SettleResult(True, 4, True)
            assert await a.find_request("req") == SettleResult(False, 4, True)
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_a_journal_of_the_previous_schema_is_replayed(
    server: RedisServer, store: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "a.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            """CREATE TABLE redis_journal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                request_id TEXT NOT NULL UNIQUE,
                scopes TEXT NOT NULL,
                month TEXT NOT NULL,
                charge_nano INTEGER NOT NULL,
                estimated INTEGER NOT NULL,
                provisional INTEGER NOT NULL,
                replaces_nano INTEGER NOT NULL
            )"""
        )
        conn.execute("INSERT INTO redis_journal VALUES (1, 'old', '[\"global\"]', ?, 11, 0, 0, 0)", (MONTH,))
    conn.close()

    async def body() -> None:
        a = ledger(server, path)
        await a.start()
        try:
            assert a.available
            assert journal_rows(path) == []
            assert store.hget(f"nexus:spent:{MONTH}", G) == "11"
            assert await a.find("old") == SettleResult(False, 11, False)
        finally:
            await a.close()

    asyncio.run(body())


def test_a_journal_that_cannot_be_opened_fails_start_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "journal.db"  # creating its folder fails (an OSError)

    async def body() -> None:
        a = RedisLedger("redis://127.0.0.1:1/0", path)
        with pytest.raises(LedgerError) as failed:
            await a.start()
        assert str(failed.value) == f"redis ledger journal {path}: a parent of the path is not a directory"
        assert not a.available
        await a.close()

    asyncio.run(body())
