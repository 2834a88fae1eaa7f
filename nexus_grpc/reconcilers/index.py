"""The route index: the common decision — a Route by the `smart` or `priority_only` strategy —
at a cost that does not grow with the candidates.

For each model and static eligibility (what the static rules see: the endpoint subset of an
endpoint-picking gateway, the privacy constraint, the minimum tier, the needed capabilities) a
`RankedSet` keeps its candidates classified and ranked as events happen. Every live change (a
slot taken or freed, an outcome, a probe, a status) marks the backend dirty through its watcher;
time-driven changes (outcome buckets leaving the window, a breaker's cooldown running out) are
timers. A decision refreshes only what changed, then:

- groups candidates by what the request's numbers act on — zone and price (the budget stage's
  hard limits and cost caps) and context length (the scheduler's context check) — and judges
  each group once;
- takes the winner and its alternates from the ranked survivors of the groups that pass;
- counts every exclusion per (stage, code) from the maintained sets, and builds the reasons of
  the first `MAX_EXCLUSIONS` only (the ones sent).

The stages stay the reference: when the index cannot decide a Route (no survivor, a fallback, a
flexible tier downgrade, the round_robin or random strategy) the pipeline runs stage by stage,
as Explain always does. With `NEXUS_VERIFY=1` every indexed decision is compared with the
stage-by-stage one.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from nexus_grpc.domain.decision import CostEstimate, Decision, Exclusion, Route
from nexus_grpc.domain.endpoints import EndpointSubset
from nexus_grpc.domain.enums import ExclusionCode, PrivacyZone, TierMode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.money import Price
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.domain.scopes import GLOBAL, scopes_for
from nexus_grpc.pipeline.executor import INDEX, MAX_EXCLUSIONS
from nexus_grpc.pipeline.snapshot import Candidate, EffectivePolicy, Fleet, Snapshot
from nexus_grpc.reconcilers.budget import NAME as BUDGET
from nexus_grpc.reconcilers.budget import BudgetCheck, budget_check, budget_code, budget_exclusion
from nexus_grpc.reconcilers.privacy import NAME as PRIVACY
from nexus_grpc.reconcilers.privacy import privacy_rule
from nexus_grpc.reconcilers.quality import NAME as QUALITY
from nexus_grpc.reconcilers.quality import PASS, TRIAL, quality_exclusion, quality_verdict
from nexus_grpc.reconcilers.request_analyzer import NAME as ANALYZER
from nexus_grpc.reconcilers.request_analyzer import subset_rule
from nexus_grpc.reconcilers.scheduler.filters import NAME as SCHEDULER
from nexus_grpc.reconcilers.scheduler.filters import (
    capability_rule,
    context_exclusion,
    saturated,
    status_exclusion,
)
from nexus_grpc.reconcilers.scheduler.pickers import MAX_ALTERNATES, SOFT_OR_HARD
from nexus_grpc.reconcilers.scheduler.scorers import adjusted, base_score, ttft_ms
from nexus_grpc.reconcilers.tier import NAME as TIER
from nexus_grpc.reconcilers.tier import tier_rule

SETS_KEPT = 256  # ranked sets per fleet version (least recently used dropped)
CHECKS_KEPT = 4096  # budget verdicts kept per fleet version
INDEXED_STRATEGIES = ("smart", "priority_only")

# live classes of a candidate that passed the static rules, in stage order
OK, QUALITY_OUT, STATUS_OUT = 0, 1, 2
_STATUS_CODE = {  # BackendStatus -> the scheduler's exclusion code
    1: ExclusionCode.SATURATED,  # HEALTHY (only excluded when saturated)
    2: ExclusionCode.UNHEALTHY,
    3: ExclusionCode.LOADING,
    4: ExclusionCode.DRAINING,
    5: ExclusionCode.UNHEALTHY,  # UNKNOWN
    0: ExclusionCode.UNHEALTHY,
}


class Ranking:
    """Candidates ordered by a key, best (smallest) first: a heap with lazy deletion, so that a
    change costs O(log n) and the top k cost O(k log n)."""

    __slots__ = ("_heap", "_live", "_versions")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Candidate]] = []
        self._live: dict[Candidate, int] = {}  # candidate -> version of its valid entry
        self._versions = itertools.count(1)

    def __len__(self) -> int:
        return len(self._live)

    def put(self, c: Candidate, key: int) -> None:
        version = next(self._versions)
        self._live[c] = version
        heapq.heappush(self._heap, (key, c.index, version, c))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def remove(self, c: Candidate) -> None:
        self._live.pop(c, None)

    def top(self, k: int) -> list[tuple[int, int, Candidate]]:
        """The k best as (key, config index, candidate)."""
        heap, live = self._heap, self._live
        found: list[tuple[int, int, int, Candidate]] = []
        while heap and len(found) < k:
            entry = heapq.heappop(heap)
            if live.get(entry[3]) == entry[2]:
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return [(key, index, c) for key, index, _, c in found]

    def _compact(self) -> None:
        live = self._live
        self._heap = [e for e in self._heap if live.get(e[3]) == e[2]]
        heapq.heapify(self._heap)


class Group:
    """The candidates of a ranked set that the request's numbers treat alike: one zone, one
    price, one context length."""

    __slots__ = (
        "able",
        "cost_memo",
        "ctx_limit",
        "free",
        "halved",
        "incapable",
        "members",
        "price",
        "q_able",
        "quality_out",
        "ranked",
        "status_counts",
        "status_out",
        "tiered",
        "zone",
    )

    def __init__(self, zone: PrivacyZone, price: Price, free: bool, ctx_limit: int) -> None:
        self.zone = zone
        self.price = price
        self.free = free
        self.ctx_limit = ctx_limit
        self.members: list[Candidate] = []  # every candidate, config order
        self.tiered: list[Exclusion] = []  # excluded by the tier rule (static)
        self.able: list[Candidate] = []  # the rest that have the model and capabilities (static)
        self.incapable: dict[Candidate, Exclusion] = {}  # the rest that do not (static)
        self.quality_out: dict[Candidate, bool] = {}  # quality-excluded -> whether able
        self.q_able = 0  # how many of `quality_out` are able
        self.status_out: dict[Candidate, ExclusionCode] = {}  # able, status-excluded
        self.status_counts: dict[ExclusionCode, int] = {}  # how many of `status_out` per code
        self.ranked = Ranking()  # capable survivors by score (or priority)
        self.halved = Ranking()  # the same, scores halved at the soft limit (open zone only)
        self.cost_memo: tuple[int, int, int] = (-1, -1, 0)  # (input, output) tokens -> cost

    def cost(self, tokens_in: int, tokens_out: int) -> int:
        if self.free:
            return 0
        memo = self.cost_memo
        if memo[0] != tokens_in or memo[1] != tokens_out:
            memo = self.cost_memo = (tokens_in, tokens_out, self.price.cost(tokens_in, tokens_out))
        return memo[2]


class Slot(NamedTuple):
    group: Group
    capable: bool  # passed the capability rule


class RankedSet:
    """The candidates of one model under one static eligibility, classified and ranked."""

    def __init__(
        self,
        fleet: Fleet,
        model: str,
        requested: str,
        source: str | None,
        minimum: int,
        needs: tuple[bool, bool, bool],
        now: float,
        subset: EndpointSubset | None = None,
    ) -> None:
        self.fleet = fleet
        self.model = model
        config = fleet.config
        self.weights = config.routing.weights
        self.thr = config.quality.ttft_penalty_threshold_ms
        self.quality = config.quality
        self.smart = config.routing.strategy == "smart"
        self.subset_out: tuple[Exclusion, ...] = ()
        self.privacy_out: tuple[Exclusion, ...] = ()
        self.groups: list[Group] = []
        self.slots: dict[Candidate, Slot] = {}
        self.dirty: set[Candidate] = set()
        self.timers: list[tuple[float, int, Candidate]] = []
        self._timer_seq = itertools.count()
        self._timer_at: dict[Candidate, float] = {}
        self._by_live: dict[LiveBackend, Candidate] = {}
        self._signatures: dict[Candidate, tuple[object, ...] | None] = {}
        self.excl_version = 0
        self._shown: (
            tuple[tuple[object, ...], dict[tuple[str, ExclusionCode], int], tuple[Exclusion, ...]] | None
        ) = None
        by_key: dict[tuple[PrivacyZone, int, int, int], Group] = {}
        outside: list[Exclusion] = []
        privacy: list[Exclusion] = []
        for c in fleet.candidates.get(model, ()):
            if subset is not None:
                verdict = subset_rule(fleet, c, model, subset)
                if verdict is not None:
                    outside.append(verdict)
                    continue
            if source is not None:
                verdict = privacy_rule(fleet, c, model, requested, source)
                if verdict is not None:
                    privacy.append(verdict)
                    continue
            gkey = (c.zone, c.price.input_nano, c.price.output_nano, c.ctx_limit)
            group = by_key.get(gkey)
            if group is None:
                group = by_key[gkey] = Group(c.zone, c.price, c.free, c.ctx_limit)
                self.groups.append(group)
            group.members.append(c)
            tiered = tier_rule(fleet, c, model, minimum, False) if minimum > 1 else None
            if tiered is not None:
                group.tiered.append(tiered)
                continue
            incapable = capability_rule(fleet, c, model, *needs)
            if incapable is None:
                group.able.append(c)
            else:
                group.incapable[c] = incapable
            self.slots[c] = Slot(group, incapable is None)
            self._by_live[c.live] = c
            c.live.watchers.append(self)
            self._classify(c, now)
        self.subset_out = tuple(outside)
        self.privacy_out = tuple(privacy)
        self.size = len(fleet.candidates.get(model, ()))

    def detach(self) -> None:
        for live in self._by_live:
            if self in live.watchers:
                live.watchers.remove(self)
        self._by_live.clear()

    # -- keeping it current -------------------------------------------------------------------

    def changed(self, live: LiveBackend) -> None:
        c = self._by_live.get(live)
        if c is not None:
            self.dirty.add(c)

    def refresh(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            at, _, c = heapq.heappop(timers)
            if self._timer_at.get(c) == at:
                del self._timer_at[c]
                self.dirty.add(c)
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            for c in dirty:
                self._classify(c, now)

    def _classify(self, c: Candidate, now: float) -> None:
        group, capable = self.slots[c]
        if group.quality_out.pop(c, None):
            group.q_able -= 1
        old = group.status_out.pop(c, None)
        if old is not None:
            group.status_counts[old] -= 1
        group.ranked.remove(c)
        group.halved.remove(c)
        self._timer(c, now)
        signature = self._classify_excluded(c, group, capable, now)
        if signature != self._signatures.get(c):
            self._signatures[c] = signature
            self.excl_version += 1  # the exclusions (or their text) changed
        if signature is not None or not capable:
            return
        if not self.smart:
            group.ranked.put(c, c.priority)
            return
        self._rank(c, group, now)

    def _classify_excluded(
        self, c: Candidate, group: Group, capable: bool, now: float
    ) -> tuple[object, ...] | None:
        """File `c` under quality or status when it is excluded there; returns what the text of
        its exclusion depends on (None: not excluded by live state)."""
        live = c.live
        verdict = quality_verdict(live, now, self.quality)
        if verdict not in (PASS, TRIAL):
            group.quality_out[c] = capable
            group.q_able += capable
            return ("quality", verdict)
        if not capable:
            return None
        status = live.status
        if status != 1 or saturated(c):  # not HEALTHY, or HEALTHY and saturated
            code = group.status_out[c] = _STATUS_CODE[int(status)]
            group.status_counts[code] = group.status_counts.get(code, 0) + 1
            return ("status", code, live.version, len(live.in_flight) if status == 1 else 0)
        return None

    def _rank(self, c: Candidate, group: Group, now: float) -> None:
        base = base_score(c, self.weights)[0]
        ttft = ttft_ms(c, now)
        group.ranked.put(c, -adjusted(base, False, ttft, self.thr)[0])
        if c.zone == PrivacyZone.OPEN:
            group.halved.put(c, -adjusted(base, True, ttft, self.thr)[0])

    def _timer(self, c: Candidate, now: float) -> None:
        """Re-judge `c` when time alone changes its verdict or score."""
        live = c.live
        at = live.stats.next_expiry()
        since = live.breaker_since
        if since is not None and since + self.quality.cooldown_seconds > now:
            cooldown = since + self.quality.cooldown_seconds
            at = cooldown if at is None else min(at, cooldown)
        if at is None:
            self._timer_at.pop(c, None)
            return
        at = max(at, now + 1e-6)
        if self._timer_at.get(c) != at:
            self._timer_at[c] = at
            heapq.heappush(self.timers, (at, next(self._timer_seq), c))

    # -- deciding -----------------------------------------------------------------------------

    def route(
        self, request: DecisionRequest, snap: Snapshot, check: BudgetCheck, decision_id: str, t0: int
    ) -> Decision | None:
        self.refresh(snap.monotonic)
        tokens_in, tokens_out = request.estimated_input_tokens, request.output_tokens
        total = tokens_in + tokens_out
        halve = self.smart and check.applied.status in SOFT_OR_HARD
        passing: list[Group] = []
        verdicts: list[ExclusionCode | None] = []
        for g in self.groups:
            code = budget_code(check, g.zone, g.cost(tokens_in, tokens_out)) if not check.idle else None
            verdicts.append(code)
            if code is None and total <= g.ctx_limit:
                passing.append(g)
        survivors = sum(len(g.ranked) for g in passing)
        if not survivors:
            return None
        tops: list[tuple[int, int, Candidate]] = []
        for g in passing:
            ranking = g.halved if halve and g.zone == PrivacyZone.OPEN else g.ranked
            tops.extend(ranking.top(MAX_ALTERNATES + 1))
        tops.sort()
        key, _, best = tops[0]
        if survivors == 1:
            reason = "only_healthy_backend"
        elif self.smart:
            reason = f"highest_score:{best.id}:{-key}"
        else:
            reason = f"priority:{best.id}:{best.priority}"
        counts, shown = self._cached_exclusions(request, snap, check, verdicts, total)
        route = Route(
            backend_id=best.id,
            url=best.backend.url,
            backend_type=best.backend.type,
            privacy_zone=best.zone,
            model=self.model,
            reason=reason,
            score=-key if self.smart else 0,
            alternates=tuple(c.id for _, _, c in tops[1 : 1 + MAX_ALTERNATES]),
        )
        cost = 0 if best.free else best.price.cost(tokens_in, tokens_out)
        return Decision(
            request_id=request.request_id,
            requested_model=request.model,
            resolved_model=self.model,
            verdict=route,
            cost_estimate=CostEstimate(tokens_in, tokens_out, cost),
            budget=check.applied,
            exclusions=shown,
            scopes=scopes_for(request.tenant),
            stage_durations_ns=((INDEX, time.perf_counter_ns() - t0),),
            stage_funnel=((self.size, survivors),),
            decision_id=decision_id,
            exclusions_total=sum(counts.values()),
            exclusion_counts=tuple(counts.items()),
        )

    def _cached_exclusions(
        self,
        request: DecisionRequest,
        snap: Snapshot,
        check: BudgetCheck,
        verdicts: list[ExclusionCode | None],
        total: int,
    ) -> tuple[dict[tuple[str, ExclusionCode], int], tuple[Exclusion, ...]]:
        """The exclusions are the same for the next request unless what they depend on changed:
        the live classification, the groups' verdicts, the token total (context reasons), the
        clock's 100 ms step (loading ETAs). Budget reasons quote the spend: never cached."""
        if any(v is not None for v in verdicts):
            return self._exclusions(request, snap, check, verdicts, total)
        loading = any(g.status_counts.get(ExclusionCode.LOADING) for g in self.groups)
        ctx = any(total > g.ctx_limit for g in self.groups)
        key = (self.excl_version, total if ctx else -1, int(snap.monotonic * 10) if loading else 0)
        cached = self._shown
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        counts, shown = self._exclusions(request, snap, check, verdicts, total)
        self._shown = (key, counts, shown)
        return counts, shown

    def _exclusions(
        self,
        request: DecisionRequest,
        snap: Snapshot,
        check: BudgetCheck,
        verdicts: list[ExclusionCode | None],
        total: int,
    ) -> tuple[dict[tuple[str, ExclusionCode], int], tuple[Exclusion, ...]]:
        """Counts per (stage, code) of every exclusion, and the first MAX_EXCLUSIONS built."""
        counts: dict[tuple[str, ExclusionCode], int] = {}
        shown: list[Exclusion] = list(self.subset_out[:MAX_EXCLUSIONS])
        if self.subset_out:
            counts[(ANALYZER, ExclusionCode.OUTSIDE_ENDPOINT_SUBSET)] = len(self.subset_out)
        shown.extend(self.privacy_out[: MAX_EXCLUSIONS - len(shown)])
        if self.privacy_out:
            counts[(PRIVACY, ExclusionCode.PRIVACY_ZONE)] = len(self.privacy_out)
        model, now = self.model, snap.monotonic

        def add(stage: str, code: ExclusionCode, n: int, build: Iterator[Exclusion]) -> None:
            if not n:
                return
            counts[(stage, code)] = counts.get((stage, code), 0) + n
            room = MAX_EXCLUSIONS - len(shown)
            if room > 0:
                shown.extend(itertools.islice(build, room))

        tokens_in, tokens_out = request.estimated_input_tokens, request.output_tokens
        for g, code in zip(self.groups, verdicts, strict=True):
            if code is not None:
                cost = g.cost(tokens_in, tokens_out)
                add(
                    BUDGET,
                    code,
                    len(g.members),
                    (budget_exclusion(check, code, c, model, cost, snap) for c in g.members),
                )
        live_groups = [g for g, code in zip(self.groups, verdicts, strict=True) if code is None]
        for g in live_groups:
            add(TIER, ExclusionCode.TIER_BELOW_MINIMUM, len(g.tiered), iter(g.tiered))
        for g in live_groups:
            add(QUALITY, ExclusionCode.ERROR_RATE, len(g.quality_out), self._quality_reasons(g, now))
        for g in live_groups:
            out = g.quality_out
            add(
                SCHEDULER,
                ExclusionCode.MISSING_CAPABILITY,
                len(g.incapable) - (len(out) - g.q_able),
                (e for c, e in g.incapable.items() if c not in out),
            )
        for g in live_groups:
            if total > g.ctx_limit:
                out = g.quality_out
                add(
                    SCHEDULER,
                    ExclusionCode.CONTEXT_TOO_LONG,
                    len(g.able) - g.q_able,
                    (context_exclusion(c, model, total) or _never() for c in g.able if c not in out),
                )
                continue
            for code, n in g.status_counts.items():
                if n:
                    counts[(SCHEDULER, code)] = counts.get((SCHEDULER, code), 0) + n
            room = MAX_EXCLUSIONS - len(shown)
            if room > 0:
                for c in itertools.islice(g.status_out, room):
                    shown.append(status_exclusion(c, model, now) or _never())
        return counts, tuple(shown)

    def _quality_reasons(self, g: Group, now: float) -> Iterator[Exclusion]:
        for c in g.quality_out:
            verdict = quality_verdict(c.live, now, self.quality)
            assert isinstance(verdict, tuple)
            yield quality_exclusion(c, self.model, verdict, self.quality)


