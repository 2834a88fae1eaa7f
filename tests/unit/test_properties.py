"""Property-based tests (hypothesis) of the promises, over random fleets, policies, aliases,
fallbacks, live state and requests:

- no Route ever leaves the effective privacy zone (policies over the whole alias chain, the
  request's own wish; fallbacks inherit the primary's zone);
- no Route goes to a backend that a stage excluded for the routed model;
- Explain and Decide agree on the same state;
- under a blocking budget (block_all, or block_cloud for open-zone Routes), what the limited
  Routes hold never exceeds the global limit nor a tenant's (estimates are what is held);
- every served decision is charged exactly once, whatever ids and repeats the reports use.

Example counts are set per test (`max_examples`); the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.config.glob import Glob
from nexus_grpc.config.schema import BudgetConfig, Config, QueueConfig
from nexus_grpc.domain.backend import BackendConfig, ModelSpec
from nexus_grpc.domain.decision import Decision, Route
from nexus_grpc.domain.enums import BackendStatus, PrivacyZone, TierMode
from nexus_grpc.domain.months import month_of
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.base import Reservation
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.servicers.convert import decision_to_proto
from nexus_grpc.servicers.wire import ResponseEncoder
from nexus_grpc.testing.builders import backend, budget_config, config, engine, policy, request
from nexus_grpc.testing.clock import FakeClock, FakeWall

MODELS = ("m1", "m2", "m3")
ALIASES = ("a1", "a2")
PATTERNS = ("m*", "m1", "a*", "*", "{m1,m2}", "m?", "a1", "[m]2", "*3")
STATUSES = (
    BackendStatus.HEALTHY,
    BackendStatus.HEALTHY,
    BackendStatus.HEALTHY,
    BackendStatus.UNHEALTHY,
    BackendStatus.LOADING,
    BackendStatus.DRAINING,
)
BLOCKING = ("block_all", "block_cloud")
SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@st.composite
def backends(draw: st.DrawFn) -> list[BackendConfig]:
    n = draw(st.integers(1, 7))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from(("ollama", "vllm", "openai", "anthropic", "generic")))
        zone = draw(st.sampled_from(("restricted", "open"))) if kind == "generic" else None
        models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True))
        specs = [
            ModelSpec(
                m,
                draw(st.one_of(st.none(), st.integers(500, 20_000))),
                draw(st.booleans()),
                draw(st.booleans()),
                draw(st.booleans()),
            )
            for m in models
        ]
        out.append(
            backend(
                f"b{i}",
                type=kind,
                zone=zone,
                tier=draw(st.integers(1, 5)),
                priority=draw(st.integers(0, 100)),
                max_concurrency=draw(st.integers(0, 3)),
                models=specs,
                pricing=(
                    draw(st.sampled_from((0.0, 0.001, 0.01))),
                    draw(st.sampled_from((0.0, 0.002, 0.03))),
                ),
            )
        )
    return out


@st.composite
def configs(draw: st.DrawFn) -> Config:
    fleet = draw(backends())
    aliases = {
        a: draw(st.sampled_from(MODELS)) for a in draw(st.lists(st.sampled_from(ALIASES), unique=True))
    }
    policies = [
        policy(
            draw(st.sampled_from(PATTERNS)),
            privacy=draw(st.sampled_from(("restricted", "unrestricted"))),
            min_tier=draw(st.integers(0, 5)),
            max_cost_usd=draw(st.one_of(st.none(), st.sampled_from((0.001, 0.05, 10.0)))),
            fallback_allowed=draw(st.booleans()),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    fallbacks = {
        m: draw(st.lists(st.sampled_from([x for x in MODELS if x != m]), max_size=2, unique=True))
        for m in draw(st.lists(st.sampled_from(MODELS), unique=True))
    }
    budget = draw(
        st.one_of(
            st.none(),
            st.builds(
                lambda limit, action: budget_config(limit, action=action, tenants={"t1": limit / 2}),
                st.sampled_from((0.05, 0.5, 5.0)),
                st.sampled_from(("warn", "block_cloud", "block_all")),
            ),
        )
    )
    return config(
        fleet,
        strategy=draw(st.sampled_from(("smart", "round_robin", "priority_only", "random"))),
        policies=policies,
        aliases=aliases,
        fallbacks=fallbacks,
        budget=budget,
        queue=QueueConfig(in_flight_ttl_seconds=30.0),
    )


requests = st.builds(
    lambda model, rid, tokens, out, vision, tools, json_mode, tier_mode, privacy, min_tier, tenant: request(
        model,
        request_id=rid,
        estimated_input_tokens=tokens,
        max_output_tokens=out,
        needs_vision=vision,
        needs_tools=tools,
        needs_json_mode=json_mode,
        tier_mode=tier_mode,
        privacy=privacy,
        min_tier=min_tier,
        tenant=tenant,
    ),
    st.sampled_from((*MODELS, *ALIASES, "unknown")),
    st.sampled_from(("r1", "r2", "r3", "r4")),  # few ids: reuse is the point
    st.integers(0, 12_000),
    st.integers(0, 4_000),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(tuple(TierMode)),
    st.sampled_from(tuple(PrivacyZone)),
    st.integers(0, 5),
    st.sampled_from(("", "", "t1")),
)


def live_state(eng: DecisionEngine, rng: random.Random) -> None:
    for b in eng.registry.fleet.backends:
        status = rng.choice(STATUSES)
        if status != BackendStatus.HEALTHY:
            eng.registry.set_state(b.id, status, eta_ms=rng.choice((None, 0, 500, 50_000)), progress=50)
        eng.registry.live[b.id].latency_ema_ms = rng.choice((0.0, 20.0, 800.0))


def restricted_by_policy(cfg: Config, eng: DecisionEngine, req: DecisionRequest) -> bool:
    """The effective privacy of a request, computed independently of the stages."""
    chain = eng.registry.fleet.chain(req.model)
    by_policy = any(
        p.privacy == PrivacyZone.RESTRICTED and any(Glob(p.model_pattern).matches(n) for n in chain)
        for p in cfg.routing.policies
    )
    return by_policy or req.privacy == PrivacyZone.RESTRICTED


def check_route(cfg: Config, eng: DecisionEngine, req: DecisionRequest, d: Decision) -> None:
    route = d.route
    if route is None:
        return
    zone = eng.registry.fleet.by_id[route.backend_id].zone
    if restricted_by_policy(cfg, eng, req):
        assert zone == PrivacyZone.RESTRICTED, (req, route)
    excluded = {(e.backend_id, e.model) for e in d.exclusions}
    assert (route.backend_id, route.model) not in excluded, (route, d.exclusions)
    assert route.backend_id not in route.alternates


def verdict_key(d: Decision) -> tuple[object, ...]:
    v = d.verdict
    if isinstance(v, Route):
        return ("route", v.backend_id, v.model, v.reason)
    return (type(v).__name__, getattr(v, "code", None), getattr(v, "estimated_wait_ms", None))


@dataclass
class Served:
    decision_id: str
    request_id: str
    backend_id: str
    estimate: int
    scopes: tuple[str, ...]  # the ledger scopes it holds money in: global, and its tenant
    cloud: bool  # routed to an open-zone backend, the ones block_cloud limits


@given(cfg=configs(), reqs=st.lists(requests, min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
@settings(SETTINGS, max_examples=1000)
def test_routes_keep_privacy_and_exclusions_and_explain_agrees(
    cfg: Config, reqs: list[DecisionRequest], seed: int
) -> None:
    eng = engine(cfg, clock=FakeClock(), wall=FakeWall(), seed=seed)
    live_state(eng, random.Random(seed))

    async def run() -> None:
        for req in reqs:
            explained = eng.explain(req)
            decided = await eng.decide(req)
            assert verdict_key(explained) == verdict_key(decided), (req, explained.verdict, decided.verdict)
            check_route(cfg, eng, req, explained)
            check_route(cfg, eng, req, decided)

    asyncio.run(run())


@st.composite
def budget_cases(draw: st.DrawFn) -> tuple[Config, list[DecisionRequest]]:
    """A random config and requests; half of them pressed: a tight blocking budget (global and
    tenant limits, block_all or block_cloud), more open-zone backends and enough requests of a
    few cents to reach it, which random configs alone rarely do; most of those requests name the
    tenant with a limit."""
    cfg = draw(configs())
    if not draw(st.booleans()):
        return cfg, draw(st.lists(requests, min_size=1, max_size=25))
    limit = draw(st.sampled_from((0.01, 0.03, 0.1)))
    budget = budget_config(limit, action=draw(st.sampled_from(BLOCKING)), tenants={"t1": limit / 2})
    # more open-zone backends than random fleets have, so block_cloud has Routes to limit
    every = draw(st.booleans())
    fleet = tuple(
        dataclasses.replace(b, zone=PrivacyZone.OPEN) if every or draw(st.booleans()) else b
        for b in cfg.backends
    )
    cfg = dataclasses.replace(cfg, backends=fleet, routing=dataclasses.replace(cfg.routing, budget=budget))
    # estimates of a few cents at most, so that several Routes fit under a limit and more do not
    pressing = st.tuples(requests, st.booleans(), st.sampled_from((300, 1000, 3000))).map(
        lambda r: r[0]._replace(
            tenant="t1" if r[1] else r[0].tenant, estimated_input_tokens=r[2], max_output_tokens=0
        )
    )
    return cfg, draw(st.lists(pressing, min_size=8, max_size=25))


@given(
    case=budget_cases(),
    reports=st.lists(st.tuples(st.integers(0, 30), st.booleans(), st.booleans()), max_size=40),
    seed=st.integers(0, 2**32 - 1),
    yielding=st.booleans(),
)
@settings(SETTINGS, max_examples=500)
def test_budget_holds_and_every_served_decision_is_charged_exactly_once(
    case: tuple[Config, list[DecisionRequest]],
    reports: list[tuple[int, bool, bool]],
    seed: int,
    yielding: bool,
) -> None:
    """`yielding`: the ledger's reservations yield to the loop first, as a networked store's do,
    so the concurrent Decides all pass the budget stage before any of them holds money and only
    the ledger's own limit check keeps the budget; otherwise the budget stage sees each one."""
    cfg, reqs = case
    clock, wall = FakeClock(), FakeWall()
    eng = engine(cfg, clock=clock, wall=wall, seed=seed, ledger=YieldingLedger() if yielding else None)
    budget = cfg.routing.budget
    month = month_of(wall())

    def used(scope: str = "global") -> int:
        t = eng.ledger.totals(scope, month)
        return t.used_nano if t is not None else 0

    async def run() -> None:
        served: list[Served] = []
        decisions = await asyncio.gather(*(eng.decide(r) for r in reqs))  # concurrent, reused ids
        for req, d in zip(reqs, decisions, strict=True):
            if d.route is not None:
                cloud = d.route.privacy_zone == PrivacyZone.OPEN
                served.append(
                    Served(
                        d.decision_id,
                        req.request_id,
                        d.route.backend_id,
                        d.cost_estimate.cost_nano,
                        d.scopes,
                        cloud,
                    )
                )
        assert len({s.decision_id for s in served}) == len(served)
        if budget is not None and budget.hard_limit_action in BLOCKING:
            # every blocking limit, the global one and each tenant's: what the Routes it limits
            # hold is within it (block_cloud limits only open-zone Routes; the restricted ones
            # may add to the scope's total beyond it, which is why only the limited ones count)
            limited = budget.hard_limit_action == "block_all"
            for scope, limit in limits_of(budget).items():
                held = sum(s.estimate for s in served if scope in s.scopes and (limited or s.cloud))
                assert held <= limit, (scope, held, limit, budget.hard_limit_action)
                if limited:
                    assert used(scope) <= limit
        # report in random order, by decision id or request id, some of them twice
        charged: dict[str, int] = {}
        for index, by_decision, twice in reports:
            if not served:
                break
            s = served[index % len(served)]
            outcome = Outcome(
                "" if by_decision else s.request_id,
                s.backend_id,
                success=True,
                decision_id=s.decision_id if by_decision else "",
            )
            for _ in range(2 if twice else 1):
                result = await eng.report_outcome(outcome)
                if result.settle.recorded:
                    assert result.decision_id not in charged
                    charged[result.decision_id] = result.settle.charged_nano
        # whatever was reported, every decision settled exactly once at its estimate
        by_id = {s.decision_id: s.estimate for s in served}
        assert set(charged) <= set(by_id)
        assert all(charged[k] == by_id[k] for k in charged)
        clock.advance(31.0)
        await eng.expire_flights()
        spent = eng.ledger.totals("global", month)
        assert spent is not None
        assert (spent.spent_nano, spent.reserved_nano) == (sum(charged.values()), 0)
        if budget is not None and budget.hard_limit_action == "block_all":
            for scope, limit in limits_of(budget).items():
                totals = eng.ledger.totals(scope, month)
                assert totals is None or totals.spent_nano <= limit

    asyncio.run(run())


