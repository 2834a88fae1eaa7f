"""RedisLedger against a real redis-server: replicas, atomicity, outages and the journal."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from support.net import async_wait_until
from support.redis_server import NOT_FOUND, RedisServer, RedisServerError

from nexus_grpc.ledger.base import Reservation, SettleResult, Totals, month_of
from nexus_grpc.ledger.journal import Journal, JournalEntry
from nexus_grpc.ledger.redis import RedisLedger

pytestmark = pytest.mark.redis

MONTH = month_of(time.time())
G, T = "global", "tenant-a"
FAST = 1.5  # generous bound for a call during an outage (the timeout is 250 ms)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def ledger(server: RedisServer, path: Path) -> RedisLedger:
    # 0.25 s: a loaded 2-core CI machine must not trip the breaker by accident
    return RedisLedger(server.url, path, op_timeout=0.25, breaker_secs=0.1, poll_secs=0.02)


def res(rid: str, amount: int, ttl: float = 300) -> Reservation:
    return Reservation(rid, (G, T), amount, MONTH, time.time() + ttl)


def spent_in_redis(server: RedisServer, scope: str = G) -> int:
    reply = server.command("HGET", f"nexus:spent:{MONTH}", scope)
    return 0 if reply.startswith(b"$-1") else int(reply.split(b"\r\n")[1])


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM redis_journal").fetchone()[0])


async def timed(call: Awaitable[object]) -> object:
    start = time.monotonic()
    result = await call
    assert time.monotonic() - start < FAST
    return result


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisServerError, match="install Debian package redis-server"):
        RedisServer()
    assert "./dev test installs it" in NOT_FOUND


def test_replicas_share_totals_after_refresh(server: RedisServer, tmp_path: Path) -> None:
    async def body() -> None:
        a, b = ledger(server, tmp_path / "a.db"), ledger(server, tmp_path / "b.db")
        await a.start()
        await b.start()
        try:
            await a.settle("x", [G, T], 700, MONTH, estimated=False)
            assert await a.reserve(res("ra", 200))
            assert b.totals(G, MONTH) == Totals(0, 0)
            await b.refresh()
            assert b.totals(G, MONTH) == Totals(700, 200)
            assert b.totals(T, MONTH) == Totals(700, 200)
            # check-and-reserve is atomic in the store: b is refused on a's spend, and learns it
            await a.settle("y", [G], 50, MONTH, estimated=False)
            assert not await b.reserve(res("rb", 100), {G: 1000})
            assert b.totals(G, MONTH) == Totals(750, 200)
            assert await b.settle("ra", [G, T], 180, MONTH, estimated=False) == SettleResult(True, 180, False)
            await a.refresh()
            assert a.totals(G, MONTH) == Totals(930, 0)
            assert await a.expire(time.time() + 1000) == []  # b's settle dropped it in the store
            assert a.reservation("ra") is None
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_concurrent_settles_of_one_id_on_two_replicas_charge_once(
    server: RedisServer, tmp_path: Path
) -> None:
    async def body() -> None:
        a, b = ledger(server, tmp_path / "a.db"), ledger(server, tmp_path / "b.db")
        await a.start()
        await b.start()
        try:
            for i in range(20):
                calls = [r.settle(f"id-{i}", [G], 10, MONTH, estimated=False) for r in (a, b, a, b)]
                results = await asyncio.gather(*calls)
                assert sum(r.recorded for r in results) == 1
                assert {r.charged_nano for r in results} == {10}
            assert spent_in_redis(server) == 200
            await a.refresh()
            await b.refresh()
            assert a.totals(G, MONTH) == b.totals(G, MONTH) == Totals(200, 0)
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_replicas_cannot_jointly_overshoot_a_limit(server: RedisServer, tmp_path: Path) -> None:
    async def body() -> None:
        a, b = ledger(server, tmp_path / "a.db"), ledger(server, tmp_path / "b.db")
        await a.start()
        await b.start()
        try:
            await a.settle("s", [G], 40, MONTH, estimated=False)
            calls = [(a, b)[i % 2].reserve(res(f"r{i}", 10), {G: 140}) for i in range(40)]
            assert sum(await asyncio.gather(*calls)) == 10
            await a.refresh()
            assert a.totals(G, MONTH) == Totals(40, 100)
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_hang_fails_open_fast_journals_and_replays(server: RedisServer, tmp_path: Path) -> None:
    journal = tmp_path / "a.db"

    async def body() -> None:
        a = ledger(server, journal)
        await a.start()
        try:
            await a.settle("before", [G, T], 100, MONTH, estimated=False)
            assert await a.reserve(res("held", 40))
            server.freeze()  # connections open, nothing answers
            assert await timed(a.settle("during", [G, T], 25, MONTH, estimated=True)) == SettleResult(
                True, 25, True
            )
            assert not a.available
            for i in range(20):  # the breaker is open: no call waits on the store
                assert await timed(a.reserve(res(f"r{i}", 1), {G: 1}))  # fails open
                await timed(a.release(f"r{i}"))
            assert a.failures <= 2
            assert await timed(a.settle("during", [G], 99, MONTH, estimated=False)) == SettleResult(
                False, 25, True
            )
            assert await timed(a.settle("before", [G], 1, MONTH, estimated=False)) == SettleResult(
                False, 100, False
            )
            await timed(a.release("held"))
            assert a.totals(G, MONTH) == Totals(125, 0)  # the last values plus own changes
            assert await timed(a.get(T, MONTH)) == Totals(125, 0)
            await timed(a.refresh())
            assert journal_rows(journal) == 1
            server.thaw()
            await async_wait_until(lambda: a.available, "the ledger sees the store again")
            assert journal_rows(journal) == 0
            assert spent_in_redis(server) == 125
            assert spent_in_redis(server, T) == 125
            await a.refresh()
            assert a.totals(G, MONTH) == Totals(125, 0)
            assert a.totals(T, MONTH) == Totals(125, 0)
        finally:
            await a.close()

    asyncio.run(body())


def test_restart_without_data_replays_the_journal(server: RedisServer, tmp_path: Path) -> None:
    async def body() -> None:
        a = ledger(server, tmp_path / "a.db")
        await a.start()
        try:
            await a.settle("lost", [G], 1000, MONTH, estimated=False)
            await asyncio.to_thread(server.stop)  # connections refused
            assert await timed(a.reserve(res("r", 7)))
            first = await timed(a.settle("kept", [G, T], 30, MONTH, estimated=False))
            assert first == SettleResult(True, 30, False)
            prov = await timed(a.settle("p", [G], 5, MONTH, estimated=True, provisional=True))
            assert prov == SettleResult(True, 5, True)
            assert await timed(a.settle("p", [G], 8, MONTH, estimated=False)) == SettleResult(True, 8, False)
            assert not a.available
            assert a.totals(G, MONTH) == Totals(1038, 7)
            await asyncio.to_thread(server.start)  # the same port, empty (no persistence)
            await async_wait_until(lambda: a.available, "the ledger sees the store again")
            assert spent_in_redis(server) == 38  # the journaled charges; "lost" went with the data
            assert spent_in_redis(server, T) == 30
            assert a.totals(G, MONTH) == Totals(38, 7)  # re-read, with the pushed reservation
            assert await a.settle("kept", [G, T], 30, MONTH, estimated=False) == SettleResult(
                False, 30, False
            )
        finally:
            await a.close()

    asyncio.run(body())


def test_start_with_redis_down(tmp_path: Path) -> None:
    server = RedisServer()  # not started yet

    async def body() -> None:
        a = ledger(server, tmp_path / "a.db")
        await timed(a.start())
        try:
            assert not a.available
            assert a.totals(G, MONTH) is None  # unknown: the budget fails open
            assert await timed(a.reserve(res("r", 5), {G: 1}))
            assert await timed(a.settle("s", [G], 9, MONTH, estimated=False)) == SettleResult(True, 9, False)
            assert await timed(a.get(G, MONTH)) == Totals(9, 5)
            await asyncio.to_thread(server.start)
            await async_wait_until(lambda: a.available, "the ledger sees the store again")
            assert spent_in_redis(server) == 9
            assert a.totals(G, MONTH) == Totals(9, 5)
            assert a.reservation("r") is not None
        finally:
            await a.close()

    try:
        asyncio.run(body())
    finally:
        server.close()


def test_journal_survives_a_restart_and_replay_is_idempotent(server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "a.db"

    async def body() -> None:
        a = ledger(server, path)
        await a.start()
        await a.settle("applied", [G], 100, MONTH, estimated=False)
        server.freeze()
        await a.settle("journaled", [G], 20, MONTH, estimated=False)
        await a.close()  # the process ends while the store is down
        assert journal_rows(path) == 1
        # a crash between the store applying an entry and removing it: replayed again
        journal = Journal(path)
        await journal.open()
        await journal.put(JournalEntry("applied", (G,), MONTH, 100, False, False))
        await journal.close()
        server.thaw()
        b = ledger(server, path)
        await b.start()
        try:
            assert b.available
            assert journal_rows(path) == 0
            assert spent_in_redis(server) == 120
            assert b.totals(G, MONTH) == Totals(120, 0)
        finally:
            await b.close()

    asyncio.run(body())
