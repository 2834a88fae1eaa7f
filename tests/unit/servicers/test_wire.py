"""The directly written DecideResponse against protobuf's own, on the cases random fleets rarely
reach: more exclusions than a response carries, Queue, unicode, huge numbers."""

from __future__ import annotations

import asyncio

import pytest

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.domain.enums import BackendStatus, PrivacyZone
from nexus_grpc.servicers.convert import decision_to_proto
from nexus_grpc.servicers.wire import ResponseEncoder
from nexus_grpc.testing.builders import backend, budget_config, config, engine, request

ENCODER = ResponseEncoder()  # one for the module: later tests reuse what earlier ones encoded


def check(eng: object, req: object) -> dpb.DecideResponse:
    d = asyncio.run(eng.decide(req))  # type: ignore[attr-defined]
    parsed = dpb.DecideResponse.FromString(ENCODER.decide_response(d))
    assert parsed == decision_to_proto(d)
    return parsed


@pytest.mark.parametrize("indexed", [True, False])
def test_a_reject_with_more_exclusions_than_sent(indexed: bool) -> None:
    cfg = config([backend(f"cloud-{i}", type="openai", models=("gpt-4",)) for i in range(120)])
    eng = engine(cfg, indexed=indexed)
    parsed = check(eng, request("gpt-4", privacy=PrivacyZone.RESTRICTED, estimated_input_tokens=10**6))
    assert parsed.WhichOneof("decision") == "reject"
    assert (len(parsed.exclusions), parsed.exclusions_omitted) == (50, 70)


@pytest.mark.parametrize("indexed", [True, False])
def test_a_route_past_many_exclusions_and_a_queue(indexed: bool) -> None:
    fleet = [backend(f"gpu-{i}", max_concurrency=1, models=("llämä:8b",)) for i in range(80)]
    eng = engine(config(fleet, budget=budget_config(10.0)), indexed=indexed)
    for i in range(79):
        eng.registry.set_state(f"gpu-{i}", BackendStatus.UNHEALTHY, reason="nøt ✓")
    route = check(eng, request("llämä:8b", request_id="ünïcode-✓"))
    assert route.route.backend_id == "gpu-79" and route.route.decision_id
    assert (len(route.exclusions), route.exclusions_omitted) == (50, 29)
    queued = check(eng, request("llämä:8b", estimated_input_tokens=9_999_999))
    assert queued.WhichOneof("decision") == "queue"
