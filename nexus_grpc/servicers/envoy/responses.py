"""Decision → what Envoy does: the Route header mutations and the one table of
immediate-response statuses and JSON bodies. Protocol-free: ext_proc and ext_authz each turn a
`Reply` and header pairs into their own protos."""

from __future__ import annotations

import ipaddress
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nexus_grpc.domain.decision import Decision, Exclusion, Queue, Reject, Route, summary_text
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
BAD_REQUEST = (400, "invalid_request_error")
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
    """`ip:port` for an endpoint-picking (ORIGINAL_DST) cluster, only when the URL's host is an IP
    literal; the port defaults to 80 (http) / 443 (https)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def route_headers(decision: Decision, route: Route) -> tuple[list[tuple[str, str]], list[str]]:
    """(headers to set, overwriting any client copy; headers to remove) for a Route."""
    headers = [
        ("x-nexus-backend", route.backend_id),
        ("x-nexus-backend-url", route.url),
        ("x-nexus-model", route.model),
        ("x-nexus-route-reason", route.reason),
        ("x-nexus-request-id", decision.request_id),
        ("x-nexus-decision-id", decision.decision_id),
    ]
    remove: list[str] = []
    endpoint = destination_endpoint(route.url)
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


def available_backends(engine: DecisionEngine, model: str) -> list[str]:
    """Ids of the HEALTHY backends serving `model`, in config order."""
    seen: list[str] = []
    for c in engine.registry.fleet.candidates.get(model, ()):
        if c.live.status == BackendStatus.HEALTHY and c.id not in seen:
            seen.append(c.id)
    return seen


def reject_reply(engine: DecisionEngine, decision: Decision, reject: Reject) -> Reply:
    status, kind = REJECT_STATUS.get(reject.code, UNAVAILABLE)
    code = RejectCode(reject.code).name.lower()
    available = available_backends(engine, decision.resolved_model)
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
    body = {
        "error": {
            "message": reject.message,
            "type": kind,
            "param": "model" if status == 404 else None,
            "code": code,
        },
        "context": context,
    }
    headers = [
        ("content-type", JSON),
        ("x-nexus-rejection-reasons", summary_text(decision.exclusions, engine.pipeline.stage_names)),
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


def error_reply(exc: BaseException, request_id: str) -> Reply:
    """The HTTP answer for an error raised while deciding: the ledger could not store the
    decision's money, or the server sheds load (503, retry shortly) — anything else is a bug."""
    if isinstance(exc, LedgerError | Overloaded):
        code = "ledger_unavailable" if isinstance(exc, LedgerError) else "overloaded"
        status, kind = UNAVAILABLE
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
