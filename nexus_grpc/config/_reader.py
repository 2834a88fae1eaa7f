"""Typed, path-aware access to parsed TOML tables for phase 2 (types and ranges).

Every getter records a `ConfigIssue` and returns the default instead of raising, so one pass
collects every problem of the phase. `Table.finish()` reports the keys nobody asked for.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_grpc.config.errors import ConfigIssue

# Keys ("section.key", array indices dropped: "backends.models.vision") and enum values
# ("ledger.kind=redis") this build refuses with "not supported yet". Everything in SPEC §3 is
# supported today; a build that lacks a feature lists it here instead of ignoring it.
UNSUPPORTED: frozenset[str] = frozenset()

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def quote_key(key: str) -> str:
    """A user-chosen key as TOML writes it, always quoted: `"gpt-4"`."""
    return json.dumps(key, ensure_ascii=False)


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
    """The problems found so far, all in one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigIssue] = []

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
        return [(key, value, f"{self.path}.{quote_key(key)}") for key, value in self.data.items()]

    def error(self, key: str, problem: str) -> None:
        self.issues.add(self.at(key), problem)

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str) -> object | None:
        """The raw value (None when absent); refuses keys this build does not support."""
        self._seen.add(key)
        if key not in self.data:
            return None
        if self.schema_of(key) in UNSUPPORTED:
            self.error(key, "not supported yet")
            return None
        value: object = self.data[key]
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self._seen:
                self.error(key, "unknown key")

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

    def integer(self, key: str, default: int, low: int | None = None, high: int | None = None) -> int:
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected an integer, got {type_name(value)}")
            return default
        if not _in_range(value, low, high):
            self.error(key, f"{value} is out of range ({_range_text(low, high)})")
            return default
        return value

    def number(
        self,
        key: str,
        default: float,
        low: float | None = None,
        high: float | None = None,
        *,
        positive: bool = False,
    ) -> float:
        """A float; integers are accepted, booleans and non-finite values are not."""
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"expected a number, got {type_name(value)}")
            return default
        number = float(value)
        if not math.isfinite(number):
            self.error(key, f"{value} is not a finite number")
            return default
        if positive and number <= 0:
            self.error(key, f"{value} is out of range (must be greater than 0)")
            return default
        if not _in_range(number, low, high):
            self.error(key, f"{value} is out of range ({_range_text(low, high)})")
            return default
        return number

    def duration(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        """Seconds (fractions allowed); positive unless `allow_zero`."""
        if allow_zero:
            return self.number(key, default, 0.0)
        return self.number(key, default, positive=True)

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
            self.error(key, f"{value!r} is not one of: {', '.join(choices)}")
            return default
        if f"{self.schema_of(key)}={lowered}" in UNSUPPORTED:
            self.error(key, f"{lowered!r} is not supported yet")
            return default
        return lowered

    def path_value(self, key: str, default: Path, base_dir: Path | None) -> Path:
        text = self.string(key, "", non_empty=True)
        return resolve_path(text, base_dir) if text else resolve_path(str(default), base_dir)

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


def _in_range(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"must be {_num(low)}..{_num(high)}"
    if low is not None:
        return f"must be at least {_num(low)}"
    return f"must be at most {_num(high or 0)}"


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
