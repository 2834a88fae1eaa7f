"""SqliteLedger: durability across restarts and kill -9, processes sharing one file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.net import async_wait_until

from nexus_grpc.ledger.base import Reservation, SettleResult, Totals, month_of
from nexus_grpc.ledger.factory import make_ledger
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.ledger.redis import RedisLedger
from nexus_grpc.ledger.sqlite import SqliteLedger

MONTH = month_of(time.time())
G, T = "global", "tenant-a"


def res(rid: str, amount: int, ttl: float = 300) -> Reservation:
    return Reservation(rid, (G, T), amount, MONTH, time.time() + ttl)


def test_factory_builds_each_kind(tmp_path: Path) -> None:
    path, url = tmp_path / "l.db", "redis://127.0.0.1:1/0"
    assert isinstance(make_ledger("memory", path=path, url=url), MemoryLedger)
    assert isinstance(make_ledger("sqlite", path=path, url=url), SqliteLedger)
    assert isinstance(make_ledger("redis", path=path, url=url), RedisLedger)
    try:
        make_ledger("etcd", path=path, url=url)
    except ValueError as exc:
        assert "etcd" in str(exc)
    else:
        raise AssertionError("unknown kind accepted")


def test_restart_keeps_spend_reservations_and_idempotency(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"

    async def first() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        assert await ledger.reserve(res("open", 40, ttl=10))
        assert await ledger.reserve(res("done", 30))
        assert await ledger.settle("done", [G, T], 25, MONTH, estimated=True) == SettleResult(True, 25, True)
        await ledger.settle("prov", [G], 5, MONTH, estimated=True, provisional=True)
        await ledger.close()

    async def second() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        assert ledger.totals(G, MONTH) == Totals(30, 40)
        assert ledger.totals(T, MONTH) == Totals(25, 40)
        assert ledger.reservation("open") is not None
        assert await ledger.settle("done", [G, T], 99, MONTH, estimated=False) == SettleResult(
            False, 25, True
        )
        assert await ledger.settle("prov", [G], 8, MONTH, estimated=False) == SettleResult(True, 8, False)
        assert await ledger.expire(time.time() + 60) == ["open"]
        assert ledger.totals(G, MONTH) == Totals(33, 0)
        await ledger.close()

    asyncio.run(first())
    asyncio.run(second())


def test_idempotency_keys_older_than_last_month_are_pruned_on_start(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    jan, feb, mar, apr = (datetime(2026, m, 15, tzinfo=UTC).timestamp() for m in (1, 2, 3, 4))
    clock = [jan]

    async def seed() -> None:
        ledger = SqliteLedger(path, wall=lambda: clock[0])
        await ledger.start()
        for wall, key in ((jan, "ancient"), (feb, "last"), (mar, "recent")):
            clock[0] = wall  # a charge remembers the month it was created in
            await ledger.settle(key, [G], 1, "2026-01", estimated=False)
        await ledger.close()

    async def restart(wall: float) -> set[str]:
        ledger = SqliteLedger(path, wall=lambda: wall)
        await ledger.start()  # prunes keys created before last month
        assert await ledger.settle("recent", [G], 5, "2026-01", estimated=False) == SettleResult(
            False, 1, False
        )
        await ledger.close()
        with sqlite3.connect(path) as conn:
            return {row[0] for row in conn.execute("SELECT decision_key FROM ledger_charges")}

    asyncio.run(seed())
    assert asyncio.run(restart(mar)) == {"last", "recent"}
    assert asyncio.run(restart(apr)) == {"recent"}


def test_two_instances_on_one_file_see_each_other_after_refresh(tmp_path: Path) -> None:
    async def body() -> None:
        a, b = SqliteLedger(tmp_path / "shared.db"), SqliteLedger(tmp_path / "shared.db")
        await a.start()
        await b.start()
        try:
            await a.settle("x", [G, T], 700, MONTH, estimated=False)
            assert await a.reserve(res("ra", 200))
            assert b.totals(G, MONTH) == Totals(0, 0)  # cached until refresh
            await b.refresh()
            assert b.totals(G, MONTH) == Totals(700, 200)
            assert b.reservation("ra") is not None
            # check-and-reserve reads the file under its write lock, whatever the cache says
            await a.settle("y", [G], 50, MONTH, estimated=False)
            assert not await b.reserve(res("rb", 100), {G: 1000})
            assert b.totals(G, MONTH) == Totals(750, 200)
            # a settle in b of a's request drops a's reservation and never charges twice
            assert await b.settle("ra", [G, T], 180, MONTH, estimated=False) == SettleResult(True, 180, False)
            assert await a.settle("ra", [G, T], 180, MONTH, estimated=False) == SettleResult(
                False, 180, False
            )
            await a.refresh()
            assert a.totals(G, MONTH) == Totals(930, 0)
            assert a.reservation("ra") is None
            await asyncio.gather(*(ab.settle("z", [G], 1, MONTH, estimated=False) for ab in (a, b, a, b)))
            assert await b.get(G, MONTH) == Totals(931, 0)
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_the_event_loop_keeps_running_during_writes(tmp_path: Path) -> None:
    async def body() -> None:
        ledger = SqliteLedger(tmp_path / "ledger.db")
        await ledger.start()
        ticks = 0
        loop_thread = threading.get_ident()
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)  # a yield, not a wait: count the loop's turns

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(ledger.settle(f"r{i}", [G], 1, MONTH, estimated=False) for i in range(50))
        )
        done.set()
        await task
        assert all(r.recorded for r in results)
        assert ticks > 50  # the loop ran other work while the commits were on the sqlite thread
        assert ledger.totals(G, MONTH) == Totals(50, 0)
        assert threading.get_ident() == loop_thread
        await ledger.close()

    asyncio.run(body())


def test_a_cancelled_caller_does_not_undo_a_settle(tmp_path: Path) -> None:
    async def body() -> None:
        ledger = SqliteLedger(tmp_path / "ledger.db")
        await ledger.start()
        assert await ledger.reserve(res("r", 5))
        task = asyncio.create_task(ledger.settle("r", [G, T], 9, MONTH, estimated=False))
        await asyncio.sleep(0)  # one turn of the loop: the settle runs to its commit on the sqlite thread
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await async_wait_until(
            lambda: ledger.totals(G, MONTH) == Totals(9, 0), "the write finishes and still updates the cache"
        )
        assert ledger.reservation("r") is None
        assert await ledger.settle("r", [G], 1, MONTH, estimated=True) == SettleResult(False, 9, False)
        await ledger.close()

    asyncio.run(body())


def test_switching_to_wal_waits_out_another_process_holding_the_lock(tmp_path: Path) -> None:
    """`serve --workers N` opens one new ledger file from N processes at once; the WAL switch
    needs an exclusive lock and sqlite answers "locked" at once instead of waiting."""
    from nexus_grpc.ledger.sqlite_thread import _enable_wal

    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=0")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _enable_wal(conn, attempts=1)
    _enable_wal(conn)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    holder.close()
