"""What a stage may read: the fleet (an immutable compiled view of config + registry), live
backend state, the ledger's cached totals, injected time and randomness."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from nexus_grpc.config.schema import Config
from nexus_grpc.domain.backend import BackendConfig, ModelSpec
from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import PrivacyZone
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.money import Price


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """All policies matching a model's alias chain, combined strictest-first."""

    privacy: PrivacyZone = PrivacyZone.OPEN
    min_tier: int = 0
    max_cost_nano: int | None = None
    fallback_allowed: bool = True
    patterns: tuple[str, ...] = ()

    def tightened(self, other: EffectivePolicy) -> EffectivePolicy:
        """Combine with the primary's privacy and min_tier (a fallback never escapes them)."""
        restricted = PrivacyZone.RESTRICTED in (self.privacy, other.privacy)
        return EffectivePolicy(
            privacy=PrivacyZone.RESTRICTED if restricted else PrivacyZone.OPEN,
            min_tier=max(self.min_tier, other.min_tier),
            max_cost_nano=self.max_cost_nano,
            fallback_allowed=self.fallback_allowed,
            patterns=self.patterns,
        )


UNLIMITED = 1 << 62
REASONS_KEPT = 16  # prepared exclusions kept per candidate
MEMO_MAX = 50_000  # memoized static results kept per fleet version (all dropped when reached)

# A prepared reason's builder (`intent.prepared_reason`): a module-level function
# `build(candidate, *args) -> Exclusion` whose text depends only on `args` and the candidate's
# fixed fields, so (build, args) is a complete key.
ReasonBuilder = Callable[..., Exclusion]
# A static rule (`intent.apply_static`): a module-level function `rule(fleet, candidate, *args)`
# judging one candidate on the fleet alone (never on live state or the request's numbers), so
# (rule, args) is a complete memo key.
StaticRule = Callable[..., Exclusion | None]


class Candidate:
    """One (backend, model) pair a request could go to. Built once per fleet version."""

    __slots__ = (
        "backend",
        "ctx_limit",
        "free",
        "id",
        "index",
        "live",
        "model",
        "price",
        "priority",
        "priority_score",
        "reasons",
        "tier",
        "zone",
    )

    def __init__(
        self, backend: BackendConfig, model: ModelSpec, price: Price, live: LiveBackend, index: int
    ) -> None:
        self.backend = backend
        self.id = backend.id
        self.model = model
        self.price = price
        self.live = live
        self.index = index  # position in config order
        self.zone = backend.zone
        self.tier = backend.tier
        self.priority = backend.priority
        self.priority_score = 100 - min(backend.priority, 100)
        self.free = price.input_nano == 0 and price.output_nano == 0
        self.ctx_limit = model.context_length if model.context_length is not None else UNLIMITED
        # exclusions prepared for this candidate by `intent.prepared_reason`, keyed by
        # (builder, its arguments): built once, reused by every decision while the arguments
        # (a status, an ETA step, window counts) stay the same. Lives as long as the fleet.
        self.reasons: dict[tuple[ReasonBuilder, tuple[Hashable, ...]], Exclusion] = {}

    def __repr__(self) -> str:
        return f"Candidate({self.id!r}, {self.model.id!r})"


def combine_policies(config: Config, chain: tuple[str, ...]) -> EffectivePolicy:
    restricted = False
    min_tier = 0
    max_cost: int | None = None
    fallback_allowed = True
    patterns: list[str] = []
    for policy in config.routing.policies:
        if not any(policy.glob.matches(name) for name in chain):
            continue
        patterns.append(policy.model_pattern)
        restricted = restricted or policy.privacy == PrivacyZone.RESTRICTED
        min_tier = max(min_tier, policy.min_tier)
        if policy.max_cost_nano is not None:
            max_cost = policy.max_cost_nano if max_cost is None else min(max_cost, policy.max_cost_nano)
        fallback_allowed = fallback_allowed and policy.fallback_allowed
    return EffectivePolicy(
        PrivacyZone.RESTRICTED if restricted else PrivacyZone.OPEN,
        min_tier,
        max_cost,
        fallback_allowed,
        tuple(patterns),
    )


class StaticSet:
    """Candidates of one model narrowed by static rules only, in config order. `after` memoizes
    what each further static rule makes of them: (rule, args) -> (the set it keeps, the
    exclusions of the candidates it drops). Nothing else is kept, so nothing is keyed by
    identity: the tree hangs off the fleet's `Prepared` and dies with it."""

    __slots__ = ("after", "candidates")

    def __init__(self, candidates: tuple[Candidate, ...]) -> None:
        self.candidates = candidates
        self.after: dict[
            tuple[StaticRule, tuple[Hashable, ...]], tuple[StaticSet, tuple[Exclusion, ...]]
        ] = {}


