"""The policy glob grammar, compiled once to a small NFA that matches in linear time.

`*` any run of characters (including `/` and `:`), `?` one character, `[abc]`, `[a-z]`, `[!abc]`
(a leading `]` is literal), `{a,b}` (not nested; alternatives may hold `*`, `?` and classes).
Case-sensitive; a match is always a full match. Every other character is literal, and `,` and `}`
are literal outside braces. An unbalanced `[` or `{`, a nested `{` or an empty range such as
`[z-a]` is an error, as is a pattern longer than `MAX_PATTERN_BYTES`.

Matching simulates the NFA with a set of states (no recursion, no backtracking, no regex): each
character of the name moves every state of the set at most once, so a match costs at most
`states x (len(name) + 1)` state insertions, and the NFA has at most one state per character of
the pattern. A hostile name against a pattern of many stars is as cheap as any other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_PATTERN_BYTES", "Glob", "GlobError"]

# The longest pattern accepted, in UTF-8 bytes (a config error beyond).
MAX_PATTERN_BYTES = 512

# NFA state kinds. LIT, ANY, CLASS and STAR consume one character; SPLIT and JUMP consume none.
_LIT = 0  # the character in `arg`
_ANY = 1  # `?`
_CLASS = 2  # a `_CharClass` in `arg`
_STAR = 3  # `*`: consumes any character and stays; also continues to the next state for free
_SPLIT = 4  # `{`: continues to every alternative's first state (the indices in `arg`)
_JUMP = 5  # `,`, ending an alternative: continues to the state after the `}` (`arg` = (index,))
_META = frozenset("*?[{")


class GlobError(ValueError):
    """A glob pattern that cannot be compiled (unbalanced `[` or `{`, nested `{`, bad range,
    too long)."""


@dataclass(frozen=True, slots=True)
class _CharClass:
    negate: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def __contains__(self, char: str) -> bool:
        hit = char in self.chars or any(low <= char <= high for low, high in self.ranges)
        return hit is not self.negate


_Arg = str | _CharClass | tuple[int, ...] | None  # LIT: str, CLASS: class, SPLIT/JUMP: targets


class Glob:
    """A compiled policy glob: `Glob("gpt-4*").matches("gpt-4-turbo")`. Immutable; equal when the
    patterns are equal. Raises `GlobError` for a pattern outside the grammar."""

    __slots__ = ("_args", "_kinds", "_literal", "_min_len", "_prefix", "_suffix", "pattern")

    def __init__(self, pattern: str) -> None:
        size = len(pattern.encode("utf-8", "surrogatepass"))
        if size > MAX_PATTERN_BYTES:
            raise GlobError(f"the glob is {size} bytes; at most {MAX_PATTERN_BYTES} allowed")
        self.pattern = pattern
        self._kinds, self._args = _compile(pattern)
        # Cheap pre-filters that only ever reject: a pattern without `*?[{` is a plain name; else
        # the literal prefix and, for a pattern without braces, the literal suffix and the least
        # length a name needs (every state but STAR consumes exactly one character).
        self._literal: str | None = None if _META.intersection(pattern) else pattern
        self._prefix = _literal_run(self._kinds, self._args)
        braces = _SPLIT in self._kinds
        self._suffix = "" if braces else _literal_run(self._kinds[::-1], self._args[::-1])[::-1]
        self._min_len = 0 if braces else sum(1 for kind in self._kinds if kind != _STAR)

    @classmethod
    def never(cls, pattern: str) -> Glob:
        """A stand-in for a pattern that failed to compile: it matches no name at all."""
        glob = cls("[!\x00-\U0010ffff]")
        glob.pattern = pattern
        glob._literal = None
        return glob

    def matches(self, name: str) -> bool:
        """True when the whole of `name` matches the pattern."""
        if self._literal is not None:
            return name == self._literal
        if len(name) < self._min_len or not name.startswith(self._prefix) or not name.endswith(self._suffix):
            return False
        if self._kinds[-1] == _STAR and len(self._prefix) == len(self._kinds) - 1:
            return True  # `prefix*`, the common case
        return self._run(name)[0]

    def trace(self, name: str) -> tuple[bool, int]:
        """(matches, steps) from the NFA alone, without the pre-filters; `steps` counts the states
        inserted into the state sets, at most `len(pattern) * (len(name) + 1)`."""
        return self._run(name)

    def _run(self, name: str) -> tuple[bool, int]:
        kinds, args = self._kinds, self._args
        mark = [-1] * len(kinds)  # the generation (0 = before the first character) a state joined
        current: list[int] = []
        accept, steps = self._closure([0], 0, mark, current)
        for generation, char in enumerate(name, 1):
            if not current:  # no state left: nothing can match any more
                return False, steps
            seeds: list[int] = []
            for state in current:
                kind = kinds[state]
                if kind == _STAR:
                    seeds.append(state)
                elif kind == _ANY or (kind == _LIT and args[state] == char):
                    seeds.append(state + 1)
                elif kind == _CLASS:
                    char_class = args[state]
                    if isinstance(char_class, _CharClass) and char in char_class:
                        seeds.append(state + 1)
            current = []
            accept, added = self._closure(seeds, generation, mark, current)
            steps += added
        return accept, steps

    def _closure(
        self, seeds: list[int], generation: int, mark: list[int], out: list[int]
    ) -> tuple[bool, int]:
        """Add `seeds` and every state they reach without consuming to `out`, each state at most
        once per generation; returns (the end was reached, states added)."""
        kinds, args = self._kinds, self._args
        end = len(kinds)
        accept = False
        added = 0
        stack = seeds
        while stack:
            state = stack.pop()
            if state == end:
                accept = True
                continue
            if mark[state] == generation:
                continue
            mark[state] = generation
            added += 1
            targets = args[state]
            if isinstance(targets, tuple):  # SPLIT or JUMP
                stack.extend(targets)
                continue
            out.append(state)
            if kinds[state] == _STAR:  # a star also matches the empty run
                stack.append(state + 1)
        return accept, added

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _literal_run(kinds: tuple[int, ...], args: tuple[_Arg, ...]) -> str:
    """The characters of the LIT states at the start of `kinds`."""
    run: list[str] = []
    for kind, arg in zip(kinds, args, strict=True):
        if kind != _LIT or not isinstance(arg, str):
            break
        run.append(arg)
    return "".join(run)


def _compile(pattern: str) -> tuple[tuple[int, ...], tuple[_Arg, ...]]:
    """The NFA's states as parallel tuples (kind, argument); the state after the last is the end.
    Every state comes from a different character of the pattern, so there are at most as many."""
    kinds: list[int] = []
    args: list[_Arg] = []
    brace_at = -1  # position of the open `{`, or -1 outside braces
    split = -1  # the SPLIT state of the open brace
    starts: list[int] = []  # the first state of each alternative so far
    jumps: list[int] = []  # the JUMP states ending the alternatives so far
    after_star = False  # the previous state of this sequence is a STAR (`**` is one `*`)
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            if not after_star:
                kinds.append(_STAR)
                args.append(None)
            after_star = True
            i += 1
            continue
        after_star = False
        if char == "?":
            kinds.append(_ANY)
            args.append(None)
        elif char == "[":
            char_class, i = _char_class(pattern, i)
            kinds.append(_CLASS)
            args.append(char_class)
            continue
        elif char == "{":
            if brace_at >= 0:
                raise GlobError(
                    f"nested '{{' at position {i} in glob {pattern!r} (braces opened at {brace_at} "
                    "cannot nest)"
                )
            brace_at = i
            split = len(kinds)
            kinds.append(_SPLIT)
            args.append(())
            starts = [len(kinds)]
            jumps = []
        elif char == "," and brace_at >= 0:
            jumps.append(len(kinds))
            kinds.append(_JUMP)
            args.append(())
            starts.append(len(kinds))
        elif char == "}" and brace_at >= 0:
            brace_at = -1
            args[split] = tuple(starts)
            for jump in jumps:
                args[jump] = (len(kinds),)  # the state after the group
        else:
            kinds.append(_LIT)
            args.append(char)
        i += 1
    if brace_at >= 0:
        raise GlobError(f"unbalanced '{{' at position {brace_at} in glob {pattern!r} (no closing '}}')")
    return tuple(kinds), tuple(args)


def _char_class(pattern: str, start: int) -> tuple[_CharClass, int]:
    """Parse the class opening at `start`; returns it and the index after its `]`."""
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
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low > high:
                raise GlobError(f"empty range '{low}-{high}' at position {start} in glob {pattern!r}")
            ranges.append((low, high))
            k += 3
        else:
            chars.add(body[k])
            k += 1
    return _CharClass(negate, frozenset(chars), tuple(ranges)), j + 1
