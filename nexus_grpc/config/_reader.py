"""Typed, path-aware access to parsed TOML tables for phase 2 (types and ranges).

Every getter records a `ConfigIssue` and returns the default instead of raising, so one pass
collects every problem of the phase. `Table.finish()` reports the keys nobody asked for.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_grpc.config.errors import ConfigIssue
from nexus_grpc.domain import validate
from nexus_grpc.domain.money import NANO, usd_to_nano
from nexus_grpc.errors import FieldError

# Keys ("section.key", array indices dropped: "backends.models.vision") and enum values
# ("ledger.kind=redis") this build refuses with "not supported yet". Every key of
# docs/configuration.md is supported today; a build that lacks a feature lists it here instead of
# ignoring it.
UNSUPPORTED: frozenset[str] = frozenset()

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
MAX_PATH_BYTES = 4096  # the longest file path accepted (Linux PATH_MAX)


def quote_key(key: str) -> str:
    """A user-chosen key as TOML writes it, always quoted: `"gpt-4"`. Characters a terminal would
    not show (controls, bidi marks, zero-width joiners) are written as `\\uXXXX` escapes."""
    quoted = json.dumps(key, ensure_ascii=False)
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in quoted)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(value: object) -> str:
    """A TOML value as an error message shows it: bounded in length, huge integers summarized."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"{'-' if value < 0 else ''}an integer of {len(format(abs(value), 'x')) * 4} bits"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def join(path: str, key: str) -> str:
    """Append a schema key to a key path (quoted when it is not a bare TOML key)."""
    part = key if _BARE_KEY.fullmatch(key) else quote_key(key)
    return f"{path}.{part}" if path else part


def type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # TOML dates and times


