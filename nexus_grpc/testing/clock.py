"""Fake time for tests: a monotonic clock and a wall clock, both plain callables (no patching)."""

from __future__ import annotations

from datetime import UTC, datetime

# 2025-06-15 12:00:00 UTC: mid-month, so month boundaries are only crossed on purpose.
DEFAULT_WALL = datetime(2025, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """Monotonic seconds that move only when told to; pass it wherever `time.monotonic` goes."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        self.now += seconds


class FakeWall:
    """Epoch seconds (UTC) that move only when told to; pass it wherever `time.time` goes."""

    __slots__ = ("now",)

    def __init__(self, start: float = DEFAULT_WALL) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def set(self, epoch_seconds: float) -> None:
        self.now = float(epoch_seconds)

    def set_utc(
        self, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0.0
    ) -> None:
        """Set to a UTC calendar time (fractional seconds allowed)."""
        whole = int(second)
        base = datetime(year, month, day, hour, minute, whole, tzinfo=UTC).timestamp()
        self.now = base + (second - whole)

    def advance(self, seconds: float) -> None:
        self.now += seconds


__all__ = ["DEFAULT_WALL", "FakeClock", "FakeWall"]
