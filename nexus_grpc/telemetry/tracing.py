"""OpenTelemetry tracing: a SERVER span per RPC, a child per pipeline stage, the decision's
attributes — exported over OTLP/HTTP (JSON) by a background thread from a bounded queue.

On when an OTLP endpoint is set (`[telemetry] otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`;
spans go to `<endpoint>/v1/traces`). Sampling is parent-based: an incoming `traceparent` decides
(sampled: recorded; not sampled: not), a request without one is sampled at
`[telemetry] trace_sample_ratio`. The service is named by `[telemetry] service_name`, else
`OTEL_SERVICE_NAME`, else a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else "nexus-grpc"; the
other `OTEL_RESOURCE_ATTRIBUTES` are kept. When tracing is off nothing here runs on the hot path:
the gate and the servicers hold None.

Never prompt or message content: only ids, model names, verdicts, codes and counts.

The exporter is `opentelemetry-exporter-otlp-json-http`, which encodes OTLP as JSON with its own
`opentelemetry/proto_json` package: the protobuf OTLP exporters would need `opentelemetry-proto`,
whose files collide with the old copy that `xds-protos` (Envoy's API) installs under the same
names.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nexus_grpc import __version__
from nexus_grpc.config.schema import TelemetryConfig
from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.money import NANO

log = logging.getLogger("nexus_grpc")

QUEUE_SIZE = 4096  # finished spans waiting for export; beyond it spans are dropped (counted)
BATCH_SIZE = 512
EXPORT_EVERY_S = 1.0
_PROPAGATOR = TraceContextTextMapPropagator()
_WAKE = "wake"


def otlp_base(config: TelemetryConfig) -> str:
    """The OTLP/HTTP base URL: the config's, else the environment's, else "" (off)."""
    return (config.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).rstrip("/")


def resource(config: TelemetryConfig) -> Resource:
    """The service's resource: `OTEL_RESOURCE_ATTRIBUTES` and `service.version`; `service.name`
    from the config, else `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else "nexus-grpc"."""
    attributes: dict[str, Any] = {"service.version": __version__}
    if config.service_name:
        attributes["service.name"] = config.service_name  # the file wins over the environment
    elif (
        not os.environ.get("OTEL_SERVICE_NAME")
        and "service.name" not in OTELResourceDetector().detect().attributes
    ):
        attributes["service.name"] = "nexus-grpc"
    return Resource.create(attributes)


class BoundedBatchProcessor(SpanProcessor):
    """Finished spans go to a bounded queue (never blocking the event loop); one thread exports
    them in batches. `dropped` counts every sampled span that did not reach the collector: the
    queue was full, or the export of its batch failed (the collector refused it, or could not be
    reached within the exporter's timeout and retries)."""

    def __init__(self, exporter: SpanExporter, *, queue_size: int | None = None) -> None:
        self.exporter = exporter
        self.dropped = 0
        self.exported = 0
        # a span; _WAKE (a flush wants the batch now); None (stop)
        self._queue: queue.Queue[ReadableSpan | str | None] = queue.Queue(maxsize=queue_size or QUEUE_SIZE)
        self._flush = threading.Event()
        self._flushed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="nexus-trace-export", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context or not span.context.trace_flags.sampled:
            return
        try:
            self._queue.put_nowait(span)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            batch: list[ReadableSpan] = []
            stop = False
            deadline = time.monotonic() + EXPORT_EVERY_S
            while len(batch) < BATCH_SIZE:
                timeout = 0.0 if self._flush.is_set() else max(0.0, deadline - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if isinstance(item, str):  # _WAKE: export what is here without waiting
                    break
                batch.append(item)
            if batch:
                self._export(batch)
            with self._flushed:  # under the lock: a flush begun since is not cleared unseen
                if self._queue.empty():
                    self._flush.clear()
                    self._flushed.notify_all()
            if stop:
                return

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            result = self.exporter.export(batch)
        except Exception as exc:  # an unreachable collector must not stop the thread
            log.warning("trace export of %d span(s) failed: %s", len(batch), exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(batch)
        else:  # the exporter has said why (a warning per failed batch)
            self.dropped += len(batch)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._flushed:
            self._flush.set()
            with suppress(queue.Full):  # a full queue: the thread is not waiting anyway
                self._queue.put_nowait(_WAKE)
            return self._flushed.wait_for(lambda: not self._flush.is_set(), timeout_millis / 1000)

    def shutdown(self) -> None:
        self.force_flush(10_000)
        with suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(5.0)
        self.exporter.shutdown()


class Tracing:
    """The tracer of one serving process."""

    def __init__(self, config: TelemetryConfig, *, exporter: SpanExporter | None = None) -> None:
        base = otlp_base(config)
        self.endpoint = f"{base}/v1/traces"
        self.processor = BoundedBatchProcessor(
            exporter or OTLPSpanExporter(endpoint=self.endpoint, timeout=5)
        )
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.trace_sample_ratio)), resource=resource(config)
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("nexus_grpc", __version__)
        # no new traces (ratio 0): a request without a sampled parent gets no span at all, not
        # even a non-recording one (the sampler would drop it anyway; this skips its cost)
        self.roots = config.trace_sample_ratio > 0

    @staticmethod
    def enabled(config: TelemetryConfig) -> bool:
        return bool(otlp_base(config))

    @contextmanager
    def rpc(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Iterator[Span]:
        """The SERVER span of one RPC (`method` like "/nexus.v1.DecisionService/Decide"), a child
        of the caller's `traceparent` when the metadata carries one; current while it runs."""
        carrier = _trace_carrier(metadata or ())
        if not carrier and not self.roots:
            yield trace.INVALID_SPAN
            return
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        name = method.lstrip("/")
        service, _, _rpc_method = name.partition("/")
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system.name": "grpc", "rpc.method": name, "rpc.service": service},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    @contextmanager
    def linked(self, name: str, headers: Mapping[str, str]) -> Iterator[Span]:
        """The span of a decision made for an HTTP request seen through Envoy; current while it
        runs. Its parent, first found wins: the current span (the ext_proc stream's or the
        ext_authz Check's RPC span) when that one continues a caller's trace — Envoy's, when
        Envoy traces its calls; the HTTP request's own `traceparent` header (a client's or a front
        proxy's trace); else the current span, or a new trace. An RPC span left outside the
        request's trace is linked from this one."""
        current = trace.get_current_span()
        parent = None  # the current context
        links: list[Link] = []
        if getattr(current, "parent", None) is None:
            carrier = _trace_carrier(headers.items())
            if carrier:
                parent = _PROPAGATOR.extract(carrier)
                if current.is_recording():
                    links.append(Link(current.get_span_context()))
            elif not self.roots and not current.is_recording():
                yield trace.INVALID_SPAN
                return
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, links=links)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    @contextmanager
    def child(self, name: str, parent: Span) -> Iterator[Span]:
        """A span under `parent` (a decision's, kept until its outcome is reported); current
        while it runs."""
        span = self.tracer.start_span(name, context=trace.set_span_in_context(parent))
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()

    def outcome(self, decision_id: str, recorded: bool, charged_nano: int) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "nexus.decision_id": decision_id,
                    "nexus.outcome.recorded": recorded,
                    "nexus.outcome.charged_usd": charged_nano / NANO,
                }
            )

    def decision(self, decision: Decision, started_ns: int, tenant: str) -> None:
        """The decision's attributes on the current span (an RPC's, or an Envoy request's)."""
        record_decision(self.tracer, trace.get_current_span(), decision, started_ns, tenant)


def _trace_carrier(items: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The W3C trace context among headers or gRPC metadata; empty without a `traceparent`."""
    carrier = {
        k: (v.decode("latin-1") if isinstance(v, bytes) else v)
        for k, v in items
        if k in ("traceparent", "tracestate")
    }
    return carrier if "traceparent" in carrier else {}


def finish_rpc(span: Span, code_name: str) -> None:
    """The status of an RPC's span: the gRPC status code; an error for server faults."""
    span.set_attribute("rpc.response.status_code", code_name)
    if code_name in ("UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"):
        span.set_attribute("error.type", code_name)
        span.set_status(Status(StatusCode.ERROR))


def record_decision(
    tracer: trace.Tracer, span: Span, decision: Decision, started_ns: int, tenant: str
) -> None:
    """The decision's attributes on `span`, and a child span per stage (or for the route index),
    placed in time from the stage durations."""
    if not span.is_recording():
        return
    v = decision.verdict
    attributes: dict[str, Any] = {
        "gen_ai.request.model": decision.requested_model,
        "nexus.model.resolved": decision.resolved_model,
        "nexus.request_id": decision.request_id,
        "nexus.exclusions": decision.exclusion_count,
    }
    if tenant:
        attributes["nexus.tenant"] = tenant
    if isinstance(v, Route):
        attributes.update(
            {
                "nexus.decision": "route",
                "nexus.backend.id": v.backend_id,
                "nexus.model.routed": v.model,
                "nexus.route.reason": v.reason,
                "nexus.fallback_used": v.fallback_used,
            }
        )
        if decision.decision_id:
            attributes["nexus.decision_id"] = decision.decision_id
    elif isinstance(v, Queue):
        attributes.update(
            {
                "nexus.decision": "queue",
                "nexus.model.routed": v.model,
                "nexus.queue.wait_ms": v.estimated_wait_ms,
            }
        )
    elif isinstance(v, Reject):
        attributes.update({"nexus.decision": "reject", "nexus.reject.code": v.code.name.lower()})
    span.set_attributes(attributes)
    counts = _counts_by_stage(decision)
    tracer_span_start = started_ns
    funnel = decision.stage_funnel
    for i, (stage, ns) in enumerate(decision.stage_durations_ns):
        child_attrs: dict[str, Any] = {"nexus.stage": stage}
        if i < len(funnel):
            child_attrs["nexus.candidates.in"], child_attrs["nexus.candidates.out"] = funnel[i]
        for code, n in counts.get(stage, {}).items():
            child_attrs[f"nexus.exclusions.{code}"] = n
        child = tracer.start_span(
            stage,
            context=trace.set_span_in_context(span),
            start_time=tracer_span_start,
            attributes=child_attrs,
        )
        tracer_span_start += ns
        child.end(end_time=tracer_span_start)


def _counts_by_stage(decision: Decision) -> dict[str, dict[str, int]]:
    by_stage: dict[str, dict[str, int]] = {}
    if decision.exclusion_counts:
        items: Iterable[tuple[tuple[str, Any], int]] = decision.exclusion_counts
    else:
        tally: dict[tuple[str, Any], int] = {}
        for e in decision.exclusions:
            tally[(e.reconciler, e.code)] = tally.get((e.reconciler, e.code), 0) + 1
        items = tally.items()
    for (stage, code), n in items:
        per = by_stage.setdefault(stage, {})
        per[code.name.lower()] = per.get(code.name.lower(), 0) + n
    # the index decides every stage's exclusions in one step
    if len(decision.stage_durations_ns) == 1 and decision.stage_durations_ns[0][0] not in by_stage:
        merged: dict[str, int] = {}
        for per in by_stage.values():
            for code, n in per.items():
                merged[code] = merged.get(code, 0) + n
        by_stage[decision.stage_durations_ns[0][0]] = merged
    return by_stage
