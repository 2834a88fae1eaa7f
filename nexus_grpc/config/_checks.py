"""Phase 3: cross-references between sections, and the warnings of `check-config`."""

from __future__ import annotations

from collections.abc import Mapping

from nexus_grpc.config import _files
from nexus_grpc.config._reader import Context, Issues, quote_key, shown
from nexus_grpc.config.schema import Config
from nexus_grpc.domain.backend import BACKEND_TYPES
from nexus_grpc.domain.endpoints import endpoint_of
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.money import MAX_AMOUNT_NANO, NANO, Price
from nexus_grpc.domain.validate import RESERVED_TENANTS

MAX_ALIAS_HOPS = 3


def served_models(config: Config) -> dict[str, list[str]]:
    """model id -> ids of the backends that declare it, in config order."""
    served: dict[str, list[str]] = {}
    for backend in config.backends:
        for model in backend.models:
            served.setdefault(model.id, []).append(backend.id)
    return served


def resolve(aliases: Mapping[str, str], name: str) -> str:
    """Follow the alias chain from `name` (stops at a cycle: phase 3 reports those)."""
    seen = {name}
    while name in aliases and aliases[name] not in seen:
        name = aliases[name]
        seen.add(name)
    return name


def cross_references(config: Config, ctx: Context) -> None:
    issues = ctx.issues
    issues.items.extend(ctx.deferred.items)
    _backends(config, issues)
    _aliases(config, issues)
    _fallbacks(config, issues)
    _budget(config, ctx)
    _names(config, ctx)
    _prices(config, issues)
    _not_supported_yet(config, issues)
    if config.envoy.endpoint_picker:
        issues.items.extend(_endpoint_picker(config).items)
    if config.ledger.kind == "memory" and config.server.workers > 1:
        issues.add(
            "ledger.kind",
            f"the memory ledger cannot be shared by server.workers = {config.server.workers} "
            "processes; use sqlite or redis",
        )
    _files.check(config, issues)


def _not_supported_yet(config: Config, issues: Issues) -> None:
    """Settings this build parses but does not act on yet are refused, never silently ignored."""
    enabled: dict[str, bool] = {}
    for key, on in enabled.items():
        if on:
            issues.add(key, "not supported yet (leave it unset or at its default)")


def _backends(config: Config, issues: Issues) -> None:
    first_index: dict[str, int] = {}
    max_id, max_model = config.limits.max_id_len, config.limits.max_model_len
    for index, backend in enumerate(config.backends):
        path = f"backends[{index}]"
        if backend.id in first_index:
            issues.add(
                f"{path}.id",
                f"duplicate backend id {backend.id!r} (first at backends[{first_index[backend.id]}])",
            )
        else:
            first_index[backend.id] = index
        if len(backend.id.encode()) > max_id:
            issues.add(f"{path}.id", f"longer than limits.max_id_len ({max_id} bytes)")
        if backend.type not in BACKEND_TYPES:
            known = ", ".join(sorted(BACKEND_TYPES))
            issues.add(f"{path}.type", f"unknown backend type {backend.type!r} (known: {known})")
        elif backend.zone == PrivacyZone.UNSPECIFIED:
            issues.add(f"{path}.zone", 'a generic backend needs zone = "restricted" or "open"')
        seen: dict[str, int] = {}
        for m_index, model in enumerate(backend.models):
            m_path = f"{path}.models[{m_index}].id"
            if model.id in seen:
                issues.add(m_path, f"duplicate model {model.id!r} (first at {path}.models[{seen[model.id]}])")
            else:
                seen[model.id] = m_index
            if len(model.id.encode()) > max_model:
                issues.add(m_path, f"longer than limits.max_model_len ({max_model} bytes)")


def _aliases(config: Config, issues: Issues) -> None:
    aliases = config.routing.aliases
    served = served_models(config)
    reported_cycles: set[frozenset[str]] = set()
    for key in aliases:
        path = f"routing.aliases.{quote_key(key)}"
        if key in served:
            issues.add(
                path,
                f"alias {key!r} shadows the model {key!r} served by backend {served[key][0]!r}; "
                "rename the alias or the model",
            )
        chain = [key]
        current = aliases[key]
        while current in aliases and current not in chain:
            chain.append(current)
            current = aliases[current]
        if current in chain:
            cycle = frozenset(chain[chain.index(current) :])
            if cycle not in reported_cycles:
                reported_cycles.add(cycle)
                text = " -> ".join([*chain, current])
                issues.add(path, f"alias cycle: {text}")
        elif len(chain) > MAX_ALIAS_HOPS:
            text = " -> ".join([*chain, current])
            issues.add(
                path, f"alias chain {text} has {len(chain)} hops; at most {MAX_ALIAS_HOPS} are allowed"
            )


def _fallbacks(config: Config, issues: Issues) -> None:
    aliases = config.routing.aliases
    for key, models in config.routing.fallbacks.items():
        path = f"routing.fallbacks.{quote_key(key)}"
        if key in aliases:
            issues.add(
                path,
                f"{key!r} is an alias; fallbacks are keyed by the resolved model "
                f"({resolve(aliases, key)!r} for this alias)",
            )
        for index, model in enumerate(models):
            if model in aliases:
                issues.add(
                    f"{path}[{index}]",
                    f"{model!r} is an alias; fallback entries must be concrete model names "
                    f"(use {resolve(aliases, model)!r})",
                )
            elif model == key:
                issues.add(f"{path}[{index}]", f"{model!r} cannot be a fallback for itself")


