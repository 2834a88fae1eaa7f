"""envoy.service.auth.v3.Authorization: one Check per HTTP request.

ext_authz has no response phase, so a Route takes no in-flight slot and charges its estimate at
once under its decision id (a later ReportOutcome with that id, seen upstream in
`x-nexus-decision-id`, settles it). Each Check is its own decision: a client's `x-request-id` is
only a correlation label. Queue cannot hold here: it answers 503 + retry-after.

With `[envoy] read_body` the body Envoy buffered into the Check (`with_request_body` in
ext_authz.yaml) is read and checked exactly as ext_proc reads it; ext_authz cannot rewrite a
body, so the backend receives the model the client wrote."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

from nexus_grpc.domain.decision import Queue, Reject
from nexus_grpc.domain.enums import Priority
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import LedgerError, Overloaded
from nexus_grpc.servicers.envoy import responses
from nexus_grpc.servicers.envoy.mapping import (
    EnvoyStats,
    HeaderError,
    apply_body,
    build_request,
    fields_from_headers,
    request_id,
)
from nexus_grpc.telemetry.tracing import Tracing

log = logging.getLogger("nexus_grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Authorization"].full_name
OVERWRITE: int = base_pb2.HeaderValueOption.HeaderAppendAction.Value("OVERWRITE_IF_EXISTS_OR_ADD")


def header_option(name: str, value: str) -> Any:
    """ext_authz applies `value` (string); the append action is explicit, or Envoy appends a
    second copy of a header the client already sent."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=OVERWRITE
    )


def request_headers(request: Any) -> dict[str, str]:
    """CheckRequest headers (lower-cased by Envoy), from `headers` or, with `encode_raw_headers`
    (as ext_authz.yaml sets: `headers` turns bytes that are not UTF-8 into '!'), from
    `header_map`, where such bytes become lone surrogates that the validator refuses."""
    http = request.attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    for h in http.header_map.headers:
        value = h.raw_value.decode("utf-8", "surrogateescape") if h.raw_value else h.value
        key = h.key.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def denied(reply: responses.Reply) -> Any:
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=reply.details),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=reply.status),
            headers=[header_option(k, v) for k, v in reply.headers],
            body=reply.body.decode(),
        ),
    )


def request_body(request: Any) -> bytes:
    """The body Envoy buffered into the Check: `raw_body` with `pack_as_bytes`, else `body`."""
    http = request.attributes.request.http
    return bytes(http.raw_body) if http.raw_body else http.body.encode("utf-8", "surrogateescape")


def shed_answer(engine: DecisionEngine, stats: EnvoyStats) -> Callable[[Any, str], Any]:
    """The gate's answer to a Check over `[server] max_concurrent_rpcs`: the denied 429 every
    shed request gets, without deciding."""

    def answer(request: Any, detail: str) -> Any:
        rid = request_id(request_headers(request).get("x-request-id"), engine.config.limits.max_id_len)
        stats.shed += 1
        return denied(responses.error_reply(Overloaded(detail), rid))

    return answer


class ExtAuthzServicer(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self,
        engine: DecisionEngine,
        stats: EnvoyStats | None = None,
        tracing: Callable[[], Tracing | None] = lambda: None,
        overloaded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.engine = engine
        self.stats = stats or EnvoyStats()
        self.tracing = tracing  # the server's tracer, once telemetry has started (or None)
        self.overloaded = overloaded  # near max_concurrent_rpcs: shed all but HIGH priority

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        headers = request_headers(request)
        rid = request_id(headers.get("x-request-id"), self.engine.config.limits.max_id_len)
        try:
            return await self._check(request, headers, rid)
        except (LedgerError, Overloaded) as exc:
            log.warning("ext_authz: %s (request id %s)", exc, rid)
            if isinstance(exc, Overloaded):
                self.stats.shed += 1
            return denied(responses.error_reply(exc, rid))
        except Exception:
            log.exception("ext_authz: internal error (request id %s)", rid)
            return denied(responses.internal_error_reply(rid))

    async def _check(self, request: Any, headers: dict[str, str], rid: str) -> Any:
        engine = self.engine
        config = engine.config
        try:
            fields = fields_from_headers(headers, config.limits, adapter="envoy_ext_authz")
            fields.request_id = rid
            if config.envoy.read_body:
                body = request_body(request)
                if body:
                    apply_body(fields, body, config.limits, self.stats, headers.get("content-type"))
            decide_request = build_request(fields, config)
        except HeaderError as exc:
            return denied(responses.bad_request_reply(exc))
        if decide_request.priority != Priority.HIGH and self.overloaded():
            raise Overloaded("server near max_concurrent_rpcs: shedding normal-priority decisions")
        tracing = self.tracing()
        if tracing is None:
            decision = await engine.decide(decide_request, take_slot=False)
        else:
            with tracing.linked("nexus.decide", headers) as span:
                span.set_attribute("nexus.adapter", "envoy_ext_authz")
                started = time.time_ns()
                decision = await engine.decide(decide_request, take_slot=False)
                tracing.decision(decision, started, decide_request.tenant)
        verdict = decision.verdict
        if isinstance(verdict, Reject):
            return denied(responses.reject_reply(engine, decision, verdict))
        if isinstance(verdict, Queue):
            return denied(responses.queue_reply(decision, verdict, held_ms=None))
        await engine.charge_estimate(decision)
        set_headers, remove = responses.route_headers(decision, verdict)
        return pb.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=pb.OkHttpResponse(
                headers=[header_option(k, v) for k, v in set_headers],
                headers_to_remove=remove,
                response_headers_to_add=[
                    header_option("x-nexus-request-id", decision.request_id),
                    header_option("x-nexus-decision-id", decision.decision_id),
                ],
            ),
        )
