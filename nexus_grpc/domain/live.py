"""Live state of one backend: status, in-flight requests, latency EMA, outcome statistics.

Plain mutable data owned by the registry; stages only read it (through their snapshot).
Times are monotonic seconds, injected by the caller.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from nexus_grpc.domain.enums import BackendStatus

STAT_BUCKETS = 60


class OutcomeStats:
    """Outcome counts over a sliding window, in `STAT_BUCKETS` fixed buckets (bounded memory)."""

    __slots__ = ("_buckets", "_width", "count", "failures", "ttft_n", "ttft_sum", "window")

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._width = max(window_seconds / STAT_BUCKETS, 1e-6)
        # each bucket: [index, count, failures, ttft_sum, ttft_n]
        self._buckets: deque[list[float]] = deque()
        self.count = 0
        self.failures = 0
        self.ttft_sum = 0.0
        self.ttft_n = 0

    def _expire(self, now: float) -> None:
        oldest = int(now / self._width) - STAT_BUCKETS + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            _, c, f, ts, tn = buckets.popleft()
            self.count -= int(c)
            self.failures -= int(f)
            self.ttft_sum -= ts
            self.ttft_n -= int(tn)

    def record(self, now: float, *, failure: bool, ttft_ms: float | None) -> None:
        self._expire(now)
        index = int(now / self._width)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0, 0.0, 0])
        b = self._buckets[-1]
        b[1] += 1
        self.count += 1
        if failure:
            b[2] += 1
            self.failures += 1
        if ttft_ms is not None:
            b[3] += ttft_ms
            b[4] += 1
            self.ttft_sum += ttft_ms
            self.ttft_n += 1

    def snapshot(self, now: float) -> tuple[int, int, float]:
        """(outcomes, failures, average TTFT ms or 0) over the window ending at `now`."""
        if self._buckets:
            self._expire(now)
        avg = self.ttft_sum / self.ttft_n if self.ttft_n else 0.0
        return self.count, self.failures, avg

    def reset(self) -> None:
        self._buckets.clear()
        self.count = self.failures = self.ttft_n = 0
        self.ttft_sum = 0.0


class LiveBackend:
    """Mutable live state of one backend id; survives config reloads while the id remains."""

    __slots__ = (
        "admin_status",
        "breaker_since",
        "exclusion_cache",
        "in_flight",
        "latency_ema_ms",
        "loading_cache",
        "loading_eta_at",
        "loading_progress",
        "probe_failures",
        "probe_successes",
        "quality_cache",
        "reason",
        "stats",
        "status",
        "version",
    )

    def __init__(self, status: BackendStatus, window_seconds: float) -> None:
        self.status = status
        self.admin_status: BackendStatus | None = None  # admin-set DRAINING/UNHEALTHY sticks
        self.reason = ""
        self.in_flight: dict[str, float] = {}  # decision_id -> expiry (monotonic)
        self.latency_ema_ms = 0.0
        self.loading_eta_at: float | None = None  # monotonic time the loading ETA runs out
        self.loading_progress: int | None = None
        self.stats = OutcomeStats(window_seconds)
        self.breaker_since: float | None = None  # quality breaker opened (or last trial) at
        self.probe_failures = 0
        self.probe_successes = 0
        self.version = 0  # bumped on every status change
        # (version, model, prepared exclusion) for the scheduler's status reasons
        self.exclusion_cache: tuple[int, str, Any] | None = None
        self.quality_cache: tuple[tuple[str, int, int], Any] | None = None
        self.loading_cache: tuple[tuple[int, str, int], Any] | None = None

    def loading_eta_ms(self, now: float) -> int:
        """Remaining ETA; counts down from when it was set, stays 0 (still LOADING) when run out."""
        if self.loading_eta_at is None:
            return 0
        return max(0, int((self.loading_eta_at - now) * 1000))

    def observe_latency(self, sample_ms: float) -> None:
        """EMA kept as a float: new = (sample + 4*old)/5, first sample taken as is."""
        if self.latency_ema_ms == 0.0:
            self.latency_ema_ms = float(sample_ms)
        else:
            self.latency_ema_ms = (sample_ms + 4 * self.latency_ema_ms) / 5

    def set_status(
        self, status: BackendStatus, *, eta_ms: int | None, progress: int | None, now: float, reason: str = ""
    ) -> None:
        self.status = status
        self.reason = reason
        if status == BackendStatus.LOADING:
            self.loading_eta_at = now + eta_ms / 1000 if eta_ms is not None else None
            self.loading_progress = progress
        else:
            self.loading_eta_at = None
            self.loading_progress = None
        self.version += 1
