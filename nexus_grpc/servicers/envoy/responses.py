"""Decision → what Envoy does: the Route header mutations and the one table of
immediate-response statuses and JSON bodies. Protocol-free: ext_proc and ext_authz each turn a
`Reply` and header pairs into their own protos.

The statuses follow what endpoint-picking gateways expect: 503 when no backend can take the
request (none eligible, a Queue that could not be held or ran out, the ledger unavailable), 429
when it is shed (the budget is exhausted, the server is overloaded), 404 for a model nobody
serves, 400 for a malformed request."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from nexus_grpc import text
from nexus_grpc.domain.decision import Decision, Exclusion, Queue, Reject, Route, summary_text
from nexus_grpc.domain.endpoints import endpoint_of
from nexus_grpc.domain.enums import BackendStatus, BudgetStatus, ExclusionCode, RejectCode
from nexus_grpc.domain.money import NANO
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import LedgerError, Overloaded
from nexus_grpc.pipeline.executor import cap_exclusions
from nexus_grpc.servicers.envoy.mapping import HeaderError

JSON = "application/json"

# RejectCode → (HTTP status, OpenAI-style error type); anything else is 503 service_unavailable.
REJECT_STATUS: dict[RejectCode, tuple[int, str]] = {
    RejectCode.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    RejectCode.BUDGET_EXHAUSTED: (429, "rate_limit_error"),
    RejectCode.NO_ELIGIBLE_BACKEND: (503, "service_unavailable"),
    RejectCode.FALLBACK_EXHAUSTED: (503, "service_unavailable"),
}
UNAVAILABLE = (503, "service_unavailable")
SHED = (429, "rate_limit_error")
BAD_REQUEST = (400, "invalid_request_error")
# Exclusions for live state only: such a backend could take the request once it has a free slot
# or its error rate recovers, so it is still listed as available.
_LIVE_ONLY = frozenset({ExclusionCode.SATURATED, ExclusionCode.ERROR_RATE})
_MODELS_SHOWN = 20  # model names in the x-nexus-rejection-reasons of an unknown model
_BUDGET_STATUS_TEXT = {
    BudgetStatus.SOFT_LIMIT: "soft_limit",
    BudgetStatus.HARD_LIMIT: "hard_limit",
    BudgetStatus.UNSPECIFIED: "unknown",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """An immediate HTTP response: status, headers, JSON body, and a short detail for Envoy logs."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    details: str


def retry_after(ms: int) -> str:
    """`retry-after` seconds: ceil(ms / 1000), at least 1."""
    return str(max(1, math.ceil(ms / 1000)))


def destination_endpoint(url: str) -> str | None:
    """`ip:port` for an endpoint-picking cluster, only when the URL's host is an IP literal; the
    port defaults to 80 (http) / 443 (https)."""
    return endpoint_of(url)


def fallback_endpoints(engine: DecisionEngine, route: Route) -> str | None:
    """The endpoint list an endpoint-picking gateway is given: the routed backend's `ip:port`,
    then its alternates' in the Route's order (the gateway tries them in turn), comma-separated;
    backends without an IP endpoint and repeats are left out."""
    by_id = engine.registry.fleet.by_id
    found: list[str] = []
    for backend_id in (route.backend_id, *route.alternates):
        backend = by_id.get(backend_id)
        url = route.url if backend_id == route.backend_id else backend.url if backend else ""
        endpoint = endpoint_of(url) if url else None
        if endpoint is not None and endpoint not in found:
            found.append(endpoint)
    return ",".join(found) or None