class Prepared:
    """What the stages compute once per fleet version and reuse (the fleet owns it: a new config
    or registry change gives a new fleet and so a fresh `Prepared`). One field per kind:

    - `roots`: each model's candidates as a `StaticSet`, the root of the memoized static results;
    - `verdicts`: per (rule, args), one candidate's verdict (for candidates a live stage already
      narrowed, which are no longer a `StaticSet`);
    - `prices`: the distinct prices among each model's candidates (a Reject's cost estimate).

    Prepared reasons are per candidate (`Candidate.reasons`; candidates live as long as the fleet).
    Memoized entries are counted; at `MEMO_MAX` they are all dropped and built again on use."""

    __slots__ = ("entries", "prices", "roots", "verdicts")

    def __init__(self, candidates: Mapping[str, tuple[Candidate, ...]]) -> None:
        self.roots: dict[str, StaticSet] = {model: StaticSet(cands) for model, cands in candidates.items()}
        self.prices: dict[str, tuple[Price, ...]] = {
            model: tuple(dict.fromkeys(c.price for c in cands)) for model, cands in candidates.items()
        }
        self.verdicts: dict[tuple[StaticRule, tuple[Hashable, ...]], dict[Candidate, Exclusion | None]] = {}
        self.entries = 0

    def remember(
        self,
        given: StaticSet,
        key: tuple[StaticRule, tuple[Hashable, ...]],
        kept: StaticSet,
        excluded: tuple[Exclusion, ...],
    ) -> None:
        """Memoize that static rule `key` keeps `kept` of `given`, dropping `excluded`."""
        self._count()
        given.after[key] = (kept, excluded)

    def verdict_table(
        self, key: tuple[StaticRule, tuple[Hashable, ...]]
    ) -> dict[Candidate, Exclusion | None]:
        table = self.verdicts.get(key)
        if table is None:
            self._count()
            table = self.verdicts[key] = {}
        return table

    def _count(self) -> None:
        self.entries += 1
        if self.entries > MEMO_MAX:
            self.entries = 1
            self.verdicts.clear()
            for root in self.roots.values():
                root.after.clear()


class Fleet:
    """Immutable compiled view of one config version plus registry changes."""

    def __init__(self, config: Config, backends: tuple[BackendConfig, ...], live: Mapping[str, LiveBackend]):
        self.config = config
        self.backends = backends
        self.by_id: dict[str, BackendConfig] = {b.id: b for b in backends}
        index: dict[str, list[Candidate]] = {}
        for i, b in enumerate(backends):
            for m in b.models:
                index.setdefault(m.id, []).append(Candidate(b, m, config.price_for(b, m.id), live[b.id], i))
        self.candidates: dict[str, tuple[Candidate, ...]] = {k: tuple(v) for k, v in index.items()}
        self.served_models: tuple[str, ...] = tuple(sorted(self.candidates))
        # what the stages prepare once for this fleet version (memoized static results, prices)
        self.prepared = Prepared(self.candidates)
        self._chains: dict[str, tuple[str, ...]] = {}
        self._policies: dict[tuple[str, ...], EffectivePolicy] = {}

    def chain(self, model: str) -> tuple[str, ...]:
        """The alias chain: requested, intermediate..., resolved (cycles refused at load)."""
        chain = self._chains.get(model)
        if chain is None:
            names = [model]
            aliases = self.config.routing.aliases
            while names[-1] in aliases and len(names) <= 4:
                names.append(aliases[names[-1]])
            chain = tuple(names)
            if len(self._chains) < 100_000:
                self._chains[model] = chain
        return chain

    def policy(self, chain: tuple[str, ...]) -> EffectivePolicy:
        policy = self._policies.get(chain)
        if policy is None:
            policy = combine_policies(self.config, chain)
            if len(self._policies) < 100_000:
                self._policies[chain] = policy
        return policy


@dataclass(slots=True)
class Snapshot:
    """Everything a stage reads. Built per decision; holds references, not copies (the event
    loop runs a decision without awaiting, so nothing changes under it)."""

    fleet: Fleet
    monotonic: float  # monotonic seconds (TTLs, ETAs, windows)
    wall: float  # epoch seconds (months, resets)
    totals: Callable[[str, str], tuple[int, int] | None]  # (scope, month) -> (spent, reserved)
    month: str
    rng: random.Random
    rr_counters: Mapping[str, int]
