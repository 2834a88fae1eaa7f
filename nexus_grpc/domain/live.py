"""Live state of one backend: status, in-flight requests, latency EMA, outcome statistics.

Plain mutable data owned by the registry; stages only read it (through their snapshot).
Times are monotonic seconds, injected by the caller.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

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

    def next_expiry(self) -> float | None:
        """When the oldest bucket leaves the window (the counts and the TTFT average change
        then without any new outcome); None when the window is empty."""
        if not self._buckets:
            return None
        return (self._buckets[0][0] + STAT_BUCKETS) * self._width

    def reset(self) -> None:
        self._buckets.clear()
        self.count = self.failures = self.ttft_n = 0
        self.ttft_sum = 0.0


class Watcher(Protocol):
    """Told when a backend's live state changed (the route index keeps its ranking current)."""

    def changed(self, live: LiveBackend) -> None: ...


class Slots(dict[str, float]):
    """In-flight decisions on one backend (decision id -> expiry, monotonic). Every change is
    told to the backend's watchers: the load score and saturation depend on it."""

    __slots__ = ("_live",)

    def __init__(self, live: LiveBackend) -> None:
        super().__init__()
        self._live = live

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        self._live.touch()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._live.touch()

    def pop(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        value = super().pop(key)
        self._live.touch()
        return value

    def clear(self) -> None:
        super().clear()
        self._live.touch()


class LiveBackend:
    """Mutable live state of one backend id; survives config reloads while the id remains.
    Whatever changes it — a slot taken or freed, an outcome, a probe, a status — tells its
    watchers (`touch`)."""

    __slots__ = (
        "_breaker_since",
        "_latency_ema_ms",
        "admin_status",
        "in_flight",
        "loading_eta_at",
        "loading_progress",
        "probe_failures",
        "probe_successes",
        "reason",
        "stats",
        "status",
        "version",
        "watchers",
    )

    def __init__(self, status: BackendStatus, window_seconds: float) -> None:
        self.watchers: list[Watcher] = []
        self.status = status
        self.admin_status: BackendStatus | None = None  # admin-set DRAINING/UNHEALTHY sticks
        self.reason = ""
        self.in_flight = Slots(self)  # decision id -> expiry (monotonic)
        self._latency_ema_ms = 0.0
        self.loading_eta_at: float | None = None  # monotonic time the loading ETA runs out
        self.loading_progress: int | None = None
        self.stats = OutcomeStats(window_seconds)
        self._breaker_since: float | None = None  # quality breaker opened (or last trial) at
        self.probe_failures = 0
        self.probe_successes = 0
        self.version = 0  # bumped on every status change

    def touch(self) -> None:
        for watcher in self.watchers:
            watcher.changed(self)

    @property
    def latency_ema_ms(self) -> float:
        return self._latency_ema_ms

    @latency_ema_ms.setter
    def latency_ema_ms(self, value: float) -> None:
        self._latency_ema_ms = value
        self.touch()

    @property
    def breaker_since(self) -> float | None:
        return self._breaker_since

    @breaker_since.setter
    def breaker_since(self, value: float | None) -> None:
        self._breaker_since = value
        self.touch()

    def loading_eta_ms(self, now: float) -> int:
        """Remaining ETA; counts down from when it was set, stays 0 (still LOADING) when run out."""
        if self.loading_eta_at is None:
            return 0
        return max(0, int((self.loading_eta_at - now) * 1000))

    def observe_latency(self, sample_ms: float) -> None:
        """EMA kept as a float: new = (sample + 4*old)/5, first sample taken as is."""
        if self._latency_ema_ms == 0.0:
            self.latency_ema_ms = float(sample_ms)
        else:
            self.latency_ema_ms = (sample_ms + 4 * self._latency_ema_ms) / 5

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
        self.touch()
