"""Phase 2 for `[routing]` (strategy, weights, aliases, fallbacks, policies, budget) and prices."""

from __future__ import annotations

from nexus_grpc.config._reader import Context, Issues, Table, check, checked_money, type_name
from nexus_grpc.config.glob import MAX_PATTERN_BYTES, Glob, GlobError
from nexus_grpc.config.schema import (
    HARD_LIMIT_ACTIONS,
    STRATEGIES,
    BudgetConfig,
    Policy,
    RoutingConfig,
    Weights,
)
from nexus_grpc.domain import validate
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import NANO, Price, PriceError, per_1k_to_nano_per_token

_POLICY_PRIVACY = {"restricted": PrivacyZone.RESTRICTED, "unrestricted": PrivacyZone.OPEN}
MAX_NAME_BYTES = 1024  # phase 2 bound of names; phase 3 holds them to limits.max_model_len / max_id_len
MAX_PRICE_PER_1K = 1000.0  # USD per 1K tokens, input or output
MAX_MONTHLY_USD = 1e9  # a monthly limit, global or per tenant
MAX_COST_PER_REQUEST_USD = validate.MAX_COST_USD


def _model_rule(value: str, field: str) -> object:
    return validate.model_name(value, field, MAX_NAME_BYTES)


def id_rule(value: str, field: str) -> object:
    """Backend ids and tenant names: printable, no whitespace."""
    return validate.identifier(value, field, MAX_NAME_BYTES)


def check_model(issues: Issues, path: str, value: str, what: str) -> bool:
    """A model name: not empty, printable, no whitespace (the problem names `what` it is)."""
    if not value.strip():
        issues.add(path, f"{what} must not be empty")
        return False
    return check(issues, path, value, _model_rule)


def routing(t: Table | None, ctx: Context) -> RoutingConfig:
    d = RoutingConfig()
    if t is None:
        return d
    result = RoutingConfig(
        strategy=t.choice("strategy", d.strategy, STRATEGIES),
        weights=_weights(t.table("weights")),
        aliases=_aliases(t.table("aliases")),
        fallbacks=_fallbacks(t.table("fallbacks")),
        policies=tuple(_policy(p, ctx) for p in t.tables("policies")),
        budget=_budget(t.table("budget")),
        allow_empty_fleet=t.boolean("allow_empty_fleet", d.allow_empty_fleet),
    )
    t.finish()
    return result


def _weights(t: Table | None) -> Weights:
    d = Weights()
    if t is None:
        return d
    before = len(t.issues.items)
    priority = t.integer("priority", d.priority, 0, 100)
    load = t.integer("load", d.load, 0, 100)
    latency = t.integer("latency", d.latency, 0, 100)
    t.finish()
    if len(t.issues.items) == before and priority + load + latency != 100:
        t.issues.add(
            t.path,
            f"weights must sum to 100, got {priority + load + latency} "
            f"(priority {priority} + load {load} + latency {latency})",
        )
    return Weights(priority, load, latency)


def _aliases(t: Table | None) -> dict[str, str]:
    aliases: dict[str, str] = {}
    if t is None:
        return aliases
    for key, value, path in t.entries():
        if not check_model(t.issues, path, key, "an alias name"):
            continue
        if not isinstance(value, str):
            t.issues.add(path, f"expected a model name (string), got {type_name(value)}")
        elif check_model(t.issues, path, value, "the alias target"):
            aliases[key] = value
    return aliases


def _fallbacks(t: Table | None) -> dict[str, tuple[str, ...]]:
    fallbacks: dict[str, tuple[str, ...]] = {}
    if t is None:
        return fallbacks
    for key, value, path in t.entries():
        if not check_model(t.issues, path, key, "a model name"):
            continue
        if not isinstance(value, list):
            t.issues.add(path, f"expected an array of model names, got {type_name(value)}")
            continue
        models: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                t.issues.add(f"{path}[{index}]", f"expected a model name (string), got {type_name(item)}")
            elif check_model(t.issues, f"{path}[{index}]", item, "a model name"):
                models.append(item)
        fallbacks[key] = tuple(models)
    return fallbacks


