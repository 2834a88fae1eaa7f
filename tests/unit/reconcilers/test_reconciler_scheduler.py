"""SchedulerReconciler: static checks, health and saturation, then the strategy's pick."""

from __future__ import annotations

import random

import pytest

from nexus_grpc.config.schema import QualityConfig
from nexus_grpc.domain.backend import ModelSpec
from nexus_grpc.domain.decision import Decision, Reject
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode, PrivacyZone, RejectCode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.money import Price
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import month_of
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate
from nexus_grpc.reconcilers import RequestAnalyzer, SchedulerReconciler
from nexus_grpc.testing.builders import (
    backend,
    budget_config,
    config,
    decide,
    engine,
    memory_ledger,
    model,
    request,
)
from nexus_grpc.testing.clock import FakeClock

SCHEDULER = "SchedulerReconciler"


def scheduler_codes(decision: Decision) -> dict[str, ExclusionCode]:
    return {e.backend_id: e.code for e in decision.exclusions if e.reconciler == SCHEDULER}


def scores(decision: Decision) -> dict[str, int]:
    return {s.backend_id: s.score for s in decision.scores}


def winner(decision: Decision) -> str:
    assert decision.route is not None, decision.verdict
    return decision.route.backend_id


# --- health and saturation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (BackendStatus.UNHEALTHY, ExclusionCode.UNHEALTHY, "backend b is unhealthy: probe failed"),
        (BackendStatus.UNKNOWN, ExclusionCode.UNHEALTHY, "backend b is of unknown health: probe failed"),
        (BackendStatus.DRAINING, ExclusionCode.DRAINING, "backend b is draining: probe failed"),
        (BackendStatus.LOADING, ExclusionCode.LOADING, "backend b is loading model 'm', 40% loaded"),
    ],
)
def test_health_status_exclusions(status: BackendStatus, code: ExclusionCode, reason: str) -> None:
    eng = engine(config([backend("a", priority=90), backend("b", priority=1)]))
    eng.registry.set_state("b", status, eta_ms=5000, progress=40, reason="probe failed")
    decision = eng.explain(request("m"))
    assert winner(decision) == "a"
    [e] = decision.exclusions
    assert (e.backend_id, e.code, e.reconciler, e.reason) == ("b", code, SCHEDULER, reason)
    assert e.suggested_action


def test_loading_suggestion_carries_the_remaining_eta() -> None:
    clock = FakeClock()
    eng = engine(config([backend("a"), backend("b")]), clock=clock)
    eng.registry.set_state("b", BackendStatus.LOADING, eta_ms=5000)
    eng.registry.set_state("a", BackendStatus.LOADING)
    clock.advance(2.0)
    reasons = {e.backend_id: e for e in eng.explain(request("m")).exclusions}
    assert reasons["b"].suggested_action == "retry in about 3000 ms"
    assert reasons["a"].suggested_action == "retry when loading completes (ETA unknown)"
    assert reasons["b"].reason == "backend b is loading model 'm'"


def test_saturated_when_in_flight_reaches_max_concurrency() -> None:
    eng = engine(config([backend("a", priority=1, max_concurrency=2), backend("b", priority=90)]))
    live = eng.registry.live["a"]
    live.in_flight = {"r1": 1e12}
    assert winner(eng.explain(request("m"))) == "a"
    live.in_flight = {"r1": 1e12, "r2": 1e12}
    decision = eng.explain(request("m"))
    assert winner(decision) == "b"
    assert scheduler_codes(decision) == {"a": ExclusionCode.SATURATED}


def test_zero_max_concurrency_is_unlimited() -> None:
    eng = engine(config([backend("a", max_concurrency=0)]))
    eng.registry.live["a"].in_flight = {f"r{i}": 1e12 for i in range(500)}
    assert winner(eng.explain(request("m"))) == "a"


# --- static checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vision", "tools", "json_mode", "missing"),
    [
        (True, False, False, "vision"),
        (False, True, False, "tools"),
        (False, False, True, "json_mode"),
        (True, True, True, "vision, tools, json_mode"),
        (True, False, True, "vision, json_mode"),
    ],
)
def test_missing_capabilities_are_all_listed(
    vision: bool, tools: bool, json_mode: bool, missing: str
) -> None:
    cfg = config(
        [
            backend("plain", priority=1, models=(model("m"),)),
            backend("full", priority=90, models=(model("m", vision=True, tools=True, json_mode=True),)),
        ]
    )
    decision = engine(cfg).explain(
        request("m", needs_vision=vision, needs_tools=tools, needs_json_mode=json_mode)
    )
    assert winner(decision) == "full"
    [e] = decision.exclusions
    assert e.code == ExclusionCode.MISSING_CAPABILITY
    assert e.reason == f"backend plain does not offer {missing} for model 'm'"


