"""SchedulerReconciler: static checks, then health and saturation, then the strategy's pick."""

from __future__ import annotations

from nexus_grpc.domain.decision import CandidateScore
from nexus_grpc.domain.enums import BackendStatus, BudgetStatus, ExclusionCode, PrivacyZone
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

MAX_ALTERNATES = 3


class SchedulerReconciler:
    name = "SchedulerReconciler"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        survivors = self._filter(intent, snap)
        intent.candidates = survivors
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

    def _filter(self, intent: Intent, snap: Snapshot) -> list[Candidate]:
        request = intent.request
        total = request.estimated_input_tokens + request.output_tokens
        by_id = snap.fleet.by_id
        now = snap.now
        model = intent.model
        kept = []
        for c in intent.candidates:
            backend = by_id.get(c.id)
            if backend is None:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.NOT_IN_REGISTRY,
                    f"backend {c.id} is not in the registry",
                    "re-add the backend or reload the configuration",
                )
                continue
            spec = c.model if backend is c.backend else backend.model(model)
            missing = _missing(request.needs_vision, request.needs_tools, request.needs_json_mode, spec)
            if missing:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.MISSING_CAPABILITY,
                    f"backend {c.id} does not offer {', '.join(missing)} for model '{model}'",
                    f"use a backend whose model declares {', '.join(missing)}, or drop the requirement",
                )
                continue
            assert spec is not None
            if spec.context_length is not None and total > spec.context_length:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.CONTEXT_TOO_LONG,
                    f"{total} tokens (input + output estimate) exceed the context length "
                    f"{spec.context_length} of model '{model}' on {c.id}",
                    "shorten the prompt, lower max_output_tokens, or use a model with a longer context",
                )
                continue
            live = c.live
            status = live.status
            if status == BackendStatus.HEALTHY:
                if backend.max_concurrency > 0 and len(live.in_flight) >= backend.max_concurrency:
                    intent.exclude(
                        self.name,
                        c,
                        ExclusionCode.SATURATED,
                        f"backend {c.id} has {len(live.in_flight)} requests in flight "
                        f"(max_concurrency {backend.max_concurrency})",
                        "retry shortly, or raise max_concurrency / add capacity",
                    )
                    continue
                kept.append(c)
            elif status == BackendStatus.LOADING:
                eta = live.loading_eta_ms(now)
                progress = f", {live.loading_progress}% loaded" if live.loading_progress is not None else ""
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.LOADING,
                    f"backend {c.id} is loading model '{model}'{progress}",
                    f"retry in about {eta} ms" if eta else "retry when loading completes (ETA unknown)",
                )
            elif status == BackendStatus.DRAINING:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.DRAINING,
                    f"backend {c.id} is draining{': ' + live.reason if live.reason else ''}",
                    "use another backend; an operator set it to drain",
                )
            else:
                word = "unhealthy" if status == BackendStatus.UNHEALTHY else "of unknown health"
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.UNHEALTHY,
                    f"backend {c.id} is {word}{': ' + live.reason if live.reason else ''}",
                    "check the backend; it returns when health checks or an operator mark it healthy",
                )
        return kept

    @staticmethod
    def _smart(intent: Intent, snap: Snapshot, survivors: list[Candidate]) -> None:
        config = snap.fleet.config
        w = config.routing.weights
        thr = config.quality.ttft_penalty_threshold_ms
        halve = intent.budget_status in (BudgetStatus.SOFT_LIMIT, BudgetStatus.HARD_LIMIT)
        now = snap.now
        scored: list[tuple[int, Candidate]] = []
        for c in survivors:
            live = c.live
            ps = 100 - min(c.priority, 100)
            ls = 100 - min(len(live.in_flight), 100)
            lat = 100 - min(int(live.latency_ema_ms) // 10, 100)
            score = (ps * w.priority + ls * w.load + lat * w.latency) // 100
            adjustments: list[str] = []
            if halve and c.zone == PrivacyZone.OPEN:
                score //= 2
                adjustments.append("soft_limit_halved")
            if thr >= 1 and live.stats.ttft_n:
                ttft = int(live.stats.snapshot(now)[2])
                if ttft > thr:
                    penalty = score * min(ttft - thr, thr) // thr
                    score -= penalty
                    adjustments.append(f"ttft_penalty:-{penalty}")
            scored.append((score, c))
            if intent.trace:
                intent.scores.append(
                    CandidateScore(intent.model, c.id, score, ps, ls, lat, tuple(adjustments))
                )
        best_score, best = scored[0]
        for score, c in scored[1:]:
            if score > best_score:  # ties go to the earlier backend in config order
                best_score, best = score, c
        intent.winner = best
        intent.score = best_score
        intent.reason = f"highest_score:{best.id}:{best_score}"
        ranked = sorted(scored, key=lambda sc: (-sc[0], sc[1].index))
        intent.alternates = tuple(c.id for _, c in ranked if c is not best)[:MAX_ALTERNATES]


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
