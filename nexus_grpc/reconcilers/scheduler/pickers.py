"""Pickers, one per `routing.strategy`, registered in `PICKERS`. Each picks the winner among the
survivors (in config order) and ranks up to three alternates for gateway-side retries."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import NamedTuple

from nexus_grpc.domain.decision import CandidateScore
from nexus_grpc.domain.enums import BudgetStatus
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot
from nexus_grpc.reconcilers.scheduler.scorers import smart_score

MAX_ALTERNATES = 3
SOFT_OR_HARD = (BudgetStatus.SOFT_LIMIT, BudgetStatus.HARD_LIMIT)


class Pick(NamedTuple):
    winner: Candidate
    reason: str
    score: int
    alternates: tuple[str, ...]


Picker = Callable[[Intent, Snapshot, Sequence[Candidate]], Pick]


def pick_smart(intent: Intent, snap: Snapshot, survivors: Sequence[Candidate]) -> Pick:
    """Highest score wins; ties go to the earlier backend in config order."""
    config = snap.fleet.config
    w, thr = config.routing.weights, config.quality.ttft_penalty_threshold_ms
    soft = intent.budget_status in SOFT_OR_HARD
    ranked: list[tuple[int, int, Candidate]] = []
    for c in survivors:
        s = smart_score(c, w, thr, soft, snap.monotonic)
        ranked.append((-s.score, c.index, c))  # the unique index settles every comparison
        if intent.trace:
            adjustments = (("soft_limit_halved",) if s.halved else ()) + (
                (f"ttft_penalty:-{s.ttft_penalty}",) if s.ttft_penalty is not None else ()
            )
            intent.scores.append(
                CandidateScore(
                    intent.model, c.id, s.score, s.priority_score, s.load_score, s.latency_score, adjustments
                )
            )
    top = heapq.nsmallest(MAX_ALTERNATES + 1, ranked)
    score, _, best = top[0]
    return Pick(best, f"highest_score:{best.id}:{-score}", -score, tuple(c.id for _, _, c in top[1:]))


def pick_round_robin(intent: Intent, snap: Snapshot, survivors: Sequence[Candidate]) -> Pick:
    """A counter per resolved model, advanced by each Route from Decide."""
    i = snap.rr_counters.get(intent.model, 0) % len(survivors)
    rotated = [*survivors[i + 1 :], *survivors[:i]]
    return Pick(survivors[i], f"round_robin:index_{i}", 0, tuple(c.id for c in rotated[:MAX_ALTERNATES]))


def pick_priority(intent: Intent, snap: Snapshot, survivors: Sequence[Candidate]) -> Pick:
    """Lowest `priority` wins; ties go to the earlier backend."""
    ranked = sorted(survivors, key=lambda c: (c.priority, c.index))
    best = ranked[0]
    return Pick(
        best, f"priority:{best.id}:{best.priority}", 0, tuple(c.id for c in ranked[1 : 1 + MAX_ALTERNATES])
    )


def pick_random(intent: Intent, snap: Snapshot, survivors: Sequence[Candidate]) -> Pick:
    """Uniform, with the snapshot's (injected, seedable) RNG; alternates in config order."""
    i = snap.rng.randrange(len(survivors))
    best = survivors[i]
    return Pick(
        best, f"random:{best.id}", 0, tuple(c.id for c in survivors if c is not best)[:MAX_ALTERNATES]
    )


PICKERS: dict[str, Picker] = {
    "smart": pick_smart,
    "round_robin": pick_round_robin,
    "priority_only": pick_priority,
    "random": pick_random,
}
