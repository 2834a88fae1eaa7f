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
  budget an RPC is refused at once with RESOURCE_EXHAUSTED.

Health and reflection stay open: probes must work whatever the gate thinks.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeAlias

import grpc

from nexus_grpc.state.server import ServerState

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
    def __init__(self, state: ServerState, malformed: MalformedLog | None = None) -> None:
        self.state = state
        self.malformed = malformed or MalformedLog()

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
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server at max_concurrent_rpcs ({st.max_unary} unary RPCs in progress); retry shortly",
                )
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

        async def admit(context: Ctx) -> None:
            denied = self.refusal(method, context)
            if denied is not None:
                await context.abort(*denied)
            if st.streams_active >= st.max_streams:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server at max_concurrent_streams ({st.max_streams} streams in progress); retry shortly",
                )

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
                await admit(context)
                st.streams_active += 1
                try:
                    async for item in inner(checked(request, context), context):
                        yield item
                finally:
                    st.streams_active -= 1

            return generator

        async def coroutine(request: Any, context: Ctx) -> Any:
            await admit(context)
            st.streams_active += 1
            try:
                return await inner(checked(request, context), context)
            finally:
                st.streams_active -= 1

        return coroutine


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
