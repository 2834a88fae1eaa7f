"""Tracing through the real Envoy: a decision made for an HTTP request joins that request's trace.

nexus-grpc exports OTLP/HTTP (JSON) to a collector stand-in (tests/support/otlp.py). Without
Envoy tracing the request's own `traceparent` header is the parent; with Envoy tracing on
(OpenTelemetry tracer in the HTTP connection manager) Envoy's span for the ext_proc stream is the
parent of the stream's RPC span, which is the decision's, and the trace id stays the client's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from envoy_stack import StackFactory
from support.otlp import Collector, hex_id

pytestmark = pytest.mark.envoy

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
PROCESS = "envoy.service.ext_proc.v3.ExternalProcessor/Process"

# Envoy's OpenTelemetry tracer, exporting to nexus-grpc's own cluster: its spans are not what
# these tests read (nexus-grpc answers the export UNIMPLEMENTED), only the context it propagates.
ENVOY_TRACING = {
    "          request_headers_timeout: 10s\n": (
        "          request_headers_timeout: 10s\n"
        "          tracing:\n"
        "            provider:\n"
        "              name: envoy.tracers.opentelemetry\n"
        "              typed_config:\n"
        '                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig\n'
        "                grpc_service:\n"
        "                  envoy_grpc: { cluster_name: nexus_grpc }\n"
        "                service_name: envoy-test\n"
    )
}


@pytest.fixture
def collector() -> Iterator[Collector]:
    """Asked for before make_stack: it closes after the stack, which exports once more."""
    c = Collector()
    yield c
    c.close()


def tracing_tables(collector: Collector) -> str:
    return f'\n[telemetry]\notlp_endpoint = "{collector.url}"\ntrace_sample_ratio = 0.0\n'


def named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s for s in spans if s.get("parentSpanId") and hex_id(s["parentSpanId"]) == hex_id(parent["spanId"])
    ]


def test_an_ext_proc_decision_and_its_outcome_join_the_requests_trace(
    collector: Collector, make_stack: StackFactory
) -> None:
    # the sample ratio is 0: only the client's sampled traceparent makes these spans
    stack = make_stack("ext_proc", tables=tracing_tables(collector))
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "traceparent": TRACEPARENT, "x-request-id": "tr-1"})
    assert resp.status == 200, resp.body
    untraced = stack.http(headers={"x-nexus-model": "gpt-4", "x-request-id": "tr-2"})
    assert untraced.status == 200
    spans = collector.wait(lambda s: bool(named(s, "nexus.outcome")), "the outcome span")
    [decide] = named(spans, "nexus.decide")  # the untraced request was not sampled
    assert not named(spans, PROCESS)  # no sampled parent in the metadata, ratio 0: no stream span
    assert hex_id(decide["traceId"]) == TRACE_ID
    assert hex_id(decide["parentSpanId"]) == CLIENT_SPAN
    attrs = decide["attrs"]
    assert attrs["nexus.adapter"] == "envoy_ext_proc"
    assert attrs["nexus.decision"] == "route"
    assert attrs["nexus.backend.id"] == resp.json()["served_by"] == "gpu-1"
    assert attrs["nexus.request_id"] == "tr-1"
    assert attrs["gen_ai.request.model"] == "gpt-4"
    assert attrs["nexus.model.resolved"] == "llama3:70b"
    decision_id = resp.headers["x-nexus-decision-id"]
    assert attrs["nexus.decision_id"] == decision_id
    under = children(spans, decide)
    [outcome] = [s for s in under if s["name"] == "nexus.outcome"]
    assert outcome["attrs"]["nexus.decision_id"] == decision_id
    assert outcome["attrs"]["nexus.outcome.recorded"] is True
    stages = [s for s in under if s["name"] != "nexus.outcome"]
    assert stages and all(s["attrs"]["nexus.stage"] == s["name"] for s in stages)
    # nothing from the message: no prompt, no body
    assert all("prompt" not in k and "body" not in k for s in spans for k in s["attrs"])


def test_a_rejected_ext_proc_request_is_traced_with_its_code(
    collector: Collector, make_stack: StackFactory
) -> None:
    stack = make_stack("ext_proc", tables=tracing_tables(collector))
    resp = stack.http(headers={"x-nexus-model": "no-such-model", "traceparent": TRACEPARENT})
    assert resp.status == 404, resp.body
    spans = collector.wait(lambda s: bool(named(s, "nexus.decide")), "the decide span")
    [decide] = named(spans, "nexus.decide")
    assert hex_id(decide["traceId"]) == TRACE_ID
    assert decide["attrs"]["nexus.decision"] == "reject"
    assert decide["attrs"]["nexus.reject.code"] == "model_not_found"


def test_an_ext_authz_decision_joins_the_requests_trace(
    collector: Collector, make_stack: StackFactory
) -> None:
    stack = make_stack("ext_authz", tables=tracing_tables(collector))
    resp = stack.http(headers={"x-nexus-model": "gpt-3.5-turbo", "traceparent": TRACEPARENT})
    assert resp.status == 200, resp.body
    spans = collector.wait(lambda s: bool(named(s, "nexus.decide")), "the decide span")
    [decide] = named(spans, "nexus.decide")
    assert hex_id(decide["traceId"]) == TRACE_ID
    assert hex_id(decide["parentSpanId"]) == CLIENT_SPAN
    assert decide["attrs"]["nexus.adapter"] == "envoy_ext_authz"
    assert decide["attrs"]["nexus.backend.id"] == "openai"


def test_with_envoy_tracing_the_decision_is_under_envoys_span_in_the_clients_trace(
    collector: Collector, make_stack: StackFactory
) -> None:
    stack = make_stack("ext_proc", tables=tracing_tables(collector), envoy_replace=ENVOY_TRACING)
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "traceparent": TRACEPARENT})
    assert resp.status == 200, resp.body
    spans = collector.wait(lambda s: bool(named(s, "nexus.decide")), "the decide span")
    [decide] = named(spans, "nexus.decide")
    assert hex_id(decide["traceId"]) == TRACE_ID
    # the stream's RPC span is the child of Envoy's span for it (propagated in the gRPC metadata),
    # and the decision is the child of the stream's span: all in the client's trace
    spans = collector.wait(lambda s: bool(named(s, PROCESS)), "the stream's span")
    [process] = named(spans, PROCESS)
    assert hex_id(process["traceId"]) == TRACE_ID
    assert hex_id(process["parentSpanId"]) != CLIENT_SPAN  # Envoy's span sits in between
    assert hex_id(decide["parentSpanId"]) == hex_id(process["spanId"])
    assert process["kind"] in (2, "SPAN_KIND_SERVER")
