"""PrivacyReconciler: under a restricted constraint only restricted backends survive. Fails closed."""

from __future__ import annotations

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode, PrivacyZone
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Fleet, Snapshot

NAME = "PrivacyReconciler"
_ZONE = {PrivacyZone.RESTRICTED: "restricted", PrivacyZone.OPEN: "open", PrivacyZone.UNSPECIFIED: "open"}


def privacy_rule(fleet: Fleet, c: Candidate, model: str, requested: str, source: str) -> Exclusion | None:
    """Static: under a restricted constraint (from `source`: "policy" or "request"), a backend
    outside the restricted zone is excluded. A candidate the registry does not know counts as open."""
    backend = fleet.by_id.get(c.id)
    zone = backend.zone if backend is not None else PrivacyZone.OPEN
    if zone == PrivacyZone.RESTRICTED:
        return None
    action = "use a backend in the restricted zone for this model" + (
        ", or relax the policy" if source == "policy" else ", or drop the request's restricted privacy"
    )
    reason = f"backend zone {_ZONE[zone]} violates restricted {source} for model '{requested}'"
    return Exclusion(c.id, model, NAME, ExclusionCode.PRIVACY_ZONE, reason, action)


def privacy_source(intent: Intent) -> str | None:
    """Where the restricted constraint comes from ("policy" wins), or None: unrestricted."""
    if intent.policy.privacy == PrivacyZone.RESTRICTED:
        return "policy"
    if intent.request.privacy == PrivacyZone.RESTRICTED:
        return "request"
    return None


class PrivacyReconciler:
    name = NAME
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        source = privacy_source(intent)
        if source is None:
            intent.notes["privacy_constraint"] = "unrestricted"
            return
        intent.notes["privacy_constraint"] = "restricted"
        intent.apply_static(snap, privacy_rule, (intent.model, intent.requested, source))
