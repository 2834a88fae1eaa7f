"""The gate in front of every nexus-grpc RPC, built into the method handlers themselves (no
`grpc.aio` interceptor on the data path):

- a request that is not valid protobuf never reaches a servicer: its deserializer returns a
  marker and the caller gets INVALID_ARGUMENT with a plain message (logged at most once per
  interval, with a count, never a traceback);
- while the server stops, new RPCs get UNAVAILABLE; before a configuration is ready, data-plane
  RPCs get UNAVAILABLE;
- admin RPCs need the admin token, or — with no token configured — a server that listens on
  loopback only; with a client token configured, data-plane RPCs need it;
- unary RPCs and streams (Envoy ext_proc streams, which also carry Queue holds) have separate
  budgets: slow HTTP clients holding streams can never starve direct callers, and beyond its
  budget an RPC is refused at once with RESOURCE_EXHAUSTED — or, for a method with a shed
  answer (the Envoy adapters: an HTTP 429 Envoy can pass on), with that answer: a unary RPC's
  to its request, a stream's to its first message (read within SHED_FIRST_MESSAGE_S, by at most
  `max_streams` such streams at a time), without running the servicer.

Health and reflection stay open: probes must work whatever the gate thinks.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeAlias

import grpc

from nexus_grpc.state.server import ServerState
from nexus_grpc.telemetry.tracing import Tracing, finish_rpc

log = logging.getLogger("nexus_grpc")

Ctx = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

ADMIN_METHODS = frozenset(
    {
        "/nexus.v1.RegistryService/UpsertBackend",
        "/nexus.v1.RegistryService/RemoveBackend",
        "/nexus.v1.RegistryService/SetBackendState",
        "/nexus.v1.AdminService/ReloadConfig",
    }
)
MALFORMED_LOG_INTERVAL = 10.0  # seconds between log lines about malformed messages
# How long a stream over its budget may take to send the first message its shed answer replies
# to (Envoy sends the request headers as it opens the stream); then RESOURCE_EXHAUSTED.
SHED_FIRST_MESSAGE_S = 2.0

# A method's answer beyond its budget: (the request or the stream's first message, the refusal's
# text) → the response to send instead of RESOURCE_EXHAUSTED, or None to refuse after all.
ShedAnswer = Callable[[Any, str], Any]


class Malformed:
    """What a request deserializer returns for bytes that are not a valid message."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class MalformedLog:
    """Logs malformed requests at most once per interval, with how many arrived meanwhile."""

    def __init__(self, interval: float = MALFORMED_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.count = 0  # since start
        self._unlogged = 0
        self._last = -1e18

    def __call__(self, method: str, error: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = self.clock()
        if now - self._last >= self.interval:
            log.warning(
                "refused %d malformed request(s) (latest: %s, %s) in the last %.0f s",
                self._unlogged,
                method,
                error,
                self.interval,
            )
            self._unlogged = 0
            self._last = now


def _bearer(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            return text[7:] if text.startswith("Bearer ") else ""
    return None


def _same(token: str | None, expected: str) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


class Gate:
    def __init__(
        self, state: ServerState, malformed: MalformedLog | None = None, tracing: Tracing | None = None
    ) -> None:
        self.state = state
        self.malformed = malformed or MalformedLog()
        self.tracing = tracing  # set: every RPC wrapped after this gets a SERVER span
        self.shed_answers: dict[str, ShedAnswer] = {}  # full method name → its answer beyond budget

    def refusal(self, method: str, context: Ctx) -> tuple[grpc.StatusCode, str] | None:
        """Why this RPC may not run, or None."""
        st = self.state
        if st.refusing:
            return grpc.StatusCode.UNAVAILABLE, "server is shutting down"
        if method in ADMIN_METHODS:
            expected = st.admin_token()
            if expected:
                if not _same(_bearer(context), expected):
                    return grpc.StatusCode.UNAUTHENTICATED, "admin RPC needs a valid bearer token"
            elif not st.loopback_only:
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "admin RPCs without a token are allowed only when the server listens on loopback "
                    f"only; set the environment variable {st.admin_token_env or '[server] admin_token_env'} "
                    "and send 'authorization: Bearer <token>'",
                )
            return None
        expected = st.client_token()
        if expected and not _same(_bearer(context), expected):
            return grpc.StatusCode.UNAUTHENTICATED, "this RPC needs a valid bearer token"
        if not st.ready:
            return grpc.StatusCode.UNAVAILABLE, "no configuration loaded yet"
        return None

    def wrap(self, method: str, handler: Handler) -> Handler:
        deserialize = _lenient(handler.request_deserializer)
        if handler.request_streaming or handler.response_streaming:
            behavior = self._stream(method, handler)
        else:
            behavior = self._unary(method, handler.unary_unary)
        if self.tracing is not None and not inspect.isasyncgenfunction(behavior):
            behavior = _traced(self.tracing, method, behavior)
        factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
        built: Handler = factory(
            behavior,
            request_deserializer=deserialize,
            response_serializer=_raw_or(handler.response_serializer),
        )
        return built

    def _unary(self, method: str, inner: Any) -> Any:
        st = self.state

        async def unary(request: Any, context: Ctx) -> Any:
            denied = self.refusal(method, context)
            if denied is not None:
                await context.abort(*denied)
            if type(request) is Malformed:
                self.malformed(method, request.error)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")
            if st.unary_active >= st.max_unary:
                detail = (
                    f"server at max_concurrent_rpcs ({st.max_unary} unary RPCs in progress); retry shortly"
                )
                shed = self.shed_answers.get(method)
                answer = shed(request, detail) if shed is not None else None
                if answer is not None:
                    return answer
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, detail)
            st.unary_active += 1
            try:
                return await inner(request, context)
            finally:
                st.unary_active -= 1

        return unary

    def _stream(self, method: str, handler: Handler) -> Any:
        st = self.state
        inner: Any = {
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[(handler.request_streaming, handler.response_streaming)]

        async def admit(request: Any, context: Ctx) -> Any:
            """None: the stream may run; else the shed answer to send instead (over budget)."""
            denied = self.refusal(method, context)
            if denied is not None:
                await context.abort(*denied)
            if st.streams_active < st.max_streams:
                return None
            detail = f"server at max_concurrent_streams ({st.max_streams} streams in progress); retry shortly"
            shed = self.shed_answers.get(method)
            if shed is not None and st.streams_shedding < st.max_streams:
                answer = await _shed_stream(st, shed, request, handler.request_streaming, detail)
                if answer is not None:
                    return answer
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, detail)

        def checked(request: Any, context: Ctx) -> Any:
            if not handler.request_streaming:
                return request

            async def messages() -> AsyncIterator[Any]:
                async for message in request:
                    if type(message) is Malformed:
                        self.malformed(method, message.error)
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT, f"malformed stream message: {message.error}"
                        )
                    yield message

            return messages()

        if inspect.isasyncgenfunction(inner):

            async def generator(request: Any, context: Ctx) -> AsyncIterator[Any]:
                shed = await admit(request, context)
                if shed is not None:
                    yield shed
                    return
                st.streams_active += 1
                try:
                    async for item in inner(checked(request, context), context):
                        yield item
                finally:
                    st.streams_active -= 1

            return generator

        async def coroutine(request: Any, context: Ctx) -> Any:
            shed = await admit(request, context)
            if shed is not None:
                if handler.response_streaming:
                    await context.write(shed)
                    return None
                return shed
            st.streams_active += 1
            try:
                return await inner(checked(request, context), context)
            finally:
                st.streams_active -= 1

        return coroutine


