"""Phase 2 for the process sections: server, ledger, quality, queue, health_check, envoy,
telemetry, limits. Each builder reads one table (None when absent) and returns its dataclass."""

from __future__ import annotations

from pathlib import Path

from nexus_grpc.config import _reader
from nexus_grpc.config._reader import Context, Table, resolve_path, shown, text_rule
from nexus_grpc.config.schema import (
    EXPOSE_REASONS,
    LEDGER_KINDS,
    MAX_CHARGE_USD,
    MIN_CHARGE_USD,
    EnvoyConfig,
    HealthCheckConfig,
    LedgerConfig,
    LimitsConfig,
    QualityConfig,
    QueueConfig,
    ServerConfig,
    TelemetryConfig,
    TlsConfig,
)
from nexus_grpc.domain import validate

_REDIS_SCHEMES = ("redis", "rediss", "unix")

# Ranges shared by several keys (the reference documents each key's range).
MAX_RPCS = 65536
MAX_PROCESS_SECONDS = 3600.0  # drain, grace, health probe timeout: an hour
MAX_DAY_SECONDS = 86400.0
MAX_WEEK_SECONDS = 604800.0
MAX_WAIT_MS = 3_600_000
MAX_NAME_BYTES = 1024  # the most max_model_len and max_id_len may be
MAX_COUNT = 1_000_000
MAX_TOKENS = 2**32 - 1


def address(t: Table, key: str, default: str, *, allow_empty: bool = False, allow_unix: bool = True) -> str:
    """A `host:port` listen address (`[v6]:port`; port 0..65535, 0 picks a free port), or
    `unix:PATH` where `allow_unix`; "" (off) where `allow_empty`."""
    value = t.string(key, default)
    if allow_empty and value == "":
        return value
    if not t.check(key, value, validate.listen_address):
        return default
    if value.startswith("unix:") and not allow_unix:
        t.error(key, f"{shown(value)}: a unix socket is not supported here; use host:port")
        return default
    return value


def env_name(t: Table, key: str, default: str) -> str:
    """The name of an environment variable, or "" for none."""
    value = t.string(key, default)
    return value if t.check(key, value, validate.env_var_name) else default


def server(t: Table | None, ctx: Context) -> ServerConfig:
    d = ServerConfig()
    if t is None:
        return d
    tls_table = t.table("tls")
    result = ServerConfig(
        listen=address(t, "listen", d.listen),
        admin_token_env=env_name(t, "admin_token_env", d.admin_token_env),
        client_token_env=env_name(t, "client_token_env", d.client_token_env),
        max_concurrent_rpcs=t.integer("max_concurrent_rpcs", d.max_concurrent_rpcs, 1, MAX_RPCS),
        max_concurrent_streams=t.integer("max_concurrent_streams", d.max_concurrent_streams, 1, MAX_RPCS),
        drain_seconds=t.duration("drain_seconds", d.drain_seconds, MAX_PROCESS_SECONDS, allow_zero=True),
        grace_seconds=t.duration("grace_seconds", d.grace_seconds, MAX_PROCESS_SECONDS, allow_zero=True),
        watch_config=t.boolean("watch_config", d.watch_config),
        workers=t.integer("workers", d.workers, 1, 1024),
        tls=_tls(tls_table, ctx) if tls_table is not None else None,
    )
    t.finish()
    return result


def _tls(t: Table, ctx: Context) -> TlsConfig:
    cert = t.path_value("cert", ctx.base_dir, required=True)
    key = t.path_value("key", ctx.base_dir, required=True)
    client_ca = t.path_value("client_ca", ctx.base_dir)
    t.finish()
    return TlsConfig(cert=cert or Path(), key=key or Path(), client_ca=client_ca)


def ledger(t: Table | None, ctx: Context) -> LedgerConfig:
    # The default is sqlite, or memory for a build without sqlite yet.
    default_kind = "memory" if "ledger.kind=sqlite" in _reader.UNSUPPORTED else "sqlite"
    d = LedgerConfig()
    if t is None:
        return LedgerConfig(kind=default_kind, path=resolve_path(str(d.path), ctx.base_dir))
    kind = t.choice("kind", default_kind, LEDGER_KINDS)
    path = t.path_value("path", ctx.base_dir, non_empty=True) or resolve_path(str(d.path), ctx.base_dir)
    url = t.string("url", d.url, non_empty=True)
    if not t.check("url", url, lambda value, field: validate.service_url(value, field, _REDIS_SCHEMES)):
        url = d.url
    t.finish()
    return LedgerConfig(kind=kind, path=path, url=url)


