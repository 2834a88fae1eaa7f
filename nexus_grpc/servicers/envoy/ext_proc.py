"""envoy.service.ext_proc.v3.ExternalProcessor: one gRPC stream per HTTP request.

request headers (→ the buffered body with `read_body`) → decide: Route = header mutations (and a
body rewrite), Reject = immediate response, Queue = hold the stream (`override_message_timeout`)
and decide again on every in-flight/backend change until `queue.max_wait_ms`. Response headers
(→ buffered body with `read_response_usage`) → ReportOutcome; a stream that ends without a
response reports a failure, so in-flight counts always return to zero."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.enums import Priority
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import LedgerError, Overloaded
from nexus_grpc.servicers.envoy import responses
from nexus_grpc.servicers.envoy.mapping import (
    Body,
    EnvoyStats,
    HeaderError,
    RequestFields,
    apply_body,
    build_request,
    fields_from_headers,
    rewrite_model,
    usage_tokens,
)

log = logging.getLogger("nexus_grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
OVERWRITE: int = base_pb2.HeaderValueOption.HeaderAppendAction.Value("OVERWRITE_IF_EXISTS_OR_ADD")
BUFFERED: int = processing_mode_pb2.ProcessingMode.BodySendMode.Value("BUFFERED")
NO_BODY: int = processing_mode_pb2.ProcessingMode.BodySendMode.Value("NONE")
HOLD_MARGIN_S = 2.0  # the overridden message timeout outlasts the hold by this much
# The largest response body read for its `usage`: Envoy's default buffer limit (1 MiB), which
# every listener the body passes allows at least, unless an operator lowered it.
USAGE_BODY_MAX = 1024 * 1024

Send = Callable[[Any], Awaitable[None]]


def header_map(headers: Any) -> dict[str, str]:
    """An Envoy HeaderMap (values in `raw_value` or `value`) → lower-case name → value. Bytes
    that are not UTF-8 become lone surrogates, which the validator refuses in any value it reads
    (a replacement character would pass for text)."""
    out: dict[str, str] = {}
    for h in headers.headers:
        value = h.raw_value.decode("utf-8", "surrogateescape") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def header_option(name: str, value: str) -> Any:
    """ext_proc applies `raw_value` (bytes); with only `value` set Envoy writes an empty header."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()), append_action=OVERWRITE
    )


def immediate(reply: responses.Reply) -> Any:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=reply.status),
            headers=pb.HeaderMutation(set_headers=[header_option(k, v) for k, v in reply.headers]),
            body=reply.body,
            details=reply.details,
        )
    )


def _small(content_length: str | None) -> bool:
    """A response body of a known length that fits into USAGE_BODY_MAX (chunked: unknown)."""
    value = (content_length or "").strip()
    return value.isascii() and value.isdigit() and len(value) < 12 and int(value) <= USAGE_BODY_MAX


