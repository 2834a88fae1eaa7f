"""TierReconciler: minimum capability tier, strict or flexible (the caller's consent to downgrade)."""

from __future__ import annotations

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode, TierMode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Fleet, Snapshot

NAME = "TierReconciler"


def tier_rule(fleet: Fleet, c: Candidate, model: str, minimum: int, flexible: bool) -> Exclusion | None:
    """Static: a backend below the minimum tier is excluded."""
    if c.tier >= minimum:
        return None
    action = f"add or enable a backend of tier {minimum} or higher" + (
        "" if flexible else ", or send tier_mode FLEXIBLE to accept a downgrade"
    )
    reason = f"tier {c.tier} is below minimum tier {minimum} for model '{model}'"
    return Exclusion(c.id, model, NAME, ExclusionCode.TIER_BELOW_MINIMUM, reason, action)


def minimum_tier(intent: Intent) -> int:
    return max(intent.policy.min_tier, intent.request.min_tier)


class TierReconciler:
    name = NAME
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        minimum = minimum_tier(intent)
        if minimum <= 1:
            return  # every backend is at least tier 1
        intent.notes["min_tier"] = str(minimum)
        flexible = intent.request.tier_mode == TierMode.FLEXIBLE
        if flexible and not any(c.tier >= minimum for c in intent.candidates):
            intent.notes["tier_downgrade"] = "flexible"
            return
        intent.apply_static(snap, tier_rule, (intent.model, minimum, flexible))
