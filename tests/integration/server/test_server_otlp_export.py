"""OTLP export rules on a real server, against the collector stand-in (tests/support/otlp.py): the
file's settings win over the environment, parent-based sampling, the Queue span, spans lost when
the collector stalls or is absent (counted, in both metrics exporters), and OTLP metrics that
match the Prometheus endpoint."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.net import free_port
from support.otlp import Collector, attrs, hex_id

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.telemetry import tracing
from nexus_grpc.testing.server import TestServer

DECIDE = "nexus.v1.DecisionService/Decide"
STAGES = [
    "RequestAnalyzer",
    "PrivacyReconciler",
    "BudgetReconciler",
    "TierReconciler",
    "QualityReconciler",
    "SchedulerReconciler",
]


def traceparent(trace_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-00f067aa0ba902b7-{'01' if sampled else '00'}"


def telemetry_toml(small_toml: str, url: str, *, ratio: float = 1.0, extra: str = "") -> str:
    return small_toml + f'\n[telemetry]\notlp_endpoint = "{url}"\ntrace_sample_ratio = {ratio}\n{extra}'


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


def prometheus_value(text: str, sample: str) -> float:
    """The value of one sample line, e.g. `nexus_trace_spans_dropped_total`."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not in the scrape"
    return float(match.group(1))


def latest_metrics(collector: Collector) -> dict[str, dict[str, Any]]:
    """Each metric as last exported (the collector keeps every export)."""
    with collector.lock:
        return {m["name"]: m for m in collector.metrics}


def points(metric: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    data = metric.get("sum") or metric.get("gauge") or {}
    return [
        (attrs(p.get("attributes", [])), float(p.get("asInt", p.get("asDouble", 0))))
        for p in data.get("dataPoints", [])
    ]


def value(metric: dict[str, Any], **labels: str) -> float:
    [found] = [v for a, v in points(metric) if all(a.get(k) == want for k, want in labels.items())]
    return found


def decide_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == DECIDE]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_the_files_endpoint_and_service_name_win_over_the_environment(
    collector: Collector,  # first: it outlives the server, which exports to it when it stops
    start_server: Callable[..., TestServer],
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = Collector()  # what the environment names: must receive nothing
    receive, metric_resources = collector.receive, []

    def keep_resource(path: str, content_type: str, body: bytes) -> None:
        if path == "/v1/metrics":
            metric_resources.extend(
                attrs(rm["resource"]["attributes"]) for rm in json.loads(body)["resourceMetrics"]
            )
        receive(path, content_type, body)

    monkeypatch.setattr(collector, "receive", keep_resource)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", other.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-the-environment")
        monkeypatch.setenv(
            "OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,service.name=from-the-attributes"
        )
        config = telemetry_toml(small_toml, collector.url, extra='service_name = "router-eu"\n')
        server = start_server(config_text=config)
        dgrpc.DecisionServiceStub(server.channel).Decide(dpb.DecideRequest(model="m"), timeout=5)
        [span] = decide_spans(collector.wait(lambda s: bool(decide_spans(s)), "the Decide span"))
        assert span["resource"]["service.name"] == "router-eu"
        assert span["resource"]["deployment.environment"] == "test"  # the other attributes are kept
        otlp = server.runtime.otlp_metrics
        assert otlp is not None and otlp.endpoint == f"{collector.url}/v1/metrics"
        assert otlp.provider.force_flush(10_000)
        assert "nexus.decisions" in latest_metrics(collector)
        assert metric_resources and all(r["service.name"] == "router-eu" for r in metric_resources)
        assert other.paths == []  # neither spans nor metrics went where the environment said
    finally:
        other.close()


