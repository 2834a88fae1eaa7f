"""The same aggregates as the Prometheus endpoint, exported over OTLP/HTTP (JSON) to
`<endpoint>/v1/metrics` when an OTLP endpoint is set. Every instrument is observable: its value is
read from one `Readings` at export time, never recorded per decision on the hot path.

The decision-duration histogram goes out as three observable counters, the Prometheus histogram's
parts: `nexus.pipeline.duration` (the sum, s), `nexus.pipeline.duration.count` and
`nexus.pipeline.duration.bucket` (cumulative, by its upper bound `le`, like Prometheus). The
OpenTelemetry API has no observable histogram, and its synchronous histogram would mean one record
per decision; a histogram point made by hand would also need a min and a max the aggregates do not
keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

from nexus_grpc import __version__
from nexus_grpc.config.schema import TelemetryConfig
from nexus_grpc.telemetry.metrics import CODE_LABEL, NS_PER_SECOND, PIPELINE_BUCKETS_NS
from nexus_grpc.telemetry.readings import Readings
from nexus_grpc.telemetry.tracing import resource

EXPORT_EVERY_S = 15.0
_LE = [repr(bound / NS_PER_SECOND) for bound in PIPELINE_BUCKETS_NS] + ["+Inf"]


class OtlpMetrics:
    def __init__(
        self,
        base: str,
        read: Callable[[], Readings],
        *,
        service_name: str = "",
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
        self.provider = MeterProvider(
            metric_readers=[reader], resource=resource(TelemetryConfig(service_name=service_name))
        )
        meter = self.provider.get_meter("nexus_grpc", __version__)
        counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
        # the first instrument reads the aggregates for the whole collection (see _readings)
        counter("nexus.decisions", [self._decisions], unit="{decision}", description="Decisions by verdict")
        counter("nexus.reconciler.exclusions", [self._exclusions], unit="{backend}", description="Exclusions")
        counter("nexus.reconciler.duration", [self._stage_time], unit="s", description="Time in each stage")
        counter("nexus.reconciler.runs", [self._stage_runs], unit="{run}", description="Runs of each stage")
        counter(
            "nexus.pipeline.duration", [self._pipeline_time], unit="s", description="Time to decide (sum)"
        )
        counter(
            "nexus.pipeline.duration.count",
            [self._pipeline_count],
            unit="{decision}",
            description="Decisions timed",
        )
        counter(
            "nexus.pipeline.duration.bucket",
            [self._pipeline_buckets],
            unit="{decision}",
            description="Decisions that took at most `le` seconds (cumulative)",
        )
        counter("nexus.outcomes", [self._outcomes], unit="{outcome}", description="Outcomes by kind")
        counter(
            "nexus.decision_log.dropped",
            [self._log_dropped],
            unit="{line}",
            description="Decision log lines dropped (queue full)",
        )
        counter(
            "nexus.trace.spans_dropped",
            [self._spans_dropped],
            unit="{span}",
            description="Trace spans that did not reach the collector",
        )
        gauge("nexus.budget.spent", [self._spent], unit="USD", description="Spend this UTC month")
        gauge("nexus.budget.status", [self._status], description="0 unknown, 1 normal, 2 soft, 3 hard")
        gauge("nexus.backend.in_flight", [self._in_flight], unit="{request}", description="In flight")
        gauge("nexus.ledger.available", [self._available], description="1 when the ledger is reachable")
        gauge("nexus.ledger.writable", [self._writable], description="1 when the ledger stores changes")
        gauge("nexus.config.info", [self._config], description="1, with the active config_version")

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

    def _stage_runs(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"reconciler": s}) for s, n in self._readings().stage_runs.items()]

    def _pipeline_time(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._readings().pipeline_sum_ns / NS_PER_SECOND)]

    def _pipeline_count(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(self._readings().pipeline_buckets))]

    def _pipeline_buckets(self, options: CallbackOptions) -> Iterable[Observation]:
        observations, acc = [], 0
        for le, n in zip(_LE, self._readings().pipeline_buckets, strict=True):
            acc += n
            observations.append(Observation(acc, {"le": le}))
        return observations

    def _outcomes(self, options: CallbackOptions) -> Iterable[Observation]:
        r = self._readings()
        return [
            Observation(r.outcomes_estimated, {"kind": "estimated"}),
            Observation(r.outcomes_unknown, {"kind": "unknown_decision"}),
            Observation(r.outcomes_clamped, {"kind": "clamped"}),
        ]

    def _log_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._readings().decision_log_dropped)]

    def _spans_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._readings().spans_dropped)]

    def _spent(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(usd, {"scope": s}) for s, (usd, _) in self._readings().budget.items()]

    def _status(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(code, {"scope": s}) for s, (_, code) in self._readings().budget.items()]

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"backend": b}) for b, n in self._readings().in_flight.items()]

    def _available(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(self._readings().ledger_available))]

    def _writable(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(self._readings().ledger_writable))]

    def _config(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1, {"config_version": self._readings().config_version or "demo"})]

    def shutdown(self) -> None:
        self.provider.shutdown()
