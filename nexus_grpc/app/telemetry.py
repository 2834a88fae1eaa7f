"""The process's telemetry: tracing, the decision log, the Prometheus endpoint and the OTLP
metrics export, started and stopped together; and the `Readings` the exporters publish."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nexus_grpc.config.schema import TelemetryConfig
from nexus_grpc.domain.decision import budget_status
from nexus_grpc.domain.money import nano_to_usd
from nexus_grpc.domain.months import month_of
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.gate import Gate
from nexus_grpc.telemetry.decision_log import DecisionLog
from nexus_grpc.telemetry.otlp_metrics import OtlpMetrics
from nexus_grpc.telemetry.prometheus import serve_metrics
from nexus_grpc.telemetry.readings import Readings
from nexus_grpc.telemetry.tracing import Tracing, otlp_base

log = logging.getLogger("nexus_grpc")


class Telemetry:
    """The exporters `[telemetry]` asks for; each is None until started (and after stop)."""

    def __init__(self) -> None:
        self.tracing: Tracing | None = None
        self.otlp_metrics: OtlpMetrics | None = None
        self.metrics_server: Any = None

    def start(
        self, telemetry: TelemetryConfig, engine: DecisionEngine, gate: Gate, read: Callable[[], Readings]
    ) -> None:
        """`read` gives the exporters their readings (called from their threads)."""
        if Tracing.enabled(telemetry):
            self.tracing = Tracing(telemetry)
            gate.tracing = self.tracing
            log.info(
                "tracing: spans to %s (sample ratio %g, parent-based)",
                self.tracing.endpoint,
                telemetry.trace_sample_ratio,
            )
        if telemetry.decision_log:
            engine.decision_log = DecisionLog(telemetry.decision_log)
        if telemetry.prometheus_listen:
            self.metrics_server = serve_metrics(telemetry.prometheus_listen, read)
        if Tracing.enabled(telemetry):
            self.otlp_metrics = OtlpMetrics(otlp_base(telemetry), read, service_name=telemetry.service_name)

    def stop(self, engine: DecisionEngine) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        if engine.decision_log is not None:
            engine.decision_log.close()
            engine.decision_log = None
        if self.tracing is not None:
            self.tracing.shutdown()  # spans still queued are exported first
            self.tracing = None
        if self.otlp_metrics is not None:
            self.otlp_metrics.shutdown()
            self.otlp_metrics = None


def readings(engine: DecisionEngine, tracing: Tracing | None) -> Readings:
    """The aggregates the metrics exporters publish, read (never written) from the engine."""
    m = engine.metrics
    config = engine.config
    registry = engine.registry
    month = month_of(engine.wall())
    budget: dict[str, tuple[float, int]] = {}
    limits = config.routing.budget
    for scope in [GLOBAL, *(limits.tenants if limits is not None else ())]:
        totals = engine.ledger.totals(scope, month)
        if totals is None:
            budget[scope] = (0.0, 0)
            continue
        limit = (
            (limits.monthly_limit_nano if scope == GLOBAL else limits.tenants.get(scope, 0)) if limits else 0
        )
        soft = limits.soft_limit_percent if limits else 100.0
        budget[scope] = (nano_to_usd(totals.spent_nano), int(budget_status(totals.used_nano, limit, soft)))
    decision_log = engine.decision_log
    return Readings(
        decisions=dict(m.decisions),
        stage_ns=dict(engine.pipeline.stage_ns),
        stage_runs=dict(engine.pipeline.stage_runs),
        exclusions=dict(m.exclusions),
        pipeline_buckets=list(m.pipeline_buckets),
        pipeline_sum_ns=m.pipeline_sum_ns,
        budget=budget,
        in_flight={
            b.id: len(live.in_flight) for b in registry.fleet.backends if (live := registry.live.get(b.id))
        },
        ledger_available=engine.ledger.available,
        ledger_writable=engine.ledger.write_error is None,
        config_version=config.version,
        outcomes_estimated=engine.outcomes_estimated,
        outcomes_unknown=engine.outcomes_unknown,
        outcomes_clamped=engine.outcomes_clamped,
        decision_log_dropped=decision_log.dropped if decision_log is not None else 0,
        spans_dropped=tracing.processor.dropped if tracing is not None else 0,
    )
