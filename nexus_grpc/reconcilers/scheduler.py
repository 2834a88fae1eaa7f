"""SchedulerReconciler: static checks, then health and saturation, then the strategy's pick."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from nexus_grpc.domain.decision import CandidateScore, Exclusion
from nexus_grpc.domain.enums import BackendStatus, BudgetStatus, ExclusionCode, PrivacyZone
from nexus_grpc.pipeline.intent import Intent, StaticFilter
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

MAX_ALTERNATES = 3
# enum members as module constants: class attribute access on an Enum is slow in Python 3.11
HEALTHY, LOADING, DRAINING = BackendStatus.HEALTHY, BackendStatus.LOADING, BackendStatus.DRAINING
OPEN = PrivacyZone.OPEN
SOFT_OR_HARD = (BudgetStatus.SOFT_LIMIT, BudgetStatus.HARD_LIMIT)


class SchedulerReconciler:
    name = "SchedulerReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        survivors = list(self._filter(intent, snap))
        intent.narrow(survivors)
        if not survivors:
            return
        strategy = snap.fleet.config.routing.strategy
        if strategy == "smart":
            self._smart(intent, snap, survivors)
        elif strategy == "round_robin":
            i = snap.rr_counters.get(intent.model, 0) % len(survivors)
            intent.winner = survivors[i]
            intent.reason = f"round_robin:index_{i}"
            intent.alternates = tuple(c.id for c in (survivors[i + 1 :] + survivors[:i])[:MAX_ALTERNATES])
        elif strategy == "priority_only":
            ranked = sorted(survivors, key=lambda c: (c.priority, c.index))
            intent.winner = ranked[0]
            intent.reason = f"priority:{ranked[0].id}:{ranked[0].priority}"
            intent.alternates = tuple(c.id for c in ranked[1 : 1 + MAX_ALTERNATES])
        else:  # random
            i = snap.rng.randrange(len(survivors))
            intent.winner = survivors[i]
            intent.reason = f"random:{survivors[i].id}"
            intent.alternates = tuple(c.id for c in survivors if c is not survivors[i])[:MAX_ALTERNATES]
        if len(survivors) == 1:
            intent.reason = "only_healthy_backend"

    def _filter(self, intent: Intent, snap: Snapshot) -> Sequence[Candidate]:
        request = intent.request
        needs = (request.needs_vision, request.needs_tools, request.needs_json_mode)
        intent.apply_static(snap, (self.name, needs, intent.model), self._static(intent, snap, needs))
        total = request.estimated_input_tokens + request.output_tokens
        now = snap.now
        model = intent.model
        cands = intent.candidates
        kept: list[Candidate] = []
        for c in cands:
            live = c.live
            if total > c.ctx_limit:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.CONTEXT_TOO_LONG,
                    f"{total} tokens (input + output estimate) exceed the context length "
                    f"{c.ctx_limit} of model '{model}' on {c.id}",
                    "shorten the prompt, lower max_output_tokens, or use a model with a longer context",
                )
            elif live.status == HEALTHY:
                limit = c.backend.max_concurrency
                if limit > 0 and len(live.in_flight) >= limit:
                    intent.exclude(
                        self.name,
                        c,
                        ExclusionCode.SATURATED,
                        f"backend {c.id} has {len(live.in_flight)} requests in flight "
                        f"(max_concurrency {limit})",
                        "retry shortly, or raise max_concurrency / add capacity",
                    )
                else:
                    kept.append(c)
            elif live.status == LOADING:
                intent.exclusions.append(self._loading_exclusion(c, model, live.loading_eta_ms(now)))
            else:
                intent.exclusions.append(self._status_exclusion(c, model))
        return cands if len(kept) == len(cands) else kept

    def _loading_exclusion(self, c: Candidate, model: str, eta: int) -> Exclusion:
        """Prepared once per (backend, state version, model, ETA to the 100 ms)."""
        live = c.live
        eta = -(-eta // 100) * 100  # ETA rounded up to 100 ms: reasons are reused within that
        key = (live.version, model, eta)
        cached = live.loading_cache
        if cached is not None and cached[0] == key:
            prepared: Exclusion = cached[1]
            return prepared
        progress = f", {live.loading_progress}% loaded" if live.loading_progress is not None else ""
        exclusion = Exclusion(
            c.id,
            model,
            self.name,
            ExclusionCode.LOADING,
            f"backend {c.id} is loading model '{model}'{progress}",
            f"retry in about {eta} ms" if eta else "retry when loading completes (ETA unknown)",
        )
        live.loading_cache = (key, exclusion)
        return exclusion

    def _status_exclusion(self, c: Candidate, model: str) -> Exclusion:
        """UNHEALTHY/UNKNOWN/DRAINING reasons, prepared once per (backend, state version, model)."""
        live = c.live
        cached = live.exclusion_cache
        if cached is not None and cached[0] == live.version and cached[1] == model:
            prepared: Exclusion = cached[2]
            return prepared
        detail = f": {live.reason}" if live.reason else ""
        if live.status == BackendStatus.DRAINING:
            code = ExclusionCode.DRAINING
            reason = f"backend {c.id} is draining{detail}"
            action = "use another backend; an operator set it to drain"
        else:
            code = ExclusionCode.UNHEALTHY
            word = "unhealthy" if live.status == BackendStatus.UNHEALTHY else "of unknown health"
            reason = f"backend {c.id} is {word}{detail}"
            action = "check the backend; it returns when health checks or an operator mark it healthy"
        exclusion = Exclusion(c.id, model, self.name, code, reason, action)
        live.exclusion_cache = (live.version, model, exclusion)
        return exclusion

    def _static(self, intent: Intent, snap: Snapshot, needs: tuple[bool, bool, bool]) -> StaticFilter:
        """Registry membership and capabilities: fixed for a fleet version and a requirement set."""
        by_id = snap.fleet.by_id
        model, name = intent.model, self.name

        def compute(cands: Sequence[Candidate]) -> tuple[list[Candidate], list[Exclusion]]:
            kept: list[Candidate] = []
            excluded: list[Exclusion] = []
            for c in cands:
                backend = by_id.get(c.id)
                if backend is None:
                    excluded.append(
                        Exclusion(
                            c.id,
                            model,
                            name,
                            ExclusionCode.NOT_IN_REGISTRY,
                            f"backend {c.id} is not in the registry",
                            "re-add the backend or reload the configuration",
                        )
                    )
                    continue
                spec = c.model if backend is c.backend else backend.model(model)
                missing = _missing(*needs, spec)
                if missing:
                    listed = ", ".join(missing)
                    excluded.append(
                        Exclusion(
                            c.id,
                            model,
                            name,
                            ExclusionCode.MISSING_CAPABILITY,
                            f"backend {c.id} does not offer {listed} for model '{model}'",
                            f"use a backend whose model declares {listed}, or drop the requirement",
                        )
                    )
                    continue
                kept.append(c)
            return kept, excluded

        return compute

    @staticmethod
    def _smart(intent: Intent, snap: Snapshot, survivors: list[Candidate]) -> None:
        config = snap.fleet.config
        w = config.routing.weights
        wp, wl, wlat = w.priority, w.load, w.latency
        thr = config.quality.ttft_penalty_threshold_ms
        halve = intent.budget_status in SOFT_OR_HARD
        now = snap.now
        trace = intent.trace
        best: Candidate = survivors[0]
        best_score = -1
        scored: list[tuple[int, int, Candidate]] = []
        for c in survivors:
            live = c.live
            ps = c.priority_score
            inflight = len(live.in_flight)
            ls = 100 - inflight if inflight < 100 else 0
            ema = int(live.latency_ema_ms) // 10
            lat = 100 - ema if ema < 100 else 0
            score = (ps * wp + ls * wl + lat * wlat) // 100
            adjustments: list[str] | None = [] if trace else None
            if halve and c.zone == OPEN:
                score //= 2
                if adjustments is not None:
                    adjustments.append("soft_limit_halved")
            if thr >= 1 and live.stats.ttft_n:
                ttft = int(live.stats.snapshot(now)[2])
                if ttft > thr:
                    penalty = score * min(ttft - thr, thr) // thr
                    score -= penalty
                    if adjustments is not None:
                        adjustments.append(f"ttft_penalty:-{penalty}")
            scored.append((-score, c.index, c))
            if score > best_score:  # ties go to the earlier backend in config order
                best_score, best = score, c
            if adjustments is not None:
                intent.scores.append(
                    CandidateScore(intent.model, c.id, score, ps, ls, lat, tuple(adjustments))
                )
        intent.winner = best
        intent.score = best_score
        intent.reason = f"highest_score:{best.id}:{best_score}"
        # (-score, config index, candidate): the unique index settles every comparison
        ranked = heapq.nsmallest(MAX_ALTERNATES + 1, scored)
        intent.alternates = tuple(c.id for _, _, c in ranked if c is not best)[:MAX_ALTERNATES]


def _missing(vision: bool, tools: bool, json_mode: bool, spec: object) -> list[str]:
    if spec is None:
        return ["the model"]
    missing = []
    if vision and not getattr(spec, "vision", False):
        missing.append("vision")
    if tools and not getattr(spec, "tools", False):
        missing.append("tools")
    if json_mode and not getattr(spec, "json_mode", False):
        missing.append("json_mode")
    return missing
