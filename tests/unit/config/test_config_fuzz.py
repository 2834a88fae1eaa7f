"""Whatever the TOML, the loader returns a Config or raises ConfigError, nothing else.

Documents are built from the schema's own section and key names (every key the loader reads for
the annotated example, which sets them all) with random TOML values: integers (huge ones too),
floats (inf, nan, 1e300, tiny ones), strings (control and invisible characters, broken URLs and
addresses, globs), booleans, arrays and tables, plus unknown keys and whole sections replaced by
a wrong type. Half start from nothing, half from the (valid) example with a few keys changed, so
that phases 2 and 3 both see them. 400 examples, about 5 seconds.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_grpc.config.errors import ConfigError
from nexus_grpc.config.loader import keys_read, load_config_text
from nexus_grpc.config.schema import Config

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "nexus.toml"
EXAMPLE_DOCUMENT = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
KEYS = sorted(k for k in keys_read(EXAMPLE.read_text(encoding="utf-8")) if not k.endswith(".*"))
ARRAYS_OF_TABLES = {"backends", "backends.models", "routing.policies"}
TABLES = sorted({k for k in KEYS if any(other.startswith(k + ".") for other in KEYS)})
LEAVES = [k for k in KEYS if k not in TABLES]

TRICKY_STRINGS = [
    "",
    " ",
    "-",
    "x",
    "adir",
    "afile/x",
    "http://[::1",
    "http://",
    "https://u:p@h",
    "http://h:99999",
    "http://127.0.0.1:8000",
    "localhost:abc",
    "[::1",
    ":9464",
    "[::1]:0",
    "unix:",
    "unix:/tmp/s",
    "redis://[::1",
    "redis://h:1/0",
    "gpt-4*",
    "{a,",
    "[",
    "[z-a]",
    "*" * 600,
    "\x00",
    "\x7f",
    "\u202e",
    "\u200d",
    "a\tb",
    "ollama",
    "generic",
    "sqlite",
    "memory",
    "redis",
    "restricted",
    "open",
    "unrestricted",
    "block_all",
    "summary",
    "global",
    "server.pem",
    "server.key",
    "garbage.pem",
    "~nosuchuser/x",
    "~/x",
]
SCALAR_KINDS: list[st.SearchStrategy[Any]] = [
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, -1, 5, 100, 2**31, 2**32, 2**63, 10**30, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 1e-10, 5e-324, 0.5, 1.5, 1000.0, math.inf, math.nan]),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(TRICKY_STRINGS),
]
# sampled first, so that each kind is drawn about as often (one_of favours the first branches)
SCALARS = st.sampled_from(SCALAR_KINDS).flatmap(lambda kind: kind)
CONTAINERS = st.one_of(
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=8), SCALARS, max_size=3),
    st.lists(st.lists(SCALARS, max_size=2), max_size=2),
)
VALUES = st.integers(min_value=0, max_value=7).flatmap(lambda n: CONTAINERS if n == 0 else SCALARS)


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also refuses a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def place(document: dict[str, Any], key: str, value: Any) -> None:
    """Set schema key `key` (`backends.models.id`) in `document`, creating its tables; a
    user-chosen part (`pricing.*.x`) was already replaced by a name."""
    parts = key.split(".")
    node: Any = document
    for depth, part in enumerate(parts[:-1]):
        path = ".".join(parts[: depth + 1])
        if not isinstance(node, dict):
            return
        if path in ARRAYS_OF_TABLES:
            items = node.setdefault(part, [{}])
            if not (isinstance(items, list) and items and isinstance(items[-1], dict)):
                return
            node = items[-1]
        else:
            node = node.setdefault(part, {})
    if isinstance(node, dict):
        node[parts[-1]] = value


def render(document: dict[str, Any]) -> str:
    return "\n".join(f"{toml_string(key)} = {toml_value(value)}" for key, value in document.items())


NAMES = st.sampled_from(["gpt-4", "m", "default", "a b", "x\u0007", ""]) | st.text(max_size=6)


def example_value(key: str) -> Any:
    node: Any = EXAMPLE_DOCUMENT
    for part in key.split("."):
        if isinstance(node, list):
            node = node[0]
        if not isinstance(node, dict):
            return None
        node = node.get(part, node.get("gpt-4o") if part == "*" else None)
    return node


# A change mostly keeps the type the example has at that key, so that many documents pass phase 2.
SAME_TYPE: dict[type, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: st.one_of(st.integers(min_value=-2, max_value=70000), st.sampled_from([0, 2**32, 10**30, 10**400])),
    float: st.one_of(
        st.floats(min_value=-1, max_value=1e6), st.sampled_from([0.0, 1e-10, 1e300, math.nan, 10**400])
    ),
    str: st.one_of(st.sampled_from(TRICKY_STRINGS), st.text(max_size=12)),
}
CHANGE = st.sampled_from(LEAVES).flatmap(
    lambda key: st.tuples(
        st.just(key),
        st.sampled_from([SAME_TYPE.get(type(example_value(key)), VALUES), VALUES]).flatmap(lambda v: v),
        NAMES,
    )
)
CHANGES = st.lists(CHANGE, min_size=1, max_size=3)
ASSIGNMENTS = st.lists(CHANGE, min_size=1, max_size=25)
BREAKAGES = st.lists(st.tuples(st.sampled_from(TABLES), VALUES), max_size=2)
UNKNOWN = st.lists(st.tuples(st.sampled_from([*TABLES, ""]), st.text(max_size=10), SCALARS), max_size=2)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    from_example=st.booleans(),
    assignments=ASSIGNMENTS,
    changes=CHANGES,
    breakages=BREAKAGES,
    unknown=UNKNOWN,
)
def test_the_loader_raises_nothing_but_config_error(
    from_example: bool,
    assignments: list[tuple[str, Any, str]],
    changes: list[tuple[str, Any, str]],
    breakages: list[tuple[str, Any]],
    unknown: list[tuple[str, str, Any]],
    files: Path,
) -> None:
    document: dict[str, Any] = copy.deepcopy(EXAMPLE_DOCUMENT) if from_example else {}
    if from_example:
        assignments, breakages, unknown = changes, breakages[:1] if len(changes) > 2 else [], []
        files = EXAMPLE.parent  # its tls/ files are there; nothing is written
    for key, value, name in assignments:
        place(document, key.replace("*", name.replace(".", "_") or "m"), value)
    for table, value in breakages:  # a whole table of the wrong type, or replaced
        place(document, table, value)
    for table, key, value in unknown:
        place(document, f"{table}.{key}" if table else key, value)
    text = render(document)
    try:
        config = load_config_text(text, source="fuzz.toml", base_dir=files)
    except ConfigError as exc:
        assert exc.issues, text
        for issue in exc.issues:
            assert issue.file == "fuzz.toml"
            assert issue.key_path and issue.problem
            str(issue)  # printable
    else:
        assert isinstance(config, Config)
