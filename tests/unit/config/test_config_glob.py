"""The policy glob grammar: table-driven semantics, errors, linear work on hostile input, and a
property test against a slow reference (the regex translation the matcher replaced)."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_grpc.config.glob import MAX_PATTERN_BYTES, Glob, GlobError

MATCHES = [
    # (pattern, text, matches)
    ("gpt-4*", "gpt-4", True),
    ("gpt-4*", "gpt-4-turbo", True),
    ("gpt-4*", "gpt-3.5-turbo", False),
    ("gpt-4*", "my-gpt-4", False),  # full match, not search
    ("*", "", True),
    ("*", "org/model:tag", True),
    ("", "", True),
    ("", "a", False),
    ("llama3:*", "llama3:70b", True),
    ("llama3:*", "llama3", False),
    ("*70b", "meta/llama3:70b", True),  # `*` crosses `/` and `:`
    ("a*z", "a/b:c\nz", True),
    ("a*a", "a", False),  # prefix and suffix may not overlap
    ("a*a", "aa", True),
    ("**", "anything", True),
    ("a**b", "ab", True),
    ("llama?:8b", "llama3:8b", True),
    ("llama?:8b", "llama:8b", False),
    ("llama?:8b", "llama31:8b", False),
    ("?", "/", True),
    ("?", "\n", True),
    ("?", "", False),
    ("v[123]", "v2", True),
    ("v[123]", "v4", False),
    ("v[!123]", "v4", True),
    ("v[!123]", "v1", False),
    ("v[!123]", "v", False),
    ("v[a-c]", "vb", True),
    ("v[a-c]", "vd", False),
    ("v[a-c-e]", "v-", True),  # `-` after a range is literal
    ("v[a-c-e]", "vd", False),
    ("v[]]", "v]", True),
    ("v[!]]", "v]", False),
    ("v[!]]", "vx", True),
    ("v[-x]", "v-", True),
    ("v[x-]", "v-", True),
    ("v[*?]", "v*", True),  # specials are literal inside a class
    ("v[*?]", "va", False),
    ("v[{,}]", "v,", True),
    ("{gpt,claude}-*", "gpt-4", True),
    ("{gpt,claude}-*", "claude-3-opus", True),
    ("{gpt,claude}-*", "gemini-pro", False),
    ("{gpt-4*,claude-?}", "gpt-4-turbo", True),
    ("{gpt-4*,claude-?}", "claude-3", True),
    ("{gpt-4*,claude-?}", "claude-35", False),
    ("x{a,}", "x", True),
    ("x{a,}", "xa", True),
    ("x{}", "x", True),
    ("{a,b}{c,d}", "bd", True),
    ("{a,b}{c,d}", "ba", False),
    ("{*a,b*}c", "xxac", True),
    ("{*a,b*}c", "bxc", True),
    ("{*a,b*}c", "xc", False),
    ("x{[ab],c}", "xb", True),
    ("x{[,],c}", "x,", True),  # a `,` inside a class does not split
    ("GPT-4", "gpt-4", False),  # case-sensitive
    ("gpt-4.5", "gpt-4x5", False),  # `.` is literal
    ("a+b(c)|d^$", "a+b(c)|d^$", True),  # regex specials are literal
    ("a\\*", "a\\xyz", True),  # no escapes: `\` is literal
    ("a}b", "a}b", True),  # a stray `}` is literal
    ("a,b", "a,b", True),  # `,` outside braces is literal
    ("a]b", "a]b", True),
    ("[^a]", "^", True),  # `^` is not negation; only `!` is
    ("[^a]", "b", False),
    ("mod\u00e8le-*", "mod\u00e8le-1", True),
    ("[\u00e0-\u00ff]", "\u00e8", True),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), MATCHES)
def test_glob_matches(pattern: str, text: str, expected: bool) -> None:
    glob = Glob(pattern)
    assert glob.matches(text) is expected
    assert glob.trace(text)[0] is expected  # the NFA without the pre-filters agrees
    assert bool(reference(pattern).fullmatch(text)) is expected  # and so does the old translation


# fnmatch-style expectations: where the grammars overlap (no braces, no `^` in classes) a name
# matches exactly when fnmatch.fnmatchcase says so.
FNMATCH = [
    ("gpt-4*", ["gpt-4", "gpt-4o", "gpt-3", "xgpt-4"]),
    ("*/*:*", ["org/model:tag", "model:tag", "org/model", "a/b:c:d", "/:"]),
    ("llama?:[78]b", ["llama3:8b", "llama3:7b", "llama3:9b", "llama:8b", "llama31:8b"]),
    ("[!a-m]*", ["nemo", "alpha", "z", "", "M"]),
    ("*[0-9]", ["v1", "v", "9", "vx"]),
    ("[]x]?", ["]a", "xa", "ya", "]"]),
    ("a*b*c*d", ["abcd", "aXbYcZd", "abdc", "aabbccdd", "abc"]),
]


@pytest.mark.parametrize(("pattern", "names"), FNMATCH)
def test_glob_agrees_with_fnmatch_where_the_grammars_overlap(pattern: str, names: list[str]) -> None:
    glob = Glob(pattern)
    for name in names:
        assert glob.matches(name) is fnmatch.fnmatchcase(name, pattern), name


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("gpt-[4", "unbalanced '['"),
        ("[", "unbalanced '['"),
        ("[!", "unbalanced '['"),
        ("[]", "unbalanced '['"),
        ("[!]", "unbalanced '['"),
        ("{a,b", "unbalanced '{'"),
        ("gpt-{4", "unbalanced '{'"),
        ("{a,{b,c}}", "nested '{'"),
        ("[z-a]", "empty range"),
    ],
)
def test_glob_errors(pattern: str, problem: str) -> None:
    with pytest.raises(GlobError) as info:
        Glob(pattern)
    assert problem in str(info.value)
    assert repr(pattern) in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(re.error if problem != "unbalanced '['" else GlobError):
        reference(pattern).fullmatch("")  # the old translation refused them too


def test_pattern_length_is_capped() -> None:
    Glob("a" * MAX_PATTERN_BYTES)
    with pytest.raises(GlobError, match=f"at most {MAX_PATTERN_BYTES} allowed"):
        Glob("a" * (MAX_PATTERN_BYTES + 1))
    with pytest.raises(GlobError, match="bytes"):
        Glob("\u00e8" * (MAX_PATTERN_BYTES // 2 + 1))  # bytes, not characters


def test_glob_is_a_value() -> None:
    assert Glob("a*") == Glob("a*")
    assert Glob("a*") != Glob("a?")
    assert hash(Glob("a*")) == hash(Glob("a*"))
    assert repr(Glob("a*")) == "Glob('a*')"
    never = Glob.never("a[")
    assert never.pattern == "a["
    assert not any(never.matches(n) for n in ("", "a[", "a", "\x00", "\U0010ffff"))


# ---- linear work ---------------------------------------------------------------------------

HOSTILE = [
    # (pattern, name): the classic catastrophic cases for a backtracking matcher
    ("*a" * 40 + "b", "a" * 170),
    ("a*" * 40 + "b", "a" * 200),
    ("*" + "?*" * 40 + "x", "y" * 160),
    ("{*a*,*b*,a*a*a*}" * 6 + "z", "ab" * 100),
    ("*{a*,*a,a*a}*" * 8 + "!", "a" * 300),
    ("[a-z]*" * 50 + "0", "q" * 256),
    ("{" + ",".join(["*a*"] * 30) + "}x", "a" * 180),
]


@pytest.mark.parametrize(("pattern", "name"), HOSTILE, ids=[f"hostile-{i}" for i in range(len(HOSTILE))])
def test_hostile_input_costs_at_most_pattern_times_name(pattern: str, name: str) -> None:
    glob = Glob(pattern)
    matched, steps = glob.trace(name)
    assert not matched
    assert steps <= len(pattern) * (len(name) + 1)
    assert glob.matches(name) is False
    # the bound holds for every prefix too: the work grows linearly with the name
    for cut in (len(name) // 4, len(name) // 2):
        assert glob.trace(name[:cut])[1] <= len(pattern) * (cut + 1)


def test_work_grows_linearly_with_the_name() -> None:
    glob = Glob("*a" * 40 + "b")
    steps = [glob.trace("a" * n)[1] for n in (200, 300, 400)]
    # once the state set is full, every further character costs the same, at most one insertion
    # per state of the NFA (here 81 states): no blow-up, however long the name
    assert steps[2] - steps[1] == steps[1] - steps[0] <= len(glob.pattern) * 100


# ---- property: the NFA agrees with the regex translation it replaced -------------------------


def reference(pattern: str) -> re.Pattern[str]:
    """The former implementation: the glob translated to a full-match regular expression. It
    backtracks, so it is only fit for small inputs. Raises GlobError for an unbalanced `[`, and
    re.error (or GlobError) for the other malformed patterns."""
    out: list[str] = []
    in_brace = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i + 1
            negate = j < len(pattern) and pattern[j] == "!"
            j += negate
            body_start = j
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j >= len(pattern):
                raise GlobError("unbalanced '['")
            body = pattern[body_start:j]
            parts: list[str] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    parts.append(f"{re.escape(body[k])}-{re.escape(body[k + 2])}")
                    k += 3
                else:
                    parts.append(re.escape(body[k]))
                    k += 1
            out.append("[" + ("^" if negate else "") + "".join(parts) + "]")
            i = j + 1
            continue
        elif char == "{":
            out.append("((?:" if in_brace else "(?:")  # a nested `{` leaves an unbalanced group
            in_brace = True
        elif char == "," and in_brace:
            out.append("|")
        elif char == "}" and in_brace:
            in_brace = False
            out.append(")")
        else:
            out.append(re.escape(char))
        i += 1
    if in_brace:
        out.append("(")  # unbalanced `{`: an unbalanced regex too
    return re.compile(r"\A(?:" + "".join(out) + r")\Z", re.DOTALL)


ALPHABET = "ab"
PATTERN_ALPHABET = "ab*?[]!-{},"


@settings(max_examples=1500, deadline=None)
@given(
    pattern=st.text(alphabet=PATTERN_ALPHABET, max_size=10),
    names=st.lists(st.text(alphabet=ALPHABET + "-,]", max_size=8), min_size=1, max_size=6),
)
@example(pattern="{a*,b}", names=["a", "b", "ab", "ba", ""])
@example(pattern="*[!a]*", names=["a", "b", "ab", ""])
@example(pattern="[]-a]", names=["]", "-", "a", "b"])
def test_glob_agrees_with_the_regex_reference(pattern: str, names: list[str]) -> None:
    try:
        expected = reference(pattern)
    except (GlobError, re.error):
        with pytest.raises(GlobError):
            Glob(pattern)
        return
    glob = Glob(pattern)
    for name in names:
        assert glob.matches(name) is bool(expected.fullmatch(name)), name
        matched, steps = glob.trace(name)
        assert matched is bool(expected.fullmatch(name)), name
        assert steps <= max(1, len(pattern)) * (len(name) + 1)
