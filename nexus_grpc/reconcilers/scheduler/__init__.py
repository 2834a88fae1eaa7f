"""SchedulerReconciler: the filters of `FILTERS` in order (static, the request's numbers, live
state), then the picker of `routing.strategy` from `PICKERS`. With exactly one survivor the
reason is always `only_healthy_backend`.

The smart picker's score (`scorers.py`) is one integer expression of three named terms rather
than a registry of scorers: its terms are fixed by the API (the weights in the config, the
sub-scores Explain reports), and iterating a registry per candidate would add calls to every
ranking."""

from __future__ import annotations

from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot
from nexus_grpc.reconcilers.scheduler.filters import FILTERS, NAME
from nexus_grpc.reconcilers.scheduler.pickers import MAX_ALTERNATES, PICKERS

__all__ = ["FILTERS", "MAX_ALTERNATES", "PICKERS", "SchedulerReconciler"]


class SchedulerReconciler:
    name = NAME
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        for narrow in FILTERS:
            narrow(intent, snap)
        survivors = intent.candidates
        if not survivors:
            return
        pick = PICKERS[snap.fleet.config.routing.strategy](intent, snap, survivors)
        intent.winner = pick.winner
        intent.score = pick.score
        intent.alternates = pick.alternates
        intent.reason = "only_healthy_backend" if len(survivors) == 1 else pick.reason
