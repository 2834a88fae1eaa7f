"""RequestAnalyzer: resolves aliases, sets the effective policy and the candidates; a request
from an endpoint-picking gateway keeps only the backends whose endpoint that gateway admits."""

from __future__ import annotations

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.endpoints import EndpointSubset, endpoint_of
from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Fleet, Snapshot, StaticSet

NAME = "RequestAnalyzer"
_SHOWN = 160  # characters of a subset quoted in a reason
_NONE = StaticSet(())  # a model no backend serves


def subset_rule(fleet: Fleet, c: Candidate, model: str, subset: EndpointSubset) -> Exclusion | None:
    """Static: a candidate whose ip:port endpoint the gateway's subset does not admit is excluded;
    so is one whose URL host is a name (such a gateway can only be sent to an ip:port)."""
    endpoint = endpoint_of(c.backend.url)
    if subset.admits(endpoint):
        return None
    if endpoint is None:
        reason = (
            f"backend URL {c.backend.url!r} has a host name, not an IP address: a gateway that "
            "picks endpoints can only be sent to an ip:port"
        )
        action = (
            "give the backend an IP-literal URL (its pod or server address; names are never "
            "resolved), or route hostname backends by x-nexus-backend (deploy/envoy/ext_proc.yaml); "
            "`nexus-grpc check-config --endpoint-picker FILE` lists every such backend"
        )
    else:
        shown = str(subset)
        if len(shown) > _SHOWN:
            shown = shown[: _SHOWN - 3] + "..."
        reason = f"endpoint {endpoint} is outside the endpoint subset the gateway sent ({shown})"
        action = (
            "the gateway allows other endpoints for this request "
            "(x-gateway-destination-endpoint-subset); check its InferencePool and subset settings"
        )
    return Exclusion(c.id, model, NAME, ExclusionCode.OUTSIDE_ENDPOINT_SUBSET, reason, action)


class RequestAnalyzer:
    name = NAME
    fail_open = False
    finds_candidates = True  # the one stage that sets the candidates rather than narrowing them

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        fleet = snap.fleet
        # fallback entries are concrete model names (aliases are refused there at config load)
        chain = (intent.requested,) if intent.is_fallback else fleet.chain(intent.requested)
        intent.chain = chain
        intent.model = chain[-1]
        policy = fleet.policy(chain)
        if intent.primary_policy is not None:
            policy = policy.tightened(intent.primary_policy)
        intent.policy = policy
        root = fleet.prepared.roots.get(intent.model, _NONE)
        candidates = root.candidates
        intent.model_candidates = candidates
        intent.candidates = candidates
        intent.static = root
        if len(chain) > 1:
            intent.notes["alias_chain"] = " -> ".join(chain)
        if intent.is_fallback:
            intent.notes["fallback"] = intent.model
        if not candidates:
            intent.notes["model_found"] = "false"
        subset = intent.request.endpoint_subset
        if subset is not None:
            intent.notes["endpoint_subset"] = str(subset)[:_SHOWN]
            if candidates:
                intent.apply_static(snap, subset_rule, (intent.model, subset))
