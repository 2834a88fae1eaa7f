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

from nexus_grpc.engine import DecisionEngine
from nexus_grpc.pipeline.budget import GLOBAL, scope_view
from nexus_grpc.telemetry.metrics import CODE_LABEL, METRICS, PIPELINE_BUCKETS_NS


class NexusCollector(Collector):
    def __init__(self, engine: DecisionEngine, dropped: Callable[[], int]) -> None:
        self.engine = engine
        self.dropped = dropped

    def collect(self) -> Iterator[Any]:
        engine = self.engine
        m = engine.metrics
        decisions = CounterMetricFamily(
            "nexus_decisions", METRICS["nexus_decisions_total"], labels=["decision", "reject_code"]
        )
        for (verdict, code), n in dict(m.decisions).items():
            decisions.add_metric([verdict, code], n)
        yield decisions

        stages = SummaryMetricFamily(
            "nexus_reconciler_duration_seconds",
            METRICS["nexus_reconciler_duration_seconds"],
            labels=["reconciler"],
        )
        runs = dict(engine.pipeline.stage_runs)
        for name, ns in dict(engine.pipeline.stage_ns).items():
            stages.add_metric([name], runs.get(name, 0), ns / 1e9)
        yield stages

        excl = CounterMetricFamily(
            "nexus_reconciler_exclusions",
            METRICS["nexus_reconciler_exclusions_total"],
            labels=["reconciler", "code"],
        )
        for (stage, ecode), n in dict(m.exclusions).items():
            excl.add_metric([stage, CODE_LABEL[ecode]], n)
        yield excl

        buckets = list(m.pipeline_buckets)
        cumulative, acc = [], 0
        for bound, n in zip([*PIPELINE_BUCKETS_NS, None], buckets, strict=True):
            acc += n
            cumulative.append(("+Inf" if bound is None else repr(bound / 1e9), acc))
        yield HistogramMetricFamily(
            "nexus_pipeline_duration_seconds",
            METRICS["nexus_pipeline_duration_seconds"],
            buckets=cumulative,
            sum_value=m.pipeline_sum_ns / 1e9,
        )

        spent = GaugeMetricFamily(
            "nexus_budget_spent_usd", METRICS["nexus_budget_spent_usd"], labels=["scope"]
        )
        status = GaugeMetricFamily("nexus_budget_status", METRICS["nexus_budget_status"], labels=["scope"])
        snap = engine.snapshot()
        budget = engine.config.routing.budget
        for scope in [GLOBAL, *(budget.tenants if budget is not None else ())]:
            view = scope_view(snap, scope)
            spent.add_metric([scope], view.spent_nano / 1e9)
            status.add_metric([scope], int(view.status))
        yield spent
        yield status

        inflight = GaugeMetricFamily(
            "nexus_backend_in_flight", METRICS["nexus_backend_in_flight"], labels=["backend"]
        )
        for backend in engine.registry.fleet.backends:
            live = engine.registry.live.get(backend.id)
            inflight.add_metric([backend.id], len(live.in_flight) if live is not None else 0)
        yield inflight

        yield GaugeMetricFamily(
            "nexus_ledger_available", METRICS["nexus_ledger_available"], value=int(engine.ledger.available)
        )
        info = GaugeMetricFamily("nexus_config_info", METRICS["nexus_config_info"], labels=["config_version"])
        info.add_metric([engine.config.version or "demo"], 1)
        yield info
        yield CounterMetricFamily(
            "nexus_outcomes_estimated",
            METRICS["nexus_outcomes_estimated_total"],
            value=engine.outcomes_estimated,
        )
        yield CounterMetricFamily(
            "nexus_decision_log_dropped", METRICS["nexus_decision_log_dropped_total"], value=self.dropped()
        )


def serve_metrics(listen: str, engine: DecisionEngine, dropped: Callable[[], int]) -> Any:
    """Serve /metrics on `listen` ("host:port") from a background thread; returns the server."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(NexusCollector(engine, dropped))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return server
