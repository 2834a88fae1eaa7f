"""PrivacyReconciler: under a restricted constraint only restricted backends survive. Fails closed."""

from __future__ import annotations

from collections.abc import Sequence

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode, PrivacyZone
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

_ZONE = {PrivacyZone.RESTRICTED: "restricted", PrivacyZone.OPEN: "open", PrivacyZone.UNSPECIFIED: "open"}


class PrivacyReconciler:
    name = "PrivacyReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        by_policy = intent.policy.privacy == PrivacyZone.RESTRICTED
        by_request = intent.request.privacy == PrivacyZone.RESTRICTED
        if not (by_policy or by_request):
            intent.notes["privacy_constraint"] = "unrestricted"
            return
        intent.notes["privacy_constraint"] = "restricted"
        source = "policy" if by_policy else "request"
        action = "use a backend in the restricted zone for this model" + (
            ", or relax the policy" if by_policy else ", or drop the request's restricted privacy"
        )
        by_id = snap.fleet.by_id
        model, requested, name = intent.model, intent.requested, self.name

        def compute(cands: Sequence[Candidate]) -> tuple[list[Candidate], list[Exclusion]]:
            kept: list[Candidate] = []
            excluded: list[Exclusion] = []
            for c in cands:
                backend = by_id.get(c.id)
                # defensive: a candidate the registry does not know counts as open
                zone = backend.zone if backend is not None else PrivacyZone.OPEN
                if zone == PrivacyZone.RESTRICTED:
                    kept.append(c)
                    continue
                reason = f"backend zone {_ZONE[zone]} violates restricted {source} for model '{requested}'"
                excluded.append(Exclusion(c.id, model, name, ExclusionCode.PRIVACY_ZONE, reason, action))
            return kept, excluded

        intent.apply_static(snap, (name, source, requested, model), compute)