def route_headers(
    decision: Decision, route: Route, endpoints: str | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """(headers to set, overwriting any client copy; headers to remove) for a Route.
    `x-gateway-destination-endpoint` is `endpoints` when given (see `fallback_endpoints`), else
    the routed backend's own `ip:port`; a hostname backend gets none."""
    headers = [
        ("x-nexus-backend", route.backend_id),
        ("x-nexus-backend-url", route.url),
        ("x-nexus-model", route.model),
        ("x-nexus-route-reason", route.reason),
        ("x-nexus-request-id", decision.request_id),
        ("x-nexus-decision-id", decision.decision_id),
    ]
    remove: list[str] = []
    endpoint = endpoints if endpoints is not None else destination_endpoint(route.url)
    if endpoint is not None:
        headers.append(("x-gateway-destination-endpoint", endpoint))
    else:
        remove.append("x-gateway-destination-endpoint")
    budget = decision.budget
    if budget is not None and budget.status != BudgetStatus.NORMAL:
        headers += [
            ("x-nexus-budget-status", _BUDGET_STATUS_TEXT[budget.status]),
            ("x-nexus-budget-utilization", f"{budget.utilization_percent:.2f}"),
            ("x-nexus-budget-remaining", f"{budget.remaining_nano / NANO:.6f}"),
        ]
    else:
        remove += ["x-nexus-budget-status", "x-nexus-budget-utilization", "x-nexus-budget-remaining"]
    return headers, remove


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _reason(e: Exclusion) -> dict[str, str]:
    return {
        "backend_id": e.backend_id,
        "model": e.model,
        "reconciler": e.reconciler,
        "code": f"EXCLUSION_CODE_{ExclusionCode(e.code).name}",
        "reason": e.reason,
        "suggested_action": e.suggested_action,
    }


def available_backends(engine: DecisionEngine, decision: Decision) -> list[str]:
    """Ids of the backends that could take this request, in config order: HEALTHY, serving the
    resolved model, and not excluded by this decision for anything but live load (a full slot
    count, an error rate that recovers). A backend the request's privacy, tier, capabilities,
    context, budget or endpoint subset rule out is not available to it."""
    model = decision.resolved_model
    ruled_out = {e.backend_id for e in decision.exclusions if e.model == model and e.code not in _LIVE_ONLY}
    seen: list[str] = []
    for c in engine.registry.fleet.candidates.get(model, ()):
        if c.live.status == BackendStatus.HEALTHY and c.id not in ruled_out and c.id not in seen:
            seen.append(c.id)
    return seen


def _not_served(engine: DecisionEngine, decision: Decision) -> str:
    """The one-line summary of a Reject for a model no backend serves."""
    models = engine.registry.fleet.served_models
    shown = ", ".join(models[:_MODELS_SHOWN]) or "none"
    if len(models) > _MODELS_SHOWN:
        shown += f" and {len(models) - _MODELS_SHOWN} more"
    resolved = decision.resolved_model
    alias = f" (resolved to '{resolved}')" if resolved != decision.requested_model else ""
    return f"model '{decision.requested_model}'{alias} is not served here; available models: {shown}"


def reject_reply(engine: DecisionEngine, decision: Decision, reject: Reject) -> Reply:
    status, kind = REJECT_STATUS.get(reject.code, UNAVAILABLE)
    code = RejectCode(reject.code).name.lower()
    available = available_backends(engine, decision)
    if engine.config.envoy.expose_reasons == "summary":
        counts = Counter(f"EXCLUSION_CODE_{ExclusionCode(e.code).name}" for e in decision.exclusions)
        context: dict[str, Any] = {
            "rejection_reasons": [{"code": c, "count": n} for c, n in counts.items()],
            "available_backend_count": len(available),
        }
    else:
        shown, omitted = cap_exclusions(decision.exclusions, False)
        context = {"rejection_reasons": [_reason(e) for e in shown], "available_backends": available}
        if omitted:
            context["rejection_reasons_omitted"] = omitted
    message = reject.message
    if reject.code == RejectCode.MODEL_NOT_FOUND:
        summary = _not_served(engine, decision)
        context["available_models"] = list(engine.registry.fleet.served_models[:100])
    else:
        summary = summary_text(decision.exclusions, engine.pipeline.stage_names)
    if reject.retry_after_ms > 0:
        wait = reject.retry_after_ms
        message = f"{message}; retry after {text.ms(wait)}"
        context["retry_after_ms"] = wait
    body = {
        "error": {
            "message": message,
            "type": kind,
            "param": "model" if status == 404 else None,
            "code": code,
        },
        "context": context,
    }
    headers = [
        ("content-type", JSON),
        ("x-nexus-rejection-reasons", summary),
        ("x-nexus-request-id", decision.request_id),
    ]
    if reject.retry_after_ms > 0:
        headers.append(("retry-after", retry_after(reject.retry_after_ms)))
    return Reply(status, tuple(headers), _dump(body), f"nexus_reject_{code}")


def queue_reply(decision: Decision, queue: Queue, *, held_ms: int | None) -> Reply:
    """503 + retry-after for a Queue that was not held (ext_authz) or whose hold ran out."""
    status, kind = UNAVAILABLE
    if held_ms is None:
        code = "queued"
        message = f"No backend for '{queue.model}' can take the request now ({queue.reason}); retry later"
    else:
        code = "queue_timeout"
        message = (
            f"No backend for '{queue.model}' became available within {held_ms} ms ({queue.reason}); "
            "retry later"
        )
    body = {
        "error": {"message": message, "type": kind, "param": None, "code": code},
        "context": {
            "model": queue.model,
            "reason": queue.reason,
            "estimated_wait_ms": queue.estimated_wait_ms,
            "retry_after_ms": queue.retry_after_ms,
        },
    }
    headers = (
        ("content-type", JSON),
        ("retry-after", retry_after(queue.retry_after_ms)),
        ("x-nexus-request-id", decision.request_id),
    )
    return Reply(status, headers, _dump(body), f"nexus_{code}")


def bad_request_reply(error: HeaderError) -> Reply:
    status, kind = BAD_REQUEST
    body = {"error": {"message": str(error), "type": kind, "param": error.param, "code": error.code}}
    return Reply(status, (("content-type", JSON),), _dump(body), f"nexus_bad_request_{error.code}")


def gateway_input_reply(error: HeaderError) -> Reply:
    """503 for something the gateway (not the client) sent that cannot be used, such as an
    endpoint subset that names no endpoint: the request cannot be routed, and retrying it
    unchanged does not help the client."""
    status, kind = UNAVAILABLE
    body = {"error": {"message": str(error), "type": kind, "param": error.param, "code": error.code}}
    return Reply(status, (("content-type", JSON),), _dump(body), f"nexus_gateway_{error.code}")


def body_too_large_reply(limit: int, request_id: str) -> Reply:
    """413 for a streamed request body above the most nexus-grpc reads (`[limits]
    max_message_bytes`, the bound a buffered body must fit into too)."""
    body = {
        "error": {
            "message": f"the request body is above {limit} bytes, the most read for a routing "
            f"decision (request id {request_id})",
            "type": "invalid_request_error",
            "param": "body",
            "code": "body_too_large",
        }
    }
    return Reply(413, (("content-type", JSON),), _dump(body), "nexus_body_too_large")


def error_reply(exc: BaseException, request_id: str) -> Reply:
    """The HTTP answer for an error raised while deciding: the ledger could not store the
    decision's money (503), or the server sheds load (429); both retry shortly. Anything else
    is a bug."""
    if isinstance(exc, LedgerError | Overloaded):
        code = "ledger_unavailable" if isinstance(exc, LedgerError) else "overloaded"
        status, kind = UNAVAILABLE if isinstance(exc, LedgerError) else SHED
        body = {
            "error": {
                "message": f"{exc} (request id {request_id})",
                "type": kind,
                "param": None,
                "code": code,
            }
        }
        headers = (("content-type", JSON), ("retry-after", "1"), ("x-nexus-request-id", request_id))
        return Reply(status, headers, _dump(body), f"nexus_{code}")
    return internal_error_reply(request_id)


def internal_error_reply(request_id: str) -> Reply:
    """A bug answered without a traceback (the request fails closed)."""
    status, kind = 500, "internal_error"
    body = {
        "error": {
            "message": f"internal error in the routing decision (request id {request_id})",
            "type": kind,
            "param": None,
            "code": "internal_error",
        }
    }
    return Reply(status, (("content-type", JSON),), _dump(body), "nexus_internal_error")
