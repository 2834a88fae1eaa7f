"""nexus.v1 messages <-> domain values. Field rules come from `domain.validate`, the one
validator every edge shares; a bad field raises FieldError naming it (INVALID_ARGUMENT)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypeVar

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.config.schema import Config, LimitsConfig
from nexus_grpc.domain import validate
from nexus_grpc.domain.backend import BackendConfig, ModelSpec, default_zone
from nexus_grpc.domain.decision import BudgetView, Decision, Exclusion, Queue, Reject, Route
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.money import NANO, Price, PriceError
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.errors import FieldError
from nexus_grpc.pipeline.executor import shown_exclusions
from nexus_grpc.state.flights import DecisionIds, is_decision_id

# Request ids generated for requests that bring none: a random prefix and a counter (no uuid per
# request on the hot path).
_request_ids = DecisionIds()


E = TypeVar("E", bound=IntEnum)


def _enum(cls: type[E], value: int, field: str) -> E:
    try:
        return cls(value)
    except ValueError:
        raise FieldError(field, f"unknown enum number {value}") from None


def request_from_proto(
    msg: dpb.DecideRequest | dpb.ExplainRequest, limits: LimitsConfig, *, require_tenant: bool = False
) -> DecisionRequest:
    if len(msg.labels) > limits.max_labels:
        raise FieldError("labels", f"{len(msg.labels)} labels; at most {limits.max_labels} allowed")
    labels = {}
    for key, value in msg.labels.items():
        validate.label_key(key, "labels", limits.max_label_key_len)
        validate.label_value(value, f"labels[{key}]", limits.max_label_value_len)
        labels[key] = value
    tenant = validate.tenant(msg.tenant, "tenant", limits.max_id_len)
    if require_tenant and not tenant:
        raise FieldError("tenant", "is required by [routing.budget] require_tenant")
    if msg.min_tier > 5:
        raise FieldError("min_tier", f"{msg.min_tier} is out of range 0..5")
    return DecisionRequest(
        request_id=validate.identifier(msg.request_id, "request_id", limits.max_id_len) or _request_ids(),
        model=validate.model_name(msg.model, "model", limits.max_model_len, required=True),
        estimated_input_tokens=validate.token_count(
            msg.estimated_input_tokens, "estimated_input_tokens", limits.max_tokens
        ),
        max_output_tokens=validate.token_count(msg.max_output_tokens, "max_output_tokens", limits.max_tokens),
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
        raise FieldError("success", "either success or http_status must be set")
    if msg.HasField("http_status") and not 100 <= msg.http_status <= 599:
        raise FieldError("http_status", f"{msg.http_status} is not an HTTP status")
    decision_id = validate.identifier(msg.decision_id, "decision_id", limits.max_id_len)
    if decision_id and not is_decision_id(decision_id):
        raise FieldError("decision_id", f"{decision_id!r} is not a decision id this service issues")
    request_id = validate.identifier(
        msg.request_id, "request_id", limits.max_id_len, required=not decision_id
    )
    cost = validate.cost_usd(msg.cost_usd, "cost_usd") if msg.HasField("cost_usd") else None

    def opt(name: str) -> int | None:
        m: Any = msg
        return validate.token_count(getattr(m, name), name, limits.max_tokens) if m.HasField(name) else None

    return Outcome(
        request_id=request_id,
        backend_id=validate.identifier(msg.backend_id, "backend_id", limits.max_id_len, required=True),
        model=validate.model_name(msg.model, "model", limits.max_model_len),
        success=msg.success if msg.HasField("success") else None,
        http_status=msg.http_status if msg.HasField("http_status") else None,
        latency_ms=msg.latency_ms if msg.HasField("latency_ms") else None,
        ttft_ms=msg.ttft_ms if msg.HasField("ttft_ms") else None,
        input_tokens=opt("input_tokens"),
        output_tokens=opt("output_tokens"),
        cost_usd=cost,
        tenant=validate.tenant(msg.tenant, "tenant", limits.max_id_len),
        decision_id=decision_id,
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


def reason_to_proto(e: Exclusion) -> tpb.RejectionReason:
    return tpb.RejectionReason(
        backend_id=e.backend_id,
        model=e.model,
        reconciler=e.reconciler,
        code=int(e.code),  # type: ignore[arg-type]
        reason=e.reason,
        suggested_action=e.suggested_action,
    )


def decision_to_proto(decision: Decision, *, explain: bool = False) -> dpb.DecideResponse:
    shown, omitted = shown_exclusions(decision, explain)
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
                decision_id=decision.decision_id,
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
    """An upserted backend; absent configuration fields take the config defaults. Validated by
    the same rules as a `[[backends]]` entry of the config file."""
    limits = config.limits
    btype = msg.type.strip().lower() or "generic"
    zone = _enum(PrivacyZone, msg.zone, "backend.zone")
    if zone == PrivacyZone.UNSPECIFIED:
        zone = default_zone(btype)
    pricing = None
    if msg.HasField("pricing"):
        try:
            pricing = Price.per_1k(msg.pricing.input_per_1k, msg.pricing.output_per_1k)
        except PriceError as exc:
            raise FieldError("backend.pricing", str(exc)) from None
    backend = BackendConfig(
        id=msg.id,
        url=msg.url,
        type=btype,
        zone=zone,
        tier=msg.tier if msg.HasField("tier") else 1,
        priority=msg.priority if msg.HasField("priority") else 50,
        max_concurrency=msg.max_concurrency if msg.HasField("max_concurrency") else 0,
        pricing=pricing,
        models=tuple(
            ModelSpec(
                m.id,
                m.context_length if m.HasField("context_length") else None,
                m.vision,
                m.tools,
                m.json_mode,
            )
            for m in msg.models
        ),
    )
    problems = validate.backend_problems(
        backend, max_id_len=limits.max_id_len, max_model_len=limits.max_model_len
    )
    problems += _unpriced_under_budget(backend, config)
    if problems:
        first = problems[0]
        more = (
            f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
            if len(problems) > 1
            else ""
        )
        raise FieldError(f"backend.{first.field}", first.problem + more)
    return backend


def _unpriced_under_budget(backend: BackendConfig, config: Config) -> list[FieldError]:
    """Under a budget, an open-zone model must have a price, or the budget cannot count it."""
    if config.routing.budget is None or backend.zone != PrivacyZone.OPEN or backend.pricing is not None:
        return []
    if config.default_price is not None:
        return []
    return [
        FieldError(
            f"models[{i}].id",
            f"open-zone model {m.id!r} has no price, so the budget cannot count it; set backend.pricing",
        )
        for i, m in enumerate(backend.models)
        if m.id not in config.pricing
    ]