async def _shed_stream(
    st: ServerState, shed: ShedAnswer, request: Any, request_streaming: bool, detail: str
) -> Any:
    """The shed answer of a stream over its budget, to its first message (None: no message came
    in time, or it was malformed)."""
    st.streams_shedding += 1
    try:
        if request_streaming:
            try:
                first = await asyncio.wait_for(anext(aiter(request)), SHED_FIRST_MESSAGE_S)
            except (StopAsyncIteration, TimeoutError):
                return None
        else:
            first = request
        return None if type(first) is Malformed else shed(first, detail)
    finally:
        st.streams_shedding -= 1


def _traced(tracing: Tracing, method: str, behavior: Any) -> Any:
    """The RPC inside its SERVER span, which ends with the RPC's status code."""

    async def traced(request: Any, context: Ctx) -> Any:
        with tracing.rpc(method, context.invocation_metadata()) as span:
            try:
                result = await behavior(request, context)
            except grpc.aio.AbortError:
                finish_rpc(span, _code_name(context))
                raise
            except BaseException:
                finish_rpc(span, "UNKNOWN")
                raise
            finish_rpc(span, _code_name(context, "OK"))
            return result

    return traced


def _code_name(context: Ctx, default: str = "UNKNOWN") -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


_FACTORIES: dict[tuple[bool, bool], Any] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns `Malformed` instead of raising: grpc would answer UNKNOWN with
    the exception's name and log a traceback per request."""
    if deserialize is None:
        return None

    def lenient(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, and whatever a corrupt message raises
            return Malformed(f"not a valid protobuf message ({type(exc).__name__})")

    return lenient


def _raw_or(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A servicer may answer with bytes already in wire format (see `servicers/wire.py`)."""
    if serialize is None:
        return None

    def raw_or_message(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return raw_or_message


class Registration:
    """Stands in for a `grpc.aio.Server` while generated `add_*_to_server` functions register a
    service, so that its method handlers can be wrapped before the real server sees them."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Handler]] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        """Generated code registers the same handlers both ways; the registered ones are kept."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.services.setdefault(service, {}).update(handlers)


def register(server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: Any, gate: Gate) -> str:
    """Register `servicer` with its generated `add_*_to_server` function, every method behind
    `gate`. Returns the service's full name."""
    captured = Registration()
    add(servicer, captured)
    [(name, handlers)] = captured.services.items()
    handlers = {m: gate.wrap(f"/{name}/{m}", h) for m, h in handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]  # grpcio >= 1.62
    return name
