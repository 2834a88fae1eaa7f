"""Fuzz of the wire decoder: whatever bytes or field values a caller sends, converting a request
either succeeds or raises FieldError naming a field — never anything else (which would be an
INTERNAL status for the caller). Example counts are set per test."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.config.schema import LimitsConfig
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.convert import backend_from_proto, outcome_from_proto, request_from_proto
from nexus_grpc.servicers.gate import Malformed, _lenient
from nexus_grpc.testing.builders import budget_config, config

LIMITS = LimitsConfig()
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
uint32 = st.integers(0, 2**32 - 1)
enums = st.integers(-5, 20)


def clean(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except FieldError as exc:
        assert exc.field and exc.problem


@given(st.binary(max_size=512))
@settings(FUZZ, max_examples=1000)
def test_random_bytes_decode_to_a_request_or_a_malformed_marker(data: bytes) -> None:
    for message in (dpb.DecideRequest, dpb.ReportOutcomeRequest):
        decoded = _lenient(message.FromString)(data)  # type: ignore[arg-type, misc]
        if isinstance(decoded, Malformed):
            assert decoded.error.startswith("not a valid protobuf message")
        elif message is dpb.DecideRequest:
            clean(request_from_proto, decoded, LIMITS)
        else:
            clean(outcome_from_proto, decoded, LIMITS)


@given(
    st.builds(
        lambda rid, model, tin, tout, tier, privacy, mode, prio, tenant, labels: (
            dpb.DecideRequest(
                request_id=rid,
                model=model,
                estimated_input_tokens=tin,
                max_output_tokens=tout,
                min_tier=tier,
                tenant=tenant,
                labels=labels,
            ),
            privacy,
            mode,
            prio,
        ),
        texts,
        texts,
        uint32,
        uint32,
        uint32,
        enums,
        enums,
        enums,
        texts,
        st.dictionaries(texts, texts, max_size=40),
    )
)
@settings(FUZZ, max_examples=1500)
def test_any_decide_request_is_accepted_or_refused_naming_a_field(
    case: tuple[dpb.DecideRequest, int, int, int],
) -> None:
    msg, privacy, mode, prio = case
    raw = msg.SerializeToString()
    # undefined enum numbers travel as open enum values on the wire
    msg = dpb.DecideRequest.FromString(raw)
    msg.privacy, msg.tier_mode, msg.priority = privacy, mode, prio  # type: ignore[assignment]
    clean(request_from_proto, msg, LIMITS)


@given(texts, texts, texts, st.one_of(st.none(), st.floats()), st.one_of(st.none(), uint32), texts)
@settings(FUZZ, max_examples=1000)
def test_any_report_is_accepted_or_refused_naming_a_field(
    rid: str, did: str, backend_id: str, cost: float | None, status: int | None, tenant: str
) -> None:
    msg = dpb.ReportOutcomeRequest(request_id=rid, decision_id=did, backend_id=backend_id, tenant=tenant)
    if cost is not None:
        msg.cost_usd = cost
    if status is not None:
        msg.http_status = status
    clean(outcome_from_proto, msg, LIMITS)


CONFIG = config(budget=budget_config(10.0))


@given(
    texts,
    texts,
    texts,
    enums,
    st.one_of(st.none(), uint32),
    st.one_of(st.none(), st.floats()),
    st.lists(st.tuples(texts, st.one_of(st.none(), uint32)), max_size=4),
)
@settings(FUZZ, max_examples=800)
def test_any_upserted_backend_is_accepted_or_refused_naming_a_field(
    bid: str,
    url: str,
    kind: str,
    zone: int,
    tier: int | None,
    price: float | None,
    models: list[tuple[str, int | None]],
) -> None:
    msg = tpb.Backend(id=bid, url=url, type=kind)
    msg.zone = zone  # type: ignore[assignment]
    if tier is not None:
        msg.tier = tier
    if price is not None:
        msg.pricing.CopyFrom(tpb.Pricing(input_per_1k=price, output_per_1k=0.0))
    for model_id, ctx in models:
        m = msg.models.add(id=model_id)
        if ctx is not None:
            m.context_length = ctx
    clean(backend_from_proto, msg, CONFIG)
