"""A Prometheus collector over the engine's aggregates, built only when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from nexus_grpc.telemetry.metrics import CODE_LABEL, METRICS, NS_PER_SECOND, PIPELINE_BUCKETS_NS
from nexus_grpc.telemetry.readings import Readings


class NexusCollector(Collector):
    def __init__(self, read: Callable[[], Readings]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        r = self.read()
        decisions = CounterMetricFamily(
            "nexus_decisions", METRICS["nexus_decisions_total"], labels=["decision", "reject_code"]
        )
        for (verdict, code), n in r.decisions.items():
            decisions.add_metric([verdict, code], n)
        yield decisions

        stages = SummaryMetricFamily(
            "nexus_reconciler_duration_seconds",
            METRICS["nexus_reconciler_duration_seconds"],
            labels=["reconciler"],
        )
        for name, ns in r.stage_ns.items():
            stages.add_metric([name], r.stage_runs.get(name, 0), ns / NS_PER_SECOND)
        yield stages

        excl = CounterMetricFamily(
            "nexus_reconciler_exclusions",
            METRICS["nexus_reconciler_exclusions_total"],
            labels=["reconciler", "code"],
        )
        for (stage, ecode), n in r.exclusions.items():
            excl.add_metric([stage, CODE_LABEL[ecode]], n)
        yield excl

        cumulative, acc = [], 0
        for bound, n in zip([*PIPELINE_BUCKETS_NS, None], r.pipeline_buckets, strict=True):
            acc += n
            cumulative.append(("+Inf" if bound is None else repr(bound / NS_PER_SECOND), acc))
        yield HistogramMetricFamily(
            "nexus_pipeline_duration_seconds",
            METRICS["nexus_pipeline_duration_seconds"],
            buckets=cumulative,
            sum_value=r.pipeline_sum_ns / NS_PER_SECOND,
        )

        spent = GaugeMetricFamily(
            "nexus_budget_spent_usd", METRICS["nexus_budget_spent_usd"], labels=["scope"]
        )
        status = GaugeMetricFamily("nexus_budget_status", METRICS["nexus_budget_status"], labels=["scope"])
        for scope, (usd, status_number) in r.budget.items():
            spent.add_metric([scope], usd)
            status.add_metric([scope], status_number)
        yield spent
        yield status

        inflight = GaugeMetricFamily(
            "nexus_backend_in_flight", METRICS["nexus_backend_in_flight"], labels=["backend"]
        )
        for backend, n in r.in_flight.items():
            inflight.add_metric([backend], n)
        yield inflight

        yield GaugeMetricFamily(
            "nexus_ledger_available", METRICS["nexus_ledger_available"], value=int(r.ledger_available)
        )
        yield GaugeMetricFamily(
            "nexus_ledger_writable", METRICS["nexus_ledger_writable"], value=int(r.ledger_writable)
        )
        info = GaugeMetricFamily("nexus_config_info", METRICS["nexus_config_info"], labels=["config_version"])
        info.add_metric([r.config_version or "demo"], 1)
        yield info
        for name, value in (
            ("nexus_outcomes_estimated", r.outcomes_estimated),
            ("nexus_outcomes_unknown", r.outcomes_unknown),
            ("nexus_outcomes_clamped", r.outcomes_clamped),
            ("nexus_decision_log_dropped", r.decision_log_dropped),
            ("nexus_trace_spans_dropped", r.spans_dropped),
        ):
            yield CounterMetricFamily(name, METRICS[f"{name}_total"], value=value)


def serve_metrics(listen: str, read: Callable[[], Readings]) -> Any:
    """Serve /metrics on `listen` ("host:port") from a background thread; returns the server."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(NexusCollector(read))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return server
