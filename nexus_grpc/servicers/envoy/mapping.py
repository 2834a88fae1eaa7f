"""Envoy request → DecisionRequest: `x-nexus-*` headers, `x-request-id`, and with
`[envoy] read_body` an OpenAI-style JSON body. Protocol-free: both filters call this.

Every value goes through `domain.validate`, the validator the gRPC API uses, so a value Envoy
brings is accepted or refused exactly as the same value in a `DecideRequest` would be; a refusal
is a `HeaderError` naming the header or the body field, answered with a 400.

The body is read strictly because the backend reads it too: a body the policy did not judge must
never reach a backend. So a JSON body that does not parse, repeats a key, or names another model
than `x-nexus-model` is refused rather than forwarded; a body of another content type is not read
for the decision, but it is refused when it is a JSON object naming a model the decision was not
made for (some backends parse JSON whatever the content type says).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nexus_grpc.config.schema import Config, LimitsConfig
from nexus_grpc.domain import validate
from nexus_grpc.domain.endpoints import EndpointSubset
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.errors import FieldError

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
# Top-level body keys nexus-grpc reads. A case variant of one ("Model") is refused: a backend with
# a case-insensitive JSON decoder (Go's encoding/json) would read it where nexus-grpc does not.
BODY_KEYS = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "tools", "response_format", "stream"}
)
_BODY_KEYS_FOLDED = {key.casefold(): key for key in BODY_KEYS}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})
_MAX_DIGITS = 20  # longer digit strings are above any token limit (and not worth converting)

# The endpoint-picker metadata an endpoint-picking gateway exchanges with its picker.
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
LB_NAMESPACE = "envoy.lb"
DESTINATION_KEY = "x-gateway-destination-endpoint"
SERVED_KEY = "x-gateway-destination-endpoint-served"
SUBSET_PARAM = f"{SUBSET_NAMESPACE}/{SUBSET_KEY}"
MAX_SUBSET = 4096  # endpoints in one subset

T = TypeVar("T")


class HeaderError(FieldError):
    """A malformed request attribute; answered with a 400 naming `param` (a header, or a body
    field such as `model`) and an error `code`."""

    def __init__(self, param: str, problem: str, code: str = "invalid_header") -> None:
        super().__init__(param, problem)
        self.code = code

    @property
    def param(self) -> str:
        return self.field


@dataclass(slots=True)
class EnvoyStats:
    """Adapter counters (read by tests and telemetry)."""

    bodies_read: int = 0
    bodies_ignored: int = 0
    bodies_rewritten: int = 0
    responses_not_read: int = 0  # read_response_usage skipped: chunked, or above USAGE_BODY_MAX
    holds: int = 0
    holds_timed_out: int = 0
    outcomes_reported: int = 0
    closed_without_response: int = 0
    duplex_streams: int = 0  # ext_proc streams whose request body is FULL_DUPLEX_STREAMED
    body_chunks_sent: int = 0  # streamed body pieces sent back to Envoy
    subsets_seen: int = 0  # requests that carried an endpoint subset
    served_elsewhere: int = 0  # the gateway served another endpoint than routed (an alternate)
    served_unknown: int = 0  # the served endpoint was unreadable or not the Route's: kept the routed
    shed: int = 0  # requests answered 429 as shed: over a budget, or normal priority near it


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


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 64 else shown[:61] + "..."


def _checked(check: Callable[..., T], *args: Any, code: str = "invalid_header", **kwargs: Any) -> T:
    """Run a `domain.validate` check; its FieldError becomes a HeaderError (same field, same words)."""
    try:
        return check(*args, **kwargs)
    except HeaderError:
        raise
    except FieldError as exc:
        raise HeaderError(exc.field, exc.problem, code) from None


# -- headers -------------------------------------------------------------------------------------


def request_id(value: str | None, limit: int) -> str:
    """`x-request-id` is a correlation label and nothing more (decisions have their own ids): a
    missing or unusable one is replaced by a generated id, never refused."""
    if value:
        try:
            return validate.identifier(value, "x-request-id", limit)
        except FieldError:
            pass
    return uuid.uuid4().hex


def _digits(headers: dict[str, str], name: str) -> int | None:
    """A header holding a non-negative decimal integer, or None when absent."""
    raw = headers.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value.isascii() or not value.isdigit():
        raise HeaderError(name, f"{_show(raw)} is not a non-negative integer")
    if len(value) > _MAX_DIGITS:
        raise HeaderError(name, f"{value[:24]}... is above any limit")
    return int(value)


def _tokens(headers: dict[str, str], name: str, limit: int) -> int | None:
    number = _digits(headers, name)
    return None if number is None else _checked(validate.token_count, number, name, limit)


def fields_from_headers(
    headers: dict[str, str], limits: LimitsConfig, *, adapter: str = "envoy"
) -> RequestFields:
    """Headers (lower-case names) → request fields; a malformed value raises HeaderError."""
    fields = RequestFields(
        request_id=request_id(headers.get("x-request-id"), limits.max_id_len),
        model=_checked(
            validate.model_name, headers.get("x-nexus-model", ""), "x-nexus-model", limits.max_model_len
        ),
        estimated_input_tokens=_tokens(headers, "x-nexus-estimated-tokens", limits.max_tokens),
        max_output_tokens=_tokens(headers, "x-nexus-max-output-tokens", limits.max_tokens),
        tenant=_checked(
            validate.tenant, headers.get("x-nexus-tenant", ""), "x-nexus-tenant", limits.max_id_len
        ),
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
            raise HeaderError("x-nexus-privacy", f"{_show(privacy)} is not 'restricted' or 'open'")
    min_tier = _digits(headers, "x-nexus-min-tier")
    if min_tier is not None and min_tier > 5:
        raise HeaderError("x-nexus-min-tier", f"{min_tier} is out of range 0..5")
    fields.min_tier = min_tier or 0
    flexible = headers.get("x-nexus-flexible")
    if flexible is not None:
        value = flexible.strip().lower()
        if value in _TRUE:
            fields.tier_mode = TierMode.FLEXIBLE
        elif value not in _FALSE:
            raise HeaderError("x-nexus-flexible", f"{_show(flexible)} is not true/1/yes or false/0/no")
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
            raise HeaderError("x-nexus-priority", f"{_show(priority)} is not 'high' or 'normal'")
    return fields


# -- bodies --------------------------------------------------------------------------------------


def is_json_type(content_type: str | None) -> bool:
    """True for application/json and */*+json; a missing content type is read as JSON too (most
    backends parse such a body as JSON)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class _Duplicate(ValueError):
    def __init__(self, key: str, other: str | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.other = other  # the spelling it was seen first with, for a case-insensitive repeat


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: parsers disagree about which copy of a repeated key wins, so a
    document that repeats one is refused instead of guessed at."""
    document: dict[str, Any] = {}
    for key, value in items:
        if key in document:
            raise _Duplicate(key)
        document[key] = value
    return document


@dataclass(frozen=True, slots=True)
class _Parsed:
    document: object
    nonstandard: str | None  # NaN, Infinity or a number out of range: not JSON, though Python reads it


def _parse(text: str) -> _Parsed | None:
    """One JSON document, or None when `text` is not one. Raises _Duplicate for a repeated key
    (at any depth; at the top level also case-insensitively)."""
    odd: list[str] = []

    def constant(name: str) -> float:
        odd.append(name)
        return math.nan

    def number(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            odd.append(literal[:32])
        return value

    try:
        document = json.loads(text, object_pairs_hook=_pairs, parse_constant=constant, parse_float=number)
    except _Duplicate:
        raise
    except (ValueError, RecursionError):  # syntax, an integer too long to convert, nesting too deep
        return None
    if isinstance(document, dict):
        folded: dict[str, str] = {}
        for key in document:
            seen = folded.setdefault(key.casefold(), key)
            if seen != key:
                raise _Duplicate(key, seen)
    return _Parsed(document, odd[0] if odd else None)


def _duplicate_error(exc: _Duplicate) -> HeaderError:
    param = "model" if exc.key.casefold() == "model" else "body"
    if exc.other is None:
        problem = f"the JSON body has the key {_show(exc.key)} more than once; send each key once"
    else:
        problem = (
            f"the JSON body has both {_show(exc.other)} and {_show(exc.key)}, which some backends "
            "read as one key; send it once"
        )
    return HeaderError(param, problem, "invalid_body")


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
            total += len(content.encode("utf-8", "surrogatepass"))
        elif isinstance(content, list):
            for part in content:
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    total += len(part["text"].encode("utf-8", "surrogatepass"))
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
    """A token count from a backend's response: quietly dropped when malformed, capped at the
    limit (a response is never refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, limit)


def _mismatch(judged: str, body_model: object, where: str) -> HeaderError:
    return HeaderError(
        "model",
        f"x-nexus-model names {_show(judged)} but the {where} names {_show(body_model)}; "
        "the backend would read the body's: send one model",
        "model_mismatch",
    )


def _check_foreign(fields: RequestFields, raw: bytes, content_type: str | None) -> None:
    """A body whose content type is not JSON is not read for the decision; but if it is a JSON
    object anyway (as a lenient backend would parse it), it may not name another model than the
    decision judged, nor repeat a key."""
    text = raw.decode("utf-8", "replace").lstrip("\ufeff")
    try:
        parsed = _parse(text)
    except _Duplicate as exc:
        raise _duplicate_error(exc) from None
    if parsed is None or not isinstance(parsed.document, dict):
        return
    for key, value in parsed.document.items():
        if key.casefold() == "model" and value is not None and value != fields.model and fields.model:
            raise _mismatch(fields.model, value, f"body (a JSON object sent as {_show(content_type)})")


def apply_body(
    fields: RequestFields,
    raw: bytes,
    limits: LimitsConfig,
    stats: EnvoyStats,
    content_type: str | None = None,
) -> Body | None:
    """Fill in what the headers left open from an OpenAI-style JSON body, checked as strictly as
    the headers. Returns the parsed body (to rewrite its model), or None when the body is not read
    (empty, another content type, or JSON that is not an object). Raises HeaderError (400) for a
    JSON body that does not parse or repeats a key, a malformed `model` or token count, or a
    `model` other than `x-nexus-model`; nothing else."""
    if not raw.strip():
        stats.bodies_ignored += 1
        return None
    if not is_json_type(content_type):
        _check_foreign(fields, raw, content_type)
        stats.bodies_ignored += 1
        return None
    try:
        text = raw.decode("utf-8")
        parsed = _parse(text)
    except UnicodeDecodeError:
        raise HeaderError("body", "is not valid UTF-8; a JSON body must be", "invalid_body") from None
    except _Duplicate as exc:
        raise _duplicate_error(exc) from None
    if parsed is None:
        raise HeaderError(
            "body", f"is not valid JSON (content type {_show(content_type or 'missing')})", "invalid_body"
        )
    if parsed.nonstandard is not None:
        raise HeaderError("body", f"holds {parsed.nonstandard}, which JSON does not allow", "invalid_body")
    document = parsed.document
    if not isinstance(document, dict):
        stats.bodies_ignored += 1
        return None
    for key in document:
        spelled = _BODY_KEYS_FOLDED.get(key.casefold())
        if spelled is not None and spelled != key:
            raise HeaderError(spelled, f"is spelled {key!r} in the body; write {spelled!r}", "invalid_body")
    stats.bodies_read += 1

    model = document.get("model")
    body_model: str | None = None
    if model is not None:
        if not isinstance(model, str):
            raise HeaderError("model", f"{_show(model)} is not a string", "invalid_body")
        body_model = _checked(
            validate.model_name, model, "model", limits.max_model_len, required=True, code="invalid_body"
        )
        if fields.model and fields.model != body_model:
            raise _mismatch(fields.model, body_model, "body")
        fields.model = body_model

    counts: dict[str, int] = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = document.get(name)
        if value is not None:
            counts[name] = _checked(validate.token_count, value, name, limits.max_tokens, code="invalid_body")
    if fields.max_output_tokens is None:
        fields.max_output_tokens = counts.get("max_completion_tokens", counts.get("max_tokens"))

    messages = document.get("messages")
    if fields.estimated_input_tokens is None:
        fields.estimated_input_tokens = min(_text_bytes(messages) // 4, limits.max_tokens)
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
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a string holding a lone surrogate (valid JSON, not UTF-8): escape it
        return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode()


def build_request(
    fields: RequestFields, config: Config, endpoint_subset: EndpointSubset | None = None
) -> DecisionRequest:
    """The DecisionRequest; no model after headers and body → HeaderError on `model`.
    `endpoint_subset`: the endpoints an endpoint-picking gateway admits (see `endpoint_subset`)."""
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
        endpoint_subset=endpoint_subset,
    )


# -- endpoint-picker metadata ---------------------------------------------------------------------


def endpoint_subset(filter_metadata: Any) -> EndpointSubset | None:
    """The endpoint subset a gateway sent in `envoy.lb.subset_hint` /
    `x-gateway-destination-endpoint-subset` (a list of strings or one comma-separated string;
    each entry `ip:port` or a bare IP), or None when it sent none. An empty list admits nothing.
    Raises HeaderError for an entry that is not an endpoint, or a value of another kind."""
    namespace = filter_metadata.get(SUBSET_NAMESPACE)
    if namespace is None or SUBSET_KEY not in namespace.fields:
        return None
    value = namespace.fields[SUBSET_KEY]
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        items = [value.string_value]
    elif kind == "list_value":
        items = []
        for item in value.list_value.values:
            if item.WhichOneof("kind") != "string_value":
                raise HeaderError(
                    SUBSET_PARAM, "holds a value that is not a string", "invalid_endpoint_subset"
                )
            items.append(item.string_value)
    else:
        raise HeaderError(
            SUBSET_PARAM,
            f"is a {kind or 'missing value'}, not a list of endpoints",
            "invalid_endpoint_subset",
        )
    entries: set[str] = set()
    for item in items:
        for raw in item.split(","):
            part = raw.strip()
            if part:
                entries.add(_checked(validate.endpoint, part, SUBSET_PARAM, code="invalid_endpoint_subset"))
                if len(entries) > MAX_SUBSET:
                    raise HeaderError(
                        SUBSET_PARAM, f"names more than {MAX_SUBSET} endpoints", "invalid_endpoint_subset"
                    )
    return EndpointSubset(frozenset(entries))


def served_endpoint(filter_metadata: Any) -> str | None:
    """The endpoint the gateway reports it sent the request to (`envoy.lb` /
    `x-gateway-destination-endpoint-served`), canonical; None when absent or unreadable."""
    namespace = filter_metadata.get(LB_NAMESPACE)
    if namespace is None or SERVED_KEY not in namespace.fields:
        return None
    value = namespace.fields[SERVED_KEY]
    if value.WhichOneof("kind") != "string_value":
        return None
    try:
        return validate.endpoint(value.string_value.strip(), SERVED_KEY)
    except FieldError:
        return None


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


def stream_usage_tokens(tail: bytes, limit: int) -> tuple[int | None, int | None]:
    """(input, output) tokens from the last server-sent event of a stream that carries a `usage`
    (OpenAI sends one last with `stream_options.include_usage`); `tail` is the stream's end."""
    for raw in reversed(tail.split(b"\n")):
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]" or b'"usage"' not in payload:
            continue
        found = usage_tokens(payload, limit)
        if found != (None, None):
            return found
    return None, None
