"""nexus.v1 messages <-> domain values, with the field validation of SPEC §9."""

from __future__ import annotations

import math
import uuid
from enum import IntEnum
from typing import Any, TypeVar

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.config.schema import Config, LimitsConfig
from nexus_grpc.domain.backend import BACKEND_TYPES, BackendConfig, ModelSpec, default_zone
from nexus_grpc.domain.decision import BudgetView, Decision, Exclusion, Queue, Reject, Route
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.money import NANO, Price, PriceError
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.pipeline.executor import cap_exclusions

MAX_COST_USD = 1_000_000.0


class InvalidArgument(ValueError):
    """A malformed request field; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _text(value: str, field: str, limit: int, *, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument(field, "is required and must not be empty")
    if len(value.encode()) > limit:
        raise InvalidArgument(field, f"is {len(value.encode())} bytes; at most {limit} allowed")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def _count(value: int, field: str, limit: int) -> int:
    if value > limit:
        raise InvalidArgument(field, f"{value} is above the limit of {limit}")
    return value


E = TypeVar("E", bound=IntEnum)


def _enum(cls: type[E], value: int, field: str) -> E:
    try:
        return cls(value)
    except ValueError:
        raise InvalidArgument(field, f"unknown enum number {value}") from None


def request_from_proto(
    msg: dpb.DecideRequest | dpb.ExplainRequest, limits: LimitsConfig, *, require_tenant: bool = False
) -> DecisionRequest:
    if len(msg.labels) > limits.max_labels:
        raise InvalidArgument("labels", f"{len(msg.labels)} labels; at most {limits.max_labels} allowed")
    labels = {}
    for key, value in msg.labels.items():
        _text(key, "labels", limits.max_label_key_len, required=True)
        _text(value, f"labels[{key}]", limits.max_label_value_len)
        labels[key] = value
    tenant = _text(msg.tenant, "tenant", limits.max_id_len)
    if require_tenant and not tenant:
        raise InvalidArgument("tenant", "is required by [routing.budget] require_tenant")
    if msg.min_tier > 5:
        raise InvalidArgument("min_tier", f"{msg.min_tier} is out of range 0..5")
    return DecisionRequest(
        request_id=_text(msg.request_id, "request_id", limits.max_id_len) or uuid.uuid4().hex,
        model=_text(msg.model, "model", limits.max_model_len, required=True),
        estimated_input_tokens=_count(
            msg.estimated_input_tokens, "estimated_input_tokens", limits.max_tokens
        ),
        max_output_tokens=_count(msg.max_output_tokens, "max_output_tokens", limits.max_tokens),
        needs_vision=msg.needs_vision,
        needs_tools=msg.needs_tools,
        needs_json_mode=msg.needs_json_mode,
        stream=msg.stream,
        tier_mode=_enum(TierMode, msg.tier_mode, "tier_mode"),
        privacy=_enum(PrivacyZone, msg.privacy, "privacy"),
        min_tier=msg.min_tier,
        priority=_enum(Priority, msg.priority, "priority"),
        tenant=tenant,
        labels=labels,
    )


def outcome_from_proto(msg: dpb.ReportOutcomeRequest, limits: LimitsConfig) -> Outcome:
    if not msg.HasField("success") and not msg.HasField("http_status"):
        raise InvalidArgument("success", "either success or http_status must be set")
    if msg.HasField("http_status") and not 100 <= msg.http_status <= 599:
        raise InvalidArgument("http_status", f"{msg.http_status} is not an HTTP status")
    cost = msg.cost_usd if msg.HasField("cost_usd") else None
    if cost is not None and (not math.isfinite(cost) or not 0 <= cost <= MAX_COST_USD):
        raise InvalidArgument("cost_usd", f"must be finite and within 0..{MAX_COST_USD:.0f}")

    def opt(name: str) -> int | None:
        m: Any = msg
        return _count(getattr(m, name), name, limits.max_tokens) if m.HasField(name) else None

    return Outcome(
        request_id=_text(msg.request_id, "request_id", limits.max_id_len, required=True),
        backend_id=_text(msg.backend_id, "backend_id", limits.max_id_len, required=True),
        model=_text(msg.model, "model", limits.max_model_len),
        success=msg.success if msg.HasField("success") else None,
        http_status=msg.http_status if msg.HasField("http_status") else None,
        latency_ms=msg.latency_ms if msg.HasField("latency_ms") else None,
        ttft_ms=msg.ttft_ms if msg.HasField("ttft_ms") else None,
        input_tokens=opt("input_tokens"),
        output_tokens=opt("output_tokens"),
        cost_usd=cost,
        tenant=_text(msg.tenant, "tenant", limits.max_id_len),
    )


def budget_to_proto(view: BudgetView | None) -> tpb.BudgetState | None:
    if view is None:
        return None
    return tpb.BudgetState(
        scope=view.scope,
        month=view.month,
        spent_usd=view.spent_nano / NANO,
        reserved_usd=view.reserved_nano / NANO,
        limit_usd=view.limit_nano / NANO,
        utilization_percent=view.utilization_percent,
        remaining_usd=view.remaining_nano / NANO,
        status=int(view.status),  # type: ignore[arg-type]
    )


_REASONS: dict[Exclusion, tpb.RejectionReason] = {}
_REASONS_MAX = 20_000


def reason_to_proto(e: Exclusion) -> tpb.RejectionReason:
    """Most exclusions are prepared once per fleet or state version and reused by many decisions;
    so is their wire form (protobuf copies it into each response)."""
    msg = _REASONS.get(e)
    if msg is None:
        if len(_REASONS) >= _REASONS_MAX:
            _REASONS.clear()
        msg = _REASONS[e] = _reason_message(e)
    return msg


def _reason_message(e: Exclusion) -> tpb.RejectionReason:
    return tpb.RejectionReason(
        backend_id=e.backend_id,
        model=e.model,
        reconciler=e.reconciler,
        code=int(e.code),  # type: ignore[arg-type]
        reason=e.reason,
        suggested_action=e.suggested_action,
    )


def decision_to_proto(decision: Decision, *, explain: bool = False) -> dpb.DecideResponse:
    shown, omitted = cap_exclusions(decision.exclusions, explain)
    reasons = [reason_to_proto(e) for e in shown]
    est = decision.cost_estimate
    out = dpb.DecideResponse(
        request_id=decision.request_id,
        requested_model=decision.requested_model,
        resolved_model=decision.resolved_model,
        cost_estimate=tpb.CostEstimate(
            input_tokens=est.input_tokens, output_tokens=est.output_tokens, cost_usd=est.cost_nano / NANO
        ),
        budget=budget_to_proto(decision.budget),
        exclusions=reasons,
        exclusions_omitted=omitted,
    )
    v = decision.verdict
    if isinstance(v, Route):
        out.route.CopyFrom(
            dpb.Route(
                backend_id=v.backend_id,
                url=v.url,
                backend_type=v.backend_type,
                privacy_zone=int(v.privacy_zone),  # type: ignore[arg-type]
                model=v.model,
                reason=v.reason,
                score=v.score,
                fallback_used=v.fallback_used,
                alternates=v.alternates,
            )
        )
    elif isinstance(v, Queue):
        out.queue.CopyFrom(
            dpb.Queue(
                model=v.model,
                reason=v.reason,
                estimated_wait_ms=v.estimated_wait_ms,
                retry_after_ms=v.retry_after_ms,
            )
        )
    elif isinstance(v, Reject):
        out.reject.CopyFrom(
            dpb.Reject(
                code=int(v.code),  # type: ignore[arg-type]
                message=v.message,
                reasons=reasons,
                retry_after_ms=v.retry_after_ms,
            )
        )
    return out


def explain_to_proto(decision: Decision) -> dpb.ExplainResponse:
    return dpb.ExplainResponse(
        decision=decision_to_proto(decision, explain=True),
        stages=[
            dpb.StageTrace(
                model=t.model,
                reconciler=t.reconciler,
                duration_us=t.duration_us,
                candidates_in=t.candidates_in,
                candidates_out=t.candidates_out,
                exclusions=[reason_to_proto(e) for e in t.exclusions],
                notes=dict(t.notes),
            )
            for t in decision.stages
        ],
        scores=[
            dpb.CandidateScore(
                model=s.model,
                backend_id=s.backend_id,
                score=s.score,
                priority_score=s.priority_score,
                load_score=s.load_score,
                latency_score=s.latency_score,
                adjustments=s.adjustments,
            )
            for s in decision.scores
        ],
    )


def backend_to_proto(backend: BackendConfig, live: LiveBackend, now: float) -> tpb.Backend:
    count, failures, ttft = live.stats.snapshot(now)
    msg = tpb.Backend(
        id=backend.id,
        url=backend.url,
        type=backend.type,
        zone=int(backend.zone),  # type: ignore[arg-type]
        tier=backend.tier,
        priority=backend.priority,
        max_concurrency=backend.max_concurrency,
        models=[
            tpb.Model(
                id=m.id,
                context_length=m.context_length,
                vision=m.vision,
                tools=m.tools,
                json_mode=m.json_mode,
            )
            for m in backend.models
        ],
        status=int(live.status),  # type: ignore[arg-type]
        in_flight=len(live.in_flight),
        latency_ema_ms=live.latency_ema_ms,
        error_rate=failures / count if count else 0.0,
        avg_ttft_ms=ttft,
        loading_eta_ms=live.loading_eta_ms(now),
        loading_progress_percent=live.loading_progress or 0,
    )
    if backend.pricing is not None:
        msg.pricing.CopyFrom(
            tpb.Pricing(
                input_per_1k=backend.pricing.input_per_1k, output_per_1k=backend.pricing.output_per_1k
            )
        )
    return msg


def backend_from_proto(msg: tpb.Backend, config: Config) -> BackendConfig:
    """An upserted backend; absent configuration fields take the config defaults."""
    limit = config.limits.max_id_len
    bid = _text(msg.id, "backend.id", limit, required=True)
    btype = msg.type.lower() or "generic"
    if btype not in BACKEND_TYPES:
        raise InvalidArgument(
            "backend.type", f"unknown type {msg.type!r}; one of {', '.join(sorted(BACKEND_TYPES))}"
        )
    zone = _enum(PrivacyZone, msg.zone, "backend.zone")
    if zone == PrivacyZone.UNSPECIFIED:
        zone = default_zone(btype)
        if zone == PrivacyZone.UNSPECIFIED:
            raise InvalidArgument("backend.zone", "is required for a generic backend")
    if not msg.url.startswith(("http://", "https://")):
        raise InvalidArgument("backend.url", "must be an http:// or https:// URL")
    tier = msg.tier if msg.HasField("tier") else 1
    if not 1 <= tier <= 5:
        raise InvalidArgument("backend.tier", f"{tier} is out of range 1..5")
    priority = msg.priority if msg.HasField("priority") else 50
    if priority > 100:
        raise InvalidArgument("backend.priority", f"{priority} is out of range 0..100")
    pricing = None
    if msg.HasField("pricing"):
        try:
            pricing = Price.per_1k(msg.pricing.input_per_1k, msg.pricing.output_per_1k)
        except PriceError as exc:
            raise InvalidArgument("backend.pricing", str(exc)) from None
    if not msg.models:
        raise InvalidArgument("backend.models", "at least one model is required")
    models = []
    for i, m in enumerate(msg.models):
        _text(m.id, f"backend.models[{i}].id", config.limits.max_model_len, required=True)
        ctx = m.context_length if m.HasField("context_length") else None
        models.append(ModelSpec(m.id, ctx, m.vision, m.tools, m.json_mode))
    return BackendConfig(
        id=bid,
        url=_text(msg.url, "backend.url", 2048),
        type=btype,
        zone=zone,
        tier=tier,
        priority=priority,
        max_concurrency=msg.max_concurrency if msg.HasField("max_concurrency") else 0,
        pricing=pricing,
        models=tuple(models),
    )
