"""The scheduler's filters, in the order they run; one exclusion per dropped backend.

- `capability_rule` (static): not in the registry, the model missing, or a needed capability
  (`vision`, `tools`, `json_mode`) missing — every missing one listed;
- `context_exclusion` (the request's numbers): input + output estimate above the context length;
- `status_exclusion` (live state): UNHEALTHY/UNKNOWN, DRAINING, LOADING (reason with progress,
  suggestion with the ETA), then SATURATED (in flight >= max_concurrency when that is > 0).

Static checks come first so that a backend that could never serve the request is never waited
for. Reasons are prepared once per candidate and what their text depends on.
"""

from __future__ import annotations

from nexus_grpc.domain.decision import Exclusion
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode
from nexus_grpc.pipeline.snapshot import Candidate, Fleet

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
        limit = c.backend.max_concurrency
        in_flight = len(live.in_flight)
        return c.reason(
            ("saturated", in_flight, limit),
            lambda: Exclusion(
                c.id,
                model,
                NAME,
                ExclusionCode.SATURATED,
                f"backend {c.id} has {in_flight} requests in flight (max_concurrency {limit})",
                "retry shortly, or raise max_concurrency / add capacity",
            ),
        )
    if status == LOADING:
        return loading_exclusion(c, model, live.loading_eta_ms(now))
    version = live.version

    def build() -> Exclusion:
        detail = f": {live.reason}" if live.reason else ""
        if status == DRAINING:
            return Exclusion(
                c.id,
                model,
                NAME,
                ExclusionCode.DRAINING,
                f"backend {c.id} is draining{detail}",
                "use another backend; an operator set it to drain",
            )
        word = "unhealthy" if status == BackendStatus.UNHEALTHY else "of unknown health"
        return Exclusion(
            c.id,
            model,
            NAME,
            ExclusionCode.UNHEALTHY,
            f"backend {c.id} is {word}{detail}",
            "check the backend; it returns when health checks or an operator mark it healthy",
        )

    return c.reason(("status", version), build)


def loading_exclusion(c: Candidate, model: str, eta_ms: int) -> Exclusion:
    """Prepared once per (state version, ETA rounded up to 100 ms)."""
    live = c.live
    eta = -(-eta_ms // 100) * 100

    def build() -> Exclusion:
        progress = f", {live.loading_progress}% loaded" if live.loading_progress is not None else ""
        return Exclusion(
            c.id,
            model,
            NAME,
            ExclusionCode.LOADING,
            f"backend {c.id} is loading model '{model}'{progress}",
            f"retry in about {eta} ms" if eta else "retry when loading completes (ETA unknown)",
        )

    return c.reason(("loading", live.version, eta), build)
