"""What the stages prepare once per fleet version (`Fleet.prepared`, `Candidate.reasons`): reused
while it holds, fresh with every fleet, bounded, and rechecked under NEXUS_VERIFY=1 so that a rule
or reason builder that depends on something outside its arguments fails."""

from __future__ import annotations

import pytest

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.pipeline import intent as intent_module
from nexus_grpc.pipeline import snapshot as snapshot_module
from nexus_grpc.pipeline.intent import Intent, VerifyError, prepared_reason
from nexus_grpc.pipeline.snapshot import Candidate, Fleet, Snapshot
from nexus_grpc.reconcilers.request_analyzer import RequestAnalyzer
from nexus_grpc.testing.builders import backend, config, engine, price, request

OUTSIDE = {"threshold": 2}  # what the faulty rule and builder read besides their arguments


def tier_at_least(fleet: Fleet, c: Candidate, minimum: int) -> Exclusion | None:
    """A correct static rule: its verdict depends on its argument only."""
    if c.tier >= minimum:
        return None
    return Exclusion(c.id, c.model.id, "Test", ExclusionCode.TIER_BELOW_MINIMUM, "low", "raise it")


def leaky_rule(fleet: Fleet, c: Candidate) -> Exclusion | None:
    """Reads OUTSIDE, which is not in its arguments (so its memo key is incomplete)."""
    return tier_at_least(fleet, c, OUTSIDE["threshold"])


def leaky_reason(c: Candidate, model: str) -> Exclusion:
    return Exclusion(c.id, model, "Test", ExclusionCode.LOADING, f"at {OUTSIDE['threshold']}", "wait")


def fair_reason(c: Candidate, model: str, step: int) -> Exclusion:
    return Exclusion(c.id, model, "Test", ExclusionCode.LOADING, f"at {step}", "wait")


def analyzed(snap: Snapshot, model: str = "m") -> Intent:
    intent = Intent(request(model), model)
    RequestAnalyzer().reconcile(intent, snap)
    return intent


@pytest.fixture
def snap() -> Snapshot:
    fleet = [backend("a", tier=1), backend("b", tier=3), backend("c", tier=2, models=("m", "x"))]
    return engine(config(fleet), indexed=False).snapshot()


@pytest.fixture(autouse=True)
def verify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intent_module, "VERIFY", True)
    OUTSIDE["threshold"] = 2


def test_a_static_rule_is_judged_once_per_static_set_and_reused(
    snap: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = analyzed(snap)
    assert first.static is snap.fleet.prepared.roots["m"]
    first.apply_static(snap, tier_at_least, (2,))
    monkeypatch.setattr(intent_module, "VERIFY", False)  # a hit must not call the rule at all
    calls: list[str] = []

    def counted(fleet: Fleet, c: Candidate, minimum: int) -> Exclusion | None:
        calls.append(c.id)
        return tier_at_least(fleet, c, minimum)

    second = analyzed(snap)
    second.apply_static(snap, tier_at_least, (2,))
    assert second.static is first.static
    assert [c.id for c in second.candidates] == ["b", "c"]
    assert [e.backend_id for e in second.exclusions] == ["a"]
    again = analyzed(snap)
    again.apply_static(snap, counted, (2,))  # another rule: judged, on the root's candidates
    again.apply_static(snap, counted, (2,))  # the same rule on what it kept: judged, nothing dropped
    assert calls == ["a", "b", "c", "b", "c"]
    kept = again.static
    again.apply_static(snap, counted, (2,))
    assert again.static is kept and calls == ["a", "b", "c", "b", "c"]  # memoized on the kept set


@pytest.mark.parametrize("live_narrowed", [False, True])
def test_verify_catches_a_static_rule_that_reads_outside_its_arguments(
    snap: Snapshot, live_narrowed: bool
) -> None:
    def judge() -> Intent:
        intent = analyzed(snap)
        if live_narrowed:
            intent.narrow(list(intent.candidates)[:2])
        intent.apply_static(snap, leaky_rule, ())
        return intent

    assert [c.id for c in judge().candidates] == (["b"] if live_narrowed else ["b", "c"])
    OUTSIDE["threshold"] = 4  # b's verdict changes, though the memo key did not
    with pytest.raises(VerifyError, match="leaky_rule"):
        judge()


def test_verify_catches_a_prepared_reason_that_reads_outside_its_arguments(snap: Snapshot) -> None:
    c = snap.fleet.candidates["m"][0]
    assert prepared_reason(c, fair_reason, "m", 1) is prepared_reason(c, fair_reason, "m", 1)
    assert prepared_reason(c, fair_reason, "m", 2).reason == "at 2"
    leaked = prepared_reason(c, leaky_reason, "m")
    assert prepared_reason(c, leaky_reason, "m") is leaked
    OUTSIDE["threshold"] = 3
    with pytest.raises(VerifyError, match="leaky_reason"):
        prepared_reason(c, leaky_reason, "m")


def test_prepared_reasons_are_bounded_per_candidate(snap: Snapshot) -> None:
    c = snap.fleet.candidates["m"][0]
    for step in range(snapshot_module.REASONS_KEPT + 3):
        prepared_reason(c, fair_reason, "m", step)
    assert 0 < len(c.reasons) <= snapshot_module.REASONS_KEPT


def test_the_memo_is_bounded_and_rebuilt_on_use(snap: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "MEMO_MAX", 3)
    prepared = snap.fleet.prepared
    for minimum in range(1, 6):
        analyzed(snap).apply_static(snap, tier_at_least, (minimum,))
    assert prepared.entries <= 3
    assert len(prepared.roots["m"].after) <= 3
    intent = analyzed(snap)
    intent.apply_static(snap, tier_at_least, (3,))
    assert [c.id for c in intent.candidates] == ["b"]


def test_every_fleet_prepares_afresh() -> None:
    fleet = [
        backend("a", type="openai", pricing=(1.0, 2.0)),
        backend("b", type="openai", pricing=(5.0, 10.0)),
        backend("c", type="openai", pricing=(1.0, 2.0)),
    ]
    eng = engine(config(fleet), indexed=False)
    old = eng.registry.fleet
    assert old.prepared.prices["m"] == (price((1.0, 2.0)), price((5.0, 10.0)))  # distinct, in order
    snap = eng.snapshot()
    analyzed(snap).apply_static(snap, tier_at_least, (2,))
    assert old.prepared.roots["m"].after
    eng.registry.upsert(backend("d"))
    new = eng.registry.fleet
    assert new is not old and new.prepared is not old.prepared
    assert not new.prepared.roots["m"].after
    assert [c.id for c in new.prepared.roots["m"].candidates] == ["a", "b", "c", "d"]
