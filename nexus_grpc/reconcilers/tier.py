"""TierReconciler: minimum capability tier, strict or flexible (the caller's consent to downgrade)."""

from __future__ import annotations

from collections.abc import Sequence

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode, TierMode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot


class TierReconciler:
    name = "TierReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        minimum = max(intent.policy.min_tier, intent.request.min_tier)
        if minimum <= 1:
            return  # every backend is at least tier 1
        intent.notes["min_tier"] = str(minimum)
        flexible = intent.request.tier_mode == TierMode.FLEXIBLE
        if flexible and not any(c.tier >= minimum for c in intent.candidates):
            intent.notes["tier_downgrade"] = "flexible"
            return
        model, name = intent.model, self.name
        action = f"add or enable a backend of tier {minimum} or higher" + (
            "" if flexible else ", or send tier_mode FLEXIBLE to accept a downgrade"
        )

        def compute(cands: Sequence[Candidate]) -> tuple[list[Candidate], list[Exclusion]]:
            kept: list[Candidate] = []
            excluded: list[Exclusion] = []
            for c in cands:
                if c.tier >= minimum:
                    kept.append(c)
                else:
                    reason = f"tier {c.tier} is below minimum tier {minimum} for model '{model}'"
                    excluded.append(
                        Exclusion(c.id, model, name, ExclusionCode.TIER_BELOW_MINIMUM, reason, action)
                    )
            return kept, excluded

        intent.apply_static(snap, (name, minimum, flexible, model), compute)