class Exchange:
    """The state of one HTTP request's ext_proc stream."""

    def __init__(self, engine: DecisionEngine, stats: EnvoyStats, send: Send) -> None:
        self.engine = engine
        self.stats = stats
        self.send = send
        self.fields: RequestFields | None = None
        self.body: Body | None = None
        self.content_type: str | None = None
        self.wants_body = False  # the request body was asked for and has not arrived yet
        self.request: DecisionRequest | None = None
        self.route: Route | None = None
        self.decision_id = ""  # one stream is one decision: the accounting key of its outcome
        self.decided_at = 0.0
        self.status: int | None = None
        self.latency_ms: int | None = None
        self.reported = True  # nothing to report until a Route takes a slot

    async def handle(self, msg: Any) -> Any:
        kind = msg.WhichOneof("request")
        if kind == "request_headers":
            return await self._request_headers(msg.request_headers)
        if kind == "request_body":
            return await self._request_body(msg.request_body)
        if kind == "response_headers":
            return await self._response_headers(msg.response_headers)
        if kind == "response_body":
            return await self._response_body(msg.response_body)
        if kind == "request_trailers":
            return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
        if kind == "response_trailers":
            return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
        return None

    # -- request path --------------------------------------------------------------------------

    async def _request_headers(self, msg: Any) -> Any:
        config = self.engine.config
        headers = header_map(msg.headers)
        try:
            self.fields = fields_from_headers(headers, config.limits, adapter="envoy_ext_proc")
        except HeaderError as exc:
            return immediate(responses.bad_request_reply(exc))
        if msg.end_of_stream:  # no body: the headers are the whole request
            return await self._decide("request_headers")
        if config.envoy.read_body:
            # Every body is read, whatever its content type: a JSON one fills in the request, any
            # other is checked for a model the decision would not have judged (see apply_body).
            self.content_type = headers.get("content-type")
            self.wants_body = True
            mode = processing_mode_pb2.ProcessingMode(request_body_mode=BUFFERED)
            return pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=mode)
        response = await self._decide("request_headers")
        if response.HasField("request_headers"):
            # headers decided: the body streams to the backend unread, whatever the filter's
            # configured body mode (the shipped config buffers bodies for read_body)
            response.mode_override.request_body_mode = NO_BODY
        return response

    async def _request_body(self, msg: Any) -> Any:
        if self.fields is None or not self.wants_body:  # not asked for: nothing to decide on
            return pb.ProcessingResponse(request_body=pb.BodyResponse())
        self.wants_body = False
        try:
            self.body = apply_body(
                self.fields, msg.body, self.engine.config.limits, self.stats, self.content_type
            )
        except HeaderError as exc:
            return immediate(responses.bad_request_reply(exc))
        return await self._decide("request_body")

    async def _decide(self, phase: str) -> Any:
        assert self.fields is not None
        try:
            request = build_request(self.fields, self.engine.config)
        except HeaderError as exc:
            return immediate(responses.bad_request_reply(exc))
        decision = await self.engine.decide(request)
        held_ms: int | None = None
        if isinstance(decision.verdict, Queue):
            decision, held_ms = await self._hold(request)
        verdict = decision.verdict
        if isinstance(verdict, Reject):
            return immediate(responses.reject_reply(self.engine, decision, verdict))
        if isinstance(verdict, Queue):
            self.stats.holds_timed_out += 1
            return immediate(responses.queue_reply(decision, verdict, held_ms=held_ms))
        self.request, self.route, self.decision_id = request, verdict, decision.decision_id
        self.decided_at = self.engine.clock()
        self.reported = False
        common = self._route_mutation(decision, verdict)
        if phase == "request_body":
            return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))

    def _route_mutation(self, decision: Decision, route: Route) -> Any:
        set_headers, remove = responses.route_headers(decision, route)
        common = pb.CommonResponse(clear_route_cache=True)
        body = rewrite_model(self.body, route.model) if self.body is not None else None
        if body is not None:
            self.stats.bodies_rewritten += 1
            common.body_mutation.body = body
            # Envoy keeps the client's content-length on a mutated body: set the new one
            set_headers.append(("content-length", str(len(body))))
        common.header_mutation.set_headers.extend(header_option(k, v) for k, v in set_headers)
        common.header_mutation.remove_headers.extend(remove)
        return common

    async def _hold(self, request: DecisionRequest) -> tuple[Decision, int]:
        """Hold the request and decide again whenever in-flight or backend state changes (HIGH
        priority woken first), until a non-Queue decision or `queue.max_wait_ms`."""
        engine = self.engine
        max_wait = engine.config.queue.max_wait_ms / 1000
        started = engine.clock()
        deadline = started + max_wait
        self.stats.holds += 1
        timeout = duration_pb2.Duration()
        timeout.FromMilliseconds(int((max_wait + HOLD_MARGIN_S) * 1000))
        await self.send(pb.ProcessingResponse(override_message_timeout=timeout))
        priority = Priority.HIGH if request.priority == Priority.HIGH else Priority.NORMAL
        while True:
            # decide and wait with no suspension in between, so no state change is missed
            decision = await engine.decide(request)
            remaining = deadline - engine.clock()
            if not isinstance(decision.verdict, Queue) or remaining <= 0:
                return decision, int((engine.clock() - started) * 1000)
            await engine.watch.wait(remaining, priority)

    # -- response path -------------------------------------------------------------------------

    async def _response_headers(self, msg: Any) -> Any:
        if self.route is None or self.reported:
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse())
        headers = header_map(msg.headers)
        self.latency_ms = self._elapsed_ms()
        try:
            self.status = int(headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        common = pb.CommonResponse()
        assert self.request is not None
        common.header_mutation.set_headers.extend(
            (
                header_option("x-nexus-request-id", self.request.request_id),
                header_option("x-nexus-decision-id", self.decision_id),
            )
        )
        wants_usage = (
            self.engine.config.envoy.read_response_usage
            and not self.request.stream
            and not msg.end_of_stream
            and headers.get("content-type", "").split(";", 1)[0].strip().lower() == "application/json"
        )
        if wants_usage and not _small(headers.get("content-length")):
            # a response body switched to BUFFERED here that is larger than Envoy's buffer makes
            # Envoy 1.40 hang (the client waits until the stream idle timeout) or answer 503
            # instead of the backend's response: read only bodies known to fit in Envoy's default
            # buffer; the others pass through untouched and are charged by the estimate
            self.stats.responses_not_read += 1
            wants_usage = False
        if wants_usage:
            mode = processing_mode_pb2.ProcessingMode(response_body_mode=BUFFERED)
            return pb.ProcessingResponse(
                response_headers=pb.HeadersResponse(response=common), mode_override=mode
            )
        await self._report(self.status, None, None)
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))

    async def _response_body(self, msg: Any) -> Any:
        if self.route is not None and not self.reported:
            tokens_in, tokens_out = usage_tokens(msg.body, self.engine.config.limits.max_tokens)
            await self._report(self.status, tokens_in, tokens_out)
        return pb.ProcessingResponse(response_body=pb.BodyResponse())

    def _elapsed_ms(self) -> int:
        return max(0, int((self.engine.clock() - self.decided_at) * 1000))

    async def _report(self, status: int | None, tokens_in: int | None, tokens_out: int | None) -> None:
        assert self.route is not None and self.request is not None
        self.reported = True
        latency = self.latency_ms if self.latency_ms is not None else self._elapsed_ms()
        outcome = Outcome(
            decision_id=self.decision_id,
            request_id=self.request.request_id,
            backend_id=self.route.backend_id,
            model=self.route.model,
            success=None if status else False,
            http_status=status if status and 100 <= status <= 599 else None,
            latency_ms=latency,
            ttft_ms=latency if self.request.stream and status else None,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            tenant=self.request.tenant,
        )
        self.stats.outcomes_reported += 1
        try:
            await self.engine.report_outcome(outcome)
        except LedgerError as exc:
            # the upstream answered: never spoil its response; the engine retries the report
            log.warning("ext_proc: outcome of %s not stored yet (%s); retrying", self.decision_id, exc)
            self.engine.retry_report(outcome)

    async def close(self) -> None:
        """The stream ended: a routed request with no reported response is a failure."""
        if self.route is None or self.reported:
            return
        self.stats.closed_without_response += 1
        try:
            await self._report(None, None, None)
        except Exception:
            rid = self.request.request_id if self.request else "-"
            log.exception("ext_proc: reporting a closed stream failed (request id %s)", rid)


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, engine: DecisionEngine, stats: EnvoyStats) -> None:
        self.engine = engine
        self.stats = stats
        self._closing: set[asyncio.Task[None]] = set()

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        exchange = Exchange(self.engine, self.stats, context.write)
        try:
            async for msg in request_iterator:
                try:
                    response = await exchange.handle(msg)
                except (LedgerError, Overloaded) as exc:
                    rid = exchange.fields.request_id if exchange.fields else "-"
                    log.warning("ext_proc: %s (request id %s)", exc, rid)
                    response = immediate(responses.error_reply(exc, rid))
                except Exception:
                    rid = exchange.fields.request_id if exchange.fields else "-"
                    log.exception("ext_proc: internal error (request id %s)", rid)
                    response = immediate(responses.internal_error_reply(rid))
                if response is not None:
                    await context.write(response)
        finally:
            # shielded: a cancelled stream (client gone) must still free its slot and report
            task = asyncio.ensure_future(exchange.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            await asyncio.shield(task)
