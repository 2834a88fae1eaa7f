"""DecideResponse in protobuf wire format, written directly from a Decision.

Building protobuf objects and serializing them costs more than deciding; most of a response
repeats from one decision to the next (the reasons of the same exclusions, the same backends), so
those pieces are encoded once and joined. The bytes parse to exactly the message that
`convert.decision_to_proto` builds (a test compares them over many random decisions).

What is reused lives in a `ResponseEncoder`, one per servicer (`DecisionServicer.responses`),
bounded; nothing is module-global.

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
    """A RejectionReason's body."""
    return b"".join(
        (
            _text(1, e.backend_id),
            _text(2, e.model),
            _text(3, e.reconciler),
            _uint(4, int(e.code)),
            _text(5, e.reason),
            _text(6, e.suggested_action),
        )
    )


class ResponseEncoder:
    """Writes DecideResponses, reusing the encoded reasons: most exclusions are prepared per
    backend and state version (`intent.prepared_reason`), so the same ones recur across
    decisions, and the route index hands the very same tuple of them to the decisions of an
    unchanged fleet state. Owned by one servicer; every cache is bounded:

    - `_bodies`: exclusion -> its RejectionReason body (`REASONS_KEPT`; all dropped when full);
    - `_fields`: (field number, exclusion) -> the whole field: tag, length, body (the same);
    - `_blocks`: a tuple of exclusions -> its repeated field, least recently used first
      (`BLOCKS_KEPT`). Keyed by the tuple's identity (hashing 50 exclusions would cost more than
      encoding them); each entry holds its tuple, so the id cannot be reused while it is cached,
      and a hit is confirmed with `is`.
    """

    REASONS_KEPT = 50_000
    BLOCKS_KEPT = 256

    __slots__ = ("_blocks", "_bodies", "_fields")

    def __init__(self) -> None:
        self._bodies: dict[Exclusion, bytes] = {}
        self._fields: dict[tuple[int, Exclusion], bytes] = {}
        self._blocks: OrderedDict[int, tuple[tuple[Exclusion, ...], int, bytes]] = OrderedDict()

    def reason(self, e: Exclusion) -> bytes:
        """A RejectionReason's body, encoded once per distinct exclusion."""
        bodies = self._bodies
        found = bodies.get(e)
        if found is None:
            if len(bodies) >= self.REASONS_KEPT:
                bodies.clear()
            found = bodies[e] = reason_bytes(e)
        return found

    def reasons_field(self, number: int, reasons: tuple[Exclusion, ...]) -> bytes:
        """The repeated RejectionReason field `number` holding `reasons`."""
        blocks = self._blocks
        cached = blocks.get(id(reasons))
        if cached is not None and cached[0] is reasons and cached[1] == number:
            return cached[2]
        fields = self._fields
        parts: list[bytes] = []
        for e in reasons:
            found = fields.get((number, e))
            if found is None:
                if len(fields) >= self.REASONS_KEPT:
                    fields.clear()
                found = fields[(number, e)] = _message(number, self.reason(e))
            parts.append(found)
        encoded = b"".join(parts)
        blocks[id(reasons)] = (reasons, number, encoded)
        if len(blocks) > self.BLOCKS_KEPT:
            blocks.popitem(last=False)
        return encoded

    def decide_response(self, decision: Decision) -> bytes:
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
                (
                    _uint(1, int(v.code)),
                    _text(2, v.message),
                    self.reasons_field(3, shown),
                    _uint(4, v.retry_after_ms),
                )
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
                self.reasons_field(9, shown),
                _uint(10, omitted),
            )
        )


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
