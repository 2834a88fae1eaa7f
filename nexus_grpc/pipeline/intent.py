"""The intent: one request's state as it passes the stages for one model (primary or fallback)."""

from __future__ import annotations

from typing import Protocol

from nexus_grpc.domain.decision import BudgetView, CandidateScore, Exclusion
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.pipeline.snapshot import Candidate, EffectivePolicy, Snapshot


class Intent:
    """Stages narrow `candidates` (through `exclude`) and write the fields they own."""

    __slots__ = (
        "alternates",
        "budget",
        "budget_emptied",
        "candidates",
        "chain",
        "costs",
        "exclusions",
        "initial",
        "model",
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
        self.candidates: list[Candidate] = []
        self.initial: tuple[Candidate, ...] = ()  # what the analyzer found
        self.exclusions: list[Exclusion] = []
        self.notes: dict[str, str] = {}
        self.costs: dict[str, int] = {}  # backend id -> estimate, nano-USD (BudgetReconciler)
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


class Reconciler(Protocol):
    """One stage. It may only narrow `intent.candidates` and annotate the intent; no I/O."""

    name: str
    # True: if the stage raises, the decision goes on without it (budget fails open).
    # False: the decision fails closed (Reject with an INTERNAL_ERROR reason per candidate).
    fail_open: bool

    def reconcile(self, intent: Intent, snap: Snapshot) -> None: ...
