"""One contract for every Ledger: memory, sqlite (a temp file) and redis (a real server)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from support.redis_server import RedisServer

from nexus_grpc.ledger.base import (
    MAX_AMOUNT_NANO,
    MAX_TOTAL_NANO,
    Ledger,
    Pending,
    Reservation,
    SettleResult,
    Totals,
    month_of,
    previous_month,
)
from nexus_grpc.ledger.factory import make_ledger

Body = Callable[[Ledger], Awaitable[None]]

MONTH = month_of(time.time())
LAST_MONTH = previous_month(MONTH)
G, T = "global", "tenant-a"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Backend:
    """Opens ledgers of one kind on one store: for sqlite the same file, for redis the same
    server (each instance with its own outage journal, like a second replica)."""

    def __init__(self, kind: str, tmp_path: Path, url: str) -> None:
        self.kind, self._tmp, self._url = kind, tmp_path, url
        self._opened: list[Ledger] = []

    async def open(self) -> Ledger:
        n = len(self._opened)
        path = self._tmp / ("ledger.db" if self.kind != "redis" else f"journal-{n}.db")
        ledger = make_ledger(self.kind, path=path, url=self._url)
        await ledger.start()
        self._opened.append(ledger)
        return ledger

    async def reopen(self, ledger: Ledger) -> Ledger:
        """The same store after a restart (close, open again). A memory ledger forgets on
        restart: it is handed back as it is."""
        if self.kind == "memory":
            return ledger
        await ledger.close()
        return await self.open()

    async def close(self) -> None:
        for ledger in self._opened:
            await ledger.close()


class Runner:
    def __init__(self, kind: str, tmp_path: Path, url: str) -> None:
        self.kind, self._tmp, self._url = kind, tmp_path, url

    def __call__(self, body: Body) -> None:
        async def with_ledger(ledger: Ledger, _: Backend) -> None:
            await body(ledger)

        self.with_backend(with_ledger)

    def with_backend(self, body: Callable[[Ledger, Backend], Awaitable[None]]) -> None:
        async def main() -> None:
            backend = Backend(self.kind, self._tmp, self._url)
            try:
                ledger = await backend.open()
                assert ledger.available
                await body(ledger, backend)
                assert ledger.write_error is None
            finally:
                await backend.close()

        asyncio.run(main())


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Runner:
    kind: str = request.param
    url = "redis://127.0.0.1:1/0"
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.command("FLUSHALL")
        url = server.url
    return Runner(kind, tmp_path, url)


def res(
    key: str,
    amount: int,
    *,
    scopes: tuple[str, ...] = (G, T),
    month: str = MONTH,
    ttl: float = 300,
    request_id: str = "",
    note: str = "",
) -> Reservation:
    return Reservation(key, scopes, amount, month, time.time() + ttl, request_id, note)


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


def test_reserve_replaces_the_same_key(run: Runner) -> None:
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


# -- decision keys, request ids and notes ----------------------------------------------------------

NOTE = '{"model": "m-1", "in": 1000, "out": 500}\n' + "é€💡'\"\\" * 60 + "\x00end"  # ~600 bytes, verbatim


def test_two_keys_with_one_request_id_are_charged_separately(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.reserve(res("k1", 100, request_id="req"))
        assert await ledger.reserve(res("k2", 50, request_id="req"))
        assert ledger.totals(G, MONTH) == Totals(0, 150)
        assert await ledger.settle("k1", [G, T], 70, MONTH, estimated=False) == SettleResult(True, 70, False)
        assert ledger.totals(G, MONTH) == Totals(70, 50)
        assert await ledger.settle("k2", [G, T], 30, MONTH, estimated=True) == SettleResult(True, 30, True)
        assert ledger.totals(T, MONTH) == Totals(100, 0)
        # a repeat settle of a key is a duplicate, whatever request id it names
        again = await ledger.settle("k1", [G, T], 5, MONTH, estimated=False, request_id="req")
        assert again == SettleResult(False, 70, False)
        assert ledger.totals(G, MONTH) == Totals(100, 0)

    run(body)


def test_find_request_gives_the_oldest_unsettled_then_the_latest_settled(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.find_request("req") is None
        assert await ledger.find_request("") is None
        assert await ledger.reserve(res("k1", 100, request_id="req", note="first"))
        assert await ledger.reserve(res("other", 9, request_id="another"))
        assert await ledger.reserve(res("k2", 50, request_id="req", note="second"))
        assert await ledger.find_request("req") == Pending("k1", (G, T), 100, MONTH, "req", "first", False)
        # re-reserving a key (a re-decision) keeps its place
        assert await ledger.reserve(res("k1", 80, request_id="req", note="first"))
        assert await ledger.find_request("req") == Pending("k1", (G, T), 80, MONTH, "req", "first", False)
        assert await ledger.settle("k1", [G, T], 70, MONTH, estimated=False) == SettleResult(True, 70, False)
        assert await ledger.find_request("req") == Pending("k2", (G, T), 50, MONTH, "req", "second", False)
        assert await ledger.settle("k2", [G, T], 30, MONTH, estimated=False) == SettleResult(True, 30, False)
        assert await ledger.find_request("req") == SettleResult(False, 30, False)
        assert await ledger.reserve(res("k3", 5, request_id="req"))
        assert await ledger.find_request("req") == Pending("k3", (G, T), 5, MONTH, "req", "", False)
        await ledger.release("k3")
        assert await ledger.find_request("req") == SettleResult(False, 30, False)
        # the latest settled is the most recent decision among the settled ones
        assert await ledger.reserve(res("a", 1, request_id="r2"))
        assert await ledger.reserve(res("b", 1, request_id="r2"))
        await ledger.settle("b", [G], 40, MONTH, estimated=False)
        await ledger.settle("a", [G], 60, MONTH, estimated=False)
        assert await ledger.find_request("r2") == SettleResult(False, 40, False)
        # a settle naming the request id labels a key that held no reservation
        await ledger.settle("c", [G], 3, MONTH, estimated=True, request_id="r3")
        assert await ledger.find_request("r3") == SettleResult(False, 3, True)
        assert await ledger.find_request("another") == Pending(
            "other", (G, T), 9, MONTH, "another", "", False
        )

    run(body)


def test_find_tells_unsettled_settled_and_unknown_keys(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.find("k") is None
        assert await ledger.reserve(res("k", 100, request_id="req", note="n"))
        assert await ledger.find("k") == Pending("k", (G, T), 100, MONTH, "req", "n", False)
        await ledger.release("k")
        assert await ledger.find("k") is None
        assert await ledger.reserve(res("k", 100, request_id="req", note="n"))
        await ledger.settle("k", [G, T], 60, MONTH, estimated=True)
        assert await ledger.find("k") == SettleResult(False, 60, True)
        assert ledger.reservation("k") is None

    run(body)


def test_provisional_then_final_keeps_labels_scopes_and_month(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.reserve(res("p", 40, request_id="rp", note=NOTE))
        # the provisional charge takes the reservation's request id and note
        first = await ledger.settle("p", [G, T], 50, LAST_MONTH, estimated=True, provisional=True)
        assert first == SettleResult(True, 50, True)
        pending = Pending("p", (G, T), 50, LAST_MONTH, "rp", NOTE, True)
        assert await ledger.find("p") == pending
        assert await ledger.find_request("rp") == pending
        assert ledger.totals(G, LAST_MONTH) == Totals(50, 0)
        assert ledger.totals(G, MONTH) == Totals(0, 0)
        final = await ledger.settle("p", [G], 80, MONTH, estimated=False, note="actual")
        assert final == SettleResult(True, 80, False)
        assert ledger.totals(T, LAST_MONTH) == Totals(80, 0)
        assert ledger.totals(G, MONTH) == Totals(0, 0)
        assert await ledger.find("p") == SettleResult(False, 80, False)
        assert await ledger.find_request("rp") == SettleResult(False, 80, False)
        assert await ledger.settle("p", [G], 1, MONTH, estimated=True) == SettleResult(False, 80, False)
        # a provisional charge with its own labels, then a final settle passing none
        await ledger.settle("q", [G], 7, MONTH, estimated=True, provisional=True, request_id="rq", note="n")
        assert await ledger.find_request("rq") == Pending("q", (G,), 7, MONTH, "rq", "n", True)
        await ledger.settle("q", [G], 9, MONTH, estimated=False)
        assert await ledger.find_request("rq") == SettleResult(False, 9, False)

    run(body)


def test_note_and_request_id_round_trip_verbatim(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        rid = "req-é/💡:1"
        assert await ledger.reserve(res("k", 10, request_id=rid, note=NOTE))
        held = ledger.reservation("k")
        assert held is not None and (held.request_id, held.note) == (rid, NOTE)
        assert await ledger.find("k") == Pending("k", (G, T), 10, MONTH, rid, NOTE, False)
        assert await ledger.find_request(rid) == Pending("k", (G, T), 10, MONTH, rid, NOTE, False)
        await ledger.settle("k2", [G], 1, MONTH, estimated=True, provisional=True, request_id="r", note=NOTE)
        assert await ledger.find("k2") == Pending("k2", (G,), 1, MONTH, "r", NOTE, True)

    run(body)


def test_the_request_index_survives_a_restart_or_another_replica(run: Runner) -> None:
    async def body(ledger: Ledger, backend: Backend) -> None:
        assert await ledger.reserve(res("k1", 100, request_id="req", note="a"))
        assert await ledger.reserve(res("k2", 50, request_id="req", note="b"))
        await ledger.settle("k0", [G], 5, MONTH, estimated=False, request_id="done")
        await ledger.settle(
            "kp", [G], 7, MONTH, estimated=True, provisional=True, request_id="prov", note="p"
        )
        other = await backend.reopen(ledger)
        assert await other.find_request("req") == Pending("k1", (G, T), 100, MONTH, "req", "a", False)
        assert await other.find_request("done") == SettleResult(False, 5, False)
        assert await other.find_request("prov") == Pending("kp", (G,), 7, MONTH, "prov", "p", True)
        assert await other.settle("k1", [G, T], 90, MONTH, estimated=False) == SettleResult(True, 90, False)
        assert await other.find_request("req") == Pending("k2", (G, T), 50, MONTH, "req", "b", False)
        assert await other.settle("k0", [G], 1, MONTH, estimated=False) == SettleResult(False, 5, False)
        assert await other.find("kp") == Pending("kp", (G,), 7, MONTH, "prov", "p", True)

    run.with_backend(body)


# -- absurd inputs -----------------------------------------------------------------------------------


def test_amounts_are_clamped_and_totals_saturate(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        assert await ledger.settle("neg", [G], -500, MONTH, estimated=False) == SettleResult(True, 0, False)
        assert await ledger.reserve(res("r-neg", -(10**30)))
        reserved = ledger.reservation("r-neg")
        assert reserved is not None and reserved.amount_nano == 0
        assert await ledger.reserve(res("r-huge", 10**30))
        reserved = ledger.reservation("r-huge")
        assert reserved is not None and reserved.amount_nano == MAX_AMOUNT_NANO
        assert ledger.totals(G, MONTH) == Totals(0, MAX_AMOUNT_NANO)
        for i in range(MAX_TOTAL_NANO // MAX_AMOUNT_NANO + 4):
            result = await ledger.settle(f"k{i}", [G, T], 10**40, MONTH, estimated=False)
            assert result == SettleResult(True, MAX_AMOUNT_NANO, False)
        assert ledger.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, MAX_AMOUNT_NANO)
        assert await ledger.get(T, MONTH) == Totals(MAX_TOTAL_NANO, MAX_AMOUNT_NANO)
        assert await ledger.settle("k0", [G], 1, MONTH, estimated=False) == SettleResult(
            False, MAX_AMOUNT_NANO, False
        )
        # a limit is still enforced on a saturated scope, and releasing never goes below 0
        assert not await ledger.reserve(res("r", 1), {G: MAX_TOTAL_NANO})
        await ledger.release("r-huge")
        await ledger.release("r-neg")
        assert ledger.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, 0)

    run(body)


def test_absurd_expiries_are_accepted_and_released(run: Runner) -> None:
    async def body(ledger: Ledger) -> None:
        for key, expires_at in (
            ("far", 1e300),
            ("inf", math.inf),
            ("nan", math.nan),
            ("ttl", time.time() + 1e12),
        ):
            assert await ledger.reserve(Reservation(key, (G,), 5, MONTH, expires_at))
            held = ledger.reservation(key)
            assert held is not None and held.amount_nano == 5
        assert ledger.totals(G, MONTH) == Totals(0, 20)
        assert await ledger.expire(time.time() + 3600) == []
        await ledger.release("far")
        assert await ledger.settle("inf", [G], 3, MONTH, estimated=False) == SettleResult(True, 3, False)
        assert ledger.totals(G, MONTH) == Totals(3, 10)
        assert ledger.available

    run(body)