def test_declared_capabilities_pass() -> None:
    cfg = config([backend("a", models=(model("m", vision=True, tools=True),))])
    decision = engine(cfg).explain(request("m", needs_vision=True, needs_tools=True))
    assert winner(decision) == "a"
    assert decision.exclusions == ()


@pytest.mark.parametrize(
    ("tokens_in", "max_out", "excluded"),
    [
        (700, 300, False),  # exactly the context length
        (700, 301, True),
        (1000, 0, True),  # 1000 + 500 estimated output
        (666, 0, False),  # 666 + 333 = 999
    ],
)
def test_context_length(tokens_in: int, max_out: int, excluded: bool) -> None:
    cfg = config(
        [
            backend("short", priority=1, models=(model("m", context_length=1000),)),
            backend("long", priority=90),
        ]
    )
    decision = engine(cfg).explain(request("m", estimated_input_tokens=tokens_in, max_output_tokens=max_out))
    assert scheduler_codes(decision) == ({"short": ExclusionCode.CONTEXT_TOO_LONG} if excluded else {})
    assert winner(decision) == ("long" if excluded else "short")


def test_static_checks_come_before_status() -> None:
    """One reason per backend, and a backend that could never serve is never waited for."""
    cfg = config(
        [
            backend("cap", models=(model("m"),)),
            backend("ctx", models=(model("m", context_length=10, vision=True),)),
        ]
    )
    eng = engine(cfg)
    eng.registry.set_state("cap", BackendStatus.LOADING, eta_ms=100)
    eng.registry.set_state("ctx", BackendStatus.LOADING, eta_ms=100)
    decision = eng.explain(request("m", needs_vision=True, estimated_input_tokens=100))
    assert [(e.backend_id, e.code) for e in decision.exclusions] == [
        ("cap", ExclusionCode.MISSING_CAPABILITY),
        ("ctx", ExclusionCode.CONTEXT_TOO_LONG),
    ]
    assert isinstance(decision.verdict, Reject)
    assert decision.verdict.code == RejectCode.NO_ELIGIBLE_BACKEND


def test_status_comes_before_saturation() -> None:
    eng = engine(config([backend("a", max_concurrency=1)]))
    eng.registry.live["a"].in_flight = {"r": 1e12}
    eng.registry.set_state("a", BackendStatus.UNHEALTHY)
    assert scheduler_codes(eng.explain(request("m"))) == {"a": ExclusionCode.UNHEALTHY}


def test_candidate_missing_from_registry_is_excluded() -> None:
    eng = engine(config([backend("a")]))
    snap = eng.snapshot()
    intent = Intent(request("m"), "m")
    RequestAnalyzer().reconcile(intent, snap)
    ghost = Candidate(
        backend("ghost"), ModelSpec("m"), Price(0, 0), LiveBackend(BackendStatus.HEALTHY, 60), 5
    )
    intent.candidates = [ghost, *intent.candidates]
    intent.static = None  # a hand-made candidate list, not a memoized static set
    SchedulerReconciler().reconcile(intent, snap)
    assert [(e.backend_id, e.code) for e in intent.exclusions] == [("ghost", ExclusionCode.NOT_IN_REGISTRY)]
    assert intent.winner is not None
    assert intent.winner.id == "a"


# --- smart -----------------------------------------------------------------------------------


def set_load(eng: DecisionEngine, backend_id: str, in_flight: int, latency_ms: float) -> None:
    live = eng.registry.live[backend_id]
    live.in_flight = {f"{backend_id}-{i}": 1e12 for i in range(in_flight)}
    live.latency_ema_ms = latency_ms


def test_smart_worked_examples() -> None:
    cfg = config([backend("ex98", priority=1), backend("ex70", priority=10), backend("ex99", priority=1)])
    eng = engine(cfg)
    set_load(eng, "ex98", 0, 50.0)
    set_load(eng, "ex70", 50, 500.0)
    set_load(eng, "ex99", 0, 0.0)
    decision = eng.explain(request("m"))
    assert scores(decision) == {"ex98": 98, "ex70": 70, "ex99": 99}
    parts = {s.backend_id: (s.priority_score, s.load_score, s.latency_score) for s in decision.scores}
    assert parts == {"ex98": (99, 100, 95), "ex70": (90, 50, 50), "ex99": (99, 100, 100)}
    route = decision.route
    assert route is not None
    assert (route.backend_id, route.score, route.reason) == ("ex99", 99, "highest_score:ex99:99")
    assert route.alternates == ("ex98", "ex70")


