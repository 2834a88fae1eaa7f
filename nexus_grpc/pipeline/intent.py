"""The intent: one request's state as it passes the stages for one model (primary or fallback)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from nexus_grpc.domain.decision import BudgetView, CandidateScore, Exclusion
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.pipeline.snapshot import Candidate, EffectivePolicy, Snapshot

MEMO_MAX = 50_000
_UNKNOWN = object()
StaticFilter = Callable[[Sequence[Candidate]], tuple[list[Candidate], list[Exclusion]]]


class Intent:
    """Stages narrow `candidates` (through `exclude`) and write the fields they own."""

    __slots__ = (
        "alternates",
        "budget",
        "budget_emptied",
        "candidates",
        "chain",
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
        # a tuple while only static stages narrowed it (then stage results are memoized per fleet);
        # a list once a stage narrowed it on live state
        self.candidates: Sequence[Candidate] = ()
        self.initial: tuple[Candidate, ...] = ()  # what the analyzer found
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
        """Keep `kept`; an unchanged set keeps its (memoizable) tuple."""
        if len(kept) != len(self.candidates):
            self.candidates = kept

    def apply_static(self, snap: Snapshot, key: Hashable, compute: StaticFilter) -> None:
        """Run a filter that depends only on the fleet, `key` and the input set — once per fleet
        version: the kept tuple and the prepared exclusions are reused by later requests."""
        cands = self.candidates
        memo = snap.fleet.memo
        if type(cands) is not tuple:
            # narrowed on live state: use the per-candidate verdicts (static filters judge each
            # candidate on its own), prepared once per fleet version
            table: dict[Candidate, Exclusion | None] | None = memo.get((key, "each"))
            if table is None:
                table = memo[(key, "each")] = {}
            kept: list[Candidate] = []
            for c in cands:
                verdict = table.get(c, _UNKNOWN)
                if verdict is _UNKNOWN:
                    _, excluded = compute((c,))
                    verdict = table[c] = excluded[0] if excluded else None
                if verdict is None:
                    kept.append(c)
                else:
                    self.exclusions.append(verdict)  # type: ignore[arg-type]
            self.narrow(kept)
            return
        full = (key, id(cands))
        hit = memo.get(full)
        if hit is None or hit[0] is not cands:
            kept_all, excluded = compute(cands)
            hit = (cands, cands if len(kept_all) == len(cands) else tuple(kept_all), tuple(excluded))
            if len(memo) >= MEMO_MAX:
                memo.clear()
            memo[full] = hit  # holds `cands`, so its id cannot be reused while the entry lives
        self.candidates = hit[1]
        if hit[2]:
            self.exclusions.extend(hit[2])


class Reconciler(Protocol):
    """One stage. It may only narrow `intent.candidates` and annotate the intent; no I/O."""

    name: str
    # True: if the stage raises, the decision goes on without it (budget fails open).
    # False: the decision fails closed (Reject with an INTERNAL_ERROR reason per candidate).
    fail_open: bool

    def reconcile(self, intent: Intent, snap: Snapshot) -> None: ...
