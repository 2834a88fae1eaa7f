"""nexus.v1.AdminService, and the interceptor that gates admin and data-plane RPCs."""

from __future__ import annotations

import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from nexus_grpc import __version__
from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import admin_pb2_grpc as agrpc
from nexus_grpc.config.errors import ConfigError
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.common import FailedPrecondition, rpc

if TYPE_CHECKING:
    from nexus_grpc.app import Runtime

Ctx = grpc.aio.ServicerContext[Any, Any]

ADMIN_METHODS = frozenset(
    {
        "/nexus.v1.RegistryService/UpsertBackend",
        "/nexus.v1.RegistryService/RemoveBackend",
        "/nexus.v1.RegistryService/SetBackendState",
        "/nexus.v1.AdminService/ReloadConfig",
    }
)
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class AdminServicer(agrpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @rpc
    async def GetServerInfo(
        self, request: apb.GetServerInfoRequest, context: Ctx
    ) -> apb.GetServerInfoResponse:
        rt = self.runtime
        return apb.GetServerInfoResponse(
            version=__version__,
            config_version=rt.config.version,
            config_loaded_at=rt.config_loaded_at,
            ledger_kind=rt.engine.ledger.kind,
            ledger_available=rt.engine.ledger.available,
            degraded_reasons=rt.degraded_reasons(),
            draining=rt.draining,
        )

    @rpc
    async def ReloadConfig(self, request: apb.ReloadConfigRequest, context: Ctx) -> apb.ReloadConfigResponse:
        if self.runtime.config_path is None:
            raise FailedPrecondition("the server runs the built-in demo fleet; there is no file to reload")
        try:
            config = await self.runtime.reload()
        except ConfigError as exc:
            raise FieldError("config", f"invalid configuration, old one kept:\n{exc}") from None
        return apb.ReloadConfigResponse(config_version=config.version)


_FACTORIES: dict[tuple[bool, bool], Any] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _deny(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: Ctx) -> None:
        await context.abort(code, message)

    return _rebuilt(handler, abort)


def _rebuilt(handler: grpc.RpcMethodHandler[Any, Any], behavior: Any) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind and (de)serializers with another behavior."""
    built: grpc.RpcMethodHandler[Any, Any] = _FACTORIES[
        (handler.request_streaming, handler.response_streaming)
    ](
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return built


def _counted(handler: grpc.RpcMethodHandler[Any, Any], rt: Runtime) -> grpc.RpcMethodHandler[Any, Any]:
    """Count the RPCs in progress (long-lived streams included), for overload shedding."""
    rs, ws = handler.request_streaming, handler.response_streaming
    inner: Any = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[(rs, ws)]
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
            rt.active_rpcs += 1
            try:
                async for item in inner(request, context):
                    yield item
            finally:
                rt.active_rpcs -= 1

        behavior: Any = stream
    else:

        async def call(request: Any, context: Ctx) -> Any:
            rt.active_rpcs += 1
            try:
                return await inner(request, context)
            finally:
                rt.active_rpcs -= 1

        behavior = call
    return _rebuilt(handler, behavior)


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            return text[7:] if text.startswith("Bearer ") else ""
    return None


class GateInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Draining refusal, admin rule (token, or loopback-only without one), client token."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return handler
        return _counted(self._gate(handler, details), self.runtime)

    def _gate(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method
        rt = self.runtime
        if method.startswith(OPEN_PREFIXES):
            return handler
        if rt.refusing:
            return _deny(handler, grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        token = _bearer(details.invocation_metadata)
        if method in ADMIN_METHODS:
            expected = rt.admin_token()
            if expected:
                if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
                    return _deny(
                        handler, grpc.StatusCode.UNAUTHENTICATED, "admin RPC needs a valid bearer token"
                    )
            elif not rt.loopback_only:
                return _deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "admin RPCs without a token are allowed only when the server listens on loopback only",
                )
            return handler
        expected = rt.client_token()
        if expected and (token is None or not hmac.compare_digest(token.encode(), expected.encode())):
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "this RPC needs a valid bearer token")
        if not rt.ready:
            return _deny(handler, grpc.StatusCode.UNAVAILABLE, "no configuration loaded")
        return handler
