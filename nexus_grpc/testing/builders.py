"""Small typed builders for tests: backends, configs, engines and requests without a TOML file.

    cfg = config(
        backends=[backend("gpu-1", tier=3), backend("cloud", type="openai", models=("gpt-4",))],
        policies=[policy("gpt-4*", privacy="restricted")],
        budget=budget_config(100.0, action="block_cloud"),
    )
    eng = engine(cfg, clock=FakeClock(), wall=FakeWall(), seed=7)
    decision = decide(eng, request("gpt-4", estimated_input_tokens=1000))

Money arguments are USD (floats, converted exactly to nano-USD like the config loader does);
the values built are the same frozen dataclasses the loader produces.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

from nexus_grpc.config.glob import Glob
from nexus_grpc.config.schema import (
    BudgetConfig,
    Config,
    LedgerConfig,
    LimitsConfig,
    Policy,
    QualityConfig,
    QueueConfig,
    RoutingConfig,
    Settings,
    Weights,
)
from nexus_grpc.domain.backend import BackendConfig, ModelSpec, default_zone
from nexus_grpc.domain.decision import Decision
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.domain.money import BUILTIN_PRICES, Price, usd_to_nano
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine, OutcomeResult
from nexus_grpc.ledger.base import Ledger
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.pipeline.executor import Pipeline
from nexus_grpc.pipeline.intent import Reconciler
from nexus_grpc.reconcilers import default_stages
from nexus_grpc.reconcilers.index import RouteIndex
from nexus_grpc.state.flights import Basis, Flight
from nexus_grpc.state.registry import Registry
from nexus_grpc.testing.clock import FakeClock, FakeWall

ZoneLike = PrivacyZone | str
PriceLike = Price | tuple[float, float]
# (model_pattern, privacy, min_tier, max_cost_usd, fallback_allowed)
_ZONES = {
    "restricted": PrivacyZone.RESTRICTED,
    "open": PrivacyZone.OPEN,
    "unrestricted": PrivacyZone.OPEN,
}
_request_ids = itertools.count(1)


def zone(value: ZoneLike) -> PrivacyZone:
    """`"restricted"`, `"open"`/`"unrestricted"` or a PrivacyZone."""
    if isinstance(value, PrivacyZone):
        return value
    try:
        return _ZONES[value]
    except KeyError:
        raise ValueError(f"unknown privacy zone {value!r}") from None


def price(value: PriceLike) -> Price:
    """A Price, or `(input_per_1k, output_per_1k)` in USD."""
    if isinstance(value, Price):
        return value
    return Price.per_1k(value[0], value[1])


def model(
    id: str,
    *,
    context_length: int | None = None,
    vision: bool = False,
    tools: bool = False,
    json_mode: bool = False,
) -> ModelSpec:
    return ModelSpec(id, context_length, vision, tools, json_mode)


def backend(
    id: str,
    *,
    type: str = "ollama",
    zone: ZoneLike | None = None,
    tier: int = 1,
    priority: int = 50,
    max_concurrency: int = 0,
    models: Iterable[str | ModelSpec] = ("m",),
    pricing: PriceLike | None = None,
    url: str | None = None,
    health_path: str = "",
) -> BackendConfig:
    """A backend; `zone` defaults by `type` (a `generic` backend needs one, as in a config file)."""
    resolved = _zone_of(type, zone)
    return BackendConfig(
        id=id,
        url=url if url is not None else f"http://{id}.test:8000",
        type=type,
        zone=resolved,
        tier=tier,
        priority=priority,
        max_concurrency=max_concurrency,
        pricing=price(pricing) if pricing is not None else None,
        models=tuple(m if isinstance(m, ModelSpec) else ModelSpec(m) for m in models),
        health_path=health_path,
    )


def _zone_of(backend_type: str, value: ZoneLike | None) -> PrivacyZone:
    if value is not None:
        return zone(value)
    by_type = default_zone(backend_type)
    if by_type == PrivacyZone.UNSPECIFIED:
        raise ValueError(f"backend type {backend_type!r} has no default zone; pass zone=")
    return by_type


def policy(
    pattern: str,
    *,
    privacy: ZoneLike = PrivacyZone.RESTRICTED,
    min_tier: int = 0,
    max_cost_usd: float | None = None,
    fallback_allowed: bool = True,
) -> Policy:
    """A traffic policy; `pattern` is compiled with the config's glob grammar."""
    return Policy(
        model_pattern=pattern,
        glob=Glob(pattern),
        privacy=zone(privacy),
        min_tier=min_tier,
        max_cost_nano=usd_to_nano(max_cost_usd) if max_cost_usd is not None else None,
        fallback_allowed=fallback_allowed,
    )


def budget_config(
    monthly_limit_usd: float = 100.0,
    *,
    soft_limit_percent: float = 75.0,
    action: str = "warn",
    tenants: Mapping[str, float] | None = None,
    require_tenant: bool = False,
) -> BudgetConfig:
    """`[routing.budget]`: limits in USD (0 = no limit; 100 by default, as in a config file),
    `action` is `hard_limit_action`."""
    return BudgetConfig(
        monthly_limit_nano=usd_to_nano(monthly_limit_usd),
        soft_limit_percent=soft_limit_percent,
        hard_limit_action=action,
        require_tenant=require_tenant,
        tenants={t: usd_to_nano(v) for t, v in (tenants or {}).items()},
    )


