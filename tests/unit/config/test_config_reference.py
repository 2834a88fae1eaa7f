"""docs/examples/nexus.toml sets every key the loader reads, check-config accepts it, and
docs/configuration.md documents every key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from nexus_grpc.config import schema
from nexus_grpc.config.loader import check_config, keys_read
from nexus_grpc.domain.backend import BackendConfig, ModelSpec
from nexus_grpc.domain.money import Price

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "docs" / "examples" / "nexus.toml"
REFERENCE = ROOT / "docs" / "configuration.md"

# Where each schema dataclass lives in the file, and its fields whose TOML key has another name
# (money is kept in nano-USD, the glob is compiled from model_pattern) or that no key sets.
TABLES: dict[type, tuple[str, dict[str, str | None]]] = {
    schema.ServerConfig: ("server", {}),
    schema.TlsConfig: ("server.tls", {}),
    schema.RoutingConfig: ("routing", {}),
    schema.Weights: ("routing.weights", {}),
    schema.Policy: ("routing.policies", {"glob": None, "max_cost_nano": "max_cost_per_request"}),
    schema.BudgetConfig: ("routing.budget", {"monthly_limit_nano": "monthly_limit_usd"}),
    schema.LedgerConfig: ("ledger", {}),
    schema.QualityConfig: ("quality", {}),
    schema.QueueConfig: ("queue", {}),
    schema.HealthCheckConfig: ("health_check", {}),
    schema.EnvoyConfig: ("envoy", {}),
    schema.TelemetryConfig: ("telemetry", {}),
    schema.LimitsConfig: ("limits", {}),
    BackendConfig: ("backends", {}),
    ModelSpec: ("backends.models", {}),
    Price: ("backends.pricing", {"input_nano": "input_per_1k", "output_nano": "output_per_1k"}),
    schema.Settings: ("", {}),  # server, ledger, telemetry: their own tables
    schema.Config: (
        "",
        {"pricing": "pricing.*", "default_price": "pricing.default.input_per_1k", "source": None}
        | {"version": None, "warnings": None, "settings": None},
    ),
}


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def test_check_config_accepts_the_example_without_warnings() -> None:
    config, errors, warnings = check_config(EXAMPLE)
    assert (errors, warnings) == ([], [])
    assert config is not None
    assert config.server.tls is not None
    assert config.server.tls.client_ca == EXAMPLE.parent / "tls" / "ca.pem"  # relative to the file


def keys_set(document: dict[str, Any], read: frozenset[str], path: str = "") -> set[str]:
    """The schema keys a parsed document sets: array indices dropped, user-chosen keys as `*`."""
    found: set[str] = set()
    for key, value in document.items():
        exact = f"{path}.{key}" if path else key
        named = exact in read or any(k.startswith(exact + ".") for k in read)
        child = exact if named else f"{path}.*"
        found.add(child)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                found |= keys_set(item, read, child)
    return found


def test_the_example_sets_every_key_the_loader_reads() -> None:
    read = keys_read(example_text())
    present = keys_set(tomllib.loads(example_text()), read)
    assert read - present == set(), "keys the example does not set"
    assert present - read == set(), "keys the loader does not read"


def test_every_schema_field_has_a_key_in_the_example() -> None:
    read = keys_read(example_text())
    for cls, (table, renamed) in TABLES.items():
        for field in dataclasses.fields(cls):
            key = renamed.get(field.name, field.name)
            if key is None:
                continue
            full = f"{table}.{key}" if table else key
            assert full in read, f"{cls.__name__}.{field.name}: the example does not set {full}"
    schema_classes = {
        obj for obj in vars(schema).values() if isinstance(obj, type) and dataclasses.is_dataclass(obj)
    }
    assert schema_classes <= set(TABLES), "a schema dataclass this test does not map"


def test_the_reference_documents_every_key() -> None:
    reference = REFERENCE.read_text(encoding="utf-8")
    assert "SPEC" not in reference
    read = keys_read(example_text())
    for key in read:
        if "*" in key:
            continue
        if any(other.startswith(key + ".") for other in read):  # a table: `[key]` or `[[key]]`
            assert re.search(rf"`\[\[?{re.escape(key)}\]\]?`", reference), f"[{key}] is not documented"
        else:
            leaf = key.rsplit(".", 1)[-1]
            assert re.search(rf"`{re.escape(leaf)}`", reference), f"{key} is not documented"
    sections = set(re.findall(r"^## `\[+([a-z_.]+)\]+`", reference, flags=re.MULTILINE))
    assert {key.split(".")[0] for key in read} <= sections, "a section without its own heading"
