"""One contract for every Ledger (SPEC §5): memory, sqlite (a temp file) and redis (a real server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from nexus_grpc.ledger.base import Ledger, Reservation, SettleResult, Totals, month_of, previous_month
from nexus_grpc.ledger.factory import make_ledger
from nexus_grpc.testing.redis_server import RedisServer

Body = Callable[[Ledger], Awaitable[None]]
Runner = Callable[[Body], None]

MONTH = month_of(time.time())
LAST_MONTH = previous_month(MONTH)
G, T = "global", "tenant-a"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Runner:
    kind: str = request.param
    url = "redis://127.0.0.1:1/0"
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.command("FLUSHALL")
        url = server.url

    def runner(body: Body) -> None:
        async def main() -> None:
            ledger = make_ledger(kind, path=tmp_path / "ledger.db", url=url)
            await ledger.start()
            try:
                assert ledger.available
                await body(ledger)
            finally:
                await ledger.close()

        asyncio.run(main())

    return runner


def res(
    rid: str, amount: int, *, scopes: tuple[str, ...] = (G, T), month: str = MONTH, ttl: float = 300
) -> Reservation:
    return Reservation(rid, scopes, amount, month, time.time() + ttl)


def test_reserve_release_and_totals(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert ledger.totals(G, MONTH) == Totals(0, 0)
        r = res("r1", 100)
        assert await ledger.reserve(r)
        assert ledger.reservation("r1") == r
        assert ledger.totals(G, MONTH) == Totals(0, 100)
        assert ledger.totals(T, MONTH) == Totals(0, 100)
        assert await ledger.reserve(res("r2", 50, scopes=(G,)))
        assert ledger.totals(G, MONTH) == Totals(0, 150)
        await ledger.release("r1")
        assert ledger.reservation("r1") is None
        assert ledger.totals(G, MONTH) == Totals(0, 50)
        assert ledger.totals(T, MONTH) == Totals(0, 0)
        await ledger.release("r1")  # unknown ids are ignored
        await ledger.release("never")
        assert ledger.totals(G, MONTH) == Totals(0, 50)

    run(body)


def test_reserve_replaces_same_request_id(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.reserve(res("r1", 100))
        assert await ledger.reserve(res("r1", 30, scopes=(G,)))
        assert ledger.totals(G, MONTH) == Totals(0, 30)
        assert ledger.totals(T, MONTH) == Totals(0, 0)
        reservation = ledger.reservation("r1")
        assert reservation is not None and reservation.amount_nano == 30

    run(body)


def test_check_and_reserve_refuses_only_when_crossing_a_limit(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.settle("spent", [G, T], 600, MONTH, estimated=False)
        assert await ledger.reserve(res("a", 300), {G: 1000})
        # 600 spent + 300 reserved + 100 = 1000: reaching the limit is not crossing it
        assert await ledger.reserve(res("b", 100), {G: 1000, T: 0})
        assert ledger.totals(G, MONTH) == Totals(600, 400)
        assert not await ledger.reserve(res("c", 1), {G: 1000})
        assert ledger.reservation("c") is None
        assert ledger.totals(G, MONTH) == Totals(600, 400)
        assert not await ledger.reserve(res("d", 50), {G: 0, T: 1049})  # the tenant's limit
        assert ledger.totals(T, MONTH) == Totals(600, 400)
        assert await ledger.reserve(res("e", 50), {G: 0, T: 1050, "other": 1})  # 0: no limit
        assert await ledger.reserve(res("f", 10**12))  # no limits given: never refused
        assert ledger.totals(G, MONTH) == Totals(600, 450 + 10**12)
        await ledger.release("f")
        await ledger.release("b")  # room again
        assert await ledger.reserve(res("c", 1), {G: 1000})

    run(body)


def test_settle_releases_the_reservation_and_charges_every_scope(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.reserve(res("r1", 100))
        result = await ledger.settle("r1", [G, T], 70, MONTH, estimated=False)
        assert result == SettleResult(True, 70, False)
        assert ledger.reservation("r1") is None
        assert ledger.totals(G, MONTH) == Totals(70, 0)
        assert ledger.totals(T, MONTH) == Totals(70, 0)
        assert await ledger.get(T, MONTH) == Totals(70, 0)

    run(body)


def test_duplicate_settle_returns_the_first_charge(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.settle("r1", [G, T], 70, MONTH, estimated=True) == SettleResult(True, 70, True)
        again = await ledger.settle("r1", [G, T], 99, MONTH, estimated=False)
        assert again == SettleResult(False, 70, True)
        assert ledger.totals(G, MONTH) == Totals(70, 0)
        assert ledger.totals(T, MONTH) == Totals(70, 0)

    run(body)


def test_provisional_charge_is_replaced_once(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.reserve(res("p", 40))
        first = await ledger.settle("p", [G, T], 50, MONTH, estimated=True, provisional=True)
        assert first == SettleResult(True, 50, True)
        assert ledger.totals(G, MONTH) == Totals(50, 0)
        actual = await ledger.settle("p", [G, T], 80, MONTH, estimated=False)
        assert actual == SettleResult(True, 80, False)
        assert ledger.totals(G, MONTH) == Totals(80, 0)
        assert ledger.totals(T, MONTH) == Totals(80, 0)
        assert await ledger.settle("p", [G, T], 90, MONTH, estimated=False) == SettleResult(False, 80, False)
        assert ledger.totals(G, MONTH) == Totals(80, 0)
        # the replacement charges the scopes and month of the provisional charge
        await ledger.settle("q", [G], 10, LAST_MONTH, estimated=True, provisional=True)
        assert await ledger.settle("q", [G, T], 15, MONTH, estimated=False) == SettleResult(True, 15, False)
        assert ledger.totals(G, LAST_MONTH) == Totals(15, 0)
        assert ledger.totals(G, MONTH) == Totals(80, 0)

    run(body)


def test_months_are_independent(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.settle("old", [G], 5, LAST_MONTH, estimated=False)
        await ledger.settle("new", [G], 7, MONTH, estimated=False)
        assert await ledger.reserve(res("r", 3, scopes=(G,), month=LAST_MONTH), {G: 10})
        assert ledger.totals(G, LAST_MONTH) == Totals(5, 3)
        assert ledger.totals(G, MONTH) == Totals(7, 0)
        assert not await ledger.reserve(res("r2", 3, scopes=(G,), month=LAST_MONTH), {G: 10})
        assert await ledger.reserve(res("r2", 3, scopes=(G,)), {G: 10})
        assert await ledger.get(G, "2031-05") == Totals(0, 0)
        await ledger.settle("far", [G], 1, "2031-05", estimated=False)
        assert ledger.totals(G, "2031-05") == Totals(1, 0)

    run(body)


def test_expire_releases_reservations_past_their_expiry(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        now = time.time()
        assert await ledger.reserve(res("soon", 10, ttl=10))
        assert await ledger.reserve(res("later", 20, ttl=1000))
        assert await ledger.expire(now + 5) == []
        assert await ledger.expire(now + 100) == ["soon"]
        assert ledger.reservation("soon") is None
        assert ledger.reservation("later") is not None
        assert ledger.totals(G, MONTH) == Totals(0, 20)
        assert await ledger.expire(now + 100) == []
        # a late report still charges, once
        assert await ledger.settle("soon", [G], 9, MONTH, estimated=False) == SettleResult(True, 9, False)
        assert sorted(await ledger.expire(now + 2000)) == ["later"]
        assert ledger.totals(G, MONTH) == Totals(9, 0)

    run(body)


def test_get_reads_fresh_totals(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.settle("a", [G, T], 11, MONTH, estimated=False)
        assert await ledger.reserve(res("b", 4))
        assert await ledger.get(G, MONTH) == Totals(11, 4)
        assert await ledger.get("nobody", MONTH) == Totals(0, 0)
        await ledger.refresh()
        assert ledger.totals(T, MONTH) == Totals(11, 4)

    run(body)