def _policy(t: Table, ctx: Context) -> Policy:
    pattern = t.string("model_pattern", "", required=True)
    if pattern and not t.check("model_pattern", pattern, _pattern_rule):
        pattern = ""
    privacy = t.choice("privacy", "unrestricted", tuple(_POLICY_PRIVACY))
    min_tier = t.integer("min_tier", 0, 1, 5)
    max_cost = t.money("max_cost_per_request", -1, MAX_COST_PER_REQUEST_USD)
    fallback_allowed = t.boolean("fallback_allowed", True)
    t.finish()
    glob = Glob.never(pattern)  # stands in for a missing or broken pattern (reported)
    if pattern:
        try:
            glob = Glob(pattern)
        except GlobError as exc:  # a phase-3 problem: reported only when phase 2 found none
            ctx.deferred.add(t.at("model_pattern"), str(exc))
    return Policy(
        model_pattern=pattern,
        glob=glob,
        privacy=_POLICY_PRIVACY[privacy],
        min_tier=min_tier,
        max_cost_nano=max_cost if max_cost >= 0 else None,
        fallback_allowed=fallback_allowed,
    )


def _pattern_rule(value: str, field: str) -> object:
    return validate.model_name(value, field, MAX_PATTERN_BYTES)


def _budget(t: Table | None) -> BudgetConfig | None:
    if t is None:
        return None
    limit = t.money("monthly_limit_usd", 100 * NANO, MAX_MONTHLY_USD)
    soft = t.number("soft_limit_percent", 75.0, 0.0, 100.0)
    action = t.choice("hard_limit_action", "warn", HARD_LIMIT_ACTIONS)
    interval = t.duration("reconciliation_interval_secs", 60.0, 86400.0)
    require_tenant = t.boolean("require_tenant", False)
    tenants: dict[str, int] = {}
    tenant_table = t.table("tenants")
    if tenant_table is not None:
        for name, value, path in tenant_table.entries():
            if not name.strip():
                t.issues.add(path, "a tenant name must not be empty")
                continue
            if not check(t.issues, path, name, id_rule):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                t.issues.add(path, f"expected a monthly limit in USD (number), got {type_name(value)}")
                continue
            nano = checked_money(t.issues, path, value, MAX_MONTHLY_USD)
            if nano is not None:
                tenants[name] = nano
    t.finish()
    return BudgetConfig(
        monthly_limit_nano=limit,
        soft_limit_percent=soft,
        hard_limit_action=action,
        reconciliation_interval_secs=interval,
        require_tenant=require_tenant,
        tenants=tenants,
    )


def price(t: Table, ctx: Context) -> Price | None:
    """`input_per_1k` and `output_per_1k`, both required (checked in phase 3), exact in nano-USD."""
    keys = ("input_per_1k", "output_per_1k")
    present = [key for key in keys if t.has(key)]
    values = {key: t.number(key, 0.0, 0.0, MAX_PRICE_PER_1K) for key in keys}
    t.finish()
    if len(present) != len(keys):
        missing = " and ".join(key for key in keys if key not in present)
        ctx.deferred.add(t.path, f"a price needs both input_per_1k and output_per_1k; {missing} is missing")
        return None
    nanos: dict[str, int] = {}
    for key in keys:
        try:
            nanos[key] = per_1k_to_nano_per_token(values[key])
        except PriceError as exc:
            ctx.deferred.add(t.at(key), str(exc))
    if len(nanos) != len(keys):
        return None
    return Price(nanos["input_per_1k"], nanos["output_per_1k"])


def pricing(t: Table | None, ctx: Context) -> tuple[dict[str, Price], Price | None]:
    """`[pricing."<model>"]` entries and `[pricing.default]`."""
    table: dict[str, Price] = {}
    default: Price | None = None
    if t is None:
        return table, None
    t.issues.asked.add(t.schema_of("default"))
    for model, value, quoted_path in t.entries():
        is_default = model == "default"
        path = t.at(model) if is_default else quoted_path
        if not is_default and not check_model(t.issues, path, model, "a model name"):
            continue
        if not isinstance(value, dict):
            t.issues.add(path, f"expected a table, got {type_name(value)}")
            continue
        sub = Table(value, path, "pricing.default" if is_default else "pricing.*", t.issues)
        entry = price(sub, ctx)
        if entry is None:
            ctx.bad_price_models.add(model)
        elif is_default:
            default = entry
        else:
            table[model] = entry
    ctx.priced_models = list(table)
    return table, default
