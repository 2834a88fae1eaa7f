"""PrivacyReconciler: under a restricted constraint only restricted backends survive. Fails closed."""

from __future__ import annotations

from nexus_grpc.domain.enums import ExclusionCode, PrivacyZone
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot

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
        by_id = snap.fleet.by_id
        kept = []
        for c in intent.candidates:
            backend = by_id.get(c.id)
            # defensive: a candidate the registry does not know counts as open
            zone = backend.zone if backend is not None else PrivacyZone.OPEN
            if zone == PrivacyZone.RESTRICTED:
                kept.append(c)
                continue
            intent.exclude(
                self.name,
                c,
                ExclusionCode.PRIVACY_ZONE,
                f"backend zone {_ZONE[zone]} violates restricted {source} for model '{intent.requested}'",
                "use a backend in the restricted zone for this model"
                + (", or relax the policy" if by_policy else ", or drop the request's restricted privacy"),
            )
        intent.candidates = kept