def _budget(config: Config, ctx: Context) -> None:
    budget = config.routing.budget
    if budget is None:
        return
    for tenant in budget.tenants:
        path = f"routing.budget.tenants.{quote_key(tenant)}"
        if tenant.lower() in RESERVED_TENANTS:
            ctx.issues.add(path, f"{tenant!r} is reserved for the global scope; rename the tenant")
        if len(tenant.encode()) > config.limits.max_id_len:
            ctx.issues.add(path, f"longer than limits.max_id_len ({config.limits.max_id_len} bytes)")
    if config.default_price is not None or "default" in ctx.bad_price_models:
        return
    for index, backend in enumerate(config.backends):
        if backend.zone != PrivacyZone.OPEN or backend.pricing is not None or index in ctx.bad_price_backends:
            continue
        for m_index, model in enumerate(backend.models):
            if model.id not in config.pricing and model.id not in ctx.bad_price_models:
                ctx.issues.add(
                    f"backends[{index}].models[{m_index}].id",
                    f"open-zone model {model.id!r} on backend {backend.id!r} has no price, so the budget "
                    f"cannot count it; add [backends.pricing], [pricing.{quote_key(model.id)}] "
                    "or [pricing.default]",
                )


def _names(config: Config, ctx: Context) -> None:
    """Model names in routing and the file's prices longer than limits.max_model_len could never
    be asked for (the built-in price table is not held to it)."""
    limit = config.limits.max_model_len
    routing = config.routing
    named: list[tuple[str, str]] = []
    for key, target in routing.aliases.items():
        path = f"routing.aliases.{quote_key(key)}"
        named += [(path, key), (path, target)]
    for key, models in routing.fallbacks.items():
        path = f"routing.fallbacks.{quote_key(key)}"
        named.append((path, key))
        named += [(f"{path}[{index}]", model) for index, model in enumerate(models)]
    named += [(f"pricing.{quote_key(model)}", model) for model in ctx.priced_models]
    for path, name in named:
        if len(name.encode()) > limit:
            ctx.issues.add(path, f"{shown(name)} is longer than limits.max_model_len ({limit} bytes)")


def _prices(config: Config, issues: Issues) -> None:
    """One decision at limits.max_tokens input and output tokens must fit one ledger entry."""
    tokens = config.limits.max_tokens
    priced: list[tuple[str, Price]] = [(f"pricing.{quote_key(m)}", p) for m, p in config.pricing.items()]
    if config.default_price is not None:
        priced.append(("pricing.default", config.default_price))
    priced += [(f"backends[{i}].pricing", b.pricing) for i, b in enumerate(config.backends) if b.pricing]
    for path, price in priced:
        worst = (price.input_nano + price.output_nano) * tokens
        if worst > MAX_AMOUNT_NANO:
            issues.add(
                path,
                f"one decision of limits.max_tokens ({tokens}) input and output tokens would cost "
                f"{worst / NANO:,.0f} USD, more than a ledger entry holds ({MAX_AMOUNT_NANO / NANO:,.0f} "
                "USD); lower the price or limits.max_tokens",
            )


def warnings(config: Config, file: str) -> tuple[str, ...]:
    found = Issues(file)
    if not config.backends:
        found.add("backends", "no backends: every request will be rejected")
    budget = config.routing.budget
    if budget is not None and budget.hard_limit_action == "warn":
        limited = [
            f"routing.budget.tenants.{quote_key(t)}" for t, limit in budget.tenants.items() if limit > 0
        ]
        if budget.monthly_limit_nano > 0:
            limited.insert(0, "routing.budget.monthly_limit_usd")
        if limited:
            found.add(
                "routing.budget.hard_limit_action",
                f'hard_limit_action = "warn": the configured limits ({", ".join(limited)}) '
                "are never enforced",
            )
    served = served_models(config)
    for key, models in config.routing.fallbacks.items():
        for index, model in enumerate(models):
            if model not in served and model not in config.routing.aliases:
                found.add(
                    f"routing.fallbacks.{quote_key(key)}[{index}]",
                    f"fallback model {model!r} is declared by no backend",
                )
    return tuple(str(issue) for issue in found.items)


def endpoint_picker_issues(config: Config) -> tuple[str, ...]:
    """The backends an endpoint-picking gateway can never be sent to: those whose URL host is a
    name, not an IP literal (the gateway routes to `ip:port`; names are never resolved, since a
    name may resolve to another server than the one the policy judged). Errors at load with
    `[envoy] endpoint_picker = true`; otherwise not among `warnings`: whether a gateway picks
    endpoints is known per request (full-duplex ext_proc, or an endpoint subset), and the same
    server may serve an Envoy that routes such backends by name."""
    return tuple(str(issue) for issue in _endpoint_picker(config).items)


def _endpoint_picker(config: Config) -> Issues:
    found = Issues(config.source)
    for index, backend in enumerate(config.backends):
        if endpoint_of(backend.url) is None:
            found.add(
                f"backends[{index}].url",
                f"backend {backend.id!r}: the host of {backend.url!r} is a name, not an IP literal: "
                "an endpoint-picking gateway (an InferencePool's) is never sent to it, so its "
                "requests never route here; give it the model server's IP:port, or route it by "
                "x-nexus-backend through an Envoy on deploy/envoy/ext_proc.yaml",
            )
    return found
