"""QualityReconciler: excludes backends whose recent error rate is too high (with half-open retry).

The statistics and the breaker are kept per backend by `state/quality.py` (fed only by outcomes of
decisions this server made); this stage reads them. A backend is excluded while its window holds at
least `min_requests` outcomes with an error rate at or above `error_rate_threshold`; once
`cooldown_seconds` have passed since the breaker opened (or since the last trial) it passes for one
trial request (half-open).
"""

from __future__ import annotations

from nexus_grpc.config.schema import QualityConfig
from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.pipeline.intent import Intent, prepared_reason
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

NAME = "QualityReconciler"
PASS, TRIAL = 0, 1  # verdicts besides an excluded one: passes; passes as the half-open trial


def quality_verdict(live: LiveBackend, now: float, q: QualityConfig) -> tuple[int, int] | int:
    """PASS, TRIAL, or the window counts (outcomes, failures) that exclude the backend."""
    minimum = max(q.min_requests, 1)
    if live.stats.count < minimum:  # window totals only shrink as buckets expire
        return PASS
    count, failures, _ = live.stats.snapshot(now)
    if count < minimum or failures < q.error_rate_threshold * count:
        return PASS
    since = live.breaker_since
    if since is not None and now - since >= q.cooldown_seconds:
        return TRIAL
    return count, failures


def quality_exclusion(c: Candidate, model: str, counts: tuple[int, int], q: QualityConfig) -> Exclusion:
    """Prepared once per (backend, model, window counts, quality settings)."""
    count, failures = counts
    return prepared_reason(
        c,
        error_rate_reason,
        model,
        count,
        failures,
        q.window_seconds,
        q.error_rate_threshold,
        q.cooldown_seconds,
    )


def error_rate_reason(
    c: Candidate, model: str, count: int, failures: int, window: float, threshold: float, cooldown: float
) -> Exclusion:
    """The builder of a prepared reason (`intent.prepared_reason`): its text depends only on
    these arguments."""
    return Exclusion(
        c.id,
        model,
        NAME,
        ExclusionCode.ERROR_RATE,
        f"error rate {failures / count:.0%} over the last {window:g}s "
        f"({failures} of {count} outcomes) is at or above {threshold:.0%}",
        f"check the backend; it gets a trial request {cooldown:g}s after it was excluded",
    )


class QualityReconciler:
    name = NAME
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        q = snap.fleet.config.quality
        now = snap.monotonic
        minimum = max(q.min_requests, 1)
        kept: list[Candidate] = []
        for c in intent.candidates:
            if c.live.stats.count < minimum:  # the common case, without a call
                kept.append(c)
                continue
            verdict = quality_verdict(c.live, now, q)
            if verdict == PASS:
                kept.append(c)
            elif verdict == TRIAL:
                intent.notes[f"half_open:{c.id}"] = "trial"
                kept.append(c)
            else:
                assert isinstance(verdict, tuple)
                intent.exclusions.append(quality_exclusion(c, intent.model, verdict, q))
        intent.narrow(kept)
