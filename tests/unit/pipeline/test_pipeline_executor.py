"""The executor's verdict: Route, Queue or Reject, fallbacks, reject codes and summaries."""

from __future__ import annotations

import pytest

from nexus_grpc.config.schema import Policy, QualityConfig, QueueConfig
from nexus_grpc.domain.decision import Decision, Exclusion, Queue, Reject, Route
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode, PrivacyZone, RejectCode
from nexus_grpc.domain.money import NANO
from nexus_grpc.domain.request import Outcome
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import month_of
from nexus_grpc.pipeline.executor import MAX_EXCLUSIONS, Pipeline, cap_exclusions, shown_exclusions
from nexus_grpc.reconcilers import default_stages
from nexus_grpc.testing.builders import (
    backend,
    budget_config,
    config,
    decide,
    engine,
    memory_ledger,
    policy,
    report,
    request,
    served_outcome,
)
from nexus_grpc.testing.clock import FakeClock

MAX_WAIT = 30_000


def queue_of(decision: Decision) -> Queue:
    assert isinstance(decision.verdict, Queue), decision.verdict
    return decision.verdict


def reject_of(decision: Decision) -> Reject:
    assert isinstance(decision.verdict, Reject), decision.verdict
    return decision.verdict


def route_of(decision: Decision) -> Route:
    assert isinstance(decision.verdict, Route), decision.verdict
    return decision.verdict


def triples(decision: Decision) -> list[tuple[str, str, ExclusionCode]]:
    return [(e.backend_id, e.model, e.code) for e in decision.exclusions]


# --- Queue -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eta_ms", "elapsed_s", "wait_ms"),
    [
        (5000, 0.0, 5000),
        (5000, 2.0, 3000),  # the ETA counts down from when it was set
        (5000, 4.0, 1000),
        (5000, 10.0, MAX_WAIT),  # ran out, still LOADING: unknown -> max_wait_ms
        (None, 0.0, MAX_WAIT),  # ETA unknown
        (90_000, 0.0, MAX_WAIT),  # clamped to max_wait_ms
    ],
)
def test_queue_for_a_loading_backend(eta_ms: int | None, elapsed_s: float, wait_ms: int) -> None:
    clock = FakeClock()
    cfg = config(
        [backend("gpu", type="openai", models=("gpt-4-turbo",))], queue=QueueConfig(max_wait_ms=MAX_WAIT)
    )
    eng = engine(cfg, clock=clock)
    eng.registry.set_state("gpu", BackendStatus.LOADING, eta_ms=eta_ms)
    clock.advance(elapsed_s)
    decision = eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert queue_of(decision) == Queue("gpt-4-turbo", "waiting_for:gpu:gpt-4-turbo", wait_ms, wait_ms)
    assert decision.cost_estimate.cost_nano == 25_000_000  # the estimate for the backend waited on
    assert triples(decision) == [("gpu", "gpt-4-turbo", ExclusionCode.LOADING)]


def test_queue_waits_for_the_soonest_backend() -> None:
    eng = engine(config([backend("slow"), backend("soon"), backend("sick")]))
    eng.registry.set_state("slow", BackendStatus.LOADING, eta_ms=8000)
    eng.registry.set_state("soon", BackendStatus.LOADING, eta_ms=3000)
    eng.registry.set_state("sick", BackendStatus.UNHEALTHY)
    assert queue_of(eng.explain(request("m"))) == Queue("m", "waiting_for:soon:m", 3000, 3000)


