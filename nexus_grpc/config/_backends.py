"""Phase 2 for `[[backends]]` and their `[[backends.models]]`."""

from __future__ import annotations

from nexus_grpc.config._reader import Context, Table, text_rule
from nexus_grpc.config._routing import check_model, id_rule, price
from nexus_grpc.config._sections import MAX_TOKENS, env_name
from nexus_grpc.domain import validate
from nexus_grpc.domain.backend import BackendConfig, ModelSpec, default_zone
from nexus_grpc.domain.enums import PrivacyZone

_ZONES = {"restricted": PrivacyZone.RESTRICTED, "open": PrivacyZone.OPEN}
MAX_BACKEND_CONCURRENCY = 1_000_000


def backends(tables: list[Table], ctx: Context) -> tuple[BackendConfig, ...]:
    return tuple(_backend(t, index, ctx) for index, t in enumerate(tables))


def _backend(t: Table, index: int, ctx: Context) -> BackendConfig:
    backend_id = t.string("id", "", required=True)
    if backend_id:
        t.check("id", backend_id, id_rule)
    url = t.string("url", "", required=True)
    if url:
        t.check("url", url, validate.http_url)
    # An unknown type is a cross-reference problem (phase 3); only the value's type is checked here.
    backend_type = t.string("type", "", required=True).strip().lower()
    zone_name = t.choice("zone", "", tuple(_ZONES))
    health_path = t.string("health_path", "")
    if health_path and not health_path.startswith("/"):
        t.error("health_path", f"{health_path!r} must start with '/'")
    elif health_path:
        t.check("health_path", health_path, text_rule(2048, allow_space=False))
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
        max_concurrency=t.integer("max_concurrency", 0, 0, MAX_BACKEND_CONCURRENCY),
        pricing=backend_pricing,
        models=tuple(_model(m) for m in t.tables("models")),
        health_path=health_path,
        health_headers_env=env_name(t, "health_headers_env", ""),
    )
    t.finish()
    return result


def _model(t: Table) -> ModelSpec:
    raw = t.data.get("context_length")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw == 0:
        t.take("context_length")
        t.error("context_length", "0 is out of range: at least 1; leave it out for unlimited")
        context_length = 0
    else:
        context_length = t.integer("context_length", 0, 1, MAX_TOKENS, hint="; leave it out for unlimited")
    model_id = t.string("id", "", required=True)
    if model_id:
        check_model(t.issues, t.at("id"), model_id, "a model id")
    result = ModelSpec(
        id=model_id,
        context_length=context_length or None,
        vision=t.boolean("vision", False),
        tools=t.boolean("tools", False),
        json_mode=t.boolean("json_mode", False),
    )
    t.finish()
    return result
