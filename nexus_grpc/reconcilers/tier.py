"""TierReconciler: minimum capability tier, strict or flexible (the caller's consent to downgrade)."""

from __future__ import annotations

from nexus_grpc.domain.enums import ExclusionCode, TierMode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot


class TierReconciler:
    name = "TierReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        minimum = max(intent.policy.min_tier, intent.request.min_tier)
        if minimum <= 1:
            return  # every backend is at least tier 1
        intent.notes["min_tier"] = str(minimum)
        flexible = intent.request.tier_mode == TierMode.FLEXIBLE
        capable = [c for c in intent.candidates if c.tier >= minimum]
        if flexible and not capable:
            intent.notes["tier_downgrade"] = "flexible"
            return
        for c in intent.candidates:
            if c.tier < minimum:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.TIER_BELOW_MINIMUM,
                    f"tier {c.tier} is below minimum tier {minimum} for model '{intent.model}'",
                    f"add or enable a backend of tier {minimum} or higher"
                    + ("" if flexible else ", or send tier_mode FLEXIBLE to accept a downgrade"),
                )
        intent.candidates = capable