def quality(t: Table | None) -> QualityConfig:
    d = QualityConfig()
    if t is None:
        return d
    result = QualityConfig(
        error_rate_threshold=t.number("error_rate_threshold", d.error_rate_threshold, 0.0, 1.0),
        min_requests=t.integer("min_requests", d.min_requests, 1, MAX_COUNT),
        window_seconds=t.duration("window_seconds", d.window_seconds, MAX_WEEK_SECONDS),
        cooldown_seconds=t.duration("cooldown_seconds", d.cooldown_seconds, MAX_DAY_SECONDS, allow_zero=True),
        ttft_penalty_threshold_ms=t.integer(
            "ttft_penalty_threshold_ms", d.ttft_penalty_threshold_ms, 1, MAX_WAIT_MS
        ),
    )
    t.finish()
    return result


def queue(t: Table | None) -> QueueConfig:
    d = QueueConfig()
    if t is None:
        return d
    result = QueueConfig(
        enabled=t.boolean("enabled", d.enabled),
        max_wait_ms=t.integer("max_wait_ms", d.max_wait_ms, 1, MAX_WAIT_MS),
        in_flight_ttl_seconds=t.number(
            "in_flight_ttl_seconds", d.in_flight_ttl_seconds, 1.0, MAX_WEEK_SECONDS
        ),
    )
    t.finish()
    return result


def health_check(t: Table | None) -> HealthCheckConfig:
    d = HealthCheckConfig()
    if t is None:
        return d
    result = HealthCheckConfig(
        enabled=t.boolean("enabled", d.enabled),
        interval_seconds=t.duration("interval_seconds", d.interval_seconds, MAX_DAY_SECONDS),
        timeout_seconds=t.duration("timeout_seconds", d.timeout_seconds, MAX_PROCESS_SECONDS),
        failure_threshold=t.integer("failure_threshold", d.failure_threshold, 1, 1000),
        recovery_threshold=t.integer("recovery_threshold", d.recovery_threshold, 1, 1000),
    )
    t.finish()
    return result


def envoy(t: Table | None) -> EnvoyConfig:
    d = EnvoyConfig()
    if t is None:
        return d
    result = EnvoyConfig(
        read_body=t.boolean("read_body", d.read_body),
        read_response_usage=t.boolean("read_response_usage", d.read_response_usage),
        expose_reasons=t.choice("expose_reasons", d.expose_reasons, EXPOSE_REASONS),
        endpoint_picker=t.boolean("endpoint_picker", d.endpoint_picker),
    )
    t.finish()
    return result


def telemetry(t: Table | None, ctx: Context) -> TelemetryConfig:
    d = TelemetryConfig()
    if t is None:
        return d
    decision_log = t.string("decision_log", d.decision_log)
    if decision_log not in ("", "-"):
        log_path = t.path_value("decision_log", ctx.base_dir)
        decision_log = str(log_path) if log_path is not None else d.decision_log
    otlp_endpoint = t.string("otlp_endpoint", d.otlp_endpoint)
    if otlp_endpoint and not t.check("otlp_endpoint", otlp_endpoint, validate.http_url):
        otlp_endpoint = d.otlp_endpoint
    service_name = t.string("service_name", d.service_name)
    if service_name and not t.check("service_name", service_name, text_rule(256, allow_space=False)):
        service_name = d.service_name
    result = TelemetryConfig(
        prometheus_listen=address(
            t, "prometheus_listen", d.prometheus_listen, allow_empty=True, allow_unix=False
        ),
        otlp_endpoint=otlp_endpoint,
        service_name=service_name,
        trace_sample_ratio=t.number("trace_sample_ratio", d.trace_sample_ratio, 0.0, 1.0),
        decision_log=decision_log,
    )
    t.finish()
    return result


def limits(t: Table | None) -> LimitsConfig:
    d = LimitsConfig()
    if t is None:
        return d
    result = LimitsConfig(
        max_message_bytes=t.integer("max_message_bytes", d.max_message_bytes, 1024, 64 * 1024 * 1024),
        max_model_len=t.integer("max_model_len", d.max_model_len, 1, MAX_NAME_BYTES),
        max_id_len=t.integer("max_id_len", d.max_id_len, 1, MAX_NAME_BYTES),
        max_labels=t.integer("max_labels", d.max_labels, 0, 1024),
        max_label_key_len=t.integer("max_label_key_len", d.max_label_key_len, 1, MAX_NAME_BYTES),
        max_label_value_len=t.integer("max_label_value_len", d.max_label_value_len, 1, 65536),
        max_tokens=t.integer("max_tokens", d.max_tokens, 1, MAX_TOKENS),
        max_charge_usd=t.number("max_charge_usd", d.max_charge_usd, MIN_CHARGE_USD, MAX_CHARGE_USD),
    )
    t.finish()
    return result
