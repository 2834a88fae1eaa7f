"""Phase 2 for the process sections: server, ledger, quality, queue, health_check, envoy,
telemetry, limits. Each builder reads one table (None when absent) and returns its dataclass."""

from __future__ import annotations

from urllib.parse import urlsplit

from nexus_grpc.config import _reader
from nexus_grpc.config._reader import Context, Table, resolve_path
from nexus_grpc.config.schema import (
    EXPOSE_REASONS,
    LEDGER_KINDS,
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

_INT32_MAX = 2**31 - 1
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def address(t: Table, key: str, default: str, *, allow_empty: bool = False) -> str:
    """A `host:port` listen address (port 0..65535; 0 picks a free port)."""
    value = t.string(key, default)
    if allow_empty and value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        t.error(key, f"{value!r} is not a host:port address with a port in 0..65535")
        return default
    return value


def server(t: Table | None, ctx: Context) -> ServerConfig:
    d = ServerConfig()
    if t is None:
        return d
    tls_table = t.table("tls")
    result = ServerConfig(
        listen=address(t, "listen", d.listen),
        admin_token_env=t.string("admin_token_env", d.admin_token_env),
        client_token_env=t.string("client_token_env", d.client_token_env),
        max_concurrent_rpcs=t.integer("max_concurrent_rpcs", d.max_concurrent_rpcs, 1, 65536),
        max_concurrent_streams=t.integer("max_concurrent_streams", d.max_concurrent_streams, 1, 65536),
        drain_seconds=t.duration("drain_seconds", d.drain_seconds, allow_zero=True),
        grace_seconds=t.duration("grace_seconds", d.grace_seconds, allow_zero=True),
        watch_config=t.boolean("watch_config", d.watch_config),
        workers=t.integer("workers", d.workers, 1, 1024),
        tls=_tls(tls_table, ctx) if tls_table is not None else None,
    )
    t.finish()
    return result


def _tls(t: Table, ctx: Context) -> TlsConfig:
    cert = t.string("cert", "", required=True)
    key = t.string("key", "", required=True)
    client_ca = t.string("client_ca", "")
    t.finish()
    return TlsConfig(
        cert=resolve_path(cert, ctx.base_dir),
        key=resolve_path(key, ctx.base_dir),
        client_ca=resolve_path(client_ca, ctx.base_dir) if client_ca else None,
    )


def ledger(t: Table | None, ctx: Context) -> LedgerConfig:
    # SPEC §3: the default is sqlite, or memory for a build without sqlite yet.
    default_kind = "memory" if "ledger.kind=sqlite" in _reader.UNSUPPORTED else "sqlite"
    d = LedgerConfig()
    if t is None:
        return LedgerConfig(kind=default_kind, path=resolve_path(str(d.path), ctx.base_dir))
    kind = t.choice("kind", default_kind, LEDGER_KINDS)
    path = t.path_value("path", d.path, ctx.base_dir)
    url = t.string("url", d.url, non_empty=True)
    if urlsplit(url).scheme.lower() not in _REDIS_SCHEMES:
        t.error("url", f"{url!r} is not a redis URL (redis://, rediss:// or unix://)")
    t.finish()
    return LedgerConfig(kind=kind, path=path, url=url)


def quality(t: Table | None) -> QualityConfig:
    d = QualityConfig()
    if t is None:
        return d
    result = QualityConfig(
        error_rate_threshold=t.number("error_rate_threshold", d.error_rate_threshold, 0.0, 1.0),
        min_requests=t.integer("min_requests", d.min_requests, 1),
        window_seconds=t.duration("window_seconds", d.window_seconds),
        cooldown_seconds=t.duration("cooldown_seconds", d.cooldown_seconds, allow_zero=True),
        ttft_penalty_threshold_ms=t.integer("ttft_penalty_threshold_ms", d.ttft_penalty_threshold_ms, 1),
    )
    t.finish()
    return result


def queue(t: Table | None) -> QueueConfig:
    d = QueueConfig()
    if t is None:
        return d
    result = QueueConfig(
        enabled=t.boolean("enabled", d.enabled),
        max_wait_ms=t.integer("max_wait_ms", d.max_wait_ms, 1, _INT32_MAX),
        in_flight_ttl_seconds=t.duration("in_flight_ttl_seconds", d.in_flight_ttl_seconds),
    )
    t.finish()
    return result


def health_check(t: Table | None) -> HealthCheckConfig:
    d = HealthCheckConfig()
    if t is None:
        return d
    result = HealthCheckConfig(
        enabled=t.boolean("enabled", d.enabled),
        interval_seconds=t.duration("interval_seconds", d.interval_seconds),
        timeout_seconds=t.duration("timeout_seconds", d.timeout_seconds),
        failure_threshold=t.integer("failure_threshold", d.failure_threshold, 1),
        recovery_threshold=t.integer("recovery_threshold", d.recovery_threshold, 1),
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
    )
    t.finish()
    return result


def telemetry(t: Table | None, ctx: Context) -> TelemetryConfig:
    d = TelemetryConfig()
    if t is None:
        return d
    decision_log = t.string("decision_log", d.decision_log)
    if decision_log not in ("", "-"):
        decision_log = str(resolve_path(decision_log, ctx.base_dir))
    result = TelemetryConfig(
        prometheus_listen=address(t, "prometheus_listen", d.prometheus_listen, allow_empty=True),
        otlp_endpoint=t.string("otlp_endpoint", d.otlp_endpoint),
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
        max_message_bytes=t.integer("max_message_bytes", d.max_message_bytes, 1024, _INT32_MAX),
        max_model_len=t.integer("max_model_len", d.max_model_len, 1),
        max_id_len=t.integer("max_id_len", d.max_id_len, 1),
        max_labels=t.integer("max_labels", d.max_labels, 0),
        max_label_key_len=t.integer("max_label_key_len", d.max_label_key_len, 1),
        max_label_value_len=t.integer("max_label_value_len", d.max_label_value_len, 1),
        max_tokens=t.integer("max_tokens", d.max_tokens, 1, 2**32 - 1),
        max_charge_usd=t.number("max_charge_usd", d.max_charge_usd, 0.000001, 1_000_000.0),
    )
    t.finish()
    return result
