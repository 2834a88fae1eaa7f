"""An asyncio client for nexus-grpc: Decide, Explain, ReportOutcome, GetBudget and health.

    from nexus_grpc.aio_client import AsyncClient, verdict

    async with AsyncClient("127.0.0.1:50051") as nexus:
        decision = await nexus.decide("gpt-4", estimated_input_tokens=1200, tenant="team-a")
        if verdict(decision) == "route":
            ...  # call decision.route.url with decision.route.model
            await nexus.report_outcome(decision, http_status=200, input_tokens=1180, output_tokens=412)
        elif verdict(decision) == "queue":
            await asyncio.sleep(decision.queue.retry_after_ms / 1000)  # then ask again
        else:
            print(decision.reject.message)

A failed RPC raises `ClientError` (its `code` is the gRPC status); a Queue or Reject is an answer,
not an error. Messages and enums come from `nexus_grpc.api`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc import api

Verdict = Literal["route", "queue", "reject"]
Req = TypeVar("Req")
Resp = TypeVar("Resp")

__all__ = ["AsyncClient", "ClientError", "Verdict", "verdict"]


class ClientError(Exception):
    """An RPC failed: `code` is its gRPC status (INVALID_ARGUMENT names the field in `details`)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def verdict(response: api.DecideResponse) -> Verdict:
    """Which of Route, Queue and Reject a decision is."""
    kind = response.WhichOneof("decision")
    if kind not in ("route", "queue", "reject"):
        raise ValueError(f"a DecideResponse without a decision: {response!r}")
    return kind


class AsyncClient:
    """One `grpc.aio` channel to a nexus-grpc server; close it (or use `async with`) when done.

    `token` is sent as `authorization: Bearer <token>` (the server's `client_token_env` or, for
    admin RPCs, `admin_token_env`); `timeout` is the deadline of each call, in seconds."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str = "",
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._decision = api.DecisionServiceStub(self.channel)
        self._budget = api.BudgetServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def decide(self, request: api.DecideRequest | str, /, **fields: Any) -> api.DecideResponse:
        """Route, Queue or Reject. `request` is a `DecideRequest`, or the model name with the other
        `DecideRequest` fields as keywords. A Route takes an in-flight slot: report its outcome."""
        message = _request(api.DecideRequest, request, fields)
        return await self._call(self._decision.Decide, message)

    async def explain(self, request: api.DecideRequest | str, /, **fields: Any) -> api.ExplainResponse:
        """The decision Decide would make, with every stage's trace and the scores; no side effects."""
        message = _request(api.ExplainRequest, request, fields)
        return await self._call(self._decision.Explain, message)

    async def report_outcome(
        self, decision: api.DecideResponse | api.ReportOutcomeRequest, /, **fields: Any
    ) -> api.ReportOutcomeResponse:
        """Frees the Route's slot and settles its reservation: pass the routed `DecideResponse` and
        what happened (`http_status`, `success`, `input_tokens`, `output_tokens`, `cost_usd`,
        `latency_ms`, `ttft_ms`), or a whole `ReportOutcomeRequest`."""
        if isinstance(decision, api.ReportOutcomeRequest):
            message = _request(api.ReportOutcomeRequest, decision, fields)
        else:
            if verdict(decision) != "route":
                raise ValueError("only a Route has an outcome to report")
            route = decision.route
            message = api.ReportOutcomeRequest(
                request_id=decision.request_id,
                backend_id=route.backend_id,
                model=route.model,
                decision_id=route.decision_id,
                **fields,
            )
        return await self._call(self._decision.ReportOutcome, message)

    async def get_budget(self, tenant: str = "", month: str = "") -> api.BudgetState:
        """Spent, reserved, limit and status of `tenant` (empty: the global scope) for `month`
        (`YYYY-MM`, empty: the current one)."""
        response = await self._call(self._budget.GetBudget, api.GetBudgetRequest(tenant=tenant, month=month))
        return response.budget

    async def health(self, service: str = "") -> str:
        """The server's health status name: `SERVING` when it takes decisions."""
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], message: Req) -> Resp:
        try:
            return await method(message, timeout=self.timeout, metadata=self._metadata or None)
        except grpc.aio.AioRpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _request(cls: Any, request: Any, fields: dict[str, Any]) -> Any:
    if isinstance(request, str):
        return cls(model=request, **fields)
    # DecideRequest and ExplainRequest have the same fields: one converts to the other on the wire
    message = cls.FromString(request.SerializeToString())
    if fields:
        message.MergeFrom(cls(**fields))  # keywords set beside a message win over its values
    return message
