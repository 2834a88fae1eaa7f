"""Tracing end to end: a real server exports OTLP/HTTP (JSON) to a collector stand-in — a small
HTTP server on a free port — which decodes the spans."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.net import free_port
from support.otlp import Collector, attrs, hex_id
from support.servers import wait_serving

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.testing.server import TestServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STAGES = [
    "RequestAnalyzer",
    "PrivacyReconciler",
    "BudgetReconciler",
    "TierReconciler",
    "QualityReconciler",
    "SchedulerReconciler",
]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def tracing_toml(small_toml: str, url: str, ratio: float = 1.0) -> str:
    return small_toml + f'\n[telemetry]\notlp_endpoint = "{url}"\ntrace_sample_ratio = {ratio}\n'


def test_a_decide_span_joins_the_callers_trace_with_one_child_per_stage(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    server = start_server(config_text=tracing_toml(small_toml, collector.url, ratio=0.0))
    stub = dgrpc.DecisionServiceStub(server.channel)
    meta = (("traceparent", TRACEPARENT),)
    route = stub.Decide(
        dpb.DecideRequest(model="m", tenant="team-a", request_id="t-1"), metadata=meta, timeout=5
    )
    stub.Explain(dpb.ExplainRequest(model="m"), metadata=meta, timeout=5)
    spans = collector.wait(
        lambda s: len([x for x in s if x["name"].startswith("nexus.v1")]) >= 2, "two RPC spans"
    )
    decide = next(s for s in spans if s["name"] == "nexus.v1.DecisionService/Decide")
    assert hex_id(decide["traceId"]) == TRACE_ID and hex_id(decide["parentSpanId"]) == PARENT_ID
    assert decide["kind"] in (2, "SPAN_KIND_SERVER")
    a = decide["attrs"]
    assert a["rpc.system.name"] == "grpc" and a["rpc.method"] == "nexus.v1.DecisionService/Decide"
    assert a["rpc.response.status_code"] == "OK"
    assert a["gen_ai.request.model"] == "m" and a["nexus.decision"] == "route"
    assert a["nexus.backend.id"] == "local" and a["nexus.tenant"] == "team-a"
    assert a["nexus.decision_id"] == route.route.decision_id
    assert decide["resource"]["service.name"] == "nexus-grpc"
    children = [
        s for s in spans if s.get("parentSpanId") and hex_id(s["parentSpanId"]) == hex_id(decide["spanId"])
    ]
    assert [c["name"] for c in children] == ["RouteIndex"]  # a Route the index decided in one step
    explain = next(s for s in spans if s["name"] == "nexus.v1.DecisionService/Explain")
    stage_spans = [
        s for s in spans if s.get("parentSpanId") and hex_id(s["parentSpanId"]) == hex_id(explain["spanId"])
    ]
    assert sorted(c["name"] for c in stage_spans) == sorted(STAGES)
    privacy = next(c for c in stage_spans if c["name"] == "PrivacyReconciler")
    assert "nexus.candidates.in" in privacy["attrs"]
    for span in spans:  # never content: only ids, names, codes and counts
        assert not any("content" in key or "prompt" in key for key in span["attrs"])


def test_reject_and_report_spans(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    server = start_server(config_text=tracing_toml(small_toml, collector.url))
    stub = dgrpc.DecisionServiceStub(server.channel)
    stub.Decide(dpb.DecideRequest(model="no-such-model"), timeout=5)
    route = stub.Decide(dpb.DecideRequest(model="m"), timeout=5).route
    stub.ReportOutcome(
        dpb.ReportOutcomeRequest(decision_id=route.decision_id, backend_id="local", success=True), timeout=5
    )
    with pytest.raises(grpc.RpcError):
        stub.Decide(dpb.DecideRequest(model=""), timeout=5)
    spans = collector.wait(
        lambda s: len([x for x in s if x["name"].startswith("nexus.v1")]) >= 4, "four RPCs"
    )
    rpcs = [s for s in spans if s["name"].startswith("nexus.v1")]
    reject = next(s for s in rpcs if s["attrs"].get("nexus.decision") == "reject")
    assert reject["attrs"]["nexus.reject.code"] == "model_not_found"
    report = next(s for s in rpcs if s["name"] == "nexus.v1.DecisionService/ReportOutcome")
    assert (
        report["attrs"]["nexus.decision_id"] == route.decision_id
        and report["attrs"]["nexus.outcome.recorded"]
    )
    invalid = next(s for s in rpcs if s["attrs"].get("rpc.response.status_code") == "INVALID_ARGUMENT")
    assert invalid["name"] == "nexus.v1.DecisionService/Decide"


def test_nothing_is_exported_with_tracing_off(
    collector: Collector,  # set up first, so the server stops before the collector does
    start_server: Callable[..., TestServer],
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    server = start_server(config_text=small_toml)
    assert server.runtime.tracing is None
    stub = dgrpc.DecisionServiceStub(server.channel)
    for _ in range(5):
        stub.Decide(dpb.DecideRequest(model="m"), metadata=(("traceparent", TRACEPARENT),), timeout=5)
    assert server.runtime.otlp_metrics is None  # no exporter exists at all: nothing can be sent
    assert collector.paths == []


def test_the_environment_names_the_endpoint_and_the_service(
    collector: Collector,  # set up first, so the server stops before the collector does
    start_server: Callable[..., TestServer],
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "router-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    server = start_server(config_text=small_toml)
    dgrpc.DecisionServiceStub(server.channel).Decide(
        dpb.DecideRequest(model="m"), metadata=(("traceparent", TRACEPARENT),), timeout=5
    )
    [span, *_] = collector.wait(lambda s: any(x["name"].endswith("/Decide") for x in s), "the Decide span")
    assert span["resource"]["service.name"] == "router-eu"
    assert span["resource"]["deployment.environment"] == "test"


def test_spans_pending_at_sigterm_arrive(small_toml: str, collector: Collector, tmp_path: Path) -> None:
    config = tmp_path / "nexus.toml"
    config.write_text(tracing_toml(small_toml, collector.url))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_grpc.cli",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", proc, timeout=20)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            dgrpc.DecisionServiceStub(channel).Decide(dpb.DecideRequest(model="m"), timeout=5)
        proc.send_signal(signal.SIGTERM)  # at once: the span is still in the export queue
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    collector.wait(lambda s: any(x["name"].endswith("/Decide") for x in s), "the Decide span", timeout=2)


def test_the_envoy_protos_and_the_exporter_live_in_one_process() -> None:
    """xds-protos installs an old OTLP under opentelemetry/proto; the JSON exporter does not use it."""
    code = (
        "from envoy.service.ext_proc.v3 import external_processor_pb2\n"
        "from envoy.service.auth.v3 import external_auth_pb2\n"
        "from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter\n"
        "from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_aggregates_also_go_out_as_otlp_metrics(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    server = start_server(config_text=tracing_toml(small_toml, collector.url))
    stub = dgrpc.DecisionServiceStub(server.channel)
    stub.Decide(dpb.DecideRequest(model="m"), timeout=5)
    stub.Decide(dpb.DecideRequest(model="no-such-model"), timeout=5)
    otlp = server.runtime.otlp_metrics
    assert otlp is not None and otlp.endpoint == f"{collector.url}/v1/metrics"
    assert otlp.provider.force_flush(10_000)
    names = {m["name"] for m in collector.metrics}
    assert {
        "nexus.decisions",
        "nexus.budget.spent",
        "nexus.backend.in_flight",
        "nexus.ledger.available",
    } <= names
    decisions = next(m for m in collector.metrics if m["name"] == "nexus.decisions")
    points = decisions["sum"]["dataPoints"]
    by_verdict = {
        attrs(p["attributes"])["decision"]: int(p.get("asInt", p.get("asDouble", 0))) for p in points
    }
    assert by_verdict["route"] >= 1 and by_verdict["reject"] >= 1
