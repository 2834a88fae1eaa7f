"""envoy.service.ext_proc.v3.ExternalProcessor: one gRPC stream per HTTP request.

request headers (→ the body with `read_body`) → decide: Route = header mutations (and a body
rewrite), Reject = immediate response, Queue = hold the stream (`override_message_timeout`)
and decide again on every in-flight/backend change until `queue.max_wait_ms`. Response headers
(→ the body, for its `usage`) → ReportOutcome; a stream that ends without a response reports a
failure, so in-flight counts always return to zero.

The body modes come from the filter's configuration, which Envoy states in the first message's
`protocol_config`:

- BUFFERED (deploy/envoy/ext_proc.yaml): the whole request body in one message, answered by
  the decision; a response body is asked for per request (`mode_override`) to read its usage.
- FULL_DUPLEX_STREAMED (what endpoint-picking gateways configure, deploy/envoy/inference-pool.yaml):
  Envoy streams the body in pieces without waiting for answers, and forwards only what comes
  back. With `read_body` the headers' answer waits for the body's end (or its trailers); then
  the decision answers the headers and the body streams back in pieces of at most 62 000 bytes
  (the model rewritten when an alias or a fallback changed it). Without `read_body` the headers
  decide and every piece goes back as it came. Responses stream through untouched; the usage of
  a JSON or server-sent-event response is read on the way for the outcome.
- Header-only (no body mode): the headers decide.

A stream in full-duplex mode, or one that brings an endpoint subset (`envoy.lb.subset_hint`), is
an endpoint-picking gateway's: candidates are limited to the `ip:port` endpoints it admits, the
Route is carried in `x-gateway-destination-endpoint` and in the dynamic metadata `envoy.lb`
(the same value: the routed endpoint, then the Route's alternates in order), and the response's
`envoy.lb` / `x-gateway-destination-endpoint-served` names the backend the outcome belongs to
(the routed one or one of its alternates)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2, struct_pb2
from opentelemetry.trace import Span

from nexus_grpc.config.loader import endpoint_picker_issues
from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.endpoints import EndpointSubset, endpoint_of
from nexus_grpc.domain.enums import Priority
from nexus_grpc.domain.request import DecisionRequest, Outcome
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import LedgerError, Overloaded
from nexus_grpc.servicers.envoy import responses
from nexus_grpc.servicers.envoy.mapping import (
    DESTINATION_KEY,
    LB_NAMESPACE,
    Body,
    EnvoyStats,
    HeaderError,
    RequestFields,
    apply_body,
    build_request,
    endpoint_subset,
    fields_from_headers,
    request_id,
    rewrite_model,
    served_endpoint,
    stream_usage_tokens,
    usage_tokens,
)
from nexus_grpc.telemetry.tracing import Tracing

log = logging.getLogger("nexus_grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
OVERWRITE: int = base_pb2.HeaderValueOption.HeaderAppendAction.Value("OVERWRITE_IF_EXISTS_OR_ADD")
BUFFERED: int = processing_mode_pb2.ProcessingMode.BodySendMode.Value("BUFFERED")
NO_BODY: int = processing_mode_pb2.ProcessingMode.BodySendMode.Value("NONE")
FULL_DUPLEX: int = processing_mode_pb2.ProcessingMode.BodySendMode.Value("FULL_DUPLEX_STREAMED")
HOLD_MARGIN_S = 2.0  # the overridden message timeout outlasts the hold by this much
# The largest response body read for its `usage`: Envoy's default buffer limit (1 MiB), which
# every listener the body passes allows at least, unless an operator lowered it.
USAGE_BODY_MAX = 1024 * 1024
# The largest body piece sent back in full-duplex mode: below the 64 KiB some proxies allow a
# streamed piece, with a margin.
BODY_CHUNK = 62_000
STREAM_TAIL = 64 * 1024  # the end of a server-sent-event response kept to find its usage

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


def chunks(body: bytes, size: int = BODY_CHUNK) -> list[bytes]:
    """`body` in pieces of at most `size` bytes; an empty body is one empty piece."""
    return [body[i : i + size] for i in range(0, len(body), size)] or [b""]


def streamed_bodies(body: bytes, *, end: bool, response: bool = False) -> list[Any]:
    """Full-duplex body answers carrying `body` in pieces of at most BODY_CHUNK bytes, the last
    with `end_of_stream` when `end` (not when trailers follow)."""
    pieces = chunks(body)
    out: list[Any] = []
    for i, piece in enumerate(pieces):
        common = pb.CommonResponse()
        common.body_mutation.streamed_response.body = piece
        common.body_mutation.streamed_response.end_of_stream = end and i == len(pieces) - 1
        answer = pb.BodyResponse(response=common)
        out.append(
            pb.ProcessingResponse(response_body=answer)
            if response
            else pb.ProcessingResponse(request_body=answer)
        )
    return out


def lb_metadata(endpoints: str) -> Any:
    """The dynamic metadata an endpoint-picking gateway routes by: `envoy.lb` /
    `x-gateway-destination-endpoint`."""
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct(LB_NAMESPACE)[DESTINATION_KEY] = endpoints
    return metadata


def _small(content_length: str | None) -> bool:
    """A response body of a known length that fits into USAGE_BODY_MAX (chunked: unknown)."""
    value = (content_length or "").strip()
    return value.isascii() and value.isdigit() and len(value) < 12 and int(value) <= USAGE_BODY_MAX


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class Exchange:
    """The state of one HTTP request's ext_proc stream."""

    def __init__(
        self,
        engine: DecisionEngine,
        stats: EnvoyStats,
        send: Send,
        tracing: Tracing | None = None,
        overloaded: Callable[[], bool] = lambda: False,
        on_picking: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.stats = stats
        self.send = send
        self.tracing = tracing  # set: the decision and its outcome are spans
        self.overloaded = overloaded  # near max_concurrent_streams: shed all but HIGH priority
        self.on_picking = on_picking  # called when the stream turns out an endpoint picker's
        self.trace_headers: dict[str, str] = {}  # the request's own traceparent / tracestate
        self.span: Span | None = None  # the decision's span, the parent of its outcome's
        self.configured = False  # the first message's protocol_config was read
        self.duplex_request = False  # request bodies are FULL_DUPLEX_STREAMED
        self.duplex_response = False  # response bodies are FULL_DUPLEX_STREAMED
        self.subset: EndpointSubset | None = None  # set for an endpoint-picking gateway
        self.fields: RequestFields | None = None
        self.body: Body | None = None
        self.content_type: str | None = None
        self.wants_body = False  # the request body was asked for and has not arrived yet
        self.pieces: list[bytes] = []  # the full-duplex request body so far
        self.body_size = 0
        self.passing = False  # full duplex, decided: request body pieces go back as they come
        self.request: DecisionRequest | None = None
        self.route: Route | None = None
        self.decision_id = ""  # one stream is one decision: the accounting key of its outcome
        self.decided_at = 0.0
        self.status: int | None = None
        self.latency_ms: int | None = None
        self.served_by = ""  # the backend the gateway reports it sent the request to
        self.reported = True  # nothing to report until a Route takes a slot
        self.usage_kind = ""  # "json" | "stream" | "": how a full-duplex response's usage is read
        self.usage_body = bytearray()

    @property
    def picking(self) -> bool:
        """The stream is an endpoint-picking gateway's (see the module docstring)."""
        return self.subset is not None

    async def handle(self, msg: Any) -> list[Any]:
        """The answers to one message from Envoy, in order (none while a body is awaited)."""
        if not self.configured:
            self.configured = True
            if msg.HasField("protocol_config"):
                config = msg.protocol_config
                self.duplex_request = config.request_body_mode == FULL_DUPLEX
                self.duplex_response = config.response_body_mode == FULL_DUPLEX
                if self.duplex_request:
                    self.stats.duplex_streams += 1
        kind = msg.WhichOneof("request")
        if kind == "request_headers":
            return await self._request_headers(msg)
        if kind == "request_body":
            return await self._request_body(msg.request_body)
        if kind == "request_trailers":
            return await self._request_trailers()
        if kind == "response_headers":
            return await self._response_headers(msg)
        if kind == "response_body":
            return await self._response_body(msg.response_body)
        if kind == "response_trailers":
            return await self._response_trailers()
        return []

    # -- request path --------------------------------------------------------------------------

    async def _request_headers(self, msg: Any) -> list[Any]:
        config = self.engine.config
        headers = header_map(msg.request_headers.headers)
        try:
            self.fields = fields_from_headers(headers, config.limits, adapter="envoy_ext_proc")
        except HeaderError as exc:
            return [immediate(responses.bad_request_reply(exc))]
        if self.tracing is not None:
            self.trace_headers = {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
        try:
            subset = endpoint_subset(msg.metadata_context.filter_metadata)
        except HeaderError as exc:
            return [immediate(responses.gateway_input_reply(exc))]
        if subset is not None:
            self.stats.subsets_seen += 1
        elif self.duplex_request:
            subset = EndpointSubset()  # an endpoint-picking gateway: ip:port endpoints only
        self.subset = subset
        if subset is not None:
            self.on_picking()
        if msg.request_headers.end_of_stream:  # no body: the headers are the whole request
            return [await self._decide("request_headers")]
        if self.duplex_request:
            if config.envoy.read_body:
                # the headers' answer waits for the whole body (Envoy streams it meanwhile)
                self.content_type = headers.get("content-type")
                self.wants_body = True
                return []
            response = await self._decide("request_headers")
            self.passing = response.HasField("request_headers")
            return [response]
        if config.envoy.read_body:
            # Every body is read, whatever its content type: a JSON one fills in the request, any
            # other is checked for a model the decision would not have judged (see apply_body).
            self.content_type = headers.get("content-type")
            self.wants_body = True
            mode = processing_mode_pb2.ProcessingMode(request_body_mode=BUFFERED)
            return [pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=mode)]
        response = await self._decide("request_headers")
        if response.HasField("request_headers"):
            # headers decided: the body streams to the backend unread, whatever the filter's
            # configured body mode (the shipped config buffers bodies for read_body)
            response.mode_override.request_body_mode = NO_BODY
        return [response]

    async def _request_body(self, msg: Any) -> list[Any]:
        if self.duplex_request:
            return await self._duplex_body(msg)
        if self.fields is None or not self.wants_body:  # not asked for: nothing to decide on
            return [pb.ProcessingResponse(request_body=pb.BodyResponse())]
        self.wants_body = False
        try:
            self.body = apply_body(
                self.fields, msg.body, self.engine.config.limits, self.stats, self.content_type
            )
        except HeaderError as exc:
            return [immediate(responses.bad_request_reply(exc))]
        return [await self._decide("request_body")]

    async def _duplex_body(self, msg: Any) -> list[Any]:
        if self.passing:
            self.stats.body_chunks_sent += 1
            return streamed_bodies(msg.body, end=msg.end_of_stream)
        if not self.wants_body:  # answered already (an immediate response ends the stream)
            return []
        self.body_size += len(msg.body)
        limit = self.engine.config.limits.max_message_bytes
        if self.body_size > limit:
            self.wants_body = False
            self.pieces.clear()
            rid = self.fields.request_id if self.fields else "-"
            return [immediate(responses.body_too_large_reply(limit, rid))]
        self.pieces.append(msg.body)
        if not msg.end_of_stream:
            return []
        return await self._duplex_decide(trailers=False)

    async def _request_trailers(self) -> list[Any]:
        """Trailers end a body: a full-duplex body still awaited is complete now."""
        answers: list[Any] = []
        if self.duplex_request and self.wants_body:
            answers = await self._duplex_decide(trailers=True)
            if answers and answers[0].HasField("immediate_response"):
                return answers
        return [*answers, pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]

    async def _duplex_decide(self, *, trailers: bool) -> list[Any]:
        """The whole full-duplex body is here: read it, decide, answer the headers, then send the
        body back in pieces (the last ends the stream unless trailers follow)."""
        assert self.fields is not None
        self.wants_body = False
        raw = b"".join(self.pieces)
        self.pieces.clear()
        try:
            self.body = apply_body(self.fields, raw, self.engine.config.limits, self.stats, self.content_type)
        except HeaderError as exc:
            return [immediate(responses.bad_request_reply(exc))]
        response = await self._decide("request_headers")
        if not response.HasField("request_headers"):
            return [response]
        if self.body is not None and self.route is not None:
            rewritten = rewrite_model(self.body, self.route.model)
            if rewritten is not None:
                self.stats.bodies_rewritten += 1
                raw = rewritten
        pieces = streamed_bodies(raw, end=not trailers)
        self.stats.body_chunks_sent += len(pieces)
        self.passing = True
        return [response, *pieces]

    async def _decide(self, phase: str) -> Any:
        assert self.fields is not None
        try:
            request = build_request(self.fields, self.engine.config, self.subset)
        except HeaderError as exc:
            return immediate(responses.bad_request_reply(exc))
        if request.priority != Priority.HIGH and self.overloaded():
            raise Overloaded("server near max_concurrent_streams: shedding normal-priority decisions")
        if self.tracing is None:
            return await self._answer(phase, request)
        with self.tracing.linked("nexus.decide", self.trace_headers) as span:
            span.set_attribute("nexus.adapter", "envoy_ext_proc")
            self.span = span if span.is_recording() else None
            return await self._answer(phase, request)

    async def _answer(self, phase: str, request: DecisionRequest) -> Any:
        decision = await self.engine.decide(request)
        held_ms: int | None = None
        if isinstance(decision.verdict, Queue):
            decision, held_ms = await self._hold(request)
        if self.tracing is not None:
            self.tracing.decision(decision, _started_ns(decision), request.tenant)
            if held_ms is not None and self.span is not None:
                self.span.set_attribute("nexus.queue.held_ms", held_ms)
        verdict = decision.verdict
        if isinstance(verdict, Reject):
            return immediate(responses.reject_reply(self.engine, decision, verdict))
        if isinstance(verdict, Queue):
            self.stats.holds_timed_out += 1
            return immediate(responses.queue_reply(decision, verdict, held_ms=held_ms))
        self.request, self.route, self.decision_id = request, verdict, decision.decision_id
        self.decided_at = self.engine.clock()
        self.reported = False
        common, endpoints = self._route_mutation(decision, verdict)
        metadata = lb_metadata(endpoints) if endpoints is not None else None
        if phase == "request_body":
            return pb.ProcessingResponse(
                request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
            )
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=common), dynamic_metadata=metadata
        )

    def _route_mutation(self, decision: Decision, route: Route) -> tuple[Any, str | None]:
        """The headers' (or buffered body's) answer to a Route, and the endpoint value it carries
        in `x-gateway-destination-endpoint` (None: a hostname backend, routed by its id)."""
        endpoints = responses.fallback_endpoints(self.engine, route) if self.picking else None
        set_headers, remove = responses.route_headers(decision, route, endpoints)
        carried = dict(set_headers).get(DESTINATION_KEY)
        common = pb.CommonResponse(clear_route_cache=True)
        if not self.duplex_request:  # a full-duplex body is rewritten as it streams back
            body = rewrite_model(self.body, route.model) if self.body is not None else None
            if body is not None:
                self.stats.bodies_rewritten += 1
                common.body_mutation.body = body
                # Envoy keeps the client's content-length on a mutated body: set the new one
                set_headers.append(("content-length", str(len(body))))
        common.header_mutation.set_headers.extend(header_option(k, v) for k, v in set_headers)
        common.header_mutation.remove_headers.extend(remove)
        return common, carried

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

    async def _response_headers(self, msg: Any) -> list[Any]:
        if self.route is None or self.reported:
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        headers = header_map(msg.response_headers.headers)
        self.latency_ms = self._elapsed_ms()
        self._served(msg.metadata_context.filter_metadata)
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
        answer = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))
        end = msg.response_headers.end_of_stream
        if self.duplex_response:
            # the body streams through here: read its usage on the way, report at its end
            media = _media(headers.get("content-type"))
            if media == "application/json" and not self.request.stream:
                self.usage_kind = "json"
            elif media == "text/event-stream":
                self.usage_kind = "stream"
            if end:
                await self._report(self.status, None, None)
            return [answer]
        wants_usage = (
            self.engine.config.envoy.read_response_usage
            and not self.request.stream
            and not end
            and _media(headers.get("content-type")) == "application/json"
        )
        if wants_usage and not _small(headers.get("content-length")):
            # a response body switched to BUFFERED here that is larger than Envoy's buffer makes
            # Envoy 1.40 hang (the client waits until the stream idle timeout) or answer 503
            # instead of the backend's response: read only bodies known to fit in Envoy's default
            # buffer; the others pass through untouched and are charged by the estimate
            self.stats.responses_not_read += 1
            wants_usage = False
        if wants_usage:
            answer.mode_override.response_body_mode = BUFFERED
            return [answer]
        await self._report(self.status, None, None)
        return [answer]

    def _served(self, filter_metadata: Any) -> None:
        """The backend the gateway reports it sent the request to: the routed one or one of its
        alternates (a report is priced and counted by what was decided); anything else keeps
        the routed backend."""
        route = self.route
        assert route is not None
        served = served_endpoint(filter_metadata)
        if served is None:
            return
        by_id = self.engine.registry.fleet.by_id
        for backend_id in (route.backend_id, *route.alternates):
            backend = by_id.get(backend_id)
            url = route.url if backend_id == route.backend_id else backend.url if backend else ""
            if url and endpoint_of(url) == served:
                self.served_by = backend_id
                if backend_id != route.backend_id:
                    self.stats.served_elsewhere += 1
                return
        self.stats.served_unknown += 1
        log.warning(
            "ext_proc: the gateway served %s, which is neither the routed endpoint nor an alternate "
            "of decision %s; its outcome stays with %s",
            served,
            self.decision_id,
            route.backend_id,
        )

    async def _response_body(self, msg: Any) -> list[Any]:
        if self.duplex_response:
            answers = streamed_bodies(msg.body, end=msg.end_of_stream, response=True)
            if self.route is not None and not self.reported:
                self._keep_for_usage(msg.body)
                if msg.end_of_stream:
                    await self._report_with_usage()
            return answers
        if self.route is not None and not self.reported:
            tokens_in, tokens_out = usage_tokens(msg.body, self.engine.config.limits.max_tokens)
            await self._report(self.status, tokens_in, tokens_out)
        return [pb.ProcessingResponse(response_body=pb.BodyResponse())]

    async def _response_trailers(self) -> list[Any]:
        if self.duplex_response and self.route is not None and not self.reported:
            await self._report_with_usage()
        return [pb.ProcessingResponse(response_trailers=pb.TrailersResponse())]

    def _keep_for_usage(self, piece: bytes) -> None:
        if self.usage_kind == "json":
            if len(self.usage_body) + len(piece) > USAGE_BODY_MAX:
                self.stats.responses_not_read += 1
                self.usage_kind = ""  # too big to parse here: charged by the estimate
                self.usage_body.clear()
            else:
                self.usage_body += piece
        elif self.usage_kind == "stream":
            self.usage_body += piece
            if len(self.usage_body) > STREAM_TAIL:
                del self.usage_body[: len(self.usage_body) - STREAM_TAIL]

    async def _report_with_usage(self) -> None:
        limit = self.engine.config.limits.max_tokens
        tokens: tuple[int | None, int | None] = (None, None)
        if self.usage_kind == "json":
            tokens = usage_tokens(bytes(self.usage_body), limit)
        elif self.usage_kind == "stream":
            tokens = stream_usage_tokens(bytes(self.usage_body), limit)
        self.usage_body.clear()
        await self._report(self.status, *tokens)

    def _elapsed_ms(self) -> int:
        return max(0, int((self.engine.clock() - self.decided_at) * 1000))

    async def _report(self, status: int | None, tokens_in: int | None, tokens_out: int | None) -> None:
        assert self.route is not None and self.request is not None
        self.reported = True
        latency = self.latency_ms if self.latency_ms is not None else self._elapsed_ms()
        outcome = Outcome(
            decision_id=self.decision_id,
            request_id=self.request.request_id,
            backend_id=self.served_by or self.route.backend_id,
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
            if self.tracing is None or self.span is None:
                await self.engine.report_outcome(outcome)
            else:
                with self.tracing.child("nexus.outcome", self.span):
                    result = await self.engine.report_outcome(outcome)
                    self.tracing.outcome(
                        result.decision_id, result.settle.recorded, result.settle.charged_nano
                    )
        except LedgerError as exc:
            # the upstream answered: never spoil its response; the engine retries the report
            log.warning("ext_proc: outcome of %s not stored yet (%s); retrying", self.decision_id, exc)
            self.engine.retry_report(outcome)

    async def close(self) -> None:
        """The stream ended: a routed request with no reported response is a failure. A
        full-duplex response cut off after its headers keeps the status the backend answered."""
        if self.route is None or self.reported:
            return
        self.stats.closed_without_response += 1
        try:
            await self._report(self.status if self.duplex_response else None, None, None)
        except Exception:
            rid = self.request.request_id if self.request else "-"
            log.exception("ext_proc: reporting a closed stream failed (request id %s)", rid)


def shed_answer(engine: DecisionEngine, stats: EnvoyStats) -> Callable[[Any, str], Any]:
    """The gate's answer to a stream over `[server] max_concurrent_streams`, given its first
    message (the request headers): the 429 every shed request gets, without deciding."""

    def answer(msg: Any, detail: str) -> Any:
        if msg.WhichOneof("request") is None:
            return None
        headers = header_map(msg.request_headers.headers) if msg.HasField("request_headers") else {}
        rid = request_id(headers.get("x-request-id"), engine.config.limits.max_id_len)
        stats.shed += 1
        return immediate(responses.error_reply(Overloaded(detail), rid))

    return answer


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        engine: DecisionEngine,
        stats: EnvoyStats,
        tracing: Callable[[], Tracing | None] = lambda: None,
        overloaded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.engine = engine
        self.stats = stats
        self.tracing = tracing  # the server's tracer, once telemetry has started (or None)
        self.overloaded = overloaded  # near max_concurrent_streams: shed all but HIGH priority
        self._closing: set[asyncio.Task[None]] = set()
        self._picker_checked = ""  # the config version whose backends were checked for picking

    def _picking(self) -> None:
        """The first endpoint-picking stream of a configuration logs, once, the backends such a
        gateway can never be sent to (hostname URLs): only now is it known that one picks here."""
        config = self.engine.config
        if config.version == self._picker_checked:
            return
        self._picker_checked = config.version
        for issue in endpoint_picker_issues(config):
            log.warning("ext_proc: an endpoint-picking gateway asks: %s", issue)

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        exchange = Exchange(
            self.engine, self.stats, context.write, self.tracing(), self.overloaded, self._picking
        )
        try:
            async for msg in request_iterator:
                try:
                    answers = await exchange.handle(msg)
                except (LedgerError, Overloaded) as exc:
                    rid = exchange.fields.request_id if exchange.fields else "-"
                    log.warning("ext_proc: %s (request id %s)", exc, rid)
                    if isinstance(exc, Overloaded):
                        self.stats.shed += 1
                    answers = [immediate(responses.error_reply(exc, rid))]
                except Exception:
                    rid = exchange.fields.request_id if exchange.fields else "-"
                    log.exception("ext_proc: internal error (request id %s)", rid)
                    answers = [immediate(responses.internal_error_reply(rid))]
                for answer in answers:
                    await context.write(answer)
        finally:
            # shielded: a cancelled stream (client gone) must still free its slot and report
            task = asyncio.ensure_future(exchange.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            await asyncio.shield(task)


def _started_ns(decision: Decision) -> int:
    """When the decision's pipeline began, in wall-clock ns (its stages ran just now)."""
    return time.time_ns() - sum(ns for _, ns in decision.stage_durations_ns)
