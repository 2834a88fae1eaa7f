"""The OTLP exporters' pieces without a server: which service name wins, the `service_name` key,
and the resource the OTLP metrics carry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from nexus_grpc.config.loader import ConfigError, load_config_text
from nexus_grpc.config.schema import TelemetryConfig
from nexus_grpc.telemetry.otlp_metrics import OtlpMetrics
from nexus_grpc.telemetry.readings import Readings
from nexus_grpc.telemetry.tracing import resource


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("configured", "service_env", "attributes_env", "expected"),
    [
        ("", None, None, "nexus-grpc"),
        ("", None, "service.name=from-attributes", "from-attributes"),
        ("", "from-env", "service.name=from-attributes", "from-env"),  # OpenTelemetry's order
        ("from-file", "from-env", "service.name=from-attributes", "from-file"),  # the file wins
    ],
)
def test_which_service_name_wins(
    monkeypatch: pytest.MonkeyPatch,
    configured: str,
    service_env: str | None,
    attributes_env: str | None,
    expected: str,
) -> None:
    if service_env is not None:
        monkeypatch.setenv("OTEL_SERVICE_NAME", service_env)
    if attributes_env is not None:
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"{attributes_env},team=routing")
    attributes = resource(TelemetryConfig(service_name=configured)).attributes
    assert attributes["service.name"] == expected
    assert attributes["service.version"]
    assert attributes.get("team") == ("routing" if attributes_env else None)


def test_the_service_name_key() -> None:
    assert load_config_text("").telemetry.service_name == ""
    assert load_config_text('[telemetry]\nservice_name = "router-eu"').telemetry.service_name == "router-eu"
    for bad in ("two words", "tab\there", "x" * 257):
        with pytest.raises(ConfigError) as info:
            load_config_text(f'[telemetry]\nservice_name = "{bad}"', source="n.toml")
        assert "n.toml: telemetry.service_name:" in str(info.value)


class _Keep(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _readings() -> Readings:
    return Readings(
        decisions={("route", ""): 3},
        stage_ns={"RouteIndex": 3000},
        stage_runs={"RouteIndex": 3},
        exclusions={},
        pipeline_buckets=[1, 2] + [0] * 11,
        pipeline_sum_ns=45_000,
        budget={},
        in_flight={},
        ledger_available=True,
        ledger_writable=False,
        config_version="v1",
        outcomes_estimated=0,
        outcomes_unknown=0,
        outcomes_clamped=0,
        decision_log_dropped=2,
        spans_dropped=5,
    )


def _points(exports: Sequence[MetricsData]) -> dict[str, list[tuple[dict[str, Any], float]]]:
    [rm] = exports[-1].resource_metrics
    return {
        m.name: [(dict(p.attributes or {}), p.value) for p in m.data.data_points]  # type: ignore[union-attr]
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def test_otlp_metrics_are_read_once_per_export_under_the_configured_service_name() -> None:
    reads: list[int] = []

    def read() -> Readings:
        reads.append(1)
        return _readings()

    keep = _Keep()
    otlp = OtlpMetrics("http://127.0.0.1:1", read, service_name="router-eu", exporter=keep, interval_s=3600)
    try:
        assert reads == []  # nothing is read until an export
        assert otlp.provider.force_flush(10_000)
        assert len(reads) == 1  # every instrument of one export shares one reading
        [rm] = keep.exports[-1].resource_metrics
        assert rm.resource.attributes["service.name"] == "router-eu"
        got = _points(keep.exports)
        assert got["nexus.pipeline.duration.count"] == [({}, 3)]
        assert got["nexus.pipeline.duration"] == [({}, 45_000 / 1e9)]
        buckets = got["nexus.pipeline.duration.bucket"]
        assert buckets[0] == ({"le": "1e-05"}, 1) and buckets[1] == ({"le": "2.5e-05"}, 3)
        assert buckets[-1] == ({"le": "+Inf"}, 3)
        assert got["nexus.reconciler.runs"] == [({"reconciler": "RouteIndex"}, 3)]
        assert got["nexus.ledger.available"] == [({}, 1)] and got["nexus.ledger.writable"] == [({}, 0)]
        assert got["nexus.config.info"] == [({"config_version": "v1"}, 1)]
        assert got["nexus.trace.spans_dropped"] == [({}, 5)]
        assert got["nexus.decision_log.dropped"] == [({}, 2)]
    finally:
        otlp.shutdown()
