"""SchedulerReconciler: the filters (static, the request's numbers, live state), then the picker
of `routing.strategy`. With exactly one survivor the reason is always `only_healthy_backend`."""

from __future__ import annotations

from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot
from nexus_grpc.reconcilers.scheduler.filters import (
    NAME,
    capability_rule,
    context_exclusion,
    status_exclusion,
)
from nexus_grpc.reconcilers.scheduler.pickers import MAX_ALTERNATES, PICKERS

__all__ = ["MAX_ALTERNATES", "SchedulerReconciler"]


class SchedulerReconciler:
    name = NAME
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        request = intent.request
        model = intent.model
        needs = (request.needs_vision, request.needs_tools, request.needs_json_mode)
        intent.apply_static(snap, capability_rule, (model, *needs))
        total = request.estimated_input_tokens + request.output_tokens
        now = snap.monotonic
        survivors: list[Candidate] = []
        for c in intent.candidates:
            excluded = context_exclusion(c, model, total) or status_exclusion(c, model, now)
            if excluded is None:
                survivors.append(c)
            else:
                intent.exclusions.append(excluded)
        intent.narrow(survivors)
        if not survivors:
            return
        pick = PICKERS[snap.fleet.config.routing.strategy](intent, snap, survivors)
        intent.winner = pick.winner
        intent.score = pick.score
        intent.alternates = pick.alternates
        intent.reason = "only_healthy_backend" if len(survivors) == 1 else pick.reason
