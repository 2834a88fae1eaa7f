"""QualityReconciler: error-rate breaker over outcome statistics, with a half-open trial."""

from __future__ import annotations

import pytest

from nexus_grpc.config.schema import QualityConfig
from nexus_grpc.domain.decision import Decision
from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.domain.request import Outcome
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.testing.builders import backend, config, decide, engine, report, request, served_outcome
from nexus_grpc.testing.clock import FakeClock

QUALITY = "QualityReconciler"


def two_backends(quality: QualityConfig) -> DecisionEngine:
    cfg = config([backend("a", priority=1), backend("b", priority=90)], quality=quality)
    return engine(cfg, clock=FakeClock())


def outcomes(eng: DecisionEngine, backend_id: str, *results: bool | int) -> None:
    """Report outcomes for `backend_id`: a bool is `success`, an int is an `http_status`."""
    for r in results:
        if isinstance(r, bool):
            served_outcome(eng, backend_id, success=r)
        else:
            served_outcome(eng, backend_id, http_status=r)


def quality_excluded(decision: Decision) -> set[str]:
    return {e.backend_id for e in decision.exclusions if e.reconciler == QUALITY}


@pytest.mark.parametrize(
    ("successes", "failures", "excluded"),
    [
        (2, 2, True),  # 50% == threshold: excluded (inclusive)
        (3, 2, False),  # 40% < 50%
        (0, 4, True),
        (4, 0, False),
    ],
)
def test_error_rate_threshold_is_inclusive(successes: int, failures: int, excluded: bool) -> None:
    eng = two_backends(QualityConfig(error_rate_threshold=0.5, min_requests=4))
    outcomes(eng, "a", *([True] * successes + [False] * failures))
    decision = eng.explain(request("m"))
    assert quality_excluded(decision) == ({"a"} if excluded else set())
    assert decision.route is not None
    assert decision.route.backend_id == ("b" if excluded else "a")
    if excluded:
        [e] = decision.exclusions
        assert e.code == ExclusionCode.ERROR_RATE
        assert f"({failures} of {successes + failures} outcomes)" in e.reason


@pytest.mark.parametrize(("failures", "excluded"), [(4, False), (5, True)])
def test_min_requests(failures: int, excluded: bool) -> None:
    eng = two_backends(QualityConfig(error_rate_threshold=0.5, min_requests=5))
    outcomes(eng, "a", *([False] * failures))
    assert quality_excluded(eng.explain(request("m"))) == ({"a"} if excluded else set())


def test_no_history_passes() -> None:
    eng = two_backends(QualityConfig(error_rate_threshold=0.0001, min_requests=0))
    decision = eng.explain(request("m"))
    assert decision.exclusions == ()
    assert decision.route is not None
    assert decision.route.backend_id == "a"


@pytest.mark.parametrize(
    ("status", "is_failure"),
    [(400, False), (404, False), (422, False), (408, True), (429, True), (500, True), (503, True)],
)
def test_client_errors_are_not_failures(status: int, is_failure: bool) -> None:
    eng = two_backends(QualityConfig(error_rate_threshold=0.5, min_requests=3))
    outcomes(eng, "a", status, status, status)
    assert eng.registry.live["a"].stats.snapshot(eng.clock())[:2] == (3, 3 if is_failure else 0)
    assert quality_excluded(eng.explain(request("m"))) == ({"a"} if is_failure else set())


def test_failures_outside_the_window_expire() -> None:
    clock = FakeClock()
    cfg = config([backend("a")], quality=QualityConfig(min_requests=2, window_seconds=60.0))
    eng = engine(cfg, clock=clock)
    outcomes(eng, "a", False, False)
    assert quality_excluded(eng.explain(request("m"))) == {"a"}
    clock.advance(61.0)
    assert quality_excluded(eng.explain(request("m"))) == set()


def test_half_open_after_cooldown_and_a_success_closes() -> None:
    clock = FakeClock()
    cfg = config(
        [backend("a", priority=1), backend("b", priority=90)],
        quality=QualityConfig(error_rate_threshold=0.5, min_requests=3, cooldown_seconds=30.0),
    )
    eng = engine(cfg, clock=clock)
    outcomes(eng, "a", False, False, False)
    assert eng.registry.live["a"].breaker_since == clock.now

    def winner() -> str:
        route = decide(eng, request("m")).route
        assert route is not None
        return route.backend_id

    assert winner() == "b"
    clock.advance(29.9)
    assert winner() == "b"
    clock.advance(0.1)
    explained = eng.explain(request("m"))
    [stage] = [s for s in explained.stages if s.reconciler == QUALITY]
    assert stage.notes == {"half_open:a": "trial"}
    trial = decide(eng, request("m"))
    assert trial.route is not None
    assert trial.route.backend_id == "a"  # the one trial request
    assert winner() == "b"  # only one: the breaker re-armed when the trial went out
    assert winner() == "b"
    report(eng, Outcome(trial.request_id, "a", success=True, decision_id=trial.decision_id))
    assert eng.registry.live["a"].breaker_since is None
    assert winner() == "a"
    assert winner() == "a"


def test_failed_trial_reopens_for_another_cooldown() -> None:
    clock = FakeClock()
    cfg = config(
        [backend("a", priority=1), backend("b", priority=90)],
        quality=QualityConfig(error_rate_threshold=0.5, min_requests=3, cooldown_seconds=30.0),
    )
    eng = engine(cfg, clock=clock)
    outcomes(eng, "a", False, False, False)
    clock.advance(30.0)
    trial = decide(eng, request("m"))
    assert trial.route is not None
    assert trial.route.backend_id == "a"
    clock.advance(5.0)
    report(eng, Outcome(trial.request_id, "a", success=False, decision_id=trial.decision_id))
    assert eng.registry.live["a"].breaker_since == clock.now
    clock.advance(29.0)
    assert quality_excluded(eng.explain(request("m"))) == {"a"}
    clock.advance(1.0)
    assert quality_excluded(eng.explain(request("m"))) == set()
