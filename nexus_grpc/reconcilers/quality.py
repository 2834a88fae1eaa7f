"""QualityReconciler: excludes backends whose recent error rate is too high (with half-open retry)."""

from __future__ import annotations

from nexus_grpc.domain.enums import ExclusionCode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot


class QualityReconciler:
    name = "QualityReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        q = snap.fleet.config.quality
        now = snap.now
        kept = []
        for c in intent.candidates:
            live = c.live
            count, failures, _ = live.stats.snapshot(now)
            if count == 0 or count < q.min_requests or failures < q.error_rate_threshold * count:
                kept.append(c)
                continue
            since = live.breaker_since
            if since is not None and now - since >= q.cooldown_seconds:
                intent.notes[f"half_open:{c.id}"] = "trial"
                kept.append(c)
                continue
            intent.exclude(
                self.name,
                c,
                ExclusionCode.ERROR_RATE,
                f"error rate {failures / count:.0%} over the last {q.window_seconds:g}s "
                f"({failures} of {count} outcomes) is at or above {q.error_rate_threshold:.0%}",
                f"check the backend; it gets a trial request {q.cooldown_seconds:g}s after it was excluded",
            )
        intent.candidates = kept
