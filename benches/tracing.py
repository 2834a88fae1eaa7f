"""What tracing costs a Decide, side by side in one run (in process, the bench fleet at 100 backends).

Three variants of the same servicer call — `DecisionServicer.Decide` on a decoded request with a
fake context, which is what the gate hands it — interleaved in rounds so that machine noise hits
them alike:

- `off`: no tracer (no OTLP endpoint): what every bench and the default configuration run;
- `unsampled`: tracing on, `trace_sample_ratio = 0`, no `traceparent`: the RPC span is created by
  the sampler's verdict only (a non-recording span), nothing is exported;
- `sampled`: tracing on and the caller's sampled `traceparent`: the RPC span, the decision's
  attributes and a child span per stage are recorded and handed to the export queue (an exporter
  that drops them, so only nexus-grpc's side is measured — the background thread's encoding and
  HTTP post are not on the request path and are left out).

    ./dev bench tracing [--quick]     # writes benches/results/tracing.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fleet
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.app import Runtime
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.config.schema import TelemetryConfig
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.decision import DecisionServicer
from nexus_grpc.servicers.gate import _traced
from nexus_grpc.telemetry.tracing import Tracing

METHOD = "/nexus.v1.DecisionService/Decide"
TRACEPARENT = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
SERVING = 100
TTL = 3600.0


class DropExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class FakeContext:
    """What DecisionServicer and the gate's span wrapper read from a grpc.aio context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None

    def code(self) -> Any:
        return None


async def build_engine() -> DecisionEngine:
    text = _fleet.fleet_toml(SERVING, 0)
    config = _fleet.with_flight_ttl(load_config_text(text, "<bench>"), TTL)
    engine = Runtime(config).engine
    await _fleet.seed_engine(engine, _fleet.plan(SERVING))
    return engine


def tracer(ratio: float, exporter: DropExporter) -> Tracing:
    config = TelemetryConfig(otlp_endpoint="http://127.0.0.1:9", trace_sample_ratio=ratio)
    return Tracing(config, exporter=exporter)


async def main_async(quick: bool) -> dict[str, Any]:
    engine = await build_engine()
    exporter = DropExporter()
    unsampled = tracer(0.0, exporter)
    sampled = tracer(0.0, exporter)
    servicers = {
        "off": (DecisionServicer(engine, lambda: False, None).Decide, FakeContext(())),
        "unsampled": (
            _traced(unsampled, METHOD, DecisionServicer(engine, lambda: False, unsampled).Decide),
            FakeContext(()),
        ),
        "sampled": (
            _traced(sampled, METHOD, DecisionServicer(engine, lambda: False, sampled).Decide),
            FakeContext(TRACEPARENT),
        ),
    }
    samples: dict[str, list[int]] = {name: [] for name in servicers}
    k = 0

    async def one(
        name: str, call: Callable[[Any, Any], Awaitable[Any]], ctx: FakeContext, record: bool
    ) -> None:
        nonlocal k
        k += 1
        request = dpb.DecideRequest(
            request_id=f"t-{k}", model=_fleet.ALIAS, estimated_input_tokens=500, tenant=_fleet.TENANT
        )
        t0 = time.perf_counter_ns()
        await call(request, ctx)
        t1 = time.perf_counter_ns()
        if record:
            samples[name].append(t1 - t0)
        await engine.expire_flights()

    rounds, per_round = (30, 200) if quick else (150, 400)
    for name, (call, ctx) in servicers.items():  # warm up
        for _ in range(500):
            await one(name, call, ctx, False)
    gc.collect()
    for _ in range(rounds):
        for name, (call, ctx) in servicers.items():
            for _ in range(per_round):
                await one(name, call, ctx, True)
    for t in (unsampled, sampled):
        t.processor.force_flush()
    stats = {name: _fleet.percentiles(s) for name, s in samples.items()}
    off = stats["off"]["p50_us"]
    payload = {
        "machine": _fleet.machine(),
        "serving_backends": SERVING,
        "samples_per_variant": rounds * per_round,
        "variants": stats,
        "p50_added_us": {name: s["p50_us"] - off for name, s in stats.items()},
        "p50_ratio": {name: s["p50_us"] / off for name, s in stats.items()},
        "spans_exported": exporter.spans,
        "spans_dropped": sampled.processor.dropped,
    }
    for t in (unsampled, sampled):
        t.shutdown()
    return payload


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    payload = asyncio.run(main_async(args.quick))
    rows = [
        [
            name,
            f"{s['p50_us']:.1f}",
            f"{s['p99_us']:.1f}",
            f"{payload['p50_added_us'][name]:+.1f}",
            f"{payload['p50_ratio'][name]:.2f}",
        ]
        for name, s in payload["variants"].items()
    ]
    print(
        _fleet.table(
            ["Decide (servicer, 100 backends)", "p50 µs", "p99 µs", "p50 added µs", "p50 ratio"], rows
        )
    )
    print(f"spans handed to the exporter: {payload['spans_exported']}, dropped: {payload['spans_dropped']}")
    print(f"wrote {_fleet.write_result('tracing', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
