"""DecisionEngine: side effects of Decide (slot, reservation, rotation), outcomes and expiry."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import pytest

from nexus_grpc.config.loader import load_config_text
from nexus_grpc.config.schema import QueueConfig
from nexus_grpc.domain.decision import Decision, Queue, Reject
from nexus_grpc.domain.enums import BackendStatus, BudgetStatus, RejectCode
from nexus_grpc.domain.money import NANO
from nexus_grpc.domain.request import Outcome
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import Reservation, month_of
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.state.flights import is_decision_id
from nexus_grpc.testing.builders import (
    backend,
    budget_config,
    config,
    decide,
    engine,
    memory_ledger,
    model,
    policy,
    report,
    request,
)
from nexus_grpc.testing.clock import FakeClock, FakeWall

USD = NANO
TURBO_1K = 25_000_000  # gpt-4-turbo, 1000 in + 500 out
TTL = 10.0


def cloud_engine(
    *,
    limit_usd: float = 0.0,
    action: str = "warn",
    tenants: Mapping[str, float] | None = None,
    clock: FakeClock | None = None,
    wall: FakeWall | None = None,
    ledger: MemoryLedger | None = None,
) -> DecisionEngine:
    cfg = config(
        [
            backend("a", type="openai", priority=1, max_concurrency=1, models=("gpt-4-turbo",)),
            backend("b", type="openai", priority=20, models=("gpt-4-turbo",)),
        ],
        budget=budget_config(limit_usd, action=action, tenants=tenants),
        queue=QueueConfig(in_flight_ttl_seconds=TTL),
    )
    return engine(cfg, clock=clock or FakeClock(), wall=wall or FakeWall(), ledger=ledger)


def totals(eng: DecisionEngine, scope: str = "global", month: str | None = None) -> tuple[int, int]:
    t = memory_ledger(eng).totals(scope, month or month_of(eng.wall()))
    return t.spent_nano, t.reserved_nano


def slots(eng: DecisionEngine) -> dict[str, set[str]]:
    return {bid: set(live.in_flight) for bid, live in eng.registry.live.items()}


# --- Decide side effects ---------------------------------------------------------------------


def test_route_takes_a_slot_and_reserves_in_every_scope() -> None:
    eng = cloud_engine(limit_usd=100.0, tenants={"acme": 10.0})
    decision = decide(
        eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000, tenant="acme")
    )
    assert decision.route is not None
    assert decision.route.backend_id == "a"
    assert is_decision_id(decision.decision_id)
    assert decision.scopes == ("global", "acme")
    assert slots(eng) == {"a": {decision.decision_id}, "b": set()}
    assert totals(eng, "global") == (0, TURBO_1K)
    assert totals(eng, "acme") == (0, TURBO_1K)
    reservation = memory_ledger(eng).reservation(decision.decision_id)
    assert reservation is not None
    assert (reservation.scopes, reservation.amount_nano, reservation.month, reservation.request_id) == (
        ("global", "acme"),
        TURBO_1K,
        "2025-06",
        "r1",
    )


def test_reject_and_queue_take_nothing() -> None:
    eng = cloud_engine()
    reject = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000, needs_vision=True))
    assert isinstance(reject.verdict, Reject)
    assert reject.decision_id == ""
    assert slots(eng) == {"a": set(), "b": set()}
    assert totals(eng) == (0, 0)
    assert len(eng.flights) == 0
    eng.registry.set_state("a", BackendStatus.LOADING, eta_ms=1000)
    eng.registry.set_state("b", BackendStatus.LOADING, eta_ms=2000)
    queued = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000))
    assert isinstance(queued.verdict, Queue)
    assert queued.cost_estimate.cost_nano == TURBO_1K
    assert slots(eng) == {"a": set(), "b": set()}
    assert totals(eng) == (0, 0)
    assert len(eng.flights) == 0


@pytest.mark.parametrize("yielding", [False, True])
def test_concurrent_decides_never_overshoot_the_budget(yielding: bool) -> None:
    """20 concurrent Decides of 0.025 USD on a 0.1 USD block_all budget: exactly 4 Routes."""
    ledger = YieldingLedger() if yielding else MemoryLedger()
    cfg = config(
        [backend("cloud", type="openai", models=("gpt-4-turbo",))],
        budget=budget_config(0.1, action="block_all"),
    )
    eng = engine(cfg, ledger=ledger)

    async def burst() -> list[Decision]:
        reqs = [request("gpt-4-turbo", estimated_input_tokens=1000) for _ in range(20)]
        return list(await asyncio.gather(*(eng.decide(r) for r in reqs)))

    decisions = asyncio.run(burst())
    routes = [d for d in decisions if d.route is not None]
    assert len(routes) * TURBO_1K <= 100_000_000
    assert len(routes) == 4
    assert totals(eng) == (0, 4 * TURBO_1K)
    assert len(eng.registry.live["cloud"].in_flight) == 4
    for d in decisions:
        if d.route is None:
            assert isinstance(d.verdict, Reject)
            assert d.verdict.code == RejectCode.BUDGET_EXHAUSTED


class YieldingLedger(MemoryLedger):
    """A memory ledger whose writes yield to the event loop first, like a networked store."""

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        await asyncio.sleep(0)  # a yield, not a wait: other decides run here
        return await super().reserve(reservation, limits)


def test_decides_sharing_a_request_id_are_separate_decisions() -> None:
    """A reused request id merges nothing: each Route has its own slot, reservation and charge."""
    eng = cloud_engine(limit_usd=100.0)
    first = decide(eng, request("gpt-4-turbo", request_id="dup", estimated_input_tokens=1000))
    second = decide(eng, request("gpt-4-turbo", request_id="dup", estimated_input_tokens=2000))
    assert first.route is not None and second.route is not None
    assert first.decision_id != second.decision_id
    held = {did for ids in slots(eng).values() for did in ids}
    assert held == {first.decision_id, second.decision_id}
    assert totals(eng) == (0, 3 * TURBO_1K)  # both estimates are held


def test_concurrent_decides_sharing_a_request_id_respect_max_concurrency() -> None:
    """Five concurrent Decides with one request id on a max_concurrency = 1 backend: one Route."""
    cfg = config([backend("a", type="openai", max_concurrency=1, models=("gpt-4-turbo",))])
    eng = engine(cfg, ledger=YieldingLedger())

    async def burst() -> list[Decision]:
        reqs = [request("gpt-4-turbo", request_id="same", estimated_input_tokens=1000) for _ in range(5)]
        return list(await asyncio.gather(*(eng.decide(r) for r in reqs)))

    decisions = asyncio.run(burst())
    assert sum(d.route is not None for d in decisions) == 1
    assert sum(isinstance(d.verdict, Queue) for d in decisions) == 4
    assert len(eng.registry.live["a"].in_flight) == 1


def test_a_request_id_reused_after_its_report_is_charged_anew() -> None:
    eng = cloud_engine()
    for n in range(1, 4):
        d = decide(eng, request("gpt-4-turbo", request_id="again", estimated_input_tokens=1000))
        assert d.route is not None
        result = report(eng, Outcome("again", "a", success=True, cost_usd=1.0))
        assert result.settle.recorded
        assert result.decision_id == d.decision_id
        assert totals(eng) == (n * USD, 0)


def test_a_reservation_at_the_limit_blocks_a_second_decide_with_the_same_request_id() -> None:
    eng = cloud_engine(limit_usd=0.025, action="block_all")
    first = decide(eng, request("gpt-4-turbo", request_id="dup", estimated_input_tokens=1000))
    assert first.route is not None
    assert totals(eng) == (0, TURBO_1K)
    second = decide(eng, request("gpt-4-turbo", request_id="dup", estimated_input_tokens=1000))
    assert isinstance(second.verdict, Reject)
    assert second.verdict.code == RejectCode.BUDGET_EXHAUSTED
    assert totals(eng) == (0, TURBO_1K)


@pytest.mark.parametrize("strategy", ["smart", "round_robin", "random", "priority_only"])
def test_explain_leaves_state_untouched(strategy: str) -> None:
    cfg = config(
        [
            backend("x", type="openai", models=("gpt-4-turbo",)),
            backend("y", type="openai", models=("gpt-4-turbo",)),
        ],
        strategy=strategy,
        budget=budget_config(100.0, tenants={"acme": 10.0}),
    )
    eng = engine(cfg, seed=3)
    decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000, tenant="acme"))

    def state() -> object:
        return (
            slots(eng),
            totals(eng, "global"),
            totals(eng, "acme"),
            dict(eng.rr),
            eng.rng.getstate(),
            dict(eng.flights.open),
            dict(eng.flights.slotless),
        )

    before = state()
    for _ in range(5):
        explained = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000, tenant="acme"))
        assert explained.route is not None
    assert state() == before


# --- ReportOutcome ---------------------------------------------------------------------------


def test_report_is_idempotent_per_decision() -> None:
    eng = cloud_engine()
    d = decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    assert d.route is not None
    first = report(eng, Outcome("r1", "a", success=True, cost_usd=0.5))
    assert (first.settle.recorded, first.settle.charged_nano, first.settle.estimated) == (
        True,
        USD // 2,
        False,
    )
    second = report(eng, Outcome("r1", "a", success=True, cost_usd=9.0))
    assert (second.settle.recorded, second.settle.charged_nano) == (False, USD // 2)
    third = report(eng, Outcome("r1", "a", success=True, cost_usd=9.0, decision_id=d.decision_id))
    assert (third.settle.recorded, third.settle.charged_nano) == (False, USD // 2)
    assert totals(eng) == (USD // 2, 0)
    assert eng.registry.live["a"].stats.count == 1  # statistics counted once


def test_report_frees_the_slot_found_by_request_id() -> None:
    """The gateway retried on an alternate: the slot on "a" is freed, statistics go to "b"."""
    eng = cloud_engine()
    d = decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    assert slots(eng)["a"] == {d.decision_id}
    result = report(eng, Outcome("r1", "b", success=False, http_status=503))
    assert result.settle.recorded
    assert slots(eng) == {"a": set(), "b": set()}
    assert len(eng.flights) == 0
    assert eng.registry.live["a"].stats.count == 0
    assert (eng.registry.live["b"].stats.count, eng.registry.live["b"].stats.failures) == (1, 1)
    assert totals(eng) == (TURBO_1K, 0)  # a failure is charged the same way


@pytest.mark.parametrize(
    ("fields", "charged", "estimated"),
    [
        ({"cost_usd": 0.123456789}, 123_456_789, False),
        ({"cost_usd": 0.0}, 0, False),
        ({"cost_usd": 0.5, "input_tokens": 10, "output_tokens": 10}, USD // 2, False),  # cost wins
        ({"input_tokens": 2000, "output_tokens": 100}, 2000 * 10_000 + 100 * 30_000, False),
        ({"input_tokens": 2000}, 2000 * 10_000 + 500 * 30_000, False),  # output from the estimate
        ({"output_tokens": 100}, 1000 * 10_000 + 100 * 30_000, False),  # input from the estimate
        ({"input_tokens": 0, "output_tokens": 0}, 0, False),
        ({}, TURBO_1K, True),  # neither cost nor tokens: the decision's estimate
    ],
)
def test_charge_rules(fields: dict[str, float], charged: int, estimated: bool) -> None:
    eng = cloud_engine()
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    outcome = Outcome(
        "r1",
        "a",
        success=True,
        cost_usd=fields.get("cost_usd"),
        input_tokens=int(fields["input_tokens"]) if "input_tokens" in fields else None,
        output_tokens=int(fields["output_tokens"]) if "output_tokens" in fields else None,
    )
    result = report(eng, outcome)
    assert (result.settle.recorded, result.settle.charged_nano, result.settle.estimated) == (
        True,
        charged,
        estimated,
    )
    assert totals(eng) == (charged, 0)
    assert eng.outcomes_estimated == (1 if estimated else 0)
    assert result.budget.spent_nano == charged


def test_unknown_request_id_is_charged_to_the_reports_tenant() -> None:
    eng = cloud_engine(tenants={"acme": 10.0})
    result = report(eng, Outcome("never-decided", "b", success=True, cost_usd=1.5, tenant="acme"))
    assert (result.settle.recorded, result.settle.charged_nano) == (True, 1_500_000_000)
    assert totals(eng, "global") == (1_500_000_000, 0)
    assert totals(eng, "acme") == (1_500_000_000, 0)
    assert result.budget.scope == "acme"
    assert slots(eng) == {"a": set(), "b": set()}


def test_unknown_request_id_without_cost_or_tokens_charges_nothing_estimated() -> None:
    eng = cloud_engine()
    result = report(eng, Outcome("never-decided", "a", success=True))
    assert (result.settle.recorded, result.settle.charged_nano, result.settle.estimated) == (True, 0, True)


def test_charge_goes_to_the_scopes_recorded_at_decide() -> None:
    eng = cloud_engine(tenants={"acme": 10.0})
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000, tenant="acme"))
    report(eng, Outcome("r1", "a", success=True, cost_usd=1.0, tenant="other"))
    assert totals(eng, "acme") == (USD, 0)
    assert totals(eng, "other") == (0, 0)
    assert totals(eng, "global") == (USD, 0)


def test_charge_lands_in_the_month_the_outcome_arrives() -> None:
    wall = FakeWall()
    wall.set_utc(2025, 6, 30, 23, 59, 59)
    eng = cloud_engine(wall=wall)
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    assert totals(eng, month="2025-06") == (0, TURBO_1K)
    wall.advance(2.0)
    report(eng, Outcome("r1", "a", success=True))
    assert totals(eng, month="2025-06") == (0, 0)
    assert totals(eng, month="2025-07") == (TURBO_1K, 0)


def test_report_feeds_the_latency_ema_from_ttft_only() -> None:
    eng = cloud_engine()
    decide(eng, request("gpt-4-turbo", request_id="r1", stream=True))
    report(eng, Outcome("r1", "a", success=True, latency_ms=9000, ttft_ms=200))
    live = eng.registry.live["a"]
    assert live.latency_ema_ms == 200.0
    assert live.stats.snapshot(eng.clock())[2] == 200.0
    decide(eng, request("gpt-4-turbo", request_id="r2", stream=True))
    report(eng, Outcome("r2", "a", success=True, latency_ms=9000, ttft_ms=100))
    assert live.latency_ema_ms == (100 + 4 * 200) / 5


def test_budget_status_follows_the_charges() -> None:
    eng = cloud_engine(limit_usd=1.0, action="block_all")
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    result = report(eng, Outcome("r1", "a", success=True, cost_usd=1.0))
    assert result.budget.status == BudgetStatus.HARD_LIMIT
    verdict = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000)).verdict
    assert isinstance(verdict, Reject)
    assert verdict.code == RejectCode.BUDGET_EXHAUSTED


# --- expiry ----------------------------------------------------------------------------------


def test_in_flight_ttl_expiry_releases_slot_and_reservation() -> None:
    clock = FakeClock()
    eng = cloud_engine(clock=clock)
    d = decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    clock.advance(TTL - 0.001)
    assert asyncio.run(eng.expire_flights()) == 0
    assert slots(eng)["a"] == {d.decision_id}
    assert totals(eng) == (0, TURBO_1K)
    clock.advance(0.001)
    assert asyncio.run(eng.expire_flights()) == 1
    assert slots(eng) == {"a": set(), "b": set()}
    assert totals(eng) == (0, 0)
    assert memory_ledger(eng).reservation(d.decision_id) is None
    assert eng.flights.open == {}  # kept (without a slot) for a late report
    # "a" has capacity again
    route = decide(eng, request("gpt-4-turbo")).route
    assert route is not None and route.backend_id == "a"


def test_late_report_after_expiry_still_charges() -> None:
    clock = FakeClock()
    eng = cloud_engine(clock=clock)
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    clock.advance(TTL)
    asyncio.run(eng.expire_flights())
    result = report(eng, Outcome("r1", "a", success=True, cost_usd=0.25))
    assert (result.settle.recorded, result.settle.charged_nano) == (True, USD // 4)
    assert totals(eng) == (USD // 4, 0)


def test_late_report_after_expiry_goes_to_the_scopes_recorded_at_decide() -> None:
    """The report's tenant is used only for ids this server never decided."""
    clock = FakeClock()
    eng = cloud_engine(clock=clock, tenants={"acme": 10.0})
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000, tenant="acme"))
    clock.advance(TTL)
    assert asyncio.run(eng.expire_flights()) == 1
    report(eng, Outcome("r1", "a", success=True, cost_usd=0.25))  # the report carries no tenant
    assert totals(eng, "global") == (USD // 4, 0)
    assert totals(eng, "acme") == (USD // 4, 0)


def test_late_estimate_only_report_after_expiry_charges_the_decisions_estimate() -> None:
    """Neither cost nor tokens: the decision's estimate; a late report still charges."""
    clock = FakeClock()
    eng = cloud_engine(clock=clock)
    decide(eng, request("gpt-4-turbo", request_id="r1", estimated_input_tokens=1000))
    clock.advance(TTL)
    asyncio.run(eng.expire_flights())
    result = report(eng, Outcome("r1", "a", success=True))
    assert (result.settle.recorded, result.settle.charged_nano, result.settle.estimated) == (
        True,
        TURBO_1K,
        True,
    )


# --- ext_authz: no slot, charge at once ------------------------------------------------------


def test_decide_without_slot_then_provisional_charge_is_settled_by_the_report() -> None:
    eng = cloud_engine()
    d = asyncio.run(
        eng.decide(request("gpt-4-turbo", request_id="z1", estimated_input_tokens=1000), take_slot=False)
    )
    assert d.route is not None
    assert slots(eng) == {"a": set(), "b": set()}
    assert totals(eng) == (0, 0)
    charged = asyncio.run(eng.charge_estimate(d))
    assert (charged.recorded, charged.charged_nano, charged.estimated) == (True, TURBO_1K, True)
    assert totals(eng) == (TURBO_1K, 0)
    settled = report(eng, Outcome("z1", "a", success=True, cost_usd=0.01))
    assert (settled.settle.recorded, settled.settle.charged_nano) == (True, 10_000_000)
    assert totals(eng) == (10_000_000, 0)
    again = report(eng, Outcome("z1", "a", success=True, cost_usd=0.02))
    assert (again.settle.recorded, again.settle.charged_nano) == (False, 10_000_000)


def test_ttft_of_a_non_streamed_outcome_feeds_the_ema_but_not_the_ttft_average() -> None:
    eng = cloud_engine()
    decide(eng, request("gpt-4-turbo", request_id="r1", stream=False))
    report(eng, Outcome("r1", "a", success=True, ttft_ms=300))
    live = eng.registry.live["a"]
    assert live.latency_ema_ms == 300.0
    assert live.stats.ttft_n == 0
    decide(eng, request("gpt-4-turbo", request_id="r2", stream=True))
    report(eng, Outcome("r2", "a", success=False, ttft_ms=900))  # a failure feeds neither
    assert (live.latency_ema_ms, live.stats.ttft_n) == (300.0, 0)


# --- builders --------------------------------------------------------------------------------

BUILDER_TOML = """\
[routing]
strategy = "priority_only"
[routing.aliases]
"gpt-4" = "llama3:70b"
[routing.fallbacks]
"llama3:70b" = ["qwen2:72b"]
[[routing.policies]]
model_pattern = "{gpt-4,llama3}*"
privacy = "restricted"
min_tier = 3
max_cost_per_request = 0.5
fallback_allowed = false
[routing.budget]
monthly_limit_usd = 250.0
soft_limit_percent = 80.0
hard_limit_action = "block_cloud"
[routing.budget.tenants]
"team-a" = 20.5
[ledger]
kind = "memory"
[pricing."qwen2:72b"]
input_per_1k = 0.004
output_per_1k = 0.008
[[backends]]
id = "gpu-1"
url = "http://gpu-1.test:8000"
type = "ollama"
tier = 3
priority = 1
max_concurrency = 4
[[backends.models]]
id = "llama3:70b"
context_length = 8192
tools = true
[[backends]]
id = "cloud"
url = "http://cloud.test:8000"
type = "openai"
[[backends.models]]
id = "qwen2:72b"
vision = true
[backends.pricing]
input_per_1k = 0.001
output_per_1k = 0.002
"""


def test_builders_make_what_the_loader_makes() -> None:
    loaded = load_config_text(BUILDER_TOML, source="builders.toml")
    built = config(
        [
            backend(
                "gpu-1",
                tier=3,
                priority=1,
                max_concurrency=4,
                models=(model("llama3:70b", context_length=8192, tools=True),),
            ),
            backend(
                "cloud", type="openai", models=(model("qwen2:72b", vision=True),), pricing=(0.001, 0.002)
            ),
        ],
        strategy="priority_only",
        aliases={"gpt-4": "llama3:70b"},
        fallbacks={"llama3:70b": ["qwen2:72b"]},
        policies=[
            policy(
                "{gpt-4,llama3}*", privacy="restricted", min_tier=3, max_cost_usd=0.5, fallback_allowed=False
            )
        ],
        budget=budget_config(250.0, soft_limit_percent=80.0, action="block_cloud", tenants={"team-a": 20.5}),
        pricing={"qwen2:72b": (0.004, 0.008)},
    )
    assert built.backends == loaded.backends
    assert built.routing == loaded.routing
    assert built.pricing == loaded.pricing
    assert built.default_price == loaded.default_price
    assert (built.quality, built.queue, built.ledger.kind) == (
        loaded.quality,
        loaded.queue,
        loaded.ledger.kind,
    )


def test_engine_builder_wires_fake_time_and_a_seeded_rng() -> None:
    clock, wall = FakeClock(5.0), FakeWall()
    wall.set_utc(2024, 2, 29, 12)
    eng = engine(config([backend("a")]), clock=clock, wall=wall, seed=11)
    assert (eng.clock(), eng.wall()) == (5.0, wall.now)
    clock.advance(1.5)
    assert eng.snapshot().monotonic == 6.5
    assert eng.snapshot().month == "2024-02"
    assert isinstance(eng.ledger, MemoryLedger)
    assert eng.pipeline.stage_names[0] == "RequestAnalyzer"
    assert eng.rng.random() == random.Random(11).random()
    with pytest.raises(ValueError):
        clock.advance(-1.0)


def test_ext_authz_charge_is_settled_by_a_report_without_model_or_tenant() -> None:
    """ext_authz takes no slot and charges the estimate at once; the later report (which may carry
    only the tokens) is priced with the routed model and charged to the decision's scopes."""
    eng = cloud_engine(tenants={"acme": 10.0})
    req = request("gpt-4-turbo", request_id="z1", estimated_input_tokens=1000, tenant="acme")
    decision = asyncio.run(eng.decide(req, take_slot=False))
    assert decision.route is not None
    charged = asyncio.run(eng.charge_estimate(decision))
    assert (charged.recorded, charged.charged_nano) == (True, TURBO_1K)
    assert slots(eng) == {"a": set(), "b": set()}
    assert totals(eng, "acme") == (TURBO_1K, 0)
    result = report(eng, Outcome("z1", decision.route.backend_id, success=True, output_tokens=100))
    actual = 1000 * 10_000 + 100 * 30_000  # gpt-4-turbo prices; input from the decision's estimate
    assert (result.settle.recorded, result.settle.charged_nano, result.settle.estimated) == (
        True,
        actual,
        False,
    )
    assert totals(eng, "global") == (actual, 0)
    assert totals(eng, "acme") == (actual, 0)  # the provisional charge was replaced, not added
    again = report(eng, Outcome("z1", decision.route.backend_id, success=True, output_tokens=999))
    assert (again.settle.recorded, again.settle.charged_nano) == (False, actual)
