"""Tracing end to end: a real server exports OTLP/HTTP (JSON) to a collector stand-in — a small
HTTP server on a free port — which decodes the spans."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

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


class Collector:
    """Receives OTLP/HTTP JSON on /v1/traces (and /v1/metrics) and keeps the decoded spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.receive(self.path, self.headers.get("content-type", ""), body)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        with self.lock:
            self.paths.append(path)
            if path == "/v1/metrics":
                for rm in json.loads(body).get("resourceMetrics", []):
                    for sm in rm.get("scopeMetrics", []):
                        self.metrics.extend(sm.get("metrics", []))
                return
            assert content_type.startswith("application/json"), content_type
            for rs in json.loads(body).get("resourceSpans", []):
                resource = _attrs(rs.get("resource", {}).get("attributes", []))
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        span["attrs"] = _attrs(span.get("attributes", []))
                        span["resource"] = resource
                        self.spans.append(span)

    def wait(
        self, condition: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if condition(spans):
                return spans
            assert time.monotonic() < deadline, f"{what}: got {[s['name'] for s in spans]}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        value = item["value"]
        out[item["key"]] = next(iter(value.values())) if value else None
    return out


def _hex(value: str) -> str:
    """OTLP/JSON carries ids as hex (some encoders as base64): normalize to hex."""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    import base64

    return base64.b64decode(value).hex()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def tracing_toml(small_toml: str, url: str, ratio: float = 1.0) -> str:
    return small_toml + f'\n[telemetry]\notlp_endpoint = "{url}"\ntrace_sample_ratio = {ratio}\n'


def test_a_decide_span_joins_the_callers_trace_with_one_child_per_stage(
    start_server: Callable[..., TestServer], small_toml: str, collector: Collector
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
    assert _hex(decide["traceId"]) == TRACE_ID and _hex(decide["parentSpanId"]) == PARENT_ID
    assert decide["kind"] in (2, "SPAN_KIND_SERVER")
    a = decide["attrs"]
    assert a["rpc.system.name"] == "grpc" and a["rpc.method"] == "nexus.v1.DecisionService/Decide"
    assert a["rpc.response.status_code"] == "OK"
    assert a["gen_ai.request.model"] == "m" and a["nexus.decision"] == "route"
    assert a["nexus.backend.id"] == "local" and a["nexus.tenant"] == "team-a"
    assert a["nexus.decision_id"] == route.route.decision_id
    assert decide["resource"]["service.name"] == "nexus-grpc"
    children = [
        s for s in spans if s.get("parentSpanId") and _hex(s["parentSpanId"]) == _hex(decide["spanId"])
    ]
    assert [c["name"] for c in children] == ["RouteIndex"]  # a Route the index decided in one step
    explain = next(s for s in spans if s["name"] == "nexus.v1.DecisionService/Explain")
    stage_spans = [
        s for s in spans if s.get("parentSpanId") and _hex(s["parentSpanId"]) == _hex(explain["spanId"])
    ]
    assert sorted(c["name"] for c in stage_spans) == sorted(STAGES)
    privacy = next(c for c in stage_spans if c["name"] == "PrivacyReconciler")
    assert "nexus.candidates.in" in privacy["attrs"]
    for span in spans:  # never content: only ids, names, codes and counts
        assert not any("content" in key or "prompt" in key for key in span["attrs"])


def test_reject_and_report_spans(
    start_server: Callable[..., TestServer], small_toml: str, collector: Collector
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
    start_server: Callable[..., TestServer],
    small_toml: str,
    collector: Collector,
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
    start_server: Callable[..., TestServer],
    small_toml: str,
    collector: Collector,
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub = dgrpc.DecisionServiceStub(channel)
            deadline = time.monotonic() + 20
            while True:
                try:
                    stub.Decide(dpb.DecideRequest(model="m"), timeout=5)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
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
    start_server: Callable[..., TestServer], small_toml: str, collector: Collector
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
        _attrs(p["attributes"])["decision"]: int(p.get("asInt", p.get("asDouble", 0))) for p in points
    }
    assert by_verdict["route"] >= 1 and by_verdict["reject"] >= 1