@pytest.mark.parametrize(
    ("latency_ms", "latency_score"),
    [(0.0, 100), (9.99, 100), (10.0, 99), (59.9, 95), (999.0, 1), (1000.0, 0), (50_000.0, 0)],
)
def test_latency_score_floors_the_ema(latency_ms: float, latency_score: int) -> None:
    eng = engine(config([backend("a")]))
    set_load(eng, "a", 0, latency_ms)
    [s] = eng.explain(request("m")).scores
    assert s.latency_score == latency_score


def test_priority_and_load_scores_are_clamped() -> None:
    eng = engine(config([backend("a", priority=100)]))
    set_load(eng, "a", 150, 0.0)
    [s] = eng.explain(request("m")).scores
    assert (s.priority_score, s.load_score, s.latency_score, s.score) == (0, 0, 100, 20)


def test_custom_weights() -> None:
    eng = engine(config([backend("a", priority=20)], weights=(100, 0, 0)))
    set_load(eng, "a", 40, 300.0)
    [s] = eng.explain(request("m")).scores
    assert s.score == 80


def test_ties_go_to_the_earlier_backend_in_config_order() -> None:
    cfg = config([backend("zeta"), backend("alpha"), backend("mid")])
    decision = engine(cfg).explain(request("m"))
    assert set(scores(decision).values()) == {75}  # priority 50: (50*50 + 100*30 + 100*20) // 100
    route = decision.route
    assert route is not None
    assert (route.backend_id, route.alternates) == ("zeta", ("alpha", "mid"))


def test_alternates_at_most_three_in_score_order() -> None:
    cfg = config([backend(f"p{p}", priority=p) for p in (50, 10, 30, 20, 40)])
    route = engine(cfg).explain(request("m")).route
    assert route is not None
    assert (route.backend_id, route.alternates) == ("p10", ("p20", "p30", "p40"))


def _soft_limit_engine() -> DecisionEngine:
    cfg = config(
        [backend("cloud", type="openai", priority=1), backend("local", type="ollama", priority=1)],
        budget=budget_config(1.0, soft_limit_percent=75),
    )
    eng = engine(cfg)
    return eng


def test_soft_limit_halves_open_backends() -> None:
    eng = _soft_limit_engine()
    normal = eng.explain(request("m"))
    assert scores(normal) == {"cloud": 99, "local": 99}
    assert winner(normal) == "cloud"  # tie: earlier in config order
    memory_ledger(eng).seed_spend("global", month_of(eng.wall()), 750_000_000)
    soft = eng.explain(request("m"))
    assert scores(soft) == {"cloud": 49, "local": 99}
    adjustments = {s.backend_id: s.adjustments for s in soft.scores}
    assert adjustments == {"cloud": ("soft_limit_halved",), "local": ()}
    assert winner(soft) == "local"


@pytest.mark.parametrize(
    ("ttft_ms", "score", "adjustments"),
    [
        (2000.0, 99, ()),
        (3000.0, 99, ()),  # at the threshold: no penalty
        (3000.9, 99, ()),  # whole ms: 3000
        (3001.0, 99, ("ttft_penalty:-0",)),  # 99 * 1 // 3000 = 0
        (4000.0, 66, ("ttft_penalty:-33",)),  # 99 * 1000 // 3000
        (6000.0, 0, ("ttft_penalty:-99",)),
        (60000.0, 0, ("ttft_penalty:-99",)),  # min(ttft - thr, thr): never below 0
    ],
)
def test_ttft_penalty(ttft_ms: float, score: int, adjustments: tuple[str, ...]) -> None:
    clock = FakeClock()
    eng = engine(
        config([backend("a", priority=1)], quality=QualityConfig(ttft_penalty_threshold_ms=3000)), clock=clock
    )
    eng.registry.live["a"].stats.record(clock(), failure=False, ttft_ms=ttft_ms)
    [s] = eng.explain(request("m")).scores
    assert (s.score, s.adjustments) == (score, adjustments)


def test_soft_limit_halving_comes_before_the_ttft_penalty() -> None:
    eng = _soft_limit_engine()
    memory_ledger(eng).seed_spend("global", month_of(eng.wall()), 800_000_000)
    eng.registry.live["cloud"].stats.record(eng.clock(), failure=False, ttft_ms=4000.0)
    decision = eng.explain(request("m"))
    [cloud] = [s for s in decision.scores if s.backend_id == "cloud"]
    # 99 // 2 = 49, then 49 * 1000 // 3000 = 16
    assert (cloud.score, cloud.adjustments) == (33, ("soft_limit_halved", "ttft_penalty:-16"))


