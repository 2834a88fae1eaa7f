"""BudgetReconciler: cost estimates, budget status, hard-limit actions, caps, tenants, an unreadable
ledger (budget unknown: nothing excluded for it). A stage that raises: test_pipeline_failure_modes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from nexus_grpc.config.schema import BudgetConfig
from nexus_grpc.domain.backend import BackendConfig
from nexus_grpc.domain.decision import Decision, Reject
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode, RejectCode
from nexus_grpc.domain.money import NANO
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import Reservation, SettleResult, Totals, month_of
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.reconcilers import (
    BudgetReconciler,
    RequestAnalyzer,
)
from nexus_grpc.testing.builders import (
    backend,
    budget_config,
    config,
    decide,
    engine,
    memory_ledger,
    policy,
    request,
)
from nexus_grpc.testing.clock import FakeWall

BUDGET = "BudgetReconciler"
USD = NANO
TURBO_1K = 25_000_000  # gpt-4-turbo, 1000 input tokens, 500 output: 0.01 + 0.015 USD


def mixed_fleet() -> list[BackendConfig]:
    return [
        backend("cloud", type="openai", priority=1, models=("gpt-4-turbo",)),
        backend("local", type="ollama", priority=90, models=("gpt-4-turbo",)),
    ]


def seed(eng: DecisionEngine, scope: str, nano: int) -> None:
    memory_ledger(eng).seed_spend(scope, month_of(eng.wall()), nano)


def budget_notes(decision: Decision) -> Mapping[str, str]:
    [stage] = [s for s in decision.stages if s.reconciler == BUDGET and s.model == decision.resolved_model]
    return stage.notes


def budget_codes(decision: Decision) -> dict[str, ExclusionCode]:
    return {e.backend_id: e.code for e in decision.exclusions if e.reconciler == BUDGET}


@pytest.mark.parametrize(
    ("spent", "status", "note"),
    [
        (0, BudgetStatus.NORMAL, "normal"),
        (749_999_999, BudgetStatus.NORMAL, "normal"),
        (750_000_000, BudgetStatus.SOFT_LIMIT, "soft_limit"),  # exactly at soft% is SOFT
        (999_999_999, BudgetStatus.SOFT_LIMIT, "soft_limit"),
        (USD, BudgetStatus.HARD_LIMIT, "hard_limit"),  # exactly at the limit is HARD
        (5_000_000_000, BudgetStatus.HARD_LIMIT, "hard_limit"),
    ],
)
def test_status_thresholds_are_inclusive(spent: int, status: BudgetStatus, note: str) -> None:
    eng = engine(config(mixed_fleet(), budget=budget_config(1.0, soft_limit_percent=75)))
    seed(eng, "global", spent)
    decision = eng.explain(request("gpt-4-turbo"))
    assert decision.budget is not None
    assert decision.budget.status == status
    assert (decision.budget.scope, decision.budget.spent_nano, decision.budget.limit_nano) == (
        "global",
        spent,
        USD,
    )
    assert budget_notes(decision)["budget_status"] == note
    assert decision.exclusions == ()  # warn (the default action) never excludes
    assert decision.route is not None


@pytest.mark.parametrize(
    ("action", "excluded", "verdict"),
    [
        ("warn", set(), {"cloud", "local"}),
        ("block_cloud", {"cloud"}, {"local"}),
        ("block_all", {"cloud", "local"}, RejectCode.BUDGET_EXHAUSTED),
    ],
)
def test_hard_limit_actions(action: str, excluded: set[str], verdict: set[str] | RejectCode) -> None:
    eng = engine(config(mixed_fleet(), budget=budget_config(10.0, action=action)))
    seed(eng, "global", 10 * USD)
    decision = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    codes = budget_codes(decision)
    assert set(codes) == excluded
    assert set(codes.values()) <= {ExclusionCode.BUDGET_HARD_LIMIT}
    if isinstance(verdict, RejectCode):
        assert isinstance(decision.verdict, Reject)
        assert decision.verdict.code == verdict
    else:
        assert decision.route is not None
        assert {decision.route.backend_id, *decision.route.alternates} == verdict
    if action == "warn":
        assert budget_notes(decision)["budget_action"] == "warn"


def test_hard_limit_suggestion_names_the_limit_and_the_reset() -> None:
    eng = engine(config(mixed_fleet(), budget=budget_config(10.0, action="block_cloud")))
    seed(eng, "global", 10 * USD)
    [exclusion] = [e for e in eng.explain(request("gpt-4-turbo")).exclusions if e.reconciler == BUDGET]
    assert exclusion.backend_id == "cloud"
    assert "10 USD" in exclusion.suggested_action
    assert "2025-07-01 00:00 UTC" in exclusion.suggested_action
    assert "scope global" in exclusion.reason


def test_zero_limit_means_no_limit() -> None:
    eng = engine(config(mixed_fleet(), budget=budget_config(0.0, action="block_all")))
    seed(eng, "global", 1_000_000 * USD)
    decision = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert decision.budget is not None
    assert decision.budget.status == BudgetStatus.NORMAL
    assert decision.exclusions == ()
    assert decision.route is not None
    assert decision.route.backend_id == "cloud"


@pytest.mark.parametrize(
    ("b", "tokens_in", "max_out", "expected_nano"),
    [
        # gpt-4-turbo, 1000 in, no max_output -> 500 out -> 0.01 + 0.015 USD
        (backend("c", type="openai", models=("gpt-4-turbo",)), 1000, 0, 25_000_000),
        # the same on a restricted backend -> 0
        (backend("c", type="ollama", models=("gpt-4-turbo",)), 1000, 0, 0),
        # max_output_tokens wins over input // 2
        (backend("c", type="openai", models=("gpt-4-turbo",)), 1000, 100, 13_000_000),
        # odd input: output estimate rounds down (1001 // 2 = 500)
        (backend("c", type="openai", models=("gpt-4-turbo",)), 1001, 0, 25_010_000),
        # backend pricing overrides zone and table, also on a restricted backend
        (backend("c", type="ollama", models=("gpt-4-turbo",), pricing=(0.001, 0.002)), 1000, 0, 2_000_000),
        # unlisted model on an open backend: [pricing.default]
        (backend("c", type="openai", models=("mystery",)), 1000, 0, 12_500_000),
    ],
)
def test_cost_estimate(b: BackendConfig, tokens_in: int, max_out: int, expected_nano: int) -> None:
    cfg = config([b], default_price=(0.005, 0.015))
    decision = engine(cfg).explain(
        request(b.models[0].id, estimated_input_tokens=tokens_in, max_output_tokens=max_out)
    )
    assert decision.route is not None
    assert decision.cost_estimate.input_tokens == tokens_in
    assert decision.cost_estimate.output_tokens == (max_out or tokens_in // 2)
    assert decision.cost_estimate.cost_nano == expected_nano


def test_unlisted_model_without_default_price_costs_nothing() -> None:
    cfg = config([backend("c", type="openai", models=("mystery",))])
    decision = engine(cfg).explain(request("mystery", estimated_input_tokens=1000))
    assert decision.cost_estimate.cost_nano == 0


def test_every_candidates_estimate_uses_its_price() -> None:
    eng = engine(config(mixed_fleet()))
    snap = eng.snapshot()
    intent = Intent(request("gpt-4-turbo", estimated_input_tokens=1000), "gpt-4-turbo")
    RequestAnalyzer().reconcile(intent, snap)
    BudgetReconciler().reconcile(intent, snap)
    assert {c.id: intent.cost(c) for c in intent.candidates} == {"cloud": TURBO_1K, "local": 0}


@pytest.mark.parametrize(
    ("spent", "cloud_blocked"),
    [
        (USD - TURBO_1K - 1, False),
        (USD - TURBO_1K, False),  # spent + estimate lands exactly on the limit: not past it
        (USD - TURBO_1K + 1, True),  # one nano-USD past the limit: blocked
    ],
)
def test_estimate_crossing_the_limit_blocks(spent: int, cloud_blocked: bool) -> None:
    eng = engine(config(mixed_fleet(), budget=budget_config(1.0, action="block_all")))
    seed(eng, "global", spent)
    decision = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert decision.budget is not None
    assert decision.budget.status == BudgetStatus.SOFT_LIMIT
    codes = budget_codes(decision)
    assert codes == ({"cloud": ExclusionCode.BUDGET_HARD_LIMIT} if cloud_blocked else {})
    route = decision.route
    assert route is not None
    # the free local backend never crosses the limit, even under block_all
    assert {route.backend_id, *route.alternates} == ({"local"} if cloud_blocked else {"cloud", "local"})


def test_reserved_spend_counts_towards_the_limit() -> None:
    eng = engine(
        config(
            [backend("cloud", type="openai", models=("gpt-4-turbo",))],
            budget=budget_config(0.05, action="block_all"),
        )
    )
    first = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000))
    second = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000))
    third = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000))
    assert first.route is not None and second.route is not None
    assert isinstance(third.verdict, Reject)
    assert third.verdict.code == RejectCode.BUDGET_EXHAUSTED
    assert third.budget is not None
    assert (third.budget.spent_nano, third.budget.reserved_nano) == (0, 2 * TURBO_1K)


@pytest.mark.parametrize(
    ("cap_usd", "excluded"),
    [
        (0.025, False),  # estimate == cap: kept (compared exactly)
        (0.025000001, False),
        (0.024999999, True),  # one nano-USD under the estimate: excluded
        (0.0, True),
    ],
)
def test_cost_cap_is_compared_exactly(cap_usd: float, excluded: bool) -> None:
    cfg = config(
        [backend("cloud", type="openai", models=("gpt-4-turbo",))],
        policies=[policy("gpt-4*", privacy="unrestricted", max_cost_usd=cap_usd)],
    )
    decision = engine(cfg).explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    if excluded:
        assert budget_codes(decision) == {"cloud": ExclusionCode.COST_CAP}
        assert isinstance(decision.verdict, Reject)
        assert decision.verdict.code == RejectCode.NO_ELIGIBLE_BACKEND
        [e] = decision.exclusions
        assert "0.025 USD" in e.reason
    else:
        assert decision.exclusions == ()
        assert decision.route is not None


def test_lowest_matching_cost_cap_applies() -> None:
    cfg = config(
        [backend("cloud", type="openai", models=("gpt-4-turbo",))],
        policies=[
            policy("gpt-*", privacy="unrestricted", max_cost_usd=1.0),
            policy("gpt-4*", privacy="unrestricted", max_cost_usd=0.02),
        ],
    )
    decision = engine(cfg).explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert budget_codes(decision) == {"cloud": ExclusionCode.COST_CAP}


def test_month_rollover_resets_spend() -> None:
    wall = FakeWall()
    wall.set_utc(2025, 6, 30, 23, 59, 59.5)
    eng = engine(config(mixed_fleet(), budget=budget_config(1.0, action="block_all")), wall=wall)
    seed(eng, "global", USD)
    june = eng.explain(request("gpt-4-turbo"))
    assert june.budget is not None
    assert (june.budget.month, june.budget.status, june.budget.spent_nano) == (
        "2025-06",
        BudgetStatus.HARD_LIMIT,
        USD,
    )
    wall.advance(0.5)  # 2025-07-01 00:00:00 UTC
    july = eng.explain(request("gpt-4-turbo"))
    assert july.budget is not None
    assert (july.budget.month, july.budget.status, july.budget.spent_nano) == (
        "2025-07",
        BudgetStatus.NORMAL,
        0,
    )
    assert july.route is not None
    # the old month stays readable
    assert memory_ledger(eng).totals("global", "2025-06").spent_nano == USD


@pytest.mark.parametrize(
    ("wall_utc", "retry_ms"),
    [
        ((2025, 6, 30, 23, 59, 0.0), 60_000),
        ((2025, 6, 15, 12, 0, 0.0), (15 * 24 + 12) * 3600 * 1000),
        ((2025, 12, 31, 23, 0, 0.0), 3600 * 1000),  # December rolls into January
    ],
)
def test_budget_exhausted_retry_after_is_time_to_month_reset(
    wall_utc: tuple[int, int, int, int, int, float], retry_ms: int
) -> None:
    wall = FakeWall()
    wall.set_utc(*wall_utc)
    eng = engine(config(mixed_fleet(), budget=budget_config(1.0, action="block_all")), wall=wall)
    seed(eng, "global", USD)
    decision = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert isinstance(decision.verdict, Reject)
    assert decision.verdict.code == RejectCode.BUDGET_EXHAUSTED
    assert decision.verdict.retry_after_ms == retry_ms
    assert decision.verdict.message == "Request rejected: 2 backends excluded by BudgetReconciler"


def test_tenant_limit_blocks_that_tenant_only() -> None:
    cfg = config(
        [backend("cloud", type="openai", models=("gpt-4-turbo",))],
        budget=budget_config(100.0, action="block_all", tenants={"acme": 1.0, "beta": 1.0}),
    )
    eng = engine(cfg)
    seed(eng, "acme", USD)
    seed(eng, "global", USD)
    acme = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000, tenant="acme"))
    assert isinstance(acme.verdict, Reject)
    assert acme.verdict.code == RejectCode.BUDGET_EXHAUSTED
    [e] = acme.exclusions
    assert "scope acme" in e.reason
    assert acme.budget is not None
    assert (acme.budget.scope, acme.budget.status) == ("acme", BudgetStatus.HARD_LIMIT)
    for tenant in ("beta", "unconfigured", ""):
        other = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000, tenant=tenant))
        assert other.route is not None, tenant
        assert other.exclusions == ()


@pytest.mark.parametrize(
    ("global_spent", "tenant", "tenant_spent", "scope", "status"),
    [
        (0, "acme", 0, "acme", BudgetStatus.NORMAL),  # tie, tenant has a limit -> tenant
        (0, "nolimit", 0, "global", BudgetStatus.NORMAL),  # tie, tenant without limit -> global
        (80 * USD, "acme", 0, "global", BudgetStatus.SOFT_LIMIT),  # global worse
        (0, "acme", 8 * USD, "acme", BudgetStatus.SOFT_LIMIT),  # tenant worse
        (80 * USD, "acme", 8 * USD, "acme", BudgetStatus.SOFT_LIMIT),  # tie at soft -> tenant
        (80 * USD, "nolimit", 99 * USD, "global", BudgetStatus.SOFT_LIMIT),  # no limit: NORMAL
        (100 * USD, "acme", 9 * USD, "global", BudgetStatus.HARD_LIMIT),
        (0, "", 0, "global", BudgetStatus.NORMAL),
    ],
)
def test_applied_budget_view_is_the_worse_scope(
    global_spent: int, tenant: str, tenant_spent: int, scope: str, status: BudgetStatus
) -> None:
    eng = engine(config(mixed_fleet(), budget=budget_config(100.0, tenants={"acme": 10.0})))
    seed(eng, "global", global_spent)
    if tenant:
        seed(eng, tenant, tenant_spent)
    decision = eng.explain(request("gpt-4-turbo", tenant=tenant))
    assert decision.budget is not None
    assert (decision.budget.scope, decision.budget.status) == (scope, status)
    assert decision.scopes == (("global", tenant) if tenant else ("global",))


def test_budget_aware_failover_to_a_restricted_fallback() -> None:
    cfg = config(
        [
            backend("cloud", type="openai", models=("gpt-4-turbo",)),
            backend("gpu", type="ollama", models=("llama3:70b",)),
        ],
        fallbacks={"gpt-4-turbo": ["llama3:70b"]},
        budget=budget_config(10.0, action="block_cloud"),
    )
    eng = engine(cfg)
    seed(eng, "global", 10 * USD)
    decision = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    route = decision.route
    assert route is not None
    assert (route.backend_id, route.model, route.fallback_used) == ("gpu", "llama3:70b", True)
    assert route.reason == "fallback:llama3:70b:only_healthy_backend"
    assert decision.resolved_model == "gpt-4-turbo"
    assert decision.cost_estimate.cost_nano == 0
    assert [(e.backend_id, e.model, e.code) for e in decision.exclusions] == [
        ("cloud", "gpt-4-turbo", ExclusionCode.BUDGET_HARD_LIMIT)
    ]


class UnreadableLedger:
    """A ledger that has never been readable: totals are unknown, writes are accepted."""

    kind = "unreadable"

    @property
    def available(self) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def totals(self, scope: str, month: str) -> Totals | None:
        return None

    def reservation(self, request_id: str) -> Reservation | None:
        return None

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        return True

    async def release(self, request_id: str) -> None:
        return None

    async def expire(self, now: float) -> list[str]:
        return []

    async def settle(
        self,
        request_id: str,
        scopes: Sequence[str],
        charge_nano: int,
        month: str,
        *,
        estimated: bool,
        provisional: bool = False,
    ) -> SettleResult:
        return SettleResult(True, charge_nano, estimated)

    async def get(self, scope: str, month: str) -> Totals:
        return Totals()

    async def refresh(self) -> None:
        return None


def test_budget_fails_open_when_the_ledger_was_never_readable() -> None:
    cfg = config(
        [
            backend("cloud", type="openai", models=("gpt-4-turbo",)),
            backend("pricey", type="openai", models=("gpt-4-turbo",), pricing=(1.0, 1.0)),
        ],
        budget=budget_config(0.000001, action="block_all", tenants={"acme": 0.000001}),
        policies=[policy("gpt-4*", privacy="unrestricted", max_cost_usd=0.03)],
    )
    eng = engine(cfg, ledger=UnreadableLedger())
    explained = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000, tenant="acme"))
    assert explained.budget is not None
    assert explained.budget.status == BudgetStatus.UNSPECIFIED
    assert budget_notes(explained)["budget_status"] == "unavailable"
    # nothing excluded for budget, but the cap still applies
    assert [(e.backend_id, e.code) for e in explained.exclusions] == [("pricey", ExclusionCode.COST_CAP)]
    decided = decide(eng, request("gpt-4-turbo", estimated_input_tokens=1000, tenant="acme"))
    assert decided.route is not None
    assert decided.route.backend_id == "cloud"


def test_budget_config_absent_is_normal() -> None:
    decision = engine(config(mixed_fleet())).explain(request("gpt-4-turbo", estimated_input_tokens=10**6))
    assert decision.budget is not None
    assert (decision.budget.status, decision.budget.limit_nano) == (BudgetStatus.NORMAL, 0)
    assert budget_notes(decision)["budget_status"] == "normal"


def test_budget_config_type_is_what_the_builder_makes() -> None:
    b = budget_config(2.5, soft_limit_percent=50, action="block_cloud", tenants={"t": 0.5})
    assert b == BudgetConfig(2_500_000_000, 50, "block_cloud", 60.0, False, {"t": 500_000_000})
