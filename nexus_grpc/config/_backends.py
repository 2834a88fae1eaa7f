"""Phase 2 for `[[backends]]` and their `[[backends.models]]`."""

from __future__ import annotations

from urllib.parse import urlsplit

from nexus_grpc.config._reader import Context, Table
from nexus_grpc.config._routing import price
from nexus_grpc.domain.backend import BackendConfig, ModelSpec, default_zone
from nexus_grpc.domain.enums import PrivacyZone

_ZONES = {"restricted": PrivacyZone.RESTRICTED, "open": PrivacyZone.OPEN}


def backends(tables: list[Table], ctx: Context) -> tuple[BackendConfig, ...]:
    return tuple(_backend(t, index, ctx) for index, t in enumerate(tables))


def _backend(t: Table, index: int, ctx: Context) -> BackendConfig:
    backend_id = t.string("id", "", required=True)
    if any(char.isspace() for char in backend_id):
        t.error("id", f"{backend_id!r} must not contain whitespace")
    url = t.string("url", "", required=True)
    if url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            t.error("url", f"{url!r} is not an http:// or https:// URL with a host")
    # An unknown type is a cross-reference problem (phase 3); only the value's type is checked here.
    backend_type = t.string("type", "", required=True).strip().lower()
    zone_name = t.choice("zone", "", tuple(_ZONES))
    health_path = t.string("health_path", "")
    if health_path and not health_path.startswith("/"):
        t.error("health_path", f"{health_path!r} must start with '/'")
    pricing_table = t.table("pricing")
    backend_pricing = price(pricing_table, ctx) if pricing_table is not None else None
    if pricing_table is not None and backend_pricing is None:
        ctx.bad_price_backends.add(index)
    result = BackendConfig(
        id=backend_id,
        url=url,
        type=backend_type,
        zone=_ZONES[zone_name] if zone_name else default_zone(backend_type),
        tier=t.integer("tier", 1, 1, 5),
        priority=t.integer("priority", 50, 0, 100),
        max_concurrency=t.integer("max_concurrency", 0, 0),
        pricing=backend_pricing,
        models=tuple(_model(m) for m in t.tables("models")),
        health_path=health_path,
        health_headers_env=t.string("health_headers_env", ""),
    )
    t.finish()
    return result


def _model(t: Table) -> ModelSpec:
    context_length = t.integer("context_length", 0, 1)
    result = ModelSpec(
        id=t.string("id", "", required=True),
        context_length=context_length or None,
        vision=t.boolean("vision", False),
        tools=t.boolean("tools", False),
        json_mode=t.boolean("json_mode", False),
    )
    t.finish()
    return result