def test_a_queue_decisions_span_has_the_verdict_and_the_wait(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    server = start_server(config_text=telemetry_toml(small_toml, collector.url))
    stub = dgrpc.DecisionServiceStub(server.channel)
    assert stub.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"
    queued = stub.Decide(dpb.DecideRequest(model="m", tenant="team-a"), timeout=5)  # local is full
    assert queued.WhichOneof("decision") == "queue" and queued.queue.estimated_wait_ms == 5000
    spans = collector.wait(lambda s: len(decide_spans(s)) == 2, "two Decide spans")
    [span] = [s for s in decide_spans(spans) if s["attrs"].get("nexus.decision") == "queue"]
    a = span["attrs"]
    assert int(a["nexus.queue.wait_ms"]) == 5000
    assert a["nexus.model.routed"] == "m" and a["gen_ai.request.model"] == "m"
    assert a["nexus.tenant"] == "team-a" and a["rpc.response.status_code"] == "OK"
    assert "nexus.backend.id" not in a and "nexus.decision_id" not in a  # a Queue routes nowhere
    assert int(a["nexus.exclusions"]) == 1
    children = [
        s for s in spans if s.get("parentSpanId") and hex_id(s["parentSpanId"]) == hex_id(span["spanId"])
    ]
    assert sorted(c["name"] for c in children) == sorted(STAGES)  # not indexed: a child per stage
    saturated = [c for c in children if c["attrs"].get("nexus.exclusions.saturated")]
    assert [(c["name"], int(c["attrs"]["nexus.exclusions.saturated"])) for c in saturated] == [
        ("SchedulerReconciler", 1)
    ]


def test_parent_based_sampling_follows_the_callers_flag(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    """Ratio 1: an unsampled parent is not recorded, a request without one is."""
    unsampled = "a" * 32
    server = start_server(config_text=telemetry_toml(small_toml, collector.url, ratio=1.0))
    stub = dgrpc.DecisionServiceStub(server.channel)
    meta = (("traceparent", traceparent(unsampled, sampled=False)),)
    stub.Decide(dpb.DecideRequest(model="primary"), metadata=meta, timeout=5)
    stub.Decide(dpb.DecideRequest(model="primary"), timeout=5)  # exported in order: after the first
    spans = collector.wait(lambda s: bool(decide_spans(s)), "the Decide span of the new trace")
    assert len(decide_spans(spans)) == 1
    assert all(hex_id(s["traceId"]) != unsampled for s in spans)
    [root] = decide_spans(spans)
    assert not root.get("parentSpanId")


def test_a_sampled_parent_is_followed_with_ratio_zero(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    """Ratio 0: only the sampled parent's request is recorded."""
    sampled = "b" * 32
    server = start_server(config_text=telemetry_toml(small_toml, collector.url, ratio=0.0))
    stub = dgrpc.DecisionServiceStub(server.channel)
    stub.Decide(dpb.DecideRequest(model="primary"), timeout=5)
    unsampled = (("traceparent", traceparent("c" * 32, sampled=False)),)
    stub.Decide(dpb.DecideRequest(model="primary"), metadata=unsampled, timeout=5)
    meta = (("traceparent", traceparent(sampled, sampled=True)),)
    stub.Decide(dpb.DecideRequest(model="primary"), metadata=meta, timeout=5)  # the last one sent
    spans = collector.wait(lambda s: bool(decide_spans(s)), "the sampled parent's Decide span")
    assert {hex_id(s["traceId"]) for s in spans} == {sampled}
    [span] = decide_spans(spans)
    assert hex_id(span["parentSpanId"]) == "00f067aa0ba902b7"


def test_spans_dropped_while_the_collector_stalls_are_counted_in_both_metrics(
    collector: Collector,  # first: it outlives the server, which exports to it when it stops
    start_server: Callable[..., TestServer],
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "QUEUE_SIZE", 4)  # the export queue holds 4 spans
    stalled, release = threading.Event(), threading.Event()
    receive = collector.receive
    batches: list[int] = []

    def stalling(path: str, content_type: str, body: bytes) -> None:
        if path == "/v1/traces":
            batches.append(body.count(b'"spanId"'))
            stalled.set()
            release.wait(30)  # the export thread waits for this answer
        receive(path, content_type, body)

    monkeypatch.setattr(collector, "receive", stalling)
    port = free_port()
    extra = f'prometheus_listen = "127.0.0.1:{port}"\n'
    server = start_server(config_text=telemetry_toml(small_toml, collector.url, extra=extra))
    try:
        stub = dgrpc.DecisionServiceStub(server.channel)
        stub.Decide(dpb.DecideRequest(model="primary"), timeout=5)
        assert stalled.wait(10), "the first batch never reached the collector"
        [per_decide] = batches  # the first Decide's spans, now held by the stalled export
        for _ in range(10):
            stub.Decide(dpb.DecideRequest(model="primary"), timeout=5)
        dropped = 10 * per_decide - 4  # all but the 4 the queue holds
        assert server.runtime.tracing is not None
        assert server.runtime.tracing.processor.dropped == dropped
        assert prometheus_value(scrape(port), "nexus_trace_spans_dropped_total") == dropped
        otlp = server.runtime.otlp_metrics
        assert otlp is not None and otlp.provider.force_flush(10_000)  # metrics are not stalled
        assert value(latest_metrics(collector)["nexus.trace.spans_dropped"]) == dropped
    finally:
        release.set()
    spans = collector.wait(lambda s: len(s) == per_decide + 4, "the first batch and the 4 queued")
    assert len(decide_spans(spans)) == (per_decide + 4) // per_decide


def test_spans_lost_to_an_absent_collector_are_counted(
    start_server: Callable[..., TestServer], small_toml: str
) -> None:
    absent = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    extra = f'prometheus_listen = "127.0.0.1:{port}"\n'
    server = start_server(config_text=telemetry_toml(small_toml, absent, extra=extra))
    stub = dgrpc.DecisionServiceStub(server.channel)
    stub.Decide(dpb.DecideRequest(model="primary"), timeout=5)
    stub.Decide(dpb.DecideRequest(model="no-such-model"), timeout=5)
    assert server.runtime.tracing is not None
    processor = server.runtime.tracing.processor
    assert processor.force_flush(30_000)  # returns once the export has given up (retries, timeout)
    assert processor.exported == 0 and processor.dropped >= 4  # two RPC spans and their children
    assert prometheus_value(scrape(port), "nexus_trace_spans_dropped_total") == processor.dropped


def test_otlp_metrics_carry_what_the_prometheus_endpoint_does(
    collector: Collector, start_server: Callable[..., TestServer], small_toml: str
) -> None:
    port = free_port()
    extra = f'prometheus_listen = "127.0.0.1:{port}"\n'
    server = start_server(config_text=telemetry_toml(small_toml, collector.url, extra=extra))
    stub = dgrpc.DecisionServiceStub(server.channel)
    for model in ("m", "primary", "no-such-model"):
        stub.Decide(dpb.DecideRequest(model=model), timeout=5)
    stub.Explain(dpb.ExplainRequest(model="m"), timeout=5)
    otlp = server.runtime.otlp_metrics
    assert otlp is not None and otlp.provider.force_flush(10_000)
    prom = scrape(port)  # no decision in between: both read the same aggregates
    got = latest_metrics(collector)

    count = value(got["nexus.pipeline.duration.count"])
    assert count == 3 == prometheus_value(prom, "nexus_pipeline_duration_seconds_count")
    assert value(got["nexus.pipeline.duration"]) == pytest.approx(
        prometheus_value(prom, "nexus_pipeline_duration_seconds_sum")
    )
    buckets = points(got["nexus.pipeline.duration.bucket"])
    assert len(buckets) == 13 and value(got["nexus.pipeline.duration.bucket"], le="+Inf") == count
    for labels, n in buckets:
        assert n == prometheus_value(prom, f'nexus_pipeline_duration_seconds_bucket{{le="{labels["le"]}"}}')
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative

    for labels, n in points(got["nexus.reconciler.runs"]):
        sample = f'nexus_reconciler_duration_seconds_count{{reconciler="{labels["reconciler"]}"}}'
        assert n == prometheus_value(prom, sample)
    assert value(got["nexus.reconciler.runs"], reconciler="PrivacyReconciler") >= 1  # the Explain
    assert value(got["nexus.decisions"], decision="reject", reject_code="model_not_found") == 1

    [(info, one)] = points(got["nexus.config.info"])
    assert one == 1
    assert f'nexus_config_info{{config_version="{info["config_version"]}"}} 1.0' in prom
    assert value(got["nexus.ledger.available"]) == 1 == prometheus_value(prom, "nexus_ledger_available")
    assert value(got["nexus.ledger.writable"]) == 1 == prometheus_value(prom, "nexus_ledger_writable")
    assert value(got["nexus.trace.spans_dropped"]) == 0
    assert value(got["nexus.decision_log.dropped"]) == 0
    assert value(got["nexus.outcomes"], kind="estimated") == 0
