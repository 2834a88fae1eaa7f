"""One table at the edge: domain errors -> gRPC status; never a traceback to a caller."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from nexus_grpc.servicers.convert import InvalidArgument

log = logging.getLogger("nexus_grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")
Handler = Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


class NotFound(LookupError):
    """An unknown id (NOT_FOUND)."""


class Overloaded(RuntimeError):
    """Shed under overload (RESOURCE_EXHAUSTED); HIGH priority requests are shed last."""


class FailedPrecondition(RuntimeError):
    """The request is valid but the server state refuses it (FAILED_PRECONDITION)."""


def rpc(method: Handler[Self, Req, Resp]) -> Handler[Self, Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0.0005:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline too short to decide")
        try:
            return await method(self, request, context)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except FailedPrecondition as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            rid = getattr(request, "request_id", "") or "-"
            log.exception("internal error in %s (request id %s)", method.__qualname__, rid)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    return wrapper
