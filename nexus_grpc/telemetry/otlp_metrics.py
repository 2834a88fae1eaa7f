"""The same aggregates as the Prometheus endpoint, exported over OTLP/HTTP (JSON) to
`<endpoint>/v1/metrics` when an OTLP endpoint is set. Every instrument is observable: its value is
read from one `Readings` at export time, never recorded per decision on the hot path."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

from nexus_grpc import __version__
from nexus_grpc.telemetry.metrics import CODE_LABEL, NS_PER_SECOND
from nexus_grpc.telemetry.readings import Readings
from nexus_grpc.telemetry.tracing import resource

EXPORT_EVERY_S = 15.0


class OtlpMetrics:
    def __init__(
        self,
        base: str,
        read: Callable[[], Readings],
        *,
        exporter: MetricExporter | None = None,
        interval_s: float = EXPORT_EVERY_S,
    ) -> None:
        self.endpoint = f"{base}/v1/metrics"
        self._read = read
        self._cached: Readings | None = None
        reader = PeriodicExportingMetricReader(
            exporter or OTLPMetricExporter(endpoint=self.endpoint, timeout=5),
            export_interval_millis=interval_s * 1000,
        )
        self.provider = MeterProvider(metric_readers=[reader], resource=resource())
        meter = self.provider.get_meter("nexus_grpc", __version__)
        counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
        counter("nexus.decisions", [self._decisions], unit="{decision}", description="Decisions by verdict")
        counter("nexus.reconciler.exclusions", [self._exclusions], unit="{backend}", description="Exclusions")
        counter("nexus.reconciler.duration", [self._stage_time], unit="s", description="Time in each stage")
        counter("nexus.pipeline.duration", [self._pipeline_time], unit="s", description="Time to decide")
        counter("nexus.outcomes", [self._outcomes], unit="{outcome}", description="Outcomes by kind")
        gauge("nexus.budget.spent", [self._spent], unit="USD", description="Spend this UTC month")
        gauge("nexus.budget.status", [self._status], description="0 unknown, 1 normal, 2 soft, 3 hard")
        gauge("nexus.backend.in_flight", [self._in_flight], unit="{request}", description="In flight")
        gauge(
            "nexus.ledger.available",
            [self._ledger],
            description="1 when the ledger is reachable and writable",
        )

    def _readings(self) -> Readings:
        # one read per export: the first callback of a collection reads, the others reuse it
        if self._cached is None:
            self._cached = self._read()
        return self._cached

    def _decisions(self, options: CallbackOptions) -> Iterable[Observation]:
        self._cached = None
        r = self._readings()
        return [Observation(n, {"decision": d, "reject_code": c}) for (d, c), n in r.decisions.items()]

    def _exclusions(self, options: CallbackOptions) -> Iterable[Observation]:
        r = self._readings()
        return [
            Observation(n, {"reconciler": s, "code": CODE_LABEL[c]}) for (s, c), n in r.exclusions.items()
        ]

    def _stage_time(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(ns / NS_PER_SECOND, {"reconciler": s}) for s, ns in self._readings().stage_ns.items()
        ]

    def _pipeline_time(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._readings().pipeline_sum_ns / NS_PER_SECOND)]

    def _outcomes(self, options: CallbackOptions) -> Iterable[Observation]:
        r = self._readings()
        return [
            Observation(r.outcomes_estimated, {"kind": "estimated"}),
            Observation(r.outcomes_unknown, {"kind": "unknown_decision"}),
            Observation(r.outcomes_clamped, {"kind": "clamped"}),
        ]

    def _spent(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(usd, {"scope": s}) for s, (usd, _) in self._readings().budget.items()]

    def _status(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(code, {"scope": s}) for s, (_, code) in self._readings().budget.items()]

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"backend": b}) for b, n in self._readings().in_flight.items()]

    def _ledger(self, options: CallbackOptions) -> Iterable[Observation]:
        r = self._readings()
        return [Observation(int(r.ledger_available and r.ledger_writable))]

    def shutdown(self) -> None:
        self.provider.shutdown()
