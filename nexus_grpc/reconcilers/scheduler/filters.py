"""The scheduler's filters, registered in `FILTERS` in the order they run. A filter is a
function `filter(intent, snap) -> None` that narrows `intent.candidates` under the stage contract
(one exclusion per dropped backend, in the scheduler's name, never one added):

1. `capability_filter` (static, memoized per fleet version by `capability_rule`): not in the
   registry, the model missing, or a needed capability (`vision`, `tools`, `json_mode`) missing —
   every missing one listed;
2. `availability_filter` (the request's numbers, then live state), per candidate in one pass:
   `context_exclusion` — input + output estimate above the context length — else
   `status_exclusion` — UNHEALTHY/UNKNOWN, DRAINING, LOADING (reason with progress, suggestion
   with the ETA), then SATURATED (in flight >= max_concurrency when that is > 0). One pass, not
   two, keeps the reasons in candidate order (a Reject lists them so).

Static checks come first so that a backend that could never serve the request is never waited
for. Live reasons are prepared once per candidate and what their text depends on
(`intent.prepared_reason`).
"""

from __future__ import annotations

from collections.abc import Callable

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode
from nexus_grpc.pipeline.intent import Intent, prepared_reason
from nexus_grpc.pipeline.snapshot import Candidate, Fleet, Snapshot

NAME = "SchedulerReconciler"
# enum members as module constants: class attribute access on an Enum is slow in Python 3.11
HEALTHY, LOADING, DRAINING = BackendStatus.HEALTHY, BackendStatus.LOADING, BackendStatus.DRAINING


def capability_rule(
    fleet: Fleet, c: Candidate, model: str, vision: bool, tools: bool, json_mode: bool
) -> Exclusion | None:
    """Static: registry membership and capabilities."""
    backend = fleet.by_id.get(c.id)
    if backend is None:
        return Exclusion(
            c.id,
            model,
            NAME,
            ExclusionCode.NOT_IN_REGISTRY,
            f"backend {c.id} is not in the registry",
            "re-add the backend or reload the configuration",
        )
    spec = c.model if backend is c.backend else backend.model(model)
    if spec is None:
        missing = ["the model"]
    else:
        missing = [
            name
            for name, needed, offered in (
                ("vision", vision, spec.vision),
                ("tools", tools, spec.tools),
                ("json_mode", json_mode, spec.json_mode),
            )
            if needed and not offered
        ]
    if not missing:
        return None
    listed = ", ".join(missing)
    return Exclusion(
        c.id,
        model,
        NAME,
        ExclusionCode.MISSING_CAPABILITY,
        f"backend {c.id} does not offer {listed} for model '{model}'",
        f"use a backend whose model declares {listed}, or drop the requirement",
    )


def context_exclusion(c: Candidate, model: str, total: int) -> Exclusion | None:
    if total <= c.ctx_limit:
        return None
    return Exclusion(
        c.id,
        model,
        NAME,
        ExclusionCode.CONTEXT_TOO_LONG,
        f"{total} tokens (input + output estimate) exceed the context length "
        f"{c.ctx_limit} of model '{model}' on {c.id}",
        "shorten the prompt, lower max_output_tokens, or use a model with a longer context",
    )


def saturated(c: Candidate) -> bool:
    limit = c.backend.max_concurrency
    return limit > 0 and len(c.live.in_flight) >= limit


def status_exclusion(c: Candidate, model: str, now: float) -> Exclusion | None:
    """Health, drain, loading and saturation of a backend that could serve the request."""
    live = c.live
    status = live.status
    if status == HEALTHY:
        if not saturated(c):
            return None
        return prepared_reason(c, saturated_reason, model, len(live.in_flight), c.backend.max_concurrency)
    if status == LOADING:
        return loading_exclusion(c, model, live.loading_eta_ms(now))
    return prepared_reason(c, status_reason, model, status, live.reason)


def loading_exclusion(c: Candidate, model: str, eta_ms: int) -> Exclusion:
    """Prepared once per (loading progress, ETA rounded up to 100 ms)."""
    return prepared_reason(c, loading_reason, model, c.live.loading_progress, -(-eta_ms // 100) * 100)


# The prepared reasons' builders (`intent.prepared_reason`): each text depends only on the
# arguments and the candidate's id.


def saturated_reason(c: Candidate, model: str, in_flight: int, limit: int) -> Exclusion:
    return Exclusion(
        c.id,
        model,
        NAME,
        ExclusionCode.SATURATED,
        f"backend {c.id} has {in_flight} requests in flight (max_concurrency {limit})",
        "retry shortly, or raise max_concurrency / add capacity",
    )


def status_reason(c: Candidate, model: str, status: BackendStatus, detail: str) -> Exclusion:
    """DRAINING, UNHEALTHY or UNKNOWN, with the reason the state was set for (`detail`)."""
    said = f": {detail}" if detail else ""
    if status == DRAINING:
        return Exclusion(
            c.id,
            model,
            NAME,
            ExclusionCode.DRAINING,
            f"backend {c.id} is draining{said}",
            "use another backend; an operator set it to drain",
        )
    word = "unhealthy" if status == BackendStatus.UNHEALTHY else "of unknown health"
    return Exclusion(
        c.id,
        model,
        NAME,
        ExclusionCode.UNHEALTHY,
        f"backend {c.id} is {word}{said}",
        "check the backend; it returns when health checks or an operator mark it healthy",
    )


def loading_reason(c: Candidate, model: str, progress: int | None, eta: int) -> Exclusion:
    """`eta`: ms, already rounded up to 100 ms (0: unknown)."""
    loaded = f", {progress}% loaded" if progress is not None else ""
    return Exclusion(
        c.id,
        model,
        NAME,
        ExclusionCode.LOADING,
        f"backend {c.id} is loading model '{model}'{loaded}",
        f"retry in about {eta} ms" if eta else "retry when loading completes (ETA unknown)",
    )


# -- the registered filters -------------------------------------------------------------------

Filter = Callable[[Intent, Snapshot], None]


def capability_filter(intent: Intent, snap: Snapshot) -> None:
    """Static: `capability_rule` for the request's needs."""
    request = intent.request
    needs = (intent.model, request.needs_vision, request.needs_tools, request.needs_json_mode)
    intent.apply_static(snap, capability_rule, needs)


def availability_filter(intent: Intent, snap: Snapshot) -> None:
    """The request's numbers, then live state: `context_exclusion`, else `status_exclusion`."""
    request = intent.request
    model = intent.model
    total = request.estimated_input_tokens + request.output_tokens
    now = snap.monotonic
    kept: list[Candidate] = []
    for c in intent.candidates:
        excluded = (context_exclusion(c, model, total) if total > c.ctx_limit else None) or status_exclusion(
            c, model, now
        )
        if excluded is None:
            kept.append(c)
        else:
            intent.exclusions.append(excluded)
    intent.narrow(kept)


FILTERS: tuple[Filter, ...] = (capability_filter, availability_filter)