class RouteIndex:
    """The ranked sets of the current fleet version, built on first use."""

    def __init__(self) -> None:
        self._fleet: Fleet | None = None
        self._sets: OrderedDict[tuple[object, ...], RankedSet] = OrderedDict()
        self._checks: dict[tuple[object, ...], BudgetCheck] = {}

    def route(self, request: DecisionRequest, snap: Snapshot, decision_id: str) -> Decision | None:
        """An indexed Route, or None when the stages must decide (see the module docstring)."""
        t0 = time.perf_counter_ns()
        fleet = snap.fleet
        if fleet.config.routing.strategy not in INDEXED_STRATEGIES:
            return None
        chain = fleet.chain(request.model)
        model = chain[-1]
        policy: EffectivePolicy = fleet.policy(chain)
        minimum = max(policy.min_tier, request.min_tier)
        if minimum > 1 and request.tier_mode == TierMode.FLEXIBLE:
            return None  # a downgrade depends on what the budget stage left
        if fleet is not self._fleet:
            self.reset()
            self._fleet = fleet
        source = (
            "policy"
            if policy.privacy == PrivacyZone.RESTRICTED
            else ("request" if request.privacy == PrivacyZone.RESTRICTED else None)
        )
        needs = (request.needs_vision, request.needs_tools, request.needs_json_mode)
        subset = request.endpoint_subset
        key = (model, request.model, source, minimum, needs, subset)
        ranked = self._sets.get(key)
        if ranked is None:
            ranked = self._sets[key] = RankedSet(
                fleet, model, request.model, source, minimum, needs, snap.monotonic, subset
            )
            if len(self._sets) > SETS_KEPT:
                self._sets.popitem(last=False)[1].detach()
        else:
            self._sets.move_to_end(key)
        return ranked.route(
            request, snap, self._budget(snap, request.tenant, policy.max_cost_nano), decision_id, t0
        )

    def _budget(self, snap: Snapshot, tenant: str, cap: int | None) -> BudgetCheck:
        """The budget stage's verdict for this request: the same as long as the totals it reads,
        the month, the tenant and the cap are (the fleet's config is fixed per index)."""
        month = snap.month
        key = (tenant, cap, month, snap.totals(GLOBAL, month), snap.totals(tenant, month) if tenant else None)
        cached = self._checks.get(key)
        if cached is None:
            if len(self._checks) >= CHECKS_KEPT:
                self._checks.clear()
            cached = self._checks[key] = budget_check(snap, tenant, cap)
        return cached

    def reset(self) -> None:
        self._checks.clear()
        for ranked in self._sets.values():
            ranked.detach()
        self._sets.clear()
        self._fleet = None


def _never() -> Exclusion:
    raise AssertionError("the index and the filters disagree")
