"""What a stage may read: the fleet (an immutable compiled view of config + registry), live
backend state, the ledger's cached totals, injected time and randomness."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

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
        # exclusions prepared for this candidate, keyed by what their text depends on (a status
        # version, an ETA step, window counts): built once, reused by every decision until then
        self.reasons: dict[Hashable, Exclusion] = {}

    def reason(self, key: Hashable, build: Callable[[], Exclusion]) -> Exclusion:
        """The prepared exclusion for `key`, built on first use."""
        found = self.reasons.get(key)
        if found is None:
            if len(self.reasons) >= REASONS_KEPT:
                self.reasons.clear()
            found = self.reasons[key] = build()
        return found

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
        # static stage results per (stage key, input set), valid for this fleet version only
        self.memo: dict[Hashable, Any] = {}
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
