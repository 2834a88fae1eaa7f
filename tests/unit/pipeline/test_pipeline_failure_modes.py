"""The executor when a stage raises: a `fail_open` stage (BudgetReconciler) is skipped and the
decision goes on, its fault noted; a fail-closed stage (PrivacyReconciler) ends the decision
with a Reject, every candidate excluded as INTERNAL_ERROR, no fallback tried and no Queue."""

from __future__ import annotations

from nexus_grpc.domain.decision import Decision, Reject, Route
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode, RejectCode
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import month_of
from nexus_grpc.pipeline.intent import Intent, Reconciler
from nexus_grpc.pipeline.snapshot import Snapshot
from nexus_grpc.reconcilers import (
    BudgetReconciler,
    PrivacyReconciler,
    QualityReconciler,
    RequestAnalyzer,
    SchedulerReconciler,
    TierReconciler,
)
from nexus_grpc.testing.builders import backend, budget_config, config, decide, engine, memory_ledger, request

PRIVACY = "PrivacyReconciler"
BUDGET = "BudgetReconciler"
USD = 1_000_000_000


class ExplodingBudget(BudgetReconciler):
    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        raise RuntimeError("ledger cache corrupted")


class ExplodingPrivacy(PrivacyReconciler):
    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        raise RuntimeError("policy table corrupted")


def stages(*, budget: Reconciler | None = None, privacy: Reconciler | None = None) -> list[Reconciler]:
    return [
        RequestAnalyzer(),
        privacy or PrivacyReconciler(),
        budget or BudgetReconciler(),
        TierReconciler(),
        QualityReconciler(),
        SchedulerReconciler(),
    ]


# -- fail open ----------------------------------------------------------------------------------


def over_budget_engine() -> DecisionEngine:
    """Spend above a block_all limit: a working BudgetReconciler would exclude everything."""
    fleet = [
        backend("cloud", type="openai", priority=1, models=("gpt-4-turbo",)),
        backend("local", type="ollama", priority=90, models=("gpt-4-turbo",)),
    ]
    eng = engine(
        config(fleet, budget=budget_config(1.0, action="block_all")), stages=stages(budget=ExplodingBudget())
    )
    memory_ledger(eng).seed_spend("global", month_of(eng.wall()), 2 * USD)
    return eng


def budget_notes(decision: Decision) -> dict[str, str]:
    [stage] = [
        s
        for s in decision.stages
        if s.reconciler == "BudgetReconciler" and s.model == decision.resolved_model
    ]
    return dict(stage.notes)


def test_a_fail_open_stage_that_raises_is_skipped_and_the_decision_goes_on() -> None:
    decision = over_budget_engine().explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert isinstance(decision.verdict, Route)
    assert decision.route is not None
    assert decision.route.backend_id == "cloud"
    assert decision.exclusions == ()


def test_a_fail_open_stage_fault_is_noted_in_its_trace() -> None:
    decision = over_budget_engine().explain(request("gpt-4-turbo", estimated_input_tokens=1000))
    assert budget_notes(decision)["BudgetReconciler.fault"] == "RuntimeError"


def test_a_fail_open_stage_fault_still_lets_decide_route() -> None:
    assert decide(over_budget_engine(), request("gpt-4-turbo")).route is not None


# -- fail closed --------------------------------------------------------------------------------


def fallback_fleet_engine(privacy: Reconciler) -> DecisionEngine:
    cfg = config(
        [
            backend("local", models=("primary",)),
            backend("cloud", type="openai", models=("primary",)),
            backend("spare", models=("backup",)),
        ],
        fallbacks={"primary": ["backup"]},
    )
    return engine(cfg, stages=stages(privacy=privacy))


def test_a_fail_closed_stage_that_raises_rejects_with_every_candidate_an_internal_error() -> None:
    eng = fallback_fleet_engine(ExplodingPrivacy())
    explained = eng.explain(request("primary"))
    assert [s.reconciler for s in explained.stages] == ["RequestAnalyzer", PRIVACY]  # no stage after it
    for decision in (explained, decide(eng, request("primary"))):
        verdict = decision.verdict
        assert isinstance(verdict, Reject)
        assert verdict.code == RejectCode.NO_ELIGIBLE_BACKEND
        assert verdict.message == "Request rejected: 2 backends excluded by PrivacyReconciler"
        assert [(e.backend_id, e.model, e.reconciler, e.code) for e in decision.exclusions] == [
            ("local", "primary", PRIVACY, ExclusionCode.INTERNAL_ERROR),
            ("cloud", "primary", PRIVACY, ExclusionCode.INTERNAL_ERROR),
        ]


def test_a_fail_closed_stage_fault_tries_no_fallback() -> None:
    eng = fallback_fleet_engine(ExplodingPrivacy())
    decision = decide(eng, request("primary"))
    assert isinstance(decision.verdict, Reject)
    assert {e.model for e in decision.exclusions} == {"primary"}  # "backup" never looked at
    assert eng.registry.live["spare"].in_flight == {}


def test_a_fail_closed_stage_fault_never_queues() -> None:
    eng = engine(config([backend("local", models=("m",))]), stages=stages(privacy=ExplodingPrivacy()))
    eng.registry.set_state("local", BackendStatus.LOADING, eta_ms=1000)
    verdict = eng.explain(request("m")).verdict
    assert isinstance(verdict, Reject)
    assert verdict.code == RejectCode.NO_ELIGIBLE_BACKEND


def test_the_same_fleet_routes_when_the_stage_works() -> None:
    """The control for the fail-closed tests: with the real stage the fleet routes."""
    decision = fallback_fleet_engine(PrivacyReconciler()).explain(request("primary"))
    assert isinstance(decision.verdict, Route)
