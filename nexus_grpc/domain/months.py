"""UTC months, the budget's accounting period: 'YYYY-MM' strings and their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime


def month_of(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m")


def month_start(epoch_seconds: float) -> float:
    d = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


def next_month_start(epoch_seconds: float) -> float:
    d = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def previous_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


def reset_text(epoch_seconds: float) -> str:
    """When the month of `epoch_seconds` resets, for people: '2026-12-01 00:00 UTC'."""
    return datetime.fromtimestamp(next_month_start(epoch_seconds), tz=UTC).strftime("%Y-%m-%d 00:00 UTC")


class MonthClock:
    """The UTC month of a wall-clock time, recomputed only when a boundary is crossed."""

    __slots__ = ("_from", "_month", "_until")

    def __init__(self) -> None:
        self._month = ""
        self._from = self._until = 0.0

    def __call__(self, wall: float) -> str:
        if not self._from <= wall < self._until:
            self._month = month_of(wall)
            self._from = month_start(wall)
            self._until = next_month_start(wall)
        return self._month