@pytest.mark.parametrize(
    ("latency_ms", "wait_ms"), [(0.0, MAX_WAIT), (250.7, 250), (0.4, 1), (1e9, MAX_WAIT)]
)
def test_queue_for_a_saturated_backend(latency_ms: float, wait_ms: int) -> None:
    eng = engine(config([backend("gpu", max_concurrency=1)], queue=QueueConfig(max_wait_ms=MAX_WAIT)))
    first = decide(eng, request("m"))
    assert route_of(first).backend_id == "gpu"
    eng.registry.live["gpu"].latency_ema_ms = latency_ms
    second = decide(eng, request("m"))
    assert queue_of(second) == Queue("m", "waiting_for:gpu:m", wait_ms, wait_ms)
    assert triples(second) == [("gpu", "m", ExclusionCode.SATURATED)]
    # the outcome frees the slot: the next request routes
    report(eng, Outcome(first.request_id, "gpu", success=True))
    assert route_of(decide(eng, request("m"))).backend_id == "gpu"


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        # LOADING backend excluded by privacy first
        ("privacy", ExclusionCode.PRIVACY_ZONE),
        ("tier", ExclusionCode.TIER_BELOW_MINIMUM),
        ("budget", ExclusionCode.BUDGET_HARD_LIMIT),
        ("cap", ExclusionCode.COST_CAP),
        ("quality", ExclusionCode.ERROR_RATE),
        ("capability", ExclusionCode.MISSING_CAPABILITY),
    ],
)
def test_never_queue_for_a_backend_a_policy_excludes(setup: str, code: ExclusionCode) -> None:
    policies: list[Policy] = []
    if setup == "privacy":
        policies.append(policy("gpt-4*", privacy="restricted"))
    if setup == "tier":
        policies.append(policy("gpt-4*", privacy="unrestricted", min_tier=3))
    if setup == "cap":
        policies.append(policy("gpt-4*", privacy="unrestricted", max_cost_usd=0.001))
    cfg = config(
        [backend("cloud", type="openai", tier=1, models=("gpt-4-turbo",))],
        policies=policies,
        budget=budget_config(1.0, action="block_all") if setup == "budget" else None,
        quality=QualityConfig(min_requests=1),
    )
    eng = engine(cfg)
    if setup == "budget":
        memory_ledger(eng).seed_spend(GLOBAL, month_of(eng.wall()), NANO)
    if setup == "quality":
        served_outcome(eng, "cloud", success=False)
    eng.registry.set_state("cloud", BackendStatus.LOADING, eta_ms=1000)
    decision = eng.explain(
        request("gpt-4-turbo", estimated_input_tokens=1000, needs_vision=setup == "capability")
    )
    assert not isinstance(decision.verdict, Queue)
    verdict = reject_of(decision)
    if setup == "budget":
        assert verdict.code == RejectCode.BUDGET_EXHAUSTED
    else:
        assert (verdict.code, verdict.retry_after_ms) == (RejectCode.NO_ELIGIBLE_BACKEND, 0)
    assert [e.code for e in decision.exclusions] == [code]


def test_queue_disabled_rejects_with_the_wait_as_retry_after() -> None:
    cfg = config([backend("gpu")], queue=QueueConfig(enabled=False, max_wait_ms=MAX_WAIT))
    eng = engine(cfg)
    eng.registry.set_state("gpu", BackendStatus.LOADING, eta_ms=4000)
    verdict = reject_of(eng.explain(request("m")))
    assert verdict.code == RejectCode.NO_ELIGIBLE_BACKEND
    assert verdict.retry_after_ms == 4000
    assert verdict.message == "Request rejected: 1 backend excluded by SchedulerReconciler"


def test_not_queueable_reject_has_no_retry_after() -> None:
    eng = engine(config([backend("gpu")]))
    eng.registry.set_state("gpu", BackendStatus.DRAINING)
    verdict = reject_of(eng.explain(request("m")))
    assert (verdict.code, verdict.retry_after_ms) == (RejectCode.NO_ELIGIBLE_BACKEND, 0)


# --- fallbacks -------------------------------------------------------------------------------


