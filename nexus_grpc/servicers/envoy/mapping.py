"""Envoy request → DecisionRequest (SPEC §6): `x-nexus-*` headers, `x-request-id`, and with
`[envoy] read_body` an OpenAI-style JSON body. Protocol-free: both filters call this."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from nexus_grpc.config.schema import Config, LimitsConfig
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.domain.request import DecisionRequest

# Headers nexus-grpc sets on a Route: never trusted from a client (shipped configs strip them early,
# and a Route always overwrites them).
BUDGET_HEADERS = ("x-nexus-budget-status", "x-nexus-budget-utilization", "x-nexus-budget-remaining")
ROUTING_HEADERS = (
    "x-nexus-backend",
    "x-nexus-backend-url",
    "x-gateway-destination-endpoint",
    "x-nexus-route-reason",
    "x-nexus-request-id",
    "x-nexus-decision-id",
    *BUDGET_HEADERS,
)
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


class HeaderError(ValueError):
    """A malformed request attribute; answered with a 400 naming `param` (a header or `model`)."""

    def __init__(self, param: str, problem: str, code: str = "invalid_header") -> None:
        super().__init__(f"{param}: {problem}")
        self.param = param
        self.code = code


@dataclass(slots=True)
class EnvoyStats:
    """Adapter counters (read by tests and telemetry)."""

    bodies_read: int = 0
    bodies_ignored: int = 0
    bodies_rewritten: int = 0
    holds: int = 0
    holds_timed_out: int = 0
    outcomes_reported: int = 0
    closed_without_response: int = 0


@dataclass(slots=True)
class RequestFields:
    """What headers (and then the body) said; `None` = not given."""

    request_id: str
    model: str = ""
    estimated_input_tokens: int | None = None
    max_output_tokens: int | None = None
    needs_vision: bool = False
    needs_tools: bool = False
    needs_json_mode: bool = False
    stream: bool = False
    tier_mode: TierMode = TierMode.UNSPECIFIED
    privacy: PrivacyZone = PrivacyZone.UNSPECIFIED
    min_tier: int = 0
    priority: Priority = Priority.UNSPECIFIED
    tenant: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Body:
    """A request body that was read as a JSON object (kept to rewrite its `model`)."""

    document: dict[str, Any]
    model: str | None


def _text(headers: dict[str, str], name: str, limit: int) -> str:
    value = headers.get(name, "").strip()
    if len(value.encode()) > limit:
        raise HeaderError(name, f"is {len(value.encode())} bytes; at most {limit} allowed")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise HeaderError(name, "must not contain control characters")
    return value


def _int(headers: dict[str, str], name: str, limit: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value.isascii() or not value.isdigit():
        raise HeaderError(name, f"{raw[:64]!r} is not a non-negative integer")
    number = int(value)
    if number > limit:
        raise HeaderError(name, f"{number} is above the limit of {limit}")
    return number


def fields_from_headers(
    headers: dict[str, str], limits: LimitsConfig, *, adapter: str = "envoy"
) -> RequestFields:
    """Headers (lower-case names) → request fields; a malformed value raises HeaderError."""
    fields = RequestFields(
        request_id=_text(headers, "x-request-id", limits.max_id_len) or uuid.uuid4().hex,
        model=_text(headers, "x-nexus-model", limits.max_model_len),
        estimated_input_tokens=_int(headers, "x-nexus-estimated-tokens", limits.max_tokens),
        max_output_tokens=_int(headers, "x-nexus-max-output-tokens", limits.max_tokens),
        tenant=_text(headers, "x-nexus-tenant", limits.max_id_len),
        labels={"adapter": adapter},
    )
    privacy = headers.get("x-nexus-privacy")
    if privacy is not None:
        value = privacy.strip().lower()
        if value == "restricted":
            fields.privacy = PrivacyZone.RESTRICTED
        elif value in ("open", "unrestricted", ""):
            fields.privacy = PrivacyZone.OPEN if value else PrivacyZone.UNSPECIFIED
        else:
            raise HeaderError("x-nexus-privacy", f"{privacy[:64]!r} is not 'restricted' or 'open'")
    min_tier = _int(headers, "x-nexus-min-tier", 5)
    fields.min_tier = min_tier or 0
    flexible = headers.get("x-nexus-flexible")
    if flexible is not None:
        value = flexible.strip().lower()
        if value in _TRUE:
            fields.tier_mode = TierMode.FLEXIBLE
        elif value not in _FALSE:
            raise HeaderError("x-nexus-flexible", f"{flexible[:64]!r} is not true/1/yes or false/0/no")
    if "x-nexus-strict" in headers:
        fields.tier_mode = TierMode.STRICT  # present → strict; wins over x-nexus-flexible
    priority = headers.get("x-nexus-priority")
    if priority is not None:
        value = priority.strip().lower()
        if value == "high":
            fields.priority = Priority.HIGH
        elif value in ("normal", ""):
            fields.priority = Priority.NORMAL if value else Priority.UNSPECIFIED
        else:
            raise HeaderError("x-nexus-priority", f"{priority[:64]!r} is not 'high' or 'normal'")
    return fields


def is_json_type(content_type: str | None) -> bool:
    """True for application/json and */*+json; a missing content type is given the benefit."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _text_bytes(messages: object) -> int:
    """UTF-8 bytes of every string `content` and every {"type": "text"} part of `messages`."""
    total = 0
    if not isinstance(messages, list):
        return 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    total += len(part["text"].encode())
    return total


def _has_image(messages: object) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "image_url" for part in content
        ):
            return True
    return False


def _count(value: object, limit: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, limit)


def apply_body(fields: RequestFields, raw: bytes, limits: LimitsConfig, stats: EnvoyStats) -> Body | None:
    """Fill in what the headers left open from an OpenAI-style JSON body. A body that is not a JSON
    object is ignored (headers decide) and counted; a too-long `model` raises HeaderError."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        stats.bodies_ignored += 1
        return None
    stats.bodies_read += 1
    model = document.get("model")
    body_model = model if isinstance(model, str) and model else None
    if not fields.model and body_model is not None:
        if len(body_model.encode()) > limits.max_model_len:
            raise HeaderError("model", f"is {len(body_model.encode())} bytes; at most {limits.max_model_len}")
        if any(ord(ch) < 32 for ch in body_model):
            raise HeaderError("model", "must not contain control characters")
        fields.model = body_model
    messages = document.get("messages")
    if fields.estimated_input_tokens is None:
        fields.estimated_input_tokens = min(_text_bytes(messages) // 4, limits.max_tokens)
    if fields.max_output_tokens is None:
        out = _count(document.get("max_completion_tokens"), limits.max_tokens)
        fields.max_output_tokens = (
            out if out is not None else _count(document.get("max_tokens"), limits.max_tokens)
        )
    fields.needs_vision = fields.needs_vision or _has_image(messages)
    fields.needs_tools = fields.needs_tools or bool(document.get("tools"))
    response_format = document.get("response_format")
    fields.needs_json_mode = fields.needs_json_mode or (
        isinstance(response_format, dict) and response_format.get("type") == "json_object"
    )
    fields.stream = fields.stream or document.get("stream") is True
    return Body(document, body_model)


def rewrite_model(body: Body, model: str) -> bytes | None:
    """The body with `model` replaced, or None when it already names `model` (or names none)."""
    if body.model is None or body.model == model:
        return None
    document = dict(body.document)
    document["model"] = model
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def build_request(fields: RequestFields, config: Config) -> DecisionRequest:
    """The DecisionRequest; no model after headers and body → HeaderError on `model`."""
    if not fields.model:
        raise HeaderError(
            "model", 'is required: set x-nexus-model or send a JSON body with "model"', code="model_required"
        )
    budget = config.routing.budget
    if budget is not None and budget.require_tenant and not fields.tenant:
        raise HeaderError("x-nexus-tenant", "is required by [routing.budget] require_tenant")
    return DecisionRequest(
        request_id=fields.request_id,
        model=fields.model,
        estimated_input_tokens=fields.estimated_input_tokens or 0,
        max_output_tokens=fields.max_output_tokens or 0,
        needs_vision=fields.needs_vision,
        needs_tools=fields.needs_tools,
        needs_json_mode=fields.needs_json_mode,
        stream=fields.stream,
        tier_mode=fields.tier_mode,
        privacy=fields.privacy,
        min_tier=fields.min_tier,
        priority=fields.priority,
        tenant=fields.tenant,
        labels=fields.labels,
    )


def usage_tokens(raw: bytes, limit: int) -> tuple[int | None, int | None]:
    """(input, output) tokens from a non-stream response body's `usage`, when it has one."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return None, None
    tokens_in = _count(usage.get("prompt_tokens", usage.get("input_tokens")), limit)
    tokens_out = _count(usage.get("completion_tokens", usage.get("output_tokens")), limit)
    return tokens_in, tokens_out
