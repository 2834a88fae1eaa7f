"""The validated configuration: immutable values built only by the loader (or tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexus_grpc.config.glob import Glob
from nexus_grpc.domain.backend import BackendConfig
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import Price

STRATEGIES = ("smart", "round_robin", "priority_only", "random")
HARD_LIMIT_ACTIONS = ("warn", "block_cloud", "block_all")
LEDGER_KINDS = ("memory", "sqlite", "redis")
EXPOSE_REASONS = ("full", "summary")
# [limits] max_charge_usd: the most one outcome report may charge, USD.
MIN_CHARGE_USD = 0.000001
MAX_CHARGE_USD = 1_000_000.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    admin_token_env: str = "NEXUS_ADMIN_TOKEN"
    client_token_env: str = ""
    max_concurrent_rpcs: int = 1024  # unary RPCs
    max_concurrent_streams: int = 1024  # long-lived streams: Envoy ext_proc, Queue holds
    drain_seconds: float = 5.0
    grace_seconds: float = 10.0
    watch_config: bool = False
    workers: int = 1
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class Weights:
    priority: int = 50
    load: int = 30
    latency: int = 20


@dataclass(frozen=True, slots=True)
class Policy:
    model_pattern: str
    glob: Glob  # compiled from model_pattern
    privacy: PrivacyZone = PrivacyZone.OPEN  # OPEN = "unrestricted"
    min_tier: int = 0
    max_cost_nano: int | None = None
    fallback_allowed: bool = True


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    monthly_limit_nano: int = 0
    soft_limit_percent: float = 75.0
    hard_limit_action: str = "warn"
    reconciliation_interval_secs: float = 60.0
    require_tenant: bool = False
    tenants: Mapping[str, int] = field(default_factory=dict)  # tenant -> limit in nano-USD


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    strategy: str = "smart"
    weights: Weights = Weights()
    aliases: Mapping[str, str] = field(default_factory=dict)
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()
    budget: BudgetConfig | None = None
    allow_empty_fleet: bool = False  # only then may a reload leave no backend at all


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    kind: str = "sqlite"
    path: Path = Path("nexus-ledger.db")
    url: str = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class QualityConfig:
    error_rate_threshold: float = 0.5
    min_requests: int = 5
    window_seconds: float = 3600.0
    cooldown_seconds: float = 30.0
    ttft_penalty_threshold_ms: int = 3000


@dataclass(frozen=True, slots=True)
class QueueConfig:
    enabled: bool = True
    max_wait_ms: int = 30000
    in_flight_ttl_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    enabled: bool = False
    interval_seconds: float = 30.0
    timeout_seconds: float = 5.0
    failure_threshold: int = 3
    recovery_threshold: int = 2


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    read_body: bool = False
    read_response_usage: bool = False
    expose_reasons: str = "full"
    endpoint_picker: bool = False  # only endpoint-picking gateways call: hostname backends refused


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    prometheus_listen: str = ""
    otlp_endpoint: str = ""
    service_name: str = ""  # "" = OTEL_SERVICE_NAME, else "nexus-grpc"
    trace_sample_ratio: float = 0.0
    decision_log: str = ""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = 4 * 1024 * 1024
    max_model_len: int = 256
    max_id_len: int = 128
    max_labels: int = 32
    max_label_key_len: int = 64
    max_label_value_len: int = 256
    max_tokens: int = 10_000_000
    max_charge_usd: float = 1000.0  # the most one outcome report may charge


@dataclass(frozen=True, slots=True)
class Settings:
    """Process settings — `[server]`, `[ledger]`, `[telemetry]`: taken when the process starts
    and kept for its life (a reload that changes them is logged; they apply after a restart)."""

    server: ServerConfig = ServerConfig()
    ledger: LedgerConfig = LedgerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()


@dataclass(frozen=True, slots=True)
class Config:
    """A configuration file: the process `settings`, and the policy every other section holds,
    which reloads live."""

    settings: Settings = Settings()
    routing: RoutingConfig = RoutingConfig()
    quality: QualityConfig = QualityConfig()
    queue: QueueConfig = QueueConfig()
    health_check: HealthCheckConfig = HealthCheckConfig()
    envoy: EnvoyConfig = EnvoyConfig()
    limits: LimitsConfig = LimitsConfig()
    backends: tuple[BackendConfig, ...] = ()
    # Model price table: built-in prices overlaid with [pricing."<model>"].
    pricing: Mapping[str, Price] = field(default_factory=dict)
    default_price: Price | None = None
    source: str = "<built-in>"  # file path, or <demo>
    version: str = ""  # hash of the file's bytes
    warnings: tuple[str, ...] = ()

    @property
    def server(self) -> ServerConfig:
        return self.settings.server

    @property
    def ledger(self) -> LedgerConfig:
        return self.settings.ledger

    @property
    def telemetry(self) -> TelemetryConfig:
        return self.settings.telemetry

    def price_for(self, backend: BackendConfig, model: str) -> Price:
        """Backend pricing, else 0 on restricted, else the model table, else the default, else 0."""
        if backend.pricing is not None:
            return backend.pricing
        if backend.zone == PrivacyZone.RESTRICTED:
            return Price(0, 0)
        price = self.pricing.get(model)
        if price is not None:
            return price
        return self.default_price or Price(0, 0)
