"""Durations and counted nouns as the CLI prints them; the public API re-exports every generated
message, enum and service (a proto addition cannot be forgotten there)."""

from __future__ import annotations

import pytest

from nexus_grpc import api, text
from nexus_grpc._gen.nexus.v1 import admin_pb2, budget_pb2, decision_pb2, registry_pb2, types_pb2


@pytest.mark.parametrize(
    ("ms", "printed"),
    [
        (0, "0 ms"),
        (700, "700 ms"),
        (1000, "1000 ms (1.0 s)"),
        (17495, "17495 ms (17.5 s)"),
        (59949, "59949 ms (59.9 s)"),
        (60000, "60000 ms (1 min)"),
        (125000, "125000 ms (2 min 5 s)"),
        (3_661_000, "3661000 ms (1 h 1 min)"),
        (86_400_000, "86400000 ms (1 d)"),
        (2_611_195_824, "2611195824 ms (30 d 5 h)"),
    ],
)
def test_milliseconds_with_a_readable_duration(ms: int, printed: str) -> None:
    assert text.ms(ms) == printed


@pytest.mark.parametrize(
    ("count", "word", "printed"),
    [
        (1, "policy", "1 policy"),
        (2, "policy", "2 policies"),
        (0, "warning", "0 warnings"),
        (1, "key", "1 key"),
        (3, "key", "3 keys"),
        (1, "backend", "1 backend"),
    ],
)
def test_plurals(count: int, word: str, printed: str) -> None:
    assert text.plural(count, word) == printed


def test_the_public_api_exports_every_generated_name() -> None:
    wanted: set[str] = set()
    for module in (types_pb2, decision_pb2, registry_pb2, budget_pb2, admin_pb2):
        wanted |= set(module.DESCRIPTOR.message_types_by_name) | set(module.DESCRIPTOR.enum_types_by_name)
        for service in module.DESCRIPTOR.services_by_name:
            wanted |= {f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"}
    assert wanted <= set(api.__all__)
    assert set(api.__all__) <= set(dir(api))
    assert api.DecideRequest is decision_pb2.DecideRequest
