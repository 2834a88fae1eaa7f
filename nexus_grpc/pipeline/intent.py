"""The intent: one request's state as it passes the stages for one model (primary or fallback)."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Protocol

from nexus_grpc.domain.decision import BudgetView, CandidateScore, Exclusion
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.pipeline.snapshot import Candidate, EffectivePolicy, Fleet, Snapshot

MEMO_MAX = 50_000
# Recompute every memoized static result and compare (tests turn it on; see tests/conftest.py).
VERIFY = os.environ.get("NEXUS_VERIFY", "") == "1"

# A static rule judges one candidate on the fleet alone (never on live state or the request's
# numbers): a module-level function whose extra arguments are exactly what its verdict depends
# on, so (rule, args) is a complete memo key.
StaticRule = Callable[..., Exclusion | None]


class Intent:
    """Stages narrow `candidates` (through `exclude`/`narrow`) and write the fields they own."""

    __slots__ = (
        "alternates",
        "budget",
        "budget_emptied",
        "candidates",
        "chain",
        "exclusions",
        "live_narrowed",
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
        self.candidates: tuple[Candidate, ...] | list[Candidate] = ()
        # False while only static rules narrowed the candidates: they are then a tuple the fleet
        # memoizes, and the next static rule's whole result is reused. True once a stage narrowed
        # them on live state or the request's numbers.
        self.live_narrowed = False
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
            self.live_narrowed = True

    def apply_static(self, snap: Snapshot, rule: StaticRule, args: tuple[Hashable, ...]) -> None:
        """Narrow by a static rule, computed once per fleet version: the kept tuple and the
        prepared exclusions of a whole input set are reused by later requests."""
        fleet = snap.fleet
        if self.live_narrowed:
            table = _verdicts(fleet, rule, args)
            kept: list[Candidate] = []
            for c in self.candidates:
                verdict = table.get(c, _UNJUDGED)
                if verdict is _UNJUDGED or VERIFY:
                    verdict = static_verdict(fleet, rule, args, c)
                if verdict is None:
                    kept.append(c)
                else:
                    assert isinstance(verdict, Exclusion)
                    self.exclusions.append(verdict)
            self.candidates = kept
            return
        cands = self.candidates
        assert isinstance(cands, tuple)
        memo = fleet.memo
        key = (rule, args, id(cands))
        hit = memo.get(key)
        if hit is None or hit[0] is not cands:
            hit = (cands, *_judge_all(fleet, rule, args, cands))
            if len(memo) >= MEMO_MAX:
                memo.clear()
            memo[key] = hit  # holds `cands`, so its id cannot be reused while the entry lives
        elif VERIFY:
            assert hit[1:] == _judge_all(fleet, rule, args, cands), (rule, args)
        self.candidates = hit[1]
        if hit[2]:
            self.exclusions.extend(hit[2])


_UNJUDGED = object()


def _verdicts(
    fleet: Fleet, rule: StaticRule, args: tuple[Hashable, ...]
) -> dict[Candidate, Exclusion | None]:
    table: dict[Candidate, Exclusion | None] | None = fleet.memo.get((rule, args))
    if table is None:
        table = fleet.memo[(rule, args)] = {}
    return table


def static_verdict(
    fleet: Fleet, rule: StaticRule, args: tuple[Hashable, ...], c: Candidate
) -> Exclusion | None:
    """One candidate's verdict under a static rule, memoized per fleet version."""
    table = _verdicts(fleet, rule, args)
    if c in table:
        verdict = table[c]
        if VERIFY:
            assert verdict == rule(fleet, c, *args), (rule, args, c)
        return verdict
    verdict = table[c] = rule(fleet, c, *args)
    return verdict


def _judge_all(
    fleet: Fleet, rule: StaticRule, args: tuple[Hashable, ...], cands: tuple[Candidate, ...]
) -> tuple[tuple[Candidate, ...], tuple[Exclusion, ...]]:
    kept: list[Candidate] = []
    excluded: list[Exclusion] = []
    for c in cands:
        verdict = rule(fleet, c, *args)
        if verdict is None:
            kept.append(c)
        else:
            excluded.append(verdict)
    return (cands if len(kept) == len(cands) else tuple(kept)), tuple(excluded)


class Reconciler(Protocol):
    """One stage. It may only narrow `intent.candidates` (one exclusion per dropped candidate)
    and annotate the intent; no I/O, never a candidate added back."""

    name: str
    # True: if the stage raises, the decision goes on without it (budget fails open).
    # False: the decision fails closed (Reject with an INTERNAL_ERROR reason per candidate).
    fail_open: bool

    def reconcile(self, intent: Intent, snap: Snapshot) -> None: ...
