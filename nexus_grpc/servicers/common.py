"""One table at the edge: domain errors -> gRPC status; never a traceback to a caller."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from nexus_grpc.errors import FailedPrecondition, FieldError, LedgerError, NexusError, NotFound, Overloaded

__all__ = ["STATUS", "FailedPrecondition", "FieldError", "NotFound", "Overloaded", "rpc", "status_of"]

log = logging.getLogger("nexus_grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")
Handler = Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]

# The errors a caller may see, and their status. Anything else is a bug: INTERNAL, logged.
STATUS: tuple[tuple[type[NexusError], grpc.StatusCode], ...] = (
    (FieldError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (LedgerError, grpc.StatusCode.UNAVAILABLE),
)


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return None


def rpc(method: Handler[Self, Req, Resp]) -> Handler[Self, Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0.0005:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline too short to decide")
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except NexusError as exc:
            code = status_of(exc)
            if code is None:
                raise
            if isinstance(exc, LedgerError):
                log.warning("%s: %s", method.__qualname__, exc)
                await context.abort(code, exc.for_caller())
            await context.abort(code, str(exc))
        except Exception:
            rid = getattr(request, "request_id", "") or "-"
            log.exception("internal error in %s (request id %s)", method.__qualname__, rid)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    return wrapper
