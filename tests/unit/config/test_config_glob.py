from __future__ import annotations

import pytest

from nexus_grpc.config.glob import GlobError, compile_glob

MATCHES = [
    # (pattern, text, matches)
    ("gpt-4*", "gpt-4", True),
    ("gpt-4*", "gpt-4-turbo", True),
    ("gpt-4*", "gpt-3.5-turbo", False),
    ("gpt-4*", "my-gpt-4", False),  # full match, not search
    ("*", "", True),
    ("*", "org/model:tag", True),
    ("llama3:*", "llama3:70b", True),
    ("llama3:*", "llama3", False),
    ("*70b", "meta/llama3:70b", True),  # `*` crosses `/` and `:`
    ("a*z", "a/b:c\nz", True),
    ("llama?:8b", "llama3:8b", True),
    ("llama?:8b", "llama:8b", False),
    ("llama?:8b", "llama31:8b", False),
    ("?", "/", True),
    ("v[123]", "v2", True),
    ("v[123]", "v4", False),
    ("v[!123]", "v4", True),
    ("v[!123]", "v1", False),
    ("v[!123]", "v", False),
    ("v[a-c]", "vb", True),
    ("v[a-c]", "vd", False),
    ("v[]]", "v]", True),
    ("v[-x]", "v-", True),
    ("{gpt,claude}-*", "gpt-4", True),
    ("{gpt,claude}-*", "claude-3-opus", True),
    ("{gpt,claude}-*", "gemini-pro", False),
    ("{gpt-4*,claude-?}", "gpt-4-turbo", True),
    ("{gpt-4*,claude-?}", "claude-3", True),
    ("{gpt-4*,claude-?}", "claude-35", False),
    ("x{a,}", "x", True),
    ("x{[ab],c}", "xb", True),
    ("GPT-4", "gpt-4", False),  # case-sensitive
    ("gpt-4.5", "gpt-4x5", False),  # `.` is literal
    ("a+b(c)|d^$", "a+b(c)|d^$", True),  # regex specials are literal
    ("a}b", "a}b", True),  # a stray `}` is literal
    ("a,b", "a,b", True),  # `,` outside braces is literal
    ("a]b", "a]b", True),
    ("[^a]", "^", True),  # `^` is not negation; only `!` is
    ("[^a]", "b", False),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), MATCHES)
def test_glob_matches(pattern: str, text: str, expected: bool) -> None:
    regex = compile_glob(pattern)
    assert bool(regex.fullmatch(text)) is expected
    # anchored both ends: match and search agree with fullmatch
    assert bool(regex.match(text)) is expected
    assert bool(regex.search(text)) is expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("gpt-[4", "unbalanced '['"),
        ("[", "unbalanced '['"),
        ("[!", "unbalanced '['"),
        ("[]", "unbalanced '['"),
        ("{a,b", "unbalanced '{'"),
        ("gpt-{4", "unbalanced '{'"),
        ("{a,{b,c}}", "nested '{'"),
        ("[z-a]", "empty range"),
    ],
)
def test_glob_errors(pattern: str, problem: str) -> None:
    with pytest.raises(GlobError) as info:
        compile_glob(pattern)
    assert problem in str(info.value)
    assert repr(pattern) in str(info.value)
    assert isinstance(info.value, ValueError)
