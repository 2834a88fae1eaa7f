"""Outcome rules against careless and hostile callers: the accounting key is the engine's decision,
reports are priced and counted by what the engine decided, and a ledger that cannot store a change
fails the call cleanly without holding anything."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from nexus_grpc.config.schema import LimitsConfig, QualityConfig, QueueConfig
from nexus_grpc.domain.decision import Decision
from nexus_grpc.domain.money import NANO
from nexus_grpc.domain.request import Outcome
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import Reservation, SettleResult, month_of
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.testing.builders import backend, budget_config, config, decide, engine, report, request
from nexus_grpc.testing.clock import FakeClock, FakeWall

USD = NANO
TURBO_1K = 25_000_000  # gpt-4-turbo, 1000 in + 500 out


def fleet(
    *, ledger: MemoryLedger | None = None, max_charge_usd: float = 1000.0, **kw: object
) -> DecisionEngine:
    """Two cloud backends for gpt-4-turbo (a, then b as its alternate) and a free local one that
    serves another model."""
    cfg = config(
        [
            backend("a", type="openai", priority=1, models=("gpt-4-turbo",)),
            backend("b", type="openai", priority=20, models=("gpt-4-turbo",)),
            backend("local", type="ollama", models=("llama3:8b",)),
        ],
        budget=budget_config(100.0, tenants={"acme": 10.0}),
        quality=QualityConfig(min_requests=3, error_rate_threshold=0.5),
        queue=QueueConfig(in_flight_ttl_seconds=60.0),
        limits=LimitsConfig(max_charge_usd=max_charge_usd),
    )
    return engine(cfg, ledger=ledger, **kw)  # type: ignore[arg-type]


def spent(eng: DecisionEngine, scope: str = "global") -> int:
    totals = eng.ledger.totals(scope, month_of(eng.wall()))
    assert totals is not None
    return totals.spent_nano


def turbo(eng: DecisionEngine, request_id: str = "r1", tenant: str = "") -> Decision:
    d = decide(eng, request("gpt-4-turbo", request_id=request_id, estimated_input_tokens=1000, tenant=tenant))
    assert d.route is not None and d.route.backend_id == "a"
    assert d.route.alternates == ("b",)
    return d


# --- the key is the decision -----------------------------------------------------------------


def test_a_report_by_request_id_settles_the_oldest_unsettled_decision() -> None:
    eng = fleet()
    first, second = turbo(eng, "same"), turbo(eng, "same")
    r1 = report(eng, Outcome("same", "a", success=True, cost_usd=1.0))
    r2 = report(eng, Outcome("same", "a", success=True, cost_usd=2.0))
    assert (r1.decision_id, r2.decision_id) == (first.decision_id, second.decision_id)
    assert (r1.settle.recorded, r2.settle.recorded) == (True, True)
    assert spent(eng) == 3 * USD
    again = report(eng, Outcome("same", "a", success=True, cost_usd=5.0))
    assert again.settle.recorded is False  # every decision of that id is settled: a repeat
    assert spent(eng) == 3 * USD


def test_a_report_by_decision_id_settles_exactly_that_decision() -> None:
    eng = fleet()
    first, second = turbo(eng, "same"), turbo(eng, "same")
    r = report(eng, Outcome("same", "a", success=True, cost_usd=1.0, decision_id=second.decision_id))
    assert r.decision_id == second.decision_id
    assert set(eng.flights.open) == {first.decision_id}
    repeat = report(eng, Outcome("", "a", success=True, cost_usd=7.0, decision_id=second.decision_id))
    assert (repeat.settle.recorded, repeat.settle.charged_nano) == (False, USD)
    assert spent(eng) == USD


def test_concurrent_reports_of_one_request_id_settle_two_decisions() -> None:
    class Slow(MemoryLedger):
        async def settle(self, *args: object, **kw: object) -> SettleResult:
            await asyncio.sleep(0.01)  # the stand-in store's latency: the two reports overlap
            return await super().settle(*args, **kw)  # type: ignore[arg-type]

    eng = fleet(ledger=Slow())
    first, second = turbo(eng, "same"), turbo(eng, "same")

    async def both() -> list[str]:
        outcomes = [Outcome("same", "a", success=True, cost_usd=1.0) for _ in range(2)]
        results = await asyncio.gather(*(eng.report_outcome(o) for o in outcomes))
        return sorted(r.decision_id for r in results if r.settle.recorded)

    assert asyncio.run(both()) == sorted([first.decision_id, second.decision_id])
    assert spent(eng) == 2 * USD


# --- priced and counted by what the engine decided --------------------------------------------


def test_a_report_naming_an_unrelated_free_backend_is_priced_at_the_routed_one() -> None:
    eng = fleet()
    turbo(eng)
    r = report(eng, Outcome("r1", "local", "llama3:8b", success=True, input_tokens=1000, output_tokens=500))
    assert r.settle.charged_nano == TURBO_1K  # gpt-4-turbo on "a", not $0 on "local"
    assert eng.registry.live["local"].stats.count == 0  # nor counted there
    assert eng.registry.live["a"].stats.count == 0


def test_a_report_naming_an_alternate_is_priced_and_counted_there() -> None:
    cfg_engine = fleet()
    turbo(cfg_engine)
    r = report(
        cfg_engine, Outcome("r1", "b", success=False, http_status=503, input_tokens=1000, output_tokens=500)
    )
    assert r.settle.charged_nano == TURBO_1K
    assert cfg_engine.registry.live["b"].stats.failures == 1


def test_forged_failure_reports_never_open_the_breaker() -> None:
    eng = fleet()
    for n in range(6):
        r = report(eng, Outcome(f"forged-{n}", "a", success=False, http_status=500))
        assert r.settle.recorded and r.decision_id == ""
    assert eng.registry.live["a"].stats.count == 0
    assert eng.registry.live["a"].breaker_since is None
    assert eng.outcomes_unknown == 6
    assert turbo(eng, "after").route is not None


def test_forged_ttft_reports_leave_the_score_alone() -> None:
    eng = fleet()
    before = eng.explain(request("gpt-4-turbo")).scores
    for n in range(20):
        report(eng, Outcome(f"forged-{n}", "a", success=True, ttft_ms=60_000))
    assert eng.registry.live["a"].latency_ema_ms == 0.0
    assert eng.explain(request("gpt-4-turbo")).scores == before


def test_an_unknown_report_is_charged_to_its_tenant_and_deduplicated_by_request_id() -> None:
    eng = fleet()
    first = report(eng, Outcome("elsewhere", "b", success=True, cost_usd=2.0, tenant="acme"))
    assert (first.settle.recorded, first.decision_id) == (True, "")
    assert (spent(eng), spent(eng, "acme")) == (2 * USD, 2 * USD)
    repeat = report(eng, Outcome("elsewhere", "b", success=True, cost_usd=2.0, tenant="acme"))
    assert repeat.settle.recorded is False
    assert spent(eng) == 2 * USD


def test_an_unknown_report_naming_a_backend_that_does_not_serve_its_model_pays_the_table_price() -> None:
    eng = fleet()
    r = report(eng, Outcome("x", "local", "gpt-4-turbo", success=True, input_tokens=1000, output_tokens=500))
    assert r.settle.charged_nano == TURBO_1K


@pytest.mark.parametrize(("cost", "ceiling", "charged"), [(5000.0, 1000.0, 1000 * USD), (1.5, 1.0, USD)])
def test_one_report_charges_at_most_the_ceiling(cost: float, ceiling: float, charged: int) -> None:
    eng = fleet(max_charge_usd=ceiling)
    turbo(eng)
    r = report(eng, Outcome("r1", "a", success=True, cost_usd=cost))
    assert r.settle.charged_nano == charged
    assert eng.outcomes_clamped == 1


# --- decisions the ledger knows but this process does not (a restart) ------------------------


def test_after_a_restart_a_report_by_request_id_settles_the_reserved_decision() -> None:
    ledger = MemoryLedger()
    before = fleet(ledger=ledger)
    d = turbo(before, "survivor", tenant="acme")
    after = fleet(ledger=ledger)  # a new process on the same ledger
    r = report(after, Outcome("survivor", "local", success=True, output_tokens=100))
    assert r.decision_id == d.decision_id
    assert r.settle.charged_nano == 1000 * 10_000 + 100 * 30_000  # routed backend, decision's input
    assert (spent(after), spent(after, "acme")) == (r.settle.charged_nano,) * 2  # the decision's scopes
    assert ledger.reservation(d.decision_id) is None
    retried = report(after, Outcome("survivor", "a", success=True, output_tokens=100))
    assert retried.settle.recorded is False


def test_after_a_restart_a_report_by_decision_id_is_exact_and_idempotent() -> None:
    ledger = MemoryLedger()
    d = turbo(fleet(ledger=ledger))
    after = fleet(ledger=ledger)
    first = report(after, Outcome("", "a", success=True, decision_id=d.decision_id))
    assert (first.settle.recorded, first.settle.charged_nano, first.settle.estimated) == (
        True,
        TURBO_1K,
        True,
    )
    second = report(after, Outcome("", "a", success=True, decision_id=d.decision_id))
    assert second.settle.recorded is False


# --- a ledger that cannot store a change -------------------------------------------------------


class Broken(MemoryLedger):
    """A ledger whose writes fail while `broken` is set (the disk is full)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise LedgerError("sqlite ledger test.db: disk is full")

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        self._check()
        return await super().reserve(reservation, limits)

    async def settle(self, key: str, scopes: Sequence[str], *args: object, **kw: object) -> SettleResult:
        self._check()
        return await super().settle(key, scopes, *args, **kw)  # type: ignore[arg-type]


