"""TierReconciler: minimum capability tier, strict and flexible."""

from __future__ import annotations

import pytest

from nexus_grpc.domain.decision import Decision, Reject
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode, RejectCode, TierMode
from nexus_grpc.testing.builders import backend, config, engine, policy, request

TIER = "TierReconciler"


def tier_excluded(decision: Decision) -> set[str]:
    return {e.backend_id for e in decision.exclusions if e.reconciler == TIER}


def tier_notes(decision: Decision) -> dict[str, str]:
    [stage] = [s for s in decision.stages if s.reconciler == TIER]
    return dict(stage.notes)


def survivors(decision: Decision) -> set[str]:
    assert decision.route is not None, decision.verdict
    return {decision.route.backend_id, *decision.route.alternates}


@pytest.mark.parametrize(
    ("policy_min", "request_min", "mode", "kept"),
    [
        # strict: below the minimum excluded, exactly the minimum kept
        (3, 0, TierMode.STRICT, {"t3", "t4"}),
        (3, 0, TierMode.UNSPECIFIED, {"t3", "t4"}),  # unspecified = strict
        (4, 0, TierMode.STRICT, {"t4"}),
        # no minimum: all kept
        (0, 0, TierMode.STRICT, {"t1", "t2", "t3", "t4"}),
        (1, 0, TierMode.STRICT, {"t1", "t2", "t3", "t4"}),
        # the request can only tighten
        (0, 3, TierMode.STRICT, {"t3", "t4"}),
        (3, 1, TierMode.STRICT, {"t3", "t4"}),  # a lower request minimum does not relax the policy
        (2, 4, TierMode.STRICT, {"t4"}),
        # flexible with a capable backend: the others are still excluded
        (3, 0, TierMode.FLEXIBLE, {"t3", "t4"}),
    ],
)
def test_min_tier_table(policy_min: int, request_min: int, mode: TierMode, kept: set[str]) -> None:
    cfg = config(
        [backend(f"t{t}", tier=t) for t in (1, 2, 3, 4)],
        policies=[policy("m", privacy="unrestricted", min_tier=policy_min)],
    )
    decision = engine(cfg).explain(request("m", min_tier=request_min, tier_mode=mode))
    assert survivors(decision) == kept
    assert tier_excluded(decision) == {"t1", "t2", "t3", "t4"} - kept
    assert all(e.code == ExclusionCode.TIER_BELOW_MINIMUM for e in decision.exclusions)


def test_strict_reason_text() -> None:
    cfg = config(
        [backend("low", tier=1), backend("high", tier=3)], policies=[policy("m", privacy="open", min_tier=3)]
    )
    [e] = engine(cfg).explain(request("m")).exclusions
    assert e.backend_id == "low"
    assert e.reason == "tier 1 is below minimum tier 3 for model 'm'"
    assert "FLEXIBLE" in e.suggested_action


def test_strict_with_no_capable_backend_rejects() -> None:
    cfg = config([backend("a", tier=1), backend("b", tier=2)])
    decision = engine(cfg).explain(request("m", min_tier=3))
    assert isinstance(decision.verdict, Reject)
    assert decision.verdict.code == RejectCode.NO_ELIGIBLE_BACKEND
    assert decision.verdict.message == "Request rejected: 2 backends excluded by TierReconciler"


def test_flexible_without_capable_backend_keeps_all_and_notes_the_downgrade() -> None:
    cfg = config([backend("a", tier=1), backend("b", tier=2)])
    decision = engine(cfg).explain(request("m", min_tier=3, tier_mode=TierMode.FLEXIBLE))
    assert survivors(decision) == {"a", "b"}
    assert decision.exclusions == ()
    assert tier_notes(decision) == {"min_tier": "3", "tier_downgrade": "flexible"}


def test_flexible_never_downgrades_while_a_capable_backend_exists() -> None:
    """A capable backend counts whatever its health: the low tier stays excluded."""
    cfg = config([backend("low", tier=1), backend("high", tier=3)])
    eng = engine(cfg)
    eng.registry.set_state("high", BackendStatus.UNHEALTHY)
    decision = eng.explain(request("m", min_tier=3, tier_mode=TierMode.FLEXIBLE))
    assert isinstance(decision.verdict, Reject)
    assert {(e.backend_id, e.code) for e in decision.exclusions} == {
        ("low", ExclusionCode.TIER_BELOW_MINIMUM),
        ("high", ExclusionCode.UNHEALTHY),
    }
    assert "tier_downgrade" not in tier_notes(decision)


def test_backends_default_to_tier_1() -> None:
    cfg = config([backend("plain")])  # builder default, like an absent `tier` key
    assert cfg.backends[0].tier == 1
    ok = engine(cfg).explain(request("m", min_tier=1))
    assert survivors(ok) == {"plain"}
    too_high = engine(cfg).explain(request("m", min_tier=2))
    [e] = too_high.exclusions
    assert e.reason.startswith("tier 1 is below minimum tier 2")


def test_fallback_keeps_the_primarys_min_tier() -> None:
    cfg = config(
        [backend("big", tier=4, models=("primary",)), backend("small", tier=1, models=("backup",))],
        policies=[policy("primary", privacy="open", min_tier=4)],
        fallbacks={"primary": ["backup"]},
    )
    eng = engine(cfg)
    eng.registry.set_state("big", BackendStatus.UNHEALTHY)
    decision = eng.explain(request("primary"))
    assert isinstance(decision.verdict, Reject)
    assert decision.verdict.code == RejectCode.FALLBACK_EXHAUSTED
    assert ("small", "backup", ExclusionCode.TIER_BELOW_MINIMUM) in {
        (e.backend_id, e.model, e.code) for e in decision.exclusions
    }
