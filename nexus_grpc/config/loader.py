"""The strict, phased configuration loader (docs/configuration.md).

Phase 1 parses the TOML; phase 2 checks every key's type and range (unknown keys included);
phase 3 checks references between sections and the files `serve` will open. Each phase reports
every problem it finds, each naming the file, the key path and the problem; the next phase runs
only when this one found none. Whatever the input, the loader raises nothing but `ConfigError`.
"""

from __future__ import annotations

import hashlib
import re
import stat
import tomllib
from dataclasses import replace
from pathlib import Path

from nexus_grpc.config import _backends, _checks, _routing, _sections
from nexus_grpc.config._reader import Context, Issues, Table
from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.config.schema import Config, Settings
from nexus_grpc.domain.money import BUILTIN_PRICES

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "check_config",
    "endpoint_picker_issues",
    "keys_read",
    "load_config",
    "load_config_text",
]

endpoint_picker_issues = _checks.endpoint_picker_issues

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
MAX_FILE_BYTES = 64 * 1024 * 1024  # a configuration file larger than this is refused unread
_SECTIONS = (
    "server",
    "routing",
    "ledger",
    "quality",
    "queue",
    "health_check",
    "envoy",
    "telemetry",
    "limits",
    "backends",
    "pricing",
)


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; relative paths in it are relative to its directory."""
    source = str(path)
    data = _read(Path(path), source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(source, "(file)", f"not UTF-8 text: {exc}")]) from exc
    return _load(text, data, source, Path(path).absolute().parent)


def _read(path: Path, source: str) -> bytes:
    """The file's bytes: a regular file (never a FIFO or device, which could block or never
    end) of at most MAX_FILE_BYTES."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            problem = (
                "cannot read: a directory"
                if stat.S_ISDIR(info.st_mode)
                else "cannot read: not a regular file"
            )
        elif info.st_size > MAX_FILE_BYTES:
            problem = f"cannot read: {info.st_size} bytes; at most {MAX_FILE_BYTES} allowed"
        else:
            with path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
            if len(data) <= MAX_FILE_BYTES:
                return data
            problem = f"cannot read: more than {MAX_FILE_BYTES} bytes"
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        problem = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
    raise ConfigError([ConfigIssue(source, "(file)", problem)])


def load_config_text(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate TOML text; `source` names it in messages, `base_dir` anchors relative paths."""
    return _load(text, text.encode("utf-8"), source, base_dir)


def check_config(path: str | Path) -> tuple[Config | None, list[str], list[str]]:
    """What `nexus-grpc check-config FILE` prints: (config or None, errors, warnings); with
    `--endpoint-picker` it adds `endpoint_picker_issues` as errors."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, [str(issue) for issue in exc.issues], []
    return config, [], list(config.warnings)


def keys_read(text: str) -> frozenset[str]:
    """The schema keys phase 2 reads for this TOML document, present or not, without indices
    and with `*` for user-chosen keys: `server.tls.cert`, `backends.models.id`,
    `pricing.*.input_per_1k`, `routing.aliases.*`. A table absent from the document is not read."""
    ctx = Context(issues=Issues("<keys>"), deferred=Issues("<keys>"), base_dir=None)
    _build(Table(_parse(text, "<keys>"), "", "", ctx.issues), ctx, "<keys>", b"")
    return frozenset(ctx.issues.asked)


def _load(text: str, data: bytes, source: str, base_dir: Path | None) -> Config:
    document = _parse(text, source)
    ctx = Context(issues=Issues(source), deferred=Issues(source), base_dir=base_dir)
    config = _build(Table(document, "", "", ctx.issues), ctx, source, data)
    if ctx.issues:
        raise ConfigError(ctx.issues.items)
    _checks.cross_references(config, ctx)
    if ctx.issues:
        raise ConfigError(ctx.issues.items)
    return config


def _parse(text: str, source: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        where = f"line {position[1]}, column {position[2]}" if position else "(syntax)"
        problem = _TOML_POSITION.sub("", message) if position else message
        raise ConfigError([ConfigIssue(source, where, f"TOML syntax error: {problem}")]) from exc
    except RecursionError:
        problem = "TOML syntax error: arrays or inline tables nested too deeply"
        raise ConfigError([ConfigIssue(source, "(syntax)", problem)]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError([ConfigIssue(source, "(syntax)", f"TOML value error: {exc}")]) from None


def _build(root: Table, ctx: Context, source: str, data: bytes) -> Config:
    tables = {name: root.table(name) for name in _SECTIONS if name not in ("backends", "pricing")}
    backend_tables = root.tables("backends")
    price_table, default_price = _routing.pricing(root.table("pricing"), ctx)
    root.finish()
    config = Config(
        settings=Settings(
            server=_sections.server(tables["server"], ctx),
            ledger=_sections.ledger(tables["ledger"], ctx),
            telemetry=_sections.telemetry(tables["telemetry"], ctx),
        ),
        routing=_routing.routing(tables["routing"], ctx),
        quality=_sections.quality(tables["quality"]),
        queue=_sections.queue(tables["queue"]),
        health_check=_sections.health_check(tables["health_check"]),
        envoy=_sections.envoy(tables["envoy"]),
        limits=_sections.limits(tables["limits"]),
        backends=_backends.backends(backend_tables, ctx),
        pricing={**BUILTIN_PRICES, **price_table},
        default_price=default_price,
        source=source,
        version=hashlib.sha256(data).hexdigest()[:12],
    )
    return replace(config, warnings=_checks.warnings(config, source))
