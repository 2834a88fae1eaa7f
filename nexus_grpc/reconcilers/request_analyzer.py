"""RequestAnalyzer: resolves aliases, sets the effective policy and the candidates."""

from __future__ import annotations

from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot


class RequestAnalyzer:
    name = "RequestAnalyzer"
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
        candidates = fleet.candidates.get(intent.model, ())
        intent.initial = candidates
        intent.candidates = candidates
        if len(chain) > 1:
            intent.notes["alias_chain"] = " -> ".join(chain)
        if intent.is_fallback:
            intent.notes["fallback"] = intent.model
        if not candidates:
            intent.notes["model_found"] = "false"
