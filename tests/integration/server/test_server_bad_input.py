"""Malformed input: INVALID_ARGUMENT naming the field, NOT_FOUND for unknown ids, grpc's
own RESOURCE_EXHAUSTED over 4 MiB; no traceback or path in any detail; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.testing.server import TestServer

StubsOf = Callable[[TestServer], Any]
ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def decide_request(**fields: Any) -> dpb.DecideRequest:
    """A valid request with `fields` overridden; enum fields may be raw (undefined) numbers."""
    fields.setdefault("model", "m")
    labels = fields.pop("labels", {})
    msg = dpb.DecideRequest(labels=labels)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def assert_still_serving(s: Any) -> None:
    resp = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert resp.route.backend_id == "local"


BAD_DECISION_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("model", {"model": ""}),
    ("model", {"model": "x" * 257}),
    ("model", {"model": "é" * 129}),  # 129 characters, 258 bytes
    ("request_id", {"request_id": "r" * 129}),
    ("tenant", {"tenant": "t" * 129}),
    ("labels", {"labels": {f"k{i}": "v" for i in range(33)}}),
    ("labels", {"labels": {"k" * 65: "v"}}),
    ("labels", {"labels": {"k": "v" * 257}}),
    ("estimated_input_tokens", {"estimated_input_tokens": 10_000_001}),
    ("max_output_tokens", {"max_output_tokens": 10_000_001}),
    ("max_output_tokens", {"max_output_tokens": 4_294_967_295}),
    ("min_tier", {"min_tier": 9}),
    ("min_tier", {"min_tier": 6}),
    ("privacy", {"privacy": 7}),
    ("tier_mode", {"tier_mode": 3}),
    ("priority", {"priority": 99}),
]


@pytest.mark.parametrize("method", ["Decide", "Explain"])
@pytest.mark.parametrize(
    ("field", "fields"),
    BAD_DECISION_REQUESTS,
    ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_DECISION_REQUESTS)],
)
def test_malformed_decision_request(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf, method: str, field: str, fields: dict[str, Any]
) -> None:
    s = stubs_of(small)
    request: Any = decide_request(**fields)
    if method == "Explain":
        request = dpb.ExplainRequest.FromString(request.SerializeToString())
    code, details = error_of(getattr(s.decision, method), request)
    assert code == INVALID, details
    assert field in details
    assert_still_serving(s)


def test_limits_are_inclusive(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    resp = s.decision.Decide(
        decide_request(
            model="é" * 128,  # 256 bytes
            request_id="r" * 128,
            tenant="t" * 128,
            labels={f"{i:02d}" + "k" * 62: "v" * 256 for i in range(32)},
            estimated_input_tokens=10_000_000,
            max_output_tokens=10_000_000,
            min_tier=5,
            privacy=tpb.PRIVACY_ZONE_OPEN,
            tier_mode=tpb.TIER_MODE_FLEXIBLE,
            priority=tpb.PRIORITY_HIGH,
        ),
        timeout=5,
    )
    assert resp.reject.code == tpb.REJECT_CODE_MODEL_NOT_FOUND
    assert resp.request_id == "r" * 128


BAD_OUTCOMES: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("success", "http_status"), {}),
    (("cost_usd",), {"success": True, "cost_usd": float("nan")}),
    (("cost_usd",), {"success": True, "cost_usd": float("inf")}),
    (("cost_usd",), {"success": True, "cost_usd": float("-inf")}),
    (("cost_usd",), {"success": True, "cost_usd": -0.01}),
    (("cost_usd",), {"success": True, "cost_usd": 1_000_000.5}),
    (("cost_usd",), {"success": True, "cost_usd": 1e300}),
    (("request_id",), {"success": True, "request_id": ""}),
    (("backend_id",), {"success": True, "backend_id": ""}),
    (("request_id",), {"success": True, "request_id": "r" * 129}),
    (("input_tokens",), {"success": True, "input_tokens": 10_000_001}),
    (("output_tokens",), {"success": True, "output_tokens": 10_000_001}),
    (("http_status",), {"http_status": 1000}),
]


@pytest.mark.parametrize(
    ("fields_named", "fields"), BAD_OUTCOMES, ids=[f"{f[0]}-{i}" for i, (f, _) in enumerate(BAD_OUTCOMES)]
)
def test_malformed_outcome(
    small: TestServer,
    stubs_of: StubsOf,
    error_of: ErrorOf,
    fields_named: tuple[str, ...],
    fields: dict[str, Any],
) -> None:
    s = stubs_of(small)
    msg = dpb.ReportOutcomeRequest(request_id="rid-1", backend_id="local")
    for name, value in fields.items():
        setattr(msg, name, value)
    code, details = error_of(s.decision.ReportOutcome, msg)
    assert code == INVALID, details
    assert any(f in details for f in fields_named), details
    # nothing was charged
    assert s.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget.spent_usd == 0
    assert_still_serving(s)


def test_outcome_cost_bounds_are_inclusive(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    for i, cost in enumerate((0.0, 1_000_000.0)):
        out = s.decision.ReportOutcome(
            dpb.ReportOutcomeRequest(request_id=f"edge-{i}", backend_id="x", success=False, cost_usd=cost),
            timeout=5,
        )
        assert out.recorded
        assert out.cost_usd == min(cost, 1000.0)  # one report charges at most [limits] max_charge_usd


def test_unknown_backend_is_not_found(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(small)
    for method, request in [
        (
            s.registry.SetBackendState,
            rpb.SetBackendStateRequest(backend_id="ghost", status=tpb.BACKEND_STATUS_DRAINING),
        ),
        (s.registry.GetBackend, rpb.GetBackendRequest(backend_id="ghost")),
        (s.registry.RemoveBackend, rpb.RemoveBackendRequest(backend_id="ghost")),
    ]:
        code, details = error_of(method, request)
        assert code == grpc.StatusCode.NOT_FOUND, details
        assert "ghost" in details
    assert_still_serving(s)


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("status", {"backend_id": "local", "status": 42}),
        ("status", {"backend_id": "local"}),
        ("loading_progress_percent", {"backend_id": "local", "status": 3, "loading_progress_percent": 101}),
    ],
)
def test_malformed_set_backend_state(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf, field: str, request_fields: dict[str, Any]
) -> None:
    s = stubs_of(small)
    msg = rpb.SetBackendStateRequest()
    for name, value in request_fields.items():
        setattr(msg, name, value)
    code, details = error_of(s.registry.SetBackendState, msg)
    assert code == INVALID, details
    assert field in details
    assert_still_serving(s)


def good_backend(**overrides: Any) -> tpb.Backend:
    fields: dict[str, Any] = {
        "id": "new-1",
        "url": "http://127.0.0.1:9200",
        "type": "ollama",
        "models": [tpb.Model(id="m")],
    }
    fields.update(overrides)
    return tpb.Backend(**fields)


BAD_BACKENDS: list[tuple[str, dict[str, Any]]] = [
    ("id", {"id": ""}),
    ("id", {"id": "b" * 129}),
    ("url", {"url": "127.0.0.1:9200"}),
    ("type", {"type": "bogus"}),
    ("zone", {"type": "generic"}),
    ("zone", {"zone": 9}),
    ("tier", {"tier": 0}),
    ("tier", {"tier": 9}),
    ("priority", {"priority": 101}),
    ("models", {"models": []}),
    ("models", {"models": [tpb.Model(id="")]}),
    ("pricing", {"pricing": tpb.Pricing(input_per_1k=-1.0, output_per_1k=0.0)}),
    ("pricing", {"pricing": tpb.Pricing(input_per_1k=float("nan"), output_per_1k=0.0)}),
    ("pricing", {"pricing": tpb.Pricing(input_per_1k=0.0, output_per_1k=float("inf"))}),
    ("pricing", {"pricing": tpb.Pricing(input_per_1k=0.0000001, output_per_1k=0.0)}),
    # found while trying the admin API as a hostile caller would
    ("id", {"id": "gpu 1"}),  # whitespace
    ("id", {"id": "gpu\u200f1"}),  # a right-to-left mark
    ("id", {"id": "gpu\x7f"}),  # DEL
    ("models", {"models": [tpb.Model(id="m"), tpb.Model(id="m")]}),  # duplicate model ids
    ("url", {"url": "http://"}),  # no host
    ("url", {"url": "http://[::1"}),  # unparseable
    ("context_length", {"models": [tpb.Model(id="m", context_length=0)]}),
    ("pricing", {"pricing": tpb.Pricing(input_per_1k=1e300, output_per_1k=0.0)}),
    ("models[0].id", {"type": "openai", "models": [tpb.Model(id="unpriced-cloud-model")]}),  # budget set
]


@pytest.mark.parametrize(
    ("field", "overrides"), BAD_BACKENDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_BACKENDS)]
)
def test_malformed_upsert(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf, field: str, overrides: dict[str, Any]
) -> None:
    s = stubs_of(small)
    code, details = error_of(
        s.registry.UpsertBackend, rpb.UpsertBackendRequest(backend=good_backend(**overrides))
    )
    assert code == INVALID, details
    assert field in details
    ids = [b.id for b in s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends]
    assert ids == ["local", "cloud", "p1", "p2"]  # nothing changed
    assert_still_serving(s)


def test_upsert_without_backend(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(small)
    code, details = error_of(s.registry.UpsertBackend, rpb.UpsertBackendRequest())
    assert code == INVALID
    assert "backend" in details


@pytest.mark.parametrize(
    "month", ["2024-13", "2024-00", "24-01", "2024-1", "2024/01", "last month", "2024-01-01"]
)
def test_bad_budget_month(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf, month: str) -> None:
    s = stubs_of(small)
    code, details = error_of(s.budget.GetBudget, bpb.GetBudgetRequest(month=month))
    assert code == INVALID
    assert "month" in details


def test_budget_tenant_too_long(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(small)
    code, details = error_of(s.budget.GetBudget, bpb.GetBudgetRequest(tenant="t" * 129))
    assert code == INVALID
    assert "tenant" in details


def test_message_over_4_mib_is_resource_exhausted(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf
) -> None:
    s = stubs_of(small)
    huge = dpb.DecideRequest(model="m", labels={"blob": "x" * (4 * 1024 * 1024 + 16)})
    code, details = error_of(s.decision.Decide, huge)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert_still_serving(s)
    # just under the limit is read (and then refused by the field rules, not the transport)
    near = dpb.DecideRequest(model="m", labels={"blob": "x" * (4 * 1024 * 1024 - 64)})
    code, details = error_of(s.decision.Decide, near)
    assert code == INVALID
    assert "labels" in details