def test_ttft_penalty_can_change_the_winner() -> None:
    clock = FakeClock()
    eng = engine(config([backend("slow", priority=1), backend("fast", priority=20)]), clock=clock)
    eng.registry.live["slow"].stats.record(clock(), failure=False, ttft_ms=4500.0)
    decision = eng.explain(request("m"))
    assert scores(decision) == {"slow": 50, "fast": 90}
    assert decision.route is not None
    assert decision.route.reason == "highest_score:fast:90"


# --- other strategies ------------------------------------------------------------------------


def test_round_robin_per_model_advances_only_on_decide() -> None:
    cfg = config(
        [backend("r0", models=("m", "m2")), backend("r1", models=("m", "m2")), backend("r2", models=("m",))],
        strategy="round_robin",
        aliases={"alias": "m"},
    )
    eng = engine(cfg)

    def routed(d: Decision) -> tuple[str, str, tuple[str, ...], int]:
        assert d.route is not None
        return d.route.backend_id, d.route.reason, d.route.alternates, d.route.score

    assert routed(eng.explain(request("m"))) == ("r0", "round_robin:index_0", ("r1", "r2"), 0)
    assert routed(eng.explain(request("m"))) == ("r0", "round_robin:index_0", ("r1", "r2"), 0)
    assert routed(decide(eng, request("m"))) == ("r0", "round_robin:index_0", ("r1", "r2"), 0)
    assert routed(eng.explain(request("m"))) == ("r1", "round_robin:index_1", ("r2", "r0"), 0)
    assert routed(decide(eng, request("alias"))) == ("r1", "round_robin:index_1", ("r2", "r0"), 0)
    # another model has its own counter
    assert routed(decide(eng, request("m2"))) == ("r0", "round_robin:index_0", ("r1",), 0)
    assert routed(decide(eng, request("m"))) == ("r2", "round_robin:index_2", ("r0", "r1"), 0)
    assert routed(decide(eng, request("m"))) == ("r0", "round_robin:index_0", ("r1", "r2"), 0)
    assert eng.rr == {"m": 4, "m2": 1}


def test_round_robin_does_not_advance_on_reject() -> None:
    eng = engine(config([backend("a"), backend("b")], strategy="round_robin"))
    decision = decide(eng, request("m", needs_vision=True))
    assert isinstance(decision.verdict, Reject)
    assert eng.rr == {}


def test_priority_only() -> None:
    cfg = config(
        [
            backend(n, priority=p)
            for n, p in (("p30", 30), ("p10a", 10), ("p20", 20), ("p10b", 10), ("p40", 40))
        ],
        strategy="priority_only",
    )
    eng = engine(cfg)
    set_load(eng, "p10a", 99, 5000.0)  # load and latency do not matter
    route = eng.explain(request("m")).route
    assert route is not None
    assert (route.backend_id, route.reason, route.score) == ("p10a", "priority:p10a:10", 0)
    assert route.alternates == ("p10b", "p20", "p30")


def test_random_with_a_seeded_rng_is_deterministic() -> None:
    ids = [f"b{i}" for i in range(6)]
    cfg = config([backend(i) for i in ids], strategy="random")
    expected_rng = random.Random(42)
    expected = [ids[expected_rng.randrange(len(ids))] for _ in range(20)]
    assert len(set(expected)) > 1
    eng = engine(cfg, seed=42)
    picks: list[str] = []
    for _ in range(20):
        explained = eng.explain(request("m"))  # a copy of the RNG: predicts the next Decide
        decided = decide(eng, request("m"))
        assert decided.route is not None and explained.route is not None
        assert explained.route.backend_id == decided.route.backend_id
        assert decided.route.reason == f"random:{decided.route.backend_id}"
        assert decided.route.alternates == tuple(i for i in ids if i != decided.route.backend_id)[:3]
        picks.append(decided.route.backend_id)
    assert picks == expected
    other = engine(cfg, seed=42)
    assert [winner(decide(other, request("m"))) for _ in range(20)] == expected


@pytest.mark.parametrize("strategy", ["smart", "round_robin", "priority_only", "random"])
def test_one_survivor_is_the_only_healthy_backend(strategy: str) -> None:
    eng = engine(config([backend("a"), backend("b", priority=1)], strategy=strategy))
    eng.registry.set_state("b", BackendStatus.UNHEALTHY)
    route = eng.explain(request("m")).route
    assert route is not None
    assert (route.backend_id, route.reason, route.alternates) == ("a", "only_healthy_backend", ())


def test_route_carries_the_backend_details() -> None:
    cfg = config([backend("cloud", type="openai", priority=1, url="https://api.example.test/v1")])
    route = engine(cfg).explain(request("m")).route
    assert route is not None
    assert (route.url, route.backend_type, route.privacy_zone, route.model, route.fallback_used) == (
        "https://api.example.test/v1",
        "openai",
        PrivacyZone.OPEN,
        "m",
        False,
    )
    assert route.score == 99
