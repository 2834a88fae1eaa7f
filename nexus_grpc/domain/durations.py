"""Durations as people read them."""

from __future__ import annotations

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000))


def readable_ms(ms: int) -> str:
    """`2611195824` → `30 d 5 h`: the two largest units, rounded down (below a second: `N ms`)."""
    if ms < 1000:
        return f"{max(ms, 0)} ms"
    parts: list[str] = []
    rest = ms
    for name, size in _UNITS:
        count, rest = divmod(rest, size)
        if count or parts:
            parts.append(f"{count} {name}")
        if len(parts) == 2:
            break
    if len(parts) == 2 and parts[1].startswith("0 "):
        parts.pop()
    return " ".join(parts)
