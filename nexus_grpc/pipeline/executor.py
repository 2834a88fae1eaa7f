"""The executor: runs the stages for the primary model and its fallbacks and turns the final
state into Route, Queue or Reject — in one place, `_verdict`."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nexus_grpc.domain.decision import (
    CostEstimate,
    Decision,
    Exclusion,
    Queue,
    Reject,
    Route,
    StageTrace,
    Verdict,
    summary_text,
)
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode, RejectCode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.months import next_month_start
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.domain.scopes import scopes_for
from nexus_grpc.pipeline import intent as intent_module
from nexus_grpc.pipeline.budget_views import request_views
from nexus_grpc.pipeline.intent import Intent, Reconciler
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

MAX_EXCLUSIONS = 50
INDEX = "RouteIndex"  # the name the fast path's time is reported under (metrics, decision log)
log = logging.getLogger("nexus_grpc")


@dataclass(slots=True)
class _Run:
    intent: Intent
    failed_closed: bool
    traces: list[StageTrace]
    wait_ms: int | None  # queue wait when some compliant backend was only LOADING/SATURATED
    wait_backend: str
    durations: list[tuple[str, int]]
    funnel: list[tuple[int, int]]


class FastPath(Protocol):
    """Decides the common case without running the stages one by one, or returns None. It must
    decide exactly what the stages would (checked with NEXUS_VERIFY=1), give a Route
    `decision_id`, and report its own time as the one entry of `stage_durations_ns`."""

    def route(self, request: DecisionRequest, snap: Snapshot, decision_id: str) -> Decision | None: ...


class Pipeline:
    def __init__(self, stages: Sequence[Reconciler], *, fast: FastPath | None = None) -> None:
        self.stages = tuple(stages)
        self.stage_names = tuple(s.name for s in self.stages)
        self.fast = fast
        # aggregated per-stage time (ns) and runs, read by telemetry at scrape time
        self.stage_ns = dict.fromkeys(self.stage_names, 0)
        self.stage_runs = dict.fromkeys(self.stage_names, 0)
        self._fast_failed = False

    def decide(
        self, request: DecisionRequest, snap: Snapshot, *, trace: bool = False, decision_id: str = ""
    ) -> Decision:
        """Route/Queue/Reject; a Route carries `decision_id`. Explain (`trace`) always runs
        stage by stage."""
        if not trace and self.fast is not None:
            try:
                decided = self.fast.route(request, snap, decision_id)
            except Exception:  # never a crash: the stages decide instead (logged once)
                if not self._fast_failed:
                    log.exception("the route index failed; deciding stage by stage from now on")
                    self._fast_failed = True
                self.fast = None
                decided = None
            if decided is not None:
                elapsed = decided.stage_durations_ns[0][1]
                self.stage_ns[INDEX] = self.stage_ns.get(INDEX, 0) + elapsed
                self.stage_runs[INDEX] = self.stage_runs.get(INDEX, 0) + 1
                if intent_module.VERIFY:
                    _same_decision(decided, self._decide(request, snap, trace=False, decision_id=decision_id))
                return decided
        return self._decide(request, snap, trace=trace, decision_id=decision_id)

    def _decide(self, request: DecisionRequest, snap: Snapshot, *, trace: bool, decision_id: str) -> Decision:
        primary = self._run(Intent(request, request.model, trace=trace), snap)
        runs = [primary]
        routed = primary if primary.intent.winner is not None else None
        fallbacks_tried = False
        if routed is None and not primary.failed_closed and primary.intent.policy.fallback_allowed:
            for model in snap.fleet.config.routing.fallbacks.get(primary.intent.model, ()):
                fallbacks_tried = True
                run = self._run(
                    Intent(request, model, primary_policy=primary.intent.policy, trace=trace), snap
                )
                runs.append(run)
                if run.intent.winner is not None:
                    routed = run
                    break
        exclusions = (
            tuple(primary.intent.exclusions)
            if len(runs) == 1
            else tuple(itertools.chain.from_iterable(r.intent.exclusions for r in runs))
        )
        verdict, basis = self._verdict(request, snap, runs, routed, fallbacks_tried, exclusions)
        applied = primary.intent.budget or request_views(snap, request.tenant)[1]
        return Decision(
            request_id=request.request_id,
            requested_model=request.model,
            resolved_model=primary.intent.model,
            verdict=verdict,
            cost_estimate=self._estimate(request, snap, verdict, basis, primary.intent),
            budget=applied,
            exclusions=exclusions,
            scopes=scopes_for(request.tenant),
            stages=tuple(itertools.chain.from_iterable(r.traces for r in runs)),
            scores=tuple(itertools.chain.from_iterable(r.intent.scores for r in runs)),
            stage_durations_ns=tuple(itertools.chain.from_iterable(r.durations for r in runs)),
            stage_funnel=tuple(itertools.chain.from_iterable(r.funnel for r in runs)),
            decision_id=decision_id if isinstance(verdict, Route) else "",
        )

    def _run(self, intent: Intent, snap: Snapshot) -> _Run:
        traces: list[StageTrace] = []
        durations: list[tuple[str, int]] = []
        funnel: list[tuple[int, int]] = []
        failed_closed = False
        clock = time.perf_counter_ns
        verify = intent_module.VERIFY
        for stage in self.stages:
            before = len(intent.candidates)
            first_exclusion = len(intent.exclusions)
            notes_before = dict(intent.notes) if intent.trace else None
            given = tuple(intent.candidates) if verify else ()
            faulted = False
            t0 = clock()
            try:
                stage.reconcile(intent, snap)
            except Exception as exc:  # a stage fault must never escape as a crash
                faulted = True
                if stage.fail_open:
                    intent.notes[f"{stage.name}.fault"] = type(exc).__name__
                else:
                    self._fail_closed(intent, stage.name, exc)
                    failed_closed = True
            elapsed = clock() - t0
            if verify and not faulted and not getattr(stage, "finds_candidates", False):
                check_contract(stage.name, given, intent.candidates, intent.exclusions[first_exclusion:])
            self.stage_ns[stage.name] += elapsed
            self.stage_runs[stage.name] += 1
            durations.append((stage.name, elapsed))
            funnel.append((before, len(intent.candidates)))
            if intent.trace:
                new_notes = {k: v for k, v in intent.notes.items() if notes_before.get(k) != v}  # type: ignore[union-attr]
                traces.append(
                    StageTrace(
                        intent.model,
                        stage.name,
                        elapsed // 1000,
                        before,
                        len(intent.candidates),
                        tuple(intent.exclusions[first_exclusion:]),
                        new_notes,
                    )
                )
            if failed_closed:
                break
        wait, wait_backend = self._queue_wait(intent, snap)
        return _Run(intent, failed_closed, traces, wait, wait_backend, durations, funnel)

    @staticmethod
    def _fail_closed(intent: Intent, stage: str, exc: Exception) -> None:
        for c in intent.candidates:
            intent.exclude(
                stage,
                c,
                ExclusionCode.INTERNAL_ERROR,
                f"{stage} failed ({type(exc).__name__}); failing closed",
                "check the server log for this request id and report the fault",
            )
        intent.candidates = []
        intent.static = None
        intent.winner = None

    @staticmethod
    def _queue_wait(intent: Intent, snap: Snapshot) -> tuple[int | None, str]:
        if intent.winner is not None:
            return None, ""
        max_wait = snap.fleet.config.queue.max_wait_ms
        best: int | None = None
        best_id = ""
        lives: dict[str, LiveBackend] | None = None  # built once, only when something waits
        loading, saturated, model = ExclusionCode.LOADING, ExclusionCode.SATURATED, intent.model
        for e in intent.exclusions:
            code = e.code
            if (code is not loading and code is not saturated) or e.model != model:
                continue
            if lives is None:
                lives = {c.id: c.live for c in intent.model_candidates}
            live = lives.get(e.backend_id)
            if live is None:
                continue
            if code is loading:
                raw = (
                    float(live.loading_eta_ms(snap.monotonic))
                    if live.status == BackendStatus.LOADING
                    else 0.0
                )
            else:
                raw = live.latency_ema_ms
            # unknown (0) waits the longest; a known wait is clamped to [1, max_wait_ms]
            wait = max_wait if raw <= 0 else min(max(int(raw), 1), max_wait)
            if best is None or wait < best:
                best, best_id = wait, e.backend_id
        return best, best_id

    def _verdict(
        self,
        request: DecisionRequest,
        snap: Snapshot,
        runs: list[_Run],
        routed: _Run | None,
        fallbacks_tried: bool,
        exclusions: tuple[Exclusion, ...],
    ) -> tuple[Verdict, _Run]:
        primary = runs[0]
        if routed is not None:
            it = routed.intent
            winner = it.winner
            assert winner is not None
            fallback = routed is not primary
            return (
                Route(
                    backend_id=winner.id,
                    url=winner.backend.url,
                    backend_type=winner.backend.type,
                    privacy_zone=winner.zone,
                    model=it.model,
                    reason=f"fallback:{it.model}:{it.reason}" if fallback else it.reason,
                    score=it.score,
                    fallback_used=fallback,
                    alternates=it.alternates,
                ),
                routed,
            )
        queue_cfg = snap.fleet.config.queue
        waiting = primary if primary.wait_ms is not None else None
        if waiting is None and len(runs) > 1 and runs[1].wait_ms is not None:
            waiting = runs[1]
        if waiting is not None and queue_cfg.enabled and waiting.wait_ms is not None:
            wait = waiting.wait_ms
            if wait <= queue_cfg.max_wait_ms and not primary.failed_closed:
                reason = f"waiting_for:{waiting.wait_backend}:{waiting.intent.model}"
                return Queue(waiting.intent.model, reason, wait, wait), waiting
        summary = summary_text(exclusions, self.stage_names)
        if all(not r.intent.model_candidates for r in runs):
            models = ", ".join(snap.fleet.served_models) or "none"
            message = (
                f"Request rejected: no backend serves model '{request.model}'"
                f"{_resolved_note(primary.intent)}; available models: {models}"
            )
            return Reject(RejectCode.MODEL_NOT_FOUND, message), primary
        message = f"Request rejected: {summary}"
        if primary.intent.budget_emptied:
            retry = max(1, int((next_month_start(snap.wall) - snap.wall) * 1000))
            return Reject(RejectCode.BUDGET_EXHAUSTED, message, retry), primary
        if fallbacks_tried:
            return Reject(RejectCode.FALLBACK_EXHAUSTED, message), primary
        retry = waiting.wait_ms if waiting is not None and waiting.wait_ms is not None else 0
        return Reject(RejectCode.NO_ELIGIBLE_BACKEND, message, retry), primary

    @staticmethod
    def _estimate(
        request: DecisionRequest, snap: Snapshot, verdict: Verdict, basis: _Run, primary: Intent
    ) -> CostEstimate:
        tokens_in, tokens_out = request.estimated_input_tokens, request.output_tokens
        if isinstance(verdict, Route):
            winner = basis.intent.winner
            cost = winner.price.cost(tokens_in, tokens_out) if winner is not None else 0
        elif isinstance(verdict, Queue):
            waited = next((c for c in basis.intent.model_candidates if c.id == basis.wait_backend), None)
            cost = waited.price.cost(tokens_in, tokens_out) if waited is not None else 0
        else:
            # the costliest of the model's distinct prices (a fleet has few), prepared per fleet
            prices = snap.fleet.prepared.prices[primary.model] if primary.model_candidates else ()
            cost = max((p.cost(tokens_in, tokens_out) for p in prices), default=0)
        return CostEstimate(tokens_in, tokens_out, cost)


def _resolved_note(intent: Intent) -> str:
    return f" (resolved to '{intent.model}')" if intent.model != intent.requested else ""


class ContractError(AssertionError):
    """A stage broke the contract every stage keeps (checked with NEXUS_VERIFY=1)."""


def check_contract(
    stage: str, given: Sequence[Candidate], kept: Sequence[Candidate], excluded: Sequence[Exclusion]
) -> None:
    """A stage may only narrow: what it kept is what it was given, in order, minus what it
    dropped; it records exactly one exclusion, in its own name, per dropped candidate; it never
    adds one. (The stage that finds the candidates — `finds_candidates = True` — is exempt.)"""
    position = {id(c): i for i, c in enumerate(given)}
    order = [position.get(id(c), -1) for c in kept]
    if -1 in order:
        raise ContractError(f"{stage} added a candidate it was not given")
    if order != sorted(order) or len(set(order)) != len(order):
        raise ContractError(f"{stage} reordered or repeated candidates")
    kept_ids = {id(c) for c in kept}
    dropped = sorted(c.id for c in given if id(c) not in kept_ids)
    if sorted(e.backend_id for e in excluded) != dropped:
        raise ContractError(
            f"{stage} dropped {dropped} but recorded {sorted(e.backend_id for e in excluded)}"
        )
    if any(e.reconciler != stage for e in excluded):
        raise ContractError(f"{stage} recorded an exclusion in another stage's name")


def _same_decision(fast: Decision, staged: Decision) -> None:
    """The debug check of the fast path: the same verdict, estimate and budget, the same count
    of exclusions per (stage, code), and only exclusions the stages made."""
    assert fast.verdict == staged.verdict, (fast.verdict, staged.verdict)
    assert fast.decision_id == staged.decision_id
    assert (fast.cost_estimate, fast.budget, fast.scopes) == (
        staged.cost_estimate,
        staged.budget,
        staged.scopes,
    )
    counts = Counter((e.reconciler, e.code) for e in staged.exclusions)
    assert dict(fast.exclusion_counts) == dict(counts), (fast.exclusion_counts, counts)
    assert not Counter(fast.exclusions) - Counter(staged.exclusions), fast.exclusions
    assert len(fast.exclusions) == min(len(staged.exclusions), MAX_EXCLUSIONS)


def shown_exclusions(decision: Decision, explain: bool) -> tuple[tuple[Exclusion, ...], int]:
    """The exclusions a response carries and how many are left off."""
    shown, omitted = cap_exclusions(decision.exclusions, explain)
    return shown, omitted + decision.exclusion_count - len(decision.exclusions)


def cap_exclusions(exclusions: tuple[Exclusion, ...], explain: bool) -> tuple[tuple[Exclusion, ...], int]:
    if explain or len(exclusions) <= MAX_EXCLUSIONS:
        return exclusions, 0
    return exclusions[:MAX_EXCLUSIONS], len(exclusions) - MAX_EXCLUSIONS