class Issues:
    """The problems found so far, all in one file; `asked` records every schema key a builder
    asked for (`backends.models.id`, `pricing.*.input_per_1k`), present or not."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigIssue] = []
        self.asked: set[str] = set()

    def add(self, key_path: str, problem: str) -> None:
        self.items.append(ConfigIssue(self.file, key_path, problem))

    def __bool__(self) -> bool:
        return bool(self.items)


class Table:
    """One TOML table at a key path; `schema` is the path without indices or user keys."""

    def __init__(self, data: dict[str, Any], path: str, schema: str, issues: Issues) -> None:
        self.data = data
        self.path = path
        self.schema = schema
        self.issues = issues
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def schema_of(self, key: str) -> str:
        return f"{self.schema}.{key}" if self.schema else key

    def entries(self) -> list[tuple[str, object, str]]:
        """Every (user-chosen key, value, key path) of a map-like table such as `routing.aliases`."""
        self._seen.update(self.data)
        self.issues.asked.add(self.schema_of("*"))
        return [(key, value, f"{self.path}.{quote_key(key)}") for key, value in self.data.items()]

    def error(self, key: str, problem: str) -> None:
        self.issues.add(self.at(key), problem)

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str) -> object | None:
        """The raw value (None when absent); refuses keys this build does not support."""
        self._seen.add(key)
        self.issues.asked.add(self.schema_of(key))
        if key not in self.data:
            return None
        if self.schema_of(key) in UNSUPPORTED:
            self.error(key, "not supported yet")
            return None
        value: object = self.data[key]
        return value

    def finish(self) -> None:
        """Report every key nobody asked for, with the closest known key of this table."""
        for key in self.data:
            if key not in self._seen:
                close = difflib.get_close_matches(key, sorted(self._seen), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.error(key, f"unknown key{hint}")

    def check(self, key: str, value: str, rule: Callable[[str, str], object]) -> bool:
        """Run a `domain.validate` rule on a value of this table; its problem becomes an issue."""
        return check(self.issues, self.at(key), value, rule)

    # ---- scalars -------------------------------------------------------------------------

    def string(self, key: str, default: str, *, required: bool = False, non_empty: bool = False) -> str:
        value = self.take(key)
        if value is None:
            if required and key not in self.data:
                self.error(key, "required key is missing")
            return default
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {type_name(value)}")
            return default
        if (non_empty or required) and not value.strip():
            self.error(key, "must not be empty")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int, *, hint: str = "") -> int:
        """An integer in low..high; `hint` is appended to an out-of-range problem."""
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected an integer, got {type_name(value)}")
            return default
        if not low <= value <= high:
            self.error(key, f"{shown(value)} is out of range ({_range_text(low, high)}){hint}")
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float, *, positive: bool = False) -> float:
        """A float in low..high (greater than `low` when `positive`); integers are accepted,
        booleans and non-finite values are not."""
        value = self.take(key)
        if value is None:
            return default
        number = checked_number(self.issues, self.at(key), value, low, high, positive=positive)
        return default if number is None else number

    def duration(self, key: str, default: float, high: float, *, allow_zero: bool = False) -> float:
        """Seconds (fractions allowed), at most `high`; greater than 0 unless `allow_zero`."""
        return self.number(key, default, 0.0, high, positive=not allow_zero)

    def money(self, key: str, default_nano: int, high: float) -> int:
        """A USD amount in 0..high, as nano-USD; a positive amount below 1 nano-USD is refused
        (it would round to 0, which means something else: no limit, or free only)."""
        value = self.take(key)
        if value is None:
            return default_nano
        nano = checked_money(self.issues, self.at(key), value, high)
        return default_nano if nano is None else nano

    def boolean(self, key: str, default: bool) -> bool:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"expected a boolean (true or false), got {type_name(value)}")
            return default
        return value

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        """A case-insensitive enum, normalized to lower case."""
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {type_name(value)}")
            return default
        lowered = value.strip().lower()
        if lowered not in choices:
            self.error(key, f"{shown(value)} is not one of: {', '.join(choices)}")
            return default
        if f"{self.schema_of(key)}={lowered}" in UNSUPPORTED:
            self.error(key, f"{lowered!r} is not supported yet")
            return default
        return lowered

    def path_value(
        self, key: str, base_dir: Path | None, *, required: bool = False, non_empty: bool = False
    ) -> Path | None:
        """A file path: printable text (spaces allowed), `~` expanded, relative to the config
        file's directory; None when absent, "" or refused (reported)."""
        text = self.string(key, "", required=required, non_empty=non_empty)
        if not text or not self.check(key, text, text_rule(MAX_PATH_BYTES)):
            return None
        try:
            return resolve_path(text, base_dir)
        except RuntimeError as exc:  # `~user` of no such user, or no home directory
            self.error(key, f"{shown(text)}: cannot expand '~' ({exc})")
            return None

    # ---- containers ----------------------------------------------------------------------

    def table(self, key: str) -> Table | None:
        """A sub-table, or None when absent or of the wrong type (which is reported)."""
        value = self.take(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {type_name(value)}")
            return None
        return Table(value, self.at(key), self.schema_of(key), self.issues)

    def tables(self, key: str) -> list[Table]:
        """An array of tables (`[[key]]`)."""
        value = self.take(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected an array of tables, got {type_name(value)}")
            return []
        result: list[Table] = []
        for index, item in enumerate(value):
            path = f"{self.at(key)}[{index}]"
            if isinstance(item, dict):
                result.append(Table(item, path, self.schema_of(key), self.issues))
            else:
                self.issues.add(path, f"expected a table, got {type_name(item)}")
        return result


def resolve_path(text: str, base_dir: Path | None) -> Path:
    """A path from the file: relative ones are relative to the config file's directory."""
    path = Path(text).expanduser()
    if base_dir is None or path.is_absolute():
        return path
    return base_dir / path


def check(issues: Issues, path: str, value: str, rule: Callable[[str, str], object]) -> bool:
    """Run a `domain.validate` rule (called as `rule(value, path)`); False when it refused."""
    try:
        rule(value, path)
    except FieldError as exc:
        issues.add(path, exc.problem)
        return False
    return True


def checked_number(
    issues: Issues, path: str, value: object, low: float, high: float, *, positive: bool = False
) -> float | None:
    """`value` as a finite float in low..high (above `low` when `positive`), or None (reported).
    The range is checked before the conversion, so a huge integer is refused, not overflowed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        issues.add(path, f"expected a number, got {type_name(value)}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        issues.add(path, f"{value} is not a finite number")
        return None
    if not (value > low if positive else value >= low) or value > high:
        issues.add(path, f"{shown(value)} is out of range ({_range_text(low, high, positive=positive)})")
        return None
    return float(value)


def checked_money(issues: Issues, path: str, value: object, high: float) -> int | None:
    """A USD amount in 0..high as nano-USD, or None (reported); see `Table.money`."""
    usd = checked_number(issues, path, value, 0.0, high)
    if usd is None:
        return None
    if 0 < usd < 1 / NANO:
        issues.add(
            path,
            f"{usd!r} USD is below 1 nano-USD (0.000000001) and would round to 0; write 0 for "
            "that, or an amount of at least 0.000000001",
        )
        return None
    return usd_to_nano(usd)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.10f}".rstrip("0")


def _range_text(low: float, high: float, *, positive: bool = False) -> str:
    if positive:
        return f"must be greater than {_num(low)} and at most {_num(high)}"
    return f"must be {_num(low)}..{_num(high)}"


def text_rule(limit: int, *, allow_space: bool = True) -> Callable[[str, str], object]:
    """`validate.text` with its limit, as a rule for `Table.check`."""
    return lambda value, field: validate.text(value, field, limit, allow_space=allow_space)


@dataclass
class Context:
    """State shared by the phase-2 builders.

    `deferred` holds problems found while building that belong to phase 3 (globs, prices); they
    are reported only when phase 2 found nothing.
    """

    issues: Issues
    deferred: Issues
    base_dir: Path | None
    bad_price_backends: set[int] = field(default_factory=set)
    bad_price_models: set[str] = field(default_factory=set)
    priced_models: list[str] = field(default_factory=list)  # the file's [pricing."MODEL"] keys