def test_a_failing_reservation_fails_the_decide_holding_nothing() -> None:
    ledger = Broken()
    eng = fleet(ledger=ledger)
    ledger.broken = True
    with pytest.raises(LedgerError):
        turbo(eng)
    assert all(not live.in_flight for live in eng.registry.live.values())
    assert len(eng.flights) == 0
    assert ledger.totals("global", month_of(eng.wall())).used_nano == 0
    ledger.broken = False
    assert turbo(eng).route is not None


def test_a_failing_settle_keeps_the_decision_for_a_retry() -> None:
    ledger = Broken()
    eng = fleet(ledger=ledger)
    d = turbo(eng)
    ledger.broken = True
    with pytest.raises(LedgerError):
        report(eng, Outcome("r1", "a", success=True, cost_usd=1.0))
    assert not eng.registry.live["a"].in_flight  # the request ended: its slot is free
    ledger.broken = False
    r = report(eng, Outcome("r1", "a", success=True, cost_usd=1.0))
    assert (r.settle.recorded, r.decision_id) == (True, d.decision_id)
    assert spent(eng) == USD


def test_envoy_outcomes_the_ledger_refused_are_retried() -> None:
    ledger = Broken()
    eng = fleet(ledger=ledger, clock=FakeClock(), wall=FakeWall())
    d = turbo(eng)
    ledger.broken = True
    eng.retry_report(Outcome("r1", "a", success=True, cost_usd=1.0, decision_id=d.decision_id))
    assert asyncio.run(eng.retry_reports()) == 0
    assert eng.reports_waiting == 1
    ledger.broken = False
    assert asyncio.run(eng.retry_reports()) == 1
    assert (eng.reports_waiting, spent(eng)) == (0, USD)
