"""Decisions are data: Route, Queue or Reject, with every exclusion on the way."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from operator import attrgetter
from typing import NamedTuple

from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode, PrivacyZone, RejectCode


class Exclusion(NamedTuple):
    """One backend dropped by one stage (a RejectionReason on the wire). A named tuple: immutable
    and the cheapest value to build on the decision path."""

    backend_id: str
    model: str
    reconciler: str
    code: ExclusionCode
    reason: str
    suggested_action: str


class BudgetView(NamedTuple):
    """Budget state of one scope in one month (a BudgetState on the wire)."""

    scope: str
    month: str
    spent_nano: int
    reserved_nano: int
    limit_nano: int
    status: BudgetStatus

    @property
    def used_nano(self) -> int:
        return self.spent_nano + self.reserved_nano

    @property
    def utilization_percent(self) -> float:
        return self.used_nano * 100 / self.limit_nano if self.limit_nano else 0.0

    @property
    def remaining_nano(self) -> int:
        return max(0, self.limit_nano - self.used_nano) if self.limit_nano else 0


def budget_status(used_nano: int, limit_nano: int, soft_percent: float) -> BudgetStatus:
    """HARD at used >= limit, SOFT at used >= soft% of limit (both inclusive); limit 0 = none."""
    if limit_nano <= 0:
        return BudgetStatus.NORMAL
    if used_nano >= limit_nano:
        return BudgetStatus.HARD_LIMIT
    # used >= soft% of limit, compared exactly (64.4 means 644/10, not the float nearest to it)
    num, den = _exact(soft_percent)
    if used_nano * 100 * den >= limit_nano * num:
        return BudgetStatus.SOFT_LIMIT
    return BudgetStatus.NORMAL


@functools.lru_cache(maxsize=64)
def _exact(value: float) -> tuple[int, int]:
    """The decimal a config value was written as, as an exact fraction."""
    f = Fraction(Decimal(repr(float(value))))
    return f.numerator, f.denominator


class CostEstimate(NamedTuple):
    input_tokens: int
    output_tokens: int
    cost_nano: int


class Route(NamedTuple):
    backend_id: str
    url: str
    backend_type: str
    privacy_zone: PrivacyZone
    model: str
    reason: str
    score: int = 0
    fallback_used: bool = False
    alternates: tuple[str, ...] = ()


class Queue(NamedTuple):
    model: str
    reason: str
    estimated_wait_ms: int
    retry_after_ms: int


class Reject(NamedTuple):
    code: RejectCode
    message: str
    retry_after_ms: int = 0


Verdict = Route | Queue | Reject


@dataclass(frozen=True, slots=True)
class StageTrace:
    model: str
    reconciler: str
    duration_us: int
    candidates_in: int
    candidates_out: int
    exclusions: tuple[Exclusion, ...]
    notes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class CandidateScore:
    model: str
    backend_id: str
    score: int
    priority_score: int
    load_score: int
    latency_score: int
    adjustments: tuple[str, ...] = ()


class Decision(NamedTuple):
    request_id: str
    requested_model: str
    resolved_model: str
    verdict: Verdict
    cost_estimate: CostEstimate
    budget: BudgetView | None
    exclusions: tuple[Exclusion, ...]
    # Which scopes a Route reserves in (global first, then the tenant when it is tracked).
    scopes: tuple[str, ...] = ()
    stages: tuple[StageTrace, ...] = ()
    scores: tuple[CandidateScore, ...] = ()
    stage_durations_ns: tuple[tuple[str, int], ...] = ()
    stage_funnel: tuple[tuple[int, int], ...] = ()  # candidates in and out, per entry above
    # Server-issued id of a Route taken by Decide (its accounting key); "" otherwise.
    decision_id: str = ""
    # When `exclusions` holds only the first of them (an indexed decision): how many there were
    # in all, and how many per (stage, code). Otherwise None and () (derived from `exclusions`).
    exclusions_total: int | None = None
    exclusion_counts: tuple[tuple[tuple[str, ExclusionCode], int], ...] = ()

    @property
    def exclusion_count(self) -> int:
        return len(self.exclusions) if self.exclusions_total is None else self.exclusions_total

    @property
    def route(self) -> Route | None:
        return self.verdict if isinstance(self.verdict, Route) else None


_BACKEND_ID, _RECONCILER = attrgetter("backend_id"), attrgetter("reconciler")


def summary_text(exclusions: tuple[Exclusion, ...] | list[Exclusion], stage_order: tuple[str, ...]) -> str:
    """'{n} backend{s} excluded by {stages}': distinct backends, stages once each in pipeline order."""
    ids = set(map(_BACKEND_ID, exclusions))
    seen = set(map(_RECONCILER, exclusions))
    stages = [s for s in stage_order if s in seen] + sorted(seen - set(stage_order))
    n = len(ids)
    return f"{n} backend{'s' if n != 1 else ''} excluded by {', '.join(stages) if stages else 'no stage'}"
