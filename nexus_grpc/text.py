"""Words for people: durations beside their milliseconds, counted nouns."""

from __future__ import annotations

_UNITS = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s"))


def duration(ms: int) -> str:
    """`17495` -> `17.5 s`, `125000` -> `2 min 5 s`, `2611195824` -> `30 d 5 h`: the two largest
    units, seconds with one decimal below a minute."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 59_950:  # 59.95 s would print as 60.0 s
        return f"{ms / 1000:.1f} s"
    parts: list[str] = []
    rest = ms
    for size, unit in _UNITS:
        count, rest = divmod(rest, size)
        if count or parts:
            parts.append(f"{count} {unit}")
        if len(parts) == 2:
            break
    if len(parts) == 2 and parts[1].startswith("0 "):
        parts.pop()
    return " ".join(parts)


def ms(value: int) -> str:
    """Milliseconds as printed by the CLI: `17495 ms (17.5 s)`; under a second, `700 ms`."""
    return f"{value} ms" if value < 1000 else f"{value} ms ({duration(value)})"


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 policy`, `2 policies`, `0 warnings`."""
    if count == 1:
        return f"1 {word}"
    if many is None:
        many = word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in "aeiou" else word + "s"
    return f"{count} {many}"