class YieldingLedger(MemoryLedger):
    """A memory ledger whose reservations yield to the event loop first."""

    async def reserve(self, reservation: Reservation, limits: Mapping[str, int] | None = None) -> bool:
        await asyncio.sleep(0)
        return await super().reserve(reservation, limits)


def limits_of(budget: BudgetConfig) -> dict[str, int]:
    """The budget's limits by ledger scope; 0 (no limit) left out."""
    limits = {GLOBAL: budget.monthly_limit_nano, **budget.tenants}
    return {scope: limit for scope, limit in limits.items() if limit > 0}


@given(cfg=configs(), reqs=st.lists(requests, min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1))
@settings(SETTINGS, max_examples=300)
def test_the_wire_encoder_writes_what_protobuf_would(
    cfg: Config, reqs: list[DecisionRequest], seed: int
) -> None:
    """Decide's response bytes, written directly, parse to exactly the message protobuf builds."""
    eng = engine(cfg, clock=FakeClock(), wall=FakeWall(), seed=seed)
    live_state(eng, random.Random(seed))

    encoder = ResponseEncoder()

    async def run() -> None:
        for req in reqs:
            d = await eng.decide(req)
            assert dpb.DecideResponse.FromString(encoder.decide_response(d)) == decision_to_proto(d)

    asyncio.run(run())
