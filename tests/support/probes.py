"""Health-probe test helpers shared by the prober's unit tests and its tests over real HTTP."""

from __future__ import annotations

from dataclasses import replace

from nexus_grpc.config.schema import Config, HealthCheckConfig
from nexus_grpc.domain.backend import BackendConfig
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.state.health import ProbeResult
from nexus_grpc.state.registry import Registry
from nexus_grpc.testing.builders import config
from nexus_grpc.testing.clock import FakeClock

__all__ = ["FAIL", "HC", "OK", "H", "K", "U", "registry", "status", "with_health"]

H, U, K = BackendStatus.HEALTHY, BackendStatus.UNHEALTHY, BackendStatus.UNKNOWN
HC = HealthCheckConfig(enabled=True, interval_seconds=30, timeout_seconds=0.5, failure_threshold=3)
OK = ProbeResult(True, "HTTP 200", 12.0)
FAIL = ProbeResult(False, "HTTP 500", 0.0)


def with_health(cfg: Config, hc: HealthCheckConfig = HC) -> Config:
    return replace(cfg, health_check=hc)


def registry(*backends: BackendConfig, hc: HealthCheckConfig = HC) -> Registry:
    return Registry(with_health(config(list(backends)), hc), FakeClock())


def status(reg: Registry, backend_id: str) -> BackendStatus:
    found = reg.get(backend_id)
    assert found is not None
    return found[1].status
