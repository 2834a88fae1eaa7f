"""QualityReconciler: excludes backends whose recent error rate is too high (with half-open retry)."""

from __future__ import annotations

from nexus_grpc.config.schema import QualityConfig
from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot


class QualityReconciler:
    name = "QualityReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        q = snap.fleet.config.quality
        now = snap.now
        minimum = max(q.min_requests, 1)
        kept: list[Candidate] = []
        for c in intent.candidates:
            live = c.live
            if live.stats.count < minimum:  # window totals only shrink as buckets expire
                kept.append(c)
                continue
            count, failures, _ = live.stats.snapshot(now)
            if count < minimum or failures < q.error_rate_threshold * count:
                kept.append(c)
                continue
            since = live.breaker_since
            if since is not None and now - since >= q.cooldown_seconds:
                intent.notes[f"half_open:{c.id}"] = "trial"
                kept.append(c)
                continue
            intent.exclusions.append(self._exclusion(c, intent.model, count, failures, q))
        intent.narrow(kept)

    def _exclusion(self, c: Candidate, model: str, count: int, failures: int, q: QualityConfig) -> Exclusion:
        """Prepared once per (backend, model, window counts): reused until an outcome changes them."""
        key = (model, count, failures)
        cached = c.live.quality_cache
        if cached is not None and cached[0] == key:
            prepared: Exclusion = cached[1]
            return prepared
        exclusion = Exclusion(
            c.id,
            model,
            self.name,
            ExclusionCode.ERROR_RATE,
            f"error rate {failures / count:.0%} over the last {q.window_seconds:g}s "
            f"({failures} of {count} outcomes) is at or above {q.error_rate_threshold:.0%}",
            f"check the backend; it gets a trial request {q.cooldown_seconds:g}s after it was excluded",
        )
        c.live.quality_cache = (key, exclusion)
        return exclusion
