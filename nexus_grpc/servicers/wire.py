"""DecideResponse in protobuf wire format, written directly from a Decision.

Building protobuf objects and serializing them costs more than deciding; most of a response
repeats from one decision to the next (the reasons of the same exclusions, the same backends), so
those pieces are encoded once and joined. The bytes parse to exactly the message that
`convert.decision_to_proto` builds (a test compares them over many random decisions).

Proto3 rules followed: fields in number order, zero values (0, 0.0, "", false, enum 0) left
out, strings UTF-8, doubles little-endian IEEE 754.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from nexus_grpc.domain.decision import BudgetView, CostEstimate, Decision, Exclusion, Queue, Reject, Route
from nexus_grpc.domain.money import NANO
from nexus_grpc.pipeline.executor import shown_exclusions

_DOUBLE = struct.Struct("<d").pack
_REASONS_KEPT = 50_000
_reasons: dict[Exclusion, bytes] = {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _text(number: int, value: str) -> bytes:
    if not value:
        return b""
    data = value.encode("utf-8", "surrogatepass")
    return _key(number, 2) + _varint(len(data)) + data


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value) if value else b""


def _double(number: int, value: float) -> bytes:
    return _key(number, 1) + _DOUBLE(value) if value else b""


def _message(number: int, body: bytes) -> bytes:
    """A sub-message field; an empty body is still sent (the field is set)."""
    return _key(number, 2) + _varint(len(body)) + body


def reason_bytes(e: Exclusion) -> bytes:
    """A RejectionReason, encoded once per distinct exclusion (most are prepared per backend and
    state version, so the same objects recur across decisions)."""
    found = _reasons.get(e)
    if found is None:
        if len(_reasons) >= _REASONS_KEPT:
            _reasons.clear()
        found = _reasons[e] = b"".join(
            (
                _text(1, e.backend_id),
                _text(2, e.model),
                _text(3, e.reconciler),
                _uint(4, int(e.code)),
                _text(5, e.reason),
                _text(6, e.suggested_action),
            )
        )
    return found


_fields: dict[tuple[int, Exclusion], bytes] = {}
_blocks: OrderedDict[int, tuple[tuple[Exclusion, ...], int, bytes]] = OrderedDict()
_BLOCKS_KEPT = 256


def _reason_field(number: int, e: Exclusion) -> bytes:
    key = (number, e)
    found = _fields.get(key)
    if found is None:
        if len(_fields) >= _REASONS_KEPT:
            _fields.clear()
        found = _fields[key] = _message(number, reason_bytes(e))
    return found


def _reasons_field(number: int, reasons: tuple[Exclusion, ...]) -> bytes:
    """The repeated field; the same tuple of reasons (the route index hands the same one to the
    decisions of an unchanged fleet state) is encoded once."""
    cached = _blocks.get(id(reasons))
    if cached is not None and cached[0] is reasons and cached[1] == number:
        return cached[2]
    encoded = b"".join(_reason_field(number, e) for e in reasons)
    _blocks[id(reasons)] = (reasons, number, encoded)  # holds `reasons`: its id stays unique
    if len(_blocks) > _BLOCKS_KEPT:
        _blocks.popitem(last=False)
    return encoded


def budget_bytes(view: BudgetView) -> bytes:
    return b"".join(
        (
            _text(1, view.scope),
            _text(2, view.month),
            _double(3, view.spent_nano / NANO),
            _double(4, view.reserved_nano / NANO),
            _double(5, view.limit_nano / NANO),
            _double(6, view.utilization_percent),
            _double(7, view.remaining_nano / NANO),
            _uint(8, int(view.status)),
        )
    )


def _cost(est: CostEstimate) -> bytes:
    return _uint(1, est.input_tokens) + _uint(2, est.output_tokens) + _double(3, est.cost_nano / NANO)


def _route(r: Route, decision_id: str) -> bytes:
    return b"".join(
        (
            _text(1, r.backend_id),
            _text(2, r.url),
            _text(3, r.backend_type),
            _uint(4, int(r.privacy_zone)),
            _text(5, r.model),
            _text(6, r.reason),
            _uint(7, r.score),
            _uint(8, 1) if r.fallback_used else b"",
            *(_text(9, a) if a else _key(9, 2) + b"\x00" for a in r.alternates),
            _text(10, decision_id),
        )
    )


def decide_response(decision: Decision) -> bytes:
    """The DecideResponse of `decision`, as Decide sends it (exclusions capped)."""
    shown, omitted = shown_exclusions(decision, False)
    v = decision.verdict
    if isinstance(v, Route):
        verdict = _message(4, _route(v, decision.decision_id))
    elif isinstance(v, Queue):
        body = (
            _text(1, v.model)
            + _text(2, v.reason)
            + _uint(3, v.estimated_wait_ms)
            + _uint(4, v.retry_after_ms)
        )
        verdict = _message(5, body)
    else:
        assert isinstance(v, Reject)
        body = b"".join(
            (_uint(1, int(v.code)), _text(2, v.message), _reasons_field(3, shown), _uint(4, v.retry_after_ms))
        )
        verdict = _message(6, body)
    return b"".join(
        (
            _text(1, decision.request_id),
            _text(2, decision.requested_model),
            _text(3, decision.resolved_model),
            verdict,
            _message(7, _cost(decision.cost_estimate)),
            _message(8, budget_bytes(decision.budget)) if decision.budget is not None else b"",
            _reasons_field(9, shown),
            _uint(10, omitted),
        )
    )