def config(
    backends: Sequence[BackendConfig] = (),
    *,
    strategy: str = "smart",
    weights: Weights | tuple[int, int, int] | None = None,
    policies: Sequence[Policy] = (),
    aliases: Mapping[str, str] | None = None,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    budget: BudgetConfig | None = None,
    quality: QualityConfig | None = None,
    queue: QueueConfig | None = None,
    pricing: Mapping[str, PriceLike] | None = None,
    default_price: PriceLike | None = None,
    limits: LimitsConfig | None = None,
) -> Config:
    """A Config like the loader's: built-in prices overlaid with `pricing`, memory ledger."""
    if isinstance(weights, tuple):
        weights = Weights(*weights)
    routing = RoutingConfig(
        strategy=strategy,
        weights=weights or Weights(),
        aliases=dict(aliases or {}),
        fallbacks={k: tuple(v) for k, v in (fallbacks or {}).items()},
        policies=tuple(policies),
        budget=budget,
    )
    return Config(
        routing=routing,
        settings=Settings(ledger=LedgerConfig(kind="memory")),
        quality=quality or QualityConfig(),
        queue=queue or QueueConfig(),
        limits=limits or LimitsConfig(),
        backends=tuple(backends),
        pricing={**BUILTIN_PRICES, **{k: price(v) for k, v in (pricing or {}).items()}},
        default_price=price(default_price) if default_price is not None else None,
        source="<builders>",
    )


def engine(
    cfg: Config,
    *,
    clock: Callable[[], float] | None = None,
    wall: Callable[[], float] | None = None,
    seed: int = 0,
    ledger: Ledger | None = None,
    stages: Sequence[Reconciler] | None = None,
    indexed: bool = True,
) -> DecisionEngine:
    """A DecisionEngine on a Registry, a Pipeline (default stages and the route index, unless
    stages are given or `indexed` is False) and a ledger (a fresh MemoryLedger unless given),
    with fake time and a seeded RNG by default."""
    clock = clock if clock is not None else FakeClock()
    wall = wall if wall is not None else FakeWall()
    return DecisionEngine(
        Registry(cfg, clock),
        Pipeline(
            stages if stages is not None else default_stages(),
            fast=RouteIndex() if indexed and stages is None else None,
        ),
        ledger if ledger is not None else MemoryLedger(),
        clock=clock,
        wall=wall,
        rng=random.Random(seed),
    )


def memory_ledger(eng: DecisionEngine) -> MemoryLedger:
    """The engine's ledger, which must be a MemoryLedger (to seed spend in tests)."""
    ledger = eng.ledger
    if not isinstance(ledger, MemoryLedger):
        raise TypeError(f"engine ledger is {type(ledger).__name__}, not MemoryLedger")
    return ledger


def request(
    model: str,
    *,
    request_id: str | None = None,
    estimated_input_tokens: int = 0,
    max_output_tokens: int = 0,
    needs_vision: bool = False,
    needs_tools: bool = False,
    needs_json_mode: bool = False,
    stream: bool = False,
    tier_mode: TierMode = TierMode.UNSPECIFIED,
    privacy: PrivacyZone = PrivacyZone.UNSPECIFIED,
    min_tier: int = 0,
    priority: Priority = Priority.UNSPECIFIED,
    tenant: str = "",
    labels: Mapping[str, str] | None = None,
) -> DecisionRequest:
    """A DecisionRequest; without `request_id` a fresh one (`req-<n>`) is generated."""
    return DecisionRequest(
        request_id=request_id if request_id is not None else f"req-{next(_request_ids)}",
        model=model,
        estimated_input_tokens=estimated_input_tokens,
        max_output_tokens=max_output_tokens,
        needs_vision=needs_vision,
        needs_tools=needs_tools,
        needs_json_mode=needs_json_mode,
        stream=stream,
        tier_mode=tier_mode,
        privacy=privacy,
        min_tier=min_tier,
        priority=priority,
        tenant=tenant,
        labels=dict(labels or {}),
    )


def served_outcome(
    eng: DecisionEngine,
    backend_id: str,
    *,
    success: bool | None = None,
    http_status: int | None = None,
    ttft_ms: int | None = None,
    stream: bool = False,
    model: str | None = None,
) -> OutcomeResult:
    """Report how a request the engine routed to `backend_id` ended, without running the pipeline
    for it: a decision is opened on that backend (as a Route there would) and reported by its
    decision id. Only outcomes of decisions the engine made feed its statistics."""
    found = eng.registry.get(backend_id)
    if found is None:
        raise ValueError(f"no backend {backend_id!r}")
    served = model if model is not None else found[0].models[0].id
    decision_id = eng.ids()
    request_id = f"served-{next(_request_ids)}"
    ttl = eng.config.queue.in_flight_ttl_seconds
    basis = Basis(backend_id, served, (), 0, 0, 0)
    eng.flights.take(Flight(decision_id, request_id, basis, (GLOBAL,), stream, eng.clock() + ttl, found[1]))
    return report(
        eng,
        Outcome(
            request_id,
            backend_id,
            served,
            success=success,
            http_status=http_status,
            ttft_ms=ttft_ms,
            decision_id=decision_id,
        ),
    )


def decide(eng: DecisionEngine, req: DecisionRequest) -> Decision:
    """`engine.decide` from synchronous code (runs its own event loop)."""
    return asyncio.run(eng.decide(req))


def report(eng: DecisionEngine, outcome: Outcome) -> OutcomeResult:
    """`engine.report_outcome` from synchronous code (runs its own event loop)."""
    return asyncio.run(eng.report_outcome(outcome))


__all__ = [
    "PriceLike",
    "ZoneLike",
    "backend",
    "budget_config",
    "config",
    "decide",
    "engine",
    "memory_ledger",
    "model",
    "policy",
    "price",
    "report",
    "request",
    "served_outcome",
    "zone",
]
