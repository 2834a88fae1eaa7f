"""The policy glob grammar of SPEC §3, compiled once to a full-match regular expression.

`*` any run of characters (including `/` and `:`), `?` one character, `[abc]`, `[a-z]`, `[!abc]`,
`{a,b}` (not nested; alternatives may hold `*`, `?` and classes). Case-sensitive. Every other
character is literal.
"""

from __future__ import annotations

import re


class GlobError(ValueError):
    """A glob pattern that cannot be compiled (unbalanced `[` or `{`, nested `{`, bad range)."""


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile `pattern` to a regex anchored at both ends: `match`, `search` and `fullmatch` agree."""
    out: list[str] = []
    brace_at = -1  # position of the open `{`, or -1 outside braces
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            regex, i = _char_class(pattern, i)
            out.append(regex)
            continue
        elif char == "{":
            if brace_at >= 0:
                raise GlobError(
                    f"nested '{{' at position {i} in glob {pattern!r} (braces opened at {brace_at} "
                    "cannot nest)"
                )
            brace_at = i
            out.append("(?:")
        elif char == "," and brace_at >= 0:
            out.append("|")
        elif char == "}" and brace_at >= 0:
            brace_at = -1
            out.append(")")
        else:
            out.append(re.escape(char))
        i += 1
    if brace_at >= 0:
        raise GlobError(f"unbalanced '{{' at position {brace_at} in glob {pattern!r} (no closing '}}')")
    return re.compile(r"\A(?:" + "".join(out) + r")\Z", re.DOTALL)


def _char_class(pattern: str, start: int) -> tuple[str, int]:
    """Translate the class opening at `start`; returns the regex and the index after its `]`."""
    j = start + 1
    negate = j < len(pattern) and pattern[j] == "!"
    if negate:
        j += 1
    body_start = j
    if j < len(pattern) and pattern[j] == "]":  # a leading `]` is literal, as in fnmatch
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 1
    if j >= len(pattern):
        raise GlobError(f"unbalanced '[' at position {start} in glob {pattern!r} (no closing ']')")
    body = pattern[body_start:j]
    parts: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low > high:
                raise GlobError(f"empty range '{low}-{high}' at position {start} in glob {pattern!r}")
            parts.append(f"{re.escape(low)}-{re.escape(high)}")
            k += 3
        else:
            parts.append(re.escape(body[k]))
            k += 1
    return "[" + ("^" if negate else "") + "".join(parts) + "]", j + 1