def fallback_engine(*, primary_status: BackendStatus, fallback_status: BackendStatus) -> DecisionEngine:
    cfg = config(
        [
            backend("p1", models=("primary",)),
            backend("f1", priority=1, models=("backup",)),
            backend("f2", priority=2, models=("backup",)),
        ],
        fallbacks={"primary": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("p1", primary_status, eta_ms=2000)
    eng.registry.set_state("f1", fallback_status, eta_ms=7000)
    eng.registry.set_state("f2", fallback_status, eta_ms=7000)
    return eng


def test_fallback_routes_with_fallback_used() -> None:
    eng = fallback_engine(primary_status=BackendStatus.UNHEALTHY, fallback_status=BackendStatus.HEALTHY)
    decision = eng.explain(request("primary"))
    route = route_of(decision)
    assert (route.backend_id, route.model, route.fallback_used) == ("f1", "backup", True)
    assert route.reason == "fallback:backup:highest_score:f1:99"
    assert route.alternates == ("f2",)
    assert (decision.requested_model, decision.resolved_model) == ("primary", "primary")
    assert triples(decision) == [("p1", "primary", ExclusionCode.UNHEALTHY)]  # listed on a Route too
    assert {s.model for s in decision.stages} == {"primary", "backup"}


def test_fallback_is_tried_when_the_primary_is_only_queueable() -> None:
    eng = fallback_engine(primary_status=BackendStatus.LOADING, fallback_status=BackendStatus.HEALTHY)
    route = route_of(eng.explain(request("primary")))
    assert (route.backend_id, route.fallback_used) == ("f1", True)


def test_queue_on_the_primary_when_fallbacks_cannot_route() -> None:
    eng = fallback_engine(primary_status=BackendStatus.LOADING, fallback_status=BackendStatus.LOADING)
    assert queue_of(eng.explain(request("primary"))) == Queue("primary", "waiting_for:p1:primary", 2000, 2000)


def test_queue_on_the_first_fallback_when_the_primary_is_not_queueable() -> None:
    eng = fallback_engine(primary_status=BackendStatus.UNHEALTHY, fallback_status=BackendStatus.LOADING)
    assert queue_of(eng.explain(request("primary"))) == Queue("backup", "waiting_for:f1:backup", 7000, 7000)


def test_fallback_exhausted_lists_every_model_tried() -> None:
    eng = fallback_engine(primary_status=BackendStatus.UNHEALTHY, fallback_status=BackendStatus.DRAINING)
    decision = eng.explain(request("primary"))
    verdict = reject_of(decision)
    assert verdict.code == RejectCode.FALLBACK_EXHAUSTED
    assert verdict.message == "Request rejected: 3 backends excluded by SchedulerReconciler"
    assert triples(decision) == [
        ("p1", "primary", ExclusionCode.UNHEALTHY),
        ("f1", "backup", ExclusionCode.DRAINING),
        ("f2", "backup", ExclusionCode.DRAINING),
    ]


def test_fallbacks_are_tried_in_order_and_the_first_route_wins() -> None:
    cfg = config(
        [backend("p", models=("primary",)), backend("x", models=("one",)), backend("y", models=("two",))],
        fallbacks={"primary": ["one", "two"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("p", BackendStatus.UNHEALTHY)
    assert route_of(eng.explain(request("primary"))).model == "one"
    eng.registry.set_state("x", BackendStatus.UNHEALTHY)
    route = route_of(eng.explain(request("primary")))
    assert (route.model, route.reason) == ("two", "fallback:two:only_healthy_backend")


def test_fallbacks_of_the_resolved_model_are_used_for_an_alias() -> None:
    cfg = config(
        [backend("p", models=("real",)), backend("f", models=("backup",))],
        aliases={"nick": "real"},
        fallbacks={"real": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("p", BackendStatus.UNHEALTHY)
    assert route_of(eng.explain(request("nick"))).backend_id == "f"


def test_fallback_when_the_primary_has_no_backend_at_all() -> None:
    cfg = config([backend("f", models=("backup",))], fallbacks={"ghost": ["backup"]})
    decision = engine(cfg).explain(request("ghost"))
    route = route_of(decision)
    assert (route.backend_id, route.model, route.fallback_used) == ("f", "backup", True)


def test_model_not_found_when_neither_primary_nor_fallbacks_are_served() -> None:
    cfg = config([backend("b", models=("m",))], fallbacks={"ghost": ["phantom"]})
    verdict = reject_of(engine(cfg).explain(request("ghost")))
    assert verdict.code == RejectCode.MODEL_NOT_FOUND
    assert verdict.message.endswith("available models: m")


def test_unserved_primary_with_an_excluded_fallback_is_fallback_exhausted() -> None:
    cfg = config([backend("f", models=("backup",))], fallbacks={"ghost": ["backup"]})
    eng = engine(cfg)
    eng.registry.set_state("f", BackendStatus.UNHEALTHY)
    assert reject_of(eng.explain(request("ghost"))).code == RejectCode.FALLBACK_EXHAUSTED


@pytest.mark.parametrize(
    ("primary_policy", "code"),
    [
        (policy("secret*", privacy="restricted"), ExclusionCode.PRIVACY_ZONE),
        (policy("secret*", privacy="unrestricted", min_tier=3), ExclusionCode.TIER_BELOW_MINIMUM),
    ],
)
def test_fallback_never_escapes_the_primarys_constraints(primary_policy: Policy, code: ExclusionCode) -> None:
    cfg = config(
        [
            backend("local", type="ollama", tier=3, models=("secret-model",)),
            backend("cloud", type="openai", tier=1, models=("gpt-4-turbo",)),
        ],
        policies=[primary_policy],
        fallbacks={"secret-model": ["gpt-4-turbo"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("local", BackendStatus.UNHEALTHY)
    decision = eng.explain(request("secret-model"))
    assert reject_of(decision).code == RejectCode.FALLBACK_EXHAUSTED
    assert ("cloud", "gpt-4-turbo", code) in triples(decision)
    assert decide(eng, request("secret-model")).route is None


def test_request_privacy_also_binds_the_fallback() -> None:
    cfg = config(
        [backend("local", models=("m",)), backend("cloud", type="openai", models=("backup",))],
        fallbacks={"m": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("local", BackendStatus.UNHEALTHY)
    decision = eng.explain(request("m", privacy=PrivacyZone.RESTRICTED))
    assert ("cloud", "backup", ExclusionCode.PRIVACY_ZONE) in triples(decision)
    assert reject_of(decision).code == RejectCode.FALLBACK_EXHAUSTED


def test_fallback_policy_applies_on_top_of_the_primarys() -> None:
    cfg = config(
        [backend("p", models=("primary",)), backend("cloud", type="openai", models=("backup",))],
        policies=[policy("backup", privacy="restricted")],
        fallbacks={"primary": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("p", BackendStatus.UNHEALTHY)
    assert ("cloud", "backup", ExclusionCode.PRIVACY_ZONE) in triples(eng.explain(request("primary")))


@pytest.mark.parametrize(
    "policies",
    [
        [policy("primary", privacy="unrestricted", fallback_allowed=False)],
        # every matching policy must allow fallbacks
        [
            policy("prim*", privacy="unrestricted"),
            policy("*ary", privacy="unrestricted", fallback_allowed=False),
        ],
    ],
)
def test_fallback_allowed_false_stops_fallbacks(
    policies: list[Policy],
) -> None:
    cfg = config(
        [backend("p", models=("primary",)), backend("f", models=("backup",))],
        policies=policies,
        fallbacks={"primary": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("p", BackendStatus.UNHEALTHY)
    decision = eng.explain(request("primary"))
    assert reject_of(decision).code == RejectCode.NO_ELIGIBLE_BACKEND
    assert triples(decision) == [("p", "primary", ExclusionCode.UNHEALTHY)]
    assert {s.model for s in decision.stages} == {"primary"}


def test_budget_exhausted_wins_over_fallback_exhausted() -> None:
    cfg = config(
        [backend("cloud", type="openai", models=("gpt-4-turbo",)), backend("gpu", models=("llama3",))],
        fallbacks={"gpt-4-turbo": ["llama3"]},
        budget=budget_config(1.0, action="block_cloud"),
    )
    eng = engine(cfg)
    memory_ledger(eng).seed_spend(GLOBAL, month_of(eng.wall()), NANO)
    eng.registry.set_state("gpu", BackendStatus.UNHEALTHY)
    verdict = reject_of(eng.explain(request("gpt-4-turbo", estimated_input_tokens=1000)))
    assert verdict.code == RejectCode.BUDGET_EXHAUSTED
    assert verdict.message == "Request rejected: 2 backends excluded by BudgetReconciler, SchedulerReconciler"
    assert verdict.retry_after_ms > 0


# --- summary and exclusions --------------------------------------------------------------------


def test_summary_counts_distinct_backends_and_lists_stages_in_pipeline_order() -> None:
    cfg = config(
        [
            backend("sick", tier=2, models=("m", "backup")),
            backend("cloud", type="openai", models=("m",)),
            backend("low", tier=1, models=("m",)),
        ],
        policies=[policy("m", privacy="restricted")],
        fallbacks={"m": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("sick", BackendStatus.UNHEALTHY)
    decision = eng.explain(request("m", min_tier=2))
    verdict = reject_of(decision)
    # "sick" is excluded twice (primary and fallback) but counted once
    assert verdict.message == (
        "Request rejected: 3 backends excluded by PrivacyReconciler, TierReconciler, SchedulerReconciler"
    )
    assert verdict.code == RejectCode.FALLBACK_EXHAUSTED
    assert len(decision.exclusions) == 4


def test_route_lists_the_exclusions_made_on_the_way() -> None:
    cfg = config(
        [backend("cloud", type="openai"), backend("gpu", priority=90), backend("down", priority=1)],
        policies=[policy("m", privacy="restricted")],
    )
    eng = engine(cfg)
    eng.registry.set_state("down", BackendStatus.UNHEALTHY)
    decision = decide(eng, request("m"))
    assert route_of(decision).backend_id == "gpu"
    assert [(e.backend_id, e.reconciler, e.code) for e in decision.exclusions] == [
        ("cloud", "PrivacyReconciler", ExclusionCode.PRIVACY_ZONE),
        ("down", "SchedulerReconciler", ExclusionCode.UNHEALTHY),
    ]


def _exclusions(n: int) -> tuple[Exclusion, ...]:
    return tuple(
        Exclusion(f"b{i}", "m", "SchedulerReconciler", ExclusionCode.UNHEALTHY, "down", "fix it")
        for i in range(n)
    )


M = MAX_EXCLUSIONS


@pytest.mark.parametrize(
    ("n", "explain", "kept", "omitted"),
    [
        (0, False, 0, 0),
        (M, False, M, 0),
        (M + 1, False, M, 1),
        (M + 70, False, M, 70),
        (M + 70, True, M + 70, 0),
    ],
)
def test_cap_exclusions_keeps_the_first_max_exclusions_unless_explaining(
    n: int, explain: bool, kept: int, omitted: int
) -> None:
    exclusions = _exclusions(n)
    capped, left_off = cap_exclusions(exclusions, explain)
    assert (len(capped), left_off) == (kept, omitted)
    assert capped == exclusions[:kept]


@pytest.mark.parametrize("indexed", [True, False])
def test_a_decision_over_the_cap_carries_max_exclusions_and_counts_the_rest(indexed: bool) -> None:
    n = MAX_EXCLUSIONS + 10
    eng = engine(config([backend(f"b{i:03d}") for i in range(n)]), indexed=indexed)
    for i in range(n):
        eng.registry.set_state(f"b{i:03d}", BackendStatus.UNHEALTHY)
    decision = decide(eng, request("m"))
    assert reject_of(decision).message == f"Request rejected: {n} backends excluded by SchedulerReconciler"
    shown, omitted = shown_exclusions(decision, explain=False)
    assert [e.backend_id for e in shown] == [f"b{i:03d}" for i in range(MAX_EXCLUSIONS)]
    assert omitted == n - MAX_EXCLUSIONS  # what a response says it left off


def test_an_explained_decision_carries_every_exclusion() -> None:
    n = MAX_EXCLUSIONS + 10
    eng = engine(config([backend(f"b{i:03d}") for i in range(n)]))
    for i in range(n):
        eng.registry.set_state(f"b{i:03d}", BackendStatus.UNHEALTHY)
    shown, omitted = shown_exclusions(eng.explain(request("m")), explain=True)
    assert ([e.backend_id for e in shown], omitted) == ([f"b{i:03d}" for i in range(n)], 0)


def test_pipeline_stage_names_and_counters() -> None:
    pipeline = Pipeline(default_stages())
    assert pipeline.stage_names == (
        "RequestAnalyzer",
        "PrivacyReconciler",
        "BudgetReconciler",
        "TierReconciler",
        "QualityReconciler",
        "SchedulerReconciler",
    )
    eng = engine(
        config(
            [backend("p", models=("primary",)), backend("f", models=("backup",))],
            fallbacks={"primary": ["backup"]},
        )
    )
    eng.registry.set_state("p", BackendStatus.UNHEALTHY)
    eng.explain(request("primary"))
    assert set(eng.pipeline.stage_runs.values()) == {2}  # primary + one fallback run
