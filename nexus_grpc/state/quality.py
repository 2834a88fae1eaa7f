"""Outcome statistics and the error-rate breaker of one backend.

An outcome of a known decision is recorded on the backend it was served by: the bucketed window
(count, failures, TTFT of streamed successes), the latency EMA (successful TTFT only), and the
breaker that `QualityReconciler` reads. The breaker opens when the window holds at least
`quality.min_requests` outcomes with an error rate at or above `quality.error_rate_threshold`;
once `cooldown_seconds` have passed the stage lets one trial request through (half-open), and
the trial's success closes the breaker (the window starts afresh) while a failure re-opens it.
"""

from __future__ import annotations

from nexus_grpc.config.schema import QualityConfig
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.request import Outcome


def record_outcome(
    live: LiveBackend, outcome: Outcome, *, streamed: bool, now: float, q: QualityConfig
) -> None:
    success = outcome.succeeded
    ttft = float(outcome.ttft_ms) if success and streamed and outcome.ttft_ms is not None else None
    live.stats.record(now, failure=outcome.counts_as_failure, ttft_ms=ttft)
    if success and outcome.ttft_ms is not None:
        live.observe_latency(float(outcome.ttft_ms))
    if live.breaker_since is not None:
        if success:
            live.stats.reset()
            live.breaker_since = None
        elif outcome.counts_as_failure:
            live.breaker_since = now
        else:
            live.touch()
        return
    count, failures, _ = live.stats.snapshot(now)
    if count and count >= q.min_requests and failures >= q.error_rate_threshold * count:
        live.breaker_since = now
    else:
        live.touch()  # the window and the TTFT average changed


def trial_started(live: LiveBackend, now: float) -> None:
    """A Route to a backend whose breaker is open is its half-open trial: restart the cooldown."""
    if live.breaker_since is not None:
        live.breaker_since = now
