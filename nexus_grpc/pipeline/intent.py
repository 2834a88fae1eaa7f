"""The intent: one request's state as it passes the stages for one model (primary or fallback)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Protocol

from nexus_grpc.domain.decision import BudgetView, CandidateScore, Exclusion
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.pipeline.snapshot import (
    REASONS_KEPT,
    Candidate,
    EffectivePolicy,
    Fleet,
    ReasonBuilder,
    Snapshot,
    StaticRule,
    StaticSet,
)

# Recompute every memoized static result and prepared reason and compare (tests turn it on; see
# tests/conftest.py).
VERIFY = os.environ.get("NEXUS_VERIFY", "") == "1"


class VerifyError(AssertionError):
    """A memoized result differs from a fresh one (checked with NEXUS_VERIFY=1): its rule or
    builder depends on something outside its arguments."""


class Intent:
    """Stages narrow `candidates` (through `exclude`/`narrow`) and write the fields they own."""

    __slots__ = (
        "alternates",
        "budget",
        "budget_emptied",
        "candidates",
        "chain",
        "exclusions",
        "model",
        "model_candidates",
        "notes",
        "policy",
        "primary_policy",
        "reason",
        "request",
        "requested",
        "score",
        "scores",
        "static",
        "trace",
        "winner",
    )

    def __init__(
        self,
        request: DecisionRequest,
        requested: str,
        *,
        primary_policy: EffectivePolicy | None = None,
        trace: bool = False,
    ) -> None:
        self.request = request
        self.requested = requested  # the name to resolve: the request's model or a fallback
        self.primary_policy = primary_policy  # set on fallback runs
        self.trace = trace
        self.chain: tuple[str, ...] = (requested,)
        self.model = requested  # resolved model (RequestAnalyzer)
        self.policy = EffectivePolicy()
        self.candidates: Sequence[Candidate] = ()
        # While only static rules narrowed the candidates: the memoized set they are (its
        # `candidates` is `self.candidates`), so the next static rule's whole result is reused.
        # None once a stage narrowed them on live state or the request's numbers.
        self.static: StaticSet | None = None
        self.model_candidates: tuple[Candidate, ...] = ()  # what the analyzer found
        self.exclusions: list[Exclusion] = []
        self.notes: dict[str, str] = {}
        self.budget: BudgetView | None = None
        self.budget_emptied = False
        self.scores: list[CandidateScore] = []
        self.winner: Candidate | None = None
        self.reason = ""
        self.score = 0
        self.alternates: tuple[str, ...] = ()

    @property
    def is_fallback(self) -> bool:
        return self.primary_policy is not None

    @property
    def budget_status(self) -> BudgetStatus:
        return self.budget.status if self.budget is not None else BudgetStatus.UNSPECIFIED

    def exclude(
        self, stage: str, candidate: Candidate, code: ExclusionCode, reason: str, suggested_action: str
    ) -> None:
        self.exclusions.append(Exclusion(candidate.id, self.model, stage, code, reason, suggested_action))

    def cost(self, candidate: Candidate) -> int:
        """The request's estimated cost on this candidate, nano-USD."""
        if candidate.free:
            return 0
        request = self.request
        return candidate.price.cost(request.estimated_input_tokens, request.output_tokens)

    def narrow(self, kept: list[Candidate]) -> None:
        """Keep `kept` (a stage judged live state or the request's numbers)."""
        if len(kept) != len(self.candidates):
            self.candidates = kept
            self.static = None

    def apply_static(self, snap: Snapshot, rule: StaticRule, args: tuple[Hashable, ...]) -> None:
        """Narrow by a static rule, computed once per fleet version: the kept set and the
        exclusions of a whole static set are reused by later requests."""
        given = self.static
        if given is None:
            table = snap.fleet.prepared.verdict_table((rule, args))
            kept: list[Candidate] = []
            for c in self.candidates:
                verdict = table.get(c, _UNJUDGED)
                if verdict is _UNJUDGED or VERIFY:
                    verdict = static_verdict(snap.fleet, rule, args, c)
                if verdict is None:
                    kept.append(c)
                else:
                    assert isinstance(verdict, Exclusion)
                    self.exclusions.append(verdict)
            self.candidates = kept
            return
        key = (rule, args)
        hit = given.after.get(key)
        if hit is None:
            hit = _judge_all(snap.fleet, rule, args, given)
            snap.fleet.prepared.remember(given, key, *hit)
        elif VERIFY:
            fresh = _judge_all(snap.fleet, rule, args, given)
            if (fresh[0].candidates, fresh[1]) != (hit[0].candidates, hit[1]):
                raise VerifyError(f"static rule {rule.__name__}{args} memoized a stale result")
        self.static = hit[0]
        self.candidates = hit[0].candidates
        if hit[1]:
            self.exclusions.extend(hit[1])


_UNJUDGED = object()


def static_verdict(
    fleet: Fleet, rule: StaticRule, args: tuple[Hashable, ...], c: Candidate
) -> Exclusion | None:
    """One candidate's verdict under a static rule, memoized per fleet version."""
    table = fleet.prepared.verdict_table((rule, args))
    if c in table:
        verdict = table[c]
        if VERIFY and verdict != rule(fleet, c, *args):
            raise VerifyError(f"static rule {rule.__name__}{args} memoized a stale verdict for {c}")
        return verdict
    verdict = table[c] = rule(fleet, c, *args)
    return verdict


def _judge_all(
    fleet: Fleet, rule: StaticRule, args: tuple[Hashable, ...], given: StaticSet
) -> tuple[StaticSet, tuple[Exclusion, ...]]:
    kept: list[Candidate] = []
    excluded: list[Exclusion] = []
    for c in given.candidates:
        verdict = rule(fleet, c, *args)
        if verdict is None:
            kept.append(c)
        else:
            excluded.append(verdict)
    return (given if not excluded else StaticSet(tuple(kept))), tuple(excluded)


def prepared_reason(c: Candidate, build: ReasonBuilder, *args: Hashable) -> Exclusion:
    """The exclusion `build(c, *args)`, built once per candidate and `args` and then reused:
    `build` is a module-level function whose text depends only on `args` and the candidate's
    fixed fields (its id), so (build, args) is a complete key."""
    reasons = c.reasons
    key = (build, args)
    found = reasons.get(key)
    if found is None:
        if len(reasons) >= REASONS_KEPT:
            reasons.clear()
        found = reasons[key] = build(c, *args)
    elif VERIFY and found != build(c, *args):
        raise VerifyError(f"prepared reason {build.__name__}{args} of {c} is stale")
    return found


class Reconciler(Protocol):
    """One stage. It may only narrow `intent.candidates` (one exclusion per dropped candidate)
    and annotate the intent; no I/O, never a candidate added back."""

    name: str
    # True: if the stage raises, the decision goes on without it (budget fails open).
    # False: the decision fails closed (Reject with an INTERNAL_ERROR reason per candidate).
    fail_open: bool

    def reconcile(self, intent: Intent, snap: Snapshot) -> None: ...
